// Runs in: renderer (sandboxed). Input: pixman images we created and coordinates the callers
// have already clipped to them (trusted; checked again with SB-style bounds in debug builds).
//
// The raw pixel layer of the rasteriser: bit-exact ROPs, fills, tiles and blits on 1/8/16/32 bpp
// pixman images, the way spice-common's pixman_utils.c treats pixels (plain integers, the 32 bpp
// "x" byte kept), and a pixman_region32 owner.
#pragma once

#include <pixman.h>

#include <cstdint>

namespace spicebox::renderer::pixels {

// The 16 two-operand raster operations (spice-common's SpiceROP vocabulary).
enum class Rop : uint8_t {
  Clear,         // 0
  And,           // s & d
  AndReverse,    // s & ~d
  Copy,          // s
  AndInverted,   // ~s & d
  Noop,          // d
  Xor,           // s ^ d
  Or,            // s | d
  Nor,           // ~(s | d)
  Equiv,         // ~(s ^ d)
  Invert,        // ~d
  OrReverse,     // s | ~d
  CopyInverted,  // ~s
  OrInverted,    // ~s | d
  Nand,          // ~(s & d)
  Set,           // all ones
};

// SPICE_ROPD_* descriptor -> Rop. `srcInvertBit`/`destInvertBit` say which INVERS_* bit of the
// descriptor applies to the operation's source and destination (the reference maps the brush or
// the image onto "source" depending on the draw type).
Rop ropFromDescriptor(uint16_t descriptor, uint16_t srcInvertBit, uint16_t destInvertBit);

inline uint32_t applyRop(Rop rop, uint32_t s, uint32_t d) {
  switch (rop) {
    case Rop::Clear:
      return 0;
    case Rop::And:
      return s & d;
    case Rop::AndReverse:
      return s & ~d;
    case Rop::Copy:
      return s;
    case Rop::AndInverted:
      return ~s & d;
    case Rop::Noop:
      return d;
    case Rop::Xor:
      return s ^ d;
    case Rop::Or:
      return s | d;
    case Rop::Nor:
      return ~(s | d);
    case Rop::Equiv:
      return ~(s ^ d);
    case Rop::Invert:
      return ~d;
    case Rop::OrReverse:
      return s | ~d;
    case Rop::CopyInverted:
      return ~s;
    case Rop::OrInverted:
      return ~s | d;
    case Rop::Nand:
      return ~(s & d);
    case Rop::Set:
      return 0xffffffffu;
  }
  return d;
}

// Ternary raster operation (the Windows ROP3 code: bit (P<<2 | S<<1 | D) of `rop3` is the
// result bit), applied to every bit of the pixel words.
inline uint32_t applyRop3(uint8_t rop3, uint32_t p, uint32_t s, uint32_t d) {
  uint32_t result = 0;
  for (unsigned idx = 0; idx < 8; ++idx) {
    if (rop3 & (1u << idx)) {
      result |= ((idx & 4) ? p : ~p) & ((idx & 2) ? s : ~s) & ((idx & 1) ? d : ~d);
    }
  }
  return result;
}

int bitsPerPixel(pixman_image_t* image);
// Pixel (x, y) as an integer of the image's depth. x, y must be inside the image.
uint32_t getPixel(pixman_image_t* image, int x, int y);
void putPixel(pixman_image_t* image, int x, int y, uint32_t value);

class Region {
 public:
  Region() { pixman_region32_init(&r_); }
  // Empty when the rectangle is empty or inverted; coordinates are clamped to int32 by callers.
  Region(int32_t x1, int32_t y1, int32_t x2, int32_t y2) {
    if (x2 > x1 && y2 > y1) {
      pixman_region32_init_rect(&r_, x1, y1, static_cast<unsigned>(x2 - x1),
                                static_cast<unsigned>(y2 - y1));
    } else {
      pixman_region32_init(&r_);
    }
  }
  ~Region() { pixman_region32_fini(&r_); }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  pixman_region32_t* get() { return &r_; }
  bool empty() { return !pixman_region32_not_empty(&r_); }
  void intersect(Region& other) { pixman_region32_intersect(&r_, &r_, other.get()); }
  void unite(Region& other) { pixman_region32_union(&r_, &r_, other.get()); }
  pixman_box32_t* rects(int* count) { return pixman_region32_rectangles(&r_, count); }

 private:
  pixman_region32_t r_;
};

// Every rectangle of `region` (inside `dest`) set to `color` combined by `rop`.
void fillRegion(pixman_image_t* dest, Region& region, uint32_t color, Rop rop);
// Tile: dest (x, y) takes tile ((x - offsetX) mod w, (y - offsetY) mod h). Same depth.
void tileRegion(pixman_image_t* dest, Region& region, pixman_image_t* tile, int64_t offsetX,
                int64_t offsetY, Rop rop);
// Blit: dest (x, y) takes src (x - offsetX, y - offsetY), parts outside src skipped. Same depth.
// Source and destination may be the same image only when their areas do not overlap.
void blitRegion(pixman_image_t* dest, Region& region, pixman_image_t* src, int64_t offsetX,
                int64_t offsetY, Rop rop);
// Blit skipping source pixels equal to `key` (low 24 bits at 32 bpp).
void colorKeyRegion(pixman_image_t* dest, Region& region, pixman_image_t* src, int64_t offsetX,
                    int64_t offsetY, uint32_t key);

}  // namespace spicebox::renderer::pixels
