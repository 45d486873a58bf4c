// Runs in: tests (renderer-fuzz-regression-tests, and tools/fuzz.sh replays the same
// .bin files through the clang-built fuzzer). Input: fuzz inputs beside this file, minimised
// findings of the decoder fuzzer (hostile by construction), in the layout of
// renderer/fuzz/fuzz-image.h.
//
// One test per finding, named after what the input does to the decoder. Each decodes its input
// as the fuzzer did and checks the answer the fixed decoder gives; under the sanitizer builds
// the original crash or report would fail the test as well.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "renderer/fuzz/fuzz-image.h"

namespace spicebox::renderer::fuzz {
namespace {

std::vector<uint8_t> finding(const char* name) {
  const auto path = std::filesystem::path(__FILE__).parent_path() / name;
  std::ifstream in(path, std::ios::binary);
  INFO("regression input " << path << " (renderer/fuzz/regressions/)");
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::variant<qxlcmd::Command, DecodeError> decodeFinding(const char* name) {
  static FuzzGuest guest;
  auto input = finding(name);
  auto result = decodeFuzzInput(guest, input);
  REQUIRE(result.has_value());
  return std::move(*result);
}

std::string describe(const std::variant<qxlcmd::Command, DecodeError>& result) {
  if (const auto* e = std::get_if<DecodeError>(&result))
    return std::string(decodeErrorName(e->kind)) + ": " + e->detail;
  return "decoded";
}

// Found on the first seeds: a chunk chain's next_chunk, a field of the packed QXLDataChunk,
// was bound to a `const uint64_t&` (unordered_set::insert) at an address 4 bytes off its
// alignment: UBSan's misaligned reference. Any chained object does it; this is a cursor shape
// whose single chunk links onward.
TEST_CASE("fuzz-cursor-chunk-next-misaligned", "[fuzz-regression]") {
  auto result = decodeFinding("cursor-chunk-next-misaligned.bin");
  INFO(describe(result));
  REQUIRE(std::holds_alternative<DecodeError>(result));
  CHECK(std::get<DecodeError>(result).kind == DecodeErrorKind::CursorDataShort);
}

}  // namespace
}  // namespace spicebox::renderer::fuzz
