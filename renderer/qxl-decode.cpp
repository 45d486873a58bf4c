// Runs in: renderer (sandboxed). Input: guest memory, hostile, may change while read (see
// qxl-decode.h). Every read goes through Decoder::copy (one GuestMemory::copy per structure);
// the local copies are validated before any field steers another read or lands in the tree.
//
// Layout facts (spice/qxl_dev.h; field semantics as spice-server's red-parse-qxl reads them):
// - A QXLDataChunk chain starts embedded in its owner (QXLClipRects, QXLPath, QXLString,
//   QXLCursor) or standalone (non-DIRECT bitmap data); next_chunk 0 ends it; prev_chunk is
//   not followed. The owner declares the chain's total size (or it follows from num_rects,
//   y * stride): the chain must carry exactly that many bytes.
// - QXL_BITMAP_DIRECT: QXLBitmap.data is the address of y * stride flat bytes.
// - QXLImage is a descriptor followed by a type-specific part; only that part is read, so no
//   byte of a QUIC image's data is read as part of a header.
// - Raster glyphs (QXLRasterGlyph): render_pos, glyph_origin, width, height (20 bytes), then
//   height rows of (width * bpp + 7) / 8 bytes; bpp from SPICE_STRING_FLAGS_RASTER_A1/A4/A8.
// - QXLPath data: QXLPathSeg {flags, count} followed by count QXLPointFix, repeated.
// - QXLMessage: the text follows the release info, NUL-terminated.
// - Surface create: QXLSurface.data is the lowest address of height * |stride| bytes.
#include "renderer/qxl-decode.h"
#include "renderer/qxl-formats.h"

#include <spdlog/fmt/fmt.h>
#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <cstring>
#include <limits>
#include <type_traits>
#include <unordered_set>
#include <utility>

namespace spicebox::renderer {

namespace {

using namespace qxlcmd;

// Thrown only inside this file and caught in decodeCommand(): the decoder reads as a straight
// list of steps and every refusal funnels through one place.
struct DecodeFailure {
  DecodeError error;
};

[[noreturn]] void fail(DecodeErrorKind kind, std::string detail) {
  throw DecodeFailure{DecodeError{kind, std::move(detail)}};
}

// addr + offset, refused when it wraps (a wrapped address could land in another slot).
uint64_t advance(uint64_t addr, uint64_t offset, const char* what) {
  uint64_t out = 0;
  if (__builtin_add_overflow(addr, offset, &out))
    fail(DecodeErrorKind::AddressOutsideSlot,
         fmt::format("{} at {:#x} + {} wraps the address space", what, addr, offset));
  return out;
}

Rect rect(const QXLRect& r) {
  return Rect{r.top, r.left, r.bottom, r.right};
}
Point point(const QXLPoint& p) {
  return Point{p.x, p.y};
}
Point16 point16(const QXLPoint16& p) {
  return Point16{p.x, p.y};
}

// A rect the rasteriser draws with: ordered, or the command is refused.
Rect orderedRect(const QXLRect& r, const char* what) {
  if (r.top > r.bottom || r.left > r.right)
    fail(DecodeErrorKind::RectUnordered,
         fmt::format("{} (top {}, left {}, bottom {}, right {}) has top > bottom or left > right",
                     what, +r.top, +r.left, +r.bottom, +r.right));
  return rect(r);
}

uint16_t ropDescriptor(uint16_t rop, const char* what) {
  if (rop & ~uint16_t{SPICE_ROPD_MASK})
    fail(DecodeErrorKind::BadRopDescriptor,
         fmt::format("{} rop descriptor {:#x} has bits outside SPICE_ROPD_MASK {:#x}", what, rop,
                     unsigned{SPICE_ROPD_MASK}));
  return rop;
}

uint8_t scaleMode(uint8_t mode) {
  if (mode > SPICE_IMAGE_SCALE_MODE_NEAREST)
    fail(DecodeErrorKind::BadFlags,
         fmt::format("scale mode {} is no SPICE_IMAGE_SCALE_MODE_*", unsigned{mode}));
  return mode;
}

void surfaceId(uint32_t id, const char* what) {
  if (id >= MAX_SURFACES)
    fail(DecodeErrorKind::SurfaceIdOutOfRange,
         fmt::format("{} surface id {} is not below n_surfaces {}", what, id, MAX_SURFACES));
}

bool palettized(uint8_t format) {
  return format >= SPICE_BITMAP_FMT_1BIT_LE && format <= SPICE_BITMAP_FMT_8BIT;
}

// Where a QMask's image and a source image differ: a mask is 1 bpp coverage and needs no
// palette.
enum class ImageRole : uint8_t { Source, Mask };

class Decoder {
 public:
  explicit Decoder(const GuestMemory& mem) : mem_(mem) {}

  // The single read of [addr, addr + size): counted against MAX_COMMAND_BYTES.
  void copy(uint64_t addr, size_t size, void* out, const char* what) {
    if (size > MAX_COMMAND_BYTES - copied_)
      fail(DecodeErrorKind::CommandTooLarge,
           fmt::format("{} of {} bytes takes the command above MAX_COMMAND_BYTES ({} bytes)", what,
                       size, MAX_COMMAND_BYTES));
    copied_ += size;
    if (auto error = mem_.copy(addr, size, out)) {
      error->detail = fmt::format("{} at {:#x} ({} bytes): {}", what, addr, size, error->detail);
      throw DecodeFailure{std::move(*error)};
    }
  }

  // [addr, addr + size) translated whole and returned in place, not read: for pixel values
  // only (never a value that steers a read). Counted against MAX_COMMAND_BYTES like a copy.
  std::span<const uint8_t> view(uint64_t addr, size_t size, const char* what) {
    if (size > MAX_COMMAND_BYTES - copied_)
      fail(DecodeErrorKind::CommandTooLarge,
           fmt::format("{} of {} bytes takes the command above MAX_COMMAND_BYTES ({} bytes)", what,
                       size, MAX_COMMAND_BYTES));
    copied_ += size;
    auto located = mem_.locate(addr, size);
    if (auto* error = std::get_if<DecodeError>(&located)) {
      error->detail = fmt::format("{} at {:#x} ({} bytes): {}", what, addr, size, error->detail);
      throw DecodeFailure{std::move(*error)};
    }
    const auto bytes = std::get<std::span<std::byte>>(located);
    if (bytes.size() != size)
      fail(DecodeErrorKind::AddressOutsideSlot,
           fmt::format("{} at {:#x}: {} bytes located, {} asked", what, addr, bytes.size(), size));
    return {reinterpret_cast<const uint8_t*>(bytes.data()), size};
  }

  template <typename T>
  T read(uint64_t addr, const char* what) {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    copy(addr, sizeof(T), &value, what);
    return value;
  }

  // ------------------------------------------------------------ chunk chains

  // The chain whose first header (already copied with its owner) is `first`, at `firstAddr`.
  // It must carry exactly `declared` bytes: fewer is `shortKind`, more is ChunkTooLong.
  // `sizes` gets every chunk's size when there is more than one (the tree's convention).
  std::vector<uint8_t> chain(uint64_t firstAddr, QXLDataChunk header, uint64_t declared,
                             DecodeErrorKind shortKind, const char* what,
                             std::vector<uint32_t>& sizes, uint32_t* chunkCount = nullptr) {
    std::vector<uint8_t> data;
    data.reserve(declared);  // capped by every caller (at most MAX_BITMAP_BYTES)
    std::vector<uint32_t> all;
    // Loop detection: every chunk address seen; MAX_DATA_CHUNKS bounds the set.
    std::unordered_set<uint64_t> visited{firstAddr};
    uint64_t addr = firstAddr;
    for (;;) {
      if (all.size() >= MAX_DATA_CHUNKS)
        fail(DecodeErrorKind::ChunkTooLong,
             fmt::format("{}: more than MAX_DATA_CHUNKS ({}) chunks", what, MAX_DATA_CHUNKS));
      if (header.data_size > declared - data.size())
        fail(DecodeErrorKind::ChunkTooLong,
             fmt::format("{}: chunk {} of {} bytes takes the chain past the {} bytes declared",
                         what, all.size(), +header.data_size, declared));
      const size_t at = data.size();
      data.resize(at + header.data_size);
      copy(advance(addr, sizeof(QXLDataChunk), what), header.data_size, data.data() + at, what);
      all.push_back(header.data_size);
      if (header.next_chunk == 0)
        break;
      // A copy: the packed field is not 8-byte aligned, so no reference may bind to it.
      if (!visited.insert(uint64_t{header.next_chunk}).second)
        fail(DecodeErrorKind::ChunkLoop,
             fmt::format("{}: chunk {} links back to chunk address {:#x}", what, all.size() - 1,
                         +header.next_chunk));
      addr = header.next_chunk;
      header = read<QXLDataChunk>(addr, what);
    }
    if (data.size() < declared)
      fail(shortKind,
           fmt::format("{}: chunks carry {} bytes, {} declared", what, data.size(), declared));
    if (chunkCount)
      *chunkCount = static_cast<uint32_t>(all.size());
    if (all.size() > 1)
      sizes = std::move(all);
    return data;
  }

  // ------------------------------------------------------------ images

  std::optional<Palette> palette(uint64_t addr) {
    if (addr == 0)
      return std::nullopt;
    auto header = read<QXLPalette>(addr, "QXLPalette");
    if (header.num_ents > MAX_PALETTE_ENTRIES)
      fail(DecodeErrorKind::PaletteTooLarge,
           fmt::format("palette of {} entries, at most {}", +header.num_ents, MAX_PALETTE_ENTRIES));
    Palette pal;
    pal.unique = header.unique;
    pal.entries.resize(header.num_ents);
    const size_t bytes = size_t{header.num_ents} * sizeof(uint32_t);
    const uint64_t at = advance(addr, sizeof(QXLPalette), "palette entries");
    try {
      copy(at, bytes, pal.entries.data(), "palette entries");
    } catch (DecodeFailure& failure) {
      if (failure.error.kind == DecodeErrorKind::CommandTooLarge)
        throw;
      fail(DecodeErrorKind::PaletteShort,
           fmt::format("palette count {} is larger than its data: {}", +header.num_ents,
                       failure.error.detail));
    }
    return pal;
  }

  Bitmap bitmap(const QXLBitmap& q, ImageRole role) {
    Bitmap bm;
    bm.format = q.format;
    bm.flags = q.flags;
    bm.x = q.x;
    bm.y = q.y;
    bm.stride = q.stride;
    const uint32_t bits = qxlcmd::bitmapFormatBits(q.format);
    if (bits == 0)
      fail(DecodeErrorKind::UnknownFormat,
           fmt::format("bitmap format {} is no SPICE_BITMAP_FMT_*", unsigned{q.format}));
    if (q.x > MAX_BITMAP_DIMENSION || q.y > MAX_BITMAP_DIMENSION)
      fail(DecodeErrorKind::BitmapTooLarge,
           fmt::format("bitmap {}x{} above {}x{}", +q.x, +q.y, MAX_BITMAP_DIMENSION,
                       MAX_BITMAP_DIMENSION));
    const uint64_t rowBytes = (uint64_t{q.x} * bits + 7) / 8;
    if (q.stride < rowBytes)
      fail(DecodeErrorKind::StrideTooSmall,
           fmt::format("bitmap stride {} below the {} bytes of {} pixels at {} bpp", +q.stride,
                       rowBytes, +q.x, bits));
    // QXL sizes are 32-bit (QXLDataChunk.data_size): a product that overflows 32 bits is a size
    // no guest structure can describe.
    uint32_t size = 0;
    if (__builtin_mul_overflow(q.stride, q.y, &size))
      fail(DecodeErrorKind::SizeOverflow,
           fmt::format("bitmap stride {} x height {} overflows 32 bits", +q.stride, +q.y));
    if (size > MAX_BITMAP_BYTES)
      fail(DecodeErrorKind::BitmapTooLarge,
           fmt::format("bitmap of {} bytes above MAX_BITMAP_BYTES ({})", size, MAX_BITMAP_BYTES));
    bm.palette = palette(q.palette);
    if (role == ImageRole::Source && palettized(q.format)) {
      if (!bm.palette)
        fail(DecodeErrorKind::PaletteMissing,
             fmt::format("palettized bitmap (format {}) without a palette", unsigned{q.format}));
      if (bm.palette->entries.size() < (size_t{1} << bits))
        fail(DecodeErrorKind::PaletteTooSmall,
             fmt::format("{} bpp bitmap with a palette of {} entries, {} needed", bits,
                         bm.palette->entries.size(), size_t{1} << bits));
    }
    // A source's pixels in one piece are read in place (`view`): only their values reach the
    // rasteriser, each read once, so a guest changing them mid-draw changes what is drawn, never
    // where anything is read or written. Masks and multi-chunk data are copied.
    const bool inPlace = role == ImageRole::Source && size > 0;
    if (q.flags & QXL_BITMAP_DIRECT) {
      if (inPlace) {
        bm.view = view(q.data, size, "flat bitmap data");
      } else {
        bm.data.resize(size);
        copy(q.data, size, bm.data.data(), "flat bitmap data");
      }
      bm.chunkCount = 1;
    } else {
      auto first = read<QXLDataChunk>(q.data, "bitmap data chunk");
      if (inPlace && first.next_chunk == 0 && first.data_size == size) {
        bm.view = view(advance(q.data, sizeof(QXLDataChunk), "bitmap data"), size, "bitmap data");
        bm.chunkCount = 1;
      } else {
        bm.data = chain(q.data, first, size, DecodeErrorKind::BitmapDataShort, "bitmap data",
                        bm.chunkSizes, &bm.chunkCount);
      }
    }
    return bm;
  }

  std::optional<Image> image(uint64_t addr, ImageRole role = ImageRole::Source) {
    if (addr == 0)
      return std::nullopt;
    auto desc = read<QXLImageDescriptor>(addr, "QXLImageDescriptor");
    Image img;
    img.id = desc.id;
    img.type = desc.type;
    img.flags = desc.flags;
    img.width = desc.width;
    img.height = desc.height;
    const uint64_t body = advance(addr, sizeof(QXLImageDescriptor), "image body");
    switch (desc.type) {
      case SPICE_IMAGE_TYPE_BITMAP:
        img.payload = bitmap(read<QXLBitmap>(body, "QXLBitmap"), role);
        break;
      case SPICE_IMAGE_TYPE_SURFACE: {
        auto s = read<QXLSurfaceId>(body, "QXLSurfaceId");
        surfaceId(s.surface_id, "image");
        img.payload = SurfaceImage{s.surface_id};
        break;
      }
      case SPICE_IMAGE_TYPE_QUIC:
        fail(DecodeErrorKind::Unsupported,
             "QUIC-compressed image: spicebox's renderer draws uncompressed bitmaps only (the "
             "Linux and Windows QXL drivers send those unless told to compress)");
      default:
        fail(DecodeErrorKind::UnknownImageType,
             fmt::format("image type {} is not one a guest may send (BITMAP, QUIC, SURFACE)",
                         unsigned{desc.type}));
    }
    return img;
  }

  // ------------------------------------------------------------ draw parts

  Brush brush(const QXLBrush& q) {
    Brush b;
    b.type = q.type;
    switch (q.type) {
      case SPICE_BRUSH_TYPE_NONE:
        break;
      case SPICE_BRUSH_TYPE_SOLID:
        b.color = q.u.color;
        break;
      case SPICE_BRUSH_TYPE_PATTERN:
        b.pattern = image(q.u.pattern.pat);
        b.patternPos = point(q.u.pattern.pos);
        break;
      default:
        fail(DecodeErrorKind::UnknownBrushType,
             fmt::format("brush type {} is no SPICE_BRUSH_TYPE_*", +q.type));
    }
    return b;
  }

  QMask mask(const QXLQMask& q) {
    if (q.flags & ~uint8_t{SPICE_MASK_FLAGS_MASK})
      fail(DecodeErrorKind::BadFlags,
           fmt::format("mask flags {:#x} outside SPICE_MASK_FLAGS_MASK", unsigned{q.flags}));
    return QMask{q.flags, point(q.pos), image(q.bitmap, ImageRole::Mask)};
  }

  Clip clip(const QXLClip& q) {
    Clip c;
    c.type = q.type;
    if (q.type == SPICE_CLIP_TYPE_NONE)
      return c;
    if (q.type != SPICE_CLIP_TYPE_RECTS)
      fail(DecodeErrorKind::UnknownClipType,
           fmt::format("clip type {} is no SPICE_CLIP_TYPE_*", +q.type));
    auto header = read<QXLClipRects>(q.data, "QXLClipRects");
    if (header.num_rects > MAX_CLIP_RECTS)
      fail(DecodeErrorKind::TooManyClipRects,
           fmt::format("{} clip rects, at most {}", +header.num_rects, MAX_CLIP_RECTS));
    auto bytes = chain(advance(q.data, offsetof(QXLClipRects, chunk), "clip rects"), header.chunk,
                       uint64_t{header.num_rects} * sizeof(QXLRect),
                       DecodeErrorKind::ClipRectsPastData, "clip rects", c.chunkSizes);
    c.rects.reserve(header.num_rects);
    for (uint32_t i = 0; i < header.num_rects; ++i) {
      QXLRect r;
      std::memcpy(&r, bytes.data() + size_t{i} * sizeof(QXLRect), sizeof(r));
      c.rects.push_back(orderedRect(r, "clip rect"));
    }
    return c;
  }

  template <typename T, typename Q>
  T copyLike(const Q& q) {
    T p;
    p.srcBitmap = image(q.src_bitmap);
    p.srcArea = orderedRect(q.src_area, "src_area");
    p.ropDescriptor = ropDescriptor(q.rop_descriptor, "copy/blend");
    p.scaleMode = scaleMode(q.scale_mode);
    p.mask = mask(q.mask);
    return p;
  }

  std::optional<Transform> transform(uint64_t addr) {
    if (addr == 0)
      return std::nullopt;
    auto t = read<QXLTransform>(addr, "QXLTransform");
    return Transform{t.t00, t.t01, t.t02, t.t10, t.t11, t.t12};
  }

  Stroke stroke(const QXLStroke& q) {
    Stroke s;
    auto header = read<QXLPath>(q.path, "QXLPath");
    if (header.data_size > MAX_PATH_BYTES)
      fail(DecodeErrorKind::PathTooLong,
           fmt::format("path of {} bytes, at most {}", +header.data_size, MAX_PATH_BYTES));
    auto bytes = chain(advance(q.path, offsetof(QXLPath, chunk), "path"), header.chunk,
                       header.data_size, DecodeErrorKind::PathPastData, "path", s.pathChunkSizes);
    size_t at = 0;
    uint64_t points = 0;
    while (at < bytes.size()) {
      QXLPathSeg seg;
      if (bytes.size() - at < sizeof(seg))
        fail(DecodeErrorKind::PathPastData,
             fmt::format("path segment header at byte {} past the {} bytes of data", at,
                         bytes.size()));
      std::memcpy(&seg, bytes.data() + at, sizeof(seg));
      at += sizeof(seg);
      if (seg.count > (bytes.size() - at) / sizeof(QXLPointFix))
        fail(DecodeErrorKind::PathPastData,
             fmt::format("path segment of {} points at byte {} past the {} bytes of data",
                         +seg.count, at, bytes.size()));
      if (seg.flags & ~uint32_t{SPICE_PATH_FLAGS_MASK})
        fail(DecodeErrorKind::BadFlags,
             fmt::format("path segment flags {:#x} outside SPICE_PATH_FLAGS_MASK", +seg.flags));
      points += seg.count;
      if (points > MAX_PATH_POINTS)
        fail(DecodeErrorKind::PathTooLong,
             fmt::format("path of more than MAX_PATH_POINTS ({}) points", MAX_PATH_POINTS));
      PathSegment out;
      out.flags = seg.flags;
      out.points.resize(seg.count);
      for (uint32_t i = 0; i < seg.count; ++i) {
        QXLPointFix p;
        std::memcpy(&p, bytes.data() + at, sizeof(p));
        at += sizeof(p);
        out.points[i] = Point{p.x, p.y};
      }
      s.path.push_back(std::move(out));
    }
    if (q.attr.flags & ~uint8_t{SPICE_LINE_FLAGS_MASK})
      fail(DecodeErrorKind::BadFlags,
           fmt::format("line flags {:#x} outside SPICE_LINE_FLAGS_MASK", unsigned{q.attr.flags}));
    s.attrFlags = q.attr.flags;
    if (q.attr.flags & SPICE_LINE_FLAGS_STYLED) {
      s.style.resize(q.attr.style_nseg);  // 8 bits: at most 255
      copy(q.attr.style, s.style.size() * sizeof(QXLFIXED), s.style.data(), "line style");
    }
    s.brush = brush(q.brush);
    s.foreMode = ropDescriptor(q.fore_mode, "stroke fore_mode");
    s.backMode = ropDescriptor(q.back_mode, "stroke back_mode");
    return s;
  }

  QxlString string(uint64_t addr) {
    QxlString str;
    auto header = read<QXLString>(addr, "QXLString");
    str.length = header.length;
    str.flags = header.flags;
    uint32_t bpp = 0;
    switch (header.flags & (SPICE_STRING_FLAGS_RASTER_A1 | SPICE_STRING_FLAGS_RASTER_A4 |
                            SPICE_STRING_FLAGS_RASTER_A8)) {
      case SPICE_STRING_FLAGS_RASTER_A1:
        bpp = 1;
        break;
      case SPICE_STRING_FLAGS_RASTER_A4:
        bpp = 4;
        break;
      case SPICE_STRING_FLAGS_RASTER_A8:
        bpp = 8;
        break;
    }
    if (bpp == 0 || (header.flags & ~uint16_t{SPICE_STRING_FLAGS_MASK}))
      fail(DecodeErrorKind::UnknownGlyphFormat,
           fmt::format("string flags {:#x} name no single raster format (A1, A4 or A8)",
                       +header.flags));
    if (header.data_size > MAX_STRING_BYTES)
      fail(DecodeErrorKind::StringTooLong,
           fmt::format("string of {} bytes, at most {}", +header.data_size, MAX_STRING_BYTES));
    str.data =
        chain(advance(addr, offsetof(QXLString, chunk), "string"), header.chunk, header.data_size,
              DecodeErrorKind::GlyphsPastData, "glyph string", str.chunkSizes);
    // Walk the glyphs now, so the rasteriser can walk them without checks. Bytes after the
    // last glyph are kept and ignored.
    size_t at = 0;
    for (uint32_t i = 0; i < header.length; ++i) {
      QXLRasterGlyph glyph;
      if (str.data.size() - at < sizeof(glyph))
        fail(DecodeErrorKind::GlyphsPastData,
             fmt::format("glyph {} of {} starts past the {} bytes of data", i, +header.length,
                         str.data.size()));
      std::memcpy(&glyph, str.data.data() + at, sizeof(glyph));
      at += sizeof(glyph);
      const uint64_t bytes = (uint64_t{glyph.width} * bpp + 7) / 8 * glyph.height;
      if (bytes > str.data.size() - at)
        fail(DecodeErrorKind::GlyphsPastData,
             fmt::format("glyph {} of {} ({}x{} at {} bpp) runs past the {} bytes of data", i,
                         +header.length, +glyph.width, +glyph.height, bpp, str.data.size()));
      at += bytes;
    }
    return str;
  }

  Text text(const QXLText& q) {
    Text t;
    t.str = string(q.str);
    t.backArea = orderedRect(q.back_area, "text back_area");
    t.foreBrush = brush(q.fore_brush);
    t.backBrush = brush(q.back_brush);
    t.foreMode = ropDescriptor(q.fore_mode, "text fore_mode");
    t.backMode = ropDescriptor(q.back_mode, "text back_mode");
    return t;
  }

  uint16_t alphaFlags(uint16_t flags) {
    if (flags & ~uint16_t{SPICE_ALPHA_FLAGS_MASK})
      fail(DecodeErrorKind::BadFlags,
           fmt::format("alpha flags {:#x} outside SPICE_ALPHA_FLAGS_MASK", flags));
    return flags;
  }

  DrawPayload payload(const QXLDrawable& d) {
    switch (d.type) {
      case QXL_DRAW_NOP:
        return DrawNop{};
      case QXL_DRAW_FILL:
        return Fill{brush(d.u.fill.brush), ropDescriptor(d.u.fill.rop_descriptor, "fill"),
                    mask(d.u.fill.mask)};
      case QXL_DRAW_OPAQUE: {
        Opaque p;
        p.srcBitmap = image(d.u.opaque.src_bitmap);
        p.srcArea = orderedRect(d.u.opaque.src_area, "src_area");
        p.brush = brush(d.u.opaque.brush);
        p.ropDescriptor = ropDescriptor(d.u.opaque.rop_descriptor, "opaque");
        p.scaleMode = scaleMode(d.u.opaque.scale_mode);
        p.mask = mask(d.u.opaque.mask);
        return p;
      }
      case QXL_DRAW_COPY:
        return copyLike<Copy>(d.u.copy);
      case QXL_COPY_BITS:
        return CopyBits{point(d.u.copy_bits.src_pos)};
      case QXL_DRAW_BLEND:
        return copyLike<Blend>(d.u.blend);
      case QXL_DRAW_BLACKNESS:
        return Blackness{mask(d.u.blackness.mask)};
      case QXL_DRAW_WHITENESS:
        return Whiteness{mask(d.u.whiteness.mask)};
      case QXL_DRAW_INVERS:
        return Invers{mask(d.u.invers.mask)};
      case QXL_DRAW_ROP3: {
        Rop3 p;
        p.srcBitmap = image(d.u.rop3.src_bitmap);
        p.srcArea = orderedRect(d.u.rop3.src_area, "src_area");
        p.brush = brush(d.u.rop3.brush);
        p.rop3 = d.u.rop3.rop3;  // all 256 ternary raster operations are defined
        p.scaleMode = scaleMode(d.u.rop3.scale_mode);
        p.mask = mask(d.u.rop3.mask);
        return p;
      }
      case QXL_DRAW_STROKE:
        return stroke(d.u.stroke);
      case QXL_DRAW_TEXT:
        return text(d.u.text);
      case QXL_DRAW_TRANSPARENT: {
        Transparent p;
        p.srcBitmap = image(d.u.transparent.src_bitmap);
        p.srcArea = orderedRect(d.u.transparent.src_area, "src_area");
        p.srcColor = d.u.transparent.src_color;
        p.trueColor = d.u.transparent.true_color;
        return p;
      }
      case QXL_DRAW_ALPHA_BLEND: {
        AlphaBlend p;
        p.alphaFlags = alphaFlags(d.u.alpha_blend.alpha_flags);
        p.alpha = d.u.alpha_blend.alpha;
        p.srcBitmap = image(d.u.alpha_blend.src_bitmap);
        p.srcArea = orderedRect(d.u.alpha_blend.src_area, "src_area");
        return p;
      }
      case QXL_DRAW_COMPOSITE: {
        Composite p;
        p.flags = d.u.composite.flags;  // op, filters, repeats: each field's values are defined
        p.src = image(d.u.composite.src);
        p.srcTransform = transform(d.u.composite.src_transform);
        p.mask = image(d.u.composite.mask);
        p.maskTransform = transform(d.u.composite.mask_transform);
        p.srcOrigin = point16(d.u.composite.src_origin);
        p.maskOrigin = point16(d.u.composite.mask_origin);
        return p;
      }
      default:
        fail(DecodeErrorKind::UnknownDrawType,
             fmt::format("draw type {} is no QXL_DRAW_*", unsigned{d.type}));
    }
  }

  // ------------------------------------------------------------ commands

  Drawable drawable(uint64_t addr) {
    const auto q = read<QXLDrawable>(addr, "QXLDrawable");
    Drawable d;
    surfaceId(q.surface_id, "drawable");
    d.surfaceId = q.surface_id;
    d.type = q.type;
    if (q.type > QXL_DRAW_COMPOSITE)
      fail(DecodeErrorKind::UnknownDrawType,
           fmt::format("draw type {} is no QXL_DRAW_*", unsigned{q.type}));
    // A NOP draws nothing, so its bbox is not looked at.
    d.bbox = q.type == QXL_DRAW_NOP ? rect(q.bbox) : orderedRect(q.bbox, "bbox");
    d.clip = clip(q.clip);
    d.effect = q.effect;
    d.mmTime = q.mm_time;
    d.selfBitmap = q.self_bitmap;
    d.selfBitmapArea = rect(q.self_bitmap_area);  // not drawn with (spice-server ignores it)
    for (size_t i = 0; i < 3; ++i) {
      const int32_t dest = q.surfaces_dest[i];
      if (dest != -1) {
        if (dest < 0)
          fail(DecodeErrorKind::SurfaceIdOutOfRange,
               fmt::format("surfaces_dest[{}] = {} is neither -1 nor a surface id", i, dest));
        surfaceId(static_cast<uint32_t>(dest), "surfaces_dest");
        d.surfacesRects[i] = orderedRect(q.surfaces_rects[i], "surfaces_rects");
      } else {
        d.surfacesRects[i] = rect(q.surfaces_rects[i]);
      }
      d.surfacesDest[i] = dest;
    }
    d.payload = payload(q);
    return d;
  }

  UpdateCmd update(uint64_t addr) {
    const auto q = read<QXLUpdateCmd>(addr, "QXLUpdateCmd");
    surfaceId(q.surface_id, "update");
    return UpdateCmd{orderedRect(q.area, "update area"), q.update_id, q.surface_id};
  }

  MessageCmd message(uint64_t addr) {
    read<QXLMessage>(addr, "QXLMessage");  // the release info: nothing to use
    MessageCmd m;
    const uint64_t text = advance(addr, sizeof(QXLMessage), "message text");
    // Byte by byte: the text's length is only known at its NUL, and the slot may end anywhere
    // after it. Messages are rare debug lines.
    for (uint32_t i = 0;; ++i) {
      if (i == MAX_MESSAGE_BYTES)
        fail(DecodeErrorKind::MessageUnterminated,
             fmt::format("message text without a NUL in its first {} bytes", MAX_MESSAGE_BYTES));
      uint8_t c = 0;
      try {
        copy(advance(text, i, "message text"), 1, &c, "message text");
      } catch (DecodeFailure& failure) {
        fail(DecodeErrorKind::MessageUnterminated,
             fmt::format("message text ends without a NUL after {} bytes: {}", i,
                         failure.error.detail));
      }
      if (c == 0)
        break;
      m.text.push_back(c);
    }
    return m;
  }

  SurfaceCmd surface(uint64_t addr, SurfaceMemory* memory) {
    const auto q = read<QXLSurfaceCmd>(addr, "QXLSurfaceCmd");
    SurfaceCmd s;
    surfaceId(q.surface_id, "surface command");
    s.surfaceId = q.surface_id;
    s.type = q.type;
    s.flags = q.flags;
    if (q.type == QXL_SURFACE_CMD_DESTROY)
      return s;
    if (q.type != QXL_SURFACE_CMD_CREATE)
      fail(DecodeErrorKind::UnknownSurfaceCommand,
           fmt::format("surface command type {} is neither CREATE nor DESTROY", unsigned{q.type}));
    const auto& c = q.u.surface_create;
    s.format = c.format;
    s.width = c.width;
    s.height = c.height;
    s.stride = c.stride;
    const uint32_t bits = qxlcmd::surfaceFormatBits(c.format);
    if (bits == 0)
      fail(DecodeErrorKind::UnknownFormat,
           fmt::format("surface format {} is no SPICE_SURFACE_FMT_*", +c.format));
    if (c.width == 0 || c.height == 0)
      fail(DecodeErrorKind::SurfaceSizeZero,
           fmt::format("surface {} is {}x{}", +q.surface_id, +c.width, +c.height));
    if (c.width > MAX_SURFACE_DIMENSION || c.height > MAX_SURFACE_DIMENSION)
      fail(DecodeErrorKind::SurfaceTooLarge,
           fmt::format("surface {} is {}x{}, at most {}x{}", +q.surface_id, +c.width, +c.height,
                       MAX_SURFACE_DIMENSION, MAX_SURFACE_DIMENSION));
    const uint64_t absStride =
        c.stride < 0 ? uint64_t{0} - static_cast<uint64_t>(int64_t{c.stride}) : uint64_t(c.stride);
    const uint64_t rowBytes = (uint64_t{c.width} * bits + 7) / 8;
    if (absStride < rowBytes)
      fail(DecodeErrorKind::StrideTooSmall,
           fmt::format("surface {} stride {} below the {} bytes of {} pixels at {} bpp",
                       +q.surface_id, +c.stride, rowBytes, +c.width, bits));
    const uint64_t size = absStride * c.height;  // < 2^31 * 2^13: no overflow
    if (size > MAX_SURFACE_BYTES)
      fail(DecodeErrorKind::SurfaceTooLarge,
           fmt::format("surface {} of {} bytes above MAX_SURFACE_BYTES ({})", +q.surface_id, size,
                       MAX_SURFACE_BYTES));
    auto located = mem_.locate(c.data, size);
    if (auto* error = std::get_if<DecodeError>(&located))
      fail(error->kind, fmt::format("surface {} pixels at {:#x} ({} bytes): {}", +q.surface_id,
                                    +c.data, size, error->detail));
    if (q.flags & QXL_SURF_FLAG_KEEP_DATA) {
      // TODO(perf): the rasteriser could take the pixels in place instead of this copy.
      s.data.resize(size);
      copy(c.data, size, s.data.data(), "surface pixels");
    }
    if (memory)
      *memory = SurfaceMemory{c.data, size};
    return s;
  }

  CursorShape cursorShape(uint64_t addr) {
    const auto q = read<QXLCursor>(addr, "QXLCursor");
    CursorShape sh;
    sh.unique = q.header.unique;
    sh.type = static_cast<uint8_t>(q.header.type);
    sh.width = q.header.width;
    sh.height = q.header.height;
    sh.hotSpotX = q.header.hot_spot_x;
    sh.hotSpotY = q.header.hot_spot_y;
    auto need = cursorDataBytes(q.header.type, q.header.width, q.header.height);
    if (!need || q.header.type > std::numeric_limits<uint8_t>::max())
      fail(DecodeErrorKind::UnknownCursorShapeType,
           fmt::format("cursor shape type {} is no SPICE_CURSOR_TYPE_*", +q.header.type));
    if (q.header.width > MAX_CURSOR_DIMENSION || q.header.height > MAX_CURSOR_DIMENSION)
      fail(DecodeErrorKind::CursorTooLarge,
           fmt::format("cursor {}x{}, at most {}x{}", +q.header.width, +q.header.height,
                       MAX_CURSOR_DIMENSION, MAX_CURSOR_DIMENSION));
    if (q.data_size < *need)
      fail(DecodeErrorKind::CursorDataShort,
           fmt::format("cursor type {} {}x{} needs {} bytes, data_size is {}", +q.header.type,
                       +q.header.width, +q.header.height, *need, +q.data_size));
    if (q.data_size > MAX_CURSOR_BYTES)
      fail(DecodeErrorKind::CursorTooLarge,
           fmt::format("cursor data of {} bytes, at most {}", +q.data_size, MAX_CURSOR_BYTES));
    sh.data = chain(advance(addr, offsetof(QXLCursor, chunk), "cursor"), q.chunk, q.data_size,
                    DecodeErrorKind::CursorDataShort, "cursor data", sh.chunkSizes);
    return sh;
  }

  CursorCmd cursor(uint64_t addr) {
    const auto q = read<QXLCursorCmd>(addr, "QXLCursorCmd");
    CursorCmd c;
    c.type = q.type;
    switch (q.type) {
      case QXL_CURSOR_SET:
        c.position = point16(q.u.set.position);
        c.visible = q.u.set.visible;
        if (q.u.set.shape != 0)
          c.shape = cursorShape(q.u.set.shape);
        break;
      case QXL_CURSOR_MOVE:
        c.position = point16(q.u.position);
        break;
      case QXL_CURSOR_HIDE:
        break;
      case QXL_CURSOR_TRAIL:
        c.trailLength = q.u.trail.length;
        c.trailFrequency = q.u.trail.frequency;
        break;
      default:
        fail(DecodeErrorKind::UnknownCursorType,
             fmt::format("cursor command type {} is no QXL_CURSOR_*", unsigned{q.type}));
    }
    return c;
  }

 private:
  const GuestMemory& mem_;
  uint64_t copied_ = 0;
};

}  // namespace

const char* decodeErrorName(DecodeErrorKind kind) {
  switch (kind) {
#define SB_KIND(k)         \
  case DecodeErrorKind::k: \
    return #k;
    SB_KIND(NoGuestMemory)
    SB_KIND(NoMemslots)
    SB_KIND(UnknownCommandType)
    SB_KIND(WrongRing)
    SB_KIND(AddressOutsideSlot)
    SB_KIND(SlotOutOfRange)
    SB_KIND(SlotNotActive)
    SB_KIND(GenerationMismatch)
    SB_KIND(ChunkLoop)
    SB_KIND(ChunkTooLong)
    SB_KIND(ChunkDataShort)
    SB_KIND(SizeOverflow)
    SB_KIND(CommandTooLarge)
    SB_KIND(StrideTooSmall)
    SB_KIND(BitmapTooLarge)
    SB_KIND(BitmapDataShort)
    SB_KIND(SurfaceTooLarge)
    SB_KIND(SurfaceSizeZero)
    SB_KIND(SurfaceIdOutOfRange)
    SB_KIND(PaletteShort)
    SB_KIND(PaletteMissing)
    SB_KIND(PaletteTooSmall)
    SB_KIND(PaletteTooLarge)
    SB_KIND(GlyphsPastData)
    SB_KIND(UnknownGlyphFormat)
    SB_KIND(StringTooLong)
    SB_KIND(PathPastData)
    SB_KIND(PathTooLong)
    SB_KIND(ClipRectsPastData)
    SB_KIND(TooManyClipRects)
    SB_KIND(CursorDataShort)
    SB_KIND(CursorTooLarge)
    SB_KIND(MessageUnterminated)
    SB_KIND(UnknownDrawType)
    SB_KIND(UnknownImageType)
    SB_KIND(UnknownFormat)
    SB_KIND(UnknownClipType)
    SB_KIND(UnknownBrushType)
    SB_KIND(UnknownCursorType)
    SB_KIND(UnknownCursorShapeType)
    SB_KIND(UnknownSurfaceCommand)
    SB_KIND(BadRopDescriptor)
    SB_KIND(BadFlags)
    SB_KIND(RectUnordered)
    SB_KIND(Unsupported)
#undef SB_KIND
  }
  return "UnknownDecodeError";
}

DecodeErrorKind toDecodeErrorKind(qxl::MemslotError error) {
  switch (error) {
    case qxl::MemslotError::SlotIdOutOfRange:
      return DecodeErrorKind::SlotOutOfRange;
    case qxl::MemslotError::SlotNotActive:
      return DecodeErrorKind::SlotNotActive;
    case qxl::MemslotError::GenerationMismatch:
      return DecodeErrorKind::GenerationMismatch;
    default:  // AddressOutsideSlot, and the add-time errors translate() never returns
      return DecodeErrorKind::AddressOutsideSlot;
  }
}

std::variant<std::span<std::byte>, DecodeError> SlotMemory::locate(uint64_t addr,
                                                                   uint64_t size) const {
  auto where = slots_.translate(addr, size);
  if (auto* error = std::get_if<qxl::MemslotError>(&where))
    return DecodeError{toDecodeErrorKind(*error), qxl::describe(*error)};
  const auto& at = std::get<qxl::BarOffset>(where);
  std::span<std::byte> bar = at.bar == qxl::BarId::Vram ? view_.vram : view_.ram;
  // The table's BAR ranges are the mapping sizes, so this holds; checked again because a
  // mistake here would touch memory outside the mapping.
  if (at.offset > bar.size() || size > bar.size() - at.offset)
    return DecodeError{DecodeErrorKind::AddressOutsideSlot, "slot range beyond the BAR mapping"};
  return bar.subspan(at.offset, size);
}

std::optional<DecodeError> SlotMemory::copy(uint64_t addr, size_t size, void* out) const {
  if (size == 0)
    return std::nullopt;
  auto located = locate(addr, size);
  if (auto* error = std::get_if<DecodeError>(&located))
    return std::move(*error);
  std::memcpy(out, std::get<std::span<std::byte>>(located).data(), size);
  return std::nullopt;
}

std::optional<uint64_t> cursorDataBytes(uint8_t type, uint32_t width, uint32_t height) {
  const uint64_t w = width, h = height;
  const uint64_t andMask = (w + 7) / 8 * h;  // 1 bpp, rows padded to bytes
  switch (type) {
    case SPICE_CURSOR_TYPE_ALPHA:
      return w * h * 4;
    case SPICE_CURSOR_TYPE_MONO:
      return 2 * andMask;  // AND mask, then XOR mask
    case SPICE_CURSOR_TYPE_COLOR4:
      return (w * 4 + 7) / 8 * h + 16 * 4 + andMask;
    case SPICE_CURSOR_TYPE_COLOR8:
      return w * h + 256 * 4 + andMask;
    case SPICE_CURSOR_TYPE_COLOR16:
      return w * 2 * h + andMask;
    case SPICE_CURSOR_TYPE_COLOR24:
      return w * 3 * h + andMask;
    case SPICE_CURSOR_TYPE_COLOR32:
      return w * 4 * h + andMask;
    default:
      return std::nullopt;
  }
}

std::variant<qxlcmd::Command, DecodeError> decodeCommand(const GuestMemory& mem, uint32_t qxlType,
                                                         uint64_t addr, SurfaceMemory* surface) {
  Decoder decoder(mem);
  try {
    Command cmd;
    switch (qxlType) {
      case QXL_CMD_DRAW:
        cmd.type = CommandType::Draw;
        cmd.body = decoder.drawable(addr);
        break;
      case QXL_CMD_UPDATE:
        cmd.type = CommandType::Update;
        cmd.body = decoder.update(addr);
        break;
      case QXL_CMD_CURSOR:
        cmd.type = CommandType::Cursor;
        cmd.body = decoder.cursor(addr);
        break;
      case QXL_CMD_MESSAGE:
        cmd.type = CommandType::Message;
        cmd.body = decoder.message(addr);
        break;
      case QXL_CMD_SURFACE:
        cmd.type = CommandType::Surface;
        cmd.body = decoder.surface(addr, surface);
        break;
      default:
        return DecodeError{DecodeErrorKind::UnknownCommandType,
                           fmt::format("command type {} is no QXL_CMD_*", qxlType)};
    }
    return cmd;
  } catch (DecodeFailure& failure) {
    return std::move(failure.error);
  } catch (std::bad_alloc&) {
    // Every size is capped before allocation; this is the rlimit speaking.
    return DecodeError{DecodeErrorKind::CommandTooLarge, "out of memory while copying the command"};
  }
}

}  // namespace spicebox::renderer
