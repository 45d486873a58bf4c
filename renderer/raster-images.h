// Runs in: renderer (sandboxed). Input: qxlcmd::Image values decoded from guest memory (bitmap
// sizes, strides and palettes checked by the decoder; re-checked here before any read), and the
// rasteriser's own surfaces for SURFACE images.
//
// Image sources -> pixman images, following spice-common's bitmap conversion rules: indexed
// formats take their palette entries as raw pixels (converted for 16 bpp canvases), 24 bpp gets
// a zero top byte, 32BIT keeps the guest's top byte (forced to 0xff by HIGH_BITS_SET), RGBA
// keeps alpha, bottom-up bitmaps (no TOP_DOWN flag) are flipped.
#pragma once

#include <functional>
#include <variant>

#include "renderer/qxl-command.h"
#include "renderer/raster.h"

namespace spicebox::renderer::images {

// Looks up a live surface's image by id (null when the id is not live).
using SurfaceLookup = std::function<pixman_image_t*(uint32_t id)>;

// A bitmap in its "native" pixman format. Indexed formats take the canvas' 32 bpp format, as
// the reference's palettes are in the canvas format: a8r8g8b8 on an ARGB canvas (a palette
// entry's top byte is then alpha), else x8r8g8b8.
std::variant<PixmanImage, RasterError> bitmapToNative(
    const qxlcmd::Image& image, const qxlcmd::Bitmap& bitmap,
    pixman_format_code_t canvasFormat = PIXMAN_x8r8g8b8);

// The image as the reference's canvas_get_image gives it: for `wantOriginal` the native format,
// else converted to the canvas format (keeping a8r8g8b8 for sources with alpha on an xRGB
// canvas, x8r8g8b8 for sources without alpha on an ARGB canvas). SURFACE images return a new
// reference to the surface's image (converted only when its depth differs from the canvas').
std::variant<PixmanImage, RasterError> imageForCanvas(const qxlcmd::Image& image,
                                                      pixman_format_code_t canvasFormat,
                                                      bool wantOriginal,
                                                      const SurfaceLookup& surfaces);

// A copy of `image` converted to `format` (pixman SRC composite); null on allocation failure.
PixmanImage convertImage(pixman_image_t* image, pixman_format_code_t format);

// A 1 bpp mask as a pixman a1 image (SPICE_BITMAP_FMT_1BIT_LE/BE bitmaps, or an a1 surface).
std::variant<PixmanImage, RasterError> maskImage(const qxlcmd::Image& image,
                                                 const SurfaceLookup& surfaces);

}  // namespace spicebox::renderer::images
