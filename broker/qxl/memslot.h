// Runs in: broker (QXL_IO_MEMSLOT_ADD / DEL) and renderer (translation of every guest address).
// Input: slot ranges and slot ids from the guest (hostile: QXLRam::mem_slot and the IO port
// value), and guest addresses from guest memory (hostile). The layout (our QXLRom fields) and
// the BAR ranges (announced by the VMM, checked by `create`) are the device's own.
//
// A guest address packs three fields, most significant first (spice's memslot encoding):
//   | slot id: slotIdBits | generation: slotGenBits | guest physical address: the rest |
// The physical address must lie in the slot's [memStart, memEnd), and the slot lies inside one
// BAR, so a translation is an offset into a mapping we hold.
//
// Pure: no logging, no broker dependency, no allocation after `create`; the renderer links it.
#pragma once

#include <spice/qxl_dev.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <variant>

namespace spicebox::qxl {

// The BARs a slot may point into (QXL_RAM_RANGE_INDEX, QXL_VRAM_RANGE_INDEX).
enum class BarId : uint8_t { Ram = 0, Vram = 1 };
inline constexpr size_t BAR_COUNT = 2;

// Where a BAR sits in guest physical address space, and how many bytes of it we have mapped.
// size 0: not present, no slot may refer to it.
struct BarRange {
  uint64_t physStart = 0;
  uint64_t size = 0;
};

// The memslot fields of our QXLRom. slotsEnd is the last usable id, inclusive, as QEMU sets it
// (slots_end = NUM_MEMSLOTS - 1 with slots_start = 1; slot 0 is the device's own).
struct MemslotLayout {
  uint8_t slotsStart = 1;
  uint8_t slotsEnd = 7;
  uint8_t slotGenBits = 8;
  uint8_t slotIdBits = 8;
};

enum class MemslotSetupError : uint8_t {
  BadLayout,  // id/gen bits outside 1..8, slotsStart > slotsEnd, or slotsEnd not encodable
  BarWraps,   // physStart + size overflows 64 bits
};

// Everything a guest can get wrong about a slot or an address.
enum class MemslotError : uint8_t {
  SlotIdOutOfRange,    // outside [slotsStart, slotsEnd] (CVE-2019-3813 was a `>` for `>=` here)
  SlotNotActive,       // never added, or deleted, or reset since
  SlotAlreadyActive,   // MEMSLOT_ADD over a live slot: delete it first
  StartAfterEnd,       // MEMSLOT_ADD with mem_start > mem_end
  OutsideBars,         // MEMSLOT_ADD range not wholly inside one present BAR
  GenerationMismatch,  // address made for an earlier incarnation of the slot
  AddressOutsideSlot,  // some byte of [addr, addr + size) outside the slot, or the sum wraps
  ZeroSize,            // nothing to translate; refused so no caller gets a pointer to nothing
};

const char* describe(MemslotError error);

// Where a validated guest range lives: [offset, offset + size) is inside `bar`'s mapping.
struct BarOffset {
  BarId bar = BarId::Ram;
  uint64_t offset = 0;
  bool operator==(const BarOffset&) const = default;
};

class MemslotTable {
 public:
  static constexpr size_t MAX_SLOTS = 256;  // slot ids are uint8_t in QXLRom

  static std::variant<MemslotTable, MemslotSetupError> create(
      MemslotLayout layout, const std::array<BarRange, BAR_COUNT>& bars);

  // QXL_IO_MEMSLOT_ADD with the slot range the broker copied once out of QXLRam::mem_slot.
  // Returns the generation the guest must encode in its addresses; the broker publishes it in
  // QXLRom::slot_generation before completing the IO. Each add takes a fresh generation, so
  // addresses made for an earlier incarnation of a re-added slot stop translating (until the
  // counter wraps after 2^slotGenBits adds).
  std::variant<uint8_t, MemslotError> add(uint64_t slotId, QXLMemSlot range);

  // The renderer's replica of the broker's table: `add`, but the slot takes the generation the
  // broker's table gave it. A generation that does not fit slotGenBits is GenerationMismatch.
  std::variant<uint8_t, MemslotError> addWithGeneration(uint64_t slotId, QXLMemSlot range,
                                                        uint8_t generation);

  // QXL_IO_MEMSLOT_DEL.
  std::variant<std::monostate, MemslotError> remove(uint64_t slotId);

  // QXL_IO_RESET: every slot inactive. The generation counter carries on so that addresses from
  // before the reset stay invalid after the guest re-adds its slots.
  void reset();

  // The whole range [guestAddr, guestAddr + size) must be inside one active slot of the right
  // generation. Hot path: no logging, no allocation.
  std::variant<BarOffset, MemslotError> translate(uint64_t guestAddr, uint64_t size) const;

  // The address a guest driver would build for `physAddr` in `slotId` with `generation`
  // (qxl_bo_physical_address). For tests and the guest simulator.
  uint64_t encode(uint8_t slotId, uint8_t generation, uint64_t physAddr) const;

  const MemslotLayout& layout() const { return layout_; }

 private:
  struct Slot {
    uint64_t memStart = 0;
    uint64_t memEnd = 0;  // exclusive
    BarId bar = BarId::Ram;
    uint8_t generation = 0;
    bool active = false;
  };

  MemslotTable(MemslotLayout layout, const std::array<BarRange, BAR_COUNT>& bars);
  bool idInRange(uint64_t slotId) const;

  MemslotLayout layout_;
  std::array<BarRange, BAR_COUNT> bars_;
  unsigned idShift_;
  unsigned genShift_;
  uint64_t genMask_;
  uint64_t physMask_;
  uint8_t nextGeneration_ = 0;
  std::array<Slot, MAX_SLOTS> slots_{};
};

}  // namespace spicebox::qxl
