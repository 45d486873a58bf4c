// Runs in: a developer machine, as
//   spicebox-bench-spice-serve [--addr 127.0.0.1] [--port N] (--scenario NAME [--count N]
//       [--seed S] | --replay FILE) [--rate R] [--image-compression off|lz|lz4] [--duration S]
// Input: the command line, a SPICE_REPLAY 1 recording (checked by guestsim's RecordReader) or a
// guestsim scenario; SPICE clients on the listening socket are libspice-server's to parse.
//
// Issue 6, point 5: the reference for the doorbell-to-pixels benchmark. libspice-server 0.15
// serves a SPICE display on TCP, fed live with the same guest stream spicebox's guestsim plays
// (bench/live-feed.h: each update followed by a latency stamp, the stamp's time taken right
// before the commands are pushed and spice_qxl_wakeup is called). A real SpiceCoreInterface on a
// libuv loop on the main thread (bench/uv-core.h) runs libspice-server's main channel; its
// display worker is its own thread. Ticketing is disabled; images go as LZ4 (--image-compression
// lz4, the default), LZ_RGB or raw, the encodings spicebox's client library decodes (a client's
// SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION overrides it: spicebox-latency asks for LZ4); video
// streaming, JPEG and zlib-GLZ are off. Measure with `spicebox-latency spice://ADDR:PORT`.
//
// Prints `listening on ADDR:PORT` on stdout once a client can connect (--port 0 picks a free
// port) and, at exit, what the feed did. Stops on SIGINT / SIGTERM or after --duration seconds.
// Exit status: 0 after a clean stop, 1 when the stream or the server could not be set up, 2 on
// usage errors.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "base/fd.h"
#include "base/log.h"
#include "bench/build-note.h"
#include "bench/live-feed.h"
#include "bench/uv-core.h"
#include "sandbox/sanitizers.h"
#include "tools/guestsim/scenario.h"

namespace {

using namespace spicebox;
using namespace spicebox::bench;

// Rate for recordings (their own timestamps are not replayed): updates per second.
constexpr double DEFAULT_RECORDING_RATE = 200;
// Commands materialised from a scenario when --count is not given: enough distinct updates that
// a loop shows new pixels every time, few enough to lay out in a second. fullhd(-bands) frames are
// 8 MB.
constexpr uint64_t DEFAULT_COUNT = 2048;
constexpr uint64_t DEFAULT_FULLHD_COUNT = 8;

struct Options {
  std::string addr = "127.0.0.1";
  uint16_t port = 0;
  std::string scenario;
  std::string replay;
  uint64_t count = 0;
  uint64_t seed = 1;
  double rate = 0;
  std::string imageCompression = "lz4";
  double duration = 0;
  std::string logLevel;
};

// A TCP socket listening on addr:port (IPv4 or IPv6 literal). libspice-server takes it as is
// (spice_server_set_listen_socket_fd), so the port a --port 0 socket got is known here.
std::variant<base::Fd, std::string> listenTcp(const std::string& addr, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, addr.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, addr.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof(*v6);
  } else {
    return "--addr " + addr + " is not an IPv4 or IPv6 address (give 127.0.0.1 or ::1)";
  }
  base::Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd)
    return std::string("cannot create a TCP socket: ") + std::strerror(errno);
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
    return "cannot listen on " + addr + ":" + std::to_string(port) + ": " + std::strerror(errno) +
           (errno == EADDRINUSE ? " (pick another --port, or 0 for a free one)" : "");
  if (::listen(fd.get(), 16) != 0)
    return std::string("listen: ") + std::strerror(errno);
  return fd;
}

uint16_t boundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// Everything the loop's callbacks reach, owned by main's frame (which outlives the loop).
struct Serve {
  uv_loop_t* loop = nullptr;
  SpiceServer* server = nullptr;
  LiveFeed* feed = nullptr;
  uv_timer_t tick{};
  uv_timer_t stop{};
  uv_signal_t sigint{}, sigterm{};
  uint64_t startNs = 0;  // uv_hrtime() when ticking started
  double periodNs = 0;
  uint64_t ticksScheduled = 0;
  bool ended = false;
  bool stopping = false;
};

void onTick(uv_timer_t* handle);

void shutDown(Serve& s) {
  if (s.stopping)
    return;
  s.stopping = true;
  uv_timer_stop(&s.tick);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.tick), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.stop), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.sigint), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&s.sigterm), nullptr);
  // Stops the worker (joined by remove_interface), then the server removes its watches and
  // timers, which the loop then closes: uv_run returns once nothing is left.
  spice_server_vm_stop(s.server);
  spice_server_remove_interface(&s.feed->instance()->base);
  spice_server_destroy(s.server);
  s.server = nullptr;
}

// Drift-free pacing: tick n is due at start + n * period (libuv timers have millisecond
// resolution and restart from the loop's time, so a repeating timer would run slow).
void scheduleTick(Serve& s) {
  ++s.ticksScheduled;
  const uint64_t due = s.startNs + static_cast<uint64_t>(s.ticksScheduled * s.periodNs);
  const uint64_t now = uv_hrtime();
  const uint64_t delayMs = due > now ? (due - now + 999999) / 1000000 : 0;
  uv_timer_start(&s.tick, onTick, delayMs, 0);
}

void onTick(uv_timer_t* handle) {
  auto& s = *static_cast<Serve*>(handle->data);
  if (s.feed->tick() == LiveFeed::TickResult::Ended) {
    s.ended = true;
    spdlog::info("{}: the stream ended after {} updates; serving its last picture",
                 s.feed->stream().name, s.feed->counters().updates);
    return;
  }
  scheduleTick(s);
}

void onSignal(uv_signal_t* handle, int signum) {
  spdlog::info("{}: stopping", strsignal(signum));
  shutDown(*static_cast<Serve*>(handle->data));
}

void onStopTimer(uv_timer_t* handle) {
  spdlog::info("--duration reached: stopping");
  shutDown(*static_cast<Serve*>(handle->data));
}

spice_image_compression_t compressionOf(const std::string& name) {
  static const std::map<std::string, spice_image_compression_t> NAMES{
      {"off", SPICE_IMAGE_COMPRESSION_OFF},
      {"lz", SPICE_IMAGE_COMPRESSION_LZ},
      {"lz4", SPICE_IMAGE_COMPRESSION_LZ4}};
  return NAMES.at(name);
}

// libspice-server's only way to take a socket it did not open; deprecated in favour of its own
// --port handling, which cannot report the port it picked.
int setListenSocket(SpiceServer* server, int fd) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  return spice_server_set_listen_socket_fd(server, fd);
#pragma GCC diagnostic pop
}

int serve(const Options& o) {
  std::variant<Stream, std::string> loaded;
  if (!o.replay.empty()) {
    loaded = loadRecording(o.replay);
  } else {
    const uint64_t count =
        o.count ? o.count
                : (o.scenario.rfind("fullhd", 0) == 0 ? DEFAULT_FULLHD_COUNT : DEFAULT_COUNT);
    loaded = loadScenario(o.scenario, count, o.seed);
  }
  if (auto* error = std::get_if<std::string>(&loaded)) {
    spdlog::error("{}", *error);
    return 1;
  }
  Stream& stream = std::get<Stream>(loaded);
  const std::string name = stream.name;
  double rate = o.rate;
  if (rate <= 0 && o.replay.empty()) {
    guestsim::ScenarioOptions hint;
    rate = guestsim::makeScenario(o.scenario, hint)->commandsPerSecond();
  }
  if (rate <= 0)
    rate = DEFAULT_RECORDING_RATE;
  if (stream.notMaterialised)
    spdlog::warn("{}: {} commands could not be laid out and are left out", name,
                 stream.notMaterialised);
  auto created = LiveFeed::create(std::move(stream), o.replay.empty());
  if (auto* error = std::get_if<std::string>(&created)) {
    spdlog::error("{}", *error);
    return 1;
  }
  LiveFeed& feed = *std::get<std::unique_ptr<LiveFeed>>(created);

  auto listening = listenTcp(o.addr, o.port);
  if (auto* error = std::get_if<std::string>(&listening)) {
    spdlog::error("{}", *error);
    return 1;
  }
  base::Fd listenFd = std::move(std::get<base::Fd>(listening));
  const uint16_t port = boundPort(listenFd.get());

  uv_loop_t loop;
  uv_loop_init(&loop);
  SpiceCoreInterface core = uvCore(&loop, "spicebox-bench-spice-serve");
  Serve s;
  s.loop = &loop;
  s.feed = &feed;
  s.server = spice_server_new();
  spice_server_set_noauth(s.server);
  // libspice-server owns the descriptor from here (it closes it in spice_server_destroy).
  setListenSocket(s.server, listenFd.release());
  spice_server_set_image_compression(s.server, compressionOf(o.imageCompression));
  spice_server_set_jpeg_compression(s.server, SPICE_WAN_COMPRESSION_NEVER);
  spice_server_set_zlib_glz_compression(s.server, SPICE_WAN_COMPRESSION_NEVER);
  spice_server_set_streaming_video(s.server, SPICE_STREAM_VIDEO_OFF);
  if (spice_server_init(s.server, &core) != 0) {
    spdlog::error("spice_server_init failed (see libspice-server's messages above)");
    return 1;
  }
  if (spice_server_add_interface(s.server, &feed.instance()->base) != 0) {
    spdlog::error("spice_server_add_interface(QXL) failed (see libspice-server's messages above)");
    return 1;
  }
  spice_server_vm_start(s.server);
  std::string error;
  if (!feed.start(&error)) {
    spdlog::error("{}", error);
    return 1;
  }

  uv_timer_init(&loop, &s.tick);
  uv_timer_init(&loop, &s.stop);
  uv_signal_init(&loop, &s.sigint);
  uv_signal_init(&loop, &s.sigterm);
  s.tick.data = s.stop.data = s.sigint.data = s.sigterm.data = &s;
  s.periodNs = 1e9 / rate;
  s.startNs = uv_hrtime();
  scheduleTick(s);
  if (o.duration > 0)
    uv_timer_start(&s.stop, onStopTimer, static_cast<uint64_t>(o.duration * 1000), 0);
  uv_signal_start(&s.sigint, onSignal, SIGINT);
  uv_signal_start(&s.sigterm, onSignal, SIGTERM);

  spdlog::info("{}: {} commands, {:g} updates/s{}, image compression {}", name,
               feed.stream().commands, rate, feed.loops() ? ", looping" : ", once",
               o.imageCompression);
  std::printf("listening on %s:%u\n", o.addr.c_str(), port);
  std::fflush(stdout);

  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0)
    spdlog::warn("the loop still had handles at exit (libspice-server left a timer or watch)");

  const FeedCounters& c = feed.counters();
  spdlog::info(
      "fed {} updates and {} stamps in {} ticks ({} skipped: the server still held the "
      "buffers; {} loops); {} releases{}",
      c.updates, c.stamps, c.ticks, c.busySkips, c.loops, feed.releasesSeen(),
      feed.badReleasesSeen() ? fmt::format(", {} with unknown ids", feed.badReleasesSeen()) : "");
  return 0;
}

}  // namespace

#if SPICEBOX_ADDRESS_SANITIZER
// Sanitizer builds (bench-tests run this host under ASan): libspice-server 0.15 leaks the
// RedClient of a connection whose disconnect is still queued on its main dispatcher when the
// server is destroyed (it logs "error reading from dispatcher: 11" then), with its channel
// clients and their buffers: a race with the client's exit that the SIGTERM in bench-tests
// sometimes wins. Allocations made inside the library are suppressed (its symbols are stripped,
// so only the module can be named); full unwinding lets LeakSanitizer see the library's frames.
// This program's own allocations outside libspice-server's calls stay checked.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:libspice-server.so\n";
}
extern "C" const char* __asan_default_options() {
  return "fast_unwind_on_malloc=0";
}
#endif

int main(int argc, char** argv) {
  CLI::App app{
      "libspice-server serving a guestsim stream with latency stamps (the reference "
      "of spicebox-bench-latency)"};
  Options o;
  app.add_option("--addr", o.addr, "Listen on this address (IPv4 or IPv6 literal)")
      ->capture_default_str();
  app.add_option("--port", o.port, "Listen on this TCP port; 0 picks a free one")
      ->capture_default_str();
  auto* scenario = app.add_option("--scenario", o.scenario,
                                  "guestsim scenario to play (small-fills, fullhd, ...)");
  auto* replay = app.add_option("--replay", o.replay, "SPICE_REPLAY recording to play (.xz ok)");
  scenario->excludes(replay);
  app.add_option("--count", o.count,
                 "Scenario commands laid out and looped (default 2048; fullhd and fullhd-bands 8)");
  app.add_option("--seed", o.seed, "Scenario seed")->capture_default_str();
  app.add_option("--rate", o.rate,
                 "Updates per second (default: the scenario's own rate; 200 for recordings)")
      ->check(CLI::Range(0.0, 1000.0));
  app.add_option("--image-compression", o.imageCompression,
                 "How libspice-server sends images: off (raw), lz (LZ_RGB) or lz4")
      ->check(CLI::IsMember({"off", "lz", "lz4"}))
      ->capture_default_str();
  app.add_option("--duration", o.duration, "Stop after this many seconds (0: on a signal only)");
  app.add_option("--log-level", o.logLevel, "trace, debug, info, warn or error");
  CLI11_PARSE(app, argc, argv);
  if (o.scenario.empty() && o.replay.empty()) {
    std::fprintf(stderr, "give --scenario NAME or --replay FILE (see --help)\n");
    return 2;
  }
  base::initLogging("bench-spice-serve", 2, o.logLevel);
  printBuildNote();
  return serve(o);
}
