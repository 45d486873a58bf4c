// Runs in: the oracle tools (spicebox-replay-check, spicebox-render-oracle) on a developer machine
// or CI. Input: none; the minimal host libspice-server needs around its replayer and worker.
//
// A core whose timers and watches exist but never fire (spice_server_init needs non-NULL handles;
// with no client and no listening socket no callback is ever due), and a QXL interface for
// spice_replay's commands: one memslot mapping the whole address space 1:1 (the replayer hands
// the worker pointers into its own heap as QXLPHYSICAL addresses).
#pragma once

#include <spice.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <utility>

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

// One ring (display or cursor) between a host's main thread, which pushes commands, and
// libspice-server's worker thread, which takes them in get_command.
class WorkerQueue {
 public:
  // Main thread: queue a command (it must outlive its processing); the worker has not seen the
  // queue empty since.
  void push(const QXLCommandExt* cmd) {
    std::lock_guard lock(mutex_);
    queue_.push_back(cmd);
    drained_ = false;
  }
  // Worker thread (get_command): the next command, or false after noting that the queue ran dry.
  bool pop(QXLCommandExt* out) {
    std::lock_guard lock(mutex_);
    if (queue_.empty()) {
      drained_ = true;
      drainedEvent_.notify_all();
      return false;
    }
    *out = *queue_.front();
    queue_.pop_front();
    ++taken_;
    return true;
  }
  // Worker thread (req_*_notification): true = "nothing pending, wake me", false = "look again".
  bool empty() {
    std::lock_guard lock(mutex_);
    return queue_.empty();
  }
  // Main thread: waits until the worker found the queue empty after the last push, i.e. it has
  // processed every command it took. False on timeout.
  bool waitDrained(std::chrono::seconds timeout) {
    std::unique_lock lock(mutex_);
    return drainedEvent_.wait_for(lock, timeout, [this] { return drained_; });
  }
  // Commands the worker took since the last call.
  uint64_t takeCount() {
    std::lock_guard lock(mutex_);
    return std::exchange(taken_, 0);
  }

 private:
  std::mutex mutex_;
  std::condition_variable drainedEvent_;
  std::deque<const QXLCommandExt*> queue_;
  bool drained_ = true;
  uint64_t taken_ = 0;
};

}  // namespace spicebox::oracle
