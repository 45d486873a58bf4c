// Runs in: tests. A libuv loop that runs until an awaited event (no sleeps), and the descriptor
// count that shows nothing leaked. Shared by every test that drives a Channel or a listener.
#pragma once

#include <dirent.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>

#include "base/uv-handle.h"

namespace spicebox::test {

// How long a loop may wait for an awaited event before the test fails instead of hanging.
inline constexpr uint64_t WATCHDOG_MS = 10000;

// Entries in /proc/self/fd, not counting the one used to list them.
inline size_t countOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  REQUIRE(dir != nullptr);
  size_t n = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.')
      ++n;
  }
  ::closedir(dir);
  return n - 1;
}

// The first uv_loop_init of a process opens libuv's process-wide signal lock pipe, kept until
// exit. Call once before any count, so the pipe is not mistaken for a leak.
inline void initLibuvGlobals() {
  static const bool done = [] {
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(uv_loop_close(&loop) == 0);
    return true;
  }();
  (void)done;
}

// A libuv loop for one test. Destroyed after what it drives, it runs once more so the close
// callbacks free the handles' memory (base/uv-handle.h), then closes the loop's own descriptors.
class TestLoop {
 public:
  TestLoop() { REQUIRE(uv_loop_init(&loop_) == 0); }
  ~TestLoop() {
    for (int i = 0; i < 4 && uv_loop_alive(&loop_); ++i)
      uv_run(&loop_, UV_RUN_NOWAIT);
    CHECK(uv_loop_close(&loop_) == 0);
  }
  TestLoop(const TestLoop&) = delete;
  TestLoop& operator=(const TestLoop&) = delete;

  uv_loop_t* get() { return &loop_; }

  // Runs the loop until `done` holds. Fails the test if the loop runs out of work first (the
  // event can no longer happen) or if WATCHDOG_MS pass.
  void runUntil(const std::function<bool()>& done) {
    bool expired = false;
    base::UvHandle<uv_timer_t> watchdog;
    uv_timer_init(&loop_, watchdog.get());
    watchdog->data = &expired;
    uv_timer_start(
        watchdog.get(), [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, WATCHDOG_MS, 0);
    uv_unref(watchdog.handle());  // the watchdog alone does not keep the loop alive
    while (!done()) {
      REQUIRE_FALSE(expired);
      bool alive = uv_run(&loop_, UV_RUN_ONCE) != 0;
      if (!done() && !alive)
        FAIL("the loop ran out of work before the awaited event");
    }
  }

  // A few iterations with nothing awaited: lets anything wrongly scheduled show itself.
  void spin() {
    for (int i = 0; i < 3; ++i)
      uv_run(&loop_, UV_RUN_NOWAIT);
  }

 private:
  uv_loop_t loop_;
};

}  // namespace spicebox::test
