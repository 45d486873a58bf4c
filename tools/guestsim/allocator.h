// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: allocation sizes
// from our own materialiser (trusted), and guest addresses read back from guest memory the
// broker writes (QXLReleaseInfo.next chains): those are range-checked by hostAddress().
//
// The guest driver's memory manager: one first-fit arena per BAR region the driver hands out
// (the RAM BAR's command area, slot 1; the VRAM BAR, slot 2), blocks aligned to 8 bytes (RAM)
// or 4096 bytes (VRAM, surfaces), each with a handle, and the memslot encoding of each block's
// guest physical address (broker/qxl/memslot.h: | slot id | generation | physical |).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <unordered_map>

#include "tools/guestsim/materialise.h"

namespace spicebox::guestsim {

// Alignment of blocks in each arena. 8: every QXL structure's widest field (QXLPHYSICAL).
// 4096: surfaces start on a page, as the Linux driver's TTM buffer objects do.
inline constexpr uint64_t RAM_ALIGNMENT = 8;
inline constexpr uint64_t VRAM_ALIGNMENT = 4096;

// Offsets only (no memory): first fit over a free list kept sorted and coalesced. Every block
// size is rounded up to `alignment`, so every offset stays aligned. Pure, for unit tests.
class FirstFitArena {
 public:
  // `size` is rounded down to a multiple of `alignment` (a power of two).
  FirstFitArena(uint64_t size, uint64_t alignment);

  // Offset of a fresh block of at least `size` bytes (0 counts as one unit), or nullopt when no
  // free range is large enough.
  std::optional<uint64_t> allocate(uint64_t size);
  // Returns false (and changes nothing) when `offset` is not the start of a live block.
  bool free(uint64_t offset);

  uint64_t size() const { return size_; }
  uint64_t bytesInUse() const { return inUse_; }
  size_t blocksInUse() const { return used_.size(); }
  // Number of separate free ranges (1 when everything is free: coalescing works).
  size_t freeRanges() const { return free_.size(); }

 private:
  uint64_t size_;
  uint64_t alignment_;
  uint64_t inUse_ = 0;
  std::map<uint64_t, uint64_t> free_;            // offset -> length, no two adjacent
  std::unordered_map<uint64_t, uint64_t> used_;  // offset -> length
};

// One region of guest memory the driver allocates from, and how the device addresses it.
struct ArenaMapping {
  std::span<std::byte> memory;  // our view of the region
  uint64_t physStart = 0;       // guest physical address of memory[0]
  uint8_t slotId = 0;
  uint8_t generation = 0;   // QXLRom.slot_generation after the slot was added
  uint8_t slotIdBits = 8;   // QXLRom.slot_id_bits
  uint8_t slotGenBits = 8;  // QXLRom.slot_gen_bits
};

// The address a guest builds for `physAddr` in a slot (Linux qxl_bo_physical_address). The
// bit counts must be 1..8 each (the driver checks the ROM before it gets here).
uint64_t encodeGuestAddress(const ArenaMapping& mapping, uint64_t physAddr);

class DriverAllocator final : public GuestAllocator {
 public:
  DriverAllocator(ArenaMapping ram, ArenaMapping vram);

  std::optional<GuestBlock> allocate(Arena arena, size_t size) override;
  // A handle this allocator did not hand out, or freed already, is a driver bug: asserted.
  void free(const GuestBlock& block) override;
  // The arena's whole (aligned) size.
  size_t capacity(Arena arena) const override { return this->arena(arena).size(); }

  // Where [guestAddr, guestAddr + size) lives in our mappings, or nullptr when the address is not
  // one of ours (wrong slot or generation, outside the arena, wraps). For addresses read back
  // from guest memory.
  std::byte* hostAddress(uint64_t guestAddr, size_t size) const;

  // The slot behind `arena` was deleted and added again (a hostile guest does that): blocks handed
  // out from now on carry the new generation; earlier ones keep the address they were given.
  void setGeneration(Arena arena, uint8_t generation) {
    (arena == Arena::Ram ? ramMap_ : vramMap_).generation = generation;
  }

  const FirstFitArena& arena(Arena which) const { return which == Arena::Ram ? ram_ : vram_; }
  const ArenaMapping& mapping(Arena which) const {
    return which == Arena::Ram ? ramMap_ : vramMap_;
  }

 private:
  struct Live {
    Arena arena;
    uint64_t offset;
  };

  ArenaMapping ramMap_, vramMap_;
  FirstFitArena ram_, vram_;
  uint64_t nextHandle_ = 1;
  std::unordered_map<uint64_t, Live> live_;
};

}  // namespace spicebox::guestsim
