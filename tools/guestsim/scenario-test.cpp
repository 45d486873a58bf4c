// Runs in: guestsim-scenario-tests (developer machine / CI). Input: the scenarios' own streams.
// What a stream must satisfy is stated here from the QXL contract (qxl_dev.h, enums.h) and
// counted from the stream itself, independent of how the generators build it.
#include "tools/guestsim/scenario.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>

#include "tools/guestsim/spice-record-writer.h"

namespace spicebox::guestsim {
namespace {

// Bounds every loop over an unbounded scenario: a test that runs past it failed.
constexpr size_t ACTION_CAP = 200000;

std::vector<GuestAction> collect(std::string_view name, ScenarioOptions options) {
  auto scenario = makeScenario(name, options);
  std::vector<GuestAction> out;
  while (auto action = scenario->next()) {
    out.push_back(std::move(*action));
    REQUIRE(out.size() < ACTION_CAP);
  }
  return out;
}

size_t commandCount(const std::vector<GuestAction>& actions) {
  return std::count_if(actions.begin(), actions.end(),
                       [](const GuestAction& a) { return std::holds_alternative<Command>(a); });
}

// Calls f(image, isMask) for every image a drawable carries.
template <typename F>
void forEachImage(const Drawable& d, F&& f) {
  auto img = [&](const std::optional<Image>& i, bool isMask) {
    if (i) {
      f(*i, isMask);
    }
  };
  auto brush = [&](const Brush& b) { img(b.pattern, false); };
  std::visit(
      [&](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (requires { p.srcBitmap; }) {
          img(p.srcBitmap, false);
        }
        if constexpr (requires { p.brush; }) {
          brush(p.brush);
        }
        if constexpr (requires { p.mask.bitmap; }) {
          img(p.mask.bitmap, true);
        }
        if constexpr (std::is_same_v<T, Text>) {
          brush(p.foreBrush);
          brush(p.backBrush);
        }
        if constexpr (std::is_same_v<T, Composite>) {
          img(p.src, false);
          img(p.mask, false);  // a composite mask is an alpha source, not a 1-bit QMask
        }
      },
      d.payload);
}

bool inside(const Rect& r, int64_t w, int64_t h) {
  return r.left >= 0 && r.top >= 0 && r.left < r.right && r.top < r.bottom && r.right <= w &&
         r.bottom <= h;
}

uint32_t minStride(const Bitmap& bm) {
  static const std::map<uint8_t, uint32_t> BITS = {
      {SPICE_BITMAP_FMT_1BIT_LE, 1}, {SPICE_BITMAP_FMT_1BIT_BE, 1}, {SPICE_BITMAP_FMT_4BIT_LE, 4},
      {SPICE_BITMAP_FMT_4BIT_BE, 4}, {SPICE_BITMAP_FMT_8BIT, 8},    {SPICE_BITMAP_FMT_16BIT, 16},
      {SPICE_BITMAP_FMT_24BIT, 24},  {SPICE_BITMAP_FMT_32BIT, 32},  {SPICE_BITMAP_FMT_RGBA, 32},
      {SPICE_BITMAP_FMT_8BIT_A, 8}};
  auto it = BITS.find(bm.format);
  REQUIRE(it != BITS.end());
  return (bm.x * it->second + 7) / 8;
}

// Walks a stream as a QXL device would see it and fails on what a real driver could not send.
struct StreamChecker {
  struct Surf {
    int64_t w, h;
    uint32_t format;
  };
  std::map<uint32_t, Surf> live;  // id 0: the primary, while it exists
  std::set<uint32_t> createdFormats;
  std::set<uint32_t> sourcedFormats;  // formats of surfaces read through a SurfaceImage

  void check(const GuestAction& action) {
    if (auto* io = std::get_if<IoEvent>(&action)) {
      if (io->message == WorkerMessage::CreatePrimarySurface) {
        REQUIRE(io->primary);
        REQUIRE(live.count(0) == 0);  // a mode change destroys the old primary first
        const PrimarySurface& p = *io->primary;
        REQUIRE(uint64_t(std::abs(int64_t{p.stride})) >= uint64_t{p.width} * 4);
        live[0] = Surf{p.width, p.height, p.format};
      } else if (io->message == WorkerMessage::DestroyPrimarySurface) {
        REQUIRE(live.erase(0) == 1);
      }
      return;
    }
    const Command& cmd = std::get<Command>(action);
    if (auto* s = std::get_if<SurfaceCmd>(&cmd.body)) {
      INFO("surface " << s->surfaceId);
      REQUIRE(s->surfaceId != 0);
      if (s->type == QXL_SURFACE_CMD_CREATE) {
        REQUIRE(live.count(s->surfaceId) == 0);
        REQUIRE(s->width > 0);
        REQUIRE(s->height > 0);
        REQUIRE(std::abs(int64_t{s->stride}) % 4 == 0);
        live[s->surfaceId] = Surf{s->width, s->height, s->format};
        createdFormats.insert(s->format);
      } else {
        REQUIRE(s->type == QXL_SURFACE_CMD_DESTROY);
        REQUIRE(live.erase(s->surfaceId) == 1);
      }
    } else if (auto* d = std::get_if<Drawable>(&cmd.body)) {
      checkDrawable(*d);
    } else if (auto* u = std::get_if<UpdateCmd>(&cmd.body)) {
      REQUIRE(live.count(u->surfaceId) == 1);
      REQUIRE(inside(u->area, live[u->surfaceId].w, live[u->surfaceId].h));
    } else if (auto* c = std::get_if<CursorCmd>(&cmd.body)) {
      if (c->type == QXL_CURSOR_SET) {
        REQUIRE(c->shape);
        const CursorShape& sh = *c->shape;
        size_t expect = sh.type == SPICE_CURSOR_TYPE_ALPHA ? size_t{sh.width} * sh.height * 4
                        : sh.type == SPICE_CURSOR_TYPE_MONO
                            ? size_t{2} * sh.height * ((sh.width + 7) / 8)
                            : 0;
        REQUIRE(expect != 0);
        REQUIRE(sh.data.size() == expect);
        REQUIRE(sh.hotSpotX < sh.width);
        REQUIRE(sh.hotSpotY < sh.height);
      }
    }
  }

  void checkDrawable(const Drawable& d) {
    INFO("draw type " << int(d.type) << " on surface " << d.surfaceId);
    REQUIRE(!d.compat);
    REQUIRE(live.count(d.surfaceId) == 1);
    const Surf target = live[d.surfaceId];
    REQUIRE(inside(d.bbox, target.w, target.h));
    if (d.clip.type == SPICE_CLIP_TYPE_RECTS) {
      REQUIRE(!d.clip.rects.empty());
      for (const Rect& r : d.clip.rects) {
        REQUIRE(inside(r, target.w, target.h));
      }
    }
    if (auto* cb = std::get_if<CopyBits>(&d.payload)) {
      Rect src{cb->srcPos.y, cb->srcPos.x, cb->srcPos.y + (d.bbox.bottom - d.bbox.top),
               cb->srcPos.x + (d.bbox.right - d.bbox.left)};
      REQUIRE(inside(src, target.w, target.h));
    }
    if (auto* t = std::get_if<Text>(&d.payload)) {
      REQUIRE((t->str.flags == SPICE_STRING_FLAGS_RASTER_A1 ||
               t->str.flags == SPICE_STRING_FLAGS_RASTER_A4 ||
               t->str.flags == SPICE_STRING_FLAGS_RASTER_A8));
      checkGlyphs(t->str, d.bbox);
    }
    forEachImage(d, [&](const Image& img, bool isMask) {
      if (auto* bm = std::get_if<Bitmap>(&img.payload)) {
        REQUIRE(img.type == SPICE_IMAGE_TYPE_BITMAP);
        REQUIRE(bm->x == img.width);
        REQUIRE(bm->y == img.height);
        REQUIRE(bm->stride >= minStride(*bm));
        REQUIRE(bm->data.size() == size_t{bm->y} * bm->stride);
        bool indexed = bm->format <= SPICE_BITMAP_FMT_8BIT;
        REQUIRE(bm->palette.has_value() == indexed);
        if (isMask) {
          REQUIRE(
              (bm->format == SPICE_BITMAP_FMT_1BIT_BE || bm->format == SPICE_BITMAP_FMT_1BIT_LE));
          REQUIRE(bm->x >= uint32_t(d.bbox.right - d.bbox.left));
          REQUIRE(bm->y >= uint32_t(d.bbox.bottom - d.bbox.top));
        }
      } else if (auto* si = std::get_if<SurfaceImage>(&img.payload)) {
        REQUIRE(img.type == SPICE_IMAGE_TYPE_SURFACE);
        REQUIRE(si->surfaceId != d.surfaceId);
        REQUIRE(live.count(si->surfaceId) == 1);
        REQUIRE(img.width == live[si->surfaceId].w);
        REQUIRE(img.height == live[si->surfaceId].h);
        bool declared = std::find(d.surfacesDest.begin(), d.surfacesDest.end(),
                                  int32_t(si->surfaceId)) != d.surfacesDest.end();
        REQUIRE(declared);  // the server orders the read after the source's pending draws
        sourcedFormats.insert(live[si->surfaceId].format);
      } else {
        FAIL("scenarios send bitmaps and surface images only");
      }
    });
    std::visit(
        [&](const auto& p) {
          if constexpr (requires { p.srcArea; }) {
            REQUIRE(p.srcBitmap);
            REQUIRE(inside(p.srcArea, p.srcBitmap->width, p.srcBitmap->height));
          }
        },
        d.payload);
  }

  // Each QXLRasterGlyph A1: header, then height rows of (width + 7) / 8 bytes; the glyph box
  // (render_pos + glyph_origin, width x height) lies in the bbox.
  static void checkGlyphs(const QxlString& s, const Rect& bbox) {
    size_t at = 0;
    for (uint16_t i = 0; i < s.length; ++i) {
      REQUIRE(at + 20 <= s.data.size());
      int32_t v[4];
      uint16_t wh[2];
      std::memcpy(v, &s.data[at], 16);
      std::memcpy(wh, &s.data[at + 16], 4);
      Rect box{v[1] + v[3], v[0] + v[2], v[1] + v[3] + wh[1], v[0] + v[2] + wh[0]};
      REQUIRE(box.left >= bbox.left);
      REQUIRE(box.top >= bbox.top);
      REQUIRE(box.right <= bbox.right);
      REQUIRE(box.bottom <= bbox.bottom);
      const size_t bpp = s.flags == SPICE_STRING_FLAGS_RASTER_A8   ? 8
                         : s.flags == SPICE_STRING_FLAGS_RASTER_A4 ? 4
                                                                   : 1;
      at += 20 + size_t{wh[1]} * ((wh[0] * bpp + 7) / 8);
    }
    REQUIRE(at == s.data.size());
  }
};

void checkStream(const std::vector<GuestAction>& actions, StreamChecker& checker) {
  for (size_t i = 0; i < actions.size(); ++i) {
    INFO("action " << i);
    checker.check(actions[i]);
  }
}

// Writes every action as the recorder would and reads the bytes back: the writer accepts each
// and the reader returns an equal tree.
void checkRoundTrip(const std::vector<GuestAction>& actions) {
  std::string bytes = "SPICE_REPLAY 1\n";
  uint64_t timestamp = 1000;
  for (size_t i = 0; i < actions.size(); ++i) {
    // Attacks and device resets (the hostile scenario's) have no place in a recording.
    REQUIRE((std::holds_alternative<Command>(actions[i]) ||
             std::holds_alternative<IoEvent>(actions[i])));
    std::variant<Command, IoEvent> body;
    if (const auto* command = std::get_if<Command>(&actions[i]))
      body = *command;
    else
      body = std::get<IoEvent>(actions[i]);
    auto err = serializeEvent(uint32_t(i), timestamp++, body, bytes);
    INFO("action " << i << ": " << (err ? err->toString() : ""));
    REQUIRE(!err);
  }
  auto opened = RecordReader::fromBytes(std::move(bytes));
  REQUIRE(std::holds_alternative<std::unique_ptr<RecordReader>>(opened));
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  for (size_t i = 0; i < actions.size(); ++i) {
    auto ev = reader.next();
    INFO("action " << i << ": "
                   << (std::holds_alternative<RecordError>(ev)
                           ? std::get<RecordError>(ev).toString()
                           : ""));
    REQUIRE(std::holds_alternative<RecordEvent>(ev));
    const RecordEvent& e = std::get<RecordEvent>(ev);
    bool same = std::visit(
        [&](const auto& a) {
          using T = std::decay_t<decltype(a)>;
          if constexpr (std::is_same_v<T, Command> || std::is_same_v<T, IoEvent>) {
            auto* got = std::get_if<T>(&e.body);
            return got != nullptr && *got == a;
          }
          return false;
        },
        actions[i]);
    REQUIRE(same);
  }
  REQUIRE(std::holds_alternative<EndOfRecording>(reader.next()));
}

}  // namespace

TEST_CASE("makeScenario names every scenario and rejects others", "[scenario]") {
  for (const std::string& name : scenarioNames()) {
    REQUIRE(makeScenario(name, {}) != nullptr);
  }
  try {
    makeScenario("no-such-scenario", {});
    FAIL("an unknown name was accepted");
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    CHECK(what.find("no-such-scenario") != std::string::npos);
    CHECK(what.find("all-draws") != std::string::npos);
  }
}

TEST_CASE("all-draws sends every draw type, bitmap format and surface format", "[scenario]") {
  auto actions = collect("all-draws", {});
  StreamChecker checker;
  checkStream(actions, checker);
  CHECK(checker.live.count(0) == 1);
  CHECK(checker.live.size() == 1);  // every offscreen surface was destroyed again

  std::set<int> drawTypes, bitmapFormats, cursorTypes;
  bool chunkedBitmap = false, rectClip = false, oneBitMask = false, patternBrush = false;
  bool solidStroke = false, styledStroke = false, update = false, message = false;
  for (const GuestAction& a : actions) {
    auto* cmd = std::get_if<Command>(&a);
    if (!cmd) {
      continue;
    }
    if (auto* d = std::get_if<Drawable>(&cmd->body)) {
      drawTypes.insert(d->type);
      rectClip |= d->clip.type == SPICE_CLIP_TYPE_RECTS && d->clip.rects.size() > 1;
      forEachImage(*d, [&](const Image& img, bool isMask) {
        if (auto* bm = std::get_if<Bitmap>(&img.payload)) {
          bitmapFormats.insert(bm->format);
          chunkedBitmap |= bm->chunkCount > 1;
          oneBitMask |= isMask;
        }
      });
      std::visit(
          [&](const auto& p) {
            if constexpr (requires { p.brush; }) {
              patternBrush |= p.brush.type == SPICE_BRUSH_TYPE_PATTERN && p.brush.pattern;
            }
          },
          d->payload);
      if (auto* s = std::get_if<Stroke>(&d->payload)) {
        (s->attrFlags & SPICE_LINE_FLAGS_STYLED ? styledStroke : solidStroke) = true;
      }
    } else if (auto* c = std::get_if<CursorCmd>(&cmd->body)) {
      cursorTypes.insert(c->type);
    }
    update |= std::holds_alternative<UpdateCmd>(cmd->body);
    message |= std::holds_alternative<MessageCmd>(cmd->body);
  }
  CHECK(drawTypes == std::set<int>{QXL_DRAW_FILL, QXL_DRAW_OPAQUE, QXL_DRAW_COPY, QXL_COPY_BITS,
                                   QXL_DRAW_BLEND, QXL_DRAW_BLACKNESS, QXL_DRAW_WHITENESS,
                                   QXL_DRAW_INVERS, QXL_DRAW_ROP3, QXL_DRAW_STROKE, QXL_DRAW_TEXT,
                                   QXL_DRAW_TRANSPARENT, QXL_DRAW_ALPHA_BLEND, QXL_DRAW_COMPOSITE});
  CHECK(bitmapFormats == std::set<int>{SPICE_BITMAP_FMT_1BIT_LE, SPICE_BITMAP_FMT_1BIT_BE,
                                       SPICE_BITMAP_FMT_4BIT_LE, SPICE_BITMAP_FMT_4BIT_BE,
                                       SPICE_BITMAP_FMT_8BIT, SPICE_BITMAP_FMT_16BIT,
                                       SPICE_BITMAP_FMT_24BIT, SPICE_BITMAP_FMT_32BIT,
                                       SPICE_BITMAP_FMT_RGBA, SPICE_BITMAP_FMT_8BIT_A});
  std::set<uint32_t> allSurfaceFormats{SPICE_SURFACE_FMT_1_A,     SPICE_SURFACE_FMT_8_A,
                                       SPICE_SURFACE_FMT_16_555,  SPICE_SURFACE_FMT_16_565,
                                       SPICE_SURFACE_FMT_32_xRGB, SPICE_SURFACE_FMT_32_ARGB};
  CHECK(checker.createdFormats == allSurfaceFormats);
  CHECK(checker.sourcedFormats == allSurfaceFormats);
  CHECK(cursorTypes ==
        std::set<int>{QXL_CURSOR_SET, QXL_CURSOR_MOVE, QXL_CURSOR_HIDE, QXL_CURSOR_TRAIL});
  CHECK(chunkedBitmap);
  CHECK(rectClip);
  CHECK(oneBitMask);
  CHECK(patternBrush);
  CHECK(solidStroke);
  CHECK(styledStroke);
  CHECK(update);
  CHECK(message);
  checkRoundTrip(actions);
}

TEST_CASE("all-draws stops at maxCommands", "[scenario]") {
  ScenarioOptions options;
  options.maxCommands = 5;
  CHECK(commandCount(collect("all-draws", options)) == 5);
}

TEST_CASE("desktop changes resolution once and drives the cursor", "[scenario]") {
  ScenarioOptions options;
  options.maxCommands = 3000;
  auto scenario = makeScenario("desktop", options);
  CHECK(scenario->commandsPerSecond() > 0);
  auto actions = collect("desktop", options);
  REQUIRE(commandCount(actions) == options.maxCommands);
  StreamChecker checker;
  checkStream(actions, checker);

  REQUIRE(std::holds_alternative<IoEvent>(actions.front()));
  std::vector<std::pair<uint32_t, uint32_t>> primaries;
  int destroys = 0, updates = 0, copyBits = 0, surfaceCopies = 0;
  std::set<uint64_t> shapes;
  int moves = 0;
  for (const GuestAction& a : actions) {
    if (auto* io = std::get_if<IoEvent>(&a)) {
      if (io->primary) {
        primaries.emplace_back(io->primary->width, io->primary->height);
        CHECK(io->primary->format == SPICE_SURFACE_FMT_32_xRGB);
      }
      destroys += io->message == WorkerMessage::DestroyPrimarySurface;
      updates += io->message == WorkerMessage::Update;
      continue;
    }
    const Command& cmd = std::get<Command>(a);
    if (auto* c = std::get_if<CursorCmd>(&cmd.body)) {
      if (c->type == QXL_CURSOR_SET) {
        CHECK(c->shape->type == SPICE_CURSOR_TYPE_ALPHA);
        CHECK(c->shape->width == 32);
        CHECK(c->shape->height == 32);
        shapes.insert(c->shape->unique);
      }
      moves += c->type == QXL_CURSOR_MOVE;
    } else if (auto* d = std::get_if<Drawable>(&cmd.body)) {
      copyBits += d->type == QXL_COPY_BITS;
      if (auto* cp = std::get_if<Copy>(&d->payload)) {
        surfaceCopies += std::holds_alternative<SurfaceImage>(cp->srcBitmap->payload);
      }
    }
  }
  auto expected = std::vector<std::pair<uint32_t, uint32_t>>{{1024, 768}, {1280, 800}};
  CHECK(primaries == expected);
  CHECK(destroys == 1);
  CHECK(updates > 0);
  CHECK(copyBits > 0);
  CHECK(surfaceCopies > 0);
  CHECK(moves > 10);
  CHECK(shapes.size() >= 2);  // the shape changes
  checkRoundTrip(actions);
}

TEST_CASE("stress is reproducible per seed and differs across seeds", "[scenario]") {
  ScenarioOptions options;
  options.maxCommands = 1500;
  options.seed = 7;
  auto first = collect("stress", options);
  auto again = collect("stress", options);
  CHECK(commandCount(first) == options.maxCommands);
  CHECK(first == again);
  options.seed = 8;
  auto other = collect("stress", options);
  CHECK(first != other);

  StreamChecker checker;
  checkStream(first, checker);
  std::set<int> drawTypes;
  for (const GuestAction& a : first) {
    if (auto* cmd = std::get_if<Command>(&a)) {
      if (auto* d = std::get_if<Drawable>(&cmd->body)) {
        drawTypes.insert(d->type);
      }
    }
  }
  CHECK(drawTypes.size() == 14);  // every type but NOP, mixed
  checkRoundTrip(first);
}

TEST_CASE("stress paces at --rate, or its default", "[scenario]") {
  ScenarioOptions options;
  CHECK(makeScenario("stress", options)->commandsPerSecond() > 0);
  options.rate = 123;
  CHECK(makeScenario("stress", options)->commandsPerSecond() == 123);
  CHECK(makeScenario("all-draws", options)->commandsPerSecond() == 0);
}

// What libspice-server aborts on or renders from outside its data stays out of reference
// recordings: ROP3 codes that do not read pattern, source and destination (no handler: abort),
// ROP3 pattern positions past the bbox's corner (its C % goes negative: reads before the
// pattern), A8 glyphs (read one row off). A draw marked QXL_EFFECT_OPAQUE really covers its
// area (libspice-server drops what is below it unrendered).
void checkReferenceRenders(const Drawable& d) {
  if (auto* r = std::get_if<Rop3>(&d.payload)) {
    const uint8_t c = r->rop3;
    INFO("rop3 " << int(c));
    CHECK(((c >> 4) & 0x0f) != (c & 0x0f));  // reads the pattern
    CHECK(((c >> 2) & 0x33) != (c & 0x33));  // reads the source
    CHECK(((c >> 1) & 0x55) != (c & 0x55));  // reads the destination
    if (r->brush.type == SPICE_BRUSH_TYPE_PATTERN) {
      CHECK(r->brush.patternPos.x <= d.bbox.left);
      CHECK(r->brush.patternPos.y <= d.bbox.top);
    }
  }
  if (auto* t = std::get_if<Text>(&d.payload)) {
    CHECK(t->str.flags != SPICE_STRING_FLAGS_RASTER_A8);
  }
  if (d.effect == QXL_EFFECT_OPAQUE) {
    if (auto* f = std::get_if<Fill>(&d.payload)) {
      CHECK(f->ropDescriptor == SPICE_ROPD_OP_PUT);
      CHECK(!f->mask.bitmap);
    }
    if (auto* c = std::get_if<Copy>(&d.payload)) {
      CHECK(!c->mask.bitmap);
    }
  }
}

TEST_CASE("reference formats: only what libspice-server renders, every draw type still there",
          "[scenario]") {
  const std::set<int> reference{
      SPICE_BITMAP_FMT_1BIT_BE, SPICE_BITMAP_FMT_4BIT_BE, SPICE_BITMAP_FMT_8BIT,
      SPICE_BITMAP_FMT_16BIT, SPICE_BITMAP_FMT_24BIT, SPICE_BITMAP_FMT_32BIT, SPICE_BITMAP_FMT_RGBA,
      // composite masks (forEachImage reports them as sources): the
      // reference's composite takes A8 there
      SPICE_BITMAP_FMT_8BIT_A};
  const std::set<uint32_t> referenceSurfaces{SPICE_SURFACE_FMT_32_xRGB, SPICE_SURFACE_FMT_32_ARGB};
  ScenarioOptions options;
  options.referenceFormatsOnly = true;
  for (std::string_view name : {"all-draws", "stress"}) {
    INFO(name);
    options.maxCommands = name == "stress" ? 3000 : 0;
    auto actions = collect(name, options);
    StreamChecker checker;
    checkStream(actions, checker);
    std::set<int> drawTypes, sourceFormats;
    for (const GuestAction& a : actions) {
      auto* cmd = std::get_if<Command>(&a);
      auto* d = cmd ? std::get_if<Drawable>(&cmd->body) : nullptr;
      if (!d)
        continue;
      drawTypes.insert(d->type);
      forEachImage(*d, [&](const Image& img, bool isMask) {
        if (auto* bm = std::get_if<Bitmap>(&img.payload); bm && !isMask)
          sourceFormats.insert(bm->format);
      });
      checkReferenceRenders(*d);
    }
    CHECK(std::includes(reference.begin(), reference.end(), sourceFormats.begin(),
                        sourceFormats.end()));
    CHECK(std::includes(referenceSurfaces.begin(), referenceSurfaces.end(),
                        checker.createdFormats.begin(), checker.createdFormats.end()));
    if (name == "all-draws")
      CHECK(drawTypes.size() == 14);
  }
}

}  // namespace spicebox::guestsim

namespace spicebox::guestsim {
namespace {

// The first action creates a w x h 32 bpp primary; every later one is a command (one per update).
void checkOnePrimaryThenCommands(const std::vector<GuestAction>& actions, uint32_t w, uint32_t h) {
  REQUIRE(!actions.empty());
  auto* io = std::get_if<IoEvent>(&actions[0]);
  REQUIRE(io);
  REQUIRE(io->message == WorkerMessage::CreatePrimarySurface);
  REQUIRE(io->primary);
  CHECK(io->primary->width == w);
  CHECK(io->primary->height == h);
  CHECK(io->primary->format == SPICE_SURFACE_FMT_32_xRGB);
  for (size_t i = 1; i < actions.size(); ++i) {
    INFO("action " << i);
    REQUIRE(std::holds_alternative<Command>(actions[i]));
  }
}

const Drawable& drawableOf(const GuestAction& action) {
  const Command& c = std::get<Command>(action);
  REQUIRE(c.type == CommandType::Draw);
  return std::get<Drawable>(c.body);
}

}  // namespace

TEST_CASE("small-fills: one small solid fill per update, seeded, 200/s", "[scenario]") {
  ScenarioOptions options;
  options.maxCommands = 2000;
  auto actions = collect("small-fills", options);
  CHECK(commandCount(actions) == 2000);
  checkOnePrimaryThenCommands(actions, 1024, 768);
  StreamChecker checker;
  checkStream(actions, checker);
  std::set<uint32_t> colors, widths, heights;
  std::set<std::pair<int32_t, int32_t>> places;
  for (size_t i = 1; i < actions.size(); ++i) {
    const Drawable& d = drawableOf(actions[i]);
    REQUIRE(d.type == QXL_DRAW_FILL);
    CHECK(d.surfaceId == 0);
    CHECK(d.clip.type == SPICE_CLIP_TYPE_NONE);
    const Fill& f = std::get<Fill>(d.payload);
    CHECK(f.brush.type == SPICE_BRUSH_TYPE_SOLID);
    CHECK(f.ropDescriptor == SPICE_ROPD_OP_PUT);
    CHECK(!f.mask.bitmap);
    const int32_t w = d.bbox.right - d.bbox.left, h = d.bbox.bottom - d.bbox.top;
    CHECK(w >= 8);
    CHECK(w <= 64);
    CHECK(h >= 8);
    CHECK(h <= 64);
    colors.insert(f.brush.color);
    widths.insert(uint32_t(w));
    heights.insert(uint32_t(h));
    places.insert({d.bbox.left, d.bbox.top});
  }
  // Random, not a fixed rectangle: sizes over the whole range, places and colours spread.
  CHECK(widths.size() == 57);
  CHECK(heights.size() == 57);
  CHECK(places.size() > 1900);
  CHECK(colors.size() > 1900);
  checkRoundTrip({actions.begin(), actions.begin() + 50});

  options.maxCommands = 100;
  CHECK(collect("small-fills", options) == collect("small-fills", options));
  ScenarioOptions other = options;
  other.seed = 2;
  CHECK(collect("small-fills", options) != collect("small-fills", other));
  CHECK(makeScenario("small-fills", {})->commandsPerSecond() == 200);
  other.rate = 50;
  CHECK(makeScenario("small-fills", other)->commandsPerSecond() == 50);
}

// Channel c (0 blue, 1 green, 2 red) of pixel (x, y) of a 1920-wide x8r8g8b8 picture.
int channelAt(const std::vector<uint8_t>& picture, uint32_t x, uint32_t y, uint32_t c) {
  return picture[(size_t{y} * 1920 + x) * 4 + c];
}

TEST_CASE(
    "fullhd and fullhd-bands: a full-screen 1920x1080 32 bpp copy per update, each "
    "different, 30/s",
    "[scenario]") {
  const std::string name = GENERATE("fullhd", "fullhd-bands");
  INFO(name);
  ScenarioOptions options;
  options.maxCommands = 6;
  auto actions = collect(name, options);
  CHECK(commandCount(actions) == 6);
  checkOnePrimaryThenCommands(actions, 1920, 1080);
  StreamChecker checker;
  checkStream(actions, checker);
  const Rect all{0, 0, 1080, 1920};
  std::vector<const std::vector<uint8_t>*> pictures;
  for (size_t i = 1; i < actions.size(); ++i) {
    const Drawable& d = drawableOf(actions[i]);
    REQUIRE(d.type == QXL_DRAW_COPY);
    CHECK(d.surfaceId == 0);
    CHECK(d.bbox == all);
    CHECK(d.clip.type == SPICE_CLIP_TYPE_NONE);
    const Copy& c = std::get<Copy>(d.payload);
    CHECK(c.ropDescriptor == SPICE_ROPD_OP_PUT);
    CHECK(c.srcArea == all);
    REQUIRE(c.srcBitmap);
    const Bitmap& bm = std::get<Bitmap>(c.srcBitmap->payload);
    CHECK(bm.format == SPICE_BITMAP_FMT_32BIT);
    CHECK(bm.x == 1920);
    CHECK(bm.y == 1080);
    CHECK((bm.flags & QXL_BITMAP_TOP_DOWN) != 0);
    REQUIRE(bm.data.size() == size_t{1080} * bm.stride);
    pictures.push_back(&bm.data);
  }
  for (size_t i = 1; i < pictures.size(); ++i)
    CHECK(*pictures[i] != *pictures[i - 1]);
  // Not one colour: the picture has content a codec or a copy could get wrong.
  std::set<uint32_t> distinct;
  for (size_t at = 0; at + 4 <= pictures[0]->size(); at += 4 * 997) {
    uint32_t v;
    std::memcpy(&v, pictures[0]->data() + at, 4);
    distinct.insert(v);
  }
  CHECK(distinct.size() > 100);
  // Each update pans the same picture 8 pixels right.
  const std::vector<uint8_t>& first = *pictures[0];
  const std::vector<uint8_t>& second = *pictures[1];
  for (uint32_t y : {0u, 539u, 1079u})
    CHECK(std::memcmp(second.data() + size_t{y} * 1920 * 4,
                      first.data() + (size_t{y} * 1920 + 8) * 4, (1920 - 8) * 4) == 0);
  uint64_t equalNeighbours = 0, rowShifts = 0, samples = 0, absoluteSteps = 0;
  for (uint32_t y = 1; y < 1080; y += 7)
    for (uint32_t x = 1; x < 1920; x += 3) {
      ++samples;
      bool equal = true, shifted = true;
      for (uint32_t c = 0; c < 3; ++c) {
        const int here = channelAt(first, x, y, c);
        equal = equal && here == channelAt(first, x - 1, y, c);
        shifted = shifted && channelAt(first, x - 1, y, c) == channelAt(first, x, y - 1, c);
        absoluteSteps += static_cast<uint64_t>(std::abs(here - channelAt(first, x - 1, y, c)));
      }
      equalNeighbours += equal;
      rowShifts += shifted;
    }
  if (name == "fullhd") {
    // A photograph's statistics: neighbours close (smooth regions: under 8 levels apart on
    // average) but hardly ever identical (noise), and no row repeats the one above it.
    CHECK(absoluteSteps / (3 * samples) < 8);
    CHECK(equalNeighbours * 20 < samples);
    CHECK(rowShifts * 20 < samples);
  } else {
    // Bands: every row is the row above shifted one pixel.
    CHECK(rowShifts == samples);
  }
  checkRoundTrip({actions.begin(), actions.begin() + 2});
  CHECK(makeScenario(name, {})->commandsPerSecond() == 30);
  ScenarioOptions fast;
  fast.rate = 60;
  CHECK(makeScenario(name, fast)->commandsPerSecond() == 60);
  if (name == "fullhd") {
    // The seed chooses the picture.
    ScenarioOptions seeded = options;
    seeded.seed = 2;
    seeded.maxCommands = 1;
    options.maxCommands = 1;
    CHECK(collect("fullhd", seeded) != collect("fullhd", options));
  }
}

TEST_CASE("flash: full-screen solid fills, never two equal colours in a row, unpaced",
          "[scenario]") {
  ScenarioOptions options;
  options.maxCommands = 20000;
  auto actions = collect("flash", options);
  CHECK(commandCount(actions) == 20000);
  checkOnePrimaryThenCommands(actions, 1024, 768);
  StreamChecker checker;
  checkStream(actions, checker);
  std::optional<uint32_t> previous;
  std::set<uint32_t> colors;
  for (size_t i = 1; i < actions.size(); ++i) {
    INFO("update " << i);
    const Drawable& d = drawableOf(actions[i]);
    REQUIRE(d.type == QXL_DRAW_FILL);
    CHECK(d.surfaceId == 0);
    CHECK(d.bbox == Rect{0, 0, 768, 1024});
    CHECK(d.clip.type == SPICE_CLIP_TYPE_NONE);
    const Fill& f = std::get<Fill>(d.payload);
    REQUIRE(f.brush.type == SPICE_BRUSH_TYPE_SOLID);
    CHECK(f.ropDescriptor == SPICE_ROPD_OP_PUT);
    CHECK(!f.mask.bitmap);
    CHECK(f.brush.color <= 0xffffff);
    if (previous)
      REQUIRE(f.brush.color != *previous);
    previous = f.brush.color;
    colors.insert(f.brush.color);
  }
  CHECK(colors.size() > 19000);  // a sequence, not two alternating colours
  checkRoundTrip({actions.begin(), actions.begin() + 50});
  CHECK(makeScenario("flash", {})->commandsPerSecond() == 0);
  ScenarioOptions paced;
  paced.rate = 75;
  CHECK(makeScenario("flash", paced)->commandsPerSecond() == 75);
}

}  // namespace spicebox::guestsim
