// Runs in: netproxy (sandboxed). Input: pixels of a display segment (the renderer's output, read
// through a read-only mapping: values only, any value is fine) and rectangles the caller clipped
// to the segment.
//
// SPICE image payloads for DRAW_COPY: the raw 32 bpp bitmap every client decodes, LZ4 (clients
// with SPICE_DISPLAY_CAP_LZ4_COMPRESSION, liblz4 does the compression) and SPICE's LZ_RGB (every
// client, spice-html5 included; the encoder is written here from the format). The byte layouts
// are described at the top of image-encode.cpp (LZ4) and lz-rgb.cpp (LZ_RGB, byte by byte);
// client/image-decode.h decodes both. Pure functions, no I/O, no logging except a liblz4 failure.
// Each encoder copies the rectangle before reading it twice, so a segment that changes meanwhile
// yields a torn picture at worst, never an inconsistent stream.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "netproxy/server.h"

namespace spicebox::netproxy {

enum class ImageEncoding {
  Bitmap,  // SPICE_IMAGE_TYPE_BITMAP, SPICE_BITMAP_FMT_32BIT, top-down, stride width * 4
  Lz4,     // SPICE_IMAGE_TYPE_LZ4: `data` is SpiceLZ4Data's data (its data_size is data.size())
  LzRgb,   // SPICE_IMAGE_TYPE_LZ_RGB: `data` is SpiceLZRGBData's data (LZ header + stream)
};

struct EncodedImage {
  ImageEncoding encoding = ImageEncoding::Bitmap;
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> data;  // Bitmap: height rows of width * 4 bytes, top row first
};

// A width x height rectangle of 32 bpp x8r8g8b8 pixels whose top-left pixel is at `pixels`, rows
// `stride` bytes apart (the caller guarantees height rows of width * 4 bytes are readable).
struct PixelRect {
  const uint8_t* pixels = nullptr;
  uint32_t stride = 0;
  uint32_t width = 0, height = 0;
};

// Raw rows, top first, x bytes as they are. Each encoder returns empty data for an empty
// rectangle (width or height 0), which no SPICE client decodes: do not send one.
EncodedImage encodeBitmap(const PixelRect& rect);
// LZ4 (liblz4) in spice-gtk's SpiceLZ4Data layout: top_down 1, SPICE_BITMAP_FMT_32BIT, blocks of
// 256 KiB of rows; the x bytes are kept. Empty data when liblz4 fails. Not necessarily smaller
// than the raw rows (noise is not): encodeImage checks.
EncodedImage encodeLz4(const PixelRect& rect);
// LZ_RGB (LZ_IMAGE_TYPE_RGB32, top-down) in spice-gtk's SpiceLZRGBData layout. The decoder
// writes 0 into every x byte. At most lzrgb::maxEncodedBytes(width * height) bytes, about 3.03
// bytes a pixel plus a 28-byte header: smaller than the raw rows from 32 pixels up.
EncodedImage encodeLzRgb(const PixelRect& rect);

// What `mode` picks for a client (clientLz4: it announced SPICE_DISPLAY_CAP_LZ4_COMPRESSION):
// Off: Bitmap. Lz: LzRgb. Lz4: Lz4 for an LZ4 client, else LzRgb. AutoLz: the smallest of the
// candidates the client decodes (Lz4 when it can, LzRgb), Bitmap when neither is smaller than the
// raw rows. A compressed result that is not smaller than the raw rows is never sent. On a tie
// between the two, Lz4. An empty rectangle gives an empty Bitmap. Cost at 1920x1080
// (RelWithDebInfo, desktop-like picture): about 6 ms for LZ_RGB, 15 ms for LZ4; AutoLz for an
// LZ4 client runs both (LZ_RGB stops early once it cannot beat LZ4).
EncodedImage encodeImage(const PixelRect& rect, ImageCompression mode, bool clientLz4);

}  // namespace spicebox::netproxy
