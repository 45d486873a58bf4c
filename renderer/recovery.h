// Runs in: renderer (sandboxed), and the broker (it reads the progress record after a renderer
// died). Input: the recovery area, a broker-created memfd that every renderer incarnation of a
// VMM link maps read-write. What it holds was written by an earlier incarnation, which may have
// been compromised by the guest before it died: the next incarnation checks every record it
// adopts (formats, sizes, ranges inside the arena, no overlap) and drops what does not fit, as
// it would hostile guest data.
//
// Why it exists (issue 7): a renderer that dies or hangs loses nothing that matters. Its state
// lives here, not in its own memory, so the next incarnation carries on where it stopped:
// - the surface arena: offscreen surfaces' pixels (and a non-32 bpp primary's native image);
// - the surface table: what each live surface is and where its pixels and guest memory are;
// - the primary record: the primary, the segment buffer holding its picture, double buffering;
// - the pointer;
// - the progress record: which item of which batch is running. Items before it are done (their
//   effects are in the arena, the segment and the table); the running item is made undoable
//   first when drawing it twice would not give the same pixels (an XOR, a blend, a ROP3 that
//   reads the destination, a copy within one surface): its destination rectangle is saved in the
//   undo area. Records are kept twice and one 64-bit commit word says which copy is current, so
//   that a death in the middle of writing one never leaves half a record in use.
// The broker reads the progress record after a death to learn which command was running: a
// command that brings the renderer down twice is quarantined (released without drawing).
//
// Layout of the memfd: [ State (STATE_BYTES) | undo area (UNDO_BYTES) | surface arena ].
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>

#include "base/fd.h"
#include "renderer/limits.h"

namespace spicebox::renderer::recovery {

inline constexpr uint64_t MAGIC = 0x3176636572627373ull;  // "ssbrecv1", little endian
inline constexpr uint32_t VERSION = 1;

// Bytes of the state record, page-rounded.
inline constexpr uint64_t STATE_BYTES = 512 * 1024;
// The undo area holds one draw's destination rectangle: at most a whole surface.
inline constexpr uint64_t UNDO_BYTES = uint64_t{MAX_SURFACE_DIMENSION} * MAX_SURFACE_DIMENSION * 4;
// Offscreen surface pixels. The renderer's own memory held them before; a guest asking for more
// gets its surface refused (SurfaceMemoryTooSmall), as an allocation failure did. The memfd's
// pages are allocated when touched, so the size costs address space, not memory.
inline constexpr uint64_t DEFAULT_ARENA_BYTES = 512ull << 20;
inline constexpr uint64_t MAX_ARENA_BYTES = 2ull << 30;
// Surface pixels start at multiples of this in the arena (pixman needs 4; a cache line is kinder).
inline constexpr uint64_t ARENA_ALIGN = 64;
// Rectangles of the other buffer that lag the picture (worker.cpp MAX_FORWARD_RECTS).
inline constexpr uint32_t MAX_FORWARD_RECTS = 128;
// The largest pointer shape kept (render.capnp maxCursorDimension).
inline constexpr uint32_t MAX_CURSOR_SIDE = 128;

// Total memfd size for an arena of `arenaBytes`.
inline constexpr uint64_t areaBytes(uint64_t arenaBytes) {
  return STATE_BYTES + UNDO_BYTES + arenaBytes;
}

struct RectRecord {
  int32_t top, left, bottom, right;
};

// One live surface: id 1 .. MAX_SURFACES - 1 an offscreen surface, id 0 a non-32 bpp primary's
// native image. Pixels at arenaOffset, the rasteriser's own stride for the format, top row first.
struct SurfaceRecord {
  uint32_t live;  // 1: in use
  uint32_t format;
  uint32_t width, height;
  uint64_t arenaOffset;
  // Where the guest keeps the surface (QXL_SURFACE_CMD_CREATE data; UPDATE_AREA writes there);
  // guestSize 0: unknown.
  uint64_t guestAddr, guestSize;
  int32_t guestStride;
  uint32_t reserved;
};

struct PrimaryRecord {
  uint32_t live;
  uint32_t width, height, format;
  int32_t guestStride;
  uint32_t reserved;
  uint64_t guestMem;           // createPrimary's mem (memslot-encoded)
  uint64_t segmentGeneration;  // the display segment it is drawn into
};

// What surfaces exist. Changed by surface commands and the primary's IO only.
struct SurfaceTable {
  PrimaryRecord primary;
  SurfaceRecord surfaces[MAX_SURFACES];
};

// The primary's double buffering (worker.h).
struct BufferRecord {
  uint32_t buffer;        // the segment buffer holding the picture (0 or 1)
  uint32_t presented;     // 1: that buffer was reported; the next batch draws in the other
  uint32_t forwardCount;  // rectangles of the other buffer that lag the picture
  uint32_t reserved;
  RectRecord forward[MAX_FORWARD_RECTS];
};

struct CursorRecord {
  uint32_t visible;
  int16_t x, y;
  uint64_t shapeSerial;
  uint64_t lastShapeSerial;
  uint16_t width, height, hotSpotX, hotSpotY;
  uint32_t pixels[MAX_CURSOR_SIDE * MAX_CURSOR_SIDE];
};

enum class Phase : uint32_t {
  Idle = 0,      // no batch in progress (`seq` means nothing)
  Running = 1,   // items before `index` of batch `seq` are done, item `index` is running
  Finished = 2,  // every item of batch `seq` is done; its batchDone is (being) sent
};

// The commit word: one 64-bit store moves the renderer from one consistent state to the next.
// Records are kept twice; the word says which copy is current, so a record is written into the
// other copy first and takes effect with the word.
struct Commit {
  uint32_t index = 0;
  Phase phase = Phase::Idle;
  uint8_t tableCopy = 0, bufferCopy = 0, cursorCopy = 0;
  uint64_t pack() const {
    return uint64_t{index} | uint64_t{static_cast<uint32_t>(phase) & 0xf} << 32 |
           uint64_t{tableCopy & 1u} << 36 | uint64_t{bufferCopy & 1u} << 37 |
           uint64_t{cursorCopy & 1u} << 38;
  }
  static Commit unpack(uint64_t word) {
    Commit c;
    c.index = static_cast<uint32_t>(word);
    const uint32_t phase = (word >> 32) & 0xf;
    c.phase =
        phase <= static_cast<uint32_t>(Phase::Finished) ? static_cast<Phase>(phase) : Phase::Idle;
    c.tableCopy = (word >> 36) & 1;
    c.bufferCopy = (word >> 37) & 1;
    c.cursorCopy = (word >> 38) & 1;
    return c;
  }
};

struct Progress {
  uint64_t seq;
  uint64_t commit;  // Commit::pack()
  // The running item's destination, saved before it was drawn, valid when undoToken equals
  // undoToken(seq, index) of the running item (written last).
  uint64_t undoToken;
  uint32_t undoSurface;   // surface id whose drawn image is saved (0: the primary's)
  uint32_t undoRowBytes;  // bytes saved per row, from undoByteOffset in each row
  uint32_t undoRows;      // rows, from undoTop
  uint32_t undoTop;
  uint32_t undoByteOffset;
  uint32_t reserved;
};

inline constexpr uint64_t undoToken(uint64_t seq, uint32_t index) {
  return (seq << 16 | index) + 1;  // never 0 (0: nothing saved)
}

struct State {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved;
  uint64_t arenaBytes;
  Progress progress;
  SurfaceTable tables[2];
  BufferRecord buffers[2];
  CursorRecord cursors[2];
};
static_assert(sizeof(State) <= STATE_BYTES);

// What the broker reads after a renderer died: the batch and item it was in.
struct ProgressView {
  uint64_t seq = 0;
  uint32_t index = 0;
  Phase phase = Phase::Idle;
};
ProgressView readProgress(const State& state);

// The mapped memfd. Unmapped on destruction. The broker maps the same memfd to read `progress`.
class Area {
 public:
  // Checks the descriptor (size, seals against shrinking) and maps it. A fresh area (all zero:
  // the broker just made it) is initialised; one that was used keeps its contents for adoption.
  static std::variant<std::unique_ptr<Area>, std::string> map(base::Fd fd, uint64_t arenaBytes,
                                                              bool writable = true);
  ~Area();
  Area(const Area&) = delete;
  Area& operator=(const Area&) = delete;

  State& state() { return *state_; }
  const State& state() const { return *state_; }
  std::span<std::byte> undo() { return undo_; }
  std::span<std::byte> arena() { return arena_; }
  // Whether the state was written by an earlier incarnation (it has something to adopt).
  bool used() const { return used_; }

 private:
  Area() = default;
  void* base_ = nullptr;
  size_t size_ = 0;
  State* state_ = nullptr;
  std::span<std::byte> undo_, arena_;
  bool used_ = false;
};

// First-fit allocation of surface pixels in the arena (offsets ARENA_ALIGN-aligned). Its free
// list lives in this process; a new incarnation rebuilds it from the live surface records.
class ArenaAllocator {
 public:
  explicit ArenaAllocator(uint64_t bytes);
  // An offset with `bytes` free there, or nullopt when no gap is large enough.
  std::optional<uint64_t> allocate(uint64_t bytes);
  void release(uint64_t offset, uint64_t bytes);
  // Marks [offset, offset + bytes) used when adopting a record; false when it is not wholly free
  // (outside the arena, or overlapping another record): the record is refused.
  bool claim(uint64_t offset, uint64_t bytes);
  uint64_t freeBytes() const;

 private:
  static uint64_t rounded(uint64_t bytes);
  uint64_t size_;
  std::map<uint64_t, uint64_t> free_;  // offset -> bytes, disjoint, not adjacent
};

}  // namespace spicebox::renderer::recovery
