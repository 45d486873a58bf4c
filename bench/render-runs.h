// Runs in: spicebox-bench-render (developer machine, unsandboxed). Input: a Stream
// (bench-stream.h) materialised from a checked recording or scenario.
//
// The timed runs of one stream, one function per contender:
// - runSpicebox: the renderer's per-command path (renderer/worker.cpp runCommand + render):
//   decodeCommand over SlotMemory (copy, validate), then Rasteriser::draw / apply, cursor shapes
//   sanitised, and the damage taken after every command (what the shared-memory mode sends).
// - SpiceServerRunner::run: libspice-server 0.15's own worker thread fed the same commands
//   through a QXL interface, lazily (one update_area of the whole primary at the end) or eagerly
//   (an update_area of each draw's bbox right after it, as the shared-memory mode requires).
// Both start from restored guest memory and fresh renderer state; the clock covers the stream's
// commands and replayed io events, and (libspice-server) the final update_area.
#pragma once

#include <spice.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "tests/oracle/spice-host.h"

#include "bench/bench-stream.h"

namespace spicebox::bench {

// A primary read back after a run: xRGB, top row first, width * height.
struct Picture {
  uint32_t width = 0, height = 0;
  std::vector<uint32_t> pixels;
};

struct RunResult {
  double seconds = 0;
  uint64_t commands = 0;  // spicebox: decoded and handed to the rasteriser; spice: taken by
                          // the worker from our rings
  uint64_t failed = 0;    // spicebox: decode or raster errors (the command still counts)
  std::optional<Picture> primary;  // absent when the stream ends without a primary
};

// Where spicebox's time goes, by command kind ("DRAW COPY", "SURFACE", ...): decode and render
// timed separately with the same clock (each timing adds ~50 ns per command, so these runs are
// not the ones whose rate is reported).
struct KindTime {
  uint64_t count = 0;
  double decodeSeconds = 0, renderSeconds = 0;
};
using Breakdown = std::map<std::string, KindTime>;

// For the untimed verification pass: the primary after every `every`-th command (counted from 1
// over all commands of the stream), when a 32 bpp primary exists then.
struct Snapshot {
  uint64_t afterCommand = 0;
  Picture picture;
};
struct Verify {
  uint64_t every = 0;  // 0: no snapshots (the timed runs)
  std::vector<Snapshot>* out = nullptr;
};

// `breakdown`: null for a timed run; else filled as described above.
RunResult runSpicebox(Stream& stream, Breakdown* breakdown = nullptr, const Verify& verify = {});

// FNV-1a over the RGB of every pixel: tells runs and processes apart in one line of output.
uint64_t pictureHash(const Picture& p);

// Pixels whose RGB differs (the x byte of xRGB is ignored); pictures of different sizes count
// every pixel of the larger.
uint64_t differingPixels(const Picture& a, const Picture& b);

// One libspice-server instance for the whole process (its worker thread starts with the QXL
// interface and is reused for every run; state is torn down between runs).
class SpiceServerRunner {
 public:
  SpiceServerRunner();
  ~SpiceServerRunner();
  SpiceServerRunner(const SpiceServerRunner&) = delete;
  SpiceServerRunner& operator=(const SpiceServerRunner&) = delete;

  // False when the server could not be set up; then error() says why.
  bool ready() const { return server_ != nullptr; }
  const std::string& error() const { return error_; }

  // nullopt when the worker stopped taking commands (hung); error() says where. With `verify`,
  // the whole primary is updated and read after every verify.every-th command (which changes
  // what the lazy mode defers: not for timed runs).
  std::optional<RunResult> run(Stream& stream, bool eager, const Verify& verify = {});

  // ---- QXL interface callbacks (worker thread)
  int getCommand(bool cursor, QXLCommandExt* out);
  int requestNotification(bool cursor);

  // Standard layout, QXLInstance first: the callbacks find the runner from their QXLInstance.
  struct Instance {
    QXLInstance qxl{};
    SpiceServerRunner* runner = nullptr;
  };

 private:
  bool drain();
  void tearDown();
  void updateWholePrimary(const BenchIo& primary);
  std::optional<Picture> readPrimary(Stream& stream, const BenchIo& primary);

  SpiceCoreInterface core_;  // spice_server_init and add_interface keep pointers to both
  QXLInterface sif_;
  SpiceServer* server_ = nullptr;
  std::unique_ptr<oracle::WorkerQueue> display_, cursor_;
  std::string error_;
  bool primaryLive_ = false;
  Instance instance_;
};

}  // namespace spicebox::bench
