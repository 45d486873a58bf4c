// Runs in: SPICE clients. Input: a descriptor and size from SHM_OFFER, untrusted (see
// shm-segment.h).
#include "client/shm-segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace spicebox::client {
namespace {

std::string hexText(int value) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "%x", static_cast<unsigned>(value));
  return hex;
}

std::string octalText(unsigned value) {
  char oct[16];
  std::snprintf(oct, sizeof oct, "%o", value);
  return oct;
}

}  // namespace

std::variant<ShmSegment, std::string> ShmSegment::map(base::Fd fd, uint64_t size) {
  if (!fd)
    return std::string("no descriptor");
  if (size == 0 || size > MAX_SEGMENT_SIZE)
    return "offered size " + std::to_string(size) + " outside 1.." +
           std::to_string(MAX_SEGMENT_SIZE);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return std::string("fstat of the descriptor failed: ") + std::strerror(errno);
  if (!S_ISREG(st.st_mode))
    return "the descriptor is not a regular file (file type 0" + octalText(st.st_mode & S_IFMT) +
           "): a segment is a memfd";
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size)
    return "the descriptor holds " + std::to_string(st.st_size) + " bytes, the offer announces " +
           std::to_string(size);
  int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0)
    return std::string("F_GET_SEALS failed (") + std::strerror(errno) +
           "): the segment is not a sealed memfd";
  // Without SHRINK a server could truncate the file under the mapping: every read of the lost
  // pages would raise SIGBUS in the client.
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
    return "the segment is not sealed against shrinking and growing (seals 0x" + hexText(seals) +
           ")";
  int flags = ::fcntl(fd.get(), F_GETFL);
  bool writable = flags >= 0 && (flags & O_ACCMODE) != O_RDONLY;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED)
    return std::string("mmap of the segment failed: ") + std::strerror(errno);
  return ShmSegment(std::move(fd), static_cast<const uint8_t*>(p), static_cast<size_t>(size), seals,
                    writable);
}

ShmSegment::ShmSegment(ShmSegment&& other) noexcept
    : fd_(std::move(other.fd_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      seals_(other.seals_),
      writable_(other.writable_) {}

ShmSegment& ShmSegment::operator=(ShmSegment&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    seals_ = other.seals_;
    writable_ = other.writable_;
  }
  return *this;
}

ShmSegment::~ShmSegment() {
  unmap();
}

void ShmSegment::unmap() {
  if (data_)
    ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace spicebox::client
