// Runs in: spicebox-guestsim (unsandboxed). Input: attacks (trusted); int_pending and the ROM's
// slot generation, written by the device. See attacker.h.
#include "tools/guestsim/attacker.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "base/assert.h"
#include "base/log.h"

namespace spicebox::guestsim {

namespace {

// The valid primary every create attack starts from (64x64, 32 bpp, bottom-up like Xspice).
QXLSurfaceCreate validPrimary(uint64_t mem) {
  QXLSurfaceCreate c{};
  c.width = 64;
  c.height = 64;
  c.stride = -64 * 4;
  c.format = SPICE_SURFACE_FMT_32_xRGB;
  c.type = QXL_SURF_TYPE_PRIMARY;
  c.mem = mem;
  return c;
}

QXLRect rect(int32_t top, int32_t left, int32_t bottom, int32_t right) {
  QXLRect r{};
  r.top = top;
  r.left = left;
  r.bottom = bottom;
  r.right = right;
  return r;
}

// A COPY onto the scratch surface whose every structure the racer can reach: a 4x4 bitmap in two
// chunks, a clip of two rects.
Command raceBase() {
  Image img;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.width = img.height = 4;
  Bitmap& bm = img.payload.emplace<Bitmap>();
  bm.format = SPICE_BITMAP_FMT_32BIT;
  bm.flags = QXL_BITMAP_TOP_DOWN;
  bm.x = bm.y = 4;
  bm.stride = 16;
  bm.data.assign(64, 0x77);
  bm.chunkSizes = {32, 32};
  bm.chunkCount = 2;
  Copy c;
  c.srcBitmap = std::move(img);
  c.srcArea = Rect{0, 0, 4, 4};
  c.ropDescriptor = SPICE_ROPD_OP_PUT;
  Drawable d;
  d.bbox = Rect{0, 0, 16, 16};
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = {Rect{0, 0, 8, 8}, Rect{8, 8, 16, 16}};
  d.effect = QXL_EFFECT_BLEND;
  d.surfaceId = SCRATCH_SURFACE;
  d.type = QXL_DRAW_COPY;
  d.payload = std::move(c);
  return Command{CommandType::Draw, std::move(d)};
}

// A valid STROKE over a w x h primary that takes the renderer seconds: EXPENSIVE_STROKE_POINTS
// points zigzagging between its left and right edges, row after row, XOR (every pixel it crosses
// is read and written, for every line over it).
Command strokeTakingSeconds(int32_t w, int32_t h) {
  PathSegment segment;
  segment.flags = SPICE_PATH_BEGIN | SPICE_PATH_END;
  segment.points.reserve(EXPENSIVE_STROKE_POINTS);
  for (uint32_t i = 0; i < EXPENSIVE_STROKE_POINTS; ++i)
    segment.points.push_back(
        Point{(i % 2 == 0 ? 0 : w - 1) * 16, static_cast<int32_t>((i / 2) % uint32_t(h)) * 16});
  Stroke s;
  s.path.push_back(std::move(segment));
  s.brush.type = SPICE_BRUSH_TYPE_SOLID;
  s.brush.color = 0x00ffffff;
  s.foreMode = SPICE_ROPD_OP_XOR;
  s.backMode = SPICE_ROPD_OP_XOR;
  Drawable d;
  d.bbox = Rect{0, 0, h, w};
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.effect = QXL_EFFECT_BLEND;
  d.surfaceId = 0;
  d.type = QXL_DRAW_STROKE;
  d.payload = std::move(s);
  return Command{CommandType::Draw, std::move(d)};
}

Command fillOn(uint32_t surfaceId, int32_t w, int32_t h) {
  Fill f;
  f.brush.type = SPICE_BRUSH_TYPE_SOLID;
  f.brush.color = 0x00336699;
  f.ropDescriptor = SPICE_ROPD_OP_PUT;
  Drawable d;
  d.bbox = Rect{0, 0, h, w};
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.effect = QXL_EFFECT_OPAQUE;
  d.surfaceId = surfaceId;
  d.type = QXL_DRAW_FILL;
  d.payload = std::move(f);
  return Command{CommandType::Draw, std::move(d)};
}

// A primary the device accepts although a driver would never ask for it.
struct OddPrimary {
  const char* what;
  uint32_t width, height;
  int32_t stride;
  uint32_t format;
  uint64_t vramBytes;  // 0: `mem` lies in no slot
};
constexpr OddPrimary ODD_PRIMARIES[] = {
    {"stride INT32_MIN", 64, 64, INT32_MIN, SPICE_SURFACE_FMT_32_xRGB, 64 * 64 * 4},
    {"stride 0x7fffffff", 64, 48, INT32_MAX, SPICE_SURFACE_FMT_32_xRGB, 64 * 48 * 4},
    {"pixels in no slot", 640, 480, -640 * 4, SPICE_SURFACE_FMT_32_xRGB, 0},
    {"the widest", 8192, 4, 8192 * 4, SPICE_SURFACE_FMT_32_xRGB, 8192 * 4 * 4},
    {"the tallest", 1, 8192, 4, SPICE_SURFACE_FMT_32_xRGB, 8192 * 4},
    {"16 bpp", 16, 16, 32, SPICE_SURFACE_FMT_16_565, 16 * 32},
};

}  // namespace

Attacker::Attacker(Driver& driver) : driver_(driver), vmm_(driver.vmm()) {}

Attacker::~Attacker() = default;

// ---------------------------------------------------------------- plumbing

std::byte* Attacker::host(uint64_t addr, size_t size) const {
  const AddressCodec c = codec();
  if (windowBlock_ && c.slotOf(addr) == WINDOW_SLOT) {
    const uint64_t start = c.physOf(windowAddr_), phys = c.physOf(addr);
    if (phys < start || phys - start > ATTACK_WINDOW_BYTES ||
        size > ATTACK_WINDOW_BYTES - (phys - start))
      return nullptr;
    return windowBlock_->host + (phys - start);
  }
  return driver_.allocator().hostAddress(addr, size);
}

AddressCodec Attacker::codec() const {
  return AddressCodec{driver_.slots().slotIdBits, driver_.slots().slotGenBits};
}

GuestPoke::Window Attacker::window() const {
  SB_ASSERT(windowBlock_, "window() before ensureWindow()");
  return Window{windowBlock_->host, windowAddr_, ATTACK_WINDOW_BYTES};
}

template <typename T>
void Attacker::store(size_t offsetInQxlRam, const T& value) {
  std::memcpy(driver_.ramHeader() + offsetInQxlRam, &value, sizeof value);
}

uint8_t Attacker::addSlot(uint8_t id, uint64_t start, uint64_t end) {
  store(offsetof(QXLRam, mem_slot), QXLMemSlot{start, end});
  vmm_.ioWrite(QXL_IO_MEMSLOT_ADD_ASYNC, id, true);
  return std::to_integer<uint8_t>(vmm_.rom()[offsetof(QXLRom, slot_generation)]);
}

void Attacker::ensureScratch() {
  if (scratch_)
    return;
  if (!driver_.perform(GuestAction(scratchSurfaceCreate())))
    throw VmmError("the scratch surface the attacks draw on could not be laid out");
  scratch_ = true;
}

void Attacker::ensureWindow() {
  if (windowBlock_)
    return;
  auto block = driver_.allocator().allocate(Arena::Ram, ATTACK_WINDOW_BYTES);
  if (!block) {
    flush();
    block = driver_.allocator().allocate(Arena::Ram, ATTACK_WINDOW_BYTES);
  }
  if (!block)
    throw VmmError("no room in guest RAM for the attacks' window; raise --ram-size");
  // A slot of its own over exactly this block: its last byte is the slot's last byte.
  const uint64_t phys = codec().physOf(block->guestAddr);
  const uint8_t generation = addSlot(WINDOW_SLOT, phys, phys + ATTACK_WINDOW_BYTES);
  windowBlock_ = *block;
  windowAddr_ = codec().encode(WINDOW_SLOT, generation, phys);
}

void Attacker::flush() {
  vmm_.ioWrite(QXL_IO_FLUSH_SURFACES_ASYNC, 0, true);
  driver_.reclaim();
}

void Attacker::drainIo() {
  // A write the device refuses (its queue full) is answered at once, out of turn; an accepted
  // one only after every write before it. Write until one is accepted.
  for (int tries = 0; tries < 10000; ++tries) {
    driver_.pollInterrupts();
    const uint64_t before = driver_.stats().deviceErrors;
    vmm_.ioWrite(QXL_IO_UPDATE_IRQ, 0, true);
    driver_.pollInterrupts();
    if (driver_.stats().deviceErrors == before)
      return;
    vmm_.pause(std::chrono::milliseconds(1));
  }
  throw VmmError("the device's IO queue never drained after a flood of IO writes");
}

void Attacker::unmet(std::string_view name, std::string_view why) {
  ++stats_.unmet;
  spdlog::error("attack {} not met: {}", name, why);
}

template <typename F>
bool Attacker::expectError(std::string_view name, F&& act) {
  driver_.pollInterrupts();  // an older report must not count for this attack
  const uint64_t before = driver_.stats().deviceErrors;
  act();
  driver_.pollInterrupts();
  if (driver_.stats().deviceErrors > before)
    return true;
  unmet(name, "the device raised no QXL_INTERRUPT_ERROR");
  return false;
}

template <typename F>
bool Attacker::expectNoError(std::string_view name, F&& act) {
  driver_.pollInterrupts();
  const uint64_t before = driver_.stats().deviceErrors;
  act();
  driver_.pollInterrupts();
  if (driver_.stats().deviceErrors == before)
    return true;
  unmet(name, "the device raised QXL_INTERRUPT_ERROR for what it should accept");
  return false;
}

void Attacker::createPrimary(const QXLSurfaceCreate& create) {
  store(offsetof(QXLRam, create_surface), create);
  vmm_.ioWrite(QXL_IO_CREATE_PRIMARY_ASYNC, 0, true);
}

void Attacker::updateArea(uint32_t surfaceId, QXLRect area, bool wait) {
  store(offsetof(QXLRam, update_area), area);
  store(offsetof(QXLRam, update_surface), surfaceId);
  vmm_.ioWrite(wait ? QXL_IO_UPDATE_AREA_ASYNC : QXL_IO_UPDATE_AREA, 0, wait);
}

void Attacker::monitorsConfig(uint64_t addr) {
  store(offsetof(QXLRam, monitors_config), addr);
  vmm_.ioWrite(QXL_IO_MONITORS_CONFIG_ASYNC, 0, true);
}

void Attacker::perform(const Attack& attack) {
  const std::string_view name = attackName(attack);
  ++stats_.attacks;
  ++stats_.byName[std::string(name)];
  spdlog::debug("attack {}", name);
  std::visit([&](const auto& a) { run(a, name); }, attack);
  driver_.reclaim();
}

void Attacker::reset() {
  SB_ASSERT(!racer_.running(), "a race outlived its attack");
  driver_.resetDevice();
  // Gone with the device's state and the driver's old allocator.
  windowBlock_.reset();
  scratch_ = false;
}

// ---------------------------------------------------------------- hostile commands

void Attacker::run(const CommandAttack& attack, std::string_view name) {
  ensureScratch();
  ensureWindow();
  auto prepared = driver_.prepare(attack.base);
  if (!prepared)
    return unmet(name, "its command could not be laid out");
  if (std::byte* moved = corrupt(attack.kind, *prepared->laidOut, *this))
    driver_.moveReleaseInfo(prepared->releaseId, moved);
  const Driver::Prepared one[] = {*prepared};
  if (releasable(attack.kind)) {
    driver_.publishPrepared(one);
    flush();
    // Its own release id back: the device and the renderer are done with it, the window may be
    // used again.
    driver_.waitReleased(prepared->releaseId);
  } else {
    // The device cannot write its release: it counts it (QXL_INTERRUPT_ERROR) and the guest
    // takes its memory back itself once the renderer is done (the flush).
    expectError(name, [&] {
      driver_.publishPrepared(one);
      flush();
    });
    driver_.abandon(prepared->releaseId);
  }
  // A create the renderer refused: nothing will destroy that surface.
  if (const auto* s = std::get_if<SurfaceCmd>(&attack.base.body))
    if (s->type == QXL_SURFACE_CMD_CREATE && s->surfaceId != SCRATCH_SURFACE)
      driver_.forgetSurface(s->surfaceId);
}

// ---------------------------------------------------------------- IO

void Attacker::run(IoAttack attack, std::string_view name) {
  const auto& slots = driver_.slots();
  switch (attack) {
    case IoAttack::UpdateAreaSurfaceOutOfRange:
      expectError(name, [&] { updateArea(5000, rect(0, 0, 1, 1), true); });
      return;
    case IoAttack::UpdateAreaUnordered:
      expectError(name, [&] { updateArea(0, rect(10, 0, 5, 5), true); });
      return;
    case IoAttack::UpdateAreaNegative:
      expectError(name, [&] { updateArea(0, rect(0, -1, 5, 5), true); });
      return;
    case IoAttack::UpdateAreaOutsideTheSurface:
      ensureScratch();
      // Ordered and positive: the device passes it on; the renderer writes nothing back.
      expectNoError(name, [&] { updateArea(SCRATCH_SURFACE, rect(5000, 5000, 6000, 6000), true); });
      return;
    case IoAttack::UpdateAreaChangedWhileRead: {
      // Two bad rectangles, and every byte-wise mix of them is bad too: top is 10 (below bottom
      // 5) or negative, left 0 or negative.
      std::byte* area = driver_.ramHeader() + offsetof(QXLRam, update_area);
      store(offsetof(QXLRam, update_surface), uint32_t{0});
      racer_.start({flipOf(area, rect(10, 0, 5, 5), rect(-1, -1, 5, 5))});
      expectError(name, [&] { vmm_.ioWrite(QXL_IO_UPDATE_AREA_ASYNC, 0, true); });
      stats_.raceRounds += racer_.stop();
      return;
    }
    case IoAttack::CreatePrimaryWhileOneExists:
      if (!driver_.hasPrimary())
        return unmet(name, "no primary to attack");
      expectError(name, [&] { createPrimary(validPrimary(0)); });
      return;
    case IoAttack::MemslotAddOverALiveSlot:
      expectError(name, [&] { addSlot(slots.ramSlot, slots.ramStart, slots.ramEnd); });
      return;
    case IoAttack::MemslotAddSlotIdOutOfRange:
      for (uint8_t id : {uint8_t{0}, uint8_t{8}, uint8_t{255}})
        expectError(name, [&] { addSlot(id, slots.ramStart, slots.ramStart + 4096); });
      return;
    case IoAttack::MemslotAddStartAfterEnd:
      expectError(name, [&] { addSlot(REFUSED_SLOT, slots.ramStart + 8192, slots.ramStart); });
      return;
    case IoAttack::MemslotAddOutsideTheBars:
      // Below every BAR, and across the end of the RAM BAR into whatever follows it.
      expectError(name, [&] { addSlot(REFUSED_SLOT, 0, 4096); });
      expectError(name, [&] {
        const uint64_t ramBarEnd = vmm_.ramPhysStart() + vmm_.ram().size();
        addSlot(REFUSED_SLOT, ramBarEnd - 4096, ramBarEnd + 4096);
      });
      return;
    case IoAttack::MemslotDelNeverAdded:
      expectError(name, [&] { vmm_.ioWrite(QXL_IO_MEMSLOT_DEL, NEVER_ADDED_SLOT, true); });
      return;
    case IoAttack::UnknownIoPorts:
      // Waited on: the device must answer them in their turn although it ignores them.
      expectNoError(name, [&] {
        vmm_.ioWrite(QXL_IO_RANGE_SIZE, 0, true);
        vmm_.ioWrite(200, 7, true);
      });
      return;
    case IoAttack::GuestLogWithoutNul: {
      uint8_t log[sizeof(QXLRam::log_buf)];
      std::memset(log, 0xfe, sizeof log);  // unprintable, and no NUL anywhere
      store(offsetof(QXLRam, log_buf), log);
      expectNoError(name, [&] { vmm_.ioWrite(QXL_IO_LOG, 0, true); });
      return;
    }
    case IoAttack::IoFlood:
      // Writes the VMM does not wait on pile up in the device while each waits for the renderer;
      // beyond 64 the device refuses them (counted, completed at once) instead of queueing more.
      // Each write asks for the whole primary back (milliseconds of the renderer's time), while
      // the device reads 64 writes per wake-up: the second wake-up finds the queue full.
      expectError(name, [&] {
        const QXLRect all = rect(0, 0, static_cast<int32_t>(driver_.primaryHeight()),
                                 static_cast<int32_t>(driver_.primaryWidth()));
        for (int i = 0; i < 128; ++i)
          updateArea(0, all, false);
        vmm_.ioWrite(QXL_IO_UPDATE_IRQ, 0, true);
      });
      drainIo();
      return;
  }
}

// ---------------------------------------------------------------- memslots

void Attacker::run(MemslotAttack attack, std::string_view name) {
  const auto& slots = driver_.slots();
  switch (attack) {
    case MemslotAttack::MemslotChurn: {
      ensureWindow();
      const uint64_t phys = codec().physOf(windowAddr_);
      expectNoError(name, [&] {
        for (int i = 0; i < 32; ++i) {
          addSlot(CHURN_SLOT, phys, phys + ATTACK_WINDOW_BYTES);
          vmm_.ioWrite(QXL_IO_MEMSLOT_DEL, CHURN_SLOT, true);
        }
      });
      return;
    }
    case MemslotAttack::SlotInUseDeletedAndReAdded: {
      ensureScratch();
      // Laid out with the slot's current generation, published once the slot is gone.
      auto prepared = driver_.prepare(fillOn(SCRATCH_SURFACE, 8, 8));
      if (!prepared)
        return unmet(name, "its command could not be laid out");
      // Acted on after every command already on the rings: those were taken with the slot.
      vmm_.ioWrite(QXL_IO_MEMSLOT_DEL, slots.ramSlot, true);
      const Driver::Prepared one[] = {*prepared};
      expectError(name, [&] {
        driver_.publishPrepared(one);
        flush();
      });
      driver_.ramSlotReAdded(addSlot(slots.ramSlot, slots.ramStart, slots.ramEnd));
      driver_.abandon(prepared->releaseId);
      return;
    }
  }
}

// ---------------------------------------------------------------- monitors config

void Attacker::run(MonitorsAttack attack, std::string_view name) {
  ensureWindow();
  // A QXLMonitorsConfig and one QXLHead at the very end of the window's slot.
  auto place = [&](uint16_t count, uint16_t maxAllowed) {
    constexpr size_t BYTES = sizeof(QXLMonitorsConfig) + sizeof(QXLHead);
    const Window w = window();
    QXLMonitorsConfig config{};
    config.count = count;
    config.max_allowed = maxAllowed;
    QXLHead head{};
    head.width = 1024;
    head.height = 768;
    std::byte* at = w.host + w.size - BYTES;
    std::memcpy(at, &config, sizeof config);
    std::memcpy(at + sizeof config, &head, sizeof head);
    return w.addr + w.size - BYTES;
  };
  switch (attack) {
    case MonitorsAttack::CountLargerThanItsData:
      expectNoError(name, [&] { monitorsConfig(place(0xffff, 1)); });
      break;
    case MonitorsAttack::MaxAllowedLargerThanItsData:
      expectNoError(name, [&] { monitorsConfig(place(64, 64)); });
      break;
    case MonitorsAttack::AddressOutsideEverySlot:
      expectNoError(name,
                    [&] { monitorsConfig(codec().encode(200, 0, driver_.slots().ramStart)); });
      break;
    case MonitorsAttack::CountChangedWhileRead: {
      const uint64_t addr = place(1, 1);
      std::byte* count = host(addr + offsetof(QXLMonitorsConfig, count), sizeof(uint16_t));
      racer_.start({flipOf(count, uint16_t{1}, uint16_t{0xffff})});
      expectNoError(name, [&] {
        monitorsConfig(addr);
        flush();
      });
      stats_.raceRounds += racer_.stop();
      break;
    }
  }
  flush();  // whoever reads the config reads it before the window is used again
}

// ---------------------------------------------------------------- resources

void Attacker::run(ResourceAttack, std::string_view name) {
  constexpr uint32_t SIDE = 2048, COUNT = 16, FIRST_ID = SCRATCH_SURFACE + 8;
  // The guest memory every one of them names: the first 16 MiB of VRAM (the primary's and other
  // surfaces' pixels; the renderer never reads a surface's memory unless asked to keep its data,
  // nor writes it unless asked to update it).
  const ArenaMapping& vram = driver_.allocator().mapping(Arena::Vram);
  const uint64_t shared = encodeGuestAddress(vram, vram.physStart);
  expectNoError(name, [&] {
    for (uint32_t i = 0; i < COUNT; ++i) {
      SurfaceCmd create;
      create.surfaceId = FIRST_ID + i;
      create.type = QXL_SURFACE_CMD_CREATE;
      create.format = SPICE_SURFACE_FMT_32_xRGB;
      create.width = create.height = 16;
      create.stride = 64;
      auto prepared = driver_.prepare(Command{CommandType::Surface, create});
      if (!prepared)
        return unmet(name, "a surface create could not be laid out");
      // Laid out small (16 x 16 of our own VRAM), then made large over the shared memory.
      QXLSurfaceCmd q;
      std::byte* at = host(prepared->laidOut->commandAddr, sizeof q);
      std::memcpy(&q, at, sizeof q);
      q.u.surface_create.width = q.u.surface_create.height = SIDE;
      q.u.surface_create.stride = SIDE * 4;
      q.u.surface_create.data = shared;
      std::memcpy(at, &q, sizeof q);
      const Driver::Prepared one[] = {*prepared};
      driver_.publishPrepared(one);
    }
    flush();
    // All destroyed again (those the renderer refused: destroys of unknown surfaces), so that
    // the memory is there for the guest's valid surfaces.
    for (uint32_t i = 0; i < COUNT; ++i) {
      SurfaceCmd destroy;
      destroy.surfaceId = FIRST_ID + i;
      destroy.type = QXL_SURFACE_CMD_DESTROY;
      driver_.perform(GuestAction(Command{CommandType::Surface, destroy}));
    }
    flush();
  });
}

// ---------------------------------------------------------------- time

void Attacker::run(TimeAttack, std::string_view name) {
  if (!driver_.hasPrimary())
    return unmet(name, "there is no primary to stroke");
  // Met once it is back on the release ring: drawn, or (past the deadline twice) quarantined.
  expectNoError(name, [&] {
    driver_.perform(
        GuestAction(strokeTakingSeconds(static_cast<int32_t>(driver_.primaryWidth()),
                                        static_cast<int32_t>(driver_.primaryHeight()))));
    flush();
  });
}

// ---------------------------------------------------------------- races

void Attacker::run(RaceAttack, std::string_view name) {
  ensureScratch();
  // A race is won or lost by timing: a few commands per attack.
  for (int i = 0; i < 4; ++i) {
    auto prepared = driver_.prepare(raceBase());
    if (!prepared)
      return unmet(name, "its command could not be laid out");
    const uint64_t d = prepared->laidOut->commandAddr;
    auto peek = [this](uint64_t addr, auto value) {
      const std::byte* from = host(addr, sizeof value);
      SB_ASSERT(from, "{:#x} is not in the race's own layout", addr);
      std::memcpy(&value, from, sizeof value);
      return value;
    };
    const auto drawable = peek(d, QXLDrawable{});
    const uint64_t image = drawable.u.copy.src_bitmap;
    const uint64_t chunk1 = peek(image, QXLImage{}).bitmap.data;
    const uint64_t chunk2 = peek(chunk1, QXLDataChunk{}).next_chunk;
    const uint64_t clip = drawable.clip.data;
    auto at = [this](uint64_t addr, size_t offset) { return host(addr, offset + 8) + offset; };
    // Each flips between the valid value and one the decoder refuses; every byte-wise mix of the
    // surface ids (1000, 5000, 904, 5096) is the scratch surface or none that exists.
    std::vector<Flip> flips = {
        flipOf(at(d, offsetof(QXLDrawable, surface_id)), uint32_t{SCRATCH_SURFACE}, uint32_t{5000}),
        flipOf(at(d, offsetof(QXLDrawable, bbox) + offsetof(QXLRect, bottom)), int32_t{16},
               int32_t{-5}),
        flipOf(at(d, offsetof(QXLDrawable, type)), uint8_t{QXL_DRAW_COPY}, uint8_t{200}),
        flipOf(at(chunk1, offsetof(QXLDataChunk, next_chunk)), chunk2, chunk1),
        flipOf(at(chunk2, offsetof(QXLDataChunk, data_size)), uint32_t{32}, uint32_t{0xffffffe0}),
        flipOf(at(image, offsetof(QXLImage, bitmap) + offsetof(QXLBitmap, stride)), uint32_t{16},
               uint32_t{0x80000000}),
        flipOf(at(clip, offsetof(QXLClipRects, num_rects)), uint32_t{2}, uint32_t{0x7fffffff}),
    };
    racer_.start(std::move(flips));
    const Driver::Prepared one[] = {*prepared};
    expectNoError(name, [&] {
      driver_.publishPrepared(one);
      flush();
    });
    stats_.raceRounds += racer_.stop();
    // The release info was never touched: it comes back like any command.
    driver_.waitReleased(prepared->releaseId);
  }
}

// ---------------------------------------------------------------- the primary

void Attacker::run(PrimaryAttack, std::string_view name) {
  if (driver_.hasPrimary())
    expectError(name, [&] { createPrimary(validPrimary(0)); });
  // The renderer drops the primary while the device still counts it; a driver then destroys it.
  expectNoError(name, [&] { vmm_.ioWrite(QXL_IO_DESTROY_SURFACE_WAIT, 0, true); });
  if (driver_.hasPrimary())
    driver_.perform(GuestAction(IoEvent{WorkerMessage::DestroyPrimarySurface, std::nullopt}));
  expectError(name, [&] { vmm_.ioWrite(QXL_IO_DESTROY_PRIMARY_ASYNC, 0, true); });

  // Each refused by the device: sizes outside 1..8192, unknown formats, strides below a row.
  const QXLSurfaceCreate good = validPrimary(0);
  std::vector<QXLSurfaceCreate> absurd(9, good);
  absurd[0].width = 0;
  absurd[1].height = 0;
  absurd[2].width = 8193;
  absurd[3].height = UINT32_MAX;
  absurd[4].width = UINT32_MAX;
  absurd[5].format = 0;
  absurd[6].format = 0xdead;
  absurd[7].stride = 0;
  absurd[8].stride = -(64 * 4 - 4);
  for (const QXLSurfaceCreate& c : absurd)
    expectError(name, [&] { createPrimary(c); });
  // The width changing while the device copies it: 0 or above 8192 in every byte-wise mix.
  store(offsetof(QXLRam, create_surface), good);
  racer_.start({flipOf(
      driver_.ramHeader() + offsetof(QXLRam, create_surface) + offsetof(QXLSurfaceCreate, width),
      uint32_t{0}, uint32_t{0xffff0000})});
  expectError(name, [&] { vmm_.ioWrite(QXL_IO_CREATE_PRIMARY_ASYNC, 0, true); });
  stats_.raceRounds += racer_.stop();

  // Accepted by the device, then drawn on, read back and destroyed: strides that reach far
  // outside any slot (the renderer starts them black and writes nothing back), pixels in no
  // slot, the largest dimensions, a depth that needs the 32 bpp shadow.
  for (const OddPrimary& odd : ODD_PRIMARIES) {
    std::optional<GuestBlock> pixels;
    if (odd.vramBytes != 0) {
      pixels = driver_.allocator().allocate(Arena::Vram, odd.vramBytes);
      if (!pixels)
        throw VmmError(fmt::format("no room in VRAM for an odd primary ({})", odd.what));
    }
    QXLSurfaceCreate c = good;
    c.width = odd.width;
    c.height = odd.height;
    c.stride = odd.stride;
    c.format = odd.format;
    c.mem = pixels ? pixels->guestAddr : codec().encode(200, 0, driver_.slots().ramStart);
    expectNoError(name, [&] {
      createPrimary(c);
      driver_.perform(GuestAction(
          fillOn(0, static_cast<int32_t>(odd.width), static_cast<int32_t>(odd.height))));
      updateArea(0, rect(0, 0, static_cast<int32_t>(odd.height), static_cast<int32_t>(odd.width)),
                 true);
      vmm_.ioWrite(QXL_IO_DESTROY_PRIMARY_ASYNC, 0, true);
    });
    if (pixels)
      driver_.allocator().free(*pixels);
  }
}

// ---------------------------------------------------------------- rings

void Attacker::run(RingAttack attack, std::string_view name) {
  auto index = [this](size_t ring, size_t field) {
    return std::atomic_ref<uint32_t>(
        *reinterpret_cast<uint32_t*>(driver_.ramHeader() + ring + field));
  };
  constexpr size_t COMMAND = offsetof(QXLRam, cmd_ring), CURSOR = offsetof(QXLRam, cursor_ring),
                   RELEASE = offsetof(QXLRam, release_ring);
  constexpr size_t PROD = offsetof(QXLCommandRing, prod), CONS = offsetof(QXLCommandRing, cons);
  // Far beyond what any ring holds (32 or 8 entries): the device halts the ring.
  constexpr uint32_t FAR = 0x10000;
  // A quiet device first: with its batches full it would not look at the rings when kicked.
  flush();
  switch (attack) {
    case RingAttack::CommandRingProducerFarAhead:
      driver_.poisonCommandRings();
      index(COMMAND, PROD).fetch_add(FAR);
      expectError(name, [&] { vmm_.ioWrite(QXL_IO_NOTIFY_CMD, 0, true); });
      return;
    case RingAttack::CommandRingProducerMovedBack:
      driver_.poisonCommandRings();
      index(COMMAND, PROD).store(index(COMMAND, CONS).load() - 1);
      expectError(name, [&] { vmm_.ioWrite(QXL_IO_NOTIFY_CMD, 0, true); });
      return;
    case RingAttack::CursorRingProducerFarAhead:
      driver_.poisonCommandRings();
      index(CURSOR, PROD).fetch_add(FAR);
      expectError(name, [&] { vmm_.ioWrite(QXL_IO_NOTIFY_CURSOR, 0, true); });
      return;
    case RingAttack::ReleaseRingConsumerAhead: {
      // A consumer index past what the device produced: its next release would overwrite
      // entries the guest has not read. A command to release makes it look.
      driver_.reclaim();
      driver_.poisonReleaseRing();
      index(RELEASE, CONS).store(index(RELEASE, PROD).load() + FAR);
      auto prepared = driver_.prepare(Command{CommandType::Message, MessageCmd{{'r'}}});
      if (!prepared)
        return unmet(name, "its command could not be laid out");
      const Driver::Prepared one[] = {*prepared};
      expectError(name, [&] {
        driver_.publishPrepared(one);
        flush();
      });
      return;
    }
    case RingAttack::CommandRingProducerChangedWhileRead: {
      driver_.poisonCommandRings();
      const uint32_t prod = index(COMMAND, PROD).load();
      racer_.start({flipOf(driver_.ramHeader() + COMMAND + PROD, prod, prod + FAR)});
      // Kick the device until it reads the bad value; each kick is answered once it looked.
      driver_.pollInterrupts();
      const uint64_t before = driver_.stats().deviceErrors;
      int kick = 0;
      for (; kick < 10000 && driver_.stats().deviceErrors == before; ++kick) {
        vmm_.ioWrite(QXL_IO_NOTIFY_CMD, 0, true);
        driver_.pollInterrupts();
      }
      const uint64_t rounds = racer_.stop();
      stats_.raceRounds += rounds;
      if (driver_.stats().deviceErrors == before)
        unmet(name, fmt::format("the device never read the bad producer index in {} kicks ({} "
                                "rounds of the racer)",
                                kick, rounds));
      return;
    }
  }
}

}  // namespace spicebox::guestsim
