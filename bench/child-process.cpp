// Runs in: spicebox-bench-latency and bench-tests (developer machine). Input: see child-process.h.
#include "bench/child-process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace spicebox::bench {

namespace {

std::string errnoText(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

}  // namespace

std::variant<std::unique_ptr<ChildProcess>, std::string> ChildProcess::spawn(
    std::string name, const std::vector<std::string>& argv) {
  if (argv.empty())
    return "no program given for " + name;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0)
    return errnoText("pipe2");
  base::Fd outRead(out[0]), outWrite(out[1]);
  if (::pipe2(err, O_CLOEXEC) != 0)
    return errnoText("pipe2");
  base::Fd errRead(err[0]), errWrite(err[1]);
  // Everything the child needs is built before fork: after it, only async-signal-safe calls.
  std::vector<std::string> store(argv);
  std::vector<char*> args;
  for (auto& a : store)
    args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0)
    return errnoText("fork");
  if (pid == 0) {
    const int devNull = ::open("/dev/null", O_RDONLY);
    if (devNull < 0 || ::dup2(devNull, 0) < 0 || ::dup2(outWrite.get(), 1) < 0 ||
        ::dup2(errWrite.get(), 2) < 0)
      ::_exit(126);
    ::execvp(args[0], args.data());
    const char msg[] = "cannot execute the program (not found or not executable)\n";
    [[maybe_unused]] auto n = ::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess);
  child->name_ = std::move(name);
  child->pid_ = pid;
  child->pidfd_ = base::Fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!child->pidfd_)
    return errnoText("pidfd_open");  // the destructor kills and reaps the child
  ::fcntl(outRead.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(errRead.get(), F_SETFL, O_NONBLOCK);
  child->outPipe_ = std::move(outRead);
  child->errPipe_ = std::move(errRead);
  return child;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !exitStatus_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

std::string ChildProcess::describeExit() const {
  if (!exitStatus_)
    return "still running";
  const int s = *exitStatus_;
  if (WIFEXITED(s))
    return "exited with status " + std::to_string(WEXITSTATUS(s));
  if (WIFSIGNALED(s))
    return "killed by signal " + std::to_string(WTERMSIG(s)) + " (" + strsignal(WTERMSIG(s)) + ")";
  return "ended with wait status " + std::to_string(s);
}

void ChildProcess::signal(int sig) {
  if (!exitStatus_)
    ::kill(pid_, sig);
}

void ChildProcess::readPipe(base::Fd& fd, std::string& into) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
      if (into.size() > MAX_KEPT_OUTPUT)
        into.erase(0, into.size() - MAX_KEPT_OUTPUT / 2);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    fd.reset();  // EOF, or an error: nothing more will come
    return;
  }
}

void ChildProcess::reap() {
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_)
    exitStatus_ = status;
}

bool Pump::until(const std::function<bool()>& done, Clock::time_point deadline) {
  for (;;) {
    if (done())
      return true;
    const auto now = Clock::now();
    if (now >= deadline)
      return false;
    std::vector<pollfd> fds;
    std::vector<std::pair<ChildProcess*, int>> what;  // 0 out, 1 err, 2 pidfd
    for (ChildProcess* c : children_) {
      if (c->outPipe_) {
        fds.push_back({c->outPipe_.get(), POLLIN, 0});
        what.emplace_back(c, 0);
      }
      if (c->errPipe_) {
        fds.push_back({c->errPipe_.get(), POLLIN, 0});
        what.emplace_back(c, 1);
      }
      if (!c->exitStatus_) {
        fds.push_back({c->pidfd_.get(), POLLIN, 0});
        what.emplace_back(c, 2);
      }
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(left));
    if (n < 0 && errno != EINTR)
      return false;
    for (size_t i = 0; n > 0 && i < fds.size(); ++i) {
      if (!fds[i].revents)
        continue;
      auto [c, kind] = what[i];
      if (kind == 0)
        c->readPipe(c->outPipe_, c->out_);
      else if (kind == 1)
        c->readPipe(c->errPipe_, c->err_);
      else
        c->reap();
    }
  }
}

bool Pump::untilExit(ChildProcess& child, Clock::time_point deadline) {
  // The exit is reported once the pipes are read to their end too, so nothing it wrote is lost.
  return until([&] { return child.exitStatus_ && !child.outPipe_ && !child.errPipe_; }, deadline);
}

void Pump::stop(ChildProcess& child, std::chrono::milliseconds grace) {
  child.signal(SIGTERM);
  if (untilExit(child, Clock::now() + grace))
    return;
  child.signal(SIGKILL);
  untilExit(child, Clock::now() + std::chrono::seconds(10));
}

std::optional<std::string> findAfter(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  if (at == std::string::npos)
    return std::nullopt;
  const size_t start = at + prefix.size();
  const size_t end = text.find('\n', start);
  if (end == std::string::npos)
    return std::nullopt;  // the line is not complete yet
  return text.substr(start, end - start);
}

}  // namespace spicebox::bench
