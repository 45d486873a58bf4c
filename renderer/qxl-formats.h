// Runs in: the broker (device model), the renderer (decoder, rasteriser) and spicebox-guestsim.
// Plain facts of spice/enums.h: bits per pixel of each bitmap and surface format. No input.
#pragma once

#include <spice/enums.h>

#include <cstdint>

namespace spicebox::qxlcmd {

// Bits per pixel of a SPICE_BITMAP_FMT_*, 0 when the value is no known format.
constexpr uint32_t bitmapFormatBits(uint32_t format) {
  switch (format) {
    case SPICE_BITMAP_FMT_1BIT_LE:
    case SPICE_BITMAP_FMT_1BIT_BE:
      return 1;
    case SPICE_BITMAP_FMT_4BIT_LE:
    case SPICE_BITMAP_FMT_4BIT_BE:
      return 4;
    case SPICE_BITMAP_FMT_8BIT:
    case SPICE_BITMAP_FMT_8BIT_A:
      return 8;
    case SPICE_BITMAP_FMT_16BIT:
      return 16;
    case SPICE_BITMAP_FMT_24BIT:
      return 24;
    case SPICE_BITMAP_FMT_32BIT:
    case SPICE_BITMAP_FMT_RGBA:
      return 32;
    default:
      return 0;
  }
}

// Bits per pixel of a SPICE_SURFACE_FMT_*, 0 when the value is no known format.
constexpr uint32_t surfaceFormatBits(uint32_t format) {
  switch (format) {
    case SPICE_SURFACE_FMT_1_A:
      return 1;
    case SPICE_SURFACE_FMT_8_A:
      return 8;
    case SPICE_SURFACE_FMT_16_555:
    case SPICE_SURFACE_FMT_16_565:
      return 16;
    case SPICE_SURFACE_FMT_32_xRGB:
    case SPICE_SURFACE_FMT_32_ARGB:
      return 32;
    default:
      return 0;
  }
}

}  // namespace spicebox::qxlcmd
