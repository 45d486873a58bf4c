// Supervision of the real process tree: spicebox-broker with its real renderer and netproxy.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>
#include <sys/syscall.h>
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "tests/integration/broker-process.h"

using namespace spicebox::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Supervision tuned for a test: short heartbeats and restart delays, so 50 kills take seconds.
// RESTART_BOUND is what "restarted within a bounded delay" means here: the longest backoff
// (200 ms) plus a child's start (fork, exec, sandbox, hello), with room for a loaded CI machine.
const std::vector<std::string> FAST = {"--heartbeat-interval", "50",  "--heartbeat-timeout", "400",
                                       "--restart-delay-min",  "10",  "--restart-delay-max", "200",
                                       "--healthy-after",      "5000"};
constexpr auto RESTART_BOUND = 3000ms;
constexpr auto START_BOUND = 10000ms;

ChildStatus& pick(BrokerStatus& s, const std::string& which) {
  return which == "renderer" ? s.renderer : s.netproxy;
}

// Kills `which` with `signal` and waits until a new process of it is ready. Returns how long it
// took, or fails the test.
std::chrono::milliseconds killAndAwaitReplacement(BrokerProcess& broker, const std::string& which,
                                                  int signal) {
  auto before = broker.waitForReady(START_BOUND);
  REQUIRE(before);
  pid_t old = pick(*before, which).pid;
  REQUIRE(old > 0);
  auto t0 = Clock::now();
  REQUIRE(::kill(old, signal) == 0);
  auto after = broker.waitForStatus(
      [&](const BrokerStatus& s) {
        const ChildStatus& c = which == "renderer" ? s.renderer : s.netproxy;
        return c.state == "ready" && c.pid != old && c.pid > 0;
      },
      RESTART_BOUND + 2s);
  INFO(broker.stderrText());
  REQUIRE(after);
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
}

}  // namespace

TEST_CASE("the broker starts a sandboxed renderer and netproxy", "[supervision]") {
  BrokerProcess broker(FAST);
  auto ready = broker.waitForReady(START_BOUND);
  INFO(broker.stderrText());
  REQUIRE(ready);
  auto kids = childrenOf(broker.pid());
  std::sort(kids.begin(), kids.end());
  std::vector<pid_t> expected{ready->renderer.pid, ready->netproxy.pid};
  std::sort(expected.begin(), expected.end());
  CHECK(kids == expected);
  for (pid_t child : expected) {
    CHECK(procStatusField(child, "Seccomp") == "2");  // filter mode
    CHECK(procStatusField(child, "NoNewPrivs") == "1");
  }
  CHECK(procStatusField(broker.pid(), "Seccomp") == "0");
}

TEST_CASE("killed children are restarted every time: 50 SIGKILLs each", "[supervision]") {
  BrokerProcess broker(FAST);
  auto first = broker.waitForReady(START_BOUND);
  INFO(broker.stderrText());
  REQUIRE(first);
  const int fdsBefore = countFds(broker.pid());
  REQUIRE(fdsBefore > 0);

  const std::string fdsBeforeList = listFds(broker.pid());
  for (const std::string which : {"renderer", "netproxy"}) {
    auto current = broker.waitForReady(START_BOUND);
    REQUIRE(current);
    auto other = which == "renderer" ? current->netproxy.pid : current->renderer.pid;
    std::chrono::milliseconds worst{0};
    for (int i = 0; i < 50; ++i)
      worst = std::max(worst, killAndAwaitReplacement(broker, which, SIGKILL));
    WARN(which << ": 50 restarts after SIGKILL, slowest " << worst.count() << " ms");
    CHECK(worst < RESTART_BOUND);
    // The other child was not disturbed.
    auto now = broker.waitForReady(START_BOUND);
    REQUIRE(now);
    CHECK((which == "renderer" ? now->netproxy.pid : now->renderer.pid) == other);
    CHECK(pick(*now, which).restarts == 50);
  }
  REQUIRE(broker.waitForReady(START_BOUND));
  INFO("before:\n" << fdsBeforeList << "after:\n" << listFds(broker.pid()));
  CHECK(countFds(broker.pid()) == fdsBefore);
  CHECK(childrenOf(broker.pid()).size() == 2);
}

TEST_CASE("a child that hangs (SIGSTOP) is detected and replaced", "[supervision]") {
  BrokerProcess broker(FAST);
  REQUIRE(broker.waitForReady(START_BOUND));
  const int fdsBefore = countFds(broker.pid());
  for (const std::string which : {"renderer", "netproxy"}) {
    auto before = broker.waitForReady(START_BOUND);
    pid_t old = pick(*before, which).pid;
    auto took = killAndAwaitReplacement(broker, which, SIGSTOP);
    WARN(which << " stopped with SIGSTOP was replaced after " << took.count() << " ms");
    CHECK_FALSE(processExists(old));
    CHECK(broker.stderrText().find("stopped answering heartbeats") != std::string::npos);
  }
  REQUIRE(broker.waitForReady(START_BOUND));
  CHECK(countFds(broker.pid()) == fdsBefore);
  CHECK(childrenOf(broker.pid()).size() == 2);
}

TEST_CASE("SIGTERM to the broker stops the whole tree, leaving no process", "[supervision]") {
  for (int signal : {SIGTERM, SIGINT}) {
    BrokerProcess broker(FAST);
    auto ready = broker.waitForReady(START_BOUND);
    REQUIRE(ready);
    REQUIRE(::kill(broker.pid(), signal) == 0);
    auto status = broker.waitForExit(10s);
    INFO(broker.stderrText());
    REQUIRE(status);
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    CHECK_FALSE(processExists(ready->renderer.pid));
    CHECK_FALSE(processExists(ready->netproxy.pid));
  }
}

TEST_CASE("SIGKILL to the broker takes its children with it (PDEATHSIG)", "[supervision]") {
  BrokerProcess broker(FAST);
  auto ready = broker.waitForReady(START_BOUND);
  REQUIRE(ready);
  REQUIRE(::kill(broker.pid(), SIGKILL) == 0);
  REQUIRE(broker.waitForExit(10s));
  // The children were re-parented when the broker died; PDEATHSIG killed them. Whoever reaps
  // them (init or a subreaper), they must be gone within a bounded time: wait on each by pidfd.
  for (pid_t child : {ready->renderer.pid, ready->netproxy.pid}) {
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
    if (pidfd < 0)
      continue;  // already gone
    pollfd p{pidfd, POLLIN, 0};
    CHECK(::poll(&p, 1, 5000) == 1);  // readable once the process has exited
    ::close(pidfd);
  }
}

TEST_CASE("a child that fails before becoming ready is given up on loudly", "[supervision]") {
  // A libexec dir whose renderer always exits at once (a startup crash loop), beside the real
  // netproxy.
  auto dir =
      std::filesystem::temp_directory_path() / ("spicebox-crashloop-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream script(dir / "spicebox-renderer");
    script << "#!/bin/sh\necho 'fake renderer: misconfigured' >&2\nexit 3\n";
  }
  std::filesystem::permissions(dir / "spicebox-renderer", std::filesystem::perms::owner_all);
  auto realDir = std::filesystem::path(SPICEBOX_BROKER_PATH).parent_path();
  std::filesystem::create_symlink(realDir / "spicebox-netproxy", dir / "spicebox-netproxy");

  BrokerProcess broker(
      {"--restart-delay-min", "1", "--restart-delay-max", "20", "--max-startup-failures", "4"},
      dir.string());
  auto status = broker.waitForExit(20s);
  std::string log = broker.stderrText();
  std::filesystem::remove_all(dir);
  INFO(log);
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 1);
  CHECK(log.find("renderer failed 4 times in a row before becoming ready") != std::string::npos);
  CHECK(log.find("exited with status 3") != std::string::npos);
}

TEST_CASE("the broker refuses bad configuration with a clear message", "[supervision]") {
  BrokerProcess timeouts({"--heartbeat-interval", "500", "--heartbeat-timeout", "100"});
  auto status = timeouts.waitForExit(10s);
  REQUIRE(status);
  CHECK(WEXITSTATUS(*status) == 2);
  CHECK(timeouts.stderrText().find(
            "--heartbeat-timeout (100 ms) must be longer than --heartbeat-interval") !=
        std::string::npos);

  BrokerProcess mode({"--sandbox", "sometimes"});
  status = mode.waitForExit(10s);
  REQUIRE(status);
  CHECK(WEXITSTATUS(*status) != 0);
  CHECK(mode.stderrText().find("--sandbox") != std::string::npos);
}

TEST_CASE("a child that sends what its state does not permit is killed and replaced",
          "[supervision]") {
  // The renderer is assumed compromised when the broker reads it (DESIGN.md, boundary 7).
  auto dir =
      std::filesystem::temp_directory_path() / ("spicebox-misbehave-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto realDir = std::filesystem::path(SPICEBOX_BROKER_PATH).parent_path();
  std::filesystem::create_symlink(SPICEBOX_MISBEHAVING_CHILD_PATH, dir / "spicebox-renderer");
  std::filesystem::create_symlink(realDir / "spicebox-netproxy", dir / "spicebox-netproxy");

  const std::pair<const char*, const char*> cases[] = {
      {"second-hello", "a second hello"},
      {"unsent-pong", "a heartbeat answer for ping 999, which was not the next one sent"},
      {"garbage", "malformed message"},
      {"descriptor", "1 descriptors the message does not use"},
  };
  for (auto [mode, reason] : cases) {
    SECTION(mode) {
      ::setenv("SPICEBOX_TEST_MISBEHAVE", mode, 1);
      BrokerProcess broker(FAST, dir.string());
      ::unsetenv("SPICEBOX_TEST_MISBEHAVE");
      // Each incarnation says hello (ready), misbehaves, and is killed: restarts keep coming.
      auto restarted =
          broker.waitForStatus([](const BrokerStatus& s) { return s.renderer.restarts >= 2; }, 10s);
      std::string log = broker.stderrText();
      INFO(log);
      REQUIRE(restarted);
      CHECK(log.find("its channel closed: ") != std::string::npos);
      CHECK(log.find(reason) != std::string::npos);
      CHECK(restarted->netproxy.restarts == 0);  // the other child is not disturbed
    }
  }
  std::filesystem::remove_all(dir);
}
