// Runs in: broker (privileged). Input: the guest's QXL IO port writes (forwarded by the VMM),
// its doorbells, and guest RAM (ring indices, the IO parameters in QXLRam: mem_slot,
// create_surface, update_area, update_surface), all hostile; the renderer's completions (assumed
// compromised, checked by the caller before they get here).
//
// The QXL device model, after spice/qxl_dev.h and QEMU's hw/display/qxl.c: it writes the ROM,
// initialises the RAM header and its rings, consumes the command and cursor rings, acts on the
// IO ports, keeps int_pending and tells the VMM when to re-evaluate the interrupt line, and
// pushes released commands onto the release ring in the chained form drivers expect (ring entry:
// the first id; each QXLReleaseInfo.next: the following one).
//
// What the device reads in guest memory: ring headers and items, the IO parameter fields of
// QXLRam (copied once, then validated), and each command's QXLReleaseInfo (id read, next
// written) when it is released. It never follows any other guest pointer: commands, images,
// monitors configs are the renderer's to parse (DESIGN.md invariants 1 and 3); they are passed on
// as addresses, in order, in WorkItems.
//
// Pure: no event loop, no IPC, no logging of guest-controlled volume without a rate limit; the
// caller (broker/qxl-link glue) turns DeviceOutput calls into messages and eventfd writes.
#pragma once

#include <spice/qxl_dev.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "broker/qxl/memslot.h"
#include "broker/qxl/ring.h"

namespace spicebox::qxl {

// ---------------------------------------------------------------- what goes to the renderer

// A command taken off the display or cursor ring. `addr` is unvalidated guest data.
struct CommandItem {
  CommandRingKind ring = CommandRingKind::Display;
  uint64_t addr = 0;  // QXLCommand::data: memslot-encoded address of the QXL*Cmd / QXLDrawable
  uint32_t type = 0;  // QXLCommand::type, unvalidated
  bool operator==(const CommandItem&) const = default;
};

// QXL_IO_CREATE_PRIMARY(_ASYNC): QXLRam::create_surface, copied once. Fields are checked by the
// device as far as the device can (see Device::ioWrite); `mem` is passed on unfollowed.
struct CreatePrimaryItem {
  uint32_t width = 0, height = 0;
  int32_t stride = 0;
  uint32_t format = 0;  // SPICE_SURFACE_FMT_*
  uint32_t position = 0, mouseMode = 0, flags = 0, type = 0;
  uint64_t mem = 0;  // memslot-encoded guest address of the pixels
  bool operator==(const CreatePrimaryItem&) const = default;
};
struct DestroyPrimaryItem {
  bool operator==(const DestroyPrimaryItem&) const = default;
};
struct DestroySurfaceItem {  // QXL_IO_DESTROY_SURFACE_WAIT(_ASYNC): the port's value
  uint32_t surfaceId = 0;
  bool operator==(const DestroySurfaceItem&) const = default;
};
struct DestroyAllSurfacesItem {
  bool operator==(const DestroyAllSurfacesItem&) const = default;
};
// QXL_IO_UPDATE_AREA(_ASYNC): render what is pending for `area` of `surfaceId` into the guest's
// surface memory (QXLRam::update_area / update_surface, copied once).
struct UpdateAreaItem {
  uint32_t surfaceId = 0;
  QXLRect area{};
  bool operator==(const UpdateAreaItem& o) const {
    return surfaceId == o.surfaceId && area.top == o.area.top && area.left == o.area.left &&
           area.bottom == o.area.bottom && area.right == o.area.right;
  }
};
// QXL_IO_MONITORS_CONFIG_ASYNC: QXLRam::monitors_config, an unfollowed guest address.
struct MonitorsConfigItem {
  uint64_t addr = 0;
  bool operator==(const MonitorsConfigItem&) const = default;
};
// The memslot table changed (add, delete, reset): every active slot from now on.
struct MemslotEntry {
  uint8_t id = 0;
  uint8_t generation = 0;
  BarId bar = BarId::Ram;
  uint64_t memStart = 0;  // guest physical, as the guest gave it
  uint64_t memEnd = 0;    // exclusive
  bool operator==(const MemslotEntry&) const = default;
};
struct MemslotsItem {
  std::vector<MemslotEntry> slots;
  bool operator==(const MemslotsItem&) const = default;
};
// QXL_IO_RESET: the renderer forgets every surface. Always followed by an empty MemslotsItem
// (the reset cleared the table). Commands sent before the reset are still drawn, but the device
// never releases them: the guest forgot them when it reset.
struct ResetItem {
  bool operator==(const ResetItem&) const = default;
};

using WorkItem = std::variant<CommandItem, CreatePrimaryItem, DestroyPrimaryItem,
                              DestroySurfaceItem, DestroyAllSurfacesItem, UpdateAreaItem,
                              MonitorsConfigItem, MemslotsItem, ResetItem>;

// Batches in flight to the renderer at most, and items per batch at most. Bounded so that a
// guest that fills its rings as fast as it can costs a bounded amount of broker memory, and the
// renderer's channel queue never fills.
inline constexpr size_t MAX_BATCHES_IN_FLIGHT = 4;
inline constexpr size_t MAX_ITEMS_PER_BATCH = 64;

// ---------------------------------------------------------------- the device's outputs

// Implementations must not call back into the Device from these calls (defer: a uv_async or the
// next loop turn); the device asserts it.
class DeviceOutput {
 public:
  virtual ~DeviceOutput() = default;
  // int_pending changed and (int_pending & int_mask) may be non-zero, or the guest asked for a
  // re-evaluation (QXL_IO_UPDATE_IRQ): signal the interrupt eventfd.
  virtual void raiseInterrupt() = 0;
  // An ioWrite the VMM waits on (async = true) is done. Called in the order of the writes.
  virtual void completeIo(uint8_t port) = 0;
  // Hand a batch to the renderer. Returns false when there is no renderer to take it now; the
  // device keeps the batch and sends it again from rendererAvailable().
  virtual bool sendBatch(uint64_t seq, std::span<const WorkItem> items) = 0;
};

// ---------------------------------------------------------------- the device

// Where the guest placed the BARs in its physical address space (from the VMM's link message):
// what QXL_IO_MEMSLOT_ADD ranges are checked against.
struct DeviceBars {
  std::span<std::byte> rom;
  std::span<std::byte> ram;
  std::span<std::byte> vram;
  uint64_t ramPhysStart = 0;
  uint64_t vramPhysStart = 0;
};

// Counters, for status, logs and tests. Guest mistakes are counted, never fatal to the broker.
struct DeviceStats {
  uint64_t commands = 0;        // display commands taken off the ring
  uint64_t cursorCommands = 0;  // cursor commands taken off the ring
  uint64_t released = 0;        // commands whose release id went onto the release ring
  uint64_t unreleasable = 0;    // release info outside every slot: could not be released
  uint64_t ioWrites = 0;        // by port below
  std::array<uint64_t, QXL_IO_RANGE_SIZE> ioByPort{};
  uint64_t guestErrors = 0;  // bad IO parameters, hostile ring indices (QXL_INTERRUPT_ERROR)
  uint64_t batchesSent = 0;
  uint64_t batchesDone = 0;
  uint64_t interruptsRaised = 0;
};

enum class DeviceSetupError : uint8_t {
  RomTooSmall,  // QXLRom plus the mode list does not fit the ROM BAR
  RamTooSmall,  // QXLRam does not fit the RAM BAR
  BadBars,      // BAR ranges overlap or wrap (MemslotTable refused them)
};
const char* describe(DeviceSetupError error);

class Device {
 public:
  // Power-on: writes the ROM (magic, modes, ram_header_offset, slot layout, n_surfaces...),
  // initialises QXLRam (magic, rings, int_mask 0) at the end of the RAM BAR as QEMU lays it out.
  static std::variant<std::unique_ptr<Device>, DeviceSetupError> create(DeviceBars bars,
                                                                        DeviceOutput& output);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // A forwarded IO write. `async`: the VMM waits for completeIo(port). Sync ports the VMM waits on
  // (UPDATE_AREA, NOTIFY_OOM, ...) complete only once everything they must flush is done; async
  // QXL_IO_*_ASYNC ports also raise QXL_INTERRUPT_IO_CMD when done, as a real device does.
  // Ports with renderer work are acted on in guest order, after the commands the guest had on its
  // rings when it wrote the port; up to 64 writes wait at once, beyond that a write is a guest
  // error and completes at once (the only completion out of write order). A flush (NOTIFY_OOM,
  // FLUSH_SURFACES_ASYNC) completes once every batch queued before it is done and its releases
  // were pushed as far as the release ring has room: waiting for the guest to drain that ring
  // while it waits for us could deadlock a one-vCPU guest.
  void ioWrite(uint8_t port, uint8_t value, bool async);
  // The command or cursor doorbell eventfd fired (the guest wrote QXL_IO_NOTIFY_CMD / _CURSOR).
  void doorbell(CommandRingKind ring);
  // The renderer finished batch `seq` (the oldest in flight; the caller checked that). Its
  // commands are released; waiting IO may complete; more commands may be taken.
  void batchDone(uint64_t seq);
  // A (new) renderer is ready: every batch in flight is sent again, oldest first, same seq
  // numbers; the first re-sent batch starts with a MemslotsItem carrying the table as it was when
  // that batch was built (the new renderer knows nothing, and the batches' own MemslotsItems take
  // it from there). With nothing in flight, a new batch holding only the current table is sent
  // (and awaits its batchDone like any other). Built batches hold at most MAX_ITEMS_PER_BATCH - 1
  // items, so a re-sent one stays within MAX_ITEMS_PER_BATCH.
  void rendererAvailable();
  // Periodic retry (the caller's timer): pushes releases that found the release ring full.
  // Returns true while something is still waiting for the guest to consume its release ring.
  bool retryPending();

  const DeviceStats& stats() const { return stats_; }
  uint64_t ramHeaderOffset() const;
  // Batches sent and not yet done.
  size_t batchesInFlight() const;

 private:
  struct Impl;
  explicit Device(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  DeviceStats stats_;
};

}  // namespace spicebox::qxl
