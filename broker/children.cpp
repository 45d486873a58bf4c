#include "broker/children.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <algorithm>
#include <cstring>
#include <fstream>

#include <spdlog/spdlog.h>
#include "base/syscall.h"
#include "ipc/child-fds.h"

extern char** environ;

namespace spicebox::broker {
namespace {

using Clock = std::chrono::steady_clock;

// Exit status of a child whose broker was gone before it could exec (the PDEATHSIG race).
constexpr int EXIT_PARENT_GONE = 125;
// Exit status of a child whose exec failed.
constexpr int EXIT_EXEC_FAILED = 127;

long millisSince(Clock::time_point then) {
  return std::chrono::duration_cast<Millis>(Clock::now() - then).count();
}

}  // namespace

char processState(pid_t pid) {
  // /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces and parentheses, the state
  // follows the last ')'.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line))
    return 0;
  const size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size())
    return 0;
  return line[close + 2];
}

bool processStopped(pid_t pid) {
  const char state = processState(pid);
  return state == 'T' || state == 't';
}

std::string describeWaitStatus(int status) {
  if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    if (code == EXIT_EXEC_FAILED)
      return "could not be executed (exit status 127)";
    return "exited with status " + std::to_string(code);
  }
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    std::string text = "killed by SIG" + std::string(abbrev ? abbrev : std::to_string(sig));
    if (sig == SIGSYS)
      text += " (a system call outside its seccomp allowlist)";
    return text;
  }
  return "ended with wait status " + std::to_string(status);
}

namespace {

// The environment a child gets: the broker's, less what belongs to the broker alone (systemd's
// notification socket and socket activation; a child must not impersonate the service).
std::vector<std::string> childEnvironment() {
  static constexpr const char* BROKER_ONLY[] = {
      "NOTIFY_SOCKET=",  "LISTEN_FDS=",    "LISTEN_PID=",
      "LISTEN_FDNAMES=", "WATCHDOG_USEC=", "WATCHDOG_PID="};
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    bool brokerOnly =
        std::any_of(std::begin(BROKER_ONLY), std::end(BROKER_ONLY),
                    [e](const char* p) { return std::strncmp(*e, p, std::strlen(p)) == 0; });
    if (!brokerOnly)
      env.emplace_back(*e);
  }
  return env;
}

std::vector<char*> pointersTo(std::vector<std::string>& strings) {
  std::vector<char*> ptrs;
  for (auto& s : strings)
    ptrs.push_back(s.data());
  ptrs.push_back(nullptr);
  return ptrs;
}

// Runs in the forked child, between fork and exec: async-signal-safe calls only.
[[noreturn]] void execChild(int channelFd, pid_t broker, char* const argv[], char* const envp[]) {
  // Dies with the broker, however the broker dies. Set before the check below, so a broker that
  // died in between is noticed either by the signal or by the check.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != broker)
    ::_exit(EXIT_PARENT_GONE);
  // Own process group: a terminal's Ctrl-C reaches only the broker, which stops the tree in order.
  ::setpgid(0, 0);
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, nullptr);
  if (channelFd == ipc::CHILD_CHANNEL_FD) {
    ::fcntl(channelFd, F_SETFD, 0);  // dup2 onto itself would keep O_CLOEXEC
  } else if (::dup2(channelFd, ipc::CHILD_CHANNEL_FD) < 0) {
    ::_exit(EXIT_EXEC_FAILED);
  }
  ::execve(argv[0], argv, envp);
  static constexpr char MSG[] = "spicebox-broker: exec of child failed\n";
  [[maybe_unused]] auto n = ::write(2, MSG, sizeof MSG - 1);
  ::_exit(EXIT_EXEC_FAILED);
}

}  // namespace

const char* toString(ChildState state) {
  switch (state) {
    case ChildState::Starting:
      return "starting";
    case ChildState::Ready:
      return "ready";
    case ChildState::WaitingRestart:
      return "restarting";
    case ChildState::Stopping:
      return "stopping";
    case ChildState::Stopped:
      return "stopped";
    case ChildState::GaveUp:
      return "failed";
  }
  return "unknown";
}

Child::Child(uv_loop_t* loop, std::unique_ptr<ChildPeer> peer, ChildSpec spec,
             SupervisionPolicy policy, Events events)
    : loop_(loop),
      peer_(std::move(peer)),
      spec_(std::move(spec)),
      policy_(policy),
      events_(std::move(events)) {
  uv_timer_init(loop_, heartbeatTimer_.get());
  uv_timer_init(loop_, restartTimer_.get());
  uv_timer_init(loop_, stopTimer_.get());
  uv_timer_init(loop_, closedTimer_.get());
  heartbeatTimer_->data = this;
  restartTimer_->data = this;
  stopTimer_->data = this;
  closedTimer_->data = this;
}

Child::~Child() {
  // The broker destroys a Child only once its process is reaped (stop() finished), or when the
  // broker itself is going away, in which case PDEATHSIG takes the process with it.
  if (pid_ > 0)
    ::kill(pid_, SIGKILL);
}

void Child::start() {
  spawn();
}

std::string Child::describe() const {
  std::string text = std::string(name()) + " " + toString(state_);
  if (pid_ > 0)
    text += " (pid " + std::to_string(pid_);
  else
    text += " (no process";
  if (state_ == ChildState::Ready)
    text += std::string(", sandbox ") + sandbox::toString(sandboxLevel_);
  text += ", " + std::to_string(restarts_) + " restarts)";
  return text;
}

void Child::setState(ChildState state) {
  state_ = state;
  if (events_.onStateChange)
    events_.onStateChange();
}

void Child::spawn() {
  auto [ours, theirs] = ipc::socketPair();

  // Everything exec needs is prepared before fork: the child may only make async-signal-safe
  // calls until it execs.
  std::vector<std::string> argvStore{spec_.binary};
  argvStore.insert(argvStore.end(), spec_.args.begin(), spec_.args.end());
  std::vector<std::string> envStore = childEnvironment();
  std::vector<char*> argv = pointersTo(argvStore);
  std::vector<char*> envp = pointersTo(envStore);
  pid_t broker = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    spdlog::error("cannot fork the {}: {}", name(), std::strerror(err));
    scheduleRestart(std::string("fork failed: ") + std::strerror(err), true);
    return;
  }
  if (pid == 0)
    execChild(theirs.get(), broker, argv.data(), envp.data());

  theirs.reset();
  killed_ = false;
  killedHung_ = false;
  killedStopped_ = false;
  pid_ = pid;
  // pidfd: the exit is an event on the loop, with no SIGCHLD handler and no pid reuse race (the
  // child stays a zombie until we reap it).
  pidfd_ = base::Fd(static_cast<int>(SB_SYSCALL(::syscall(SYS_pidfd_open, pid, 0), "pidfd_open")));
  exitPoll_ = base::UvHandle<uv_poll_t>();
  uv_poll_init(loop_, exitPoll_.get(), pidfd_.get());
  exitPoll_->data = this;
  uv_poll_start(exitPoll_.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    if (auto* self = static_cast<Child*>(handle->data))
      self->onExited();
  });

  channel_ = std::make_unique<ipc::Channel>(
      loop_, std::move(ours), name(),
      [this](capnp::MessageReader& message, ipc::ReceivedFds& fds) {
        return onMessage(message, fds);
      },
      [this](const std::string& reason) { onChannelClosed(reason); });
  peer_->sendHello(*channel_);

  spawnedAt_ = Clock::now();
  readyThisRun_ = false;
  pingSeq_ = 0;
  lastPongSeq_ = 0;
  spdlog::debug("started {} (pid {})", name(), pid_);
  setState(ChildState::Starting);
  auto interval = static_cast<uint64_t>(policy_.heartbeatInterval.count());
  uv_timer_start(
      heartbeatTimer_.get(), [](uv_timer_t* t) { static_cast<Child*>(t->data)->onHeartbeatTick(); },
      interval, interval);
}

ipc::Channel::Verdict Child::onMessage(capnp::MessageReader& message, ipc::ReceivedFds& fds) {
  if (killed_)
    return std::nullopt;  // what a process being killed still had queued is not acted on
  auto decoded = peer_->decode(message, fds);
  using Kind = ChildPeer::Decoded::Kind;
  switch (decoded.kind) {
    case Kind::Refused:
      return decoded.refusal;
    case Kind::Hello: {
      if (state_ != ChildState::Starting)
        return std::string("a second hello");
      readyThisRun_ = true;
      readyAt_ = lastPongAt_ = Clock::now();
      startupFailures_ = 0;
      sandboxLevel_ = decoded.hello.sandboxLevel;
      std::string missing;
      for (const auto& m : decoded.hello.sandboxMissing)
        missing += (missing.empty() ? "" : "; ") + m;
      if (missing.empty()) {
        spdlog::info("{} ready (pid {}, sandbox {}, {} ms after start)", name(), pid_,
                     sandbox::toString(sandboxLevel_), millisSince(spawnedAt_));
      } else {
        spdlog::warn("{} ready (pid {}, sandbox {}; not reached: {})", name(), pid_,
                     sandbox::toString(sandboxLevel_), missing);
      }
      setState(ChildState::Ready);
      if (events_.onReady)
        events_.onReady();
      return std::nullopt;
    }
    case Kind::Boundary:
      if (state_ != ChildState::Ready)
        return std::string("a boundary message before its hello");
      if (!events_.onMessage)
        return std::string("a message this boundary does not take yet");
      return events_.onMessage(decoded.boundary);
    case Kind::Pong:
      if (state_ != ChildState::Ready)
        return std::string("a heartbeat answer before its hello");
      if (decoded.seq <= lastPongSeq_ || decoded.seq > pingSeq_) {
        return "a heartbeat answer for ping " + std::to_string(decoded.seq) +
               ", which was not the next one sent";
      }
      lastPongSeq_ = decoded.seq;
      lastPongAt_ = Clock::now();
      return std::nullopt;
  }
  return std::string("unhandled message");
}

void Child::onChannelClosed(const std::string& reason) {
  if (state_ == ChildState::Stopping || pid_ <= 0)
    return;
  // The channel is the child's only link: without it the child is useless. A child that hung up
  // is usually dying (killed from outside, crashed): its exit, due any moment, says how and leads
  // to the restart, which a SIGKILL from here would hide. So it gets a moment; a child the
  // channel refused (it sent what it may not) is killed at once.
  if (reason != ipc::Channel::PEER_CLOSED) {
    killChild("its channel closed: " + reason);
    return;
  }
  const pid_t pid = pid_;
  closedPid_ = pid;
  uv_timer_start(
      closedTimer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Child*>(t->data);
        if (self->pid_ == self->closedPid_ && self->pid_ > 0)
          self->killChild("it closed its channel and did not exit");
      },
      CLOSED_GRACE_MS, 0);
}

void Child::onHeartbeatTick() {
  if (state_ == ChildState::Starting && millisSince(spawnedAt_) > policy_.startTimeout.count()) {
    killChild("it did not report ready within " + std::to_string(policy_.startTimeout.count()) +
              " ms");
    return;
  }
  if (state_ != ChildState::Ready)
    return;
  if (millisSince(lastPongAt_) > policy_.heartbeatTimeout.count()) {
    // Stopped (SIGSTOP from an operator, a debugger) is not hung on its work: replaced all the
    // same, but not counted against what it was doing.
    const bool stopped = processStopped(pid_);
    killChild(std::string(stopped ? "it is stopped (SIGSTOP) and" : "it") +
                  " stopped answering heartbeats (none for " +
                  std::to_string(millisSince(lastPongAt_)) + " ms)",
              !stopped);
    killedStopped_ = stopped;
    return;
  }
  peer_->sendPing(*channel_, ++pingSeq_);
}

bool Child::send(capnp::MessageBuilder& message, std::span<const int> fds) {
  if (state_ != ChildState::Ready || killed_ || !channel_)
    return false;
  return channel_->send(message, fds);
}

void Child::kill(const std::string& why, bool hung) {
  if (pid_ <= 0 || killed_)
    return;
  // A stopped process (SIGSTOP) missed its deadline because someone stopped it.
  const bool stopped = hung && processStopped(pid_);
  killChild(stopped ? why + " (it is stopped: SIGSTOP)" : why, hung && !stopped);
  killedStopped_ = stopped;
}

void Child::killChild(const std::string& why, bool hung) {
  if (pid_ <= 0 || killed_)
    return;
  killed_ = true;
  killedHung_ = hung;
  spdlog::warn("killing {} (pid {}): {}", name(), pid_, why);
  ::kill(pid_, SIGKILL);
  uv_timer_stop(heartbeatTimer_.get());
}

void Child::onExited() {
  int status = 0;
  pid_t reaped = ::waitpid(pid_, &status, WNOHANG);
  if (reaped == 0)
    return;  // not yet: pidfd readiness without an exit does not happen, but be safe
  exitPoll_.close();
  pidfd_.reset();
  channel_.reset();
  uv_timer_stop(heartbeatTimer_.get());
  pid_t oldPid = pid_;
  pid_ = -1;
  lastExit_ = reaped < 0 ? std::string("could not be reaped: ") + std::strerror(errno)
                         : describeWaitStatus(status);

  if (state_ == ChildState::Stopping) {
    spdlog::info("{} (pid {}) stopped: {}", name(), oldPid, lastExit_);
    uv_timer_stop(stopTimer_.get());
    setState(ChildState::Stopped);
    if (auto done = std::exchange(stopDone_, nullptr))
      done();
    return;
  }
  ChildDeath death;
  death.how = lastExit_;
  death.wasReady = readyThisRun_;
  if (reaped > 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
    death.hung = killed_ && killedHung_;
    death.fromOutside = !killed_ || killedStopped_;
  } else if (reaped > 0) {
    death.crashed = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
  }
  if (events_.onDied)
    events_.onDied(death);
  scheduleRestart(name() + std::string(" (pid ") + std::to_string(oldPid) + ") " + lastExit_,
                  !readyThisRun_, death.fromOutside);
}

void Child::scheduleRestart(const std::string& why, bool startupFailure, bool fromOutside) {
  if (startupFailure) {
    if (++startupFailures_ >= policy_.maxStartupFailures) {
      std::string message = std::string(name()) + " failed " + std::to_string(startupFailures_) +
                            " times in a row before becoming ready (last: " + why +
                            "); giving up. Its log lines above say why; a sandbox that cannot be "
                            "entered is fixed with --sandbox=best-effort or by enabling user "
                            "namespaces.";
      spdlog::critical("{}", message);
      setState(ChildState::GaveUp);
      if (events_.onGaveUp)
        events_.onGaveUp(message);
      return;
    }
  } else if (millisSince(readyAt_) >= policy_.healthyAfter.count()) {
    recentDeaths_ = 0;  // it was healthy for a while: this death starts a new backoff
  }
  // The first death after a healthy run is replaced at once (clients and the guest wait on it);
  // repeated ones back off from restartDelayMin, doubling. A ready child killed from outside (an
  // operator, the OOM killer) is not in a crash loop of its own: replaced at once, not counted.
  if (!fromOutside || startupFailure)
    ++recentDeaths_;
  long delay = 0;
  if (startupFailure || (!fromOutside && recentDeaths_ > 1)) {
    delay = policy_.restartDelayMin.count();
    for (int i = 2; i < recentDeaths_ && delay < policy_.restartDelayMax.count(); ++i)
      delay *= 2;
    delay = std::min<long>(delay, policy_.restartDelayMax.count());
  }
  spdlog::warn("{}; restarting it in {} ms", why, delay);
  setState(ChildState::WaitingRestart);
  uv_timer_start(
      restartTimer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Child*>(t->data);
        ++self->restarts_;
        self->spawn();
      },
      static_cast<uint64_t>(delay), 0);
}

void Child::stop(std::function<void()> done) {
  uv_timer_stop(restartTimer_.get());
  uv_timer_stop(heartbeatTimer_.get());
  if (pid_ <= 0) {
    setState(ChildState::Stopped);
    done();
    return;
  }
  stopDone_ = std::move(done);
  setState(ChildState::Stopping);
  ::kill(pid_, SIGTERM);
  uv_timer_start(
      stopTimer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Child*>(t->data);
        spdlog::warn("{} (pid {}) did not stop within {} ms of SIGTERM; killing it", self->name(),
                     self->pid_, self->policy_.stopGrace.count());
        self->killNow();
      },
      static_cast<uint64_t>(policy_.stopGrace.count()), 0);
}

void Child::killNow() {
  if (pid_ > 0)
    ::kill(pid_, SIGKILL);
}

}  // namespace spicebox::broker

namespace spicebox::broker {

pid_t spawnWithChannel(const std::vector<std::string>& argvIn, int channelFd) {
  std::vector<std::string> argvStore = argvIn;
  std::vector<std::string> envStore = childEnvironment();
  std::vector<char*> argv = pointersTo(argvStore);
  std::vector<char*> envp = pointersTo(envStore);
  pid_t broker = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0)
    base::throwSystemError(errno, "fork", "starting " + argvIn.at(0));
  if (pid == 0) {
    // ipc::socketPair makes both ends non-blocking; the helper gets a plain blocking descriptor,
    // as a program started by hand would. (The broker's end is another socket: unaffected.)
    int flags = ::fcntl(channelFd, F_GETFL);
    if (flags != -1)
      ::fcntl(channelFd, F_SETFL, flags & ~O_NONBLOCK);
    execChild(channelFd, broker, argv.data(), envp.data());
  }
  return pid;
}

OneShotProcess::OneShotProcess(uv_loop_t* loop, std::string name,
                               const std::vector<std::string>& argv, int channelFd,
                               std::function<void()> onExit)
    : name_(std::move(name)), onExit_(std::move(onExit)) {
  pid_ = spawnWithChannel(argv, channelFd);
  pidfd_ = base::Fd(static_cast<int>(SB_SYSCALL(::syscall(SYS_pidfd_open, pid_, 0), "pidfd_open")));
  uv_poll_init(loop, exitPoll_.get(), pidfd_.get());
  exitPoll_->data = this;
  uv_poll_start(exitPoll_.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    if (auto* self = static_cast<OneShotProcess*>(handle->data))
      self->onExited();
  });
  uv_timer_init(loop, stopTimer_.get());
  stopTimer_->data = this;
  spdlog::info("started the {} (pid {}): {}", name_, pid_, argv.at(0));
}

OneShotProcess::~OneShotProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);  // SIGKILL cannot be ignored: this returns at once
  }
}

void OneShotProcess::onExited() {
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == 0)
    return;
  exitPoll_.close();
  pidfd_.reset();
  uv_timer_stop(stopTimer_.get());
  const bool stopping = static_cast<bool>(stopDone_);
  if (stopping)
    spdlog::info("the {} (pid {}) stopped: {}", name_, pid_, describeWaitStatus(status));
  else
    spdlog::warn("the {} (pid {}) {}; it is not restarted, the broker carries on without it", name_,
                 pid_, describeWaitStatus(status));
  pid_ = -1;
  if (onExit_)
    onExit_();
  if (auto done = std::exchange(stopDone_, nullptr))
    done();
}

void OneShotProcess::stop(Millis grace, std::function<void()> done) {
  if (pid_ <= 0) {
    done();
    return;
  }
  stopDone_ = std::move(done);
  ::kill(pid_, SIGTERM);
  uv_timer_start(
      stopTimer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<OneShotProcess*>(t->data);
        if (self->pid_ > 0) {
          spdlog::warn("the {} (pid {}) did not stop on SIGTERM; killing it", self->name_,
                       self->pid_);
          ::kill(self->pid_, SIGKILL);
        }
      },
      static_cast<uint64_t>(grace.count()), 0);
}

}  // namespace spicebox::broker
