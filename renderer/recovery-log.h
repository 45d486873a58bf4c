// Runs in: renderer (sandboxed). Input: the recovery area (renderer/recovery.h); what an earlier
// incarnation left there is hostile (it may have been compromised before it died): every record
// is checked before it is adopted, and one that does not fit is dropped and counted.
//
// The renderer's side of recovery: keeps the surface table, the primary, its double buffering and
// the pointer in the area as they change, commits after each batch item, lends the arena to the
// rasteriser (SurfaceStore) and saves the destination of each unrepeatable draw (DrawJournal).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"
#include "renderer/raster.h"
#include "renderer/recovery.h"

namespace spicebox::renderer {

class RecoveryLog final : public SurfaceStore, public DrawJournal {
 public:
  // Maps the area (checked) and reads what an earlier incarnation left (see adopted()).
  static std::variant<std::unique_ptr<RecoveryLog>, std::string> open(base::Fd fd,
                                                                      uint64_t arenaBytes);
  ~RecoveryLog() override;

  // ---- what an earlier incarnation left, checked (empty for a fresh area) ----
  struct AdoptedSurface {
    uint32_t id = 0;
    recovery::SurfaceRecord record;
    std::span<std::byte> memory;  // in the arena, ownStride * height bytes
  };
  struct Adopted {
    std::vector<AdoptedSurface> surfaces;  // offscreen (id >= 1)
    std::optional<recovery::PrimaryRecord> primary;
    std::optional<AdoptedSurface> primaryNative;  // a non-32 bpp primary's image
    recovery::BufferRecord buffers{};
    std::optional<recovery::CursorRecord> cursor;
    recovery::ProgressView progress;
    uint32_t dropped = 0;  // records refused by the checks
  };
  // Taken once, right after open(); later calls return an empty one.
  Adopted takeAdopted();

  // ---- keeping the area current ----
  // A batch begins (`seq`), or resumes at `index` after a restart; items are numbered from 0.
  void beginBatch(uint64_t seq, uint32_t index);
  // Item `index` begins: its undo record, if any, is about to be written.
  void beginItem(uint32_t index);
  // Item `index` is done: everything it changed is committed (the next item is `index + 1`).
  void endItem(uint32_t index);
  // Every item of the batch is done.
  void finishBatch(uint32_t count);
  // Outside batches (the copy into the other buffer): commits what changed.
  void commitIdle();

  void setSurface(uint32_t id, const recovery::SurfaceRecord& record);
  void clearSurface(uint32_t id);
  void setPrimary(const recovery::PrimaryRecord& record);
  void clearPrimary();
  void clearAll();  // every surface and the primary
  void setBuffers(uint8_t buffer, bool presented, std::span<const qxlcmd::Rect> forward);
  void setCursor(const recovery::CursorRecord& cursor);
  // Where the arena puts surface `id`'s pixels, once allocate() gave them (for its record).
  std::optional<uint64_t> arenaOffsetOf(std::span<const std::byte> memory) const;

  // The saved destination of the running item `index` of `seq`, if its draw was unrepeatable:
  // the surface id, and where its bytes go back. nullopt: nothing saved for it.
  struct Undo {
    uint32_t surface = 0;
    uint32_t top = 0, rows = 0, byteOffset = 0, rowBytes = 0;
    std::span<const std::byte> bytes;  // rows * rowBytes
  };
  std::optional<Undo> undoFor(uint64_t seq, uint32_t index) const;

  // SurfaceStore
  std::span<std::byte> allocate(uint32_t id, uint64_t bytes) override;
  void release(uint32_t id, std::span<std::byte> memory) override;
  // DrawJournal
  void beforeUnrepeatableDraw(uint32_t id, pixman_image_t* image,
                              const pixman_box32_t& box) override;

  uint64_t arenaFreeBytes() const { return allocator_.freeBytes(); }

 private:
  RecoveryLog(std::unique_ptr<recovery::Area> area, uint64_t arenaBytes);
  void readAdopted();
  // Writes the dirty records into their other copy and stores the commit word for
  // (`index`, `phase`).
  void commit(uint32_t index, recovery::Phase phase);

  std::unique_ptr<recovery::Area> area_;
  recovery::ArenaAllocator allocator_;
  recovery::Commit committed_;
  // This process's view of the records; written to the area at commit.
  recovery::SurfaceTable table_{};
  recovery::BufferRecord buffers_{};
  std::unique_ptr<recovery::CursorRecord> cursor_;
  bool tableDirty_ = false, buffersDirty_ = false, cursorDirty_ = false;
  uint64_t seq_ = 0;
  uint32_t runningIndex_ = 0;
  Adopted adopted_;
};

}  // namespace spicebox::renderer
