// Runs in: renderer (sandboxed). Input: batches from the broker (trusted, range-checked anyway:
// a broker bug must not become a memory error here) whose commands point into guest memory
// (hostile, changes while read). The only code of the renderer that follows guest addresses:
// every one goes through the memslot replica (SlotMemory) into the decoder (qxl-decode.h), which
// copies each structure once and validates the copy; only decoded trees reach the hook. Also maps
// the broker's display segments (checked: size, seals, dimensions) and writes rendered pixels
// back into guest memory on UPDATE_AREA (through the same memslot replica, translated each time).
#pragma once

#include <spice/qxl_dev.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "base/fd.h"
#include "broker/qxl/memslot.h"
#include "ipc/render.capnp.h"
#include "renderer/qxl-decode.h"
#include "renderer/raster.h"
#include "renderer/recovery-log.h"

namespace spicebox::renderer {

// The guestMemory descriptors, mapped MAP_SHARED read-write (the renderer writes surfaces on
// UPDATE_AREA). Unmapped on destruction. The broker checked the memfds are sealed against
// shrinking and at least this large, so no access inside the mapping can fault.
class GuestMapping {
 public:
  // Refusal text when a size is out of range or mmap fails.
  static std::variant<GuestMapping, std::string> map(base::Fd ram, base::Fd vram,
                                                     ipc::render::GuestMemory::Reader layout);
  GuestMapping(GuestMapping&& other) noexcept;
  GuestMapping& operator=(GuestMapping&& other) noexcept;
  GuestMapping(const GuestMapping&) = delete;
  GuestMapping& operator=(const GuestMapping&) = delete;
  ~GuestMapping();

  const GuestView& view() const { return view_; }

 private:
  GuestMapping() = default;
  void unmap();
  GuestView view_;
};

// A display segment (render.capnp displaySegment), mapped MAP_SHARED read-write; unmapped on
// destruction. The broker created and sealed it; it is checked anyway (size, seals, dimensions),
// so that no access inside the mapping can fault.
class DisplaySegmentMapping {
 public:
  // Refusal text when the descriptor is missing, smaller than announced or not sealed against
  // shrinking, the dimensions or layout are out of range, or mmap fails.
  static std::variant<std::unique_ptr<DisplaySegmentMapping>, std::string> map(
      base::Fd fd, ipc::render::DisplaySegment::Reader segment);
  ~DisplaySegmentMapping();
  DisplaySegmentMapping(const DisplaySegmentMapping&) = delete;
  DisplaySegmentMapping& operator=(const DisplaySegmentMapping&) = delete;

  uint64_t generation() const { return generation_; }
  uint32_t width() const { return width_; }
  uint32_t height() const { return height_; }
  uint32_t stride() const { return stride_; }
  // Buffer 0's picture: stride * height bytes, top row first, 4-byte aligned.
  std::span<std::byte> pixels() const { return buffers_[0]; }
  // Buffer `index` (0 or 1); buffer 1 exists when hasBackBuffer().
  std::span<std::byte> pixels(unsigned index) const { return buffers_[index & 1]; }
  bool hasBackBuffer() const { return !buffers_[1].empty(); }

 private:
  DisplaySegmentMapping() = default;
  void* base_ = nullptr;
  size_t size_ = 0;
  uint64_t generation_ = 0;
  uint32_t width_ = 0, height_ = 0, stride_ = 0;
  std::span<std::byte> buffers_[2];
};

struct WorkerStats {
  uint64_t batches = 0;
  uint64_t commands = 0;  // commands copied out and accepted
  uint64_t rejected = 0;  // commands refused (DecodeError), never drawn
  uint64_t draws = 0, updates = 0, cursors = 0, messages = 0, surfaceCmds = 0;
  uint64_t memslotTables = 0;
  uint64_t badMemslots = 0;   // broker-sent slots the replica refused (a broker bug)
  uint64_t droppedItems = 0;  // items beyond maxItemsPerBatch (a broker bug)
  uint64_t updateAreas = 0;
  uint64_t drawn = 0;             // decoded commands the rasteriser carried out
  uint64_t drawErrors = 0;        // decoded commands the rasteriser refused (RasterError)
  uint64_t damageRects = 0;       // primary rectangles reported changed, after coalescing per batch
  uint64_t hints = 0;             // solid fill / copy bits hints reported
  uint64_t segments = 0;          // display segments received
  uint64_t updateAreaWrites = 0;  // UPDATE_AREAs written back into guest memory
  uint64_t updateAreaRefused = 0;  // UPDATE_AREAs not written (unknown surface, bad area, memory)
  uint64_t initialPixelsMissing = 0;  // primaries whose `mem` did not translate: started black
  uint64_t cursorShapes = 0;          // new pointer shapes taken (each got a new shapeSerial)
  uint64_t cursorShapesRefused = 0;   // QXL_CURSOR_SET shapes not taken (too large, unreadable)
  uint64_t cursorReports = 0;         // batches that reported the pointer (BatchDone.cursor)
  uint64_t resumedBatches = 0;        // batches taken up where an earlier renderer stopped
  uint64_t quarantinedSkipped = 0;    // items the broker quarantined, skipped
  uint64_t adoptedSurfaces = 0;       // surfaces taken over from an earlier renderer
  uint64_t adoptionRefused = 0;       // records of an earlier renderer refused by the checks
  // Rejections by DecodeErrorKind (the index); also drives the per-kind log rate limit.
  std::array<uint64_t, DECODE_ERROR_KIND_COUNT> rejectedByKind{};
};

// What the rasteriser gets with each decoded command besides the tree.
struct CommandContext {
  // Surface create: the surface's pixels in guest memory (validated: the whole
  // height * |stride| range lies in one slot), lowest address first. Empty otherwise.
  std::span<std::byte> surfaceMemory;
};

// Called once per successfully decoded command, in ring order. The tree and the span are
// valid during the call only.
using CommandHook = std::function<void(const qxlcmd::Command&, const CommandContext&)>;

// The guest's pointer (render.capnp Cursor), kept across batches. The initial state is what
// spice-server's cursor channel starts from and returns to on reset (CursorChannel::reset):
// visible, at (0, 0), no shape.
struct CursorState {
  bool visible = true;
  int16_t x = 0, y = 0;      // hot spot position on the primary, as the guest set it
  uint64_t shapeSerial = 0;  // 0: no shape (then shape is empty, 0 x 0)
  SanitisedCursor shape;     // ARGB32, at most maxCursorDimension per side, never 0 x 0 when set
};

// A primary surface as announced by the device (the pixels stay in guest memory).
struct PrimaryState {
  uint32_t width = 0;
  uint32_t height = 0;
  int32_t stride = 0;
  uint32_t format = 0;
  uint64_t mem = 0;  // memslot-encoded guest address of its pixels (lowest address), unvalidated
};

class Worker {
 public:
  Worker() = default;
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Guest memory attached (guestMemory). Forgets the memslot table: the broker resends it.
  void attach(const GuestView& view);
  // Guest memory dropped (dropGuestMemory, or replaced). Forgets slots and surfaces.
  void detach();

  // The display segment the next createPrimary of its dimensions draws into (replaces an earlier
  // one; a primary keeps drawing into the segment it was created on). The refusal text when the
  // segment is unusable: the renderer exits and the broker restarts it.
  std::optional<std::string> receiveSegment(base::Fd fd,
                                            ipc::render::DisplaySegment::Reader segment);

  // The recovery area of this VMM link (renderer/recovery.h): from now on surfaces live in its
  // arena and every change is committed there; what an earlier renderer left is adopted (its
  // surfaces now, its primary when the segment it was drawn into arrives, its unfinished batch
  // when that batch is sent again). The refusal text when the area cannot be used.
  std::optional<std::string> attachRecovery(base::Fd fd, uint64_t arenaBytes);

  // Runs every item of one batch, in order, skipping the items the broker quarantined (they
  // brought a renderer down twice). Returns how many commands were rejected. What the batch did
  // to the primary is then in lastOutput(). A batch an earlier renderer was in the middle of is
  // taken up at the item it stopped at (that item's destination restored first when it was
  // saved), and then reports the whole primary as damage.
  uint32_t runBatch(ipc::render::Batch::Reader batch);
  // The primary's output of the last batch (render.capnp BatchDone damage and hints).
  const PrimaryOutput& lastOutput() const { return lastOutput_; }
  // The segment buffer holding the primary's picture after the last batch (BatchDone.buffer).
  uint8_t buffer() const { return primarySegment_ ? buffer_ : 0; }
  // Double buffering (render.capnp DisplaySegment): when the last batch's output was reported
  // (its buffer is presented), copies what changed since into the other buffer and moves the
  // primary there. Called as soon as the broker's outputTaken allows it (so the copy is done
  // before the next batch arrives, not on its path), and again before each batch (a no-op then).
  void flipIfPresented();

  // The pointer after the last batch, and whether that batch changed it (visibility, position or
  // shape) compared with the last pointer reported: then BatchDone.cursor carries all of it,
  // shape included, so the broker keeps no cursor state of its own to apply it to.
  const CursorState& cursor() const { return cursor_; }
  bool cursorChanged() const { return cursorChanged_; }

  // Where decoded commands go (the rasteriser); a no-op until set.
  void setCommandHook(CommandHook hook) { hook_ = std::move(hook); }

  const WorkerStats& stats() const { return stats_; }
  const std::optional<PrimaryState>& primary() const { return primary_; }
  // What is shown for the primary (32 bpp), or null when there is none.
  pixman_image_t* displayImage() const { return raster_.displayImage(); }
  bool hasMemslots() const { return slots_.has_value(); }

 private:
  // Decodes one command and hands it to the hook; the error when it is rejected.
  std::optional<DecodeError> runCommand(ipc::render::Command::Reader command);
  void loadMemslots(capnp::List<ipc::render::Memslot>::Reader slots);
  // Counts a rejection and logs it at the 1st, 2nd, 4th, 8th ... time of its kind.
  void reject(const DecodeError& error);
  // Draws a decoded command (draws, surface create/destroy, cursor shapes). `surface`: where a
  // surface create's pixels are in guest memory.
  void render(const qxlcmd::Command& command, const SurfaceMemory& surface);
  void createPrimary(const PrimaryState& primary);
  // Copies the guest's pixels at primary.mem into the new primary (black when they do not
  // translate).
  void loadInitialPixels(const PrimaryState& primary);
  // UPDATE_AREA: the rendered pixels of `area` written back into the surface's guest memory.
  void updateArea(ipc::render::UpdateArea::Reader update);
  // Counts an UPDATE_AREA that is not written and logs it at the 1st, 2nd, 4th ... time.
  void updateAreaRefused(uint32_t surfaceId, const std::string& why);
  // The guest memory of `size` bytes at `addr`, translated through today's slots, or empty.
  std::span<std::byte> locate(uint64_t addr, uint64_t size) const;
  void forgetSurfaces();
  // Recovery: the records an earlier renderer left, adopted (offscreen surfaces at once; the
  // primary once its segment is here).
  void adoptSurfaces(RecoveryLog::Adopted& adopted);
  void adoptPrimaryIfReady();
  // The saved destination of the item an earlier renderer stopped in, put back.
  void restoreUndo(const RecoveryLog::Undo& undo);
  // This renderer's pointer and buffers, as records for the recovery area.
  void logCursor();
  void logBuffers();
  // Items before `start` of a batch taken up again: only what sets state rather than pixels
  // (memslots, the pointer) is applied again.
  void replayStateItem(ipc::render::WorkItem::Reader item);
  // After a batch: its output is presented; its rectangles are what the other buffer lacks.
  void notePresented(const PrimaryOutput& output);
  void resetBuffers();
  // QXL_CURSOR_SET / MOVE / HIDE / TRAIL applied to the pointer state.
  void applyCursor(const qxlcmd::CursorCmd& command);
  // A SET's shape, sanitised; one that is too large or refused keeps the previous shape.
  void setCursorShape(const qxlcmd::CursorShape& shape);
  // Counts a shape that is not taken and logs it (debug) at the 1st, 2nd, 4th ... time.
  void cursorShapeRefused(const qxlcmd::CursorShape& shape, std::string_view why);
  // Back to the initial pointer (device reset, all surfaces destroyed, guest gone).
  void resetCursor();
  // Counts a rasteriser refusal and logs it at the 1st, 2nd, 4th ... time.
  void rasterFailed(const char* what, RasterError error);

  std::optional<GuestView> view_;
  std::optional<qxl::MemslotTable> slots_;
  std::optional<PrimaryState> primary_;
  WorkerStats stats_;
  CommandHook hook_;
  // Where an offscreen surface's pixels are in guest memory (QXL_SURFACE_CMD_CREATE's data): the
  // address is kept and translated again at UPDATE_AREA time (the slots may have changed).
  struct GuestSurface {
    uint64_t guestAddr = 0;  // lowest address
    uint64_t size = 0;       // height * |stride|
    int32_t stride = 0;
  };
  std::unordered_map<uint32_t, GuestSurface> guestSurfaces_;
  // The latest segment received, and the one the primary is drawn into (declared before raster_:
  // the rasteriser's images point into it and are destroyed first).
  std::shared_ptr<DisplaySegmentMapping> segment_;
  std::shared_ptr<DisplaySegmentMapping> primarySegment_;
  Rasteriser raster_;
  bool primaryCreatedInBatch_ = false;
  PrimaryOutput lastOutput_;
  // Double buffering: the buffer drawn into, whether its picture has been reported (then the
  // next batch draws into the other), and the rectangles where the other buffer is out of date
  // (at most MAX_FORWARD_RECTS; beyond, their bounding box).
  uint8_t buffer_ = 0;
  bool presented_ = false;
  std::vector<qxlcmd::Rect> forward_;
  CursorState cursor_;
  // The last serial handed out: serials keep increasing across resets, so a shape set after a
  // reset never reuses the serial of a shape before it (within this renderer process).
  uint64_t lastShapeSerial_ = 0;
  // What the last report said (visible, x, y, shapeSerial): the next batch reports when the
  // pointer differs from it. Initially the initial pointer: a fresh renderer reports nothing
  // until the guest changes the pointer.
  struct CursorKey {
    bool visible = true;
    int16_t x = 0, y = 0;
    uint64_t shapeSerial = 0;
    bool operator==(const CursorKey&) const = default;
  };
  CursorKey reportedCursor_;
  bool cursorChanged_ = false;
  // Recovery. The rasteriser's surfaces may live in its arena: ~Worker() lets go of them first.
  std::unique_ptr<RecoveryLog> log_;
  std::optional<recovery::ProgressView> resume_;  // where an earlier renderer stopped
  // An earlier renderer's primary, waiting for the segment it was drawn into.
  struct PendingPrimary {
    recovery::PrimaryRecord record;
    std::optional<RecoveryLog::AdoptedSurface> native;
    recovery::BufferRecord buffers;
  };
  std::optional<PendingPrimary> pendingPrimary_;
};

}  // namespace spicebox::renderer
