// Runs in: tests. Input: the real spicebox-broker (renderer, netproxy, built-in spicebox-guestsim)
// over its unix socket and TCP, read by spicebox's client library and by spicebox-view (a child
// process); the broker's stderr and status; guestsim's read-back of the primary (PNG).
//
// The shared-memory display extension end to end: viewers that map the segment end with the
// device's picture (alongside an image client, and through images when they decline), the
// offered descriptor cannot be written, resized or made writable, other users and TCP clients
// get no offer, and in tear-free mode no acknowledged frame is ever torn.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "base/shm-protocol.h"
#include "client/spice-client.h"
#include "tests/integration/broker-process.h"
#include "tests/integration/client-steps.h"
#include "tests/oracle/png-image.h"
#include "tests/support/require-ok.h"
#include "tests/support/shared-recordings.h"

extern char** environ;

using namespace spicebox;
using namespace std::chrono_literals;
using client::Clock;
using test::awaitLog;
using test::connectWithDisplay;
using test::difference;
using test::pump;
using test::STEP_BOUND;

namespace {

constexpr uint64_t DESKTOP_UNTIL = 1500;

// A broker serving the built-in guest on a unix socket and on TCP; the guest stops after
// `until` commands and writes its read-back of the primary there.
struct Run {
  std::string dir;
  std::string socketPath;
  std::string snapshotPath;
  uint64_t until = 0;
  std::unique_ptr<test::BrokerProcess> broker;
  client::Target unixTarget, tcpTarget;

  Run(uint64_t untilCommand, std::vector<std::string> guestArgs,
      std::vector<std::string> brokerExtra = {}, const std::string& scenario = "desktop")
      : dir(test::tempDir("shm")), until(untilCommand) {
    socketPath = dir + "/spice.sock";
    std::string args = "--until " + std::to_string(until) + " --snapshot-at " +
                       std::to_string(until) + " --snapshot-prefix " + dir + "/p";
    for (const auto& a : guestArgs)
      args += " " + a;
    snapshotPath = dir + "/p-" + std::to_string(until) + ".png";
    std::vector<std::string> brokerArgs = {
        "--unix",          socketPath, "--listen",     "127.0.0.1:0", "--disable-ticketing",
        "--builtin-guest", scenario,   "--guest-args", args};
    brokerArgs.insert(brokerArgs.end(), brokerExtra.begin(), brokerExtra.end());
    broker = std::make_unique<test::BrokerProcess>(brokerArgs);
    tcpTarget = test::startListening(*broker, "tcp");
    unixTarget = test::startListening(*broker, "unix");
  }
  ~Run() { std::filesystem::remove_all(dir); }

  // Waits for the guest to reach `until`; its read-back.
  oracle::RgbImage awaitReadBack() {
    auto reached =
        awaitLog(*broker, std::regex("--until " + std::to_string(until) + " reached"), 120s);
    INFO(broker->stderrText());
    REQUIRE(reached);
    REQUIRE(std::filesystem::exists(snapshotPath));
    auto png = oracle::readPng(snapshotPath);
    REQUIRE(std::holds_alternative<oracle::RgbImage>(png));
    return std::get<oracle::RgbImage>(png);
  }
};

client::SessionOptions optionsFor(const client::Target& target, client::ShmWish wish) {
  client::SessionOptions options;
  options.target = target;
  options.shm = wish;
  return options;
}

// Pumps `sessions` until every one's picture equals `expected` (the guest no longer draws).
void requireConverges(Run& run, std::vector<client::Session*> sessions,
                      const oracle::RgbImage& expected) {
  std::vector<test::Difference> diffs(sessions.size());
  auto err = pump(
      *run.broker, sessions,
      [&] {
        bool all = true;
        for (size_t i = 0; i < sessions.size(); ++i) {
          diffs[i] = difference(sessions[i]->display()->primary(), expected);
          all = all && diffs[i].pixels == 0;
        }
        return all;
      },
      STEP_BOUND, "every client's picture to equal the guest's read-back");
  for (size_t i = 0; i < sessions.size(); ++i)
    INFO("client " << i << " differs from the read-back: " << diffs[i].describe());
  REQUIRE_OK(std::move(err));
}

// Runs a program to its exit (bounded); its exit status and its output.
struct Exit {
  int status = -1;
  std::string output;
};
Exit runProgram(std::vector<std::string> argv, test::BrokerProcess& broker,
                std::chrono::seconds bound, const std::string& logPath) {
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, logPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  Exit exit;
  const auto deadline = Clock::now() + bound;
  for (;;) {
    // The broker's pipes are drained while waiting (a full stderr pipe would block it); waitpid
    // with WNOHANG between drains, each drain waiting up to 100 ms for the broker's output.
    const pid_t done = ::waitpid(pid, &exit.status, WNOHANG);
    if (done == pid)
      break;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &exit.status, 0);
      FAIL(argv[0] << " did not exit within " << bound.count() << " s");
    }
    broker.waitForStatus([](const test::BrokerStatus&) { return false; }, 100ms);
  }
  std::ifstream in(logPath);
  std::stringstream text;
  text << in.rdbuf();
  exit.output = text.str();
  return exit;
}

// spicebox's programs sit beside the test binaries (one output directory).
std::string toolPath(const std::string& name) {
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / name).string();
}

uint64_t differingPixels(const oracle::RgbImage& a, const oracle::RgbImage& b) {
  auto diff = oracle::compareImages(a, b);
  if (auto* error = std::get_if<std::string>(&diff))
    FAIL(*error);
  return std::get<oracle::ImageDifference>(diff).differingPixels;
}

}  // namespace

TEST_CASE(
    "a shared-memory viewer and an image client watch the desktop at once and both end with "
    "the device's picture",
    "[shm]") {
  const auto wish = GENERATE(client::ShmWish::Accept, client::ShmWish::TearFree);
  INFO((wish == client::ShmWish::TearFree ? "tear-free" : "plain shared memory"));
  Run run(DESKTOP_UNTIL, {});
  auto viewer = connectWithDisplay(optionsFor(run.unixTarget, wish));
  auto images = connectWithDisplay(run.tcpTarget);
  const auto expected = run.awaitReadBack();
  requireConverges(run, {viewer.get(), images.get()}, expected);

  const client::DisplayChannel& shm = *viewer->display();
  CHECK(shm.shmActive());
  CHECK(shm.tearFree() == (wish == client::ShmWish::TearFree));
  // An offer per primary it saw (the desktop scenario changes resolution once; a primary
  // replaced before the viewer's reply is offered but never shown).
  CHECK(shm.shm().offers >= 1);
  CHECK(shm.shm().surfaces >= 1);
  CHECK(shm.shm().surfaces <= shm.shm().offers);
  CHECK(shm.shm().frames >= 1);
  CHECK(shm.display().draws() == 0);  // not one image or draw: only damage rectangles
  if (wish == client::ShmWish::TearFree)
    CHECK(shm.shm().acksSent == shm.shm().frames);
  CHECK(images->display()->display().draws() > 0);
  // The broker's status counts the viewer.
  auto status = run.broker->waitForStatus(
      [&](const test::BrokerStatus& s) {
        return s.raw.find(wish == client::ShmWish::TearFree
                              ? "1 shared-memory, 1 tear-free"
                              : "1 shared-memory, 0 tear-free") != std::string::npos;
      },
      STEP_BOUND);
  CHECK(status);
}

TEST_CASE("a viewer that declines the offer gets the same picture through images", "[shm]") {
  Run run(DESKTOP_UNTIL, {});
  auto viewer = connectWithDisplay(optionsFor(run.unixTarget, client::ShmWish::Reject));
  const auto expected = run.awaitReadBack();
  requireConverges(run, {viewer.get()}, expected);
  const client::DisplayChannel& d = *viewer->display();
  CHECK(d.shm().offers == 1);
  CHECK(d.shm().refused == 1);
  CHECK_FALSE(d.shmActive());
  CHECK(d.display().draws() > 0);
}

TEST_CASE("the offered segment cannot be written, resized or made writable", "[shm][security]") {
  Run run(200, {});
  auto viewer = connectWithDisplay(optionsFor(run.unixTarget, client::ShmWish::Accept));
  REQUIRE_OK(pump(
      *run.broker, {viewer.get()}, [&] { return viewer->display()->shm().frames > 0; }, STEP_BOUND,
      "the first SHM_DAMAGE"));
  const int fd = viewer->display()->segmentFd();
  REQUIRE(fd >= 0);
  const size_t size = viewer->display()->segment().size();
  REQUIRE(size > 0);

  CHECK((::fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
  errno = 0;
  CHECK(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
  CHECK(errno == EACCES);
  void* view = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  REQUIRE(view != MAP_FAILED);
  errno = 0;
  CHECK(::mprotect(view, size, PROT_READ | PROT_WRITE) == -1);
  CHECK(errno == EACCES);
  ::munmap(view, size);
  CHECK(::ftruncate(fd, 0) == -1);
  CHECK(::ftruncate(fd, static_cast<off_t>(size) * 2) == -1);
  const char byte = 0;
  CHECK(::pwrite(fd, &byte, 1, 0) == -1);
  // Sealed, and the seals themselves cannot be changed.
  const int seals = ::fcntl(fd, F_GET_SEALS);
  CHECK((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
        (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  CHECK(::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE) == -1);
  // The viewer keeps working after all of that.
  const uint64_t frames = viewer->display()->shm().frames;
  REQUIRE_OK(pump(
      *run.broker, {viewer.get()}, [&] { return viewer->display()->shm().frames > frames; },
      STEP_BOUND, "a later SHM_DAMAGE"));
}

TEST_CASE("no offer over TCP or to a user not allowed: the client is served images",
          "[shm][security]") {
  const bool overTcp = GENERATE(true, false);
  // Over the unix socket, only some other user is allowed; over TCP, our own user is (and still
  // gets no offer).
  const std::string other = std::to_string(::getuid() == 4242 ? 4243 : 4242);
  Run run(DESKTOP_UNTIL, {},
          overTcp ? std::vector<std::string>{} : std::vector<std::string>{"--shm-allow", other});
  auto client = connectWithDisplay(
      optionsFor(overTcp ? run.tcpTarget : run.unixTarget, client::ShmWish::TearFree));
  const auto expected = run.awaitReadBack();
  requireConverges(run, {client.get()}, expected);
  const client::DisplayChannel& d = *client->display();
  CHECK(d.shm().offers == 0);
  CHECK_FALSE(d.shmActive());
  CHECK(d.display().draws() > 0);
  CHECK(run.broker->stderrText().find(overTcp ? "shared memory is for local viewers"
                                              : "its user is not allowed") != std::string::npos);
}

TEST_CASE("a viewer running as another user (nobody) gets no offer and is served images",
          "[shm][security]") {
  if (::geteuid() != 0) {
    // Changing user needs root; the allow-list case above covers the same gate with our user.
    WARN(
        "not root: cannot run spicebox-view as nobody here; the --shm-allow case covers the "
        "same check");
    return;
  }
  Run run(DESKTOP_UNTIL, {}, {"--unix-mode", "0666"});
  // The socket's directory and the dump directory must be reachable for nobody.
  REQUIRE(::chmod(run.dir.c_str(), 0777) == 0);
  const std::string dump = run.dir + "/view";
  std::filesystem::create_directory(dump);
  REQUIRE(::chmod(dump.c_str(), 0777) == 0);
  const auto expected = run.awaitReadBack();
  const Exit exit =
      runProgram({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  toolPath("spicebox-view"), "--headless", "--tear-free", "--dump", dump,
                  "--exit-when-idle", "2000", "--timeout", "60", "spice+unix://" + run.socketPath},
                 *run.broker, 90s, run.dir + "/view.log");
  INFO("spicebox-view as nobody:\n" << exit.output << "\nbroker:\n" << run.broker->stderrText());
  REQUIRE(WIFEXITED(exit.status));
  REQUIRE(WEXITSTATUS(exit.status) == 0);
  CHECK(run.broker->stderrText().find("(uid 65534") != std::string::npos);
  CHECK(run.broker->stderrText().find("its user is not allowed") != std::string::npos);
  auto final = oracle::readPng(dump + "/final.png");
  REQUIRE(std::holds_alternative<oracle::RgbImage>(final));
  CHECK(differingPixels(std::get<oracle::RgbImage>(final), expected) == 0);
}

namespace {

// spicebox-view --headless against the broker, until the guest stops and the viewer is idle;
// its final picture must equal the device's read-back.
void viewEndsWithReadBack(uint64_t until, std::vector<std::string> guestArgs,
                          std::vector<std::string> viewArgs) {
  Run run(until, std::move(guestArgs));
  const std::string dump = run.dir + "/view";
  std::filesystem::create_directory(dump);
  std::vector<std::string> argv = {toolPath("spicebox-view"), "--headless", "--dump",    dump,
                                   "--exit-when-idle",        "3000",       "--timeout", "240"};
  argv.insert(argv.end(), viewArgs.begin(), viewArgs.end());
  argv.push_back("spice+unix://" + run.socketPath);
  // The viewer exits once nothing changed for 3 s after the guest's last command.
  const Exit exit = runProgram(argv, *run.broker, 300s, run.dir + "/view.log");
  INFO("spicebox-view:\n" << exit.output);
  REQUIRE(WIFEXITED(exit.status));
  REQUIRE(WEXITSTATUS(exit.status) == 0);
  const auto expected = run.awaitReadBack();
  auto final = oracle::readPng(dump + "/final.png");
  REQUIRE(std::holds_alternative<oracle::RgbImage>(final));
  CHECK(differingPixels(std::get<oracle::RgbImage>(final), expected) == 0);
}

}  // namespace

TEST_CASE("desktop: spicebox-view --headless in shared-memory mode ends with the device's picture",
          "[shm][view]") {
  viewEndsWithReadBack(DESKTOP_UNTIL, {}, {});
}

TEST_CASE("desktop: spicebox-view --headless declining shared memory ends with the same picture",
          "[shm][view]") {
  viewEndsWithReadBack(DESKTOP_UNTIL, {}, {"--shm-reject"});
}

TEST_CASE(
    "recordings: spicebox-view --headless in shared-memory mode ends with the device's "
    "picture",
    "[shm][view]") {
  const std::filesystem::path dir = SPICEBOX_RECORDINGS_DIR;
  if (!test::recordingsPresent(dir))
    return;
  for (const std::string name : {"console", "windows"}) {
    DYNAMIC_SECTION(name) {
      // Up to the point its .stats.txt names (where the real client took its screenshot).
      std::ifstream stats(dir / (name + ".stats.txt"));
      std::stringstream text;
      text << stats.rdbuf();
      std::smatch m;
      const std::string s = text.str();
      REQUIRE(std::regex_search(s, m, std::regex(R"(primary surface after command (\d+))")));
      viewEndsWithReadBack(std::stoull(m[1]), {"--replay", (dir / (name + ".rec.xz")).string()},
                           {"--tear-free"});
    }
  }
}

namespace {

// A viewer on the flash scenario (one solid colour per update, as fast as the device takes them)
// that checks, for every frame, that the buffer it was told to read holds one colour. Returns
// the number of torn frames among `frames`.
uint64_t tornFrames(client::ShmWish wish, uint64_t frames) {
  // Paced so that a batch holds one fill or few (unpaced, 64 full-screen fills share a batch).
  Run run(1u << 30, {"--rate", "1500"}, {}, "flash");
  auto viewer = connectWithDisplay(optionsFor(run.unixTarget, wish));
  client::DisplayChannel& d = *viewer->display();
  uint64_t seen = 0, torn = 0;
  d.setFrameCallback([&](uint64_t, std::span<const client::Rect>) {
    const auto segment = d.segment();
    const client::Canvas* picture = d.primary();
    if (!picture || seen >= frames)
      return;
    ++seen;
    const uint32_t w = picture->width(), h = picture->height();
    const uint64_t offset = d.shmOffset();
    const uint32_t stride = d.shmStride();
    REQUIRE(offset + uint64_t{stride} * (h - 1) + uint64_t{w} * 4 <= segment.size());
    // Row 0 is one colour, and every other row equals it (memcmp: fast even under ASan).
    const uint8_t* top = segment.data() + offset;
    for (uint32_t x = 1; x < w; ++x)
      if (std::memcmp(top + size_t{x} * 4, top, 4) != 0) {
        ++torn;
        return;
      }
    for (uint32_t y = 1; y < h; ++y)
      if (std::memcmp(top + size_t{y} * stride, top, size_t{w} * 4) != 0) {
        ++torn;
        return;
      }
  });
  REQUIRE_OK(pump(
      *run.broker, {viewer.get()}, [&] { return seen >= frames; }, 600s,
      std::to_string(frames) + " frames"));
  CHECK(d.shmActive());
  CHECK(d.tearFree() == (wish == client::ShmWish::TearFree));
  return torn;
}

}  // namespace

TEST_CASE("tear-free: 10000 acknowledged frames of solid colours and not one torn", "[shm][tear]") {
  CHECK(tornFrames(client::ShmWish::TearFree, 10000) == 0);
}

TEST_CASE("without tear-free the same check may see tearing (reported, not required)",
          "[shm][tear]") {
  const uint64_t torn = tornFrames(client::ShmWish::Accept, 1000);
  WARN("plain shared memory: " << torn
                               << " of 1000 frames torn (the renderer may draw into the "
                                  "buffer being read)");
}
