// Runs in: the renderer (the decoder's output, the rasteriser's input) and spicebox-guestsim (its
// scenarios, recordings and materialiser). Plain data, no behaviour: a QXL command held in local
// memory, every pointer of the guest's structures replaced by the value it points to. What a
// value may be is checked by whoever builds the tree from untrusted bytes (the renderer's decoder
// from guest memory, guestsim's RecordReader from a file).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <variant>
#include <vector>

namespace spicebox::qxlcmd {

// Field names follow spice-protocol's qxl_dev.h. Chunk sizes are kept so a recording can be
// reproduced byte for byte; a consumer that only draws ignores them.

struct Rect {
  int32_t top = 0, left = 0, bottom = 0, right = 0;
  bool operator==(const Rect&) const = default;
};
struct Point {
  int32_t x = 0, y = 0;
  bool operator==(const Point&) const = default;
};
struct Point16 {
  int16_t x = 0, y = 0;
  bool operator==(const Point16&) const = default;
};

struct Palette {
  uint64_t unique = 0;
  std::vector<uint32_t> entries;  // at most MAX_PALETTE_ENTRIES
  bool operator==(const Palette&) const = default;
};

struct Bitmap {
  uint8_t format = 0;     // SPICE_BITMAP_FMT_*
  uint8_t flags = 0;      // QXL_BITMAP_* (DIRECT selects the flat layout)
  uint32_t x = 0, y = 0;  // width, height in pixels
  uint32_t stride = 0;
  std::optional<Palette> palette;
  uint32_t chunkCount = 1;    // how many QXLDataChunks carried the data
  std::vector<uint8_t> data;  // y * stride bytes, checked (owned; empty when `view` is used)
  // The renderer's decoder, for data that lies in one chunk: the validated guest range, read in
  // place (pixel values only; see docs/architecture.md, "copy -> validate -> use"). Valid while
  // the guest mapping is, i.e. for the command being drawn. Builders of owned trees leave it empty.
  std::span<const uint8_t> view;
  // Sizes of the QXLDataChunks the data arrived in, when more than one;
  // empty means one chunk. Kept so a writer can reproduce the file.
  std::vector<uint32_t> chunkSizes;
  // The pixel bytes, wherever they are: `view` when set, else `data`.
  std::span<const uint8_t> bytes() const {
    return view.data() != nullptr ? view : std::span<const uint8_t>(data);
  }
  // Equal content: bytes compared, not where they are held.
  bool operator==(const Bitmap& o) const {
    const auto a = bytes(), b = o.bytes();
    return format == o.format && flags == o.flags && x == o.x && y == o.y && stride == o.stride &&
           palette == o.palette && chunkCount == o.chunkCount && chunkSizes == o.chunkSizes &&
           std::equal(a.begin(), a.end(), b.begin(), b.end());
  }
};
struct SurfaceImage {
  uint32_t surfaceId = 0;
  bool operator==(const SurfaceImage&) const = default;
};
struct QuicImage {
  std::vector<uint8_t> data;  // quic.data_size bytes, checked
  // Sizes of the QXLDataChunks the data arrived in, when more than one;
  // empty means one chunk. Kept so a writer can reproduce the file.
  std::vector<uint32_t> chunkSizes;
  bool operator==(const QuicImage&) const = default;
};

struct Image {
  uint64_t id = 0;
  uint8_t type = 0;   // SPICE_IMAGE_TYPE_*; selects payload
  uint8_t flags = 0;  // QXL_IMAGE_*
  uint32_t width = 0, height = 0;
  std::variant<Bitmap, SurfaceImage, QuicImage> payload;
  bool operator==(const Image&) const = default;
};

struct Brush {
  uint32_t type = 0;             // SPICE_BRUSH_TYPE_*
  uint32_t color = 0;            // SOLID
  std::optional<Image> pattern;  // PATTERN (may be absent: "image 0")
  Point patternPos;              // PATTERN
  bool operator==(const Brush&) const = default;
};

struct QMask {
  uint8_t flags = 0;
  Point pos;
  std::optional<Image> bitmap;
  bool operator==(const QMask&) const = default;
};

struct Clip {
  uint32_t type = 0;        // SPICE_CLIP_TYPE_*
  std::vector<Rect> rects;  // RECTS only
  // Sizes of the QXLDataChunks the data arrived in, when more than one;
  // empty means one chunk. Kept so a writer can reproduce the file.
  std::vector<uint32_t> chunkSizes;
  bool operator==(const Clip&) const = default;
};

// Payloads, one per QXL_DRAW_* value. The variant index equals the type.
struct DrawNop {
  bool operator==(const DrawNop&) const = default;
};
struct Fill {
  Brush brush;
  uint16_t ropDescriptor = 0;
  QMask mask;
  bool operator==(const Fill&) const = default;
};
struct Opaque {
  std::optional<Image> srcBitmap;
  Rect srcArea;
  Brush brush;
  uint16_t ropDescriptor = 0;
  uint8_t scaleMode = 0;
  QMask mask;
  bool operator==(const Opaque&) const = default;
};
struct Copy {
  std::optional<Image> srcBitmap;
  Rect srcArea;
  uint16_t ropDescriptor = 0;
  uint8_t scaleMode = 0;
  QMask mask;
  bool operator==(const Copy&) const = default;
};
struct CopyBits {
  Point srcPos;
  bool operator==(const CopyBits&) const = default;
};
struct Blend {
  std::optional<Image> srcBitmap;
  Rect srcArea;
  uint16_t ropDescriptor = 0;
  uint8_t scaleMode = 0;
  QMask mask;
  bool operator==(const Blend&) const = default;
};
struct Blackness {
  QMask mask;
  bool operator==(const Blackness&) const = default;
};
struct Whiteness {
  QMask mask;
  bool operator==(const Whiteness&) const = default;
};
struct Invers {
  QMask mask;
  bool operator==(const Invers&) const = default;
};
struct Rop3 {
  std::optional<Image> srcBitmap;
  Rect srcArea;
  Brush brush;
  uint8_t rop3 = 0;
  uint8_t scaleMode = 0;
  QMask mask;
  bool operator==(const Rop3&) const = default;
};
struct PathSegment {
  uint32_t flags = 0;         // SPICE_PATH_*
  std::vector<Point> points;  // 28.4 fixed point, as QXLPointFix
  bool operator==(const PathSegment&) const = default;
};
struct Stroke {
  std::vector<PathSegment> path;
  // Chunk sizes of the serialised path, as for Bitmap::chunkSizes; a
  // chunk boundary may fall inside a segment.
  std::vector<uint32_t> pathChunkSizes;
  uint8_t attrFlags = 0;       // SPICE_LINE_FLAGS_*
  std::vector<int32_t> style;  // STYLED only: style_nseg 28.4 values
  Brush brush;
  uint16_t foreMode = 0, backMode = 0;
  bool operator==(const Stroke&) const = default;
};
struct QxlString {
  uint16_t length = 0;  // glyph count
  uint16_t flags = 0;   // SPICE_STRING_FLAGS_*
  // Raster glyphs exactly as recorded (data_size bytes, checked).
  // TODO(cleanup): split into glyphs once a consumer needs them.
  std::vector<uint8_t> data;
  // Sizes of the QXLDataChunks the data arrived in, when more than one;
  // empty means one chunk. Kept so a writer can reproduce the file.
  std::vector<uint32_t> chunkSizes;
  bool operator==(const QxlString&) const = default;
};
struct Text {
  QxlString str;
  Rect backArea;
  Brush foreBrush, backBrush;
  uint16_t foreMode = 0, backMode = 0;
  bool operator==(const Text&) const = default;
};
struct Transparent {
  std::optional<Image> srcBitmap;
  Rect srcArea;
  uint32_t srcColor = 0, trueColor = 0;
  bool operator==(const Transparent&) const = default;
};
struct AlphaBlend {
  uint16_t alphaFlags = 0;  // not recorded for compat drawables
  uint8_t alpha = 0;
  std::optional<Image> srcBitmap;
  Rect srcArea;
  bool operator==(const AlphaBlend&) const = default;
};
// SpiceTransform: 3x2 matrix of 16.16 fixed point, recorded as 24 raw bytes.
using Transform = std::array<uint32_t, 6>;
struct Composite {
  uint32_t flags = 0;
  std::optional<Image> src;
  std::optional<Transform> srcTransform;
  std::optional<Image> mask;
  std::optional<Transform> maskTransform;
  Point16 srcOrigin, maskOrigin;
  bool operator==(const Composite&) const = default;
};

using DrawPayload = std::variant<DrawNop, Fill, Opaque, Copy, CopyBits, Blend, Blackness, Whiteness,
                                 Invers, Rop3, Stroke, Text, Transparent, AlphaBlend, Composite>;

struct Drawable {
  // True when the guest used QXLCompatDrawable (old drivers): then
  // bitmapOffset/bitmapArea are set and the surface fields keep defaults.
  bool compat = false;
  Rect bbox;
  Clip clip;
  uint8_t effect = 0;
  uint32_t mmTime = 0;
  uint8_t selfBitmap = 0;
  Rect selfBitmapArea;
  uint32_t surfaceId = 0;
  std::array<int32_t, 3> surfacesDest{-1, -1, -1};
  std::array<Rect, 3> surfacesRects{};
  uint8_t bitmapOffset = 0;  // compat only
  Rect bitmapArea;           // compat only
  uint8_t type = 0;          // QXL_DRAW_*; equals payload.index()
  DrawPayload payload;
  bool operator==(const Drawable&) const = default;
};

struct UpdateCmd {
  Rect area;
  uint32_t updateId = 0;
  uint32_t surfaceId = 0;
  bool operator==(const UpdateCmd&) const = default;
};

struct MessageCmd {
  std::vector<uint8_t> text;  // guest debug string, no terminator
  bool operator==(const MessageCmd&) const = default;
};

struct SurfaceCmd {
  uint32_t surfaceId = 0;
  uint8_t type = 0;    // QXL_SURFACE_CMD_CREATE / _DESTROY
  uint32_t flags = 0;  // QXL_SURF_FLAG_KEEP_DATA means data is present
  // CREATE only:
  uint32_t format = 0;  // SPICE_SURFACE_FMT_*
  uint32_t width = 0, height = 0;
  int32_t stride = 0;
  std::vector<uint8_t> data;  // height * |stride| bytes when KEEP_DATA
  bool operator==(const SurfaceCmd&) const = default;
};

struct CursorShape {
  uint64_t unique = 0;
  uint8_t type = 0;  // SPICE_CURSOR_TYPE_*
  uint16_t width = 0, height = 0;
  uint16_t hotSpotX = 0, hotSpotY = 0;
  std::vector<uint8_t> data;  // data_size bytes, checked
  // Sizes of the QXLDataChunks the data arrived in, when more than one;
  // empty means one chunk. Kept so a writer can reproduce the file.
  std::vector<uint32_t> chunkSizes;
  bool operator==(const CursorShape&) const = default;
};

struct CursorCmd {
  uint8_t type = 0;                              // QXL_CURSOR_SET / MOVE / HIDE / TRAIL
  Point16 position;                              // SET, MOVE
  uint8_t visible = 0;                           // SET
  std::optional<CursorShape> shape;              // SET
  uint16_t trailLength = 0, trailFrequency = 0;  // TRAIL
  bool operator==(const CursorCmd&) const = default;
};

enum class CommandType : uint8_t { Draw = 1, Update = 2, Cursor = 3, Message = 4, Surface = 5 };

struct Command {
  CommandType type = CommandType::Draw;
  std::variant<Drawable, UpdateCmd, CursorCmd, MessageCmd, SurfaceCmd> body;
  bool operator==(const Command&) const = default;
};

}  // namespace spicebox::qxlcmd
