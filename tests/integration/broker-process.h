// Runs in: tests. Starts the real spicebox-broker and follows it through the systemd notification
// protocol (NOTIFY_SOCKET): READY=1 and STATUS= lines are events the test waits on, no sleeps.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/fd.h"

namespace spicebox::test {

// One child as the broker's STATUS line describes it: "renderer ready (pid 12, sandbox full, 3
// restarts)".
struct ChildStatus {
  std::string state;  // ready, starting, restarting, stopping, stopped, failed
  pid_t pid = -1;
  int restarts = 0;
};

struct BrokerStatus {
  ChildStatus renderer;
  ChildStatus netproxy;
  std::string raw;
};

std::optional<BrokerStatus> parseStatus(const std::string& line);

class BrokerProcess {
 public:
  // Starts the broker with `args`, its stderr going to a pipe the test can read (stderrText()).
  // `--builtin-guest none` is added unless `args` name a --builtin-guest themselves.
  explicit BrokerProcess(std::vector<std::string> args, std::string libexecDir = "");
  ~BrokerProcess();

  pid_t pid() const { return pid_; }

  // Waits for a STATUS for which `pred` holds; nullopt when `timeout` passes first or the broker
  // exits.
  std::optional<BrokerStatus> waitForStatus(const std::function<bool(const BrokerStatus&)>& pred,
                                            std::chrono::milliseconds timeout);
  // Both children ready.
  std::optional<BrokerStatus> waitForReady(std::chrono::milliseconds timeout);

  // Waits until the broker's stderr (its children's included) contains `text`, searching from
  // byte `from` on; returns the position just past it, or nullopt when `timeout` passes first or
  // the broker exits.
  std::optional<size_t> waitForLog(const std::string& text, std::chrono::milliseconds timeout,
                                   size_t from = 0);

  // Waits for the broker to exit; returns its wait status, or nullopt on timeout.
  std::optional<int> waitForExit(std::chrono::milliseconds timeout);

  // Everything the broker (and its children) wrote to stderr so far.
  const std::string& stderrText();

  // Reads whatever the broker has sent so far (notifications, stderr) and reaps it if it exited,
  // without waiting. Tests that wait on something else call it regularly: a full notification
  // queue or stderr pipe would block the broker (sd_notify() blocks on a full queue).
  void drain();

 private:
  void drainStderr();
  // Waits for one event, at most until `deadline`: a notification (STATUS lines update last_),
  // stderr output, or the broker's exit (reaped into exitStatus_). False when the deadline passed.
  bool pumpOnce(std::chrono::steady_clock::time_point deadline);

  pid_t pid_ = -1;
  std::optional<int> exitStatus_;  // wait status, once reaped
  std::string dir_;
  base::Fd notify_;
  base::Fd pidfd_;
  base::Fd stderr_;
  std::string stderrText_;
  std::optional<BrokerStatus> last_;
};

// Number of open descriptors of a process (entries of /proc/PID/fd), not counting the transient
// datagram socket of an sd_notify() call in progress.
int countFds(pid_t pid);
// Its descriptors and what they point to, one per line, for failure messages.
std::string listFds(pid_t pid);
// Pids of the live (non-zombie) children of a process.
std::vector<pid_t> childrenOf(pid_t pid);
// The value of a line of /proc/PID/status ("Seccomp" -> "2"), empty if absent.
std::string procStatusField(pid_t pid, const std::string& field);
bool processExists(pid_t pid);

}  // namespace spicebox::test
