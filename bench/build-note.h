// Runs in: the benchmarks (developer machine). Input: none; says which build produced the figures.
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sandbox/sanitizers.h"

#ifndef SPICEBOX_BUILD_TYPE
#define SPICEBOX_BUILD_TYPE "unknown"
#endif

namespace spicebox::bench {

// Prints the CMake build type and warns when the compiler did not optimise: figures from a Debug
// or sanitizer build say nothing about the renderer's speed.
inline void printBuildNote() {
#ifdef __OPTIMIZE__
  constexpr bool OPTIMISED = true;
#else
  constexpr bool OPTIMISED = false;
#endif
#if SPICEBOX_ADDRESS_SANITIZER
  constexpr bool SANITIZED = true;
#else
  constexpr bool SANITIZED = false;
#endif
  fmt::print("build: {} ({}{})\n", SPICEBOX_BUILD_TYPE, OPTIMISED ? "optimised" : "NOT optimised",
             SANITIZED ? ", AddressSanitizer" : "");
  if (!OPTIMISED || SANITIZED)
    spdlog::warn(
        "these figures come from an unoptimised or sanitizer build and mean nothing; build with "
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo (make bench does) and no SPICEBOX_SANITIZE");
}

}  // namespace spicebox::bench
