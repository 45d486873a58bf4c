// Runs in: tests. Input: spicebox-view and spicebox-latency run as processes against the fake
// server of client/fake-spice-server.h; their PNGs, JSON and summary lines are compared with
// what the server drew and sent (never with output the tools produced before).
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "client/fake-spice-server.h"
#include "tests/oracle/png-image.h"

using namespace spicebox::client::testing;

extern char** environ;

namespace {

struct Run {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `argv` with stdout and stderr in files of `dir`; waits for it (each tool is given a
// --timeout, so the wait is bounded).
Run runTool(const std::string& dir, std::vector<std::string> argv) {
  std::string outPath = dir + "/stdout", errPath = dir + "/stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, outPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&actions, 2, errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  Run r;
  REQUIRE(::waitpid(pid, &r.status, 0) == pid);
  r.out = slurp(outPath);
  r.err = slurp(errPath);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  return r;
}

// A temporary directory, removed with what the tools wrote into it.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/client-tool-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// The server's picture as the PNG the viewer writes it: 8-bit RGB.
std::vector<uint8_t> rgbOf(const std::vector<uint32_t>& pixels) {
  std::vector<uint8_t> out;
  for (uint32_t p : pixels) {
    out.push_back(static_cast<uint8_t>(p >> 16));
    out.push_back(static_cast<uint8_t>(p >> 8));
    out.push_back(static_cast<uint8_t>(p));
  }
  return out;
}

}  // namespace

TEST_CASE("spicebox-view --headless: frames and final picture as the server drew them", "[tools]") {
  struct Case {
    const char* flag;
    const char* mode;
  };
  Case c = GENERATE(Case{"", "shm"}, Case{"--tear-free", "shm-tear-free"},
                    Case{"--shm-reject", "normal"}, Case{"--no-shm", "normal"});
  FakeServerOptions options;
  FakeSpiceServer server(options);
  TempDir temp;
  const std::string& dir = temp.path;
  std::vector<std::string> argv{SPICEBOX_VIEW_PATH, "--headless", "--dump",           dir + "/dump",
                                "--dump-frames",    "3",          "--exit-when-idle", "300",
                                "--timeout",        "20"};
  if (*c.flag)
    argv.push_back(c.flag);
  argv.push_back(server.uri());
  Run r = runTool(dir, argv);
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK_THAT(r.out, Catch::StartsWith(std::string("spicebox-view: mode ") + c.mode + ","));
  const FakeServerResult& s = server.wait();
  CHECK(s.error.empty());
  CHECK(s.clientClosed);
  auto final = spicebox::oracle::readPng(dir + "/dump/final.png");
  REQUIRE(std::holds_alternative<spicebox::oracle::RgbImage>(final));
  auto& image = std::get<spicebox::oracle::RgbImage>(final);
  CHECK(image.width == options.width);
  CHECK(image.height == options.height);
  CHECK(image.rgb == rgbOf(s.picture));
  // Shared memory: one frame per SHM_DAMAGE. The ordinary display: one per batch of messages
  // that changed the picture, so as many as the client's reads happened to split them into.
  auto at = r.out.find("frames ");
  REQUIRE(at != std::string::npos);
  unsigned long frames = std::stoul(r.out.substr(at + 7));
  if (std::string(c.mode) != "normal")
    CHECK(frames == options.frames + 1);
  CHECK(frames >= 1);
  for (unsigned long i = 1; i <= 4; ++i) {
    std::string frame = dir + "/dump/frame-00000" + std::to_string(i) + ".png";
    CHECK((::access(frame.c_str(), R_OK) == 0) == (i <= std::min(frames, 3ul)));
  }
}

TEST_CASE("spicebox-view: errors are reported with a non-zero exit", "[tools]") {
  TempDir temp;
  const std::string& dir = temp.path;
  SECTION("nothing-listening") {
    Run r = runTool(dir, {SPICEBOX_VIEW_PATH, "--headless", "--timeout", "5",
                          "spice+unix://" + dir + "/none.sock"});
    CHECK(WEXITSTATUS(r.status) != 0);
    CHECK_THAT(r.err, Catch::Contains("none.sock"));
  }
  SECTION("bad-uri") {
    Run r = runTool(dir, {SPICEBOX_VIEW_PATH, "--headless", "spice://127.0.0.1"});
    CHECK(WEXITSTATUS(r.status) != 0);
    CHECK_THAT(r.err, Catch::Contains("port"));
  }
  SECTION("timeout-before-the-exit-condition") {
    FakeSpiceServer server(FakeServerOptions{});
    Run r = runTool(dir, {SPICEBOX_VIEW_PATH, "--headless", "--exit-after-frames", "1000",
                          "--timeout", "1", server.uri()});
    CHECK(WEXITSTATUS(r.status) != 0);
    CHECK_THAT(r.err, Catch::Contains("--timeout"));
  }
}

TEST_CASE("spicebox-latency --mode shm-tear-free: every stamped update timed, none missed",
          "[tools]") {
  FakeServerOptions options;
  options.frames = 20;
  FakeSpiceServer server(options);
  TempDir temp;
  const std::string& dir = temp.path;
  // 21 stamped pictures: 1 of warmup, 20 recorded. Tear-free, the server writes no buffer the
  // client may still read, so the client sees every frame's own stamp.
  Run r =
      runTool(dir, {SPICEBOX_LATENCY_PATH, "--mode", "shm-tear-free", "--warmup", "1", "--updates",
                    "20", "--timeout", "20", "--json", dir + "/latency.json", server.uri()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK(server.wait().error.empty());
  std::string json = slurp(dir + "/latency.json");
  CHECK_THAT(json, Catch::Contains("\"mode\": \"shm-tear-free\""));
  CHECK_THAT(json, Catch::Contains("\"updates\": 20,"));
  CHECK_THAT(json, Catch::Contains("\"missed\": 0,"));
  CHECK_THAT(r.out, Catch::Contains("20 updates (warmup 1)"));
}

TEST_CASE("spicebox-latency: shared memory asked for, none offered: an error", "[tools]") {
  FakeServerOptions options;
  options.offerShm = false;
  FakeSpiceServer server(options);
  TempDir temp;
  const std::string& dir = temp.path;
  Run r = runTool(dir, {SPICEBOX_LATENCY_PATH, "--mode", "shm", "--updates", "5", "--timeout", "20",
                        server.uri()});
  CHECK(WEXITSTATUS(r.status) != 0);
  CHECK_THAT(r.err, Catch::Contains("mode normal"));
}

TEST_CASE("spicebox-latency --mode shm and normal: updates timed, the rest counted missed",
          "[tools]") {
  const char* mode = GENERATE("shm", "normal");
  FakeServerOptions options;
  options.frames = 20;
  FakeSpiceServer server(options);
  TempDir temp;
  const std::string& dir = temp.path;
  // The fake server sends its frames as fast as it can. Ordinary display: the client reads
  // several in one batch and sees the last stamp of each batch. Shared memory without
  // tear-free: the server may already have drawn a later frame into the buffer a damage names
  // (tearing), so a later stamp can be read early. Either way, every stamp from the first one
  // seen to the last is either timed or counted missed, none both.
  Run r = runTool(dir, {SPICEBOX_LATENCY_PATH, "--mode", mode, "--duration", "1", "--timeout", "20",
                        "--json", dir + "/latency.json", server.uri()});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  std::string json = slurp(dir + "/latency.json");
  CHECK_THAT(json, Catch::Contains(std::string("\"mode\": \"") + mode + "\""));
  auto number = [&](const std::string& key) {
    auto at = json.find("\"" + key + "\": ");
    REQUIRE(at != std::string::npos);
    return std::stoull(json.substr(at + key.size() + 4));
  };
  uint64_t updates = number("updates"), missed = number("missed");
  CHECK(updates >= 1);
  CHECK(updates + missed <= options.frames + 1);
}
