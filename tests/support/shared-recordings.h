// Runs in: tests. The QXL recordings in ../shared/recordings (beside the checkout) are not part of
// the repository: tests that need them skip loudly when they are absent, never pass silently.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <iostream>

namespace spicebox::test {

// True when `dir` exists. Otherwise prints "SKIPPED: ..." on stdout (CTest's
// SKIP_REGULAR_EXPRESSION turns that into a Skipped test) and in Catch2's report: Catch2 2.x has
// no SKIP of its own.
inline bool recordingsPresent(const std::filesystem::path& dir) {
  if (std::filesystem::is_directory(dir))
    return true;
  std::cout << "SKIPPED: ../shared/recordings not found (" << dir << ")" << std::endl;
  WARN("SKIPPED: ../shared/recordings not found (" << dir << ")");
  return false;
}

}  // namespace spicebox::test
