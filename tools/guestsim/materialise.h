// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: a Command tree
// (spice-record.h) from a recording file (already checked by RecordReader) or from a scenario.
//
// Puts one command into guest memory the way a QXL guest driver does: the QXL*Cmd / QXLDrawable
// with its QXLReleaseInfo first, and everything it points to (QXLImage + QXLBitmap + QXLDataChunk
// chains with the recorded chunk sizes, palettes, QXLClipRects, QXLPath, QXLString, QXLCursor,
// QXLMessage text, surface memory), every pointer a memslot-encoded guest address
// (qxl_dev.h QXLPHYSICAL). Layout and field semantics follow spice/qxl_dev.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

// Which memory a block comes from: the RAM BAR's command area (commands and what they point
// to), or the VRAM BAR (surface pixels).
enum class Arena : uint8_t { Ram, Vram };

// A block of guest memory handed out by the driver's allocator.
struct GuestBlock {
  std::byte* host = nullptr;  // where the guestsim writes it
  uint64_t guestAddr = 0;     // the memslot-encoded address the device sees
  uint64_t handle = 0;        // the allocator's own id, for free()
  Arena arena = Arena::Ram;
};

class GuestAllocator {
 public:
  virtual ~GuestAllocator() = default;
  // `size` bytes aligned to 8 (4096 for Vram), zero-filled; nullopt when the arena has no room
  // now (the driver reclaims released memory and tries again).
  virtual std::optional<GuestBlock> allocate(Arena arena, size_t size) = 0;
  virtual void free(const GuestBlock& block) = 0;
  // The largest block `arena` could ever hand out (its size when nothing is allocated). A request
  // above it fails with TooLarge instead of OutOfMemory, so the driver does not wait forever for
  // releases that can never make room.
  virtual size_t capacity(Arena arena) const = 0;
};

struct Materialised {
  uint64_t commandAddr = 0;  // QXLCommand::data
  uint32_t qxlType = 0;      // QXLCommand::type (QXL_CMD_*)
  bool cursorRing = false;   // QXL_CMD_CURSOR goes on the cursor ring
  // Freed when the device releases the command (its release id comes back).
  std::vector<GuestBlock> blocks;
  // Surface create: the surface's pixel memory (VRAM), which lives until the surface is
  // destroyed, not until the create command is released. The driver keeps it by surface id.
  // QXLSurface.data is its guestAddr, the lowest address of height*|stride| bytes, for either
  // stride sign (as spice-server maps it); with stride < 0, line 0 is the last row in memory.
  // Not in `blocks`.
  std::optional<GuestBlock> surfaceMemory;
};

enum class MaterialiseErrorKind : uint8_t {
  OutOfMemory,  // an arena is full: every block taken so far was freed; retry after reclaiming
  Unsupported,  // a shape this driver does not produce (detail says which), e.g. compat drawables
  TooLarge,     // one block larger than the arena can ever hold
};

struct MaterialiseError {
  MaterialiseErrorKind kind;
  std::string detail;
};

// Lays out `command` with `releaseId` in its QXLReleaseInfo (a union: `next` shares the 8 bytes
// and is written by the device on release). Surface destroy commands need no memory beyond the
// command. `blocks` holds the command block first, then one block per pointed-to object. The
// body's variant alternative decides the command type (Command::type is not consulted). On
// error nothing stays allocated.
std::variant<Materialised, MaterialiseError> materialise(const Command& command, uint64_t releaseId,
                                                         GuestAllocator& allocator);

}  // namespace spicebox::guestsim
