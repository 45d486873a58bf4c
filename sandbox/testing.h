// Runs in: test binaries only (sandbox-tests, renderer-tests, netproxy-tests). Helpers to run a
// test body in a forked child that enters a sandbox, and to judge how it ended. The child may be
// killed by its filter at any moment, so everything it does after enter() uses only syscalls the
// profiles allow (write(2) for messages, _exit to end).
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace spicebox::sandbox::testing {

// Exit codes of a child beyond its own CHILD_CHECK codes (which tests keep below 100).
inline constexpr int EXIT_UNCAUGHT_EXCEPTION = 120;
// A forbidden call came back instead of killing the process.
inline constexpr int EXIT_FORBIDDEN_CALL_RETURNED = 121;
// A child still running after this long is killed by SIGALRM (set before it enters the sandbox;
// delivering it needs no syscall), so a hung child fails its test instead of hanging it.
inline constexpr unsigned CHILD_TIMEOUT_SECONDS = 20;

// How a child ended, from waitpid.
struct ChildOutcome {
  int status = 0;
  bool exitedWith(int code) const;
  bool killedBy(int signal) const;
  // "exited with 3", "killed by SIGSYS": for the test's failure message.
  std::string describe() const;
};

// Forks. The child runs `child` and _exits with its result (never returns into the test
// framework: that would run the parent's tests twice and LeakSanitizer's exit-time scan, which
// needs ptrace, inside the sandbox). An exception escaping `child` is written to stderr and
// ends it with EXIT_UNCAUGHT_EXCEPTION. The parent runs `parent(childPid)` if given (to talk to
// the child), then waits for it.
ChildOutcome runInChild(const std::function<int()>& child,
                        const std::function<void(pid_t)>& parent = {});

// How an attack run by runAttack ended.
struct AttackOutcome {
  ChildOutcome child;
  // The child got through enter() to the attack: its death (if any) was the attack's, not a
  // step of enter() or the test's own setup.
  bool reachedAttack = false;
};

// Forks a child that enters the sandbox `makeProfile(keepFds)` builds (Mode::BestEffort, logging
// warnings to stderr), then runs `attack`. The child _exits with EXIT_FORBIDDEN_CALL_RETURNED if
// the attack returns.
AttackOutcome runAttack(const std::function<Profile(std::vector<int>)>& makeProfile,
                        std::vector<int> keepFds, const std::function<void()>& attack);

// Reports a failed check of a child on stderr, with write(2) only, and _exits with `code`.
[[noreturn]] void failChildCheck(int code, const char* expression, const char* file, int line);

// Reads `fd` until end of file.
std::string readAll(int fd);

// The reviewed allowlist file: one syscall name per line; blank lines and lines starting with
// '#' are ignored. Sorted. Throws std::runtime_error when the file cannot be read.
std::vector<std::string> readAllowlist(const std::string& path);

// The names a profile may allow in this build: the reviewed list at `path`, plus the reviewed
// sanitizer additions (sandbox/seccomp-allowlist-sanitizers.txt) in sanitizer builds. Sorted.
std::vector<std::string> reviewedAllowlist(const std::string& path);

// What differs between the names a profile allows and the reviewed list, for a failure message;
// empty when they are the same. Both sorted.
std::string allowlistDifference(const std::vector<std::string>& allowed,
                                const std::vector<std::string>& reviewed);

// allowlistDifference between what `profile`'s seccomp filter allows and the reviewed list at
// `path` (reviewedAllowlist): empty when they agree.
std::string allowlistMismatch(const Profile& profile, const std::string& path);

// A child that makes the process logger `name` on a pipe (base/log.h), enters the sandbox
// `makeProfile({pipe})` builds (Mode::BestEffort), then runs `logSome`; with what it wrote.
struct LoggedChild {
  ChildOutcome outcome;
  std::string log;
};
LoggedChild runLoggingChild(const char* name,
                            const std::function<Profile(std::vector<int>)>& makeProfile,
                            const std::function<void()>& logSome);

// Allowed work shared by both processes, run inside the sandbox: creates a libuv loop, runs a
// timer and a uv_poll on `socketFd`; on readable reads one byte 'p' and answers 'c'. Returns 0,
// or a failure code 80..89 (after writing what failed to stderr).
int exerciseEventLoop(int socketFd);

// Allowed work shared by both processes, run inside the sandbox: the allocation patterns of a
// long-running process (many small and medium blocks growing the heap, a large block grown with
// realloc, everything freed so the heap shrinks again). Returns 0, or a failure code 90..99.
int exerciseMemory();

// The parent's half of exerciseEventLoop: sends 'p' on `socketFd`, expects 'c' back within the
// child timeout. Returns whether it came.
bool pingEventLoop(int socketFd);

}  // namespace spicebox::sandbox::testing

// In a child: if `condition` is false, report it and _exit with `code` (distinct per check, 1..99,
// so the parent's message tells which check failed).
#define CHILD_CHECK(condition, code)                                                        \
  do {                                                                                      \
    if (!(condition)) {                                                                     \
      ::spicebox::sandbox::testing::failChildCheck((code), #condition, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)
