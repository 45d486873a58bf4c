// Runs in: netproxy (sandboxed). Input: pixels of a display segment (values only, any value is
// fine, they may even change while read: the encoder's bounds never depend on pixel values) and a
// rectangle the caller clipped to the segment.
//
// SPICE's LZ codec, image type LZ_IMAGE_TYPE_RGB32, top-down: the encoder behind encodeLzRgb
// (image-encode.h). The format is described byte by byte at the top of lz-rgb.cpp; this header
// is internal to the netproxy's encoders and their tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "netproxy/image-encode.h"

namespace spicebox::netproxy::lzrgb {

// The LZ header: seven big-endian 32-bit words (magic, version, type, width, height, stride,
// top_down).
inline constexpr size_t HEADER_BYTES = 28;

// The most bytes compress() can write for `pixels` pixels (header included): every pixel a
// literal (3 bytes, one control byte per 32 pixels), plus one control byte for the literal run a
// match can split (a match is only used when it costs less than its pixels as literals).
constexpr uint64_t maxEncodedBytes(uint64_t pixels) {
  return HEADER_BYTES + 3 * pixels + (pixels + 31) / 32 + 1;
}

// What compress() emitted, for tests that must show a code path was taken.
struct Stats {
  uint64_t literalPixels = 0;
  uint64_t nearMatches = 0;  // distance 1 .. 8191 pixels
  uint64_t farMatches = 0;   // distance 8192 .. 73727 pixels (the 16-bit escape)
  uint64_t longestMatch = 0;
};

// Encodes `rect` (width and height >= 1) as LZ header + stream into `out` (replacing its
// contents). Returns false, with `out` unspecified, as soon as the result would exceed
// `limitBytes`: with limitBytes >= maxEncodedBytes(width * height) it always succeeds.
bool compress(const PixelRect& rect, uint64_t limitBytes, std::vector<uint8_t>& out,
              Stats* stats = nullptr);

}  // namespace spicebox::netproxy::lzrgb
