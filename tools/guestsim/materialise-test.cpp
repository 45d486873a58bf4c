// Runs in: tests. Input: command trees built here and the shared recordings (read through
// RecordReader). Checks materialise() by reading the written guest memory back with its own
// small walker over the qxl_dev.h structs (independent of materialise.cpp) and comparing the
// rebuilt tree with the original, field by field (the tree types' operator==).

#include "tools/guestsim/materialise.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <map>

#include "tests/support/shared-recordings.h"

namespace spicebox::guestsim {
namespace {

// A copy of a field of a packed QXL structure: Catch2 binds CHECK's operands to references,
// which must not point at a misaligned field (UBSan).
template <typename T>
T v(T value) {
  return value;
}

// ---------------------------------------------------------------- test allocator

// Two arenas over std::vector<std::byte>, with a fake memslot encoding: guestAddr = base +
// offset, a different base per arena. Bump allocation; an arena rewinds (and re-zeroes) when its
// last live block is freed. `failAfter` makes the next allocations fail once that many more have
// succeeded (exhaustion on demand).
class TestAllocator : public GuestAllocator {
 public:
  static constexpr uint64_t RAM_BASE = 0x0100'0000'0000;
  static constexpr uint64_t VRAM_BASE = 0x0200'0000'0000;

  TestAllocator(size_t ramBytes, size_t vramBytes)
      : arenas_{ArenaMem{std::vector<std::byte>(ramBytes), RAM_BASE, 0, 0},
                ArenaMem{std::vector<std::byte>(vramBytes), VRAM_BASE, 0, 0}} {}

  std::optional<GuestBlock> allocate(Arena arena, size_t size) override {
    ++allocations;
    if (failAfter) {
      if (*failAfter == 0) {
        return std::nullopt;
      }
      --*failAfter;
    }
    ArenaMem& a = mem(arena);
    size_t align = arena == Arena::Vram ? 4096 : 8;
    size_t start = (a.used + align - 1) / align * align;
    if (size == 0 || start > a.bytes.size() || size > a.bytes.size() - start) {
      return std::nullopt;
    }
    a.used = start + size;
    ++a.live;
    GuestBlock block{a.bytes.data() + start, a.base + start, nextHandle_++, arena};
    live_[block.guestAddr] = Live{size, block.handle, arena};
    return block;
  }

  void free(const GuestBlock& block) override {
    auto it = live_.find(block.guestAddr);
    REQUIRE(it != live_.end());  // double free or a block we never handed out
    REQUIRE(it->second.handle == block.handle);
    live_.erase(it);
    ArenaMem& a = mem(block.arena);
    if (--a.live == 0) {
      std::fill(a.bytes.begin(), a.bytes.begin() + static_cast<ptrdiff_t>(a.used), std::byte{0});
      a.used = 0;
    }
  }

  size_t capacity(Arena arena) const override {
    return arena == Arena::Ram ? arenas_[0].bytes.size() : arenas_[1].bytes.size();
  }

  size_t live() const { return live_.size(); }

  // Host bytes of [addr, addr + size), which must lie inside one live block.
  const std::byte* at(uint64_t addr, uint64_t size) const {
    auto it = live_.upper_bound(addr);
    REQUIRE(it != live_.begin());
    --it;
    INFO("guest address 0x" << std::hex << addr << " size " << std::dec << size);
    REQUIRE(addr >= it->first);
    REQUIRE(size <= it->second.size);
    REQUIRE(addr - it->first <= it->second.size - size);
    const ArenaMem& a = arenas_[it->second.arena == Arena::Ram ? 0 : 1];
    return a.bytes.data() + (addr - a.base);
  }

  // Bytes from addr to the end of its live block.
  uint64_t bytesLeftInBlock(uint64_t addr) const {
    auto it = live_.upper_bound(addr);
    REQUIRE(it != live_.begin());
    --it;
    REQUIRE(addr - it->first <= it->second.size);
    return it->second.size - (addr - it->first);
  }

  template <typename T>
  T read(uint64_t addr) const {
    T v;
    std::memcpy(&v, at(addr, sizeof(T)), sizeof(T));
    return v;
  }

  std::optional<size_t> failAfter;
  size_t allocations = 0;

 private:
  struct ArenaMem {
    std::vector<std::byte> bytes;
    uint64_t base;
    size_t used;
    size_t live;
  };
  struct Live {
    uint64_t size;
    uint64_t handle;
    Arena arena;
  };
  ArenaMem& mem(Arena arena) { return arenas_[arena == Arena::Ram ? 0 : 1]; }

  ArenaMem arenas_[2];
  std::map<uint64_t, Live> live_;
  uint64_t nextHandle_ = 1;
};

// ---------------------------------------------------------------- walker

// Reads guest memory back into a Command tree, with the reader's conventions (chunkSizes empty
// for one chunk, chunkCount). Knows nothing of materialise.cpp beyond qxl_dev.h.
class Walker {
 public:
  explicit Walker(const TestAllocator& mem) : mem_(mem) {}

  // A QXLDataChunk chain starting at `addr`: the joined bytes and the sizes when more than one.
  void chain(uint64_t addr, std::vector<uint8_t>& data, std::vector<uint32_t>& sizes) {
    std::vector<uint32_t> all;
    uint64_t prev = 0;
    while (addr != 0) {
      REQUIRE(all.size() < 100000);  // a loop would never end
      auto header = mem_.read<QXLDataChunk>(addr);
      CHECK(v(header.prev_chunk) == prev);
      const auto* bytes =
          reinterpret_cast<const uint8_t*>(mem_.at(addr + sizeof(QXLDataChunk), header.data_size));
      data.insert(data.end(), bytes, bytes + header.data_size);
      all.push_back(header.data_size);
      prev = addr;
      addr = header.next_chunk;
    }
    REQUIRE(!all.empty());
    if (all.size() > 1) {
      sizes = all;
    }
  }

  std::optional<Image> image(uint64_t addr) {
    if (addr == 0) {
      return std::nullopt;
    }
    auto q = mem_.read<QXLImage>(addr);
    Image img;
    img.id = q.descriptor.id;
    img.type = q.descriptor.type;
    img.flags = q.descriptor.flags;
    img.width = q.descriptor.width;
    img.height = q.descriptor.height;
    switch (img.type) {
      case SPICE_IMAGE_TYPE_BITMAP: {
        Bitmap& bm = img.payload.emplace<Bitmap>();
        bm.format = q.bitmap.format;
        bm.flags = q.bitmap.flags;
        bm.x = q.bitmap.x;
        bm.y = q.bitmap.y;
        bm.stride = q.bitmap.stride;
        if (q.bitmap.palette != 0) {
          auto qp = mem_.read<QXLPalette>(q.bitmap.palette);
          Palette& pal = bm.palette.emplace();
          pal.unique = qp.unique;
          pal.entries.resize(qp.num_ents);
          std::memcpy(pal.entries.data(),
                      mem_.at(q.bitmap.palette + sizeof(QXLPalette), qp.num_ents * 4ull),
                      qp.num_ents * 4ull);
        }
        REQUIRE(v(q.bitmap.data) != 0);
        if (bm.flags & QXL_BITMAP_DIRECT) {
          uint64_t size = uint64_t{bm.y} * bm.stride;
          const auto* p = reinterpret_cast<const uint8_t*>(mem_.at(q.bitmap.data, size));
          bm.data.assign(p, p + size);
        } else {
          chain(q.bitmap.data, bm.data, bm.chunkSizes);
          bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
        }
        break;
      }
      case SPICE_IMAGE_TYPE_SURFACE:
        img.payload.emplace<SurfaceImage>().surfaceId = q.surface_image.surface_id;
        break;
      case SPICE_IMAGE_TYPE_QUIC: {
        QuicImage& quic = img.payload.emplace<QuicImage>();
        chain(addr + sizeof(QXLImageDescriptor) + sizeof(QXLQUICData), quic.data, quic.chunkSizes);
        CHECK(v(q.quic.data_size) == quic.data.size());
        break;
      }
      default:
        FAIL("image type " << int(img.type));
    }
    return img;
  }

  static Rect rect(const QXLRect& r) { return Rect{r.top, r.left, r.bottom, r.right}; }
  static Point point(const QXLPoint& p) { return Point{p.x, p.y}; }
  static Point16 point16(const QXLPoint16& p) { return Point16{p.x, p.y}; }

  Brush brush(const QXLBrush& q) {
    Brush b;
    b.type = q.type;
    if (q.type == SPICE_BRUSH_TYPE_SOLID) {
      b.color = q.u.color;
    } else if (q.type == SPICE_BRUSH_TYPE_PATTERN) {
      b.pattern = image(q.u.pattern.pat);
      b.patternPos = point(q.u.pattern.pos);
    }
    return b;
  }

  QMask mask(const QXLQMask& q) { return QMask{q.flags, point(q.pos), image(q.bitmap)}; }

  Clip clip(const QXLClip& q) {
    Clip c;
    c.type = q.type;
    if (q.type == SPICE_CLIP_TYPE_RECTS) {
      auto header = mem_.read<QXLClipRects>(q.data);
      std::vector<uint8_t> bytes;
      chain(q.data + offsetof(QXLClipRects, chunk), bytes, c.chunkSizes);
      REQUIRE(bytes.size() == v(header.num_rects) * sizeof(QXLRect));
      c.rects.resize(header.num_rects);
      for (size_t i = 0; i < c.rects.size(); ++i) {
        QXLRect r;
        std::memcpy(&r, bytes.data() + i * sizeof(QXLRect), sizeof(r));
        c.rects[i] = rect(r);
      }
    } else {
      CHECK(v(q.data) == 0);
    }
    return c;
  }

  template <typename T, typename Q>
  T copyLike(const Q& q) {
    T p;
    p.srcBitmap = image(q.src_bitmap);
    p.srcArea = rect(q.src_area);
    p.ropDescriptor = q.rop_descriptor;
    p.scaleMode = q.scale_mode;
    p.mask = mask(q.mask);
    return p;
  }

  std::optional<Transform> transform(uint64_t addr) {
    if (addr == 0) {
      return std::nullopt;
    }
    auto t = mem_.read<QXLTransform>(addr);
    return Transform{t.t00, t.t01, t.t02, t.t10, t.t11, t.t12};
  }

  Drawable drawable(uint64_t addr) {
    auto q = mem_.read<QXLDrawable>(addr);
    Drawable d;
    d.bbox = rect(q.bbox);
    d.clip = clip(q.clip);
    d.effect = q.effect;
    d.mmTime = q.mm_time;
    d.selfBitmap = q.self_bitmap;
    d.selfBitmapArea = rect(q.self_bitmap_area);
    d.surfaceId = q.surface_id;
    for (size_t i = 0; i < 3; ++i) {
      d.surfacesDest[i] = q.surfaces_dest[i];
      d.surfacesRects[i] = rect(q.surfaces_rects[i]);
    }
    d.type = q.type;
    switch (q.type) {
      case QXL_DRAW_NOP:
        d.payload = DrawNop{};
        break;
      case QXL_DRAW_FILL:
        d.payload = Fill{brush(q.u.fill.brush), q.u.fill.rop_descriptor, mask(q.u.fill.mask)};
        break;
      case QXL_DRAW_OPAQUE: {
        Opaque p;
        p.srcBitmap = image(q.u.opaque.src_bitmap);
        p.srcArea = rect(q.u.opaque.src_area);
        p.brush = brush(q.u.opaque.brush);
        p.ropDescriptor = q.u.opaque.rop_descriptor;
        p.scaleMode = q.u.opaque.scale_mode;
        p.mask = mask(q.u.opaque.mask);
        d.payload = p;
        break;
      }
      case QXL_DRAW_COPY:
        d.payload = copyLike<Copy>(q.u.copy);
        break;
      case QXL_COPY_BITS:
        d.payload = CopyBits{point(q.u.copy_bits.src_pos)};
        break;
      case QXL_DRAW_BLEND:
        d.payload = copyLike<Blend>(q.u.blend);
        break;
      case QXL_DRAW_BLACKNESS:
        d.payload = Blackness{mask(q.u.blackness.mask)};
        break;
      case QXL_DRAW_WHITENESS:
        d.payload = Whiteness{mask(q.u.whiteness.mask)};
        break;
      case QXL_DRAW_INVERS:
        d.payload = Invers{mask(q.u.invers.mask)};
        break;
      case QXL_DRAW_ROP3: {
        Rop3 p;
        p.srcBitmap = image(q.u.rop3.src_bitmap);
        p.srcArea = rect(q.u.rop3.src_area);
        p.brush = brush(q.u.rop3.brush);
        p.rop3 = q.u.rop3.rop3;
        p.scaleMode = q.u.rop3.scale_mode;
        p.mask = mask(q.u.rop3.mask);
        d.payload = p;
        break;
      }
      case QXL_DRAW_STROKE:
        d.payload = stroke(q.u.stroke);
        break;
      case QXL_DRAW_TEXT: {
        Text t;
        auto s = mem_.read<QXLString>(q.u.text.str);
        t.str.length = s.length;
        t.str.flags = s.flags;
        chain(q.u.text.str + offsetof(QXLString, chunk), t.str.data, t.str.chunkSizes);
        CHECK(v(s.data_size) == t.str.data.size());
        t.backArea = rect(q.u.text.back_area);
        t.foreBrush = brush(q.u.text.fore_brush);
        t.backBrush = brush(q.u.text.back_brush);
        t.foreMode = q.u.text.fore_mode;
        t.backMode = q.u.text.back_mode;
        d.payload = t;
        break;
      }
      case QXL_DRAW_TRANSPARENT: {
        Transparent p;
        p.srcBitmap = image(q.u.transparent.src_bitmap);
        p.srcArea = rect(q.u.transparent.src_area);
        p.srcColor = q.u.transparent.src_color;
        p.trueColor = q.u.transparent.true_color;
        d.payload = p;
        break;
      }
      case QXL_DRAW_ALPHA_BLEND: {
        AlphaBlend p;
        p.alphaFlags = q.u.alpha_blend.alpha_flags;
        p.alpha = q.u.alpha_blend.alpha;
        p.srcBitmap = image(q.u.alpha_blend.src_bitmap);
        p.srcArea = rect(q.u.alpha_blend.src_area);
        d.payload = p;
        break;
      }
      case QXL_DRAW_COMPOSITE: {
        Composite p;
        p.flags = q.u.composite.flags;
        p.src = image(q.u.composite.src);
        p.srcTransform = transform(q.u.composite.src_transform);
        p.mask = image(q.u.composite.mask);
        p.maskTransform = transform(q.u.composite.mask_transform);
        p.srcOrigin = point16(q.u.composite.src_origin);
        p.maskOrigin = point16(q.u.composite.mask_origin);
        d.payload = p;
        break;
      }
      default:
        FAIL("draw type " << int(q.type));
    }
    return d;
  }

  Stroke stroke(const QXLStroke& q) {
    Stroke s;
    auto header = mem_.read<QXLPath>(q.path);
    std::vector<uint8_t> bytes;
    chain(q.path + offsetof(QXLPath, chunk), bytes, s.pathChunkSizes);
    CHECK(v(header.data_size) == bytes.size());
    size_t at = 0;
    while (at < bytes.size()) {
      REQUIRE(bytes.size() - at >= 8);
      QXLPathSeg seg;
      std::memcpy(&seg, bytes.data() + at, sizeof(seg));
      at += sizeof(seg);
      REQUIRE(v(seg.count) <= (bytes.size() - at) / sizeof(QXLPointFix));
      PathSegment out;
      out.flags = seg.flags;
      for (uint32_t i = 0; i < seg.count; ++i) {
        QXLPointFix p;
        std::memcpy(&p, bytes.data() + at, sizeof(p));
        at += sizeof(p);
        out.points.push_back(Point{p.x, p.y});
      }
      s.path.push_back(out);
    }
    s.attrFlags = q.attr.flags;
    if (q.attr.flags & SPICE_LINE_FLAGS_STYLED) {
      REQUIRE(v(q.attr.style) != 0);
      s.style.resize(q.attr.style_nseg);
      std::memcpy(s.style.data(), mem_.at(q.attr.style, s.style.size() * 4ull), s.style.size() * 4);
    } else {
      CHECK(v(q.attr.style) == 0);
    }
    s.brush = brush(q.brush);
    s.foreMode = q.fore_mode;
    s.backMode = q.back_mode;
    return s;
  }

  CursorCmd cursor(uint64_t addr) {
    auto q = mem_.read<QXLCursorCmd>(addr);
    CursorCmd c;
    c.type = q.type;
    switch (q.type) {
      case QXL_CURSOR_SET:
        c.position = point16(q.u.set.position);
        c.visible = q.u.set.visible;
        if (q.u.set.shape != 0) {
          auto s = mem_.read<QXLCursor>(q.u.set.shape);
          CursorShape& sh = c.shape.emplace();
          sh.unique = s.header.unique;
          sh.type = static_cast<uint8_t>(s.header.type);
          sh.width = s.header.width;
          sh.height = s.header.height;
          sh.hotSpotX = s.header.hot_spot_x;
          sh.hotSpotY = s.header.hot_spot_y;
          chain(q.u.set.shape + offsetof(QXLCursor, chunk), sh.data, sh.chunkSizes);
          CHECK(v(s.data_size) == sh.data.size());
        }
        break;
      case QXL_CURSOR_MOVE:
        c.position = point16(q.u.position);
        break;
      case QXL_CURSOR_TRAIL:
        c.trailLength = q.u.trail.length;
        c.trailFrequency = q.u.trail.frequency;
        break;
      default:
        break;
    }
    return c;
  }

  SurfaceCmd surface(uint64_t addr, const std::optional<GuestBlock>& memory) {
    auto q = mem_.read<QXLSurfaceCmd>(addr);
    SurfaceCmd s;
    s.surfaceId = q.surface_id;
    s.type = q.type;
    s.flags = q.flags;
    if (q.type == QXL_SURFACE_CMD_CREATE) {
      s.format = q.u.surface_create.format;
      s.width = q.u.surface_create.width;
      s.height = q.u.surface_create.height;
      s.stride = q.u.surface_create.stride;
      REQUIRE(memory);
      // The pixels start at the block (lowest address), whatever the stride's sign.
      CHECK(v(q.u.surface_create.data) == memory->guestAddr);
      uint64_t size = uint64_t{s.height} * static_cast<uint64_t>(std::abs(int64_t{s.stride}));
      const auto* p = reinterpret_cast<const uint8_t*>(mem_.at(q.u.surface_create.data, size));
      if (s.flags & QXL_SURF_FLAG_KEEP_DATA) {
        s.data.assign(p, p + size);
      } else {
        CHECK(std::all_of(p, p + size, [](uint8_t b) { return b == 0; }));
      }
    } else {
      CHECK_FALSE(memory);
    }
    return s;
  }

  MessageCmd message(uint64_t addr) {
    uint64_t textAddr = addr + sizeof(QXLMessage);
    uint64_t left = mem_.bytesLeftInBlock(textAddr);
    const auto* p = reinterpret_cast<const uint8_t*>(mem_.at(textAddr, left));
    const auto* nul = static_cast<const uint8_t*>(std::memchr(p, 0, left));
    REQUIRE(nul != nullptr);  // spice-server needs the terminator
    return MessageCmd{std::vector<uint8_t>(p, nul)};
  }

  Command command(const Materialised& m) {
    Command c;
    switch (m.qxlType) {
      case QXL_CMD_DRAW:
        c.type = CommandType::Draw;
        c.body = drawable(m.commandAddr);
        break;
      case QXL_CMD_UPDATE: {
        c.type = CommandType::Update;
        auto q = mem_.read<QXLUpdateCmd>(m.commandAddr);
        c.body = UpdateCmd{rect(q.area), q.update_id, q.surface_id};
        break;
      }
      case QXL_CMD_CURSOR:
        c.type = CommandType::Cursor;
        c.body = cursor(m.commandAddr);
        break;
      case QXL_CMD_MESSAGE:
        c.type = CommandType::Message;
        c.body = message(m.commandAddr);
        break;
      case QXL_CMD_SURFACE:
        c.type = CommandType::Surface;
        c.body = surface(m.commandAddr, m.surfaceMemory);
        break;
      default:
        FAIL("QXLCommand type " << m.qxlType);
    }
    return c;
  }

 private:
  const TestAllocator& mem_;
};

// ---------------------------------------------------------------- helpers

constexpr size_t SMALL_RAM = 1 << 20;
constexpr size_t SMALL_VRAM = 4 << 20;

std::vector<uint8_t> bytesOf(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = static_cast<uint8_t>(seed + i * 7);
  }
  return v;
}

Materialised materialiseOk(const Command& cmd, uint64_t releaseId, TestAllocator& alloc) {
  auto result = materialise(cmd, releaseId, alloc);
  if (auto* err = std::get_if<MaterialiseError>(&result)) {
    FAIL("materialise failed: " << err->detail);
  }
  return std::get<Materialised>(std::move(result));
}

void freeAll(const Materialised& m, TestAllocator& alloc) {
  for (const auto& b : m.blocks) {
    alloc.free(b);
  }
  if (m.surfaceMemory) {
    alloc.free(*m.surfaceMemory);
  }
}

// Materialises, checks the release id and the blocks, walks memory back and compares, frees.
void roundTrip(const Command& cmd, uint64_t releaseId = 0x1122334455667788) {
  TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
  Materialised m = materialiseOk(cmd, releaseId, alloc);
  REQUIRE(!m.blocks.empty());
  CHECK(m.blocks.front().guestAddr == m.commandAddr);
  for (const auto& b : m.blocks) {
    CHECK(b.arena == Arena::Ram);
    CHECK(b.guestAddr % 8 == 0);
  }
  CHECK(alloc.live() == m.blocks.size() + (m.surfaceMemory ? 1 : 0));
  // QXLReleaseInfo is the first field of every command.
  CHECK(alloc.read<uint64_t>(m.commandAddr) == releaseId);
  CHECK(m.cursorRing == (cmd.type == CommandType::Cursor));
  CHECK(m.qxlType == static_cast<uint32_t>(cmd.type));
  Command back = Walker(alloc).command(m);
  CHECK(back == cmd);
  freeAll(m, alloc);
  CHECK(alloc.live() == 0);
}

Image bitmapImage(uint32_t w, uint32_t h, uint8_t format, uint32_t bpp, bool direct,
                  std::vector<uint32_t> chunkSizes, bool withPalette) {
  Image img;
  img.id = 0xabcdef0012345678;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.flags = QXL_IMAGE_CACHE;
  img.width = w;
  img.height = h;
  Bitmap& bm = img.payload.emplace<Bitmap>();
  bm.format = format;
  bm.flags = static_cast<uint8_t>(QXL_BITMAP_TOP_DOWN | (direct ? QXL_BITMAP_DIRECT : 0));
  bm.x = w;
  bm.y = h;
  bm.stride = (w * bpp + 7) / 8;
  bm.data = bytesOf(size_t{bm.y} * bm.stride, static_cast<uint8_t>(w));
  bm.chunkSizes = std::move(chunkSizes);
  bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
  if (withPalette) {
    Palette& pal = bm.palette.emplace();
    pal.unique = 77;
    for (uint32_t i = 0; i < (1u << bpp); ++i) {
      pal.entries.push_back(0xff000000u | i * 0x010101u);
    }
  }
  return img;
}

Image quicImage(std::vector<uint32_t> chunkSizes, size_t size) {
  Image img;
  img.id = 42;
  img.type = SPICE_IMAGE_TYPE_QUIC;
  img.width = 16;
  img.height = 16;
  auto& q = img.payload.emplace<QuicImage>();
  q.data = bytesOf(size, 3);
  q.chunkSizes = std::move(chunkSizes);
  return img;
}

Image surfaceImage(uint32_t id) {
  Image img;
  img.id = 7;
  img.type = SPICE_IMAGE_TYPE_SURFACE;
  img.width = 64;
  img.height = 32;
  img.payload.emplace<SurfaceImage>().surfaceId = id;
  return img;
}

Brush solid(uint32_t color) {
  Brush b;
  b.type = SPICE_BRUSH_TYPE_SOLID;
  b.color = color;
  return b;
}

Brush pattern() {
  Brush b;
  b.type = SPICE_BRUSH_TYPE_PATTERN;
  b.pattern = bitmapImage(8, 8, SPICE_BITMAP_FMT_32BIT, 32, true, {}, false);
  b.patternPos = Point{3, -4};
  return b;
}

QMask maskWith(bool withBitmap) {
  QMask m;
  m.flags = SPICE_MASK_FLAGS_INVERS;
  m.pos = Point{1, 2};
  if (withBitmap) {
    m.bitmap = bitmapImage(9, 3, SPICE_BITMAP_FMT_1BIT_BE, 1, false, {}, false);
  }
  return m;
}

Command draw(DrawPayload payload, Clip clip = {}) {
  Drawable d;
  d.bbox = Rect{10, 20, 110, 220};
  d.clip = std::move(clip);
  d.effect = QXL_EFFECT_OPAQUE;
  d.mmTime = 123456;
  d.selfBitmap = 0;
  d.selfBitmapArea = Rect{0, 0, 0, 0};
  d.surfaceId = 3;
  d.surfacesDest = {1, -1, 2};
  d.surfacesRects = {Rect{1, 2, 3, 4}, Rect{}, Rect{5, 6, 7, 8}};
  d.type = static_cast<uint8_t>(payload.index());
  d.payload = std::move(payload);
  return Command{CommandType::Draw, std::move(d)};
}

Clip clipRects(size_t n, std::vector<uint32_t> chunkSizes) {
  Clip c;
  c.type = SPICE_CLIP_TYPE_RECTS;
  for (size_t i = 0; i < n; ++i) {
    int32_t v = static_cast<int32_t>(i);
    c.rects.push_back(Rect{v, v + 1, v + 10, v + 11});
  }
  c.chunkSizes = std::move(chunkSizes);
  return c;
}

// A drawable touching most kinds of pointed-to object: clip rects in three chunks, a source
// bitmap with palette in three chunks, a pattern brush, a mask bitmap.
Command richDraw() {
  Opaque p;
  p.srcBitmap = bitmapImage(5, 6, SPICE_BITMAP_FMT_8BIT, 8, false, {10, 0, 20}, true);
  p.srcArea = Rect{0, 0, 6, 5};
  p.brush = pattern();
  p.ropDescriptor = SPICE_ROPD_OP_PUT;
  p.scaleMode = 1;
  p.mask = maskWith(true);
  return draw(p, clipRects(5, {16, 48, 16}));
}

// ---------------------------------------------------------------- tests

TEST_CASE("materialise-every-draw-type", "[materialise]") {
  SECTION("nop") {
    roundTrip(draw(DrawNop{}));
  }
  SECTION("fill-solid-with-mask-bitmap") {
    roundTrip(draw(Fill{solid(0x00ff8800), SPICE_ROPD_OP_PUT, maskWith(true)}));
  }
  SECTION("fill-pattern-brush") {
    roundTrip(draw(Fill{pattern(), SPICE_ROPD_OP_OR, maskWith(false)}));
  }
  SECTION("opaque-palette-bitmap-several-chunks-clip-rects") {
    roundTrip(richDraw());
  }
  SECTION("copy-direct-bitmap") {
    Copy p;
    p.srcBitmap = bitmapImage(7, 5, SPICE_BITMAP_FMT_32BIT, 32, true, {}, false);
    p.srcArea = Rect{0, 0, 5, 7};
    p.ropDescriptor = SPICE_ROPD_OP_PUT;
    roundTrip(draw(p));
  }
  SECTION("copy-4bit-palette-chunked") {
    Copy p;
    p.srcBitmap = bitmapImage(6, 4, SPICE_BITMAP_FMT_4BIT_LE, 4, false, {3, 3, 3, 3}, true);
    roundTrip(draw(p));
  }
  SECTION("copy-surface-image") {
    Copy p;
    p.srcBitmap = surfaceImage(5);
    p.srcArea = Rect{0, 0, 32, 64};
    roundTrip(draw(p, clipRects(1, {})));
  }
  SECTION("copy-quic-one-chunk") {
    Copy p;
    p.srcBitmap = quicImage({}, 100);
    roundTrip(draw(p));
  }
  SECTION("copy-quic-several-chunks") {
    Copy p;
    p.srcBitmap = quicImage({40, 1, 59}, 100);
    roundTrip(draw(p));
  }
  SECTION("copy-without-source") {
    roundTrip(draw(Copy{}));
  }
  SECTION("copy-bits") {
    roundTrip(draw(CopyBits{Point{-5, 9}}));
  }
  SECTION("blend") {
    Blend p;
    p.srcBitmap = bitmapImage(3, 3, SPICE_BITMAP_FMT_24BIT, 24, false, {}, false);
    p.srcArea = Rect{0, 0, 3, 3};
    p.ropDescriptor = SPICE_ROPD_OP_AND;
    p.scaleMode = 1;
    p.mask = maskWith(true);
    roundTrip(draw(p));
  }
  SECTION("blackness") {
    roundTrip(draw(Blackness{maskWith(true)}));
  }
  SECTION("whiteness") {
    roundTrip(draw(Whiteness{maskWith(false)}));
  }
  SECTION("invers") {
    roundTrip(draw(Invers{maskWith(true)}));
  }
  SECTION("rop3") {
    Rop3 p;
    p.srcBitmap = bitmapImage(4, 4, SPICE_BITMAP_FMT_32BIT, 32, false, {32, 32}, false);
    p.srcArea = Rect{0, 0, 4, 4};
    p.brush = solid(0x123456);
    p.rop3 = 0xca;
    p.mask = maskWith(true);
    roundTrip(draw(p));
  }
  SECTION("stroke-styled-path-in-chunks") {
    Stroke s;
    s.path = {PathSegment{QXL_PATH_BEGIN, {Point{0, 0}, Point{160, 16}}},
              PathSegment{QXL_PATH_END | QXL_PATH_CLOSE, {Point{-16, 32}}}};
    // 2 headers + 3 points = 16 + 24 = 40 bytes; a boundary inside the first segment.
    s.pathChunkSizes = {12, 20, 8};
    s.attrFlags = SPICE_LINE_FLAGS_STYLED | SPICE_LINE_FLAGS_START_WITH_GAP;
    s.style = {16, 32, 48};
    s.brush = solid(0xff);
    s.foreMode = SPICE_ROPD_OP_PUT;
    s.backMode = SPICE_ROPD_OP_XOR;
    roundTrip(draw(s, clipRects(2, {})));
  }
  SECTION("stroke-unstyled") {
    Stroke s;
    s.path = {PathSegment{QXL_PATH_BEGIN | QXL_PATH_END, {Point{1, 2}, Point{3, 4}}}};
    s.brush = pattern();
    roundTrip(draw(s));
  }
  SECTION("text") {
    Text t;
    t.str.length = 2;
    t.str.flags = SPICE_STRING_FLAGS_RASTER_A1;
    t.str.data = bytesOf(50, 9);
    t.str.chunkSizes = {20, 30};
    t.backArea = Rect{1, 1, 20, 40};
    t.foreBrush = solid(0xffffff);
    t.backBrush = pattern();
    t.foreMode = 1;
    t.backMode = 2;
    roundTrip(draw(t));
  }
  SECTION("transparent") {
    Transparent p;
    p.srcBitmap = bitmapImage(2, 2, SPICE_BITMAP_FMT_16BIT, 16, true, {}, false);
    p.srcArea = Rect{0, 0, 2, 2};
    p.srcColor = 0xff00ff;
    p.trueColor = 0x00ff00;
    roundTrip(draw(p));
  }
  SECTION("alpha-blend") {
    AlphaBlend p;
    p.alphaFlags = SPICE_ALPHA_FLAGS_DEST_HAS_ALPHA;
    p.alpha = 200;
    p.srcBitmap = bitmapImage(2, 2, SPICE_BITMAP_FMT_RGBA, 32, false, {}, false);
    p.srcArea = Rect{0, 0, 2, 2};
    roundTrip(draw(p));
  }
  SECTION("composite-with-transforms-and-mask") {
    Composite p;
    p.flags = QXL_OP_OVER | (1u << 8);
    p.src = bitmapImage(4, 4, SPICE_BITMAP_FMT_RGBA, 32, true, {}, false);
    p.srcTransform = Transform{0x10000, 0, 5, 0, 0x10000, 7};
    p.mask = bitmapImage(4, 4, SPICE_BITMAP_FMT_8BIT_A, 8, false, {}, false);
    p.maskTransform = Transform{1, 2, 3, 4, 5, 6};
    p.srcOrigin = Point16{-1, 2};
    p.maskOrigin = Point16{3, -4};
    roundTrip(draw(p));
  }
  SECTION("composite-without-optional-parts") {
    Composite p;
    p.flags = QXL_OP_SOURCE;
    p.src = surfaceImage(2);
    roundTrip(draw(p));
  }
}

TEST_CASE("materialise-non-draw-commands", "[materialise]") {
  SECTION("update") {
    roundTrip(Command{CommandType::Update, UpdateCmd{Rect{1, 2, 3, 4}, 99, 7}}, 1);
  }
  SECTION("message-is-nul-terminated") {
    std::string text = "guest says hello";
    roundTrip(
        Command{CommandType::Message, MessageCmd{std::vector<uint8_t>(text.begin(), text.end())}});
  }
  SECTION("cursor-set-with-shape-in-chunks") {
    CursorCmd c;
    c.type = QXL_CURSOR_SET;
    c.position = Point16{100, -3};
    c.visible = 1;
    CursorShape& sh = c.shape.emplace();
    sh.unique = 555;
    sh.type = SPICE_CURSOR_TYPE_ALPHA;
    sh.width = 4;
    sh.height = 4;
    sh.hotSpotX = 1;
    sh.hotSpotY = 2;
    sh.data = bytesOf(64, 1);
    sh.chunkSizes = {60, 4};
    roundTrip(Command{CommandType::Cursor, c});
  }
  SECTION("cursor-set-one-chunk") {
    CursorCmd c;
    c.type = QXL_CURSOR_SET;
    CursorShape& sh = c.shape.emplace();
    sh.type = SPICE_CURSOR_TYPE_MONO;
    sh.width = 8;
    sh.height = 8;
    sh.data = bytesOf(16, 5);
    roundTrip(Command{CommandType::Cursor, c});
  }
  SECTION("cursor-move") {
    CursorCmd c;
    c.type = QXL_CURSOR_MOVE;
    c.position = Point16{5, 6};
    roundTrip(Command{CommandType::Cursor, c});
  }
  SECTION("cursor-hide") {
    CursorCmd c;
    c.type = QXL_CURSOR_HIDE;
    roundTrip(Command{CommandType::Cursor, c});
  }
  SECTION("cursor-trail") {
    CursorCmd c;
    c.type = QXL_CURSOR_TRAIL;
    c.trailLength = 4;
    c.trailFrequency = 9;
    roundTrip(Command{CommandType::Cursor, c});
  }
  SECTION("surface-create-keep-data-negative-stride") {
    SurfaceCmd s;
    s.surfaceId = 4;
    s.type = QXL_SURFACE_CMD_CREATE;
    s.flags = QXL_SURF_FLAG_KEEP_DATA;
    s.format = SPICE_SURFACE_FMT_32_xRGB;
    s.width = 10;
    s.height = 7;
    s.stride = -40;
    s.data = bytesOf(280, 11);
    roundTrip(Command{CommandType::Surface, s});
  }
  SECTION("surface-create-without-data-is-zeroed") {
    SurfaceCmd s;
    s.surfaceId = 1;
    s.type = QXL_SURFACE_CMD_CREATE;
    s.format = SPICE_SURFACE_FMT_8_A;
    s.width = 33;
    s.height = 5;
    s.stride = 36;
    roundTrip(Command{CommandType::Surface, s});
  }
  SECTION("surface-destroy-needs-no-memory") {
    SurfaceCmd s;
    s.surfaceId = 4;
    s.type = QXL_SURFACE_CMD_DESTROY;
    TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
    Materialised m = materialiseOk(Command{CommandType::Surface, s}, 5, alloc);
    CHECK(m.blocks.size() == 1);
    CHECK_FALSE(m.surfaceMemory);
    freeAll(m, alloc);
    roundTrip(Command{CommandType::Surface, s});
  }
}

TEST_CASE("materialise-surface-memory-is-vram-and-not-a-command-block", "[materialise]") {
  SurfaceCmd s;
  s.type = QXL_SURFACE_CMD_CREATE;
  s.format = SPICE_SURFACE_FMT_32_ARGB;
  s.width = 16;
  s.height = 16;
  s.stride = 64;
  TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
  Materialised m = materialiseOk(Command{CommandType::Surface, s}, 1, alloc);
  REQUIRE(m.surfaceMemory);
  CHECK(m.surfaceMemory->arena == Arena::Vram);
  CHECK(m.surfaceMemory->guestAddr >= TestAllocator::VRAM_BASE);
  for (const auto& b : m.blocks) {
    CHECK(b.handle != m.surfaceMemory->handle);
  }
  auto q = alloc.read<QXLSurfaceCmd>(m.commandAddr);
  CHECK(v(q.u.surface_create.data) == m.surfaceMemory->guestAddr);
  freeAll(m, alloc);
}

TEST_CASE("materialise-chunk-chain-links-prev-and-next", "[materialise]") {
  Copy p;
  p.srcBitmap = bitmapImage(4, 3, SPICE_BITMAP_FMT_32BIT, 32, false, {16, 16, 16}, false);
  TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
  Materialised m = materialiseOk(draw(p), 1, alloc);
  auto d = alloc.read<QXLDrawable>(m.commandAddr);
  auto img = alloc.read<QXLImage>(d.u.copy.src_bitmap);
  uint64_t first = img.bitmap.data;
  auto c0 = alloc.read<QXLDataChunk>(first);
  REQUIRE(v(c0.next_chunk) != 0);
  auto c1 = alloc.read<QXLDataChunk>(c0.next_chunk);
  REQUIRE(v(c1.next_chunk) != 0);
  auto c2 = alloc.read<QXLDataChunk>(c1.next_chunk);
  CHECK(v(c0.prev_chunk) == 0);
  CHECK(v(c1.prev_chunk) == first);
  CHECK(v(c2.prev_chunk) == v(c0.next_chunk));
  CHECK(v(c2.next_chunk) == 0);
  CHECK((v(c0.data_size) == 16 && v(c1.data_size) == 16 && v(c2.data_size) == 16));
  freeAll(m, alloc);
}

TEST_CASE("materialise-out-of-memory-midway-frees-everything", "[materialise]") {
  std::vector<Command> commands = {richDraw()};
  {
    SurfaceCmd s;
    s.type = QXL_SURFACE_CMD_CREATE;
    s.flags = QXL_SURF_FLAG_KEEP_DATA;
    s.format = SPICE_SURFACE_FMT_32_xRGB;
    s.width = 4;
    s.height = 4;
    s.stride = 16;
    s.data = bytesOf(64, 2);
    commands.push_back(Command{CommandType::Surface, s});
  }
  for (const Command& cmd : commands) {
    TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
    Materialised whole = materialiseOk(cmd, 1, alloc);
    size_t needed = alloc.allocations;
    freeAll(whole, alloc);
    REQUIRE(needed >= 2);
    for (size_t ok = 0; ok < needed; ++ok) {
      INFO("allocation " << ok << " of " << needed << " fails");
      alloc.failAfter = ok;
      auto result = materialise(cmd, 1, alloc);
      REQUIRE(std::holds_alternative<MaterialiseError>(result));
      CHECK(std::get<MaterialiseError>(result).kind == MaterialiseErrorKind::OutOfMemory);
      CHECK(alloc.live() == 0);
    }
    alloc.failAfter.reset();
    roundTrip(cmd);
  }
}

TEST_CASE("materialise-block-larger-than-arena-is-too-large", "[materialise]") {
  SurfaceCmd s;
  s.type = QXL_SURFACE_CMD_CREATE;
  s.format = SPICE_SURFACE_FMT_32_xRGB;
  s.width = 4096;
  s.height = 4096;
  s.stride = -16384;  // 64 MiB, the VRAM arena holds 4
  TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
  auto result = materialise(Command{CommandType::Surface, s}, 1, alloc);
  REQUIRE(std::holds_alternative<MaterialiseError>(result));
  CHECK(std::get<MaterialiseError>(result).kind == MaterialiseErrorKind::TooLarge);
  CHECK(alloc.live() == 0);

  Copy p;
  p.srcBitmap = bitmapImage(1024, 1024, SPICE_BITMAP_FMT_32BIT, 32, true, {}, false);  // 4 MiB
  result = materialise(draw(p), 1, alloc);
  REQUIRE(std::holds_alternative<MaterialiseError>(result));
  CHECK(std::get<MaterialiseError>(result).kind == MaterialiseErrorKind::TooLarge);
  CHECK(alloc.live() == 0);
}

TEST_CASE("materialise-inconsistent-trees-are-refused-without-leaks", "[materialise]") {
  TestAllocator alloc(SMALL_RAM, SMALL_VRAM);
  auto expectUnsupported = [&](const Command& cmd) {
    auto result = materialise(cmd, 1, alloc);
    REQUIRE(std::holds_alternative<MaterialiseError>(result));
    CHECK(std::get<MaterialiseError>(result).kind == MaterialiseErrorKind::Unsupported);
    CHECK_FALSE(std::get<MaterialiseError>(result).detail.empty());
    CHECK(alloc.live() == 0);
  };
  SECTION("compat-drawable") {
    Command cmd = draw(Fill{solid(1), 0, maskWith(true)});
    std::get<Drawable>(cmd.body).compat = true;
    expectUnsupported(cmd);
  }
  SECTION("chunk-sizes-short-of-the-data") {
    Copy p;
    p.srcBitmap = bitmapImage(4, 4, SPICE_BITMAP_FMT_32BIT, 32, false, {16, 16}, false);
    expectUnsupported(draw(p, clipRects(3, {})));
  }
  SECTION("chunk-sizes-beyond-the-data") {
    expectUnsupported(draw(Blackness{}, clipRects(1, {8, 16})));
  }
  SECTION("keep-data-surface-with-wrong-size") {
    SurfaceCmd s;
    s.type = QXL_SURFACE_CMD_CREATE;
    s.flags = QXL_SURF_FLAG_KEEP_DATA;
    s.height = 2;
    s.stride = 8;
    s.data = bytesOf(15, 0);
    expectUnsupported(Command{CommandType::Surface, s});
  }
  SECTION("draw-type-disagrees-with-payload") {
    Command cmd = draw(DrawNop{});
    std::get<Drawable>(cmd.body).type = QXL_DRAW_FILL;
    expectUnsupported(cmd);
  }
}

const std::filesystem::path RECORDINGS_DIR = SPICEBOX_RECORDINGS_DIR;

TEST_CASE("materialise-every-command-of-the-real-recordings", "[materialise][recordings]") {
  if (!test::recordingsPresent(RECORDINGS_DIR)) {
    return;
  }
  // Large enough for any command of the recordings (surfaces up to 1024x768x4 = 3 MiB).
  TestAllocator alloc(32 << 20, 64 << 20);
  // Command counts from the recordings' independent stats files.
  for (auto [name, expected] : {std::pair{"windows", 30142}, std::pair{"console", 17210}}) {
    INFO("recording " << name);
    auto opened = RecordReader::open((RECORDINGS_DIR / (std::string(name) + ".rec.xz")).string());
    REQUIRE(std::holds_alternative<std::unique_ptr<RecordReader>>(opened));
    auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
    size_t commands = 0;
    for (;;) {
      auto next = reader.next();
      if (std::holds_alternative<EndOfRecording>(next)) {
        break;
      }
      if (auto* err = std::get_if<RecordError>(&next)) {
        FAIL(err->toString());
      }
      auto& event = std::get<RecordEvent>(next);
      const auto* cmd = std::get_if<Command>(&event.body);
      if (!cmd) {
        continue;
      }
      INFO("event " << event.index);
      auto result = materialise(*cmd, event.index, alloc);
      if (auto* err = std::get_if<MaterialiseError>(&result)) {
        FAIL("materialise: " << err->detail);
      }
      const auto& m = std::get<Materialised>(result);
      REQUIRE(alloc.read<uint64_t>(m.commandAddr) == event.index);
      Command back = Walker(alloc).command(m);
      REQUIRE(back == *cmd);
      freeAll(m, alloc);
      REQUIRE(alloc.live() == 0);
      ++commands;
    }
    CHECK(commands == static_cast<size_t>(expected));
  }
}

}  // namespace
}  // namespace spicebox::guestsim
