// Tests for renderer/worker.h, in process (no sandbox): hostile batches are rejected and
// counted, never read outside guest memory (run under ASan: an out-of-bounds copy fails there).
// Hostile cases are named after the attack.
#include "renderer/worker.h"

#include <capnp/message.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <spice/enums.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace spicebox::renderer {
namespace {

using ipc::render::Bar;
using ipc::render::Batch;
using ipc::render::Ring;

constexpr uint64_t RAM_PHYS = 0x10000000;
constexpr uint64_t VRAM_PHYS = 0x20000000;
constexpr size_t RAM_SIZE = 64 * 1024;
constexpr size_t VRAM_SIZE = 16 * 1024;
constexpr uint8_t SLOT = 1;
constexpr uint8_t GENERATION = 5;

// Guest memory in ordinary heap buffers, exactly as large as announced, so ASan catches any
// read past them.
struct FakeGuest {
  std::vector<std::byte> ram = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram = std::vector<std::byte>(VRAM_SIZE);
  GuestView view() { return GuestView{ram, vram, RAM_PHYS, VRAM_PHYS}; }
};

// The address a guest driver builds (default layout: 8 id bits, 8 generation bits).
uint64_t encode(uint8_t slot, uint8_t generation, uint64_t phys) {
  return (uint64_t{slot} << 56) | (uint64_t{generation} << 48) | phys;
}

struct SlotSpec {
  uint8_t id, generation;
  Bar bar;
  uint64_t start, end;
};

struct CommandSpec {
  Ring ring;
  uint64_t addr;
  uint32_t type;
};

// One batch: optionally a memslots item first, then the commands.
struct BatchBuilder {
  capnp::MallocMessageBuilder message;
  Batch::Reader build(uint64_t seq, const std::vector<SlotSpec>* slots,
                      const std::vector<CommandSpec>& commands) {
    auto batch = message.initRoot<Batch>();
    batch.setSeq(seq);
    auto items = batch.initItems(static_cast<unsigned>(commands.size() + (slots ? 1 : 0)));
    unsigned i = 0;
    if (slots) {
      auto list = items[i++].initMemslots(static_cast<unsigned>(slots->size()));
      for (unsigned s = 0; s < list.size(); ++s) {
        const SlotSpec& spec = (*slots)[s];
        list[s].setId(spec.id);
        list[s].setGeneration(spec.generation);
        list[s].setBar(spec.bar);
        list[s].setMemStart(spec.start);
        list[s].setMemEnd(spec.end);
      }
    }
    for (const CommandSpec& c : commands) {
      auto command = items[i++].initCommand();
      command.setRing(c.ring);
      command.setAddr(c.addr);
      command.setType(c.type);
    }
    return message.getRoot<Batch>().asReader();
  }
};

const std::vector<SlotSpec> RAM_SLOT = {
    {SLOT, GENERATION, Bar::RAM, RAM_PHYS, RAM_PHYS + RAM_SIZE}};

// QXL_SURFACE_CMD_CREATE of surface 3 (4x4 xRGB, stride 16) at RAM offset 8192, its pixels at
// offset 16384.
void writeSurface3Create(FakeGuest& guest) {
  QXLSurfaceCmd surface{};
  surface.surface_id = 3;
  surface.type = QXL_SURFACE_CMD_CREATE;
  surface.u.surface_create.format = SPICE_SURFACE_FMT_32_xRGB;
  surface.u.surface_create.width = 4;
  surface.u.surface_create.height = 4;
  surface.u.surface_create.stride = 16;
  surface.u.surface_create.data = encode(SLOT, GENERATION, RAM_PHYS + 16384);
  std::memcpy(guest.ram.data() + 8192, &surface, sizeof surface);
}

uint32_t run(Worker& worker, const std::vector<SlotSpec>* slots,
             const std::vector<CommandSpec>& commands) {
  BatchBuilder b;
  return worker.runBatch(b.build(1, slots, commands));
}

TEST_CASE("valid commands of every type are decoded, counted and handed to the hook", "[worker]") {
  FakeGuest guest;
  Worker worker;
  std::vector<qxlcmd::Command> seen;
  std::vector<size_t> surfaceBytes;
  worker.setCommandHook(
      [&seen, &surfaceBytes](const qxlcmd::Command& cmd, const CommandContext& context) {
        seen.push_back(cmd);
        surfaceBytes.push_back(context.surfaceMemory.size());
      });
  worker.attach(guest.view());
  // Zeroed memory is a valid NOP drawable, update, empty message and cursor SET without shape;
  // the surface command needs a real create: 4x4 xRGB whose pixels follow it.
  const uint64_t at = encode(SLOT, GENERATION, RAM_PHYS + 4096);
  writeSurface3Create(guest);
  const uint64_t surfaceAt = encode(SLOT, GENERATION, RAM_PHYS + 8192);
  std::vector<CommandSpec> commands = {{Ring::DISPLAY, at, QXL_CMD_DRAW},
                                       {Ring::DISPLAY, at, QXL_CMD_UPDATE},
                                       {Ring::DISPLAY, at, QXL_CMD_MESSAGE},
                                       {Ring::DISPLAY, surfaceAt, QXL_CMD_SURFACE},
                                       {Ring::CURSOR, at, QXL_CMD_CURSOR}};
  CHECK(run(worker, &RAM_SLOT, commands) == 0);
  CHECK(worker.stats().commands == 5);
  CHECK(worker.stats().draws == 1);
  CHECK(worker.stats().cursors == 1);
  CHECK(worker.stats().rejected == 0);
  REQUIRE(seen.size() == 5);
  CHECK(seen[0].type == qxlcmd::CommandType::Draw);
  CHECK(seen[3].type == qxlcmd::CommandType::Surface);
  CHECK(std::get<qxlcmd::SurfaceCmd>(seen[3].body).surfaceId == 3);
  CHECK(surfaceBytes == std::vector<size_t>{0, 0, 0, 64, 0});
  CHECK(seen[4].type == qxlcmd::CommandType::Cursor);
}

TEST_CASE("decode-errors: rejected, counted by kind, never handed to the hook",
          "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  size_t hooked = 0;
  worker.setCommandHook([&hooked](const qxlcmd::Command&, const CommandContext&) { ++hooked; });
  worker.attach(guest.view());
  QXLDrawable draw{};
  draw.type = 200;  // no QXL_DRAW_*
  std::memcpy(guest.ram.data(), &draw, sizeof draw);
  QXLSurfaceCmd surface{};
  surface.surface_id = 5000;  // beyond n_surfaces
  surface.type = QXL_SURFACE_CMD_DESTROY;
  std::memcpy(guest.ram.data() + 4096, &surface, sizeof surface);
  std::vector<CommandSpec> commands = {
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_DRAW},
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_DRAW},
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS + 4096), QXL_CMD_SURFACE},
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS + 8192), QXL_CMD_UPDATE},
  };
  CHECK(run(worker, &RAM_SLOT, commands) == 3);
  CHECK(hooked == 1);
  CHECK(worker.stats().rejected == 3);
  const auto& byKind = worker.stats().rejectedByKind;
  CHECK(byKind[static_cast<size_t>(DecodeErrorKind::UnknownDrawType)] == 2);
  CHECK(byKind[static_cast<size_t>(DecodeErrorKind::SurfaceIdOutOfRange)] == 1);
}

TEST_CASE("commands-before-guest-memory: rejected", "[worker][hostile]") {
  Worker worker;
  CHECK(run(worker, &RAM_SLOT,
            {{Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_UPDATE}}) == 1);
  CHECK(worker.stats().rejected == 1);
}

TEST_CASE("commands-before-memslots: rejected", "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  CHECK(run(worker, nullptr,
            {{Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_UPDATE}}) == 1);
}

TEST_CASE("address-outside-slot: before, after, straddling the end, wrapping",
          "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const uint64_t end = RAM_PHYS + RAM_SIZE;
  std::vector<CommandSpec> commands = {
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS - 8), QXL_CMD_UPDATE},
      {Ring::DISPLAY, encode(SLOT, GENERATION, end), QXL_CMD_UPDATE},
      // The last byte is inside, the structure is not.
      {Ring::DISPLAY, encode(SLOT, GENERATION, end - 1), QXL_CMD_DRAW},
      {Ring::DISPLAY, encode(SLOT, GENERATION, end - sizeof(QXLUpdateCmd) + 1), QXL_CMD_UPDATE},
      // Every physical bit set: addr + size wraps.
      {Ring::DISPLAY, encode(SLOT, GENERATION, (uint64_t{1} << 48) - 1), QXL_CMD_DRAW},
      {Ring::DISPLAY, UINT64_MAX, QXL_CMD_DRAW},
  };
  CHECK(run(worker, &RAM_SLOT, commands) == commands.size());
  CHECK(worker.stats().commands == 0);
  // The exact fit at the end is fine.
  CHECK(run(worker, nullptr,
            {{Ring::DISPLAY, encode(SLOT, GENERATION, end - sizeof(QXLUpdateCmd)),
              QXL_CMD_UPDATE}}) == 0);
}

TEST_CASE("wrong-generation and unknown-slot: rejected", "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  std::vector<CommandSpec> commands = {
      {Ring::DISPLAY, encode(SLOT, GENERATION + 1, RAM_PHYS), QXL_CMD_UPDATE},
      {Ring::DISPLAY, encode(SLOT, 0, RAM_PHYS), QXL_CMD_UPDATE},
      {Ring::DISPLAY, encode(2, GENERATION, RAM_PHYS), QXL_CMD_UPDATE},    // never added
      {Ring::DISPLAY, encode(0, GENERATION, RAM_PHYS), QXL_CMD_UPDATE},    // the device's own
      {Ring::DISPLAY, encode(255, GENERATION, RAM_PHYS), QXL_CMD_UPDATE},  // beyond slots_end
  };
  CHECK(run(worker, &RAM_SLOT, commands) == commands.size());
  const auto& byKind = worker.stats().rejectedByKind;
  CHECK(byKind[static_cast<size_t>(DecodeErrorKind::GenerationMismatch)] == 2);
  CHECK(byKind[static_cast<size_t>(DecodeErrorKind::SlotNotActive)] == 1);
  CHECK(byKind[static_cast<size_t>(DecodeErrorKind::SlotOutOfRange)] == 2);
}

TEST_CASE("unknown-type and wrong-ring: rejected", "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const uint64_t at = encode(SLOT, GENERATION, RAM_PHYS);
  std::vector<CommandSpec> commands = {
      {Ring::DISPLAY, at, QXL_CMD_NOP}, {Ring::DISPLAY, at, 6},
      {Ring::DISPLAY, at, UINT32_MAX},  {Ring::DISPLAY, at, QXL_CMD_CURSOR},
      {Ring::CURSOR, at, QXL_CMD_DRAW}, {Ring::CURSOR, at, QXL_CMD_SURFACE},
  };
  CHECK(run(worker, &RAM_SLOT, commands) == commands.size());
  CHECK(worker.stats().rejected == commands.size());
  CHECK(worker.stats().rejectedByKind[static_cast<size_t>(DecodeErrorKind::UnknownCommandType)] ==
        3);
  CHECK(worker.stats().rejectedByKind[static_cast<size_t>(DecodeErrorKind::WrongRing)] == 3);
}

TEST_CASE("memslots-outside-guest-memory: the replica refuses them, commands rejected",
          "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const std::vector<SlotSpec> bad = {
      {SLOT, GENERATION, Bar::RAM, RAM_PHYS, RAM_PHYS + RAM_SIZE + 4096},  // longer than RAM
      {2, 1, Bar::RAM, VRAM_PHYS, VRAM_PHYS + 4096},                       // names the wrong BAR
      {3, 1, Bar::RAM, 0, UINT64_MAX},                                     // everything
      {200, 1, Bar::RAM, RAM_PHYS, RAM_PHYS + 4096},                       // id out of range
  };
  std::vector<CommandSpec> commands = {
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_UPDATE},
      {Ring::DISPLAY, encode(2, 1, VRAM_PHYS), QXL_CMD_UPDATE},
      {Ring::DISPLAY, encode(3, 1, RAM_PHYS), QXL_CMD_UPDATE},
  };
  CHECK(run(worker, &bad, commands) == commands.size());
  CHECK(worker.stats().badMemslots == bad.size());
}

TEST_CASE("vram slot: commands in VRAM translate into the VRAM mapping", "[worker]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const std::vector<SlotSpec> slots = {{2, 9, Bar::VRAM, VRAM_PHYS, VRAM_PHYS + VRAM_SIZE}};
  CHECK(run(worker, &slots,
            {{Ring::DISPLAY, encode(2, 9, VRAM_PHYS + VRAM_SIZE - sizeof(QXLUpdateCmd)),
              QXL_CMD_UPDATE}}) == 0);
  CHECK(run(worker, nullptr,
            {{Ring::DISPLAY, encode(2, 9, VRAM_PHYS + VRAM_SIZE - 1), QXL_CMD_UPDATE}}) == 1);
}

TEST_CASE("dropped guest memory: slots forgotten, commands rejected", "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const uint64_t at = encode(SLOT, GENERATION, RAM_PHYS);
  CHECK(run(worker, &RAM_SLOT, {{Ring::DISPLAY, at, QXL_CMD_UPDATE}}) == 0);
  worker.detach();
  CHECK_FALSE(worker.hasMemslots());
  CHECK(run(worker, nullptr, {{Ring::DISPLAY, at, QXL_CMD_UPDATE}}) == 1);
  // Re-attached: the old table does not come back until the broker resends it.
  worker.attach(guest.view());
  CHECK(run(worker, nullptr, {{Ring::DISPLAY, at, QXL_CMD_UPDATE}}) == 1);
}

TEST_CASE("oversized-batch: items beyond the bound are dropped, not read", "[worker][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  std::vector<CommandSpec> commands(
      ipc::render::MAX_ITEMS_PER_BATCH + 10,
      {Ring::DISPLAY, encode(SLOT, GENERATION, RAM_PHYS), QXL_CMD_UPDATE});
  CHECK(run(worker, &RAM_SLOT, commands) == 0);
  CHECK(worker.stats().commands == ipc::render::MAX_ITEMS_PER_BATCH - 1);
  CHECK(worker.stats().droppedItems == 11);
}

TEST_CASE("primary create and destroy update the state", "[worker]") {
  Worker worker;
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<Batch>();
  auto items = batch.initItems(3);
  auto p = items[0].initCreatePrimary();
  p.setWidth(1024);
  p.setHeight(768);
  p.setStride(-4096);
  items[1].setDestroyPrimary();
  items[2].initCreatePrimary().setWidth(640);
  CHECK(worker.runBatch(batch.asReader()) == 0);
  REQUIRE(worker.primary());
  CHECK(worker.primary()->width == 640);
}

base::Fd memfd(size_t size) {
  base::Fd fd(::memfd_create("worker-test", MFD_CLOEXEC));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
  return fd;
}

TEST_CASE("guest mapping: shared with the VMM, sizes checked", "[worker]") {
  capnp::MallocMessageBuilder message;
  auto layout = message.initRoot<ipc::render::GuestMemory>();
  layout.setRamSize(RAM_SIZE);
  layout.setVramSize(VRAM_SIZE);
  layout.setRamPhysStart(RAM_PHYS);
  layout.setVramPhysStart(VRAM_PHYS);
  base::Fd ram = memfd(RAM_SIZE);
  const int ramCopy = ::dup(ram.get());
  REQUIRE(ramCopy >= 0);
  base::Fd keep(ramCopy);
  {
    auto mapped = GuestMapping::map(std::move(ram), memfd(VRAM_SIZE), layout.asReader());
    REQUIRE(std::holds_alternative<GuestMapping>(mapped));
    const GuestView& view = std::get<GuestMapping>(mapped).view();
    CHECK(view.ram.size() == RAM_SIZE);
    CHECK(view.vramPhysStart == VRAM_PHYS);
    // A write through the VMM's descriptor is seen in the renderer's mapping.
    const char hello[] = "guest";
    REQUIRE(::pwrite(keep.get(), hello, sizeof hello, 100) == static_cast<ssize_t>(sizeof hello));
    CHECK(std::memcmp(view.ram.data() + 100, hello, sizeof hello) == 0);
  }
  layout.setVramSize(VRAM_SIZE + 1);
  auto refused = GuestMapping::map(memfd(RAM_SIZE), memfd(VRAM_SIZE), layout.asReader());
  REQUIRE(std::holds_alternative<std::string>(refused));
  CHECK_THAT(std::get<std::string>(refused), Catch::Contains("VRAM size"));
  auto noFds = GuestMapping::map(base::Fd(), base::Fd(), layout.asReader());
  CHECK(std::holds_alternative<std::string>(noFds));
}

// ---------------------------------------------------------------- output (issue 4)

// A display segment as the broker makes it: a sealed memfd of `size` bytes (announced:
// `announced`).
struct SegmentSpec {
  uint32_t width = 8, height = 4;
  uint64_t size = 4096, announced = 4096;
  bool sealed = true;
  bool withFd = true;
};

std::optional<std::string> giveSegment(Worker& worker, const SegmentSpec& spec) {
  base::Fd fd;
  if (spec.withFd) {
    fd = base::Fd(::memfd_create("worker-test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(spec.size)) == 0);
    if (spec.sealed)
      REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
  }
  capnp::MallocMessageBuilder message;
  auto s = message.initRoot<ipc::render::DisplaySegment>();
  s.setGeneration(1);
  s.setSize(spec.announced);
  s.setStride(spec.width * 4);
  s.setWidth(spec.width);
  s.setHeight(spec.height);
  return worker.receiveSegment(std::move(fd), s.asReader());
}

using ItemsFn = std::function<void(capnp::List<ipc::render::WorkItem>::Builder)>;

uint32_t runItems(Worker& worker, unsigned count, const ItemsFn& fill) {
  capnp::MallocMessageBuilder message;
  auto batch = message.initRoot<Batch>();
  batch.setSeq(1);
  fill(batch.initItems(count));
  return worker.runBatch(batch.asReader());
}

void setSlots(ipc::render::WorkItem::Builder item, const std::vector<SlotSpec>& slots) {
  auto list = item.initMemslots(static_cast<unsigned>(slots.size()));
  for (unsigned i = 0; i < list.size(); ++i) {
    list[i].setId(slots[i].id);
    list[i].setGeneration(slots[i].generation);
    list[i].setBar(slots[i].bar);
    list[i].setMemStart(slots[i].start);
    list[i].setMemEnd(slots[i].end);
  }
}

void setCommand(ipc::render::WorkItem::Builder item, uint64_t addr, uint32_t type) {
  auto c = item.initCommand();
  c.setRing(Ring::DISPLAY);
  c.setAddr(addr);
  c.setType(type);
}

void setUpdate(ipc::render::WorkItem::Builder item, uint32_t id, int32_t left, int32_t top,
               int32_t right, int32_t bottom) {
  auto u = item.initUpdateArea();
  u.setSurfaceId(id);
  auto a = u.initArea();
  a.setLeft(left);
  a.setTop(top);
  a.setRight(right);
  a.setBottom(bottom);
}

// The primary of these tests: 8x4, 32 bpp, its guest pixels at PRIMARY_PHYS.
constexpr uint32_t PW = 8, PH = 4;
constexpr uint64_t PRIMARY_OFFSET = 32768;
constexpr uint64_t PRIMARY_PHYS = RAM_PHYS + PRIMARY_OFFSET;

uint32_t guestPixel(uint32_t x, uint32_t y) {
  return 0x00100000u * (y + 1) + 0x100u * (x + 1) + 0x11;
}

// The guest's primary as a driver leaves it: row y at PRIMARY_OFFSET + y * stride, or for a
// negative stride (bottom-up) at PRIMARY_OFFSET + (height - 1 - y) * |stride|.
void writeGuestPrimary(FakeGuest& guest, int32_t stride) {
  for (uint32_t y = 0; y < PH; ++y) {
    const uint32_t row = stride < 0 ? PH - 1 - y : y;
    for (uint32_t x = 0; x < PW; ++x) {
      const uint32_t v = guestPixel(x, y);
      std::memcpy(guest.ram.data() + PRIMARY_OFFSET + row * PW * 4 + x * 4, &v, 4);
    }
  }
}

uint32_t guestPrimaryAt(const FakeGuest& guest, int32_t stride, uint32_t x, uint32_t y) {
  const uint32_t row = stride < 0 ? PH - 1 - y : y;
  uint32_t v = 0;
  std::memcpy(&v, guest.ram.data() + PRIMARY_OFFSET + row * PW * 4 + x * 4, 4);
  return v;
}

uint32_t shownAt(const Worker& worker, uint32_t x, uint32_t y) {
  pixman_image_t* img = worker.displayImage();
  REQUIRE(img != nullptr);
  const auto* bits = reinterpret_cast<const uint8_t*>(pixman_image_get_data(img));
  uint32_t v = 0;
  std::memcpy(&v, bits + y * static_cast<size_t>(pixman_image_get_stride(img)) + x * 4, 4);
  return v;
}

void setPrimary(ipc::render::WorkItem::Builder item, int32_t stride, uint32_t w = PW,
                uint32_t h = PH, uint32_t format = SPICE_SURFACE_FMT_32_xRGB) {
  auto p = item.initCreatePrimary();
  p.setWidth(w);
  p.setHeight(h);
  p.setStride(stride);
  p.setFormat(format);
  p.setMem(encode(SLOT, GENERATION, PRIMARY_PHYS));
}

// A QXL_DRAW_FILL (solid, `rop`) or QXL_DRAW_COPY_BITS drawable written into guest RAM at `at`.
uint64_t writeFill(FakeGuest& guest, uint64_t at, uint32_t surface, QXLRect bbox, uint32_t color,
                   uint16_t rop = SPICE_ROPD_OP_PUT) {
  QXLDrawable d{};
  d.surface_id = surface;
  d.type = QXL_DRAW_FILL;
  d.bbox = bbox;
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.u.fill.brush.type = SPICE_BRUSH_TYPE_SOLID;
  d.u.fill.brush.u.color = color;
  d.u.fill.rop_descriptor = rop;
  std::memcpy(guest.ram.data() + at, &d, sizeof d);
  return encode(SLOT, GENERATION, RAM_PHYS + at);
}

uint64_t writeCopyBits(FakeGuest& guest, uint64_t at, QXLRect bbox, int32_t srcX, int32_t srcY) {
  QXLDrawable d{};
  d.surface_id = 0;
  d.type = QXL_COPY_BITS;
  d.bbox = bbox;
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.u.copy_bits.src_pos.x = srcX;
  d.u.copy_bits.src_pos.y = srcY;
  std::memcpy(guest.ram.data() + at, &d, sizeof d);
  return encode(SLOT, GENERATION, RAM_PHYS + at);
}

QXLRect qrect(int32_t left, int32_t top, int32_t right, int32_t bottom) {
  QXLRect r{};
  r.left = left;
  r.top = top;
  r.right = right;
  r.bottom = bottom;
  return r;
}

TEST_CASE("display segment: the primary is drawn into it, starting from the guest's pixels",
          "[worker][output]") {
  for (int32_t stride : {int32_t{PW * 4}, -int32_t{PW * 4}}) {
    INFO("stride " << stride);
    FakeGuest guest;
    writeGuestPrimary(guest, stride);
    Worker worker;
    worker.attach(guest.view());
    REQUIRE_FALSE(giveSegment(worker, {}));
    CHECK(runItems(worker, 2, [stride](auto items) {
            setSlots(items[0], RAM_SLOT);
            setPrimary(items[1], stride);
          }) == 0);
    REQUIRE(worker.displayImage() != nullptr);
    for (uint32_t y = 0; y < PH; ++y)
      for (uint32_t x = 0; x < PW; ++x)
        CHECK(shownAt(worker, x, y) == guestPixel(x, y));
    // A new primary: all of it is damage, nothing else.
    CHECK(worker.lastOutput().damage == std::vector<qxlcmd::Rect>{{0, 0, PH, PW}});
    CHECK(worker.lastOutput().hints.empty());
  }
}

TEST_CASE("display segment: the pixels land in the segment's memory, shared", "[worker][output]") {
  FakeGuest guest;
  writeGuestPrimary(guest, PW * 4);
  Worker worker;
  worker.attach(guest.view());
  base::Fd fd(::memfd_create("worker-test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), 4096) == 0);
  REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  base::Fd viewer(::dup(fd.get()));
  capnp::MallocMessageBuilder message;
  auto s = message.initRoot<ipc::render::DisplaySegment>();
  s.setSize(4096);
  s.setStride(PW * 4);
  s.setWidth(PW);
  s.setHeight(PH);
  REQUIRE_FALSE(worker.receiveSegment(std::move(fd), s.asReader()));
  runItems(worker, 2, [](auto items) {
    setSlots(items[0], RAM_SLOT);
    setPrimary(items[1], PW * 4);
  });
  uint32_t v = 0;
  REQUIRE(::pread(viewer.get(), &v, 4, (2 * PW + 3) * 4) == 4);
  CHECK(v == guestPixel(3, 2));
}

TEST_CASE("primary-without-translatable-mem: starts black, counted", "[worker][output][hostile]") {
  FakeGuest guest;
  writeGuestPrimary(guest, PW * 4);
  Worker worker;
  worker.attach(guest.view());
  REQUIRE_FALSE(giveSegment(worker, {}));
  runItems(worker, 2, [](auto items) {
    setSlots(items[0], RAM_SLOT);
    auto p = items[1].initCreatePrimary();
    p.setWidth(PW);
    p.setHeight(PH);
    p.setStride(PW * 4);
    p.setFormat(SPICE_SURFACE_FMT_32_xRGB);
    p.setMem(encode(SLOT, GENERATION, RAM_PHYS + RAM_SIZE - 16));  // runs past the slot
  });
  REQUIRE(worker.displayImage() != nullptr);
  CHECK(shownAt(worker, 0, 0) == 0u);
  CHECK(worker.stats().initialPixelsMissing == 1);
}

TEST_CASE("primary-of-another-size-than-its-segment: not created", "[worker][output][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  REQUIRE_FALSE(giveSegment(worker, {}));
  runItems(worker, 2, [](auto items) {
    setSlots(items[0], RAM_SLOT);
    setPrimary(items[1], 64, 16, 4);
  });
  CHECK(worker.displayImage() == nullptr);
  CHECK(worker.stats().drawErrors == 1);
  CHECK(worker.lastOutput().damage.empty());
  // Without any segment: the same.
  Worker bare;
  bare.attach(guest.view());
  runItems(bare, 2, [](auto items) {
    setSlots(items[0], RAM_SLOT);
    setPrimary(items[1], PW * 4);
  });
  CHECK(bare.displayImage() == nullptr);
}

TEST_CASE("segment refusals: short, unsealed, missing, oversized", "[worker][output][hostile]") {
  Worker worker;
  SegmentSpec shortSegment;
  shortSegment.size = 0;  // the memfd is empty, 4096 bytes are announced
  auto refusal = giveSegment(worker, shortSegment);
  REQUIRE(refusal);
  CHECK_THAT(*refusal, Catch::Contains("holds 0 bytes, 4096 were announced"));
  SegmentSpec unsealed;
  unsealed.sealed = false;
  refusal = giveSegment(worker, unsealed);
  REQUIRE(refusal);
  CHECK_THAT(*refusal, Catch::Contains("not sealed against shrinking"));
  SegmentSpec missing;
  missing.withFd = false;
  CHECK(giveSegment(worker, missing));
  SegmentSpec huge;
  huge.width = ipc::render::MAX_DISPLAY_DIMENSION + 1;
  refusal = giveSegment(worker, huge);
  REQUIRE(refusal);
  CHECK_THAT(*refusal, Catch::Contains("width and height must be"));
  SegmentSpec tooSmallForPixels;
  tooSmallForPixels.width = 64;
  tooSmallForPixels.height = 64;  // 16 KiB of pixels in 4 KiB
  refusal = giveSegment(worker, tooSmallForPixels);
  REQUIRE(refusal);
  CHECK_THAT(*refusal, Catch::Contains("layout out of range"));
  CHECK(worker.stats().segments == 0);
}

TEST_CASE("update-area: rendered pixels written back into the guest's primary, both strides",
          "[worker][output]") {
  for (int32_t stride : {int32_t{PW * 4}, -int32_t{PW * 4}}) {
    INFO("stride " << stride);
    FakeGuest guest;
    writeGuestPrimary(guest, stride);
    Worker worker;
    worker.attach(guest.view());
    REQUIRE_FALSE(giveSegment(worker, {}));
    const uint64_t fill = writeFill(guest, 4096, 0, qrect(1, 0, 5, 3), 0xabcdef);
    CHECK(runItems(worker, 4, [stride, fill](auto items) {
            setSlots(items[0], RAM_SLOT);
            setPrimary(items[1], stride);
            setCommand(items[2], fill, QXL_CMD_DRAW);
            setUpdate(items[3], 0, 2, 1, 7, 4);  // overlaps the fill partly
          }) == 0);
    CHECK(worker.stats().updateAreaWrites == 1);
    for (uint32_t y = 0; y < PH; ++y) {
      for (uint32_t x = 0; x < PW; ++x) {
        const bool filled = x >= 1 && x < 5 && y < 3;
        INFO("x=" << x << " y=" << y);
        CHECK(shownAt(worker, x, y) == (filled ? 0xabcdefu : guestPixel(x, y)));
        // Only the update area was written back: the fill outside it is not in guest memory.
        const bool written = x >= 2 && x < 7 && y >= 1 && y < 4;
        CHECK(guestPrimaryAt(guest, stride, x, y) ==
              (written && filled ? 0xabcdefu : guestPixel(x, y)));
      }
    }
  }
}

TEST_CASE("update-area: an offscreen surface is written into its create's memory",
          "[worker][output]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  writeSurface3Create(guest);
  const uint64_t create = encode(SLOT, GENERATION, RAM_PHYS + 8192);
  const uint64_t fill = writeFill(guest, 4096, 3, qrect(0, 0, 2, 2), 0x123456);
  CHECK(runItems(worker, 4, [create, fill](auto items) {
          setSlots(items[0], RAM_SLOT);
          setCommand(items[1], create, QXL_CMD_SURFACE);
          setCommand(items[2], fill, QXL_CMD_DRAW);
          setUpdate(items[3], 3, 0, 0, 4, 4);
        }) == 0);
  CHECK(worker.stats().updateAreaWrites == 1);
  auto at = [&guest](uint32_t x, uint32_t y) {
    uint32_t v = 0;
    std::memcpy(&v, guest.ram.data() + 16384 + y * 16 + x * 4, 4);
    return v;
  };
  CHECK(at(0, 0) == 0x123456u);
  CHECK(at(1, 1) == 0x123456u);
  CHECK(at(2, 2) == 0u);
  // Offscreen draws are no output of the primary.
  CHECK(worker.lastOutput().damage.empty());
  CHECK(worker.lastOutput().hints.empty());
}

TEST_CASE("update-area hostile: unknown surface, empty, inverted, outside, memory gone",
          "[worker][output][hostile]") {
  FakeGuest guest;
  writeGuestPrimary(guest, PW * 4);
  Worker worker;
  worker.attach(guest.view());
  REQUIRE_FALSE(giveSegment(worker, {}));
  const uint64_t fill = writeFill(guest, 4096, 0, qrect(0, 0, PW, PH), 0x777777);
  runItems(worker, 9, [fill](auto items) {
    setSlots(items[0], RAM_SLOT);
    setPrimary(items[1], PW * 4);
    setCommand(items[2], fill, QXL_CMD_DRAW);
    setUpdate(items[3], 7, 0, 0, 4, 4);                    // no such surface
    setUpdate(items[4], 5000, 0, 0, 4, 4);                 // id beyond every surface
    setUpdate(items[5], 0, 2, 2, 2, 3);                    // empty
    setUpdate(items[6], 0, 4, 4, 1, 1);                    // inverted
    setUpdate(items[7], 0, INT32_MIN, 10, INT32_MAX, 20);  // below the surface
    setSlots(items[8], {});                                // the slot goes away
  });
  runItems(worker, 1, [](auto items) { setUpdate(items[0], 0, 0, 0, PW, PH); });
  CHECK(worker.stats().updateAreaRefused == 6);
  CHECK(worker.stats().updateAreaWrites == 0);
  for (uint32_t y = 0; y < PH; ++y)
    for (uint32_t x = 0; x < PW; ++x)
      CHECK(guestPrimaryAt(guest, PW * 4, x, y) == guestPixel(x, y));
}

TEST_CASE("batch output: solid fill and copy bits hints, copy bits from damage degrades",
          "[worker][output]") {
  FakeGuest guest;
  writeGuestPrimary(guest, PW * 4);
  Worker worker;
  worker.attach(guest.view());
  REQUIRE_FALSE(giveSegment(worker, {}));
  runItems(worker, 2, [](auto items) {
    setSlots(items[0], RAM_SLOT);
    setPrimary(items[1], PW * 4);
  });
  const uint64_t put = writeFill(guest, 4096, 0, qrect(0, 0, 2, 2), 0x00ff00);
  const uint64_t copyClean = writeCopyBits(guest, 8192, qrect(4, 0, 6, 2), 0, 0);
  const uint64_t xorFill =
      writeFill(guest, 12288, 0, qrect(0, 2, 2, 4), 0xffffff, SPICE_ROPD_OP_XOR);
  const uint64_t copyDamaged = writeCopyBits(guest, 16384, qrect(6, 2, 8, 4), 0, 2);
  CHECK(runItems(worker, 4, [&](auto items) {
          setCommand(items[0], put, QXL_CMD_DRAW);
          setCommand(items[1], copyClean, QXL_CMD_DRAW);
          setCommand(items[2], xorFill, QXL_CMD_DRAW);
          setCommand(items[3], copyDamaged, QXL_CMD_DRAW);
        }) == 0);
  CHECK(worker.stats().drawErrors == 0);
  const PrimaryOutput& out = worker.lastOutput();
  REQUIRE(out.hints.size() == 2);
  REQUIRE(std::holds_alternative<SolidFillHint>(out.hints[0]));
  const auto& fillHint = std::get<SolidFillHint>(out.hints[0]);
  CHECK(fillHint.color == 0x00ff00u);
  CHECK(fillHint.rects == std::vector<qxlcmd::Rect>{{0, 0, 2, 2}});
  REQUIRE(std::holds_alternative<CopyBitsHint>(out.hints[1]));
  CHECK(std::get<CopyBitsHint>(out.hints[1]) == CopyBitsHint{0, 0, qxlcmd::Rect{0, 4, 2, 6}});
  // The XOR fill is damage; the copy whose source it damaged is damage on its destination.
  CHECK(out.damage == std::vector<qxlcmd::Rect>{{2, 0, 4, 2}, {2, 6, 4, 8}});
  CHECK(shownAt(worker, 4, 1) == 0x00ff00u);
  CHECK(shownAt(worker, 6, 3) == (guestPixel(0, 3) ^ 0xffffffu));
}

TEST_CASE("vga mode: a 16 bpp primary is shown as 32 bpp in the segment, written back as 16 bpp",
          "[worker][output]") {
  FakeGuest guest;
  // 8x4 RGB565, stride 16, as a VGA-mode framebuffer: red = x, green = 8y, blue 31 in odd columns.
  auto px16 = [](uint32_t x, uint32_t y) {
    return static_cast<uint16_t>(x << 11 | (8 * y) << 5 | (x % 2 ? 31 : 0));
  };
  // 565 to 888 as pixman widens channels: the high bits repeated into the low ones.
  auto px32 = [](uint16_t v) {
    const uint32_t r = v >> 11, g = (v >> 5) & 63, b = v & 31;
    return (r << 3 | r >> 2) << 16 | (g << 2 | g >> 4) << 8 | (b << 3 | b >> 2);
  };
  for (uint32_t y = 0; y < PH; ++y)
    for (uint32_t x = 0; x < PW; ++x) {
      const uint16_t v = px16(x, y);
      std::memcpy(guest.ram.data() + PRIMARY_OFFSET + y * PW * 2 + x * 2, &v, 2);
    }
  Worker worker;
  worker.attach(guest.view());
  REQUIRE_FALSE(giveSegment(worker, {}));  // 8x4 at 32 bpp: the shadow
  CHECK(runItems(worker, 2, [](auto items) {
          setSlots(items[0], RAM_SLOT);
          setPrimary(items[1], PW * 2, PW, PH, SPICE_SURFACE_FMT_16_565);
        }) == 0);
  for (uint32_t y = 0; y < PH; ++y)
    for (uint32_t x = 0; x < PW; ++x) {
      INFO(x << "," << y);
      CHECK((shownAt(worker, x, y) & 0xffffffu) == px32(px16(x, y)));
    }
  // A fill in the surface's own format (pure red in 565), then UPDATE_AREA of the whole primary:
  // the segment shows it widened, the guest's framebuffer gets the 16 bpp value back.
  const uint64_t fill = writeFill(guest, 4096, 0, qrect(2, 1, 5, 3), 0xf800);
  CHECK(runItems(worker, 2, [fill](auto items) {
          setCommand(items[0], fill, QXL_CMD_DRAW);
          setUpdate(items[1], 0, 0, 0, PW, PH);
        }) == 0);
  CHECK(worker.stats().updateAreaWrites == 1);
  for (uint32_t y = 0; y < PH; ++y)
    for (uint32_t x = 0; x < PW; ++x) {
      INFO(x << "," << y);
      const bool filled = x >= 2 && x < 5 && y >= 1 && y < 3;
      const uint16_t want = filled ? 0xf800 : px16(x, y);
      uint16_t got = 0;
      std::memcpy(&got, guest.ram.data() + PRIMARY_OFFSET + y * PW * 2 + x * 2, 2);
      CHECK(got == want);
      CHECK((shownAt(worker, x, y) & 0xffffffu) == px32(want));
    }
}

// ---------------------------------------------------------------- the pointer (issue 5)

// Cursor commands at RAM offsets 1024 + 256 * i, shapes at 4096 + 1024 * i (their data follows).
uint64_t ramAddr(size_t offset) {
  return encode(SLOT, GENERATION, RAM_PHYS + offset);
}

uint64_t writeCursorCmd(FakeGuest& guest, unsigned i, uint8_t type, int16_t x = 0, int16_t y = 0,
                        uint8_t visible = 1, uint64_t shape = 0) {
  QXLCursorCmd c{};
  c.type = type;
  if (type == QXL_CURSOR_SET) {
    c.u.set.position = {x, y};
    c.u.set.visible = visible;
    c.u.set.shape = shape;
  } else if (type == QXL_CURSOR_MOVE) {
    c.u.position = {x, y};
  }
  const size_t offset = 1024 + 256 * size_t{i};
  REQUIRE(sizeof c <= 256);
  std::memcpy(guest.ram.data() + offset, &c, sizeof c);
  return ramAddr(offset);
}

// A QXLCursor whose data is one chunk.
uint64_t writeCursorShape(FakeGuest& guest, unsigned i, uint16_t type, uint16_t width,
                          uint16_t height, uint16_t hotX, uint16_t hotY,
                          const std::vector<uint8_t>& data) {
  QXLCursor c{};
  c.header.unique = 100 + i;
  c.header.type = type;
  c.header.width = width;
  c.header.height = height;
  c.header.hot_spot_x = hotX;
  c.header.hot_spot_y = hotY;
  c.data_size = static_cast<uint32_t>(data.size());
  c.chunk.data_size = static_cast<uint32_t>(data.size());
  const size_t offset = 4096 + 1024 * size_t{i};
  const size_t dataAt = offsetof(QXLCursor, chunk) + offsetof(QXLDataChunk, data);
  REQUIRE(dataAt + data.size() <= 1024);
  std::memcpy(guest.ram.data() + offset, &c, dataAt);
  if (!data.empty())  // memcpy from an empty vector's null data() is undefined
    std::memcpy(guest.ram.data() + offset + dataAt, data.data(), data.size());
  return ramAddr(offset);
}

// An ALPHA shape's data: the pixels as little-endian ARGB32.
std::vector<uint8_t> alphaData(const std::vector<uint32_t>& pixels) {
  std::vector<uint8_t> out;
  for (uint32_t p : pixels)
    for (int b = 0; b < 4; ++b)
      out.push_back(static_cast<uint8_t>(p >> (8 * b)));
  return out;
}

const std::vector<uint32_t> ARROW = {0x80ff0000u, 0xff00ff00u, 0x00000000u, 0xff0000ffu};

// Cursor-ring commands at `addrs`, after the memslot table when `slots`.
uint32_t runCursor(Worker& worker, const std::vector<uint64_t>& addrs, bool slots = false) {
  std::vector<CommandSpec> commands;
  for (uint64_t a : addrs)
    commands.push_back({Ring::CURSOR, a, QXL_CMD_CURSOR});
  return run(worker, slots ? &RAM_SLOT : nullptr, commands);
}

TEST_CASE("cursor: SET, MOVE and HIDE in separate batches, each reported", "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const uint64_t shape =
      writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 1, 0, alphaData(ARROW));
  const uint64_t set = writeCursorCmd(guest, 0, QXL_CURSOR_SET, 10, 20, 1, shape);
  const uint64_t move = writeCursorCmd(guest, 1, QXL_CURSOR_MOVE, 30, -5);
  const uint64_t hide = writeCursorCmd(guest, 2, QXL_CURSOR_HIDE);

  REQUIRE(runCursor(worker, {set}, true) == 0);
  REQUIRE(worker.cursorChanged());
  const CursorState& c = worker.cursor();
  CHECK(c.visible);
  CHECK(c.x == 10);
  CHECK(c.y == 20);
  CHECK(c.shapeSerial == 1);
  CHECK(c.shape.width == 2);
  CHECK(c.shape.height == 2);
  CHECK(c.shape.hotSpotX == 1);
  CHECK(c.shape.hotSpotY == 0);
  CHECK(c.shape.pixels == ARROW);

  REQUIRE(runCursor(worker, {move}) == 0);
  CHECK(worker.cursorChanged());
  CHECK(c.x == 30);
  CHECK(c.y == -5);
  CHECK(c.visible);
  CHECK(c.shapeSerial == 1);

  REQUIRE(runCursor(worker, {hide}) == 0);
  CHECK(worker.cursorChanged());
  CHECK_FALSE(c.visible);
  CHECK(c.shapeSerial == 1);
  CHECK(c.shape.pixels == ARROW);  // hidden, not forgotten

  // As spice-server does: a move shows a hidden pointer.
  REQUIRE(runCursor(worker, {move}) == 0);
  CHECK(worker.cursorChanged());
  CHECK(c.visible);

  // Nothing changed: a batch without cursor commands, then a move to where the pointer is.
  REQUIRE(runCursor(worker, {}) == 0);
  CHECK_FALSE(worker.cursorChanged());
  REQUIRE(runCursor(worker, {move}) == 0);
  CHECK_FALSE(worker.cursorChanged());
  CHECK(worker.stats().cursorReports == 4);
}

TEST_CASE("cursor: SET, MOVE and HIDE in one batch report the final pointer", "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const uint64_t shape =
      writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 1, alphaData(ARROW));
  REQUIRE(runCursor(worker,
                    {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 1, 2, 1, shape),
                     writeCursorCmd(guest, 1, QXL_CURSOR_MOVE, 7, 8),
                     writeCursorCmd(guest, 2, QXL_CURSOR_HIDE)},
                    true) == 0);
  CHECK(worker.stats().cursors == 3);
  REQUIRE(worker.cursorChanged());
  CHECK_FALSE(worker.cursor().visible);
  CHECK(worker.cursor().x == 7);
  CHECK(worker.cursor().y == 8);
  CHECK(worker.cursor().shapeSerial == 1);
  CHECK(worker.cursor().shape.pixels == ARROW);
  CHECK(worker.stats().cursorReports == 1);
  // A SET without a shape moves and shows the pointer; its shape stays.
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 3, QXL_CURSOR_SET, 3, 4, 1, 0)}) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().visible);
  CHECK(worker.cursor().x == 3);
  CHECK(worker.cursor().shapeSerial == 1);
}

TEST_CASE("cursor: the same shape again keeps its serial, another one gets the next",
          "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const auto a = writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 0, alphaData(ARROW));
  // The same pixels under another `unique`, as guests send them.
  const auto same =
      writeCursorShape(guest, 1, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 0, alphaData(ARROW));
  auto other = ARROW;
  other[3] = 0xffffffffu;
  const auto b = writeCursorShape(guest, 2, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 0, alphaData(other));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 5, 5, 1, a)}, true) == 0);
  CHECK(worker.cursor().shapeSerial == 1);
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 1, QXL_CURSOR_SET, 5, 5, 1, same)}) == 0);
  CHECK_FALSE(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 1);
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 2, QXL_CURSOR_SET, 5, 5, 1, b)}) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 2);
  CHECK(worker.cursor().shape.pixels == other);
  CHECK(worker.stats().cursorShapes == 2);
}

TEST_CASE("cursor: a mono shape becomes ARGB32, its hot spot clamped into it", "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  // 2x1: AND mask 0b10 (pixel 0 transparent), XOR mask 0b01 (pixel 1 white); hot spot far out.
  const auto mono = writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_MONO, 2, 1, 9, 9, {0x80, 0x40});
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 0, 0, 1, mono)}, true) == 0);
  REQUIRE(worker.cursorChanged());
  CHECK(worker.cursor().shape.pixels == std::vector<uint32_t>{0u, 0xffffffffu});
  CHECK(worker.cursor().shape.hotSpotX == 1);
  CHECK(worker.cursor().shape.hotSpotY == 0);
}

TEST_CASE("cursor-shape-too-large: wider or taller than maxCursorDimension keeps the shape",
          "[worker][cursor][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const auto good =
      writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 0, alphaData(ARROW));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 1, 1, 1, good)}, true) == 0);
  REQUIRE(worker.cursor().shapeSerial == 1);
  const uint16_t over = ipc::render::MAX_CURSOR_DIMENSION + 1;
  // Mono keeps the data small: 2 masks of (width + 7) / 8 bytes a row. The decoder takes these
  // (up to 512 a side); the worker does not report them.
  const auto wide = writeCursorShape(guest, 1, SPICE_CURSOR_TYPE_MONO, over, 1, 0, 0,
                                     std::vector<uint8_t>(2 * ((over + 7) / 8), 0xff));
  const auto tall = writeCursorShape(guest, 2, SPICE_CURSOR_TYPE_MONO, 1, over, 0, 0,
                                     std::vector<uint8_t>(2 * over, 0xff));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 1, QXL_CURSOR_SET, 40, 41, 1, wide)}) == 0);
  CHECK(worker.cursorChanged());  // the position is taken
  CHECK(worker.cursor().x == 40);
  CHECK(worker.cursor().shapeSerial == 1);
  CHECK(worker.cursor().shape.width == 2);
  CHECK(worker.cursor().shape.pixels == ARROW);
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 2, QXL_CURSOR_SET, 40, 41, 1, tall)}) == 0);
  CHECK_FALSE(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 1);
  CHECK(worker.stats().cursorShapesRefused == 2);
  // Exactly maxCursorDimension is taken.
  const uint16_t max = ipc::render::MAX_CURSOR_DIMENSION;
  const auto edge = writeCursorShape(guest, 3, SPICE_CURSOR_TYPE_MONO, max, 1, 0, 0,
                                     std::vector<uint8_t>(2 * ((max + 7) / 8), 0));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 3, QXL_CURSOR_SET, 40, 41, 1, edge)}) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 2);
  CHECK(worker.cursor().shape.width == max);
}

TEST_CASE("cursor-shape-empty: no pixels a side is refused, the previous shape stays",
          "[worker][cursor][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const auto empty = writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 0, 4, 0, 0, {});
  const auto none = writeCursorShape(guest, 1, SPICE_CURSOR_TYPE_ALPHA, 0, 0, 0, 0, {});
  // Before any shape: the pointer stays shapeless (serial 0, 0 x 0).
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 2, 3, 1, empty)}, true) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 0);
  CHECK(worker.cursor().shape.width == 0);
  CHECK(worker.cursor().shape.height == 0);
  CHECK(worker.cursor().shape.pixels.empty());
  const auto good =
      writeCursorShape(guest, 2, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 0, 0, alphaData(ARROW));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 1, QXL_CURSOR_SET, 2, 3, 1, good),
                             writeCursorCmd(guest, 2, QXL_CURSOR_SET, 2, 3, 1, none)}) == 0);
  CHECK(worker.cursor().shapeSerial == 1);
  CHECK(worker.cursor().shape.pixels == ARROW);
  CHECK(worker.stats().cursorShapesRefused == 2);
}

TEST_CASE("cursor-shape-beyond-decoder-bound: the SET is rejected whole, nothing changes",
          "[worker][cursor][hostile]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  // Refused on its size, before its data is read.
  const auto huge = writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_MONO, 4096, 1, 0, 0, {});
  CHECK(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 9, 9, 0, huge)}, true) == 1);
  CHECK_FALSE(worker.cursorChanged());
  CHECK(worker.cursor().visible);
  CHECK(worker.cursor().x == 0);
}

TEST_CASE("cursor: reset and destroy-all-surfaces restore the initial pointer, serials not reused",
          "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const auto shape =
      writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 1, 1, alphaData(ARROW));
  const uint64_t set = writeCursorCmd(guest, 0, QXL_CURSOR_SET, 10, 20, 0, shape);
  REQUIRE(runCursor(worker, {set}, true) == 0);
  REQUIRE(worker.cursor().shapeSerial == 1);
  auto checkInitial = [&worker] {
    CHECK(worker.cursorChanged());
    CHECK(worker.cursor().visible);
    CHECK(worker.cursor().x == 0);
    CHECK(worker.cursor().y == 0);
    CHECK(worker.cursor().shapeSerial == 0);
    CHECK(worker.cursor().shape.width == 0);
    CHECK(worker.cursor().shape.pixels.empty());
  };
  // QXL_IO_RESET forgets the slots too: resend them after it.
  REQUIRE(runItems(worker, 1, [](auto items) { items[0].setReset(); }) == 0);
  checkInitial();
  REQUIRE(runCursor(worker, {set}, true) == 0);
  CHECK(worker.cursor().shapeSerial == 2);  // the same shape, but a new serial after the reset
  REQUIRE(runItems(worker, 1, [](auto items) { items[0].setDestroyAllSurfaces(); }) == 0);
  checkInitial();
  // A reset, the slots and a SET in one batch: the SET's pointer.
  REQUIRE(runItems(worker, 3, [set](auto items) {
            items[0].setReset();
            setSlots(items[1], RAM_SLOT);
            auto command = items[2].initCommand();
            command.setRing(Ring::CURSOR);
            command.setAddr(set);
            command.setType(QXL_CMD_CURSOR);
          }) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 3);
  CHECK(worker.cursor().x == 10);
  CHECK_FALSE(worker.cursor().visible);
}

TEST_CASE("cursor: a new guest starts from the initial pointer, reported with its first batch",
          "[worker][cursor]") {
  FakeGuest guest;
  Worker worker;
  worker.attach(guest.view());
  const auto shape =
      writeCursorShape(guest, 0, SPICE_CURSOR_TYPE_ALPHA, 2, 2, 1, 1, alphaData(ARROW));
  REQUIRE(runCursor(worker, {writeCursorCmd(guest, 0, QXL_CURSOR_SET, 10, 20, 1, shape)}, true) ==
          0);
  worker.detach();
  worker.attach(guest.view());
  REQUIRE(runCursor(worker, {}, true) == 0);
  CHECK(worker.cursorChanged());
  CHECK(worker.cursor().shapeSerial == 0);
  CHECK(worker.cursor().x == 0);
  REQUIRE(runCursor(worker, {}) == 0);
  CHECK_FALSE(worker.cursorChanged());
}

}  // namespace
}  // namespace spicebox::renderer
