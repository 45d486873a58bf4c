// Runs in: tests. Input: the real broker's output, spice-gtk's spicy-screenshot (a client nobody
// here wrote) and its PPM files, guestsim's PNG read-backs, the shared recordings' PNGs (what a
// real spice-gtk client saw from the real spice-server).
//
// A standard SPICE client against the whole of spicebox: spicebox-broker with --listen (TCP) or
// --unix opens the sockets, the sandboxed netproxy speaks SPICE; spicebox-guestsim plays the
// desktop scenario or a shared recording up to a point (--until N) and reads the primary back
// there (--snapshot-at N: QXL_IO_UPDATE_AREA, then guest memory, which the renderer wrote from its
// display segment). spicy-screenshot then connects, links (no ticket, the right password, a wrong
// one) and saves the picture it was sent; it must equal the read-back pixel for pixel, and for a
// recording also the PNG the real client saw at that point.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "base/fd.h"
#include "tests/integration/broker-process.h"
#include "tests/oracle/png-image.h"
#include "tests/support/shared-recordings.h"

using namespace spicebox;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Replaying the console recording up to its point takes ~2 s in a release build; ASan and a
// loaded machine make it several times longer. Past these the run is a hang, not slowness.
constexpr auto GUEST_BOUND = 240s;
constexpr auto BROKER_START_BOUND = 10000ms;
constexpr auto CLIENT_BOUND = 60s;
// Commands of the desktop scenario played before the screenshot (it draws its whole desktop in
// far fewer, then keeps drawing windows).
constexpr uint64_t DESKTOP_COMMANDS = 400;

std::string readFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-screenshot-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// A binary PPM (P6, maxval 255) as spicy-screenshot writes it.
std::variant<oracle::RgbImage, std::string> readPpm(const std::filesystem::path& path) {
  std::string data = readFile(path);
  std::istringstream in(data);
  std::string magic;
  uint32_t width = 0, height = 0, maxval = 0;
  in >> magic >> width >> height >> maxval;
  if (!in || magic != "P6" || maxval != 255 || width == 0 || height == 0 ||
      width > oracle::MAX_IMAGE_SIDE || height > oracle::MAX_IMAGE_SIDE)
    return "not a P6 PPM of 8-bit RGB: " + path.string();
  in.get();  // the single whitespace after maxval
  const size_t offset = static_cast<size_t>(in.tellg());
  const size_t bytes = size_t{width} * height * 3;
  if (data.size() < offset + bytes)
    return "PPM " + path.string() + " is truncated";
  oracle::RgbImage image{width, height, {}};
  image.rgb.assign(data.begin() + static_cast<ptrdiff_t>(offset),
                   data.begin() + static_cast<ptrdiff_t>(offset + bytes));
  return image;
}

oracle::RgbImage loadPng(const std::filesystem::path& path) {
  auto image = oracle::readPng(path.string());
  if (auto* error = std::get_if<std::string>(&image))
    FAIL(*error);
  return std::get<oracle::RgbImage>(image);
}

uint64_t differingPixels(const oracle::RgbImage& a, const oracle::RgbImage& b) {
  auto diff = oracle::compareImages(a, b);
  if (auto* error = std::get_if<std::string>(&diff))
    FAIL(*error);
  return std::get<oracle::ImageDifference>(diff).differingPixels;
}

// Runs spicy-screenshot with `args` until it exits (bounded), keeping the broker's notification
// queue and stderr drained meanwhile. Returns its wait status; its stderr goes to `errPath`.
int runSpicyScreenshot(const std::vector<std::string>& args, const std::filesystem::path& errPath,
                       test::BrokerProcess& broker) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int err = ::open(errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (err < 0 || ::dup2(err, 1) < 0 || ::dup2(err, 2) < 0)
      ::_exit(126);
    std::vector<std::string> store{"spicy-screenshot"};
    store.insert(store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : store)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  base::Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  REQUIRE(pidfd);
  const auto deadline = Clock::now() + CLIENT_BOUND;
  for (;;) {
    pollfd p{pidfd.get(), POLLIN, 0};
    int n = ::poll(&p, 1, 50);  // the timeout only paces the draining
    broker.drain();
    if (n > 0)
      break;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      FAIL("spicy-screenshot did not finish within " << CLIENT_BOUND.count() << " s:\n"
                                                     << readFile(errPath));
    }
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

// How spicebox is started and how the client logs in.
struct Setup {
  std::vector<std::string> guestArgs;  // after --guest-args (--replay FILE replaces the scenario)
  std::string builtinGuest = "desktop";
  uint64_t until = 0;
  std::string password;        // empty: --disable-ticketing
  std::string clientPassword;  // what spicy-screenshot gives
  bool overUnix = false;       // --unix instead of --listen
  std::string imageCompression = "auto_lz";
};

struct Outcome {
  int clientStatus = -1;
  std::filesystem::path screenshot;  // spicy-screenshot's PPM (absent when refused)
  std::filesystem::path readBack;    // guestsim's PNG after `until` commands
  std::string clientLog;
  std::string brokerLog;
};

Outcome screenshotAfter(const Setup& setup, const TempDir& tmp) {
  const std::string prefix = (tmp.path / "guest").string();
  std::string guestArgs = "--until " + std::to_string(setup.until) + " --snapshot-at " +
                          std::to_string(setup.until) + " --snapshot-prefix " + prefix;
  for (const auto& a : setup.guestArgs)
    guestArgs += " " + a;
  std::vector<std::string> args{
      "--builtin-guest", setup.builtinGuest, "--guest-args",        guestArgs,
      "--sandbox",       "best-effort",      "--image-compression", setup.imageCompression};
  const std::string unixPath = (tmp.path / "spice.sock").string();
  if (setup.overUnix)
    args.insert(args.end(), {"--unix", unixPath});
  else
    args.insert(args.end(), {"--listen", "127.0.0.1:0"});
  if (setup.password.empty()) {
    args.push_back("--disable-ticketing");
  } else {
    const auto file = tmp.path / "password";
    std::ofstream(file) << setup.password << "\n";
    ::chmod(file.c_str(), 0600);
    args.insert(args.end(), {"--password-file", file.string()});
  }
  test::BrokerProcess broker(args);
  auto ready = broker.waitForReady(BROKER_START_BOUND);
  INFO("broker stderr:\n" << broker.stderrText());
  REQUIRE(ready);
  // The netproxy serves the client from inside its seccomp sandbox (full, or partial where the
  // host refuses a namespace: seccomp and rlimits are in force either way).
  static const std::regex confined(R"(netproxy ready \(pid \d+, sandbox (full|partial))");
  REQUIRE(std::regex_search(ready->raw, confined));

  // The read-back is taken once the renderer has drawn every command up to `until`; the display
  // segment holds that picture from then on (guestsim submits nothing more).
  const std::string reached = "--until " + std::to_string(setup.until) + " reached";
  REQUIRE(broker.waitForLog(reached, GUEST_BOUND));

  std::vector<std::string> clientArgs;
  if (setup.overUnix) {
    clientArgs = {"--uri", "spice+unix://" + unixPath};
  } else {
    static const std::regex listening(
        R"(listening for SPICE clients on 127\.0\.0\.1:(\d+) \(tcp\))");
    std::smatch m;
    const std::string& log = broker.stderrText();
    REQUIRE(std::regex_search(log, m, listening));
    clientArgs = {"-h", "127.0.0.1", "-p", m[1].str()};
  }
  if (!setup.clientPassword.empty())
    clientArgs.insert(clientArgs.end(), {"-w", setup.clientPassword});
  Outcome out;
  out.screenshot = tmp.path / "client.ppm";
  out.readBack = prefix + "-" + std::to_string(setup.until) + ".png";
  clientArgs.insert(clientArgs.end(), {"-o", out.screenshot.string()});
  const auto errPath = tmp.path / "client.log";
  out.clientStatus = runSpicyScreenshot(clientArgs, errPath, broker);
  out.clientLog = readFile(errPath);
  broker.drain();
  out.brokerLog = broker.stderrText();
  return out;
}

void requireSamePicture(const Outcome& out) {
  INFO("spicy-screenshot output:\n" << out.clientLog << "\nbroker stderr:\n" << out.brokerLog);
  REQUIRE(WIFEXITED(out.clientStatus));
  REQUIRE(WEXITSTATUS(out.clientStatus) == 0);
  auto shot = readPpm(out.screenshot);
  if (auto* error = std::get_if<std::string>(&shot))
    FAIL(*error);
  const auto& client = std::get<oracle::RgbImage>(shot);
  const auto segment = loadPng(out.readBack);
  REQUIRE(client.width == segment.width);
  REQUIRE(client.height == segment.height);
  CHECK(differingPixels(client, segment) == 0);
}

bool haveSpicyScreenshot() {
  for (const char* dir : {"/usr/bin", "/usr/local/bin"})
    if (::access((std::string(dir) + "/spicy-screenshot").c_str(), X_OK) == 0)
      return true;
  return false;
}

}  // namespace

TEST_CASE("spicy-screenshot: the desktop, ticketing disabled, over TCP, equals the segment") {
  REQUIRE(haveSpicyScreenshot());  // package spice-client-gtk (packaging/debian-packages.txt)
  TempDir tmp;
  Setup setup;
  setup.until = DESKTOP_COMMANDS;
  requireSamePicture(screenshotAfter(setup, tmp));
}

TEST_CASE("spicy-screenshot: each image compression decodes to the same picture") {
  // off: raw bitmaps; lz: SPICE's LZ_RGB (spicebox's encoder); lz4: liblz4. spice-gtk decodes
  // them with its own decoders.
  for (const char* mode : {"off", "lz", "lz4"}) {
    DYNAMIC_SECTION("--image-compression " << mode) {
      TempDir tmp;
      Setup setup;
      setup.until = DESKTOP_COMMANDS;
      setup.imageCompression = mode;
      requireSamePicture(screenshotAfter(setup, tmp));
    }
  }
}

TEST_CASE("spicy-screenshot: with the right password, over the unix socket") {
  TempDir tmp;
  Setup setup;
  setup.until = DESKTOP_COMMANDS;
  setup.password = "correct horse battery staple";
  setup.clientPassword = setup.password;
  setup.overUnix = true;
  requireSamePicture(screenshotAfter(setup, tmp));
}

TEST_CASE("spicy-screenshot: a wrong password is refused, with a log line") {
  TempDir tmp;
  Setup setup;
  setup.until = DESKTOP_COMMANDS;
  setup.password = "correct horse battery staple";
  setup.clientPassword = "Tr0ub4dor&3";
  const Outcome out = screenshotAfter(setup, tmp);
  INFO("spicy-screenshot output:\n" << out.clientLog << "\nbroker stderr:\n" << out.brokerLog);
  CHECK(!(WIFEXITED(out.clientStatus) && WEXITSTATUS(out.clientStatus) == 0));
  CHECK(!std::filesystem::exists(out.screenshot));
  CHECK(out.brokerLog.find("wrong password") != std::string::npos);
}

namespace {

// "primary surface after command N written to ..." of a recording's .stats.txt: the point the
// shared PNG shows.
uint64_t screenshotPoint(const std::filesystem::path& stats) {
  static const std::regex point(R"(primary surface after command (\d+))");
  std::smatch m;
  const std::string text = readFile(stats);
  if (!std::regex_search(text, m, point))
    FAIL("no \"primary surface after command N\" line in " << stats);
  return std::stoull(m[1]);
}

void recordingCase(const std::string& name) {
  const std::filesystem::path dir = SPICEBOX_RECORDINGS_DIR;
  if (!test::recordingsPresent(dir))
    return;
  TempDir tmp;
  Setup setup;
  setup.until = screenshotPoint(dir / (name + ".stats.txt"));
  setup.guestArgs = {"--replay", (dir / (name + ".rec.xz")).string()};
  const Outcome out = screenshotAfter(setup, tmp);
  requireSamePicture(out);
  // What the real spice-gtk client saw from the real spice-server at that point.
  const auto shot = std::get<oracle::RgbImage>(readPpm(out.screenshot));
  CHECK(differingPixels(shot, loadPng(dir / (name + ".png"))) == 0);
}

}  // namespace

TEST_CASE("spicy-screenshot: console recording at its screenshot point equals the real client's") {
  recordingCase("console");
}

TEST_CASE("spicy-screenshot: windows recording at its screenshot point equals the real client's") {
  recordingCase("windows");
}
