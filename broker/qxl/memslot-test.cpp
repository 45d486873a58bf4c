// Runs in: tests. Input: slot ranges and guest addresses as a hostile guest would write them.
#include "broker/qxl/memslot.h"

#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <vector>

namespace spicebox::qxl {
namespace {

constexpr uint64_t U64_MAX = std::numeric_limits<uint64_t>::max();
constexpr uint64_t RAM_START = 0xC000'0000;  // where the guest's PCI BARs sit
constexpr uint64_t RAM_SIZE = 64 << 20;
constexpr uint64_t VRAM_START = 0xC800'0000;
constexpr uint64_t VRAM_SIZE = 16 << 20;
constexpr std::array<BarRange, BAR_COUNT> BARS{{{RAM_START, RAM_SIZE}, {VRAM_START, VRAM_SIZE}}};
constexpr MemslotLayout QEMU_LAYOUT{};  // slots 1..7, 8 id bits, 8 generation bits

MemslotTable makeTable(MemslotLayout layout = QEMU_LAYOUT) {
  auto created = MemslotTable::create(layout, BARS);
  REQUIRE(std::holds_alternative<MemslotTable>(created));
  return std::get<MemslotTable>(std::move(created));
}

uint8_t addSlot(MemslotTable& table, uint64_t id, uint64_t start, uint64_t end) {
  auto added = table.add(id, QXLMemSlot{start, end});
  REQUIRE(std::holds_alternative<uint8_t>(added));
  return std::get<uint8_t>(added);
}

MemslotError addError(MemslotTable& table, uint64_t id, uint64_t start, uint64_t end) {
  auto added = table.add(id, QXLMemSlot{start, end});
  REQUIRE(std::holds_alternative<MemslotError>(added));
  return std::get<MemslotError>(added);
}

MemslotError translateError(const MemslotTable& table, uint64_t addr, uint64_t size) {
  auto translated = table.translate(addr, size);
  REQUIRE(std::holds_alternative<MemslotError>(translated));
  return std::get<MemslotError>(translated);
}

BarOffset translateOk(const MemslotTable& table, uint64_t addr, uint64_t size) {
  auto translated = table.translate(addr, size);
  REQUIRE(std::holds_alternative<BarOffset>(translated));
  return std::get<BarOffset>(translated);
}

// ---- table setup ----

TEST_CASE("layouts that cannot be encoded are refused at create", "[memslot]") {
  auto refused = [](MemslotLayout layout) {
    auto created = MemslotTable::create(layout, BARS);
    return std::holds_alternative<MemslotSetupError>(created) &&
           std::get<MemslotSetupError>(created) == MemslotSetupError::BadLayout;
  };
  CHECK(refused({1, 7, 8, 0}));
  CHECK(refused({1, 7, 0, 8}));
  CHECK(refused({1, 7, 9, 8}));
  CHECK(refused({1, 7, 8, 9}));
  CHECK(refused({5, 4, 8, 8}));
  CHECK(refused({1, 8, 8, 3}));  // id 8 needs 4 bits
  CHECK(std::holds_alternative<MemslotTable>(MemslotTable::create({1, 7, 8, 3}, BARS)));
}

TEST_CASE("a BAR whose end wraps 2^64 is refused at create", "[memslot]") {
  auto created = MemslotTable::create(QEMU_LAYOUT, {{{U64_MAX - 10, 11}, {0, 0}}});
  REQUIRE(std::holds_alternative<MemslotSetupError>(created));
  CHECK(std::get<MemslotSetupError>(created) == MemslotSetupError::BarWraps);
}

// ---- add / translate ----

TEST_CASE("addresses in RAM and VRAM slots translate to offsets in their BAR", "[memslot]") {
  MemslotTable table = makeTable();
  uint8_t ramGen = addSlot(table, 1, RAM_START, RAM_START + RAM_SIZE);
  uint8_t vramGen = addSlot(table, 2, VRAM_START + 4096, VRAM_START + VRAM_SIZE);
  CHECK(ramGen != vramGen);

  CHECK(translateOk(table, table.encode(1, ramGen, RAM_START), 1) == BarOffset{BarId::Ram, 0});
  CHECK(translateOk(table, table.encode(1, ramGen, RAM_START + 0x1234), 16) ==
        BarOffset{BarId::Ram, 0x1234});
  CHECK(translateOk(table, table.encode(2, vramGen, VRAM_START + 8192), 4096) ==
        BarOffset{BarId::Vram, 8192});
  // The whole slot in one range is fine; one more byte is not.
  CHECK(translateOk(table, table.encode(1, ramGen, RAM_START), RAM_SIZE) ==
        BarOffset{BarId::Ram, 0});
  CHECK(translateError(table, table.encode(1, ramGen, RAM_START), RAM_SIZE + 1) ==
        MemslotError::AddressOutsideSlot);
}

TEST_CASE("attack: slot id out of range at add, delete and translate", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  CHECK(addError(table, 0, RAM_START, RAM_START + 4096) == MemslotError::SlotIdOutOfRange);
  // CVE-2019-3813: a `>` where `>=` belonged let the first id past the table through.
  CHECK(addError(table, 8, RAM_START, RAM_START + 4096) == MemslotError::SlotIdOutOfRange);
  CHECK(addError(table, 255, RAM_START, RAM_START + 4096) == MemslotError::SlotIdOutOfRange);
  CHECK(addError(table, 256, RAM_START, RAM_START + 4096) == MemslotError::SlotIdOutOfRange);
  CHECK(addError(table, U64_MAX, RAM_START, RAM_START + 4096) == MemslotError::SlotIdOutOfRange);
  uint8_t gen = addSlot(table, 7, RAM_START, RAM_START + 4096);  // the last usable id

  CHECK(std::get<MemslotError>(table.remove(8)) == MemslotError::SlotIdOutOfRange);
  CHECK(std::get<MemslotError>(table.remove(0)) == MemslotError::SlotIdOutOfRange);

  CHECK(translateError(table, table.encode(8, gen, RAM_START), 1) ==
        MemslotError::SlotIdOutOfRange);
  CHECK(translateError(table, table.encode(0, gen, RAM_START), 1) ==
        MemslotError::SlotIdOutOfRange);
  CHECK(translateError(table, table.encode(255, gen, RAM_START), 1) ==
        MemslotError::SlotIdOutOfRange);
  CHECK(translateOk(table, table.encode(7, gen, RAM_START), 1).offset == 0);
}

TEST_CASE("attack: slot id out of range with fewer id bits", "[memslot][hostile]") {
  MemslotTable table = makeTable({1, 5, 4, 3});
  uint8_t gen = addSlot(table, 5, RAM_START, RAM_START + 4096);
  CHECK(translateOk(table, table.encode(5, gen, RAM_START), 8).offset == 0);
  CHECK(translateError(table, table.encode(6, gen, RAM_START), 8) ==
        MemslotError::SlotIdOutOfRange);
  CHECK(translateError(table, table.encode(7, gen, RAM_START), 8) ==
        MemslotError::SlotIdOutOfRange);
}

TEST_CASE("attack: add over a live slot is refused and the slot keeps working",
          "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + 4096);
  CHECK(addError(table, 1, VRAM_START, VRAM_START + 4096) == MemslotError::SlotAlreadyActive);
  CHECK(translateOk(table, table.encode(1, gen, RAM_START), 1).bar == BarId::Ram);
}

TEST_CASE("attack: slot with start after end is refused", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  CHECK(addError(table, 1, RAM_START + 4096, RAM_START) == MemslotError::StartAfterEnd);
  CHECK(addError(table, 1, U64_MAX, 0) == MemslotError::StartAfterEnd);
}

TEST_CASE("attack: slot outside its BAR is refused at add", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  // Straddles the RAM BAR's end by one byte.
  CHECK(addError(table, 1, RAM_START, RAM_START + RAM_SIZE + 1) == MemslotError::OutsideBars);
  // Starts one byte before the RAM BAR.
  CHECK(addError(table, 1, RAM_START - 1, RAM_START + 4096) == MemslotError::OutsideBars);
  // Spans from the RAM BAR across the gap into the VRAM BAR: a slot must be within one BAR.
  CHECK(addError(table, 1, RAM_START, VRAM_START + 1) == MemslotError::OutsideBars);
  // Nowhere near a BAR; at the top of the address space.
  CHECK(addError(table, 1, 0, 4096) == MemslotError::OutsideBars);
  CHECK(addError(table, 1, U64_MAX - 4096, U64_MAX) == MemslotError::OutsideBars);
  // A BAR that is not present accepts nothing.
  auto created = MemslotTable::create(QEMU_LAYOUT, {{{RAM_START, RAM_SIZE}, {VRAM_START, 0}}});
  REQUIRE(std::holds_alternative<MemslotTable>(created));
  MemslotTable noVram = std::get<MemslotTable>(std::move(created));
  CHECK(addError(noVram, 1, VRAM_START, VRAM_START + 4096) == MemslotError::OutsideBars);
  // Exactly the BAR is fine.
  addSlot(table, 1, VRAM_START, VRAM_START + VRAM_SIZE);
}

TEST_CASE("attack: address one past the slot end", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  const uint64_t start = RAM_START + 0x10000;
  const uint64_t end = start + 0x1000;
  uint8_t gen = addSlot(table, 1, start, end);
  CHECK(translateOk(table, table.encode(1, gen, end - 1), 1).offset == end - 1 - RAM_START);
  CHECK(translateError(table, table.encode(1, gen, end), 1) == MemslotError::AddressOutsideSlot);
  CHECK(translateError(table, table.encode(1, gen, start - 1), 1) ==
        MemslotError::AddressOutsideSlot);
  CHECK(translateError(table, table.encode(1, gen, start - 1), 2) ==
        MemslotError::AddressOutsideSlot);  // ends inside, starts outside
}

TEST_CASE("attack: range straddling the slot end", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  const uint64_t end = RAM_START + 0x1000;
  uint8_t gen = addSlot(table, 1, RAM_START, end);
  CHECK(translateOk(table, table.encode(1, gen, end - 8), 8).offset == 0x1000 - 8);
  CHECK(translateError(table, table.encode(1, gen, end - 8), 9) ==
        MemslotError::AddressOutsideSlot);
  CHECK(translateError(table, table.encode(1, gen, RAM_START), 0x2000) ==
        MemslotError::AddressOutsideSlot);
}

TEST_CASE("attack: size that wraps addr + size past 2^64", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + RAM_SIZE);
  const uint64_t addr = table.encode(1, gen, RAM_START + 0x100);
  CHECK(translateError(table, addr, U64_MAX) == MemslotError::AddressOutsideSlot);
  // addr + size == 0 (mod 2^64) and the physical part + size == 0 (mod 2^48): both would pass a
  // naive "addr + size <= end" check.
  CHECK(translateError(table, addr, 0 - addr) == MemslotError::AddressOutsideSlot);
  CHECK(translateError(table, addr, (uint64_t{1} << 48) - (RAM_START + 0x100)) ==
        MemslotError::AddressOutsideSlot);
}

TEST_CASE("zero-size ranges are refused", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + 4096);
  CHECK(translateError(table, table.encode(1, gen, RAM_START), 0) == MemslotError::ZeroSize);
  CHECK(translateError(table, table.encode(1, gen, RAM_START + 4096), 0) == MemslotError::ZeroSize);
}

TEST_CASE("an empty slot (start == end) translates nothing", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START);
  CHECK(translateError(table, table.encode(1, gen, RAM_START), 1) ==
        MemslotError::AddressOutsideSlot);
}

TEST_CASE("attack: address with the wrong generation", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + 4096);
  CHECK(translateError(table, table.encode(1, static_cast<uint8_t>(gen + 1), RAM_START), 1) ==
        MemslotError::GenerationMismatch);
  CHECK(translateError(table, table.encode(1, static_cast<uint8_t>(gen - 1), RAM_START), 1) ==
        MemslotError::GenerationMismatch);
  CHECK(translateError(table, table.encode(1, 0xFF, RAM_START), 1) ==
        MemslotError::GenerationMismatch);
}

TEST_CASE("generations stay inside slot_gen_bits and wrap", "[memslot]") {
  MemslotTable table = makeTable({1, 7, 2, 8});  // four generations
  std::vector<int> seen;
  for (int i = 0; i < 6; ++i) {
    uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + 4096);
    seen.push_back(gen);
    CHECK(translateOk(table, table.encode(1, gen, RAM_START), 1).offset == 0);
    REQUIRE(std::holds_alternative<std::monostate>(table.remove(1)));
  }
  CHECK(seen == std::vector<int>{1, 2, 3, 0, 1, 2});
}

TEST_CASE("attack: address into a deleted slot", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t gen = addSlot(table, 1, RAM_START, RAM_START + 4096);
  REQUIRE(std::holds_alternative<std::monostate>(table.remove(1)));
  CHECK(translateError(table, table.encode(1, gen, RAM_START), 1) == MemslotError::SlotNotActive);
  CHECK(std::get<MemslotError>(table.remove(1)) == MemslotError::SlotNotActive);
  CHECK(translateError(table, table.encode(3, 0, RAM_START), 1) == MemslotError::SlotNotActive);
}

TEST_CASE("attack: stale address after the slot is re-added elsewhere", "[memslot][hostile]") {
  MemslotTable table = makeTable();
  uint8_t oldGen = addSlot(table, 1, RAM_START, RAM_START + RAM_SIZE);
  const uint64_t stale = table.encode(1, oldGen, RAM_START + 0x100);
  REQUIRE(std::holds_alternative<std::monostate>(table.remove(1)));
  uint8_t newGen = addSlot(table, 1, RAM_START, RAM_START + RAM_SIZE);
  CHECK(newGen != oldGen);
  CHECK(translateError(table, stale, 1) == MemslotError::GenerationMismatch);
  CHECK(translateOk(table, table.encode(1, newGen, RAM_START + 0x100), 1).offset == 0x100);
}

TEST_CASE("reset deactivates every slot and old addresses stay invalid after re-add", "[memslot]") {
  MemslotTable table = makeTable();
  uint8_t gen1 = addSlot(table, 1, RAM_START, RAM_START + 4096);
  uint8_t gen2 = addSlot(table, 2, VRAM_START, VRAM_START + 4096);
  table.reset();
  CHECK(translateError(table, table.encode(1, gen1, RAM_START), 1) == MemslotError::SlotNotActive);
  CHECK(translateError(table, table.encode(2, gen2, VRAM_START), 1) == MemslotError::SlotNotActive);
  uint8_t again = addSlot(table, 1, RAM_START, RAM_START + 4096);
  CHECK(translateError(table, table.encode(1, gen1, RAM_START), 1) ==
        MemslotError::GenerationMismatch);
  CHECK(translateOk(table, table.encode(1, again, RAM_START), 1).offset == 0);
}

TEST_CASE("every error has a description", "[memslot]") {
  for (auto error : {MemslotError::SlotIdOutOfRange, MemslotError::SlotNotActive,
                     MemslotError::SlotAlreadyActive, MemslotError::StartAfterEnd,
                     MemslotError::OutsideBars, MemslotError::GenerationMismatch,
                     MemslotError::AddressOutsideSlot, MemslotError::ZeroSize}) {
    CHECK(std::string(describe(error)) != "unknown memslot error");
  }
}

}  // namespace
}  // namespace spicebox::qxl
