// Runs in: spicebox-bench-spice-serve (developer machine, unsandboxed). Input: see uv-core.h.
#include "bench/uv-core.h"

#include <spdlog/spdlog.h>

#include <cstring>

namespace spicebox::bench {

namespace {

// SpiceCoreInterface's timer_add / watch_add carry no context pointer, so the loop they attach
// to is the process's one loop, set by uvCore(). (spice_server_init takes a core per server;
// a process serving from one loop is what this interface was designed for.)
uv_loop_t* coreLoop = nullptr;

// The handle is the first member: libuv hands the handle back, and the close callback frees the
// whole object from it.
struct UvTimer {
  uv_timer_t handle{};
  SpiceTimerFunc func = nullptr;
  void* opaque = nullptr;
};
struct UvWatch {
  uv_poll_t handle{};
  int fd = -1;
  SpiceWatchFunc func = nullptr;
  void* opaque = nullptr;
};

// spice-core.h declares SpiceTimer and SpiceWatch opaque; the pointers libspice-server holds are
// ours, cast back here (tests/oracle/spice-host.cpp, linked into the same programs, completes the
// two types for its inert core, so they are not completed here).
SpiceTimer* asSpice(UvTimer* t) {
  return reinterpret_cast<SpiceTimer*>(t);
}
UvTimer* asUv(SpiceTimer* t) {
  return reinterpret_cast<UvTimer*>(t);
}
SpiceWatch* asSpice(UvWatch* w) {
  return reinterpret_cast<SpiceWatch*>(w);
}
UvWatch* asUv(SpiceWatch* w) {
  return reinterpret_cast<UvWatch*>(w);
}

void timerFired(uv_timer_t* handle) {
  auto* t = reinterpret_cast<UvTimer*>(handle);
  t->func(t->opaque);
}

SpiceTimer* timerAdd(SpiceTimerFunc func, void* opaque) {
  auto* t = new UvTimer;
  t->func = func;
  t->opaque = opaque;
  uv_timer_init(coreLoop, &t->handle);
  return asSpice(t);
}
void timerStart(SpiceTimer* timer, uint32_t ms) {
  // One-shot, as libspice-server expects (it restarts its periodic timers itself).
  uv_timer_start(&asUv(timer)->handle, timerFired, ms, 0);
}
void timerCancel(SpiceTimer* timer) {
  uv_timer_stop(&asUv(timer)->handle);
}
void timerRemove(SpiceTimer* timer) {
  uv_timer_stop(&asUv(timer)->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&asUv(timer)->handle),
           [](uv_handle_t* h) { delete reinterpret_cast<UvTimer*>(h); });
}

int toUvEvents(int spiceMask) {
  return ((spiceMask & SPICE_WATCH_EVENT_READ) ? UV_READABLE : 0) |
         ((spiceMask & SPICE_WATCH_EVENT_WRITE) ? UV_WRITABLE : 0);
}

void watchFired(uv_poll_t* handle, int status, int events) {
  auto* w = reinterpret_cast<UvWatch*>(handle);
  // An error on the descriptor (status < 0) is reported as readable: libspice-server's read then
  // sees the error or EOF and closes the client, which is what a failed socket needs.
  int spiceEvents = 0;
  if (status < 0 || (events & UV_READABLE))
    spiceEvents |= SPICE_WATCH_EVENT_READ;
  if (events & UV_WRITABLE)
    spiceEvents |= SPICE_WATCH_EVENT_WRITE;
  if (spiceEvents)
    w->func(w->fd, spiceEvents, w->opaque);
}

void watchUpdateMask(SpiceWatch* watch, int mask) {
  UvWatch* w = asUv(watch);
  const int events = toUvEvents(mask);
  if (events == 0) {
    uv_poll_stop(&w->handle);
    return;
  }
  if (int rc = uv_poll_start(&w->handle, events, watchFired); rc != 0)
    spdlog::error("cannot watch descriptor {} for libspice-server: {}", w->fd, uv_strerror(rc));
}

SpiceWatch* watchAdd(int fd, int mask, SpiceWatchFunc func, void* opaque) {
  auto* w = new UvWatch;
  w->fd = fd;
  w->func = func;
  w->opaque = opaque;
  if (int rc = uv_poll_init(coreLoop, &w->handle, fd); rc != 0) {
    spdlog::error("cannot watch descriptor {} for libspice-server: {}", fd, uv_strerror(rc));
    delete w;
    return nullptr;  // libspice-server treats a null watch as a failed add
  }
  watchUpdateMask(asSpice(w), mask);
  return asSpice(w);
}

void watchRemove(SpiceWatch* watch) {
  UvWatch* w = asUv(watch);
  uv_poll_stop(&w->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->handle),
           [](uv_handle_t* h) { delete reinterpret_cast<UvWatch*>(h); });
}

void channelEvent(int, SpiceChannelEventInfo*) {}

}  // namespace

SpiceCoreInterface uvCore(uv_loop_t* loop, const char* description) {
  coreLoop = loop;
  SpiceCoreInterface core{};
  core.base.type = SPICE_INTERFACE_CORE;
  core.base.description = description;
  core.base.major_version = SPICE_INTERFACE_CORE_MAJOR;
  core.base.minor_version = SPICE_INTERFACE_CORE_MINOR;
  core.timer_add = timerAdd;
  core.timer_start = timerStart;
  core.timer_cancel = timerCancel;
  core.timer_remove = timerRemove;
  core.watch_add = watchAdd;
  core.watch_update_mask = watchUpdateMask;
  core.watch_remove = watchRemove;
  core.channel_event = channelEvent;
  return core;
}

}  // namespace spicebox::bench
