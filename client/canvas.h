// Runs in: SPICE clients. Input: geometry and pixels from a SPICE server's display messages,
// untrusted: every rectangle is clipped to the surface and to its source before a pixel moves,
// and surface sizes are capped before anything is allocated.
//
// A client's copy of the server's surfaces as plain pixels (x8r8g8b8, top row first), and the
// few drawing operations spicebox's server sends: solid fill, copy bits, image copy.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace spicebox::client {

struct Rect {
  int32_t top = 0, left = 0, bottom = 0, right = 0;
  bool empty() const { return bottom <= top || right <= left; }
  bool operator==(const Rect&) const = default;
};

// Widest and tallest surface accepted (QXL surfaces are far smaller), and the most pixels of one
// surface: 8192 x 8192 x 4 bytes = 256 MiB at most per surface.
constexpr uint32_t MAX_SURFACE_SIDE = 8192;

Rect intersect(const Rect& a, const Rect& b);

class Canvas {
 public:
  Canvas() = default;
  // Callers check the size against MAX_SURFACE_SIDE first.
  Canvas(uint32_t width, uint32_t height)
      : width_(width), height_(height), pixels_(size_t{width} * height, 0) {}

  uint32_t width() const { return width_; }
  uint32_t height() const { return height_; }
  const std::vector<uint32_t>& pixels() const { return pixels_; }
  uint32_t pixel(uint32_t x, uint32_t y) const { return pixels_[size_t{y} * width_ + x]; }

  // Each operation draws inside `box`, limited to the union of `clip` (none: the whole box) and
  // to the surface.
  void fill(const Rect& box, std::span<const Rect> clip, uint32_t color);
  // Copies the box-sized area whose top-left is (srcX, srcY) to `box`, as if through a temporary
  // copy (overlap is fine). Source pixels outside the surface are not copied.
  void copyBits(const Rect& box, std::span<const Rect> clip, int32_t srcX, int32_t srcY);
  // Copies `srcArea` of a srcWidth x srcHeight image to `box` (same size; the caller checks).
  void blit(const Rect& box, std::span<const Rect> clip, std::span<const uint32_t> src,
            uint32_t srcWidth, uint32_t srcHeight, const Rect& srcArea);
  // Copies `r` (clipped to the surface) from a picture of this canvas's size, x8r8g8b8 little
  // endian, whose row y starts at byte y * stride of `picture`. False, and nothing copied, when
  // `picture` is too small for that geometry or the stride shorter than a row.
  bool load(const Rect& r, std::span<const uint8_t> picture, size_t stride);

 private:
  // The parts of `box` to draw: each clip rect (or the box) intersected with box and surface.
  std::vector<Rect> targets(const Rect& box, std::span<const Rect> clip) const;

  uint32_t width_ = 0, height_ = 0;
  std::vector<uint32_t> pixels_;
};

}  // namespace spicebox::client
