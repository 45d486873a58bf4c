// Runs in: renderer (sandboxed). Input: decoded guest images (hostile values, sizes re-checked
// here before any read) and our own surfaces.
#include "renderer/raster-images.h"
#include "renderer/qxl-formats.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "renderer/raster-pixels.h"

namespace spicebox::renderer::images {
namespace {

PixmanImage createImage(pixman_format_code_t format, uint32_t width, uint32_t height) {
  return PixmanImage(pixman_image_create_bits(format, static_cast<int>(width),
                                              static_cast<int>(height), nullptr, 0));
}

// The palette as a table every index of a `bits`-bit format can address: entries past the
// palette are 0 (the reference reads uninitialised memory there; the decoder normally rejects
// such bitmaps), so an index read from the bitmap is in range by construction.
std::array<uint32_t, 256> paletteTable(const qxlcmd::Bitmap& bitmap) {
  std::array<uint32_t, 256> table{};
  const auto& entries = bitmap.palette->entries;
  std::copy_n(entries.begin(), std::min(entries.size(), table.size()), table.begin());
  return table;
}

// One bitmap row as native pixels: `out` holds bitmap.x pixels of the native format's size.
// `orHigh` is ORed into 32 bpp results (HIGH_BITS_SET on x8r8g8b8).
void convertRow(const qxlcmd::Bitmap& bitmap, const std::array<uint32_t, 256>& pal,
                const uint8_t* row, uint8_t* out, uint32_t orHigh) {
  const uint32_t w = bitmap.x;
  auto* out32 = reinterpret_cast<uint32_t*>(out);
  switch (bitmap.format) {
    case SPICE_BITMAP_FMT_1BIT_BE:
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = pal[(row[x / 8] >> (7 - x % 8)) & 1u] | orHigh;
      }
      return;
    case SPICE_BITMAP_FMT_1BIT_LE:
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = pal[(row[x / 8] >> (x % 8)) & 1u] | orHigh;
      }
      return;
    case SPICE_BITMAP_FMT_4BIT_BE:
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = pal[(x % 2 ? row[x / 2] : row[x / 2] >> 4) & 0x0fu] | orHigh;
      }
      return;
    case SPICE_BITMAP_FMT_4BIT_LE:
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = pal[(x % 2 ? row[x / 2] >> 4 : row[x / 2]) & 0x0fu] | orHigh;
      }
      return;
    case SPICE_BITMAP_FMT_8BIT:
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = pal[row[x]] | orHigh;
      }
      return;
    case SPICE_BITMAP_FMT_8BIT_A:
      std::memcpy(out, row, w);
      return;
    case SPICE_BITMAP_FMT_16BIT:  // little-endian words, as pixman's on this host
      std::memcpy(out, row, size_t{w} * 2);
      return;
    case SPICE_BITMAP_FMT_24BIT:  // b, g, r bytes; top byte 0
      for (uint32_t x = 0; x < w; ++x) {
        out32[x] = (static_cast<uint32_t>(row[3 * x]) | static_cast<uint32_t>(row[3 * x + 1]) << 8 |
                    static_cast<uint32_t>(row[3 * x + 2]) << 16) |
                   orHigh;
      }
      return;
    default:  // 32BIT, RGBA: little-endian words kept whole
      if (orHigh == 0) {
        std::memcpy(out, row, size_t{w} * 4);
      } else {
        for (uint32_t x = 0; x < w; ++x) {
          uint32_t v;
          std::memcpy(&v, row + 4 * x, 4);
          out32[x] = v | orHigh;
        }
      }
      return;
  }
}

pixman_format_code_t nativeFormat(uint8_t format) {
  switch (format) {
    case SPICE_BITMAP_FMT_RGBA:
      return PIXMAN_a8r8g8b8;
    case SPICE_BITMAP_FMT_16BIT:
      return PIXMAN_x1r5g5b5;
    case SPICE_BITMAP_FMT_8BIT_A:
      return PIXMAN_a8;
    default:
      return PIXMAN_x8r8g8b8;
  }
}

}  // namespace

PixmanImage convertImage(pixman_image_t* image, pixman_format_code_t format) {
  const int w = pixman_image_get_width(image), h = pixman_image_get_height(image);
  PixmanImage out(pixman_image_create_bits(format, w, h, nullptr, 0));
  if (out) {
    pixman_image_composite32(PIXMAN_OP_SRC, image, nullptr, out.get(), 0, 0, 0, 0, 0, 0, w, h);
  }
  return out;
}

std::variant<PixmanImage, RasterError> bitmapToNative(const qxlcmd::Image& image,
                                                      const qxlcmd::Bitmap& bitmap,
                                                      pixman_format_code_t canvasFormat) {
  const unsigned bits = qxlcmd::bitmapFormatBits(bitmap.format);
  if (bits == 0) {
    return RasterError::UnsupportedImage;
  }
  if (bitmap.x == 0 || bitmap.y == 0 || bitmap.x > MAX_SURFACE_DIMENSION ||
      bitmap.y > MAX_SURFACE_DIMENSION) {
    return RasterError::BadImage;
  }
  const uint64_t rowBytes = (static_cast<uint64_t>(bitmap.x) * bits + 7) / 8;
  const std::span<const uint8_t> bytes = bitmap.bytes();
  if (bitmap.stride < rowBytes || static_cast<uint64_t>(bitmap.stride) * bitmap.y > bytes.size()) {
    return RasterError::BadImage;
  }
  const bool indexed = bits <= 8 && bitmap.format != SPICE_BITMAP_FMT_8BIT_A;
  if (indexed && !bitmap.palette) {
    return RasterError::BadImage;
  }
  const pixman_format_code_t format =
      indexed && canvasFormat == PIXMAN_a8r8g8b8 ? PIXMAN_a8r8g8b8 : nativeFormat(bitmap.format);
  const bool topDown = bitmap.flags & SPICE_BITMAP_FLAGS_TOP_DOWN;
  const uint32_t orHigh =
      (image.flags & SPICE_IMAGE_FLAGS_HIGH_BITS_SET) && format == PIXMAN_x8r8g8b8 ? 0xff000000u
                                                                                   : 0u;
  // Bytes already in the native format, top-down, in pixman's layout (a stride of whole 32-bit
  // words, word-aligned): wrapped, not copied. The image is read only and dropped before the
  // tree (and its view of guest memory) is.
  const bool sameLayout = (bitmap.format == SPICE_BITMAP_FMT_32BIT && orHigh == 0) ||
                          bitmap.format == SPICE_BITMAP_FMT_RGBA ||
                          bitmap.format == SPICE_BITMAP_FMT_16BIT ||
                          bitmap.format == SPICE_BITMAP_FMT_8BIT_A;
  if (sameLayout && topDown && bitmap.stride % 4 == 0 &&
      reinterpret_cast<uintptr_t>(bytes.data()) % 4 == 0 &&
      bitmap.stride <= static_cast<uint32_t>(std::numeric_limits<int>::max())) {
    // pixman takes non-const bits; nothing writes through this image.
    auto* bits = reinterpret_cast<uint32_t*>(const_cast<uint8_t*>(bytes.data()));
    PixmanImage wrapped(pixman_image_create_bits(format, static_cast<int>(bitmap.x),
                                                 static_cast<int>(bitmap.y), bits,
                                                 static_cast<int>(bitmap.stride)));
    if (!wrapped) {
      return RasterError::BadImage;
    }
    return wrapped;
  }
  PixmanImage out = createImage(format, bitmap.x, bitmap.y);
  if (!out) {
    return RasterError::BadImage;
  }
  std::array<uint32_t, 256> pal{};
  if (indexed) {
    pal = paletteTable(bitmap);
  }
  auto* outBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(out.get()));
  const size_t outStride = static_cast<size_t>(pixman_image_get_stride(out.get()));
  for (uint32_t y = 0; y < bitmap.y; ++y) {
    const uint8_t* row = bytes.data() + static_cast<size_t>(bitmap.stride) * y;
    const size_t destY = topDown ? y : bitmap.y - 1 - y;
    convertRow(bitmap, pal, row, outBits + outStride * destY, orHigh);
  }
  return out;
}

std::variant<PixmanImage, RasterError> imageForCanvas(const qxlcmd::Image& image,
                                                      pixman_format_code_t canvasFormat,
                                                      bool wantOriginal,
                                                      const SurfaceLookup& surfaces) {
  if (const auto* surf = std::get_if<qxlcmd::SurfaceImage>(&image.payload)) {
    pixman_image_t* src = surfaces(surf->surfaceId);
    if (src == nullptr) {
      return RasterError::SourceSurfaceUnknown;
    }
    if (!wantOriginal &&
        PIXMAN_FORMAT_BPP(pixman_image_get_format(src)) != PIXMAN_FORMAT_BPP(canvasFormat)) {
      PixmanImage converted = convertImage(src, canvasFormat);
      if (!converted) {
        return RasterError::BadImage;
      }
      return converted;
    }
    return PixmanImage(pixman_image_ref(src));
  }
  const auto* bitmap = std::get_if<qxlcmd::Bitmap>(&image.payload);
  if (bitmap == nullptr || image.type != SPICE_IMAGE_TYPE_BITMAP) {
    return RasterError::UnsupportedImage;  // QUIC and other compressed images
  }
  // Converted to the canvas format below, an indexed bitmap is x8r8g8b8 with the palette's raw
  // values (canvas_get_target_format: no alpha for sources without alpha); kept as it is, it is
  // in the canvas' own format.
  auto native = bitmapToNative(image, *bitmap, wantOriginal ? canvasFormat : PIXMAN_x8r8g8b8);
  if (auto* error = std::get_if<RasterError>(&native)) {
    return *error;
  }
  PixmanImage img = std::move(std::get<PixmanImage>(native));
  if (wantOriginal) {
    return img;
  }
  // canvas_get_target_format: the canvas format, but keep alpha for sources with alpha on an
  // xRGB canvas and drop it for sources without alpha on an ARGB canvas.
  const pixman_format_code_t have = pixman_image_get_format(img.get());
  pixman_format_code_t want = canvasFormat;
  if (have == PIXMAN_a8r8g8b8 && want == PIXMAN_x8r8g8b8) {
    want = PIXMAN_a8r8g8b8;
  } else if (have != PIXMAN_a8r8g8b8 && want == PIXMAN_a8r8g8b8) {
    want = PIXMAN_x8r8g8b8;
  }
  if (have == want) {
    return img;
  }
  PixmanImage converted = convertImage(img.get(), want);
  if (!converted) {
    return RasterError::BadImage;
  }
  return converted;
}

std::variant<PixmanImage, RasterError> maskImage(const qxlcmd::Image& image,
                                                 const SurfaceLookup& surfaces) {
  if (const auto* surf = std::get_if<qxlcmd::SurfaceImage>(&image.payload)) {
    pixman_image_t* src = surfaces(surf->surfaceId);
    if (src == nullptr) {
      return RasterError::SourceSurfaceUnknown;
    }
    if (pixman_image_get_format(src) != PIXMAN_a1) {
      return RasterError::UnsupportedImage;
    }
    return PixmanImage(pixman_image_ref(src));
  }
  const auto* bitmap = std::get_if<qxlcmd::Bitmap>(&image.payload);
  if (bitmap == nullptr || image.type != SPICE_IMAGE_TYPE_BITMAP) {
    return RasterError::UnsupportedImage;
  }
  if (bitmap->format != SPICE_BITMAP_FMT_1BIT_LE && bitmap->format != SPICE_BITMAP_FMT_1BIT_BE) {
    return RasterError::UnsupportedImage;  // the reference only takes 1 bpp masks
  }
  if (bitmap->x == 0 || bitmap->y == 0 || bitmap->x > MAX_SURFACE_DIMENSION ||
      bitmap->y > MAX_SURFACE_DIMENSION) {
    return RasterError::BadImage;
  }
  const uint64_t rowBytes = (static_cast<uint64_t>(bitmap->x) + 7) / 8;
  if (bitmap->stride < rowBytes ||
      static_cast<uint64_t>(bitmap->stride) * bitmap->y > bitmap->bytes().size()) {
    return RasterError::BadImage;
  }
  PixmanImage out = createImage(PIXMAN_a1, bitmap->x, bitmap->y);
  if (!out) {
    return RasterError::BadImage;
  }
  const bool topDown = bitmap->flags & SPICE_BITMAP_FLAGS_TOP_DOWN;
  const bool msbFirst = bitmap->format == SPICE_BITMAP_FMT_1BIT_BE;
  // pixman's a1 on a little-endian host: pixel x is bit x % 8 of byte x / 8 (LSB first), as in
  // 1BIT_LE; 1BIT_BE bytes are bit-reversed. Bits past the width stay 0.
  std::array<uint8_t, 256> reversed{};
  for (unsigned v = 0; v < 256; ++v) {
    unsigned r = 0;
    for (unsigned bit = 0; bit < 8; ++bit) {
      r |= ((v >> bit) & 1u) << (7 - bit);
    }
    reversed[v] = static_cast<uint8_t>(r);
  }
  const size_t fullBytes = bitmap->x / 8;
  const unsigned restBits = bitmap->x % 8;
  auto* outBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(out.get()));
  const size_t outStride = static_cast<size_t>(pixman_image_get_stride(out.get()));
  const uint8_t* data = bitmap->bytes().data();
  for (uint32_t y = 0; y < bitmap->y; ++y) {
    const uint8_t* row = data + static_cast<size_t>(bitmap->stride) * y;
    uint8_t* dest = outBits + outStride * (topDown ? y : bitmap->y - 1 - y);
    for (size_t i = 0; i < fullBytes; ++i) {
      dest[i] = msbFirst ? reversed[row[i]] : row[i];
    }
    if (restBits != 0) {
      const uint8_t last = msbFirst ? reversed[row[fullBytes]] : row[fullBytes];
      dest[fullBytes] = static_cast<uint8_t>(last & ((1u << restBits) - 1));
    }
  }
  return out;
}

}  // namespace spicebox::renderer::images
