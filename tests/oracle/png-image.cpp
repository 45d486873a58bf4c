// Runs in: tests (spicebox-render-oracle and oracle-tests). Input: PNG files (parsed by libpng,
// hostile as far as libpng is; sizes capped here) and surface memory with checked geometry.
#include "tests/oracle/png-image.h"

#include <png.h>
#include <spice/enums.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace spicebox::oracle {
namespace {

uint32_t bytesPerPixel(uint32_t format) {
  switch (format) {
    case SPICE_SURFACE_FMT_32_xRGB:
    case SPICE_SURFACE_FMT_32_ARGB:
      return 4;
    case SPICE_SURFACE_FMT_16_555:
    case SPICE_SURFACE_FMT_16_565:
      return 2;
    default:
      return 0;
  }
}

// 5 or 6 significant bits to 8 by bit replication, as pixman expands x1r5g5b5 / r5g6b5.
uint8_t expand5(uint32_t v) {
  return static_cast<uint8_t>((v << 3) | (v >> 2));
}
uint8_t expand6(uint32_t v) {
  return static_cast<uint8_t>((v << 2) | (v >> 4));
}

void convertRow(const uint8_t* src, uint8_t* dst, uint32_t width, uint32_t format) {
  for (uint32_t x = 0; x < width; ++x, dst += 3) {
    if (format == SPICE_SURFACE_FMT_32_xRGB || format == SPICE_SURFACE_FMT_32_ARGB) {
      // Little-endian 0xAARRGGBB: bytes B, G, R, A.
      const uint8_t* p = src + static_cast<size_t>(x) * 4;
      dst[0] = p[2];
      dst[1] = p[1];
      dst[2] = p[0];
      continue;
    }
    uint32_t v = src[x * 2u] | (uint32_t{src[x * 2u + 1]} << 8);
    if (format == SPICE_SURFACE_FMT_16_555) {
      dst[0] = expand5((v >> 10) & 0x1f);
      dst[1] = expand5((v >> 5) & 0x1f);
      dst[2] = expand5(v & 0x1f);
    } else {
      dst[0] = expand5((v >> 11) & 0x1f);
      dst[1] = expand6((v >> 5) & 0x3f);
      dst[2] = expand5(v & 0x1f);
    }
  }
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

// libpng reports errors by longjmp to the setjmp in readPngRows; the message is kept here first.
void pngError(png_structp png, png_const_charp message) {
  auto* error = static_cast<std::string*>(png_get_error_ptr(png));
  *error = message;
  png_longjmp(png, 1);
}
void pngWarning(png_structp, png_const_charp) {}

// The part of readPng between setjmp and the last libpng call. It owns no C++ object whose
// destructor a longjmp could skip: `image` and `error` belong to the caller and are complete
// objects before setjmp; image->rgb is resized only after every check libpng can fail.
bool readPngRows(png_structp png, png_infop info, FILE* file, const std::string& path,
                 RgbImage* image, std::string* error) {
  if (setjmp(png_jmpbuf(png))) {
    *error = path + ": not a readable PNG: " + *error;
    return false;
  }
  png_init_io(png, file);
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int bitDepth = 0, colorType = 0;
  png_get_IHDR(png, info, &width, &height, &bitDepth, &colorType, nullptr, nullptr, nullptr);
  if (width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE) {
    *error = path + ": " + std::to_string(width) + "x" + std::to_string(height) +
             " is outside 1.." + std::to_string(MAX_IMAGE_SIDE) + " pixels a side";
    return false;
  }
  if ((colorType & PNG_COLOR_MASK_ALPHA) != 0 || png_get_valid(png, info, PNG_INFO_tRNS) != 0) {
    *error = path + ": has an alpha channel or transparency; the oracle compares opaque RGB only";
    return false;
  }
  if (bitDepth == 16) {
    *error = path + ": 16 bits per channel; the oracle compares 8-bit pictures only";
    return false;
  }
  // Bring every layout to 8-bit RGB without touching values: no gamma, no colour conversion.
  if (colorType == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
  }
  if (colorType == PNG_COLOR_TYPE_GRAY && bitDepth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  if (colorType == PNG_COLOR_TYPE_GRAY) {
    png_set_gray_to_rgb(png);
  }
  int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != static_cast<size_t>(width) * 3) {
    *error = path + ": unexpected row size after conversion to RGB";
    return false;
  }
  image->width = width;
  image->height = height;
  image->rgb.resize(static_cast<size_t>(width) * height * 3);
  // Row by row, so no row-pointer array lives across a possible longjmp.
  for (int pass = 0; pass < passes; ++pass) {
    for (uint32_t y = 0; y < height; ++y) {
      png_read_row(png, image->rgb.data() + static_cast<size_t>(y) * width * 3, nullptr);
    }
  }
  png_read_end(png, nullptr);
  return true;
}

}  // namespace

std::variant<RgbImage, std::string> surfaceToRgb(const SurfaceView& surface) {
  uint32_t bpp = bytesPerPixel(surface.format);
  if (bpp == 0) {
    return "primary surface format " + std::to_string(surface.format) +
           " is not one the oracle converts (32 xRGB, 32 ARGB, 16 555, 16 565)";
  }
  if (surface.mem == nullptr || surface.width == 0 || surface.height == 0 ||
      surface.width > MAX_IMAGE_SIDE || surface.height > MAX_IMAGE_SIDE) {
    return "surface " + std::to_string(surface.width) + "x" + std::to_string(surface.height) +
           " is empty or larger than " + std::to_string(MAX_IMAGE_SIDE) + " pixels a side";
  }
  // int64 before negating: -INT32_MIN does not fit an int32.
  uint64_t absStride = static_cast<uint64_t>(std::abs(static_cast<int64_t>(surface.stride)));
  if (absStride < static_cast<uint64_t>(surface.width) * bpp) {
    return "surface stride " + std::to_string(surface.stride) + " is smaller than a row of " +
           std::to_string(surface.width) + " pixels at " + std::to_string(bpp) + " bytes";
  }
  if (absStride * surface.height > surface.size) {
    return "surface " + std::to_string(surface.height) + " rows of " + std::to_string(absStride) +
           " bytes need more than the " + std::to_string(surface.size) + " bytes allocated";
  }
  RgbImage image;
  image.width = surface.width;
  image.height = surface.height;
  image.rgb.resize(static_cast<size_t>(surface.width) * surface.height * 3);
  for (uint32_t y = 0; y < surface.height; ++y) {
    // Row y of the picture: counted from the start for a positive stride, from the end for a
    // negative one (line 0 is then the last row in memory).
    uint64_t row = surface.stride >= 0 ? y : surface.height - 1u - y;
    convertRow(surface.mem + row * absStride,
               image.rgb.data() + static_cast<size_t>(y) * surface.width * 3, surface.width,
               surface.format);
  }
  return image;
}

std::variant<RgbImage, std::string> readPng(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rbe"));
  if (!file) {
    return path + ": cannot open: " + std::strerror(errno);
  }
  std::string error;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, pngError, pngWarning);
  if (png == nullptr) {
    return path + ": png_create_read_struct failed (out of memory?)";
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return path + ": png_create_info_struct failed (out of memory?)";
  }
  RgbImage image;
  bool ok = readPngRows(png, info, file.get(), path, &image, &error);
  png_destroy_read_struct(&png, &info, nullptr);
  if (!ok) {
    return error;
  }
  return image;
}

std::string writePng(const std::string& path, const RgbImage& image) {
  if (image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return path + ": image buffer does not match its " + std::to_string(image.width) + "x" +
           std::to_string(image.height) + " size";
  }
  png_image out{};
  out.version = PNG_IMAGE_VERSION;
  out.width = image.width;
  out.height = image.height;
  out.format = PNG_FORMAT_RGB;
  if (png_image_write_to_file(&out, path.c_str(), 0, image.rgb.data(),
                              static_cast<png_int_32>(image.width * 3), nullptr) == 0) {
    std::string error = path + ": cannot write PNG: " + out.message;
    png_image_free(&out);
    return error;
  }
  return {};
}

std::variant<ImageDifference, std::string> compareImages(const RgbImage& a, const RgbImage& b) {
  if (a.width != b.width || a.height != b.height) {
    return "sizes differ: " + std::to_string(a.width) + "x" + std::to_string(a.height) + " vs " +
           std::to_string(b.width) + "x" + std::to_string(b.height);
  }
  ImageDifference diff;
  diff.pixels = static_cast<uint64_t>(a.width) * a.height;
  for (uint64_t i = 0; i < diff.pixels; ++i) {
    unsigned worst = 0;
    for (int c = 0; c < 3; ++c) {
      int d = std::abs(int{a.rgb[i * 3 + c]} - int{b.rgb[i * 3 + c]});
      worst = std::max(worst, static_cast<unsigned>(d));
    }
    diff.differingPixels += worst != 0;
    diff.pixelsOverTwo += worst > 2;
    diff.maxChannelDifference = std::max(diff.maxChannelDifference, worst);
  }
  return diff;
}

}  // namespace spicebox::oracle
