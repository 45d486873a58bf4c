// Runs in: guestsim-tests (developer machine / CI). Input: the shared real
// recordings (ground truth, skipped loudly when absent) and trees built here.

#include "tools/guestsim/spice-record-writer.h"
#include "tests/support/shared-recordings.h"

#include <lzma.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {
namespace {

const std::filesystem::path RECORDINGS_DIR = SPICEBOX_RECORDINGS_DIR;

// A writer into memory; `bytes()` is valid after finish().
struct MemoryOutput {
  char* data = nullptr;
  size_t size = 0;
  FILE* file = open_memstream(&data, &size);
  ~MemoryOutput() {
    std::fclose(file);
    std::free(data);
  }
  std::unique_ptr<RecordWriter> writer() {
    auto opened = RecordWriter::toFile(file, Compression::None);
    if (auto* err = std::get_if<WriteError>(&opened)) {
      FAIL(err->toString());
    }
    return std::move(std::get<std::unique_ptr<RecordWriter>>(opened));
  }
  std::string bytes() const { return std::string(data, size); }
};

std::vector<RecordEvent> readEvents(
    std::variant<std::unique_ptr<RecordReader>, RecordError> opened) {
  if (auto* err = std::get_if<RecordError>(&opened)) {
    FAIL(err->toString());
  }
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  std::vector<RecordEvent> events;
  for (;;) {
    auto ev = reader.next();
    if (auto* err = std::get_if<RecordError>(&ev)) {
      FAIL(err->toString());
    }
    if (std::holds_alternative<EndOfRecording>(ev)) {
      return events;
    }
    events.push_back(std::move(std::get<RecordEvent>(ev)));
  }
}

// Trees compare equal apart from where each event sat in its file.
void checkSameEvents(std::vector<RecordEvent> a, std::vector<RecordEvent> b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("event " << i);
    a[i].offset = b[i].offset = 0;
    CHECK(a[i] == b[i]);
  }
}

size_t firstDifference(const std::string& a, const std::string& b) {
  size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) {
      return i;
    }
  }
  return n;
}

// Reads `name`.rec.xz, writes every event back and compares with the
// decompressed original byte for byte.
void checkByteIdentical(const std::string& name) {
  auto started = std::chrono::steady_clock::now();
  std::string original = test::decodeXzFile(RECORDINGS_DIR / (name + ".rec.xz"));
  auto opened = RecordReader::open((RECORDINGS_DIR / (name + ".rec.xz")).string());
  if (auto* err = std::get_if<RecordError>(&opened)) {
    FAIL(err->toString());
  }
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  MemoryOutput mem;
  auto writer = mem.writer();
  uint64_t events = 0;
  for (;;) {
    auto ev = reader.next();
    if (auto* err = std::get_if<RecordError>(&ev)) {
      FAIL(name << ": " << err->toString());
    }
    if (std::holds_alternative<EndOfRecording>(ev)) {
      break;
    }
    if (auto err = writer->write(std::get<RecordEvent>(ev))) {
      FAIL(name << ": " << err->toString());
    }
    ++events;
  }
  if (auto err = writer->finish()) {
    FAIL(err->toString());
  }
  std::string written = mem.bytes();
  size_t diff = firstDifference(written, original);
  INFO(name << ": first difference at byte " << diff << " of " << original.size());
  CHECK(written.size() == original.size());
  CHECK(written == original);
  CHECK(writer->bytesWritten() == original.size());
  std::cout << name << ": " << events << " events re-serialised, " << written.size()
            << " bytes, identical: " << (written == original) << ", "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()
            << " s" << std::endl;
}

// ---------------------------------------------------------------- synthetic tree

Image bitmapImage(uint8_t flags, std::vector<uint32_t> chunkSizes, bool palette) {
  Image img;
  img.id = UINT64_MAX;  // PRIu64
  img.type = 0;
  img.flags = 3;
  img.width = 3;
  img.height = 2;
  Bitmap bm;
  bm.format = palette ? 5 : 9;
  bm.flags = flags;
  bm.x = 3;
  bm.y = 2;
  bm.stride = 12;
  for (int i = 0; i < 24; ++i) {
    bm.data.push_back(static_cast<uint8_t>(i * 7));
  }
  bm.chunkCount = chunkSizes.empty() ? 1 : static_cast<uint32_t>(chunkSizes.size());
  bm.chunkSizes = std::move(chunkSizes);
  if (palette) {
    bm.palette = Palette{42, {0, 0x80000000u, 0xffffffffu}};
  }
  img.payload = std::move(bm);
  return img;
}

Image surfaceImage() {
  Image img;
  img.id = 5;
  img.type = 104;
  img.width = img.height = 8;
  img.payload = SurfaceImage{0xfffffffeu};
  return img;
}

Image quicImage() {
  Image img;
  img.id = 6;
  img.type = 1;
  img.width = img.height = 4;
  img.payload = QuicImage{{'Q', 'U', 'I', 'C', 0, '\n', ':'}, {3, 4}};
  return img;
}

Brush patternBrush() {
  Brush b;
  b.type = 2;
  b.pattern = surfaceImage();
  b.patternPos = {-3, 4};
  return b;
}
Brush solidBrush(uint32_t color) {
  Brush b;
  b.type = 1;
  b.color = color;
  return b;
}

QMask mask() {
  return QMask{1, {2, -3}, bitmapImage(1, {}, false)};
}

Drawable drawable(DrawPayload payload, bool compat = false) {
  Drawable d;
  d.compat = compat;
  d.bbox = {0, -1, 100, 0x7fffffff};
  d.effect = 255;
  d.mmTime = 0xfffffff0u;  // printed negative by %d
  if (compat) {
    d.bitmapOffset = 7;
    d.bitmapArea = {1, 2, 3, 4};
  } else {
    d.selfBitmap = 1;
    d.selfBitmapArea = {5, 6, 7, 8};
    d.surfaceId = 3;
    d.surfacesDest = {2, -1, 0};
    d.surfacesRects = {Rect{1, 1, 2, 2}, Rect{}, Rect{-5, -5, 0, 0}};
  }
  d.type = static_cast<uint8_t>(payload.index());
  d.payload = std::move(payload);
  return d;
}

Command draw(Drawable d) {
  return Command{CommandType::Draw, std::move(d)};
}

// Every QXL_DRAW_* type, every image kind, chunked and flat data, compat
// drawables, every command and a primary surface with and without pixels.
std::vector<std::variant<Command, IoEvent>> everyShape() {
  std::vector<std::variant<Command, IoEvent>> out;
  out.push_back(IoEvent{WorkerMessage::AddMemslot, std::nullopt});
  out.push_back(IoEvent{WorkerMessage::CreatePrimarySurface,
                        PrimarySurface{2, 2, -8, 32, 0, 1, 0, 0, std::vector<uint8_t>(16, 'p')}});
  out.push_back(IoEvent{WorkerMessage::CreatePrimarySurfaceAsync,
                        PrimarySurface{0x80000000u, 1, 4, 32, 1, 2, 3, 4, {}}});
  out.push_back(IoEvent{WorkerMessage::CreatePrimarySurface, std::nullopt});  // rejected

  out.push_back(draw(drawable(DrawNop{})));
  Drawable clipped = drawable(Fill{solidBrush(0xffffffffu), 8, mask()});
  clipped.clip = Clip{1, {Rect{1, 2, 3, 4}, Rect{-5, -6, 7, 8}, Rect{9, 10, 11, 12}}, {20, 28}};
  out.push_back(draw(clipped));
  Drawable oneChunkClip = drawable(Fill{patternBrush(), 0xffff, QMask{}});
  oneChunkClip.clip = Clip{1, {Rect{1, 2, 3, 4}}, {}};
  out.push_back(draw(oneChunkClip));
  out.push_back(draw(drawable(
      Opaque{bitmapImage(4, {10, 10, 4}, true), {0, 0, 2, 3}, patternBrush(), 3, 1, mask()})));
  out.push_back(draw(drawable(Copy{bitmapImage(1, {}, false), {0, 0, 2, 3}, 8, 0, QMask{}})));
  out.push_back(draw(drawable(Copy{surfaceImage(), {1, 1, 2, 2}, 8, 0, QMask{}})));
  out.push_back(draw(drawable(CopyBits{{-7, 9}})));
  out.push_back(draw(drawable(Blend{quicImage(), {0, 0, 4, 4}, 2, 1, mask()})));
  out.push_back(draw(drawable(Blackness{mask()})));
  out.push_back(draw(drawable(Whiteness{QMask{}})));
  out.push_back(draw(drawable(Invers{mask()})));
  out.push_back(draw(drawable(Rop3{std::nullopt, {0, 0, 0, 0}, solidBrush(7), 0xca, 1, mask()})));
  Stroke stroke;
  stroke.path = {PathSegment{1, {{16, 32}, {-48, 64}}}, PathSegment{0x12, {}},
                 PathSegment{2, {{0, 0}}}};
  stroke.pathChunkSizes = {5, 30, 13};  // boundaries inside segments
  stroke.attrFlags = 8;
  stroke.style = {16, -32, 0x7fffffff};
  stroke.brush = solidBrush(0x00ff00);
  stroke.foreMode = 1;
  stroke.backMode = 0xffff;
  out.push_back(draw(drawable(stroke)));
  Stroke plain;
  plain.path = {PathSegment{3, {{1, 2}}}};
  plain.brush.type = 0;  // NONE: no body
  out.push_back(draw(drawable(plain)));
  Text text;
  text.str = QxlString{3, 2, {'g', 'l', 'y', 'p', 'h', 's'}, {2, 0, 4}};
  text.backArea = {0, 0, 8, 8};
  text.foreBrush = solidBrush(1);
  text.backBrush = patternBrush();
  text.foreMode = 4;
  text.backMode = 5;
  out.push_back(draw(drawable(text)));
  out.push_back(
      draw(drawable(Transparent{bitmapImage(0, {}, false), {0, 0, 2, 3}, 0xff00ff, 0x80808080u})));
  out.push_back(draw(drawable(AlphaBlend{1, 128, surfaceImage(), {0, 0, 1, 1}})));
  Composite comp;
  comp.flags = 0x80000001u;
  comp.src = bitmapImage(0, {}, false);
  comp.srcTransform = Transform{0x10000, 0, 0, 0x10000, 0xffff0000u, 5};
  comp.mask = surfaceImage();
  comp.srcOrigin = {-32768, 32767};
  comp.maskOrigin = {1, -1};
  out.push_back(draw(drawable(comp)));
  Composite bare;
  bare.maskTransform = Transform{1, 2, 3, 4, 5, 6};
  out.push_back(draw(drawable(bare)));
  // Compat drawables: no surface fields, no alpha_flags.
  out.push_back(draw(drawable(Copy{bitmapImage(0, {}, false), {0, 0, 2, 3}, 8, 0, QMask{}}, true)));
  out.push_back(draw(drawable(AlphaBlend{0, 200, std::nullopt, {0, 0, 1, 1}}, true)));
  out.push_back(draw(drawable(text, true)));

  out.push_back(Command{CommandType::Update, UpdateCmd{{0, 0, 768, 1024}, 0xffffffffu, 0}});
  CursorCmd set;
  set.type = 0;
  set.position = {-1, 300};
  set.visible = 1;
  set.shape = CursorShape{77, 0, 24, 24, 3, 4, std::vector<uint8_t>(24 * 24 * 4, 0xab), {}};
  out.push_back(Command{CommandType::Cursor, set});
  CursorCmd chunkedSet = set;
  chunkedSet.shape->data.resize(10);
  chunkedSet.shape->chunkSizes = {9, 1};
  out.push_back(Command{CommandType::Cursor, chunkedSet});
  CursorCmd move;
  move.type = 1;
  move.position = {5, -5};
  out.push_back(Command{CommandType::Cursor, move});
  CursorCmd hide;
  hide.type = 2;
  out.push_back(Command{CommandType::Cursor, hide});
  CursorCmd trail;
  trail.type = 3;
  trail.trailLength = 65535;
  trail.trailFrequency = 2;
  out.push_back(Command{CommandType::Cursor, trail});
  out.push_back(Command{CommandType::Message, MessageCmd{{'h', 'i', '\n', ':'}}});
  SurfaceCmd create;
  create.surfaceId = 9;
  create.type = 0;
  create.flags = 1;
  create.format = 32;
  create.width = 2;
  create.height = 3;
  create.stride = -8;
  create.data = std::vector<uint8_t>(24, 's');
  out.push_back(Command{CommandType::Surface, create});
  SurfaceCmd noKeep = create;
  noKeep.flags = 0;
  noKeep.data.clear();
  out.push_back(Command{CommandType::Surface, noKeep});
  SurfaceCmd destroy;
  destroy.surfaceId = 9;
  destroy.type = 1;
  out.push_back(Command{CommandType::Surface, destroy});
  out.push_back(IoEvent{WorkerMessage::Stop, std::nullopt});
  return out;
}

std::string writeShapes(RecordWriter& writer) {
  uint64_t ts = 1'000'000'000'000ull;
  for (const auto& body : everyShape()) {
    std::optional<WriteError> err;
    if (auto* cmd = std::get_if<Command>(&body)) {
      err = writer.writeCommand(*cmd, ts);
    } else {
      err = writer.writeIo(std::get<IoEvent>(body), ts);
    }
    if (err) {
      FAIL("event " << writer.nextIndex() << ": " << err->toString());
    }
    ts += 1234567;
  }
  if (auto err = writer.finish()) {
    FAIL(err->toString());
  }
  return {};
}

std::vector<RecordEvent> expectedShapes() {
  std::vector<RecordEvent> out;
  uint64_t ts = 1'000'000'000'000ull;
  for (auto& body : everyShape()) {
    out.push_back(RecordEvent{static_cast<uint32_t>(out.size()), ts, 0, std::move(body)});
    ts += 1234567;
  }
  return out;
}

WriteErrorKind writeErrorOf(const Command& cmd) {
  std::string out = "unchanged";
  auto err = serializeEvent(0, 0, cmd, out);
  REQUIRE(err.has_value());
  INFO(err->toString());
  CHECK(out == "unchanged");
  return err->kind;
}

// ---------------------------------------------------------------- tests

TEST_CASE("real-recordings-reserialise-byte-identical", "[spice-record][writer][recordings]") {
  if (!test::recordingsPresent(RECORDINGS_DIR)) {
    return;
  }
  SECTION("console") {
    checkByteIdentical("console");
  }
  SECTION("windows") {
    checkByteIdentical("windows");
  }
}

TEST_CASE("synthetic-tree-with-every-draw-type-round-trips", "[spice-record][writer]") {
  MemoryOutput mem;
  auto writer = mem.writer();
  writeShapes(*writer);
  std::string bytes = mem.bytes();
  auto events = readEvents(RecordReader::fromBytes(bytes));
  checkSameEvents(events, expectedShapes());

  // Every draw type appears, in native and (where it exists) compat form.
  std::set<size_t> drawTypes;
  for (const auto& ev : events) {
    if (auto* cmd = std::get_if<Command>(&ev.body)) {
      if (auto* d = std::get_if<Drawable>(&cmd->body)) {
        drawTypes.insert(d->payload.index());
      }
    }
  }
  CHECK(drawTypes.size() == std::variant_size_v<DrawPayload>);

  // Writing what was read reproduces the bytes.
  MemoryOutput again;
  auto writer2 = again.writer();
  for (const auto& ev : events) {
    REQUIRE_FALSE(writer2->write(ev));
  }
  REQUIRE_FALSE(writer2->finish());
  CHECK(again.bytes() == bytes);

  // A few lines pinned to the recorder's printf formats.
  CHECK(bytes.rfind("SPICE_REPLAY 1\nevent 0 1 16 1000000000000\n", 0) == 0);
  CHECK(bytes.find("\nmm_time -16\n") != std::string::npos);
  CHECK(bytes.find("\ndescriptor.id 18446744073709551615\n") != std::string::npos);
  CHECK(bytes.find("\nents -2147483648\nents -1\n") != std::string::npos);
  CHECK(bytes.find("\n-2147483648 1 4 32\n1 2 3 4\nbinary 0 data 0:\n") != std::string::npos);
  CHECK(bytes.find("\nsrc_origin -32768 32767\n") != std::string::npos);
  CHECK(bytes.find("\ndata_chunks 2 48\nbinary 0 path 5:") != std::string::npos);
  CHECK(bytes.find("\nu.trail.length 65535\n") != std::string::npos);
}

TEST_CASE("xz-output-reads-back", "[spice-record][writer]") {
  char dir[] = "/tmp/spice-record-writer-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/shapes.rec.xz";
  {
    auto opened = RecordWriter::open(path);
    if (auto* err = std::get_if<WriteError>(&opened)) {
      FAIL(err->toString());
    }
    writeShapes(*std::get<std::unique_ptr<RecordWriter>>(opened));
  }
  std::ifstream in(path, std::ios::binary);
  char magic[6] = {};
  in.read(magic, sizeof(magic));
  CHECK(std::string(magic, 6) == std::string("\xfd"
                                             "7zXZ\0",
                                             6));
  checkSameEvents(readEvents(RecordReader::open(path)), expectedShapes());
  std::filesystem::remove_all(dir);
}

TEST_CASE("writer-rejects-trees-the-recorder-cannot-produce", "[spice-record][writer]") {
  SECTION("draw-type-disagrees-with-payload") {
    Drawable d = drawable(Fill{});
    d.type = 3;
    CHECK(writeErrorOf(draw(d)) == WriteErrorKind::InconsistentTree);
  }
  SECTION("command-type-disagrees-with-body") {
    CHECK(writeErrorOf(Command{CommandType::Cursor, UpdateCmd{}}) ==
          WriteErrorKind::InconsistentTree);
  }
  SECTION("bitmap-data-shorter-than-y-times-stride") {
    Image img = bitmapImage(0, {}, false);
    std::get<Bitmap>(img.payload).data.pop_back();
    CHECK(writeErrorOf(draw(drawable(Copy{img, {}, 8, 0, {}}))) ==
          WriteErrorKind::InconsistentTree);
  }
  SECTION("chunk-sizes-disagree-with-data") {
    CHECK(writeErrorOf(draw(drawable(Copy{bitmapImage(0, {10, 10}, false), {}, 8, 0, {}}))) ==
          WriteErrorKind::InconsistentTree);
  }
  SECTION("compat-composite") {
    CHECK(writeErrorOf(draw(drawable(Composite{}, true))) == WriteErrorKind::InconsistentTree);
  }
  SECTION("image-type-without-recorder-support") {
    Image img = surfaceImage();
    img.type = 101;  // LZ_RGB: spice-server aborts on it while recording
    CHECK(writeErrorOf(draw(drawable(Copy{img, {}, 8, 0, {}}))) ==
          WriteErrorKind::InconsistentTree);
  }
  SECTION("surface-keep-data-wrong-size") {
    SurfaceCmd s;
    s.flags = 1;
    s.height = 2;
    s.stride = -4;
    s.data.resize(7);
    CHECK(writeErrorOf(Command{CommandType::Surface, s}) == WriteErrorKind::InconsistentTree);
  }
  SECTION("message-with-nul") {
    CHECK(writeErrorOf(Command{CommandType::Message, MessageCmd{{'a', 0, 'b'}}}) ==
          WriteErrorKind::InconsistentTree);
  }
  SECTION("event-out-of-sequence-then-writer-continues") {
    MemoryOutput mem;
    auto writer = mem.writer();
    RecordEvent ev{5, 0, 0, IoEvent{}};
    auto err = writer->write(ev);
    REQUIRE(err);
    CHECK(err->kind == WriteErrorKind::EventOutOfSequence);
    ev.index = 0;
    CHECK_FALSE(writer->write(ev));
    CHECK_FALSE(writer->finish());
    CHECK(mem.bytes() == "SPICE_REPLAY 1\nevent 0 1 0 0\n");
  }
}

}  // namespace
}  // namespace spicebox::guestsim
