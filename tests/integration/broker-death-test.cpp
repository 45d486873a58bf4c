// Runs in: tests. Input: the real broker's log and status, spicebox-guestsim's summary line and
// read-back, and what spicebox's client library received.
//
// Issue 7, "Broker death": the broker is killed with SIGKILL while a VMM (spicebox-guestsim,
// started by the test, not by the broker) is linked. Checked: the renderer and the netproxy exit
// with it (no orphans); a new broker started by hand on the same sockets accepts the VMM's new
// link (guestsim --relink); a client of the new broker gets the guest's current picture: pixel
// for pixel what the guest last read back from the first broker's device. What is lost when the
// broker dies, and why, is in docs/reliability.md ("When the broker dies").
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "tests/integration/client-steps.h"
#include "tests/support/require-ok.h"

using namespace spicebox;
using namespace std::chrono_literals;

namespace {

// The guest's commands before it reads its screen back and stops drawing.
constexpr uint64_t UNTIL = 400;
// A guest run (ASan builds draw several times slower) and a process's exit.
constexpr auto GUEST_BOUND = 120s;
constexpr auto EXIT_BOUND = 10s;

// Waits for `pid` (not our child) to exit; false after `bound`.
bool awaitGone(pid_t pid, std::chrono::milliseconds bound) {
  base::Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd)
    return errno == ESRCH;  // gone already
  pollfd fd{pidfd.get(), POLLIN, 0};
  return ::poll(&fd, 1, static_cast<int>(bound.count())) == 1;
}

}  // namespace

TEST_CASE(
    "broker killed: its children exit with it, and a new broker takes the VMM's link again and "
    "shows the guest's picture",
    "[broker-death]") {
  const std::filesystem::path dir = test::tempDir("broker-death");
  const std::string vmmSocket = (dir / "vmm.sock").string();
  const std::string viewSocket = (dir / "view.sock").string();
  const std::vector<std::string> args = {"--vmm-socket", vmmSocket,  "--builtin-guest",    "none",
                                         "--unix",       viewSocket, "--disable-ticketing"};

  auto first = std::make_unique<test::BrokerProcess>(args);
  const auto ready = first->waitForReady(test::START_BOUND);
  INFO("first broker:\n" << first->stderrText());
  REQUIRE(ready);

  // The VMM: draws, reads its screen back after command UNTIL (p-UNTIL.png), prints its summary
  // and stays linked; --relink: it links again when its broker goes.
  test::Program guest =
      test::startProgram(SPICEBOX_GUESTSIM_PATH,
                         {"--vmm-socket", vmmSocket, "--scenario", "stress", "--seed", "5",
                          "--until", std::to_string(UNTIL), "--snapshot-at", std::to_string(UNTIL),
                          "--snapshot-prefix", (dir / "p").string(), "--relink"},
                         dir, "guest", /*pipeStdout=*/true);
  const bool drew = test::awaitLines(guest, *first, 1, GUEST_BOUND);
  INFO("guestsim stdout: " << guest.stdoutText << "\nguestsim stderr:\n"
                           << test::readFile(guest.errPath));
  REQUIRE(drew);
  auto snapshot = oracle::readPng((dir / ("p-" + std::to_string(UNTIL) + ".png")).string());
  REQUIRE(std::holds_alternative<oracle::RgbImage>(snapshot));
  const auto& expected = std::get<oracle::RgbImage>(snapshot);

  // SIGKILL: the broker can do nothing about it. Its children are killed by the kernel
  // (PR_SET_PDEATHSIG), not orphaned.
  REQUIRE(::kill(first->pid(), SIGKILL) == 0);
  REQUIRE(first->waitForExit(EXIT_BOUND));
  CHECK(awaitGone(ready->renderer.pid, EXIT_BOUND));
  CHECK(awaitGone(ready->netproxy.pid, EXIT_BOUND));

  // Started again by hand with the same arguments: the stale sockets are replaced, the VMM links
  // again, and the guest's driver sets the device up again and creates its primary again from
  // guest memory.
  test::BrokerProcess second(args);
  REQUIRE(second.waitForReady(test::START_BOUND));
  const bool relinked = second.waitForLog("VMM linked", GUEST_BOUND).has_value();
  INFO("second broker:\n" << second.stderrText());
  INFO("guestsim stderr now:\n" << test::readFile(guest.errPath));
  REQUIRE(relinked);

  // A client of the new broker: the guest's picture, as it read it back from the first broker.
  auto session = test::connectWithDisplay(test::startListening(second, "unix"));
  test::Difference differ;
  auto err = test::pump(
      second, {session.get()},
      [&] {
        differ = test::difference(session->display()->primary(), expected);
        return differ.pixels == 0;
      },
      test::STEP_BOUND, "the new broker's client to show the guest's picture");
  INFO("differing from the guest's read-back: " << differ.describe());
  CHECK_OK(std::move(err));

  // The guest lived through it: one relink, and it ends cleanly.
  REQUIRE(::kill(guest.pid, SIGTERM) == 0);
  const test::Exit exit = test::awaitExit(guest, second, GUEST_BOUND);
  INFO("guestsim stdout: " << exit.out << "\nstderr:\n" << exit.err);
  REQUIRE(WIFEXITED(exit.waitStatus));
  CHECK(WEXITSTATUS(exit.waitStatus) == 0);
  CHECK(std::regex_search(exit.out, std::regex("relinks: 1;")));
  CHECK(exit.err.find("created again from guest memory") != std::string::npos);
  std::filesystem::remove_all(dir);
}
