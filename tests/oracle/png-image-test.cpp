// Runs in: tests (oracle-tests). Input: surfaces and images built here, files in a private
// temporary directory.
#include "tests/oracle/png-image.h"

#include <spice/enums.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <variant>

namespace spicebox::oracle {
namespace {

RgbImage rgbOf(const std::variant<RgbImage, std::string>& result) {
  if (auto* error = std::get_if<std::string>(&result)) {
    FAIL(*error);
  }
  return std::get<RgbImage>(result);
}

std::string errorOf(const std::variant<RgbImage, std::string>& result) {
  REQUIRE(std::holds_alternative<std::string>(result));
  return std::get<std::string>(result);
}

// A private directory, removed with its files at the end of the test.
struct TempDir {
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "png-image-test-XXXXXX");
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

}  // namespace

TEST_CASE("xRGB surface with a positive stride converts row by row, padding skipped") {
  // 2x2, stride 12 (4 bytes of padding per row). Little-endian xRGB: B, G, R, X.
  uint8_t mem[24] = {0x03, 0x02, 0x01, 0xff, 0x06, 0x05, 0x04, 0xff, 9, 9, 9, 9,
                     0x0c, 0x0b, 0x0a, 0x00, 0x0f, 0x0e, 0x0d, 0x00, 9, 9, 9, 9};
  RgbImage image = rgbOf(surfaceToRgb({mem, sizeof mem, 2, 2, 12, SPICE_SURFACE_FMT_32_xRGB}));
  REQUIRE(image.width == 2);
  REQUIRE(image.height == 2);
  CHECK(image.rgb == std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15});
}

TEST_CASE("negative stride: the top row is the last one in memory") {
  uint8_t mem[16] = {0x10, 0x20, 0x30, 0, 0x11, 0x21, 0x31, 0,   // bottom row (y = 1)
                     0x40, 0x50, 0x60, 0, 0x41, 0x51, 0x61, 0};  // top row (y = 0)
  RgbImage image = rgbOf(surfaceToRgb({mem, sizeof mem, 2, 2, -8, SPICE_SURFACE_FMT_32_ARGB}));
  CHECK(image.rgb == std::vector<uint8_t>{0x60, 0x50, 0x40, 0x61, 0x51, 0x41, 0x30, 0x20, 0x10,
                                          0x31, 0x21, 0x11});
}

TEST_CASE("16 bpp 565 and 555 expand by bit replication") {
  uint8_t white565[2] = {0xff, 0xff};
  CHECK(rgbOf(surfaceToRgb({white565, 2, 1, 1, 2, SPICE_SURFACE_FMT_16_565})).rgb ==
        std::vector<uint8_t>{255, 255, 255});
  uint16_t red555 = 0x1f << 10 | 0x10 << 5 | 0x01;
  uint8_t mem[2] = {static_cast<uint8_t>(red555 & 0xff), static_cast<uint8_t>(red555 >> 8)};
  CHECK(rgbOf(surfaceToRgb({mem, 2, 1, 1, 2, SPICE_SURFACE_FMT_16_555})).rgb ==
        std::vector<uint8_t>{255, 0x84, 0x08});
}

TEST_CASE("surface geometry that does not fit its allocation is refused") {
  uint8_t mem[32] = {};
  CHECK(errorOf(surfaceToRgb({mem, 32, 3, 2, 8, SPICE_SURFACE_FMT_32_xRGB})).find("smaller") !=
        std::string::npos);
  CHECK(errorOf(surfaceToRgb({mem, 31, 2, 4, -8, SPICE_SURFACE_FMT_32_xRGB})).find("allocated") !=
        std::string::npos);
  CHECK(errorOf(surfaceToRgb({mem, 32, 2, 2, 8, SPICE_SURFACE_FMT_8_A})).find("format") !=
        std::string::npos);
  CHECK(errorOf(surfaceToRgb({mem, 32, 0, 2, 8, SPICE_SURFACE_FMT_32_xRGB})).find("empty") !=
        std::string::npos);
  CHECK(!errorOf(surfaceToRgb({mem, 32, 1, 1, INT32_MIN, SPICE_SURFACE_FMT_32_xRGB})).empty());
}

TEST_CASE("PNG round trip keeps every value, and a broken file is an error, not a crash") {
  TempDir dir;
  RgbImage image;
  image.width = 3;
  image.height = 2;
  for (int i = 0; i < 18; ++i) {
    image.rgb.push_back(static_cast<uint8_t>(i * 14 + 1));
  }
  std::string path = dir.path + "/a.png";
  REQUIRE(writePng(path, image).empty());
  RgbImage back = rgbOf(readPng(path));
  CHECK(back.width == 3);
  CHECK(back.height == 2);
  CHECK(back.rgb == image.rgb);

  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  CHECK(errorOf(readPng(path)).find("not a readable PNG") != std::string::npos);
  CHECK(errorOf(readPng(dir.path + "/missing.png")).find("cannot open") != std::string::npos);
  CHECK(!writePng(dir.path + "/no/such/dir.png", image).empty());
}

TEST_CASE("compareImages counts differing pixels and the largest channel difference") {
  RgbImage a;
  a.width = 2;
  a.height = 2;
  a.rgb.assign(12, 100);
  RgbImage b = a;
  auto same = std::get<ImageDifference>(compareImages(a, b));
  CHECK(same.pixels == 4);
  CHECK(same.differingPixels == 0);
  CHECK(same.maxChannelDifference == 0);

  b.rgb[1] = 102;  // pixel 0, green +2
  b.rgb[11] = 90;  // pixel 3, blue -10
  auto diff = std::get<ImageDifference>(compareImages(a, b));
  CHECK(diff.differingPixels == 2);
  CHECK(diff.pixelsOverTwo == 1);
  CHECK(diff.maxChannelDifference == 10);

  b.width = 4;
  b.height = 1;
  CHECK(std::holds_alternative<std::string>(compareImages(a, b)));
}

}  // namespace spicebox::oracle
