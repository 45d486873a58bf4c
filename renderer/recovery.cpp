#include "renderer/recovery.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <iterator>

namespace spicebox::renderer::recovery {

std::variant<std::unique_ptr<Area>, std::string> Area::map(base::Fd fd, uint64_t arenaBytes,
                                                           bool writable) {
  if (!fd)
    return std::string("recovery area without its descriptor");
  if (arenaBytes == 0 || arenaBytes % 4096 != 0 || arenaBytes > MAX_ARENA_BYTES)
    return fmt::format("recovery area arena of {} bytes: 4 KiB multiples up to {} bytes",
                       arenaBytes, MAX_ARENA_BYTES);
  const uint64_t size = areaBytes(arenaBytes);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return fmt::format("cannot fstat the recovery area: {}", std::strerror(errno));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size)
    return fmt::format("recovery area descriptor holds {} bytes, {} were announced", st.st_size,
                       size);
  // Unsealed, it could shrink under the mapping and fault us (SIGBUS) on the next draw.
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
    return std::string("recovery area is not sealed against shrinking (F_SEAL_SHRINK)");
  void* base =
      ::mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED)
    return fmt::format("cannot map the recovery area ({} bytes): {}", size, std::strerror(errno));
  std::unique_ptr<Area> a(new Area());
  a->base_ = base;
  a->size_ = size;
  a->state_ = static_cast<State*>(base);
  auto* bytes = static_cast<std::byte*>(base);
  a->undo_ = {bytes + STATE_BYTES, UNDO_BYTES};
  a->arena_ = {bytes + STATE_BYTES + UNDO_BYTES, arenaBytes};
  State& s = *a->state_;
  a->used_ = s.magic == MAGIC && s.version == VERSION && s.arenaBytes == arenaBytes;
  if (!a->used_ && writable) {
    // Fresh (or not ours to read): start empty. Only the record is cleared; the arena's pages
    // are cleared by whoever allocates them.
    std::memset(&s, 0, sizeof s);
    s.arenaBytes = arenaBytes;
    s.version = VERSION;
    s.magic = MAGIC;  // last: a death before this leaves an area that reads as fresh
  }
  return a;
}

ProgressView readProgress(const State& state) {
  // The renderer may be writing it (the broker reads after a death; a stopped renderer is not
  // writing either): each word is read once.
  const uint64_t seq = std::atomic_ref<const uint64_t>(state.progress.seq).load();
  const Commit c = Commit::unpack(std::atomic_ref<const uint64_t>(state.progress.commit).load());
  return {seq, c.index, c.phase};
}

Area::~Area() {
  if (base_ != nullptr)
    ::munmap(base_, size_);
}

ArenaAllocator::ArenaAllocator(uint64_t bytes) : size_(bytes / ARENA_ALIGN * ARENA_ALIGN) {
  if (size_ > 0)
    free_.emplace(0, size_);
}

uint64_t ArenaAllocator::rounded(uint64_t bytes) {
  return (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

std::optional<uint64_t> ArenaAllocator::allocate(uint64_t bytes) {
  if (bytes == 0 || bytes > size_)
    return std::nullopt;
  const uint64_t need = rounded(bytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need)
      continue;
    const uint64_t offset = it->first;
    const uint64_t left = it->second - need;
    free_.erase(it);
    if (left > 0)
      free_.emplace(offset + need, left);
    return offset;
  }
  return std::nullopt;
}

void ArenaAllocator::release(uint64_t offset, uint64_t bytes) {
  uint64_t start = offset, length = rounded(bytes);
  // Merge with the gap after, then the gap before.
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + length) {
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      length += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, length);
}

bool ArenaAllocator::claim(uint64_t offset, uint64_t bytes) {
  if (bytes == 0 || offset % ARENA_ALIGN != 0 || offset > size_ || rounded(bytes) > size_ - offset)
    return false;
  const uint64_t need = rounded(bytes);
  auto it = free_.upper_bound(offset);
  if (it == free_.begin())
    return false;
  --it;  // the gap starting at or before `offset`
  const uint64_t gapStart = it->first, gapLength = it->second;
  if (offset + need > gapStart + gapLength)
    return false;
  free_.erase(it);
  if (offset > gapStart)
    free_.emplace(gapStart, offset - gapStart);
  if (gapStart + gapLength > offset + need)
    free_.emplace(offset + need, gapStart + gapLength - offset - need);
  return true;
}

uint64_t ArenaAllocator::freeBytes() const {
  uint64_t total = 0;
  for (const auto& [offset, length] : free_)
    total += length;
  return total;
}

}  // namespace spicebox::renderer::recovery
