// Runs in: the oracle tools (spicebox-replay-check, spicebox-render-oracle) on a developer machine
// or CI. Input: none; the minimal host libspice-server needs around its replayer and worker.
//
// A core whose timers and watches exist but never fire (spice_server_init needs non-NULL handles;
// with no client and no listening socket no callback is ever due), and a QXL interface for
// spice_replay's commands: one memslot mapping the whole address space 1:1 (the replayer hands
// the worker pointers into its own heap as QXLPHYSICAL addresses).
#pragma once

#include <spice.h>

#include <cstdint>

namespace spicebox::oracle {

// Surface ids the replayer may allocate: QEMU's MAX_SURFACE_NUM, also what spice-server's own
// replay tool passes.
inline constexpr int MAX_SURFACES = 1024;
inline constexpr uint32_t MEMSLOT_GROUP = 0;

SpiceCoreInterface inertCore(const char* description);

// attached_worker adds the identity memslot, get_init_info describes it; the command callbacks
// default to "no command, wake me when there is one" and releases are ignored: a host that feeds
// the worker sets get_command, req_cmd_notification, release_resource, get_cursor_command and
// req_cursor_notification itself.
QXLInterface replayQxlInterface(const char* description);

}  // namespace spicebox::oracle
