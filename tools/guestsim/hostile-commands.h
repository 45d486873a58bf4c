// Runs in: spicebox-guestsim and its tests (unsandboxed). Input: trusted: our own command trees
// and our own layouts of them in guest memory.
//
// The renderer's list of hostile inputs as guest commands: every DecodeError kind a guest can
// cause (renderer/qxl-decode.h; each has a unit test named after the attack in
// renderer/qxl-decode-test.cpp) and the rasteriser's refusals (renderer/raster-test.cpp). Each
// attack is a valid command tree (attackBase: pure, for the scenario) that is then corrupted
// where it lies in guest memory (corrupt: for the attacker), the way those unit tests corrupt
// theirs. Every draw names the scratch surface or a surface that does not exist (the one command
// on the primary is a destroy the rasteriser must refuse), so that whatever the renderer makes of
// an attack can never change the guest's valid pictures.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tools/guestsim/materialise.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

enum class HostileCommand : uint8_t {
  // The ring item: its type or its address.
  UnknownCommandType,
  CursorCommandOnTheDisplayRing,
  CommandCrossingTheEndOfASlot,
  CommandInASlotOutOfRange,     // unreleasable: its release info translates nowhere
  CommandInASlotNeverAdded,     // unreleasable
  CommandWithAStaleGeneration,  // unreleasable
  // Chunk chains.
  CircularChunks,
  ChunkSizeOverflow,
  ChunkChainLongerThanMaxDataChunks,
  BitmapChunksShorterThanYTimesStride,
  // Sizes.
  BitmapDataPastTheEndOfASlot,
  StrideTimesHeightOverflow,
  StrideTooSmall,
  BitmapTooLarge,
  HugeSurfaceSize,
  ZeroSurfaceSize,
  SurfaceIdOutOfRange,
  // Palettes.
  PaletteCountLargerThanItsData,
  PaletteMissing,
  PaletteTooSmall,
  PaletteTooLarge,
  // Text, paths, clips, cursors, messages.
  GlyphCountPastTheData,
  UnknownGlyphFormat,
  StringTooLong,
  PathSegmentCountPastTheData,
  PathTooLong,
  ClipRectCountPastTheData,
  TooManyClipRects,
  CursorDataShorterThanItsShape,
  CursorTooLarge,
  MessageWithoutANul,
  // Values outside their enums.
  UnknownDrawType,
  UnknownImageType,
  UnknownBitmapFormat,
  UnknownClipType,
  UnknownBrushType,
  UnknownCursorCommand,
  UnknownCursorShapeType,
  UnknownSurfaceCommand,
  BadRopDescriptor,
  BadScaleMode,
  UnorderedBbox,
  QuicImage,
  // Decoded, then refused (or clipped) by the rasteriser.
  DrawOnASurfaceThatDoesNotExist,
  CopyFromASurfaceThatDoesNotExist,
  SurfaceCreatedTwice,
  DestroyOfAnUnknownSurface,
  HugeBboxClippedToTheSurface,
  SurfaceCommandOnThePrimary,
};
inline constexpr uint8_t HOSTILE_COMMAND_COUNT =
    static_cast<uint8_t>(HostileCommand::SurfaceCommandOnThePrimary) + 1;

// "circular-chunks".
std::string_view hostileCommandName(HostileCommand attack);
// The renderer's DecodeErrorKind name for it ("ChunkLoop"), or "" when it decodes and the
// rasteriser refuses or clips it.
std::string_view expectedDecodeError(HostileCommand attack);
// False when the device cannot release it (its QXLReleaseInfo translates through no slot): the
// device counts it (QXL_INTERRUPT_ERROR) and the guest frees its memory itself.
bool releasable(HostileCommand attack);

// The scratch surface every attack draws on (any id below QXLRom.n_surfaces that the valid
// scenarios never use) and its size. The attacker creates it before the first attack.
inline constexpr uint32_t SCRATCH_SURFACE = 1000;
inline constexpr uint32_t SCRATCH_SIZE = 64;

// The valid command the attack starts from. Pure: same attack, same tree.
Command attackBase(HostileCommand attack);
// The scratch surface's QXL_SURFACE_CMD_CREATE.
Command scratchSurfaceCreate();
// Slot ids the attacks use besides the driver's (1: RAM, 2: VRAM): the window's own slot, the
// one memslot churn adds and deletes, and one no attack ever adds.
inline constexpr uint8_t WINDOW_SLOT = 3;
inline constexpr uint8_t CHURN_SLOT = 4;
inline constexpr uint8_t REFUSED_SLOT = 5;  // adds of it are always refused
inline constexpr uint8_t NEVER_ADDED_SLOT = 6;

// How the memslot encoding of qxl_dev.h splits an address (QXLRom's slot_id_bits and
// slot_gen_bits): | slot id | generation | physical |.
struct AddressCodec {
  uint8_t slotIdBits = 8;
  uint8_t slotGenBits = 8;
  uint8_t slotOf(uint64_t addr) const;
  uint8_t generationOf(uint64_t addr) const;
  uint64_t physOf(uint64_t addr) const;
  uint64_t encode(uint8_t slot, uint8_t generation, uint64_t phys) const;
};

// Guest memory as the attack reaches it.
class GuestPoke {
 public:
  virtual ~GuestPoke() = default;
  // Host bytes of [addr, addr + size) inside a block this guest laid out; nullptr otherwise.
  virtual std::byte* host(uint64_t addr, size_t size) const = 0;
  virtual AddressCodec codec() const = 0;
  // Spare memory whose last byte is the last byte of a memslot of its own (for attacks on a
  // slot's end): `size` bytes at guest address `addr`, which the attack may overwrite.
  struct Window {
    std::byte* host = nullptr;
    uint64_t addr = 0;
    size_t size = 0;
  };
  virtual Window window() const = 0;
};
// Bytes a GuestPoke's window must have (the longest chunk chain: MAX_DATA_CHUNKS + 1 chunks).
inline constexpr size_t ATTACK_WINDOW_BYTES = 128 * 1024;

// Corrupts `laidOut` (attackBase(attack) as materialise() laid it out) in guest memory: rewrites
// its structures, and may change the ring item it will be published as (commandAddr, qxlType,
// cursorRing). An attack that moves the command takes its QXLReleaseInfo along, so that a
// releasable attack comes back with its own release id: it returns where the release info now
// is (the device writes `next` there), else nullptr.
std::byte* corrupt(HostileCommand attack, Materialised& laidOut, const GuestPoke& memory);

}  // namespace spicebox::guestsim
