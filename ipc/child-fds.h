// Runs in: the broker (when it starts a child) and in each child. The descriptor numbers a child
// finds its inherited descriptors at, fixed so a child needs no discovery and its sandbox can keep
// exactly these.
#pragma once

namespace spicebox::ipc {

// The child's channel to the broker: render.capnp for the renderer, display.capnp for the
// netproxy. 0, 1 and 2 stay the standard streams; 2 is where the child logs.
inline constexpr int CHILD_CHANNEL_FD = 3;

}  // namespace spicebox::ipc
