// Runs in: guestsim-tests (developer machine / CI). Input: the shared real
// recordings (trusted as ground truth, with .stats.txt from an independent
// tool) and hand-built hostile recordings.

#include "tools/guestsim/spice-record.h"
#include "tests/support/shared-recordings.h"

#include <lzma.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

namespace spicebox::guestsim {
namespace {

// ---------------------------------------------------------------- helpers

using Counts = std::map<std::string, uint64_t>;

constexpr const char* DRAW_NAMES[] = {
    "NOP",    "FILL", "OPAQUE", "COPY", "COPY_BITS",   "BLEND",       "BLACKNESS", "WHITENESS",
    "INVERS", "ROP3", "STROKE", "TEXT", "TRANSPARENT", "ALPHA_BLEND", "COMPOSITE"};
constexpr const char* CMD_NAMES[] = {"NOP", "DRAW", "UPDATE", "CURSOR", "MESSAGE", "SURFACE"};
constexpr const char* BITMAP_FORMATS[] = {"INVALID", "1BIT_LE", "1BIT_BE", "4BIT_LE",
                                          "4BIT_BE", "8BIT",    "16BIT",   "24BIT",
                                          "32BIT",   "RGBA",    "8BIT_A"};
constexpr const char* CURSOR_CMDS[] = {"SET", "MOVE", "HIDE", "TRAIL"};
constexpr const char* CURSOR_TYPES[] = {"ALPHA",   "MONO",    "COLOR4", "COLOR8",
                                        "COLOR16", "COLOR24", "COLOR32"};

template <size_t N>
std::string nameOf(const char* const (&names)[N], uint64_t v) {
  return v < N ? names[v] : std::to_string(v);
}

std::string imageTypeName(uint8_t t) {
  switch (t) {
    case 0:
      return "BITMAP";
    case 1:
      return "QUIC";
    case 104:
      return "SURFACE";
  }
  return std::to_string(t);
}

std::string hex(uint64_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

// What the reader saw, keyed the way the independent stats tool names things.
struct Tally {
  Counts counters;  // first section of .stats.txt
  uint64_t events = 0, commands = 0, io = 0;
  Counts commandsByType;
  Counts ioMessages;
  std::vector<std::string> primaries;

  void image(const std::optional<Image>& img) {
    if (!img) {
      return;
    }
    if (auto* bm = std::get_if<Bitmap>(&img->payload)) {
      counters["bitmap_format " + nameOf(BITMAP_FORMATS, bm->format)]++;
      counters["bitmap_bytes_total"] += bm->data.size();
    }
  }

  void add(const RecordEvent& ev) {
    events++;
    if (auto* io = std::get_if<IoEvent>(&ev.body)) {
      this->io++;
      ioMessages[std::string(workerMessageName(io->message))]++;
      if (io->primary) {
        const auto& p = *io->primary;
        counters["io CREATE_PRIMARY " + std::to_string(p.width) + "x" + std::to_string(p.height) +
                 " stride " + std::to_string(p.stride) + " format " + std::to_string(p.format)]++;
        primaries.push_back(std::to_string(p.width) + " " + std::to_string(p.height) + " " +
                            std::to_string(p.stride) + " " + std::to_string(p.format));
      }
      return;
    }
    const auto& cmd = std::get<Command>(ev.body);
    commands++;
    std::string cmdName = nameOf(CMD_NAMES, static_cast<uint8_t>(cmd.type));
    commandsByType[cmdName]++;
    counters["cmd " + cmdName]++;
    if (auto* d = std::get_if<Drawable>(&cmd.body)) {
      counters["draw " + nameOf(DRAW_NAMES, d->type)]++;
      counters[std::string("draw_clip ") + (d->clip.type == 0 ? "NONE" : "RECTS")]++;
      counters[std::string("draw_target ") + (d->surfaceId == 0 ? "primary" : "offscreen")]++;
      if (d->surfacesDest[0] != -1 || d->surfacesDest[1] != -1 || d->surfacesDest[2] != -1) {
        counters["draw_with_surface_deps"]++;
      }
      std::visit(
          [&](const auto& p) {
            using T = std::decay_t<decltype(p)>;
            if constexpr (std::is_same_v<T, Fill>) {
              const char* brushes[] = {"NONE", "SOLID", "PATTERN"};
              counters["brush fill " + nameOf(brushes, p.brush.type)]++;
              counters["fill_rop " + hex(p.ropDescriptor)]++;
              image(p.brush.pattern);
              image(p.mask.bitmap);
            } else if constexpr (std::is_same_v<T, Copy>) {
              counters["copy_rop " + hex(p.ropDescriptor)]++;
              if (p.srcBitmap) {
                counters["image copy_src " + imageTypeName(p.srcBitmap->type)]++;
              }
              image(p.srcBitmap);
              image(p.mask.bitmap);
            } else if constexpr (std::is_same_v<T, Opaque> || std::is_same_v<T, Blend> ||
                                 std::is_same_v<T, Rop3> || std::is_same_v<T, Transparent> ||
                                 std::is_same_v<T, AlphaBlend>) {
              image(p.srcBitmap);
            }
          },
          d->payload);
    } else if (auto* s = std::get_if<SurfaceCmd>(&cmd.body)) {
      counters[std::string("surface ") + (s->type == 0 ? "CREATE" : "DESTROY")]++;
      if (s->type == 0) {
        counters["surface_create_format " + std::to_string(s->format)]++;
      }
    } else if (auto* c = std::get_if<CursorCmd>(&cmd.body)) {
      counters["cursor " + nameOf(CURSOR_CMDS, c->type)]++;
      if (c->shape) {
        counters["cursor_shape " + nameOf(CURSOR_TYPES, c->shape->type) + " " +
                 std::to_string(c->shape->width) + "x" + std::to_string(c->shape->height)]++;
      }
    }
  }
};

// The parts of a .stats.txt the reader can be held to.
struct Stats {
  uint64_t commands = 0;  // "commands: N" of the first section
  Counts counters;
  uint64_t events = 0, sectionCommands = 0, io = 0;
  Counts commandsByType, ioMessages;
  std::vector<std::string> primaries;
};

std::string trim(std::string s) {
  size_t a = s.find_first_not_of(" \t");
  size_t b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// "{'DRAW': 17203, 'SURFACE': 7}" -> map
Counts parseDict(const std::string& s) {
  Counts out;
  size_t i = 0;
  while ((i = s.find('\'', i)) != std::string::npos) {
    size_t j = s.find('\'', i + 1);
    size_t colon = s.find(':', j);
    size_t end = s.find_first_of(",}", colon);
    out[s.substr(i + 1, j - i - 1)] = std::stoull(trim(s.substr(colon + 1, end - colon - 1)));
    i = end;
  }
  return out;
}

std::vector<std::string> parseList(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while ((i = s.find('\'', i)) != std::string::npos) {
    size_t j = s.find('\'', i + 1);
    out.push_back(s.substr(i + 1, j - i - 1));
    i = j + 1;
  }
  return out;
}

Stats parseStats(const std::filesystem::path& path) {
  Stats st;
  std::ifstream in(path);
  REQUIRE(in.good());
  std::string line;
  bool secondSection = false;
  while (std::getline(in, line)) {
    if (line.rfind("  ", 0) == 0 && !secondSection) {
      std::string t = trim(line);
      size_t sp = t.find_last_of(' ');
      st.counters[trim(t.substr(0, sp))] = std::stoull(t.substr(sp + 1));
    } else if (line.rfind("commands: ", 0) == 0) {
      st.commands = std::stoull(line.substr(10));
    } else if (line.rfind("events: ", 0) == 0) {
      secondSection = true;
      std::istringstream s(line);
      std::string k1, k2, k3;
      s >> k1 >> st.events >> k2 >> st.sectionCommands >> k3 >> st.io;
    } else if (line.rfind("commands by type: ", 0) == 0) {
      st.commandsByType = parseDict(line);
    } else if (line.rfind("io messages: ", 0) == 0) {
      st.ioMessages = parseDict(line);
    } else if (line.rfind("primary surfaces", 0) == 0) {
      st.primaries = parseList(line.substr(line.find(':')));
    }
  }
  return st;
}

const std::filesystem::path RECORDINGS_DIR = SPICEBOX_RECORDINGS_DIR;

void checkRecording(const std::string& name) {
  auto started = std::chrono::steady_clock::now();
  auto opened = RecordReader::open((RECORDINGS_DIR / (name + ".rec.xz")).string());
  if (auto* err = std::get_if<RecordError>(&opened)) {
    FAIL(err->toString());
  }
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  Tally tally;
  for (;;) {
    auto ev = reader.next();
    if (auto* err = std::get_if<RecordError>(&ev)) {
      FAIL(name << ": " << err->toString());
    }
    if (std::holds_alternative<EndOfRecording>(ev)) {
      break;
    }
    tally.add(std::get<RecordEvent>(ev));
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << name << ": " << tally.events << " events, " << tally.commands << " commands, "
            << tally.io << " io events, " << reader.offset() << " bytes, " << seconds << " s"
            << std::endl;
  WARN(name << ": " << tally.commands << " commands, " << tally.io << " io events");

  Stats st = parseStats(RECORDINGS_DIR / (name + ".stats.txt"));
  CHECK(tally.commands == st.commands);
  CHECK(tally.commands == st.sectionCommands);
  CHECK(tally.events == st.events);
  CHECK(tally.io == st.io);
  CHECK(tally.commandsByType == st.commandsByType);
  CHECK(tally.ioMessages == st.ioMessages);
  CHECK(tally.primaries == st.primaries);
  REQUIRE_FALSE(st.counters.empty());
  for (const auto& [key, value] : st.counters) {
    INFO(name << " stats counter \"" << key << "\"");
    CHECK(tally.counters[key] == value);
  }
  for (const auto& [key, value] : tally.counters) {
    INFO(name << " reader counter \"" << key << "\" = " << value << " is absent from the stats");
    CHECK(st.counters.count(key) == 1);
  }
}

// ---------------------------------------------------------------- synthetic

// A small recording covering every event shape the real ones use, plus a
// palette, clip rects, a stroke and a cursor shape.
struct Builder {
  std::string s = "SPICE_REPLAY 1\n";
  int n = 0;
  std::vector<size_t> eventStarts;

  Builder& event(int what, int type) {
    eventStarts.push_back(s.size());
    s += "event " + std::to_string(n++) + " " + std::to_string(what) + " " + std::to_string(type) +
         " 1000\n";
    return *this;
  }
  Builder& text(const std::string& t) {
    s += t;
    return *this;
  }
  Builder& binary(const std::string& prefix, const std::string& bytes) {
    s += "binary 0 " + prefix + " " + std::to_string(bytes.size()) + ":" + bytes + "\n";
    return *this;
  }
};

const std::string DRAW_HEAD_NO_CLIP = "drawable\nrect bbox 0 0 10 10\ntype 0\n";
const std::string DRAW_AFTER_CLIP =
    "effect 1\nmm_time 0\nself_bitmap 0\nrect self_bitmap_area 0 0 0 0\nsurface_id 0\n"
    "surfaces_dest -1\nrect surfaces_rects 0 0 0 0\nsurfaces_dest -1\n"
    "rect surfaces_rects 0 0 0 0\nsurfaces_dest -1\nrect surfaces_rects 0 0 0 0\n";
const std::string FILL_BODY =
    "type 1\ntype 1\nu.color -1\nrop_descriptor 8\nflags 0\npoint 0 0\nimage 0\n";

std::string le32(std::initializer_list<uint32_t> vals) {
  std::string out;
  for (uint32_t v : vals) {
    for (int i = 0; i < 4; ++i) {
      out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
  }
  return out;
}

Builder validRecording() {
  Builder b;
  b.event(1, 16);  // ADD_MEMSLOT: no body
  b.event(1, 20).text("4 2 -16 32\n0 1 0 0\n").binary("data", std::string(32, 'p'));
  b.event(0, 5).text(
      "surface_cmd\nsurface_id 1\ntype 0\nflags 1\nu.surface_create.format 32\n"
      "u.surface_create.width 2\nu.surface_create.height 2\nu.surface_create.stride -8\n");
  b.binary("data", std::string(16, 's'));
  // FILL with a two-rect clip.
  b.event(0, 1).text("drawable\nrect bbox 0 0 10 10\ntype 1\nnum_rects 2\ndata_chunks 1 32\n");
  b.binary("clip_rects", le32({1, 2, 3, 4})).binary("clip_rects", le32({5, 6, 7, 8}));
  b.text(DRAW_AFTER_CLIP + FILL_BODY);
  // COPY of an 8-bit paletted bitmap split over two chunks.
  b.event(0, 1).text(DRAW_HEAD_NO_CLIP + DRAW_AFTER_CLIP +
                     "type 3\nimage 1\ndescriptor.id 18446744073709551615\ndescriptor.type 0\n"
                     "descriptor.flags 0\ndescriptor.width 2\ndescriptor.height 2\n"
                     "bitmap.format 5\nbitmap.flags 4\nbitmap.x 2\nbitmap.y 2\nbitmap.stride 4\n"
                     "has_palette 1\nqp.num_ents 2\nunique 7\nents 0\nents -1\n"
                     "data_chunks 1 8\n");
  b.binary("bitmap.data", "abcd").binary("bitmap.data", "efgh");
  b.text("rect src_area 0 0 2 2\nrop_descriptor 8\nscale_mode 0\nflags 0\npoint 0 0\nimage 0\n");
  // STROKE: one segment of two points, styled.
  b.event(0, 1).text(DRAW_HEAD_NO_CLIP + DRAW_AFTER_CLIP + "type 10\ndata_chunks 0 24\n");
  b.binary("path", le32({3, 2, 16, 32, 48, 64}));
  b.text("attr.flags 8\nattr.style_nseg 2\n").binary("style", le32({16, 32}));
  b.text("type 1\nu.color 255\nfore_mode 1\nback_mode 2\n");
  // COPY_BITS
  b.event(0, 1).text(DRAW_HEAD_NO_CLIP + DRAW_AFTER_CLIP + "type 4\npoint 5 6\n");
  b.event(1, 2);  // WAKEUP
  b.event(0, 3).text(
      "cursor_cmd\ntype 0\npoint16 3 4\nu.set.visible 1\nheader.unique 9\nheader.type 0\n"
      "header.width 1\nheader.height 1\nheader.hot_spot_x 0\nheader.hot_spot_y 0\n"
      "data_size 4\ndata_chunks 0 4\n");
  b.binary("cursor", "CCCC");
  b.event(0, 3).text("cursor_cmd\ntype 1\npoint16 -1 -2\n");
  b.event(0, 2).text("update\nrect area 0 0 4 4\nupdate_id 1\nsurface_id 0\n");
  b.event(0, 4).binary("message", "hello");
  b.event(1, 9);  // STOP
  return b;
}

struct ReadAll {
  std::vector<RecordEvent> events;
  std::optional<RecordError> error;
};

ReadAll readAll(std::string bytes) {
  ReadAll out;
  auto opened = RecordReader::fromBytes(std::move(bytes));
  if (auto* err = std::get_if<RecordError>(&opened)) {
    out.error = *err;
    return out;
  }
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  for (;;) {
    auto ev = reader.next();
    if (auto* err = std::get_if<RecordError>(&ev)) {
      out.error = *err;
      // Errors are sticky.
      auto again = reader.next();
      REQUIRE(std::holds_alternative<RecordError>(again));
      CHECK(std::get<RecordError>(again).kind == err->kind);
      return out;
    }
    if (std::holds_alternative<EndOfRecording>(ev)) {
      return out;
    }
    out.events.push_back(std::move(std::get<RecordEvent>(ev)));
  }
}

RecordErrorKind errorKindOf(const std::string& bytes) {
  ReadAll r = readAll(bytes);
  REQUIRE(r.error.has_value());
  INFO(r.error->toString());
  return r.error->kind;
}

// Replaces the first occurrence of `from` in the valid recording.
std::string mutate(const std::string& from, const std::string& to) {
  std::string s = validRecording().s;
  auto pos = s.find(from);
  REQUIRE(pos != std::string::npos);
  s.replace(pos, from.size(), to);
  return s;
}

// ---------------------------------------------------------------- tests

TEST_CASE("real-recordings-match-independent-stats", "[spice-record][recordings]") {
  if (!test::recordingsPresent(RECORDINGS_DIR)) {
    return;
  }
  auto started = std::chrono::steady_clock::now();
  SECTION("console") {
    checkRecording("console");
  }
  SECTION("windows") {
    checkRecording("windows");
  }
  std::cout << "recording section time: "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()
            << " s" << std::endl;
}

TEST_CASE("synthetic-recording-parses-to-typed-tree", "[spice-record]") {
  ReadAll r = readAll(validRecording().s);
  if (r.error) {
    FAIL(r.error->toString());
  }
  REQUIRE(r.events.size() == 13);

  const auto& memslot = std::get<IoEvent>(r.events[0].body);
  CHECK(memslot.message == WorkerMessage::AddMemslot);
  CHECK_FALSE(memslot.primary);

  const auto& prim = std::get<IoEvent>(r.events[1].body);
  REQUIRE(prim.primary);
  CHECK(prim.primary->width == 4);
  CHECK(prim.primary->stride == -16);
  CHECK(prim.primary->mouseMode == 1);
  CHECK(prim.primary->data.size() == 32);

  const auto& surf = std::get<SurfaceCmd>(std::get<Command>(r.events[2].body).body);
  CHECK(surf.surfaceId == 1);
  CHECK(surf.data == std::vector<uint8_t>(16, 's'));

  const auto& fill = std::get<Drawable>(std::get<Command>(r.events[3].body).body);
  REQUIRE(fill.clip.rects.size() == 2);
  CHECK(fill.clip.rects[1] == Rect{5, 6, 7, 8});
  CHECK(std::get<Fill>(fill.payload).brush.color == 0xffffffffu);
  CHECK(fill.surfacesDest[0] == -1);

  const auto& copy =
      std::get<Copy>(std::get<Drawable>(std::get<Command>(r.events[4].body).body).payload);
  REQUIRE(copy.srcBitmap);
  CHECK(copy.srcBitmap->id == UINT64_MAX);
  const auto& bm = std::get<Bitmap>(copy.srcBitmap->payload);
  CHECK(bm.chunkCount == 2);
  CHECK(std::string(bm.data.begin(), bm.data.end()) == "abcdefgh");
  REQUIRE(bm.palette);
  CHECK(bm.palette->entries == std::vector<uint32_t>{0, 0xffffffffu});

  const auto& stroke =
      std::get<Stroke>(std::get<Drawable>(std::get<Command>(r.events[5].body).body).payload);
  REQUIRE(stroke.path.size() == 1);
  CHECK(stroke.path[0].points.size() == 2);
  CHECK(stroke.path[0].points[1].y == 64);
  CHECK(stroke.style == std::vector<int32_t>{16, 32});

  CHECK(std::get<CopyBits>(std::get<Drawable>(std::get<Command>(r.events[6].body).body).payload)
            .srcPos.y == 6);
  const auto& cur = std::get<CursorCmd>(std::get<Command>(r.events[8].body).body);
  REQUIRE(cur.shape);
  CHECK(cur.shape->data.size() == 4);
  CHECK(std::get<CursorCmd>(std::get<Command>(r.events[9].body).body).position.x == -1);
  CHECK(std::get<UpdateCmd>(std::get<Command>(r.events[10].body).body).updateId == 1);
  const auto& msg = std::get<MessageCmd>(std::get<Command>(r.events[11].body).body);
  CHECK(std::string(msg.text.begin(), msg.text.end()) == "hello");
}

TEST_CASE("create-primary-rejected-by-server-has-no-body", "[spice-record]") {
  Builder b;
  b.event(1, 20).event(1, 2).event(1, 29);
  ReadAll r = readAll(b.s);
  REQUIRE_FALSE(r.error);
  REQUIRE(r.events.size() == 3);
  CHECK_FALSE(std::get<IoEvent>(r.events[0].body).primary);
  CHECK_FALSE(std::get<IoEvent>(r.events[2].body).primary);
}

TEST_CASE("truncated-file", "[spice-record][hostile]") {
  Builder b = validRecording();
  std::set<size_t> boundaries(b.eventStarts.begin(), b.eventStarts.end());
  boundaries.insert(b.s.size());
  // A cut right after a CREATE_PRIMARY event line reads as a primary that
  // spice-server rejected (it writes no body then): the format cannot tell.
  size_t primaryLine = b.s.find("event 1 1 20 1000\n");
  boundaries.insert(primaryLine + std::string("event 1 1 20 1000\n").size());
  // Every cut point: either a clean end at an event boundary or Truncated.
  for (size_t cut = 0; cut < b.s.size(); ++cut) {
    INFO("cut at " << cut);
    ReadAll r = readAll(b.s.substr(0, cut));
    if (cut < std::string("SPICE_REPLAY 1\n").size()) {
      REQUIRE(r.error);
      CHECK(r.error->kind == RecordErrorKind::BadHeader);
    } else if (boundaries.count(cut) || cut == std::string("SPICE_REPLAY 1\n").size()) {
      CHECK_FALSE(r.error);
    } else {
      REQUIRE(r.error);
      CHECK(r.error->kind == RecordErrorKind::Truncated);
      CHECK(r.error->offset <= cut);
      CHECK(r.error->eventIndex >= 0);
    }
  }
}

TEST_CASE("truncated-real-recording", "[spice-record][hostile][recordings]") {
  if (!test::recordingsPresent(RECORDINGS_DIR)) {
    return;
  }
  std::string full = test::decodeXzFile(RECORDINGS_DIR / "windows.rec.xz");
  // Inside the primary surface's 3 MiB block, inside a "binary" header, and
  // at points that land wherever they land (text lines or bitmap bytes).
  size_t primaryBlock = full.find("binary 0 data 3145728:") + 1000;
  size_t binaryHeader = full.find("binary 0 bitmap.data") + 9;
  // Kept in the first fifth: every cut re-parses its prefix, and ASan runs
  // must stay fast.
  for (size_t cut : {primaryBlock, binaryHeader, full.size() / 16, full.size() / 5}) {
    INFO("cut at " << cut);
    ReadAll r = readAll(full.substr(0, cut));
    REQUIRE(r.error);
    CHECK(r.error->kind == RecordErrorKind::Truncated);
    CHECK(r.error->offset <= cut);
  }
  // The reader's own xz path on a cut .xz file: a typed error, no crash.
  std::ifstream in(RECORDINGS_DIR / "windows.rec.xz", std::ios::binary);
  std::string packed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto tmp = std::filesystem::temp_directory_path() / "spice-record-test-cut.rec.xz";
  std::ofstream(tmp, std::ios::binary) << packed.substr(0, packed.size() / 2);
  auto opened = RecordReader::open(tmp.string());
  REQUIRE(std::holds_alternative<std::unique_ptr<RecordReader>>(opened));
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  std::variant<RecordEvent, EndOfRecording, RecordError> ev;
  uint64_t events = 0;
  while (std::holds_alternative<RecordEvent>(ev = reader.next())) {
    events++;
  }
  std::filesystem::remove(tmp);
  REQUIRE(std::holds_alternative<RecordError>(ev));
  INFO(std::get<RecordError>(ev).toString());
  CHECK(std::get<RecordError>(ev).kind == RecordErrorKind::XzError);
  CHECK(events > 0);
}

TEST_CASE("bad-header", "[spice-record][hostile]") {
  CHECK(errorKindOf("") == RecordErrorKind::BadHeader);
  CHECK(errorKindOf("SPICE_REPLAY\n") == RecordErrorKind::BadHeader);
  CHECK(errorKindOf("SPICE_REPLAY x\n") == RecordErrorKind::BadHeader);
  CHECK(errorKindOf("GIF89a\n") == RecordErrorKind::BadHeader);
  CHECK(errorKindOf(std::string(100000, 'A')) == RecordErrorKind::BadHeader);
  CHECK(errorKindOf("SPICE_REPLAY 2\n") == RecordErrorKind::UnsupportedVersion);
}

TEST_CASE("huge-binary-length", "[spice-record][hostile]") {
  // Claims 100 MiB (under the cap) but holds 5 bytes: must fail as
  // Truncated without allocating the claim.
  Builder b;
  b.event(0, 4).text("binary 0 message 104857600:hello");
  CHECK(errorKindOf(b.s) == RecordErrorKind::Truncated);

  Builder over;
  over.event(0, 4).text("binary 0 message 1099511627776:x\n");
  CHECK(errorKindOf(over.s) == RecordErrorKind::BinaryTooLarge);

  Builder wraps;
  wraps.event(0, 4).text("binary 0 message 99999999999999999999999:x\n");
  CHECK(errorKindOf(wraps.s) == RecordErrorKind::BadBinaryHeader);

  Builder negative;
  negative.event(0, 4).text("binary 0 message -1:x\n");
  CHECK(errorKindOf(negative.s) == RecordErrorKind::BadBinaryHeader);

  // Primary declared 4x2 but 1 GiB of data claimed.
  CHECK(errorKindOf(mutate("binary 0 data 32:", "binary 0 data 1073741824:")) ==
        RecordErrorKind::BinaryTooLarge);
  // Bitmap y*stride overflowing 32 bits.
  CHECK(errorKindOf(mutate("bitmap.y 2\nbitmap.stride 4\n",
                           "bitmap.y 4294967295\nbitmap.stride 4294967295\n")) ==
        RecordErrorKind::BinaryTooLarge);
}

TEST_CASE("binary-size-disagrees-with-declared-shape", "[spice-record][hostile]") {
  CHECK(errorKindOf(mutate("u.surface_create.height 2\n", "u.surface_create.height 3\n")) ==
        RecordErrorKind::SizeMismatch);
  CHECK(errorKindOf(mutate("data_chunks 1 8\n", "data_chunks 1 7\n")) ==
        RecordErrorKind::SizeMismatch);
  CHECK(errorKindOf(mutate("data_size 4\n", "data_size 5\n")) == RecordErrorKind::SizeMismatch);
  // One chunk claiming far more than the chunk list's declared total is
  // refused from its header, before its bytes are read.
  CHECK(errorKindOf(mutate("binary 0 bitmap.data 4:abcd", "binary 0 bitmap.data 100000000:abcd")) ==
        RecordErrorKind::SizeMismatch);
  CHECK(errorKindOf(mutate("binary 0 data 32:", "binary 0 data 31:")) ==
        RecordErrorKind::MissingBinaryTerminator);
}

TEST_CASE("negative-or-overflowing-counts", "[spice-record][hostile]") {
  SECTION("clip-rect-count-negative") {
    CHECK(errorKindOf(mutate("num_rects 2\n", "num_rects -1\n")) == RecordErrorKind::CountTooLarge);
  }
  SECTION("clip-rect-count-beyond-data") {
    CHECK(errorKindOf(mutate("num_rects 2\n", "num_rects 3\n")) == RecordErrorKind::SizeMismatch);
  }
  SECTION("clip-rect-count-above-32-bits") {
    CHECK(errorKindOf(mutate("num_rects 2\n", "num_rects 4294967296\n")) ==
          RecordErrorKind::BadNumber);
  }
  SECTION("palette-entries-huge") {
    CHECK(errorKindOf(mutate("qp.num_ents 2\n", "qp.num_ents 2147483647\n")) ==
          RecordErrorKind::CountTooLarge);
  }
  SECTION("palette-entries-negative") {
    CHECK(errorKindOf(mutate("qp.num_ents 2\n", "qp.num_ents -2\n")) ==
          RecordErrorKind::CountTooLarge);
  }
  SECTION("palette-entries-beyond-lines") {
    CHECK(errorKindOf(mutate("qp.num_ents 2\n", "qp.num_ents 3\n")) ==
          RecordErrorKind::UnexpectedLine);
  }
  SECTION("path-segments-beyond-data") {
    std::string good = le32({3, 2, 16, 32, 48, 64});
    std::string bad = le32({3, 1000000, 16, 32, 48, 64});
    CHECK(errorKindOf(mutate(good, bad)) == RecordErrorKind::PathSegmentBeyondData);
    CHECK(errorKindOf(mutate(good, le32({3, 0xffffffffu, 16, 32, 48, 64}))) ==
          RecordErrorKind::PathSegmentBeyondData);
  }
  SECTION("data-chunk-count-huge") {
    CHECK(errorKindOf(mutate("data_chunks 1 8\n", "data_chunks 2000000000 8\n")) ==
          RecordErrorKind::CountTooLarge);
  }
  SECTION("data-chunk-count-negative") {
    CHECK(errorKindOf(mutate("data_chunks 1 8\n", "data_chunks -1 8\n")) ==
          RecordErrorKind::BadNumber);
  }
  SECTION("style-segments-beyond-uint8") {
    CHECK(errorKindOf(mutate("attr.style_nseg 2\n", "attr.style_nseg 256\n")) ==
          RecordErrorKind::BadNumber);
  }
  SECTION("style-segments-beyond-data") {
    CHECK(errorKindOf(mutate("attr.style_nseg 2\n", "attr.style_nseg 3\n")) ==
          RecordErrorKind::SizeMismatch);
  }
}

TEST_CASE("garbage-event-line", "[spice-record][hostile]") {
  auto withEvent = [](const std::string& line) { return "SPICE_REPLAY 1\n" + line; };
  CHECK(errorKindOf(withEvent("event x 0 1 2\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent("evnt 0 0 1 2\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent("event 0 0 1\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent("event 0 0 1 2 3\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent("event  0 0 1 2\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent("\n")) == RecordErrorKind::BadEventLine);
  CHECK(errorKindOf(withEvent(std::string(10000, 'e'))) == RecordErrorKind::LineTooLong);
  CHECK(errorKindOf(withEvent("event 5 1 2 2\n")) == RecordErrorKind::EventOutOfSequence);
  CHECK(errorKindOf(withEvent("event 0 7 1 2\n")) == RecordErrorKind::UnknownWhat);
  CHECK(errorKindOf(withEvent("event 0 -1 1 2\n")) == RecordErrorKind::UnknownWhat);
  CHECK(errorKindOf(withEvent("event 0 1 41 2\n")) == RecordErrorKind::UnknownWorkerMessage);
  CHECK(errorKindOf(withEvent("event 0 0 9 2\n")) == RecordErrorKind::UnknownCommandType);
  // Trailing junk after a complete event shows up as the next event line.
  CHECK(errorKindOf(validRecording().s + "junk\n") == RecordErrorKind::BadEventLine);
}

TEST_CASE("garbage-inside-command", "[spice-record][hostile]") {
  CHECK(errorKindOf(mutate("rect bbox 0 0 10 10\ntype 1\n", "rect bbox 0 0 10\ntype 1\n")) ==
        RecordErrorKind::UnexpectedLine);
  CHECK(errorKindOf(mutate("rect bbox 0 0 10 10\ntype 1\n", "rect bbox 0 0 10 1O\ntype 1\n")) ==
        RecordErrorKind::BadNumber);
  CHECK(errorKindOf(mutate("u.surface_create.width 2\n", "u.surface_create.wdth 2\n")) ==
        RecordErrorKind::UnexpectedLine);
  CHECK(errorKindOf(mutate("effect 1\n", "effect 256\n")) == RecordErrorKind::BadNumber);
  CHECK(errorKindOf(mutate("type 3\nimage 1\n", "type 15\nimage 1\n")) ==
        RecordErrorKind::UnknownDrawType);
  CHECK(errorKindOf(mutate("descriptor.type 0\n", "descriptor.type 101\n")) ==
        RecordErrorKind::UnknownImageType);
  CHECK(errorKindOf(mutate("image 1\n", "image 2\n")) == RecordErrorKind::BadNumber);
  CHECK(errorKindOf(mutate("binary 0 cursor", "binary 1 cursor")) ==
        RecordErrorKind::CompressedBinaryUnsupported);
  CHECK(errorKindOf(mutate("binary 0 cursor", "binary 0 cursed")) ==
        RecordErrorKind::BadBinaryHeader);
  CHECK(errorKindOf(mutate("binary 0 cursor 4:", "binary 0 cursor 4")) ==
        RecordErrorKind::BadBinaryHeader);
}

}  // namespace
}  // namespace spicebox::guestsim
