// Runs in: the renderer-raster-tests binary (trusted test code). Input: hand-built command trees;
// expected pixels are computed here from simple formulas, not by the code under test.
#include <spice/enums.h>
#include <spice/qxl_dev.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "renderer/raster.h"
#include "tools/guestsim/scenario.h"

using namespace spicebox;
using namespace spicebox::renderer;
using qxlcmd::Rect;

namespace {

Rect xywh(int32_t x, int32_t y, int32_t w, int32_t h) {
  return Rect{y, x, y + h, x + w};
}

struct Primary {
  explicit Primary(uint32_t w = 16, uint32_t h = 16, uint32_t format = SPICE_SURFACE_FMT_32_xRGB)
      : width(w), mem(w * h) {
    REQUIRE_FALSE(r.createPrimary(w, h, static_cast<int32_t>(w * 4), format,
                                  std::as_writable_bytes(std::span(mem))));
  }
  uint32_t at(uint32_t x, uint32_t y) const { return mem[y * width + x]; }
  uint32_t width;
  std::vector<uint32_t> mem;
  Rasteriser r;
};

qxlcmd::Drawable drawable(Rect bbox, qxlcmd::DrawPayload payload, uint32_t surface = 0) {
  qxlcmd::Drawable d;
  d.bbox = bbox;
  d.surfaceId = surface;
  d.type = static_cast<uint8_t>(payload.index());
  d.payload = std::move(payload);
  return d;
}

qxlcmd::Brush solid(uint32_t color) {
  qxlcmd::Brush b;
  b.type = SPICE_BRUSH_TYPE_SOLID;
  b.color = color;
  return b;
}

qxlcmd::Drawable fill(Rect bbox, uint32_t color, uint16_t rop = SPICE_ROPD_OP_PUT) {
  qxlcmd::Fill f;
  f.brush = solid(color);
  f.ropDescriptor = rop;
  return drawable(bbox, f);
}

// A top-down 32BIT bitmap whose pixel (x, y) is fn(x, y).
template <typename Fn>
qxlcmd::Image bitmap32(uint32_t w, uint32_t h, Fn fn, uint8_t format = SPICE_BITMAP_FMT_32BIT) {
  qxlcmd::Bitmap b;
  b.format = format;
  b.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
  b.x = w;
  b.y = h;
  b.stride = w * 4;
  b.data.resize(size_t{w} * h * 4);
  for (uint32_t y = 0; y < h; ++y) {
    for (uint32_t x = 0; x < w; ++x) {
      uint32_t v = fn(x, y);
      std::memcpy(&b.data[(y * w + x) * 4], &v, 4);
    }
  }
  qxlcmd::Image img;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.width = w;
  img.height = h;
  img.payload = b;
  return img;
}

qxlcmd::Drawable copy(Rect bbox, qxlcmd::Image src, Rect srcArea,
                      uint16_t rop = SPICE_ROPD_OP_PUT) {
  qxlcmd::Copy c;
  c.srcBitmap = std::move(src);
  c.srcArea = srcArea;
  c.ropDescriptor = rop;
  return drawable(bbox, c);
}

qxlcmd::SurfaceCmd createCmd(uint32_t id, uint32_t format, uint32_t w, uint32_t h) {
  qxlcmd::SurfaceCmd s;
  s.surfaceId = id;
  s.type = QXL_SURFACE_CMD_CREATE;
  s.format = format;
  s.width = w;
  s.height = h;
  s.stride = static_cast<int32_t>(w * 4);
  return s;
}

uint32_t pattern(uint32_t x, uint32_t y) {
  return 0x00010000u * (x + 1) + 0x100u * (y + 1) + 7;
}

}  // namespace

TEST_CASE("fill solid put writes the colour inside the bbox only and reports damage") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(2, 3, 4, 5), 0x123456)));
  for (uint32_t y = 0; y < 16; ++y) {
    for (uint32_t x = 0; x < 16; ++x) {
      bool inside = x >= 2 && x < 6 && y >= 3 && y < 8;
      CHECK(p.at(x, y) == (inside ? 0x123456u : 0u));
    }
  }
  auto damage = p.r.takeDamage();
  REQUIRE(damage.size() == 1);
  CHECK(damage[0] == xywh(2, 3, 4, 5));
  CHECK(p.r.takeDamage().empty());
}

TEST_CASE("fill rop descriptors combine brush and destination bitwise") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0x00f0f0f0)));
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 1, 1), 0x00ff00ff, SPICE_ROPD_OP_XOR)));
  CHECK(p.at(0, 0) == (0x00f0f0f0u ^ 0x00ff00ffu));
  REQUIRE_FALSE(p.r.draw(fill(xywh(1, 0, 1, 1), 0x00ff00ff, SPICE_ROPD_OP_AND)));
  CHECK(p.at(1, 0) == (0x00f0f0f0u & 0x00ff00ffu));
  REQUIRE_FALSE(p.r.draw(fill(xywh(2, 0, 1, 1), 0x0000000f, SPICE_ROPD_OP_OR)));
  CHECK(p.at(2, 0) == (0x00f0f0f0u | 0xfu));
  REQUIRE_FALSE(
      p.r.draw(fill(xywh(3, 0, 1, 1), 0x00ff00ff, SPICE_ROPD_OP_PUT | SPICE_ROPD_INVERS_BRUSH)));
  CHECK(p.at(3, 0) == ~0x00ff00ffu);
  REQUIRE_FALSE(
      p.r.draw(fill(xywh(4, 0, 1, 1), 0x00ff00ff, SPICE_ROPD_OP_AND | SPICE_ROPD_INVERS_DEST)));
  CHECK(p.at(4, 0) == (0x00ff00ffu & ~0x00f0f0f0u));
  REQUIRE_FALSE(
      p.r.draw(fill(xywh(5, 0, 1, 1), 0x00ff00ff, SPICE_ROPD_OP_OR | SPICE_ROPD_INVERS_RES)));
  CHECK(p.at(5, 0) == ~(0x00ff00ffu | 0x00f0f0f0u));
}

TEST_CASE("clip rects limit a fill and its damage") {
  Primary p;
  auto d = fill(xywh(0, 0, 16, 16), 0xabcdef);
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = {xywh(1, 1, 2, 2), xywh(10, 10, 3, 1)};
  REQUIRE_FALSE(p.r.draw(d));
  CHECK(p.at(1, 1) == 0xabcdefu);
  CHECK(p.at(2, 2) == 0xabcdefu);
  CHECK(p.at(3, 3) == 0u);
  CHECK(p.at(12, 10) == 0xabcdefu);
  CHECK(p.at(12, 11) == 0u);
  CHECK(p.at(0, 0) == 0u);
  auto damage = p.r.takeDamage();
  REQUIRE(damage.size() == 2);
}

TEST_CASE("copy from a 32BIT bitmap keeps raw words, bottom-up bitmaps are flipped") {
  Primary p;
  auto img = bitmap32(4, 3, [](uint32_t x, uint32_t y) { return 0xaa000000u | pattern(x, y); });
  REQUIRE_FALSE(p.r.draw(copy(xywh(5, 6, 4, 3), img, xywh(0, 0, 4, 3))));
  CHECK(p.at(5, 6) == (0xaa000000u | pattern(0, 0)));
  CHECK(p.at(8, 8) == (0xaa000000u | pattern(3, 2)));
  CHECK(p.at(9, 8) == 0u);

  std::get<qxlcmd::Bitmap>(img.payload).flags = 0;  // bottom-up: first row in memory is bottom
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 4, 3), img, xywh(1, 1, 3, 2))));
  // bbox 4x3 vs srcArea 3x2 would scale; use same-size areas instead:
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 10, 4, 3), img, xywh(0, 0, 4, 3))));
  CHECK(p.at(0, 10) == (0xaa000000u | pattern(0, 2)));
  CHECK(p.at(0, 12) == (0xaa000000u | pattern(0, 0)));
}

TEST_CASE("copy from an RGBA bitmap onto xRGB keeps the words, high bits set forces alpha") {
  Primary p;
  auto img = bitmap32(
      2, 1, [](uint32_t x, uint32_t) { return x ? 0x80102030u : 0x00405060u; },
      SPICE_BITMAP_FMT_RGBA);
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 2, 1), img, xywh(0, 0, 2, 1))));
  CHECK(p.at(0, 0) == 0x00405060u);
  CHECK(p.at(1, 0) == 0x80102030u);
  auto hb = bitmap32(1, 1, [](uint32_t, uint32_t) { return 0x00112233u; });
  hb.flags = SPICE_IMAGE_FLAGS_HIGH_BITS_SET;
  REQUIRE_FALSE(p.r.draw(copy(xywh(3, 0, 1, 1), hb, xywh(0, 0, 1, 1))));
  CHECK(p.at(3, 0) == 0xff112233u);
}

TEST_CASE("copy with a src-area offset and a clip reads the right source pixels") {
  Primary p;
  auto img = bitmap32(8, 8, pattern);
  auto d = copy(xywh(4, 4, 3, 3), img, xywh(2, 1, 3, 3));
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = {xywh(5, 5, 10, 10)};
  REQUIRE_FALSE(p.r.draw(d));
  CHECK(p.at(4, 4) == 0u);
  CHECK(p.at(5, 5) == pattern(3, 2));
  CHECK(p.at(6, 6) == pattern(4, 3));
}

TEST_CASE("indexed bitmaps expand through their palettes") {
  Primary p;
  auto make = [](uint8_t format, std::vector<uint8_t> row, uint32_t w) {
    qxlcmd::Bitmap b;
    b.format = format;
    b.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
    b.x = w;
    b.y = 1;
    b.stride = static_cast<uint32_t>(row.size());
    b.data = row;
    qxlcmd::Palette pal;
    for (uint32_t i = 0; i < 256; ++i) {
      pal.entries.push_back(0x00010101u * i);
    }
    b.palette = pal;
    qxlcmd::Image img;
    img.type = SPICE_IMAGE_TYPE_BITMAP;
    img.payload = b;
    return img;
  };
  REQUIRE_FALSE(p.r.draw(
      copy(xywh(0, 0, 3, 1), make(SPICE_BITMAP_FMT_8BIT, {5, 200, 0}, 3), xywh(0, 0, 3, 1))));
  CHECK(p.at(0, 0) == 0x050505u);
  CHECK(p.at(1, 0) == 0xc8c8c8u);
  CHECK(p.at(2, 0) == 0u);
  REQUIRE_FALSE(p.r.draw(
      copy(xywh(0, 1, 3, 1), make(SPICE_BITMAP_FMT_4BIT_BE, {0x3a, 0x70}, 3), xywh(0, 0, 3, 1))));
  CHECK(p.at(0, 1) == 0x030303u);
  CHECK(p.at(1, 1) == 0x0a0a0au);
  CHECK(p.at(2, 1) == 0x070707u);
  REQUIRE_FALSE(p.r.draw(
      copy(xywh(0, 2, 4, 1), make(SPICE_BITMAP_FMT_1BIT_BE, {0xa0}, 4), xywh(0, 0, 4, 1))));
  CHECK(p.at(0, 2) == 0x010101u);
  CHECK(p.at(1, 2) == 0u);
  CHECK(p.at(2, 2) == 0x010101u);
  REQUIRE_FALSE(p.r.draw(
      copy(xywh(0, 3, 4, 1), make(SPICE_BITMAP_FMT_1BIT_LE, {0x05}, 4), xywh(0, 0, 4, 1))));
  CHECK(p.at(0, 3) == 0x010101u);
  CHECK(p.at(1, 3) == 0u);
  CHECK(p.at(2, 3) == 0x010101u);
  // 16 bpp 555 and 24 bpp sources
  qxlcmd::Image i16 = make(SPICE_BITMAP_FMT_16BIT, {0x1f, 0x7c}, 1);  // 0x7c1f: r=31, b=31
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 4, 1, 1), i16, xywh(0, 0, 1, 1))));
  CHECK((p.at(0, 4) & 0xffffffu) == 0xff00ffu);
  qxlcmd::Image i24 = make(SPICE_BITMAP_FMT_24BIT, {0x11, 0x22, 0x33}, 1);
  REQUIRE_FALSE(p.r.draw(copy(xywh(1, 4, 1, 1), i24, xywh(0, 0, 1, 1))));
  CHECK(p.at(1, 4) == 0x332211u);
}

TEST_CASE("copy from another surface, and from a surface that does not exist") {
  Primary p;
  REQUIRE_FALSE(p.r.apply(createCmd(7, SPICE_SURFACE_FMT_32_xRGB, 8, 8)));
  REQUIRE_FALSE(p.r.draw(drawable(
      xywh(0, 0, 8, 8),
      [] {
        qxlcmd::Fill f;
        f.brush = solid(0x445566);
        f.ropDescriptor = SPICE_ROPD_OP_PUT;
        return f;
      }(),
      7)));
  CHECK(p.r.takeDamage().empty());  // offscreen draws leave no primary damage
  qxlcmd::Image src;
  src.type = SPICE_IMAGE_TYPE_SURFACE;
  src.payload = qxlcmd::SurfaceImage{7};
  REQUIRE_FALSE(p.r.draw(copy(xywh(2, 2, 2, 2), src, xywh(0, 0, 2, 2))));
  CHECK(p.at(2, 2) == 0x445566u);
  CHECK(p.at(4, 4) == 0u);
  src.payload = qxlcmd::SurfaceImage{8};
  CHECK(p.r.draw(copy(xywh(2, 2, 2, 2), src, xywh(0, 0, 2, 2))) ==
        RasterError::SourceSurfaceUnknown);
}

TEST_CASE("quic images are unsupported") {
  Primary p;
  qxlcmd::Image q;
  q.type = SPICE_IMAGE_TYPE_QUIC;
  q.payload = qxlcmd::QuicImage{};
  CHECK(p.r.draw(copy(xywh(0, 0, 2, 2), q, xywh(0, 0, 2, 2))) == RasterError::UnsupportedImage);
}

namespace {
// Fills the primary with pattern(), copies bits, compares against a snapshot-based reference.
void checkCopyBits(Rect bbox, qxlcmd::Point srcPos) {
  Primary p;
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 16, 16), bitmap32(16, 16, pattern), xywh(0, 0, 16, 16))));
  std::vector<uint32_t> before = p.mem;
  REQUIRE_FALSE(p.r.draw(drawable(bbox, qxlcmd::CopyBits{srcPos})));
  for (int32_t y = 0; y < 16; ++y) {
    for (int32_t x = 0; x < 16; ++x) {
      bool inside = x >= bbox.left && x < bbox.right && y >= bbox.top && y < bbox.bottom;
      uint32_t expect = inside ? before[static_cast<size_t>((y - bbox.top + srcPos.y) * 16 +
                                                            (x - bbox.left + srcPos.x))]
                               : before[static_cast<size_t>(y * 16 + x)];
      INFO("x=" << x << " y=" << y);
      CHECK(p.at(static_cast<uint32_t>(x), static_cast<uint32_t>(y)) == expect);
    }
  }
}
}  // namespace

TEST_CASE("copy bits overlapping to the right") {
  checkCopyBits(xywh(3, 2, 10, 8), {1, 2});
}
TEST_CASE("copy bits overlapping to the left") {
  checkCopyBits(xywh(1, 2, 10, 8), {3, 2});
}
TEST_CASE("copy bits overlapping down") {
  checkCopyBits(xywh(2, 5, 8, 10), {2, 1});
}
TEST_CASE("copy bits overlapping up") {
  checkCopyBits(xywh(2, 1, 8, 10), {3, 5});
}

TEST_CASE("blackness whiteness invers") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0x00123456)));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 1, 1), qxlcmd::Blackness{})));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(1, 0, 1, 1), qxlcmd::Whiteness{})));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(2, 0, 1, 1), qxlcmd::Invers{})));
  CHECK(p.at(0, 0) == 0u);
  CHECK(p.at(1, 0) == 0xffffffffu);
  CHECK(p.at(2, 0) == ~0x00123456u);
  CHECK(p.at(3, 0) == 0x00123456u);
}

TEST_CASE("a 1 bpp mask limits a fill, inverted on request") {
  Primary p;
  qxlcmd::Bitmap mb;
  mb.format = SPICE_BITMAP_FMT_1BIT_BE;
  mb.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
  mb.x = 4;
  mb.y = 1;
  mb.stride = 1;
  mb.data = {0x90};  // pixels 0 and 3
  qxlcmd::Image mi;
  mi.type = SPICE_IMAGE_TYPE_BITMAP;
  mi.payload = mb;
  qxlcmd::Fill f;
  f.brush = solid(0x777777);
  f.ropDescriptor = SPICE_ROPD_OP_PUT;
  f.mask.bitmap = mi;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(4, 0, 4, 1), f)));
  CHECK(p.at(4, 0) == 0x777777u);
  CHECK(p.at(5, 0) == 0u);
  CHECK(p.at(7, 0) == 0x777777u);
  f.mask.flags = SPICE_MASK_FLAGS_INVERS;
  f.brush = solid(0x111111);
  REQUIRE_FALSE(p.r.draw(drawable(xywh(4, 1, 4, 1), f)));
  CHECK(p.at(4, 1) == 0u);
  CHECK(p.at(5, 1) == 0x111111u);
}

TEST_CASE("pattern brush tiles from the pattern position") {
  Primary p;
  qxlcmd::Fill f;
  f.brush.type = SPICE_BRUSH_TYPE_PATTERN;
  f.brush.pattern = bitmap32(2, 2, [](uint32_t x, uint32_t y) { return x + 2 * y + 1; });
  f.brush.patternPos = {1, 0};
  f.ropDescriptor = SPICE_ROPD_OP_PUT;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 4, 2), f)));
  // dest (x, y) takes tile ((x - 1) mod 2, y mod 2)
  CHECK(p.at(0, 0) == 2u);
  CHECK(p.at(1, 0) == 1u);
  CHECK(p.at(2, 1) == 4u);
}

TEST_CASE("opaque puts the image then combines the brush") {
  Primary p;
  qxlcmd::Opaque o;
  o.srcBitmap = bitmap32(1, 1, [](uint32_t, uint32_t) { return 0x00f0f0f0u; });
  o.srcArea = xywh(0, 0, 1, 1);
  o.brush = solid(0x000f00ff);
  o.ropDescriptor = SPICE_ROPD_OP_XOR;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 1, 1), o)));
  CHECK(p.at(0, 0) == (0x00f0f0f0u ^ 0x000f00ffu));
}

TEST_CASE("rop3 0xca selects source where the brush is set, destination elsewhere") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0x00aaaaaa)));
  qxlcmd::Rop3 r;
  r.srcBitmap = bitmap32(2, 1, [](uint32_t, uint32_t) { return 0x00555555u; });
  r.srcArea = xywh(0, 0, 2, 1);
  r.brush = solid(0x00ff00ff);
  r.rop3 = 0xca;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 2, 1), r)));
  const uint32_t pb = 0x00ff00ffu, s = 0x00555555u, d = 0x00aaaaaau;
  CHECK(p.at(0, 0) == ((pb & s) | (~pb & d)));
  CHECK(p.at(2, 0) == d);
}

TEST_CASE("transparent skips the colour key") {
  Primary p;
  qxlcmd::Transparent t;
  t.srcBitmap = bitmap32(2, 1, [](uint32_t x, uint32_t) { return x ? 0xff00ff00u : 0x00123456u; });
  t.srcArea = xywh(0, 0, 2, 1);
  t.trueColor = 0x0000ff00;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 2, 1), t)));
  CHECK(p.at(0, 0) == 0x00123456u);
  CHECK(p.at(1, 0) == 0u);  // key matched on the low 24 bits
}

TEST_CASE("alpha blend mixes with OVER and overall alpha") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0x00000000)));
  qxlcmd::AlphaBlend a;
  a.alpha = 0xff;
  a.srcBitmap = bitmap32(
      1, 1, [](uint32_t, uint32_t) { return 0x80800000u; }, SPICE_BITMAP_FMT_RGBA);  // premult
  a.srcArea = xywh(0, 0, 1, 1);
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 1, 1), a)));
  CHECK((p.at(0, 0) & 0xffffffu) == 0x800000u);
  a.alpha = 0;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(1, 0, 1, 1), a)));
  CHECK(p.at(1, 0) == 0u);
}

TEST_CASE("every surface format can be created, drawn on, copied and read back") {
  Primary p(16, 16);
  const uint32_t formats[] = {SPICE_SURFACE_FMT_1_A,     SPICE_SURFACE_FMT_8_A,
                              SPICE_SURFACE_FMT_16_555,  SPICE_SURFACE_FMT_16_565,
                              SPICE_SURFACE_FMT_32_xRGB, SPICE_SURFACE_FMT_32_ARGB};
  uint32_t id = 1;
  for (uint32_t fmt : formats) {
    INFO("format " << fmt);
    REQUIRE_FALSE(p.r.apply(createCmd(id, fmt, 8, 4)));
    auto f = fill(xywh(1, 1, 2, 2), 0xffffffff);
    f.surfaceId = id;
    REQUIRE_FALSE(p.r.draw(f));
    const Surface* s = p.r.surface(id);
    REQUIRE(s != nullptr);
    const int bpp = PIXMAN_FORMAT_BPP(pixman_image_get_format(s->image.get()));
    std::vector<std::byte> guest(static_cast<size_t>(8 * 4) * 4);
    const int32_t stride = 8 * 4;
    REQUIRE_FALSE(p.r.updateArea(id, xywh(0, 0, 8, 4), guest, stride));
    // pixel (1,1) has all its bits set, (0,0) none
    auto bitAt = [&](int x, int y) {
      size_t bitOff = static_cast<size_t>(x) * bpp;
      auto byte = std::to_integer<unsigned>(guest[static_cast<size_t>(y * stride) + bitOff / 8]);
      return bpp == 1 ? (byte >> (x % 8)) & 1u : byte;
    };
    CHECK(bitAt(1, 1) != 0u);
    CHECK(bitAt(0, 0) == 0u);
    qxlcmd::Image src;
    src.type = SPICE_IMAGE_TYPE_SURFACE;
    src.payload = qxlcmd::SurfaceImage{id};
    auto c = copy(xywh(0, 0, 8, 4), src, xywh(0, 0, 8, 4));
    CHECK_FALSE(p.r.draw(c));
    ++id;
  }
}

TEST_CASE("keep data initialises a surface from the command, negative stride flips") {
  Rasteriser r;
  auto cmd = createCmd(3, SPICE_SURFACE_FMT_32_xRGB, 2, 2);
  cmd.flags = QXL_SURF_FLAG_KEEP_DATA;
  cmd.stride = -8;
  cmd.data.resize(16);
  const uint32_t words[4] = {1, 2, 3, 4};  // memory rows: {1,2} then {3,4}
  std::memcpy(cmd.data.data(), words, 16);
  REQUIRE_FALSE(r.apply(cmd));
  pixman_image_t* img = r.surface(3)->image.get();
  auto* bits = pixman_image_get_data(img);
  CHECK(bits[0] == 3u);  // top row is the last in memory
  CHECK(bits[1] == 4u);
  std::vector<std::byte> guest(16);
  REQUIRE_FALSE(r.updateArea(3, xywh(0, 0, 2, 2), guest, -8));
  CHECK(std::memcmp(guest.data(), words, 16) == 0);
}

TEST_CASE("a 16 bpp primary is shown through a 32 bpp shadow") {
  std::vector<uint32_t> shadow(4 * 4);
  Rasteriser r;
  REQUIRE_FALSE(r.createPrimary(4, 4, 16, SPICE_SURFACE_FMT_16_565,
                                std::as_writable_bytes(std::span(shadow))));
  REQUIRE_FALSE(r.draw(fill(xywh(0, 0, 2, 2), 0xf800)));  // pure red in 565
  CHECK((shadow[0] & 0xffffffu) == 0xff0000u);
  CHECK((shadow[2] & 0xffffffu) == 0u);
  CHECK(r.displayImage() != r.surface(0)->image.get());
}

TEST_CASE("double create and destroy") {
  Rasteriser r;
  REQUIRE_FALSE(r.apply(createCmd(5, SPICE_SURFACE_FMT_32_xRGB, 4, 4)));
  CHECK(r.apply(createCmd(5, SPICE_SURFACE_FMT_32_xRGB, 4, 4)) ==
        RasterError::SurfaceAlreadyExists);
  REQUIRE_FALSE(r.destroySurface(5));
  CHECK(r.destroySurface(5) == RasterError::SurfaceUnknown);
}

TEST_CASE("destroy unknown surface") {
  Rasteriser r;
  qxlcmd::SurfaceCmd d;
  d.surfaceId = 9;
  d.type = QXL_SURFACE_CMD_DESTROY;
  CHECK(r.apply(d) == RasterError::SurfaceUnknown);
  CHECK(r.draw(fill(xywh(0, 0, 1, 1), 0)) == RasterError::SurfaceUnknown);
}

TEST_CASE("surface id out of range") {
  Rasteriser r;
  CHECK(r.apply(createCmd(MAX_SURFACES, SPICE_SURFACE_FMT_32_xRGB, 4, 4)) ==
        RasterError::SurfaceIdOutOfRange);
  CHECK(r.apply(createCmd(0xffffffffu, SPICE_SURFACE_FMT_32_xRGB, 4, 4)) ==
        RasterError::SurfaceIdOutOfRange);
  auto f = fill(xywh(0, 0, 1, 1), 0);
  f.surfaceId = MAX_SURFACES;
  CHECK(r.draw(f) == RasterError::SurfaceIdOutOfRange);
  CHECK(r.destroySurface(4096) == RasterError::SurfaceIdOutOfRange);
}

TEST_CASE("huge and zero surface sizes and unsupported formats are refused") {
  Rasteriser r;
  CHECK(r.apply(createCmd(1, SPICE_SURFACE_FMT_32_xRGB, 0, 4)) == RasterError::BadSurfaceSize);
  CHECK(r.apply(createCmd(1, SPICE_SURFACE_FMT_32_xRGB, 1u << 20, 4)) ==
        RasterError::BadSurfaceSize);
  CHECK(r.apply(createCmd(1, 99, 4, 4)) == RasterError::UnsupportedSurfaceFormat);
  std::vector<uint32_t> small(4);
  CHECK(r.createPrimary(4, 4, 16, SPICE_SURFACE_FMT_32_xRGB,
                        std::as_writable_bytes(std::span(small))) ==
        RasterError::SurfaceMemoryTooSmall);
}

TEST_CASE("draw on a huge bbox is clipped to the surface") {
  Primary p(8, 8);
  auto f = fill(Rect{INT32_MIN, INT32_MIN, INT32_MAX, INT32_MAX}, 0x010203);
  REQUIRE_FALSE(p.r.draw(f));
  CHECK(p.at(0, 0) == 0x010203u);
  CHECK(p.at(7, 7) == 0x010203u);
  auto c = copy(Rect{-1000000, -1000000, 1000000, 1000000}, bitmap32(4, 4, pattern),
                Rect{-1000000, -1000000, 1000000, 1000000});
  CHECK_FALSE(p.r.draw(c));
  REQUIRE_FALSE(p.r.draw(drawable(Rect{-50, -50, 60, 60}, qxlcmd::CopyBits{{INT32_MAX, 3}})));
  auto damage = p.r.takeDamage();
  REQUIRE(damage.size() == 1);
  CHECK(damage[0] == xywh(0, 0, 8, 8));
}

TEST_CASE("cursor alpha and mono shapes become ARGB") {
  qxlcmd::CursorShape a;
  a.type = SPICE_CURSOR_TYPE_ALPHA;
  a.width = 2;
  a.height = 1;
  a.hotSpotX = 9;  // clamped
  a.data.resize(8);
  const uint32_t px[2] = {0x80ff0000u, 0x00000000u};
  std::memcpy(a.data.data(), px, 8);
  auto got = sanitiseCursor(a);
  REQUIRE(std::holds_alternative<SanitisedCursor>(got));
  CHECK(std::get<SanitisedCursor>(got).pixels[0] == 0x80ff0000u);
  CHECK(std::get<SanitisedCursor>(got).hotSpotX == 1);

  qxlcmd::CursorShape m;
  m.type = SPICE_CURSOR_TYPE_MONO;
  m.width = 3;
  m.height = 1;
  m.data = {0x80, 0x40};  // AND: pixel 0; XOR: pixel 1
  auto mono = std::get<SanitisedCursor>(sanitiseCursor(m));
  CHECK(mono.pixels[0] == 0u);           // transparent
  CHECK(mono.pixels[1] == 0xffffffffu);  // white
  CHECK(mono.pixels[2] == 0xff000000u);  // black

  m.data.resize(1);
  CHECK(std::get<RasterError>(sanitiseCursor(m)) == RasterError::BadCursor);
  m.width = 4096;
  CHECK(std::get<RasterError>(sanitiseCursor(m)) == RasterError::CursorTooLarge);
}

TEST_CASE("glyph strings past their data are refused") {
  Primary p;
  qxlcmd::Text t;
  t.str.length = 1;
  t.str.flags = SPICE_STRING_FLAGS_RASTER_A1;
  t.str.data.resize(10);
  t.foreBrush = solid(1);
  t.foreMode = SPICE_ROPD_OP_PUT;
  CHECK(p.r.draw(drawable(xywh(0, 0, 4, 4), t)) == RasterError::BadGlyphString);
}

TEST_CASE("all-draws scenario renders every command without error") {
  auto scenario = guestsim::makeScenario("all-draws", {});
  std::vector<uint32_t> mem;
  Rasteriser r;
  size_t draws = 0;
  while (auto action = scenario->next()) {
    if (auto* io = std::get_if<guestsim::IoEvent>(&*action)) {
      if (io->primary) {
        const auto& pr = *io->primary;
        mem.assign(size_t{pr.width} * pr.height, 0);
        r.destroyAll();
        CHECK_FALSE(r.createPrimary(pr.width, pr.height, static_cast<int32_t>(pr.width * 4),
                                    pr.format, std::as_writable_bytes(std::span(mem))));
      }
      continue;
    }
    auto& cmd = std::get<qxlcmd::Command>(*action);
    if (auto* surf = std::get_if<qxlcmd::SurfaceCmd>(&cmd.body)) {
      INFO("surface " << surf->surfaceId);
      if (surf->surfaceId == 0 && surf->type == QXL_SURFACE_CMD_CREATE) {
        mem.assign(size_t{surf->width} * surf->height, 0);
        CHECK_FALSE(r.createPrimary(surf->width, surf->height,
                                    static_cast<int32_t>(surf->width * 4), surf->format,
                                    std::as_writable_bytes(std::span(mem))));
      } else {
        CHECK_FALSE(r.apply(*surf));
      }
    } else if (auto* d = std::get_if<qxlcmd::Drawable>(&cmd.body)) {
      INFO("draw type " << int(d->type) << " on surface " << d->surfaceId);
      CHECK_FALSE(r.draw(*d));
      ++draws;
    } else if (auto* c = std::get_if<qxlcmd::CursorCmd>(&cmd.body); c && c->shape) {
      CHECK(std::holds_alternative<SanitisedCursor>(sanitiseCursor(*c->shape)));
    }
  }
  CHECK(draws > 20);
  CHECK_FALSE(r.takeDamage().empty());
}

// ---------------------------------------------------------------- output: damage and hints

TEST_CASE("output: a solid put fill is a hint, other fills are damage") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(1, 1, 2, 2), 0x00aa00)));
  REQUIRE_FALSE(p.r.draw(fill(xywh(8, 8, 2, 2), 0x00aa00, SPICE_ROPD_OP_XOR)));
  auto masked = fill(xywh(4, 4, 2, 2), 0x0000aa);
  qxlcmd::Fill& f = std::get<qxlcmd::Fill>(masked.payload);
  f.mask.bitmap = bitmap32(2, 2, pattern);  // any mask: not exact as a rectangle list
  f.mask.bitmap->payload = [] {
    qxlcmd::Bitmap b;
    b.format = SPICE_BITMAP_FMT_1BIT_BE;
    b.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
    b.x = 2;
    b.y = 2;
    b.stride = 1;
    b.data = {0x80, 0x40};
    return b;
  }();
  p.r.draw(masked);  // drawn or refused: either way no hint
  auto out = p.r.takeOutput();
  REQUIRE(out.hints.size() == 1);
  const auto& hint = std::get<SolidFillHint>(out.hints[0]);
  CHECK(hint.color == 0x00aa00u);
  CHECK(hint.rects == std::vector<Rect>{xywh(1, 1, 2, 2)});
  REQUIRE_FALSE(out.damage.empty());
  CHECK(out.damage.back() == xywh(8, 8, 2, 2));
  // Taken: nothing left.
  auto again = p.r.takeOutput();
  CHECK(again.damage.empty());
  CHECK(again.hints.empty());
}

TEST_CASE("output: a clipped fill's hint lists its rectangles, takeDamage reports hints too") {
  Primary p;
  auto d = fill(xywh(0, 0, 16, 16), 0xabcdef);
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = {xywh(1, 1, 2, 2), xywh(10, 10, 3, 1)};
  REQUIRE_FALSE(p.r.draw(d));
  auto out = p.r.takeOutput();
  REQUIRE(out.hints.size() == 1);
  CHECK(std::get<SolidFillHint>(out.hints[0]).rects ==
        std::vector<Rect>{xywh(1, 1, 2, 2), xywh(10, 10, 3, 1)});
  CHECK(out.damage.empty());
  REQUIRE_FALSE(p.r.draw(d));
  CHECK(p.r.takeDamage().size() == 2);
  CHECK(p.r.takeOutput().hints.empty());
}

TEST_CASE("output: copy bits is a hint while its source is clean, else damage") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(4, 0, 4, 4), qxlcmd::CopyBits{{0, 0}})));
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 8, 4, 4), 0x1, SPICE_ROPD_OP_XOR)));        // damage
  REQUIRE_FALSE(p.r.draw(drawable(xywh(8, 8, 4, 4), qxlcmd::CopyBits{{2, 8}})));  // overlaps it
  // Partly outside the surface: clipped to where the source is on the surface.
  REQUIRE_FALSE(p.r.draw(drawable(xywh(12, 0, 8, 2), qxlcmd::CopyBits{{0, 0}})));
  auto out = p.r.takeOutput();
  REQUIRE(out.hints.size() == 2);
  CHECK(std::get<CopyBitsHint>(out.hints[0]) == CopyBitsHint{0, 0, xywh(4, 0, 4, 4)});
  CHECK(std::get<CopyBitsHint>(out.hints[1]) == CopyBitsHint{0, 0, xywh(12, 0, 4, 2)});
  CHECK(out.damage == std::vector<Rect>{xywh(0, 8, 4, 4), xywh(8, 8, 4, 4)});
}

TEST_CASE("output: replaying hints then painting damage gives the picture") {
  // The invariant, checked on a mix of draws against a "client" that starts from the same
  // picture and only applies what takeOutput() reports.
  Primary p;
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 16, 16), bitmap32(16, 16, pattern), xywh(0, 0, 16, 16))));
  p.r.takeOutput();
  std::vector<uint32_t> client = p.mem;
  REQUIRE_FALSE(p.r.draw(fill(xywh(2, 2, 5, 5), 0x010101, SPICE_ROPD_OP_XOR)));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(8, 0, 6, 6), qxlcmd::CopyBits{{0, 8}})));
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 10, 6, 3), 0x445566)));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(1, 1, 6, 6), qxlcmd::CopyBits{{0, 9}})));
  REQUIRE_FALSE(p.r.draw(drawable(xywh(9, 9, 6, 6), qxlcmd::CopyBits{{3, 3}})));
  auto out = p.r.takeOutput();
  CHECK_FALSE(out.hints.empty());
  for (const OutputHint& h : out.hints) {
    if (const auto* f = std::get_if<SolidFillHint>(&h)) {
      for (const Rect& r : f->rects)
        for (int32_t y = r.top; y < r.bottom; ++y)
          for (int32_t x = r.left; x < r.right; ++x)
            client[static_cast<size_t>(y * 16 + x)] = f->color;
    } else {
      const auto& c = std::get<CopyBitsHint>(h);
      const std::vector<uint32_t> before = client;
      for (int32_t y = c.dest.top; y < c.dest.bottom; ++y)
        for (int32_t x = c.dest.left; x < c.dest.right; ++x)
          client[static_cast<size_t>(y * 16 + x)] = before[static_cast<size_t>(
              (c.srcY + y - c.dest.top) * 16 + (c.srcX + x - c.dest.left))];
    }
  }
  for (const Rect& r : out.damage)
    for (int32_t y = r.top; y < r.bottom; ++y)
      for (int32_t x = r.left; x < r.right; ++x)
        client[static_cast<size_t>(y * 16 + x)] = p.mem[static_cast<size_t>(y * 16 + x)];
  CHECK(client == p.mem);
}

TEST_CASE("output: beyond 64 hints draws are damage, beyond 64 damage rects their bounding box") {
  Primary p(256, 4);
  for (int32_t i = 0; i < 70; ++i)
    REQUIRE_FALSE(p.r.draw(fill(xywh(i * 3, 0, 1, 1), 0x10)));
  auto out = p.r.takeOutput();
  CHECK(out.hints.size() == MAX_HINTS);
  CHECK(out.damage.size() == 6);
  for (int32_t i = 0; i < 70; ++i)
    REQUIRE_FALSE(p.r.draw(fill(xywh(i * 3, 1, 1, 1), 0x10, SPICE_ROPD_OP_XOR)));
  out = p.r.takeOutput();
  CHECK(out.hints.empty());
  CHECK(out.damage == std::vector<Rect>{xywh(0, 1, 69 * 3 + 1, 1)});
}

TEST_CASE("output: a 16 bpp primary's fills are damage (the shadow holds converted colours)") {
  std::vector<uint32_t> shadow(4 * 4);
  Rasteriser r;
  REQUIRE_FALSE(r.createPrimary(4, 4, 16, SPICE_SURFACE_FMT_16_565,
                                std::as_writable_bytes(std::span(shadow))));
  REQUIRE_FALSE(r.draw(fill(xywh(0, 0, 2, 2), 0xf800)));
  auto out = r.takeOutput();
  CHECK(out.hints.empty());
  CHECK(out.damage == std::vector<Rect>{xywh(0, 0, 2, 2)});
}

TEST_CASE("output: destroying the primary forgets it, offscreen draws have none") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 2, 2), 0x1)));
  REQUIRE_FALSE(p.r.destroyPrimary());
  auto out = p.r.takeOutput();
  CHECK(out.hints.empty());
  CHECK(out.damage.empty());
  REQUIRE_FALSE(p.r.apply(createCmd(2, SPICE_SURFACE_FMT_32_xRGB, 4, 4)));
  auto offscreen = fill(xywh(0, 0, 2, 2), 0x1, SPICE_ROPD_OP_XOR);
  offscreen.surfaceId = 2;
  REQUIRE_FALSE(p.r.draw(offscreen));
  CHECK(p.r.takeOutput().damage.empty());
}

TEST_CASE("loadPrimary copies the guest's pixels, bottom-up when the stride is negative") {
  std::vector<uint32_t> guest(4 * 2);
  for (uint32_t i = 0; i < guest.size(); ++i)
    guest[i] = 0x100u + i;
  Primary top(4, 2);
  REQUIRE_FALSE(top.r.loadPrimary(std::as_bytes(std::span(guest)), 16));
  CHECK(top.at(1, 0) == 0x101u);
  CHECK(top.at(1, 1) == 0x105u);
  Primary bottomUp(4, 2);
  REQUIRE_FALSE(bottomUp.r.loadPrimary(std::as_bytes(std::span(guest)), -16));
  CHECK(bottomUp.at(1, 0) == 0x105u);
  CHECK(bottomUp.at(1, 1) == 0x101u);
  // Memory too small for height * |stride|: refused, nothing read.
  CHECK(top.r.loadPrimary(std::as_bytes(std::span(guest)).first(31), 16) == RasterError::BadArea);
}

// ---- STROKE, TEXT and indexed sources as libspice-server draws them (expected pixels worked
// out by hand from X's line rules and spice-common's text rules, written down per case).

namespace {

qxlcmd::Stroke strokeThrough(std::vector<std::pair<int32_t, int32_t>> pts, uint32_t color,
                             uint16_t mode = SPICE_ROPD_OP_PUT, int32_t scale = 16) {
  qxlcmd::Stroke s;
  qxlcmd::PathSegment seg;
  seg.flags = SPICE_PATH_BEGIN | SPICE_PATH_END;
  for (auto [x, y] : pts) {
    seg.points.push_back(qxlcmd::Point{x * scale, y * scale});
  }
  s.path.push_back(seg);
  s.brush = solid(color);
  s.foreMode = mode;
  s.backMode = SPICE_ROPD_OP_PUT;
  return s;
}

// The set pixels of a 16x16 primary, as (x, y) pairs in row order.
std::vector<std::pair<uint32_t, uint32_t>> setPixels(const Primary& p) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (uint32_t y = 0; y < 16; ++y) {
    for (uint32_t x = 0; x < 16; ++x) {
      if (p.at(x, y) & 0xffffffu) {
        out.emplace_back(x, y);
      }
    }
  }
  return out;
}

using Pixels = std::vector<std::pair<uint32_t, uint32_t>>;

}  // namespace

TEST_CASE("stroke: a zero-width line leaves out its last point") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), strokeThrough({{2, 3}, {7, 3}}, 0xffffff))));
  CHECK(setPixels(p) == Pixels{{2, 3}, {3, 3}, {4, 3}, {5, 3}, {6, 3}});
}

TEST_CASE("stroke: X-major octant, a tie takes the diagonal step going right and down") {
  // (0,0)->(4,2): y = x / 2 is exactly between two rows at x = 1 and x = 3; X's bias gives
  // this octant the diagonal step, so those columns take the lower row.
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), strokeThrough({{0, 0}, {4, 2}}, 0xffffff))));
  CHECK(setPixels(p) == Pixels{{0, 0}, {1, 1}, {2, 1}, {3, 2}});
}

TEST_CASE("stroke: the same line drawn backwards hits the same middle pixels") {
  // (4,2)->(0,0) is in a biased octant (an axial step on ties), which is what makes the ties at
  // x = 3 and x = 1 land on the rows the forward line chose; the end point (0,0) is left out.
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), strokeThrough({{4, 2}, {0, 0}}, 0xffffff))));
  CHECK(setPixels(p) == Pixels{{1, 1}, {2, 1}, {3, 2}, {4, 2}});
}

TEST_CASE("stroke: Y-major octant steps across at the nearest column") {
  // (0,0)->(1,3): x = y / 3 is 0.33 at row 1 (column 0) and 0.67 at row 2 (column 1).
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), strokeThrough({{0, 0}, {1, 3}}, 0xffffff))));
  CHECK(setPixels(p) == Pixels{{0, 0}, {0, 1}, {1, 2}});
}

TEST_CASE("stroke: 28.4 points round to nearest, a half rounds down") {
  // x = 2.5 -> 2 and x = 9.5625 -> 10, on row 4 (4.5 -> 4): pixels 2..9.
  Primary p;
  REQUIRE_FALSE(p.r.draw(
      drawable(xywh(0, 0, 16, 16), strokeThrough({{2 * 16 + 8, 4 * 16 + 8}, {9 * 16 + 9, 4 * 16}},
                                                 0xffffff, SPICE_ROPD_OP_PUT, 1))));
  CHECK(setPixels(p) == Pixels{{2, 4}, {3, 4}, {4, 4}, {5, 4}, {6, 4}, {7, 4}, {8, 4}, {9, 4}});
}

TEST_CASE("stroke: XOR applies per line segment, so a crossing pixel is flipped twice") {
  // Across row 5, up the diagonal to (5,0), down column 5: the third segment crosses the first
  // at (5,5), which ends up unchanged (black); every other pixel is flipped once.
  Primary p;
  REQUIRE_FALSE(
      p.r.draw(drawable(xywh(0, 0, 16, 16), strokeThrough({{0, 5}, {10, 5}, {5, 0}, {5, 10}},
                                                          0xffffff, SPICE_ROPD_OP_XOR))));
  Pixels want;
  for (uint32_t y = 0; y < 16; ++y) {
    for (uint32_t x = 0; x < 16; ++x) {
      const bool row = y == 5 && x < 10 && x != 5;
      const bool diagonal = x == y + 5 && y >= 1 && y <= 5;  // (10,5) .. (6,1)
      const bool column = x == 5 && y < 10 && y != 5;
      if (row || diagonal || column) {
        want.emplace_back(x, y);
      }
    }
  }
  CHECK(setPixels(p) == want);
}

TEST_CASE("stroke: dashes are measured along the line, START_WITH_GAP begins with the gap") {
  // Style 3 on, 2 off along (0,2)->(12,2): on over [0,3), [5,8) and [10,12], each a 1-pixel-
  // high box whose pixels are those from ceil(start) to ceil(end) - 1.
  Primary p;
  qxlcmd::Stroke s = strokeThrough({{0, 2}, {12, 2}}, 0xffffff);
  s.attrFlags = SPICE_LINE_FLAGS_STYLED;
  s.style = {3 << 4, 2 << 4};
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), s)));
  CHECK(setPixels(p) == Pixels{{0, 2}, {1, 2}, {2, 2}, {5, 2}, {6, 2}, {7, 2}, {10, 2}, {11, 2}});
  // With a leading gap the same style reads off 3, on 2: on over [3,5) and [8,10).
  Primary q;
  s.attrFlags |= SPICE_LINE_FLAGS_START_WITH_GAP;
  REQUIRE_FALSE(q.r.draw(drawable(xywh(0, 0, 16, 16), s)));
  CHECK(setPixels(q) == Pixels{{3, 2}, {4, 2}, {8, 2}, {9, 2}});
}

TEST_CASE("stroke: an all-zero dash pattern draws the line solid instead of hanging") {
  Primary p;
  qxlcmd::Stroke s = strokeThrough({{1, 1}, {5, 1}}, 0xffffff);
  s.attrFlags = SPICE_LINE_FLAGS_STYLED;
  s.style = {0, 0};
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), s)));
  CHECK(setPixels(p) == Pixels{{1, 1}, {2, 1}, {3, 1}, {4, 1}});
}

TEST_CASE("stroke: a line from far outside the surface costs only its pixels inside") {
  // 2^27 pixels long; only row 3's pixels 0..15 exist. Its slope is 0, so all of it is row 3.
  Primary p;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16),
                                  strokeThrough({{-(1 << 27), 3}, {(1 << 27) - 1, 3}}, 0xffffff))));
  Pixels want;
  for (uint32_t x = 0; x < 16; ++x) {
    want.emplace_back(x, 3);
  }
  CHECK(setPixels(p) == want);
}

namespace {

// One QXLRasterGlyph: render_pos (x, y), glyph_origin (0, 0), width, height, then `rows`.
void appendGlyph(std::vector<uint8_t>& out, int32_t x, int32_t y, uint16_t w, uint16_t h,
                 std::vector<uint8_t> rows) {
  const int32_t header[4] = {x, y, 0, 0};
  const uint16_t size[2] = {w, h};
  const auto* a = reinterpret_cast<const uint8_t*>(header);
  const auto* b = reinterpret_cast<const uint8_t*>(size);
  out.insert(out.end(), a, a + 16);
  out.insert(out.end(), b, b + 4);
  out.insert(out.end(), rows.begin(), rows.end());
}

}  // namespace

TEST_CASE("text: 4-bit glyphs go OVER through their coverage, whatever fore_mode says") {
  // A4 coverage n becomes n * 16 in the mask; white OVER black gives that value per channel.
  // fore_mode XOR is not used: without a back area the reference always composites OVER.
  Primary p;
  qxlcmd::Text t;
  t.str.length = 1;
  t.str.flags = SPICE_STRING_FLAGS_RASTER_A4;
  appendGlyph(t.str.data, 4, 4, 2, 1, {0xf8});
  t.foreBrush = solid(0xffffff);
  t.foreMode = SPICE_ROPD_OP_XOR;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), t)));
  CHECK((p.at(4, 4) & 0xffffffu) == 0xf0f0f0u);
  CHECK((p.at(5, 4) & 0xffffffu) == 0x808080u);
  CHECK((p.at(6, 4) & 0xffffffu) == 0u);
}

TEST_CASE(
    "text: an odd A4 pixel takes a later glyph's coverage when its byte's high nibble is set") {
  // Glyph A at x = 4 (byte 0x1f: 16 at x = 4, 240 at x = 5), then glyph B at x = 3 (byte 0x10:
  // 16 at x = 3, 0 at x = 4). Overlaps keep the larger coverage, except in B's odd pixel: the
  // reference compares 0x10 << 4 = 256 with A's 16 and stores 256's low byte, 0.
  Primary p;
  qxlcmd::Text t;
  t.str.length = 2;
  t.str.flags = SPICE_STRING_FLAGS_RASTER_A4;
  appendGlyph(t.str.data, 4, 4, 2, 1, {0x1f});
  appendGlyph(t.str.data, 3, 4, 2, 1, {0x10});
  t.foreBrush = solid(0xffffff);
  t.foreMode = SPICE_ROPD_OP_PUT;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), t)));
  CHECK((p.at(3, 4) & 0xffffffu) == 0x101010u);
  CHECK((p.at(4, 4) & 0xffffffu) == 0u);
  CHECK((p.at(5, 4) & 0xffffffu) == 0xf0f0f0u);
}

TEST_CASE("text: with a back area and a fore mode other than PUT nothing is drawn") {
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0x123456)));
  qxlcmd::Text t;
  t.str.length = 1;
  t.str.flags = SPICE_STRING_FLAGS_RASTER_A1;
  appendGlyph(t.str.data, 4, 4, 8, 1, {0xff});
  t.backArea = xywh(0, 0, 16, 16);
  t.backBrush = solid(0xff0000);
  t.foreBrush = solid(0xffffff);
  t.foreMode = SPICE_ROPD_OP_XOR;
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), t)));
  CHECK((p.at(0, 0) & 0xffffffu) == 0x123456u);
  CHECK((p.at(4, 4) & 0xffffffu) == 0x123456u);
}

TEST_CASE("alpha blend: an indexed source on an ARGB surface takes alpha from its palette") {
  // Palette entry 0x00ff0000: red with alpha 0, as the reference keeps indexed bitmaps in the
  // canvas format (a8r8g8b8 here). OVER adds it to the blue destination unscaled: 0xffff00ff.
  Primary p(16, 16, SPICE_SURFACE_FMT_32_ARGB);
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 16), 0xff0000ff)));
  qxlcmd::Bitmap b;
  b.format = SPICE_BITMAP_FMT_8BIT;
  b.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
  b.x = 1;
  b.y = 1;
  b.stride = 1;
  b.data = {0};
  b.palette.emplace().entries = {0x00ff0000u};
  qxlcmd::Image img;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.width = img.height = 1;
  img.payload = b;
  qxlcmd::AlphaBlend a;
  a.alpha = 0xff;
  a.srcBitmap = img;
  a.srcArea = xywh(0, 0, 1, 1);
  REQUIRE_FALSE(p.r.draw(drawable(xywh(2, 2, 1, 1), a)));
  CHECK(p.at(2, 2) == 0xffff00ffu);
}

TEST_CASE(
    "stroke: a Bezier curve whose points all coincide ends (the reference recurses for ever)") {
  Primary p;
  qxlcmd::Stroke s = strokeThrough({{3, 3}}, 0xffffff);
  qxlcmd::PathSegment curve;
  curve.flags = SPICE_PATH_BEZIER | SPICE_PATH_END;
  curve.points = {qxlcmd::Point{48, 48}, qxlcmd::Point{48, 48}, qxlcmd::Point{48, 48}};
  s.path[0].flags = SPICE_PATH_BEGIN;
  s.path.push_back(curve);
  REQUIRE_FALSE(p.r.draw(drawable(xywh(0, 0, 16, 16), s)));
  CHECK(setPixels(p).empty());  // a curve of zero length, its last point left out: nothing
}

TEST_CASE("surface commands on surface 0 are refused: the primary comes and goes by IO only") {
  Rasteriser r;
  std::vector<uint32_t> mem(16 * 16, 0);
  // No primary yet: a command must not create one the broker does not know of.
  CHECK(r.apply(createCmd(0, SPICE_SURFACE_FMT_32_xRGB, 16, 16)) == RasterError::PrimaryByCommand);
  CHECK(r.surface(0) == nullptr);
  REQUIRE_FALSE(r.createPrimary(16, 16, 16 * 4, SPICE_SURFACE_FMT_32_xRGB,
                                std::as_writable_bytes(std::span(mem))));
  qxlcmd::SurfaceCmd destroy;
  destroy.surfaceId = 0;
  destroy.type = QXL_SURFACE_CMD_DESTROY;
  CHECK(r.apply(destroy) == RasterError::PrimaryByCommand);
  CHECK(r.surface(0) != nullptr);
}

// COPY_BITS through a clip of several rectangles, moved by (dx, dy): every destination pixel
// inside the clip takes the source pixel as it was before the command, whatever order the rows
// and rectangles are copied in place in.
void checkCopyBitsClipped(int32_t dx, int32_t dy, std::vector<Rect> clipRects) {
  Primary p(32, 32);
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 32, 32), bitmap32(32, 32, pattern), xywh(0, 0, 32, 32))));
  const std::vector<uint32_t> before = p.mem;
  const Rect bbox = xywh(std::max(dx, 0), std::max(dy, 0), 32 - std::abs(dx), 32 - std::abs(dy));
  qxlcmd::Drawable d =
      drawable(bbox, qxlcmd::CopyBits{qxlcmd::Point{bbox.left - dx, bbox.top - dy}});
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = clipRects;
  REQUIRE_FALSE(p.r.draw(d));
  for (int32_t y = 0; y < 32; ++y) {
    for (int32_t x = 0; x < 32; ++x) {
      bool inside = x >= bbox.left && x < bbox.right && y >= bbox.top && y < bbox.bottom;
      bool clipped = false;
      for (const Rect& c : clipRects) {
        clipped |= x >= c.left && x < c.right && y >= c.top && y < c.bottom;
      }
      const uint32_t expect = inside && clipped
                                  ? before[static_cast<size_t>((y - dy) * 32 + x - dx)]
                                  : before[static_cast<size_t>(y * 32 + x)];
      INFO("dx=" << dx << " dy=" << dy << " x=" << x << " y=" << y);
      REQUIRE(p.at(static_cast<uint32_t>(x), static_cast<uint32_t>(y)) == expect);
    }
  }
}

TEST_CASE("copy bits in place through several clip rectangles, in every direction") {
  // Two rectangles in one band and one below: a rectangle's source lies in another's
  // destination for every move below, so a wrong row or rectangle order reads copied pixels.
  const std::vector<Rect> clip = {xywh(0, 2, 10, 12), xywh(12, 2, 14, 12), xywh(3, 16, 20, 12)};
  for (int32_t dx : {-13, -3, 0, 3, 13}) {
    for (int32_t dy : {-5, -1, 0, 1, 5}) {
      if (dx != 0 || dy != 0) {
        checkCopyBitsClipped(dx, dy, clip);
      }
    }
  }
}

TEST_CASE("copy bits on a 16 bpp surface moves whole pixels") {
  Primary p;
  qxlcmd::SurfaceCmd s = createCmd(1, SPICE_SURFACE_FMT_16_555, 8, 4);
  s.stride = 16;
  REQUIRE_FALSE(p.r.apply(s));
  // Column x of surface 1 gets colour x (a 555 value), then row 0 moves right by 3 pixels.
  for (int32_t x = 0; x < 8; ++x) {
    qxlcmd::Fill f;
    f.brush = solid(static_cast<uint32_t>(0x421 * x));
    f.ropDescriptor = SPICE_ROPD_OP_PUT;
    REQUIRE_FALSE(p.r.draw(drawable(xywh(x, 0, 1, 4), f, 1)));
  }
  REQUIRE_FALSE(p.r.draw(drawable(xywh(3, 0, 5, 1), qxlcmd::CopyBits{qxlcmd::Point{0, 0}}, 1)));
  // Read surface 1 back through a COPY onto the primary (16 -> 32 bpp by pixman).
  qxlcmd::Image src;
  src.type = SPICE_IMAGE_TYPE_SURFACE;
  src.payload = qxlcmd::SurfaceImage{1};
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 8, 1), src, xywh(0, 0, 8, 1))));
  auto expand = [](uint32_t v555) {
    auto c = [](uint32_t v) { return (v << 3) | (v >> 2); };
    return c((v555 >> 10) & 31) << 16 | c((v555 >> 5) & 31) << 8 | c(v555 & 31);
  };
  const uint32_t expectX[8] = {0, 1, 2, 0, 1, 2, 3, 4};
  for (uint32_t x = 0; x < 8; ++x) {
    INFO("x=" << x);
    CHECK((p.at(x, 0) & 0xffffffu) == expand(0x421 * expectX[x]));
  }
}

// The decoder's in-place bitmaps: the pixels stay outside the tree, which only views them.
TEST_CASE("a bitmap view is read in place, like owned data") {
  const uint32_t w = 5, h = 3;
  qxlcmd::Image owned = bitmap32(w, h, pattern);
  auto& ob = std::get<qxlcmd::Bitmap>(owned.payload);
  const std::vector<uint8_t> guest(ob.data);  // stands for guest memory
  qxlcmd::Image viewed = owned;
  auto& vb = std::get<qxlcmd::Bitmap>(viewed.payload);
  vb.data.clear();
  vb.view = std::span<const uint8_t>(guest);
  CHECK(viewed == owned);  // equal content wherever it is held
  REQUIRE(vb.bytes().data() == guest.data());

  SECTION("32BIT top-down, wrapped") {
    Primary p;
    REQUIRE_FALSE(p.r.draw(copy(xywh(2, 1, w, h), viewed, xywh(0, 0, w, h))));
    for (uint32_t y = 0; y < h; ++y) {
      for (uint32_t x = 0; x < w; ++x) {
        CHECK(p.at(x + 2, y + 1) == pattern(x, y));
      }
    }
    CHECK(p.at(1, 1) == 0u);
  }
  SECTION("bottom-up and with high bits set: converted, the view left alone") {
    vb.flags = 0;
    viewed.flags = SPICE_IMAGE_FLAGS_HIGH_BITS_SET;
    Primary p;
    REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, w, h), viewed, xywh(0, 0, w, h))));
    for (uint32_t y = 0; y < h; ++y) {
      for (uint32_t x = 0; x < w; ++x) {
        CHECK(p.at(x, y) == (pattern(x, h - 1 - y) | 0xff000000u));
      }
    }
    CHECK(std::vector<uint8_t>(guest) == ob.data);
  }
  SECTION("a view shorter than y * stride is refused") {
    vb.view = std::span<const uint8_t>(guest).first(guest.size() - 1);
    Primary p;
    CHECK(p.r.draw(copy(xywh(0, 0, w, h), viewed, xywh(0, 0, w, h))) == RasterError::BadImage);
  }
}

TEST_CASE("8 bpp indexed view: every index read through the palette, past it 0") {
  qxlcmd::Bitmap b;
  b.format = SPICE_BITMAP_FMT_8BIT;
  b.flags = SPICE_BITMAP_FLAGS_TOP_DOWN;
  b.x = 6;
  b.y = 1;
  b.stride = 7;  // not a multiple of 4
  const std::vector<uint8_t> guest = {0, 1, 2, 3, 200, 255, 9};
  b.view = std::span<const uint8_t>(guest);
  b.palette = qxlcmd::Palette{0, {0x111111, 0x222222, 0x333333, 0x444444}};
  qxlcmd::Image img;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.payload = b;
  Primary p;
  REQUIRE_FALSE(p.r.draw(fill(xywh(0, 0, 16, 1), 0x999999)));
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 6, 1), img, xywh(0, 0, 6, 1))));
  const uint32_t expect[7] = {0x111111, 0x222222, 0x333333, 0x444444, 0, 0, 0x999999};
  for (uint32_t x = 0; x < 7; ++x) {
    INFO("x=" << x);
    CHECK(p.at(x, 0) == expect[x]);
  }
}

TEST_CASE("rop fills, tiles and blits on 16 and 8 bpp surfaces combine whole pixels") {
  // Surface 1 (16 bpp): 0x1234 combined with 0x0ff0 by four ROPs, read back through a 16 -> 32
  // bpp COPY onto the primary (555 values keep 15 bits).
  Primary p;
  qxlcmd::SurfaceCmd s = createCmd(1, SPICE_SURFACE_FMT_16_555, 4, 1);
  s.stride = 8;
  REQUIRE_FALSE(p.r.apply(s));
  auto fill1 = [&](int32_t x, uint32_t color, uint16_t rop) {
    qxlcmd::Fill f;
    f.brush = solid(color);
    f.ropDescriptor = rop;
    REQUIRE_FALSE(p.r.draw(drawable(xywh(x, 0, 1, 1), f, 1)));
  };
  for (int32_t x = 0; x < 4; ++x) {
    fill1(x, 0x1234, SPICE_ROPD_OP_PUT);
  }
  fill1(0, 0x0ff0, SPICE_ROPD_OP_XOR);
  fill1(1, 0x0ff0, SPICE_ROPD_OP_AND);
  fill1(2, 0x0ff0, SPICE_ROPD_OP_OR);
  fill1(3, 0x0ff0, SPICE_ROPD_OP_OR | SPICE_ROPD_INVERS_RES);
  qxlcmd::Image src;
  src.type = SPICE_IMAGE_TYPE_SURFACE;
  src.payload = qxlcmd::SurfaceImage{1};
  REQUIRE_FALSE(p.r.draw(copy(xywh(0, 0, 4, 1), src, xywh(0, 0, 4, 1))));
  auto expand = [](uint32_t v555) {
    auto c = [](uint32_t v) { return (v << 3) | (v >> 2); };
    return c((v555 >> 10) & 31) << 16 | c((v555 >> 5) & 31) << 8 | c(v555 & 31);
  };
  const uint32_t expect[4] = {0x1234 ^ 0x0ff0, 0x1234 & 0x0ff0, 0x1234 | 0x0ff0,
                              ~(0x1234u | 0x0ff0u) & 0xffff};
  for (uint32_t x = 0; x < 4; ++x) {
    INFO("x=" << x);
    CHECK((p.at(x, 0) & 0xffffffu) == expand(expect[x]));
  }
}

TEST_CASE("stroke: a clip of several overlapping boxes keeps exactly the line's pixels inside it") {
  // Stress seed 11's command 2336, moved near the origin: an XOR polyline whose row-7 run is split
  // by the clip's boxes. (libspice-server's in-place span clipper loses a span here and fills a
  // piece twice — docs/architecture.md; spicebox keeps the unclipped line's pixels inside the
  // clip, each drawn once.)
  const std::vector<std::pair<int32_t, int32_t>> points = {{158, 129}, {124, 95}, {397, 133}};
  const Rect bbox{4, 7, 9, 33};  // top, left, bottom, right
  Primary unclipped(40, 16), clipped(40, 16);
  REQUIRE_FALSE(unclipped.r.draw(
      drawable(bbox, strokeThrough(points, 0xffffff, SPICE_ROPD_OP_XOR, /*scale=*/1))));
  auto d = drawable(bbox, strokeThrough(points, 0xffffff, SPICE_ROPD_OP_XOR, 1));
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  const std::vector<Rect> boxes = {{5, 19, 8, 29}, {4, 16, 7, 28}, {6, 7, 9, 14}};
  d.clip.rects = boxes;
  REQUIRE_FALSE(clipped.r.draw(d));
  auto inClip = [&boxes](uint32_t x, uint32_t y) {
    for (const Rect& b : boxes) {
      if (int32_t(x) >= b.left && int32_t(x) < b.right && int32_t(y) >= b.top &&
          int32_t(y) < b.bottom) {
        return true;
      }
    }
    return false;
  };
  unsigned inside = 0;
  for (uint32_t y = 0; y < 16; ++y) {
    for (uint32_t x = 0; x < 40; ++x) {
      INFO("pixel " << x << "," << y);
      CHECK(clipped.at(x, y) == (inClip(x, y) ? unclipped.at(x, y) : 0u));
      inside += inClip(x, y) && unclipped.at(x, y) != 0;
    }
  }
  CHECK(inside >= 10);  // the clip keeps a real part of the line (both runs of row 7 among it)
  CHECK(unclipped.at(19, 7) != 0u);
  CHECK(clipped.at(19, 7) != 0u);  // the piece the reference's clipper would fill twice
}
