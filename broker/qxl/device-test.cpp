// Runs in: tests. Input: BARs mapped from anonymous memory, written by a simulated guest that
// follows spice/ipc_ring.h and the Linux qxl driver when it behaves and lies when it does not;
// a fake DeviceOutput that records what the device asks of the broker.
#include "broker/qxl/device.h"

#include <spice/enums.h>
#include <sys/mman.h>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <vector>

namespace spicebox::qxl {
namespace {

constexpr uint64_t ROM_SIZE = 8192;
constexpr uint64_t RAM_SIZE = 1 << 20;
constexpr uint64_t VRAM_SIZE = 256 * 1024;
constexpr uint64_t RAM_PHYS = 0x10000000;
constexpr uint64_t VRAM_PHYS = 0x20000000;
constexpr uint8_t SLOT = 1;  // the guest's main slot id (QXLRom::slots_start)

// A page-aligned anonymous mapping, as the broker's BAR mappings are.
class Mapping {
 public:
  explicit Mapping(size_t size) : size_(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    data_ = static_cast<std::byte*>(p);
  }
  ~Mapping() { munmap(data_, size_); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  std::span<std::byte> span() { return {data_, size_}; }

 private:
  std::byte* data_;
  size_t size_;
};

struct Event {
  enum Kind { Raise, Complete, Send } kind;
  uint64_t value;  // port for Complete, seq for Send
  bool operator==(const Event&) const = default;
};

class FakeOutput : public DeviceOutput {
 public:
  void raiseInterrupt() override {
    events.push_back({Event::Raise, 0});
    ++raises;
  }
  void completeIo(uint8_t port) override {
    events.push_back({Event::Complete, port});
    completed.push_back(port);
  }
  bool sendBatch(uint64_t seq, std::span<const WorkItem> items) override {
    if (!rendererUp) {
      return false;
    }
    events.push_back({Event::Send, seq});
    sent.push_back({seq, std::vector<WorkItem>(items.begin(), items.end())});
    return true;
  }

  // Every item sent so far, in order.
  std::vector<WorkItem> allItems() const {
    std::vector<WorkItem> all;
    for (const auto& [seq, items] : sent) {
      all.insert(all.end(), items.begin(), items.end());
    }
    return all;
  }
  bool completedBefore(uint8_t port, uint64_t seqSent) const {
    for (const Event& e : events) {
      if (e == Event{Event::Complete, port}) {
        return true;
      }
      if (e == Event{Event::Send, seqSent}) {
        return false;
      }
    }
    return false;
  }

  bool rendererUp = true;
  std::vector<Event> events;
  std::vector<uint8_t> completed;
  std::vector<std::pair<uint64_t, std::vector<WorkItem>>> sent;
  int raises = 0;
};

// The guest: a Linux-driver-like view of the BARs plus a device under test.
class Guest {
 public:
  Guest() : rom_(ROM_SIZE), ram_(RAM_SIZE), vram_(VRAM_SIZE) {
    DeviceBars bars{rom_.span(), ram_.span(), vram_.span(), RAM_PHYS, VRAM_PHYS};
    auto created = Device::create(bars, out);
    REQUIRE(std::holds_alternative<std::unique_ptr<Device>>(created));
    device = std::move(std::get<std::unique_ptr<Device>>(created));
    ram().int_mask = ~0u;  // the driver unmasks every interrupt (QXL_INTERRUPT_MASK)
  }

  QXLRom& rom() { return *reinterpret_cast<QXLRom*>(rom_.span().data()); }
  QXLRam& ram() {
    return *reinterpret_cast<QXLRam*>(ram_.span().data() + device->ramHeaderOffset());
  }
  std::byte* ramBytes() { return ram_.span().data(); }

  // QXL_IO_MEMSLOT_ADD of the whole RAM (below the header) as the Linux driver does; returns the
  // generation from the ROM.
  uint8_t addSlot(uint8_t id, uint64_t start, uint64_t end, bool async = true) {
    ram().mem_slot.mem_start = start;
    ram().mem_slot.mem_end = end;
    device->ioWrite(QXL_IO_MEMSLOT_ADD_ASYNC, id, async);
    finishAll();
    return rom().slot_generation;
  }
  void addMainSlot() { generation = addSlot(SLOT, RAM_PHYS, RAM_PHYS + device->ramHeaderOffset()); }

  // A command object in RAM at `offset` whose QXLReleaseInfo holds `id`; returns its address.
  uint64_t makeCommand(uint64_t offset, uint64_t id) {
    std::memcpy(ramBytes() + offset, &id, sizeof(id));
    offsets[id] = offset;
    return (uint64_t{SLOT} << 56) | (uint64_t{generation} << 48) | (RAM_PHYS + offset);
  }

  // SPICE_RING_PUSH; returns whether the driver would write QXL_IO_NOTIFY_CMD.
  template <typename Ring>
  bool push(Ring& ring, uint64_t addr, uint32_t type = QXL_CMD_DRAW) {
    QXLCommand command{addr, type, 0};
    std::memcpy(&ring.items[ring.prod % QXL_COMMAND_RING_SIZE], &command, sizeof(command));
    ring.prod = ring.prod + 1;
    return ring.prod == ring.notify_on_prod;
  }
  bool pushDraw(uint64_t id) {
    return push(ram().cmd_ring, makeCommand(0x1000 + (id % 2048) * 64, id));
  }

  // The driver's release loop (qxl_garbage_collect): pop each ring id, follow release_info.next.
  std::vector<uint64_t> collectReleases() {
    std::vector<uint64_t> ids;
    QXLReleaseRing& ring = ram().release_ring;
    while (ring.cons != ring.prod) {
      uint64_t id;
      std::memcpy(&id, &ring.items[ring.cons % QXL_RELEASE_RING_SIZE], sizeof(id));
      ring.cons = ring.cons + 1;
      while (id != 0) {
        ids.push_back(id);
        REQUIRE(offsets.count(id) == 1);
        uint64_t next;
        std::memcpy(&next, ramBytes() + offsets[id], sizeof(next));
        id = next;
      }
    }
    return ids;
  }

  // The renderer finishes everything in flight, oldest first.
  void finishAll() {
    for (int i = 0; i < 64 && device->batchesInFlight() > 0; ++i) {
      finishOldest();
    }
  }
  void finishOldest() {
    REQUIRE(device->batchesInFlight() > 0);
    device->batchDone(nextDone++);
  }

  uint32_t takeInterrupts() {
    uint32_t pending = ram().int_pending;
    ram().int_pending = 0;
    return pending;
  }

  FakeOutput out;
  std::unique_ptr<Device> device;
  uint8_t generation = 0;
  uint64_t nextDone = 1;
  std::map<uint64_t, uint64_t> offsets;  // release id -> RAM offset of its QXLReleaseInfo

 private:
  Mapping rom_, ram_, vram_;
};

template <typename T>
std::vector<T> itemsOf(const std::vector<WorkItem>& items) {
  std::vector<T> found;
  for (const WorkItem& item : items) {
    if (auto* t = std::get_if<T>(&item)) {
      found.push_back(*t);
    }
  }
  return found;
}

// ---------------------------------------------------------------- power-on

TEST_CASE("create writes the ROM and the RAM header as a QXL device does", "[device]") {
  Guest guest;
  const QXLRom& rom = guest.rom();
  CHECK(rom.magic == QXL_ROM_MAGIC);
  CHECK(rom.id == 0);
  const uint64_t headerBytes = (sizeof(QXLRam) + 4095) / 4096 * 4096;
  CHECK(rom.ram_header_offset == RAM_SIZE - headerBytes);
  CHECK(guest.device->ramHeaderOffset() == rom.ram_header_offset);
  CHECK(rom.num_pages == rom.ram_header_offset / 4096);
  CHECK(rom.pages_offset == 0);
  CHECK(rom.draw_area_offset == 0);
  CHECK(rom.surface0_area_size == 0);
  CHECK(rom.n_surfaces == 1024);
  CHECK(rom.slots_start == 1);
  CHECK(rom.slots_end == 7);
  CHECK(rom.slot_gen_bits == 8);
  CHECK(rom.slot_id_bits == 8);
  CHECK(rom.slot_generation == 0);

  REQUIRE(rom.modes_offset >= sizeof(QXLRom));
  const auto* modes = reinterpret_cast<const std::byte*>(&rom) + rom.modes_offset;
  uint32_t count;
  std::memcpy(&count, modes, sizeof(count));
  REQUIRE(count >= 2);
  REQUIRE(rom.modes_offset + sizeof(QXLModes) + count * sizeof(QXLMode) <= ROM_SIZE);
  std::set<std::pair<uint32_t, uint32_t>> sizes;
  for (uint32_t i = 0; i < count; ++i) {
    QXLMode mode;
    std::memcpy(&mode, modes + sizeof(QXLModes) + i * sizeof(QXLMode), sizeof(mode));
    CHECK(mode.id == i);
    CHECK(mode.bits == 32);
    CHECK(mode.stride == mode.x_res * 4);
    CHECK(mode.orientation == 0);
    CHECK(mode.x_mili == 0);
    sizes.insert({uint32_t{mode.x_res}, uint32_t{mode.y_res}});
  }
  CHECK(sizes.count({640, 480}) == 1);
  CHECK(sizes.count({1920, 1080}) == 1);

  QXLRam& ram = guest.ram();
  CHECK(ram.magic == QXL_RAM_MAGIC);
  CHECK(ram.int_pending == 0);
  CHECK(ram.cmd_ring.num_items == QXL_COMMAND_RING_SIZE);
  CHECK(ram.cmd_ring.notify_on_prod == 1);
  CHECK(ram.release_ring.num_items == QXL_RELEASE_RING_SIZE);
  CHECK(guest.out.events.empty());
}

TEST_CASE("create refuses BARs it cannot lay out", "[device]") {
  FakeOutput out;
  Mapping rom(ROM_SIZE), ram(RAM_SIZE), vram(VRAM_SIZE);
  auto refused = [&](DeviceBars bars) {
    auto created = Device::create(bars, out);
    REQUIRE(std::holds_alternative<DeviceSetupError>(created));
    CHECK(std::string(describe(std::get<DeviceSetupError>(created))).size() > 10);
    return std::get<DeviceSetupError>(created);
  };
  CHECK(refused({rom.span().first(64), ram.span(), vram.span(), RAM_PHYS, VRAM_PHYS}) ==
        DeviceSetupError::RomTooSmall);
  CHECK(refused({rom.span(), ram.span().first(4096), vram.span(), RAM_PHYS, VRAM_PHYS}) ==
        DeviceSetupError::RamTooSmall);
  CHECK(refused({rom.span(), ram.span(), vram.span(), RAM_PHYS, RAM_PHYS + 4096}) ==
        DeviceSetupError::BadBars);
  CHECK(refused({rom.span(), ram.span(), vram.span(), UINT64_MAX - 4096, VRAM_PHYS}) ==
        DeviceSetupError::BadBars);
}

// ---------------------------------------------------------------- memslots

TEST_CASE("MEMSLOT_ADD publishes the generation and sends the table in order", "[device][io]") {
  Guest guest;
  guest.ram().mem_slot = QXLMemSlot{RAM_PHYS, RAM_PHYS + 0x8000};
  guest.device->ioWrite(QXL_IO_MEMSLOT_ADD_ASYNC, SLOT, true);
  const uint8_t generation = guest.rom().slot_generation;
  CHECK(generation != 0);  // first add takes generation 1
  REQUIRE(guest.out.sent.size() == 1);
  auto slots = itemsOf<MemslotsItem>(guest.out.sent[0].second);
  REQUIRE(slots.size() == 1);
  REQUIRE(slots[0].slots.size() == 1);
  CHECK(slots[0].slots[0] ==
        MemslotEntry{SLOT, generation, BarId::Ram, RAM_PHYS, RAM_PHYS + 0x8000});
  CHECK(guest.out.completed.empty());  // only once the renderer has the table
  guest.takeInterrupts();
  guest.finishAll();
  CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_MEMSLOT_ADD_ASYNC});
  CHECK(guest.takeInterrupts() == QXL_INTERRUPT_IO_CMD);

  SECTION("a VRAM slot is reported in the VRAM BAR, with a fresh generation") {
    const uint8_t vramGen = guest.addSlot(2, VRAM_PHYS, VRAM_PHYS + VRAM_SIZE);
    CHECK(vramGen != generation);
    auto table = itemsOf<MemslotsItem>(guest.out.sent.back().second);
    REQUIRE(table.size() == 1);
    REQUIRE(table[0].slots.size() == 2);
    CHECK(table[0].slots[1].bar == BarId::Vram);
  }
  SECTION("MEMSLOT_DEL removes it from the table") {
    guest.device->ioWrite(QXL_IO_MEMSLOT_DEL, SLOT, true);
    guest.finishAll();
    auto table = itemsOf<MemslotsItem>(guest.out.sent.back().second);
    REQUIRE(table.size() == 1);
    CHECK(table[0].slots.empty());
    CHECK(guest.out.completed.back() == QXL_IO_MEMSLOT_DEL);
    CHECK(guest.device->stats().guestErrors == 0);
  }
}

TEST_CASE("memslot-id-out-of-range and memslot-outside-bars are refused", "[device][io][hostile]") {
  Guest guest;
  struct Bad {
    uint8_t id;
    QXLMemSlot range;
  };
  const Bad bad[] = {
      {0, {RAM_PHYS, RAM_PHYS + 4096}},                // slot 0 is the device's own
      {8, {RAM_PHYS, RAM_PHYS + 4096}},                // slots_end is 7, inclusive
      {255, {RAM_PHYS, RAM_PHYS + 4096}},              //
      {1, {RAM_PHYS, RAM_PHYS + RAM_SIZE + 1}},        // past the end of the RAM BAR
      {1, {RAM_PHYS - 1, RAM_PHYS + 4096}},            // before it
      {1, {RAM_PHYS + 8192, RAM_PHYS + 4096}},         // start after end
      {1, {RAM_PHYS + RAM_SIZE - 8, VRAM_PHYS + 16}},  // straddles two BARs
  };
  for (const Bad& b : bad) {
    const uint64_t errors = guest.device->stats().guestErrors;
    const size_t sent = guest.out.sent.size();
    guest.ram().mem_slot = b.range;
    guest.device->ioWrite(QXL_IO_MEMSLOT_ADD, b.id, true);
    CHECK(guest.device->stats().guestErrors == errors + 1);
    CHECK(guest.takeInterrupts() == QXL_INTERRUPT_ERROR);
    CHECK(guest.rom().slot_generation == 0);
    CHECK(guest.out.sent.size() == sent);                     // no table change for the renderer
    CHECK(guest.out.completed.back() == QXL_IO_MEMSLOT_ADD);  // the VMM never waits forever
  }
  guest.device->ioWrite(QXL_IO_MEMSLOT_DEL, 3, true);  // never added
  CHECK(guest.takeInterrupts() == QXL_INTERRUPT_ERROR);
  CHECK(guest.out.completed.size() == std::size(bad) + 1);
}

// ---------------------------------------------------------------- commands and releases

TEST_CASE("commands go to the renderer in order and come back as release chains", "[device]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.sent.clear();

  // Several laps of the 32-entry ring, in rounds the way a driver fills it.
  std::vector<uint64_t> submitted;
  std::vector<uint64_t> released;
  uint64_t nextId = 1;
  for (int round = 0; round < 12; ++round) {
    const int count = 1 + (round * 7) % QXL_COMMAND_RING_SIZE;
    bool kick = false;
    for (int i = 0; i < count; ++i) {
      submitted.push_back(nextId);
      kick |= guest.pushDraw(nextId++);
    }
    CHECK(kick);  // the device armed notify_on_prod when it drained the ring
    guest.device->doorbell(CommandRingKind::Display);
    guest.finishAll();
    auto ids = guest.collectReleases();
    released.insert(released.end(), ids.begin(), ids.end());
  }
  CHECK(guest.ram().cmd_ring.prod > 5 * QXL_COMMAND_RING_SIZE);

  // Renderer order is guest order.
  std::vector<uint64_t> rendered;
  for (const CommandItem& c : itemsOf<CommandItem>(guest.out.allItems())) {
    CHECK(c.ring == CommandRingKind::Display);
    CHECK(c.type == QXL_CMD_DRAW);
    rendered.push_back(c.addr & ((uint64_t{1} << 48) - 1));
  }
  REQUIRE(rendered.size() == submitted.size());
  for (size_t i = 0; i < submitted.size(); ++i) {
    CHECK(rendered[i] == RAM_PHYS + guest.offsets[submitted[i]]);
  }
  // Every command released exactly once.
  CHECK(released == submitted);
  CHECK(guest.device->stats().released == submitted.size());
  CHECK(guest.device->stats().commands == submitted.size());
  CHECK(guest.device->stats().guestErrors == 0);
  for (const auto& [seq, items] : guest.out.sent) {
    CHECK(items.size() <= MAX_ITEMS_PER_BATCH);
  }
}

TEST_CASE("cursor commands are taken and released like display commands", "[device]") {
  Guest guest;
  guest.addMainSlot();
  guest.push(guest.ram().cursor_ring, guest.makeCommand(0x2000, 77), QXL_CMD_CURSOR);
  guest.device->doorbell(CommandRingKind::Cursor);
  auto cmds = itemsOf<CommandItem>(guest.out.allItems());
  REQUIRE(cmds.size() == 1);
  CHECK(cmds[0].ring == CommandRingKind::Cursor);
  CHECK(guest.device->stats().cursorCommands == 1);
  guest.finishAll();
  CHECK(guest.collectReleases() == std::vector<uint64_t>{77});
}

TEST_CASE("a whole batch is released as one chain on one ring entry", "[device]") {
  Guest guest;
  guest.addMainSlot();
  for (uint64_t id = 1; id <= 5; ++id) {
    guest.pushDraw(id);
  }
  guest.device->doorbell(CommandRingKind::Display);
  guest.takeInterrupts();
  guest.finishAll();
  QXLReleaseRing& ring = guest.ram().release_ring;
  REQUIRE(ring.prod - ring.cons == 1);
  uint64_t head;
  std::memcpy(&head, &ring.items[ring.cons % QXL_RELEASE_RING_SIZE], sizeof(head));
  CHECK(head == 1);
  CHECK(guest.takeInterrupts() & QXL_INTERRUPT_DISPLAY);  // notify_on_prod was armed at 1
  CHECK(guest.collectReleases() == std::vector<uint64_t>{1, 2, 3, 4, 5});
}

TEST_CASE("release-ring-full keeps chains and retryPending pushes them", "[device]") {
  Guest guest;
  guest.addMainSlot();
  // More finished batches than the release ring has entries: one command per batch.
  const uint64_t total = QXL_RELEASE_RING_SIZE + 3;
  for (uint64_t id = 1; id <= total; ++id) {
    guest.pushDraw(id);
    guest.device->doorbell(CommandRingKind::Display);
    guest.finishAll();
  }
  CHECK(guest.device->stats().released == QXL_RELEASE_RING_SIZE);
  CHECK(guest.device->retryPending());  // still waiting for the guest
  auto first = guest.collectReleases();
  CHECK(first.size() == QXL_RELEASE_RING_SIZE);
  CHECK_FALSE(guest.device->retryPending());
  auto rest = guest.collectReleases();
  first.insert(first.end(), rest.begin(), rest.end());
  std::vector<uint64_t> expected;
  for (uint64_t id = 1; id <= total; ++id) {
    expected.push_back(id);
  }
  CHECK(first == expected);
}

TEST_CASE("a full release ring holds back neither commands nor a waited-on IO", "[device]") {
  // A guest blocked in a synchronous IO write cannot drain its release ring: the device must
  // still take the commands the IO waits for, and keep what it cannot push as one chain in guest
  // memory (QEMU's way), not in the broker.
  Guest guest;
  guest.addMainSlot();
  uint64_t id = 1;
  for (size_t i = 0; i < QXL_RELEASE_RING_SIZE + 3 * MAX_BATCHES_IN_FLIGHT; ++i) {
    guest.pushDraw(id++);
    guest.device->doorbell(CommandRingKind::Display);
    guest.finishAll();
  }
  CHECK(guest.device->stats().commands == id - 1);  // every command taken
  CHECK(guest.device->stats().released == QXL_RELEASE_RING_SIZE);
  guest.out.completed.clear();
  guest.pushDraw(id++);
  guest.ram().update_area = QXLRect{0, 0, 10, 20};
  guest.ram().update_surface = 0;
  guest.device->ioWrite(QXL_IO_UPDATE_AREA, 0, true);
  guest.finishAll();
  CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_UPDATE_AREA});
  CHECK(guest.device->stats().commands == id - 1);
  // Once the guest drains its ring, everything comes back in order: the ring's entries, then
  // the one chain that grew while the ring was full.
  auto got = guest.collectReleases();
  CHECK(got.size() == QXL_RELEASE_RING_SIZE);
  CHECK_FALSE(guest.device->retryPending());
  auto rest = guest.collectReleases();
  got.insert(got.end(), rest.begin(), rest.end());
  std::vector<uint64_t> expected;
  for (uint64_t i = 1; i < id; ++i) {
    expected.push_back(i);
  }
  CHECK(got == expected);
}

TEST_CASE("release-info-outside-slot is counted unreleasable", "[device][hostile]") {
  Guest guest;
  guest.addMainSlot();
  guest.takeInterrupts();
  guest.push(guest.ram().cmd_ring, 0xdead000000000000ull);  // no such slot
  guest.pushDraw(9);
  guest.device->doorbell(CommandRingKind::Display);
  guest.finishAll();
  CHECK(guest.device->stats().unreleasable == 1);
  CHECK(guest.takeInterrupts() & QXL_INTERRUPT_ERROR);
  CHECK(guest.collectReleases() == std::vector<uint64_t>{9});
}

TEST_CASE("release translates with the memslot table as it was at pop time", "[device]") {
  Guest guest;
  guest.addMainSlot();
  guest.pushDraw(3);
  guest.device->doorbell(CommandRingKind::Display);
  // The guest deletes the slot while the command is in flight (the renderer still has it).
  guest.device->ioWrite(QXL_IO_MEMSLOT_DEL, SLOT, true);
  guest.finishAll();
  CHECK(guest.device->stats().unreleasable == 0);
  CHECK(guest.collectReleases() == std::vector<uint64_t>{3});
}

// ---------------------------------------------------------------- hostile rings

TEST_CASE("producer-far-ahead halts the ring without looping", "[device][hostile]") {
  Guest guest;
  guest.addMainSlot();
  guest.takeInterrupts();
  guest.pushDraw(1);
  guest.ram().cmd_ring.prod = guest.ram().cmd_ring.prod + 1000000;
  guest.device->doorbell(CommandRingKind::Display);
  CHECK(guest.device->stats().guestErrors == 1);
  CHECK(guest.takeInterrupts() & QXL_INTERRUPT_ERROR);
  CHECK(guest.device->stats().commands == 0);
  // Halted: later doorbells read nothing and report nothing more.
  guest.device->doorbell(CommandRingKind::Display);
  guest.device->ioWrite(QXL_IO_NOTIFY_CMD, 0, false);
  CHECK(guest.device->stats().guestErrors == 1);

  SECTION("RESET brings the ring back") {
    guest.device->ioWrite(QXL_IO_RESET, 0, true);
    guest.finishAll();
    guest.addMainSlot();
    guest.pushDraw(2);
    guest.device->doorbell(CommandRingKind::Display);
    CHECK(guest.device->stats().commands == 1);
  }
}

TEST_CASE("guest-moves-device-consumer-index is ignored", "[device][hostile]") {
  Guest guest;
  guest.addMainSlot();
  guest.pushDraw(1);
  guest.pushDraw(2);
  guest.ram().cmd_ring.cons = 12345;  // the device keeps its own index
  guest.device->doorbell(CommandRingKind::Display);
  CHECK(guest.device->stats().commands == 2);
  CHECK(guest.device->stats().guestErrors == 0);
  CHECK(guest.ram().cmd_ring.cons == 2);
  guest.finishAll();
  CHECK(guest.collectReleases() == std::vector<uint64_t>{1, 2});
}

TEST_CASE("release-consumer-beyond-producer halts releases with an error", "[device][hostile]") {
  Guest guest;
  guest.addMainSlot();
  guest.takeInterrupts();
  guest.ram().release_ring.cons = 1000;  // claims ids we never produced
  guest.pushDraw(1);
  guest.device->doorbell(CommandRingKind::Display);
  guest.finishAll();
  CHECK(guest.device->stats().guestErrors == 1);
  CHECK(guest.takeInterrupts() & QXL_INTERRUPT_ERROR);
  CHECK(guest.device->stats().released == 0);
  CHECK_FALSE(guest.device->retryPending());  // dropped, not retried forever
}

// ---------------------------------------------------------------- ordering and backpressure

TEST_CASE("UPDATE_AREA waits for the commands before it", "[device][io]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.events.clear();
  guest.out.sent.clear();
  guest.out.completed.clear();
  guest.pushDraw(1);
  guest.pushDraw(2);
  // No doorbell: the device must still take them before the update (spice-server's flush).
  guest.ram().update_area = QXLRect{0, 0, 10, 20};
  guest.ram().update_surface = 0;
  guest.device->ioWrite(QXL_IO_UPDATE_AREA, 0, true);
  guest.pushDraw(3);  // after the write: not before the update
  guest.device->doorbell(CommandRingKind::Display);

  auto items = guest.out.allItems();
  REQUIRE(items.size() >= 3);
  CHECK(std::holds_alternative<CommandItem>(items[0]));
  CHECK(std::holds_alternative<CommandItem>(items[1]));
  REQUIRE(std::holds_alternative<UpdateAreaItem>(items[2]));
  CHECK(std::get<UpdateAreaItem>(items[2]) == UpdateAreaItem{0, QXLRect{0, 0, 10, 20}});
  CHECK(guest.out.completed.empty());
  guest.finishOldest();
  CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_UPDATE_AREA});
  guest.finishAll();
  CHECK(itemsOf<CommandItem>(guest.out.allItems()).size() == 3);
}

TEST_CASE("bad UPDATE_AREA is a guest error and completes", "[device][io][hostile]") {
  Guest guest;
  guest.takeInterrupts();
  SECTION("surface id out of range") {
    guest.ram().update_area = QXLRect{0, 0, 1, 1};
    guest.ram().update_surface = 1024;
  }
  SECTION("rectangle upside down") {
    guest.ram().update_area = QXLRect{10, 0, 5, 1};
    guest.ram().update_surface = 0;
  }
  guest.device->ioWrite(QXL_IO_UPDATE_AREA_ASYNC, 0, true);
  CHECK(guest.out.sent.empty());
  CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_UPDATE_AREA_ASYNC});
  CHECK(guest.takeInterrupts() == (QXL_INTERRUPT_ERROR | QXL_INTERRUPT_IO_CMD));
}

TEST_CASE("in-flight limit gives backpressure and IO is still accepted", "[device][backpressure]") {
  Guest guest;
  guest.addMainSlot();
  uint64_t id = 1;
  // Keep the ring full until the device stops taking commands.
  for (int i = 0; i < 40; ++i) {
    while (guest.ram().cmd_ring.prod - guest.ram().cmd_ring.cons < QXL_COMMAND_RING_SIZE) {
      guest.pushDraw(id++);
    }
    guest.device->doorbell(CommandRingKind::Display);
  }
  CHECK(guest.device->batchesInFlight() == MAX_BATCHES_IN_FLIGHT);
  CHECK(guest.ram().cmd_ring.prod - guest.ram().cmd_ring.cons == QXL_COMMAND_RING_SIZE);
  const uint64_t taken = guest.device->stats().commands;
  CHECK(taken <= MAX_BATCHES_IN_FLIGHT * MAX_ITEMS_PER_BATCH);

  // IO is accepted while full, and waits behind the commands already on the ring.
  guest.device->ioWrite(QXL_IO_DESTROY_SURFACE_WAIT, 5, true);
  guest.device->ioWrite(QXL_IO_LOG, 0, true);  // immediate, but completes in order
  CHECK(guest.out.completed.size() == 1);      // the memslot add only
  guest.finishAll();
  guest.finishAll();
  guest.finishAll();
  CHECK(guest.device->batchesInFlight() == 0);
  CHECK(guest.out.completed ==
        std::vector<uint8_t>{QXL_IO_MEMSLOT_ADD_ASYNC, QXL_IO_DESTROY_SURFACE_WAIT, QXL_IO_LOG});
  // Everything that was on the ring when the IO was written came before its item.
  auto items = guest.out.allItems();
  size_t destroyAt = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (std::holds_alternative<DestroySurfaceItem>(items[i])) {
      destroyAt = i;
    }
  }
  CHECK(itemsOf<CommandItem>({items.begin(), items.begin() + destroyAt}).size() ==
        taken + QXL_COMMAND_RING_SIZE);
  CHECK(std::get<DestroySurfaceItem>(items[destroyAt]).surfaceId == 5);
  CHECK(guest.device->stats().commands == id - 1);
}

TEST_CASE("io-flood beyond the pending bound completes at once", "[device][hostile]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.completed.clear();
  for (uint64_t id = 1; id <= 300; ++id) {  // backpressure: nothing can be queued for a while
    guest.pushDraw(id);
    if (id % 32 == 0) {
      guest.device->doorbell(CommandRingKind::Display);
    }
  }
  for (int i = 0; i < 64; ++i) {
    guest.device->ioWrite(QXL_IO_FLUSH_SURFACES_ASYNC, 0, true);
  }
  const uint64_t errors = guest.device->stats().guestErrors;
  guest.device->ioWrite(QXL_IO_FLUSH_SURFACES_ASYNC, 0, true);
  CHECK(guest.device->stats().guestErrors == errors + 1);
  CHECK(guest.out.completed.size() == 1);
  guest.finishAll();
  CHECK(guest.out.completed.size() == 65);
}

TEST_CASE("rendererAvailable re-sends the batches in flight in order", "[device][renderer]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.rendererUp = false;
  for (uint64_t id = 1; id <= 100; ++id) {
    guest.pushDraw(id);
    if (id % 30 == 0) {
      guest.device->doorbell(CommandRingKind::Display);
    }
  }
  guest.device->doorbell(CommandRingKind::Display);
  const size_t inFlight = guest.device->batchesInFlight();
  REQUIRE(inFlight >= 2);
  guest.out.sent.clear();

  SECTION("a renderer that took some and died gets them all again") {
    guest.out.rendererUp = true;
    guest.device->rendererAvailable();
    REQUIRE(guest.out.sent.size() == inFlight);
    guest.out.sent.clear();
    guest.device->rendererAvailable();  // a second restart
    guest.out.sent.clear();
  }
  guest.out.rendererUp = true;
  guest.device->rendererAvailable();
  REQUIRE(guest.out.sent.size() == inFlight);
  for (size_t i = 0; i < inFlight; ++i) {
    CHECK(guest.out.sent[i].first == guest.nextDone + i);
    CHECK(guest.out.sent[i].second.size() <= MAX_ITEMS_PER_BATCH);
  }
  auto first = guest.out.sent[0].second;
  REQUIRE(std::holds_alternative<MemslotsItem>(first[0]));
  CHECK(std::get<MemslotsItem>(first[0]).slots.size() == 1);
  auto cmds = itemsOf<CommandItem>(guest.out.allItems());
  REQUIRE(cmds.size() == 100);
  for (uint64_t id = 1; id <= 100; ++id) {
    CHECK((cmds[id - 1].addr & ((uint64_t{1} << 48) - 1)) == RAM_PHYS + guest.offsets[id]);
  }
  guest.finishAll();
  auto released = guest.collectReleases();
  CHECK(released.size() == 100);
  CHECK(released.front() == 1);
  CHECK(released.back() == 100);
}

TEST_CASE("rendererAvailable with nothing in flight sends the table alone", "[device][renderer]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.sent.clear();
  guest.device->rendererAvailable();
  REQUIRE(guest.out.sent.size() == 1);
  REQUIRE(guest.out.sent[0].second.size() == 1);
  CHECK(std::get<MemslotsItem>(guest.out.sent[0].second[0]).slots.size() == 1);
  guest.finishAll();
  CHECK(guest.device->batchesInFlight() == 0);
}

TEST_CASE("RESET mid-flight: drawn but never released", "[device][io]") {
  Guest guest;
  guest.addMainSlot();
  guest.pushDraw(1);
  guest.device->doorbell(CommandRingKind::Display);
  guest.pushDraw(2);  // on the ring, never taken: the reset discards it
  guest.ram().int_pending = QXL_INTERRUPT_DISPLAY;
  guest.device->ioWrite(QXL_IO_RESET, 0, true);
  CHECK(guest.ram().int_pending == 0);
  CHECK(guest.ram().cmd_ring.prod == 0);
  CHECK(guest.ram().release_ring.prod == 0);
  auto last = guest.out.sent.back().second;
  REQUIRE(last.size() == 2);
  CHECK(std::holds_alternative<ResetItem>(last[0]));
  CHECK(std::get<MemslotsItem>(last[1]).slots.empty());
  CHECK(guest.out.completed.back() == QXL_IO_MEMSLOT_ADD_ASYNC);
  guest.finishOldest();  // the command's batch
  CHECK(guest.out.completed.back() == QXL_IO_MEMSLOT_ADD_ASYNC);
  guest.finishOldest();  // the reset's
  CHECK(guest.out.completed.back() == QXL_IO_RESET);
  CHECK(guest.device->stats().released == 0);
  CHECK(guest.collectReleases().empty());
  CHECK(itemsOf<CommandItem>(guest.out.allItems()).size() == 1);
}

// ---------------------------------------------------------------- surfaces and the other ports

QXLSurfaceCreate primary(uint32_t w, uint32_t h, int32_t stride, uint32_t format) {
  QXLSurfaceCreate c{};
  c.width = w;
  c.height = h;
  c.stride = stride;
  c.format = format;
  c.type = QXL_SURF_TYPE_PRIMARY;
  c.mem = 0x0100000010000000ull;
  return c;
}

TEST_CASE("CREATE_PRIMARY / DESTROY_PRIMARY", "[device][io]") {
  Guest guest;
  guest.takeInterrupts();
  guest.ram().create_surface = primary(1024, 768, -4096, SPICE_SURFACE_FMT_32_xRGB);
  guest.device->ioWrite(QXL_IO_CREATE_PRIMARY_ASYNC, 0, true);
  REQUIRE(guest.out.sent.size() == 1);
  CHECK(std::get<CreatePrimaryItem>(guest.out.sent[0].second[0]) ==
        CreatePrimaryItem{1024, 768, -4096, SPICE_SURFACE_FMT_32_xRGB, 0, 0, 0,
                          QXL_SURF_TYPE_PRIMARY, 0x0100000010000000ull});
  CHECK(guest.out.completed.empty());
  CHECK(guest.takeInterrupts() == 0);
  guest.finishAll();
  CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_CREATE_PRIMARY_ASYNC});
  CHECK(guest.takeInterrupts() == QXL_INTERRUPT_IO_CMD);

  SECTION("a second primary is refused") {
    guest.device->ioWrite(QXL_IO_CREATE_PRIMARY, 0, true);
    CHECK(guest.takeInterrupts() == QXL_INTERRUPT_ERROR);
    CHECK(guest.out.sent.size() == 1);
  }
  SECTION("destroy, then destroy again is refused") {
    guest.device->ioWrite(QXL_IO_DESTROY_PRIMARY, 0, true);
    guest.finishAll();
    CHECK(std::holds_alternative<DestroyPrimaryItem>(guest.out.sent.back().second[0]));
    CHECK(guest.takeInterrupts() == 0);  // sync port: no IO_CMD interrupt
    guest.device->ioWrite(QXL_IO_DESTROY_PRIMARY_ASYNC, 0, true);
    CHECK(guest.takeInterrupts() == (QXL_INTERRUPT_ERROR | QXL_INTERRUPT_IO_CMD));
    CHECK(guest.out.completed.back() == QXL_IO_DESTROY_PRIMARY_ASYNC);
  }
  SECTION("DESTROY_ALL_SURFACES forgets the primary") {
    guest.device->ioWrite(QXL_IO_DESTROY_ALL_SURFACES_ASYNC, 0, true);
    guest.finishAll();
    CHECK(std::holds_alternative<DestroyAllSurfacesItem>(guest.out.sent.back().second[0]));
    guest.device->ioWrite(QXL_IO_CREATE_PRIMARY, 0, true);
    guest.finishAll();
    CHECK(guest.device->stats().guestErrors == 0);
  }
}

TEST_CASE("bad CREATE_PRIMARY parameters are refused", "[device][io][hostile]") {
  Guest guest;
  const QXLSurfaceCreate bad[] = {
      primary(0, 768, 4096, SPICE_SURFACE_FMT_32_xRGB),
      primary(1024, 0, 4096, SPICE_SURFACE_FMT_32_xRGB),
      primary(8193, 768, 8193 * 4, SPICE_SURFACE_FMT_32_xRGB),
      primary(1024, 8193, 4096, SPICE_SURFACE_FMT_32_xRGB),
      primary(1024, 768, 4095, SPICE_SURFACE_FMT_32_xRGB),  // stride-smaller-than-row
      primary(1024, 768, -4095, SPICE_SURFACE_FMT_32_xRGB),
      primary(1024, 768, INT32_MIN, 33),  // unknown format
      primary(1024, 768, 2047, SPICE_SURFACE_FMT_16_565),
      primary(1024, 768, 127, SPICE_SURFACE_FMT_1_A),
  };
  for (const QXLSurfaceCreate& c : bad) {
    guest.takeInterrupts();
    guest.ram().create_surface = c;
    guest.device->ioWrite(QXL_IO_CREATE_PRIMARY, 0, true);
    CHECK(guest.takeInterrupts() == QXL_INTERRUPT_ERROR);
  }
  CHECK(guest.out.sent.empty());
  CHECK(guest.out.completed.size() == std::size(bad));
  CHECK(guest.device->stats().guestErrors == std::size(bad));
  // The edge cases that are fine.
  guest.ram().create_surface = primary(8192, 8192, 1024, SPICE_SURFACE_FMT_1_A);
  guest.device->ioWrite(QXL_IO_CREATE_PRIMARY, 0, true);
  CHECK(guest.out.sent.size() == 1);
}

TEST_CASE("DESTROY_SURFACE_WAIT, MONITORS_CONFIG, FLUSH_SURFACES, NOTIFY_OOM", "[device][io]") {
  Guest guest;
  guest.addMainSlot();
  guest.out.sent.clear();
  guest.out.completed.clear();
  guest.takeInterrupts();

  SECTION("DESTROY_SURFACE_ASYNC") {
    guest.device->ioWrite(QXL_IO_DESTROY_SURFACE_ASYNC, 7, true);
    CHECK(std::get<DestroySurfaceItem>(guest.out.sent.at(0).second.at(0)).surfaceId == 7);
    guest.finishAll();
    CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_DESTROY_SURFACE_ASYNC});
    CHECK(guest.takeInterrupts() == QXL_INTERRUPT_IO_CMD);
  }
  SECTION("MONITORS_CONFIG_ASYNC passes the address on unfollowed") {
    guest.ram().monitors_config = 0x0101000000004000ull;
    guest.device->ioWrite(QXL_IO_MONITORS_CONFIG_ASYNC, 0, true);
    guest.ram().monitors_config = 0;  // changed after the write: the copy counts
    CHECK(std::get<MonitorsConfigItem>(guest.out.sent.at(0).second.at(0)).addr ==
          0x0101000000004000ull);
    guest.finishAll();
    CHECK(guest.takeInterrupts() == QXL_INTERRUPT_IO_CMD);
  }
  SECTION("FLUSH_SURFACES_ASYNC and NOTIFY_OOM wait for every batch and push releases") {
    const uint8_t port = GENERATE(uint8_t{QXL_IO_FLUSH_SURFACES_ASYNC}, uint8_t{QXL_IO_NOTIFY_OOM});
    for (uint64_t id = 1; id <= 10; ++id) {
      guest.pushDraw(id);
    }
    guest.device->ioWrite(port, 0, true);  // no doorbell: the flush takes them
    CHECK(guest.device->stats().commands == 10);
    CHECK(guest.out.completed.empty());
    guest.finishAll();
    CHECK(guest.out.completed == std::vector<uint8_t>{port});
    CHECK(guest.ram().release_ring.prod == 1);  // pushed before the completion
    CHECK(
        guest.takeInterrupts() ==
        (QXL_INTERRUPT_DISPLAY | (port == QXL_IO_FLUSH_SURFACES_ASYNC ? QXL_INTERRUPT_IO_CMD : 0)));
  }
  SECTION("a flush with nothing in flight completes at once") {
    guest.device->ioWrite(QXL_IO_NOTIFY_OOM, 0, true);
    CHECK(guest.out.completed == std::vector<uint8_t>{QXL_IO_NOTIFY_OOM});
    CHECK(guest.out.sent.empty());
  }
}

TEST_CASE("ports without renderer work complete at once", "[device][io]") {
  Guest guest;
  guest.takeInterrupts();
  const int raises = guest.out.raises;
  guest.device->ioWrite(QXL_IO_UPDATE_IRQ, 0, true);
  CHECK(guest.out.raises == raises + 1);
  std::memcpy(guest.ram().log_buf, "hello\x01\x7f guest", 13);
  for (uint8_t port :
       {uint8_t{QXL_IO_LOG}, uint8_t{QXL_IO_SET_MODE}, uint8_t{QXL_IO_ATTACH_PRIMARY},
        uint8_t{QXL_IO_DETACH_PRIMARY}, uint8_t{QXL_IO_FLUSH_RELEASE}, uint8_t{QXL_IO_NOTIFY_CMD},
        uint8_t{QXL_IO_NOTIFY_CURSOR}, uint8_t{QXL_IO_RANGE_SIZE}, uint8_t{200}}) {
    guest.device->ioWrite(port, 0, true);
    CHECK(guest.out.completed.back() == port);
  }
  guest.device->ioWrite(QXL_IO_LOG, 0, false);  // the VMM does not wait: nothing to complete
  CHECK(guest.out.completed.size() == 10);
  CHECK(guest.out.sent.empty());
  CHECK(guest.takeInterrupts() == 0);
  const DeviceStats& stats = guest.device->stats();
  CHECK(stats.ioWrites == 11);
  CHECK(stats.ioByPort[QXL_IO_LOG] == 2);
  CHECK(stats.ioByPort[QXL_IO_SET_MODE] == 1);
  CHECK(stats.guestErrors == 0);
}

TEST_CASE("masked interrupts are pending but not raised", "[device][io]") {
  Guest guest;
  guest.ram().int_mask = 0;
  const int raises = guest.out.raises;
  guest.device->ioWrite(QXL_IO_DESTROY_PRIMARY, 0, true);  // guest error
  CHECK(guest.ram().int_pending == QXL_INTERRUPT_ERROR);
  CHECK(guest.out.raises == raises);
}

TEST_CASE("batchDone for a batch that is not the oldest is ignored", "[device]") {
  Guest guest;
  guest.addMainSlot();
  guest.pushDraw(1);
  guest.device->doorbell(CommandRingKind::Display);
  guest.device->batchDone(99);
  CHECK(guest.device->batchesInFlight() == 1);
  guest.finishAll();
  CHECK(guest.collectReleases() == std::vector<uint64_t>{1});
}

TEST_CASE("a-guest-repeating-one-fault-cannot-hide-another-from-the-log", "[device][hostile]") {
  // Guest errors are logged at the 1st, 2nd, 4th... occurrence of each kind: the first of a
  // new kind is always logged, however many of another came before.
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("device-test", sink));
  Guest guest;
  for (int i = 0; i < 4; ++i)
    guest.device->ioWrite(QXL_IO_DESTROY_PRIMARY, 0, false);  // no primary: a guest error
  guest.device->ioWrite(QXL_IO_MEMSLOT_DEL, 6, false);        // never added: another kind
  spdlog::set_default_logger(previous);
  std::vector<std::string> lines = sink->last_formatted();
  auto count = [&](const std::string& text) {
    return std::count_if(lines.begin(), lines.end(), [&](const std::string& line) {
      return line.find(text) != std::string::npos;
    });
  };
  CHECK(count("QXL_IO_DESTROY_PRIMARY without a primary surface") == 3);  // 1st, 2nd, 4th
  CHECK(count("slot not active (6); QXL_INTERRUPT_ERROR raised (1 of this kind, 5 guest errors") ==
        1);
  CHECK(guest.device->stats().guestErrors == 5);
}

}  // namespace
}  // namespace spicebox::qxl
