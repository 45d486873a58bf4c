// Mechanism tests: each step of sandbox::enter() does what it claims, read back from inside a
// forked child that entered it. The process profiles have their own tests beside them.
#include "sandbox/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <thread>

#include "base/fd.h"
#include "base/log.h"
#include "sandbox/namespaces.h"
#include "sandbox/runtime-rules.h"
#include "sandbox/sanitizers.h"
#include "sandbox/testing.h"

namespace spicebox::sandbox {
namespace {

using testing::ChildOutcome;
using testing::runInChild;

// Small enough to tell apart from any default, large enough for the test's descriptors.
constexpr rlim_t TEST_MAX_OPEN_FILES = 48;
constexpr rlim_t TEST_MAX_ADDRESS_SPACE = 3ull << 30;

// The runtime rules plus read-only probes a test needs to read the sandbox's state back. None of
// them is in a process profile.
Profile testProfile(std::vector<int> keepFds = {}) {
  Profile profile;
  profile.name = "sandbox-test";
  profile.keepFds = std::move(keepFds);
  profile.limits.maxOpenFiles = TEST_MAX_OPEN_FILES;
  profile.limits.maxAddressSpace = TEST_MAX_ADDRESS_SPACE;
  profile.allow = runtimeRules();
  const std::vector<SyscallRule> probes = {
      {"prlimit64",
       "probe: getrlimit() reads limits (no new limit, own process)",
       {argEquals(0, 0), argEquals(2, 0)}},
      {"prctl", "probe: read no_new_privs", {argEquals(0, PR_GET_NO_NEW_PRIVS)}},
      {"prctl", "probe: read dumpable", {argEquals(0, PR_GET_DUMPABLE)}},
      {"prctl", "probe: read seccomp mode", {argEquals(0, PR_GET_SECCOMP)}},
      {"prctl", "probe: read the bounding set", {argEquals(0, PR_CAPBSET_READ)}},
      {"capget", "probe: read capabilities", {}},
  };
  profile.allow.insert(profile.allow.end(), probes.begin(), probes.end());
  return profile;
}

// Logs go to stderr through the write(2) sink, warnings only: the sandbox's own info lines would
// drown the test output.
void quietLogging() {
  base::initLogging("sandbox-test", 2, "warn");
}

std::pair<base::Fd, base::Fd> makePipe() {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  return {base::Fd(fds[0]), base::Fd(fds[1])};
}

rlimit currentLimit(int resource) {
  rlimit limit = {};
  ::getrlimit(resource, &limit);
  return limit;
}

bool capabilitiesEmpty() {
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0)
    return false;
  for (const auto& word : data) {
    if (word.effective != 0 || word.permitted != 0 || word.inheritable != 0)
      return false;
  }
  return true;
}

bool boundingSetEmpty() {
  for (int cap = 0;; ++cap) {
    int r = ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (r < 0)
      return true;
    if (r > 0)
      return false;
  }
}

}  // namespace

TEST_CASE("parseMode accepts the three modes") {
  CHECK(parseMode("strict") == Mode::Strict);
  CHECK(parseMode("best-effort") == Mode::BestEffort);
  CHECK(parseMode("off") == Mode::Off);
  for (Mode mode : {Mode::Strict, Mode::BestEffort, Mode::Off}) {
    CHECK(parseMode(toString(mode)) == mode);
  }
  CHECK(std::string(toString(Level::Full)) == "full");
  CHECK(std::string(toString(Level::Partial)) == "partial");
  CHECK(std::string(toString(Level::Off)) == "off");
}

TEST_CASE("parseMode rejects anything else and names the choices") {
  for (const char* bad : {"", "Strict", "besteffort", "on", "full", "strict "}) {
    INFO(bad);
    try {
      parseMode(bad);
      FAIL("accepted");
    } catch (const std::invalid_argument& e) {
      std::string message = e.what();
      CHECK(message.find("strict") != std::string::npos);
      CHECK(message.find("best-effort") != std::string::npos);
      CHECK(message.find("off") != std::string::npos);
    }
  }
}

TEST_CASE("a profile naming an unknown syscall is a bug and is refused") {
  Profile profile = testProfile();
  profile.allow.push_back({"no_such_syscall", "typo", {}});
  REQUIRE_THROWS_AS(exportFilter(profile), SandboxError);
  REQUIRE_THROWS_WITH(exportFilter(profile), Catch::Contains("no_such_syscall"));
}

TEST_CASE("the exported filter kills by default and lists the allowed syscalls") {
  Profile profile = testProfile();
  std::string pfc = exportFilter(profile);
  CHECK(pfc.find("KILL_PROCESS") != std::string::npos);
  std::vector<std::string> allowed = allowedSyscalls(profile);
  CHECK(std::is_sorted(allowed.begin(), allowed.end()));
  for (const SyscallRule& rule : profile.allow) {
    INFO(rule.syscall);
    CHECK(std::find(allowed.begin(), allowed.end(), rule.syscall) != allowed.end());
  }
  for (const char* forbidden : {"openat", "open", "execve", "socket", "clone", "ptrace"}) {
    INFO(forbidden);
    CHECK(std::find(allowed.begin(), allowed.end(), forbidden) == allowed.end());
  }
}

TEST_CASE("closeInheritedFds closes descriptors not kept and keeps the kept ones") {
  auto [keptRead, keptWrite] = makePipe();
  auto [lostRead, lostWrite] = makePipe();
  ChildOutcome outcome = runInChild([&, keptWrite = keptWrite.get(), lostWrite = lostWrite.get()] {
    quietLogging();
    enter(testProfile({keptWrite}), Mode::BestEffort);
    CHILD_CHECK(::write(keptWrite, "kept", 4) == 4, 1);
    CHILD_CHECK(::write(lostWrite, "lost", 4) == -1 && errno == EBADF, 2);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  keptWrite.reset();
  CHECK(testing::readAll(keptRead.get()) == "kept");
}

TEST_CASE("keeping a negative descriptor is a bug and is refused") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    try {
      enter(testProfile({-1}), Mode::BestEffort);
    } catch (const SandboxError& e) {
      CHILD_CHECK(std::string(e.what()).find("-1") != std::string::npos, 1);
      return 0;
    }
    return 2;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("resource limits are applied: no processes, no core, few files, bounded memory") {
  const rlimit addressSpaceBefore = currentLimit(RLIMIT_AS);
  ChildOutcome outcome = runInChild([&] {
    quietLogging();
    enter(testProfile(), Mode::BestEffort);
    const rlimit nproc = currentLimit(RLIMIT_NPROC);
    CHILD_CHECK(nproc.rlim_cur == 0 && nproc.rlim_max == 0, 1);
    const rlimit core = currentLimit(RLIMIT_CORE);
    CHILD_CHECK(core.rlim_cur == 0 && core.rlim_max == 0, 2);
    const rlimit files = currentLimit(RLIMIT_NOFILE);
    CHILD_CHECK(files.rlim_cur == TEST_MAX_OPEN_FILES && files.rlim_max == TEST_MAX_OPEN_FILES, 3);
    const rlimit addressSpace = currentLimit(RLIMIT_AS);
    if constexpr (ADDRESS_SANITIZER) {
      CHILD_CHECK(addressSpace.rlim_cur == addressSpaceBefore.rlim_cur, 4);
    } else {
      CHILD_CHECK(addressSpace.rlim_cur == TEST_MAX_ADDRESS_SPACE, 5);
    }
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("no_new_privs is set and the process is not dumpable") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    CHILD_CHECK(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, 1);  // the test starts dumpable
    enter(testProfile(), Mode::BestEffort);
    CHILD_CHECK(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, 2);
    CHILD_CHECK(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, 3);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("every capability is dropped, bounding set included") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    enter(testProfile(), Mode::BestEffort);
    CHILD_CHECK(capabilitiesEmpty(), 1);
    CHILD_CHECK(boundingSetEmpty(), 2);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("the seccomp filter is in force after enter") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    CHILD_CHECK(::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 0, 1);
    enter(testProfile(), Mode::BestEffort);
    CHILD_CHECK(::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == SECCOMP_MODE_FILTER, 2);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("a syscall outside the profile kills the process with SIGSYS") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    enter(testProfile(), Mode::BestEffort);
    ::syscall(SYS_getppid);  // harmless, and in no profile
    return testing::EXIT_FORBIDDEN_CALL_RETURNED;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.killedBy(SIGSYS));
}

TEST_CASE("a failed assertion inside the sandbox ends with SIGABRT, not SIGSYS") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    enter(testProfile(), Mode::BestEffort);
    std::abort();
    return testing::EXIT_FORBIDDEN_CALL_RETURNED;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.killedBy(SIGABRT));
}

TEST_CASE("strict mode reaches the full level on this host") {
  ChildOutcome outcome = runInChild([] {
    quietLogging();
    Report report = enter(testProfile(), Mode::Strict);
    CHILD_CHECK(report.level == Level::Full, 1);
    CHILD_CHECK(report.missing.empty(), 2);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("Mode::Off enters nothing and says so loudly") {
  auto [logRead, logWrite] = makePipe();
  auto [otherRead, otherWrite] = makePipe();
  const rlimit filesBefore = currentLimit(RLIMIT_NOFILE);
  ChildOutcome outcome = runInChild([&, logFd = logWrite.get(), otherFd = otherWrite.get()] {
    base::initLogging("sandbox-test", logFd);
    Report report = enter(testProfile(), Mode::Off);
    CHILD_CHECK(report.level == Level::Off, 1);
    CHILD_CHECK(::write(otherFd, "x", 1) == 1, 2);  // not closed
    const rlimit files = currentLimit(RLIMIT_NOFILE);
    CHILD_CHECK(files.rlim_cur == filesBefore.rlim_cur, 3);
    CHILD_CHECK(currentLimit(RLIMIT_NPROC).rlim_cur != 0, 4);
    CHILD_CHECK(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 0, 5);
    CHILD_CHECK(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, 6);
    CHILD_CHECK(::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 0, 7);
    base::Fd file(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
    CHILD_CHECK(file, 8);
    CHILD_CHECK(::access("/proc/self", F_OK) == 0, 9);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  logWrite.reset();
  std::string log = testing::readAll(logRead.get());
  INFO(log);
  CHECK(log.find("sandbox is OFF: debugging only") != std::string::npos);
}

TEST_CASE("enterNamespaces alone: an empty, read-only root with no /proc") {
  const uid_t uid = ::getuid();
  ChildOutcome outcome = runInChild([uid] {
    CHILD_CHECK(enterNamespaces().empty(), 1);
    CHILD_CHECK(::getuid() == uid, 2);  // mapped to itself
    DIR* root = ::opendir("/");
    CHILD_CHECK(root != nullptr, 3);
    int entries = 0;
    while (const dirent* entry = ::readdir(root)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..")
        ++entries;
    }
    ::closedir(root);
    CHILD_CHECK(entries == 0, 4);
    CHILD_CHECK(::access("/proc/self", F_OK) == -1 && errno == ENOENT, 5);
    CHILD_CHECK(::access("/etc/passwd", F_OK) == -1 && errno == ENOENT, 6);
    CHILD_CHECK(::mkdir("/escape", 0700) == -1 && errno == EROFS, 7);
    char cwd[64] = {};
    CHILD_CHECK(::getcwd(cwd, sizeof cwd) != nullptr && std::string(cwd) == "/", 8);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("enterNamespaces alone: no network, even to loopback") {
  ChildOutcome outcome = runInChild([] {
    CHILD_CHECK(enterNamespaces().empty(), 1);
    base::Fd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    CHILD_CHECK(udp, 2);
    sockaddr_in loopback = {};
    loopback.sin_family = AF_INET;
    loopback.sin_port = htons(9);
    loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ssize_t sent =
        ::sendto(udp.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&loopback), sizeof loopback);
    CHILD_CHECK(sent == -1 && errno == ENETUNREACH, 3);  // the new namespace's lo is down
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("enterNamespaces alone: the host's SysV IPC objects are out of reach") {
  const key_t key = static_cast<key_t>(0x5b000000 | (::getpid() & 0xffff));
  int queue = ::msgget(key, IPC_CREAT | IPC_EXCL | 0600);
  REQUIRE(queue >= 0);
  ChildOutcome outcome = runInChild([key] {
    CHILD_CHECK(::msgget(key, 0) >= 0, 1);  // visible before
    CHILD_CHECK(enterNamespaces().empty(), 2);
    CHILD_CHECK(::msgget(key, 0) == -1 && errno == ENOENT, 3);
    return 0;
  });
  ::msgctl(queue, IPC_RMID, nullptr);
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("enterNamespaces alone: children would start a new pid namespace") {
  ChildOutcome outcome = runInChild([] {
    CHILD_CHECK(enterNamespaces().empty(), 1);
    pid_t grandchild = ::fork();
    CHILD_CHECK(grandchild >= 0, 2);
    if (grandchild == 0)
      ::_exit(::getpid() == 1 ? 0 : 1);
    int status = 0;
    CHILD_CHECK(::waitpid(grandchild, &status, 0) == grandchild, 3);
    CHILD_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, 4);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

// A second thread makes unshare(CLONE_NEWUSER) fail with EINVAL: a stand-in for a host that
// forbids user namespaces, without changing the host.
TEST_CASE("best-effort without a user namespace reaches partial and reports what is missing") {
  auto [blockRead, blockWrite] = makePipe();
  ChildOutcome outcome = runInChild([fd = blockRead.get()] {
    quietLogging();
    std::thread blocked([fd] {
      char byte;
      (void)::read(fd, &byte, 1);  // never returns: nobody writes
    });
    blocked.detach();
    Report report = enter(testProfile({fd}), Mode::BestEffort);
    CHILD_CHECK(report.level == Level::Partial, 1);
    CHILD_CHECK(!report.missing.empty(), 2);
    CHILD_CHECK(report.missing[0] == "user namespace: EINVAL", 3);
    // Still filtered: the filter is in force for this thread (and, by TSYNC, the other).
    CHILD_CHECK(::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == SECCOMP_MODE_FILTER, 4);
    CHILD_CHECK(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, 5);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("strict mode refuses to run without a user namespace and tells the operator why") {
  auto [blockRead, blockWrite] = makePipe();
  ChildOutcome outcome = runInChild([fd = blockRead.get()] {
    quietLogging();
    std::thread blocked([fd] {
      char byte;
      (void)::read(fd, &byte, 1);
    });
    blocked.detach();
    try {
      enter(testProfile({fd}), Mode::Strict);
    } catch (const SandboxError& e) {
      std::string message = e.what();
      CHILD_CHECK(message.find("user namespace: EINVAL") != std::string::npos, 1);
      CHILD_CHECK(message.find("--sandbox=best-effort") != std::string::npos, 2);
      CHILD_CHECK(message.find("user namespaces") != std::string::npos, 3);
      return 0;
    }
    return 4;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

}  // namespace spicebox::sandbox
