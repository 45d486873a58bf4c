// Runs in: broker and renderer. Input: hostile slot ranges, slot ids and guest addresses; see
// memslot.h. Every comparison is written so that no sum of guest values can wrap.
#include "broker/qxl/memslot.h"

namespace spicebox::qxl {

const char* describe(MemslotError error) {
  switch (error) {
    case MemslotError::SlotIdOutOfRange:
      return "slot id out of range";
    case MemslotError::SlotNotActive:
      return "slot not active";
    case MemslotError::SlotAlreadyActive:
      return "slot already active";
    case MemslotError::StartAfterEnd:
      return "slot start after end";
    case MemslotError::OutsideBars:
      return "slot outside every BAR";
    case MemslotError::GenerationMismatch:
      return "slot generation mismatch";
    case MemslotError::AddressOutsideSlot:
      return "address range outside slot";
    case MemslotError::ZeroSize:
      return "zero-size range";
  }
  return "unknown memslot error";
}

std::variant<MemslotTable, MemslotSetupError> MemslotTable::create(
    MemslotLayout layout, const std::array<BarRange, BAR_COUNT>& bars) {
  // Both fields are uint8_t in QXLRom, so 8 bits each is all a guest can be told about, and it
  // keeps every shift below well inside 64.
  if (layout.slotIdBits < 1 || layout.slotIdBits > 8 || layout.slotGenBits < 1 ||
      layout.slotGenBits > 8 || layout.slotsStart > layout.slotsEnd ||
      layout.slotsEnd >= (1u << layout.slotIdBits)) {
    return MemslotSetupError::BadLayout;
  }
  for (const BarRange& bar : bars) {
    if (bar.size > UINT64_MAX - bar.physStart) {
      return MemslotSetupError::BarWraps;
    }
  }
  return MemslotTable(layout, bars);
}

MemslotTable::MemslotTable(MemslotLayout layout, const std::array<BarRange, BAR_COUNT>& bars)
    : layout_(layout),
      bars_(bars),
      idShift_(64u - layout.slotIdBits),
      genShift_(64u - layout.slotIdBits - layout.slotGenBits),
      genMask_((uint64_t{1} << layout.slotGenBits) - 1),
      physMask_(UINT64_MAX >> (layout.slotIdBits + layout.slotGenBits)) {}

bool MemslotTable::idInRange(uint64_t slotId) const {
  return slotId >= layout_.slotsStart && slotId <= layout_.slotsEnd;
}

std::variant<uint8_t, MemslotError> MemslotTable::add(uint64_t slotId, QXLMemSlot range) {
  if (!idInRange(slotId)) {
    return MemslotError::SlotIdOutOfRange;
  }
  Slot& slot = slots_[slotId];
  if (slot.active) {
    return MemslotError::SlotAlreadyActive;
  }
  if (range.mem_start > range.mem_end) {
    return MemslotError::StartAfterEnd;
  }
  // A slot must sit wholly inside one present BAR: every translation through it then stays
  // inside memory we have mapped. physStart + size cannot wrap (checked in create).
  for (size_t i = 0; i < BAR_COUNT; ++i) {
    const BarRange& bar = bars_[i];
    if (bar.size == 0 || range.mem_start < bar.physStart ||
        range.mem_end > bar.physStart + bar.size) {
      continue;
    }
    nextGeneration_ = static_cast<uint8_t>((nextGeneration_ + 1) & genMask_);
    slot = Slot{range.mem_start, range.mem_end, static_cast<BarId>(i), nextGeneration_, true};
    return slot.generation;
  }
  return MemslotError::OutsideBars;
}

std::variant<uint8_t, MemslotError> MemslotTable::addWithGeneration(uint64_t slotId,
                                                                    QXLMemSlot range,
                                                                    uint8_t generation) {
  if (generation > genMask_) {
    return MemslotError::GenerationMismatch;
  }
  auto added = add(slotId, range);
  if (std::holds_alternative<uint8_t>(added)) {
    slots_[slotId].generation = generation;  // add() checked slotId is in range
    return generation;
  }
  return added;
}

std::variant<std::monostate, MemslotError> MemslotTable::remove(uint64_t slotId) {
  if (!idInRange(slotId)) {
    return MemslotError::SlotIdOutOfRange;
  }
  if (!slots_[slotId].active) {
    return MemslotError::SlotNotActive;
  }
  slots_[slotId].active = false;
  return std::monostate{};
}

void MemslotTable::reset() {
  for (Slot& slot : slots_) {
    slot.active = false;
  }
}

std::variant<BarOffset, MemslotError> MemslotTable::translate(uint64_t guestAddr,
                                                              uint64_t size) const {
  if (size == 0) {
    return MemslotError::ZeroSize;
  }
  const uint64_t slotId = guestAddr >> idShift_;
  if (!idInRange(slotId)) {
    return MemslotError::SlotIdOutOfRange;
  }
  const Slot& slot = slots_[slotId];
  if (!slot.active) {
    return MemslotError::SlotNotActive;
  }
  if (((guestAddr >> genShift_) & genMask_) != slot.generation) {
    return MemslotError::GenerationMismatch;
  }
  // The whole range must be inside [memStart, memEnd). Compare without forming addr + size:
  // first addr against the bounds, then size against the room left after addr.
  const uint64_t phys = guestAddr & physMask_;
  if (phys < slot.memStart || phys >= slot.memEnd || size > slot.memEnd - phys) {
    return MemslotError::AddressOutsideSlot;
  }
  return BarOffset{slot.bar, phys - bars_[static_cast<size_t>(slot.bar)].physStart};
}

uint64_t MemslotTable::encode(uint8_t slotId, uint8_t generation, uint64_t physAddr) const {
  return (uint64_t{slotId} << idShift_) | ((uint64_t{generation} & genMask_) << genShift_) |
         (physAddr & physMask_);
}

}  // namespace spicebox::qxl
