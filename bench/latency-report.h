// Runs in: spicebox-bench-latency and bench-tests (developer machine). Input: the JSON file
// spicebox-latency writes (--json FILE): untrusted text, scanned for "name": number pairs only;
// anything else in it is skipped, a missing figure is an error naming what was found.
//
// The figures of one latency run and the table spicebox-bench-latency prints.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace spicebox::bench {

// One spicebox-latency run, microseconds.
struct LatencyFigures {
  double p50Us = 0, p90Us = 0, p99Us = 0, maxUs = 0;
  double updatesPerSecond = 0;
  std::optional<double> updates, missed;  // when the file names them
};

// Every "name": number pair of a JSON text, at any depth (later ones win). Strings, arrays,
// true/false/null are skipped; the scan stops at the first byte that is not JSON.
std::map<std::string, double> jsonNumbers(const std::string& text);

// The figures spicebox-latency reported. It names them p50_us, p90_us, p99_us, max_us,
// updates_per_second (other spellings accepted: p50, p50Us, updates_per_s, ...); an error names
// the missing figure and lists the names found.
std::variant<LatencyFigures, std::string> parseLatencyJson(const std::string& text);

struct TableRow {
  std::string workload, server, transport, clientMode;
  std::optional<LatencyFigures> figures;  // nullopt: the run failed or was skipped
  std::string note;                       // why it failed or was skipped
};

// The table, one line per row, aligned; figures in microseconds with one decimal.
std::string formatTable(const std::vector<TableRow>& rows);

}  // namespace spicebox::bench
