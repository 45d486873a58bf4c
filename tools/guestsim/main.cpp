// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: the command line,
// a recording file (hostile: RecordReader checks it), the broker over qxl-link (vmm.h checks it).
//
// A VMM and a QXL guest driver in one program: links to a broker (--vmm-socket / --vmm-fd) and
// plays a recording (--replay) or a scenario (--scenario) through the driver; optionally records
// what it did (--record-out), also offline, without a broker, and draws latency stamps after the
// commands (--stamps, stamp.h).
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/latency-stamp.h"
#include "base/log.h"
#include "tests/oracle/png-image.h"
#include "tools/guestsim/attacker.h"
#include "tools/guestsim/driver.h"
#include "tools/guestsim/scenario.h"
#include "tools/guestsim/spice-record-writer.h"
#include "tools/guestsim/spice-record.h"
#include "tools/guestsim/stamp.h"
#include "tools/guestsim/vmm.h"

namespace {

using namespace spicebox::guestsim;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string vmmSocket;
  int vmmFd = -1;
  std::string scenario;
  std::string replay;
  uint64_t until = 0;
  bool loop = false;
  double rate = 0;
  uint64_t seed = 1;
  uint64_t count = 0;
  bool referenceFormats = false;
  std::string recordOut;
  uint64_t ramMiB = 64;
  uint64_t vramMiB = 64;
  std::string logLevel;
  // Read-backs of the primary (Driver::snapshotPrimary) written as PREFIX-N.png, N the number of
  // commands submitted before it: after every K-th, after the ones listed, after the last.
  std::string snapshotPrefix;
  uint64_t snapshotEvery = 0;
  std::vector<uint64_t> snapshotAt;
  bool snapshotLast = false;
  // After every command the source puts on the command ring, a latency stamp (stamp.h).
  bool stamps = false;
  // hostile: the same stream without its attacks (hostile-scenario.h).
  bool validOnly = false;
  // When the broker goes away: link again to a new one on --vmm-socket and go on (Run::surviving).
  bool relink = false;
};

// How long --relink waits for a new broker to listen on --vmm-socket.
constexpr std::chrono::seconds RELINK_BOUND{60};

// An IoEvent after which the primary shown so far is gone (or replaced).
bool endsPrimary(const IoEvent& io) {
  switch (io.message) {
    case WorkerMessage::CreatePrimarySurface:
    case WorkerMessage::CreatePrimarySurfaceAsync:
    case WorkerMessage::DestroyPrimarySurface:
    case WorkerMessage::DestroyPrimarySurfaceAsync:
    case WorkerMessage::DestroySurfaces:
    case WorkerMessage::DestroySurfacesAsync:
      return true;
    default:
      return false;
  }
}

// An action after which the picture shown so far is gone: the primary destroyed or replaced, a
// reset, or an attack that takes the display down (hostile-scenario.h).
bool endsPicture(const GuestAction& action) {
  if (const auto* io = std::get_if<IoEvent>(&action))
    return endsPrimary(*io);
  if (const auto* attack = std::get_if<Attack>(&action))
    return std::holds_alternative<PrimaryAttack>(*attack) ||
           std::holds_alternative<RingAttack>(*attack);
  return std::holds_alternative<DeviceReset>(action);
}

// Where the guest's actions come from; reopened for each --loop pass.
class ActionSource {
 public:
  virtual ~ActionSource() = default;
  virtual std::optional<GuestAction> next() = 0;
  // Commands per second at most; 0: as fast as the device takes them.
  virtual double rate() const = 0;
};

class ReplaySource final : public ActionSource {
 public:
  ReplaySource(const std::string& path, double rate) : path_(path), rate_(rate) {
    auto opened = RecordReader::open(path);
    if (auto* error = std::get_if<RecordError>(&opened))
      throw VmmError(fmt::format("cannot replay {}: {}", path, error->toString()));
    reader_ = std::move(std::get<std::unique_ptr<RecordReader>>(opened));
  }
  std::optional<GuestAction> next() override {
    auto event = reader_->next();
    if (auto* error = std::get_if<RecordError>(&event))
      throw VmmError(fmt::format("cannot replay {}: {}", path_, error->toString()));
    if (std::holds_alternative<EndOfRecording>(event))
      return std::nullopt;
    auto& body = std::get<RecordEvent>(event).body;
    if (auto* command = std::get_if<Command>(&body))
      return GuestAction(std::move(*command));
    return GuestAction(std::move(std::get<IoEvent>(body)));
  }
  double rate() const override { return rate_; }

 private:
  std::string path_;
  double rate_;
  std::unique_ptr<RecordReader> reader_;
};

class ScenarioSource final : public ActionSource {
 public:
  ScenarioSource(const std::string& name, const ScenarioOptions& options)
      : scenario_(makeScenario(name, options)) {}
  std::optional<GuestAction> next() override { return scenario_->next(); }
  double rate() const override { return scenario_->commandsPerSecond(); }

 private:
  std::unique_ptr<Scenario> scenario_;
};

std::unique_ptr<ActionSource> openSource(const Options& o) {
  if (!o.replay.empty())
    return std::make_unique<ReplaySource>(o.replay, o.rate);
  return std::make_unique<ScenarioSource>(
      o.scenario, ScenarioOptions{o.seed, o.count, o.rate, o.referenceFormats, o.validOnly});
}

// What an offline run (no broker) counts, in the driver's terms. (Attacks and resets need a
// device: main() refuses the hostile scenario without one.)
void countOffline(const GuestAction& action, DriverStats& stats) {
  if (const auto* command = std::get_if<Command>(&action)) {
    static constexpr const char* NAMES[] = {"", "DRAW", "UPDATE", "CURSOR", "MESSAGE", "SURFACE"};
    ++stats.commands;
    ++stats.commandsByType[NAMES[static_cast<int>(command->type) % 6]];
  } else if (const auto* io = std::get_if<IoEvent>(&action)) {
    ++stats.ioEvents;
    ++stats.ioByName[std::string(workerMessageName(io->message))];
  }
}

// The one summary line on stdout: "commands: N io: M (skipped: K) released: R; ...". With
// attacks (`a` not null): "attacks: N (not met: U); unreleasable: X; forgotten at reset: F;
// resets: R; race rounds: Q; attacks by name: ...".
std::string summaryLine(const DriverStats& s, const AttackStats* a) {
  std::string line = fmt::format("commands: {} io: {} (skipped: {}) released: {}", s.commands,
                                 s.ioEvents, s.ioSkipped, s.released);
  auto list = [&line](const char* title, const std::map<std::string, uint64_t>& counts) {
    if (counts.empty())
      return;
    line += fmt::format("; {}:", title);
    const char* sep = " ";
    for (const auto& [name, n] : counts) {
      line += fmt::format("{}{} {}", sep, name, n);
      sep = ", ";
    }
  };
  list("by type", s.commandsByType);
  list("io performed", s.ioByName);
  list("io skipped", s.skippedByName);
  if (s.stamps)
    line += fmt::format("; stamps: {}", s.stamps);
  if (s.notSubmitted)
    line += fmt::format("; not submitted: {}", s.notSubmitted);
  if (s.oomNotifications)
    line += fmt::format("; oom notifications: {}", s.oomNotifications);
  if (s.deviceErrors)
    line += fmt::format("; device errors: {}", s.deviceErrors);
  if (s.snapshots)
    line += fmt::format("; snapshots: {}", s.snapshots);
  if (s.relinks)
    line += fmt::format("; relinks: {}; forgotten at relink: {}", s.relinks, s.forgottenAtRelink);
  if (s.resets || (a && a->attacks))
    line += fmt::format("; unreleasable: {}; forgotten at reset: {}; resets: {}", s.unreleasable,
                        s.forgottenAtReset, s.resets);
  if (a && a->attacks) {
    line += fmt::format("; attacks: {} (not met: {}); race rounds: {}", a->attacks, a->unmet,
                        a->raceRounds);
    list("attacks by name", a->byName);
  }
  return line;
}

void printSummary(const DriverStats& s, const AttackStats* a = nullptr) {
  std::cout << summaryLine(s, a) << std::endl;
}

uint64_t nowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
}

class Run {
 public:
  Run(const Options& o, uv_loop_t* loop, const StopSignals& stop)
      : o_(o), loop_(loop), stop_(stop) {}

  // Returns the exit status.
  int execute() {
    if (!o_.recordOut.empty()) {
      auto opened = RecordWriter::open(o_.recordOut);
      if (auto* error = std::get_if<WriteError>(&opened))
        throw VmmError(
            fmt::format("cannot write --record-out {}: {}", o_.recordOut, error->toString()));
      writer_ = std::move(std::get<std::unique_ptr<RecordWriter>>(opened));
    }
    if (o_.vmmFd >= 0 || !o_.vmmSocket.empty()) {
      vmm_ =
          std::make_unique<Vmm>(loop_, VmmOptions{8192, o_.ramMiB << 20, o_.vramMiB << 20}, stop_);
      if (o_.vmmFd >= 0)
        vmm_->adopt(o_.vmmFd);
      else
        vmm_->connect(o_.vmmSocket);
      vmm_->link();
      driver_ = std::make_unique<Driver>(*vmm_);
      driver_->init();
      attacker_ = std::make_unique<Attacker>(*driver_);
    }
    bool untilReached = play();
    if (untilReached) {
      // Everything submitted comes back first: the summary says what the device released.
      surviving([this] {
        driver_->drain();
        return 0;
      });
      finishRecording();
      printSummary(stats(), attackStats());
      if (finishedBySignal_)
        spdlog::info("SIGUSR1: finished after {} commands; staying linked until SIGTERM / SIGINT",
                     submitted_);
      else
        spdlog::info("--until {} reached: staying linked until SIGTERM / SIGINT", o_.until);
      surviving([this] {
        vmm_->serveForever();  // ends with StopRequested (or LinkClosed)
        return 0;
      });
    }
    if (driver_)
      surviving([this] {
        driver_->drain();
        return 0;
      });
    finishRecording();
    printSummary(stats(), attackStats());
    if (stats().notSubmitted != 0) {
      spdlog::error("{} commands could not be put into guest memory (see the warnings above)",
                    stats().notSubmitted);
      return 1;
    }
    if (attacker_ && attacker_->stats().unmet != 0) {
      spdlog::error("{} attacks were not met as expected (see the errors above)",
                    attacker_->stats().unmet);
      return 1;
    }
    return 0;
  }

  const DriverStats& stats() const { return driver_ ? driver_->stats() : offline_; }
  const AttackStats* attackStats() const { return attacker_ ? &attacker_->stats() : nullptr; }

  void finishRecording() {
    if (!writer_)
      return;
    auto error = writer_->finish();
    writer_.reset();
    if (error)
      throw VmmError(
          fmt::format("--record-out {} is incomplete: {}", o_.recordOut, error->toString()));
  }

 private:
  // Plays the source (each --loop pass). Returns true when --until or SIGUSR1 stopped it.
  bool play() {
    uint64_t& submitted = submitted_;
    auto source = openSource(o_);
    Clock::time_point start = Clock::now();
    uint64_t paced = 0;
    uint64_t actionsThisPass = 0;
    for (;;) {
      if (vmm_ && stop_.finishRequested()) {
        finishedBySignal_ = true;
        if (o_.snapshotLast)
          snapshot(submitted);
        return true;
      }
      // Pacing: command n goes out no earlier than start + n / rate. The wait comes before the
      // source makes the action, as a guest draws its next frame when it is due: making a large
      // one (fullhd's 8 MiB) right after the previous doorbell would compete for the CPU with
      // the device drawing that one.
      if (const double rate = source->rate(); rate > 0 && vmm_) {
        auto due = start + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(paced / rate));
        auto now = Clock::now();
        if (due > now)
          surviving([&] {
            vmm_->pause(std::chrono::ceil<std::chrono::milliseconds>(due - now));
            return 0;
          });
      }
      std::optional<GuestAction> action = source->next();
      if (!action && o_.snapshotLast)
        snapshot(submitted);
      if (!action) {
        if (!o_.loop)
          return false;
        if (actionsThisPass == 0)
          throw VmmError("--loop over a source with no actions would spin forever");
        // As a driver unloading: the primary, then every surface.
        perform(GuestAction(IoEvent{WorkerMessage::DestroyPrimarySurface, std::nullopt}));
        perform(GuestAction(IoEvent{WorkerMessage::DestroySurfaces, std::nullopt}));
        source = openSource(o_);
        actionsThisPass = 0;
        spdlog::info("--loop: starting again ({} commands so far)", submitted);
        continue;
      }
      ++actionsThisPass;
      bool isCommand = std::holds_alternative<Command>(*action);
      if (isCommand) {
        if (o_.until != 0 && submitted >= o_.until)
          return true;
        if (o_.count != 0 && submitted >= o_.count)
          return false;
        ++paced;
      }
      // The last picture before the primary goes: what --snapshot-last means when the source
      // ends by destroying it (the screen a user saw last).
      if (!isCommand && o_.snapshotLast && endsPicture(*action))
        snapshot(submitted);
      const bool stamped = isCommand && o_.stamps && stampable(std::get<Command>(*action));
      const bool done = surviving(
          [&] { return stamped ? performStamped(std::get<Command>(*action)) : perform(*action); });
      if (done && isCommand) {
        ++submitted;
        if (snapshotWanted(submitted))
          snapshot(submitted);
      }
      if (!vmm_ && (actionsThisPass & 255) == 0) {
        uv_run(loop_, UV_RUN_NOWAIT);  // offline: notice SIGTERM now and then
        if (stop_.requested())
          throw StopRequested();
      }
    }
  }

  // Whether a primary a stamp fits on exists, from the IoEvents performed (the driver skips a
  // create the recorder wrote without surface fields; so does this).
  void trackPrimary(const IoEvent& io) {
    switch (io.message) {
      case WorkerMessage::CreatePrimarySurface:
      case WorkerMessage::CreatePrimarySurfaceAsync:
        stampable_ = io.primary && io.primary->width >= spicebox::stamp::STAMP_WIDTH &&
                     io.primary->height >= 1;
        break;
      default:
        if (endsPrimary(io))
          stampable_ = false;
        break;
    }
  }

  // --stamps: a stamp after each command the source puts on the command ring (not after cursor
  // commands, which draw nothing into the primary), while there is a primary to draw it on.
  bool stampable(const Command& command) const {
    return stampable_ && command.type != CommandType::Cursor;
  }

  // A command and its stamp (stamp.h): published together, with one doorbell, the stamp carrying
  // the time right before (Driver::submitWithStamp), so it measures from the update's doorbell.
  // Stamps are not paced and not counted by --count, --until or the snapshot numbers; they are
  // in the summary's command counts (and "stamps: N"). With --record-out they are recorded as
  // ordinary commands after their command, carrying the time written at the doorbell.
  bool performStamped(const Command& command) {
    const uint32_t seq = nextStampSeq_;
    std::optional<uint64_t> ns;
    bool done = true;
    if (driver_) {
      auto result = driver_->submitWithStamp(command, seq);
      done = result.performed;
      ns = result.stampNs;
    } else {
      countOffline(GuestAction(command), offline_);
      ns = spicebox::stamp::monotonicNowNs();  // offline: no doorbell; the time it is recorded
      countOffline(GuestAction(stampCommand(seq)), offline_);
      ++offline_.stamps;
    }
    if (done && writer_)
      if (auto error = writer_->writeCommand(command, nowNs()))
        throw VmmError(fmt::format("cannot record to {}: {}", o_.recordOut, error->toString()));
    if (!ns)
      return done;  // no stamp went out: counted and warned about by the driver
    // 24 bits go into the pixels; the sequence wraps after 16777215 back to 1.
    nextStampSeq_ = seq >= 0xffffff ? 1 : seq + 1;
    if (writer_) {
      Command recorded = stampCommand(seq);
      Copy& copy = std::get<Copy>(std::get<Drawable>(recorded.body).payload);
      writeStamp(std::get<Bitmap>(copy.srcBitmap->payload).data.data(), seq, *ns);
      if (auto error = writer_->writeCommand(recorded, nowNs()))
        throw VmmError(fmt::format("cannot record to {}: {}", o_.recordOut, error->toString()));
    }
    return done;
  }

  bool snapshotWanted(uint64_t submitted) const {
    if (o_.snapshotPrefix.empty())
      return false;
    return (o_.snapshotEvery != 0 && submitted % o_.snapshotEvery == 0) ||
           snapshotAt_.count(submitted) != 0;
  }

  // Runs `step` (which talks to the device); when the link closes under it (the broker went
  // away) and --relink is on, links again to a new broker and runs `step` again: an interrupted
  // command is submitted again (the driver reclaimed it with everything the old device held), an
  // interrupted wait waits again.
  template <typename Step>
  auto surviving(Step&& step) -> decltype(step()) {
    for (;;) {
      try {
        return step();
      } catch (const LinkClosed& e) {
        if (!o_.relink || !driver_)
          throw;
        spdlog::warn("{}; linking again to a broker on {} (--relink)", e.what(), o_.vmmSocket);
      }
      relink();
    }
  }

  void relink() {
    for (;;) {
      vmm_->relink(o_.vmmSocket, RELINK_BOUND);  // VmmError when none comes: the run ends
      try {
        driver_->relinked();
        return;
      } catch (const LinkClosed& e) {
        spdlog::warn("{}; linking again (--relink)", e.what());
      }
    }
  }

  // Reads the primary back after `submitted` commands and writes it as PNG; once per count.
  void snapshot(uint64_t submitted) {
    if (!driver_ || o_.snapshotPrefix.empty() || submitted == 0 || submitted == lastSnapshot_)
      return;
    auto taken = surviving([this] { return driver_->snapshotPrimary(); });
    if (!taken)
      return;  // no primary: nothing on the screen to read
    lastSnapshot_ = submitted;
    spicebox::oracle::SurfaceView view{taken->bytes.data(), taken->bytes.size(), taken->width,
                                       taken->height,       taken->stride,       taken->format};
    auto rgb = spicebox::oracle::surfaceToRgb(view);
    if (auto* error = std::get_if<std::string>(&rgb))
      throw VmmError(
          fmt::format("cannot convert the primary after {} commands: {}", submitted, *error));
    const std::string path = fmt::format("{}-{}.png", o_.snapshotPrefix, submitted);
    if (auto error = spicebox::oracle::writePng(path, std::get<spicebox::oracle::RgbImage>(rgb));
        !error.empty())
      throw VmmError(fmt::format("cannot write the snapshot {}: {}", path, error));
  }

  bool perform(const GuestAction& action) {
    // The hostile scenario's own steps: never recorded (main() refuses --record-out with it).
    if (const auto* attack = std::get_if<Attack>(&action)) {
      attacker_->perform(*attack);
      return true;
    }
    if (std::holds_alternative<DeviceReset>(action)) {
      attacker_->reset();
      return true;
    }
    bool done = true;
    if (driver_)
      done = driver_->perform(action);
    else
      countOffline(action, offline_);
    if (done && std::holds_alternative<IoEvent>(action))
      trackPrimary(std::get<IoEvent>(action));
    // Recorded: every command submitted and every IoEvent, skipped ones included (the device
    // need not see ADD_MEMSLOT or START, but spice-server's replayer of the recording does).
    if ((done || std::holds_alternative<IoEvent>(action)) && writer_) {
      std::optional<WriteError> error;
      if (const auto* command = std::get_if<Command>(&action))
        error = writer_->writeCommand(*command, nowNs());
      else
        error = writer_->writeIo(std::get<IoEvent>(action), nowNs());
      if (error)
        throw VmmError(fmt::format("cannot record to {}: {}", o_.recordOut, error->toString()));
    }
    return done;
  }

  const Options& o_;
  uv_loop_t* loop_;
  const StopSignals& stop_;
  std::unique_ptr<RecordWriter> writer_;
  std::set<uint64_t> snapshotAt_{o_.snapshotAt.begin(), o_.snapshotAt.end()};
  uint64_t lastSnapshot_ = 0;
  uint64_t submitted_ = 0;         // commands submitted by play()
  bool finishedBySignal_ = false;  // SIGUSR1 ended play()
  bool stampable_ = false;         // a primary of at least STAMP_WIDTH x 1 exists
  uint32_t nextStampSeq_ = 1;      // seq of the next stamp (1 .. 2^24 - 1)
  // Declared after vmm_, so destroyed first: it unregisters its interrupt handler from the VMM.
  std::unique_ptr<Vmm> vmm_;
  std::unique_ptr<Driver> driver_;
  std::unique_ptr<Attacker> attacker_;  // after driver_: destroyed before it
  DriverStats offline_;
};

int runGuestsim(const Options& o) {
  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) {
    spdlog::error("cannot create the event loop: {}", uv_strerror(rc));
    return 1;
  }
  int status = 1;
  {
    StopSignals stop(&loop);
    Run run(o, &loop, stop);
    try {
      status = run.execute();
    } catch (const StopRequested&) {
      spdlog::info("stopping on SIGTERM / SIGINT");
      try {
        run.finishRecording();
        status = 0;
      } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        status = 1;
      }
      // After --until the summary was printed when it was reached; again when a relink came
      // since (what the new device was given).
      if (o.until == 0 || run.stats().relinks != 0)
        printSummary(run.stats(), run.attackStats());
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      try {
        run.finishRecording();
      } catch (const std::exception& inner) {
        spdlog::error("{}", inner.what());
      }
      if (run.stats().commands + run.stats().ioEvents != 0)
        printSummary(run.stats(), run.attackStats());  // what was done before the failure
      status = 1;
    }
  }
  // Let the close callbacks free the handles' memory (base/uv-handle.h).
  for (int i = 0; i < 8 && uv_loop_alive(&loop); ++i)
    uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "spicebox-guestsim: a VMM and a QXL guest driver in one program. Links to a spicebox-broker "
      "over qxl-link and plays a recording or a scenario through the QXL device, or (with "
      "--record-out and no broker) writes the actions to a recording only."};
  auto* socket = app.add_option("--vmm-socket", o.vmmSocket,
                                "The broker's qxl-link socket (spicebox-broker --vmm-socket)");
  auto* fd = app.add_option("--vmm-fd", o.vmmFd, "An inherited, connected qxl-link socket")
                 ->check(CLI::Range(0, 1 << 20));
  socket->excludes(fd);
  auto* scenario =
      app.add_option("--scenario", o.scenario,
                     "A built-in workload: desktop, all-draws, stress (--rate, default "
                     "2000 commands/s); latency and tear workloads, one command per "
                     "update: small-fills (200/s), fullhd (1920x1080 copies, 30/s), "
                     "flash (full-screen colours, unpaced); hostile (stress's commands "
                     "and every attack on the device and the renderer, unpaced)")
          ->check(CLI::IsMember(scenarioNames()));
  auto* replay = app.add_option("--replay", o.replay,
                                "A spice-server QXL recording (SPICE_REPLAY 1, .xz read directly)")
                     ->check(CLI::ExistingFile);
  scenario->excludes(replay);
  app.add_option("--until", o.until,
                 "After N commands stop submitting, wait for their release, print the summary and "
                 "stay linked until SIGTERM / SIGINT");
  app.add_flag("--loop", o.loop,
               "At the end, destroy the primary and every surface and start again");
  app.add_option("--rate", o.rate,
                 "At most R commands per second (default: as fast as the device "
                 "takes them)")
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--seed", o.seed, "Scenario random seed")->capture_default_str();
  app.add_flag("--reference-formats", o.referenceFormats,
               "Scenario bitmap sources only in the formats libspice-server renders (it aborts on "
               "1BIT_LE, 4BIT_LE and 8BIT_A sources): for recordings its oracle must render");
  app.add_option("--count", o.count, "Stop after N commands");
  app.add_option("--record-out", o.recordOut,
                 "Also write every action performed to this recording (.xz: compressed)");
  app.add_option("--ram-size", o.ramMiB, "RAM BAR size in MiB")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--vram-size", o.vramMiB, "VRAM BAR size in MiB")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--snapshot-prefix", o.snapshotPrefix,
                 "Read the primary back (QXL_IO_UPDATE_AREA of all of it, then guest memory) and "
                 "write it as PREFIX-N.png, N the commands submitted so far; when with "
                 "--snapshot-every/-at/-last");
  app.add_option("--snapshot-every", o.snapshotEvery, "A snapshot after every K-th command")
      ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  app.add_option("--snapshot-at", o.snapshotAt, "Snapshots after these commands (N,N,...)")
      ->delimiter(',');
  app.add_flag("--snapshot-last", o.snapshotLast,
               "A snapshot after the last command (before a trailing primary destroy)");
  app.add_flag("--stamps", o.stamps,
               "After every command on the command ring, draw a latency stamp (5x1 pixels at "
               "(0,0) of the primary: sequence number and CLOCK_MONOTONIC at the doorbell; "
               "base/latency-stamp.h)");
  app.add_flag("--valid-only", o.validOnly,
               "With --scenario hostile or expensive: the same seed's valid commands and device "
               "resets, every "
               "attack left out (the pictures the attacks must not change)");
  app.add_flag("--relink", o.relink,
               "When the broker goes away (killed, restarted), link again to the broker that "
               "next listens on --vmm-socket (waiting up to 60 s) and go on, as a VMM whose "
               "display backend was restarted: the device is set up again and the primary "
               "created again from guest memory");
  app.add_option("--log-level", o.logLevel,
                 "trace, debug, info, warn or error (default: info, or $SPICEBOX_LOG)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);

  spicebox::base::initLogging("guestsim", STDERR_FILENO, o.logLevel);
  if (o.scenario.empty() && o.replay.empty()) {
    spdlog::error("nothing to play: pass --scenario NAME or --replay FILE");
    return 2;
  }
  bool linked = o.vmmFd >= 0 || !o.vmmSocket.empty();
  const bool attacking = o.scenario == "hostile" || o.scenario == "expensive";
  if (o.validOnly && !attacking) {
    spdlog::error("--valid-only goes with --scenario hostile or expensive");
    return 2;
  }
  if (attacking && (!linked || !o.recordOut.empty() || o.stamps)) {
    spdlog::error(
        "--scenario {} attacks a device: it needs --vmm-socket or --vmm-fd, and its "
        "attacks and resets have no place in a recording (--record-out) or among --stamps",
        o.scenario);
    return 2;
  }
  if (o.relink && (o.vmmSocket.empty() || o.scenario == "hostile")) {
    spdlog::error(
        "--relink links again to --vmm-socket PATH (an inherited --vmm-fd cannot be "
        "connected again), and not with --scenario hostile (its attacks keep their own state)");
    return 2;
  }
  const bool snapshotsAsked = o.snapshotEvery != 0 || !o.snapshotAt.empty() || o.snapshotLast;
  if (snapshotsAsked != !o.snapshotPrefix.empty()) {
    spdlog::error(
        "--snapshot-prefix and --snapshot-every/--snapshot-at/--snapshot-last go together: "
        "the prefix names the files, the others say when");
    return 2;
  }
  if (snapshotsAsked && !linked) {
    spdlog::error("snapshots read the primary back from a device: pass --vmm-socket or --vmm-fd");
    return 2;
  }
  if (!linked) {
    if (o.recordOut.empty()) {
      spdlog::error(
          "no broker and nothing to record: pass --vmm-socket PATH or --vmm-fd N, or "
          "--record-out FILE to generate a recording offline");
      return 2;
    }
    if (o.loop || o.until != 0) {
      spdlog::error("--loop and --until need a broker (--vmm-socket or --vmm-fd)");
      return 2;
    }
    // all-draws ends by itself; the other scenarios run forever without a bound.
    if (!o.scenario.empty() && o.scenario != "all-draws" && o.count == 0) {
      spdlog::error("scenario {} runs forever: pass --count N to record it offline", o.scenario);
      return 2;
    }
  }
  return runGuestsim(o);
}
