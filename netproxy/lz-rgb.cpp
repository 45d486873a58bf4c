// Runs in: netproxy (sandboxed). Input: pixels of a display segment (values only; they may change
// while read, and no bound below depends on them) and a rectangle the caller clipped to it.
//
// SPICE LZ, image type RGB32, as spice-gtk decodes SPICE_IMAGE_TYPE_LZ_RGB (spice-common
// common/lz.c lz_decode_begin + common/lz_decompress_tmpl.c). Written from the format; the
// encoder is our own (greedy, three match candidates per position), not spice-common's.
//
// ## The format we emit, byte by byte
//
// Header: seven 32-bit words, each BIG-endian (most significant byte first):
//   offset  0  magic     0x20205a4c (bytes 20 20 5a 4c: "LZ  " read as a little-endian word)
//   offset  4  version   0x00010001 (major 1, minor 1)
//   offset  8  type      8 = LZ_IMAGE_TYPE_RGB32
//   offset 12  width     pixels, equal to the image descriptor's width
//   offset 16  height    rows, equal to the descriptor's height
//   offset 20  stride    width * 4 (the decoder refuses any other value for RGB types)
//   offset 24  top_down  1: the first row of the stream is the top row (we always send 1)
// Stream, from offset 28: the image's width * height pixels as one sequence, top row first, rows
// back to back (no padding). Each item starts with a control byte `c`:
//   c < 32     literal run: c + 1 pixels (1 .. 32) follow, 3 bytes each: B, G, R. The decoder
//              stores B, G, R and 0 in the fourth (x) byte of its x8r8g8b8 pixel.
//   c >= 32    match: copy `len` pixels from `dist` pixels back, one pixel at a time, forward
//              (so dist < len repeats a pattern; dist = 1 is a run of the previous pixel). The
//              copy takes all four bytes, so the x byte of a match is 0 too.
//              len: L = c >> 5 (1 .. 6) is the length itself; L = 7 means 7 plus extension
//              bytes that follow c: add each byte, continue while the byte was 255 (length 7 is
//              7, 0; length 262 is 7, 255, 0). RGB32 lengths carry no bias beyond this (the
//              decoder's "len - 1 ... len + 1" cancels out).
//              dist: H = c & 31. The next byte B (after any length bytes) completes
//              d = H * 256 + B, dist = d + 1, for d = 0 .. 8190 (dist 1 .. 8191). H = 31 with
//              B = 255 is the far escape instead: two more bytes, a big-endian v, give
//              dist = v + 8192 (8192 .. 73727).
// The stream ends when width * height pixels are written; an item that would write past the
// last pixel, or a match reaching before the first, is malformed (spice-gtk aborts the image).
// Nothing follows the last item.
//
// The encoder: x bytes are dropped (masked) before matching, since the decoder restores none of
// them. At each position it tries a run (dist 1), the row above (dist width) and the last
// position whose next three pixels hashed alike, takes the longest match of at least
// MIN_MATCH pixels, else emits a literal. Every match costs fewer bytes than its pixels as
// literals, hence lzrgb::maxEncodedBytes.
#include "netproxy/lz-rgb.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "base/assert.h"

namespace spicebox::netproxy::lzrgb {
namespace {

constexpr uint32_t LZ_MAGIC = 0x20205a4c;
constexpr uint32_t LZ_VERSION = 0x00010001;
constexpr uint32_t LZ_TYPE_RGB32 = 8;
constexpr uint32_t TOP_DOWN = 1;

constexpr uint32_t MAX_LITERAL_RUN = 32;  // control bytes 0 .. 31
constexpr uint32_t MAX_NEAR_DISTANCE = 8191;
constexpr uint32_t MAX_FAR_DISTANCE = 8192 + 65535;
// Shorter matches save nothing: a 1-pixel match costs 2 bytes plus the split literal run's
// control byte, against 3 bytes as a literal. MIN_MATCH = 2 keeps maxEncodedBytes true.
constexpr uint64_t MIN_MATCH = 2;
// The hash table indexes positions by their next three pixels; smaller images get a smaller
// table so that clearing it does not dominate a tiny rectangle. An entry keeps the position's
// first pixel beside the position: a stale entry (another triple with the same hash, the usual
// case in noisy pictures) is rejected without loading a far-away pixel, which is a cache miss.
constexpr int MAX_HASH_BITS = 16;
constexpr int MIN_HASH_BITS = 8;
constexpr uint32_t NO_POSITION = UINT32_MAX;
struct HashEntry {
  uint32_t position;
  uint32_t pixel;  // px[position], x byte cleared
};

constexpr uint32_t RGB_MASK = 0x00ffffff;

// Writes into a buffer sized once; every write is preceded by a room check against the limit.
class Writer {
 public:
  Writer(std::vector<uint8_t>& out, uint64_t limit) : out_(out), limit_(limit) {}

  bool room(uint64_t bytes) const { return pos_ + bytes <= limit_; }
  void byte(uint8_t b) { out_[pos_++] = b; }
  void word32(uint32_t w) {
    byte(static_cast<uint8_t>(w >> 24));
    byte(static_cast<uint8_t>(w >> 16));
    byte(static_cast<uint8_t>(w >> 8));
    byte(static_cast<uint8_t>(w));
  }
  uint8_t* take(uint64_t bytes) {
    uint8_t* p = out_.data() + pos_;
    pos_ += bytes;
    return p;
  }
  uint64_t size() const { return pos_; }

 private:
  std::vector<uint8_t>& out_;
  uint64_t limit_;
  uint64_t pos_ = 0;
};

// Literal pixels [begin, end) in runs of at most 32.
bool emitLiterals(Writer& w, const uint32_t* px, uint64_t begin, uint64_t end) {
  while (begin < end) {
    uint64_t n = std::min<uint64_t>(end - begin, MAX_LITERAL_RUN);
    if (!w.room(1 + 3 * n)) {
      return false;
    }
    w.byte(static_cast<uint8_t>(n - 1));
    uint8_t* dst = w.take(3 * n);
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t v = px[begin + i];
      dst[3 * i] = static_cast<uint8_t>(v);            // B
      dst[3 * i + 1] = static_cast<uint8_t>(v >> 8);   // G
      dst[3 * i + 2] = static_cast<uint8_t>(v >> 16);  // R
    }
    begin += n;
  }
  return true;
}

bool emitMatch(Writer& w, uint64_t len, uint32_t dist) {
  SB_ASSERT(len >= MIN_MATCH && dist >= 1 && dist <= MAX_FAR_DISTANCE, "len {} dist {}", len, dist);
  bool far = dist > MAX_NEAR_DISTANCE;
  uint32_t d = dist - 1;
  uint8_t high = far ? 31 : static_cast<uint8_t>(d >> 8);
  uint8_t low = far ? 255 : static_cast<uint8_t>(d);
  uint64_t extension = len < 7 ? 0 : (len - 7) / 255 + 1;
  if (!w.room(2 + extension + (far ? 2 : 0))) {
    return false;
  }
  w.byte(static_cast<uint8_t>((std::min<uint64_t>(len, 7) << 5) | high));
  if (len >= 7) {
    uint64_t rest = len - 7;
    for (; rest >= 255; rest -= 255) {
      w.byte(255);
    }
    w.byte(static_cast<uint8_t>(rest));
  }
  w.byte(low);
  if (far) {
    uint32_t v = dist - 8192;
    w.byte(static_cast<uint8_t>(v >> 8));
    w.byte(static_cast<uint8_t>(v));
  }
  return true;
}

// Pixels equal from `pos` and from `pos - dist`, at most `limit`.
uint64_t matchLength(const uint32_t* px, uint64_t pos, uint64_t dist, uint64_t limit) {
  uint64_t n = 0;
  while (n < limit && px[pos + n] == px[pos + n - dist]) {
    ++n;
  }
  return n;
}

uint32_t hashOf(const uint32_t* p, int bits) {
  uint64_t k = (p[0] * 0x9E3779B97F4A7C15ull) ^ (p[1] * 0xC2B2AE3D27D4EB4Full) ^
               (p[2] * 0x165667B19E3779F9ull);
  return static_cast<uint32_t>(k >> (64 - bits));
}

// The rectangle's pixels, x bytes cleared, as one top-down sequence: a private copy, so that
// matching sees values that do not change under it (the segment is live).
std::vector<uint32_t> linearize(const PixelRect& rect) {
  std::vector<uint32_t> px(uint64_t{rect.width} * rect.height);
  for (uint32_t y = 0; y < rect.height; ++y) {
    uint32_t* dst = px.data() + uint64_t{y} * rect.width;
    std::memcpy(dst, rect.pixels + uint64_t{y} * rect.stride, uint64_t{rect.width} * 4);
    for (uint32_t x = 0; x < rect.width; ++x) {
      dst[x] &= RGB_MASK;
    }
  }
  return px;
}

}  // namespace

bool compress(const PixelRect& rect, uint64_t limitBytes, std::vector<uint8_t>& out, Stats* stats) {
  static_assert(std::endian::native == std::endian::little,
                "x8r8g8b8 words are read as B, G, R, X bytes");
  SB_ASSERT(rect.width >= 1 && rect.height >= 1 && rect.pixels, "{}x{}", rect.width, rect.height);
  const uint64_t n = uint64_t{rect.width} * rect.height;
  // The position table holds uint32 positions; segments are at most 8192 x 8192.
  SB_ASSERT(n < NO_POSITION, "{} pixels", n);
  const uint64_t limit = std::min(limitBytes, maxEncodedBytes(n));
  // TODO(perf): the worst case is zeroed here (3 bytes a pixel) for a result that is usually a
  // fraction of it; measured at well under 1 ms for 1920x1080.
  out.resize(limit);
  Writer w(out, limit);
  if (!w.room(HEADER_BYTES)) {
    return false;
  }
  w.word32(LZ_MAGIC);
  w.word32(LZ_VERSION);
  w.word32(LZ_TYPE_RGB32);
  w.word32(rect.width);
  w.word32(rect.height);
  w.word32(rect.width * 4);
  w.word32(TOP_DOWN);

  const std::vector<uint32_t> pixels = linearize(rect);
  const uint32_t* px = pixels.data();
  const int hashBits =
      std::clamp(static_cast<int>(std::bit_width(n)), MIN_HASH_BITS, MAX_HASH_BITS);
  std::vector<HashEntry> table(size_t{1} << hashBits, HashEntry{NO_POSITION, 0});
  const uint64_t rowDist = rect.width;
  Stats st;

  uint64_t literalStart = 0;
  uint64_t pos = 0;
  while (pos + MIN_MATCH <= n) {
    const uint64_t remaining = n - pos;
    uint64_t bestLen = 0, bestDist = 0;
    auto consider = [&](uint64_t dist) {
      if (dist == 0 || dist > pos || dist > MAX_FAR_DISTANCE || dist == bestDist ||
          px[pos] != px[pos - dist]) {
        return;
      }
      uint64_t len = matchLength(px, pos, dist, remaining);
      // Longest wins; on a tie the nearer (it may be cheaper: no far escape).
      if (len > bestLen || (len == bestLen && dist < bestDist)) {
        bestLen = len;
        bestDist = dist;
      }
    };
    consider(1);
    consider(rowDist);
    if (remaining >= 3) {
      HashEntry& slot = table[hashOf(px + pos, hashBits)];
      if (slot.position != NO_POSITION && slot.pixel == px[pos]) {
        consider(pos - slot.position);
      }
      slot = {static_cast<uint32_t>(pos), px[pos]};
    }
    if (bestLen < MIN_MATCH) {
      ++pos;
      continue;
    }
    if (!emitLiterals(w, px, literalStart, pos) ||
        !emitMatch(w, bestLen, static_cast<uint32_t>(bestDist))) {
      return false;
    }
    st.literalPixels += pos - literalStart;
    ++(bestDist > MAX_NEAR_DISTANCE ? st.farMatches : st.nearMatches);
    st.longestMatch = std::max(st.longestMatch, bestLen);
    pos += bestLen;
    literalStart = pos;
    // The match's last full triple, so that what follows a repeated pattern is found again.
    if (pos >= 3 && pos < n) {
      table[hashOf(px + pos - 3, hashBits)] = {static_cast<uint32_t>(pos - 3), px[pos - 3]};
    }
  }
  if (!emitLiterals(w, px, literalStart, n)) {
    return false;
  }
  st.literalPixels += n - literalStart;
  out.resize(w.size());
  if (stats) {
    *stats = st;
  }
  return true;
}

}  // namespace spicebox::netproxy::lzrgb
