// Runs in: spicebox-bench-spice-serve (developer machine, unsandboxed). Input: see live-feed.h.
#include "bench/live-feed.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <type_traits>

#include "base/latency-stamp.h"
#include "tools/guestsim/materialise.h"
#include "tools/guestsim/stamp.h"

namespace spicebox::bench {

namespace {

// Release ids of the stamp slots: far above any stream's command count (ids 1..N).
constexpr uint64_t STAMP_RELEASE_BASE = uint64_t{1} << 40;
// How long an io event waits for the worker to take the commands pushed before it; the wait ends
// on the worker's event, this only turns a hung worker into an error message.
constexpr std::chrono::seconds WORKER_TIMEOUT{60};

LiveFeed& feedOf(QXLInstance* qin) {
  return *reinterpret_cast<LiveFeed::Instance*>(qin)->feed;
}
int getDisplayCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return feedOf(qin).getCommand(false, ext);
}
int getCursorCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return feedOf(qin).getCommand(true, ext);
}
int requestDisplayNotification(QXLInstance* qin) {
  return feedOf(qin).requestNotification(false);
}
int requestCursorNotification(QXLInstance* qin) {
  return feedOf(qin).requestNotification(true);
}
void releaseResource(QXLInstance* qin, QXLReleaseInfoExt info) {
  // info.info points into our own image (libspice-server translated the command's address).
  feedOf(qin).release(info.info ? info.info->id : 0);
}

bool is32bpp(uint32_t format) {
  return format == SPICE_SURFACE_FMT_32_xRGB || format == SPICE_SURFACE_FMT_32_ARGB;
}

QXLCommandExt commandExt(uint64_t addr, uint32_t type) {
  QXLCommandExt ext{};
  ext.cmd.data = addr;
  ext.cmd.type = type;
  ext.group_id = oracle::MEMSLOT_GROUP;
  return ext;
}

}  // namespace

LiveFeed::LiveFeed(Stream stream, bool loop)
    : stream_(std::move(stream)),
      loop_(loop),
      sif_(oracle::replayQxlInterface("spicebox-bench-spice-serve")) {
  static_assert(std::is_standard_layout_v<Instance>);
  instance_.feed = this;
  sif_.get_command = getDisplayCommand;
  sif_.req_cmd_notification = requestDisplayNotification;
  sif_.get_cursor_command = getCursorCommand;
  sif_.req_cursor_notification = requestCursorNotification;
  sif_.release_resource = releaseResource;
  instance_.qxl.base.sif = &sif_.base;
}

std::variant<std::unique_ptr<LiveFeed>, std::string> LiveFeed::create(Stream stream, bool loop) {
  auto feed = std::unique_ptr<LiveFeed>(new LiveFeed(std::move(stream), loop));
  Stream& s = feed->stream_;

  feed->commands_.resize(s.commands);
  feed->commandHeld_ = std::make_unique<std::atomic<bool>[]>(s.commands);
  bool seenCommand = false, loopable = true;
  for (size_t i = 0; i < s.events.size(); ++i) {
    if (const auto* c = std::get_if<BenchCommand>(&s.events[i])) {
      if (c->releaseId == 0 || c->releaseId > s.commands)
        return std::string("a stream command has release id ") + std::to_string(c->releaseId) +
               " outside 1.." + std::to_string(s.commands) + " (a bench-stream bug)";
      feed->commands_[c->releaseId - 1] = commandExt(c->addr, c->qxlType);
      if (!seenCommand)
        feed->loopStart_ = i;
      seenCommand = true;
      loopable = loopable && c->isDraw && c->surfaceId == 0 && !c->cursorRing;
    } else if (seenCommand) {
      loopable = false;
    }
  }
  if (!seenCommand)
    return s.name + ": the stream has no command to play";
  if (loop && !loopable) {
    spdlog::info("{}: plays once (only a stream of draws on the primary can loop)", s.name);
    feed->loop_ = false;
  }

  // The stamp slots, laid out once; the pixels found by guestsim's own walk of the layout.
  feed->stampHeld_ = std::make_unique<std::atomic<bool>[]>(STAMP_SLOTS);
  const auto toHost = [image = s.image.get()](uint64_t addr, size_t size) {
    return image->host(addr, size);
  };
  for (uint32_t i = 0; i < STAMP_SLOTS; ++i) {
    const uint64_t releaseId = STAMP_RELEASE_BASE + i;
    auto laid = guestsim::materialise(guestsim::stampCommand(i + 1), releaseId, *s.image);
    if (auto* error = std::get_if<guestsim::MaterialiseError>(&laid))
      return "cannot lay out stamp command " + std::to_string(i) + ": " + error->detail;
    const auto& m = std::get<guestsim::Materialised>(laid);
    StampSlot slot;
    slot.ext = commandExt(m.commandAddr, m.qxlType);
    slot.pixels = guestsim::locateStampPixels(m.commandAddr, toHost);
    slot.releaseId = releaseId;
    if (!slot.pixels)
      return "guestsim's stamp walk did not find the pixels of a stamp the bench laid out";
    feed->stamps_.push_back(slot);
  }
  return feed;
}

bool LiveFeed::start(std::string* error) {
  bool sawPrimary = false;
  while (next_ < stream_.events.size()) {
    const auto* io = std::get_if<BenchIo>(&stream_.events[next_]);
    if (!io)
      break;
    playIo(*io);
    sawPrimary = sawPrimary || io->kind == BenchIo::Kind::CreatePrimary;
    ++next_;
  }
  if (!sawPrimary) {
    *error = stream_.name + ": the stream creates no primary surface before its first command";
    return false;
  }
  if (!primaryStampable_)
    spdlog::warn("{}: the primary is not a 32 bpp surface at least {} pixels wide: no stamps",
                 stream_.name, stamp::STAMP_WIDTH);
  return true;
}

void LiveFeed::playIo(const BenchIo& io) {
  // The device model's order: commands pushed before an io event are processed before it.
  if (counters_.updates > 0) {
    spice_qxl_wakeup(instance());
    if (!display_.waitDrained(WORKER_TIMEOUT) || !cursor_.waitDrained(WORKER_TIMEOUT))
      spdlog::error("libspice-server's worker took no command for {} s (hung?)",
                    WORKER_TIMEOUT.count());
  }
  switch (io.kind) {
    case BenchIo::Kind::CreatePrimary: {
      QXLDevSurfaceCreate create{};
      create.width = io.width;
      create.height = io.height;
      create.stride = io.stride;
      create.format = io.format;
      create.position = io.position;
      create.mouse_mode = io.mouseMode;
      create.flags = io.flags;
      create.type = io.type;
      create.mem = io.memAddr;
      create.group_id = oracle::MEMSLOT_GROUP;
      spice_qxl_create_primary_surface(instance(), 0, &create);
      primaryStampable_ = is32bpp(io.format) && io.width >= stamp::STAMP_WIDTH && io.height >= 1;
      break;
    }
    case BenchIo::Kind::DestroyPrimary:
      spice_qxl_destroy_primary_surface(instance(), 0);
      primaryStampable_ = false;
      break;
    case BenchIo::Kind::DestroySurfaces:
      spice_qxl_destroy_surfaces(instance());
      primaryStampable_ = false;
      break;
  }
}

std::optional<uint32_t> LiveFeed::freeStampSlot() {
  for (uint32_t n = 0; n < STAMP_SLOTS; ++n) {
    const uint32_t i = (nextStampSlot_ + n) % STAMP_SLOTS;
    if (!stampHeld_[i].load()) {
      nextStampSlot_ = (i + 1) % STAMP_SLOTS;
      return i;
    }
  }
  return std::nullopt;
}

LiveFeed::TickResult LiveFeed::tick() {
  ++counters_.ticks;
  for (;;) {
    if (next_ >= stream_.events.size()) {
      if (!loop_)
        return TickResult::Ended;
      next_ = loopStart_;
      ++counters_.loops;
    }
    const auto* io = std::get_if<BenchIo>(&stream_.events[next_]);
    if (!io)
      break;
    playIo(*io);
    ++next_;
  }
  const auto& c = std::get<BenchCommand>(stream_.events[next_]);
  const size_t index = c.releaseId - 1;  // checked in create()
  if (commandHeld_[index].load()) {
    ++counters_.busySkips;
    return TickResult::Busy;
  }
  std::optional<uint32_t> slot;
  if (primaryStampable_) {
    slot = freeStampSlot();
    if (!slot) {
      ++counters_.busySkips;
      return TickResult::Busy;
    }
  }
  // The doorbell: the stamp's time is taken now, then both commands become visible to the
  // worker and it is woken.
  if (slot) {
    seq_ = (seq_ + 1) & 0xffffff;
    if (seq_ == 0)
      seq_ = 1;  // seq counts from 1 and 24 bits are carried
    StampSlot& s = stamps_[*slot];
    guestsim::writeStamp(s.pixels, seq_, stamp::monotonicNowNs());
    stampHeld_[*slot].store(true);
  }
  commandHeld_[index].store(true);
  (c.cursorRing ? cursor_ : display_).push(&commands_[index]);
  if (slot) {
    display_.push(&stamps_[*slot].ext);
    ++counters_.stamps;
  }
  spice_qxl_wakeup(instance());
  ++counters_.updates;
  ++next_;
  return TickResult::Pushed;
}

int LiveFeed::getCommand(bool cursor, QXLCommandExt* out) {
  return (cursor ? cursor_ : display_).pop(out) ? 1 : 0;
}

// 1 = "nothing pending, wake me", 0 = "look again".
int LiveFeed::requestNotification(bool cursor) {
  return (cursor ? cursor_ : display_).empty() ? 1 : 0;
}

void LiveFeed::release(uint64_t releaseId) {
  releases_.fetch_add(1);
  if (releaseId >= 1 && releaseId <= stream_.commands) {
    commandHeld_[releaseId - 1].store(false);
    return;
  }
  if (releaseId >= STAMP_RELEASE_BASE && releaseId < STAMP_RELEASE_BASE + STAMP_SLOTS) {
    stampHeld_[releaseId - STAMP_RELEASE_BASE].store(false);
    return;
  }
  badReleases_.fetch_add(1);
}

}  // namespace spicebox::bench
