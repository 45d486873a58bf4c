// Runs in: spicebox-bench-latency and bench-tests (developer machine). Input: see
// latency-report.h.
#include "bench/latency-report.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdlib>
#include <initializer_list>

namespace spicebox::bench {

namespace {

// A JSON string starting at text[i] == '"'; returns its content (escapes kept as they are, the
// names we look for have none) and moves i past the closing quote. nullopt when unterminated.
std::optional<std::string> readString(const std::string& text, size_t& i) {
  std::string s;
  for (++i; i < text.size(); ++i) {
    if (text[i] == '\\') {
      if (++i >= text.size())
        return std::nullopt;
      s += text[i];
      continue;
    }
    if (text[i] == '"') {
      ++i;
      return s;
    }
    s += text[i];
  }
  return std::nullopt;
}

void skipSpace(const std::string& text, size_t& i) {
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i])))
    ++i;
}

std::optional<double> pick(const std::map<std::string, double>& found,
                           std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (auto it = found.find(n); it != found.end())
      return it->second;
  return std::nullopt;
}

}  // namespace

std::map<std::string, double> jsonNumbers(const std::string& text) {
  std::map<std::string, double> found;
  size_t i = 0;
  while (i < text.size()) {
    const char ch = text[i];
    if (ch != '"') {
      ++i;
      continue;
    }
    auto s = readString(text, i);
    if (!s)
      break;
    skipSpace(text, i);
    if (i >= text.size() || text[i] != ':')
      continue;  // a string value, not a name
    ++i;
    skipSpace(text, i);
    if (i >= text.size())
      break;
    const char first = text[i];
    if (first == '-' || std::isdigit(static_cast<unsigned char>(first))) {
      // strtod stops at the number's end; the text is a std::string, so NUL-terminated.
      char* end = nullptr;
      const double v = std::strtod(text.c_str() + i, &end);
      if (end == text.c_str() + i)
        break;
      found[*s] = v;
      i = static_cast<size_t>(end - text.c_str());
    }
  }
  return found;
}

std::variant<LatencyFigures, std::string> parseLatencyJson(const std::string& text) {
  const auto found = jsonNumbers(text);
  LatencyFigures f;
  struct Need {
    const char* what;
    double* into;
    std::initializer_list<const char*> names;
  };
  const Need needs[] = {
      {"p50", &f.p50Us, {"p50_us", "p50", "p50Us", "p50_usec"}},
      {"p90", &f.p90Us, {"p90_us", "p90", "p90Us", "p90_usec"}},
      {"p99", &f.p99Us, {"p99_us", "p99", "p99Us", "p99_usec"}},
      {"max", &f.maxUs, {"max_us", "max", "maxUs", "max_usec"}},
      {"updates per second",
       &f.updatesPerSecond,
       {"updates_per_second", "updates_per_s", "updatesPerSecond", "updates_per_sec", "rate"}},
  };
  for (const Need& n : needs) {
    auto v = pick(found, n.names);
    if (!v) {
      std::string names;
      for (const auto& [k, _] : found)
        names += (names.empty() ? "" : ", ") + k;
      return fmt::format("the latency report has no {} figure (numbers found: {})", n.what,
                         names.empty() ? "none" : names);
    }
    *n.into = *v;
  }
  f.updates = pick(found, {"updates", "samples", "count"});
  f.missed = pick(found, {"missed", "updates_missed", "missed_updates"});
  return f;
}

std::string formatTable(const std::vector<TableRow>& rows) {
  std::string out =
      fmt::format("{:<14} {:<16} {:<6} {:<14} {:>9} {:>9} {:>9} {:>9} {:>7}\n", "workload",
                  "server", "via", "client", "p50 us", "p99 us", "max us", "upd/s", "missed");
  for (const TableRow& r : rows) {
    out +=
        fmt::format("{:<14} {:<16} {:<6} {:<14} ", r.workload, r.server, r.transport, r.clientMode);
    if (!r.figures) {
      out += r.note + "\n";
      continue;
    }
    const LatencyFigures& f = *r.figures;
    out += fmt::format("{:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f} {:>7}", f.p50Us, f.p99Us, f.maxUs,
                       f.updatesPerSecond,
                       f.missed ? fmt::format("{:.0f}", *f.missed) : std::string("?"));
    if (!r.note.empty())
      out += "  " + r.note;
    out += "\n";
  }
  return out;
}

}  // namespace spicebox::bench
