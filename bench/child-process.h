// Runs in: spicebox-bench-latency and bench-tests (developer machine, unsandboxed). Input: the
// output of the programs they start (spicebox-broker, spicebox-latency,
// spicebox-bench-spice-serve, spicy-screenshot): text, kept bounded, only searched.
//
// A child process whose stdout and stderr come back through pipes, and a pump that waits on any
// number of them at once (poll on the pipes and on each child's pidfd): waiting for a line, for
// an exit or for a deadline never sleeps, and every child's pipes keep being drained while the
// caller waits on another one (a full pipe would stall a child).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"

namespace spicebox::bench {

using Clock = std::chrono::steady_clock;

// Output kept per stream of a child: older text is dropped beyond this (a broker logging for
// minutes must not grow the benchmark's memory without bound). Searches only need recent lines.
inline constexpr size_t MAX_KEPT_OUTPUT = 4 << 20;

class ChildProcess {
 public:
  // Starts argv[0] (a path, or a name looked up in PATH) with stdin on /dev/null. `name` labels
  // it in messages. On failure (fork, pipe, pidfd), an error message.
  static std::variant<std::unique_ptr<ChildProcess>, std::string> spawn(
      std::string name, const std::vector<std::string>& argv);
  ~ChildProcess();  // kills (SIGKILL) and reaps a child still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  // The wait status once the child was reaped.
  const std::optional<int>& exitStatus() const { return exitStatus_; }
  bool running() const { return !exitStatus_; }
  // "exited with status 1", "killed by signal 9 (Killed)", or "still running".
  std::string describeExit() const;

  // Sends `signal` (when still running).
  void signal(int sig);

 private:
  friend class Pump;
  ChildProcess() = default;
  // Reads what a pipe has (non-blocking); closes it at EOF.
  void readPipe(base::Fd& fd, std::string& into);
  void reap();

  std::string name_;
  pid_t pid_ = -1;
  base::Fd outPipe_, errPipe_, pidfd_;
  std::string out_, err_;
  std::optional<int> exitStatus_;
};

// Waits for events of several children at once.
class Pump {
 public:
  explicit Pump(std::vector<ChildProcess*> children) : children_(std::move(children)) {}
  // Handles output and exits until `done()` holds (true) or `deadline` passes (false). `done` is
  // checked first and after every event.
  bool until(const std::function<bool()>& done, Clock::time_point deadline);
  // Waits for `child` to exit; false on deadline.
  bool untilExit(ChildProcess& child, Clock::time_point deadline);
  // Sends SIGTERM, waits up to `grace` for the exit, then SIGKILL and waits for it.
  void stop(ChildProcess& child, std::chrono::milliseconds grace);

 private:
  std::vector<ChildProcess*> children_;
};

// The text between `prefix` and the end of its line, from the first line of `text` that contains
// `prefix`; nullopt when there is none yet.
std::optional<std::string> findAfter(const std::string& text, const std::string& prefix);

}  // namespace spicebox::bench
