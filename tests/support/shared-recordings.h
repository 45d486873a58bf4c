// Runs in: tests. The QXL recordings in ../shared/recordings (beside the checkout) are not part of
// the repository: tests that need them skip loudly when they are absent, never pass silently.
#pragma once

#include <lzma.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>

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

// A whole .xz recording, decompressed with liblzma directly: independently of the reader's own
// streaming xz path, so tests can compare with it or cut it at any uncompressed offset.
inline std::string decodeXzFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::string packed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  lzma_stream strm = LZMA_STREAM_INIT;
  REQUIRE(lzma_stream_decoder(&strm, UINT64_MAX, 0) == LZMA_OK);
  std::string out;
  strm.next_in = reinterpret_cast<const uint8_t*>(packed.data());
  strm.avail_in = packed.size();
  constexpr size_t STEP = 8 << 20;
  lzma_ret ret = LZMA_OK;
  while (ret == LZMA_OK) {
    size_t used = out.size();
    out.resize(used + STEP);
    strm.next_out = reinterpret_cast<uint8_t*>(out.data() + used);
    strm.avail_out = STEP;
    ret = lzma_code(&strm, LZMA_FINISH);
    out.resize(out.size() - strm.avail_out);
  }
  lzma_end(&strm);
  REQUIRE(ret == LZMA_STREAM_END);
  return out;
}

}  // namespace spicebox::test
