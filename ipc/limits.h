// Runs in: every process. Every limit on what crosses an IPC boundary, in one place.
// The peer on the other side is assumed compromised (DESIGN.md, trust boundary 7).
#pragma once

#include <capnp/message.h>

#include <cstddef>

namespace spicebox::ipc {

// Largest datagram (one Cap'n Proto message) accepted or sent. Messages carry descriptors and
// small typed records (commands are referenced in guest memory, not copied), so 128 KiB is
// ample; it also stays below the default unix socket send buffer (net.core.wmem_default, 208 KiB),
// so one message always fits one SOCK_SEQPACKET datagram.
inline constexpr size_t MAX_FRAME_BYTES = 128 * 1024;

// Most descriptors one message may carry. The largest legitimate set is a QXL link (ROM, RAM,
// VRAM, three eventfds). The receive buffer has room for exactly this many; a sender that
// attaches more gets its channel closed (the kernel discards what does not fit).
inline constexpr size_t MAX_FDS_PER_MESSAGE = 8;

// Reader options for every received message. The traversal limit bounds the work a message can
// cause to the size of the frame itself (amplification by shared pointers stops there); the
// nesting limit is far above what our schemas use (at most 4 levels) and far below stack risk.
inline constexpr capnp::ReaderOptions READER_OPTIONS = {
    .traversalLimitInWords = MAX_FRAME_BYTES / sizeof(capnp::word),
    .nestingLimit = 16,
};

// Most outbound messages queued on one channel before it is closed as stuck. A healthy peer
// drains its socket; one that stops reading must not make the sender buffer without bound.
inline constexpr size_t MAX_QUEUED_MESSAGES = 1024;

}  // namespace spicebox::ipc
