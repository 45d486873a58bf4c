// Runs in: tests (developer machine / CI). Input: the output of spicebox-bench-spice-serve and
// the PPM spice-gtk's spicy-screenshot writes (parsed with size checks).
// The libspice-server host of the latency benchmark works, not how fast: it starts, accepts a
// real SPICE client (spicy-screenshot) and serves the first picture, at the size of the
// scenario's primary and carrying a latency stamp the feeder wrote; it stops cleanly on SIGTERM.
// No timing is asserted.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "base/latency-stamp.h"
#include "bench/bench-stream.h"
#include "bench/child-process.h"

#ifndef SPICE_SERVE_PROGRAM
#error "bench/CMakeLists.txt defines SPICE_SERVE_PROGRAM"
#endif

namespace spicebox::bench {
namespace {

// Bounds that turn a hang into a failure; every wait ends on an event well before them.
constexpr std::chrono::seconds START_BOUND{60};
constexpr std::chrono::seconds CLIENT_BOUND{60};

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-bench-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

struct Ppm {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// A binary PPM (P6, maxval 255) as spicy-screenshot writes it.
std::variant<Ppm, std::string> readPpm(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::istringstream in(data);
  std::string magic;
  Ppm p;
  uint32_t maxval = 0;
  in >> magic >> p.width >> p.height >> maxval;
  if (!in || magic != "P6" || maxval != 255 || p.width == 0 || p.height == 0 || p.width > 8192 ||
      p.height > 8192)
    return "not a P6 PPM of 8-bit RGB: " + path.string();
  in.get();
  const size_t offset = static_cast<size_t>(in.tellg());
  const size_t bytes = size_t{p.width} * p.height * 3;
  if (data.size() < offset + bytes)
    return "PPM " + path.string() + " is truncated";
  p.rgb.assign(data.begin() + static_cast<ptrdiff_t>(offset),
               data.begin() + static_cast<ptrdiff_t>(offset + bytes));
  return p;
}

std::unique_ptr<ChildProcess> start(const std::string& name, const std::vector<std::string>& argv) {
  auto spawned = ChildProcess::spawn(name, argv);
  if (auto* error = std::get_if<std::string>(&spawned))
    FAIL(*error);
  return std::move(std::get<std::unique_ptr<ChildProcess>>(spawned));
}

// The primary's size as the scenario creates it, read from the stream (not from the server).
std::pair<uint32_t, uint32_t> primarySizeOf(const std::string& scenario) {
  auto loaded = loadScenario(scenario, 4, 1);
  REQUIRE(std::holds_alternative<Stream>(loaded));
  for (const BenchEvent& e : std::get<Stream>(loaded).events)
    if (const auto* io = std::get_if<BenchIo>(&e); io && io->kind == BenchIo::Kind::CreatePrimary)
      return {io->width, io->height};
  FAIL("the scenario " << scenario << " creates no primary");
  return {};
}

TEST_CASE("spice-serve: spicy-screenshot gets the first picture, with a stamp, over TCP") {
  REQUIRE(::access("/usr/bin/spicy-screenshot", X_OK) == 0);  // package spice-client-gtk
  TempDir tmp;
  const auto [width, height] = primarySizeOf("small-fills");

  auto server = start("spice-serve", {SPICE_SERVE_PROGRAM, "--port", "0", "--scenario",
                                      "small-fills", "--count", "64", "--rate", "50"});
  Pump serverPump({server.get()});
  std::optional<std::string> listening;
  const bool up = serverPump.until(
      [&] {
        return (listening = findAfter(server->out(), "listening on 127.0.0.1:")) ||
               !server->running();
      },
      Clock::now() + START_BOUND);
  INFO("spice-serve stderr:\n" << server->err());
  REQUIRE(up);
  REQUIRE(listening);
  const std::string port = *listening;

  const auto shot = tmp.path / "first.ppm";
  auto client = start("spicy-screenshot",
                      {"spicy-screenshot", "-h", "127.0.0.1", "-p", port, "-o", shot.string()});
  Pump both({server.get(), client.get()});
  REQUIRE(both.untilExit(*client, Clock::now() + CLIENT_BOUND));
  INFO("spicy-screenshot: " << client->describeExit() << "\n" << client->err());
  REQUIRE(WIFEXITED(*client->exitStatus()));
  REQUIRE(WEXITSTATUS(*client->exitStatus()) == 0);

  auto read = readPpm(shot);
  if (auto* error = std::get_if<std::string>(&read))
    FAIL(*error);
  const Ppm& picture = std::get<Ppm>(read);
  CHECK(picture.width == width);
  CHECK(picture.height == height);
  // The stamp at (0, 0): the feeder wrote it into guest memory, libspice-server drew and sent it.
  uint32_t pixels[stamp::STAMP_WIDTH];
  for (uint32_t i = 0; i < stamp::STAMP_WIDTH; ++i)
    pixels[i] = uint32_t{picture.rgb[i * 3]} << 16 | uint32_t{picture.rgb[i * 3 + 1]} << 8 |
                picture.rgb[i * 3 + 2];
  const auto decoded = stamp::decode(pixels);
  REQUIRE(decoded);
  CHECK(decoded->seq >= 1);
  CHECK(decoded->monotonicNs > 0);
  CHECK(decoded->monotonicNs <= stamp::monotonicNowNs());

  // A clean stop: the worker joined, the server destroyed, the loop empty.
  server->signal(SIGTERM);
  REQUIRE(serverPump.untilExit(*server, Clock::now() + START_BOUND));
  CHECK(server->describeExit() == "exited with status 0");
  CHECK(server->err().find("fed ") != std::string::npos);
}

TEST_CASE("spice-serve: an unknown scenario is refused with the list of known ones") {
  auto server =
      start("spice-serve", {SPICE_SERVE_PROGRAM, "--port", "0", "--scenario", "no-such-scenario"});
  Pump pump({server.get()});
  REQUIRE(pump.untilExit(*server, Clock::now() + START_BOUND));
  CHECK(server->describeExit() == "exited with status 1");
  INFO(server->err());
  CHECK(server->err().find("no-such-scenario") != std::string::npos);
  CHECK(server->err().find("small-fills") != std::string::npos);
  CHECK(server->out().find("listening on") == std::string::npos);
}

TEST_CASE("child-process: a line is found only once it is complete, and exits are reported") {
  auto child = start("sh", {"/bin/sh", "-c", "printf 'a: 1\\nb: 2'; exit 3"});
  Pump pump({child.get()});
  REQUIRE(pump.untilExit(*child, Clock::now() + START_BOUND));
  CHECK(findAfter(child->out(), "a: ") == "1");
  CHECK_FALSE(findAfter(child->out(), "b: "));  // no newline: not complete
  CHECK(child->describeExit() == "exited with status 3");
}

}  // namespace
}  // namespace spicebox::bench
