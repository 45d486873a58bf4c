// Runs in: spicebox-guestsim (unsandboxed). Input: sizes from our own materialiser; guest
// addresses read back from broker-written guest memory, checked in hostAddress().
#include "tools/guestsim/allocator.h"

#include <cstring>

#include "base/assert.h"

namespace spicebox::guestsim {

namespace {

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

struct SlotShifts {
  unsigned idShift;
  unsigned genShift;
  uint64_t physMask;
};

SlotShifts shiftsOf(const ArenaMapping& m) {
  SB_ASSERT(m.slotIdBits >= 1 && m.slotIdBits <= 8 && m.slotGenBits >= 1 && m.slotGenBits <= 8,
            "slot bits id {} gen {}", m.slotIdBits, m.slotGenBits);
  unsigned idShift = 64 - m.slotIdBits;
  unsigned genShift = idShift - m.slotGenBits;
  return {idShift, genShift, (uint64_t{1} << genShift) - 1};
}

}  // namespace

FirstFitArena::FirstFitArena(uint64_t size, uint64_t alignment)
    : size_(size & ~(alignment - 1)), alignment_(alignment) {
  SB_ASSERT(alignment != 0 && (alignment & (alignment - 1)) == 0, "alignment {}", alignment);
  if (size_ != 0)
    free_.emplace(0, size_);
}

std::optional<uint64_t> FirstFitArena::allocate(uint64_t size) {
  if (size > size_)
    return std::nullopt;
  uint64_t want = alignUp(size == 0 ? 1 : size, alignment_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < want)
      continue;
    uint64_t offset = it->first;
    uint64_t rest = it->second - want;
    free_.erase(it);
    if (rest != 0)
      free_.emplace(offset + want, rest);
    used_.emplace(offset, want);
    inUse_ += want;
    return offset;
  }
  return std::nullopt;
}

bool FirstFitArena::free(uint64_t offset) {
  auto used = used_.find(offset);
  if (used == used_.end())
    return false;
  uint64_t start = offset;
  uint64_t length = used->second;
  used_.erase(used);
  inUse_ -= length;
  // Coalesce with the free range after, then with the one before.
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + length) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      prev->second += length;
      return true;
    }
  }
  free_.emplace(start, length);
  return true;
}

uint64_t encodeGuestAddress(const ArenaMapping& mapping, uint64_t physAddr) {
  SlotShifts s = shiftsOf(mapping);
  uint64_t genMask = (uint64_t{1} << mapping.slotGenBits) - 1;
  return (uint64_t{mapping.slotId} << s.idShift) |
         ((uint64_t{mapping.generation} & genMask) << s.genShift) | (physAddr & s.physMask);
}

DriverAllocator::DriverAllocator(ArenaMapping ram, ArenaMapping vram)
    : ramMap_(ram),
      vramMap_(vram),
      ram_(ram.memory.size(), RAM_ALIGNMENT),
      vram_(vram.memory.size(), VRAM_ALIGNMENT) {}

std::optional<GuestBlock> DriverAllocator::allocate(Arena arena, size_t size) {
  FirstFitArena& a = arena == Arena::Ram ? ram_ : vram_;
  const ArenaMapping& m = mapping(arena);
  auto offset = a.allocate(size);
  if (!offset)
    return std::nullopt;
  std::byte* host = m.memory.data() + *offset;
  // Zero-filled (the GuestAllocator contract): stale bytes of a released command must not show
  // through as pointers in the next one.
  std::memset(host, 0, size);
  uint64_t handle = nextHandle_++;
  live_.emplace(handle, Live{arena, *offset});
  return GuestBlock{host, encodeGuestAddress(m, m.physStart + *offset), handle, arena};
}

void DriverAllocator::free(const GuestBlock& block) {
  auto it = live_.find(block.handle);
  SB_ASSERT(it != live_.end(), "free of unknown guest block handle {}", block.handle);
  FirstFitArena& a = it->second.arena == Arena::Ram ? ram_ : vram_;
  bool freed = a.free(it->second.offset);
  SB_ASSERT(freed, "guest block handle {} at offset {} not live in its arena", block.handle,
            it->second.offset);
  live_.erase(it);
}

std::byte* DriverAllocator::hostAddress(uint64_t guestAddr, size_t size) const {
  for (const ArenaMapping* m : {&ramMap_, &vramMap_}) {
    SlotShifts s = shiftsOf(*m);
    uint64_t genMask = (uint64_t{1} << m->slotGenBits) - 1;
    if ((guestAddr >> s.idShift) != m->slotId ||
        ((guestAddr >> s.genShift) & genMask) != (m->generation & genMask))
      continue;
    uint64_t phys = guestAddr & s.physMask;
    if (phys < m->physStart)
      return nullptr;
    uint64_t offset = phys - m->physStart;
    if (offset > m->memory.size() || size > m->memory.size() - offset)
      return nullptr;
    return m->memory.data() + offset;
  }
  return nullptr;
}

}  // namespace spicebox::guestsim
