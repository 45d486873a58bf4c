#include "sandbox/testing.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "base/fd.h"
#include "base/log.h"
#include "sandbox/sanitizers.h"

namespace spicebox::sandbox::testing {
namespace {

// write(2) of a whole string to stderr; nothing else (no stdio: its first use calls fstat).
void writeStderr(const char* text) {
  size_t left = ::strlen(text);
  while (left > 0) {
    ssize_t n = ::write(2, text, left);
    if (n <= 0)
      return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

std::string signalName(int signal) {
  const char* abbrev = ::sigabbrev_np(signal);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(signal);
}

}  // namespace

bool ChildOutcome::exitedWith(int code) const {
  return WIFEXITED(status) && WEXITSTATUS(status) == code;
}

bool ChildOutcome::killedBy(int signal) const {
  return WIFSIGNALED(status) && WTERMSIG(status) == signal;
}

std::string ChildOutcome::describe() const {
  if (WIFEXITED(status)) {
    int code = WEXITSTATUS(status);
    std::string text = "child exited with " + std::to_string(code);
    if (code == EXIT_UNCAUGHT_EXCEPTION)
      text += " (uncaught exception, see stderr)";
    if (code == EXIT_FORBIDDEN_CALL_RETURNED)
      text += " (a forbidden call returned)";
    if (code > 0 && code < 100)
      text += " (a CHILD_CHECK failed, see stderr)";
    return text;
  }
  if (WIFSIGNALED(status)) {
    int signal = WTERMSIG(status);
    std::string text = "child killed by " + signalName(signal);
    if (signal == SIGSYS)
      text += " (a syscall outside the seccomp profile)";
    if (signal == SIGALRM)
      text += " (timed out)";
    return text;
  }
  return "child wait status " + std::to_string(status);
}

ChildOutcome runInChild(const std::function<int()>& child,
                        const std::function<void(pid_t)>& parent) {
  // Nothing buffered may be written twice (the child _exits, but be explicit).
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = ::fork();
  if (pid < 0)
    throw std::runtime_error(std::string("fork: ") + ::strerror(errno));
  if (pid == 0) {
    // The test framework's fatal-signal handlers (Catch2 reports SIGSEGV, SIGABRT, ... then
    // re-raises through sigaction) would turn a crash inside the sandbox into SIGSYS. A
    // sandboxed process has no such handlers: restore the defaults.
    for (int signal : {SIGINT, SIGILL, SIGFPE, SIGSEGV, SIGTERM, SIGABRT, SIGBUS}) {
      ::signal(signal, SIG_DFL);
    }
    ::alarm(CHILD_TIMEOUT_SECONDS);
    int code = EXIT_UNCAUGHT_EXCEPTION;
    try {
      code = child();
    } catch (const std::exception& e) {
      writeStderr("child: uncaught exception: ");
      writeStderr(e.what());
      writeStderr("\n");
    } catch (...) {
      writeStderr("child: uncaught exception of unknown type\n");
    }
    ::_exit(code);
  }
  if (parent) {
    try {
      parent(pid);
    } catch (...) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      throw;
    }
  }
  ChildOutcome outcome;
  while (::waitpid(pid, &outcome.status, 0) < 0) {
    if (errno != EINTR)
      throw std::runtime_error(std::string("waitpid: ") + ::strerror(errno));
  }
  return outcome;
}

AttackOutcome runAttack(const std::function<Profile(std::vector<int>)>& makeProfile,
                        std::vector<int> keepFds, const std::function<void()>& attack) {
  int marker[2];
  if (::pipe2(marker, O_CLOEXEC) != 0) {
    throw std::runtime_error(std::string("pipe2: ") + ::strerror(errno));
  }
  keepFds.push_back(marker[1]);
  AttackOutcome outcome;
  outcome.child = runInChild([&] {
    base::initLogging("attack", 2, "warn");
    enter(makeProfile(keepFds), Mode::BestEffort);
    // write(2) is in every profile; the parent reads this byte to know the attack ran.
    if (::write(marker[1], "a", 1) != 1)
      return 1;
    attack();
    return EXIT_FORBIDDEN_CALL_RETURNED;
  });
  ::close(marker[1]);
  outcome.reachedAttack = readAll(marker[0]) == "a";
  ::close(marker[0]);
  return outcome;
}

void failChildCheck(int code, const char* expression, const char* file, int line) {
  char message[512];
  const char* errnoText = errno != 0 ? ::strerrorname_np(errno) : nullptr;
  std::snprintf(message, sizeof message,
                "child check failed (exit %d) at %s:%d: %s (last errno %s)\n", code, file, line,
                expression, errnoText != nullptr ? errnoText : "0");
  writeStderr(message);
  ::_exit(code);
}

std::string readAll(int fd) {
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    text.append(buffer, static_cast<size_t>(n));
  }
  return text;
}

std::vector<std::string> readAllowlist(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("cannot read reviewed allowlist " + path);
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    line.erase(0, line.find_first_not_of(" \t"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty() || line[0] == '#')
      continue;
    names.push_back(line);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> reviewedAllowlist(const std::string& path) {
  std::vector<std::string> names = readAllowlist(path);
  if constexpr (ADDRESS_SANITIZER) {
    for (std::string& name : readAllowlist(SPICEBOX_SANITIZER_ALLOWLIST)) {
      names.push_back(std::move(name));
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
  }
  return names;
}

std::string allowlistMismatch(const Profile& profile, const std::string& path) {
  return allowlistDifference(allowedSyscalls(profile), reviewedAllowlist(path));
}

LoggedChild runLoggingChild(const char* name,
                            const std::function<Profile(std::vector<int>)>& makeProfile,
                            const std::function<void()>& logSome) {
  int logPipe[2];
  if (::pipe2(logPipe, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  base::Fd logRead(logPipe[0]);
  base::Fd logWrite(logPipe[1]);
  LoggedChild result;
  result.outcome = runInChild([&, fd = logWrite.get()] {
    base::initLogging(name, fd, "info");
    enter(makeProfile({fd}), Mode::BestEffort);
    logSome();
    return 0;
  });
  logWrite.reset();
  result.log = readAll(logRead.get());
  return result;
}

std::string allowlistDifference(const std::vector<std::string>& allowed,
                                const std::vector<std::string>& reviewed) {
  std::vector<std::string> widened;
  std::vector<std::string> stale;
  std::set_difference(allowed.begin(), allowed.end(), reviewed.begin(), reviewed.end(),
                      std::back_inserter(widened));
  std::set_difference(reviewed.begin(), reviewed.end(), allowed.begin(), allowed.end(),
                      std::back_inserter(stale));
  std::string text;
  if (!widened.empty()) {
    text += "allowed by the profile but not in the reviewed list (review, then add):";
    for (const auto& name : widened)
      text += " " + name;
    text += "\n";
  }
  if (!stale.empty()) {
    text += "in the reviewed list but no longer allowed (remove):";
    for (const auto& name : stale)
      text += " " + name;
    text += "\n";
  }
  return text;
}

namespace {

struct LoopWork {
  int socketFd = -1;
  bool timerFired = false;
  bool answered = false;
  int failure = 0;
};

int failLoop(int code, const char* what) {
  writeStderr("exerciseEventLoop: ");
  writeStderr(what);
  writeStderr("\n");
  return code;
}

}  // namespace

int exerciseEventLoop(int socketFd) {
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0)
    return failLoop(80, "uv_loop_init");
  LoopWork work;
  work.socketFd = socketFd;

  uv_timer_t timer;
  uv_timer_init(&loop, &timer);
  timer.data = &work;
  if (uv_timer_start(
          &timer, [](uv_timer_t* t) { static_cast<LoopWork*>(t->data)->timerFired = true; }, 5,
          0) != 0) {
    return failLoop(81, "uv_timer_start");
  }

  uv_poll_t poll;
  if (uv_poll_init(&loop, &poll, socketFd) != 0)
    return failLoop(82, "uv_poll_init");
  poll.data = &work;
  int started = uv_poll_start(&poll, UV_READABLE, [](uv_poll_t* p, int status, int) {
    auto* w = static_cast<LoopWork*>(p->data);
    uv_poll_stop(p);
    char byte = 0;
    if (status < 0 || ::read(w->socketFd, &byte, 1) != 1 || byte != 'p') {
      w->failure = 84;
      return;
    }
    w->answered = ::write(w->socketFd, "c", 1) == 1;
  });
  if (started != 0)
    return failLoop(83, "uv_poll_start");

  uv_run(&loop, UV_RUN_DEFAULT);  // returns when the one-shot timer and the stopped poll are done
  if (work.failure != 0)
    return failLoop(work.failure, "poll callback read no 'p'");
  if (!work.timerFired)
    return failLoop(85, "timer did not fire");
  if (!work.answered)
    return failLoop(86, "no answer written");

  uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&poll), nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);  // runs the close callbacks
  if (uv_loop_close(&loop) != 0)
    return failLoop(87, "uv_loop_close: handles still open");
  return 0;
}

int exerciseMemory() {
  // Below glibc's mmap threshold (128 KiB): these come from the heap, which grows with brk.
  constexpr size_t SMALL_BLOCKS = 200;
  constexpr size_t SMALL_SIZE = 64 * 1024;
  // Above it: an mmap'ed block, which realloc grows with mremap.
  constexpr size_t LARGE_START = 1 << 20;
  constexpr size_t LARGE_END = 16 << 20;

  std::vector<void*> blocks;
  for (size_t i = 0; i < SMALL_BLOCKS; ++i) {
    void* block = std::malloc(SMALL_SIZE);
    if (block == nullptr)
      return 90;
    std::memset(block, static_cast<int>(i), SMALL_SIZE);
    blocks.push_back(block);
  }
  auto* large = static_cast<char*>(std::malloc(LARGE_START));
  if (large == nullptr)
    return 91;
  std::memset(large, 1, LARGE_START);
  auto* grown = static_cast<char*>(std::realloc(large, LARGE_END));
  if (grown == nullptr)
    return 92;
  if (grown[LARGE_START - 1] != 1)
    return 93;
  std::memset(grown, 2, LARGE_END);
  std::free(grown);
  // Freed in reverse so the top of the heap becomes free and glibc trims it (brk down).
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it)
    std::free(*it);
  return 0;
}

bool pingEventLoop(int socketFd) {
  if (::write(socketFd, "p", 1) != 1)
    return false;
  pollfd readable = {socketFd, POLLIN, 0};
  if (::poll(&readable, 1, static_cast<int>(CHILD_TIMEOUT_SECONDS) * 1000) != 1)
    return false;
  char byte = 0;
  return ::read(socketFd, &byte, 1) == 1 && byte == 'c';
}

}  // namespace spicebox::sandbox::testing
