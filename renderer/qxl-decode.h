// Runs in: renderer (sandboxed). Input: a QXLCommand's type and address (from the broker, copied
// out of the ring; the address is guest data, hostile) and everything guest memory holds behind
// it (hostile, may change while it is read). Output: a pointer-free qxlcmd::Command that a
// rasteriser may use without further checks, or a DecodeError naming what was wrong.
//
// Copy -> validate -> use: every guest structure is copied once (GuestMemory::copy translates
// the whole range through the memslots first), then checked, and only the copy is looked at
// again. No guest byte is read twice, so a guest that rewrites memory during the decode changes
// nothing (spice-server's CVE-2015-3247, CVE-2015-5260/5261 were double fetches). Chunk chains
// have a count cap, a byte cap and loop detection; every size is computed with overflow checks.
// Nothing a guest writes reaches an assert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>

#include "broker/qxl/memslot.h"
#include "renderer/limits.h"
#include "renderer/qxl-command.h"

namespace spicebox::renderer {

// ---------------------------------------------------------------- limits
// Each bounds what one guest command can make the renderer allocate or walk.

// MAX_SURFACES, MAX_SURFACE_DIMENSION, MAX_CURSOR_DIMENSION: renderer/limits.h.
// Bitmaps: as surfaces, 8192 in each direction.
inline constexpr uint32_t MAX_BITMAP_DIMENSION = MAX_SURFACE_DIMENSION;
// Bitmap pixel bytes: the recording format's MAX_BINARY_BYTES; a 4096 x 8192 32 bpp bitmap.
inline constexpr uint64_t MAX_BITMAP_BYTES = 128ull << 20;
// Bytes one command may make the decoder copy in total (several images + masks + clip):
// bounds the renderer's memory per command whatever the guest combines.
inline constexpr uint64_t MAX_COMMAND_BYTES = 384ull << 20;
// QXLDataChunks in one chain: the recording format's cap; real drivers use a handful.
inline constexpr uint32_t MAX_DATA_CHUNKS = 4096;
// A palette indexes at most 8 bits.
inline constexpr uint32_t MAX_PALETTE_ENTRIES = 256;
// Clip rectangles of one drawable (1 MiB of rects), as the recording format.
inline constexpr uint32_t MAX_CLIP_RECTS = 65536;
// Points of one stroke path, as the recording format (8 MiB).
inline constexpr uint32_t MAX_PATH_POINTS = 1u << 20;
// Path bytes: every point plus one 8-byte segment header per point at most.
inline constexpr uint32_t MAX_PATH_BYTES = MAX_PATH_POINTS * 16;
// Raster glyph bytes of one string (QXLString.data_size): 64 glyphs of 128x128 at 8 bpp is far
// below; 4 MiB keeps a single text draw cheap.
inline constexpr uint32_t MAX_STRING_BYTES = 4u << 20;
// Cursor data bytes (QXLCursor.data_size): the largest shape (512 x 512 at 32 bpp plus its
// 1 bpp mask) is 1.03 MiB; 2 MiB leaves room for drivers that pad.
inline constexpr uint32_t MAX_CURSOR_BYTES = 2u << 20;
// Surface pixel bytes (height * |stride|): 8192 x 8192 at 32 bpp.
inline constexpr uint64_t MAX_SURFACE_BYTES = 256ull << 20;
// QXLMessage text is NUL-terminated in guest memory; a debug line, so 4 KiB is plenty.
inline constexpr uint32_t MAX_MESSAGE_BYTES = 4096;

// ---------------------------------------------------------------- errors

// Named after what was wrong; each has a hostile test named after the attack.
enum class DecodeErrorKind : uint8_t {
  // Before decoding (the worker's own checks).
  NoGuestMemory,       // no guestMemory attached: nothing can translate
  NoMemslots,          // no memslot table since guest memory was attached
  UnknownCommandType,  // QXLCommand.type is no QXL_CMD_*
  WrongRing,           // a cursor command on the display ring or the other way round
  // Address translation (MemslotError).
  AddressOutsideSlot,  // some byte of a structure outside its slot, or the range wraps
  SlotOutOfRange,      // slot id outside [slots_start, slots_end]
  SlotNotActive,       // slot never added, deleted or reset
  GenerationMismatch,  // address made for an earlier incarnation of the slot
  // Chunk chains.
  ChunkLoop,       // the chain revisits a chunk
  ChunkTooLong,    // more chunks than MAX_DATA_CHUNKS, or more bytes than the owner declared
  ChunkDataShort,  // the chain ends before the bytes its owner declared (owners below refine it)
  // Sizes.
  SizeOverflow,         // a size computation overflows its QXL field width
  CommandTooLarge,      // the command's parts add up to more than MAX_COMMAND_BYTES
  StrideTooSmall,       // stride < width * bits per pixel
  BitmapTooLarge,       // bitmap above MAX_BITMAP_DIMENSION or MAX_BITMAP_BYTES
  BitmapDataShort,      // bitmap chunks hold fewer than y * stride bytes
  SurfaceTooLarge,      // surface above MAX_SURFACE_DIMENSION
  SurfaceSizeZero,      // surface width or height 0
  SurfaceIdOutOfRange,  // surface id >= MAX_SURFACES
  // Palettes.
  PaletteShort,     // num_ents larger than the memory behind the palette
  PaletteMissing,   // palettized source bitmap without a palette
  PaletteTooSmall,  // fewer entries than the format can index
  PaletteTooLarge,  // num_ents > MAX_PALETTE_ENTRIES
  // Text, paths, clip, cursor, message.
  GlyphsPastData,       // raster glyphs (count or sizes) run past QXLString's data
  UnknownGlyphFormat,   // QXLString.flags names no single raster bpp
  StringTooLong,        // QXLString.data_size above MAX_STRING_BYTES
  PathPastData,         // path segment header or points run past QXLPath's data
  PathTooLong,          // more than MAX_PATH_POINTS, or data_size above MAX_PATH_BYTES
  ClipRectsPastData,    // num_rects larger than the clip's data
  TooManyClipRects,     // num_rects above MAX_CLIP_RECTS
  CursorDataShort,      // cursor data smaller than its type, width and height need
  CursorTooLarge,       // cursor above MAX_CURSOR_DIMENSION
  MessageUnterminated,  // no NUL within MAX_MESSAGE_BYTES or before the slot ends
  // Values outside their enums or bit sets.
  UnknownDrawType,
  UnknownImageType,
  UnknownFormat,  // bitmap or surface format
  UnknownClipType,
  UnknownBrushType,
  UnknownCursorType,       // QXLCursorCmd.type
  UnknownCursorShapeType,  // SPICE_CURSOR_TYPE_*
  UnknownSurfaceCommand,   // QXLSurfaceCmd.type
  BadRopDescriptor,        // bits outside SPICE_ROPD_MASK
  BadFlags,                // mask, line, path, alpha or scale-mode values outside their set
  RectUnordered,           // top > bottom or left > right (rejected, not normalised)
  Unsupported,             // valid QXL that spicebox does not draw (QUIC images); detail says
};

// How many kinds there are (Unsupported is the last), for per-kind counters.
inline constexpr size_t DECODE_ERROR_KIND_COUNT =
    static_cast<size_t>(DecodeErrorKind::Unsupported) + 1;

// The kind's name as written above ("ChunkLoop").
const char* decodeErrorName(DecodeErrorKind kind);

struct DecodeError {
  DecodeErrorKind kind;
  std::string detail;  // what was wrong, with the guest's values
};

DecodeErrorKind toDecodeErrorKind(qxl::MemslotError error);

// ---------------------------------------------------------------- guest memory

// The guest's RAM and VRAM as the renderer sees them, and where the guest placed them.
struct GuestView {
  std::span<std::byte> ram;
  std::span<std::byte> vram;
  uint64_t ramPhysStart = 0;
  uint64_t vramPhysStart = 0;
};

// The only way the decoder reads guest memory.
class GuestMemory {
 public:
  virtual ~GuestMemory() = default;
  // Translates [addr, addr + size) whole and copies it into `out`: the single read of those
  // bytes. size 0 reads nothing and succeeds.
  virtual std::optional<DecodeError> copy(uint64_t addr, size_t size, void* out) const = 0;
  // Translates [addr, addr + size) whole without reading it (surface memory the renderer draws
  // into in place). size 0 is refused (nothing to locate).
  virtual std::variant<std::span<std::byte>, DecodeError> locate(uint64_t addr,
                                                                 uint64_t size) const = 0;
};

// Guest memory through the memslot replica and the BAR mappings.
class SlotMemory final : public GuestMemory {
 public:
  // Both outlive this object.
  SlotMemory(const qxl::MemslotTable& slots, const GuestView& view) : slots_(slots), view_(view) {}
  std::optional<DecodeError> copy(uint64_t addr, size_t size, void* out) const override;
  std::variant<std::span<std::byte>, DecodeError> locate(uint64_t addr,
                                                         uint64_t size) const override;

 private:
  const qxl::MemslotTable& slots_;
  const GuestView& view_;
};

// ---------------------------------------------------------------- decoding

// Where a surface create's pixels are (validated: the whole height * |stride| range translates).
struct SurfaceMemory {
  uint64_t guestAddr = 0;  // lowest address, whatever the stride's sign
  uint64_t size = 0;       // height * |stride|
};

// Decodes the command of QXL_CMD_* `qxlType` at guest address `addr`. Everything the tree holds
// is checked so that a rasteriser can use it without bounds checks of its own:
// - bitmaps: known format, x, y <= MAX_BITMAP_DIMENSION, stride >= bytes of x pixels,
//   bytes().size() == y * stride (a source whose data lies in one chunk is a `view` of the
//   translated guest range, valid while the guest mapping is; the rest is copied); palettized
//   source formats carry a palette with every index the format can address (masks need none); image
//   surface ids < MAX_SURFACES;
// - rects that are drawn with (bbox, clip rects, src areas, text back area, update area,
//   dependency rects) have top <= bottom and left <= right; unordered ones are rejected;
// - brush, clip, image, rop descriptor, scale mode, mask, line, path and string flags are
//   within their enums; raster glyph strings hold `length` glyphs, each inside the data;
// - paths: every segment's points inside the data;
// - cursor shapes: width, height <= MAX_CURSOR_DIMENSION, data at least what the type needs;
// - surface creates: id, format, non-zero size <= MAX_SURFACE_DIMENSION, |stride| large
//   enough, and the pixel range inside one slot (reported through `surface` when not null).
// What is not checked: rect coordinates against surface sizes (the rasteriser clips), src_area
// against the source image's size, surface existence (the rasteriser's state).
std::variant<qxlcmd::Command, DecodeError> decodeCommand(const GuestMemory& mem, uint32_t qxlType,
                                                         uint64_t addr,
                                                         SurfaceMemory* surface = nullptr);

// Bytes of pixel data a cursor of `type`, `width` x `height` needs (SPICE_CURSOR_TYPE_*: the
// colour or alpha plane, the palette of COLOR4/8, and the 1 bpp AND mask), or nullopt for an
// unknown type.
std::optional<uint64_t> cursorDataBytes(uint8_t type, uint32_t width, uint32_t height);

}  // namespace spicebox::renderer
