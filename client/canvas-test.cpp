// Runs in: tests. Input: geometry written in the test, including hostile coordinates.
#include "client/canvas.h"

#include <catch2/catch.hpp>
#include <climits>

using namespace spicebox::client;

namespace {

// Every pixel: its own index, so moved pixels show where they came from.
Canvas numbered(uint32_t w, uint32_t h) {
  Canvas c(w, h);
  std::vector<uint32_t> src(size_t{w} * h);
  for (size_t i = 0; i < src.size(); ++i)
    src[i] = static_cast<uint32_t>(i);
  c.blit(Rect{0, 0, int32_t(h), int32_t(w)}, {}, src, w, h, Rect{0, 0, int32_t(h), int32_t(w)});
  return c;
}

}  // namespace

TEST_CASE("fill: only inside box, clip and surface", "[canvas]") {
  Canvas c(4, 3);
  std::vector<Rect> clip = {Rect{0, 0, 1, 4}, Rect{2, 3, 3, 4}};  // row 0; pixel (3,2)
  c.fill(Rect{0, 1, 3, 10}, clip, 7);
  CHECK(c.pixel(0, 0) == 0);
  CHECK(c.pixel(1, 0) == 7);
  CHECK(c.pixel(3, 0) == 7);
  CHECK(c.pixel(1, 1) == 0);
  CHECK(c.pixel(3, 2) == 7);
  CHECK(c.pixel(2, 2) == 0);
}

TEST_CASE("hostile rectangles draw nothing outside the surface", "[canvas]") {
  Canvas c(4, 4);
  c.fill(Rect{INT_MIN, INT_MIN, INT_MAX, INT_MAX}, {}, 5);
  for (uint32_t y = 0; y < 4; ++y)
    for (uint32_t x = 0; x < 4; ++x)
      CHECK(c.pixel(x, y) == 5);
  c.fill(Rect{3, 3, 1, 1}, {}, 9);  // inverted: empty
  CHECK(c.pixel(2, 2) == 5);
  c.copyBits(Rect{0, 0, 4, 4}, {}, INT_MAX, INT_MIN);  // source entirely outside: nothing moves
  CHECK(c.pixel(0, 0) == 5);
  std::vector<uint32_t> src(4, 1);
  c.blit(Rect{0, 0, 2, 2}, {}, src, 2, 2, Rect{INT_MIN, INT_MIN, INT_MIN + 2, INT_MIN + 2});
  CHECK(c.pixel(0, 0) == 5);
}

TEST_CASE("copyBits: overlapping move reads the pixels from before the move", "[canvas]") {
  Canvas c = numbered(4, 4);
  // Move the top-left 3x3 one pixel right and down.
  c.copyBits(Rect{1, 1, 4, 4}, {}, 0, 0);
  CHECK(c.pixel(1, 1) == 0);   // was (0,0)
  CHECK(c.pixel(3, 3) == 10);  // was (2,2) = 2*4+2
  CHECK(c.pixel(2, 1) == 1);
  CHECK(c.pixel(0, 0) == 0);  // untouched
  CHECK(c.pixel(3, 0) == 3);  // untouched
}

TEST_CASE("blit: srcArea of an image to box", "[canvas]") {
  Canvas c(3, 3);
  std::vector<uint32_t> src = {1, 2, 3, 4};                   // 2x2
  c.blit(Rect{1, 1, 2, 3}, {}, src, 2, 2, Rect{1, 0, 2, 2});  // bottom row to (1,1)-(3,2)
  CHECK(c.pixel(1, 1) == 3);
  CHECK(c.pixel(2, 1) == 4);
  CHECK(c.pixel(0, 1) == 0);
  CHECK(c.pixel(1, 0) == 0);
}
