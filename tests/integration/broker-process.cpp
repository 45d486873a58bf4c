#include "tests/integration/broker-process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace spicebox::test {
namespace {

using Clock = std::chrono::steady_clock;

std::optional<ChildStatus> parseChild(const std::string& line, const std::string& name) {
  std::regex re(name + R"( (\w+) \((?:pid (\d+)|no process)(?:, sandbox \w+)?, (\d+) restarts\))");
  std::smatch m;
  if (!std::regex_search(line, m, re))
    return std::nullopt;
  ChildStatus c;
  c.state = m[1];
  c.pid = m[2].matched ? std::stoi(m[2]) : -1;
  c.restarts = std::stoi(m[3]);
  return c;
}

}  // namespace

std::optional<BrokerStatus> parseStatus(const std::string& line) {
  auto r = parseChild(line, "renderer");
  auto n = parseChild(line, "netproxy");
  if (!r || !n)
    return std::nullopt;
  return BrokerStatus{*r, *n, line};
}

BrokerProcess::BrokerProcess(std::vector<std::string> args, std::string libexecDir) {
  char tmpl[] = "/tmp/spicebox-test-XXXXXX";
  if (!::mkdtemp(tmpl))
    throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  std::string notifyPath = dir_ + "/notify";

  notify_ = base::Fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notifyPath.c_str(), sizeof addr.sun_path - 1);
  if (::bind(notify_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error("cannot bind the notify socket");
  }

  int errPipe[2];
  if (::pipe2(errPipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe2 failed");
  stderr_ = base::Fd(errPipe[0]);

  std::vector<std::string> argvStore{SPICEBOX_BROKER_PATH};
  if (!libexecDir.empty()) {
    argvStore.push_back("--libexec-dir");
    argvStore.push_back(libexecDir);
  }
  // No built-in guest unless the test asks for one: supervision tests must not depend on
  // spicebox-guestsim, and a test that plays the VMM itself uses --vmm-socket.
  if (std::find(args.begin(), args.end(), "--builtin-guest") == args.end()) {
    argvStore.push_back("--builtin-guest");
    argvStore.push_back("none");
  }
  argvStore.insert(argvStore.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argvStore)
    argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_ = ::fork();
  if (pid_ < 0)
    throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(errPipe[1], 2);
    ::setenv("NOTIFY_SOCKET", notifyPath.c_str(), 1);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(errPipe[1]);
  pidfd_ = base::Fd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
}

BrokerProcess::~BrokerProcess() {
  if (!exitStatus_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  std::string notifyPath = dir_ + "/notify";
  ::unlink(notifyPath.c_str());
  ::rmdir(dir_.c_str());
}

void BrokerProcess::drainStderr() {
  char buf[4096];
  for (;;) {
    pollfd p{stderr_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP)))
      return;
    ssize_t n = ::read(stderr_.get(), buf, sizeof buf);
    if (n <= 0)
      return;
    stderrText_.append(buf, static_cast<size_t>(n));
  }
}

const std::string& BrokerProcess::stderrText() {
  drainStderr();
  return stderrText_;
}

void BrokerProcess::drain() {
  // A deadline of now: poll without waiting. Once the broker is reaped its pidfd stays readable,
  // so stop there (its stderr was drained when it was reaped).
  while (!exitStatus_ && pumpOnce(Clock::now())) {
  }
}

bool BrokerProcess::pumpOnce(Clock::time_point deadline) {
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left < 0)
      return false;  // (0: one poll that does not wait)
    // All three are always drained: a full stderr pipe or notification queue would block the
    // broker (sd_notify() blocks when the socket's queue is full).
    pollfd fds[3] = {
        {notify_.get(), POLLIN, 0}, {stderr_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 3, static_cast<int>(left));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    if (fds[1].revents)
      drainStderr();
    if (fds[0].revents & POLLIN) {
      char buf[4096];
      ssize_t len = ::recv(notify_.get(), buf, sizeof buf - 1, 0);
      std::istringstream lines(std::string(buf, len > 0 ? static_cast<size_t>(len) : 0));
      std::string line;
      while (std::getline(lines, line)) {
        if (line.rfind("STATUS=", 0) != 0)
          continue;
        if (auto s = parseStatus(line.substr(7)))
          last_ = s;
      }
    }
    if (fds[2].revents & POLLIN) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      exitStatus_ = status;
      drainStderr();
    }
    return true;
  }
}

std::optional<BrokerStatus> BrokerProcess::waitForStatus(
    const std::function<bool(const BrokerStatus&)>& pred, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (last_ && pred(*last_))
      return last_;
    if (exitStatus_ || !pumpOnce(deadline))
      return std::nullopt;
  }
}

std::optional<BrokerStatus> BrokerProcess::waitForReady(std::chrono::milliseconds timeout) {
  return waitForStatus(
      [](const BrokerStatus& s) {
        return s.renderer.state == "ready" && s.netproxy.state == "ready";
      },
      timeout);
}

std::optional<size_t> BrokerProcess::waitForLog(const std::string& text,
                                                std::chrono::milliseconds timeout, size_t from) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto at = stderrText_.find(text, from); at != std::string::npos)
      return at + text.size();
    if (exitStatus_ || !pumpOnce(deadline))
      return std::nullopt;
  }
}

std::optional<int> BrokerProcess::waitForExit(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!exitStatus_ && pumpOnce(deadline)) {
  }
  return exitStatus_;
}

namespace {

// Inodes of the unix datagram sockets in `pid`'s network namespace (/proc/PID/net/unix, type
// 0002). The broker's own descriptors are sequenced-packet channels; a datagram socket is the one
// sd_notify() opens for each notification and closes right after sending it, so the test may see
// it for an instant after it receives the notification.
std::set<std::string> unixDatagramInodes(pid_t pid) {
  std::ifstream table("/proc/" + std::to_string(pid) + "/net/unix");
  std::set<std::string> inodes;
  std::string line;
  std::getline(table, line);  // header
  while (std::getline(table, line)) {
    std::istringstream fields(line);
    std::string num, refs, protocol, flags, type, state, inode;
    fields >> num >> refs >> protocol >> flags >> type >> state >> inode;
    if (type == "0002")
      inodes.insert(inode);
  }
  return inodes;
}

// Each descriptor of `pid` with what it points to ("socket:[1234]", "/dev/null").
std::vector<std::pair<std::string, std::string>> descriptors(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/fd";
  std::vector<std::pair<std::string, std::string>> out;
  DIR* d = ::opendir(path.c_str());
  if (!d)
    return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.')
      continue;
    char target[256] = {};
    auto len = ::readlink((path + "/" + e->d_name).c_str(), target, sizeof target - 1);
    out.emplace_back(e->d_name, len > 0 ? std::string(target, static_cast<size_t>(len)) : "?");
  }
  ::closedir(d);
  return out;
}

}  // namespace

int countFds(pid_t pid) {
  auto notifySockets = unixDatagramInodes(pid);
  int n = 0;
  for (const auto& [fd, target] : descriptors(pid)) {
    bool notify = target.rfind("socket:[", 0) == 0 &&
                  notifySockets.count(target.substr(8, target.size() - 9));
    if (!notify)
      ++n;
  }
  return n;
}

std::string listFds(pid_t pid) {
  std::string out;
  for (const auto& [fd, target] : descriptors(pid))
    out += fd + " -> " + target + "\n";
  return out;
}

std::vector<pid_t> childrenOf(pid_t parent) {
  std::vector<pid_t> kids;
  DIR* d = ::opendir("/proc");
  while (dirent* e = ::readdir(d)) {
    char* end;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0)
      continue;
    std::ifstream stat("/proc/" + std::string(e->d_name) + "/stat");
    std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // Fields after the command name, which may itself contain spaces and parentheses.
    auto close = content.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest(content.substr(close + 2));
    char state;
    long ppid;
    rest >> state >> ppid;
    if (ppid == parent && state != 'Z')
      kids.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return kids;
}

std::string procStatusField(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      auto value = line.substr(field.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      return value;
    }
  }
  return "";
}

bool processExists(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace spicebox::test
