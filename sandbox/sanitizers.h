// Runs in: every process that links the sandbox. Which sanitizers this build carries: their
// runtimes need things a sandbox otherwise forbids (ASan's shadow memory needs terabytes of
// address space, so RLIMIT_AS cannot apply).
#pragma once

namespace spicebox::sandbox {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool ADDRESS_SANITIZER = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool ADDRESS_SANITIZER = true;
#else
inline constexpr bool ADDRESS_SANITIZER = false;
#endif
#else
inline constexpr bool ADDRESS_SANITIZER = false;
#endif

}  // namespace spicebox::sandbox
