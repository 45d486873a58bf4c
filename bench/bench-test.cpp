// Runs in: tests (developer machine / CI). Input: the stress scenario and memory laid out here.
// Checks the benchmark's machinery, never its speed (house rule: no timed unit tests): the guest
// image both renderers read, and that both sides of spicebox-bench-render process the same
// commands of a stream and end with a primary.
#include <catch2/catch.hpp>
#include <cstring>

#include "bench/bench-stream.h"
#include "bench/guest-image.h"
#include "bench/render-runs.h"
#include "renderer/qxl-decode.h"

namespace spicebox::bench {
namespace {

std::unique_ptr<GuestImage> makeImage(size_t bytes) {
  auto created = GuestImage::create(bytes);
  REQUIRE(std::holds_alternative<std::unique_ptr<GuestImage>>(created));
  return std::move(std::get<std::unique_ptr<GuestImage>>(created));
}

TEST_CASE("guest addresses are host addresses, read through a real memslot table") {
  auto image = makeImage(1 << 20);
  auto ram = image->allocate(guestsim::Arena::Ram, 100);
  auto vram = image->allocate(guestsim::Arena::Vram, 5000);
  REQUIRE(ram);
  REQUIRE(vram);
  // libspice-server's identity slot reads a guest address as a host pointer.
  CHECK(ram->guestAddr == reinterpret_cast<uintptr_t>(ram->host));
  CHECK(vram->guestAddr == reinterpret_cast<uintptr_t>(vram->host));
  CHECK(vram->guestAddr % 4096 == 0);
  std::memcpy(ram->host, "spicebox", 8);
  renderer::SlotMemory memory(image->slots(), image->view());
  char out[8];
  CHECK_FALSE(memory.copy(ram->guestAddr, 8, out));
  CHECK(std::memcmp(out, "spicebox", 8) == 0);
  CHECK(image->host(ram->guestAddr, 8) == ram->host);
}

TEST_CASE("an address past the image is refused by the decoder's memory") {
  auto image = makeImage(1 << 20);
  auto block = image->allocate(guestsim::Arena::Ram, 64);
  REQUIRE(block);
  renderer::SlotMemory memory(image->slots(), image->view());
  char out[16];
  auto error = memory.copy(block->guestAddr + (1 << 20) - 8, 16, out);
  REQUIRE(error);
  CHECK(error->kind == renderer::DecodeErrorKind::AddressOutsideSlot);
  CHECK(image->host(block->guestAddr + (1 << 20) - 8, 16) == nullptr);
}

TEST_CASE("restore undoes what a run wrote into guest memory") {
  auto image = makeImage(1 << 20);
  auto block = image->allocate(guestsim::Arena::Vram, 4096);
  REQUIRE(block);
  std::memset(block->host, 0x11, 4096);
  image->snapshot();
  std::memset(block->host, 0x22, 4096);
  image->restore();
  CHECK(static_cast<uint8_t>(block->host[0]) == 0x11);
  CHECK(static_cast<uint8_t>(block->host[4095]) == 0x11);
}

TEST_CASE("every allocation is refused once the image is full") {
  auto image = makeImage(8192);
  CHECK(image->allocate(guestsim::Arena::Ram, 8192));
  CHECK_FALSE(image->allocate(guestsim::Arena::Ram, 1));
}

TEST_CASE("both sides process every command of a stress stream and end with a primary") {
  auto loaded = loadStress(400, 3);
  REQUIRE(std::holds_alternative<Stream>(loaded));
  Stream& stream = std::get<Stream>(loaded);
  REQUIRE(stream.commands == 400);
  REQUIRE(stream.ioReplayed >= 1);  // the create-primary

  RunResult sb = runSpicebox(stream);
  CHECK(sb.commands == stream.commands);
  CHECK(sb.failed == 0);
  REQUIRE(sb.primary);

  SpiceServerRunner spice;
  REQUIRE(spice.ready());
  for (bool eager : {false, true}) {
    INFO("eager: " << eager);
    auto run = spice.run(stream, eager);
    REQUIRE(run);
    CHECK(run->commands == stream.commands);
    REQUIRE(run->primary);
    CHECK(run->primary->width == sb.primary->width);
    CHECK(run->primary->height == sb.primary->height);
  }
  // The verification pass snapshots both sides at the same commands.
  std::vector<Snapshot> ours, theirs;
  runSpicebox(stream, nullptr, Verify{100, &ours});
  REQUIRE(spice.run(stream, false, Verify{100, &theirs}));
  REQUIRE(ours.size() == 4);
  REQUIRE(theirs.size() == 4);
  for (size_t i = 0; i < ours.size(); ++i) {
    CHECK(ours[i].afterCommand == (i + 1) * 100);
    CHECK(theirs[i].afterCommand == ours[i].afterCommand);
  }
  // A second spicebox run starts from the same memory and state: the same picture.
  RunResult again = runSpicebox(stream);
  REQUIRE(again.primary);
  CHECK(differingPixels(*again.primary, *sb.primary) == 0);
}

TEST_CASE("differingPixels ignores the x byte and counts size mismatches as whole pictures") {
  Picture a{2, 1, {0x00112233, 0x00445566}};
  Picture b{2, 1, {0xff112233, 0x00445567}};
  CHECK(differingPixels(a, b) == 1);
  Picture c{1, 1, {0}};
  CHECK(differingPixels(a, c) == 2);
}

}  // namespace
}  // namespace spicebox::bench
