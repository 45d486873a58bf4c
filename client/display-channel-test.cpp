// Runs in: tests. Input: display-channel messages written byte by byte from spice.proto (field
// order and widths noted beside each), fed to the client over a socketpair; hostile variants of
// them must close the channel with an error, never crash or draw outside the surface.
#include <spice/enums.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "client/spice-client.h"

using namespace spicebox::client;

namespace {

struct Fixture {
  int server = -1;
  std::unique_ptr<DisplayChannel> display;

  Fixture() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    server = fds[1];
    display =
        std::make_unique<DisplayChannel>(Socket(spicebox::base::Fd(fds[0])), SPICE_CHANNEL_DISPLAY);
  }
  ~Fixture() { ::close(server); }

  // Sends one message (mini header + body) and lets the client handle it.
  Error deliver(uint16_t type, const Bytes& body) {
    Bytes m = buildMessage(type, body);
    REQUIRE(::write(server, m.data(), m.size()) == static_cast<ssize_t>(m.size()));
    return display->processAvailable();
  }
};

// SpiceMsgSurfaceCreate: surface_id, width, height, format (enum32), flags (flags32).
Bytes surfaceCreate(uint32_t w, uint32_t h) {
  Writer b;
  b.u32(0).u32(w).u32(h).u32(SPICE_SURFACE_FMT_32_xRGB).u32(SPICE_SURFACE_FLAGS_PRIMARY);
  return b.take();
}

// DisplayBase: surface_id u32, box (top, left, bottom, right), clip type u8 [+ u32 n + rects].
void base(Writer& b, int32_t top, int32_t left, int32_t bottom, int32_t right,
          std::vector<std::array<int32_t, 4>> clip = {}) {
  b.u32(0).i32(top).i32(left).i32(bottom).i32(right);
  if (clip.empty()) {
    b.u8(SPICE_CLIP_TYPE_NONE);
    return;
  }
  b.u8(SPICE_CLIP_TYPE_RECTS).u32(static_cast<uint32_t>(clip.size()));
  for (auto& r : clip)
    b.i32(r[0]).i32(r[1]).i32(r[2]).i32(r[3]);
}

// Fill: brush type u8 (SOLID) + color u32, rop u16, QMask: flags u8, pos 2 x i32, bitmap u32.
Bytes fill(int32_t top, int32_t left, int32_t bottom, int32_t right, uint32_t color,
           std::vector<std::array<int32_t, 4>> clip = {}) {
  Writer b;
  base(b, top, left, bottom, right, clip);
  b.u8(SPICE_BRUSH_TYPE_SOLID).u32(color).u16(SPICE_ROPD_OP_PUT);
  b.u8(0).i32(0).i32(0).u32(0);
  return b.take();
}

// Copy of a 2x2 top-down 32-bit bitmap to (left, top): base, src_bitmap u32 offset, src_area
// rect, rop u16, scale u8, QMask; then the Image at that offset: descriptor (id u64, type u8,
// flags u8, width u32, height u32) and BitmapData (format u8, flags u8, x u32, y u32, stride u32,
// palette u32, data).
Bytes copy2x2(int32_t top, int32_t left, uint64_t id, uint8_t imageType, uint8_t imageFlags,
              std::array<uint32_t, 4> px, uint32_t offsetOverride = 0) {
  Writer b;
  base(b, top, left, top + 2, left + 2);
  size_t offsetPos = b.data().size();
  b.u32(0);  // patched below
  b.i32(0).i32(0).i32(2).i32(2).u16(SPICE_ROPD_OP_PUT).u8(0);
  b.u8(0).i32(0).i32(0).u32(0);
  uint32_t offset = static_cast<uint32_t>(b.data().size());
  b.u64(id).u8(imageType).u8(imageFlags).u32(2).u32(2);
  if (imageType == SPICE_IMAGE_TYPE_BITMAP) {
    b.u8(SPICE_BITMAP_FMT_32BIT).u8(SPICE_BITMAP_FLAGS_TOP_DOWN).u32(2).u32(2).u32(8).u32(0);
    for (uint32_t p : px)
      b.u32(p);
  }
  uint32_t o = offsetOverride ? offsetOverride : offset;
  for (int i = 0; i < 4; ++i)
    b.data()[offsetPos + i] = static_cast<uint8_t>(o >> (8 * i));
  return b.take();
}

}  // namespace

TEST_CASE("display: surface, clipped fill, bitmap copy, cache, copy bits", "[display]") {
  Fixture f;
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, surfaceCreate(4, 4)));
  REQUIRE(f.display->primary());
  // Fill the whole surface, clipped to rows 1..2 and column 0 of row 3.
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL,
                          fill(0, 0, 4, 4, 0x112233, {{1, 0, 3, 4}, {3, 0, 4, 1}})));
  const Canvas* c = f.display->primary();
  CHECK(c->pixel(0, 0) == 0);
  CHECK(c->pixel(3, 1) == 0x112233);
  CHECK(c->pixel(0, 3) == 0x112233);
  CHECK(c->pixel(1, 3) == 0);

  REQUIRE_FALSE(f.deliver(
      SPICE_MSG_DISPLAY_DRAW_COPY,
      copy2x2(0, 0, 42, SPICE_IMAGE_TYPE_BITMAP, SPICE_IMAGE_FLAGS_CACHE_ME, {1, 2, 3, 4})));
  CHECK(c->pixel(1, 0) == 2);
  CHECK(c->pixel(0, 1) == 3);
  // The same image from the cache, at (2,2).
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                          copy2x2(2, 2, 42, SPICE_IMAGE_TYPE_FROM_CACHE, 0, {})));
  CHECK(c->pixel(3, 3) == 4);
  CHECK(f.display->display().cacheHits == 1);

  // COPY_BITS: base (box (0,2)-(2,4)) then src_pos x, y = (0,0).
  Writer cb;
  base(cb, 0, 2, 2, 4);
  cb.i32(0).i32(0);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_COPY_BITS, cb.take()));
  CHECK(c->pixel(2, 0) == 1);
  CHECK(c->pixel(3, 1) == 4);

  // INVAL_LIST: count u16, then (type u8, id u64): the cached image is gone.
  Writer inval;
  inval.u16(1).u8(SPICE_RES_TYPE_PIXMAP).u64(42);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_INVAL_LIST, inval.take()));
  CHECK(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                  copy2x2(2, 2, 42, SPICE_IMAGE_TYPE_FROM_CACHE, 0, {})));

  CHECK(f.display->display().fills == 1);
  CHECK(f.display->display().copies == 2);
}

TEST_CASE("display: hostile messages close the channel with a reason", "[display][hostile]") {
  Fixture f;
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, surfaceCreate(4, 4)));
  Error err;
  SECTION("image-offset-outside-message") {
    err = f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                    copy2x2(0, 0, 1, SPICE_IMAGE_TYPE_BITMAP, 0, {1, 2, 3, 4}, 0xfffffff0));
  }
  SECTION("clip-count-beyond-message") {
    Writer b;
    b.u32(0).i32(0).i32(0).i32(4).i32(4).u8(SPICE_CLIP_TYPE_RECTS).u32(0x10000000);
    err = f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, b.take());
  }
  SECTION("bitmap-data-short") {
    Bytes m = copy2x2(0, 0, 1, SPICE_IMAGE_TYPE_BITMAP, 0, {1, 2, 3, 4});
    m.resize(m.size() - 3);
    err = f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY, m);
  }
  SECTION("from-cache-unknown-id") {
    err = f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                    copy2x2(0, 0, 7, SPICE_IMAGE_TYPE_FROM_CACHE, 0, {}));
  }
  SECTION("draw-on-missing-surface") {
    Bytes m = fill(0, 0, 1, 1, 5);
    m[0] = 9;  // surface_id 9
    err = f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, m);
  }
  SECTION("surface-too-large") {
    err = f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, surfaceCreate(0x10000, 0x10000));
  }
  SECTION("message-size-0xaaaaaaaa") {
    Writer h;
    h.u16(SPICE_MSG_DISPLAY_DRAW_FILL).u32(0xaaaaaaaa);
    REQUIRE(::write(f.server, h.data().data(), h.data().size()) == 6);
    err = f.display->processAvailable();
  }
  REQUIRE(err);
  CHECK_FALSE(f.display->open());
  // Nothing outside the 4x4 surface was touched, and it still exists.
  REQUIRE(f.display->primary());
  CHECK(f.display->primary()->pixels().size() == 16);
}

TEST_CASE("display: SET_ACK answered with ACK_SYNC, then an ACK per window", "[display]") {
  Fixture f;
  Writer setAck;
  setAck.u32(7).u32(2);  // generation 7, window 2
  REQUIRE_FALSE(f.deliver(SPICE_MSG_SET_ACK, setAck.take()));
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_MARK, {}));
  // ACK_SYNC: type 1, size 4, generation 7; no ACK yet after one message of the window.
  Bytes got(64);
  ssize_t n = ::read(f.server, got.data(), got.size());
  got.resize(n > 0 ? static_cast<size_t>(n) : 0);
  CHECK(got == Bytes{1, 0, 4, 0, 0, 0, 7, 0, 0, 0});
  // The second message completes the window: ACK, type 2, empty.
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_MARK, {}));
  got.assign(64, 0);
  n = ::read(f.server, got.data(), got.size());
  got.resize(n > 0 ? static_cast<size_t>(n) : 0);
  CHECK(got == Bytes{2, 0, 0, 0, 0, 0});
  CHECK(f.display->display().marks == 2);
}

TEST_CASE("display: libspice-server's other draws are counted, keep the cache in step",
          "[display]") {
  Fixture f;
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, surfaceCreate(4, 4)));
  // An offscreen surface 1 (flags 0), filled, then copied to the primary as a SURFACE image
  // (descriptor, then u32 surface_id).
  Writer offscreen;
  offscreen.u32(1).u32(2).u32(2).u32(SPICE_SURFACE_FMT_32_xRGB).u32(0);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, offscreen.take()));
  Bytes fillOffscreen = fill(0, 0, 2, 2, 0x445566);
  fillOffscreen[0] = 1;  // surface_id 1
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, fillOffscreen));
  Bytes fromSurface = copy2x2(2, 2, 0, SPICE_IMAGE_TYPE_SURFACE, 0, {});
  Writer sid;
  sid.u32(1);
  fromSurface.insert(fromSurface.end(), sid.data().begin(), sid.data().end());
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY, fromSurface));
  CHECK(f.display->primary()->pixel(3, 3) == 0x445566);
  CHECK(f.display->primary()->pixel(1, 1) == 0);

  // A QUIC image (not decoded) with CACHE_ME: the draw is counted, not drawn; a later
  // FROM_CACHE of the same id is no error.
  Bytes quic = copy2x2(0, 0, 77, SPICE_IMAGE_TYPE_QUIC, SPICE_IMAGE_FLAGS_CACHE_ME, {});
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY, quic));
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                          copy2x2(0, 0, 77, SPICE_IMAGE_TYPE_FROM_CACHE, 0, {})));
  CHECK(f.display->display().undecodedImages == 1);
  CHECK(f.display->display().unsupported == 2);
  CHECK(f.display->primary()->pixel(0, 0) == 0);

  // DRAW_BLEND has DRAW_COPY's layout: its CACHE_ME bitmap is cached though not drawn.
  Bytes blend =
      copy2x2(0, 0, 78, SPICE_IMAGE_TYPE_BITMAP, SPICE_IMAGE_FLAGS_CACHE_ME, {9, 9, 9, 9});
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_BLEND, blend));
  CHECK(f.display->primary()->pixel(0, 0) == 0);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_COPY,
                          copy2x2(0, 0, 78, SPICE_IMAGE_TYPE_FROM_CACHE, 0, {})));
  CHECK(f.display->primary()->pixel(0, 0) == 9);
  CHECK(f.display->display().unsupported == 3);
}

TEST_CASE("display: takeDamage reports what changed on the primary, once", "[display]") {
  Fixture f;
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, surfaceCreate(4, 4)));
  CHECK(f.display->takeDamage() == std::vector<Rect>{{0, 0, 4, 4}});
  CHECK(f.display->takeDamage().empty());
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, fill(1, 1, 9, 2, 7)));
  CHECK(f.display->takeDamage() == std::vector<Rect>{{1, 1, 4, 2}});
  // More than MAX_PENDING_DAMAGE changes become their bounding rectangle.
  for (size_t i = 0; i <= DisplayChannel::MAX_PENDING_DAMAGE; ++i)
    REQUIRE_FALSE(
        f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL,
                  fill(int32_t(i % 3), int32_t(i % 2), int32_t(i % 3 + 1), int32_t(i % 2 + 1), 1)));
  CHECK(f.display->takeDamage() == std::vector<Rect>{{0, 0, 3, 2}});
}

TEST_CASE("display: surfaces cannot grow the client's memory without end", "[display][hostile]") {
  Fixture f;
  // 8192 x 8192 surfaces until the MAX_SURFACE_PIXELS bound refuses one.
  Error err;
  size_t created = 0;
  for (uint32_t id = 0; id < 64 && !err; ++id) {
    Writer w;
    w.u32(id).u32(MAX_SURFACE_SIDE).u32(MAX_SURFACE_SIDE).u32(SPICE_SURFACE_FMT_32_xRGB).u32(0);
    err = f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, w.take());
    created += err ? 0 : 1;
  }
  REQUIRE(err);
  CHECK_THAT(*err, Catch::Contains("pixels in all"));
  CHECK(created == MAX_SURFACE_PIXELS / (uint64_t{MAX_SURFACE_SIDE} * MAX_SURFACE_SIDE));
}
