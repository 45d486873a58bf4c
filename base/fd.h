// Runs in: every process. An owned file descriptor.
#pragma once

#include <unistd.h>

#include <utility>

namespace spicebox::base {

// Owns one file descriptor and closes it on destruction. Move-only. Descriptors spicebox
// creates are O_CLOEXEC, so only the ones a child is meant to have survive exec.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other)
      reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }

  void reset(int fd = -1) {
    int old = std::exchange(fd_, fd);
    // close() is not retried on EINTR: on Linux the descriptor is released either way.
    if (old >= 0)
      ::close(old);
  }

 private:
  int fd_ = -1;
};

}  // namespace spicebox::base
