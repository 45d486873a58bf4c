// Runs in: renderer (sandboxed). Input: decoded guest images (hostile values, sizes re-checked
// here before any read) and our own surfaces.
#include "renderer/raster-images.h"
#include "renderer/qxl-formats.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <cstring>

#include "renderer/raster-pixels.h"

namespace spicebox::renderer::images {
namespace {

PixmanImage createImage(pixman_format_code_t format, uint32_t width, uint32_t height) {
  return PixmanImage(pixman_image_create_bits(format, static_cast<int>(width),
                                              static_cast<int>(height), nullptr, 0));
}

// The palette entry, or 0 for an index past the palette (the reference reads uninitialised
// memory there; the decoder normally rejects such bitmaps).
uint32_t paletteEntry(const qxlcmd::Bitmap& bitmap, unsigned index) {
  const auto& entries = bitmap.palette->entries;
  return index < entries.size() ? entries[index] : 0;
}

// Bitmap pixel (x) of a row as the native pixel value.
uint32_t bitmapPixel(const qxlcmd::Bitmap& bitmap, const uint8_t* row, uint32_t x) {
  switch (bitmap.format) {
    case SPICE_BITMAP_FMT_1BIT_BE:
      return paletteEntry(bitmap, (row[x / 8] >> (7 - x % 8)) & 1u);
    case SPICE_BITMAP_FMT_1BIT_LE:
      return paletteEntry(bitmap, (row[x / 8] >> (x % 8)) & 1u);
    case SPICE_BITMAP_FMT_4BIT_BE:
      return paletteEntry(bitmap, (x % 2 ? row[x / 2] : row[x / 2] >> 4) & 0x0fu);
    case SPICE_BITMAP_FMT_4BIT_LE:
      return paletteEntry(bitmap, (x % 2 ? row[x / 2] >> 4 : row[x / 2]) & 0x0fu);
    case SPICE_BITMAP_FMT_8BIT:
      return paletteEntry(bitmap, row[x]);
    case SPICE_BITMAP_FMT_8BIT_A:
      return row[x];
    case SPICE_BITMAP_FMT_16BIT:
      return static_cast<uint32_t>(row[2 * x]) | static_cast<uint32_t>(row[2 * x + 1]) << 8;
    case SPICE_BITMAP_FMT_24BIT:  // b, g, r bytes; top byte 0
      return static_cast<uint32_t>(row[3 * x]) | static_cast<uint32_t>(row[3 * x + 1]) << 8 |
             static_cast<uint32_t>(row[3 * x + 2]) << 16;
    default: {  // 32BIT, RGBA: little-endian words kept whole
      uint32_t v;
      std::memcpy(&v, row + 4 * x, 4);
      return v;
    }
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
  if (bitmap.stride < rowBytes ||
      static_cast<uint64_t>(bitmap.stride) * bitmap.y > bitmap.data.size()) {
    return RasterError::BadImage;
  }
  const bool indexed = bits <= 8 && bitmap.format != SPICE_BITMAP_FMT_8BIT_A;
  if (indexed && !bitmap.palette) {
    return RasterError::BadImage;
  }
  const pixman_format_code_t format =
      indexed && canvasFormat == PIXMAN_a8r8g8b8 ? PIXMAN_a8r8g8b8 : nativeFormat(bitmap.format);
  PixmanImage out = createImage(format, bitmap.x, bitmap.y);
  if (!out) {
    return RasterError::BadImage;
  }
  const bool topDown = bitmap.flags & SPICE_BITMAP_FLAGS_TOP_DOWN;
  for (uint32_t y = 0; y < bitmap.y; ++y) {
    const uint8_t* row = bitmap.data.data() + static_cast<size_t>(bitmap.stride) * y;
    const int destY = static_cast<int>(topDown ? y : bitmap.y - 1 - y);
    for (uint32_t x = 0; x < bitmap.x; ++x) {
      pixels::putPixel(out.get(), static_cast<int>(x), destY, bitmapPixel(bitmap, row, x));
    }
  }
  if ((image.flags & SPICE_IMAGE_FLAGS_HIGH_BITS_SET) &&
      pixman_image_get_format(out.get()) == PIXMAN_x8r8g8b8) {
    pixels::Region all(0, 0, static_cast<int32_t>(bitmap.x), static_cast<int32_t>(bitmap.y));
    pixels::fillRegion(out.get(), all, 0xff000000u, pixels::Rop::Or);
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
      static_cast<uint64_t>(bitmap->stride) * bitmap->y > bitmap->data.size()) {
    return RasterError::BadImage;
  }
  PixmanImage out = createImage(PIXMAN_a1, bitmap->x, bitmap->y);
  if (!out) {
    return RasterError::BadImage;
  }
  const bool topDown = bitmap->flags & SPICE_BITMAP_FLAGS_TOP_DOWN;
  const bool msbFirst = bitmap->format == SPICE_BITMAP_FMT_1BIT_BE;
  for (uint32_t y = 0; y < bitmap->y; ++y) {
    const uint8_t* row = bitmap->data.data() + static_cast<size_t>(bitmap->stride) * y;
    const int destY = static_cast<int>(topDown ? y : bitmap->y - 1 - y);
    for (uint32_t x = 0; x < bitmap->x; ++x) {
      const unsigned bit = msbFirst ? 7 - x % 8 : x % 8;
      pixels::putPixel(out.get(), static_cast<int>(x), destY, (row[x / 8] >> bit) & 1u);
    }
  }
  return out;
}

}  // namespace spicebox::renderer::images
