// Runs in: spicebox-bench-spice-serve (developer machine, unsandboxed). Input: a Stream
// (bench-stream.h) materialised from a checked recording or scenario; release ids that
// libspice-server's worker hands back (our own, range-checked anyway).
//
// A stream played live to libspice-server, the way a guest plays it to a QXL device, with a
// latency stamp (base/latency-stamp.h, tools/guestsim/stamp.h) after every update:
// - tick() (main thread, at the benchmark's rate) pushes the stream's next command onto the
//   display (or cursor) queue, then a stamp command, and calls spice_qxl_wakeup: the doorbell.
//   The stamp's CLOCK_MONOTONIC time is written into its guest-memory pixels right before the
//   two commands are pushed. Io events met on the way (create / destroy primary, destroy
//   surfaces) are made with libspice-server's synchronous calls, as a device model does.
// - The worker thread pops the queues in get_command and hands every command back in
//   release_resource once it no longer reads its memory. A command's memory is written again
//   (a stamp's pixels, a looped command) only after its release: a tick that finds the next
//   command or every stamp slot still held by the server is skipped and counted, which also
//   bounds the queues.
// - With loop, a stream whose commands after the first primary are all draws on the primary
//   (the small-fills and fullhd scenarios) starts again after its last command; any other stream
//   (a recording) plays once and then stops pushing.
#pragma once

#include <spice.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "bench/bench-stream.h"
#include "tests/oracle/spice-host.h"

namespace spicebox::bench {

// Stamp commands laid out once and reused in turn: a stamp is released as soon as the next one
// covers it, so a few are always free; more only waste memory.
inline constexpr uint32_t STAMP_SLOTS = 64;

struct FeedCounters {
  uint64_t ticks = 0;
  uint64_t updates = 0;    // stream commands pushed
  uint64_t stamps = 0;     // stamp commands pushed (== the last stamp's seq)
  uint64_t busySkips = 0;  // ticks skipped: the next command or every stamp slot still held
  uint64_t loops = 0;      // times the stream started again
};

class LiveFeed {
 public:
  // Lays out the stamp slots in the stream's image. An error says what did not fit.
  static std::variant<std::unique_ptr<LiveFeed>, std::string> create(Stream stream, bool loop);
  LiveFeed(const LiveFeed&) = delete;
  LiveFeed& operator=(const LiveFeed&) = delete;

  // The QXL interface libspice-server calls (get_command etc. route here through instance()).
  QXLInstance* instance() { return &instance_.qxl; }
  const QXLInterface& interface() const { return sif_; }

  // Main thread, once the interface is added and the VM started: plays the io events before the
  // stream's first command (the first primary). False with a message when there is no primary.
  bool start(std::string* error);
  enum class TickResult { Pushed, Busy, Ended };
  // Main thread: one update and its stamp (see above).
  TickResult tick();
  bool loops() const { return loop_; }
  const FeedCounters& counters() const { return counters_; }
  // release_resource calls, and those with an id that is not ours (a bench bug).
  uint64_t releasesSeen() const { return releases_.load(); }
  uint64_t badReleasesSeen() const { return badReleases_.load(); }
  const Stream& stream() const { return stream_; }

  // Worker thread (QXL interface callbacks).
  int getCommand(bool cursor, QXLCommandExt* out);
  int requestNotification(bool cursor);
  void release(uint64_t releaseId);

  // Standard layout, QXLInstance first: the callbacks find the feed from their QXLInstance.
  struct Instance {
    QXLInstance qxl{};
    LiveFeed* feed = nullptr;
  };

 private:
  LiveFeed(Stream stream, bool loop);
  void playIo(const BenchIo& io);
  std::optional<uint32_t> freeStampSlot();

  struct StampSlot {
    QXLCommandExt ext{};
    uint8_t* pixels = nullptr;  // the 20 pixel bytes in the stream's image
    uint64_t releaseId = 0;
  };

  Stream stream_;
  bool loop_;
  QXLInterface sif_;
  Instance instance_;
  oracle::WorkerQueue display_, cursor_;
  // One QXLCommandExt per stream command (the queues hold pointers), and whether the server
  // holds it (pushed and not yet released); index = releaseId - 1.
  std::vector<QXLCommandExt> commands_;
  std::unique_ptr<std::atomic<bool>[]> commandHeld_;
  std::vector<StampSlot> stamps_;
  std::unique_ptr<std::atomic<bool>[]> stampHeld_;
  uint32_t nextStampSlot_ = 0;
  size_t next_ = 0;                // index into stream_.events
  size_t loopStart_ = 0;           // where a loop starts again (after the first primary)
  bool primaryStampable_ = false;  // a 32 bpp primary at least STAMP_WIDTH wide is live
  uint32_t seq_ = 0;
  FeedCounters counters_;
  std::atomic<uint64_t> releases_{0}, badReleases_{0};
};

}  // namespace spicebox::bench
