// Runs in: the benchmarks (developer machine, unsandboxed). Input: see guest-image.h.
#include "bench/guest-image.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace spicebox::bench {

namespace {

// The memslot encoding keeps the low 48 bits for the address (8 bits slot id, 8 bits generation
// above them); libspice-server's identity slot uses bits 63 and 62. Below 2^47 both read slot 0,
// generation 0, physical address == host address.
constexpr uint64_t ADDRESS_LIMIT = uint64_t{1} << 47;
constexpr size_t VRAM_ALIGN = 4096;  // surface memory is page-aligned, as in a real VRAM BAR
constexpr size_t RAM_ALIGN = 8;      // what the materialiser expects of any block

// One slot, id 0, the only id the layout allows; generation 0 (see guest-image.h).
constexpr qxl::MemslotLayout LAYOUT{0, 0, 8, 8};
constexpr uint8_t SLOT = 0;
constexpr uint8_t GENERATION = 0;

}  // namespace

std::variant<std::unique_ptr<GuestImage>, std::string> GuestImage::create(size_t capacity) {
  void* at = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (at == MAP_FAILED)
    return fmt::format(
        "cannot reserve {} MiB of address space for the guest-memory image: {} (check ulimit -v)",
        capacity >> 20, std::strerror(errno));
  auto* base = static_cast<std::byte*>(at);
  const auto start = reinterpret_cast<uintptr_t>(base);
  if (start >= ADDRESS_LIMIT || capacity > ADDRESS_LIMIT - start) {
    ::munmap(at, capacity);
    return fmt::format(
        "the guest-memory image landed at {:#x}, above 2^47: slot-0 guest addresses cannot "
        "reach it (a kernel with 5-level paging handing out high addresses?)",
        start);
  }
  auto image = std::unique_ptr<GuestImage>(new GuestImage(base, capacity));
  if (!image->slots_)
    return std::string("the memslot table refused the guest-memory image (a bench bug)");
  return image;
}

GuestImage::GuestImage(std::byte* base, size_t capacity) : base_(base), capacity_(capacity) {
  const auto start = reinterpret_cast<uintptr_t>(base);
  auto created =
      qxl::MemslotTable::create(LAYOUT, {qxl::BarRange{start, capacity}, qxl::BarRange{0, 0}});
  if (!std::holds_alternative<qxl::MemslotTable>(created))
    return;
  qxl::MemslotTable table = std::get<qxl::MemslotTable>(std::move(created));
  QXLMemSlot range{};
  range.mem_start = start;
  range.mem_end = start + capacity;
  if (!std::holds_alternative<uint8_t>(table.addWithGeneration(SLOT, range, GENERATION)))
    return;
  slots_.emplace(std::move(table));
  view_ = renderer::GuestView{{base, capacity}, {}, start, 0};
}

GuestImage::~GuestImage() {
  ::munmap(base_, capacity_);
}

std::optional<guestsim::GuestBlock> GuestImage::allocate(guestsim::Arena arena, size_t size) {
  const size_t align = arena == guestsim::Arena::Vram ? VRAM_ALIGN : RAM_ALIGN;
  const size_t start = (used_ + align - 1) / align * align;
  if (start > capacity_ || size > capacity_ - start)
    return std::nullopt;
  used_ = start + size;
  // Never handed out before, so still zero as the mapping came (the allocator's contract).
  return guestsim::GuestBlock{base_ + start, guestAddr(base_ + start), start, arena};
}

uint64_t GuestImage::guestAddr(const std::byte* host) const {
  return slots_->encode(SLOT, GENERATION, reinterpret_cast<uintptr_t>(host));
}

std::byte* GuestImage::host(uint64_t guestAddr, size_t size) const {
  auto where = slots_->translate(guestAddr, size);
  if (auto* at = std::get_if<qxl::BarOffset>(&where); at && at->bar == qxl::BarId::Ram)
    return base_ + at->offset;
  return nullptr;
}

void GuestImage::snapshot() {
  pristine_.assign(base_, base_ + used_);
}

void GuestImage::restore() {
  std::memcpy(base_, pristine_.data(), pristine_.size());
}

}  // namespace spicebox::bench
