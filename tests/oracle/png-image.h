// Runs in: tests (spicebox-render-oracle and oracle-tests), on a developer machine or CI.
// Input: PNG files named on the command line (parsed by libpng, dimensions capped before any
// allocation) and surface memory whose geometry the caller has checked against the allocation it
// came from (surfaceToRgb checks the geometry itself once more: stride, format, size).
//
// The oracle's picture format: 8-bit RGB, top row first, no padding. Reading keeps a file's
// stored values as they are (no gamma or colour-space conversion: spicy-screenshot's PNGs carry
// gAMA/cHRM chunks, and a converted pixel would no longer be the one the client drew).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace spicebox::oracle {

// Widest and tallest image read or converted: QXL surfaces are far smaller (a 16384-wide 32 bpp
// row is already 64 KiB), and the cap keeps width * height * 3 well inside size_t.
constexpr uint32_t MAX_IMAGE_SIDE = 16384;

struct RgbImage {
  uint32_t width = 0;
  uint32_t height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3 bytes, row y at y * width * 3

  const uint8_t* pixel(uint32_t x, uint32_t y) const {
    return rgb.data() + (static_cast<size_t>(y) * width + x) * 3;
  }
};

// A surface as the QXL device describes it: `mem` is the lowest address of the allocation of
// `size` bytes; with a negative stride the top row (line 0) is the last one in memory, as
// spice-server's worker lays it out (line_0 = mem + |stride| * (height - 1)).
struct SurfaceView {
  const uint8_t* mem = nullptr;
  size_t size = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  int32_t stride = 0;
  uint32_t format = 0;  // SPICE_SURFACE_FMT_*: 32_xRGB, 32_ARGB (alpha ignored), 16_555, 16_565
};

// Converts a surface to RGB, top row first. An error names what is wrong with the geometry.
std::variant<RgbImage, std::string> surfaceToRgb(const SurfaceView& surface);

// Reads any 8-bit (or lower) grey, palette or RGB PNG into RGB, values unchanged. Images with
// an alpha channel or transparency are refused: the oracle compares opaque pictures only.
std::variant<RgbImage, std::string> readPng(const std::string& path);

// Writes `image` as an 8-bit RGB PNG. Returns an empty string on success, else the error.
std::string writePng(const std::string& path, const RgbImage& image);

struct ImageDifference {
  uint64_t pixels = 0;           // pixels compared (width * height)
  uint64_t differingPixels = 0;  // pixels where any channel differs
  uint64_t pixelsOverTwo = 0;    // pixels where some channel differs by more than 2
  unsigned maxChannelDifference = 0;
};

// Compares two images of the same size channel by channel; an error if the sizes differ.
std::variant<ImageDifference, std::string> compareImages(const RgbImage& a, const RgbImage& b);

}  // namespace spicebox::oracle
