// Runs in: SPICE clients (spicebox's client library and tests). Input: image data from a SPICE
// server, hostile: every length, offset and header field is checked before use; reads stay
// inside `data`, writes inside the width * height output, and the output is only allocated once
// the data could possibly fill it.
//
// Written from the formats as spice-gtk decodes them (spice-common common/lz.c,
// lz_decompress_tmpl.c, canvas_base.c canvas_get_lz4); the byte layouts are described in
// netproxy/lz-rgb.cpp and netproxy/image-encode.cpp. These decoders are stricter than spice-gtk's
// where spice-gtk is lenient by accident: they refuse bytes after the last pixel and LZ4 data that
// does not fill the image.
#include "client/image-decode.h"

#include <lz4.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>

#include <spdlog/fmt/fmt.h>

namespace spicebox::client {
namespace {

static_assert(std::endian::native == std::endian::little,
              "Pixels hold x8r8g8b8 words whose bytes are B, G, R, X");

// The largest image either decoder accepts: a SPICE display segment is at most 8192 x 8192
// (docs/protocol.md, displaySegment), so no DRAW_COPY image can be larger. Bounds the output a
// descriptor can ask for to 256 MiB.
constexpr uint64_t MAX_PIXELS = uint64_t{8192} * 8192;
// How many output bytes one input byte can produce at most, in either format, with room to
// spare: an LZ extension byte adds 255 pixels (LZ_RGB), an LZ4 length byte 255 bytes. A
// descriptor asking for more than EXPANSION times the data is refused before the output is
// allocated, so a few bytes cannot make us allocate 256 MiB.
constexpr uint64_t LZ_RGB_MAX_PIXELS_PER_BYTE = 256;
constexpr uint64_t LZ4_MAX_BYTES_PER_BYTE = 256;
constexpr uint64_t EXPANSION_SLACK = 64;  // the first item or block of a tiny image

// LZ_RGB header (big-endian words) and stream constants.
constexpr size_t LZ_HEADER_BYTES = 28;
constexpr uint32_t LZ_MAGIC = 0x20205a4c;
constexpr uint32_t LZ_VERSION = 0x00010001;
constexpr uint32_t LZ_TYPE_RGB32 = 8;
constexpr uint32_t LZ_NEAR_DISTANCES = 8191;  // d = 0 .. 8190; 8191 is the far escape

// LZ4 layout: a top_down byte, a SpiceBitmapFmt byte, then blocks.
constexpr uint8_t SPICE_BITMAP_FMT_32BIT = 8;  // spice/enums.h SpiceBitmapFmt
constexpr uint8_t SPICE_BITMAP_FMT_RGBA = 9;

std::string checkDimensions(uint32_t width, uint32_t height) {
  if (width == 0 || height == 0) {
    return fmt::format("the image descriptor says {}x{}: an empty image carries no data", width,
                       height);
  }
  if (uint64_t{width} * height > MAX_PIXELS) {
    return fmt::format(
        "the image descriptor says {}x{}, more than the {} pixels of the largest "
        "display",
        width, height, MAX_PIXELS);
  }
  return {};
}

// Rows stored bottom row first become top row first.
void flipRows(Pixels& px, uint32_t width, uint32_t height) {
  for (uint32_t top = 0, bottom = height - 1; top < bottom; ++top, --bottom) {
    std::swap_ranges(px.begin() + uint64_t{top} * width, px.begin() + uint64_t{top + 1} * width,
                     px.begin() + uint64_t{bottom} * width);
  }
}

// Reads `data` front to back; every read says whether the bytes were there.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data) : data_(data) {}
  bool has(uint64_t n) const { return data_.size() - pos_ >= n; }
  uint8_t byte() { return data_[pos_++]; }
  uint32_t bigEndian32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      v = (v << 8) | data_[pos_++];
    }
    return v;
  }
  const uint8_t* here() const { return data_.data() + pos_; }
  void skip(uint64_t n) { pos_ += n; }
  uint64_t offset() const { return pos_; }
  uint64_t left() const { return data_.size() - pos_; }

 private:
  std::span<const uint8_t> data_;
  uint64_t pos_ = 0;
};

}  // namespace

std::variant<Pixels, std::string> decodeLzRgb(std::span<const uint8_t> data, uint32_t width,
                                              uint32_t height) {
  if (std::string bad = checkDimensions(width, height); !bad.empty()) {
    return "LZ_RGB: " + bad;
  }
  Reader in(data);
  if (!in.has(LZ_HEADER_BYTES)) {
    return fmt::format("LZ_RGB: {} bytes, shorter than the {}-byte LZ header", data.size(),
                       LZ_HEADER_BYTES);
  }
  const uint32_t magic = in.bigEndian32();
  const uint32_t version = in.bigEndian32();
  const uint32_t type = in.bigEndian32();
  const uint32_t lzWidth = in.bigEndian32();
  const uint32_t lzHeight = in.bigEndian32();
  const uint32_t stride = in.bigEndian32();
  const uint32_t topDown = in.bigEndian32();
  if (magic != LZ_MAGIC) {
    return fmt::format("LZ_RGB: bad magic {:#010x} (expected {:#010x}, \"LZ  \")", magic, LZ_MAGIC);
  }
  if (version != LZ_VERSION) {
    return fmt::format("LZ_RGB: LZ version {:#010x}, only {:#010x} (1.1) is known", version,
                       LZ_VERSION);
  }
  if (type != LZ_TYPE_RGB32) {
    return fmt::format("LZ_RGB: LZ image type {}, only RGB32 ({}) is decoded", type, LZ_TYPE_RGB32);
  }
  if (lzWidth != width || lzHeight != height) {
    return fmt::format("LZ_RGB: the LZ header says {}x{}, the image descriptor {}x{}", lzWidth,
                       lzHeight, width, height);
  }
  if (uint64_t{stride} != uint64_t{width} * 4) {
    return fmt::format("LZ_RGB: stride {} for a {}-pixel row, RGB32 needs width * 4 = {}", stride,
                       width, uint64_t{width} * 4);
  }
  const uint64_t n = uint64_t{width} * height;
  if (n > in.left() * LZ_RGB_MAX_PIXELS_PER_BYTE + EXPANSION_SLACK) {
    return fmt::format("LZ_RGB: {} bytes of stream cannot encode {}x{} pixels", in.left(), width,
                       height);
  }

  Pixels px(n);
  uint64_t op = 0;  // next pixel to write
  while (op < n) {
    const uint64_t itemAt = in.offset();
    if (!in.has(1)) {
      return fmt::format("LZ_RGB: data ends after {} of {} pixels (truncated stream)", op, n);
    }
    const uint32_t ctrl = in.byte();
    if (ctrl < 32) {
      const uint64_t count = ctrl + 1;
      if (count > n - op) {
        return fmt::format(
            "LZ_RGB: a {}-pixel literal run at byte {} overruns the image ({} of "
            "{} pixels written)",
            count, itemAt, op, n);
      }
      if (!in.has(3 * count)) {
        return fmt::format(
            "LZ_RGB: data ends inside a {}-pixel literal run at byte {} (truncated "
            "stream)",
            count, itemAt);
      }
      const uint8_t* src = in.here();
      for (uint64_t i = 0; i < count; ++i) {
        px[op + i] = uint32_t{src[3 * i]} | uint32_t{src[3 * i + 1]} << 8 |
                     uint32_t{src[3 * i + 2]} << 16;  // x byte 0, as spice-gtk writes it
      }
      in.skip(3 * count);
      op += count;
      continue;
    }
    uint64_t len = ctrl >> 5;
    if (len == 7) {
      uint8_t more = 0;
      do {
        if (!in.has(1)) {
          return fmt::format(
              "LZ_RGB: data ends inside the length of a match at byte {} "
              "(truncated stream)",
              itemAt);
        }
        more = in.byte();
        len += more;
      } while (more == 255);
    }
    if (!in.has(1)) {
      return fmt::format(
          "LZ_RGB: data ends before the distance of a match at byte {} (truncated "
          "stream)",
          itemAt);
    }
    const uint32_t d = (ctrl & 31) << 8 | in.byte();
    uint64_t dist = uint64_t{d} + 1;
    if (d == LZ_NEAR_DISTANCES) {
      if (!in.has(2)) {
        return fmt::format(
            "LZ_RGB: data ends inside the far distance of a match at byte {} "
            "(truncated stream)",
            itemAt);
      }
      const uint32_t high = in.byte();
      dist = (high << 8 | in.byte()) + uint64_t{LZ_NEAR_DISTANCES} + 1;
    }
    if (dist > op) {
      return fmt::format(
          "LZ_RGB: a match at byte {} refers {} pixels back from pixel {}, before "
          "the start of the image",
          itemAt, dist, op);
    }
    if (len > n - op) {
      return fmt::format(
          "LZ_RGB: a {}-pixel match at byte {} overruns the image ({} of {} "
          "pixels written)",
          len, itemAt, op, n);
    }
    // One pixel at a time, forward: an overlapping match repeats its pattern.
    for (uint64_t i = 0; i < len; ++i) {
      px[op + i] = px[op + i - dist];
    }
    op += len;
  }
  if (in.left() != 0) {
    return fmt::format("LZ_RGB: {} bytes follow the image's last pixel", in.left());
  }
  if (topDown == 0) {
    flipRows(px, width, height);
  }
  return px;
}

std::variant<Pixels, std::string> decodeLz4(std::span<const uint8_t> data, uint32_t width,
                                            uint32_t height) {
  if (std::string bad = checkDimensions(width, height); !bad.empty()) {
    return "LZ4: " + bad;
  }
  Reader in(data);
  if (!in.has(2)) {
    return fmt::format("LZ4: {} bytes, shorter than the 2-byte header (top_down, format)",
                       data.size());
  }
  const bool topDown = in.byte() != 0;
  const uint8_t format = in.byte();
  if (format != SPICE_BITMAP_FMT_32BIT && format != SPICE_BITMAP_FMT_RGBA) {
    return fmt::format("LZ4: bitmap format {}, only 32BIT ({}) and RGBA ({}) are decoded", format,
                       SPICE_BITMAP_FMT_32BIT, SPICE_BITMAP_FMT_RGBA);
  }
  const uint64_t total = uint64_t{width} * height * 4;
  if (total > in.left() * LZ4_MAX_BYTES_PER_BYTE + EXPANSION_SLACK) {
    return fmt::format("LZ4: {} bytes of blocks cannot hold {}x{} pixels", in.left(), width,
                       height);
  }
  if (!in.has(1)) {
    return std::string("LZ4: no block follows the header");
  }

  Pixels px(uint64_t{width} * height);
  char* out = reinterpret_cast<char*>(px.data());
  uint64_t produced = 0;
  std::unique_ptr<LZ4_streamDecode_t, decltype(&LZ4_freeStreamDecode)> stream(
      LZ4_createStreamDecode(), &LZ4_freeStreamDecode);
  if (!stream) {
    return std::string("LZ4: out of memory for a decoding stream");
  }
  for (uint64_t block = 0; in.left() > 0; ++block) {
    if (!in.has(4)) {
      return fmt::format("LZ4: data ends inside the size of block {} (truncated)", block);
    }
    const uint32_t size = in.bigEndian32();
    if (size == 0 || size > static_cast<uint32_t>(LZ4_MAX_INPUT_SIZE)) {
      return fmt::format("LZ4: block {} claims {} compressed bytes", block, size);
    }
    if (!in.has(size)) {
      return fmt::format("LZ4: block {} claims {} bytes, {} are left (truncated)", block, size,
                         in.left());
    }
    if (produced == total) {
      return fmt::format("LZ4: block {} follows a complete image", block);
    }
    // liblz4's _safe_ decoder never reads outside the block nor writes past the capacity it is
    // given, and refuses offsets before the start of the output (the stream's history).
    const int got = LZ4_decompress_safe_continue(
        stream.get(), reinterpret_cast<const char*>(in.here()), out + produced,
        static_cast<int>(size), static_cast<int>(std::min<uint64_t>(total - produced, INT32_MAX)));
    if (got <= 0) {
      return fmt::format(
          "LZ4: block {} ({} bytes at byte {}) is malformed or decodes past the "
          "image's {} bytes",
          block, size, in.offset(), total);
    }
    produced += static_cast<uint64_t>(got);
    in.skip(size);
  }
  if (produced != total) {
    return fmt::format("LZ4: the blocks hold {} bytes, a {}x{} image needs {}", produced, width,
                       height, total);
  }
  if (!topDown) {
    flipRows(px, width, height);
  }
  return px;
}

}  // namespace spicebox::client
