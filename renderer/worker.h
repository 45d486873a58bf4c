// Runs in: renderer (sandboxed). Input: batches from the broker (trusted, range-checked anyway:
// a broker bug must not become a memory error here) whose commands point into guest memory
// (hostile, changes while read). The only code of the renderer that follows guest addresses:
// every one goes through the memslot replica with a bounds check of the whole structure, and
// each structure is copied into local memory once before anything looks at it (no double fetch).
#pragma once

#include <spice/qxl_dev.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>

#include "base/fd.h"
#include "broker/qxl/memslot.h"
#include "ipc/render.capnp.h"

namespace spicebox::renderer {

// The guest's RAM and VRAM as the renderer sees them, and where the guest placed them.
struct GuestView {
  std::span<std::byte> ram;
  std::span<std::byte> vram;
  uint64_t ramPhysStart = 0;
  uint64_t vramPhysStart = 0;
};

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

// Why a command was not read; each has a hostile test named after it.
enum class CommandFault : uint8_t {
  NoGuestMemory,    // no guestMemory (or dropped): nothing can translate
  NoMemslots,       // no memslots item since guest memory was attached
  UnknownType,      // QXLCommand type that is no QXL_CMD_* we read
  WrongRing,        // a cursor command on the display ring, or the other way round
  AddressUnusable,  // memslot translation refused (see MemslotError)
};

struct WorkerStats {
  uint64_t batches = 0;
  uint64_t commands = 0;  // commands copied out and accepted
  uint64_t rejected = 0;  // commands refused (CommandFault)
  uint64_t draws = 0, updates = 0, cursors = 0, messages = 0, surfaceCmds = 0;
  uint64_t memslotTables = 0;
  uint64_t badMemslots = 0;   // broker-sent slots the replica refused (a broker bug)
  uint64_t droppedItems = 0;  // items beyond maxItemsPerBatch (a broker bug)
  uint64_t updateAreas = 0;
};

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

  const WorkerStats& stats() const { return stats_; }
  const std::optional<PrimaryState>& primary() const { return primary_; }
  bool hasMemslots() const { return slots_.has_value(); }

 private:
  std::optional<CommandFault> runCommand(ipc::render::Command::Reader command);
  void loadMemslots(capnp::List<ipc::render::Memslot>::Reader slots);
  // Translates [addr, addr + size) and copies it into `out` (size bytes). The single read of
  // that guest memory.
  std::optional<CommandFault> copyIn(uint64_t addr, void* out, size_t size) const;

  std::optional<GuestView> view_;
  std::optional<qxl::MemslotTable> slots_;
  std::optional<PrimaryState> primary_;
  WorkerStats stats_;
};

}  // namespace spicebox::renderer
