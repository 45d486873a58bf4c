// Runs in: guestsim-hostile-commands-tests. Input: the hostile commands of hostile-commands.h,
// laid out by the real materialiser in a guest-memory image with a real memslot table, and read
// by the renderer's real decoder (renderer/qxl-decode.h). Each attack must be refused with the
// error it is named for, so that the hostile scenario's run through the real broker meets every
// kind; a releasable one must still carry its release id where the device looks for it.
#include "tools/guestsim/hostile-commands.h"

#include <spice/qxl_dev.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <set>
#include <string>

#include "renderer/qxl-decode.h"

namespace spicebox::guestsim {
namespace {

constexpr uint64_t RAM_PHYS = 0x1'0000'0000;
constexpr uint64_t VRAM_PHYS = 0x2'0000'0000;
constexpr size_t RAM_SIZE = 8 << 20;
constexpr size_t VRAM_SIZE = 8 << 20;
// The window is the last ATTACK_WINDOW_BYTES of RAM, in a slot of its own; slot 1 ends before it.
constexpr size_t WINDOW_START = RAM_SIZE - ATTACK_WINDOW_BYTES;
constexpr uint64_t RELEASE_ID = 0x5eed;

// Guest memory exactly as large as the BARs (ASan sees any read past them), a bump allocator
// that rewinds when everything is freed, and the slots the attacker has: 1 RAM, 2 VRAM, the
// window.
class TestGuest final : public GuestAllocator, public GuestPoke {
 public:
  TestGuest() {
    auto created = qxl::MemslotTable::create(
        qxl::MemslotLayout{},
        {qxl::BarRange{RAM_PHYS, RAM_SIZE}, qxl::BarRange{VRAM_PHYS, VRAM_SIZE}});
    REQUIRE(std::holds_alternative<qxl::MemslotTable>(created));
    table_.emplace(std::get<qxl::MemslotTable>(std::move(created)));
    ramGen_ = std::get<uint8_t>(table_->add(1, {RAM_PHYS, RAM_PHYS + WINDOW_START}));
    vramGen_ = std::get<uint8_t>(table_->add(2, {VRAM_PHYS, VRAM_PHYS + VRAM_SIZE}));
    windowGen_ =
        std::get<uint8_t>(table_->add(WINDOW_SLOT, {RAM_PHYS + WINDOW_START, RAM_PHYS + RAM_SIZE}));
    view_ = renderer::GuestView{ram_, vram_, RAM_PHYS, VRAM_PHYS};
  }

  std::optional<GuestBlock> allocate(Arena arena, size_t size) override {
    const bool inRam = arena == Arena::Ram;
    size_t& used = inRam ? ramUsed_ : vramUsed_;
    const size_t limit = inRam ? WINDOW_START : VRAM_SIZE;
    const size_t align = inRam ? 8 : 4096;
    const size_t start = (used + align - 1) / align * align;
    if (start > limit || size > limit - start)
      return std::nullopt;
    used = start + size;
    std::byte* host = (inRam ? ram_.data() : vram_.data()) + start;
    const uint64_t addr = inRam ? table_->encode(1, ramGen_, RAM_PHYS + start)
                                : table_->encode(2, vramGen_, VRAM_PHYS + start);
    return GuestBlock{host, addr, ++handles_, arena};
  }
  void free(const GuestBlock&) override {}
  size_t capacity(Arena arena) const override {
    return arena == Arena::Ram ? WINDOW_START : VRAM_SIZE;
  }

  std::byte* host(uint64_t addr, size_t size) const override {
    auto where = table_->translate(addr, size);
    if (!std::holds_alternative<qxl::BarOffset>(where))
      return nullptr;
    const auto at = std::get<qxl::BarOffset>(where);
    auto& bytes = at.bar == qxl::BarId::Ram ? ram_ : vram_;
    return const_cast<std::byte*>(bytes.data()) + at.offset;
  }
  AddressCodec codec() const override { return AddressCodec{8, 8}; }
  Window window() const override {
    return Window{const_cast<std::byte*>(ram_.data()) + WINDOW_START,
                  table_->encode(WINDOW_SLOT, windowGen_, RAM_PHYS + WINDOW_START),
                  ATTACK_WINDOW_BYTES};
  }

  const qxl::MemslotTable& table() const { return *table_; }
  const renderer::GuestView& view() const { return view_; }

 private:
  std::vector<std::byte> ram_ = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram_ = std::vector<std::byte>(VRAM_SIZE);
  size_t ramUsed_ = 0, vramUsed_ = 0;
  uint64_t handles_ = 0;
  std::optional<qxl::MemslotTable> table_;
  uint8_t ramGen_ = 0, vramGen_ = 0, windowGen_ = 0;
  renderer::GuestView view_;
};

TEST_CASE("every-hostile-command-fails-with-the-error-it-is-named-for", "[hostile]") {
  std::set<std::string> names, errors;
  for (uint8_t k = 0; k < HOSTILE_COMMAND_COUNT; ++k) {
    const auto attack = static_cast<HostileCommand>(k);
    const std::string name(hostileCommandName(attack));
    INFO(name);
    CHECK(names.insert(name).second);  // names are unique
    TestGuest g;
    const Command base = attackBase(attack);
    CHECK(base == attackBase(attack));  // pure
    auto laid = materialise(base, RELEASE_ID, g);
    REQUIRE(std::holds_alternative<Materialised>(laid));
    Materialised m = std::get<Materialised>(std::move(laid));
    std::byte* moved = corrupt(attack, m, g);

    // Where the device reads the release info (8 bytes at the command's address).
    std::byte* info = g.host(m.commandAddr, sizeof(QXLReleaseInfo));
    if (releasable(attack)) {
      REQUIRE(info != nullptr);
      uint64_t id;
      std::memcpy(&id, info, sizeof id);
      CHECK(id == RELEASE_ID);
      if (moved)
        CHECK(moved == info);
    } else {
      CHECK(info == nullptr);
    }

    const std::string expected(expectedDecodeError(attack));
    renderer::SlotMemory memory(g.table(), g.view());
    auto decoded = renderer::decodeCommand(memory, m.qxlType, m.commandAddr);
    if (attack == HostileCommand::CursorCommandOnTheDisplayRing) {
      // A valid cursor command; the renderer's worker refuses it for its ring.
      CHECK(std::holds_alternative<qxlcmd::Command>(decoded));
      CHECK(m.qxlType == QXL_CMD_CURSOR);
      CHECK_FALSE(m.cursorRing);
      CHECK(expected == "WrongRing");
    } else if (expected.empty()) {
      // Decoded: the rasteriser refuses (or clips) it.
      if (auto* error = std::get_if<renderer::DecodeError>(&decoded))
        FAIL(renderer::decodeErrorName(error->kind) << ": " << error->detail);
    } else {
      REQUIRE(std::holds_alternative<renderer::DecodeError>(decoded));
      const auto& error = std::get<renderer::DecodeError>(decoded);
      INFO(error.detail);
      CHECK(renderer::decodeErrorName(error.kind) == expected);
    }
    if (!expected.empty())
      errors.insert(expected);
  }
  // Every DecodeError kind a guest can cause, but CommandTooLarge: more than 384 MiB of one
  // command's structures do not fit a 64 MiB BAR. NoGuestMemory and NoMemslots are the
  // worker's states, not the guest's; the decoder never reports ChunkDataShort itself (each
  // owner names it: BitmapDataShort, GlyphsPastData, PathPastData, ...).
  CHECK(errors.size() == renderer::DECODE_ERROR_KIND_COUNT - 4);
  CHECK(errors.count("CommandTooLarge") == 0);
}

TEST_CASE("address-codec-is-the-memslot-encoding", "[hostile]") {
  auto created = qxl::MemslotTable::create(
      qxl::MemslotLayout{}, {qxl::BarRange{RAM_PHYS, RAM_SIZE}, qxl::BarRange{VRAM_PHYS, 0}});
  REQUIRE(std::holds_alternative<qxl::MemslotTable>(created));
  const auto& table = std::get<qxl::MemslotTable>(created);
  const AddressCodec codec{8, 8};
  const uint64_t addr = table.encode(5, 0xa7, RAM_PHYS + 0x1234);
  CHECK(codec.slotOf(addr) == 5);
  CHECK(codec.generationOf(addr) == 0xa7);
  CHECK(codec.physOf(addr) == RAM_PHYS + 0x1234);
  CHECK(codec.encode(5, 0xa7, RAM_PHYS + 0x1234) == addr);
}

}  // namespace
}  // namespace spicebox::guestsim
