// Runs in: SPICE clients. Input: untrusted geometry (see canvas.h); all arithmetic is done in
// int64 so that hostile coordinates cannot overflow.
#include "client/canvas.h"

#include <algorithm>
#include <cstring>

namespace spicebox::client {

Rect intersect(const Rect& a, const Rect& b) {
  return Rect{std::max(a.top, b.top), std::max(a.left, b.left), std::min(a.bottom, b.bottom),
              std::min(a.right, b.right)};
}

std::vector<Rect> Canvas::targets(const Rect& box, std::span<const Rect> clip) const {
  Rect surface{0, 0, static_cast<int32_t>(height_), static_cast<int32_t>(width_)};
  Rect bounded = intersect(box, surface);
  std::vector<Rect> out;
  if (bounded.empty())
    return out;
  if (clip.empty()) {
    out.push_back(bounded);
    return out;
  }
  // Clip rects of one message do not overlap in what spice-server sends; even if a hostile
  // server sends overlapping ones, drawing twice yields the same pixels for these operations
  // except copyBits, which reads from a snapshot of its source.
  for (const Rect& c : clip) {
    Rect r = intersect(bounded, c);
    if (!r.empty())
      out.push_back(r);
  }
  return out;
}

void Canvas::fill(const Rect& box, std::span<const Rect> clip, uint32_t color) {
  for (const Rect& r : targets(box, clip))
    for (int32_t y = r.top; y < r.bottom; ++y)
      std::fill_n(pixels_.begin() + static_cast<ptrdiff_t>(size_t(y) * width_ + size_t(r.left)),
                  r.right - r.left, color);
}

void Canvas::copyBits(const Rect& box, std::span<const Rect> clip, int32_t srcX, int32_t srcY) {
  auto parts = targets(box, clip);
  if (parts.empty())
    return;
  // The source snapshot: the whole surface (simple, and the copies spicebox sends are few).
  std::vector<uint32_t> before = pixels_;
  int64_t dx = int64_t{srcX} - box.left, dy = int64_t{srcY} - box.top;
  for (const Rect& r : parts) {
    for (int32_t y = r.top; y < r.bottom; ++y) {
      int64_t sy = y + dy;
      if (sy < 0 || sy >= height_)
        continue;
      for (int32_t x = r.left; x < r.right; ++x) {
        int64_t sx = x + dx;
        if (sx < 0 || sx >= width_)
          continue;
        pixels_[size_t(y) * width_ + size_t(x)] = before[size_t(sy) * width_ + size_t(sx)];
      }
    }
  }
}

void Canvas::blit(const Rect& box, std::span<const Rect> clip, std::span<const uint32_t> src,
                  uint32_t srcWidth, uint32_t srcHeight, const Rect& srcArea) {
  if (src.size() < size_t{srcWidth} * srcHeight)
    return;  // the caller's bug; drawing nothing is safe
  int64_t dx = int64_t{srcArea.left} - box.left, dy = int64_t{srcArea.top} - box.top;
  for (const Rect& r : targets(box, clip)) {
    for (int32_t y = r.top; y < r.bottom; ++y) {
      int64_t sy = y + dy;
      if (sy < 0 || sy >= srcHeight)
        continue;
      for (int32_t x = r.left; x < r.right; ++x) {
        int64_t sx = x + dx;
        if (sx < 0 || sx >= srcWidth)
          continue;
        pixels_[size_t(y) * width_ + size_t(x)] = src[size_t(sy) * srcWidth + size_t(sx)];
      }
    }
  }
}

bool Canvas::load(const Rect& r, std::span<const uint8_t> picture, size_t stride) {
  size_t row = size_t{width_} * 4;
  // The last row ends at (height - 1) * stride + row: checked without overflow.
  if (width_ == 0 || height_ == 0 || stride < row || picture.size() < row ||
      (picture.size() - row) / stride < height_ - 1)
    return false;
  Rect surface{0, 0, static_cast<int32_t>(height_), static_cast<int32_t>(width_)};
  Rect c = intersect(r, surface);
  if (c.empty())
    return true;
  size_t bytes = size_t(c.right - c.left) * 4;
  for (int32_t y = c.top; y < c.bottom; ++y)
    std::memcpy(pixels_.data() + size_t(y) * width_ + size_t(c.left),
                picture.data() + size_t(y) * stride + size_t(c.left) * 4, bytes);
  return true;
}

}  // namespace spicebox::client
