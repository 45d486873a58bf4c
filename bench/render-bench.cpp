// Runs in: a developer machine, as
//   spicebox-bench-render [RECORDING...] [--scenario stress --count N --seed S] [--runs N]
//                         [--verify-every K] [--only spicebox|lazy|eager] [--breakdown]
// Input: SPICE_REPLAY 1 recordings (plain or .xz; checked by guestsim's RecordReader) or the
// stress scenario. Figures are only meaningful from an optimised build (RelWithDebInfo/Release).
//
// Issue 4, point 6: commands per second of spicebox's renderer (decode from guest memory +
// rasterise, bench/render-runs.h) and of libspice-server rendering the same stream in the same
// process, lazily and eagerly; the median of --runs runs each, the runs of the three contenders
// interleaved so that a slow phase of the machine hits all of them. Also printed, as sanity
// checks and not as failures: the commands each side processed, and how many pixels differ
// between the two primaries after every K-th command (an untimed pass before the timed runs) and
// at the end. --only runs one contender (for callgrind); --breakdown times spicebox per command
// kind (docs/performance.md's profile). Exit status: 0 when every stream ran, 1 when a stream could
// not be loaded or libspice-server hung, 2 on usage errors.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "base/log.h"
#include "bench/build-note.h"
#include "bench/render-runs.h"

namespace {

using namespace spicebox::bench;

// Issue 4's target: spicebox at least this many times libspice-server's eager rate.
constexpr double EAGER_TARGET = 1.5;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The untimed check that both renderers draw the same pictures: spicebox's primary and
// libspice-server's (read with an update_area of the whole primary) after every `every`-th
// command. A sanity check, printed, not a failure.
bool verifyPictures(Stream& stream, SpiceServerRunner& spice, uint64_t every) {
  std::vector<Snapshot> ours, theirs;
  runSpicebox(stream, nullptr, Verify{every, &ours});
  if (!spice.run(stream, false, Verify{every, &theirs})) {
    spdlog::error("{}: {}", stream.name, spice.error());
    return false;
  }
  uint64_t points = 0, differing = 0, worst = 0, worstAt = 0;
  std::set<uint64_t> distinct;
  for (size_t i = 0, j = 0; i < ours.size() && j < theirs.size();) {
    if (ours[i].afterCommand != theirs[j].afterCommand) {
      ++(ours[i].afterCommand < theirs[j].afterCommand ? i : j);
      continue;
    }
    const uint64_t d = differingPixels(ours[i].picture, theirs[j].picture);
    ++points;
    differing += d;
    distinct.insert(pictureHash(theirs[j].picture));
    if (d > worst) {
      worst = d;
      worstAt = ours[i].afterCommand;
    }
    ++i;
    ++j;
  }
  fmt::print(
      "verification (untimed): primaries after every {}th command compared at {} points "
      "({} distinct pictures; spicebox had {}, libspice-server {}): {} differing pixels{}\n",
      every, points, distinct.size(), ours.size(), theirs.size(), differing,
      worst ? fmt::format(" (worst: {} after command {})", worst, worstAt) : std::string());
  return true;
}

struct Contender {
  const char* name;
  std::vector<double> seconds;
  uint64_t commands = 0, failed = 0;
  std::optional<Picture> primary;
};

// --only: one contender alone, for profiling (callgrind); no ratios then.
enum class Only { All, Spicebox, Lazy, Eager };

bool benchStream(Stream& stream, SpiceServerRunner& spice, unsigned runs, Only only, bool breakdown,
                 uint64_t verifyEvery) {
  fmt::print("== {}\n", stream.name);
  std::string types;
  for (const auto& [name, n] : stream.commandsByType)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", name, n);
  fmt::print("commands: {} ({}); eager update_areas: {}; io events replayed: {}, ignored: {}\n",
             stream.commands, types, stream.eagerUpdates, stream.ioReplayed, stream.ioIgnored);
  if (stream.notMaterialised)
    fmt::print("left out (the materialiser cannot lay them out): {} commands\n",
               stream.notMaterialised);
  fmt::print("guest-memory image: {:.1f} MiB; runs: {} (median reported)\n",
             stream.image->used() / 1048576.0, runs);

  if (verifyEvery && only == Only::All && !verifyPictures(stream, spice, verifyEvery))
    return false;
  Contender sb{"spicebox (decode + rasterise)", {}, 0, 0, {}};
  Contender lazy{"libspice-server lazy", {}, 0, 0, {}};
  Contender eager{"libspice-server eager", {}, 0, 0, {}};
  for (unsigned i = 0; i < runs; ++i) {
    if (only == Only::All || only == Only::Spicebox) {
      RunResult s = runSpicebox(stream);
      sb.seconds.push_back(s.seconds);
      sb.commands = s.commands;
      sb.failed = s.failed;
      sb.primary = std::move(s.primary);
    }
    for (auto [contender, isEager] : {std::pair{&lazy, false}, std::pair{&eager, true}}) {
      if (only != Only::All && only != (isEager ? Only::Eager : Only::Lazy))
        continue;
      auto result = spice.run(stream, isEager);
      if (!result) {
        spdlog::error("{}: {}", stream.name, spice.error());
        return false;
      }
      contender->seconds.push_back(result->seconds);
      contender->commands = result->commands;
      contender->primary = std::move(result->primary);
    }
  }
  for (const Contender* c : {&sb, &lazy, &eager}) {
    if (c->seconds.empty())
      continue;
    const double t = median(c->seconds);
    fmt::print(
        "  {:<32} {:>12.0f} commands/s  ({:.3f} s; {} commands processed{}; final primary "
        "{})\n",
        c->name, c->commands / t, t, c->commands,
        c->failed ? fmt::format(", {} not drawn", c->failed) : std::string(),
        c->primary ? fmt::format("hash {:016x}", pictureHash(*c->primary)) : "none");
  }
  if (breakdown) {
    Breakdown b;
    runSpicebox(stream, &b);
    fmt::print("  spicebox time by command kind (one extra run, each command timed):\n");
    fmt::print("    {:<22} {:>7} {:>10} {:>10} {:>10}\n", "kind", "count", "decode ms", "render ms",
               "us/command");
    for (const auto& [kind, k] : b)
      fmt::print("    {:<22} {:>7} {:>10.1f} {:>10.1f} {:>10.1f}\n", kind, k.count,
                 k.decodeSeconds * 1e3, k.renderSeconds * 1e3,
                 (k.decodeSeconds + k.renderSeconds) * 1e6 / k.count);
  }
  if (only != Only::All) {
    std::fflush(stdout);
    return true;
  }
  const double rate = sb.commands / median(sb.seconds);
  const double eagerRatio = rate / (eager.commands / median(eager.seconds));
  const double lazyRatio = rate / (lazy.commands / median(lazy.seconds));
  fmt::print("  ratio spicebox / eager: {:.2f}  (target >= {:.1f}: {})\n", eagerRatio, EAGER_TARGET,
             eagerRatio >= EAGER_TARGET ? "met" : "NOT met");
  fmt::print("  ratio spicebox / lazy:  {:.2f}\n", lazyRatio);
  if (sb.commands != lazy.commands || sb.commands != eager.commands)
    fmt::print("  WARNING: the sides processed different command counts\n");
  for (const Contender* c : {&lazy, &eager}) {
    if (sb.primary && c->primary)
      fmt::print("  final primary {}x{}: {} pixels differ between spicebox and {}\n",
                 sb.primary->width, sb.primary->height, differingPixels(*sb.primary, *c->primary),
                 c->name);
    else
      fmt::print("  final primary: not compared with {} (spicebox {}, {} {})\n", c->name,
                 sb.primary ? "has one" : "has none", c->name, c->primary ? "has one" : "has none");
  }
  std::fflush(stdout);
  return true;
}

// libspice-server's worker hangs: tearing the server down would wait for it too, and no atexit
// handler may run while that thread lives.
[[noreturn]] void abandonHungWorker() {
  std::fflush(stdout);
  spdlog::shutdown();
  std::_Exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> recordings;
  std::string scenario, logLevel, onlyName = "all";
  uint64_t count = 20000, seed = 7;
  unsigned runs = 3;
  bool breakdown = false;
  uint64_t verifyEvery = 1000;
  CLI::App app{
      "spicebox-bench-render: commands per second of spicebox's renderer against "
      "libspice-server (lazy and eager) on the same command streams, in one process."};
  app.add_option("recording", recordings, "SPICE_REPLAY 1 recordings (.xz read directly)")
      ->check(CLI::ExistingFile);
  app.add_option("--scenario", scenario, "Also a guestsim scenario (only stress)")
      ->check(CLI::IsMember({"stress"}));
  app.add_option("--count", count, "Scenario commands")->capture_default_str();
  app.add_option("--seed", seed, "Scenario seed")->capture_default_str();
  app.add_option("--runs", runs, "Runs of each contender per stream; the median is printed")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  app.add_option("--only", onlyName, "Run one contender alone (for profiling): no ratios")
      ->check(CLI::IsMember({"all", "spicebox", "lazy", "eager"}))
      ->capture_default_str();
  app.add_option("--verify-every", verifyEvery,
                 "Before timing, compare both primaries after every K-th command (0: not)")
      ->capture_default_str();
  app.add_flag("--breakdown", breakdown,
               "Also print where spicebox's time goes, by command kind (one extra run)");
  app.add_option("--log-level", logLevel, "trace, debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);
  spicebox::base::initLogging("bench-render", STDERR_FILENO, logLevel);
  if (recordings.empty() && scenario.empty()) {
    spdlog::error("nothing to run: pass recordings and/or --scenario stress --count N");
    return 2;
  }

  spicebox::bench::printBuildNote();
  const Only only = onlyName == "spicebox" ? Only::Spicebox
                    : onlyName == "lazy"   ? Only::Lazy
                    : onlyName == "eager"  ? Only::Eager
                                           : Only::All;
  SpiceServerRunner spice;
  if (!spice.ready()) {
    spdlog::error("{}", spice.error());
    return 1;
  }
  bool ok = true;
  for (const std::string& path : recordings) {
    auto loaded = loadRecording(path);
    if (auto* error = std::get_if<std::string>(&loaded)) {
      spdlog::error("{}", *error);
      ok = false;
      continue;
    }
    if (!benchStream(std::get<Stream>(loaded), spice, runs, only, breakdown, verifyEvery))
      abandonHungWorker();
  }
  if (!scenario.empty()) {
    auto loaded = loadStress(count, seed);
    if (auto* error = std::get_if<std::string>(&loaded)) {
      spdlog::error("{}", *error);
      return 1;
    }
    if (!benchStream(std::get<Stream>(loaded), spice, runs, only, breakdown, verifyEvery))
      abandonHungWorker();
  }
  return ok ? 0 : 1;
}
