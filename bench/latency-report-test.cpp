// Runs in: tests. Input: JSON texts written here, valid and hostile.
// The latency report's reading of spicebox-latency's JSON: figures found at any depth, strings
// that look like names skipped, a missing figure named in the error, broken text not crashing.
#include <catch2/catch.hpp>

#include "bench/latency-report.h"

namespace spicebox::bench {
namespace {

TEST_CASE("latency report: the figures are read from spicebox-latency's names") {
  const std::string json = R"({"mode": "shm", "uri": "spice+unix:///tmp/x.sock",
    "latency": {"p50_us": 41.5, "p90_us": 60, "p99_us": 250.25, "max_us": 1200},
    "updates": 500, "missed": 2, "updates_per_second": 199.5})";
  auto parsed = parseLatencyJson(json);
  REQUIRE(std::holds_alternative<LatencyFigures>(parsed));
  const auto& f = std::get<LatencyFigures>(parsed);
  CHECK(f.p50Us == 41.5);
  CHECK(f.p90Us == 60);
  CHECK(f.p99Us == 250.25);
  CHECK(f.maxUs == 1200);
  CHECK(f.updatesPerSecond == 199.5);
  CHECK(f.updates == 500);
  CHECK(f.missed == 2);
}

TEST_CASE("latency report: a string value is not taken for a name") {
  // "p50_us" appears as a value first; only the real pair counts.
  auto found = jsonNumbers(R"({"note": "p50_us", "x": [1, "y"], "p50_us": 7e1})");
  CHECK(found.count("note") == 0);
  CHECK(found.at("p50_us") == 70);
}

TEST_CASE("latency report: a missing figure is named, with what was found") {
  auto parsed = parseLatencyJson(R"({"p50_us": 1, "p90_us": 2, "max_us": 4, "rate": 5})");
  REQUIRE(std::holds_alternative<std::string>(parsed));
  const auto& error = std::get<std::string>(parsed);
  CHECK(error.find("p99") != std::string::npos);
  CHECK(error.find("max_us") != std::string::npos);
}

TEST_CASE("latency report: truncated and binary text ends the scan without a crash") {
  for (const std::string& text : {std::string(R"({"p50_us": )"), std::string(R"({"p50_us)"),
                                  std::string("\"\\"), std::string("\0\xff\"a\":-", 8)}) {
    auto parsed = parseLatencyJson(text);
    CHECK(std::holds_alternative<std::string>(parsed));
  }
}

TEST_CASE("latency report: the table has one line per row and says why a row has no figures") {
  LatencyFigures f;
  f.p50Us = 12.5;
  f.p99Us = 99.0;
  f.maxUs = 300.0;
  f.updatesPerSecond = 200.0;
  f.missed = 0;
  const std::string table = formatTable({{"small-fills", "spicebox", "unix", "shm", f, ""},
                                         {"fullhd", "libspice-server", "tcp", "normal",
                                          std::nullopt, "FAILED: spicebox-latency exited 1"}});
  CHECK(std::count(table.begin(), table.end(), '\n') == 3);
  CHECK(table.find("12.5") != std::string::npos);
  CHECK(table.find("FAILED: spicebox-latency exited 1") != std::string::npos);
}

}  // namespace
}  // namespace spicebox::bench
