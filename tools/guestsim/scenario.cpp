// Runs in: spicebox-guestsim (developer tool and test peer, unsandboxed).
// Input: ScenarioOptions from a command line (trusted) and nothing else: scenarios are pure
// generators with no I/O. Output: a command stream a real QXL driver could send, so that the
// recorder's format, libspice-server's replayer and our renderer all see plausible guests:
//   - every bbox lies inside its target surface, every source area inside its source;
//   - offscreen surfaces are created (QXL_SURFACE_CMD_CREATE) before use, destroyed after;
//   - bitmaps have stride >= the format's row size, data of y*stride bytes, a palette exactly
//     when the format needs one; masks are 1-bit bitmaps covering the bbox;
//   - text strings are SPICE_STRING_FLAGS_RASTER_A1 glyphs that lie inside the bbox.
// Numbers are integer arithmetic on our own counters (and std::mt19937_64 for stress, reduced
// with `%` rather than std::uniform_int_distribution, whose output is library-defined): the same
// options give the same stream on every machine.

#include "tools/guestsim/scenario.h"
#include "renderer/qxl-formats.h"
#include "tools/guestsim/hostile-scenario.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <random>
#include <span>
#include <stdexcept>

namespace spicebox::guestsim {

namespace {

// ---------------------------------------------------------------- building blocks

// pixman's PIXMAN_OP_OVER, the operator QXL_DRAW_COMPOSITE carries in SPICE_COMPOSITE_OP0..7.
constexpr uint32_t PIXMAN_OP_OVER_VALUE = 3;
// QXLDevSurfaceCreate.mouse_mode as QEMU sets it (server mouse mode).
constexpr uint32_t PRIMARY_MOUSE_MODE = 1;
// Raster glyphs used for all text: 8x12, 1 bit per pixel (one byte per row).
constexpr int32_t GLYPH_W = 8, GLYPH_H = 12;
// A 16.16 fixed-point 1.0, for SpiceTransform.
constexpr uint32_t FIXED_ONE = 1u << 16;

Rect rectXYWH(int32_t x, int32_t y, int32_t w, int32_t h) {
  return Rect{y, x, y + h, x + w};
}
int32_t rectW(const Rect& r) {
  return r.right - r.left;
}
int32_t rectH(const Rect& r) {
  return r.bottom - r.top;
}

// Palette size for the indexed formats, 0 for the direct ones.
uint32_t paletteEntries(uint8_t format) {
  switch (format) {
    case SPICE_BITMAP_FMT_1BIT_LE:
    case SPICE_BITMAP_FMT_1BIT_BE:
      return 2;
    case SPICE_BITMAP_FMT_4BIT_LE:
    case SPICE_BITMAP_FMT_4BIT_BE:
      return 16;
    case SPICE_BITMAP_FMT_8BIT:
      return 256;
    default:
      return 0;
  }
}

// Row size in bytes of an offscreen surface: pixman wants 4-byte aligned rows.
uint32_t surfaceStride(uint32_t format, uint32_t width) {
  uint32_t bits = format == SPICE_SURFACE_FMT_1_A                                            ? 1
                  : format == SPICE_SURFACE_FMT_8_A                                          ? 8
                  : format == SPICE_SURFACE_FMT_16_555 || format == SPICE_SURFACE_FMT_16_565 ? 16
                                                                                             : 32;
  return (width * bits + 31) / 32 * 4;
}

// A deterministic colour for pixel (x, y) of picture `seed`: diagonal bands, so that every
// bitmap looks different and scrolling or scaling is visible.
uint32_t patternColor(uint32_t x, uint32_t y, uint32_t seed) {
  uint32_t band = ((x + y) / 8 + seed) % 6;
  static const uint32_t COLORS[6] = {0x3465a4, 0xf57900, 0x73d216, 0xcc0000, 0xedd400, 0x75507b};
  uint32_t c = COLORS[band];
  return ((x * 3 + y * 5 + seed * 7) & 1) ? (c & 0xfefefe) >> 1 : c;
}

// Pixel bytes of a bitmap in `format`, rows of `stride` bytes (padding bytes zero).
std::vector<uint8_t> bitmapPixels(uint8_t format, uint32_t w, uint32_t h, uint32_t stride,
                                  uint32_t seed) {
  std::vector<uint8_t> data(size_t{h} * stride, 0);
  for (uint32_t y = 0; y < h; ++y) {
    uint8_t* row = data.data() + size_t{y} * stride;
    for (uint32_t x = 0; x < w; ++x) {
      uint32_t c = patternColor(x, y, seed);
      uint32_t index = ((x + y) / 4 + seed) & 0xff;
      switch (format) {
        case SPICE_BITMAP_FMT_1BIT_LE:
          row[x / 8] |= static_cast<uint8_t>((index & 1) << (x % 8));
          break;
        case SPICE_BITMAP_FMT_1BIT_BE:
          row[x / 8] |= static_cast<uint8_t>((index & 1) << (7 - x % 8));
          break;
        case SPICE_BITMAP_FMT_4BIT_LE:
          row[x / 2] |= static_cast<uint8_t>((index & 0xf) << (x % 2 ? 4 : 0));
          break;
        case SPICE_BITMAP_FMT_4BIT_BE:
          row[x / 2] |= static_cast<uint8_t>((index & 0xf) << (x % 2 ? 0 : 4));
          break;
        case SPICE_BITMAP_FMT_8BIT:
          row[x] = static_cast<uint8_t>(index);
          break;
        case SPICE_BITMAP_FMT_8BIT_A:
          row[x] = static_cast<uint8_t>((x * 255) / (w > 1 ? w - 1 : 1));
          break;
        case SPICE_BITMAP_FMT_16BIT: {  // x555, little-endian
          uint16_t v = static_cast<uint16_t>(((c >> 19) & 0x1f) << 10 | ((c >> 11) & 0x1f) << 5 |
                                             ((c >> 3) & 0x1f));
          row[x * 2] = static_cast<uint8_t>(v);
          row[x * 2 + 1] = static_cast<uint8_t>(v >> 8);
          break;
        }
        case SPICE_BITMAP_FMT_24BIT:
          row[x * 3] = static_cast<uint8_t>(c);
          row[x * 3 + 1] = static_cast<uint8_t>(c >> 8);
          row[x * 3 + 2] = static_cast<uint8_t>(c >> 16);
          break;
        case SPICE_BITMAP_FMT_RGBA: {  // premultiplied ARGB, alpha falling along the row
          uint32_t a = 255 - (x * 255) / (w > 1 ? w - 1 : 1) / 2;
          row[x * 4] = static_cast<uint8_t>((c & 0xff) * a / 255);
          row[x * 4 + 1] = static_cast<uint8_t>(((c >> 8) & 0xff) * a / 255);
          row[x * 4 + 2] = static_cast<uint8_t>(((c >> 16) & 0xff) * a / 255);
          row[x * 4 + 3] = static_cast<uint8_t>(a);
          break;
        }
        default:  // 32BIT: xRGB, the x byte written as 0xff like X servers do
          row[x * 4] = static_cast<uint8_t>(c);
          row[x * 4 + 1] = static_cast<uint8_t>(c >> 8);
          row[x * 4 + 2] = static_cast<uint8_t>(c >> 16);
          row[x * 4 + 3] = 0xff;
          break;
      }
    }
  }
  return data;
}

// Splits `size` bytes into `chunks` QXLDataChunk sizes (empty for one chunk, as Bitmap wants).
std::vector<uint32_t> chunkSizesFor(size_t size, uint32_t chunks) {
  chunks = static_cast<uint32_t>(std::min<size_t>(chunks, size));
  if (chunks <= 1) {
    return {};
  }
  std::vector<uint32_t> sizes;
  size_t left = size;
  for (uint32_t i = 0; i < chunks; ++i) {
    size_t part = i + 1 == chunks ? left : size / chunks + (i % 2 ? 3 : 0);
    part = std::min(part, left - (chunks - i - 1));  // every chunk keeps at least one byte
    sizes.push_back(static_cast<uint32_t>(part));
    left -= part;
  }
  return sizes;
}

// Shared by all scenarios: image/palette/cursor ids and the command constructors.
class Builder {
 public:
  // A bitmap image; `chunks` > 1 splits its data into that many QXLDataChunks.
  Image bitmap(uint8_t format, uint32_t w, uint32_t h, uint32_t seed, uint32_t chunks = 1) {
    Image img;
    img.id = nextImageId_++;
    img.type = SPICE_IMAGE_TYPE_BITMAP;
    img.width = w;
    img.height = h;
    Bitmap& bm = img.payload.emplace<Bitmap>();
    bm.format = format;
    bm.flags = QXL_BITMAP_TOP_DOWN;
    bm.x = w;
    bm.y = h;
    bm.stride = (w * qxlcmd::bitmapFormatBits(format) + 7) / 8;
    if (uint32_t n = paletteEntries(format)) {
      Palette& pal = bm.palette.emplace();
      pal.unique = nextPaletteId_++;
      for (uint32_t i = 0; i < n; ++i) {
        pal.entries.push_back(n == 2 ? (i ? 0xffffff : 0x202020) : patternColor(i * 8, 0, seed));
      }
    }
    bm.data = bitmapPixels(format, w, h, bm.stride, seed);
    bm.chunkSizes = chunkSizesFor(bm.data.size(), chunks);
    bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
    return img;
  }

  // A 1-bit mask covering w x h: a disc, so its edge is visible.
  QMask mask(uint32_t w, uint32_t h, bool invert) {
    QMask m;
    m.flags = invert ? SPICE_MASK_FLAGS_INVERS : 0;
    Image img = bitmap(SPICE_BITMAP_FMT_1BIT_BE, w, h, 0);
    Bitmap& bm = std::get<Bitmap>(img.payload);
    std::fill(bm.data.begin(), bm.data.end(), 0);
    int64_t cx = w / 2, cy = h / 2, r2 = int64_t{std::min(w, h)} * std::min(w, h) / 4;
    for (uint32_t y = 0; y < h; ++y) {
      for (uint32_t x = 0; x < w; ++x) {
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r2) {
          bm.data[size_t{y} * bm.stride + x / 8] |= static_cast<uint8_t>(0x80 >> (x % 8));
        }
      }
    }
    m.bitmap = std::move(img);
    return m;
  }

  static Image surfaceImage(uint32_t id, uint32_t w, uint32_t h) {
    Image img;
    img.id = 0;  // never cached: the surface changes
    img.type = SPICE_IMAGE_TYPE_SURFACE;
    img.width = w;
    img.height = h;
    img.payload = SurfaceImage{id};
    return img;
  }

  static Brush solid(uint32_t color) {
    Brush b;
    b.type = SPICE_BRUSH_TYPE_SOLID;
    b.color = color;
    return b;
  }
  Brush pattern(uint32_t seed) {
    Brush b;
    b.type = SPICE_BRUSH_TYPE_PATTERN;
    b.pattern = bitmap(SPICE_BITMAP_FMT_32BIT, 8, 8, seed);
    b.patternPos = Point{static_cast<int32_t>(seed % 8), 0};
    return b;
  }

  static Command draw(uint32_t surfaceId, const Rect& bbox, DrawPayload payload,
                      uint8_t effect = QXL_EFFECT_OPAQUE) {
    Drawable d;
    d.bbox = bbox;
    d.clip.type = SPICE_CLIP_TYPE_NONE;
    d.effect = effect;
    d.surfaceId = surfaceId;
    d.type = static_cast<uint8_t>(payload.index());
    d.payload = std::move(payload);
    Command c;
    c.type = CommandType::Draw;
    c.body = std::move(d);
    return c;
  }
  // Records the surface a drawable reads from, as drivers do, so the server orders the read
  // after the surface's pending draws.
  static void dependsOn(Command& cmd, uint32_t surfaceId, const Rect& area) {
    Drawable& d = std::get<Drawable>(cmd.body);
    d.surfacesDest[0] = static_cast<int32_t>(surfaceId);
    d.surfacesRects[0] = area;
  }
  static void clipTo(Command& cmd, std::vector<Rect> rects) {
    Drawable& d = std::get<Drawable>(cmd.body);
    d.clip.type = SPICE_CLIP_TYPE_RECTS;
    d.clip.rects = std::move(rects);
  }

  static Command fill(uint32_t surfaceId, const Rect& bbox, Brush brush) {
    Fill f;
    f.brush = std::move(brush);
    f.ropDescriptor = SPICE_ROPD_OP_PUT;
    return draw(surfaceId, bbox, std::move(f));
  }
  static Command copy(uint32_t surfaceId, const Rect& bbox, Image src, const Rect& srcArea) {
    Copy c;
    c.srcBitmap = std::move(src);
    c.srcArea = srcArea;
    c.ropDescriptor = SPICE_ROPD_OP_PUT;
    c.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;
    return draw(surfaceId, bbox, std::move(c));
  }
  // COPY of a whole offscreen surface (or part of it) onto another surface.
  static Command copyFromSurface(uint32_t surfaceId, const Rect& bbox, uint32_t srcId,
                                 uint32_t srcW, uint32_t srcH, const Rect& srcArea) {
    Command cmd = copy(surfaceId, bbox, surfaceImage(srcId, srcW, srcH), srcArea);
    dependsOn(cmd, srcId, srcArea);
    return cmd;
  }
  static Command copyBits(uint32_t surfaceId, const Rect& bbox, Point srcPos) {
    return draw(surfaceId, bbox, CopyBits{srcPos});
  }

  // `text` glyphs in one row starting at the bbox's top-left, `advance` apart (less than
  // GLYPH_W: they overlap); the bbox must hold them. `rasterFlags`: SPICE_STRING_FLAGS_RASTER_A1,
  // _A4 or _A8 (anti-aliased glyphs: coverage fading out around each set pixel).
  Command text(uint32_t surfaceId, const Rect& bbox, std::string_view chars, uint32_t color,
               uint32_t rasterFlags = SPICE_STRING_FLAGS_RASTER_A1, int32_t advance = GLYPH_W) {
    Text t;
    t.str.length = static_cast<uint16_t>(chars.size());
    t.str.flags = static_cast<uint8_t>(rasterFlags);
    const unsigned bpp = rasterFlags == SPICE_STRING_FLAGS_RASTER_A8   ? 8
                         : rasterFlags == SPICE_STRING_FLAGS_RASTER_A4 ? 4
                                                                       : 1;
    int32_t x = bbox.left;
    for (char ch : chars) {
      appendGlyph(t.str.data, Point{x, bbox.top + GLYPH_H}, static_cast<uint8_t>(ch), bpp);
      x += advance;
    }
    t.backArea = bbox;
    t.foreBrush = solid(color);
    t.backBrush.type = SPICE_BRUSH_TYPE_NONE;
    t.foreMode = SPICE_ROPD_OP_PUT;
    t.backMode = SPICE_ROPD_OP_PUT;
    return draw(surfaceId, bbox, std::move(t), QXL_EFFECT_BLEND);
  }

  static Command surfaceCreate(uint32_t id, uint32_t format, uint32_t w, uint32_t h) {
    SurfaceCmd s;
    s.surfaceId = id;
    s.type = QXL_SURFACE_CMD_CREATE;
    s.format = format;
    s.width = w;
    s.height = h;
    s.stride = static_cast<int32_t>(surfaceStride(format, w));
    Command c;
    c.type = CommandType::Surface;
    c.body = std::move(s);
    return c;
  }
  static Command surfaceDestroy(uint32_t id) {
    SurfaceCmd s;
    s.surfaceId = id;
    s.type = QXL_SURFACE_CMD_DESTROY;
    Command c;
    c.type = CommandType::Surface;
    c.body = std::move(s);
    return c;
  }

  static Command cursor(CursorCmd cmd) {
    Command c;
    c.type = CommandType::Cursor;
    c.body = std::move(cmd);
    return c;
  }
  // SET with a 32x32 premultiplied ARGB shape: kind 0 an arrow, 1 an I-beam, 2 a hand-ish blob.
  static Command cursorSetAlpha(Point16 at, uint32_t kind) {
    CursorCmd cmd;
    cmd.type = QXL_CURSOR_SET;
    cmd.position = at;
    cmd.visible = 1;
    CursorShape& sh = cmd.shape.emplace();
    sh.unique = 0x5b0c0000 + kind;  // same shape, same unique: the server may cache it
    sh.type = SPICE_CURSOR_TYPE_ALPHA;
    sh.width = sh.height = 32;
    sh.hotSpotX = kind == 1 ? 4 : 0;
    sh.hotSpotY = kind == 1 ? 8 : 0;
    sh.data.assign(32 * 32 * 4, 0);
    for (int32_t y = 0; y < 32; ++y) {
      for (int32_t x = 0; x < 32; ++x) {
        bool in = kind == 0   ? (x <= y / 2 + 1 && y < 24)
                  : kind == 1 ? ((x >= 3 && x <= 5 && y < 16) || ((y == 0 || y == 15) && x < 9))
                              : ((x - 12) * (x - 12) + (y - 12) * (y - 12) < 100);
        bool edge = kind == 0 && in && (x == 0 || x == y / 2 + 1 || y == 23);
        if (in) {
          uint32_t v = edge ? 0xff000000 : 0xffffffff;
          std::memcpy(&sh.data[size_t(y * 32 + x) * 4], &v, 4);
        }
      }
    }
    return cursor(std::move(cmd));
  }
  // SET with a 16x16 monochrome shape (AND mask then XOR mask), split into two chunks.
  static Command cursorSetMono(Point16 at) {
    CursorCmd cmd;
    cmd.type = QXL_CURSOR_SET;
    cmd.position = at;
    cmd.visible = 1;
    CursorShape& sh = cmd.shape.emplace();
    sh.unique = 0x5b0c1000;
    sh.type = SPICE_CURSOR_TYPE_MONO;
    sh.width = sh.height = 16;
    sh.hotSpotX = sh.hotSpotY = 8;
    sh.data.assign(2 * 16 * 2, 0);
    for (uint32_t y = 0; y < 16; ++y) {
      uint16_t andRow = (y == 7 || y == 8) ? 0x0000 : 0xfe7f;  // a cross: opaque where 0
      uint16_t xorRow = (y == 7 || y == 8) ? 0xffff : 0x0180;
      sh.data[y * 2] = static_cast<uint8_t>(andRow >> 8);
      sh.data[y * 2 + 1] = static_cast<uint8_t>(andRow);
      sh.data[32 + y * 2] = static_cast<uint8_t>(xorRow >> 8);
      sh.data[32 + y * 2 + 1] = static_cast<uint8_t>(xorRow);
    }
    sh.chunkSizes = {32, 32};
    return cursor(std::move(cmd));
  }
  static Command cursorMove(Point16 at) {
    CursorCmd cmd;
    cmd.type = QXL_CURSOR_MOVE;
    cmd.position = at;
    return cursor(std::move(cmd));
  }
  static Command cursorHide() {
    CursorCmd cmd;
    cmd.type = QXL_CURSOR_HIDE;
    return cursor(std::move(cmd));
  }
  static Command cursorTrail(uint16_t length, uint16_t frequency) {
    CursorCmd cmd;
    cmd.type = QXL_CURSOR_TRAIL;
    cmd.trailLength = length;
    cmd.trailFrequency = frequency;
    return cursor(std::move(cmd));
  }

  static Command update(uint32_t surfaceId, const Rect& area, uint32_t updateId) {
    Command c;
    c.type = CommandType::Update;
    c.body = UpdateCmd{area, updateId, surfaceId};
    return c;
  }
  static Command message(std::string_view text) {
    Command c;
    c.type = CommandType::Message;
    c.body = MessageCmd{std::vector<uint8_t>(text.begin(), text.end())};
    return c;
  }

  static IoEvent createPrimary(uint32_t w, uint32_t h) {
    IoEvent io;
    io.message = WorkerMessage::CreatePrimarySurface;
    PrimarySurface& p = io.primary.emplace();
    p.width = w;
    p.height = h;
    p.stride = -static_cast<int32_t>(w * 4);  // bottom-up, like Xspice
    p.format = SPICE_SURFACE_FMT_32_xRGB;
    p.mouseMode = PRIMARY_MOUSE_MODE;
    p.type = QXL_SURF_TYPE_PRIMARY;
    p.data.assign(size_t{h} * w * 4, 0);  // the VRAM the surface starts from: black
    return io;
  }
  static IoEvent io(WorkerMessage message) {
    IoEvent e;
    e.message = message;
    return e;
  }

 private:
  // One QXLRasterGlyph (render_pos, glyph_origin, width, height, rows) for character `ch`,
  // drawn as a box with a pattern from the character code, so text looks like text.
  static void appendGlyph(std::vector<uint8_t>& out, Point renderPos, uint8_t ch,
                          unsigned bpp = 1) {
    auto put32 = [&out](int32_t v) {
      uint8_t b[4];
      std::memcpy(b, &v, 4);
      out.insert(out.end(), b, b + 4);
    };
    put32(renderPos.x);
    put32(renderPos.y);
    put32(0);         // glyph_origin.x
    put32(-GLYPH_H);  // glyph_origin.y: the glyph sits above the baseline
    uint16_t wh[2] = {static_cast<uint16_t>(GLYPH_W), static_cast<uint16_t>(GLYPH_H)};
    uint8_t b[4];
    std::memcpy(b, wh, 4);
    out.insert(out.end(), b, b + 4);
    auto bits = [ch](int32_t y) -> uint8_t {
      if (ch == ' ' || y < 2 || y >= GLYPH_H - 2) {
        return 0;
      }
      return static_cast<uint8_t>(0x42 | ((ch * (y + 3)) & 0x3c));
    };
    for (int32_t y = 0; y < GLYPH_H; ++y) {
      if (bpp == 1) {
        out.push_back(bits(y));
        continue;
      }
      // Full coverage on the set pixels, partial beside them, a little everywhere else.
      uint8_t cover[GLYPH_W];
      for (int32_t x = 0; x < GLYPH_W; ++x) {
        const auto on = [&](int32_t xx, int32_t yy) {
          return xx >= 0 && xx < GLYPH_W && ((bits(yy) >> (7 - xx)) & 1);
        };
        const unsigned max = bpp == 8 ? 255 : 15;
        cover[x] = static_cast<uint8_t>(
            on(x, y)                                                             ? max
            : on(x - 1, y) || on(x + 1, y) || on(x, y - 1) || on(x, y + 1)       ? max * 2 / 5
            : (static_cast<unsigned>(ch) * 7 + static_cast<unsigned>(x + y)) % 3 ? 0
                                                                                 : max / 15);
      }
      if (bpp == 8) {
        out.insert(out.end(), cover, cover + GLYPH_W);
      } else {
        for (int32_t x = 0; x < GLYPH_W; x += 2) {
          out.push_back(static_cast<uint8_t>(cover[x] << 4 | cover[x + 1]));
        }
      }
    }
  }

  uint64_t nextImageId_ = 1;
  uint64_t nextPaletteId_ = 1;
};

// Serves queued actions and stops after maxCommands commands (io events are not counted).
class QueuedScenario : public Scenario {
 public:
  explicit QueuedScenario(const ScenarioOptions& options) : maxCommands_(options.maxCommands) {}

  std::optional<GuestAction> next() override {
    if (maxCommands_ != 0 && commands_ >= maxCommands_) {
      return std::nullopt;
    }
    while (pending_.empty()) {
      if (!refill()) {
        return std::nullopt;
      }
    }
    GuestAction action = std::move(pending_.front());
    pending_.pop_front();
    if (std::holds_alternative<Command>(action)) {
      ++commands_;
    }
    return action;
  }

 protected:
  // Queues the next actions; false at the scenario's own end.
  virtual bool refill() = 0;
  void push(Command c) { pending_.emplace_back(std::move(c)); }
  void push(IoEvent e) { pending_.emplace_back(std::move(e)); }

  Builder b_;

 private:
  uint64_t maxCommands_;
  uint64_t commands_ = 0;
  std::deque<GuestAction> pending_;
};

// ---------------------------------------------------------------- desktop

// A triangle wave over [0, span]: position `t` of a back-and-forth walk.
int32_t bounce(uint64_t t, int32_t span) {
  if (span <= 0) {
    return 0;
  }
  uint64_t period = uint64_t(span) * 2;
  uint64_t p = t % period;
  return static_cast<int32_t>(p <= uint64_t(span) ? p : period - p);
}

class DesktopScenario final : public QueuedScenario {
 public:
  explicit DesktopScenario(const ScenarioOptions& options) : QueuedScenario(options) {}
  double commandsPerSecond() const override { return COMMANDS_PER_SECOND; }

 private:
  // ~11 commands a frame: about 55 frames a second, which reads as smooth animation.
  static constexpr double COMMANDS_PER_SECOND = 600;
  // The frame at which the guest switches from 1024x768 to 1280x800 (about a second in).
  static constexpr uint64_t RESOLUTION_CHANGE_FRAME = 60;
  static constexpr uint64_t RAISE_EVERY = 30, CURSOR_SHAPE_EVERY = 25, UPDATE_EVERY = 10;
  static constexpr int32_t TASKBAR_H = 32, LINE_H = 16, TERMINAL_LINES = 9;
  static constexpr int32_t TERMINAL_H = LINE_H * TERMINAL_LINES;
  static constexpr uint32_t DESKTOP_COLOR = 0x2e5e8c;

  struct Window {
    uint32_t surfaceId;
    int32_t w, h;
    uint32_t seed;
  };

  bool refill() override {
    if (frame_ == 0) {
      start(1024, 768);
      for (Window& win : windows_) {
        push(Builder::surfaceCreate(win.surfaceId, SPICE_SURFACE_FMT_32_xRGB, win.w, win.h));
        drawWindowContent(win, 0);
      }
    } else if (frame_ == RESOLUTION_CHANGE_FRAME) {
      push(Builder::io(WorkerMessage::DestroyPrimarySurface));
      start(1280, 800);
    }
    drawFrame();
    ++frame_;
    return true;
  }

  void start(uint32_t w, uint32_t h) {
    width_ = static_cast<int32_t>(w);
    height_ = static_cast<int32_t>(h);
    push(Builder::createPrimary(w, h));
    push(Builder::cursorSetAlpha(Point16{static_cast<int16_t>(w / 2), static_cast<int16_t>(h / 2)},
                                 cursorKind_));
    // Fresh primary: paint the terminal panel once, it is only scrolled afterwards.
    push(Builder::fill(0, terminalArea(), Builder::solid(0x101010)));
  }

  Rect desktopArea() const { return rectXYWH(0, 0, width_, height_ - TASKBAR_H - TERMINAL_H); }
  Rect terminalArea() const {
    return rectXYWH(0, height_ - TASKBAR_H - TERMINAL_H, width_, TERMINAL_H);
  }

  // Title bar, body, an icon bitmap and a status line that changes with `tick`.
  void drawWindowContent(const Window& win, uint64_t tick) {
    uint32_t id = win.surfaceId;
    push(Builder::fill(id, rectXYWH(0, 0, win.w, 20), Builder::solid(0x204a87)));
    push(Builder::fill(id, rectXYWH(0, 20, win.w, win.h - 20), Builder::solid(0xeeeeec)));
    push(Builder::copy(id, rectXYWH(8, 28, 32, 32),
                       b_.bitmap(SPICE_BITMAP_FMT_32BIT, 32, 32, win.seed + uint32_t(tick % 4)),
                       rectXYWH(0, 0, 32, 32)));
    int32_t barW = bounce(tick * 7, win.w - 60);
    push(Builder::fill(id, rectXYWH(48, 40, barW + 1, 12), Builder::solid(0x4e9a06)));
    std::string status = "win" + std::to_string(id) + " t=" + std::to_string(tick % 1000);
    push(b_.text(id, rectXYWH(8, win.h - 20, GLYPH_W * int32_t(status.size()), GLYPH_H), status,
                 0x000000));
  }

  void drawFrame() {
    uint64_t f = frame_;
    Rect desk = desktopArea();
    push(Builder::fill(0, desk, Builder::solid(DESKTOP_COLOR)));
    if (f % RAISE_EVERY == RAISE_EVERY - 1) {
      std::rotate(order_.begin(), order_.begin() + 1, order_.end());  // bottom window to top
    }
    if (f % 4 == 3) {
      const Window& win = windows_[(f / 4) % windows_.size()];
      drawWindowContent(win, f);
    }
    for (size_t i : order_) {
      const Window& win = windows_[i];
      int32_t x = bounce(f * (3 + i * 2) + i * 97, rectW(desk) - win.w);
      int32_t y = bounce(f * (2 + i) + i * 53, rectH(desk) - win.h);
      push(Builder::copyFromSurface(0, rectXYWH(x, y, win.w, win.h), win.surfaceId, win.w, win.h,
                                    rectXYWH(0, 0, win.w, win.h)));
    }
    // Terminal: scroll one line up, clear the bottom line, print a new one.
    Rect term = terminalArea();
    push(Builder::copyBits(0, rectXYWH(term.left, term.top, rectW(term), TERMINAL_H - LINE_H),
                           Point{term.left, term.top + LINE_H}));
    Rect last = rectXYWH(term.left, term.bottom - LINE_H, rectW(term), LINE_H);
    push(Builder::fill(0, last, Builder::solid(0x101010)));
    std::string line = "$ make -j2  [" + std::to_string(f) + "] spicebox frame ok";
    push(b_.text(0, rectXYWH(4, last.top + 2, GLYPH_W * int32_t(line.size()), GLYPH_H), line,
                 0x8ae234));
    // Taskbar and a blinking clock.
    Rect bar = rectXYWH(0, height_ - TASKBAR_H, width_, TASKBAR_H);
    push(Builder::fill(0, bar, Builder::solid(0x2e3436)));
    push(Builder::fill(0, rectXYWH(width_ - 72, bar.top + 8, 64, 16),
                       Builder::solid(f % 2 ? 0xfce94f : 0xc4a000)));
    // Cursor: wanders over the desktop, changes shape now and then.
    if (f % CURSOR_SHAPE_EVERY == CURSOR_SHAPE_EVERY - 1) {
      cursorKind_ = (cursorKind_ + 1) % 3;
      push(Builder::cursorSetAlpha(cursorAt(f), cursorKind_));
    } else {
      push(Builder::cursorMove(cursorAt(f)));
    }
    if (f % UPDATE_EVERY == UPDATE_EVERY - 1) {
      push(Builder::io(WorkerMessage::Update));
    }
  }

  Point16 cursorAt(uint64_t f) const {
    return Point16{static_cast<int16_t>(bounce(f * 11, width_ - 1)),
                   static_cast<int16_t>(bounce(f * 7, height_ - 1))};
  }

  uint64_t frame_ = 0;
  int32_t width_ = 0, height_ = 0;
  uint32_t cursorKind_ = 0;
  std::vector<Window> windows_{{1, 320, 240, 11}, {2, 280, 200, 22}, {3, 240, 180, 33}};
  std::vector<size_t> order_{0, 1, 2};  // bottom to top
};

// ---------------------------------------------------------------- all-draws

constexpr uint8_t ALL_BITMAP_FORMATS[] = {SPICE_BITMAP_FMT_1BIT_LE, SPICE_BITMAP_FMT_1BIT_BE,
                                          SPICE_BITMAP_FMT_4BIT_LE, SPICE_BITMAP_FMT_4BIT_BE,
                                          SPICE_BITMAP_FMT_8BIT,    SPICE_BITMAP_FMT_16BIT,
                                          SPICE_BITMAP_FMT_24BIT,   SPICE_BITMAP_FMT_32BIT,
                                          SPICE_BITMAP_FMT_RGBA,    SPICE_BITMAP_FMT_8BIT_A};
// What libspice-server's canvas takes as an image source (ScenarioOptions::referenceFormatsOnly).
constexpr uint8_t REFERENCE_BITMAP_FORMATS[] = {SPICE_BITMAP_FMT_1BIT_BE, SPICE_BITMAP_FMT_4BIT_BE,
                                                SPICE_BITMAP_FMT_8BIT,    SPICE_BITMAP_FMT_16BIT,
                                                SPICE_BITMAP_FMT_24BIT,   SPICE_BITMAP_FMT_32BIT,
                                                SPICE_BITMAP_FMT_RGBA};
std::span<const uint8_t> bitmapFormats(bool referenceOnly) {
  if (referenceOnly)
    return REFERENCE_BITMAP_FORMATS;
  return ALL_BITMAP_FORMATS;
}
constexpr uint32_t ALL_SURFACE_FORMATS[] = {SPICE_SURFACE_FMT_1_A,     SPICE_SURFACE_FMT_8_A,
                                            SPICE_SURFACE_FMT_16_555,  SPICE_SURFACE_FMT_16_565,
                                            SPICE_SURFACE_FMT_32_xRGB, SPICE_SURFACE_FMT_32_ARGB};
// What libspice-server's canvas draws on and reads from as a surface (it asserts on non-32 bpp
// surfaces in its blits): ScenarioOptions::referenceFormatsOnly.
constexpr uint32_t REFERENCE_SURFACE_FORMATS[] = {SPICE_SURFACE_FMT_32_xRGB,
                                                  SPICE_SURFACE_FMT_32_ARGB};
std::span<const uint32_t> surfaceFormats(bool referenceOnly) {
  if (referenceOnly)
    return REFERENCE_SURFACE_FORMATS;
  return ALL_SURFACE_FORMATS;
}
// Surface id (1-based position) of `format` in `formats`, or of the last one if absent.
// Whether ROP3 code `rop3` reads all three of pattern (0xf0), source (0xcc) and destination
// (0xaa): libspice-server's canvas (spice-common rop3.c) has handlers for exactly those 218 codes
// and aborts the server ("not implemented") on the 38 others (ScenarioOptions::
// referenceFormatsOnly).
bool rop3ReadsAllOperands(uint8_t rop3) {
  const bool readsPattern = ((rop3 >> 4) & 0x0f) != (rop3 & 0x0f);
  const bool readsSource = ((rop3 >> 2) & 0x33) != (rop3 & 0x33);
  const bool readsDest = ((rop3 >> 1) & 0x55) != (rop3 & 0x55);
  return readsPattern && readsSource && readsDest;
}
uint32_t surfaceIdOf(std::span<const uint32_t> formats, uint32_t format) {
  auto it = std::find(formats.begin(), formats.end(), format);
  return static_cast<uint32_t>((it == formats.end() ? formats.size() - 1 : it - formats.begin()) +
                               1);
}

std::vector<Point> pointsFix(std::initializer_list<Point> pts) {
  std::vector<Point> out;
  for (Point p : pts) {
    out.push_back(Point{p.x << 4, p.y << 4});  // QXLPointFix is 28.4 fixed point
  }
  return out;
}

class AllDrawsScenario final : public QueuedScenario {
 public:
  explicit AllDrawsScenario(const ScenarioOptions& options)
      : QueuedScenario(options),
        formats_(bitmapFormats(options.referenceFormatsOnly)),
        surfaceFormats_(surfaceFormats(options.referenceFormatsOnly)) {}
  double commandsPerSecond() const override { return 0; }

 private:
  static constexpr uint32_t W = 1024, H = 768;
  static constexpr int32_t CELL = 64;  // each test draw gets its own 64x64 cell of the primary

  Rect cell(int32_t n, int32_t w = 48, int32_t h = 48) const {
    int32_t perRow = int32_t(W) / CELL;
    return rectXYWH((n % perRow) * CELL + 4, (n / perRow) * CELL + 4, w, h);
  }

  bool refill() override {
    if (done_) {
      return false;
    }
    done_ = true;
    int32_t n = 0;
    push(Builder::createPrimary(W, H));
    push(Builder::fill(0, rectXYWH(0, 0, W, H), Builder::solid(0x808080)));

    // Every bitmap format, each as a COPY source; odd ones split into 3 chunks.
    uint32_t seed = 0;
    for (uint8_t fmt : formats_) {
      Rect r = cell(n++, 40, 30);
      push(Builder::copy(0, r, b_.bitmap(fmt, 40, 30, ++seed, fmt % 2 ? 3 : 1),
                         rectXYWH(0, 0, 40, 30)));
    }
    // A scaled COPY (source half the size of the bbox).
    push(Builder::copy(0, cell(n++), b_.bitmap(SPICE_BITMAP_FMT_32BIT, 24, 24, 5, 2),
                       rectXYWH(0, 0, 24, 24)));

    pushRasterOps(n);
    pushStrokesAndText(n);
    pushBlends(n);
    pushClipsMasksPatterns(n);
    pushSurfaces(n);

    // COPY_BITS: move the first row of cells one row down on the right side.
    push(Builder::copyBits(0, rectXYWH(512, 64, 256, 64), Point{0, 0}));

    push(Builder::cursorSetAlpha(Point16{100, 100}, 0));
    push(Builder::cursorMove(Point16{200, 150}));
    push(Builder::cursorSetMono(Point16{210, 160}));
    push(Builder::cursorTrail(4, 30));
    push(Builder::cursorHide());
    push(Builder::update(0, rectXYWH(0, 0, W, H), 1));
    push(Builder::message("spicebox guestsim all-draws: every draw type sent"));
    push(Builder::io(WorkerMessage::Update));
    for (uint32_t id = 1; id <= surfaceFormats_.size(); ++id) {
      push(Builder::surfaceDestroy(id));
    }
    return true;
  }

  void pushRasterOps(int32_t& n) {
    Opaque op;
    op.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_24BIT, 48, 48, 40);
    op.srcArea = rectXYWH(0, 0, 48, 48);
    op.brush = Builder::solid(0x00ff00);
    op.ropDescriptor = SPICE_ROPD_OP_PUT;
    op.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;
    push(Builder::draw(0, cell(n++), std::move(op)));

    Opaque opPat;
    opPat.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_8BIT, 48, 48, 41);
    opPat.srcArea = rectXYWH(0, 0, 48, 48);
    opPat.brush = b_.pattern(3);
    opPat.ropDescriptor = SPICE_ROPD_OP_PUT | SPICE_ROPD_INVERS_BRUSH;
    push(Builder::draw(0, cell(n++), std::move(opPat)));

    Blend bl;
    bl.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_32BIT, 48, 48, 42);
    bl.srcArea = rectXYWH(0, 0, 48, 48);
    bl.ropDescriptor = SPICE_ROPD_OP_XOR;
    bl.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;
    push(Builder::draw(0, cell(n++), std::move(bl), QXL_EFFECT_BLEND));

    push(Builder::draw(0, cell(n++), Blackness{}));
    push(Builder::draw(0, cell(n++), Whiteness{}));
    push(Builder::draw(0, cell(n++), Invers{}, QXL_EFFECT_REVERT_ON_DUP));

    Rop3 r3;
    r3.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_32BIT, 48, 48, 43);
    r3.srcArea = rectXYWH(0, 0, 48, 48);
    r3.brush = Builder::solid(0xff00ff);
    r3.rop3 = 0xca;  // DSPDxax: brush selects between source and destination
    r3.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;
    push(Builder::draw(0, cell(n++), std::move(r3), QXL_EFFECT_BLEND));
  }

  void pushStrokesAndText(int32_t& n) {
    Rect r = cell(n++);
    Stroke line;
    line.path.push_back(PathSegment{
        SPICE_PATH_BEGIN | SPICE_PATH_END,
        pointsFix({{r.left, r.top}, {r.right - 1, r.bottom - 1}, {r.left, r.bottom - 1}})});
    line.brush = Builder::solid(0xffffff);
    line.foreMode = SPICE_ROPD_OP_PUT;
    line.backMode = SPICE_ROPD_OP_PUT;
    push(Builder::draw(0, r, std::move(line), QXL_EFFECT_BLEND));

    r = cell(n++);
    Stroke styled;
    styled.path.push_back(PathSegment{
        SPICE_PATH_BEGIN | SPICE_PATH_END | SPICE_PATH_CLOSE,
        pointsFix(
            {{r.left + 2, r.top + 2}, {r.right - 3, r.top + 2}, {r.right - 3, r.bottom - 3}})});
    styled.path.push_back(
        PathSegment{SPICE_PATH_BEGIN | SPICE_PATH_END,
                    pointsFix({{r.left + 2, r.bottom - 3}, {r.right - 3, r.top}})});
    styled.pathChunkSizes = {20, 36};  // 32 + 24 path bytes; a chunk boundary inside segment one
    styled.attrFlags = SPICE_LINE_FLAGS_STYLED;
    styled.style = {4 << 4, 2 << 4, 1 << 4, 2 << 4};  // dash, gap, dot, gap (28.4)
    styled.brush = Builder::solid(0x000000);
    styled.foreMode = SPICE_ROPD_OP_PUT;
    styled.backMode = SPICE_ROPD_OP_PUT;
    push(Builder::draw(0, r, std::move(styled), QXL_EFFECT_BLEND));

    Rect tr = cell(n, 6 * GLYPH_W, GLYPH_H);
    n += 1;
    Command txt = b_.text(0, tr, "Spice!", 0xffff00);
    std::get<Text>(std::get<Drawable>(txt.body).payload).str.chunkSizes =
        chunkSizesFor(std::get<Text>(std::get<Drawable>(txt.body).payload).str.data.size(), 2);
    push(std::move(txt));
  }

  void pushBlends(int32_t& n) {
    Transparent tp;
    tp.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_32BIT, 48, 48, 44);
    tp.srcArea = rectXYWH(0, 0, 48, 48);
    tp.srcColor = patternColor(0, 0, 44);  // the first band becomes see-through
    tp.trueColor = tp.srcColor;
    push(Builder::draw(0, cell(n++), std::move(tp), QXL_EFFECT_BLEND));

    AlphaBlend ab;
    ab.alphaFlags = SPICE_ALPHA_FLAGS_SRC_SURFACE_HAS_ALPHA;
    ab.alpha = 255;
    ab.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_RGBA, 48, 48, 45);
    ab.srcArea = rectXYWH(0, 0, 48, 48);
    push(Builder::draw(0, cell(n++), std::move(ab), QXL_EFFECT_BLEND));

    AlphaBlend ab2;
    ab2.alpha = 128;
    ab2.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_32BIT, 32, 32, 46);
    ab2.srcArea = rectXYWH(0, 0, 32, 32);  // scaled up to the 48x48 bbox
    push(Builder::draw(0, cell(n++), std::move(ab2), QXL_EFFECT_BLEND));

    Composite cp;
    cp.flags = PIXMAN_OP_OVER_VALUE | SPICE_COMPOSITE_HAS_MASK | SPICE_COMPOSITE_HAS_SRC_TRANSFORM;
    cp.src = b_.bitmap(SPICE_BITMAP_FMT_RGBA, 48, 48, 47);
    cp.srcTransform = Transform{FIXED_ONE, 0, 0, 0, FIXED_ONE, 0};
    cp.mask = b_.bitmap(SPICE_BITMAP_FMT_8BIT_A, 48, 48, 48);
    push(Builder::draw(0, cell(n++), std::move(cp), QXL_EFFECT_BLEND));
  }

  void pushClipsMasksPatterns(int32_t& n) {
    push(Builder::fill(0, cell(n++), b_.pattern(7)));

    Rect r = cell(n++);
    Command clipped = Builder::fill(0, r, Builder::solid(0xff0000));
    Builder::clipTo(clipped, {rectXYWH(r.left, r.top, 16, 16), rectXYWH(r.left + 20, r.top, 16, 48),
                              rectXYWH(r.left, r.top + 30, 48, 10)});
    std::get<Drawable>(clipped.body).clip.chunkSizes = {16, 32};
    push(std::move(clipped));

    Fill masked;
    masked.brush = Builder::solid(0x0000ff);
    masked.ropDescriptor = SPICE_ROPD_OP_PUT;
    masked.mask = b_.mask(48, 48, false);
    push(Builder::draw(0, cell(n++), std::move(masked), QXL_EFFECT_BLEND));

    Copy maskedCopy;
    maskedCopy.srcBitmap = b_.bitmap(SPICE_BITMAP_FMT_32BIT, 48, 48, 49);
    maskedCopy.srcArea = rectXYWH(0, 0, 48, 48);
    maskedCopy.ropDescriptor = SPICE_ROPD_OP_PUT;
    maskedCopy.mask = b_.mask(48, 48, true);
    push(Builder::draw(0, cell(n++), std::move(maskedCopy), QXL_EFFECT_BLEND));

    Invers inv;
    inv.mask = b_.mask(48, 48, false);
    push(Builder::draw(0, cell(n++), std::move(inv), QXL_EFFECT_REVERT_ON_DUP));
  }

  // One offscreen surface per surface format: drawn to, then read as a source.
  void pushSurfaces(int32_t& n) {
    constexpr uint32_t SW = 48, SH = 48;
    uint32_t id = 1;
    for (uint32_t fmt : surfaceFormats_) {
      push(Builder::surfaceCreate(id, fmt, SW, SH));
      push(Builder::fill(id, rectXYWH(0, 0, SW, SH), Builder::solid(0x80ff8000 + id)));
      push(Builder::copy(id, rectXYWH(8, 8, 32, 32), b_.bitmap(SPICE_BITMAP_FMT_RGBA, 32, 32, id),
                         rectXYWH(0, 0, 32, 32)));
      ++id;
    }
    id = 1;
    for (size_t i = 0; i < surfaceFormats_.size(); ++i, ++id) {
      push(Builder::copyFromSurface(0, cell(n++), id, SW, SH, rectXYWH(0, 0, SW, SH)));
    }
    // Surface sources for the alpha paths too: ARGB over the primary through A8 (through the
    // ARGB surface itself with reference formats only).
    const uint32_t argb = surfaceIdOf(surfaceFormats_, SPICE_SURFACE_FMT_32_ARGB);
    const uint32_t a8 = surfaceIdOf(surfaceFormats_, SPICE_SURFACE_FMT_8_A);
    Composite cp;
    cp.flags = PIXMAN_OP_OVER_VALUE | SPICE_COMPOSITE_HAS_MASK;
    cp.src = Builder::surfaceImage(argb, SW, SH);
    cp.mask = Builder::surfaceImage(a8, SW, SH);
    Rect r = cell(n++);
    Command c = Builder::draw(0, r, std::move(cp), QXL_EFFECT_BLEND);
    Builder::dependsOn(c, argb, rectXYWH(0, 0, SW, SH));
    Drawable& d = std::get<Drawable>(c.body);
    d.surfacesDest[1] = static_cast<int32_t>(a8);
    d.surfacesRects[1] = rectXYWH(0, 0, SW, SH);
    push(std::move(c));

    AlphaBlend ab;
    ab.alphaFlags = SPICE_ALPHA_FLAGS_SRC_SURFACE_HAS_ALPHA;
    ab.alpha = 200;
    ab.srcBitmap = Builder::surfaceImage(argb, SW, SH);
    ab.srcArea = rectXYWH(0, 0, SW, SH);
    Command a = Builder::draw(0, cell(n++), std::move(ab), QXL_EFFECT_BLEND);
    Builder::dependsOn(a, argb, rectXYWH(0, 0, SW, SH));
    push(std::move(a));
  }

  bool done_ = false;
  std::span<const uint8_t> formats_;          // the bitmap formats of the COPY sources
  std::span<const uint32_t> surfaceFormats_;  // one offscreen surface of each
};

// ---------------------------------------------------------------- stress

class StressScenario final : public QueuedScenario {
 public:
  explicit StressScenario(const ScenarioOptions& options)
      : QueuedScenario(options),
        rng_(options.seed),
        rate_(options.rate > 0 ? options.rate : DEFAULT_RATE),
        referenceOnly_(options.referenceFormatsOnly),
        formats_(bitmapFormats(options.referenceFormatsOnly)),
        surfaceFormats_(surfaceFormats(options.referenceFormatsOnly)) {}
  double commandsPerSecond() const override { return rate_; }

 private:
  static constexpr double DEFAULT_RATE = 2000;
  static constexpr uint32_t W = 1024, H = 768;
  // At most this many offscreen surfaces alive, ids 1..MAX_SURFACE_ID.
  static constexpr size_t MAX_LIVE_SURFACES = 4;
  static constexpr uint32_t MAX_SURFACE_ID = 8;
  // Bitmaps stay below 256x256 so a 5000-command file stays in the tens of megabytes.
  static constexpr uint32_t MAX_BITMAP_SIDE = 256;

  struct Surface {
    uint32_t id, format, w, h;
  };

  uint32_t below(uint32_t n) { return n == 0 ? 0 : static_cast<uint32_t>(rng_() % n); }
  bool chance(uint32_t percent) { return below(100) < percent; }

  // A side length: mostly small, sometimes medium, rarely as large as allowed.
  uint32_t side(uint32_t max) {
    uint32_t p = below(100);
    uint32_t cap = p < 70 ? 64 : p < 95 ? 256 : max;
    return 1 + below(std::min(cap, max));
  }
  Rect randomRect(const Surface& s, uint32_t maxSide) {
    uint32_t w = side(std::min(s.w, maxSide)), h = side(std::min(s.h, maxSide));
    return rectXYWH(int32_t(below(s.w - w + 1)), int32_t(below(s.h - h + 1)), int32_t(w),
                    int32_t(h));
  }
  const Surface& randomTarget() {
    size_t pick = below(static_cast<uint32_t>(live_.size() + 2));
    return pick < live_.size() ? live_[pick] : primary_;  // the primary twice as likely
  }
  uint8_t randomBitmapFormat() { return formats_[below(static_cast<uint32_t>(formats_.size()))]; }
  Image randomBitmap(uint32_t w, uint32_t h) {
    return b_.bitmap(randomBitmapFormat(), w, h, below(1000), chance(20) ? 2 + below(4) : 1);
  }
  uint32_t color() { return static_cast<uint32_t>(rng_()) & 0xffffff; }
  Brush randomBrush() { return chance(80) ? Builder::solid(color()) : b_.pattern(below(64)); }
  // Source bitmap for a bbox: same size, or (sometimes) another size so the draw scales.
  std::pair<Image, Rect> sourceFor(const Rect& bbox) {
    uint32_t w = uint32_t(rectW(bbox)), h = uint32_t(rectH(bbox));
    if (chance(10) || w > MAX_BITMAP_SIDE || h > MAX_BITMAP_SIDE) {
      w = side(std::min(w, MAX_BITMAP_SIDE));
      h = side(std::min(h, MAX_BITMAP_SIDE));
    }
    return {randomBitmap(w, h), rectXYWH(0, 0, int32_t(w), int32_t(h))};
  }
  void decorate(Command& cmd, const Rect& bbox) {
    if (chance(15)) {
      std::vector<Rect> rects;
      uint32_t count = 1 + below(4);
      for (uint32_t i = 0; i < count; ++i) {
        Surface within{0, 0, uint32_t(rectW(bbox)), uint32_t(rectH(bbox))};
        Rect r = randomRect(within, MAX_BITMAP_SIDE);
        rects.push_back(rectXYWH(bbox.left + r.left, bbox.top + r.top, rectW(r), rectH(r)));
      }
      Builder::clipTo(cmd, std::move(rects));
    }
  }
  std::optional<QMask> maybeMask(const Rect& bbox) {
    if (!chance(10) || rectW(bbox) > int32_t(MAX_BITMAP_SIDE) ||
        rectH(bbox) > int32_t(MAX_BITMAP_SIDE)) {
      return std::nullopt;
    }
    return b_.mask(uint32_t(rectW(bbox)), uint32_t(rectH(bbox)), chance(50));
  }

  bool refill() override {
    if (!started_) {
      started_ = true;
      push(Builder::createPrimary(W, H));
      return true;
    }
    uint32_t roll = below(1000);
    if (roll < 30) {
      surfaceChange();
    } else if (roll < 80) {
      cursorChange();
    } else if (roll < 90) {
      push(Builder::update(0, rectXYWH(0, 0, W, H), nextUpdateId_++));
    } else if (roll < 95) {
      push(Builder::io(chance(50) ? WorkerMessage::Update : WorkerMessage::Wakeup));
    } else if (roll < 97) {
      push(Builder::message("stress " + std::to_string(rng_() % 100000)));
    } else {
      drawSomething();
    }
    return true;
  }

  void surfaceChange() {
    if (!live_.empty() && (live_.size() >= MAX_LIVE_SURFACES || chance(40))) {
      size_t i = below(static_cast<uint32_t>(live_.size()));
      push(Builder::surfaceDestroy(live_[i].id));
      live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
    uint32_t id = 1;
    while (std::any_of(live_.begin(), live_.end(), [id](const Surface& s) { return s.id == id; })) {
      ++id;
    }
    if (id > MAX_SURFACE_ID) {
      return;
    }
    Surface s{id, surfaceFormats_[below(static_cast<uint32_t>(surfaceFormats_.size()))],
              8 + below(400), 8 + below(300)};
    live_.push_back(s);
    push(Builder::surfaceCreate(s.id, s.format, s.w, s.h));
    push(Builder::fill(s.id, rectXYWH(0, 0, int32_t(s.w), int32_t(s.h)),
                       Builder::solid(0xff000000 | color())));
  }

  void cursorChange() {
    Point16 at{static_cast<int16_t>(below(W)), static_cast<int16_t>(below(H))};
    uint32_t p = below(100);
    if (p < 80) {
      push(Builder::cursorMove(at));
    } else if (p < 92) {
      push(Builder::cursorSetAlpha(at, below(3)));
    } else if (p < 96) {
      push(Builder::cursorSetMono(at));
    } else {
      push(Builder::cursorHide());
    }
  }

  void drawSomething() {
    const Surface t = randomTarget();
    Rect bbox = randomRect(t, chance(5) ? std::max(t.w, t.h) : MAX_BITMAP_SIDE);
    uint8_t kind = static_cast<uint8_t>(1 + below(QXL_DRAW_COMPOSITE));  // every type but NOP
    // Fills and copies are what guests send most: draw them half of the time.
    if (chance(50)) {
      kind = chance(50) ? QXL_DRAW_FILL : QXL_DRAW_COPY;
    }
    Command cmd;
    switch (kind) {
      case QXL_DRAW_FILL: {
        Fill f;
        f.brush = randomBrush();
        f.ropDescriptor = chance(80) ? SPICE_ROPD_OP_PUT : SPICE_ROPD_OP_XOR;
        if (auto m = maybeMask(bbox)) {
          f.mask = std::move(*m);
        }
        // QXL_EFFECT_OPAQUE promises that the draw covers its area whatever was there:
        // libspice-server then drops the draws below it unrendered, so only a plain PUT says so.
        const uint8_t effect = f.ropDescriptor == SPICE_ROPD_OP_PUT && !f.mask.bitmap
                                   ? QXL_EFFECT_OPAQUE
                                   : QXL_EFFECT_BLEND;
        cmd = Builder::draw(t.id, bbox, std::move(f), effect);
        break;
      }
      case QXL_DRAW_COPY: {
        std::vector<const Surface*> sources;
        for (const Surface& s : live_) {
          if (s.id != t.id) {
            sources.push_back(&s);
          }
        }
        if (!sources.empty() && chance(20)) {
          const Surface& s = *sources[below(static_cast<uint32_t>(sources.size()))];
          Rect src = randomRect(s, MAX_BITMAP_SIDE);
          int32_t w = std::min(rectW(src), int32_t(t.w)), h = std::min(rectH(src), int32_t(t.h));
          src = rectXYWH(src.left, src.top, w, h);
          bbox = rectXYWH(int32_t(below(t.w - uint32_t(w) + 1)),
                          int32_t(below(t.h - uint32_t(h) + 1)), w, h);
          cmd = Builder::copyFromSurface(t.id, bbox, s.id, s.w, s.h, src);
          break;
        }
        auto [img, area] = sourceFor(bbox);
        Copy c;
        c.srcBitmap = std::move(img);
        c.srcArea = area;
        c.ropDescriptor = SPICE_ROPD_OP_PUT;
        c.scaleMode = below(2);
        if (auto m = maybeMask(bbox)) {
          c.mask = std::move(*m);
        }
        const uint8_t effect = c.mask.bitmap ? QXL_EFFECT_BLEND : QXL_EFFECT_OPAQUE;
        cmd = Builder::draw(t.id, bbox, std::move(c), effect);
        break;
      }
      case QXL_DRAW_OPAQUE: {
        auto [img, area] = sourceFor(bbox);
        Opaque o;
        o.srcBitmap = std::move(img);
        o.srcArea = area;
        o.brush = randomBrush();
        o.ropDescriptor = SPICE_ROPD_OP_PUT;
        cmd = Builder::draw(t.id, bbox, std::move(o));
        break;
      }
      case QXL_COPY_BITS: {
        Rect src = randomRect(t, MAX_BITMAP_SIDE);
        bbox = rectXYWH(int32_t(below(t.w - uint32_t(rectW(src)) + 1)),
                        int32_t(below(t.h - uint32_t(rectH(src)) + 1)), rectW(src), rectH(src));
        cmd = Builder::copyBits(t.id, bbox, Point{src.left, src.top});
        break;
      }
      case QXL_DRAW_BLEND: {
        auto [img, area] = sourceFor(bbox);
        Blend bl;
        bl.srcBitmap = std::move(img);
        bl.srcArea = area;
        bl.ropDescriptor = chance(50) ? SPICE_ROPD_OP_AND : SPICE_ROPD_OP_OR;
        cmd = Builder::draw(t.id, bbox, std::move(bl), QXL_EFFECT_BLEND);
        break;
      }
      case QXL_DRAW_BLACKNESS:
      case QXL_DRAW_WHITENESS:
      case QXL_DRAW_INVERS: {
        QMask m = maybeMask(bbox).value_or(QMask{});
        const uint8_t effect = m.bitmap ? QXL_EFFECT_BLEND : QXL_EFFECT_OPAQUE;
        if (kind == QXL_DRAW_BLACKNESS) {
          cmd = Builder::draw(t.id, bbox, Blackness{std::move(m)}, effect);
        } else if (kind == QXL_DRAW_WHITENESS) {
          cmd = Builder::draw(t.id, bbox, Whiteness{std::move(m)}, effect);
        } else {
          cmd = Builder::draw(t.id, bbox, Invers{std::move(m)}, QXL_EFFECT_REVERT_ON_DUP);
        }
        break;
      }
      case QXL_DRAW_ROP3: {
        auto [img, area] = sourceFor(bbox);
        Rop3 r;
        r.srcBitmap = std::move(img);
        r.srcArea = area;
        r.brush = randomBrush();
        r.rop3 = static_cast<uint8_t>(rng_());
        while (referenceOnly_ && !rop3ReadsAllOperands(r.rop3)) {
          r.rop3 = static_cast<uint8_t>(rng_());
        }
        // libspice-server starts a ROP3's pattern at (bbox - pattern pos) % pattern size with
        // C's %, so a pattern position right of or below the bbox's corner makes it read before
        // the pattern's pixels (the row above; before row 0, outside the image). Keep the
        // reference inside its pattern.
        if (referenceOnly_ && r.brush.type == SPICE_BRUSH_TYPE_PATTERN) {
          r.brush.patternPos.x = std::min(r.brush.patternPos.x, bbox.left);
          r.brush.patternPos.y = std::min(r.brush.patternPos.y, bbox.top);
        }
        cmd = Builder::draw(t.id, bbox, std::move(r), QXL_EFFECT_BLEND);
        break;
      }
      case QXL_DRAW_STROKE: {
        // 1 to 3 path segments (lines or cubic curves) on 28.4 points with fractions, now and
        // then reaching outside the bbox and the surface; dashed with and without a leading
        // gap; other ROPs than PUT and brushes other than solid colours.
        Stroke s;
        const int32_t reach = chance(10) ? 64 : 0;
        auto point = [&]() {
          return Point{
              (bbox.left - reach) * 16 + int32_t(below(uint32_t(rectW(bbox) + 2 * reach) * 16)),
              (bbox.top - reach) * 16 + int32_t(below(uint32_t(rectH(bbox) + 2 * reach) * 16))};
        };
        const uint32_t segments = 1 + below(3);
        for (uint32_t n = 0; n < segments; ++n) {
          PathSegment seg;
          seg.flags = n == 0 ? uint32_t(SPICE_PATH_BEGIN) : 0u;
          if (n + 1 == segments) {
            seg.flags |= SPICE_PATH_END | (chance(30) ? uint32_t(SPICE_PATH_CLOSE) : 0u);
          }
          const bool bezier = n > 0 && chance(40);
          const uint32_t count = bezier ? 3 * (1 + below(2)) : (n == 0 ? 2 : 1) + below(5);
          if (bezier) {
            seg.flags |= SPICE_PATH_BEZIER;
          }
          for (uint32_t i = 0; i < count; ++i) {
            seg.points.push_back(point());
          }
          s.path.push_back(std::move(seg));
        }
        if (chance(40)) {
          s.attrFlags = SPICE_LINE_FLAGS_STYLED;
          if (chance(30)) {
            s.attrFlags |= SPICE_LINE_FLAGS_START_WITH_GAP;
          }
          // The first dash at least a pixel: an all-zero pattern hangs libspice-server.
          s.style = {int32_t(16 + below(12 * 16))};
          for (uint32_t n = 1 + below(5); n > 0; --n) {
            s.style.push_back(int32_t(below(12 * 16)));
          }
        }
        const uint32_t brush = below(100);
        s.brush = brush < 80   ? Builder::solid(color())
                  : brush < 95 ? b_.pattern(below(64))
                               : Brush{SPICE_BRUSH_TYPE_NONE, 0, std::nullopt, Point{}};
        const uint32_t mode = below(100);
        s.foreMode = mode < 60   ? SPICE_ROPD_OP_PUT
                     : mode < 80 ? SPICE_ROPD_OP_XOR
                     : mode < 90 ? SPICE_ROPD_OP_OR | SPICE_ROPD_INVERS_BRUSH
                                 : SPICE_ROPD_OP_AND | SPICE_ROPD_INVERS_DEST;
        s.backMode = SPICE_ROPD_OP_PUT;
        cmd = Builder::draw(t.id, bbox, std::move(s), QXL_EFFECT_BLEND);
        break;
      }
      case QXL_DRAW_TEXT: {
        uint32_t maxGlyphs = std::min<uint32_t>(t.w / GLYPH_W, 64);
        if (maxGlyphs == 0 || t.h < uint32_t(GLYPH_H)) {
          return;  // surface too small for one glyph; draw nothing this turn
        }
        uint32_t count = 1 + below(maxGlyphs);
        std::string chars;
        for (uint32_t i = 0; i < count; ++i) {
          chars.push_back(static_cast<char>(' ' + below(95)));
        }
        int32_t w = int32_t(count) * GLYPH_W;
        bbox = rectXYWH(int32_t(below(t.w - uint32_t(w) + 1)),
                        int32_t(below(t.h - uint32_t(GLYPH_H) + 1)), w, GLYPH_H);
        // 1, 4 and 8 bit glyphs (the last two anti-aliased), sometimes overlapping; without a
        // back area now and then, where the fore brush goes OVER whatever fore_mode says.
        // libspice-server reads A8 glyphs one row off (each glyph's top row from the bytes
        // after its data, its first row never), so reference recordings have no A8 text.
        const uint32_t depth = below(100);
        uint32_t flags = depth < 50   ? SPICE_STRING_FLAGS_RASTER_A1
                         : depth < 75 ? SPICE_STRING_FLAGS_RASTER_A4
                                      : SPICE_STRING_FLAGS_RASTER_A8;
        if (referenceOnly_ && flags == SPICE_STRING_FLAGS_RASTER_A8) {
          flags = SPICE_STRING_FLAGS_RASTER_A4;
        }
        cmd = b_.text(t.id, bbox, chars, color(), flags, chance(20) ? GLYPH_W - 3 : GLYPH_W);
        Text& tx = std::get<Text>(std::get<Drawable>(cmd.body).payload);
        if (chance(40)) {
          tx.backArea = Rect{};
          tx.foreMode = chance(50) ? SPICE_ROPD_OP_PUT : SPICE_ROPD_OP_XOR;
        }
        if (chance(15)) {
          tx.foreBrush = b_.pattern(below(64));
        }
        break;
      }
      case QXL_DRAW_TRANSPARENT: {
        auto [img, area] = sourceFor(bbox);
        Transparent tp;
        tp.srcBitmap = std::move(img);
        tp.srcArea = area;
        tp.srcColor = color();
        tp.trueColor = tp.srcColor;
        cmd = Builder::draw(t.id, bbox, std::move(tp), QXL_EFFECT_BLEND);
        break;
      }
      case QXL_DRAW_ALPHA_BLEND: {
        auto [img, area] = sourceFor(bbox);
        AlphaBlend ab;
        bool hasAlpha = std::get<Bitmap>(img.payload).format == SPICE_BITMAP_FMT_RGBA;
        ab.alphaFlags = hasAlpha ? SPICE_ALPHA_FLAGS_SRC_SURFACE_HAS_ALPHA : 0;
        ab.alpha = static_cast<uint8_t>(rng_());
        ab.srcBitmap = std::move(img);
        ab.srcArea = area;
        cmd = Builder::draw(t.id, bbox, std::move(ab), QXL_EFFECT_BLEND);
        break;
      }
      default: {  // QXL_DRAW_COMPOSITE
        uint32_t w = std::min<uint32_t>(uint32_t(rectW(bbox)), MAX_BITMAP_SIDE);
        uint32_t h = std::min<uint32_t>(uint32_t(rectH(bbox)), MAX_BITMAP_SIDE);
        Composite cp;
        cp.flags = PIXMAN_OP_OVER_VALUE;
        cp.src = b_.bitmap(chance(50) ? SPICE_BITMAP_FMT_RGBA : SPICE_BITMAP_FMT_32BIT, w, h,
                           below(1000));
        if (chance(50)) {
          cp.flags |= SPICE_COMPOSITE_HAS_MASK;
          cp.mask = b_.bitmap(SPICE_BITMAP_FMT_8BIT_A, w, h, below(1000));
        }
        if (chance(30)) {
          cp.flags |= SPICE_COMPOSITE_HAS_SRC_TRANSFORM;
          cp.srcTransform = Transform{FIXED_ONE, 0, 0, 0, FIXED_ONE, 0};
        }
        cmd = Builder::draw(t.id, bbox, std::move(cp), QXL_EFFECT_BLEND);
        break;
      }
    }
    decorate(cmd, std::get<Drawable>(cmd.body).bbox);
    push(std::move(cmd));
  }

  std::mt19937_64 rng_;
  double rate_;
  bool referenceOnly_;  // only what libspice-server renders (ScenarioOptions::referenceFormatsOnly)
  std::span<const uint8_t> formats_;          // the bitmap formats sources are drawn from
  std::span<const uint32_t> surfaceFormats_;  // the formats offscreen surfaces are made in
  bool started_ = false;
  uint32_t nextUpdateId_ = 1;
  Surface primary_{0, SPICE_SURFACE_FMT_32_xRGB, W, H};
  std::vector<Surface> live_;
};

// ---------------------------------------------------------------- small-fills, fullhd, flash
// Latency and tear workloads: one command per update, so that --stamps (a stamp after every
// command) stamps every update, and the client's picture after stamp n is update n.

// A 64-bit mix of `x` (splitmix64's finaliser): a cheap hash that spreads consecutive numbers.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// small-fills: each update one DRAW_FILL of a solid 8..64 pixel rectangle at a seeded random
// place and colour on a 1024x768 primary. Many small damages: what a typing or blinking guest
// sends, where latency is all per-update overhead.
class SmallFillsScenario final : public QueuedScenario {
 public:
  explicit SmallFillsScenario(const ScenarioOptions& options)
      : QueuedScenario(options),
        rng_(options.seed),
        rate_(options.rate > 0 ? options.rate : DEFAULT_RATE) {}
  double commandsPerSecond() const override { return rate_; }

  static constexpr double DEFAULT_RATE = 200;
  static constexpr uint32_t W = 1024, H = 768;
  static constexpr uint32_t MIN_SIDE = 8, MAX_SIDE = 64;

 private:
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }

  bool refill() override {
    if (!started_) {
      started_ = true;
      push(Builder::createPrimary(W, H));
      return true;
    }
    const uint32_t w = MIN_SIDE + below(MAX_SIDE - MIN_SIDE + 1);
    const uint32_t h = MIN_SIDE + below(MAX_SIDE - MIN_SIDE + 1);
    const Rect r =
        rectXYWH(int32_t(below(W - w + 1)), int32_t(below(H - h + 1)), int32_t(w), int32_t(h));
    push(Builder::fill(0, r, Builder::solid(static_cast<uint32_t>(rng_()) & 0xffffff)));
    return true;
  }

  std::mt19937_64 rng_;
  double rate_;
  bool started_ = false;
};

// fullhd and fullhd-bands: a 1920x1080 primary; each update one full-screen DRAW_COPY of a
// 1920x1080 32 bpp bitmap, a window onto a picture twice as wide that pans 8 pixels right per
// update (period W / 8 = 240 updates). Each row is one memcpy from the picture, so an update's
// 8 MiB cost about as much as copying them. Guest memory: each command holds an 8 MiB bitmap in
// the RAM BAR's command area until released, and the primary takes 8 MiB of VRAM; guestsim's
// default 64 MiB BARs hold that (about six updates in flight), so the defaults need no change.
//
// The picture decides what a server that compresses images pays (issue 6's comparison):
// - fullhd: like a photograph or a video frame. Two octaves of value noise (a seeded random
//   lattice every 128 and every 24 pixels, bilinearly interpolated, per channel) make smooth
//   colour regions with texture, and every pixel carries sensor-like noise (each channel +-3
//   levels). A dictionary coder finds few repeats in it (LZ4: about 1.1x, measured by
//   spicebox-bench-latency). Integer arithmetic only: the same picture on every machine.
// - fullhd-bands: diagonal colour bands, each row the previous one shifted by a pixel: the best
//   case for such a coder (LZ4 finds the previous row in every row), kept to show that case.
class FullHdScenario final : public QueuedScenario {
 public:
  enum class Picture { Photo, Bands };

  FullHdScenario(const ScenarioOptions& options, Picture picture)
      : QueuedScenario(options),
        rate_(options.rate > 0 ? options.rate : DEFAULT_RATE),
        picture_(size_t{PICTURE_W} * H * 4) {
    if (picture == Picture::Photo)
      paintPhoto(options.seed);
    else
      paintBands();
  }
  double commandsPerSecond() const override { return rate_; }

  static constexpr double DEFAULT_RATE = 30;
  static constexpr uint32_t W = 1920, H = 1080;
  static constexpr uint32_t PICTURE_W = 2 * W;
  static constexpr uint32_t SHIFT_PER_UPDATE = 8;

 private:
  void setPixel(uint32_t x, uint32_t y, uint32_t r, uint32_t g, uint32_t b) {
    const uint32_t pixel = r << 16 | g << 8 | b;
    uint8_t* at = picture_.data() + (size_t{y} * PICTURE_W + x) * 4;
    for (uint32_t k = 0; k < 4; ++k)
      at[k] = static_cast<uint8_t>(pixel >> (8 * k));  // x8r8g8b8, little endian
  }

  // Value noise: the lattice value at (gx, gy) of channel `c`, octave `o`: 0..255.
  static uint32_t lattice(uint64_t seed, uint32_t o, uint32_t c, uint32_t gx, uint32_t gy) {
    return static_cast<uint32_t>(mix64(seed ^ (uint64_t{o} << 60) ^ (uint64_t{c} << 56) ^
                                       (uint64_t{gx} << 28) ^ gy)) &
           0xff;
  }
  static uint32_t smooth(uint64_t seed, uint32_t o, uint32_t c, uint32_t cell, uint32_t x,
                         uint32_t y) {
    const uint32_t gx = x / cell, gy = y / cell, fx = x % cell, fy = y % cell;
    const uint64_t top = uint64_t{lattice(seed, o, c, gx, gy)} * (cell - fx) +
                         uint64_t{lattice(seed, o, c, gx + 1, gy)} * fx;
    const uint64_t bottom = uint64_t{lattice(seed, o, c, gx, gy + 1)} * (cell - fx) +
                            uint64_t{lattice(seed, o, c, gx + 1, gy + 1)} * fx;
    return static_cast<uint32_t>((top * (cell - fy) + bottom * fy) / (uint64_t{cell} * cell));
  }

  void paintPhoto(uint64_t seed) {
    constexpr uint32_t COARSE = 128, FINE = 24;
    constexpr int32_t NOISE = 3;  // +- levels per channel
    uint64_t state = seed;
    for (uint32_t y = 0; y < H; ++y)
      for (uint32_t x = 0; x < PICTURE_W; ++x) {
        const uint64_t noise = mix64(state++);
        uint32_t rgb[3];
        for (uint32_t c = 0; c < 3; ++c) {
          const int32_t base = static_cast<int32_t>(
              (3 * smooth(seed, 0, c, COARSE, x, y) + smooth(seed, 1, c, FINE, x, y)) / 4);
          const int32_t n = static_cast<int32_t>((noise >> (16 * c)) % (2 * NOISE + 1)) - NOISE;
          rgb[c] = static_cast<uint32_t>(std::clamp(base + n, 0, 255));
        }
        setPixel(x, y, rgb[0], rgb[1], rgb[2]);
      }
  }

  void paintBands() {
    // Row y is the band shifted y pixels left: the bands run diagonally.
    for (uint32_t y = 0; y < H; ++y)
      for (uint32_t x = 0; x < PICTURE_W; ++x) {
        const uint32_t along = (x + y) % W;
        const uint32_t r = along * 255 / (W - 1), g = 255 - r, b = (along / 4) & 0xff;
        setPixel(x, y, r, g, b);
      }
  }

  bool refill() override {
    if (!started_) {
      started_ = true;
      push(Builder::createPrimary(W, H));
      return true;
    }
    Image img;
    img.id = nextImageId_++;
    img.type = SPICE_IMAGE_TYPE_BITMAP;
    img.width = W;
    img.height = H;
    Bitmap& bm = img.payload.emplace<Bitmap>();
    bm.format = SPICE_BITMAP_FMT_32BIT;
    bm.flags = QXL_BITMAP_TOP_DOWN;
    bm.x = W;
    bm.y = H;
    bm.stride = W * 4;
    bm.data.resize(size_t{H} * bm.stride);
    // The window starts `pan` pixels into the picture and moves right.
    const size_t pan = (update_ * SHIFT_PER_UPDATE) % W;
    for (uint32_t y = 0; y < H; ++y)
      std::memcpy(bm.data.data() + size_t{y} * bm.stride,
                  picture_.data() + (size_t{y} * PICTURE_W + pan) * 4, bm.stride);
    ++update_;
    const Rect all = rectXYWH(0, 0, W, H);
    push(Builder::copy(0, all, std::move(img), all));
    return true;
  }

  double rate_;
  std::vector<uint8_t> picture_;  // PICTURE_W x H pixels, x8r8g8b8 little endian
  bool started_ = false;
  uint64_t update_ = 0;
  uint64_t nextImageId_ = 1;
};

// flash: a 1024x768 primary; each update one full-screen DRAW_FILL of one solid colour, never the
// previous update's (a hash of the seed and the update number; a repeat is flipped in its top
// bit). The tear test's workload: every whole picture the device shows is one colour, so a
// picture with two colours was torn. Default rate: as fast as the device takes them.
class FlashScenario final : public QueuedScenario {
 public:
  explicit FlashScenario(const ScenarioOptions& options)
      : QueuedScenario(options), seed_(options.seed), rate_(options.rate) {}
  double commandsPerSecond() const override { return rate_; }

  static constexpr uint32_t W = 1024, H = 768;

 private:
  bool refill() override {
    if (!started_) {
      started_ = true;
      push(Builder::createPrimary(W, H));
      return true;
    }
    uint32_t color = static_cast<uint32_t>(mix64(seed_ * 0x100000001b3ull + update_++)) & 0xffffff;
    if (previous_ && color == *previous_)
      color ^= 0x800000;
    previous_ = color;
    push(Builder::fill(0, rectXYWH(0, 0, W, H), Builder::solid(color)));
    return true;
  }

  uint64_t seed_;
  double rate_;
  bool started_ = false;
  uint64_t update_ = 0;
  std::optional<uint32_t> previous_;
};

}  // namespace

std::vector<std::string> scenarioNames() {
  return {"desktop",      "all-draws", "stress",  "small-fills", "fullhd",
          "fullhd-bands", "flash",     "hostile", "expensive"};
}

std::unique_ptr<Scenario> makeScenario(std::string_view name, const ScenarioOptions& options) {
  if (name == "desktop") {
    return std::make_unique<DesktopScenario>(options);
  }
  if (name == "all-draws") {
    return std::make_unique<AllDrawsScenario>(options);
  }
  if (name == "stress") {
    return std::make_unique<StressScenario>(options);
  }
  if (name == "small-fills") {
    return std::make_unique<SmallFillsScenario>(options);
  }
  if (name == "fullhd") {
    return std::make_unique<FullHdScenario>(options, FullHdScenario::Picture::Photo);
  }
  if (name == "fullhd-bands") {
    return std::make_unique<FullHdScenario>(options, FullHdScenario::Picture::Bands);
  }
  if (name == "flash") {
    return std::make_unique<FlashScenario>(options);
  }
  if (name == "hostile") {
    return makeHostileScenario(options);
  }
  if (name == "expensive") {
    return makeExpensiveScenario(options);
  }
  std::string known;
  for (const std::string& n : scenarioNames()) {
    known += (known.empty() ? "" : ", ") + n;
  }
  throw std::invalid_argument("unknown scenario \"" + std::string(name) + "\"; known: " + known);
}

}  // namespace spicebox::guestsim
