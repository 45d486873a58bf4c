// Runs in: broker (privileged). Input: IO port writes and doorbells from the guest (forwarded by
// the VMM), guest RAM (ring indices, QXLRam IO parameters, each command's QXLReleaseInfo), all
// hostile and changing under us; batch completions from the caller (already checked). See
// device.h for the contract.
//
// Guest memory is touched in four places only, each with a single read into a local that is then
// validated: the ring headers and items (ring.cpp), the IO parameter fields of QXLRam (copied at
// the time of the write, `copyIoParams`), each released command's QXLReleaseInfo (8 bytes read
// once, then `next` written), and int_pending / int_mask (atomic OR, atomic load).
//
// Ordering model. Everything the renderer must see goes through one FIFO, `batches_`, in guest
// order. An IO write that has an effect on the renderer becomes a `PendingIo` that remembers how
// far the guest had filled each command ring at the moment of the write (`target`); it is acted on
// only after those commands were taken off the ring, and commands the guest pushes later wait
// behind it. Completions (completeIo) leave `ioQueue_` strictly from the front, so they happen in
// the order of the writes.
#include "broker/qxl/device.h"
#include "renderer/qxl-formats.h"

#include <spdlog/spdlog.h>

#include <spice/enums.h>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <string_view>

#include "base/assert.h"

namespace spicebox::qxl {
namespace {

constexpr uint64_t PAGE_SIZE = 4096;
// QXLRom::n_surfaces: the number of surface ids a guest may use, as QEMU's default.
constexpr uint32_t MAX_SURFACES = 1024;
// A primary larger than this in either dimension is refused (8192 x 8192 x 4 = 256 MiB already).
constexpr uint32_t MAX_PRIMARY_DIMENSION = 8192;
// IO writes the device holds at once (waiting to be queued, or waiting to complete in order). A
// well-behaved guest has one async IO outstanding plus a few sync ones (one per vCPU); beyond
// this the guest is flooding us and the write is refused (guest error, completed at once).
constexpr size_t MAX_PENDING_IO = 64;
// Items a batch is built with: one short of MAX_ITEMS_PER_BATCH so that rendererAvailable() can
// put the MemslotsItem in front of the first re-sent batch without exceeding the limit the
// renderer enforces.
constexpr size_t ITEMS_PER_BUILT_BATCH = MAX_ITEMS_PER_BATCH - 1;
// Guest log lines (QXL_IO_LOG) are cut to this many characters.
constexpr size_t MAX_GUEST_LOG_CHARS = 128;

constexpr uint32_t COMMAND_RING_ITEMS =
    sizeof(QXLCommandRing::items) / sizeof(QXLCommandRing::items[0]);

// The modes offered in the ROM: 32 bpp only (spicebox has no VGA framebuffer to convert from).
struct ModeSize {
  uint32_t x, y;
};
constexpr ModeSize MODES[] = {{640, 480},   {800, 600},  {1024, 768}, {1280, 720},  {1280, 800},
                              {1280, 1024}, {1440, 900}, {1600, 900}, {1680, 1050}, {1920, 1080}};
constexpr uint32_t MODE_COUNT = sizeof(MODES) / sizeof(MODES[0]);

constexpr uint64_t alignUp(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

// The QXLModes list follows the QXLRom, 4-byte aligned (every field in it is a uint32_t).
constexpr uint64_t MODES_OFFSET = alignUp(sizeof(QXLRom), 4);
constexpr uint64_t ROM_BYTES_NEEDED =
    MODES_OFFSET + sizeof(QXLModes) + MODE_COUNT * sizeof(QXLMode);
constexpr uint64_t RAM_HEADER_BYTES = alignUp(sizeof(QXLRam), PAGE_SIZE);

// Logged at the 1st, 2nd, 4th, 8th... occurrence: a guest cannot flood the log.
bool shouldLog(uint64_t& counter) {
  const uint64_t n = ++counter;
  return (n & (n - 1)) == 0;
}

bool isAsyncPort(uint8_t port) {
  switch (port) {
    case QXL_IO_UPDATE_AREA_ASYNC:
    case QXL_IO_MEMSLOT_ADD_ASYNC:
    case QXL_IO_CREATE_PRIMARY_ASYNC:
    case QXL_IO_DESTROY_PRIMARY_ASYNC:
    case QXL_IO_DESTROY_SURFACE_ASYNC:
    case QXL_IO_DESTROY_ALL_SURFACES_ASYNC:
    case QXL_IO_FLUSH_SURFACES_ASYNC:
    case QXL_IO_MONITORS_CONFIG_ASYNC:
      return true;
    default:
      return false;
  }
}

// Ports whose effect the renderer must see in order with the commands: they wait in ioQueue_.
bool isOrderedPort(uint8_t port) {
  switch (port) {
    case QXL_IO_UPDATE_AREA:
    case QXL_IO_UPDATE_AREA_ASYNC:
    case QXL_IO_NOTIFY_OOM:
    case QXL_IO_RESET:
    case QXL_IO_MEMSLOT_ADD:
    case QXL_IO_MEMSLOT_ADD_ASYNC:
    case QXL_IO_MEMSLOT_DEL:
    case QXL_IO_CREATE_PRIMARY:
    case QXL_IO_CREATE_PRIMARY_ASYNC:
    case QXL_IO_DESTROY_PRIMARY:
    case QXL_IO_DESTROY_PRIMARY_ASYNC:
    case QXL_IO_DESTROY_SURFACE_WAIT:
    case QXL_IO_DESTROY_SURFACE_ASYNC:
    case QXL_IO_DESTROY_ALL_SURFACES:
    case QXL_IO_DESTROY_ALL_SURFACES_ASYNC:
    case QXL_IO_FLUSH_SURFACES_ASYNC:
    case QXL_IO_MONITORS_CONFIG_ASYNC:
      return true;
    default:
      return false;
  }
}

std::atomic_ref<uint32_t> u32At(std::span<std::byte> bar, uint64_t offset) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(bar.data() + offset));
}

}  // namespace

const char* describe(DeviceSetupError error) {
  switch (error) {
    case DeviceSetupError::RomTooSmall:
      return "the ROM BAR is too small for QXLRom and the mode list (QEMU's 8 KiB is enough)";
    case DeviceSetupError::RamTooSmall:
      return "the RAM BAR is too small for the QXLRam header, or larger than 4 GiB";
    case DeviceSetupError::BadBars:
      return "the RAM and VRAM BARs overlap or wrap around the guest physical address space";
  }
  return "unknown device setup error";
}

// ---------------------------------------------------------------- implementation

struct Device::Impl {
  // A command's QXLReleaseInfo, resolved when it was popped (the memslot table may change later).
  struct Release {
    std::optional<BarOffset> at;  // nullopt: did not translate; unreleasable
    uint64_t epoch = 0;           // device reset count at pop time; older ones are not released
  };
  struct Batch {
    uint64_t seq = 0;
    std::vector<WorkItem> items;
    std::vector<Release> releases;
    std::vector<MemslotEntry> memslotsAtOpen;  // what the renderer must know before this batch
    bool closed = false;
    bool sent = false;
  };
  // Releases that found the release ring full: the head id, `next` already written in guest RAM
  // (QEMU's way: the chain lives in guest memory, the device keeps its ends only).
  struct Chain {
    uint64_t headId = 0;
    uint64_t count = 0;
    BarOffset tail;  // the last release info: the next chain is linked from its `next`
  };
  // The QXLRam fields an IO reads, copied once at the time of the write.
  struct IoParams {
    QXLRect area{};
    uint32_t surface = 0;
    QXLMemSlot slot{};
    QXLSurfaceCreate create{};
    uint64_t monitorsConfig = 0;
  };
  enum class IoStage : uint8_t {
    Waiting,  // not acted on yet: commands owed before it, or no room in the batches
    Queued,   // its item (or flush) is in batch `waitSeq`; completes when that batch is done
    Done,     // nothing left to wait for; completes once every earlier write has completed
  };
  struct PendingIo {
    uint8_t port = 0;
    uint8_t value = 0;
    bool async = false;
    IoStage stage = IoStage::Waiting;
    uint64_t waitSeq = 0;
    // Consumer index each command ring must reach before this IO is acted on: what the guest
    // had pushed when it wrote the port (DESIGN: in guest order).
    std::array<uint32_t, 2> target{};
    IoParams params;
  };

  Impl(DeviceBars bars, DeviceOutput& output, uint64_t ramHeaderOffset, MemslotTable memslots,
       CommandRingConsumer display, CommandRingConsumer cursor, ReleaseRingProducer release)
      : bars(bars),
        output(output),
        ramHeaderOffset(ramHeaderOffset),
        memslots(std::move(memslots)),
        rings{display, cursor},
        release(release) {}

  // ---- guest memory helpers

  uint64_t ramField(size_t offsetInQxlRam) const { return ramHeaderOffset + offsetInQxlRam; }

  template <typename T>
  T copyFromRam(size_t offsetInQxlRam) const {
    T value;
    std::memcpy(&value, bars.ram.data() + ramField(offsetInQxlRam), sizeof(T));
    return value;
  }

  void raise() {
    ++stats->interruptsRaised;
    output.raiseInterrupt();
  }

  // ORs `bits` into int_pending; tells the VMM when an unmasked interrupt is pending.
  void orInterrupts(uint32_t bits) {
    if (bits == 0) {
      return;
    }
    const uint32_t pending =
        u32At(bars.ram, ramField(offsetof(QXLRam, int_pending))).fetch_or(bits) | bits;
    const uint32_t mask =
        u32At(bars.ram, ramField(offsetof(QXLRam, int_mask))).load(std::memory_order_acquire);
    if ((pending & mask) != 0) {
      raise();
    }
  }

  // `what` is one of this file's fixed messages (or memslot.cpp's describe()).
  void guestError(const char* what, uint64_t detail) {
    ++stats->guestErrors;
    // Rate-limited per kind of fault: a guest repeating one fault cannot flood the log, nor hide
    // another fault behind it (one shared counter logged only the 1st, 2nd, 4th... of all).
    uint64_t& ofThisKind = guestErrorLogs[what];
    if (shouldLog(ofThisKind)) {
      spdlog::warn(
          "QXL guest error: {} ({}); QXL_INTERRUPT_ERROR raised ({} of this kind, {} guest errors "
          "so far)",
          what, detail, ofThisKind, stats->guestErrors);
    }
    orInterrupts(QXL_INTERRUPT_ERROR);
  }

  void setSlotGeneration(uint8_t generation) {
    std::atomic_ref<uint8_t>(
        *reinterpret_cast<uint8_t*>(bars.rom.data() + offsetof(QXLRom, slot_generation)))
        .store(generation, std::memory_order_release);
  }

  // ---- memslot mirror (MemslotTable does not list its slots)

  std::vector<MemslotEntry> memslotEntries() const {
    std::vector<MemslotEntry> entries;
    for (const auto& slot : slotMirror) {
      if (slot) {
        entries.push_back(*slot);
      }
    }
    return entries;
  }

  // ---- batches

  bool hasOpenBatch() const { return !batches.empty() && !batches.back().closed; }

  // Items that can still be queued in this call. Releases waiting for room on the release ring do
  // not count: they are one chain in guest memory (releaseBatch), and holding commands back for
  // them would deadlock a guest blocked in an IO write that waits for those commands.
  size_t itemRoom() const {
    size_t room = 0;
    if (hasOpenBatch()) {
      room += ITEMS_PER_BUILT_BATCH - batches.back().items.size();
    }
    const size_t used = batches.size();
    if (used < MAX_BATCHES_IN_FLIGHT) {
      room += (MAX_BATCHES_IN_FLIGHT - used) * ITEMS_PER_BUILT_BATCH;
    }
    return room;
  }

  // Appends to the open batch (opening one if needed; the caller checked itemRoom) and closes it
  // when it is full. Returns the seq of the batch the item went into.
  uint64_t append(WorkItem item, std::optional<Release> release) {
    if (!hasOpenBatch()) {
      SB_ASSERT(batches.size() < MAX_BATCHES_IN_FLIGHT, "{} batches", batches.size());
      Batch batch;
      batch.seq = nextSeq++;
      batch.memslotsAtOpen = memslotEntries();
      batches.push_back(std::move(batch));
    }
    Batch& batch = batches.back();
    batch.items.push_back(std::move(item));
    if (release) {
      batch.releases.push_back(*release);
    }
    const uint64_t seq = batch.seq;
    if (batch.items.size() >= ITEMS_PER_BUILT_BATCH) {
      closeOpenBatch();
    }
    return seq;
  }

  void closeOpenBatch() {
    if (!hasOpenBatch()) {
      return;
    }
    batches.back().closed = true;
    sendUnsent();
  }

  // Sends closed batches not yet sent, oldest first, stopping at the first the output refuses
  // (no renderer: rendererAvailable() resends everything).
  void sendUnsent() {
    if (rendererLost) {
      return;
    }
    for (Batch& batch : batches) {
      if (!batch.closed || batch.sent) {
        continue;
      }
      if (!output.sendBatch(batch.seq, batch.items)) {
        rendererLost = true;
        spdlog::info("QXL device: no renderer for batch {}; kept until a renderer is ready",
                     batch.seq);
        return;
      }
      batch.sent = true;
      ++stats->batchesSent;
    }
  }

  // Seq of the newest batch, open or closed; 0 when nothing is in flight.
  uint64_t newestSeq() const { return batches.empty() ? 0 : batches.back().seq; }

  // ---- command rings

  // Takes at most `maxCount` commands off ring `index` into the batches. Returns whether the ring
  // has nothing more to give now (empty or halted).
  bool takeCommands(size_t index, size_t maxCount) {
    CommandRingConsumer& consumer = rings[index];
    if (consumer.halted()) {
      return true;
    }
    if (maxCount == 0) {
      return false;
    }
    PopBatch popped = consumer.popBatch(maxCount);
    const CommandRingKind kind = index == 0 ? CommandRingKind::Display : CommandRingKind::Cursor;
    for (const RingCommand& command : popped.commands) {
      auto at = memslots.translate(command.addr, sizeof(QXLReleaseInfo));
      Release release{std::nullopt, epoch};
      if (auto* offset = std::get_if<BarOffset>(&at)) {
        release.at = *offset;
      }
      ++(kind == CommandRingKind::Display ? stats->commands : stats->cursorCommands);
      append(CommandItem{kind, command.addr, command.type}, release);
    }
    orInterrupts(popped.interrupts);
    if (popped.fault && *popped.fault != RingFault::Halted) {
      guestError(kind == CommandRingKind::Display
                     ? "command ring producer index out of range; ring halted until QXL_IO_RESET"
                     : "cursor ring producer index out of range; ring halted until QXL_IO_RESET",
                 consumer.consumed());
    }
    return popped.empty || popped.fault.has_value();
  }

  // Where each ring's producer is now, as a consumer index to reach (at most a ring's worth
  // ahead: a producer further ahead is a fault that pop() reports).
  std::array<uint32_t, 2> snapshotTargets() const {
    std::array<uint32_t, 2> target{};
    const size_t prodAt[2] = {offsetof(QXLRam, cmd_ring) + offsetof(QXLCommandRing, prod),
                              offsetof(QXLRam, cursor_ring) + offsetof(QXLCursorRing, prod)};
    for (size_t i = 0; i < 2; ++i) {
      const uint32_t cons = rings[i].consumed();
      const uint32_t prod = u32At(bars.ram, ramField(prodAt[i])).load(std::memory_order_acquire);
      target[i] = cons + std::min(prod - cons, COMMAND_RING_ITEMS);
    }
    return target;
  }

  // Takes what `io` is owed. Returns true once nothing it is owed is left on the rings.
  bool takeOwedCommands(PendingIo& io) {
    bool satisfied = true;
    for (size_t i = 0; i < 2; ++i) {
      const uint32_t owed = io.target[i] - rings[i].consumed();
      if (owed == 0 || owed > COMMAND_RING_ITEMS) {
        continue;  // reached, or behind us (the ring was reset since)
      }
      if (takeCommands(i, std::min<size_t>(owed, itemRoom()))) {
        io.target[i] = rings[i].consumed();  // the ring gave all it had
      } else if (io.target[i] != rings[i].consumed()) {
        satisfied = false;
      }
    }
    return satisfied;
  }

  // Takes commands while there is room and nothing waits to be ordered before them.
  void takeFreeCommands() {
    bool done[2] = {false, false};
    // Alternate the rings so a busy display ring cannot starve the cursor ring.
    while (!(done[0] && done[1])) {
      for (size_t i = 0; i < 2; ++i) {
        const size_t room = itemRoom();
        if (room == 0) {
          return;
        }
        if (!done[i]) {
          done[i] = takeCommands(i, std::min<size_t>(room, COMMAND_RING_ITEMS));
        }
      }
    }
  }

  // ---- IO

  void copyIoParams(PendingIo& io) const {
    switch (io.port) {
      case QXL_IO_UPDATE_AREA:
      case QXL_IO_UPDATE_AREA_ASYNC:
        io.params.area = copyFromRam<QXLRect>(offsetof(QXLRam, update_area));
        io.params.surface = copyFromRam<uint32_t>(offsetof(QXLRam, update_surface));
        break;
      case QXL_IO_MEMSLOT_ADD:
      case QXL_IO_MEMSLOT_ADD_ASYNC:
        io.params.slot = copyFromRam<QXLMemSlot>(offsetof(QXLRam, mem_slot));
        break;
      case QXL_IO_CREATE_PRIMARY:
      case QXL_IO_CREATE_PRIMARY_ASYNC:
        io.params.create = copyFromRam<QXLSurfaceCreate>(offsetof(QXLRam, create_surface));
        break;
      case QXL_IO_MONITORS_CONFIG_ASYNC:
        io.params.monitorsConfig = copyFromRam<uint64_t>(offsetof(QXLRam, monitors_config));
        break;
      default:
        break;
    }
  }

  // The items `io` puts in the batches, or nullopt with a guest error counted. Validates the
  // copied parameters against the device state as it is now, in guest order.
  std::optional<std::vector<WorkItem>> itemsFor(const PendingIo& io) {
    const IoParams& p = io.params;
    switch (io.port) {
      case QXL_IO_UPDATE_AREA:
      case QXL_IO_UPDATE_AREA_ASYNC:
        if (p.surface >= MAX_SURFACES) {
          guestError("QXL_IO_UPDATE_AREA: surface id out of range", p.surface);
          return std::nullopt;
        }
        // Ordered and on the surface: negative coordinates are outside every surface.
        if (p.area.top < 0 || p.area.left < 0 || p.area.top > p.area.bottom ||
            p.area.left > p.area.right) {
          guestError("QXL_IO_UPDATE_AREA: rectangle not ordered or negative", p.surface);
          return std::nullopt;
        }
        return std::vector<WorkItem>{UpdateAreaItem{p.surface, p.area}};
      case QXL_IO_NOTIFY_OOM:
      case QXL_IO_FLUSH_SURFACES_ASYNC:
        return std::vector<WorkItem>{};
      case QXL_IO_RESET:
        return std::vector<WorkItem>{ResetItem{}, MemslotsItem{}};
      case QXL_IO_MEMSLOT_ADD:
      case QXL_IO_MEMSLOT_ADD_ASYNC: {
        auto added = memslots.add(io.value, p.slot);
        if (auto* error = std::get_if<MemslotError>(&added)) {
          guestError(describe(*error), io.value);
          return std::nullopt;
        }
        const uint8_t generation = std::get<uint8_t>(added);
        // The table accepted the range, so it lies wholly in one BAR, and the BARs do not
        // overlap (create checked): inside RAM, or else inside VRAM.
        const bool inRam = p.slot.mem_start >= barRanges[0].physStart &&
                           p.slot.mem_end <= barRanges[0].physStart + barRanges[0].size;
        slotMirror[io.value] = MemslotEntry{io.value, generation, inRam ? BarId::Ram : BarId::Vram,
                                            p.slot.mem_start, p.slot.mem_end};
        // Published before the IO completes: the guest encodes it in every address it makes.
        setSlotGeneration(generation);
        return std::vector<WorkItem>{MemslotsItem{memslotEntries()}};
      }
      case QXL_IO_MEMSLOT_DEL: {
        auto removed = memslots.remove(io.value);
        if (auto* error = std::get_if<MemslotError>(&removed)) {
          guestError(describe(*error), io.value);
          return std::nullopt;
        }
        slotMirror[io.value].reset();
        return std::vector<WorkItem>{MemslotsItem{memslotEntries()}};
      }
      case QXL_IO_CREATE_PRIMARY:
      case QXL_IO_CREATE_PRIMARY_ASYNC:
        return createPrimaryItems(p.create);
      case QXL_IO_DESTROY_PRIMARY:
      case QXL_IO_DESTROY_PRIMARY_ASYNC:
        if (!primaryPresent) {
          guestError("QXL_IO_DESTROY_PRIMARY without a primary surface", 0);
          return std::nullopt;
        }
        primaryPresent = false;
        return std::vector<WorkItem>{DestroyPrimaryItem{}};
      case QXL_IO_DESTROY_SURFACE_WAIT:
      case QXL_IO_DESTROY_SURFACE_ASYNC:
        // The port value is 8 bits: every value names a surface id in range.
        static_assert(std::numeric_limits<decltype(io.value)>::max() < MAX_SURFACES,
                      "QXL_IO_DESTROY_SURFACE: check the port value against MAX_SURFACES");
        return std::vector<WorkItem>{DestroySurfaceItem{io.value}};
      case QXL_IO_DESTROY_ALL_SURFACES:
      case QXL_IO_DESTROY_ALL_SURFACES_ASYNC:
        primaryPresent = false;
        return std::vector<WorkItem>{DestroyAllSurfacesItem{}};
      case QXL_IO_MONITORS_CONFIG_ASYNC:
        return std::vector<WorkItem>{MonitorsConfigItem{p.monitorsConfig}};
      default:
        SB_ASSERT(false, "port {} is not an ordered port", io.port);
        return std::nullopt;
    }
  }

  std::optional<std::vector<WorkItem>> createPrimaryItems(const QXLSurfaceCreate& c) {
    if (c.width == 0 || c.height == 0 || c.width > MAX_PRIMARY_DIMENSION ||
        c.height > MAX_PRIMARY_DIMENSION) {
      guestError("QXL_IO_CREATE_PRIMARY: width or height 0 or above 8192",
                 uint64_t{c.width} << 32 | c.height);
      return std::nullopt;
    }
    const uint32_t bpp = qxlcmd::surfaceFormatBits(c.format);
    if (bpp == 0) {
      guestError("QXL_IO_CREATE_PRIMARY: unknown surface format", c.format);
      return std::nullopt;
    }
    // 64-bit: |INT32_MIN| and width * 32 both fit.
    const int64_t stride = c.stride;
    const uint64_t absStride = static_cast<uint64_t>(stride < 0 ? -stride : stride);
    const uint64_t rowBytes = (uint64_t{c.width} * bpp + 7) / 8;
    if (absStride < rowBytes) {
      guestError("QXL_IO_CREATE_PRIMARY: stride smaller than a row", absStride);
      return std::nullopt;
    }
    if (primaryPresent) {
      guestError("QXL_IO_CREATE_PRIMARY while a primary surface exists", 0);
      return std::nullopt;
    }
    primaryPresent = true;
    return std::vector<WorkItem>{CreatePrimaryItem{
        c.width, c.height, c.stride, c.format, c.position, c.mouse_mode, c.flags, c.type, c.mem}};
  }

  // QXL_IO_RESET's effect on the device (the items follow in order).
  void resetDevice() {
    for (CommandRingConsumer& consumer : rings) {
      consumer.reset();
    }
    release.reset();
    memslots.reset();
    for (auto& slot : slotMirror) {
      slot.reset();
    }
    primaryPresent = false;
    // The guest forgot everything it had submitted: in-flight commands are still drawn (the
    // renderer finishes its batches) but never released, and releases waiting for room are
    // dropped.
    chains.clear();
    ++epoch;
    u32At(bars.ram, ramField(offsetof(QXLRam, int_pending))).store(0, std::memory_order_release);
  }

  // Acts on the first waiting IO. Returns false if it must wait (commands owed, or no room).
  bool actOn(PendingIo& io) {
    if (io.port != QXL_IO_RESET && !takeOwedCommands(io)) {
      return false;
    }
    // RESET and the memslot ports change device state when acted on; the room is checked first
    // so that no state changes for an IO that then cannot be queued.
    const size_t needed = io.port == QXL_IO_RESET ? 2 : 1;
    if (itemRoom() < needed) {
      return false;
    }
    if (io.port == QXL_IO_RESET) {
      resetDevice();
    }
    auto items = itemsFor(io);
    if (!items) {
      io.stage = IoStage::Done;
      return true;
    }
    if (items->empty()) {  // a flush: done when everything already queued is done
      io.waitSeq = newestSeq();
    } else {
      for (WorkItem& item : *items) {
        io.waitSeq = append(std::move(item), std::nullopt);
      }
    }
    io.stage = io.waitSeq <= doneThrough ? IoStage::Done : IoStage::Queued;
    return true;
  }

  // Queues what can be queued now: waiting IO in order, then (if none waits) free commands; sends
  // what was built. Bounded: every pop and every item needs room, and the room is bounded.
  void pump() {
    bool ioWaiting = false;
    for (PendingIo& io : ioQueue) {
      if (io.stage != IoStage::Waiting) {
        continue;
      }
      if (!actOn(io)) {
        ioWaiting = true;
        break;
      }
    }
    if (!ioWaiting) {
      takeFreeCommands();
    }
    closeOpenBatch();
  }

  void complete(const PendingIo& io) {
    if (io.async) {
      output.completeIo(io.port);
    }
    if (isAsyncPort(io.port)) {
      orInterrupts(QXL_INTERRUPT_IO_CMD);
    }
  }

  // Completes from the front of ioQueue, in the order of the writes.
  void completeReady() {
    while (!ioQueue.empty()) {
      PendingIo& front = ioQueue.front();
      if (front.stage == IoStage::Queued && front.waitSeq <= doneThrough) {
        front.stage = IoStage::Done;
      }
      if (front.stage != IoStage::Done) {
        return;
      }
      const PendingIo io = front;
      ioQueue.pop_front();
      complete(io);
    }
  }

  // ---- releases

  // Pushes chains while the ring has room. A hostile release ring drops them: the guest loses
  // those resources, we lose nothing.
  void pushChains() {
    while (!chains.empty()) {
      auto pushed = release.push(chains.front().headId);
      if (auto* fault = std::get_if<RingFault>(&pushed)) {
        if (*fault != RingFault::Halted) {
          guestError("release ring consumer index out of range; ring halted until QXL_IO_RESET",
                     release.produced());
        }
        chains.clear();
        return;
      }
      const PushResult result = std::get<PushResult>(pushed);
      if (result.status == PushStatus::Full) {
        return;
      }
      stats->released += chains.front().count;
      chains.pop_front();
      orInterrupts(result.interrupts);
    }
  }

  std::span<std::byte> barOf(BarId id) const { return id == BarId::Ram ? bars.ram : bars.vram; }

  // Releases a finished batch's commands as one chain (device.h).
  void releaseBatch(const Batch& batch) {
    std::vector<BarOffset> infos;
    infos.reserve(batch.releases.size());
    uint64_t unreleasable = 0;
    for (const Release& r : batch.releases) {
      if (r.epoch != epoch) {
        continue;
      }
      if (!r.at) {
        ++unreleasable;
        continue;
      }
      infos.push_back(*r.at);
    }
    if (unreleasable != 0) {
      stats->unreleasable += unreleasable;
      guestError("command release info outside every memslot: cannot be released", unreleasable);
    }
    if (infos.empty()) {
      return;
    }
    // Read every id before writing any `next`: id and next share the 8 bytes (a union).
    std::vector<uint64_t> ids(infos.size());
    for (size_t i = 0; i < infos.size(); ++i) {
      std::memcpy(&ids[i], barOf(infos[i].bar).data() + infos[i].offset, sizeof(uint64_t));
    }
    for (size_t i = 0; i < infos.size(); ++i) {
      const uint64_t next = i + 1 < ids.size() ? ids[i + 1] : 0;
      std::memcpy(barOf(infos[i].bar).data() + infos[i].offset, &next, sizeof(next));
    }
    const Chain chain{ids[0], ids.size(), infos.back()};
    if (chains.empty()) {
      chains.push_back(chain);
      return;
    }
    // The ring was full: grow the one unpublished chain in guest memory instead of keeping
    // another, so that releases waiting for the guest cost the broker nothing however long the
    // guest takes (it may be blocked in an IO write that waits for these very commands).
    Chain& last = chains.back();
    std::memcpy(barOf(last.tail.bar).data() + last.tail.offset, &chain.headId, sizeof(uint64_t));
    last.count += chain.count;
    last.tail = chain.tail;
  }

  // ---- state

  DeviceBars bars;
  DeviceOutput& output;
  DeviceStats* stats = nullptr;  // the Device's, set by its constructor
  uint64_t ramHeaderOffset;
  MemslotTable memslots;
  std::array<BarRange, BAR_COUNT> barRanges{};
  std::array<std::optional<MemslotEntry>, MemslotTable::MAX_SLOTS> slotMirror{};
  std::array<CommandRingConsumer, 2> rings;  // [0] display, [1] cursor
  ReleaseRingProducer release;

  std::deque<Batch> batches;      // oldest first; at most one open, always the last
  std::deque<Chain> chains;       // waiting for room on the release ring: at most one
  std::deque<PendingIo> ioQueue;  // every write not completed yet, in write order
  uint64_t nextSeq = 1;
  uint64_t doneThrough = 0;  // seq of the newest batch done
  uint64_t epoch = 0;        // QXL_IO_RESET count
  bool primaryPresent = false;
  bool rendererLost = false;  // a sendBatch failed: nothing is sent until rendererAvailable()
  bool inCall = false;        // DeviceOutput must not call back into the device

  // Guest errors by message. Bounded by the messages in the code (a few dozen), not by the guest.
  std::map<std::string_view, uint64_t> guestErrorLogs;
  uint64_t guestLogLines = 0;
  uint64_t ignoredPortLogs = 0;
  uint64_t badBatchDoneLogs = 0;
};

namespace {
// Guards against a DeviceOutput that calls back into the device from inside a call: completions
// must be deferred by the caller (STYLE.md: no callback runs inside the call that started it).
class CallGuard {
 public:
  explicit CallGuard(bool& flag) : flag_(flag) {
    SB_ASSERT(!flag_, "Device re-entered from a DeviceOutput callback");
    flag_ = true;
  }
  ~CallGuard() { flag_ = false; }
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;

 private:
  bool& flag_;
};
}  // namespace

// ---------------------------------------------------------------- Device

std::variant<std::unique_ptr<Device>, DeviceSetupError> Device::create(DeviceBars bars,
                                                                       DeviceOutput& output) {
  if (bars.rom.size() < ROM_BYTES_NEEDED) {
    return DeviceSetupError::RomTooSmall;
  }
  // QXLRom::ram_header_offset is 32 bits.
  if (bars.ram.size() < RAM_HEADER_BYTES || bars.ram.size() > UINT32_MAX) {
    return DeviceSetupError::RamTooSmall;
  }
  // The BARs are our own mmaps (page-aligned); the header's atomics (std::atomic_ref<uint32_t>)
  // need 4-byte alignment, and the header offset is a page multiple. A caller's bug otherwise.
  SB_ASSERT(reinterpret_cast<uintptr_t>(bars.ram.data()) % alignof(uint64_t) == 0,
            "RAM BAR mapping at {} is not 8-byte aligned", static_cast<void*>(bars.ram.data()));
  // QEMU's layout: the header in the last pages of the RAM BAR. Rounded down to a page so that
  // a BAR size that is not a page multiple still gives an aligned header.
  const uint64_t ramHeaderOffset = (bars.ram.size() - RAM_HEADER_BYTES) / PAGE_SIZE * PAGE_SIZE;

  // Memslots may cover each whole BAR, QXLRam header included, as QEMU allows: a guest that
  // points a command into its own header only corrupts its own rings, which ring.cpp survives.
  const std::array<BarRange, BAR_COUNT> barRanges = {
      BarRange{bars.ramPhysStart, bars.ram.size()}, BarRange{bars.vramPhysStart, bars.vram.size()}};
  auto table = MemslotTable::create(MemslotLayout{}, barRanges);
  if (!std::holds_alternative<MemslotTable>(table)) {
    return DeviceSetupError::BadBars;
  }
  if (barRanges[1].size != 0 &&
      barRanges[0].physStart < barRanges[1].physStart + barRanges[1].size &&
      barRanges[1].physStart < barRanges[0].physStart + barRanges[0].size) {
    return DeviceSetupError::BadBars;
  }

  // ---- ROM
  const MemslotLayout layout;
  QXLRom rom{};
  rom.magic = QXL_ROM_MAGIC;
  rom.id = 0;
  rom.modes_offset = static_cast<uint32_t>(MODES_OFFSET);
  rom.ram_header_offset = static_cast<uint32_t>(ramHeaderOffset);
  rom.num_pages = static_cast<uint32_t>(ramHeaderOffset / PAGE_SIZE);
  rom.pages_offset = 0;
  rom.draw_area_offset = 0;
  rom.surface0_area_size = 0;  // no VGA framebuffer area in spicebox
  rom.n_surfaces = MAX_SURFACES;
  rom.slots_start = layout.slotsStart;
  rom.slots_end = layout.slotsEnd;
  rom.slot_gen_bits = layout.slotGenBits;
  rom.slot_id_bits = layout.slotIdBits;
  rom.slot_generation = 0;
  std::memset(bars.rom.data(), 0, ROM_BYTES_NEEDED);
  std::memcpy(bars.rom.data(), &rom, sizeof(rom));
  const uint32_t modeCount = MODE_COUNT;
  std::memcpy(bars.rom.data() + MODES_OFFSET + offsetof(QXLModes, n_modes), &modeCount,
              sizeof(modeCount));
  for (uint32_t i = 0; i < MODE_COUNT; ++i) {
    QXLMode mode{};
    mode.id = i;
    mode.x_res = MODES[i].x;
    mode.y_res = MODES[i].y;
    mode.bits = 32;
    mode.stride = MODES[i].x * 4;
    std::memcpy(bars.rom.data() + MODES_OFFSET + sizeof(QXLModes) + i * sizeof(QXLMode), &mode,
                sizeof(mode));
  }

  // ---- RAM header (power-on state)
  std::memset(bars.ram.data() + ramHeaderOffset, 0, sizeof(QXLRam));
  const uint32_t ramMagic = QXL_RAM_MAGIC;
  std::memcpy(bars.ram.data() + ramHeaderOffset + offsetof(QXLRam, magic), &ramMagic,
              sizeof(ramMagic));
  auto display = CommandRingConsumer::attach(bars.ram, ramHeaderOffset + COMMAND_RING_OFFSET,
                                             CommandRingKind::Display);
  auto cursor = CommandRingConsumer::attach(bars.ram, ramHeaderOffset + CURSOR_RING_OFFSET,
                                            CommandRingKind::Cursor);
  auto release = ReleaseRingProducer::attach(bars.ram, ramHeaderOffset + RELEASE_RING_OFFSET);
  // The header fits (checked above) and is page-aligned: attaching cannot fail.
  SB_ASSERT(std::holds_alternative<CommandRingConsumer>(display) &&
            std::holds_alternative<CommandRingConsumer>(cursor) &&
            std::holds_alternative<ReleaseRingProducer>(release));

  auto impl = std::make_unique<Impl>(
      bars, output, ramHeaderOffset, std::get<MemslotTable>(std::move(table)),
      std::get<CommandRingConsumer>(display), std::get<CommandRingConsumer>(cursor),
      std::get<ReleaseRingProducer>(release));
  impl->barRanges = barRanges;
  spdlog::debug("QXL device: ROM {} bytes, RAM {} bytes (header at {:#x}), VRAM {} bytes",
                bars.rom.size(), bars.ram.size(), ramHeaderOffset, bars.vram.size());
  return std::unique_ptr<Device>(new Device(std::move(impl)));
}

Device::Device(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  impl_->stats = &stats_;
}

Device::~Device() = default;

uint64_t Device::ramHeaderOffset() const {
  return impl_->ramHeaderOffset;
}

size_t Device::batchesInFlight() const {
  return impl_->batches.size();
}

void Device::ioWrite(uint8_t port, uint8_t value, bool async) {
  Impl& d = *impl_;
  CallGuard guard(d.inCall);
  ++stats_.ioWrites;
  if (port < QXL_IO_RANGE_SIZE) {
    ++stats_.ioByPort[port];
  }
  d.pushChains();

  if (d.ioQueue.size() >= MAX_PENDING_IO) {
    // Only a guest flooding the port gets here. Completed at once, out of order, so that the VMM
    // never waits for a completion that cannot come.
    d.guestError("too many IO writes outstanding; write refused", port);
    Impl::PendingIo refused;
    refused.port = port;
    refused.async = async;
    d.complete(refused);
    return;
  }

  Impl::PendingIo io;
  io.port = port;
  io.value = value;
  io.async = async;
  if (isOrderedPort(port)) {
    io.target = d.snapshotTargets();
    d.copyIoParams(io);
    d.ioQueue.push_back(io);
    d.pump();
    d.completeReady();
    return;
  }

  // Ports with no renderer work: the effect is immediate; the completion keeps its place in line.
  io.stage = Impl::IoStage::Done;
  switch (port) {
    case QXL_IO_NOTIFY_CMD:
    case QXL_IO_NOTIFY_CURSOR:
      d.pump();
      break;
    case QXL_IO_UPDATE_IRQ:
      d.raise();
      break;
    case QXL_IO_FLUSH_RELEASE:
      // Releases are never held back for bunching; this pushes what found the ring full.
      break;
    case QXL_IO_LOG:
      if (shouldLog(d.guestLogLines)) {
        std::string line;
        for (size_t i = 0; i < MAX_GUEST_LOG_CHARS; ++i) {
          const auto c =
              static_cast<unsigned char>(d.bars.ram[d.ramField(offsetof(QXLRam, log_buf)) + i]);
          if (c == 0) {
            break;
          }
          line.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
        }
        spdlog::info("QXL guest log ({} lines so far): {}", d.guestLogLines, line);
      }
      break;
    case QXL_IO_SET_MODE:        // qxl-1 only: spicebox has no VGA modes to switch
    case QXL_IO_ATTACH_PRIMARY:  // QEMU's migration/VGA hand-over: nothing to do here
    case QXL_IO_DETACH_PRIMARY:
      break;
    default:
      if (shouldLog(d.ignoredPortLogs)) {
        spdlog::warn(
            "QXL guest wrote IO port {} which the device does not know; ignored ({} so "
            "far)",
            port, d.ignoredPortLogs);
      }
      break;
  }
  d.ioQueue.push_back(io);
  d.completeReady();
}

void Device::doorbell(CommandRingKind /*ring*/) {
  Impl& d = *impl_;
  CallGuard guard(d.inCall);
  d.pushChains();
  // Both rings are looked at: a doorbell is only a hint that the guest pushed something.
  d.pump();
}

void Device::batchDone(uint64_t seq) {
  Impl& d = *impl_;
  CallGuard guard(d.inCall);
  if (d.batches.empty() || !d.batches.front().closed || d.batches.front().seq != seq) {
    // The caller checks this; a mismatch is its bug, but never worth the guest's display.
    if (shouldLog(d.badBatchDoneLogs)) {
      spdlog::error("QXL device: batchDone({}) but the oldest batch in flight is {}; ignored", seq,
                    d.batches.empty() ? 0 : d.batches.front().seq);
    }
    return;
  }
  const Impl::Batch batch = std::move(d.batches.front());
  d.batches.pop_front();
  d.doneThrough = seq;
  ++stats_.batchesDone;
  d.releaseBatch(batch);
  d.pushChains();
  // Releases are pushed before a waiting NOTIFY_OOM completes: the guest then finds its memory.
  d.pump();
  d.completeReady();
}

void Device::rendererAvailable() {
  Impl& d = *impl_;
  CallGuard guard(d.inCall);
  d.rendererLost = false;
  if (d.batches.empty()) {
    // Nothing to resend: the new renderer still needs the table, in a batch of its own.
    d.append(MemslotsItem{d.memslotEntries()}, std::nullopt);
    d.closeOpenBatch();
    return;
  }
  bool first = true;
  for (Impl::Batch& batch : d.batches) {
    SB_ASSERT(batch.closed);
    batch.sent = false;
  }
  for (Impl::Batch& batch : d.batches) {
    bool ok;
    if (first) {
      // The table as it was when this batch was built: its commands were translated with it.
      std::vector<WorkItem> items;
      items.reserve(batch.items.size() + 1);
      items.emplace_back(MemslotsItem{batch.memslotsAtOpen});
      items.insert(items.end(), batch.items.begin(), batch.items.end());
      ok = d.output.sendBatch(batch.seq, items);
      first = false;
    } else {
      ok = d.output.sendBatch(batch.seq, batch.items);
    }
    if (!ok) {
      d.rendererLost = true;
      return;
    }
    batch.sent = true;
    ++stats_.batchesSent;
  }
}

bool Device::retryPending() {
  Impl& d = *impl_;
  CallGuard guard(d.inCall);
  d.pushChains();
  d.pump();
  d.completeReady();
  return !d.chains.empty();
}

}  // namespace spicebox::qxl
