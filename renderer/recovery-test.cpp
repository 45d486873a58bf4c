// Tests for renderer/recovery.h and recovery-log.h, in process: a renderer that dies anywhere in
// a batch is replaced by one that takes up where it stopped, and the pictures are exactly those
// of a renderer that never died. The stream is guestsim's stress scenario (every draw type,
// offscreen surfaces, XOR and blend ROPs, copies within a surface), laid out in guest memory by
// guestsim's materialiser; the display segment and the recovery area are real sealed memfds, as
// the broker makes them. A "death" is an exception thrown from the command hook right after a
// command was drawn and before it was committed: the worst moment (its pixels are on the
// surface, the progress record still says it is running), and the earlier worker is discarded
// without another word to the area, as a killed process would be.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <capnp/message.h>
#include <spice/enums.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "renderer/recovery-log.h"
#include "renderer/worker.h"
#include "tools/guestsim/materialise.h"
#include "tools/guestsim/scenario.h"

namespace spicebox::renderer {
namespace {

using ipc::render::Bar;
using ipc::render::Batch;
using ipc::render::Ring;

constexpr uint64_t RAM_PHYS = 0x10000000;
constexpr uint64_t VRAM_PHYS = 0x40000000;
constexpr size_t RAM_SIZE = 96u << 20;
constexpr size_t VRAM_SIZE = 32u << 20;
constexpr uint8_t SLOT = 1;
constexpr uint8_t GENERATION = 5;
constexpr uint64_t ARENA = 64ull << 20;

// Slot SLOT covers the RAM BAR, slot SLOT + 1 the VRAM BAR.
uint64_t encode(uint8_t slot, uint64_t phys) {
  return (uint64_t{slot} << 56) | (uint64_t{GENERATION} << 48) | phys;
}

// Guest memory the materialiser lays commands into; nothing is freed (a stream fits).
struct BumpGuest final : guestsim::GuestAllocator {
  std::vector<std::byte> ram = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram = std::vector<std::byte>(VRAM_SIZE);
  size_t ramUsed = 0, vramUsed = 0;

  std::optional<guestsim::GuestBlock> allocate(guestsim::Arena arena, size_t size) override {
    const bool isRam = arena == guestsim::Arena::Ram;
    size_t& used = isRam ? ramUsed : vramUsed;
    const size_t align = isRam ? 8 : 4096;
    const size_t at = (used + align - 1) / align * align;
    if (at + size > (isRam ? RAM_SIZE : VRAM_SIZE))
      return std::nullopt;
    used = at + size;
    guestsim::GuestBlock b;
    b.host = (isRam ? ram.data() : vram.data()) + at;
    b.guestAddr = isRam ? encode(SLOT, RAM_PHYS + at) : encode(SLOT + 1, VRAM_PHYS + at);
    b.arena = arena;
    return b;
  }
  void free(const guestsim::GuestBlock&) override {}
  size_t capacity(guestsim::Arena arena) const override {
    return arena == guestsim::Arena::Ram ? RAM_SIZE : VRAM_SIZE;
  }
  GuestView view() { return GuestView{ram, vram, RAM_PHYS, VRAM_PHYS}; }
};

// One batch's items, as the broker would send them.
struct Item {
  enum class Kind { Memslots, CreatePrimary, Command };
  static Item of(Kind k) {
    Item i;
    i.kind = k;
    return i;
  }
  Kind kind = Kind::Command;
  guestsim::PrimarySurface primary;
  uint64_t primaryMem = 0;
  Ring ring = Ring::DISPLAY;
  uint64_t addr = 0;
  uint32_t type = 0;
};

struct Stream {
  std::vector<std::vector<Item>> batches;
  uint32_t width = 0, height = 0;
  uint64_t commands = 0;
};

// The stress scenario laid out in `guest`: a first batch with the memslot table and the primary,
// then batches of 1 .. 16 commands (seeded sizes).
Stream makeStream(BumpGuest& guest, uint64_t seed, uint64_t count) {
  guestsim::ScenarioOptions options;
  options.seed = seed;
  options.maxCommands = count;
  auto scenario = guestsim::makeScenario("stress", options);
  Stream s;
  s.batches.push_back({Item::of(Item::Kind::Memslots)});
  std::mt19937 sizes(static_cast<unsigned>(seed));
  std::vector<Item> open;
  size_t want = 1 + sizes() % 16;
  uint64_t releaseId = 1;
  while (auto action = scenario->next()) {
    if (const auto* io = std::get_if<guestsim::IoEvent>(&*action)) {
      if (!io->primary)
        continue;
      Item item = Item::of(Item::Kind::CreatePrimary);
      item.primary = *io->primary;
      const uint64_t bytes = uint64_t(std::abs(io->primary->stride)) * io->primary->height;
      auto block = guest.allocate(guestsim::Arena::Vram, bytes);
      REQUIRE(block);
      item.primaryMem = block->guestAddr;
      s.width = io->primary->width;
      s.height = io->primary->height;
      s.batches.front().push_back(item);
      continue;
    }
    auto laid = guestsim::materialise(std::get<guestsim::Command>(*action), releaseId++, guest);
    REQUIRE(std::holds_alternative<guestsim::Materialised>(laid));
    const auto& m = std::get<guestsim::Materialised>(laid);
    Item item;
    item.ring = m.cursorRing ? Ring::CURSOR : Ring::DISPLAY;
    item.addr = m.commandAddr;
    item.type = m.qxlType;
    open.push_back(item);
    ++s.commands;
    if (open.size() >= want) {
      s.batches.push_back(std::move(open));
      open.clear();
      want = 1 + sizes() % 16;
    }
  }
  if (!open.empty())
    s.batches.push_back(std::move(open));
  return s;
}

void fill(ipc::render::WorkItem::Builder out, const Item& item) {
  switch (item.kind) {
    case Item::Kind::Memslots: {
      auto slots = out.initMemslots(2);
      slots[0].setId(SLOT);
      slots[0].setGeneration(GENERATION);
      slots[0].setBar(Bar::RAM);
      slots[0].setMemStart(RAM_PHYS);
      slots[0].setMemEnd(RAM_PHYS + RAM_SIZE);
      slots[1].setId(SLOT + 1);
      slots[1].setGeneration(GENERATION);
      slots[1].setBar(Bar::VRAM);
      slots[1].setMemStart(VRAM_PHYS);
      slots[1].setMemEnd(VRAM_PHYS + VRAM_SIZE);
      break;
    }
    case Item::Kind::CreatePrimary: {
      auto p = out.initCreatePrimary();
      p.setWidth(item.primary.width);
      p.setHeight(item.primary.height);
      p.setStride(item.primary.stride);
      p.setFormat(item.primary.format);
      p.setMem(item.primaryMem);
      break;
    }
    case Item::Kind::Command: {
      auto c = out.initCommand();
      c.setRing(item.ring);
      c.setAddr(item.addr);
      c.setType(item.type);
      break;
    }
  }
}

// A sealed memfd, as the broker makes them.
base::Fd sealedMemfd(const char* name, uint64_t size) {
  base::Fd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
  REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
  return fd;
}

base::Fd dup(const base::Fd& fd) {
  return base::Fd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
}

// What a renderer sees of one VMM link: the guest, a two-buffer segment, the recovery area.
struct Link {
  BumpGuest& guest;
  const Stream& stream;
  uint32_t stride = 0;
  uint64_t buffer = 0;
  base::Fd segment, area;
  const std::byte* pixels = nullptr;  // the segment, mapped read-only

  Link(BumpGuest& g, const Stream& s) : guest(g), stream(s) {
    stride = s.width * 4;
    buffer = (uint64_t{stride} * s.height + 4095) / 4096 * 4096;
    segment = sealedMemfd("test-segment", 2 * buffer);
    area = sealedMemfd("test-recovery", recovery::areaBytes(ARENA));
    void* map = ::mmap(nullptr, 2 * buffer, PROT_READ, MAP_SHARED, segment.get(), 0);
    REQUIRE(map != MAP_FAILED);
    pixels = static_cast<const std::byte*>(map);
  }
  ~Link() { ::munmap(const_cast<std::byte*>(pixels), 2 * buffer); }
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // A renderer's start on this link: guest memory, recovery area, segment (as the broker sends
  // them to every incarnation).
  void connect(Worker& w) {
    w.attach(guest.view());
    REQUIRE_FALSE(w.attachRecovery(dup(area), ARENA));
    capnp::MallocMessageBuilder message;
    auto seg = message.initRoot<ipc::render::DisplaySegment>();
    seg.setGeneration(1);
    seg.setSize(2 * buffer);
    seg.setOffset(0);
    seg.setStride(stride);
    seg.setWidth(stream.width);
    seg.setHeight(stream.height);
    seg.setBackOffset(buffer);
    REQUIRE_FALSE(w.receiveSegment(dup(segment), seg.asReader()));
  }

  // Batch `index`, sent again (`resent`: with the memslot table in front, as the device does).
  void run(Worker& w, size_t index, bool resent, std::vector<uint32_t> quarantine = {}) {
    const auto& items = stream.batches[index];
    capnp::MallocMessageBuilder message;
    auto batch = message.initRoot<Batch>();
    batch.setSeq(index + 1);
    const unsigned prefix = resent ? 1 : 0;
    auto list = batch.initItems(static_cast<unsigned>(items.size() + prefix));
    if (resent)
      fill(list[0], Item::of(Item::Kind::Memslots));
    for (unsigned i = 0; i < items.size(); ++i)
      fill(list[i + prefix], items[i]);
    batch.setPrefix(prefix);
    auto skip = batch.initQuarantine(static_cast<unsigned>(quarantine.size()));
    for (unsigned i = 0; i < quarantine.size(); ++i)
      skip.set(i, quarantine[i]);
    w.runBatch(batch.asReader());
    w.flipIfPresented();  // the broker's outputTaken
  }

  // The picture after the last batch, from the buffer the worker names.
  std::vector<uint32_t> picture(const Worker& w) const {
    std::vector<uint32_t> out(size_t{stream.width} * stream.height);
    const std::byte* base = pixels + (w.buffer() ? buffer : 0);
    for (uint32_t y = 0; y < stream.height; ++y)
      std::memcpy(out.data() + size_t{y} * stream.width, base + size_t{y} * stride,
                  size_t{stream.width} * 4);
    for (uint32_t& p : out)
      p &= 0xffffff;  // the x byte is the guest's (raw-bit fills keep it)
    return out;
  }
};

struct Died {};

// The pictures after each batch of an uninterrupted run, and which commands are unrepeatable.
struct Reference {
  std::vector<std::vector<uint32_t>> pictures;
  std::vector<uint64_t> unrepeatable;  // command numbers (1-based) whose draw reads its destination
};

Reference runUninterrupted(BumpGuest& guest, const Stream& stream) {
  Link link(guest, stream);
  Worker w;
  Reference ref;
  uint64_t n = 0;
  w.setCommandHook([&](const qxlcmd::Command& c, const CommandContext&) {
    ++n;
    if (const auto* d = std::get_if<qxlcmd::Drawable>(&c.body); d && !repeatable(*d))
      ref.unrepeatable.push_back(n);
  });
  link.connect(w);
  for (size_t b = 0; b < stream.batches.size(); ++b) {
    link.run(w, b, false);
    ref.pictures.push_back(link.picture(w));
  }
  return ref;
}

// A renderer dies right after drawing command `dieAfter` (1-based), its successor takes over;
// every picture from the interrupted batch on must equal the reference.
void dieAndTakeOver(BumpGuest& guest, const Stream& stream, const Reference& ref,
                    uint64_t dieAfter) {
  INFO("the renderer dies after command " << dieAfter);
  Link link(guest, stream);
  size_t interrupted = 0;
  {
    Worker first;
    uint64_t n = 0;
    first.setCommandHook([&](const qxlcmd::Command&, const CommandContext&) {
      if (++n == dieAfter)
        throw Died{};
    });
    link.connect(first);
    bool died = false;
    for (size_t b = 0; b < stream.batches.size() && !died; ++b) {
      try {
        link.run(first, b, false);
      } catch (const Died&) {
        died = true;
        interrupted = b;
      }
    }
    REQUIRE(died);
  }  // the first renderer is gone; only the area, the segment and the guest remain
  Worker second;
  link.connect(second);
  for (size_t b = interrupted; b < stream.batches.size(); ++b) {
    link.run(second, b, b == interrupted);
    INFO("batch " << b + 1 << " of " << stream.batches.size()
                  << " (interrupted: " << interrupted + 1 << ")");
    REQUIRE(link.picture(second) == ref.pictures[b]);
  }
  CHECK(second.stats().resumedBatches == 1);
  CHECK(second.stats().adoptionRefused == 0);
}

TEST_CASE("a renderer that dies after any command is replaced without a pixel lost", "[recovery]") {
  BumpGuest guest;
  const Stream stream = makeStream(guest, 7, 300);
  REQUIRE(stream.width > 0);
  const Reference ref = runUninterrupted(guest, stream);
  REQUIRE(ref.unrepeatable.size() >= 20);  // the stream has XOR, ROP3, blends, self-copies
  // Every unrepeatable command (its undo record is what makes the repeat exact), and a spread of
  // the others, the first and the last.
  std::vector<uint64_t> points = ref.unrepeatable;
  for (uint64_t n = 1; n <= stream.commands; n += 17)
    points.push_back(n);
  points.push_back(stream.commands);
  for (uint64_t n : points)
    dieAndTakeOver(guest, stream, ref, n);
}

TEST_CASE("a quarantined item is skipped, and only it", "[recovery]") {
  BumpGuest guest;
  Stream stream = makeStream(guest, 3, 120);
  // The same stream without command 4 of batch 5: what skipping it must give.
  const size_t batch = 5;
  REQUIRE(stream.batches[batch].size() > 4);
  Stream without = stream;
  without.batches[batch].erase(without.batches[batch].begin() + 4);
  const Reference ref = runUninterrupted(guest, without);
  Link link(guest, stream);
  Worker w;
  link.connect(w);
  for (size_t b = 0; b < stream.batches.size(); ++b) {
    link.run(w, b, false, b == batch ? std::vector<uint32_t>{4} : std::vector<uint32_t>{});
    REQUIRE(link.picture(w) == ref.pictures[b]);
  }
  CHECK(w.stats().quarantinedSkipped == 1);
}

TEST_CASE(
    "garbage-recovery-area: an area an earlier renderer filled with junk is adopted as "
    "nothing, without a crash",
    "[recovery][hostile]") {
  BumpGuest guest;
  const Stream stream = makeStream(guest, 5, 60);
  Link link(guest, stream);
  {
    // A compromised renderer's last act: random bytes over the state records.
    void* map = ::mmap(nullptr, recovery::STATE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED,
                       link.area.get(), 0);
    REQUIRE(map != MAP_FAILED);
    std::mt19937_64 rng(11);
    auto* words = static_cast<uint64_t*>(map);
    for (size_t i = 0; i < recovery::STATE_BYTES / 8; ++i)
      words[i] = rng();
    // ...keeping the header valid, so that every record is read and checked.
    auto* state = static_cast<recovery::State*>(map);
    state->magic = recovery::MAGIC;
    state->version = recovery::VERSION;
    state->arenaBytes = ARENA;
    ::munmap(map, recovery::STATE_BYTES);
  }
  Worker w;
  link.connect(w);
  CHECK(w.stats().adoptionRefused > 0);
  // It renders the stream from the start as if nothing had been there.
  const Reference ref = runUninterrupted(guest, stream);
  for (size_t b = 0; b < stream.batches.size(); ++b) {
    link.run(w, b, false);
    REQUIRE(link.picture(w) == ref.pictures[b]);
  }
}

TEST_CASE("the arena hands out disjoint aligned ranges and takes back what is released",
          "[recovery]") {
  recovery::ArenaAllocator a(1 << 20);
  auto x = a.allocate(1000);
  auto y = a.allocate(5000);
  REQUIRE(x);
  REQUIRE(y);
  CHECK(*x % recovery::ARENA_ALIGN == 0);
  CHECK(*y % recovery::ARENA_ALIGN == 0);
  CHECK((*x + 1000 <= *y || *y + 5000 <= *x));
  CHECK_FALSE(a.allocate(2 << 20));
  a.release(*x, 1000);
  a.release(*y, 5000);
  CHECK(a.freeBytes() == 1 << 20);
  // Claims (adoption): only wholly free, aligned, inside ranges.
  CHECK(a.claim(0, 4096));
  CHECK_FALSE(a.claim(0, 64));              // taken
  CHECK_FALSE(a.claim(100, 64));            // not aligned
  CHECK_FALSE(a.claim(1 << 20, 64));        // outside
  CHECK_FALSE(a.claim(4096 * 2, 1 << 20));  // runs past the end
  CHECK(a.claim(4096 * 2, 64));
}

}  // namespace
}  // namespace spicebox::renderer
