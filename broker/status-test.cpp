// Runs in: tests. The broker's status socket (broker/status.h) against its real reader,
// spicebox-ctl's (tools/ctl/status-text.h), on a real socket and loop: one document per
// connection, JSON that survives hostile bytes in a log line, and a reader that never reads.
#include "broker/status.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "tools/ctl/status-text.h"

namespace spicebox::broker {
namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-status-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

StatusReport sampleReport() {
  StatusReport r;
  r.pid = 42;
  r.uptimeSeconds = 12.5;
  r.children = {{"renderer", "ready", 43, 2, "full", "killed by SIGKILL"},
                {"netproxy", "waiting-restart", -1, 1, "", "exited with status 1"}};
  r.vmmLinked = true;
  r.vmm = "vmm linked (ram 64 MiB, vram 64 MiB, 10 commands, 9 released)";
  r.displayWidth = 1024;
  r.displayHeight = 768;
  r.displaySegment = 3;
  r.sessions = 3;
  r.connections = 9;
  r.shm = 1;
  r.tearFree = 1;
  r.commandsRendered = 1000;
  r.commandsQuarantined = 2;
  r.commandsReleased = 1002;
  r.damageRects = 77;
  r.lastError = "2026-12-07 10:00:00 error: renderer died";
  return r;
}

TEST_CASE("status: the JSON names each child with its restarts, and every figure") {
  const auto doc = nlohmann::json::parse(toJson(sampleReport()));
  REQUIRE(doc["children"].size() == 2);
  CHECK(doc["children"][0]["name"] == "renderer");
  CHECK(doc["children"][0]["restarts"] == 2);
  CHECK(doc["children"][0]["sandbox"] == "full");
  CHECK(doc["children"][1]["restarts"] == 1);
  CHECK(doc["children"][1]["last_exit"] == "exited with status 1");
  CHECK(doc["clients"]["shared_memory"] == 1);
  CHECK(doc["clients"]["normal"] == 2);  // 3 sessions, 1 of them in shared memory
  CHECK(doc["commands"]["rendered"] == 1000);
  CHECK(doc["commands"]["quarantined"] == 2);
  CHECK(doc["commands"]["released"] == 1002);
  CHECK(doc["damage_sent"]["rectangles"] == 77);
  CHECK(doc["rendering"]["stopped"] == false);
  CHECK(doc["last_error"] == "2026-12-07 10:00:00 error: renderer died");
}

TEST_CASE("status: a log line with bytes that are not UTF-8 still makes valid JSON") {
  StatusReport r = sampleReport();
  r.lastError = std::string("client \xff\xfe\x80 sent garbage\x01");
  const auto doc = nlohmann::json::parse(toJson(r), nullptr, false);
  REQUIRE_FALSE(doc.is_discarded());
  CHECK(doc["last_error"].get<std::string>().find("sent garbage") != std::string::npos);
}

TEST_CASE("status: spicebox-ctl's text shows children, clients, commands and the last error") {
  auto text = ctl::formatStatus(toJson(sampleReport()));
  REQUIRE(std::holds_alternative<std::string>(text));
  const std::string& t = std::get<std::string>(text);
  CHECK(t.find("renderer   ready, pid 43, sandbox full, 2 restarts (last killed by SIGKILL)") !=
        std::string::npos);
  CHECK(t.find("netproxy   waiting-restart, 1 restarts") != std::string::npos);
  CHECK(t.find("2 normal, 1 shared-memory (1 tear-free)") != std::string::npos);
  CHECK(t.find("1000 rendered, 2 quarantined, 1002 released") != std::string::npos);
  CHECK(t.find("display    1024x768 (segment 3)") != std::string::npos);
  CHECK(t.find("rendering  running") != std::string::npos);
  CHECK(t.find("last error 2026-12-07 10:00:00 error: renderer died") != std::string::npos);

  StatusReport stopped = sampleReport();
  stopped.renderingStopped = true;
  stopped.renderingNote = "5 commands quarantined within 10 s";
  auto stoppedText = ctl::formatStatus(toJson(stopped));
  REQUIRE(std::holds_alternative<std::string>(stoppedText));
  CHECK(std::get<std::string>(stoppedText)
            .find("rendering  STOPPED: 5 commands quarantined within 10 s") != std::string::npos);
}

TEST_CASE("status: spicebox-ctl refuses what is not a status document, and prints unknowns") {
  CHECK(std::holds_alternative<ctl::Failure>(ctl::formatStatus("not json")));
  CHECK(std::holds_alternative<ctl::Failure>(ctl::formatStatus("[1, 2]")));
  // Fields of the wrong type print as '?', they do not end the program.
  auto odd = ctl::formatStatus(R"({"children": [{"name": 5, "restarts": "x"}], "clients": 7})");
  REQUIRE(std::holds_alternative<std::string>(odd));
  CHECK(std::get<std::string>(odd).find("? restarts") != std::string::npos);
}

TEST_CASE("status socket: each connection gets the report of that moment, then EOF") {
  TempDir tmp;
  const std::string path = (tmp.path / "status.sock").string();
  auto made = listenUnix(UnixSocketOptions{path, 0600, "", ""});
  REQUIRE(std::holds_alternative<ListeningSocket>(made));
  uv_loop_t loop;
  uv_loop_init(&loop);
  int calls = 0;
  {
    StatusServer server(&loop, std::move(std::get<ListeningSocket>(made)), [&] {
      StatusReport r = sampleReport();
      r.commandsRendered = static_cast<uint64_t>(++calls);
      return r;
    });
    for (int round = 1; round <= 3; ++round) {
      std::variant<std::string, ctl::Failure> got;
      std::thread reader([&] { got = ctl::readStatus(path); });
      // The loop runs until the reader has its document (the server closes after writing).
      while (calls < round)
        uv_run(&loop, UV_RUN_ONCE);
      reader.join();
      REQUIRE(std::holds_alternative<std::string>(got));
      const auto doc = nlohmann::json::parse(std::get<std::string>(got));
      CHECK(doc["commands"]["rendered"] == round);
    }
    // A peer that connects and never reads does not hold the server: the next one is served.
    base::Fd idle(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(::connect(idle.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    while (calls < 4)
      uv_run(&loop, UV_RUN_ONCE);
    std::variant<std::string, ctl::Failure> got;
    std::thread reader([&] { got = ctl::readStatus(path); });
    while (calls < 5)
      uv_run(&loop, UV_RUN_ONCE);
    reader.join();
    CHECK(std::holds_alternative<std::string>(got));
  }
  // The socket file goes with the server.
  CHECK_FALSE(std::filesystem::exists(path));
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("spicebox-ctl: a socket nobody serves is reported with what to do") {
  TempDir tmp;
  auto got = ctl::readStatus((tmp.path / "none.sock").string());
  REQUIRE(std::holds_alternative<ctl::Failure>(got));
  CHECK(std::get<ctl::Failure>(got).why.find("is spicebox-broker running with --status-socket") !=
        std::string::npos);
}

}  // namespace
}  // namespace spicebox::broker
