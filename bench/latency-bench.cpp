// Runs in: a developer machine, as
//   spicebox-bench-latency [--workloads small-fills,fullhd,fullhd-bands,recording] [--bin-dir DIR]
//                          [--recordings DIR] [--image-compression off|lz|lz4] [--quick]
// Input: the command line, and what the programs it starts print (their JSON reports are parsed
// by bench/latency-report.h, their logs only searched).
//
// Issue 6, point 5: doorbell-to-pixels latency, p50/p99/max and updates per second, on this
// machine. First the machine's floor (bench/machine-floor.h): five process hand-offs with no work,
// and LZ4 on the full-HD pictures. For each workload (guestsim's small-fills, fullhd and
// fullhd-bands scenarios, and the shared windows recording when ../shared/recordings has it) it
// starts
//   spicebox-broker --unix SOCK --listen 127.0.0.1:0 --disable-ticketing
//                   --builtin-guest W --guest-args "--stamps --rate R"
// and runs spicebox-latency against it in the modes shm, shm-tear-free and normal on the unix
// socket and normal on TCP; then spicebox-bench-spice-serve (libspice-server fed the same stream
// with the same stamps) and spicebox-latency normal on its TCP port. One table at the end, with
// the targets: spicebox-shm p50 < 100 us and p99 < 1 ms on small fills, and libspice-server's
// full-HD p50 at least 10x spicebox-shm's. Both servers send images the same way
// (--image-compression, default lz4: spicebox-latency asks for LZ4 with PREFERRED_COMPRESSION,
// which libspice-server obeys and spicebox's netproxy does not, so only lz4 compares like with
// like). The programs are taken from --bin-dir (default: this
// program's own directory). Exit status: 0 when every run gave figures (a skipped recording
// included), 1 when a run failed, 2 on usage errors. Figures mean something only from an
// optimised build (make bench).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "base/log.h"
#include "bench/build-note.h"
#include "bench/child-process.h"
#include "bench/latency-report.h"
#include "bench/machine-floor.h"

#ifndef SPICEBOX_RECORDINGS_DIR
#define SPICEBOX_RECORDINGS_DIR "../shared/recordings"
#endif

namespace {

namespace fs = std::filesystem;
using namespace spicebox::bench;

// Issue 6's targets.
constexpr double SHM_P50_TARGET_US = 100;
constexpr double SHM_P99_TARGET_US = 1000;
constexpr double FULLHD_RATIO_TARGET = 10;

// Bounds that turn a hang into a failed run; each wait ends on an event well before.
constexpr std::chrono::seconds START_BOUND{60};
constexpr std::chrono::milliseconds STOP_GRACE{5000};

struct Workload {
  std::string name;       // in the table
  std::string scenario;   // guestsim scenario, or empty for a recording
  std::string recording;  // path, for the recording workload
  double rate = 0;        // updates per second, both servers
  uint64_t updates = 0, warmup = 0;
};

struct Settings {
  fs::path binDir;
  fs::path recordings;
  fs::path work;
  std::string imageCompression = "lz4";
  double scale = 1;  // --quick: fewer updates
};

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The last lines of a child's output, for a failure message.
std::string tail(const std::string& text, size_t lines = 12) {
  size_t start = text.size();
  for (size_t n = 0; n <= lines && start > 0; ++n) {
    const size_t newline = text.rfind('\n', start - 1);
    if (newline == std::string::npos) {
      start = 0;
      break;
    }
    start = newline;
  }
  return text.substr(start == 0 ? 0 : start + 1);
}

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv)
    s += (s.empty() ? "" : " ") + (a.find(' ') != std::string::npos ? "\"" + a + "\"" : a);
  return s;
}

std::variant<std::unique_ptr<ChildProcess>, std::string> startChild(
    const std::string& name, const std::vector<std::string>& argv) {
  fmt::print("  $ {}\n", joined(argv));
  std::fflush(stdout);
  return ChildProcess::spawn(name, argv);
}

// One spicebox-latency run against `uri`; `server` keeps being drained meanwhile and must stay
// up. Fills the row's figures, or its note with why not.
void measure(const Settings& s, const Workload& w, ChildProcess& server, const std::string& uri,
             const std::string& mode, TableRow& row) {
  const fs::path json =
      s.work / (w.name + "-" + row.server + "-" + row.transport + "-" + mode + ".json");
  std::error_code ec;
  fs::remove(json, ec);
  const uint64_t updates = std::max<uint64_t>(20, static_cast<uint64_t>(w.updates * s.scale));
  const uint64_t warmup = std::max<uint64_t>(5, static_cast<uint64_t>(w.warmup * s.scale));
  auto started =
      startChild("spicebox-latency", {(s.binDir / "spicebox-latency").string(), "--mode", mode,
                                      "--updates", std::to_string(updates), "--warmup",
                                      std::to_string(warmup), "--json", json.string(), uri});
  if (auto* error = std::get_if<std::string>(&started)) {
    row.note = "FAILED: " + *error;
    return;
  }
  ChildProcess& client = *std::get<std::unique_ptr<ChildProcess>>(started);
  // Expected duration at the workload's rate, three times over, plus the connection.
  const auto bound = std::chrono::seconds(30) +
                     std::chrono::seconds(static_cast<int64_t>(3 * (updates + warmup) / w.rate));
  Pump pump({&server, &client});
  if (!pump.untilExit(client, Clock::now() + bound)) {
    pump.stop(client, STOP_GRACE);
    row.note = fmt::format("FAILED: spicebox-latency gave no result within {} s", bound.count());
    spdlog::error("{} {}: {}\n{}", w.name, mode, row.note, tail(client.err()));
    return;
  }
  if (client.describeExit() != "exited with status 0") {
    row.note = "FAILED: spicebox-latency " + client.describeExit();
    spdlog::error("{} {} via {}: {}; its output:\n{}{}", w.name, mode, row.transport, row.note,
                  tail(client.out()), tail(client.err()));
    return;
  }
  std::ofstream(s.work / (json.stem().string() + ".log")) << client.out() << client.err();
  auto parsed = parseLatencyJson(readFile(json));
  if (auto* error = std::get_if<std::string>(&parsed)) {
    row.note = "FAILED: " + json.string() + ": " + *error;
    spdlog::error("{}", row.note);
    return;
  }
  row.figures = std::get<LatencyFigures>(parsed);
  if (!server.running())
    row.note = "(server " + server.describeExit() + " during the run)";
}

// Waits until `child` printed a complete line containing `prefix` on stderr (or stdout) and
// returns the rest of that line; nullopt when it exited or the bound passed.
std::optional<std::string> awaitLine(ChildProcess& child, const std::string& prefix,
                                     bool onStderr) {
  std::optional<std::string> found;
  Pump pump({&child});
  pump.until(
      [&] {
        found = findAfter(onStderr ? child.err() : child.out(), prefix);
        return found || !child.running();
      },
      Clock::now() + START_BOUND);
  return found;
}

std::vector<std::string> guestArgs(const Workload& w) {
  std::string args = "--stamps --rate " + fmt::format("{:g}", w.rate);
  if (!w.recording.empty())
    args = "--replay " + w.recording + " " + args;
  return {"--guest-args", args};
}

void failAll(std::vector<TableRow>& rows, size_t from, const std::string& why) {
  for (size_t i = from; i < rows.size(); ++i)
    if (!rows[i].figures && rows[i].note.empty())
      rows[i].note = why;
}

// The spicebox rows of one workload: a broker with the built-in guest playing it.
void runSpicebox(const Settings& s, const Workload& w, std::vector<TableRow>& rows) {
  const size_t first = rows.size();
  for (const auto& [via, mode] : std::vector<std::pair<std::string, std::string>>{
           {"unix", "shm"}, {"unix", "shm-tear-free"}, {"unix", "normal"}, {"tcp", "normal"}})
    rows.push_back({w.name, "spicebox", via, mode, std::nullopt, ""});

  const fs::path sock = s.work / (w.name + ".sock");
  std::vector<std::string> argv{(s.binDir / "spicebox-broker").string(),
                                "--unix",
                                sock.string(),
                                "--listen",
                                "127.0.0.1:0",
                                "--disable-ticketing",
                                "--image-compression",
                                s.imageCompression,
                                "--builtin-guest",
                                w.scenario.empty() ? "desktop" : w.scenario};
  for (auto& a : guestArgs(w))
    argv.push_back(a);
  auto started = startChild("spicebox-broker", argv);
  if (auto* error = std::get_if<std::string>(&started)) {
    failAll(rows, first, "FAILED: " + *error);
    return;
  }
  ChildProcess& broker = *std::get<std::unique_ptr<ChildProcess>>(started);
  const auto tcp = awaitLine(broker, "listening for SPICE clients on 127.0.0.1:", true);
  const auto unix = awaitLine(broker, "listening for SPICE clients on " + sock.string(), true);
  if (!tcp || !unix) {
    failAll(rows, first, "FAILED: the broker did not listen (" + broker.describeExit() + ")");
    spdlog::error("spicebox-broker for {}: no listening line; its log:\n{}", w.name,
                  tail(broker.err(), 30));
    return;
  }
  const std::string port = tcp->substr(0, tcp->find(' '));
  for (size_t i = first; i < rows.size(); ++i) {
    if (!broker.running()) {
      failAll(rows, i, "FAILED: the broker " + broker.describeExit());
      spdlog::error("spicebox-broker for {} stopped; its log:\n{}", w.name, tail(broker.err(), 30));
      break;
    }
    const std::string uri =
        rows[i].transport == "unix" ? "spice+unix://" + sock.string() : "spice://127.0.0.1:" + port;
    measure(s, w, broker, uri, rows[i].clientMode, rows[i]);
  }
  Pump({&broker}).stop(broker, STOP_GRACE);
  std::ofstream(s.work / (w.name + "-broker.log")) << broker.err();
}

// The libspice-server row of one workload.
void runSpiceServer(const Settings& s, const Workload& w, std::vector<TableRow>& rows) {
  rows.push_back({w.name, "libspice-server", "tcp", "normal", std::nullopt, ""});
  TableRow& row = rows.back();
  std::vector<std::string> argv{(s.binDir / "spicebox-bench-spice-serve").string(),
                                "--port",
                                "0",
                                "--rate",
                                fmt::format("{:g}", w.rate),
                                "--image-compression",
                                s.imageCompression};
  if (w.recording.empty())
    argv.insert(argv.end(), {"--scenario", w.scenario});
  else
    argv.insert(argv.end(), {"--replay", w.recording});
  auto started = startChild("spice-serve", argv);
  if (auto* error = std::get_if<std::string>(&started)) {
    row.note = "FAILED: " + *error;
    return;
  }
  ChildProcess& server = *std::get<std::unique_ptr<ChildProcess>>(started);
  const auto port = awaitLine(server, "listening on 127.0.0.1:", false);
  if (!port) {
    row.note = "FAILED: spicebox-bench-spice-serve did not listen (" + server.describeExit() + ")";
    spdlog::error("{}; its log:\n{}", row.note, tail(server.err(), 30));
    return;
  }
  measure(s, w, server, "spice://127.0.0.1:" + *port, "normal", row);
  Pump({&server}).stop(server, STOP_GRACE);
  std::ofstream(s.work / (w.name + "-spice-serve.log")) << server.err();
}

const LatencyFigures* figuresOf(const std::vector<TableRow>& rows, const std::string& workload,
                                const std::string& server, const std::string& mode) {
  for (const TableRow& r : rows)
    if (r.workload == workload && r.server == server && r.clientMode == mode && r.figures)
      return &*r.figures;
  return nullptr;
}

void printVerdicts(const std::vector<TableRow>& rows) {
  if (const auto* shm = figuresOf(rows, "small-fills", "spicebox", "shm")) {
    fmt::print(
        "small fills, spicebox shm: p50 {:.1f} us (target < {:.0f}: {}), p99 {:.1f} us "
        "(target < {:.0f}: {})\n",
        shm->p50Us, SHM_P50_TARGET_US, shm->p50Us < SHM_P50_TARGET_US ? "met" : "NOT met",
        shm->p99Us, SHM_P99_TARGET_US, shm->p99Us < SHM_P99_TARGET_US ? "met" : "NOT met");
  }
  for (const char* workload : {"fullhd", "fullhd-bands"}) {
    const auto* shm = figuresOf(rows, workload, "spicebox", "shm");
    const auto* spice = figuresOf(rows, workload, "libspice-server", "normal");
    if (shm && spice && shm->p50Us > 0) {
      const double ratio = spice->p50Us / shm->p50Us;
      fmt::print(
          "{}: libspice-server p50 / spicebox-shm p50 = {:.1f} / {:.1f} = {:.1f}x "
          "(target >= {:.0f}x: {})\n",
          workload, spice->p50Us, shm->p50Us, ratio, FULLHD_RATIO_TARGET,
          ratio >= FULLHD_RATIO_TARGET ? "met" : "NOT met");
    } else if (std::any_of(rows.begin(), rows.end(),
                           [&](const TableRow& r) { return r.workload == workload; })) {
      fmt::print("{}: no ratio (a run is missing)\n", workload);
    }
  }
}

// What the table is measured against, on this machine and in this run: the cost of spicebox's
// five process hand-offs with no work, and how well the full-HD pictures compress.
void printMachineFloor(const std::vector<std::string>& names) {
  constexpr unsigned HAND_OFFS = 5;  // VMM -> broker -> renderer -> broker -> netproxy -> client
  auto floor = measureRelayFloor(HAND_OFFS, 1000, std::chrono::microseconds(5000));
  if (const auto* f = std::get_if<RelayFloor>(&floor))
    fmt::print(
        "machine floor: a message through {} process hand-offs (as from a doorbell to a "
        "client) with no work: p50 {:.1f} us, p99 {:.1f} us (1000 rounds, 200/s)\n",
        f->handOffs, f->p50Us, f->p99Us);
  else
    fmt::print("machine floor: not measured: {}\n", std::get<std::string>(floor));
  for (const std::string& n : names) {
    if (n != "fullhd" && n != "fullhd-bands")
      continue;
    auto codec = lz4OnFirstFrame(n, 5);
    if (const auto* c = std::get_if<CodecFigures>(&codec))
      fmt::print("{} picture: LZ4 (liblz4, acceleration 1) ratio {:.2f}, {:.0f} MB/s on one core\n",
                 n, c->ratio, c->megabytesPerS);
    else
      fmt::print("{} picture: not measured: {}\n", n, std::get<std::string>(codec));
  }
  std::fflush(stdout);
}

std::optional<fs::path> findRecording(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("windows", 0) == 0 && name.size() > 3 &&
        name.compare(name.size() - 3, 3, ".xz") == 0)
      found.push_back(entry.path());
  }
  if (found.empty())
    return std::nullopt;
  std::sort(found.begin(), found.end());
  return found.front();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Doorbell-to-pixels latency of spicebox (shared memory, unix, TCP) and of "
      "libspice-server on the same streams (issue 6)"};
  Settings s;
  std::vector<std::string> names{"small-fills", "fullhd", "fullhd-bands", "recording"};
  std::string binDir, recordings = SPICEBOX_RECORDINGS_DIR, logLevel;
  bool quick = false, keep = false;
  app.add_option("--workloads", names, "Which workloads, in order")
      ->delimiter(',')
      ->check(CLI::IsMember({"small-fills", "fullhd", "fullhd-bands", "recording"}))
      ->capture_default_str();
  app.add_option("--bin-dir", binDir,
                 "Where spicebox-broker, spicebox-latency and spicebox-bench-spice-serve are "
                 "(default: this program's directory)");
  app.add_option("--recordings", recordings, "Directory of the shared recordings (windows*.xz)")
      ->capture_default_str();
  app.add_option("--image-compression", s.imageCompression,
                 "How both servers send images in normal mode: off, lz or lz4")
      ->check(CLI::IsMember({"off", "lz", "lz4"}))
      ->capture_default_str();
  app.add_flag("--quick", quick, "A fifth of the updates (a smoke run; figures are noisier)");
  app.add_flag("--keep", keep, "Keep the work directory (JSON reports, server logs)");
  app.add_option("--log-level", logLevel, "trace, debug, info, warn or error");
  CLI11_PARSE(app, argc, argv);
  spicebox::base::initLogging("bench-latency", 2, logLevel);
  printBuildNote();
  if (quick)
    s.scale = 0.2;
  std::error_code ec;
  s.binDir =
      binDir.empty() ? fs::read_symlink("/proc/self/exe", ec).parent_path() : fs::path(binDir);
  s.recordings = recordings;
  for (const char* program :
       {"spicebox-broker", "spicebox-renderer", "spicebox-netproxy", "spicebox-guestsim",
        "spicebox-latency", "spicebox-bench-spice-serve"}) {
    if (::access((s.binDir / program).c_str(), X_OK) != 0) {
      spdlog::error(
          "{} is missing from {}: build the target spicebox-bench-latency-programs "
          "(make bench builds it) or name the directory with --bin-dir",
          program, s.binDir.string());
      return 1;
    }
  }
  char tmpl[] = "/tmp/spicebox-latency-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    spdlog::error("cannot make a work directory in /tmp: {}", std::strerror(errno));
    return 1;
  }
  s.work = tmpl;

  // Rates: the scenarios' own defaults (small-fills 200/s, fullhd 30/s); the recording at the
  // small-fills rate, one command per update. Updates chosen so a full run takes ~2.5 minutes.
  std::vector<Workload> workloads;
  std::vector<TableRow> rows;
  for (const auto& n : names) {
    if (n == "small-fills")
      workloads.push_back({n, "small-fills", "", 200, 1000, 100});
    else if (n == "fullhd" || n == "fullhd-bands")
      workloads.push_back({n, n, "", 30, 240, 30});
    else if (auto rec = findRecording(s.recordings))
      workloads.push_back({"windows.rec", "", rec->string(), 200, 1000, 100});
    else {
      fmt::print(
          "SKIPPED: recording workload: no windows*.xz in {} (the shared recordings sit "
          "beside the checkout, in ../shared/recordings; --recordings DIR)\n",
          s.recordings.string());
      rows.push_back({"recording", "-", "-", "-", std::nullopt, "SKIPPED: no recording"});
    }
  }
  printMachineFloor(names);
  for (const Workload& w : workloads) {
    fmt::print("== {} at {:g} updates/s, {} updates after {} warm-up\n", w.name, w.rate,
               static_cast<uint64_t>(w.updates * s.scale),
               static_cast<uint64_t>(w.warmup * s.scale));
    std::fflush(stdout);
    runSpicebox(s, w, rows);
    runSpiceServer(s, w, rows);
  }

  fmt::print(
      "\ndoorbell-to-pixels latency (stamp written by the guest right before the doorbell "
      "-> the client has the pixels), microseconds\n{}",
      formatTable(rows));
  printVerdicts(rows);
  bool failed = false;
  for (const TableRow& r : rows)
    failed = failed || r.note.rfind("FAILED", 0) == 0;
  if (keep || failed)
    fmt::print("work directory (JSON reports, server logs): {}\n", s.work.string());
  else
    fs::remove_all(s.work, ec);
  return failed ? 1 : 0;
}
