// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: a Command tree
// from RecordReader (already range-checked) or from a scenario. The tree is still checked for
// what this file needs to lay it out safely (chunk sizes that add up, counts that fit their
// QXL fields, sizes within the arena); shapes the device would reject (a bitmap whose data is
// not y*stride bytes, a bad surface format, ...) are written as given, so hostile scenarios can
// use them.
//
// Layout facts (from spice/qxl_dev.h, and from how spice-server's red-parse-qxl.cpp reads them):
// - Every command starts with its QXLReleaseInfo. That is a union: `id` is what the guest
//   writes, `next` is what the device overwrites it with when it releases the command.
// - A QXLDataChunk chain starts either embedded in its owner (QXLClipRects, QXLPath, QXLString,
//   QXLCursor, and a QUIC QXLImage right after quic.data_size) or standalone (non-DIRECT bitmap
//   data). Chunk i links prev_chunk to chunk i-1 and next_chunk to chunk i+1; the ends are 0.
// - A QXL_BITMAP_DIRECT bitmap's `data` is the address of y*stride flat bytes; otherwise it is
//   the address of the first QXLDataChunk of the chain.
// - Palettes (QXLPalette), style arrays (QXLFIXED), composite transforms (QXLTransform) and
//   images are separate objects behind QXLPHYSICAL pointers; 0 means absent.
// - QXLMessage text is NUL-terminated: spice-server scans for the NUL.
// - Surface memory: QXLSurface.data is the LOWEST address of height*|stride| bytes, whatever the
//   stride's sign (red-parse-qxl maps exactly that range). With a negative stride line 0 is the
//   last row in memory, data + (height-1)*|stride|; spice-server's display channel derives it
//   the same way. The recorder saves the block in memory order, so KEEP_DATA bytes are copied
//   in as they are.
//
// One block per object: the command, each image, palette, chunk after the first, transform,
// style array, and so on. An embedded first chunk shares its owner's block.

#include "tools/guestsim/materialise.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>

#include "base/assert.h"

namespace spicebox::guestsim {

namespace {

// Every block is a multiple of 8 bytes and at least 8: the allocator aligns starts to 8, and a
// zero-sized request (an empty style array) would otherwise have no address to point at.
constexpr uint64_t BLOCK_GRANULE = 8;

// Where the first chunk header sits inside objects that embed one.
constexpr size_t QUIC_CHUNK_OFFSET = sizeof(QXLImageDescriptor) + offsetof(QXLQUICData, data);

// Thrown only inside this file and caught in materialise(): layout code stays a straight list
// of steps, and every failure path funnels through one cleanup.
struct LayoutFailure {
  MaterialiseError error;
};

[[noreturn]] void fail(MaterialiseErrorKind kind, std::string detail) {
  throw LayoutFailure{MaterialiseError{kind, std::move(detail)}};
}

const char* arenaName(Arena arena) {
  return arena == Arena::Ram ? "RAM" : "VRAM";
}

// A part of a block that this file writes: host pointer, its guest address and the bytes left.
struct Place {
  std::byte* host = nullptr;
  uint64_t addr = 0;
  size_t size = 0;

  Place at(size_t offset) const {
    SB_ASSERT(offset <= size, "offset {} beyond a {}-byte block", offset, size);
    return Place{host + offset, addr + offset, size - offset};
  }
  template <typename T>
  void store(size_t offset, const T& value) const {
    storeBytes(offset, &value, sizeof(T));
  }
  void storeBytes(size_t offset, const void* src, size_t n) const {
    SB_ASSERT(offset <= size && n <= size - offset, "write of {} at {} in a {}-byte block", n,
              offset, size);
    if (n > 0) {
      std::memcpy(host + offset, src, n);
    }
  }
};

QXLRect toQxl(const Rect& r) {
  QXLRect q{};
  q.top = r.top;
  q.left = r.left;
  q.bottom = r.bottom;
  q.right = r.right;
  return q;
}

QXLPoint toQxl(const Point& p) {
  QXLPoint q{};
  q.x = p.x;
  q.y = p.y;
  return q;
}

QXLPoint16 toQxl(const Point16& p) {
  QXLPoint16 q{};
  q.x = p.x;
  q.y = p.y;
  return q;
}

void appendU32(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t bytes[4];
  std::memcpy(bytes, &v, sizeof(v));  // QXL is little-endian, as are x86 and arm64 hosts
  out.insert(out.end(), bytes, bytes + sizeof(bytes));
}

// A data size as a QXL 32-bit data_size field.
uint32_t dataSize32(size_t size, const char* what) {
  if (size > std::numeric_limits<uint32_t>::max()) {
    fail(MaterialiseErrorKind::TooLarge,
         std::string(what) + ": " + std::to_string(size) + " bytes do not fit a 32-bit data_size");
  }
  return static_cast<uint32_t>(size);
}

// The chunk sizes a chain is written with: the recorded ones, or one chunk when none were
// recorded. They must cover the data exactly.
std::vector<uint32_t> chunkPlan(size_t dataSize, const std::vector<uint32_t>& recorded,
                                const char* what) {
  if (recorded.empty()) {
    return {dataSize32(dataSize, what)};
  }
  uint64_t sum = 0;
  for (uint32_t s : recorded) {
    sum += s;
  }
  if (sum != dataSize) {
    fail(MaterialiseErrorKind::Unsupported,
         std::string(what) + ": chunk sizes add up to " + std::to_string(sum) +
             " bytes but the data holds " + std::to_string(dataSize) +
             "; fix the command tree (chunkSizes must cover the data exactly, or be empty)");
  }
  return recorded;
}

class Layout {
 public:
  explicit Layout(GuestAllocator& allocator) : allocator_(allocator) {}

  // Frees everything taken so far (error path).
  void freeAll() {
    if (surface_) {
      allocator_.free(*surface_);
      surface_.reset();
    }
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      allocator_.free(*it);
    }
    blocks_.clear();
  }

  Materialised finish(uint64_t commandAddr, uint32_t qxlType) {
    Materialised out;
    out.commandAddr = commandAddr;
    out.qxlType = qxlType;
    out.cursorRing = qxlType == QXL_CMD_CURSOR;
    out.blocks = std::move(blocks_);
    out.surfaceMemory = surface_;
    blocks_.clear();
    surface_.reset();
    return out;
  }

  Place take(uint64_t size, const char* what, Arena arena = Arena::Ram) {
    // Checked before rounding up, so the rounding cannot wrap.
    size_t capacity = allocator_.capacity(arena);
    uint64_t rounded =
        std::max(BLOCK_GRANULE, (size + BLOCK_GRANULE - 1) / BLOCK_GRANULE * BLOCK_GRANULE);
    if (size > capacity || rounded > capacity) {
      fail(MaterialiseErrorKind::TooLarge,
           std::string(what) + " needs " + std::to_string(size) + " bytes, more than the " +
               arenaName(arena) + " arena's capacity of " + std::to_string(capacity) +
               " bytes; the command cannot be placed in this device's memory");
    }
    auto block = allocator_.allocate(arena, static_cast<size_t>(rounded));
    if (!block) {
      fail(MaterialiseErrorKind::OutOfMemory, std::string(arenaName(arena)) +
                                                  " arena full while allocating " +
                                                  std::to_string(rounded) + " bytes for " + what +
                                                  "; release completed commands and retry");
    }
    SB_ASSERT(block->host != nullptr && block->arena == arena, "allocator returned a bad block");
    if (arena == Arena::Vram) {
      SB_ASSERT(!surface_, "a second VRAM block in one command");
      surface_ = *block;  // a surface create's pixels, the only VRAM block
    } else {
      blocks_.push_back(*block);
    }
    return Place{block->host, block->guestAddr, static_cast<size_t>(rounded)};
  }

  // Writes `data` as the chain `plan` describes. The first chunk's header goes at `first`
  // (embedded in its owner or a block of its own), which has room for plan[0] bytes of data;
  // every further chunk gets its own block.
  void chunkChain(Place first, std::span<const uint8_t> data, const std::vector<uint32_t>& plan,
                  const char* what) {
    std::vector<Place> places{first};
    for (size_t i = 1; i < plan.size(); ++i) {
      places.push_back(take(sizeof(QXLDataChunk) + uint64_t{plan[i]}, what));
    }
    size_t at = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
      QXLDataChunk header{};
      header.data_size = plan[i];
      header.prev_chunk = i > 0 ? places[i - 1].addr : 0;
      header.next_chunk = i + 1 < plan.size() ? places[i + 1].addr : 0;
      places[i].store(0, header);
      places[i].storeBytes(sizeof(QXLDataChunk), data.data() + at, plan[i]);
      at += plan[i];
    }
  }

  // A chain whose first chunk lives in a block of its own (non-DIRECT bitmap data).
  uint64_t standaloneChain(std::span<const uint8_t> data, const std::vector<uint32_t>& recorded,
                           const char* what) {
    auto plan = chunkPlan(data.size(), recorded, what);
    Place first = take(sizeof(QXLDataChunk) + uint64_t{plan[0]}, what);
    chunkChain(first, data, plan, what);
    return first.addr;
  }

  // An object of `headerSize` bytes that embeds the first chunk at `chunkOffset`; returns the
  // object's place, its header still to be written by the caller (the chunk header is already).
  Place withEmbeddedChain(size_t headerSize, size_t chunkOffset, std::span<const uint8_t> data,
                          const std::vector<uint32_t>& recorded, const char* what) {
    auto plan = chunkPlan(data.size(), recorded, what);
    uint64_t size = std::max<uint64_t>(headerSize, chunkOffset + sizeof(QXLDataChunk) + plan[0]);
    Place obj = take(size, what);
    chunkChain(obj.at(chunkOffset), data, plan, what);
    return obj;
  }

  // ---------------------------------------------------------------- images

  uint64_t palette(const Palette& pal) {
    if (pal.entries.size() > std::numeric_limits<uint16_t>::max()) {
      fail(MaterialiseErrorKind::Unsupported,
           "palette of " + std::to_string(pal.entries.size()) +
               " entries does not fit QXLPalette.num_ents (16 bits)");
    }
    Place p = take(sizeof(QXLPalette) + pal.entries.size() * sizeof(uint32_t), "QXLPalette");
    QXLPalette header{};
    header.unique = pal.unique;
    header.num_ents = static_cast<uint16_t>(pal.entries.size());
    p.store(0, header);
    p.storeBytes(sizeof(QXLPalette), pal.entries.data(), pal.entries.size() * sizeof(uint32_t));
    return p.addr;
  }

  uint64_t image(const std::optional<Image>& maybe) {
    if (!maybe) {
      return 0;
    }
    const Image& img = *maybe;
    QXLImageDescriptor desc{};
    desc.id = img.id;
    desc.type = img.type;
    desc.flags = img.flags;
    desc.width = img.width;
    desc.height = img.height;

    if (const auto* quic = std::get_if<QuicImage>(&img.payload)) {
      Place p = withEmbeddedChain(sizeof(QXLImage), QUIC_CHUNK_OFFSET, quic->data, quic->chunkSizes,
                                  "QUIC image data");
      p.store(0, desc);
      p.store(sizeof(QXLImageDescriptor), dataSize32(quic->data.size(), "QUIC image data"));
      return p.addr;
    }
    Place p = take(sizeof(QXLImage), "QXLImage");
    QXLImage q{};
    q.descriptor = desc;
    if (const auto* s = std::get_if<SurfaceImage>(&img.payload)) {
      q.surface_image.surface_id = s->surfaceId;
    } else {
      const Bitmap& bm = std::get<Bitmap>(img.payload);
      q.bitmap.format = bm.format;
      q.bitmap.flags = bm.flags;
      q.bitmap.x = bm.x;
      q.bitmap.y = bm.y;
      q.bitmap.stride = bm.stride;
      q.bitmap.palette = bm.palette ? palette(*bm.palette) : 0;
      if (bm.flags & QXL_BITMAP_DIRECT) {
        Place flat = take(bm.data.size(), "flat bitmap data");
        flat.storeBytes(0, bm.data.data(), bm.data.size());
        q.bitmap.data = flat.addr;
      } else {
        q.bitmap.data = standaloneChain(bm.data, bm.chunkSizes, "bitmap data");
      }
    }
    p.store(0, q);
    return p.addr;
  }

  // ---------------------------------------------------------------- draw parts

  QXLBrush brush(const Brush& b) {
    QXLBrush q{};
    q.type = b.type;
    if (b.type == SPICE_BRUSH_TYPE_SOLID) {
      q.u.color = b.color;
    } else if (b.type == SPICE_BRUSH_TYPE_PATTERN) {
      q.u.pattern.pat = image(b.pattern);
      q.u.pattern.pos = toQxl(b.patternPos);
    }
    return q;
  }

  QXLQMask mask(const QMask& m) {
    QXLQMask q{};
    q.flags = m.flags;
    q.pos = toQxl(m.pos);
    q.bitmap = image(m.bitmap);
    return q;
  }

  QXLClip clip(const Clip& c) {
    QXLClip q{};
    q.type = c.type;
    if (c.type != SPICE_CLIP_TYPE_RECTS) {
      return q;  // NONE: no data
    }
    if (c.rects.size() > std::numeric_limits<uint32_t>::max() / sizeof(QXLRect)) {
      fail(MaterialiseErrorKind::TooLarge,
           std::to_string(c.rects.size()) + " clip rects do not fit QXLClipRects");
    }
    std::vector<uint8_t> bytes;
    bytes.reserve(c.rects.size() * sizeof(QXLRect));
    for (const Rect& r : c.rects) {
      for (int32_t v : {r.top, r.left, r.bottom, r.right}) {
        appendU32(bytes, static_cast<uint32_t>(v));
      }
    }
    Place p = withEmbeddedChain(sizeof(QXLClipRects), offsetof(QXLClipRects, chunk), bytes,
                                c.chunkSizes, "QXLClipRects");
    p.store(offsetof(QXLClipRects, num_rects), static_cast<uint32_t>(c.rects.size()));
    q.data = p.addr;
    return q;
  }

  uint64_t transform(const std::optional<Transform>& t) {
    if (!t) {
      return 0;
    }
    Place p = take(sizeof(QXLTransform), "QXLTransform");
    QXLTransform q{(*t)[0], (*t)[1], (*t)[2], (*t)[3], (*t)[4], (*t)[5]};
    p.store(0, q);
    return p.addr;
  }

  uint64_t path(const std::vector<PathSegment>& segments, const std::vector<uint32_t>& sizes) {
    std::vector<uint8_t> bytes;
    for (const PathSegment& seg : segments) {
      if (seg.points.size() > std::numeric_limits<uint32_t>::max()) {
        fail(MaterialiseErrorKind::TooLarge, "path segment with too many points for QXLPathSeg");
      }
      appendU32(bytes, seg.flags);
      appendU32(bytes, static_cast<uint32_t>(seg.points.size()));
      for (const Point& pt : seg.points) {
        appendU32(bytes, static_cast<uint32_t>(pt.x));
        appendU32(bytes, static_cast<uint32_t>(pt.y));
      }
    }
    Place p = withEmbeddedChain(sizeof(QXLPath), offsetof(QXLPath, chunk), bytes, sizes, "QXLPath");
    p.store(offsetof(QXLPath, data_size), dataSize32(bytes.size(), "QXLPath"));
    return p.addr;
  }

  QXLStroke stroke(const Stroke& s) {
    QXLStroke q{};
    q.path = path(s.path, s.pathChunkSizes);
    q.attr.flags = s.attrFlags;
    if (s.attrFlags & SPICE_LINE_FLAGS_STYLED) {
      if (s.style.size() > std::numeric_limits<uint8_t>::max()) {
        fail(MaterialiseErrorKind::Unsupported,
             "line style of " + std::to_string(s.style.size()) +
                 " segments does not fit QXLLineAttr.style_nseg (8 bits)");
      }
      q.attr.style_nseg = static_cast<uint8_t>(s.style.size());
      Place p = take(s.style.size() * sizeof(QXLFIXED), "line style");
      p.storeBytes(0, s.style.data(), s.style.size() * sizeof(QXLFIXED));
      q.attr.style = p.addr;
    }
    q.brush = brush(s.brush);
    q.fore_mode = s.foreMode;
    q.back_mode = s.backMode;
    return q;
  }

  QXLText text(const Text& t) {
    QXLText q{};
    Place p = withEmbeddedChain(sizeof(QXLString), offsetof(QXLString, chunk), t.str.data,
                                t.str.chunkSizes, "QXLString");
    QXLString header{};
    header.data_size = dataSize32(t.str.data.size(), "QXLString");
    header.length = t.str.length;
    header.flags = t.str.flags;
    p.storeBytes(0, &header, offsetof(QXLString, chunk));
    q.str = p.addr;
    q.back_area = toQxl(t.backArea);
    q.fore_brush = brush(t.foreBrush);
    q.back_brush = brush(t.backBrush);
    q.fore_mode = t.foreMode;
    q.back_mode = t.backMode;
    return q;
  }

  // QXLCopy and QXLBlend are one struct; the tree has two with the same fields.
  template <typename CopyOrBlend>
  QXLCopy copyOrBlend(const CopyOrBlend& p) {
    QXLCopy q{};
    q.src_bitmap = image(p.srcBitmap);
    q.src_area = toQxl(p.srcArea);
    q.rop_descriptor = p.ropDescriptor;
    q.scale_mode = p.scaleMode;
    q.mask = mask(p.mask);
    return q;
  }

  // Fills the union member of `d` that the payload selects.
  void drawPayload(const DrawPayload& payload, QXLDrawable& d) {
    switch (payload.index()) {
      case QXL_DRAW_NOP:
        return;
      case QXL_DRAW_FILL: {
        const auto& p = std::get<Fill>(payload);
        d.u.fill.brush = brush(p.brush);
        d.u.fill.rop_descriptor = p.ropDescriptor;
        d.u.fill.mask = mask(p.mask);
        return;
      }
      case QXL_DRAW_OPAQUE: {
        const auto& p = std::get<Opaque>(payload);
        d.u.opaque.src_bitmap = image(p.srcBitmap);
        d.u.opaque.src_area = toQxl(p.srcArea);
        d.u.opaque.brush = brush(p.brush);
        d.u.opaque.rop_descriptor = p.ropDescriptor;
        d.u.opaque.scale_mode = p.scaleMode;
        d.u.opaque.mask = mask(p.mask);
        return;
      }
      case QXL_DRAW_COPY:
        d.u.copy = copyOrBlend(std::get<Copy>(payload));
        return;
      case QXL_DRAW_BLEND:
        d.u.blend = copyOrBlend(std::get<Blend>(payload));
        return;
      case QXL_COPY_BITS:
        d.u.copy_bits.src_pos = toQxl(std::get<CopyBits>(payload).srcPos);
        return;
      case QXL_DRAW_BLACKNESS:
        d.u.blackness.mask = mask(std::get<Blackness>(payload).mask);
        return;
      case QXL_DRAW_WHITENESS:
        d.u.whiteness.mask = mask(std::get<Whiteness>(payload).mask);
        return;
      case QXL_DRAW_INVERS:
        d.u.invers.mask = mask(std::get<Invers>(payload).mask);
        return;
      case QXL_DRAW_ROP3: {
        const auto& p = std::get<Rop3>(payload);
        d.u.rop3.src_bitmap = image(p.srcBitmap);
        d.u.rop3.src_area = toQxl(p.srcArea);
        d.u.rop3.brush = brush(p.brush);
        d.u.rop3.rop3 = p.rop3;
        d.u.rop3.scale_mode = p.scaleMode;
        d.u.rop3.mask = mask(p.mask);
        return;
      }
      case QXL_DRAW_STROKE:
        d.u.stroke = stroke(std::get<Stroke>(payload));
        return;
      case QXL_DRAW_TEXT:
        d.u.text = text(std::get<Text>(payload));
        return;
      case QXL_DRAW_TRANSPARENT: {
        const auto& p = std::get<Transparent>(payload);
        d.u.transparent.src_bitmap = image(p.srcBitmap);
        d.u.transparent.src_area = toQxl(p.srcArea);
        d.u.transparent.src_color = p.srcColor;
        d.u.transparent.true_color = p.trueColor;
        return;
      }
      case QXL_DRAW_ALPHA_BLEND: {
        const auto& p = std::get<AlphaBlend>(payload);
        d.u.alpha_blend.alpha_flags = p.alphaFlags;
        d.u.alpha_blend.alpha = p.alpha;
        d.u.alpha_blend.src_bitmap = image(p.srcBitmap);
        d.u.alpha_blend.src_area = toQxl(p.srcArea);
        return;
      }
      case QXL_DRAW_COMPOSITE: {
        const auto& p = std::get<Composite>(payload);
        d.u.composite.flags = p.flags;
        d.u.composite.src = image(p.src);
        d.u.composite.src_transform = transform(p.srcTransform);
        d.u.composite.mask = image(p.mask);
        d.u.composite.mask_transform = transform(p.maskTransform);
        d.u.composite.src_origin = toQxl(p.srcOrigin);
        d.u.composite.mask_origin = toQxl(p.maskOrigin);
        return;
      }
    }
    SB_ASSERT(false, "DrawPayload index {} has no layout", payload.index());
  }

  // ---------------------------------------------------------------- commands

  uint64_t drawable(const Drawable& dr, uint64_t releaseId) {
    if (dr.compat) {
      fail(MaterialiseErrorKind::Unsupported,
           "compat drawable (QXLCompatDrawable, pre-surface guest drivers): this driver writes "
           "QXLDrawable only");
    }
    if (dr.type != dr.payload.index()) {
      fail(MaterialiseErrorKind::Unsupported,
           "drawable type " + std::to_string(dr.type) + " does not match its payload (index " +
               std::to_string(dr.payload.index()) + "); fix the command tree");
    }
    Place cmd = take(sizeof(QXLDrawable), "QXLDrawable");
    QXLDrawable d{};
    d.release_info.id = releaseId;
    d.surface_id = dr.surfaceId;
    d.effect = dr.effect;
    d.type = dr.type;
    d.self_bitmap = dr.selfBitmap;
    d.self_bitmap_area = toQxl(dr.selfBitmapArea);
    d.bbox = toQxl(dr.bbox);
    d.clip = clip(dr.clip);
    d.mm_time = dr.mmTime;
    for (size_t i = 0; i < 3; ++i) {
      d.surfaces_dest[i] = dr.surfacesDest[i];
      d.surfaces_rects[i] = toQxl(dr.surfacesRects[i]);
    }
    drawPayload(dr.payload, d);
    cmd.store(0, d);
    return cmd.addr;
  }

  uint64_t update(const UpdateCmd& u, uint64_t releaseId) {
    Place cmd = take(sizeof(QXLUpdateCmd), "QXLUpdateCmd");
    QXLUpdateCmd q{};
    q.release_info.id = releaseId;
    q.area = toQxl(u.area);
    q.update_id = u.updateId;
    q.surface_id = u.surfaceId;
    cmd.store(0, q);
    return cmd.addr;
  }

  uint64_t cursor(const CursorCmd& c, uint64_t releaseId) {
    Place cmd = take(sizeof(QXLCursorCmd), "QXLCursorCmd");
    QXLCursorCmd q{};
    q.release_info.id = releaseId;
    q.type = c.type;
    switch (c.type) {
      case QXL_CURSOR_SET:
        q.u.set.position = toQxl(c.position);
        q.u.set.visible = c.visible;
        q.u.set.shape = c.shape ? cursorShape(*c.shape) : 0;
        break;
      case QXL_CURSOR_MOVE:
        q.u.position = toQxl(c.position);
        break;
      case QXL_CURSOR_TRAIL:
        q.u.trail.length = c.trailLength;
        q.u.trail.frequency = c.trailFrequency;
        break;
      default:
        break;  // HIDE has no body
    }
    cmd.store(0, q);
    return cmd.addr;
  }

  uint64_t cursorShape(const CursorShape& sh) {
    Place p = withEmbeddedChain(sizeof(QXLCursor), offsetof(QXLCursor, chunk), sh.data,
                                sh.chunkSizes, "QXLCursor");
    QXLCursor header{};
    header.header.unique = sh.unique;
    header.header.type = sh.type;
    header.header.width = sh.width;
    header.header.height = sh.height;
    header.header.hot_spot_x = sh.hotSpotX;
    header.header.hot_spot_y = sh.hotSpotY;
    header.data_size = dataSize32(sh.data.size(), "QXLCursor");
    p.storeBytes(0, &header, offsetof(QXLCursor, chunk));
    return p.addr;
  }

  uint64_t message(const MessageCmd& m, uint64_t releaseId) {
    // +1: the NUL that ends the text.
    Place cmd = take(sizeof(QXLMessage) + uint64_t{m.text.size()} + 1, "QXLMessage");
    QXLMessage q{};
    q.release_info.id = releaseId;
    cmd.store(0, q);
    cmd.storeBytes(sizeof(QXLMessage), m.text.data(), m.text.size());
    return cmd.addr;
  }

  uint64_t surface(const SurfaceCmd& s, uint64_t releaseId) {
    Place cmd = take(sizeof(QXLSurfaceCmd), "QXLSurfaceCmd");
    QXLSurfaceCmd q{};
    q.release_info.id = releaseId;
    q.surface_id = s.surfaceId;
    q.type = s.type;
    q.flags = s.flags;
    if (s.type == QXL_SURFACE_CMD_CREATE) {
      q.u.surface_create.format = s.format;
      q.u.surface_create.width = s.width;
      q.u.surface_create.height = s.height;
      q.u.surface_create.stride = s.stride;
      uint64_t absStride = s.stride < 0 ? uint64_t{0} - static_cast<uint64_t>(int64_t{s.stride})
                                        : static_cast<uint64_t>(s.stride);
      uint64_t size = uint64_t{s.height} * absStride;  // 32x32 bits: no overflow
      bool keep = (s.flags & QXL_SURF_FLAG_KEEP_DATA) != 0;
      if (keep && s.data.size() != size) {
        fail(MaterialiseErrorKind::Unsupported,
             "KEEP_DATA surface " + std::to_string(s.surfaceId) + " carries " +
                 std::to_string(s.data.size()) + " bytes, height*|stride| is " +
                 std::to_string(size) + "; fix the command tree");
      }
      // See the file comment: data is the lowest address whatever the stride's sign.
      Place pixels = take(size, "surface pixels", Arena::Vram);
      if (keep) {
        pixels.storeBytes(0, s.data.data(), s.data.size());
      }
      q.u.surface_create.data = pixels.addr;
    }
    cmd.store(0, q);
    return cmd.addr;
  }

 private:
  GuestAllocator& allocator_;
  std::vector<GuestBlock> blocks_;
  std::optional<GuestBlock> surface_;
};

}  // namespace

std::variant<Materialised, MaterialiseError> materialise(const Command& command, uint64_t releaseId,
                                                         GuestAllocator& allocator) {
  Layout layout(allocator);
  try {
    return std::visit(
        [&](const auto& body) -> Materialised {
          using T = std::decay_t<decltype(body)>;
          if constexpr (std::is_same_v<T, Drawable>) {
            return layout.finish(layout.drawable(body, releaseId), QXL_CMD_DRAW);
          } else if constexpr (std::is_same_v<T, UpdateCmd>) {
            return layout.finish(layout.update(body, releaseId), QXL_CMD_UPDATE);
          } else if constexpr (std::is_same_v<T, CursorCmd>) {
            return layout.finish(layout.cursor(body, releaseId), QXL_CMD_CURSOR);
          } else if constexpr (std::is_same_v<T, MessageCmd>) {
            return layout.finish(layout.message(body, releaseId), QXL_CMD_MESSAGE);
          } else {
            static_assert(std::is_same_v<T, SurfaceCmd>);
            return layout.finish(layout.surface(body, releaseId), QXL_CMD_SURFACE);
          }
        },
        command.body);
  } catch (LayoutFailure& failure) {
    layout.freeAll();
    return std::move(failure.error);
  }
}

}  // namespace spicebox::guestsim
