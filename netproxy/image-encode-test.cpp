// Runs in: tests. Input: pictures made here; encoded by netproxy/image-encode.h and decoded by the
// independent, hostile-safe decoders of client/image-decode.h, pixel-exact. The second half feeds
// the decoders malformed data (named after the attack) and expects a refusal, never a crash
// (the sanitizer build runs these).
#include "netproxy/image-encode.h"

#include <spice/enums.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include "client/image-decode.h"
#include "netproxy/lz-rgb.h"

namespace spicebox::netproxy {
namespace {

constexpr uint32_t RGB_MASK = 0x00ffffff;

// A picture of x8r8g8b8 words, top row first, rows `stride` words apart (stride >= width: the
// extra words play the rest of a wider segment and must never be encoded).
struct Picture {
  uint32_t width = 0, height = 0, stride = 0;
  std::vector<uint32_t> words;

  Picture(uint32_t w, uint32_t h, uint32_t padding = 0)
      : width(w), height(h), stride(w + padding), words(uint64_t{stride} * h, 0xdeadbeef) {}
  uint32_t& at(uint32_t x, uint32_t y) { return words[uint64_t{y} * stride + x]; }
  uint32_t at(uint32_t x, uint32_t y) const { return words[uint64_t{y} * stride + x]; }
  PixelRect rect() const {
    return {reinterpret_cast<const uint8_t*>(words.data()), stride * 4, width, height};
  }
  // The picture's own pixels, top row first, optionally with the x byte cleared.
  client::Pixels pixels(uint32_t mask = 0xffffffff) const {
    client::Pixels px;
    px.reserve(uint64_t{width} * height);
    for (uint32_t y = 0; y < height; ++y) {
      for (uint32_t x = 0; x < width; ++x) {
        px.push_back(at(x, y) & mask);
      }
    }
    return px;
  }
};

Picture solid(uint32_t w, uint32_t h, uint32_t color) {
  Picture p(w, h);
  std::fill(p.words.begin(), p.words.end(), color);
  return p;
}

// Random words, x byte included: incompressible for both codecs.
Picture noise(uint32_t w, uint32_t h, uint32_t seed, uint32_t padding = 0) {
  Picture p(w, h, padding);
  std::mt19937 rng(seed);
  for (auto& v : p.words) {
    v = rng();
  }
  return p;
}

Picture gradient(uint32_t w, uint32_t h) {
  Picture p(w, h);
  for (uint32_t y = 0; y < h; ++y) {
    for (uint32_t x = 0; x < w; ++x) {
      p.at(x, y) = 0xff000000 | (x * 255 / w) << 16 | (y * 255 / h) << 8 | ((x + y) & 0xff);
    }
  }
  return p;
}

// Draws a desktop-like scene into `p` at (x0, y0): a window with a title bar, text lines made of
// a small random "font" (repeated glyphs, as text is), buttons and an icon. Seeded.
void drawWindow(Picture& p, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h, uint32_t seed) {
  std::mt19937 rng(seed);
  constexpr uint32_t GLYPH_W = 7, GLYPH_H = 12, GLYPHS = 40;
  std::vector<uint16_t> font(GLYPHS * GLYPH_H);
  for (auto& row : font) {
    row = static_cast<uint16_t>(rng() & 0x7e);
  }
  auto put = [&](uint32_t x, uint32_t y, uint32_t c) {
    if (x0 + x < p.width && y0 + y < p.height && x < w && y < h) {
      p.at(x0 + x, y0 + y) = c;
    }
  };
  if (w < 100 || h < 80) {  // too small for a window: a plain panel
    for (uint32_t y = 0; y < h; ++y) {
      for (uint32_t x = 0; x < w; ++x)
        put(x, y, 0xfff6f5f4);
    }
    return;
  }
  for (uint32_t y = 0; y < h; ++y) {
    for (uint32_t x = 0; x < w; ++x) {
      uint32_t c = 0xfff6f5f4;  // window background
      if (y < 24)
        c = 0xff2050a0 + (y << 1);  // title bar
      if (x == 0 || y == 0 || x == w - 1 || y == h - 1)
        c = 0xff808080;  // border
      put(x, y, c);
    }
  }
  uint32_t icon = rng();
  for (uint32_t y = 30; y + GLYPH_H < h && y < h - 40; y += GLYPH_H + 4) {
    for (uint32_t x = 8; x + GLYPH_W < w - 8; x += GLYPH_W) {
      uint32_t g = rng() % GLYPHS;
      if (g >= GLYPHS - 6)
        continue;  // a space
      for (uint32_t gy = 0; gy < GLYPH_H; ++gy) {
        for (uint32_t gx = 0; gx < GLYPH_W; ++gx) {
          if (font[g * GLYPH_H + gy] >> gx & 1)
            put(x + gx, y + gy, 0xff101010);
        }
      }
    }
  }
  for (uint32_t b = 0; b < 3; ++b) {  // buttons
    for (uint32_t y = h - 32; y < h - 8 && y < h; ++y) {
      for (uint32_t x = 10 + b * 90; x < 90 + b * 90; ++x) {
        put(x, y, y == h - 32 || y == h - 9 ? 0xff404040 : 0xffd0d8e0);
      }
    }
  }
  for (uint32_t y = 0; y < 32; ++y) {  // a photo-like icon: noise, the same in every window
    for (uint32_t x = 0; x < 32; ++x) {
      icon = icon * 1664525 + 1013904223;
      put(w - 40 + x, 28 + y, icon | 0xff000000);
    }
  }
}

// A wallpaper (a vertical gradient with a photo-like noisy patch) under three windows.
Picture desktop(uint32_t w, uint32_t h) {
  Picture p(w, h);
  std::mt19937 rng(w * 7919 + h);
  for (uint32_t y = 0; y < h; ++y) {
    for (uint32_t x = 0; x < w; ++x) {
      p.at(x, y) = 0xff000000 | (y * 200 / h) << 8 | 0x40;
      if (x > w * 3 / 4 && y < h / 8)
        p.at(x, y) = rng();
    }
  }
  drawWindow(p, w / 10, h / 10, w / 2, h / 2, 1);
  drawWindow(p, w / 3, h / 3, w / 2, h / 2, 2);
  drawWindow(p, 0, h - h / 8, w, h / 8, 3);  // a task bar
  return p;
}

// Sizes and blocks of an LZ4 payload, walked by its own layout; fails the test on bad framing.
uint32_t countLz4Blocks(const std::vector<uint8_t>& data) {
  REQUIRE(data.size() >= 2);
  uint32_t blocks = 0;
  for (size_t pos = 2; pos < data.size(); ++blocks) {
    REQUIRE(data.size() - pos >= 4);
    uint32_t size = uint32_t{data[pos]} << 24 | uint32_t{data[pos + 1]} << 16 |
                    uint32_t{data[pos + 2]} << 8 | data[pos + 3];
    REQUIRE(size > 0);
    REQUIRE(data.size() - pos - 4 >= size);
    pos += 4 + size;
  }
  return blocks;
}

// "" when equal, else where the pixels first differ (Catch would print whole vectors).
std::string difference(const client::Pixels& got, const client::Pixels& expected) {
  if (got.size() != expected.size()) {
    return "sizes differ: " + std::to_string(got.size()) + " vs " + std::to_string(expected.size());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != expected[i]) {
      return "pixel " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", expected " +
             std::to_string(expected[i]);
    }
  }
  return "";
}

client::Pixels decodedOrFail(const std::variant<client::Pixels, std::string>& result) {
  if (auto* error = std::get_if<std::string>(&result)) {
    FAIL("decoder refused our own output: " << *error);
  }
  return std::get<client::Pixels>(result);
}

std::string refusal(const std::variant<client::Pixels, std::string>& result) {
  REQUIRE(std::holds_alternative<std::string>(result));
  return std::get<std::string>(result);
}

// LZ_RGB round trip through the independent decoder: RGB exact, x byte 0 (spice-gtk writes 0).
lzrgb::Stats checkLzRgb(const Picture& p) {
  std::vector<uint8_t> data;
  lzrgb::Stats stats;
  const uint64_t n = uint64_t{p.width} * p.height;
  REQUIRE(lzrgb::compress(p.rect(), lzrgb::maxEncodedBytes(n), data, &stats));
  CHECK(data.size() <= lzrgb::maxEncodedBytes(n));
  CHECK(stats.literalPixels <= n);
  EncodedImage viaApi = encodeLzRgb(p.rect());
  CHECK(viaApi.encoding == ImageEncoding::LzRgb);
  CHECK(viaApi.width == p.width);
  CHECK(viaApi.height == p.height);
  CHECK(viaApi.data == data);
  client::Pixels got = decodedOrFail(client::decodeLzRgb(data, p.width, p.height));
  CHECK(difference(got, p.pixels(RGB_MASK)) == "");
  return stats;
}

// LZ4 round trip: every byte, x byte included.
void checkLz4(const Picture& p) {
  EncodedImage e = encodeLz4(p.rect());
  REQUIRE(e.encoding == ImageEncoding::Lz4);
  REQUIRE(!e.data.empty());
  CHECK(e.data[0] == 1);                       // top_down
  CHECK(e.data[1] == SPICE_BITMAP_FMT_32BIT);  // format
  CHECK(countLz4Blocks(e.data) >= 1);
  client::Pixels got = decodedOrFail(client::decodeLz4(e.data, p.width, p.height));
  CHECK(difference(got, p.pixels()) == "");
}

void checkAll(const Picture& p) {
  INFO(p.width << "x" << p.height);
  checkLzRgb(p);
  checkLz4(p);
}

TEST_CASE("bitmap-is-the-rows-top-first-without-the-stride-padding", "[encode]") {
  Picture p = noise(5, 3, 7, /*padding=*/3);
  EncodedImage e = encodeBitmap(p.rect());
  CHECK(e.encoding == ImageEncoding::Bitmap);
  CHECK(e.width == 5);
  CHECK(e.height == 3);
  client::Pixels words(e.data.size() / 4);
  REQUIRE(e.data.size() == 5 * 3 * 4);
  std::memcpy(words.data(), e.data.data(), e.data.size());
  CHECK(difference(words, p.pixels()) == "");
}

TEST_CASE("round-trip-solid", "[encode]") {
  Picture p = solid(64, 64, 0xff336699);
  checkAll(p);
  lzrgb::Stats s = checkLzRgb(p);
  CHECK(s.literalPixels == 1);  // one pixel, then one run
  CHECK(s.longestMatch == 64 * 64 - 1);
  CHECK(encodeLzRgb(p.rect()).data.size() < 64);
}

TEST_CASE("round-trip-gradient-and-ui", "[encode]") {
  checkAll(gradient(300, 200));
  checkAll(desktop(640, 480));
  Picture ui = desktop(640, 480);
  CHECK(encodeLzRgb(ui.rect()).data.size() < ui.pixels().size());  // < 1 byte per pixel
}

TEST_CASE("round-trip-narrow-and-odd-sizes", "[encode]") {
  for (uint32_t w = 1; w <= 4; ++w) {
    for (uint32_t h = 1; h <= 5; ++h) {
      checkAll(noise(w, h, w * 10 + h));
      checkAll(solid(w, h, 0x00abcdef));
      checkAll(gradient(w, h));
    }
  }
  for (auto [w, h] : {std::pair{31u, 1u},
                      {32u, 1u},
                      {33u, 1u},
                      {64u, 1u},
                      {65u, 2u},
                      {33u, 17u},
                      {97u, 13u},
                      {1u, 300u},
                      {255u, 3u},
                      {257u, 3u}}) {
    checkAll(noise(w, h, w + h));
    checkAll(desktop(w, h));
  }
}

TEST_CASE("round-trip-a-sub-rectangle-of-a-wider-segment", "[encode]") {
  Picture p = desktop(200, 100);
  Picture sub(50, 40, 150);
  for (uint32_t y = 0; y < 40; ++y) {
    for (uint32_t x = 0; x < 200; ++x) {
      sub.words[uint64_t{y} * 200 + x] = p.at(x, y + 30);  // columns 50.. are "the segment"
    }
  }
  checkAll(sub);
  EncodedImage b = encodeBitmap(sub.rect());
  REQUIRE(b.data.size() == 50 * 40 * 4);
  client::Pixels words(50 * 40);
  std::memcpy(words.data(), b.data.data(), b.data.size());
  CHECK(difference(words, sub.pixels()) == "");
}

TEST_CASE("lz-rgb-drops-the-x-byte-lz4-keeps-it", "[encode]") {
  Picture p = solid(40, 3, 0x00102030);
  for (uint32_t x = 0; x < 40; ++x) {
    p.at(x, 1) = (x * 37u) << 24 | 0x102030;  // same colour, varying x byte
  }
  lzrgb::Stats s = checkLzRgb(p);  // checks the x byte decodes as 0
  CHECK(s.literalPixels == 1);     // the x byte does not break the run
  checkLz4(p);                     // checks every byte
}

TEST_CASE("round-trip-1920x1080-desktop", "[encode]") {
  Picture p = desktop(1920, 1080);
  checkAll(p);
  EncodedImage lz4 = encodeLz4(p.rect());
  CHECK(countLz4Blocks(lz4.data) > 1);  // blocks decode with the previous ones as history
  EncodedImage lz = encodeLzRgb(p.rect());
  CHECK(lz.data.size() < uint64_t{1920} * 1080 / 2);
}

TEST_CASE("noise-stays-within-the-worst-case", "[encode]") {
  Picture p = noise(257, 131, 99);
  const uint64_t n = 257 * 131;
  lzrgb::Stats s = checkLzRgb(p);
  CHECK(s.literalPixels == n);  // nothing to match in 24-bit noise
  CHECK(encodeLzRgb(p.rect()).data.size() == lzrgb::maxEncodedBytes(n) - 1);
  checkLz4(p);
  // A limit below the result stops the encoder with a refusal, not an overrun.
  std::vector<uint8_t> out;
  CHECK_FALSE(lzrgb::compress(p.rect(), 3 * n, out));
  CHECK_FALSE(lzrgb::compress(p.rect(), 10, out));
}

TEST_CASE("match-lengths-across-the-extension-byte-boundaries", "[encode]") {
  // One noise pixel, then a run: the run is one match of length L - 1 after a one-pixel literal.
  for (uint32_t len = 1; len <= 600; ++len) {
    INFO("run of " << len);
    Picture p = solid(len + 1, 1, 0x00c0ffee);
    p.at(0, 0) = 0x00123456;
    lzrgb::Stats s = checkLzRgb(p);
    CHECK(s.longestMatch == (len >= 3 ? len - 1 : 0));  // a 1-pixel run is not worth a match
  }
  Picture longRun = solid(70000, 1, 0x00ffffff);
  lzrgb::Stats s = checkLzRgb(longRun);
  CHECK(s.longestMatch == 69999);  // 274 extension bytes of 255
}

// Noise whose pixels [dist, dist + 64) repeat [0, 64): only a match `dist` back finds them.
Picture repeatAt(uint32_t dist) {
  Picture p = noise(1, dist + 100, dist);
  for (uint32_t i = 0; i < 64; ++i) {
    p.at(0, dist + i) = p.at(0, i);
  }
  return p;
}

TEST_CASE("near-and-far-distances-at-their-limits", "[encode]") {
  for (uint32_t dist : {2u, 255u, 256u, 8190u, 8191u}) {
    INFO("distance " << dist);
    lzrgb::Stats s = checkLzRgb(repeatAt(dist));
    CHECK(s.nearMatches >= 1);
    CHECK(s.farMatches == 0);
  }
  for (uint32_t dist : {8192u, 8193u, 8447u, 8448u, 40000u, 73727u}) {
    INFO("distance " << dist);
    lzrgb::Stats s = checkLzRgb(repeatAt(dist));
    CHECK(s.farMatches >= 1);
  }
  // One pixel beyond the far limit: not encodable as a match, the pixels stay literals.
  lzrgb::Stats s = checkLzRgb(repeatAt(73728));
  CHECK(s.farMatches + s.nearMatches == 0);
}

TEST_CASE("far-matches-in-a-wide-picture", "[encode]") {
  // Rows 120 .. 129 repeat rows 0 .. 9 of a 100-pixel-wide noise picture: 12000 pixels back.
  Picture p = noise(100, 240, 5);
  for (uint32_t y = 0; y < 10; ++y) {
    for (uint32_t x = 0; x < 100; ++x) {
      p.at(x, 120 + y) = p.at(x, y);
    }
  }
  lzrgb::Stats s = checkLzRgb(p);
  CHECK(s.farMatches >= 1);
  CHECK(s.literalPixels <= 100 * 230 + 4);
}

TEST_CASE("encode-image-follows-the-mode", "[encode]") {
  Picture ui = desktop(300, 200);
  const uint64_t raw = 300 * 200 * 4;
  const size_t lzSize = encodeLzRgb(ui.rect()).data.size();
  const size_t lz4Size = encodeLz4(ui.rect()).data.size();
  REQUIRE(lzSize < raw);
  REQUIRE(lz4Size < raw);

  CHECK(encodeImage(ui.rect(), ImageCompression::Off, true).encoding == ImageEncoding::Bitmap);
  CHECK(encodeImage(ui.rect(), ImageCompression::Lz, true).encoding == ImageEncoding::LzRgb);
  CHECK(encodeImage(ui.rect(), ImageCompression::Lz4, true).encoding == ImageEncoding::Lz4);
  CHECK(encodeImage(ui.rect(), ImageCompression::Lz4, false).encoding == ImageEncoding::LzRgb);
  CHECK(encodeImage(ui.rect(), ImageCompression::AutoLz, false).encoding == ImageEncoding::LzRgb);
  EncodedImage best = encodeImage(ui.rect(), ImageCompression::AutoLz, true);
  CHECK(best.data.size() == std::min(lzSize, lz4Size));
  CHECK(best.encoding == (lz4Size <= lzSize ? ImageEncoding::Lz4 : ImageEncoding::LzRgb));
  for (auto mode : {ImageCompression::AutoLz, ImageCompression::Lz, ImageCompression::Lz4}) {
    EncodedImage e = encodeImage(ui.rect(), mode, true);
    auto decoded = e.encoding == ImageEncoding::Lz4 ? client::decodeLz4(e.data, 300, 200)
                                                    : client::decodeLzRgb(e.data, 300, 200);
    CHECK(difference(decodedOrFail(decoded),
                     ui.pixels(e.encoding == ImageEncoding::Lz4 ? 0xffffffff : RGB_MASK)) == "");
  }
}

TEST_CASE("encode-image-never-sends-a-compressed-image-larger-than-raw", "[encode]") {
  // 32-bit noise: LZ4 cannot beat the raw rows; LZ_RGB can (3 bytes a pixel) once the 28-byte
  // header is paid for.
  Picture big = noise(128, 64, 3);
  CHECK(encodeLz4(big.rect()).data.size() > uint64_t{128} * 64 * 4);
  CHECK(encodeImage(big.rect(), ImageCompression::Lz4, true).encoding == ImageEncoding::Bitmap);
  CHECK(encodeImage(big.rect(), ImageCompression::AutoLz, true).encoding == ImageEncoding::LzRgb);
  // Tiny images: the headers alone are larger than the pixels.
  for (uint32_t w = 1; w <= 4; ++w) {
    Picture tiny = noise(w, 2, w);
    for (auto mode : {ImageCompression::AutoLz, ImageCompression::Lz, ImageCompression::Lz4}) {
      EncodedImage e = encodeImage(tiny.rect(), mode, true);
      CHECK(e.encoding == ImageEncoding::Bitmap);
      CHECK(e.data.size() == uint64_t{w} * 2 * 4);
    }
  }
  EncodedImage empty = encodeImage(PixelRect{}, ImageCompression::AutoLz, true);
  CHECK(empty.encoding == ImageEncoding::Bitmap);
  CHECK(empty.data.empty());
}

TEST_CASE("decoders-honour-bottom-up-data", "[decode]") {
  Picture p = desktop(30, 7);
  client::Pixels flipped;
  for (uint32_t y = 7; y-- > 0;) {
    for (uint32_t x = 0; x < 30; ++x) {
      flipped.push_back(p.at(x, y));
    }
  }
  EncodedImage lz = encodeLzRgb(p.rect());
  lz.data[27] = 0;  // top_down word, last byte
  client::Pixels expected = flipped;
  for (auto& v : expected)
    v &= RGB_MASK;
  CHECK(difference(decodedOrFail(client::decodeLzRgb(lz.data, 30, 7)), expected) == "");
  EncodedImage lz4 = encodeLz4(p.rect());
  lz4.data[0] = 0;
  CHECK(difference(decodedOrFail(client::decodeLz4(lz4.data, 30, 7)), flipped) == "");
}

// --- LZ_RGB streams assembled by hand from the format description -------------------------

std::vector<uint8_t> lzHeader(uint32_t w, uint32_t h, uint32_t type = 8, uint32_t stride = 0,
                              uint32_t magic = 0x20205a4c, uint32_t version = 0x00010001) {
  std::vector<uint8_t> d;
  for (uint32_t v : {magic, version, type, w, h, stride ? stride : w * 4, 1u}) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      d.push_back(static_cast<uint8_t>(v >> shift));
    }
  }
  return d;
}

std::vector<uint8_t> concat(std::vector<uint8_t> a, std::initializer_list<uint8_t> b) {
  a.insert(a.end(), b);
  return a;
}

TEST_CASE("hand-made-lz-rgb-stream-decodes", "[decode]") {
  // 4 x 2: literal B,G,R = 1,2,3; run of 3 (L = 3, dist 1); literal 2 pixels; match of 2 at 4.
  auto data =
      concat(lzHeader(4, 2), {0x00, 1, 2, 3, 0x60, 0x00, 0x01, 9, 8, 7, 6, 5, 4, 0x40, 0x01});
  client::Pixels px = decodedOrFail(client::decodeLzRgb(data, 4, 2));
  CHECK(px == client::Pixels{0x030201, 0x030201, 0x030201, 0x030201, 0x070809, 0x040506, 0x070809,
                             0x040506});
  // Far escape: 8192 literal pixels (256 runs of 32), then 4 pixels from 8192 back: 3F FF 00 00.
  std::vector<uint8_t> far = lzHeader(8196, 1);
  for (int run = 0; run < 256; ++run) {
    far.push_back(31);
    for (int i = 0; i < 32; ++i) {
      int pixel = run * 32 + i;
      far.insert(far.end(), {static_cast<uint8_t>(pixel), static_cast<uint8_t>(pixel >> 8), 0});
    }
  }
  far.insert(far.end(), {0x9f, 0xff, 0x00, 0x00});  // L = 4, H = 31, B = 255, v = 0
  client::Pixels fp = decodedOrFail(client::decodeLzRgb(far, 8196, 1));
  for (uint32_t i = 0; i < 4; ++i) {
    CHECK(fp[8192 + i] == i);
  }
  // Length 262 = 7 + 255 + 0: E0 FF 00 then distance byte 00.
  auto longRun = concat(lzHeader(263, 1), {0x00, 1, 1, 1, 0xe0, 0xff, 0x00, 0x00});
  client::Pixels lp = decodedOrFail(client::decodeLzRgb(longRun, 263, 1));
  CHECK(std::all_of(lp.begin(), lp.end(), [](uint32_t v) { return v == 0x010101; }));
}

// --- hostile input: LZ_RGB ---------------------------------------------------------------

TEST_CASE("lz-rgb-truncated-stream", "[decode][hostile]") {
  for (const Picture& p : {desktop(20, 10), repeatAt(8200)}) {
    std::vector<uint8_t> data = encodeLzRgb(p.rect()).data;
    const size_t step = data.size() > 2000 ? 37 : 1;
    for (size_t len = 0; len < data.size(); len += (len + 64 >= data.size() ? 1 : step)) {
      INFO("prefix of " << len << " of " << data.size() << " bytes");
      std::vector<uint8_t> prefix(data.begin(), data.begin() + static_cast<ptrdiff_t>(len));
      refusal(client::decodeLzRgb(prefix, p.width, p.height));
    }
  }
}

TEST_CASE("lz-rgb-match-before-image-start", "[decode][hostile]") {
  CHECK_THAT(refusal(client::decodeLzRgb(concat(lzHeader(4, 1), {0x20, 0x00}), 4, 1)),
             Catch::Contains("before the start"));
  // Far: one pixel written, then 8192 back.
  CHECK_THAT(refusal(client::decodeLzRgb(
                 concat(lzHeader(4, 1), {0x00, 1, 2, 3, 0x3f, 0xff, 0x00, 0x00}), 4, 1)),
             Catch::Contains("before the start"));
  // Near, one past what is written.
  CHECK_THAT(
      refusal(client::decodeLzRgb(concat(lzHeader(4, 1), {0x00, 1, 2, 3, 0x40, 0x01}), 4, 1)),
      Catch::Contains("before the start"));
}

TEST_CASE("lz-rgb-output-overrun", "[decode][hostile]") {
  CHECK_THAT(
      refusal(client::decodeLzRgb(concat(lzHeader(2, 1), {0x02, 1, 1, 1, 2, 2, 2, 3, 3, 3}), 2, 1)),
      Catch::Contains("overruns"));
  CHECK_THAT(
      refusal(client::decodeLzRgb(concat(lzHeader(2, 1), {0x00, 1, 1, 1, 0x40, 0x00}), 2, 1)),
      Catch::Contains("overruns"));
  // A length made of 255s, far beyond the image.
  std::vector<uint8_t> huge = concat(lzHeader(8, 8), {0x00, 1, 1, 1, 0xe0});
  huge.insert(huge.end(), 40, 255);
  huge.insert(huge.end(), {0x00, 0x00});
  CHECK_THAT(refusal(client::decodeLzRgb(huge, 8, 8)), Catch::Contains("overruns"));
}

TEST_CASE("lz-rgb-length-bytes-run-off-the-end", "[decode][hostile]") {
  std::vector<uint8_t> data = concat(lzHeader(100, 100), {0x00, 1, 1, 1, 0xe0});
  data.insert(data.end(), 100, 255);
  CHECK_THAT(refusal(client::decodeLzRgb(data, 100, 100)), Catch::Contains("truncated"));
}

TEST_CASE("lz-rgb-header-disagrees-with-the-descriptor", "[decode][hostile]") {
  std::vector<uint8_t> data = encodeLzRgb(desktop(8, 4).rect()).data;
  CHECK_THAT(refusal(client::decodeLzRgb(data, 4, 8)), Catch::Contains("header says 8x4"));
  CHECK_THAT(refusal(client::decodeLzRgb(data, 8, 5)), Catch::Contains("header says 8x4"));
  auto body = std::vector<uint8_t>(data.begin() + 28, data.end());
  auto withHeader = [&](std::vector<uint8_t> h) {
    h.insert(h.end(), body.begin(), body.end());
    return h;
  };
  CHECK_THAT(refusal(client::decodeLzRgb(withHeader(lzHeader(8, 4, 8, 36)), 8, 4)),
             Catch::Contains("stride"));
  CHECK_THAT(refusal(client::decodeLzRgb(withHeader(lzHeader(8, 4, 9)), 8, 4)),
             Catch::Contains("image type 9"));
  CHECK_THAT(refusal(client::decodeLzRgb(withHeader(lzHeader(8, 4, 8, 0, 0x4c5a2020)), 8, 4)),
             Catch::Contains("magic"));
  CHECK_THAT(
      refusal(client::decodeLzRgb(withHeader(lzHeader(8, 4, 8, 0, 0x20205a4c, 0x20001)), 8, 4)),
      Catch::Contains("version"));
  data.push_back(0);
  CHECK_THAT(refusal(client::decodeLzRgb(data, 8, 4)), Catch::Contains("follow"));
}

TEST_CASE("lz-rgb-huge-descriptor-tiny-data", "[decode][hostile]") {
  auto data = concat(lzHeader(8192, 8192), {0x00, 1, 1, 1, 0xe0, 0xff, 0xff, 0x00, 0x00});
  CHECK_THAT(refusal(client::decodeLzRgb(data, 8192, 8192)), Catch::Contains("cannot encode"));
  CHECK_THAT(refusal(client::decodeLzRgb(data, 8193, 8192)), Catch::Contains("largest"));
  CHECK_THAT(refusal(client::decodeLzRgb(data, 0, 5)), Catch::Contains("empty"));
  CHECK_THAT(refusal(client::decodeLzRgb(data, 0xffffffff, 0xffffffff)),
             Catch::Contains("largest"));
}

// Random byte changes to a valid stream: any answer is fine, as long as nothing is read or
// written out of bounds (the sanitizer build) and a decoded image has the descriptor's size.
template <typename Decode>
void mutateAndDecode(const std::vector<uint8_t>& valid, uint32_t w, uint32_t h, Decode decode) {
  std::mt19937 rng(42);
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> data = valid;
    int changes = 1 + static_cast<int>(rng() % 4);
    for (int c = 0; c < changes; ++c) {
      data[rng() % data.size()] = static_cast<uint8_t>(rng());
    }
    auto result = decode(data, w, h);
    if (auto* px = std::get_if<client::Pixels>(&result)) {
      CHECK(px->size() == uint64_t{w} * h);
    }
  }
}

TEST_CASE("lz-rgb-random-byte-changes", "[decode][hostile]") {
  Picture p = desktop(48, 40);
  mutateAndDecode(encodeLzRgb(p.rect()).data, 48, 40, client::decodeLzRgb);
}

// --- hostile input: LZ4 ------------------------------------------------------------------

TEST_CASE("lz4-truncated-data", "[decode][hostile]") {
  Picture p = desktop(64, 64);
  std::vector<uint8_t> data = encodeLz4(p.rect()).data;
  for (size_t len = 0; len < data.size(); ++len) {
    INFO("prefix of " << len << " of " << data.size() << " bytes");
    std::vector<uint8_t> prefix(data.begin(), data.begin() + static_cast<ptrdiff_t>(len));
    refusal(client::decodeLz4(prefix, 64, 64));
  }
}

TEST_CASE("lz4-block-size-past-the-end", "[decode][hostile]") {
  std::vector<uint8_t> data = encodeLz4(desktop(64, 64).rect()).data;
  for (uint8_t top : {0x00, 0x7f, 0xff}) {
    std::vector<uint8_t> bad = data;
    bad[2] = top;
    bad[3] = 0xff;
    CHECK_THAT(refusal(client::decodeLz4(bad, 64, 64)), Catch::Contains("claims"));
  }
  std::vector<uint8_t> zero = data;
  zero[2] = zero[3] = zero[4] = zero[5] = 0;
  CHECK_THAT(refusal(client::decodeLz4(zero, 64, 64)), Catch::Contains("claims 0"));
}

TEST_CASE("lz4-header-only-and-bad-format", "[decode][hostile]") {
  CHECK_THAT(refusal(client::decodeLz4(std::vector<uint8_t>{1, 8}, 1, 1)),
             Catch::Contains("no block"));
  CHECK_THAT(refusal(client::decodeLz4(std::vector<uint8_t>{1}, 1, 1)), Catch::Contains("shorter"));
  std::vector<uint8_t> data = encodeLz4(desktop(16, 16).rect()).data;
  data[1] = SPICE_BITMAP_FMT_16BIT;
  CHECK_THAT(refusal(client::decodeLz4(data, 16, 16)), Catch::Contains("format 6"));
}

TEST_CASE("lz4-output-overrun-and-short-image", "[decode][hostile]") {
  std::vector<uint8_t> data = encodeLz4(desktop(64, 64).rect()).data;
  CHECK_THAT(refusal(client::decodeLz4(data, 64, 63)), Catch::Contains("past the image"));
  CHECK_THAT(refusal(client::decodeLz4(data, 64, 65)), Catch::Contains("need"));
  // Two images' blocks back to back: the second block follows a complete image.
  std::vector<uint8_t> twice = data;
  twice.insert(twice.end(), data.begin() + 2, data.end());
  refusal(client::decodeLz4(twice, 64, 64));
}

TEST_CASE("lz4-match-offset-before-image-start", "[decode][hostile]") {
  // One LZ4 sequence: token 0x10 (1 literal, match length 4), literal 'A', offset 5 (only one
  // byte exists), then a last literal run of 5 as the block format requires.
  std::vector<uint8_t> data{1, 8, 0, 0, 0, 10, 0x10, 'A', 5, 0, 0x50, 1, 2, 3, 4, 5};
  CHECK_THAT(refusal(client::decodeLz4(data, 10, 1)), Catch::Contains("malformed"));
}

TEST_CASE("lz4-huge-descriptor-tiny-data", "[decode][hostile]") {
  std::vector<uint8_t> data = encodeLz4(solid(64, 64, 0).rect()).data;
  CHECK_THAT(refusal(client::decodeLz4(data, 8192, 8192)), Catch::Contains("cannot hold"));
  CHECK_THAT(refusal(client::decodeLz4(data, 8192, 8193)), Catch::Contains("largest"));
}

TEST_CASE("lz4-random-byte-changes", "[decode][hostile]") {
  Picture p = desktop(48, 40);
  mutateAndDecode(encodeLz4(p.rect()).data, 48, 40, client::decodeLz4);
}

}  // namespace
}  // namespace spicebox::netproxy
