// Runs in: spicebox-guestsim and its tests (unsandboxed). Input: our own trees and layouts.
// Each corruption follows the renderer's unit test of the same name (renderer/qxl-decode-test.cpp)
// so that the decoder's verdict is the one that test pins down; hostile-commands-test.cpp checks
// every one against the real decoder.
#include "tools/guestsim/hostile-commands.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <cstring>

#include "base/assert.h"
#include "renderer/qxl-decode.h"
#include "renderer/qxl-formats.h"

namespace spicebox::guestsim {

namespace {

// ---------------------------------------------------------------- trees

constexpr Rect BBOX{0, 0, 16, 16};  // top, left, bottom, right: inside the scratch surface
// Surface ids the attacks name: the scratch surface's neighbour (refused creates), and ids no
// surface ever has.
constexpr uint32_t REFUSED_SURFACE = SCRATCH_SURFACE + 1;
constexpr uint32_t MISSING_SURFACE = 998;

Image bitmap(uint8_t format, uint32_t w, uint32_t h, std::vector<uint32_t> chunks = {}) {
  Image img;
  img.id = 0;  // never cached
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.width = w;
  img.height = h;
  Bitmap& bm = img.payload.emplace<Bitmap>();
  bm.format = format;
  bm.flags = QXL_BITMAP_TOP_DOWN;
  bm.x = w;
  bm.y = h;
  const uint32_t bits = qxlcmd::bitmapFormatBits(format);
  bm.stride = (w * (bits == 0 ? 32 : bits) + 7) / 8;
  if (format == SPICE_BITMAP_FMT_8BIT)
    bm.palette = Palette{7, std::vector<uint32_t>(256, 0x00c0ffee)};
  bm.data.assign(size_t{bm.stride} * h, 0x5a);
  bm.chunkSizes = std::move(chunks);
  bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
  return img;
}

Bitmap& bitmapOf(Command& cmd) {
  auto& copy = std::get<Copy>(std::get<Drawable>(cmd.body).payload);
  return std::get<Bitmap>(copy.srcBitmap->payload);
}

Command draw(DrawPayload payload, uint32_t surface = SCRATCH_SURFACE, Rect bbox = BBOX) {
  Drawable d;
  d.bbox = bbox;
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.effect = QXL_EFFECT_BLEND;
  d.surfaceId = surface;
  d.type = static_cast<uint8_t>(payload.index());
  d.payload = std::move(payload);
  return Command{CommandType::Draw, std::move(d)};
}

Command fill(uint32_t surface = SCRATCH_SURFACE, Rect bbox = BBOX) {
  Fill f;
  f.brush.type = SPICE_BRUSH_TYPE_SOLID;
  f.brush.color = 0x00ff00ff;
  f.ropDescriptor = SPICE_ROPD_OP_PUT;
  return draw(std::move(f), surface, bbox);
}

Command copyOf(Image img) {
  Copy c;
  c.srcArea = Rect{0, 0, static_cast<int32_t>(img.height), static_cast<int32_t>(img.width)};
  c.srcBitmap = std::move(img);
  c.ropDescriptor = SPICE_ROPD_OP_PUT;
  return draw(std::move(c));
}

Command text(uint16_t length, uint16_t flags) {
  QXLRasterGlyph glyph{};
  glyph.width = 8;
  glyph.height = 12;
  Text t;
  t.str.length = length;
  t.str.flags = flags;
  t.str.data.assign(sizeof glyph + 12, 0x3c);
  std::memcpy(t.str.data.data(), &glyph, sizeof glyph);
  t.backArea = BBOX;
  t.foreBrush.type = SPICE_BRUSH_TYPE_SOLID;
  t.backBrush.type = SPICE_BRUSH_TYPE_NONE;
  t.foreMode = SPICE_ROPD_OP_PUT;
  t.backMode = SPICE_ROPD_OP_PUT;
  return draw(std::move(t));
}

Command stroke() {
  Stroke s;
  s.path = {PathSegment{SPICE_PATH_BEGIN | SPICE_PATH_END, {{0, 0}, {16 * 16, 16 * 16}}}};
  s.brush.type = SPICE_BRUSH_TYPE_SOLID;
  s.foreMode = SPICE_ROPD_OP_PUT;
  s.backMode = SPICE_ROPD_OP_PUT;
  return draw(std::move(s));
}

Command cursor(uint8_t type, uint8_t shapeType = SPICE_CURSOR_TYPE_ALPHA, uint16_t w = 4,
               uint16_t h = 4, size_t bytes = 64) {
  CursorCmd c;
  c.type = type;
  if (type == QXL_CURSOR_SET) {
    c.visible = 1;
    CursorShape& sh = c.shape.emplace();
    sh.type = shapeType;
    sh.width = w;
    sh.height = h;
    sh.data.assign(bytes, 0x11);
  }
  return Command{CommandType::Cursor, std::move(c)};
}

Command surface(uint32_t id, uint8_t type, uint32_t w = 16, uint32_t h = 16, int32_t stride = 64) {
  SurfaceCmd s;
  s.surfaceId = id;
  s.type = type;
  if (type == QXL_SURFACE_CMD_CREATE) {
    s.format = SPICE_SURFACE_FMT_32_xRGB;
    s.width = w;
    s.height = h;
    s.stride = stride;
  }
  return Command{CommandType::Surface, std::move(s)};
}

// ---------------------------------------------------------------- guest memory

template <typename T>
T peek(const GuestPoke& g, uint64_t addr) {
  T value;
  const std::byte* at = g.host(addr, sizeof value);
  SB_ASSERT(at, "{:#x} is not in a block this attack laid out", addr);
  std::memcpy(&value, at, sizeof value);
  return value;
}

template <typename T>
void poke(const GuestPoke& g, uint64_t addr, const T& value) {
  std::byte* at = g.host(addr, sizeof value);
  SB_ASSERT(at, "{:#x} is not in a block this attack laid out", addr);
  std::memcpy(at, &value, sizeof value);
}

// The last `bytes` bytes of the window: the slot ends right after them.
struct WindowEnd {
  std::byte* host;
  uint64_t addr;
};
WindowEnd windowEnd(const GuestPoke& g, size_t bytes) {
  auto w = g.window();
  SB_ASSERT(w.size >= ATTACK_WINDOW_BYTES && bytes <= w.size, "window of {} bytes", w.size);
  return {w.host + (w.size - bytes), w.addr + (w.size - bytes)};
}

// Moves the command's first `bytes` (its QXLReleaseInfo at least) to the last `slotBytes` of
// the window, so that what follows them runs past the slot's end; the device finds the release
// id there. Returns the new place of the release info.
std::byte* moveToWindowEnd(Materialised& m, const GuestPoke& g, size_t bytes, size_t slotBytes) {
  const WindowEnd end = windowEnd(g, slotBytes);
  std::memcpy(end.host, g.host(m.commandAddr, bytes), bytes);
  m.commandAddr = end.addr;
  return end.host;
}

uint64_t imageOf(const GuestPoke& g, const Materialised& m) {
  return peek<QXLDrawable>(g, m.commandAddr).u.copy.src_bitmap;
}

uint64_t firstChunkOf(const GuestPoke& g, const Materialised& m) {
  return peek<QXLImage>(g, imageOf(g, m)).bitmap.data;
}

template <typename F>
void patchImage(const GuestPoke& g, const Materialised& m, F&& change) {
  const uint64_t at = imageOf(g, m);
  auto img = peek<QXLImage>(g, at);
  change(img);
  poke(g, at, img);
}

template <typename F>
void patchDrawable(const GuestPoke& g, const Materialised& m, F&& change) {
  auto d = peek<QXLDrawable>(g, m.commandAddr);
  change(d);
  poke(g, m.commandAddr, d);
}

}  // namespace

// ---------------------------------------------------------------- names

std::string_view hostileCommandName(HostileCommand attack) {
  switch (attack) {
#define SB_NAME(kind, name)  \
  case HostileCommand::kind: \
    return name;
    SB_NAME(UnknownCommandType, "unknown-command-type")
    SB_NAME(CursorCommandOnTheDisplayRing, "cursor-command-on-the-display-ring")
    SB_NAME(CommandCrossingTheEndOfASlot, "command-crossing-the-end-of-a-slot")
    SB_NAME(CommandInASlotOutOfRange, "command-in-a-slot-out-of-range")
    SB_NAME(CommandInASlotNeverAdded, "command-in-a-slot-never-added")
    SB_NAME(CommandWithAStaleGeneration, "command-with-a-stale-generation")
    SB_NAME(CircularChunks, "circular-chunks")
    SB_NAME(ChunkSizeOverflow, "chunk-size-overflow")
    SB_NAME(ChunkChainLongerThanMaxDataChunks, "chunk-chain-longer-than-max-data-chunks")
    SB_NAME(BitmapChunksShorterThanYTimesStride, "bitmap-chunks-shorter-than-y-times-stride")
    SB_NAME(BitmapDataPastTheEndOfASlot, "bitmap-data-past-the-end-of-a-slot")
    SB_NAME(StrideTimesHeightOverflow, "stride-times-height-overflow")
    SB_NAME(StrideTooSmall, "stride-too-small")
    SB_NAME(BitmapTooLarge, "bitmap-too-large")
    SB_NAME(HugeSurfaceSize, "huge-surface-size")
    SB_NAME(ZeroSurfaceSize, "zero-surface-size")
    SB_NAME(SurfaceIdOutOfRange, "surface-id-out-of-range")
    SB_NAME(PaletteCountLargerThanItsData, "palette-count-larger-than-its-data")
    SB_NAME(PaletteMissing, "palette-missing")
    SB_NAME(PaletteTooSmall, "palette-too-small")
    SB_NAME(PaletteTooLarge, "palette-too-large")
    SB_NAME(GlyphCountPastTheData, "glyph-count-past-the-data")
    SB_NAME(UnknownGlyphFormat, "unknown-glyph-format")
    SB_NAME(StringTooLong, "string-too-long")
    SB_NAME(PathSegmentCountPastTheData, "path-segment-count-past-the-data")
    SB_NAME(PathTooLong, "path-too-long")
    SB_NAME(ClipRectCountPastTheData, "clip-rect-count-past-the-data")
    SB_NAME(TooManyClipRects, "too-many-clip-rects")
    SB_NAME(CursorDataShorterThanItsShape, "cursor-data-shorter-than-its-shape")
    SB_NAME(CursorTooLarge, "cursor-too-large")
    SB_NAME(MessageWithoutANul, "message-without-a-nul")
    SB_NAME(UnknownDrawType, "unknown-draw-type")
    SB_NAME(UnknownImageType, "unknown-image-type")
    SB_NAME(UnknownBitmapFormat, "unknown-bitmap-format")
    SB_NAME(UnknownClipType, "unknown-clip-type")
    SB_NAME(UnknownBrushType, "unknown-brush-type")
    SB_NAME(UnknownCursorCommand, "unknown-cursor-command")
    SB_NAME(UnknownCursorShapeType, "unknown-cursor-shape-type")
    SB_NAME(UnknownSurfaceCommand, "unknown-surface-command")
    SB_NAME(BadRopDescriptor, "bad-rop-descriptor")
    SB_NAME(BadScaleMode, "bad-scale-mode")
    SB_NAME(UnorderedBbox, "unordered-bbox")
    SB_NAME(QuicImage, "quic-image")
    SB_NAME(DrawOnASurfaceThatDoesNotExist, "draw-on-a-surface-that-does-not-exist")
    SB_NAME(CopyFromASurfaceThatDoesNotExist, "copy-from-a-surface-that-does-not-exist")
    SB_NAME(SurfaceCreatedTwice, "surface-created-twice")
    SB_NAME(DestroyOfAnUnknownSurface, "destroy-of-an-unknown-surface")
    SB_NAME(HugeBboxClippedToTheSurface, "huge-bbox-clipped-to-the-surface")
    SB_NAME(SurfaceCommandOnThePrimary, "surface-command-on-the-primary")
#undef SB_NAME
  }
  return "unknown-hostile-command";
}

std::string_view expectedDecodeError(HostileCommand attack) {
  using H = HostileCommand;
  switch (attack) {
    case H::UnknownCommandType:
      return "UnknownCommandType";
    case H::CursorCommandOnTheDisplayRing:
      return "WrongRing";
    case H::CommandCrossingTheEndOfASlot:
    case H::BitmapDataPastTheEndOfASlot:
      return "AddressOutsideSlot";
    case H::CommandInASlotOutOfRange:
      return "SlotOutOfRange";
    case H::CommandInASlotNeverAdded:
      return "SlotNotActive";
    case H::CommandWithAStaleGeneration:
      return "GenerationMismatch";
    case H::CircularChunks:
      return "ChunkLoop";
    case H::ChunkSizeOverflow:
    case H::ChunkChainLongerThanMaxDataChunks:
      return "ChunkTooLong";
    case H::BitmapChunksShorterThanYTimesStride:
      return "BitmapDataShort";
    case H::StrideTimesHeightOverflow:
      return "SizeOverflow";
    case H::StrideTooSmall:
      return "StrideTooSmall";
    case H::BitmapTooLarge:
      return "BitmapTooLarge";
    case H::HugeSurfaceSize:
      return "SurfaceTooLarge";
    case H::ZeroSurfaceSize:
      return "SurfaceSizeZero";
    case H::SurfaceIdOutOfRange:
      return "SurfaceIdOutOfRange";
    case H::PaletteCountLargerThanItsData:
      return "PaletteShort";
    case H::PaletteMissing:
      return "PaletteMissing";
    case H::PaletteTooSmall:
      return "PaletteTooSmall";
    case H::PaletteTooLarge:
      return "PaletteTooLarge";
    case H::GlyphCountPastTheData:
      return "GlyphsPastData";
    case H::UnknownGlyphFormat:
      return "UnknownGlyphFormat";
    case H::StringTooLong:
      return "StringTooLong";
    case H::PathSegmentCountPastTheData:
      return "PathPastData";
    case H::PathTooLong:
      return "PathTooLong";
    case H::ClipRectCountPastTheData:
      return "ClipRectsPastData";
    case H::TooManyClipRects:
      return "TooManyClipRects";
    case H::CursorDataShorterThanItsShape:
      return "CursorDataShort";
    case H::CursorTooLarge:
      return "CursorTooLarge";
    case H::MessageWithoutANul:
      return "MessageUnterminated";
    case H::UnknownDrawType:
      return "UnknownDrawType";
    case H::UnknownImageType:
      return "UnknownImageType";
    case H::UnknownBitmapFormat:
      return "UnknownFormat";
    case H::UnknownClipType:
      return "UnknownClipType";
    case H::UnknownBrushType:
      return "UnknownBrushType";
    case H::UnknownCursorCommand:
      return "UnknownCursorType";
    case H::UnknownCursorShapeType:
      return "UnknownCursorShapeType";
    case H::UnknownSurfaceCommand:
      return "UnknownSurfaceCommand";
    case H::BadRopDescriptor:
      return "BadRopDescriptor";
    case H::BadScaleMode:
      return "BadFlags";
    case H::UnorderedBbox:
      return "RectUnordered";
    case H::QuicImage:
      return "Unsupported";
    case H::DrawOnASurfaceThatDoesNotExist:
    case H::CopyFromASurfaceThatDoesNotExist:
    case H::SurfaceCreatedTwice:
    case H::DestroyOfAnUnknownSurface:
    case H::HugeBboxClippedToTheSurface:
    case H::SurfaceCommandOnThePrimary:
      return "";
  }
  return "";
}

bool releasable(HostileCommand attack) {
  return attack != HostileCommand::CommandInASlotOutOfRange &&
         attack != HostileCommand::CommandInASlotNeverAdded &&
         attack != HostileCommand::CommandWithAStaleGeneration;
}

// ---------------------------------------------------------------- bases

Command attackBase(HostileCommand attack) {
  using H = HostileCommand;
  switch (attack) {
    case H::UnknownCommandType:
    case H::CommandCrossingTheEndOfASlot:
    case H::CommandInASlotOutOfRange:
    case H::CommandInASlotNeverAdded:
    case H::CommandWithAStaleGeneration:
    case H::UnknownDrawType:
      return fill();
    case H::CursorCommandOnTheDisplayRing:
      return cursor(QXL_CURSOR_MOVE);
    case H::CircularChunks:
    case H::ChunkSizeOverflow:
      return copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2, {8, 8}));
    case H::ChunkChainLongerThanMaxDataChunks:
      return copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 1, 1));
    case H::BitmapChunksShorterThanYTimesStride:
    case H::BitmapDataPastTheEndOfASlot:
      return copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
    case H::StrideTimesHeightOverflow: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      bitmapOf(c).stride = 0x80000000;  // x 2 rows = 2^32: 0 in a 32-bit size
      return c;
    }
    case H::StrideTooSmall: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 1));
      bitmapOf(c).stride = 7;  // 2 pixels of 32 bpp need 8
      return c;
    }
    case H::BitmapTooLarge: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      bitmapOf(c).y = renderer::MAX_BITMAP_DIMENSION + 1;  // 16 bytes of data claim 8193 rows
      return c;
    }
    case H::HugeSurfaceSize:
      return surface(REFUSED_SURFACE, QXL_SURFACE_CMD_CREATE, 100000, 16, 64);
    case H::ZeroSurfaceSize:
      return surface(REFUSED_SURFACE, QXL_SURFACE_CMD_CREATE, 0, 16, 64);
    case H::SurfaceIdOutOfRange:
      return fill(renderer::MAX_SURFACES);
    case H::PaletteCountLargerThanItsData:
      return copyOf(bitmap(SPICE_BITMAP_FMT_8BIT, 4, 4));
    case H::PaletteMissing: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_8BIT, 4, 4));
      bitmapOf(c).palette.reset();
      return c;
    }
    case H::PaletteTooSmall: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_8BIT, 4, 4));
      bitmapOf(c).palette->entries.resize(25);  // an 8 bpp bitmap can index 256
      return c;
    }
    case H::PaletteTooLarge: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_8BIT, 4, 4));
      bitmapOf(c).palette->entries.resize(renderer::MAX_PALETTE_ENTRIES * 4);
      return c;
    }
    case H::GlyphCountPastTheData:
      return text(2, SPICE_STRING_FLAGS_RASTER_A1);  // one glyph's bytes
    case H::UnknownGlyphFormat:
      return text(1, SPICE_STRING_FLAGS_RASTER_A1 | SPICE_STRING_FLAGS_RASTER_A8);
    case H::StringTooLong:
      return text(1, SPICE_STRING_FLAGS_RASTER_A1);
    case H::PathSegmentCountPastTheData:
    case H::PathTooLong:
      return stroke();
    case H::ClipRectCountPastTheData:
    case H::TooManyClipRects: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      auto& d = std::get<Drawable>(c.body);
      d.clip.type = SPICE_CLIP_TYPE_RECTS;
      d.clip.rects = {Rect{0, 0, 4, 4}, Rect{4, 4, 8, 8}};
      return c;
    }
    case H::CursorDataShorterThanItsShape:
      return cursor(QXL_CURSOR_SET, SPICE_CURSOR_TYPE_ALPHA, 32, 32, 100);
    case H::CursorTooLarge:
      return cursor(QXL_CURSOR_SET, SPICE_CURSOR_TYPE_ALPHA,
                    static_cast<uint16_t>(renderer::MAX_CURSOR_DIMENSION + 1), 4, 64);
    case H::MessageWithoutANul:
      return Command{CommandType::Message, MessageCmd{{'x'}}};
    case H::UnknownImageType: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      std::get<Copy>(std::get<Drawable>(c.body).payload).srcBitmap->type = 255;
      return c;
    }
    case H::UnknownBitmapFormat:
      return copyOf(bitmap(SPICE_BITMAP_FMT_ENUM_END, 2, 2));
    case H::UnknownClipType: {
      Command c = fill();
      std::get<Drawable>(c.body).clip.type = SPICE_CLIP_TYPE_RECTS + 1;
      return c;
    }
    case H::UnknownBrushType: {
      Command c = fill();
      std::get<Fill>(std::get<Drawable>(c.body).payload).brush.type = SPICE_BRUSH_TYPE_PATTERN + 1;
      return c;
    }
    case H::UnknownCursorCommand:
      return cursor(QXL_CURSOR_TRAIL + 1);
    case H::UnknownCursorShapeType:
      return cursor(QXL_CURSOR_SET, 7);
    case H::UnknownSurfaceCommand:
      return surface(REFUSED_SURFACE, QXL_SURFACE_CMD_DESTROY + 1);
    case H::BadRopDescriptor: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      std::get<Copy>(std::get<Drawable>(c.body).payload).ropDescriptor = SPICE_ROPD_MASK + 1;
      return c;
    }
    case H::BadScaleMode: {
      Command c = copyOf(bitmap(SPICE_BITMAP_FMT_32BIT, 2, 2));
      std::get<Copy>(std::get<Drawable>(c.body).payload).scaleMode = 2;
      return c;
    }
    case H::UnorderedBbox:
      return fill(SCRATCH_SURFACE, Rect{17, 0, 16, 16});  // top below bottom
    case H::QuicImage: {
      Image img;
      img.type = SPICE_IMAGE_TYPE_QUIC;
      img.width = img.height = 2;
      img.payload = QuicImage{std::vector<uint8_t>(64, 0x42), {}};
      return copyOf(std::move(img));
    }
    case H::DrawOnASurfaceThatDoesNotExist:
      return fill(MISSING_SURFACE);
    case H::CopyFromASurfaceThatDoesNotExist: {
      Image img;
      img.type = SPICE_IMAGE_TYPE_SURFACE;
      img.width = img.height = 16;
      img.payload = SurfaceImage{MISSING_SURFACE - 1};
      return copyOf(std::move(img));
    }
    case H::SurfaceCreatedTwice:
      return scratchSurfaceCreate();
    case H::DestroyOfAnUnknownSurface:
      return surface(MISSING_SURFACE + 1, QXL_SURFACE_CMD_DESTROY);
    case H::HugeBboxClippedToTheSurface:
      return fill(SCRATCH_SURFACE, Rect{-(1 << 30), -(1 << 30), 1 << 30, 1 << 30});
    case H::SurfaceCommandOnThePrimary:
      return surface(0, QXL_SURFACE_CMD_DESTROY);
  }
  SB_ASSERT(false, "hostile command {} has no base", static_cast<int>(attack));
  return fill();
}

Command scratchSurfaceCreate() {
  return surface(SCRATCH_SURFACE, QXL_SURFACE_CMD_CREATE, SCRATCH_SIZE, SCRATCH_SIZE,
                 SCRATCH_SIZE * 4);
}

// ---------------------------------------------------------------- corruptions

std::byte* corrupt(HostileCommand attack, Materialised& m, const GuestPoke& g) {
  using H = HostileCommand;
  const AddressCodec codec = g.codec();
  const uint8_t slot = codec.slotOf(m.commandAddr);
  const uint8_t generation = codec.generationOf(m.commandAddr);
  const uint64_t phys = codec.physOf(m.commandAddr);
  switch (attack) {
    case H::UnknownCommandType:
      m.qxlType = 77;
      return nullptr;
    case H::CursorCommandOnTheDisplayRing:
      m.cursorRing = false;  // still QXL_CMD_CURSOR
      return nullptr;
    case H::CommandCrossingTheEndOfASlot:
      // The release info is the slot's last 8 bytes; the rest of the QXLDrawable lies past it.
      return moveToWindowEnd(m, g, sizeof(QXLReleaseInfo), sizeof(QXLReleaseInfo));
    case H::CommandInASlotOutOfRange:
      m.commandAddr = codec.encode(200, generation, phys);  // slots_end is 7
      return nullptr;
    case H::CommandInASlotNeverAdded:
      m.commandAddr = codec.encode(NEVER_ADDED_SLOT, generation, phys);
      return nullptr;
    case H::CommandWithAStaleGeneration:
      m.commandAddr = codec.encode(slot, static_cast<uint8_t>(generation ^ 0x80), phys);
      return nullptr;
    case H::CircularChunks: {
      // Two empty chunks that point at each other: no byte count ever grows, only the loop
      // check ends the walk (spice-server's circular-small-chunks).
      const uint64_t first = firstChunkOf(g, m);
      auto c1 = peek<QXLDataChunk>(g, first);
      auto c2 = peek<QXLDataChunk>(g, c1.next_chunk);
      const uint64_t second = c1.next_chunk;
      c1.data_size = 0;
      c2.data_size = 0;
      c2.next_chunk = first;
      poke(g, first, c1);
      poke(g, second, c2);
      return nullptr;
    }
    case H::ChunkSizeOverflow: {
      const uint64_t first = firstChunkOf(g, m);
      const uint64_t second = peek<QXLDataChunk>(g, first).next_chunk;
      auto c2 = peek<QXLDataChunk>(g, second);
      c2.data_size = 0xfffffff8;  // 8 + this wraps a 32-bit sum to 0
      poke(g, second, c2);
      return nullptr;
    }
    case H::ChunkChainLongerThanMaxDataChunks: {
      // MAX_DATA_CHUNKS + 1 chunks in a straight line, the last carrying the pixel: not a
      // loop, just too long.
      const auto w = g.window();
      constexpr uint32_t CHUNKS = renderer::MAX_DATA_CHUNKS + 1;
      static_assert(CHUNKS * sizeof(QXLDataChunk) + 4 <= ATTACK_WINDOW_BYTES);
      for (uint32_t i = 0; i < CHUNKS; ++i) {
        QXLDataChunk c{};
        const bool last = i + 1 == CHUNKS;
        c.data_size = last ? 4 : 0;
        c.next_chunk = last ? 0 : w.addr + (i + 1) * sizeof(QXLDataChunk);
        std::memcpy(w.host + i * sizeof(QXLDataChunk), &c, sizeof c);
      }
      patchImage(g, m, [&](QXLImage& img) { img.bitmap.data = w.addr; });
      return nullptr;
    }
    case H::BitmapChunksShorterThanYTimesStride: {
      const uint64_t first = firstChunkOf(g, m);
      auto c1 = peek<QXLDataChunk>(g, first);
      c1.data_size = 15;  // 2 x 2 x 4 bytes need 16
      poke(g, first, c1);
      return nullptr;
    }
    case H::BitmapDataPastTheEndOfASlot: {
      const WindowEnd end = windowEnd(g, 16);  // the 16 bytes of 2 x 2 pixels, one byte on
      patchImage(g, m, [&](QXLImage& img) {
        img.bitmap.flags |= QXL_BITMAP_DIRECT;
        img.bitmap.data = end.addr + 1;
      });
      return nullptr;
    }
    case H::PaletteCountLargerThanItsData: {
      // A header 100 bytes before the slot's end claiming 256 entries (1 KiB).
      const WindowEnd end = windowEnd(g, sizeof(QXLPalette) + 100);
      QXLPalette pal{};
      pal.num_ents = 256;
      std::memcpy(end.host, &pal, sizeof pal);
      patchImage(g, m, [&](QXLImage& img) { img.bitmap.palette = end.addr; });
      return nullptr;
    }
    case H::StringTooLong: {
      const uint64_t str = peek<QXLDrawable>(g, m.commandAddr).u.text.str;
      auto s = peek<QXLString>(g, str);
      s.data_size = renderer::MAX_STRING_BYTES + 1;
      poke(g, str, s);
      return nullptr;
    }
    case H::PathSegmentCountPastTheData: {
      const uint64_t seg = peek<QXLDrawable>(g, m.commandAddr).u.stroke.path + sizeof(QXLPath);
      auto s = peek<QXLPathSeg>(g, seg);
      s.count = 1000;  // two points follow
      poke(g, seg, s);
      return nullptr;
    }
    case H::PathTooLong: {
      const uint64_t path = peek<QXLDrawable>(g, m.commandAddr).u.stroke.path;
      auto p = peek<QXLPath>(g, path);
      p.data_size = renderer::MAX_PATH_BYTES + 1;
      poke(g, path, p);
      return nullptr;
    }
    case H::ClipRectCountPastTheData:
    case H::TooManyClipRects: {
      const uint64_t clip = peek<QXLDrawable>(g, m.commandAddr).clip.data;
      auto q = peek<QXLClipRects>(g, clip);
      q.num_rects = attack == H::TooManyClipRects ? renderer::MAX_CLIP_RECTS + 1 : 3;
      poke(g, clip, q);
      return nullptr;
    }
    case H::MessageWithoutANul: {
      // Release info, then text to the very end of the slot with no NUL.
      constexpr size_t TEXT = 10;
      std::byte* info = moveToWindowEnd(m, g, sizeof(QXLMessage), sizeof(QXLMessage) + TEXT);
      std::memset(info + sizeof(QXLMessage), 'x', TEXT);
      return info;
    }
    case H::UnknownDrawType:
      patchDrawable(g, m, [](QXLDrawable& d) { d.type = 200; });
      return nullptr;
    default:
      return nullptr;  // the tree itself is the attack (attackBase)
  }
}

// ---------------------------------------------------------------- addresses

uint8_t AddressCodec::slotOf(uint64_t addr) const {
  return static_cast<uint8_t>(addr >> (64 - slotIdBits));
}

uint8_t AddressCodec::generationOf(uint64_t addr) const {
  return static_cast<uint8_t>((addr >> (64 - slotIdBits - slotGenBits)) &
                              ((uint64_t{1} << slotGenBits) - 1));
}

uint64_t AddressCodec::physOf(uint64_t addr) const {
  return addr & ((uint64_t{1} << (64 - slotIdBits - slotGenBits)) - 1);
}

uint64_t AddressCodec::encode(uint8_t slot, uint8_t generation, uint64_t phys) const {
  const unsigned genShift = 64 - slotIdBits - slotGenBits;
  return (uint64_t{slot} << (64 - slotIdBits)) |
         ((uint64_t{generation} & ((uint64_t{1} << slotGenBits) - 1)) << genShift) |
         (phys & ((uint64_t{1} << genShift) - 1));
}

}  // namespace spicebox::guestsim
