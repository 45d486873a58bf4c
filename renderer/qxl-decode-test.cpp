// Runs in: tests. Input: command trees from guestsim's scenarios and the shared recordings, laid
// out in a guest-memory image with a real memslot table by guestsim's materialiser, and guest
// memory corrupted here on purpose. Checks renderer/qxl-decode.h: every valid command decodes
// back to the tree it was made from, and every attack yields its typed error (run under ASan:
// a read outside guest memory fails there). Hostile cases are named after the attack.
#include "renderer/qxl-decode.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "tests/support/shared-recordings.h"
#include "tools/guestsim/materialise.h"
#include "tools/guestsim/scenario.h"

namespace spicebox::renderer {
namespace {

using namespace qxlcmd;
using guestsim::Arena;
using guestsim::GuestBlock;
using guestsim::Materialised;

constexpr uint64_t RAM_PHYS = 0x1'0000'0000;
constexpr uint64_t VRAM_PHYS = 0x2'0000'0000;
constexpr size_t RAM_SIZE = 32 << 20;   // any command of the recordings and scenarios
constexpr size_t VRAM_SIZE = 64 << 20;  // surfaces up to 4096x4096x4
constexpr uint8_t RAM_SLOT = 1, VRAM_SLOT = 2;

// Guest memory in two heap buffers exactly as large as the BARs (ASan sees any read past them),
// a real memslot table with a RAM slot and a VRAM slot, and a bump allocator for the
// materialiser that rewinds when its last block is freed.
class TestGuest final : public guestsim::GuestAllocator {
 public:
  TestGuest() {
    auto created = qxl::MemslotTable::create(
        qxl::MemslotLayout{},
        {qxl::BarRange{RAM_PHYS, RAM_SIZE}, qxl::BarRange{VRAM_PHYS, VRAM_SIZE}});
    REQUIRE(std::holds_alternative<qxl::MemslotTable>(created));
    table_.emplace(std::get<qxl::MemslotTable>(std::move(created)));
    // Burn a few generations so that generation 0 is a wrong one.
    for (int i = 0; i < 3; ++i) {
      REQUIRE(std::holds_alternative<uint8_t>(table_->add(RAM_SLOT, {RAM_PHYS, RAM_PHYS + 8})));
      table_->remove(RAM_SLOT);
    }
    ramGen_ = std::get<uint8_t>(table_->add(RAM_SLOT, {RAM_PHYS, RAM_PHYS + RAM_SIZE}));
    vramGen_ = std::get<uint8_t>(table_->add(VRAM_SLOT, {VRAM_PHYS, VRAM_PHYS + VRAM_SIZE}));
    view_ = GuestView{ram_, vram_, RAM_PHYS, VRAM_PHYS};
  }

  std::optional<GuestBlock> allocate(Arena arena, size_t size) override {
    Pool& p = pool(arena);
    const size_t align = arena == Arena::Vram ? 4096 : 8;
    const size_t start = (p.used + align - 1) / align * align;
    if (start > p.bytes.size() || size > p.bytes.size() - start)
      return std::nullopt;
    p.used = start + size;
    ++p.live;
    return GuestBlock{p.bytes.data() + start, addr(arena, start), nextHandle_++, arena};
  }
  void free(const GuestBlock& block) override {
    Pool& p = pool(block.arena);
    REQUIRE(p.live > 0);
    if (--p.live == 0) {
      std::memset(p.bytes.data(), 0, p.used);
      p.used = 0;
    }
  }
  size_t capacity(Arena arena) const override { return arena == Arena::Ram ? RAM_SIZE : VRAM_SIZE; }

  // The memslot-encoded address of byte `offset` of a BAR.
  uint64_t addr(Arena arena, uint64_t offset) const {
    return arena == Arena::Ram ? table_->encode(RAM_SLOT, ramGen_, RAM_PHYS + offset)
                               : table_->encode(VRAM_SLOT, vramGen_, VRAM_PHYS + offset);
  }
  uint64_t ram(uint64_t offset) const { return addr(Arena::Ram, offset); }

  // Host bytes of an address this guest made (slot 1 or 2, right generation).
  std::byte* host(uint64_t guestAddr) {
    auto where = table_->translate(guestAddr, 1);
    REQUIRE(std::holds_alternative<qxl::BarOffset>(where));
    auto at = std::get<qxl::BarOffset>(where);
    return (at.bar == qxl::BarId::Ram ? ram_.data() : vram_.data()) + at.offset;
  }
  template <typename T>
  T peek(uint64_t guestAddr) {
    T v;
    std::memcpy(&v, host(guestAddr), sizeof v);
    return v;
  }
  template <typename T>
  void poke(uint64_t guestAddr, const T& v) {
    std::memcpy(host(guestAddr), &v, sizeof v);
  }

  const qxl::MemslotTable& table() const { return *table_; }
  const GuestView& view() const { return view_; }
  uint8_t ramGeneration() const { return ramGen_; }
  std::vector<std::byte>& ramBytes() { return ram_; }

  // Lays out `cmd`; the test fails if the materialiser refuses it.
  Materialised put(const Command& cmd) {
    auto m = guestsim::materialise(cmd, 7, *this);
    if (auto* err = std::get_if<guestsim::MaterialiseError>(&m))
      FAIL("materialise: " << err->detail);
    return std::get<Materialised>(std::move(m));
  }
  void release(const Materialised& m) {
    for (const auto& b : m.blocks)
      free(b);
    if (m.surfaceMemory)
      free(*m.surfaceMemory);
  }

 private:
  struct Pool {
    std::vector<std::byte>& bytes;
    size_t used = 0;
    size_t live = 0;
  };
  Pool& pool(Arena a) { return a == Arena::Ram ? ramPool_ : vramPool_; }

  std::vector<std::byte> ram_ = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram_ = std::vector<std::byte>(VRAM_SIZE);
  Pool ramPool_{ram_};
  Pool vramPool_{vram_};
  std::optional<qxl::MemslotTable> table_;
  uint8_t ramGen_ = 0, vramGen_ = 0;
  GuestView view_;
  uint64_t nextHandle_ = 1;
};

std::variant<Command, DecodeError> decode(TestGuest& g, const Materialised& m,
                                          SurfaceMemory* surface = nullptr) {
  SlotMemory mem(g.table(), g.view());
  return decodeCommand(mem, m.qxlType, m.commandAddr, surface);
}

DecodeErrorKind errorOf(const std::variant<Command, DecodeError>& result) {
  if (auto* e = std::get_if<DecodeError>(&result)) {
    INFO("detail: " << e->detail);
    return e->kind;
  }
  FAIL("decoded although hostile");
  return DecodeErrorKind::Unsupported;
}

// Fails the test with the decoder's words when `result` is an error.
const Command& decoded(const std::variant<Command, DecodeError>& result) {
  if (auto* e = std::get_if<DecodeError>(&result))
    FAIL("decode: " << decodeErrorName(e->kind) << ": " << e->detail);
  return std::get<Command>(result);
}

// materialise -> decode -> the same tree (chunk sizes included: the decoder records them the
// way the recording reader does, so nothing needs ignoring).
void roundTrip(TestGuest& g, const Command& cmd) {
  Materialised m = g.put(cmd);
  auto result = decode(g, m);
  const Command& back = decoded(result);
  REQUIRE(back == cmd);
  g.release(m);
}

// ---------------------------------------------------------------- round trips

TEST_CASE("decode-round-trips-every-command-of-all-draws", "[decode]") {
  TestGuest g;
  auto scenario = guestsim::makeScenario("all-draws", {});
  size_t commands = 0;
  std::set<size_t> drawTypes;
  while (auto action = scenario->next()) {
    if (const auto* cmd = std::get_if<Command>(&*action)) {
      INFO("command " << commands);
      roundTrip(g, *cmd);
      if (const auto* d = std::get_if<Drawable>(&cmd->body))
        drawTypes.insert(d->type);
      ++commands;
    }
  }
  CHECK(commands > 20);
  for (size_t type = QXL_DRAW_FILL; type <= QXL_DRAW_COMPOSITE; ++type)
    CHECK(drawTypes.count(type) == 1);  // every QXL_DRAW_* that draws
}

TEST_CASE("decode-round-trips-3000-stress-commands", "[decode]") {
  TestGuest g;
  guestsim::ScenarioOptions options;
  options.seed = 11;
  options.maxCommands = 3000;
  auto scenario = guestsim::makeScenario("stress", options);
  size_t commands = 0;
  while (auto action = scenario->next()) {
    if (const auto* cmd = std::get_if<Command>(&*action)) {
      INFO("command " << commands);
      roundTrip(g, *cmd);
      ++commands;
    }
  }
  CHECK(commands == 3000);
}

const std::filesystem::path RECORDINGS_DIR = SPICEBOX_RECORDINGS_DIR;

TEST_CASE("decode-every-command-of-the-real-recordings", "[decode][recordings]") {
  if (!test::recordingsPresent(RECORDINGS_DIR))
    return;
  TestGuest g;
  for (auto [name, expected] : {std::pair{"windows", 30142}, std::pair{"console", 17210}}) {
    INFO("recording " << name);
    auto opened =
        guestsim::RecordReader::open((RECORDINGS_DIR / (std::string(name) + ".rec.xz")).string());
    REQUIRE(std::holds_alternative<std::unique_ptr<guestsim::RecordReader>>(opened));
    auto& reader = *std::get<std::unique_ptr<guestsim::RecordReader>>(opened);
    size_t commands = 0;
    for (;;) {
      auto next = reader.next();
      if (std::holds_alternative<guestsim::EndOfRecording>(next))
        break;
      if (auto* err = std::get_if<guestsim::RecordError>(&next))
        FAIL(err->toString());
      auto& event = std::get<guestsim::RecordEvent>(next);
      if (const auto* cmd = std::get_if<Command>(&event.body)) {
        INFO("event " << event.index);
        roundTrip(g, *cmd);
        ++commands;
      }
    }
    CHECK(commands == static_cast<size_t>(expected));
  }
}

// ---------------------------------------------------------------- hostile: builders

Image bitmapImage(uint8_t format, uint32_t w, uint32_t h, std::vector<uint32_t> chunks = {}) {
  Image img;
  img.id = 42;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.width = w;
  img.height = h;
  Bitmap& bm = img.payload.emplace<Bitmap>();
  bm.format = format;
  bm.x = w;
  bm.y = h;
  const uint32_t bits = format == SPICE_BITMAP_FMT_8BIT ? 8 : 32;
  bm.stride = (w * bits + 7) / 8;
  if (format == SPICE_BITMAP_FMT_8BIT)
    bm.palette = Palette{5, std::vector<uint32_t>(256, 0x123456)};
  bm.data.assign(size_t{bm.stride} * h, 0x5a);
  bm.chunkSizes = std::move(chunks);
  bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
  return img;
}

Command draw(DrawPayload payload) {
  Drawable d;
  d.bbox = Rect{0, 0, 16, 16};
  d.type = static_cast<uint8_t>(payload.index());
  d.payload = std::move(payload);
  return Command{CommandType::Draw, d};
}

Command copyOf(Image img) {
  Copy c;
  c.srcBitmap = std::move(img);
  c.srcArea = Rect{0, 0, 4, 4};
  c.ropDescriptor = SPICE_ROPD_OP_PUT;
  return draw(std::move(c));
}

// Guest addresses inside a materialised COPY: the drawable, its QXLImage, its bitmap data.
struct CopyAddrs {
  uint64_t drawable, image, data, palette;
};
CopyAddrs copyAddrs(TestGuest& g, const Materialised& m) {
  auto d = g.peek<QXLDrawable>(m.commandAddr);
  auto img = g.peek<QXLImage>(d.u.copy.src_bitmap);
  return {m.commandAddr, d.u.copy.src_bitmap, img.bitmap.data, img.bitmap.palette};
}

Command surfaceCreate(uint32_t id, uint32_t w, uint32_t h, int32_t stride) {
  SurfaceCmd s;
  s.surfaceId = id;
  s.type = QXL_SURFACE_CMD_CREATE;
  s.format = SPICE_SURFACE_FMT_32_xRGB;
  s.width = w;
  s.height = h;
  s.stride = stride;
  return Command{CommandType::Surface, s};
}

// Rewrites one field of the QXLSurfaceCmd at `addr`.
template <typename F>
void patchSurface(TestGuest& g, uint64_t addr, F&& change) {
  auto q = g.peek<QXLSurfaceCmd>(addr);
  change(q);
  g.poke(addr, q);
}

// ---------------------------------------------------------------- hostile: chunks

TEST_CASE("circular-chunks", "[decode][hostile]") {
  TestGuest g;
  // Two empty chunks that point at each other, and one that points at itself: the classic
  // circular-small-chunks; no byte count ever grows, only the loop check ends it.
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2, {8, 8})));
  auto a = copyAddrs(g, m);
  auto first = g.peek<QXLDataChunk>(a.data);
  const uint64_t second = first.next_chunk;
  first.data_size = 0;
  g.poke(a.data, first);
  auto next = g.peek<QXLDataChunk>(second);
  next.data_size = 0;
  next.next_chunk = a.data;
  g.poke(second, next);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ChunkLoop);
  first.next_chunk = a.data;  // itself
  g.poke(a.data, first);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ChunkLoop);
}

TEST_CASE("chunk-size-overflow", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2, {8, 8})));
  auto a = copyAddrs(g, m);
  auto first = g.peek<QXLDataChunk>(a.data);
  auto second = g.peek<QXLDataChunk>(first.next_chunk);
  // 8 + 0xfffffff8 wraps a 32-bit sum to 0: refused before any of it is read.
  second.data_size = 0xfffffff8;
  g.poke(first.next_chunk, second);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ChunkTooLong);
  first.data_size = 0xffffffff;
  g.poke(a.data, first);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ChunkTooLong);
}

TEST_CASE("chunk-chain-longer-than-max-data-chunks", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 1, 1)));
  auto a = copyAddrs(g, m);
  // MAX_DATA_CHUNKS + 1 empty chunks in a straight line at the end of RAM, the last one
  // carrying the 4 bytes: not a loop, just too long.
  const uint64_t base = RAM_SIZE - (MAX_DATA_CHUNKS + 2) * sizeof(QXLDataChunk) - 8;
  for (uint32_t i = 0; i <= MAX_DATA_CHUNKS; ++i) {
    QXLDataChunk c{};
    c.data_size = i == MAX_DATA_CHUNKS ? 4 : 0;
    c.next_chunk = i == MAX_DATA_CHUNKS ? 0 : g.ram(base + (i + 1) * sizeof(QXLDataChunk));
    g.poke(g.ram(base + i * sizeof(QXLDataChunk)), c);
  }
  auto img = g.peek<QXLImage>(a.image);
  img.bitmap.data = g.ram(base);
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ChunkTooLong);
}

TEST_CASE("bitmap-chunks-shorter-than-y-times-stride", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto first = g.peek<QXLDataChunk>(copyAddrs(g, m).data);
  first.data_size = 15;
  g.poke(copyAddrs(g, m).data, first);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::BitmapDataShort);
}

// ---------------------------------------------------------------- hostile: addresses

TEST_CASE("address-one-past-a-slots-end", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto a = copyAddrs(g, m);
  SECTION("a command whose last byte is one past the slot") {
    std::memcpy(g.ramBytes().data() + RAM_SIZE - sizeof(QXLDrawable) + 1, g.host(a.drawable),
                sizeof(QXLDrawable) - 1);
    SlotMemory mem(g.table(), g.view());
    auto r = decodeCommand(mem, QXL_CMD_DRAW, g.ram(RAM_SIZE - sizeof(QXLDrawable) + 1));
    CHECK(errorOf(r) == DecodeErrorKind::AddressOutsideSlot);
    // The exact fit at the end is read (and decodes: the image pointer is still valid).
    std::memcpy(g.ramBytes().data() + RAM_SIZE - sizeof(QXLDrawable), g.host(a.drawable),
                sizeof(QXLDrawable));
    CHECK(std::holds_alternative<Command>(
        decodeCommand(mem, QXL_CMD_DRAW, g.ram(RAM_SIZE - sizeof(QXLDrawable)))));
  }
  SECTION("flat bitmap data ending one byte past the slot") {
    auto img = g.peek<QXLImage>(a.image);
    img.bitmap.flags |= QXL_BITMAP_DIRECT;
    img.bitmap.data = g.ram(RAM_SIZE - 16 + 1);  // 16 bytes of 2x2x32 bpp
    g.poke(a.image, img);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::AddressOutsideSlot);
    img.bitmap.data = g.ram(RAM_SIZE - 16);
    g.poke(a.image, img);
    CHECK(std::holds_alternative<Command>(decode(g, m)));
  }
  SECTION("an address whose range wraps the address space") {
    auto d = g.peek<QXLDrawable>(a.drawable);
    d.u.copy.src_bitmap = UINT64_MAX - 4;
    g.poke(a.drawable, d);
    CHECK(errorOf(decode(g, m)) != DecodeErrorKind::Unsupported);
  }
}

TEST_CASE("slot-id-out-of-range", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto a = copyAddrs(g, m);
  auto img = g.peek<QXLImage>(a.image);
  const uint64_t phys = a.data & ((uint64_t{1} << 48) - 1);
  img.bitmap.data = g.table().encode(200, g.ramGeneration(), phys);  // beyond slots_end
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SlotOutOfRange);
  img.bitmap.data = g.table().encode(0, g.ramGeneration(), phys);  // the device's own
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SlotOutOfRange);
  img.bitmap.data = g.table().encode(5, g.ramGeneration(), phys);  // never added
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SlotNotActive);
}

TEST_CASE("generation-out-of-range", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  const uint64_t phys = m.commandAddr & ((uint64_t{1} << 48) - 1);
  SlotMemory mem(g.table(), g.view());
  for (uint8_t gen : {uint8_t(0), uint8_t(g.ramGeneration() + 1), uint8_t(255)}) {
    auto r = decodeCommand(mem, QXL_CMD_DRAW, g.table().encode(RAM_SLOT, gen, phys));
    CHECK(errorOf(r) == DecodeErrorKind::GenerationMismatch);
  }
}

// ---------------------------------------------------------------- hostile: sizes

TEST_CASE("stride-times-height-overflow", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto a = copyAddrs(g, m);
  auto img = g.peek<QXLImage>(a.image);
  img.bitmap.stride = 0x80000000;  // x 2 rows = 2^32: 0 in a 32-bit size
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SizeOverflow);
  img.bitmap.stride = 0x10000;  // 2 rows: fits 32 bits, 128 KiB, more than the chunk holds
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::BitmapDataShort);
  img.bitmap.stride = 0x100000;
  img.bitmap.y = 8192;  // 8 GiB would overflow; 0x100000 * 8192 = 2^33
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SizeOverflow);
  img.bitmap.stride = 0x10000;
  img.bitmap.y = 8192;  // 512 MiB: fits 32 bits, above MAX_BITMAP_BYTES
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::BitmapTooLarge);
  img.bitmap.y = 9000;
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::BitmapTooLarge);
}

TEST_CASE("stride-too-small", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto a = copyAddrs(g, m);
  auto img = g.peek<QXLImage>(a.image);
  img.bitmap.stride = 7;  // 2 pixels of 32 bpp need 8
  img.bitmap.y = 1;
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::StrideTooSmall);
  g.release(m);
  Materialised s = g.put(surfaceCreate(3, 16, 16, 64));
  for (int32_t stride : {63, -63, 0, INT32_MIN}) {
    patchSurface(g, s.commandAddr, [&](QXLSurfaceCmd& q) { q.u.surface_create.stride = stride; });
    INFO("stride " << stride);
    CHECK(errorOf(decode(g, s)) == (stride == INT32_MIN ? DecodeErrorKind::SurfaceTooLarge
                                                        : DecodeErrorKind::StrideTooSmall));
  }
}

TEST_CASE("huge-surface-size", "[decode][hostile]") {
  TestGuest g;
  Materialised s = g.put(surfaceCreate(3, 16, 16, 64));
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) { q.u.surface_create.width = 100000; });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceTooLarge);
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) {
    q.u.surface_create.width = 8192;
    q.u.surface_create.height = UINT32_MAX;
  });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceTooLarge);
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) {
    q.u.surface_create.height = 8192;
    q.u.surface_create.stride = 0x7fffffff;  // within dimensions, 16 TiB of pixels
  });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceTooLarge);
  // Within every cap but larger than the slot the pixels are in.
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) {
    q.u.surface_create.width = 8192;
    q.u.surface_create.height = 8192;
    q.u.surface_create.stride = 8192 * 4;
  });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::AddressOutsideSlot);
}

TEST_CASE("zero-surface-size", "[decode][hostile]") {
  TestGuest g;
  Materialised s = g.put(surfaceCreate(3, 16, 16, 64));
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) { q.u.surface_create.width = 0; });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceSizeZero);
  patchSurface(g, s.commandAddr, [](QXLSurfaceCmd& q) {
    q.u.surface_create.width = 16;
    q.u.surface_create.height = 0;
  });
  CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceSizeZero);
}

TEST_CASE("surface-id-out-of-range", "[decode][hostile]") {
  TestGuest g;
  Materialised s = g.put(surfaceCreate(3, 16, 16, 64));
  for (uint32_t id : {MAX_SURFACES, MAX_SURFACES + 1, UINT32_MAX}) {
    patchSurface(g, s.commandAddr, [&](QXLSurfaceCmd& q) { q.surface_id = id; });
    CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceIdOutOfRange);
    patchSurface(g, s.commandAddr, [&](QXLSurfaceCmd& q) { q.type = QXL_SURFACE_CMD_DESTROY; });
    CHECK(errorOf(decode(g, s)) == DecodeErrorKind::SurfaceIdOutOfRange);
    patchSurface(g, s.commandAddr, [&](QXLSurfaceCmd& q) { q.type = QXL_SURFACE_CMD_CREATE; });
  }
  // The last valid id is fine, and the decoder reports where its pixels are.
  patchSurface(g, s.commandAddr, [&](QXLSurfaceCmd& q) { q.surface_id = MAX_SURFACES - 1; });
  SurfaceMemory where;
  CHECK(std::holds_alternative<Command>(decode(g, s, &where)));
  CHECK(where.size == 16 * 64);
  CHECK(where.guestAddr == s.surfaceMemory->guestAddr);
  g.release(s);
  // A drawable on, an image of, and a dependency on a surface beyond n_surfaces.
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto d = g.peek<QXLDrawable>(m.commandAddr);
  auto bad = d;
  bad.surface_id = MAX_SURFACES;
  g.poke(m.commandAddr, bad);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SurfaceIdOutOfRange);
  bad = d;
  bad.surfaces_dest[1] = static_cast<int32_t>(MAX_SURFACES);
  g.poke(m.commandAddr, bad);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SurfaceIdOutOfRange);
  bad.surfaces_dest[1] = -2;
  g.poke(m.commandAddr, bad);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SurfaceIdOutOfRange);
  g.poke(m.commandAddr, d);
  QXLImage img{};
  img.descriptor.type = SPICE_IMAGE_TYPE_SURFACE;
  img.surface_image.surface_id = 5000;
  g.poke(d.u.copy.src_bitmap, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::SurfaceIdOutOfRange);
}

// ---------------------------------------------------------------- hostile: palettes

TEST_CASE("palette-count-larger-than-its-data", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_8BIT, 4, 4)));
  auto a = copyAddrs(g, m);
  REQUIRE(a.palette != 0);
  // A palette header 100 bytes before the slot's end, claiming 256 entries (1 KiB).
  QXLPalette pal{};
  pal.num_ents = 256;
  const uint64_t at = RAM_SIZE - sizeof(QXLPalette) - 100;
  g.poke(g.ram(at), pal);
  auto img = g.peek<QXLImage>(a.image);
  img.bitmap.palette = g.ram(at);
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PaletteShort);
  pal.num_ents = 1000;
  g.poke(g.ram(at), pal);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PaletteTooLarge);
  pal.num_ents = 25;  // fits, but an 8 bpp bitmap can index 256
  g.poke(g.ram(at), pal);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PaletteTooSmall);
  img.bitmap.palette = 0;
  g.poke(a.image, img);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PaletteMissing);
}

// ---------------------------------------------------------------- hostile: text

Command textDraw(std::vector<uint8_t> glyphs, uint16_t length) {
  Text t;
  t.str.length = length;
  t.str.flags = SPICE_STRING_FLAGS_RASTER_A1;
  t.str.data = std::move(glyphs);
  t.backArea = Rect{0, 0, 16, 16};
  t.foreBrush.type = SPICE_BRUSH_TYPE_SOLID;
  t.foreMode = SPICE_ROPD_OP_PUT;
  t.backMode = SPICE_ROPD_OP_PUT;
  return draw(std::move(t));
}

// One QXLRasterGlyph of w x h at 1 bpp.
std::vector<uint8_t> glyph(uint16_t w, uint16_t h) {
  QXLRasterGlyph header{};
  header.width = w;
  header.height = h;
  std::vector<uint8_t> out(sizeof header + size_t{(w + 7u) / 8u} * h, 0xff);
  std::memcpy(out.data(), &header, sizeof header);
  return out;
}

TEST_CASE("glyph-string-lengths-past-the-data", "[decode][hostile]") {
  TestGuest g;
  SECTION("a count of glyphs larger than the data holds") {
    Materialised m = g.put(textDraw(glyph(8, 12), 2));
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::GlyphsPastData);
  }
  SECTION("a glyph whose size runs past the data") {
    auto data = glyph(8, 12);
    QXLRasterGlyph header{};
    header.width = 8;
    header.height = 13;  // one row more than the bytes
    std::memcpy(data.data(), &header, sizeof header);
    Materialised m = g.put(textDraw(data, 1));
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::GlyphsPastData);
    header.width = 0xffff;
    header.height = 0xffff;
    std::memcpy(g.host(g.peek<QXLDrawable>(m.commandAddr).u.text.str + sizeof(QXLString)), &header,
                sizeof header);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::GlyphsPastData);
  }
  SECTION("data_size larger than the chunks carry") {
    Materialised m = g.put(textDraw(glyph(8, 12), 1));
    const uint64_t str = g.peek<QXLDrawable>(m.commandAddr).u.text.str;
    auto s = g.peek<QXLString>(str);
    s.data_size += 1;
    g.poke(str, s);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::GlyphsPastData);
  }
  SECTION("no single raster format") {
    Materialised m = g.put(textDraw(glyph(8, 12), 1));
    const uint64_t str = g.peek<QXLDrawable>(m.commandAddr).u.text.str;
    auto s = g.peek<QXLString>(str);
    s.flags = SPICE_STRING_FLAGS_RASTER_A1 | SPICE_STRING_FLAGS_RASTER_A8;
    g.poke(str, s);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::UnknownGlyphFormat);
  }
  SECTION("the valid string decodes") {
    auto two = glyph(8, 12);
    auto second = glyph(3, 5);
    two.insert(two.end(), second.begin(), second.end());
    roundTrip(g, textDraw(two, 2));
  }
}

// ---------------------------------------------------------------- hostile: cursor

Command cursorSet(uint8_t type, uint16_t w, uint16_t h, size_t bytes) {
  CursorCmd c;
  c.type = QXL_CURSOR_SET;
  c.visible = 1;
  CursorShape& sh = c.shape.emplace();
  sh.type = type;
  sh.width = w;
  sh.height = h;
  sh.data.assign(bytes, 0x11);
  return Command{CommandType::Cursor, c};
}

TEST_CASE("cursor-data-size-larger-than-the-data", "[decode][hostile]") {
  TestGuest g;
  SECTION("data_size above what the chunks carry") {
    Materialised m = g.put(cursorSet(SPICE_CURSOR_TYPE_ALPHA, 4, 4, 64));
    const uint64_t shape = g.peek<QXLCursorCmd>(m.commandAddr).u.set.shape;
    auto q = g.peek<QXLCursor>(shape);
    q.data_size = 4096;
    g.poke(shape, q);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::CursorDataShort);
  }
  SECTION("data smaller than type, width and height need") {
    Materialised m = g.put(cursorSet(SPICE_CURSOR_TYPE_ALPHA, 32, 32, 100));
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::CursorDataShort);
  }
  SECTION("mono cursor: AND and XOR masks") {
    roundTrip(g, cursorSet(SPICE_CURSOR_TYPE_MONO, 16, 16, 64));
    Materialised m = g.put(cursorSet(SPICE_CURSOR_TYPE_MONO, 16, 16, 63));
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::CursorDataShort);
  }
  SECTION("too large, unknown shape type") {
    Materialised m = g.put(cursorSet(SPICE_CURSOR_TYPE_ALPHA, 4, 4, 64));
    const uint64_t shape = g.peek<QXLCursorCmd>(m.commandAddr).u.set.shape;
    auto q = g.peek<QXLCursor>(shape);
    q.header.width = 513;
    g.poke(shape, q);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::CursorTooLarge);
    q.header.width = 4;
    q.header.type = 7;
    g.poke(shape, q);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::UnknownCursorShapeType);
  }
}

// ---------------------------------------------------------------- hostile: path, clip

Command strokeDraw(std::vector<PathSegment> path) {
  Stroke s;
  s.path = std::move(path);
  s.brush.type = SPICE_BRUSH_TYPE_SOLID;
  s.foreMode = SPICE_ROPD_OP_PUT;
  s.backMode = SPICE_ROPD_OP_PUT;
  return draw(std::move(s));
}

TEST_CASE("path-segment-counts-past-the-data", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(strokeDraw({PathSegment{SPICE_PATH_BEGIN, {{0, 0}, {16, 16}}}}));
  const uint64_t path = g.peek<QXLDrawable>(m.commandAddr).u.stroke.path;
  const uint64_t seg = path + sizeof(QXLPath);
  auto s = g.peek<QXLPathSeg>(seg);
  for (uint32_t count : {3u, 1000u, UINT32_MAX}) {
    s.count = count;
    g.poke(seg, s);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PathPastData);
  }
  // A data_size that leaves half a segment header after the last segment.
  s.count = 2;
  g.poke(seg, s);
  auto p = g.peek<QXLPath>(path);
  p.data_size -= 4;
  p.chunk.data_size -= 4;
  g.poke(path, p);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PathPastData);
  p.data_size += 8;  // declared beyond the chunk
  p.chunk.data_size += 4;
  g.poke(path, p);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::PathPastData);
}

TEST_CASE("clip-rect-count-past-the-data", "[decode][hostile]") {
  TestGuest g;
  Command cmd = copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2));
  auto& d = std::get<Drawable>(cmd.body);
  d.clip.type = SPICE_CLIP_TYPE_RECTS;
  d.clip.rects = {Rect{0, 0, 4, 4}, Rect{4, 4, 8, 8}};
  roundTrip(g, cmd);
  Materialised m = g.put(cmd);
  const uint64_t clip = g.peek<QXLDrawable>(m.commandAddr).clip.data;
  auto q = g.peek<QXLClipRects>(clip);
  q.num_rects = 3;
  g.poke(clip, q);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::ClipRectsPastData);
  q.num_rects = MAX_CLIP_RECTS + 1;
  g.poke(clip, q);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::TooManyClipRects);
}

// ---------------------------------------------------------------- hostile: values

TEST_CASE("values-outside-their-enums", "[decode][hostile]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  const auto d = g.peek<QXLDrawable>(m.commandAddr);
  auto expect = [&](DecodeErrorKind kind, auto&& change) {
    auto bad = d;
    change(bad);
    g.poke(m.commandAddr, bad);
    CHECK(errorOf(decode(g, m)) == kind);
    g.poke(m.commandAddr, d);
  };
  expect(DecodeErrorKind::UnknownDrawType, [](QXLDrawable& q) { q.type = QXL_DRAW_COMPOSITE + 1; });
  expect(DecodeErrorKind::UnknownDrawType, [](QXLDrawable& q) { q.type = 255; });
  expect(DecodeErrorKind::BadRopDescriptor,
         [](QXLDrawable& q) { q.u.copy.rop_descriptor = SPICE_ROPD_MASK + 1; });
  expect(DecodeErrorKind::BadFlags, [](QXLDrawable& q) { q.u.copy.scale_mode = 2; });
  expect(DecodeErrorKind::BadFlags, [](QXLDrawable& q) { q.u.copy.mask.flags = 2; });
  expect(DecodeErrorKind::UnknownClipType, [](QXLDrawable& q) { q.clip.type = 2; });
  expect(DecodeErrorKind::RectUnordered, [](QXLDrawable& q) { q.bbox.top = 17; });
  expect(DecodeErrorKind::RectUnordered, [](QXLDrawable& q) { q.u.copy.src_area.left = 5; });
  expect(DecodeErrorKind::UnknownBrushType, [](QXLDrawable& q) {
    q.type = QXL_DRAW_FILL;
    q.u.fill.brush.type = 3;
  });
  auto img = g.peek<QXLImage>(d.u.copy.src_bitmap);
  auto badImg = img;
  badImg.bitmap.format = SPICE_BITMAP_FMT_ENUM_END;
  g.poke(d.u.copy.src_bitmap, badImg);
  CHECK(errorOf(decode(g, m)) == DecodeErrorKind::UnknownFormat);
  for (uint8_t type : {uint8_t(SPICE_IMAGE_TYPE_LZ_RGB), uint8_t(SPICE_IMAGE_TYPE_FROM_CACHE),
                       uint8_t(2), uint8_t(255)}) {
    badImg = img;
    badImg.descriptor.type = type;
    g.poke(d.u.copy.src_bitmap, badImg);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::UnknownImageType);
  }
  badImg = img;
  badImg.descriptor.type = SPICE_IMAGE_TYPE_QUIC;
  g.poke(d.u.copy.src_bitmap, badImg);
  auto quic = decode(g, m);
  CHECK(errorOf(quic) == DecodeErrorKind::Unsupported);
  CHECK_THAT(std::get<DecodeError>(quic).detail, Catch::Contains("QUIC"));
  g.release(m);

  SlotMemory mem(g.table(), g.view());
  QXLCursorCmd cursor{};
  cursor.type = QXL_CURSOR_TRAIL + 1;
  g.poke(g.ram(0), cursor);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_CURSOR, g.ram(0))) ==
        DecodeErrorKind::UnknownCursorType);
  QXLSurfaceCmd surface{};
  surface.type = 2;
  g.poke(g.ram(0), surface);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_SURFACE, g.ram(0))) ==
        DecodeErrorKind::UnknownSurfaceCommand);
  surface.type = QXL_SURFACE_CMD_CREATE;
  surface.u.surface_create.format = 24;
  surface.u.surface_create.width = surface.u.surface_create.height = 1;
  surface.u.surface_create.stride = 4;
  g.poke(g.ram(0), surface);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_SURFACE, g.ram(0))) == DecodeErrorKind::UnknownFormat);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_NOP, g.ram(0))) == DecodeErrorKind::UnknownCommandType);
}

TEST_CASE("message-without-a-nul", "[decode][hostile]") {
  TestGuest g;
  SlotMemory mem(g.table(), g.view());
  // Text to the very end of the slot, no NUL.
  const uint64_t at = RAM_SIZE - sizeof(QXLMessage) - 10;
  std::memset(g.ramBytes().data() + at, 'x', RAM_SIZE - at);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_MESSAGE, g.ram(at))) ==
        DecodeErrorKind::MessageUnterminated);
  // A long run of text with no NUL within MAX_MESSAGE_BYTES.
  std::memset(g.ramBytes().data(), 'y', MAX_MESSAGE_BYTES + 64);
  CHECK(errorOf(decodeCommand(mem, QXL_CMD_MESSAGE, g.ram(0))) ==
        DecodeErrorKind::MessageUnterminated);
  g.ramBytes()[sizeof(QXLMessage) + 5] = std::byte{0};
  auto ok = decodeCommand(mem, QXL_CMD_MESSAGE, g.ram(0));
  CHECK(std::get<MessageCmd>(decoded(ok).body).text == std::vector<uint8_t>(5, 'y'));
}

TEST_CASE("error-kinds-have-names", "[decode]") {
  CHECK(std::string(decodeErrorName(DecodeErrorKind::ChunkLoop)) == "ChunkLoop");
  CHECK(std::string(decodeErrorName(DecodeErrorKind::Unsupported)) == "Unsupported");
  for (size_t k = 0; k < DECODE_ERROR_KIND_COUNT; ++k)
    CHECK(std::string(decodeErrorName(static_cast<DecodeErrorKind>(k))) != "UnknownDecodeError");
}

// ---------------------------------------------------------------- memory changes while read

// Reads through SlotMemory, records every byte range read, and right after each read scribbles
// over those bytes in guest memory, as a racing guest vCPU would. A decoder that read any byte
// twice would see the scribble (or be caught by the overlap check).
class RacingGuestMemory final : public GuestMemory {
 public:
  explicit RacingGuestMemory(TestGuest& g) : inner_(g.table(), g.view()) {}
  std::optional<DecodeError> copy(uint64_t addr, size_t size, void* out) const override {
    auto error = inner_.copy(addr, size, out);
    if (!error && size > 0) {
      auto span = std::get<std::span<std::byte>>(inner_.locate(addr, size));
      const auto* start = span.data();
      // No byte read twice: the new range overlaps no earlier one.
      auto next = reads_.lower_bound(start);
      if (next != reads_.end())
        overlaps_ += next->first < start + size;
      if (next != reads_.begin() && std::prev(next)->first + std::prev(next)->second > start)
        ++overlaps_;
      reads_[start] = size;
      ++copies_;
      std::memset(span.data(), 0xA5, size);  // the guest changes what was just read
    }
    return error;
  }
  std::variant<std::span<std::byte>, DecodeError> locate(uint64_t addr,
                                                         uint64_t size) const override {
    return inner_.locate(addr, size);
  }
  size_t copies() const { return copies_; }
  size_t overlaps() const { return overlaps_; }

 private:
  SlotMemory inner_;
  mutable std::map<const std::byte*, size_t> reads_;
  mutable size_t copies_ = 0;
  mutable size_t overlaps_ = 0;
};

TEST_CASE("memory-changes-while-read", "[decode][hostile]") {
  TestGuest g;
  auto scenario = guestsim::makeScenario("all-draws", {});
  size_t commands = 0;
  while (auto action = scenario->next()) {
    const auto* cmd = std::get_if<Command>(&*action);
    if (!cmd)
      continue;
    INFO("command " << commands++);
    Materialised m = g.put(*cmd);
    RacingGuestMemory racing(g);
    auto result = decodeCommand(racing, m.qxlType, m.commandAddr);
    // Every structure was read exactly once, and the tree is what the guest wrote before it
    // started scribbling.
    CHECK(racing.overlaps() == 0);
    CHECK(racing.copies() > 0);
    REQUIRE(decoded(result) == *cmd);
    // The scribbled memory no longer decodes to the same thing; the tree did not change.
    g.release(m);
  }
  CHECK(commands > 20);
}

// ---------------------------------------------------------------- pixels read in place

const Bitmap& copyBitmap(const Command& cmd) {
  const auto& c = std::get<Copy>(std::get<Drawable>(cmd.body).payload);
  return std::get<Bitmap>(c.srcBitmap->payload);
}

TEST_CASE("one-chunk-source-pixels-are-a-view-of-guest-memory", "[decode]") {
  TestGuest g;
  Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2)));
  auto a = copyAddrs(g, m);
  const auto* pixels = reinterpret_cast<const uint8_t*>(g.host(a.data) + sizeof(QXLDataChunk));
  auto result = decode(g, m);
  const Bitmap& bm = copyBitmap(decoded(result));
  CHECK(bm.data.empty());
  REQUIRE(bm.bytes().size() == 16);
  CHECK(bm.bytes().data() == pixels);
  CHECK(bm.chunkCount == 1);
  // The guest changing a pixel changes what is drawn, never a size or an address.
  g.poke<uint8_t>(a.data + sizeof(QXLDataChunk) + 5, 0x77);
  CHECK(bm.bytes()[5] == 0x77);
  CHECK(bm.bytes().size() == 16);

  SECTION("flat (DIRECT) data too") {
    auto img = g.peek<QXLImage>(a.image);
    img.bitmap.flags |= QXL_BITMAP_DIRECT;
    img.bitmap.data = a.data + sizeof(QXLDataChunk);
    g.poke(a.image, img);
    auto direct = decode(g, m);
    const Bitmap& db = copyBitmap(decoded(direct));
    CHECK(db.data.empty());
    CHECK(db.bytes().data() == pixels);
  }
  SECTION("flat data ending past the slot is refused, as a copy would be") {
    auto img = g.peek<QXLImage>(a.image);
    img.bitmap.flags |= QXL_BITMAP_DIRECT;
    img.bitmap.data = g.ram(RAM_SIZE - 16 + 1);
    g.poke(a.image, img);
    CHECK(errorOf(decode(g, m)) == DecodeErrorKind::AddressOutsideSlot);
  }
}

TEST_CASE("multi-chunk-pixels-and-masks-are-copied", "[decode]") {
  TestGuest g;
  {
    Materialised m = g.put(copyOf(bitmapImage(SPICE_BITMAP_FMT_32BIT, 2, 2, {8, 8})));
    auto result = decode(g, m);
    const Bitmap& bm = copyBitmap(decoded(result));
    CHECK(bm.view.empty());
    CHECK(bm.data.size() == 16);
    CHECK(bm.bytes().data() == bm.data.data());
    g.release(m);
  }
  Image mask;
  mask.type = SPICE_IMAGE_TYPE_BITMAP;
  mask.width = 8;
  mask.height = 2;
  Bitmap& mb = mask.payload.emplace<Bitmap>();
  mb.format = SPICE_BITMAP_FMT_1BIT_BE;
  mb.x = 8;
  mb.y = 2;
  mb.stride = 1;
  mb.data = {0x81, 0x18};
  Fill f;
  f.ropDescriptor = SPICE_ROPD_OP_PUT;
  f.brush.type = SPICE_BRUSH_TYPE_SOLID;
  f.mask.bitmap = mask;
  Materialised m = g.put(draw(f));
  auto result = decode(g, m);
  const auto& back = std::get<Fill>(std::get<Drawable>(decoded(result).body).payload);
  const Bitmap& got = std::get<Bitmap>(back.mask.bitmap->payload);
  CHECK(got.view.empty());
  CHECK(got.data == std::vector<uint8_t>{0x81, 0x18});
}
}  // namespace
}  // namespace spicebox::renderer
