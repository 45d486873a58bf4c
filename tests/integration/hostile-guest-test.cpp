// Runs in: tests. Input: the real broker's log and status, and what spicebox-guestsim prints and
// reads back (its summary line, its snapshots of the primary).
//
// A hostile guest through the whole of spicebox (issue 7, "Hostile guest scenario"): the real
// spicebox-broker with its sandboxed renderer and netproxy, and spicebox-guestsim --scenario
// hostile as the VMM, which interleaves valid drawing with every attack on the QXL device and on
// the renderer (tools/guestsim/attack.h, hostile-commands.h) and gets its display back after the
// ones that stop it. Then the same seed's valid commands alone (--valid-only) on the same
// broker. Checked:
//  - the broker is alive throughout, its renderer and netproxy were never restarted (let alone
//    given up on), and it exits 0 on SIGTERM, having logged nothing at error level;
//  - guestsim met every attack (the device noticed each it must, QXL_INTERRUPT_ERROR) and every
//    command it submitted came back on the release ring or was counted (unreleasable, forgotten
//    at a reset);
//  - the valid commands' pictures, read back as a guest does after each round and at the end,
//    equal those of the run without attacks, pixel for pixel;
//  - the log shows each attack met: the device's halted rings, refused primaries, refused IO and
//    memslots, the renderer's rejection of every DecodeError kind the attacks are named for.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "tests/integration/client-steps.h"
#include "tests/oracle/png-image.h"
#include "tools/ctl/status-text.h"
#include "tools/guestsim/hostile-commands.h"

using namespace spicebox;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto BROKER_START_BOUND = 10000ms;
// A run takes about a second in a release build; ASan and a loaded machine several times that.
// Past this it hangs.
constexpr auto GUEST_BOUND = 120s;
// Three rounds (tools/guestsim/hostile-scenario.h): the first two end with the attacks that stop
// the display and the resets that bring it back, the last with its valid picture.
constexpr uint64_t ROUND = 250;
constexpr uint64_t COMMANDS = 3 * ROUND;
constexpr const char* SEED = "7";

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-hostile-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

test::Exit runGuestsim(const std::vector<std::string>& args, const std::filesystem::path& dir,
                       const std::string& name, test::BrokerProcess& broker) {
  test::Program p = test::startProgram(SPICEBOX_GUESTSIM_PATH, args, dir, name);
  return test::awaitExit(p, broker, GUEST_BOUND);
}

// guestsim's summary line (tools/guestsim/main.cpp summaryLine).
struct Summary {
  uint64_t commands = 0, released = 0, unreleasable = 0, forgotten = 0, resets = 0;
  uint64_t attacks = 0, unmet = 0;
  std::map<std::string, uint64_t> attacksByName;
};

uint64_t field(const std::string& out, const std::string& pattern) {
  std::smatch m;
  const std::regex re(pattern);
  REQUIRE(std::regex_search(out, m, re));
  return std::stoull(m[1]);
}

Summary parseSummary(const std::string& out) {
  Summary s;
  s.commands = field(out, R"(commands: (\d+) io:)");
  s.released = field(out, R"(released: (\d+))");
  s.unreleasable = field(out, R"(unreleasable: (\d+))");
  s.forgotten = field(out, R"(forgotten at reset: (\d+))");
  s.resets = field(out, R"(resets: (\d+))");
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(attacks: (\d+) \(not met: (\d+)\))"))) {
    s.attacks = std::stoull(m[1]);
    s.unmet = std::stoull(m[2]);
  }
  if (std::regex_search(out, m, std::regex(R"(attacks by name: ([^;\n]*))"))) {
    const std::string list = m[1];
    const std::regex entry(R"(([a-z0-9-]+) (\d+))");
    for (auto it = std::sregex_iterator(list.begin(), list.end(), entry);
         it != std::sregex_iterator(); ++it)
      s.attacksByName[(*it)[1]] = std::stoull((*it)[2]);
  }
  return s;
}

std::vector<std::string> guestArgs(const std::string& socket, const std::filesystem::path& prefix) {
  return {"--vmm-socket",     socket,
          "--scenario",       "hostile",
          "--seed",           SEED,
          "--count",          std::to_string(COMMANDS),
          "--snapshot-every", std::to_string(ROUND),
          "--snapshot-last",  "--snapshot-prefix",
          prefix.string()};
}

// Lines the broker or its children logged at error or critical level (base/log.cpp's pattern).
std::vector<std::string> errorLines(const std::string& log) {
  static const std::regex level(R"(\w\[\d+\] (error|critical):)");
  std::vector<std::string> found;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line))
    if (std::regex_search(line, level))
      found.push_back(line);
  return found;
}

}  // namespace

TEST_CASE("hostile-guest-keeps-its-valid-pictures-exact-and-the-broker-alive", "[hostile]") {
  TempDir tmp;
  const std::string socket = (tmp.path / "vmm.sock").string();
  const auto started = Clock::now();
  const std::string viewSocket = (tmp.path / "view.sock").string();
  const std::string statusSocket = (tmp.path / "status.sock").string();
  // 64 MiB of surface memory: the guest's 256 MiB of aliased surfaces
  // (surfaces-beyond-the-renderers-memory) fill it and the rest are refused.
  test::BrokerProcess broker({"--vmm-socket", socket, "--builtin-guest", "none", "--sandbox",
                              "best-effort", "--unix", viewSocket, "--disable-ticketing",
                              "--surface-memory", "64", "--status-socket", statusSocket});
  const auto ready = broker.waitForReady(BROKER_START_BOUND);
  INFO("broker stderr:\n" << broker.stderrText());
  REQUIRE(ready);

  // Two viewers watch throughout, so that every primary the guest makes (odd ones included)
  // also reaches clients: one in shared-memory mode, one decoding images the netproxy encodes.
  // Each exits by itself, 0, once nothing changed for a while after the guests are gone; the
  // netproxy closing its connection would make it exit with an error.
  std::vector<test::Program> viewers;
  for (const char* mode : {"--tear-free", "--no-shm"})
    viewers.push_back(test::startProgram(SPICEBOX_VIEW_PATH,
                                         {"--headless", mode, "--exit-when-idle", "3000",
                                          "--timeout", "200", "spice+unix://" + viewSocket},
                                         tmp.path, std::string("view") + mode));

  // The hostile guest, then the same seed's valid commands alone: a new link to the same broker,
  // once the first link is gone (one VMM at a time).
  const test::Exit hostile =
      runGuestsim(guestArgs(socket, tmp.path / "hostile"), tmp.path, "hostile", broker);
  REQUIRE(broker.waitForLog("VMM unlinked", 10000ms));
  auto validArgs = guestArgs(socket, tmp.path / "valid");
  validArgs.push_back("--valid-only");
  const test::Exit valid = runGuestsim(validArgs, tmp.path, "valid", broker);
  INFO("hostile guestsim stdout:\n"
       << hostile.out << "\nstderr (tail):\n"
       << hostile.err.substr(hostile.err.size() > 4000 ? hostile.err.size() - 4000 : 0));
  INFO("valid-only guestsim stdout:\n" << valid.out);
  REQUIRE(WIFEXITED(hostile.waitStatus));
  CHECK(WEXITSTATUS(hostile.waitStatus) == 0);
  REQUIRE(WIFEXITED(valid.waitStatus));
  CHECK(WEXITSTATUS(valid.waitStatus) == 0);

  // Every attack carried out and met; every command released or counted.
  const Summary h = parseSummary(hostile.out), v = parseSummary(valid.out);
  std::cout << "hostile guest: " << h.attacks << " attacks (" << h.attacksByName.size()
            << " kinds), " << h.commands << " commands: " << h.released << " released, "
            << h.unreleasable << " unreleasable (counted by the device), " << h.forgotten
            << " forgotten at " << h.resets << " resets" << std::endl;
  CHECK(h.unmet == 0);
  CHECK(h.commands == h.released + h.unreleasable + h.forgotten);
  CHECK(v.commands == v.released + v.forgotten);
  CHECK(v.unreleasable == 0);
  CHECK(v.attacks == 0);
  CHECK(h.resets == v.resets);
  CHECK(h.resets > 0);
  for (uint8_t k = 0; k < guestsim::HOSTILE_COMMAND_COUNT; ++k) {
    const std::string name(guestsim::hostileCommandName(static_cast<guestsim::HostileCommand>(k)));
    INFO(name);
    CHECK(h.attacksByName.count(name) == 1);
  }
  for (const char* name : {"update-area-changed-while-read",
                           "create-primary-while-one-exists",
                           "io-flood",
                           "memslot-add-over-a-live-slot",
                           "memslot-add-slot-id-out-of-range",
                           "memslot-add-outside-the-bars",
                           "memslot-del-never-added",
                           "unknown-io-ports",
                           "guest-log-without-nul",
                           "memslot-churn",
                           "slot-in-use-deleted-and-re-added",
                           "monitors-config-count-larger-than-its-data",
                           "monitors-config-count-changed-while-read",
                           "surfaces-beyond-the-renderers-memory",
                           "drawable-changed-while-read",
                           "absurd-primaries",
                           "command-ring-producer-far-ahead",
                           "command-ring-producer-moved-back",
                           "cursor-ring-producer-far-ahead",
                           "release-ring-consumer-ahead",
                           "command-ring-producer-changed-while-read"}) {
    INFO(name);
    CHECK(h.attacksByName.count(name) == 1);
  }

  // The valid commands' pictures: after each round (before the attacks that end it) and at the
  // end, exactly those of the run without attacks.
  for (uint64_t n = ROUND; n <= COMMANDS; n += ROUND) {
    const auto ours = tmp.path / ("hostile-" + std::to_string(n) + ".png");
    const auto theirs = tmp.path / ("valid-" + std::to_string(n) + ".png");
    INFO("after " << n << " valid commands");
    REQUIRE(std::filesystem::exists(ours));
    REQUIRE(std::filesystem::exists(theirs));
    auto a = oracle::readPng(ours.string());
    auto b = oracle::readPng(theirs.string());
    REQUIRE(std::holds_alternative<oracle::RgbImage>(a));
    REQUIRE(std::holds_alternative<oracle::RgbImage>(b));
    auto diff = oracle::compareImages(std::get<oracle::RgbImage>(a), std::get<oracle::RgbImage>(b));
    REQUIRE(std::holds_alternative<oracle::ImageDifference>(diff));
    CHECK(std::get<oracle::ImageDifference>(diff).differingPixels == 0);
  }

  // The viewers stayed connected through every attack and saw pictures.
  for (test::Program& viewer : viewers) {
    const test::Exit exit = test::awaitExit(viewer, broker, GUEST_BOUND);
    INFO(viewer.name << ":\n" << exit.out << exit.err);
    REQUIRE(WIFEXITED(exit.waitStatus));
    CHECK(WEXITSTATUS(exit.waitStatus) == 0);
    CHECK(field(exit.out, R"(frames (\d+))") > 0);
  }

  // The broker's side of the accounts (its status socket): every command reached the renderer
  // (drawn or refused), nothing quarantined, rendering never stopped.
  auto document = ctl::readStatus(statusSocket);
  REQUIRE(std::holds_alternative<std::string>(document));
  const auto status = nlohmann::json::parse(std::get<std::string>(document));
  INFO("status: " << status.dump());
  const auto& commands = status["commands"];
  CHECK(commands["rendered"].get<uint64_t>() + commands["rejected"].get<uint64_t>() ==
        h.commands + v.commands);
  // Released by the device: what the guests took back, and what they forgot at a reset before
  // taking it (the device had pushed it onto the release ring the reset emptied).
  CHECK(commands["released"].get<uint64_t>() >= h.released + v.released);
  CHECK(commands["released"].get<uint64_t>() <=
        h.released + v.released + h.forgotten + v.forgotten);
  CHECK(commands["quarantined"].get<uint64_t>() == 0);
  CHECK(status["rendering"]["stopped"].get<bool>() == false);
  // At least every hostile command the decoder refuses, and slot-in-use-deleted-and-re-added's,
  // in each round (the races add whatever they won).
  uint64_t refusedPerRound = 1;
  for (uint8_t k = 0; k < guestsim::HOSTILE_COMMAND_COUNT; ++k)
    if (!guestsim::expectedDecodeError(static_cast<guestsim::HostileCommand>(k)).empty())
      ++refusedPerRound;
  CHECK(commands["rejected"].get<uint64_t>() >= refusedPerRound * COMMANDS / ROUND);

  // Alive, and neither child ever replaced: the attacks crashed and hung nothing.
  REQUIRE(test::processExists(broker.pid()));
  const auto children = broker.waitForStatus(
      [](const test::BrokerStatus& s) {
        return s.renderer.state == "ready" && s.netproxy.state == "ready";
      },
      1000ms);
  REQUIRE(children);
  CHECK(children->renderer.pid == ready->renderer.pid);
  CHECK(children->netproxy.pid == ready->netproxy.pid);
  CHECK(children->renderer.restarts == 0);
  CHECK(children->netproxy.restarts == 0);

  REQUIRE(::kill(broker.pid(), SIGTERM) == 0);
  const auto exit = broker.waitForExit(10000ms);
  const std::string& log = broker.stderrText();
  INFO("broker stderr:\n" << log);
  REQUIRE(exit);
  CHECK(WIFEXITED(*exit));
  CHECK(WEXITSTATUS(*exit) == 0);
  const auto errors = errorLines(log);
  INFO("first error line: " << (errors.empty() ? "" : errors.front()));
  CHECK(errors.empty());

  // What the device and the renderer made of the attacks. The device logs each kind of guest
  // error at its 1st, 2nd, 4th... occurrence; the renderer each DecodeError kind.
  for (const char* line : {
           // rings halted until QXL_IO_RESET
           "command ring producer index out of range; ring halted until QXL_IO_RESET",
           "cursor ring producer index out of range; ring halted until QXL_IO_RESET",
           "release ring consumer index out of range; ring halted until QXL_IO_RESET",
           // absurd primaries refused, odd ones started black and never written back
           "QXL_IO_CREATE_PRIMARY: width or height 0 or above 8192",
           "QXL_IO_CREATE_PRIMARY: unknown surface format",
           "QXL_IO_CREATE_PRIMARY: stride smaller than a row",
           "QXL_IO_CREATE_PRIMARY while a primary surface exists",
           "QXL_IO_DESTROY_PRIMARY without a primary surface",
           "are not in guest memory, it starts black",
           "UPDATE_AREA of surface 0 not written back",
           // IO out of order or flooding, memslots
           "QXL_IO_UPDATE_AREA: surface id out of range",
           "QXL_IO_UPDATE_AREA: rectangle not ordered or negative",
           "UPDATE_AREA of surface 1000 not written back",
           "too many IO writes outstanding; write refused",
           "which the device does not know; ignored",
           "QXL guest log",
           "QXL guest error: slot already active",
           "QXL guest error: slot id out of range",
           "QXL guest error: slot start after end",
           "QXL guest error: slot outside every BAR",
           "QXL guest error: slot not active",
           "command release info outside every memslot: cannot be released",
           // the rasteriser's refusals
           "command not drawn:",
       }) {
    INFO(line);
    CHECK(log.find(line) != std::string::npos);
  }
  std::set<std::string> kinds;
  for (uint8_t k = 0; k < guestsim::HOSTILE_COMMAND_COUNT; ++k)
    if (auto kind = guestsim::expectedDecodeError(static_cast<guestsim::HostileCommand>(k));
        !kind.empty())
      kinds.insert(std::string(kind));
  for (const std::string& kind : kinds) {
    INFO(kind);
    CHECK(log.find("guest command rejected, not drawn (" + kind + ":") != std::string::npos);
  }
  std::cout << "hostile guest: broker alive throughout, " << kinds.size()
            << " DecodeError kinds met, valid pictures exact; "
            << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()
            << " ms" << std::endl;
}
