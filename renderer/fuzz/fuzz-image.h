// Runs in: the decoder fuzzer (renderer/fuzz/decode-fuzz.cpp) and its seed generator
// (renderer/fuzz/make-seeds.cpp); developer and CI machines, never in spicebox itself.
// Input: fuzz input bytes, wholly hostile (decode-fuzz.cpp), or commands materialised by the
// guest simulator (make-seeds.cpp). Both sides share the image layout defined here, so a seed
// written by the generator means the same to the fuzzer.
//
// One fuzz input = one QXLCommand plus the guest memory behind it:
//
//   offset 0          1 byte   QXLCommand.type, raw (QXL_CMD_*; other values are fuzzed too)
//   offset 1          8 bytes  QXLCommand.data, little endian, a raw memslot-encoded address
//   offset 9          up to RAM_SIZE bytes: the RAM BAR image from its first byte; missing
//                    bytes are zero
//   offset 9+RAM_SIZE up to VRAM_SIZE bytes: the VRAM BAR image, the same way
//
// The memslot table is fixed: slot RAM_SLOT covers the whole RAM BAR and slot VRAM_SLOT the whole
// VRAM BAR, each with the generation FuzzSlots gives it (the same in every process, since the
// table is built by the same steps). FuzzGuest holds that image and decodeFuzzInput decodes one
// input as the fuzzer does, for the fuzzer and the regression tests (renderer/fuzz/regressions/).
// Addresses for other slots or generations are how the fuzzer
// reaches the translation errors.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <variant>
#include <vector>

#include "broker/qxl/memslot.h"
#include "renderer/qxl-decode.h"

namespace spicebox::renderer::fuzz {

// Small BARs keep every execution cheap; commands that do not fit are not seeded.
inline constexpr size_t RAM_SIZE = 64 << 10;
inline constexpr size_t VRAM_SIZE = 256 << 10;
inline constexpr uint64_t RAM_PHYS = 0x1'0000'0000;
inline constexpr uint64_t VRAM_PHYS = 0x2'0000'0000;
inline constexpr uint8_t RAM_SLOT = 1, VRAM_SLOT = 2;

inline constexpr size_t HEADER_SIZE = 9;
inline constexpr size_t MAX_INPUT_SIZE = HEADER_SIZE + RAM_SIZE + VRAM_SIZE;

// The command a fuzz input names.
struct FuzzHeader {
  uint8_t qxlType = 0;
  uint64_t address = 0;
};

inline std::array<uint8_t, HEADER_SIZE> encodeHeader(const FuzzHeader& h) {
  std::array<uint8_t, HEADER_SIZE> out{};
  out[0] = h.qxlType;
  for (size_t i = 0; i < 8; ++i)
    out[1 + i] = static_cast<uint8_t>(h.address >> (8 * i));
  return out;
}

// nullopt when the input is shorter than the header.
inline std::optional<FuzzHeader> decodeHeader(std::span<const uint8_t> input) {
  if (input.size() < HEADER_SIZE)
    return std::nullopt;
  FuzzHeader h;
  h.qxlType = input[0];
  for (size_t i = 0; i < 8; ++i)
    h.address |= static_cast<uint64_t>(input[1 + i]) << (8 * i);
  return h;
}

// The fixed memslot table: RAM_SLOT over the RAM BAR, VRAM_SLOT over the VRAM BAR.
class FuzzSlots {
 public:
  FuzzSlots() : table_(makeTable()) {
    ramGen_ = addSlot(RAM_SLOT, RAM_PHYS, RAM_SIZE);
    vramGen_ = addSlot(VRAM_SLOT, VRAM_PHYS, VRAM_SIZE);
  }
  const qxl::MemslotTable& table() const { return table_; }
  uint64_t ramAddress(uint64_t offset) const {
    return table_.encode(RAM_SLOT, ramGen_, RAM_PHYS + offset);
  }
  uint64_t vramAddress(uint64_t offset) const {
    return table_.encode(VRAM_SLOT, vramGen_, VRAM_PHYS + offset);
  }

 private:
  static qxl::MemslotTable makeTable() {
    auto created = qxl::MemslotTable::create(
        qxl::MemslotLayout{},
        {qxl::BarRange{RAM_PHYS, RAM_SIZE}, qxl::BarRange{VRAM_PHYS, VRAM_SIZE}});
    if (auto* table = std::get_if<qxl::MemslotTable>(&created))
      return std::move(*table);
    throw std::logic_error("fuzz-image.h: the fixed memslot layout was refused; fix its constants");
  }
  uint8_t addSlot(uint8_t id, uint64_t phys, uint64_t size) {
    auto gen = table_.add(id, QXLMemSlot{phys, phys + size});
    if (auto* g = std::get_if<uint8_t>(&gen))
      return *g;
    throw std::logic_error("fuzz-image.h: the fixed memslot was refused; fix its constants");
  }

  qxl::MemslotTable table_;
  uint8_t ramGen_ = 0, vramGen_ = 0;
};

// Guest memory that lives across executions: allocating 320 KiB per input would dominate the
// run time. The decoder never writes guest memory, so zeroing what the previous input filled is
// enough to start every input from a clean image.
class FuzzGuest {
 public:
  FuzzGuest() : view_{ram_, vram_, RAM_PHYS, VRAM_PHYS}, memory_(slots_.table(), view_) {}
  FuzzGuest(const FuzzGuest&) = delete;  // memory_ refers to the members
  FuzzGuest& operator=(const FuzzGuest&) = delete;

  const GuestMemory& load(std::span<const uint8_t> image) {
    fill(ram_, ramDirty_, image.subspan(0, std::min(image.size(), RAM_SIZE)));
    image = image.subspan(std::min(image.size(), RAM_SIZE));
    fill(vram_, vramDirty_, image.subspan(0, std::min(image.size(), VRAM_SIZE)));
    return memory_;
  }

 private:
  static void fill(std::vector<std::byte>& bar, size_t& dirty, std::span<const uint8_t> bytes) {
    if (!bytes.empty())
      std::memcpy(bar.data(), bytes.data(), bytes.size());
    if (dirty > bytes.size())
      std::memset(bar.data() + bytes.size(), 0, dirty - bytes.size());
    dirty = bytes.size();
  }

  FuzzSlots slots_;
  std::vector<std::byte> ram_ = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram_ = std::vector<std::byte>(VRAM_SIZE);
  size_t ramDirty_ = 0, vramDirty_ = 0;
  GuestView view_;
  SlotMemory memory_;
};

// Decodes the command a fuzz input names, as the fuzzer does; nullopt when the input is shorter
// than the header. One FuzzGuest serves any number of inputs, one after the other.
inline std::optional<std::variant<qxlcmd::Command, DecodeError>> decodeFuzzInput(
    FuzzGuest& guest, std::span<const uint8_t> input) {
  auto header = decodeHeader(input);
  if (!header)
    return std::nullopt;
  const GuestMemory& memory = guest.load(input.subspan(HEADER_SIZE));
  SurfaceMemory surface;
  return decodeCommand(memory, header->qxlType, header->address, &surface);
}

}  // namespace spicebox::renderer::fuzz
