// Runs in: renderer (sandboxed). Input: batches from the broker (trusted, range-checked anyway:
// a broker bug must not become a memory error here) whose commands point into guest memory
// (hostile, changes while read). The only code of the renderer that follows guest addresses:
// every one goes through the memslot replica (SlotMemory) into the decoder (qxl-decode.h), which
// copies each structure once and validates the copy; only decoded trees reach the hook.
#pragma once

#include <spice/qxl_dev.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <variant>

#include "base/fd.h"
#include "broker/qxl/memslot.h"
#include "ipc/render.capnp.h"
#include "renderer/qxl-decode.h"
#include "renderer/raster.h"

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

struct WorkerStats {
  uint64_t batches = 0;
  uint64_t commands = 0;  // commands copied out and accepted
  uint64_t rejected = 0;  // commands refused (DecodeError), never drawn
  uint64_t draws = 0, updates = 0, cursors = 0, messages = 0, surfaceCmds = 0;
  uint64_t memslotTables = 0;
  uint64_t badMemslots = 0;   // broker-sent slots the replica refused (a broker bug)
  uint64_t droppedItems = 0;  // items beyond maxItemsPerBatch (a broker bug)
  uint64_t updateAreas = 0;
  uint64_t drawn = 0;        // decoded commands the rasteriser carried out
  uint64_t drawErrors = 0;   // decoded commands the rasteriser refused (RasterError)
  uint64_t damageRects = 0;  // primary rectangles reported changed, after coalescing per batch
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

// A primary surface as announced by the device (the pixels stay in guest memory).
struct PrimaryState {
  uint32_t width = 0;
  uint32_t height = 0;
  int32_t stride = 0;
  uint32_t format = 0;
};

class Worker {
 public:
  // Guest memory attached (guestMemory). Forgets the memslot table: the broker resends it.
  void attach(const GuestView& view);
  // Guest memory dropped (dropGuestMemory, or replaced). Forgets slots and surfaces.
  void detach();

  // Runs every item of one batch, in order. Returns how many commands were rejected.
  uint32_t runBatch(ipc::render::Batch::Reader batch);

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
  // Draws a decoded command (draws, surface create/destroy, cursor shapes).
  void render(const qxlcmd::Command& command);
  void createPrimary(const PrimaryState& primary);
  // Counts a rasteriser refusal and logs it at the 1st, 2nd, 4th ... time.
  void rasterFailed(const char* what, RasterError error);

  std::optional<GuestView> view_;
  std::optional<qxl::MemslotTable> slots_;
  std::optional<PrimaryState> primary_;
  WorkerStats stats_;
  CommandHook hook_;
  Rasteriser raster_;
  // The primary's pixels, 32 bpp.
  // TODO(issue-4): a display segment the broker owns and hands over, instead of our own memory.
  std::vector<uint32_t> primaryPixels_;
};

}  // namespace spicebox::renderer
