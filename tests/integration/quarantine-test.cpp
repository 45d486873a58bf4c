// Runs in: tests. Input: the real broker's log and status, spicebox-guestsim's summary lines and
// read-backs, and what spicebox's client library and spicebox-view received.
//
// Issue 7, "Renderer death and hangs", with a real guest command: spicebox-guestsim --scenario
// expensive sends, after every 100 valid commands, a valid STROKE the renderer needs seconds for
// (TimeAttack::StrokeTakingSeconds). Against a broker whose --batch-deadline is one second, the
// renderer is killed at the deadline, replaced, and the batch retried; the second time the stroke
// is quarantined: released to the guest undrawn, counted and logged with its type and address.
// Checked against the same seed's valid commands alone (--valid-only):
//  - one quarantine: the guest's picture, and that of a client watching throughout, equal the
//    run without the stroke, pixel for pixel; rendering goes on;
//  - three within the broker's minute: the broker stops rendering for that guest and says so
//    (log and status), stays up, and clients get the last picture drawn.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/integration/client-steps.h"
#include "tests/support/require-ok.h"
#include "tools/ctl/status-text.h"

using namespace spicebox;
using namespace std::chrono_literals;

namespace {

// A guest run, ASan builds and two deadlines per quarantine included.
constexpr auto GUEST_BOUND = 120s;
// The stroke takes seconds even optimised (7 s measured); valid batches take milliseconds.
constexpr const char* BATCH_DEADLINE_MS = "1000";
constexpr const char* SEED = "3";

struct Broker {
  std::filesystem::path dir = test::tempDir("quarantine");
  std::string vmmSocket = (dir / "vmm.sock").string();
  std::string viewSocket = (dir / "view.sock").string();
  std::string statusSocket = (dir / "status.sock").string();
  test::BrokerProcess process{{"--vmm-socket", vmmSocket, "--builtin-guest", "none", "--unix",
                               viewSocket, "--disable-ticketing", "--batch-deadline",
                               BATCH_DEADLINE_MS, "--status-socket", statusSocket}};
  ~Broker() { std::filesystem::remove_all(dir); }

  nlohmann::json status() {
    auto document = ctl::readStatus(statusSocket);
    REQUIRE(std::holds_alternative<std::string>(document));
    return nlohmann::json::parse(std::get<std::string>(document));
  }
};

// guestsim playing `expensive`; its read-backs (`extra`'s --snapshot-*) go to DIR/NAME-N.png.
std::vector<std::string> guestArgs(Broker& b, const std::string& name,
                                   std::vector<std::string> extra) {
  std::vector<std::string> args = {"--vmm-socket", b.vmmSocket, "--scenario",
                                   "expensive",    "--seed",    SEED};
  if (std::find_if(extra.begin(), extra.end(), [](const std::string& a) {
        return a.starts_with("--snapshot-");
      }) != extra.end())
    args.insert(args.end(), {"--snapshot-prefix", (b.dir / name).string()});
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Runs guestsim to its end; it must exit 0.
void runGuest(Broker& b, const std::string& name, std::vector<std::string> extra) {
  test::Program p =
      test::startProgram(SPICEBOX_GUESTSIM_PATH, guestArgs(b, name, extra), b.dir, name);
  const test::Exit exit = test::awaitExit(p, b.process, GUEST_BOUND);
  INFO(name << " guestsim stdout: " << exit.out << "\nstderr:\n" << exit.err);
  REQUIRE(WIFEXITED(exit.waitStatus));
  REQUIRE(WEXITSTATUS(exit.waitStatus) == 0);
}

oracle::RgbImage readImage(const std::filesystem::path& path) {
  INFO(path);
  auto image = oracle::readPng(path.string());
  REQUIRE(std::holds_alternative<oracle::RgbImage>(image));
  return std::get<oracle::RgbImage>(image);
}

uint64_t differingPixels(const oracle::RgbImage& a, const oracle::RgbImage& b) {
  auto diff = oracle::compareImages(a, b);
  REQUIRE(std::holds_alternative<oracle::ImageDifference>(diff));
  return std::get<oracle::ImageDifference>(diff).differingPixels;
}

int64_t restartsOf(const nlohmann::json& status, const std::string& child) {
  for (const auto& c : status["children"])
    if (c["name"] == child)
      return c["restarts"].get<int64_t>();
  FAIL("no child " << child << " in the status");
  return -1;
}

}  // namespace

TEST_CASE(
    "a command that keeps the renderer past its deadline is quarantined after its second try, "
    "and only it is missing from the picture",
    "[quarantine]") {
  Broker b;
  const auto ready = b.process.waitForReady(test::START_BOUND);
  INFO("broker:\n" << b.process.stderrText());
  REQUIRE(ready);
  // A viewer throughout: it must stay connected (exit 0 once nothing changed for 5 s, more than
  // the two deadlines of a quarantine) and end with the guest's picture.
  test::Program viewer =
      test::startProgram(SPICEBOX_VIEW_PATH,
                         {"--headless", "--exit-when-idle", "5000", "--timeout", "200", "--dump",
                          (b.dir / "view").string(), "spice+unix://" + b.viewSocket},
                         b.dir, "view");

  // The valid commands alone, then with the stroke after the 100th: 150 valid commands each. The
  // second guest stays linked (--until) until the viewer has its picture: the display goes with
  // the guest's link.
  runGuest(b, "valid", {"--valid-only", "--count", "150", "--snapshot-last"});
  REQUIRE(b.process.waitForLog("VMM unlinked", 10s));
  const size_t logBefore = b.process.stderrText().size();
  test::Program guest = test::startProgram(
      SPICEBOX_GUESTSIM_PATH, guestArgs(b, "expensive", {"--until", "150", "--snapshot-at", "150"}),
      b.dir, "expensive", /*pipeStdout=*/true);
  const bool reached = test::awaitLines(guest, b.process, 1, GUEST_BOUND);
  INFO("guestsim stdout: " << guest.stdoutText << "\nstderr:\n" << test::readFile(guest.errPath));
  REQUIRE(reached);
  CHECK(std::regex_search(guest.stdoutText, std::regex(R"(attacks: 1 \(not met: 0\))")));

  const auto expected = readImage(b.dir / "valid-150.png");
  CHECK(differingPixels(readImage(b.dir / "expensive-150.png"), expected) == 0);

  const test::Exit viewed = test::awaitExit(viewer, b.process, GUEST_BOUND);
  INFO("viewer: " << viewed.out << viewed.err);
  REQUIRE(WIFEXITED(viewed.waitStatus));
  CHECK(WEXITSTATUS(viewed.waitStatus) == 0);
  CHECK(differingPixels(readImage(b.dir / "view" / "final.png"), expected) == 0);
  REQUIRE(::kill(guest.pid, SIGTERM) == 0);
  test::awaitExit(guest, b.process, GUEST_BOUND);

  // Killed at the deadline twice, then quarantined and named; rendering goes on.
  const std::string log = b.process.stderrText().substr(logBefore);
  INFO("broker log of the expensive run:\n" << log);
  CHECK(std::regex_search(log, std::regex("did not finish batch \\d+ within the batch deadline of "
                                          "1000 ms")));
  CHECK(std::regex_search(
      log, std::regex("quarantined batch \\d+ item \\d+ \\(DRAW command \\(QXL type 1\\) at guest "
                      "address 0x[0-9a-f]+\\): it brought the renderer down 2 times")));
  const auto status = b.status();
  INFO("status: " << status.dump());
  CHECK(status["commands"]["quarantined"] == 1);
  CHECK(status["rendering"]["stopped"] == false);
  CHECK(restartsOf(status, "renderer") == 2);
}

TEST_CASE(
    "three quarantines within a minute stop rendering for the guest, the broker stays up and "
    "clients get the last picture",
    "[quarantine]") {
  Broker b;
  const auto ready = b.process.waitForReady(test::START_BOUND);
  INFO("broker:\n" << b.process.stderrText());
  REQUIRE(ready);

  // The picture before the third stroke: the valid commands' after 300.
  runGuest(b, "valid", {"--valid-only", "--count", "300", "--snapshot-at", "300"});
  REQUIRE(b.process.waitForLog("VMM unlinked", 10s));
  const size_t logBefore = b.process.stderrText().size();

  // Strokes after valid commands 100, 200 and 300; then 50 more valid commands, released
  // undrawn. The guest stays linked (--until), so rendering stays stopped.
  test::Program guest = test::startProgram(
      SPICEBOX_GUESTSIM_PATH, guestArgs(b, "expensive", {"--until", "350"}), b.dir, "expensive",
      /*pipeStdout=*/true);
  const bool reached = test::awaitLines(guest, b.process, 1, GUEST_BOUND);
  INFO("guestsim stdout: " << guest.stdoutText << "\nstderr:\n" << test::readFile(guest.errPath));
  REQUIRE(reached);
  // Every command came back to the guest, drawn or not.
  CHECK(std::regex_search(guest.stdoutText, std::regex(R"(commands: 353 .*released: 353;)")));
  CHECK(std::regex_search(guest.stdoutText, std::regex(R"(attacks: 3 \(not met: 0\))")));

  const std::string log = b.process.stderrText().substr(logBefore);
  INFO("broker log of the expensive run:\n" << log);
  CHECK(std::regex_search(log, std::regex("critical: rendering STOPPED for this guest: 3 commands "
                                          "quarantined within 60 s")));
  const auto status = b.status();
  INFO("status: " << status.dump());
  CHECK(status["commands"]["quarantined"] == 3);
  CHECK(status["rendering"]["stopped"] == true);
  CHECK(status["rendering"]["note"].get<std::string>().find("quarantined") != std::string::npos);

  // A client connecting now gets the last picture drawn.
  const auto expected = readImage(b.dir / "valid-300.png");
  auto session = test::connectWithDisplay(test::startListening(b.process, "unix"));
  test::Difference differ;
  auto err = test::pump(
      b.process, {session.get()},
      [&] {
        differ = test::difference(session->display()->primary(), expected);
        return differ.pixels == 0;
      },
      test::STEP_BOUND, "a new client to get the last picture drawn");
  INFO("differing from the valid commands' picture after 300: " << differ.describe());
  CHECK_OK(std::move(err));

  // The broker is up; the guest ends cleanly, and its next link is rendered again.
  REQUIRE(::kill(guest.pid, SIGTERM) == 0);
  const test::Exit exit = test::awaitExit(guest, b.process, GUEST_BOUND);
  CHECK(WIFEXITED(exit.waitStatus));
  REQUIRE(b.process.waitForLog("rendering starts again for the next one", 10s));
  CHECK(b.status()["rendering"]["stopped"] == false);
}
