// Runs in: broker (privileged). Owns the event loop, the children, the VMM link and its QXL device
// model, and the display segments (memfds the primary is drawn into). Parses no draw command and no
// SPICE message. Input: the renderer's batchDone answers (assumed compromised: checked against the
// batches in flight here); everything else arrives checked by VmmLink and the child peers.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "broker/children.h"
#include "broker/listeners.h"
#include "broker/peer-netproxy.h"
#include "broker/peer-renderer.h"
#include "broker/status.h"
#include "broker/vmm-link.h"
#include "renderer/recovery.h"
#include "sandbox/sandbox.h"

namespace spicebox::broker {

struct Config {
  sandbox::Mode sandboxMode = sandbox::Mode::BestEffort;
  std::string libexecDir;  // where spicebox-renderer and spicebox-netproxy are
  std::string logLevel;    // passed on to the children
  SupervisionPolicy supervision;
  std::string vmmSocket;  // --vmm-socket: where a VMM links (qxl-link); empty: no VMM listener
  // --builtin-guest: scenario of the spicebox-guestsim the broker starts as its VMM when there is
  // no --vmm-socket; "none" disables it.
  std::string builtinGuest = "desktop";
  std::vector<std::string> guestArgs;  // --guest-args: more arguments for the built-in guest
  // SPICE clients: --listen ADDR:PORT (any number, with --unix at most display.capnp
  // maxListeners in all), --unix PATH; none: the netproxy serves nobody.
  std::vector<std::string> listen;
  std::optional<UnixSocketOptions> unixSocket;
  // Password (read from --password-file by main.cpp, never from the command line) or
  // ticketing disabled, client limit, image compression, mouse mode. `listeners` is filled by
  // the broker from the sockets it opens.
  NetproxySettings clients;
  // --status-socket: where `spicebox-ctl status` reads the broker's state (broker/status.h);
  // empty: no status socket.
  std::string statusSocket;
  // --batch-deadline: a renderer that has not finished the batch it works on after this long is
  // killed and replaced (it counts against the command it was in, as a crash does).
  Millis batchDeadline{5000};
  // --surface-memory: bytes of the recovery area's surface arena (offscreen surfaces' pixels).
  uint64_t arenaBytes = renderer::recovery::DEFAULT_ARENA_BYTES;
};

// Quarantine policy (issue 7): a command is quarantined once it brought the renderer down this
// many times; when this many commands are quarantined within the window, the guest is attacking
// on purpose and the broker stops rendering for it (the last picture stays; released undrawn).
inline constexpr int DEATHS_TO_QUARANTINE = 2;
inline constexpr size_t QUARANTINES_TO_STOP = 3;
inline constexpr std::chrono::seconds QUARANTINE_WINDOW{60};

// Path of the built-in guest's binary for `config`.
std::string builtinGuestPath(const Config& config);
// Whether `config` starts the built-in guest.
bool usesBuiltinGuest(const Config& config);

// A display segment: the memfd a primary is drawn into (sealed against shrinking, growing and
// further seals). The broker owns it; the renderer maps it read-write, later the netproxy
// read-only (issue 5/6).
struct DisplaySegment {
  base::Fd fd;
  base::Fd readOnly;  // the same memfd opened read-only: what the netproxy gets
  DisplaySegmentLayout layout;
};

// Creates a segment for a width x height 32 bpp primary (1 .. 8192 each, else the refusal).
std::variant<std::shared_ptr<DisplaySegment>, std::string> createDisplaySegment(
    uint32_t width, uint32_t height, uint64_t generation);

class Broker {
 public:
  explicit Broker(Config config);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Starts the children and runs until SIGTERM/SIGINT (exit status 0) or until a child is given
  // up on (exit status 1). Returns the process exit status.
  int run();

 private:
  ChildSpec childSpec(const char* name) const;
  void startVmm();
  // Opens --listen / --unix; false (logged) when one cannot be used.
  bool openListeners();
  void onSignal(int signum);
  // Stops the children in order (netproxy first: clients stop seeing the display; then the
  // renderer, then the built-in guest), then lets the loop end.
  void shutdown(int exitStatus);
  void finish();
  void reportStatus();
  // The state `spicebox-ctl status` prints.
  StatusReport statusReport() const;

  // The device path: VMM link <-> renderer.
  void onRendererReady();
  // A renderer incarnation ended: if it was in the middle of a command (the recovery area's
  // progress record), and died of it (a crash or a hang, not a kill from outside), that command
  // counts a death; at DEATHS_TO_QUARANTINE it is quarantined.
  void onRendererDied(const ChildDeath& death);
  void quarantine(uint64_t seq, uint32_t index);
  void stopRendering(const std::string& why);
  // The link's recovery area (renderer/recovery.h), made at link.
  bool createRecoveryArea();
  // Batches the broker answers itself while rendering is stopped, in their turn.
  void completeLocalBatches();
  // The renderer's per-batch deadline: runs while it works on a batch.
  void armBatchDeadline();
  void disarmBatchDeadline();
  // The netproxy: its configuration and listening sockets, the picture, the pointer.
  void onNetproxyReady();
  ipc::Channel::Verdict onNetproxyMessage(const BoundaryMessage& message);
  // After a batchDone: what the netproxy's clients must see (a new segment, no display, or the
  // batch's damage and hints on the segment they have).
  // Returns whether the netproxy reads the segment for what was sent.
  bool forwardOutput(const std::shared_ptr<DisplaySegment>& segmentAfter,
                     const RendererBatchDone& done);
  void sendNetproxySegment();
  // The renderer waits after each batchDone until outputTaken: sent at once when nobody reads
  // the segment, else once the netproxy answers a sync sent after that batch's output.
  void gateOutput(uint64_t seq, bool netproxyReads);
  void sendOutputTaken(uint64_t seq);
  void onNetproxyStateChange();
  void onLinked();
  void onUnlinked();
  // Gives the renderer the guest memory and lets the device resend its state.
  void connectRendererToDevice();
  bool sendBatch(uint64_t seq, std::span<const qxl::WorkItem> items);
  bool sendSegment(const DisplaySegment& segment);
  ipc::Channel::Verdict onRendererMessage(const BoundaryMessage& message);

  // What the broker derives from a batch when it is first sent: the segment made for its
  // createPrimary (sent again before it on every resend) and the primary when it ends.
  struct BatchOutputPlan {
    std::shared_ptr<DisplaySegment> segment;
    std::optional<PrimarySize> primaryAfter;
    std::shared_ptr<DisplaySegment> segmentAfter;  // the primary's segment when the batch ends
    uint32_t commands = 0;                         // items that are guest commands
    // What each item is, for the log lines of a death and a quarantine (describeItem()): kept as
    // numbers, formatted only when logged.
    struct Item {
      uint8_t kind = 0;          // the qxl::WorkItem alternative
      uint32_t commandType = 0;  // QXLCmdType, for a CommandItem
      uint64_t addr = 0;         // its guest address, for a CommandItem
    };
    std::vector<Item> items;
  };
  // "DRAW command (QXL type 1) at guest address 0x...", "createPrimary".
  static std::string describeItem(const BatchOutputPlan::Item& item);
  BatchOutputPlan planBatch(std::span<const qxl::WorkItem> items);
  void dropSegments();

  Config config_;
  uv_loop_t loop_{};
  base::UvHandle<uv_signal_t> sigterm_;
  base::UvHandle<uv_signal_t> sigint_;
  base::UvHandle<uv_timer_t> statusTimer_;  // refreshes STATUS with the device's counters
  std::unique_ptr<Child> renderer_;
  std::unique_ptr<Child> netproxy_;
  std::unique_ptr<VmmLink> vmm_;  // with --vmm-socket, or the built-in guest's connection
  std::unique_ptr<OneShotProcess> builtinGuest_;
  // Batches sent to the current renderer incarnation and not answered yet, oldest first: the
  // only seq a batchDone may carry is the front. Cleared when a new incarnation is ready.
  std::deque<uint64_t> inFlight_;
  // Batches of a device whose link ended, still in the renderer's queue: their batchDone is
  // accepted (in order) and ignored.
  std::deque<uint64_t> orphaned_;
  // The current primary's segment (null: no primary), the primary as of the last batch planned,
  // and the plans of the batches not answered yet, by seq.
  std::shared_ptr<DisplaySegment> segment_;
  std::optional<PrimarySize> plannedPrimary_;
  std::map<uint64_t, BatchOutputPlan> plans_;
  uint64_t nextSegmentGeneration_ = 1;
  // The listening sockets (kept across netproxy restarts), the segment the netproxy shows (the
  // renderer has finished a batch on it), the pointer, and what the netproxy reports.
  std::vector<ListeningSocket> listeners_;
  std::shared_ptr<DisplaySegment> shownSegment_;
  uint8_t shownBuffer_ = 0;  // the buffer of shownSegment_ holding the picture (last batchDone)
  std::optional<RendererCursor> cursor_;
  uint64_t rendererIncarnation_ = 0;  // renderer processes that reported ready
  // The VMM link's recovery area: the memfd every renderer incarnation gets, and the broker's
  // read-only view of it (the progress record, read after a death).
  struct Recovery {
    base::Fd fd;
    std::unique_ptr<renderer::recovery::Area> view;
  };
  std::optional<Recovery> recovery_;
  // Deaths counted against (batch seq, item index), the items quarantined per batch, when the
  // recent quarantines were, and whether rendering is stopped for this guest (and why).
  std::map<std::pair<uint64_t, uint32_t>, int> deathsAt_;
  std::map<uint64_t, std::vector<uint32_t>> quarantined_;
  std::deque<std::chrono::steady_clock::time_point> recentQuarantines_;
  bool renderingStopped_ = false;
  std::string renderingNote_;
  std::set<uint64_t> localBatches_;  // in inFlight_, answered here (rendering stopped)
  base::UvHandle<uv_timer_t> localTimer_;
  base::UvHandle<uv_timer_t> deadlineTimer_;
  bool rendererWaitsForTaken_ = false;  // after its batchDone, until outputTaken
  NetproxyClients clients_;
  // The sync outstanding at the netproxy (the renderer waits for it), one whose renderer is gone
  // (its synced is accepted and ignored), and whether the next frame must be the whole picture
  // (a new netproxy copied the segment while the renderer may have been drawing).
  std::optional<uint64_t> awaitingSync_;
  std::optional<uint64_t> staleSync_;
  bool fullFrameNext_ = false;
  uint64_t inputs_ = 0;
  uint64_t commandsRendered_ = 0;
  uint64_t commandsRejected_ = 0;
  uint64_t commandsQuarantined_ = 0;
  uint64_t damageRects_ = 0;
  uint64_t hints_ = 0;
  bool shuttingDown_ = false;
  bool notifiedReady_ = false;
  int exitStatus_ = 0;
  std::string lastStatus_;
  std::chrono::steady_clock::time_point startedAt_ = std::chrono::steady_clock::now();
  std::unique_ptr<StatusServer> statusServer_;
};

}  // namespace spicebox::broker
