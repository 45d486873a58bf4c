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
  QXLSurfaceCmd surface{};
  surface.surface_id = 3;
  surface.type = QXL_SURFACE_CMD_CREATE;
  surface.u.surface_create.format = SPICE_SURFACE_FMT_32_xRGB;
  surface.u.surface_create.width = 4;
  surface.u.surface_create.height = 4;
  surface.u.surface_create.stride = 16;
  surface.u.surface_create.data = encode(SLOT, GENERATION, RAM_PHYS + 16384);
  std::memcpy(guest.ram.data() + 8192, &surface, sizeof surface);
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

}  // namespace
}  // namespace spicebox::renderer
