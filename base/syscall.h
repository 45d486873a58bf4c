// Runs in: every process. System calls with their errors reported, by intent (STYLE.md #4).
#pragma once

#include <cerrno>
#include <string>
#include <system_error>

namespace spicebox::base {

// Thrown by SB_SYSCALL: which call failed, with what, and errno.
class SystemError : public std::system_error {
 public:
  SystemError(int err, const std::string& what)
      : std::system_error(err, std::generic_category(), what) {}
};

[[noreturn]] void throwSystemError(int err, const char* call, const std::string& context);

}  // namespace spicebox::base

// Evaluates a system call, retrying on EINTR. On failure (-1) throws base::SystemError naming
// the call, the caller's context and errno. Yields the call's result.
//   int fd = SB_SYSCALL(::memfd_create("display", MFD_CLOEXEC), "display segment");
#define SB_SYSCALL(call, context)                                  \
  ([&]() {                                                         \
    for (;;) {                                                     \
      auto sbResult = (call);                                      \
      if (sbResult != -1)                                          \
        return sbResult;                                           \
      if (errno != EINTR)                                          \
        ::spicebox::base::throwSystemError(errno, #call, context); \
    }                                                              \
  }())
