// Runs in: netproxy (sandboxed). Input: pixels of a display segment (values only, any value is
// fine; the segment is live, so each encoder first copies the rectangle and works on the copy)
// and a rectangle the caller clipped to the segment.
//
// LZ4 layout (spice-common common/canvas_base.c canvas_get_lz4 reads it; spice-server's
// lz4-encoder.c writes it):
//   byte 0     top_down: non-zero = the first decoded row is the top row (we send 1)
//   byte 1     SpiceBitmapFmt of the decoded rows: SPICE_BITMAP_FMT_32BIT (8), rows width * 4
//              bytes, x8r8g8b8 little-endian (B, G, R, X), copied as they are, X byte included
//   then one or more blocks, to the end of the data:
//     4 bytes  big-endian size of the compressed block (> 0)
//     n bytes  one LZ4 block (raw block format, no frame header)
// The decoder runs one LZ4_streamDecode_t over all blocks, decoding each right after the previous
// one's output (LZ4_decompress_safe_continue), so a block may refer back into earlier blocks'
// output: we compress with LZ4_compress_fast_continue over one contiguous copy of the rows. The
// decoded bytes of all blocks together are the height rows back to back; block boundaries need
// not fall on rows (ours do). A block decoding to 0 bytes is an error for the decoder.
#include "netproxy/image-encode.h"

#include <lz4.h>
#include <spice/enums.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "base/assert.h"
#include "netproxy/lz-rgb.h"

namespace spicebox::netproxy {
namespace {

// Uncompressed bytes per LZ4 block, rounded down to whole rows (at least one). The decoder does
// not care; blocks bound the size of each compressBound reservation and match spice-server's
// habit of a block per group of lines. Matches still reach back 64 KiB across blocks.
constexpr uint64_t LZ4_BLOCK_BYTES = 256 * 1024;

// Rows back to back, top first: a private copy of the live segment.
std::vector<uint8_t> copyRows(const PixelRect& rect) {
  const uint64_t rowBytes = uint64_t{rect.width} * 4;
  std::vector<uint8_t> rows(rowBytes * rect.height);
  for (uint32_t y = 0; y < rect.height; ++y) {
    std::memcpy(rows.data() + y * rowBytes, rect.pixels + uint64_t{y} * rect.stride, rowBytes);
  }
  return rows;
}

void putBigEndian32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

struct Lz4StreamDeleter {
  void operator()(LZ4_stream_t* s) const { LZ4_freeStream(s); }
};

}  // namespace

EncodedImage encodeBitmap(const PixelRect& rect) {
  EncodedImage image{ImageEncoding::Bitmap, rect.width, rect.height, {}};
  if (rect.width == 0 || rect.height == 0) {
    return image;
  }
  image.data = copyRows(rect);
  return image;
}

EncodedImage encodeLz4(const PixelRect& rect) {
  EncodedImage image{ImageEncoding::Lz4, rect.width, rect.height, {}};
  if (rect.width == 0 || rect.height == 0) {
    return image;
  }
  const std::vector<uint8_t> rows = copyRows(rect);
  const uint64_t rowBytes = uint64_t{rect.width} * 4;
  const uint64_t rowsPerBlock = std::max<uint64_t>(1, LZ4_BLOCK_BYTES / rowBytes);
  const uint64_t blockBytes = rowsPerBlock * rowBytes;
  if (blockBytes > LZ4_MAX_INPUT_SIZE) {
    spdlog::error("LZ4: a {}-pixel row is more than liblz4 compresses in one block", rect.width);
    return image;
  }
  const uint64_t blocks = (rect.height + rowsPerBlock - 1) / rowsPerBlock;
  const int blockBound = LZ4_compressBound(static_cast<int>(blockBytes));
  std::vector<uint8_t>& out = image.data;
  out.resize(2 + blocks * (4 + static_cast<uint64_t>(blockBound)));
  out[0] = 1;  // top_down
  out[1] = SPICE_BITMAP_FMT_32BIT;
  uint64_t pos = 2;

  std::unique_ptr<LZ4_stream_t, Lz4StreamDeleter> stream(LZ4_createStream());
  if (!stream) {
    spdlog::error("LZ4: out of memory for a compression stream");
    image.data.clear();
    return image;
  }
  for (uint64_t offset = 0; offset < rows.size(); offset += blockBytes) {
    const uint64_t in = std::min<uint64_t>(blockBytes, rows.size() - offset);
    const int written = LZ4_compress_fast_continue(
        stream.get(), reinterpret_cast<const char*>(rows.data() + offset),
        reinterpret_cast<char*>(out.data() + pos + 4), static_cast<int>(in), blockBound, 1);
    if (written <= 0) {
      spdlog::error("LZ4: liblz4 failed to compress a {}x{} image", rect.width, rect.height);
      image.data.clear();
      return image;
    }
    putBigEndian32(out.data() + pos, static_cast<uint32_t>(written));
    pos += 4 + static_cast<uint64_t>(written);
  }
  out.resize(pos);
  return image;
}

EncodedImage encodeLzRgb(const PixelRect& rect) {
  EncodedImage image{ImageEncoding::LzRgb, rect.width, rect.height, {}};
  if (rect.width == 0 || rect.height == 0) {
    return image;
  }
  const uint64_t pixels = uint64_t{rect.width} * rect.height;
  bool done = lzrgb::compress(rect, lzrgb::maxEncodedBytes(pixels), image.data);
  SB_ASSERT(done, "LZ_RGB exceeded its worst case for {}x{}", rect.width, rect.height);
  return image;
}

EncodedImage encodeImage(const PixelRect& rect, ImageCompression mode, bool clientLz4) {
  if (rect.width == 0 || rect.height == 0 || mode == ImageCompression::Off) {
    return encodeBitmap(rect);
  }
  bool tryLz4 = false, tryLzRgb = false;
  switch (mode) {
    case ImageCompression::Lz:
      tryLzRgb = true;
      break;
    case ImageCompression::Lz4:
      tryLz4 = clientLz4;
      tryLzRgb = !clientLz4;
      break;
    case ImageCompression::AutoLz:
      tryLz4 = clientLz4;
      tryLzRgb = true;
      break;
    case ImageCompression::Off:
      break;
  }
  const uint64_t rawBytes = uint64_t{rect.width} * rect.height * 4;
  // The best candidate so far, and the size the next one must stay under (a candidate must be
  // smaller than the raw rows, and than the previous candidate, to be sent).
  EncodedImage best;
  bool haveBest = false;
  uint64_t limit = rawBytes - 1;
  if (tryLz4) {
    EncodedImage lz4 = encodeLz4(rect);
    if (!lz4.data.empty() && lz4.data.size() <= limit) {
      limit = lz4.data.size() - 1;
      best = std::move(lz4);
      haveBest = true;
    }
  }
  if (tryLzRgb) {
    // Bounded by the best so far: an image that will not win stops being encoded early.
    EncodedImage lz{ImageEncoding::LzRgb, rect.width, rect.height, {}};
    if (lzrgb::compress(rect, limit, lz.data)) {
      best = std::move(lz);
      haveBest = true;
    }
  }
  return haveBest ? std::move(best) : encodeBitmap(rect);
}

}  // namespace spicebox::netproxy
