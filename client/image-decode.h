// Runs in: SPICE clients (spicebox's own client library and tests). Input: image data from a
// SPICE server, untrusted: every length and offset is checked, decoding never reads or writes
// outside its buffers, and output is bounded by width * height.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace spicebox::client {

// width * height pixels, x8r8g8b8 (little-endian B, G, R, X bytes), top row first.
using Pixels = std::vector<uint32_t>;

// Both decoders refuse, with a message saying what was malformed: an empty image or one larger
// than 8192 x 8192 pixels; a descriptor asking for more pixels than the data could possibly
// encode (checked before the output is allocated); truncated data; a match reaching before the
// first pixel; an item or block writing past the last pixel; data ending before the last pixel
// or (stricter than spice-gtk) bytes after it. Bottom-up data (top_down 0) is accepted and
// returned top row first.

// SPICE_IMAGE_TYPE_LZ_RGB data (SpiceLZRGBData's data: LZ header + stream, layout in
// netproxy/lz-rgb.cpp) of an image whose descriptor says width x height. The header's width and
// height must equal the descriptor's, its stride width * 4, its type RGB32 (the only type
// decoded). Every x byte of the result is 0, as spice-gtk decodes it.
std::variant<Pixels, std::string> decodeLzRgb(std::span<const uint8_t> data, uint32_t width,
                                              uint32_t height);
// SPICE_IMAGE_TYPE_LZ4 data (SpiceLZ4Data's data, layout in netproxy/image-encode.cpp) of a
// width x height image: bitmap format 32BIT or RGBA (both 4 bytes a pixel, copied as they are);
// liblz4's safe streaming decoder reads the blocks.
std::variant<Pixels, std::string> decodeLz4(std::span<const uint8_t> data, uint32_t width,
                                            uint32_t height);

}  // namespace spicebox::client
