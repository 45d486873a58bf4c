// Runs in: spicebox-bench-spice-serve (developer machine, unsandboxed). Input: none from outside;
// libspice-server calls these functions with the descriptors and timers it manages.
//
// A real SpiceCoreInterface for libspice-server on a libuv loop: timers are uv_timer_t, fd
// watches are uv_poll_t, and both fire on the thread that runs the loop (the main thread).
// libspice-server calls timer_* and watch_* from that thread only (its display and cursor
// channels run on the worker thread's own loop); channel_event may come from the worker thread
// and is ignored. Each timer and watch is freed in its handle's close callback, never earlier, so
// removing one from inside its own callback is safe.
#pragma once

#include <spice.h>
#include <uv.h>

namespace spicebox::bench {

// The loop must outlive the server (spice_server_destroy removes its timers and watches) and
// run once more after it, so that the close callbacks free what was removed.
SpiceCoreInterface uvCore(uv_loop_t* loop, const char* description);

}  // namespace spicebox::bench
