// Runs in: broker (privileged). Input: none from its clients: a connection to the status socket
// gets one JSON document and is closed, and nothing it sends is read, so the socket adds no
// parser to the broker. Who may connect is the socket file's mode (0600: the broker's user).
//
// `spicebox-broker --status-socket PATH`; `spicebox-ctl --status-socket PATH status [--json]`
// prints it (tools/ctl). The document's fields are listed in docs/protocol.md ("Status socket").
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/uv-handle.h"
#include "broker/listeners.h"

namespace spicebox::broker {

struct ChildStatus {
  std::string name;      // "renderer", "netproxy"
  std::string state;     // "ready", "starting", "waiting-restart", ...
  int64_t pid = -1;      // -1: no process
  int restarts = 0;      // incarnations after the first
  std::string sandbox;   // level the running incarnation reached: "full", "partial", "off"
  std::string lastExit;  // "killed by SIGKILL", "exited with status 1"; empty: none yet
};

struct StatusReport {
  int64_t pid = 0;
  double uptimeSeconds = 0;
  std::vector<ChildStatus> children;
  bool vmmLinked = false;
  std::string vmm;  // VmmLink::describe()
  // This link's device: commands taken off the guest's rings and released back (equal when the
  // guest is idle and nothing is left in flight).
  uint64_t vmmCommands = 0, vmmReleased = 0;
  uint32_t displayWidth = 0, displayHeight = 0;
  uint64_t displaySegment = 0;  // generation; 0: no display
  // Clients, from the netproxy's counts: display channels by mode.
  uint64_t sessions = 0, connections = 0, refused = 0, shm = 0, tearFree = 0;
  uint64_t commandsRendered = 0;     // commands the renderer drew (batches answered, rejected out)
  uint64_t commandsRejected = 0;     // commands the renderer could not read (hostile or bad)
  uint64_t commandsQuarantined = 0;  // released without drawing: they brought the renderer down
  uint64_t commandsReleased = 0;     // put on the guest's release ring
  uint64_t damageRects = 0;          // damage rectangles sent to the netproxy
  uint64_t hints = 0;                // fill and copy-bits hints sent to the netproxy
  uint64_t inputs = 0;               // client input events passed to the VMM
  bool renderingStopped = false;     // the guest's commands are released without drawing
  std::string renderingNote;         // why, when stopped
  std::string lastError;             // base::lastProblem()
};

// The report as one JSON object (children as an array of objects with a `restarts` count).
std::string toJson(const StatusReport& report);

// Serves `socket` (a listening unix stream socket, non-blocking): each connection gets the JSON
// of `report()` taken at that moment and is closed. A peer that does not take the whole document
// at once (it is a few KiB, the socket buffer holds it) is closed without it.
class StatusServer {
 public:
  StatusServer(uv_loop_t* loop, ListeningSocket socket, std::function<StatusReport()> report);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  const std::string& path() const { return socket_.name; }

 private:
  void onAcceptable();

  ListeningSocket socket_;
  std::function<StatusReport()> report_;
  base::UvHandle<uv_poll_t> poll_;
};

}  // namespace spicebox::broker
