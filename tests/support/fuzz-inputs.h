// Runs in: tests (the fuzz regression tests). Input: fuzz inputs and seed files in the checkout
// (hostile bytes by construction: only read here, fed by the caller to its harness).
//
// Reading the .bin inputs of a fuzz directory, shared by the broker's and the netproxy's
// regression tests.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <vector>

namespace spicebox::test {

inline std::vector<uint8_t> readFuzzInput(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  INFO("fuzz input " << path);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The .bin files of `dir`, sorted (none when it does not exist).
inline std::vector<std::filesystem::path> fuzzInputsIn(const std::filesystem::path& dir) {
  std::set<std::filesystem::path> out;
  if (std::filesystem::is_directory(dir))
    for (const auto& entry : std::filesystem::directory_iterator(dir))
      if (entry.is_regular_file() && entry.path().extension() == ".bin")
        out.insert(entry.path());
  return {out.begin(), out.end()};
}

}  // namespace spicebox::test
