// Runs in: the benchmarks (spicebox-bench-render, spicebox-bench-copy) on a developer machine,
// unsandboxed. Input: command trees from a recording (already checked by guestsim's RecordReader)
// or from a scenario, laid out here by guestsim's materialiser; nothing hostile by design, but the
// decoder still reads the image as guest memory through a real memslot table.
//
// One guest-memory image that BOTH renderers read, so the two sides of a comparison parse the
// very same bytes:
// - spicebox's decoder reads it through SlotMemory and a MemslotTable with a single slot, id 0,
//   generation 0, covering the whole image;
// - libspice-server reads it through the identity memslot of tests/oracle/spice-host.cpp (slot 0,
//   generation 0, virt_start 0, addr_delta 0: a guest address is a host pointer).
// Both agree when a guest address equals the host address: the memslot encoding puts slot id and
// generation in the top bits, which are zero for slot 0 / generation 0, and user-space pointers on
// x86-64 stay below 2^47 (checked by create()).
//
// The image is one anonymous mapping reserved up front (MAP_NORESERVE: only touched pages cost
// memory) and handed out by a bump allocator that never frees: a benchmark materialises a whole
// stream once and keeps it. snapshot() keeps a copy of the bytes in use and restore() puts them
// back, so every timed run starts from the same memory (libspice-server draws offscreen surfaces
// and the primary into guest memory; spicebox must not see what an earlier run left there).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "broker/qxl/memslot.h"
#include "renderer/qxl-decode.h"
#include "tools/guestsim/materialise.h"

namespace spicebox::bench {

class GuestImage final : public guestsim::GuestAllocator {
 public:
  // Reserves `capacity` bytes of address space. Fails (with a message saying what to do) when
  // the mapping cannot be made or lands where slot-0 addresses cannot reach.
  static std::variant<std::unique_ptr<GuestImage>, std::string> create(size_t capacity);
  ~GuestImage() override;
  GuestImage(const GuestImage&) = delete;
  GuestImage& operator=(const GuestImage&) = delete;

  // guestsim::GuestAllocator. Both arenas share the image (Vram blocks 4096-aligned); free() is a
  // no-op because every block lives as long as the image.
  std::optional<guestsim::GuestBlock> allocate(guestsim::Arena arena, size_t size) override;
  void free(const guestsim::GuestBlock&) override {}
  size_t capacity(guestsim::Arena) const override { return capacity_; }

  // The guest address of a byte of the image (== its host address, see above).
  uint64_t guestAddr(const std::byte* host) const;
  // The bytes behind a guest address this image handed out, or null if it is not one.
  std::byte* host(uint64_t guestAddr, size_t size) const;

  // Keeps a copy of every byte allocated so far; restore() writes it back.
  void snapshot();
  void restore();

  size_t used() const { return used_; }
  const qxl::MemslotTable& slots() const { return *slots_; }
  const renderer::GuestView& view() const { return view_; }

 private:
  GuestImage(std::byte* base, size_t capacity);

  std::byte* base_;
  size_t capacity_;
  size_t used_ = 0;
  std::optional<qxl::MemslotTable> slots_;
  renderer::GuestView view_;
  std::vector<std::byte> pristine_;
};

}  // namespace spicebox::bench
