// Runs in: every process that links the sandbox. Which sanitizers this build carries: their
// runtimes need things a sandbox otherwise forbids (ASan's shadow memory needs terabytes of
// address space, so RLIMIT_AS cannot apply).
#pragma once

// SPICEBOX_ADDRESS_SANITIZER: 1 in an ASan build, for #if. GCC says so with __SANITIZE_ADDRESS__,
// clang (the ASan + fuzz build) only through __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#define SPICEBOX_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPICEBOX_ADDRESS_SANITIZER 1
#endif
#endif
#ifndef SPICEBOX_ADDRESS_SANITIZER
#define SPICEBOX_ADDRESS_SANITIZER 0
#endif

namespace spicebox::sandbox {

inline constexpr bool ADDRESS_SANITIZER = SPICEBOX_ADDRESS_SANITIZER != 0;

}  // namespace spicebox::sandbox
