// Runs in: spicebox-latency (a benchmark client; unsandboxed). Input: the command line, a
// password file, and everything a SPICE server sends, untrusted: parsed by the client library
// (client/spice-client.h); the latency stamp is read from the client's own copy of the picture
// and recognised only by its magic (base/latency-stamp.h), so pixels that are not a stamp are
// counted, never trusted.
//
// spicebox-latency [options] URI: how long a guest's update takes to reach a client. The guest
// (spicebox-guestsim --stamps) writes a stamp at (0,0) of the primary with the CLOCK_MONOTONIC
// time it rang the doorbell; each update whose stamp carries a new sequence number is timed as
// now - stamp, read right after the update was applied: after each SHM_DAMAGE in shared-memory
// mode, after each batch of available messages in the ordinary one. Works against spicebox and
// against libspice-server (ordinary mode: draws this client does not reproduce are counted).
#include <signal.h>
#include <spice/enums.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "base/latency-stamp.h"
#include "base/log.h"
#include "base/memory.h"
#include "client/tools/tool-session.h"

namespace {

using namespace spicebox;
using namespace spicebox::client;
using namespace spicebox::client::tools;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string uri;
  std::string passwordFile;
  std::string mode = "shm";
  uint64_t updates = 0;
  uint64_t warmup = 0;
  double durationS = 0;
  double timeoutS = 0;
  std::string json;
  std::string logLevel;
};

volatile sig_atomic_t stopRequested = 0;

void requestStop(int) {
  stopRequested = 1;
}

// Sequence numbers are 24 bits (base/latency-stamp.h).
constexpr uint32_t SEQ_MASK = 0xffffff;

class Recorder {
 public:
  explicit Recorder(uint64_t warmup) : warmup_(warmup) {}

  // Reads the stamp at (0,0) of `picture` after an update was applied.
  void look(const Canvas* picture) {
    if (!picture || picture->width() < stamp::STAMP_WIDTH) {
      look(nullptr, 0);
      return;
    }
    uint32_t px[stamp::STAMP_WIDTH];
    for (uint32_t x = 0; x < stamp::STAMP_WIDTH; ++x)
      px[x] = picture->pixel(x, 0);
    look(px, stamp::STAMP_WIDTH);
  }

  // Reads the stamp at (0,0) of the shared-memory buffer holding the picture (x8r8g8b8 rows,
  // little endian), in place: what a zero-copy viewer has the moment SHM_DAMAGE arrives.
  void look(const DisplayChannel& display) {
    const auto segment = display.segment();
    const uint64_t offset = display.shmOffset();
    const auto* surface = display.primary();
    if (!surface || surface->width() < stamp::STAMP_WIDTH || offset > segment.size() ||
        segment.size() - offset < stamp::STAMP_WIDTH * 4) {
      look(nullptr, 0);
      return;
    }
    uint32_t px[stamp::STAMP_WIDTH];
    for (uint32_t x = 0; x < stamp::STAMP_WIDTH; ++x) {
      const uint8_t* p = segment.data() + offset + x * 4;
      px[x] = uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16;
    }
    look(px, stamp::STAMP_WIDTH);
  }

 private:
  void look(const uint32_t* px, uint32_t count) {
    ++looks_;
    if (!px || count < stamp::STAMP_WIDTH) {
      ++stampless_;
      return;
    }
    auto s = stamp::decode(px);
    if (!s) {
      ++stampless_;
      return;
    }
    uint64_t now = stamp::monotonicNowNs();
    if (lastSeq_) {
      uint32_t step = (s->seq - *lastSeq_) & SEQ_MASK;
      if (step == 0)
        return;  // the same update seen again (a later batch that did not touch the stamp)
      // An older stamp than one already timed: a torn read (shared memory without tear-free
      // can show a buffer the server is drawing into) or a guest that started counting again.
      // Not a new update; counted.
      if (step > SEQ_MASK / 2) {
        ++stale_;
        return;
      }
      missed_ += step - 1;
    }
    lastSeq_ = s->seq;
    if (seen_++ < warmup_)
      return;
    if (samples_.empty())
      firstAt_ = Clock::now();
    lastAt_ = Clock::now();
    if (now < s->monotonicNs) {
      ++fromTheFuture_;  // not this machine's clock: refused rather than recorded as 0
      return;
    }
    samples_.push_back(now - s->monotonicNs);
  }

 public:
  uint64_t recorded() const { return samples_.size(); }
  bool measuring() const { return seen_ > warmup_; }

  struct Summary {
    uint64_t updates = 0, missed = 0, stampless = 0, fromTheFuture = 0, looks = 0, stale = 0;
    double p50 = 0, p90 = 0, p99 = 0, max = 0;  // microseconds
    double seconds = 0, perSecond = 0;
  };
  Summary summary() const {
    Summary s;
    s.updates = samples_.size();
    s.missed = missed_;
    s.stampless = stampless_;
    s.fromTheFuture = fromTheFuture_;
    s.looks = looks_;
    s.stale = stale_;
    if (samples_.empty())
      return s;
    std::vector<uint64_t> sorted = samples_;
    std::sort(sorted.begin(), sorted.end());
    // Nearest rank: the smallest sample with at least p% of the samples at or below it.
    auto rank = [&](double p) {
      size_t k = static_cast<size_t>(std::ceil(p / 100.0 * sorted.size()));
      return sorted[std::clamp<size_t>(k, 1, sorted.size()) - 1] / 1000.0;
    };
    s.p50 = rank(50);
    s.p90 = rank(90);
    s.p99 = rank(99);
    s.max = sorted.back() / 1000.0;
    s.seconds = std::chrono::duration<double>(lastAt_ - firstAt_).count();
    if (s.seconds > 0 && samples_.size() > 1)
      s.perSecond = (samples_.size() - 1) / s.seconds;
    return s;
  }

 private:
  uint64_t warmup_;
  uint64_t seen_ = 0, looks_ = 0, stampless_ = 0, missed_ = 0, fromTheFuture_ = 0, stale_ = 0;
  std::optional<uint32_t> lastSeq_;
  std::vector<uint64_t> samples_;  // nanoseconds
  Clock::time_point firstAt_, lastAt_;
};

Error writeJson(const std::string& path, const std::string& mode, uint64_t warmup,
                const Recorder::Summary& s) {
  std::ofstream out(path);
  if (!out)
    return "cannot write " + path;
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "{\n  \"mode\": \"%s\",\n  \"updates\": %llu,\n  \"warmup\": %llu,\n"
                "  \"p50_us\": %.1f,\n  \"p90_us\": %.1f,\n  \"p99_us\": %.1f,\n"
                "  \"max_us\": %.1f,\n  \"seconds\": %.3f,\n  \"updates_per_s\": %.2f,\n"
                "  \"missed\": %llu,\n  \"stale\": %llu,\n  \"stampless\": %llu,\n"
                "  \"clock_skewed\": %llu\n}\n",
                mode.c_str(), static_cast<unsigned long long>(s.updates),
                static_cast<unsigned long long>(warmup), s.p50, s.p90, s.p99, s.max, s.seconds,
                s.perSecond, static_cast<unsigned long long>(s.missed),
                static_cast<unsigned long long>(s.stale),
                static_cast<unsigned long long>(s.stampless),
                static_cast<unsigned long long>(s.fromTheFuture));
  out << buf;
  out.close();
  if (!out)
    return "writing " + path + " failed";
  return std::nullopt;
}

int run(const Options& o) {
  ConnectOptions co;
  co.uri = o.uri;
  co.passwordFile = o.passwordFile;
  co.shm = o.mode == "shm"             ? ShmWish::Accept
           : o.mode == "shm-tear-free" ? ShmWish::TearFree
                                       : ShmWish::Off;
  // libspice-server would otherwise pick GLZ or QUIC, which this client does not decode.
  co.preferredCompression = SPICE_IMAGE_COMPRESSION_LZ4;
  auto start = Clock::now();
  std::optional<Clock::time_point> giveUpAt;
  if (o.timeoutS > 0)
    giveUpAt = start + std::chrono::milliseconds(static_cast<int64_t>(o.timeoutS * 1000));
  auto connected = ToolSession::connect(co);
  if (auto* err = std::get_if<std::string>(&connected)) {
    spdlog::error("{}", *err);
    return 1;
  }
  ToolSession& tool = *std::get<std::unique_ptr<ToolSession>>(connected);
  DisplayChannel& display = tool.display();
  // Set before the first message is handled: frames may follow the offer at once.
  Recorder recorder(o.warmup);
  // Shared memory: the stamp is read in place, from the buffer the SHM_DAMAGE names, as a
  // zero-copy viewer would use it (an image client's endpoint is its decoded picture).
  display.setShmCopy(false);
  display.setFrameCallback([&](uint64_t, std::span<const Rect>) { recorder.look(display); });
  if (o.mode != "normal" && !display.shmActive()) {
    // The offer, if any, comes right after SET_ACK: wait for it before measuring, until the
    // ordinary display begins (a SURFACE_CREATE: no offer came).
    auto until = Clock::now() + std::chrono::seconds(5);
    while (!display.shmActive() && display.shm().refused == 0 &&
           display.display().surfaceCreates == 0 && Clock::now() < until && !stopRequested)
      if (auto err = tool.pump(std::chrono::milliseconds(50))) {
        spdlog::error("{}", *err);
        return 1;
      }
  }
  if (o.mode != "normal" &&
      (!display.shmActive() || (o.mode == "shm-tear-free") != display.tearFree())) {
    spdlog::error(
        "mode {} was asked for, the connection is in mode {}{}{} (shared memory needs "
        "a spice+unix:// URI to a server that offers it)",
        o.mode, tool.mode(), display.shmRefusal() ? ": " : "", display.shmRefusal().value_or(""));
    return 1;
  }

  std::optional<Clock::time_point> endAt;
  std::optional<std::string> failure;
  for (;;) {
    if (stopRequested)
      break;
    auto now = Clock::now();
    if (o.updates && recorder.recorded() >= o.updates)
      break;
    if (!endAt && o.durationS > 0 && recorder.measuring())
      endAt = now + std::chrono::milliseconds(static_cast<int64_t>(o.durationS * 1000));
    if (endAt && now >= *endAt)
      break;
    if (giveUpAt && now >= *giveUpAt) {
      failure = "gave up after " + fmt::format("{:g}", o.timeoutS) + " s (--timeout) with " +
                std::to_string(recorder.recorded()) + " updates recorded";
      break;
    }
    auto wait = std::chrono::milliseconds(100);
    if (auto err = tool.pump(wait)) {
      failure = *err;
      break;
    }
    // The ordinary display: the picture after each batch of messages that changed it.
    if (!display.takeDamage().empty() && !display.shmActive())
      recorder.look(display.primary());
  }

  auto s = recorder.summary();
  std::printf(
      "spicebox-latency: mode %s, %llu updates (warmup %llu): p50 %.1f us, p90 %.1f us, p99 %.1f "
      "us, max %.1f us, %.1f updates/s, %llu missed, %llu stale, %llu without stamp, draws not "
      "reproduced %llu\n",
      tool.mode().c_str(), static_cast<unsigned long long>(s.updates),
      static_cast<unsigned long long>(o.warmup), s.p50, s.p90, s.p99, s.max, s.perSecond,
      static_cast<unsigned long long>(s.missed), static_cast<unsigned long long>(s.stale),
      static_cast<unsigned long long>(s.stampless),
      static_cast<unsigned long long>(display.display().unsupported));
  std::fflush(stdout);
  if (!o.json.empty())
    if (auto err = writeJson(o.json, tool.mode(), o.warmup, s); err && !failure)
      failure = err;
  if (!failure && s.updates == 0)
    failure = std::string(
        "no stamped update was recorded (is the guest drawing stamps, "
        "spicebox-guestsim --stamps?)");
  if (failure) {
    spdlog::error("{}", *failure);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "spicebox-latency: times guest updates (latency stamps) as a SPICE client sees them"};
  Options o;
  app.add_option("URI", o.uri, "spice://HOST:PORT or spice+unix:///PATH")->required();
  app.add_option("--mode", o.mode, "shm, shm-tear-free or normal (default shm)")
      ->check(CLI::IsMember({"shm", "shm-tear-free", "normal"}));
  app.add_option("--password-file", o.passwordFile,
                 "log in with the password on this file's first line")
      ->check(CLI::ExistingFile);
  auto* updates = app.add_option("--updates", o.updates, "stop after N recorded updates");
  auto* duration =
      app.add_option("--duration", o.durationS, "stop S seconds after the warmup ended")
          ->check(CLI::PositiveNumber);
  updates->excludes(duration);
  app.add_option("--warmup", o.warmup, "updates seen before recording starts (default 0)");
  app.add_option("--timeout", o.timeoutS, "give up with an error after S seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--json", o.json, "also write the results to FILE as JSON");
  app.add_option("--log-level", o.logLevel, "trace, debug, info, warn, error (or SPICEBOX_LOG)");
  CLI11_PARSE(app, argc, argv);
  if (!o.updates && o.durationS <= 0) {
    std::fprintf(stderr, "spicebox-latency: give --updates N or --duration S\n");
    return 2;
  }
  spicebox::base::initLogging("latency", 2, o.logLevel);
  spicebox::base::keepFrameBuffersInHeap();
  struct sigaction sa {};
  sa.sa_handler = requestStop;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return run(o);
}
