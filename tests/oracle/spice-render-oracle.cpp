// Runs in: tests (developer machine / CI), as `spicebox-render-oracle`.
// Input: an uncompressed SPICE_REPLAY 1 recording, trusted as far as libspice-server trusts it
// (this program is the reference renderer: libspice-server's own worker draws every command),
// and, with --compare, two PNG files (parsed by libpng, sizes capped in png-image.cpp).
//
//   spicebox-render-oracle FILE [--at N,N,...] [--every K] [--last] --out-prefix PREFIX
//   spicebox-render-oracle --compare A.png B.png
//
// How the real worker is driven, synchronously and in the recording's order:
// - The main thread reads the recording with spice_replay_next_cmd. That call also replays the
//   io events before each command (create/destroy primary, destroy surfaces) through the
//   worker's dispatcher, synchronously, so it must never run on the worker thread.
// - Each command goes into a queue that the QXL interface's get_command (worker thread) pops,
//   then the main thread wakes the worker (spice_qxl_wakeup) and waits until get_command finds
//   the queue empty again. The worker processes a command right after taking it, in the same
//   loop, so an empty get_command means every command so far is in the worker's tree; and the
//   next io event is handled only after that (the worker is one thread). This keeps exactly the
//   order in which the recording's worker saw commands and io events.
// - release_resource (worker thread) finds the command by its QXLReleaseInfo address (the
//   command's data, as the replayer allocates it) and frees it with spice_replay_free_cmd. The
//   release id is not used: the replayer sets it for every type but QXL_CMD_MESSAGE, whose id is
//   whatever bytes the file held.
// - After command N: spice_qxl_update_area over the whole primary (synchronous: the worker
//   flushes every pending command and renders everything the area depends on into the
//   primary's memory), then the primary's pixels are read.
// - The primary's memory is what the replayer allocated and passed to
//   spice_qxl_create_primary_surface. libspice-server 0.15.1 calls that function (and
//   spice_qxl_destroy_primary_surface, spice_qxl_destroy_surfaces) from spice_replay_next_cmd
//   through its PLT, so this executable interposes them (exported with ENABLE_EXPORTS), records
//   the surface and forwards to the library's definition found with dlsym(RTLD_NEXT). The
//   allocation's size, for the bounds check, is malloc_usable_size of that g_malloc'd block
//   (glib allocates with the system malloc). If a library version stops calling through the PLT,
//   the oracle sees no primary and says so; it never guesses an address.
//
// No core event loop runs: reds opens no socket (no port is set) and no client ever connects,
// so the core's timers and watches are accepted and never fire; the worker thread runs its own
// glib loop. Exit status: 0 when every requested snapshot was written (or, with --compare, the
// images are identical), 1 when a snapshot could not be taken or the replayer stopped before the
// end of the file (or the images differ), 2 on usage or setup errors. spice_replay_next_cmd
// returns NULL both at a clean end and on a parse error, so a file cut inside its last event
// also "reads to the end": with --last, compare the printed "commands: N" with the count the
// recording should have (an --at beyond the real end fails loudly).

#include <dlfcn.h>
#include <malloc.h>
#include <spice.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/log.h"
#include "tests/oracle/png-image.h"
#include "tests/oracle/spice-host.h"

namespace spicebox::oracle {
namespace {

// How long the main thread waits for the worker to take a command before calling it a hang. The
// wait ends on the worker's event; this only turns a deadlock into an error message.
constexpr std::chrono::seconds WORKER_TIMEOUT{60};

struct Options {
  std::string recording;
  std::vector<uint64_t> at;
  uint64_t every = 0;
  bool last = false;
  std::string outPrefix;
  std::vector<std::string> compare;
  std::string logLevel;
};

// ------------------------------------------------------------------ command hand-over

struct PrimarySurface {
  QXLDevSurfaceCreate create;
  size_t allocated = 0;  // malloc_usable_size of create.mem
};

struct Snapshot {
  uint64_t command = 0;
  RgbImage image;
};

class Oracle;

// The QXL instance libspice-server calls back with; Oracle is found from it (standard layout,
// QXLInstance first), so no callback needs process-wide state.
struct OracleInstance {
  QXLInstance qxl{};
  Oracle* oracle = nullptr;
};
static_assert(std::is_standard_layout_v<OracleInstance>);

Oracle& oracleOf(QXLInstance* qin) {
  return *reinterpret_cast<OracleInstance*>(qin)->oracle;
}

class Oracle {
 public:
  explicit Oracle(const Options& options) : options_(options) { instance_.oracle = this; }

  int run();

  // ---- called by the QXL interface (worker thread unless noted)
  int getCommand(QXLCommandExt* ext) { return display_.pop(ext) ? 1 : 0; }
  int getCursorCommand(QXLCommandExt* ext) { return cursor_.pop(ext) ? 1 : 0; }
  int reqCommandNotification() { return display_.empty() ? 1 : 0; }
  int reqCursorNotification() { return cursor_.empty() ? 1 : 0; }
  void releaseResource(QXLReleaseInfoExt info);

  // ---- called by the interposed spice_qxl_* functions (main thread, inside
  // spice_replay_next_cmd), before the library's own function runs.
  void onCreatePrimary(const QXLDevSurfaceCreate& surface);
  void onDestroyPrimary();

 private:
  bool feed(QXLCommandExt* cmd);
  std::optional<RgbImage> readPrimary(uint64_t command);
  bool writeSnapshot(uint64_t command, const RgbImage& image);
  bool wanted(uint64_t command) const {
    return requested_.count(command) != 0 || (options_.every != 0 && command % options_.every == 0);
  }
  void freeCommand(QXLCommandExt* cmd);
  void freeUnreleased();

  const Options& options_;
  OracleInstance instance_;
  SpiceReplay* replay_ = nullptr;
  WorkerQueue display_;
  WorkerQueue cursor_;
  std::set<uint64_t> requested_;
  uint64_t commands_ = 0;  // commands read and processed so far
  std::optional<PrimarySurface> primary_;
  // With --last: the primary as it was just before a destroy, in case no command follows it.
  std::optional<Snapshot> beforeDestroy_;

  // Commands the worker holds, by the address of their QXLReleaseInfo (= cmd.data).
  std::mutex outstandingMutex_;
  std::unordered_map<uint64_t, QXLCommandExt*> outstanding_;
  uint64_t unknownReleases_ = 0;
};

// ------------------------------------------------------------------ QXL interface

int getCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return oracleOf(qin).getCommand(ext);
}
int reqCmdNotification(QXLInstance* qin) {
  return oracleOf(qin).reqCommandNotification();
}
void releaseResource(QXLInstance* qin, QXLReleaseInfoExt info) {
  oracleOf(qin).releaseResource(info);
}
int getCursorCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return oracleOf(qin).getCursorCommand(ext);
}
int reqCursorNotification(QXLInstance* qin) {
  return oracleOf(qin).reqCursorNotification();
}
// The replay host (spice-host.h) with the worker fed from our queues.
QXLInterface makeQxlInterface() {
  QXLInterface sif = replayQxlInterface("spicebox-render-oracle");
  sif.get_command = getCommand;
  sif.req_cmd_notification = reqCmdNotification;
  sif.release_resource = releaseResource;
  sif.get_cursor_command = getCursorCommand;
  sif.req_cursor_notification = reqCursorNotification;
  return sif;
}

// ------------------------------------------------------------------ Oracle

void Oracle::releaseResource(QXLReleaseInfoExt info) {
  QXLCommandExt* cmd = nullptr;
  {
    std::lock_guard lock(outstandingMutex_);
    auto it = outstanding_.find(reinterpret_cast<uintptr_t>(info.info));
    if (it == outstanding_.end()) {
      ++unknownReleases_;
      return;  // Not ours (or released twice): never free what we did not hand out.
    }
    cmd = it->second;
    outstanding_.erase(it);
  }
  freeCommand(cmd);
}

void Oracle::freeCommand(QXLCommandExt* cmd) {
  // libspice-server 0.15's spice_replay_free_cmd frees a QXL_CMD_MESSAGE's QXLCommandExt but not
  // its body, which the replayer g_malloc'd: free the body here so nothing leaks. GLib >= 2.46
  // always allocates with the system malloc (g_free is free), and glib's headers are not
  // installed here (libspice-server-dev does not need them).
  if (cmd->cmd.type == QXL_CMD_MESSAGE) {
    std::free(reinterpret_cast<void*>(static_cast<uintptr_t>(cmd->cmd.data)));
  }
  spice_replay_free_cmd(replay_, cmd);
}

void Oracle::freeUnreleased() {
  // Only after the worker thread is gone: what it still held (surfaces never destroyed,
  // drawables still in its tree) is freed here.
  std::unordered_map<uint64_t, QXLCommandExt*> left;
  {
    std::lock_guard lock(outstandingMutex_);
    left.swap(outstanding_);
  }
  for (auto& [info, cmd] : left) {
    freeCommand(cmd);
  }
  spdlog::debug("{} commands were still held by the worker at exit; {} unknown releases",
                left.size(), unknownReleases_);
}

void Oracle::onCreatePrimary(const QXLDevSurfaceCreate& surface) {
  auto* mem = reinterpret_cast<void*>(static_cast<uintptr_t>(surface.mem));
  primary_ = PrimarySurface{surface, mem != nullptr ? malloc_usable_size(mem) : 0};
  spdlog::debug("primary surface {}x{} stride {} format {} after command {}", surface.width,
                surface.height, surface.stride, surface.format, commands_);
}

void Oracle::onDestroyPrimary() {
  if (options_.last && primary_ && commands_ > 0) {
    // If no command follows this destroy, this is the picture "after the last command".
    if (auto image = readPrimary(commands_)) {
      beforeDestroy_ = Snapshot{commands_, std::move(*image)};
    }
  }
  primary_.reset();
}

std::optional<RgbImage> Oracle::readPrimary(uint64_t command) {
  if (!primary_) {
    spdlog::error(
        "after command {}: there is no primary surface (the recording has not created one, or "
        "destroyed it). If the recording does create one, this libspice-server no longer calls "
        "spice_qxl_create_primary_surface through its PLT and the oracle cannot find its memory",
        command);
    return std::nullopt;
  }
  const QXLDevSurfaceCreate& s = primary_->create;
  QXLRect area{};
  area.top = 0;
  area.left = 0;
  area.bottom = static_cast<int32_t>(std::min<uint32_t>(s.height, INT32_MAX));
  area.right = static_cast<int32_t>(std::min<uint32_t>(s.width, INT32_MAX));
  // Synchronous: returns once the worker has flushed its commands and rendered the area.
  spice_qxl_update_area(&instance_.qxl, 0, &area, nullptr, 0, 0);
  SurfaceView view;
  view.mem = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(s.mem));
  view.size = primary_->allocated;
  view.width = s.width;
  view.height = s.height;
  view.stride = s.stride;
  view.format = s.format;
  auto image = surfaceToRgb(view);
  if (auto* error = std::get_if<std::string>(&image)) {
    spdlog::error("after command {}: cannot read the primary: {}", command, *error);
    return std::nullopt;
  }
  return std::move(std::get<RgbImage>(image));
}

bool Oracle::writeSnapshot(uint64_t command, const RgbImage& image) {
  std::string path = options_.outPrefix + "-" + std::to_string(command) + ".png";
  std::string error = writePng(path, image);
  if (!error.empty()) {
    spdlog::error("{} (check that the --out-prefix directory exists and is writable)", error);
    return false;
  }
  std::printf("primary after command %llu: %ux%u written to %s\n",
              static_cast<unsigned long long>(command), image.width, image.height, path.c_str());
  std::fflush(stdout);
  return true;
}

bool Oracle::feed(QXLCommandExt* cmd) {
  if (cmd->cmd.type == QXL_CMD_MESSAGE) {
    // A message draws nothing; the worker only logs its text, which it finds by searching for a
    // NUL that the replayer does not allocate (spice-server's recorder stores strlen bytes): an
    // over-read inside libspice-server that AddressSanitizer reports. So it is not fed.
    freeCommand(cmd);
    return true;
  }
  {
    std::lock_guard lock(outstandingMutex_);
    outstanding_[cmd->cmd.data] = cmd;
  }
  WorkerQueue& queue = cmd->cmd.type == QXL_CMD_CURSOR ? cursor_ : display_;
  // (libspice-server aborts the process on some commands: this names the one it died on.)
  spdlog::trace("feeding command {} (QXL_CMD type {})", commands_ + 1, uint32_t{cmd->cmd.type});
  queue.push(cmd);
  spice_qxl_wakeup(&instance_.qxl);
  if (!queue.waitDrained(WORKER_TIMEOUT)) {
    spdlog::error("libspice-server's worker did not take command {} within {} s", commands_ + 1,
                  WORKER_TIMEOUT.count());
    return false;
  }
  return true;
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

int Oracle::run() {
  requested_.insert(options_.at.begin(), options_.at.end());
  std::unique_ptr<FILE, FileCloser> file(std::fopen(options_.recording.c_str(), "rbe"));
  if (!file) {
    spdlog::error("cannot open recording {}: {}", options_.recording, std::strerror(errno));
    return 2;
  }
  std::fseek(file.get(), 0, SEEK_END);
  long size = std::ftell(file.get());
  std::rewind(file.get());

  // Order: the replay reads the header first (NULL on a bad one); the server and its QXL
  // instance must exist before spice_replay_next_cmd replays the first io event.
  replay_ = spice_replay_new(file.get(), MAX_SURFACES);
  if (replay_ == nullptr) {
    spdlog::error(
        "libspice-server rejected {}: not an uncompressed SPICE_REPLAY 1 recording "
        "(decompress .rec.xz with xz -dk first)",
        options_.recording);
    return 2;
  }
  FILE* stream = file.release();  // spice_replay_free fclose()s it
  static SpiceCoreInterface core = inertCore("spicebox-render-oracle");
  static QXLInterface sif = makeQxlInterface();
  SpiceServer* server = spice_server_new();
  spice_server_set_noauth(server);
  if (spice_server_init(server, &core) != 0) {
    spdlog::error("spice_server_init failed");
    spice_replay_free(replay_);
    return 2;
  }
  instance_.qxl.base.sif = &sif.base;
  if (spice_server_add_interface(server, &instance_.qxl.base) != 0) {
    spdlog::error("spice_server_add_interface failed");
    spice_server_destroy(server);
    spice_replay_free(replay_);
    return 2;
  }
  spice_server_vm_start(server);

  bool ok = true;
  while (QXLCommandExt* cmd = spice_replay_next_cmd(replay_, &instance_.qxl)) {
    if (!feed(cmd)) {
      // The worker hangs: no teardown (it would wait for the worker too), no atexit handlers
      // while the worker thread still runs.
      std::fflush(stdout);
      spdlog::shutdown();
      std::_Exit(1);
    }
    ++commands_;
    beforeDestroy_.reset();  // a command followed: an earlier capture is not the last picture
    if (wanted(commands_)) {
      auto image = readPrimary(commands_);
      ok = image && writeSnapshot(commands_, *image) && ok;
    }
  }
  long at = std::ftell(stream);
  if (at != size) {
    spdlog::error(
        "libspice-server's replayer stopped at byte {} of {} after {} commands: the "
        "recording is cut or malformed there",
        at, size, commands_);
    ok = false;
  }
  if (options_.last && !wanted(commands_)) {
    if (beforeDestroy_ && beforeDestroy_->command == commands_) {
      ok = writeSnapshot(commands_, beforeDestroy_->image) && ok;
    } else {
      auto image = readPrimary(commands_);
      ok = image && writeSnapshot(commands_, *image) && ok;
    }
  }
  for (uint64_t n : requested_) {
    if (n > commands_ || n == 0) {
      spdlog::error("--at {}: the recording has {} commands (counted from 1)", n, commands_);
      ok = false;
    }
  }
  std::printf("commands: %llu\n", static_cast<unsigned long long>(commands_));

  spice_server_vm_stop(server);
  spice_server_remove_interface(&instance_.qxl.base);  // joins the worker thread
  spice_server_destroy(server);
  primary_.reset();
  freeUnreleased();
  spice_replay_free(replay_);
  return ok ? 0 : 1;
}

// ------------------------------------------------------------------ --compare

int compareFiles(const std::string& a, const std::string& b) {
  auto imageA = readPng(a);
  auto imageB = readPng(b);
  for (auto* result : {&imageA, &imageB}) {
    if (auto* error = std::get_if<std::string>(result)) {
      spdlog::error("{}", *error);
      return 2;
    }
  }
  auto diff = compareImages(std::get<RgbImage>(imageA), std::get<RgbImage>(imageB));
  if (auto* error = std::get_if<std::string>(&diff)) {
    spdlog::error("{} and {}: {}", a, b, *error);
    return 2;
  }
  const ImageDifference& d = std::get<ImageDifference>(diff);
  std::printf("differing pixels: %llu of %llu\n",
              static_cast<unsigned long long>(d.differingPixels),
              static_cast<unsigned long long>(d.pixels));
  std::printf("pixels differing by more than 2: %llu\n",
              static_cast<unsigned long long>(d.pixelsOverTwo));
  std::printf("max channel difference: %u\n", d.maxChannelDifference);
  return d.differingPixels == 0 ? 0 : 1;
}

}  // namespace
}  // namespace spicebox::oracle

// ------------------------------------------------------------------ interposed libspice-server
// calls

namespace {

template <typename Fn>
Fn libraryFunction(const char* name) {
  void* fn = dlsym(RTLD_NEXT, name);
  if (fn == nullptr) {
    spdlog::critical("dlsym(RTLD_NEXT, {}) found nothing: is libspice-server linked?", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

}  // namespace

// Exported from the executable so that libspice-server's PLT calls land here first.
extern "C" [[gnu::visibility("default")]] void spice_qxl_create_primary_surface(
    QXLInstance* instance, uint32_t surface_id, QXLDevSurfaceCreate* surface) {
  using Fn = void (*)(QXLInstance*, uint32_t, QXLDevSurfaceCreate*);
  static const Fn real = libraryFunction<Fn>("spice_qxl_create_primary_surface");
  if (surface_id == 0 && surface != nullptr) {
    spicebox::oracle::oracleOf(instance).onCreatePrimary(*surface);
  }
  real(instance, surface_id, surface);
}

extern "C" [[gnu::visibility("default")]] void spice_qxl_destroy_primary_surface(
    QXLInstance* instance, uint32_t surface_id) {
  using Fn = void (*)(QXLInstance*, uint32_t);
  static const Fn real = libraryFunction<Fn>("spice_qxl_destroy_primary_surface");
  if (surface_id == 0) {
    spicebox::oracle::oracleOf(instance).onDestroyPrimary();
  }
  real(instance, surface_id);
}

extern "C" [[gnu::visibility("default")]] void spice_qxl_destroy_surfaces(QXLInstance* instance) {
  using Fn = void (*)(QXLInstance*);
  static const Fn real = libraryFunction<Fn>("spice_qxl_destroy_surfaces");
  spicebox::oracle::oracleOf(instance).onDestroyPrimary();
  real(instance);
}

int main(int argc, char** argv) {
  using namespace spicebox::oracle;
  Options o;
  CLI::App app{
      "spicebox-render-oracle: renders a SPICE_REPLAY 1 recording with libspice-server's own "
      "worker and writes the primary surface as PREFIX-N.png after the chosen commands; or "
      "compares two PNG files pixel by pixel."};
  app.add_option("recording", o.recording, "An uncompressed SPICE_REPLAY 1 recording")
      ->check(CLI::ExistingFile);
  app.add_option("--at", o.at, "Snapshots after these commands (1-based), e.g. --at 1000,17200")
      ->delimiter(',');
  app.add_option("--every", o.every, "A snapshot after every K-th command")
      ->check(CLI::PositiveNumber);
  app.add_flag("--last", o.last, "A snapshot after the last command");
  app.add_option("--out-prefix", o.outPrefix, "Snapshots go to PREFIX-N.png");
  app.add_option("--compare", o.compare,
                 "Compare two PNG files: print the differing pixels and the largest channel "
                 "difference; exit 0 when identical, 1 when not")
      ->expected(2);
  app.add_option("--log-level", o.logLevel, "trace, debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);
  spicebox::base::initLogging("render-oracle", STDERR_FILENO, o.logLevel);

  if (!o.compare.empty()) {
    if (!o.recording.empty()) {
      spdlog::error("--compare takes two PNG files and no recording");
      return 2;
    }
    return compareFiles(o.compare[0], o.compare[1]);
  }
  if (o.recording.empty() || o.outPrefix.empty() || (o.at.empty() && o.every == 0 && !o.last)) {
    spdlog::error(
        "nothing to do: pass a recording, --out-prefix PREFIX and at least one of "
        "--at N,..., --every K, --last (or --compare A.png B.png)");
    return 2;
  }
  Oracle oracle(o);
  return oracle.run();
}
