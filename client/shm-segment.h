// Runs in: SPICE clients using spicebox's shared-memory display extension (base/shm-protocol.h).
// Input: a descriptor and a size a SPICE server sent with SHM_OFFER, untrusted: the descriptor
// must be a regular file at least that large and sealed against shrinking and growing (so the
// server cannot truncate it under the mapping and kill the client with SIGBUS), the size is
// capped, and the mapping is read-only. Its bytes may change at any time (the server draws into
// them): they are pixels, copied out and never parsed.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "base/fd.h"

namespace spicebox::client {

// Largest segment mapped: two buffers of the largest primary a client accepts (8192 x 8192 x 4
// bytes each, canvas.h's MAX_SURFACE_SIDE) fit with room to spare. Only address space: nothing
// is allocated for it.
constexpr uint64_t MAX_SEGMENT_SIZE = uint64_t{1} << 30;

// A display segment mapped PROT_READ, MAP_SHARED; unmapped and its descriptor closed on
// destruction. Move-only.
class ShmSegment {
 public:
  // Checks `fd` (fstat: a regular file of at least `size` bytes; F_GET_SEALS: SHRINK and GROW)
  // and maps `size` bytes of it. The error says what was wrong with the segment.
  static std::variant<ShmSegment, std::string> map(base::Fd fd, uint64_t size);

  ShmSegment(ShmSegment&& other) noexcept;
  ShmSegment& operator=(ShmSegment&& other) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();

  int fd() const { return fd_.get(); }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  // F_GET_SEALS when mapped (F_SEAL_* bits).
  int seals() const { return seals_; }
  // Whether the descriptor was opened for writing (O_RDWR / O_WRONLY): the extension says it is
  // read-only; a writable one is used all the same (the client maps it PROT_READ) and logged.
  bool writable() const { return writable_; }

 private:
  ShmSegment(base::Fd fd, const uint8_t* data, size_t size, int seals, bool writable)
      : fd_(std::move(fd)), data_(data), size_(size), seals_(seals), writable_(writable) {}
  void unmap();

  base::Fd fd_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int seals_ = 0;
  bool writable_ = false;
};

}  // namespace spicebox::client
