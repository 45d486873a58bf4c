// Runs in: guestsim-driver-tests (developer machine / CI). Input: stamps built here, laid out by
// the real materialiser into the driver's real allocator. Pixels are decoded with the lead's
// base/latency-stamp.h decoder and the qxl_dev.h layout is walked here independently of
// stamp.cpp's walker, so a wrong encoding or a wrong location fails.
#include "tools/guestsim/stamp.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "tools/guestsim/allocator.h"
#include "tools/guestsim/materialise.h"

namespace spicebox::guestsim {
namespace {

// Reads x8r8g8b8 little-endian bytes back as pixels and decodes them.
std::optional<stamp::Stamp> decodeBytes(const uint8_t* bytes) {
  uint32_t pixels[stamp::STAMP_WIDTH];
  for (uint32_t i = 0; i < stamp::STAMP_WIDTH; ++i)
    pixels[i] = uint32_t{bytes[i * 4]} | uint32_t{bytes[i * 4 + 1]} << 8 |
                uint32_t{bytes[i * 4 + 2]} << 16 | uint32_t{bytes[i * 4 + 3]} << 24;
  return stamp::decode(pixels);
}

struct GuestMemory {
  std::vector<std::byte> ram = std::vector<std::byte>(1 << 20);
  std::vector<std::byte> vram = std::vector<std::byte>(1 << 16);
  DriverAllocator allocator{ArenaMapping{ram, 0x100000000ull, 1, 3, 8, 8},
                            ArenaMapping{vram, 0x200000000ull, 2, 5, 8, 8}};
  GuestToHost toHost() {
    return [this](uint64_t addr, size_t size) { return allocator.hostAddress(addr, size); };
  }
};

Materialised layOut(const Command& command, GuestMemory& memory) {
  auto result = materialise(command, 1, memory.allocator);
  REQUIRE(std::holds_alternative<Materialised>(result));
  return std::get<Materialised>(std::move(result));
}

}  // namespace

TEST_CASE("stamp pixels: writeStamp bytes decode to the same seq and time", "[stamp]") {
  uint8_t bytes[STAMP_BYTES];
  for (uint64_t ns : {uint64_t{0}, uint64_t{1}, uint64_t{123456789012345}, ~uint64_t{0}}) {
    for (uint32_t seq : {1u, 0xabcdefu}) {
      writeStamp(bytes, seq, ns);
      auto s = decodeBytes(bytes);
      REQUIRE(s);
      CHECK(s->seq == seq);
      CHECK(s->monotonicNs == ns);
      for (uint32_t i = 0; i < stamp::STAMP_WIDTH; ++i)
        CHECK(bytes[i * 4 + 3] == 0);  // the x byte
    }
  }
}

TEST_CASE("stampCommand: a 5x1 32 bpp top-down DRAW_COPY PUT at (0,0) of surface 0", "[stamp]") {
  const Command c = stampCommand(42);
  REQUIRE(c.type == CommandType::Draw);
  const Drawable& d = std::get<Drawable>(c.body);
  CHECK(d.surfaceId == 0);
  CHECK(d.type == QXL_DRAW_COPY);
  CHECK(d.clip.type == SPICE_CLIP_TYPE_NONE);
  CHECK(d.bbox == Rect{0, 0, 1, 5});
  const Copy& copy = std::get<Copy>(d.payload);
  CHECK(copy.ropDescriptor == SPICE_ROPD_OP_PUT);
  CHECK(copy.srcArea == Rect{0, 0, 1, 5});
  CHECK(!copy.mask.bitmap);
  REQUIRE(copy.srcBitmap);
  CHECK(copy.srcBitmap->type == SPICE_IMAGE_TYPE_BITMAP);
  CHECK((copy.srcBitmap->flags & QXL_IMAGE_CACHE) == 0);
  const auto imageId = [](const Command& cmd) {
    return std::get<Copy>(std::get<Drawable>(cmd.body).payload).srcBitmap->id;
  };
  CHECK(imageId(c) != imageId(stampCommand(43)));  // no two stamps share an image id
  const Bitmap& bm = std::get<Bitmap>(copy.srcBitmap->payload);
  CHECK(bm.format == SPICE_BITMAP_FMT_32BIT);
  CHECK((bm.flags & QXL_BITMAP_TOP_DOWN) != 0);
  CHECK(bm.x == 5);
  CHECK(bm.y == 1);
  REQUIRE(bm.data.size() == STAMP_BYTES);
  auto s = decodeBytes(bm.data.data());
  REQUIRE(s);
  CHECK(s->seq == 42);
  CHECK(s->monotonicNs == 0);
}

TEST_CASE("locateStampPixels finds the bitmap bytes the materialiser wrote", "[stamp]") {
  GuestMemory memory;
  const Materialised m = layOut(stampCommand(7), memory);
  uint8_t* pixels = locateStampPixels(m.commandAddr, memory.toHost());
  REQUIRE(pixels != nullptr);

  // The same place, found by walking qxl_dev.h here.
  QXLDrawable d;
  std::memcpy(&d, memory.allocator.hostAddress(m.commandAddr, sizeof d), sizeof d);
  QXLImage img;
  std::memcpy(&img, memory.allocator.hostAddress(d.u.copy.src_bitmap, sizeof img), sizeof img);
  std::byte* chunk = memory.allocator.hostAddress(img.bitmap.data, sizeof(QXLDataChunk));
  REQUIRE(chunk != nullptr);
  CHECK(pixels == reinterpret_cast<uint8_t*>(chunk + sizeof(QXLDataChunk)));

  auto before = decodeBytes(pixels);
  REQUIRE(before);
  CHECK(before->seq == 7);
  CHECK(before->monotonicNs == 0);
  writeStamp(pixels, 7, 0x1122334455667788ull);
  auto after = decodeBytes(pixels);
  REQUIRE(after);
  CHECK(after->monotonicNs == 0x1122334455667788ull);
  for (const GuestBlock& b : m.blocks)
    memory.allocator.free(b);
}

TEST_CASE("locateStampPixels: not-a-stamp and unmapped addresses give nullptr", "[stamp]") {
  GuestMemory memory;
  SECTION("a fill is not a stamp") {
    Command c = stampCommand(1);
    Drawable& d = std::get<Drawable>(c.body);
    Fill f;
    f.brush.type = SPICE_BRUSH_TYPE_SOLID;
    f.ropDescriptor = SPICE_ROPD_OP_PUT;
    d.payload = f;
    d.type = QXL_DRAW_FILL;
    const Materialised m = layOut(c, memory);
    CHECK(locateStampPixels(m.commandAddr, memory.toHost()) == nullptr);
  }
  SECTION("a translation that maps nothing") {
    const Materialised m = layOut(stampCommand(1), memory);
    CHECK(locateStampPixels(m.commandAddr,
                            [](uint64_t, size_t) -> std::byte* { return nullptr; }) == nullptr);
  }
  SECTION("a 16 bpp source is not a stamp") {
    Command c = stampCommand(1);
    Copy& copy = std::get<Copy>(std::get<Drawable>(c.body).payload);
    std::get<Bitmap>(copy.srcBitmap->payload).format = SPICE_BITMAP_FMT_16BIT;
    const Materialised m = layOut(c, memory);
    CHECK(locateStampPixels(m.commandAddr, memory.toHost()) == nullptr);
  }
}

}  // namespace spicebox::guestsim
