// Runs in: broker. Starts one child process (renderer or netproxy) with fork + exec, keeps it
// alive: restarts it with exponential backoff when it dies, kills and replaces it when it stops
// answering heartbeats, gives up loudly when it keeps failing before it ever reports ready.
// Input: the child's messages, through its ChildPeer (assumed compromised).
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "broker/peer-child.h"
#include "ipc/channel.h"
#include "sandbox/sandbox.h"

namespace spicebox::broker {

using Millis = std::chrono::milliseconds;

// How a child is kept alive. Defaults suit production; tests shorten them.
struct SupervisionPolicy {
  Millis heartbeatInterval{1000};  // between pings
  Millis heartbeatTimeout{3000};   // no pong for this long: the child is hung, kill it
  Millis startTimeout{10000};      // no hello this long after exec: a failed start
  Millis restartDelayMin{50};      // first restart delay; doubles per death...
  Millis restartDelayMax{5000};    // ...up to this
  Millis healthyAfter{10000};      // ready this long: the backoff starts over
  int maxStartupFailures = 5;      // consecutive deaths before ready: give up
  Millis stopGrace{2000};          // SIGTERM, then SIGKILL after this long
};

// How a child is started.
struct ChildSpec {
  std::string binary;             // absolute path of the executable
  std::vector<std::string> args;  // arguments after argv[0]
};

// How an incarnation that was not being stopped ended, for the owner's policy (the broker
// quarantines a command that brings the renderer down twice, but not for kills from outside).
struct ChildDeath {
  std::string how;        // "killed by SIGSEGV", "exited with status 1"
  bool wasReady = false;  // it had reported ready
  bool crashed = false;  // it died of its own fault: a signal other than SIGKILL, or a failure exit
  bool hung = false;     // killed here for not answering: heartbeats, or kill(..., hung)
  bool fromOutside = false;  // SIGKILL that nobody here sent (an operator, the OOM killer, a test)
};

// What a child looks like from outside, for status reports.
enum class ChildState { Starting, Ready, WaitingRestart, Stopping, Stopped, GaveUp };
const char* toString(ChildState state);

class Child {
 public:
  // Called on every state change (status reporting), and when the child was given up on.
  struct Events {
    std::function<void()> onStateChange;
    std::function<void(const std::string& why)> onGaveUp;
    // A new incarnation reported ready (after onStateChange): it knows nothing yet.
    std::function<void()> onReady;
    // A boundary message from the ready child, decoded by its peer. A returned reason means the
    // child sent what it may not (the permit table): it is killed and replaced. Unset: every
    // boundary message is refused.
    std::function<ipc::Channel::Verdict(const BoundaryMessage& message)> onMessage;
    // An incarnation ended while it was not being stopped (before its restart is scheduled).
    std::function<void(const ChildDeath& death)> onDied;
  };

  Child(uv_loop_t* loop, std::unique_ptr<ChildPeer> peer, ChildSpec spec, SupervisionPolicy policy,
        Events events);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Starts the first incarnation.
  void start();
  // Stops for good: SIGTERM, SIGKILL after the grace period; `done` runs once no process is left.
  void stop(std::function<void()> done);
  // SIGKILL now (second Ctrl-C); the exit is still reaped and `done` of stop() still runs.
  void killNow();
  // SIGKILL the current incarnation for `why` (logged); it is replaced like one that died. `hung`:
  // it is killed for not making progress (a missed deadline), which counts like a crash.
  void kill(const std::string& why, bool hung);
  // Sends a boundary message to the current incarnation if it is ready (and not being killed).
  // False when there is none, or the channel failed (the child is then replaced).
  bool send(capnp::MessageBuilder& message, std::span<const int> fds = {});

  const char* name() const { return peer_->name(); }
  ChildState state() const { return state_; }
  pid_t pid() const { return pid_; }
  int restarts() const { return restarts_; }
  // How the last incarnation ended ("killed by SIGKILL"); empty while none has.
  const std::string& lastExit() const { return lastExit_; }
  sandbox::Level sandboxLevel() const { return sandboxLevel_; }
  // One line for logs and sd_notify STATUS, e.g. "renderer ready (pid 12, sandbox full, 3
  // restarts)".
  std::string describe() const;

 private:
  void spawn();
  void onExited();
  void scheduleRestart(const std::string& why, bool startupFailure, bool fromOutside = false);
  void onHeartbeatTick();
  ipc::Channel::Verdict onMessage(capnp::MessageReader& message, ipc::ReceivedFds& fds);
  void onChannelClosed(const std::string& reason);
  void killChild(const std::string& why, bool hung = false);
  void setState(ChildState state);

  uv_loop_t* loop_;
  std::unique_ptr<ChildPeer> peer_;
  ChildSpec spec_;
  SupervisionPolicy policy_;
  Events events_;

  ChildState state_ = ChildState::Stopped;
  pid_t pid_ = -1;
  base::Fd pidfd_;                      // readable when the process exits
  base::UvHandle<uv_poll_t> exitPoll_;  // watches pidfd_
  std::unique_ptr<ipc::Channel> channel_;
  base::UvHandle<uv_timer_t> heartbeatTimer_;  // also the start timeout before hello
  base::UvHandle<uv_timer_t> restartTimer_;
  base::UvHandle<uv_timer_t> stopTimer_;
  base::UvHandle<uv_timer_t> closedTimer_;  // a child that hung up gets this long to exit
  pid_t closedPid_ = -1;
  static constexpr uint64_t CLOSED_GRACE_MS = 200;
  std::function<void()> stopDone_;

  uint64_t pingSeq_ = 0;
  uint64_t lastPongSeq_ = 0;
  std::chrono::steady_clock::time_point spawnedAt_;
  std::chrono::steady_clock::time_point readyAt_;
  std::chrono::steady_clock::time_point lastPongAt_;
  bool readyThisRun_ = false;
  bool killed_ = false;         // SIGKILL sent to this incarnation: nothing more is read or sent
  bool killedHung_ = false;     // ...because it stopped making progress
  bool killedStopped_ = false;  // ...while it was stopped (SIGSTOP): not its own doing
  int startupFailures_ = 0;     // consecutive deaths before ready
  int recentDeaths_ = 0;        // deaths since the child was last healthy for healthyAfter
  int restarts_ = 0;
  sandbox::Level sandboxLevel_ = sandbox::Level::Off;
  std::string lastExit_;  // "killed by SIGKILL", "exited with status 1"
};

// Starts `argv[0]` with `channelFd` at descriptor 3 (blocking, not close-on-exec), dying with the
// broker (PR_SET_PDEATHSIG) and in its own process group, like the supervised children. Returns
// its pid; throws base::SystemError when fork fails.
pid_t spawnWithChannel(const std::vector<std::string>& argv, int channelFd);

// "exited with status 1", "killed by SIGKILL".
std::string describeWaitStatus(int status);
// Whether process `pid` is stopped (SIGSTOP, ptrace): /proc/PID/stat's state T or t.
bool processStopped(pid_t pid);

// A helper process the broker starts once and does not restart (the built-in guest). Its exit is
// logged with its status; `onExit` runs then.
class OneShotProcess {
 public:
  OneShotProcess(uv_loop_t* loop, std::string name, const std::vector<std::string>& argv,
                 int channelFd, std::function<void()> onExit);
  ~OneShotProcess();  // SIGKILL if still running (PDEATHSIG would too, when the broker exits)
  OneShotProcess(const OneShotProcess&) = delete;
  OneShotProcess& operator=(const OneShotProcess&) = delete;

  // SIGTERM, SIGKILL after `grace`; `done` runs once it is reaped (at once if it is gone).
  void stop(Millis grace, std::function<void()> done);
  pid_t pid() const { return pid_; }

 private:
  void onExited();

  std::string name_;
  pid_t pid_ = -1;
  base::Fd pidfd_;
  base::UvHandle<uv_poll_t> exitPoll_;
  base::UvHandle<uv_timer_t> stopTimer_;
  std::function<void()> onExit_;
  std::function<void()> stopDone_;
};

}  // namespace spicebox::broker
