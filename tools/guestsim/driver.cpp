// Runs in: spicebox-guestsim (unsandboxed). Input: guest actions (trusted) and the device's
// writes into guest memory (ROM, ring indices, int_pending, release chains), range-checked here.
#include "tools/guestsim/driver.h"

#include <spice/qxl_dev.h>

#include <atomic>
#include <cstring>
#include <limits>

#include "base/assert.h"
#include "base/latency-stamp.h"
#include "base/log.h"
#include "tools/guestsim/stamp.h"

namespace spicebox::guestsim {

namespace {

// One SPICE ring (spice/ipc_ring.h) inside the RAM BAR. Every ring shares the header layout of
// QXLCommandRing; the item size is the element's power-of-two slot. Indices are free-running
// uint32; the guest and the device write them concurrently, hence atomic_ref and full fences
// where SPICE_RING_* has spice_mb().
class RingView {
 public:
  RingView(std::byte* header, uint32_t capacity, size_t itemSize)
      : header_(header), capacity_(capacity), itemSize_(itemSize) {}

  uint32_t prod() const { return field(offsetof(QXLCommandRing, prod)).load(); }
  uint32_t cons() const { return field(offsetof(QXLCommandRing, cons)).load(); }
  uint32_t notifyOnProd() const { return field(offsetof(QXLCommandRing, notify_on_prod)).load(); }
  void setProd(uint32_t v) { field(offsetof(QXLCommandRing, prod)).store(v); }
  void setCons(uint32_t v) { field(offsetof(QXLCommandRing, cons)).store(v); }
  void setNotifyOnProd(uint32_t v) { field(offsetof(QXLCommandRing, notify_on_prod)).store(v); }
  void setNotifyOnCons(uint32_t v) { field(offsetof(QXLCommandRing, notify_on_cons)).store(v); }
  uint32_t capacity() const { return capacity_; }
  // Entries between cons and prod; the device may write either, so checked by the callers.
  uint32_t used() const { return prod() - cons(); }
  std::byte* item(uint32_t index) const {
    return header_ + offsetof(QXLCommandRing, items) + (index & (capacity_ - 1)) * itemSize_;
  }

 private:
  std::atomic_ref<uint32_t> field(size_t offset) const {
    return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(header_ + offset));
  }

  std::byte* header_;
  uint32_t capacity_;
  size_t itemSize_;
};

static_assert(offsetof(QXLCommandRing, items) == offsetof(QXLReleaseRing, items));
static_assert(offsetof(QXLCommandRing, prod) == offsetof(QXLReleaseRing, prod));
static_assert(offsetof(QXLCommandRing, cons) == offsetof(QXLReleaseRing, cons));

const char* commandTypeName(CommandType type) {
  switch (type) {
    case CommandType::Draw:
      return "DRAW";
    case CommandType::Update:
      return "UPDATE";
    case CommandType::Cursor:
      return "CURSOR";
    case CommandType::Message:
      return "MESSAGE";
    case CommandType::Surface:
      return "SURFACE";
  }
  return "UNKNOWN";
}

template <typename T>
void storeField(std::byte* ramHeader, size_t offset, const T& value) {
  std::memcpy(ramHeader + offset, &value, sizeof value);
}

// True at the 1st, 2nd, 4th, 8th ... occurrence: repeated faults are logged, not flooded.
bool powerOfTwo(uint64_t n) {
  return n != 0 && (n & (n - 1)) == 0;
}

constexpr uint32_t INTERRUPT_MASK =
    QXL_INTERRUPT_DISPLAY | QXL_INTERRUPT_CURSOR | QXL_INTERRUPT_IO_CMD | QXL_INTERRUPT_ERROR;

}  // namespace

Driver::Driver(Vmm& vmm) : vmm_(vmm) {
  vmm_.setInterruptHandler([this] { onInterrupt(); });
}

Driver::~Driver() {
  vmm_.setInterruptHandler({});
}

std::byte* Driver::ramHeader() const {
  return vmm_.ram().data() + ramHeaderOffset_;
}

void Driver::init() {
  auto rom = vmm_.rom();
  auto ram = vmm_.ram();
  SB_ASSERT(rom.size() >= sizeof(QXLRom), "ROM BAR of {} bytes", rom.size());
  // The broker sends no answer to `link`; one async IO write is the round trip after which its
  // device has written the ROM and the RAM header (messages are handled in order).
  vmm_.ioWrite(QXL_IO_UPDATE_IRQ, 0, true);

  QXLRom header;
  std::memcpy(&header, rom.data(), sizeof header);
  if (header.magic != QXL_ROM_MAGIC)
    throw VmmError(fmt::format(
        "the ROM's magic is {:#x}, not QXL_ROM_MAGIC {:#x}: the broker linked but its QXL device "
        "wrote no ROM (is the device model wired to the qxl-link? see the broker's log)",
        uint32_t{header.magic}, QXL_ROM_MAGIC));
  uint64_t offset = header.ram_header_offset;
  if (offset % 4 != 0 || offset == 0 || offset > ram.size() || ram.size() - offset < sizeof(QXLRam))
    throw VmmError(
        fmt::format("the ROM's ram_header_offset {:#x} does not leave a 4-byte aligned "
                    "QXLRam ({} bytes) inside the {}-byte RAM BAR",
                    offset, sizeof(QXLRam), ram.size()));
  ramHeaderOffset_ = offset;
  uint32_t ramMagic;
  std::memcpy(&ramMagic, ram.data() + offset, sizeof ramMagic);
  if (ramMagic != QXL_RAM_MAGIC)
    throw VmmError(
        fmt::format("the QXLRam header at {:#x} has magic {:#x}, not QXL_RAM_MAGIC {:#x}", offset,
                    ramMagic, QXL_RAM_MAGIC));
  if (header.slot_id_bits < 1 || header.slot_id_bits > 8 || header.slot_gen_bits < 1 ||
      header.slot_gen_bits > 8 || header.slots_start == 0 || header.slots_start >= header.slots_end)
    throw VmmError(fmt::format(
        "the ROM's memslot layout is unusable: slots {}..{}, {} id bits, {} "
        "generation bits (the driver needs two slots, ids >= 1, 1..8 bits)",
        header.slots_start, header.slots_end, header.slot_id_bits, header.slot_gen_bits));
  spdlog::info("QXL ROM: id {}, {} surfaces, RAM header at {:#x}, slots {}..{}",
               uint32_t{header.id}, uint32_t{header.n_surfaces}, offset, header.slots_start,
               header.slots_end);

  slots_.ramSlot = header.slots_start;
  slots_.vramSlot = header.slots_start + 1;
  slots_.slotIdBits = header.slot_id_bits;
  slots_.slotGenBits = header.slot_gen_bits;
  slots_.ramStart = vmm_.ramPhysStart();
  slots_.ramEnd = vmm_.ramPhysStart() + offset;
  setUpSlots();
}

void Driver::setUpSlots() {
  auto* base = ramHeader();
  std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(base + offsetof(QXLRam, int_mask)))
      .store(INTERRUPT_MASK);

  // Memslots, as qxl_kms.c's setup_slot: the range into QXLRam.mem_slot, then the IO with the
  // slot id; the device publishes the slot's generation in the ROM before completing.
  auto addSlot = [&](uint8_t id, uint64_t start, uint64_t end) {
    storeField(base, offsetof(QXLRam, mem_slot), QXLMemSlot{start, end});
    vmm_.ioWrite(QXL_IO_MEMSLOT_ADD_ASYNC, id, true);
    return std::to_integer<uint8_t>(vmm_.rom()[offsetof(QXLRom, slot_generation)]);
  };
  const SlotLayout& s = slots_;
  uint8_t ramGen = addSlot(s.ramSlot, s.ramStart, s.ramEnd);
  uint8_t vramGen =
      addSlot(s.vramSlot, vmm_.vramPhysStart(), vmm_.vramPhysStart() + vmm_.vram().size());
  ArenaMapping ramArena{vmm_.ram().subspan(0, ramHeaderOffset_),
                        s.ramStart,
                        s.ramSlot,
                        ramGen,
                        s.slotIdBits,
                        s.slotGenBits};
  ArenaMapping vramArena{vmm_.vram(), vmm_.vramPhysStart(), s.vramSlot,
                         vramGen,     s.slotIdBits,         s.slotGenBits};
  allocator_ = std::make_unique<DriverAllocator>(ramArena, vramArena);
  spdlog::info(
      "memslots: {} = RAM command area ({} KiB, generation {}), {} = VRAM ({} MiB, "
      "generation {})",
      s.ramSlot, ramHeaderOffset_ >> 10, ramGen, s.vramSlot, vmm_.vram().size() >> 20, vramGen);
}

void Driver::onInterrupt() {
  if (ramHeaderOffset_ == 0)
    return;  // before init(): nothing of ours to look at yet
  auto* base = ramHeader();
  std::atomic_ref<uint32_t> pendingRef(
      *reinterpret_cast<uint32_t*>(base + offsetof(QXLRam, int_pending)));
  uint32_t pending = pendingRef.load();
  if (pending == 0)
    return;
  // Clear exactly what we handle: bits the device sets meanwhile stay for the next wake-up.
  pendingRef.fetch_and(~pending);
  ++stats_.interrupts;
  // DISPLAY / CURSOR (ring space, releases) and IO_CMD (an async IO done) need no action here:
  // every wait re-checks the ring or completion it waits on after each loop iteration.
  if (pending & QXL_INTERRUPT_ERROR) {
    ++stats_.deviceErrors;
    if (powerOfTwo(stats_.deviceErrors))
      spdlog::error(
          "the QXL device raised QXL_INTERRUPT_ERROR ({} so far): it found a fault in "
          "what this guest wrote; see the broker's log",
          stats_.deviceErrors);
  }
}

bool Driver::perform(const GuestAction& action) {
  SB_ASSERT(allocator_, "perform() before init()");
  if (const auto* command = std::get_if<Command>(&action)) {
    reclaim();
    return submit(*command);
  }
  const auto* io = std::get_if<IoEvent>(&action);
  SB_ASSERT(io, "attacks and device resets are the attacker's (attacker.h)");
  return performIo(*io);
}

Driver::StampedResult Driver::submitWithStamp(const Command& command, uint32_t seq) {
  SB_ASSERT(allocator_, "submitWithStamp() before init()");
  SB_ASSERT(primary_, "a stamp without a primary to draw it on");
  SB_ASSERT(command.type != CommandType::Cursor, "a stamp goes on the command ring only");
  reclaim();
  StampedResult result;
  auto update = layOut(command, std::nullopt, true);
  if (!update)
    return result;
  result.performed = true;
  // The update is laid out and not yet visible: waiting for memory here could wait on it.
  auto stampItem = layOut(stampCommand(seq), seq, false);
  if (!stampItem) {
    publish(std::span(&*update, 1));
    return result;
  }
  const LaidOut both[] = {*update, *stampItem};
  publish(both);
  ++stats_.stamps;
  result.stampNs = lastStampNs_;
  return result;
}

bool Driver::submit(const Command& command, std::optional<uint32_t> stampSeq) {
  auto laid = layOut(command, stampSeq, true);
  if (!laid)
    return false;
  publish(std::span(&*laid, 1));
  return true;
}

std::optional<Driver::LaidOut> Driver::layOut(const Command& command,
                                              std::optional<uint32_t> stampSeq, bool mayWait) {
  uint64_t id = nextReleaseId_;
  for (int round = 0;; ++round) {
    auto result = materialise(command, id, *allocator_);
    if (auto* m = std::get_if<Materialised>(&result)) {
      ++nextReleaseId_;
      Pending p;
      p.releaseInfo = allocator_->hostAddress(m->commandAddr, sizeof(QXLReleaseInfo));
      if (!p.releaseInfo)
        throw VmmError(
            fmt::format("the materialiser placed a {} command at {:#x}, outside this "
                        "driver's memslots",
                        commandTypeName(command.type), m->commandAddr));
      p.typeName = commandTypeName(command.type);
      if (const auto* s = std::get_if<SurfaceCmd>(&command.body)) {
        if (s->type == QXL_SURFACE_CMD_DESTROY)
          p.destroysSurface = s->surfaceId;
        if (s->type == QXL_SURFACE_CMD_CREATE && m->surfaceMemory) {
          auto [it, inserted] = surfaces_.try_emplace(s->surfaceId, *m->surfaceMemory);
          if (!inserted) {
            spdlog::warn(
                "surface {} created again without a destroy; its old memory is kept "
                "until all surfaces are destroyed",
                s->surfaceId);
            orphanedSurfaces_.push_back(it->second);
            it->second = *m->surfaceMemory;
          }
        }
      }
      LaidOut laid;
      if (stampSeq) {
        // Our own materialiser laid out our own stamp: not finding its pixels is a bug here.
        laid.stampPixels = locateStampPixels(m->commandAddr, [this](uint64_t addr, size_t size) {
          return allocator_->hostAddress(addr, size);
        });
        SB_ASSERT(laid.stampPixels, "stamp {} laid out at {:#x} but its pixels were not found",
                  *stampSeq, m->commandAddr);
        laid.stampSeq = *stampSeq;
      }
      p.materialised = std::move(*m);
      // unordered_map nodes do not move: the pointer stays valid while the command is pending.
      auto& stored = pending_.emplace(id, std::move(p)).first->second;
      laid.materialised = &stored.materialised;
      ++stats_.commands;
      ++stats_.commandsByType[stored.typeName];
      return laid;
    }
    const auto& error = std::get<MaterialiseError>(result);
    if (error.kind != MaterialiseErrorKind::OutOfMemory || (!mayWait && round >= 1)) {
      ++stats_.notSubmitted;
      if (powerOfTwo(stats_.notSubmitted))
        spdlog::warn("a {} command was not submitted ({} so far): {}",
                     commandTypeName(command.type), stats_.notSubmitted, error.detail);
      return std::nullopt;
    }
    if (round >= MAX_OOM_ROUNDS)
      throw VmmError(
          fmt::format("out of guest memory for a {} command after {} rounds of "
                      "reclaiming and QXL_IO_NOTIFY_OOM ({}); {} commands outstanding",
                      commandTypeName(command.type), round, error.detail, pending_.size()));
    size_t before = pending_.size();
    reclaim();
    if (!mayWait || (round == 0 && pending_.size() != before))
      continue;  // released memory may be enough
    if (pending_.empty())
      throw VmmError(
          fmt::format("a {} command does not fit in guest memory with nothing else "
                      "outstanding ({}); raise --ram-size / --vram-size",
                      commandTypeName(command.type), error.detail));
    // As qxl_cmd.c's qxl_alloc_bo_reserved loop: ask the device to release what it can, then
    // collect it.
    ++stats_.oomNotifications;
    vmm_.ioWrite(QXL_IO_NOTIFY_OOM, 0, true);
    reclaim();
    if (pending_.size() == before)
      waitForRelease("the device to release commands after QXL_IO_NOTIFY_OOM");
  }
}

void Driver::publish(std::span<const LaidOut> items) {
  SB_ASSERT(!items.empty(), "nothing to publish");
  const bool cursorRing = items.front().materialised->cursorRing;
  for (const LaidOut& laid : items)
    SB_ASSERT(laid.materialised->cursorRing == cursorRing, "one publish, one ring");
  if (commandRingsPoisoned_)
    throw VmmError("a command was published on a ring the attacker broke, before resetDevice()");
  auto* base = ramHeader();
  RingView ring = cursorRing ? RingView(base + offsetof(QXLRam, cursor_ring), QXL_CURSOR_RING_SIZE,
                                        sizeof(QXLCursorRing_ring_el))
                             : RingView(base + offsetof(QXLRam, cmd_ring), QXL_COMMAND_RING_SIZE,
                                        sizeof(QXLCommandRing_ring_el));
  const char* name = cursorRing ? "cursor ring" : "command ring";
  const auto n = static_cast<uint32_t>(items.size());
  SB_ASSERT(n <= ring.capacity(), "{} items do not fit the {}", n, name);
  auto checkIndices = [&] {
    uint32_t used = ring.used();
    if (used > ring.capacity())
      throw VmmError(
          fmt::format("the {}'s consumer index {} is {} entries behind the producer "
                      "{}, more than the ring holds: the device broke the ring",
                      name, ring.cons(), used, ring.prod()));
    return used;
  };
  // SPICE_RING_PROD_WAIT: without room for all, ask to be told when the device has taken enough.
  if (ring.capacity() - checkIndices() < n) {
    ring.setNotifyOnCons(ring.prod() + n - ring.capacity());
    std::atomic_thread_fence(std::memory_order_seq_cst);
    vmm_.waitUntil([&] { return ring.capacity() - checkIndices() >= n; },
                   fmt::format("room on the {}", name));
  }
  // The doorbell moment of a latency stamp: after any wait for room, before the first item that
  // makes the commands visible. The fence below orders the pixels before the producer index.
  const uint64_t ns = stamp::monotonicNowNs();
  for (const LaidOut& laid : items)
    if (laid.stampPixels) {
      lastStampNs_ = ns;
      writeStamp(laid.stampPixels, laid.stampSeq, ns);
    }
  const uint32_t prod = ring.prod();
  for (uint32_t i = 0; i < n; ++i) {
    QXLCommand item{};
    item.data = items[i].materialised->commandAddr;
    item.type = items[i].materialised->qxlType;
    std::memcpy(ring.item(prod + i), &item, sizeof item);
  }
  // SPICE_RING_PUSH: the items are visible before the index that publishes them.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  ring.setProd(prod + n);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // The device asked to be told when the producer passes notify_on_prod: one doorbell for all.
  if (ring.notifyOnProd() - prod - 1 < n) {
    if (cursorRing)
      vmm_.ringCursorDoorbell();
    else
      vmm_.ringCommandDoorbell();
  }
}

void Driver::reclaim() {
  // Poisoned: the guest broke its own release ring's consumer index; walking it would read
  // what the device never wrote. Releases resume after resetDevice().
  if (!allocator_ || releaseRingPoisoned_)
    return;
  auto* base = ramHeader();
  RingView ring(base + offsetof(QXLRam, release_ring), QXL_RELEASE_RING_SIZE,
                sizeof(QXLReleaseRing_ring_el));
  for (;;) {
    uint32_t cons = ring.cons();
    uint32_t used = ring.prod() - cons;
    if (used == 0)
      return;
    if (used > ring.capacity())
      throw VmmError(
          fmt::format("the release ring's producer index {} is {} entries ahead of "
                      "our consumer index {}, more than the ring holds: the device "
                      "broke the ring",
                      ring.prod(), used, cons));
    std::atomic_thread_fence(std::memory_order_seq_cst);
    uint64_t id;
    std::memcpy(&id, ring.item(cons), sizeof id);
    ring.setCons(cons + 1);
    // Follow the chain (qxl_release.c: each release info's `next`, written by the device over
    // the id). Bounded by what is outstanding, so a cycle the device made cannot loop forever.
    size_t hops = 0, limit = pending_.size();
    while (id != 0) {
      if (++hops > limit)
        throw VmmError(
            fmt::format("the release chain holds more entries than the {} commands "
                        "outstanding: the device made a cycle or repeated an id",
                        limit));
      uint64_t next = 0;
      releaseOne(id, next);
      id = next;
    }
  }
}

void Driver::releaseOne(uint64_t id, uint64_t& next) {
  auto it = pending_.find(id);
  if (it == pending_.end())
    throw VmmError(
        fmt::format("the device released id {}, which is no outstanding command "
                    "(released twice, or a value the driver never wrote)",
                    id));
  Pending& p = it->second;
  std::memcpy(&next, p.releaseInfo, sizeof next);
  for (const GuestBlock& block : p.materialised.blocks)
    allocator_->free(block);
  if (p.destroysSurface) {
    auto surface = surfaces_.find(*p.destroysSurface);
    if (surface != surfaces_.end()) {
      allocator_->free(surface->second);
      surfaces_.erase(surface);
    }
  }
  pending_.erase(it);
  ++stats_.released;
}

void Driver::waitForRelease(const char* why) {
  auto* base = ramHeader();
  RingView ring(base + offsetof(QXLRam, release_ring), QXL_RELEASE_RING_SIZE,
                sizeof(QXLReleaseRing_ring_el));
  // SPICE_RING_CONS_WAIT: ask for an interrupt when the next entry arrives.
  ring.setNotifyOnProd(ring.prod() + 1);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  vmm_.waitUntil([&ring] { return ring.prod() != ring.cons(); }, why);
}

void Driver::drain() {
  while (true) {
    reclaim();
    if (pending_.empty())
      return;
    auto* base = ramHeader();
    RingView ring(base + offsetof(QXLRam, release_ring), QXL_RELEASE_RING_SIZE,
                  sizeof(QXLReleaseRing_ring_el));
    try {
      // The device may hold a partly built release chain back (QEMU batches them):
      // QXL_IO_FLUSH_RELEASE pushes it.
      if (ring.prod() == ring.cons()) {
        vmm_.ioWrite(QXL_IO_FLUSH_RELEASE, 0, true);
        reclaim();
        if (pending_.empty())
          return;
      }
      waitForRelease("the device to release the commands still outstanding");
    } catch (const VmmError& e) {
      auto oldest = pending_.begin();
      for (auto it = pending_.begin(); it != pending_.end(); ++it) {
        if (it->first < oldest->first)
          oldest = it;
      }
      throw VmmError(
          fmt::format("{} of {} submitted commands were never released (the oldest: "
                      "release id {}, a {} command at {:#x}): {}",
                      pending_.size(), stats_.commands, oldest->first, oldest->second.typeName,
                      oldest->second.materialised.commandAddr, e.what()));
    }
  }
}

bool Driver::performIo(const IoEvent& io) {
  ++stats_.ioEvents;
  std::string name(workerMessageName(io.message));
  auto skip = [&] {
    ++stats_.ioSkipped;
    ++stats_.skippedByName[name];
    return false;
  };
  switch (io.message) {
    case WorkerMessage::CreatePrimarySurface:
    case WorkerMessage::CreatePrimarySurfaceAsync:
      if (!io.primary)
        return skip();  // spice-server refused it: no surface fields were recorded
      createPrimary(io);
      break;
    case WorkerMessage::DestroyPrimarySurface:
    case WorkerMessage::DestroyPrimarySurfaceAsync:
      if (!primary_)
        return skip();
      destroyPrimary();
      break;
    case WorkerMessage::DestroySurfaces:
    case WorkerMessage::DestroySurfacesAsync:
      destroyAllSurfaces();
      break;
    case WorkerMessage::Update:
    case WorkerMessage::UpdateAsync:
      if (!primary_)
        return skip();
      updatePrimary();
      break;
    case WorkerMessage::Wakeup:
      vmm_.ringCommandDoorbell();  // QXL_IO_NOTIFY_CMD is the command doorbell's ioeventfd
      break;
    case WorkerMessage::Oom:
      ++stats_.oomNotifications;
      vmm_.ioWrite(QXL_IO_NOTIFY_OOM, 0, true);
      break;
    case WorkerMessage::MonitorsConfigAsync:
      monitorsConfig();
      break;
    case WorkerMessage::FlushSurfacesAsync:
      vmm_.ioWrite(QXL_IO_FLUSH_SURFACES_ASYNC, 0, true);
      break;
    default:
      // Memslot messages (this driver manages its own slots), Start, Stop, SetMouseMode,
      // ResetCursor, ResetImageCache, DestroySurfaceWait (no surface id recorded), ...
      return skip();
  }
  ++stats_.ioByName[name];
  return true;
}

void Driver::createPrimary(const IoEvent& io) {
  const PrimarySurface& s = *io.primary;
  if (primary_) {
    spdlog::info("a primary surface exists; destroying it before creating the next one");
    destroyPrimary();
  }
  uint64_t absStride = s.stride < 0 ? -static_cast<int64_t>(s.stride) : s.stride;
  uint64_t bytes = absStride * s.height;
  if (s.width == 0 || s.height == 0 || absStride == 0 || bytes > vmm_.vram().size())
    throw VmmError(
        fmt::format("cannot create a {}x{} primary with stride {}: {} bytes, the VRAM "
                    "BAR holds {}; raise --vram-size",
                    s.width, s.height, s.stride, bytes, vmm_.vram().size()));
  auto block = allocator_->allocate(Arena::Vram, bytes);
  if (!block) {
    reclaim();
    block = allocator_->allocate(Arena::Vram, bytes);
  }
  if (!block)
    throw VmmError(
        fmt::format("no room for a {}x{} primary ({} bytes) in VRAM next to the "
                    "surfaces alive now; raise --vram-size",
                    s.width, s.height, bytes));
  if (!s.data.empty())
    std::memcpy(block->host, s.data.data(), std::min<uint64_t>(bytes, s.data.size()));
  // `mem` is the lowest address of the pixel block for either stride sign: with a negative stride
  // line 0 is the last line of the block (mem + (height - 1) * |stride|), as spice-server's
  // primary surface creation computes it and as QEMU's own host primary (stride -width*4, mem =
  // the buffer) relies on.
  QXLSurfaceCreate create{};
  create.width = s.width;
  create.height = s.height;
  create.stride = s.stride;
  create.format = s.format;
  create.position = s.position;
  create.mouse_mode = s.mouseMode;
  create.flags = s.flags;
  create.type = s.type;
  create.mem = block->guestAddr;
  storeField(ramHeader(), offsetof(QXLRam, create_surface), create);
  primary_ = *block;
  primaryWidth_ = s.width;
  primaryHeight_ = s.height;
  primaryStride_ = s.stride;
  primaryFormat_ = s.format;
  primaryCreated_ = PrimarySurface{s.width,     s.height, s.stride, s.format, s.position,
                                   s.mouseMode, s.flags,  s.type,   {}};
  vmm_.ioWrite(QXL_IO_CREATE_PRIMARY_ASYNC, 0, true);
}

void Driver::destroyPrimary() {
  vmm_.ioWrite(QXL_IO_DESTROY_PRIMARY_ASYNC, 0, true);
  if (primary_)
    allocator_->free(*primary_);
  primary_.reset();
}

void Driver::freeSurfaceMemory() {
  for (auto& [id, block] : surfaces_)
    allocator_->free(block);
  surfaces_.clear();
  for (const GuestBlock& block : orphanedSurfaces_)
    allocator_->free(block);
  orphanedSurfaces_.clear();
}

void Driver::destroyAllSurfaces() {
  // Destroys the primary too (spice-server destroys every surface, 0 included).
  vmm_.ioWrite(QXL_IO_DESTROY_ALL_SURFACES_ASYNC, 0, true);
  freeSurfaceMemory();
  if (primary_)
    allocator_->free(*primary_);
  primary_.reset();
}

void Driver::updatePrimary() {
  auto* base = ramHeader();
  QXLRect area{};
  area.top = 0;
  area.left = 0;
  area.bottom = static_cast<int32_t>(primaryHeight_);
  area.right = static_cast<int32_t>(primaryWidth_);
  storeField(base, offsetof(QXLRam, update_area), area);
  storeField(base, offsetof(QXLRam, update_surface), uint32_t{0});
  vmm_.ioWrite(QXL_IO_UPDATE_AREA_ASYNC, 0, true);
}

std::optional<PrimarySnapshot> Driver::snapshotPrimary() {
  if (!primary_)
    return std::nullopt;
  updatePrimary();  // waits for the device's completion
  ++stats_.snapshots;
  PrimarySnapshot snapshot;
  snapshot.width = primaryWidth_;
  snapshot.height = primaryHeight_;
  snapshot.stride = primaryStride_;
  snapshot.format = primaryFormat_;
  // createPrimary() checked height * |stride| against the VRAM BAR and allocated that much.
  const uint64_t absStride = primaryStride_ < 0 ? -static_cast<int64_t>(primaryStride_)
                                                : static_cast<uint64_t>(primaryStride_);
  const auto* from = reinterpret_cast<const uint8_t*>(primary_->host);
  snapshot.bytes.assign(from, from + absStride * primaryHeight_);
  return snapshot;
}

void Driver::monitorsConfig() {
  constexpr size_t bytes = sizeof(QXLMonitorsConfig) + sizeof(QXLHead);
  // One config block for the driver's life, rewritten each time (qxl_display.c keeps one bo).
  if (!monitorsConfig_) {
    monitorsConfig_ = allocator_->allocate(Arena::Ram, bytes);
    if (!monitorsConfig_) {
      reclaim();
      monitorsConfig_ = allocator_->allocate(Arena::Ram, bytes);
    }
    if (!monitorsConfig_)
      throw VmmError("no room in the RAM command area for a monitors config; raise --ram-size");
  }
  QXLMonitorsConfig config{};
  config.count = primary_ ? 1 : 0;
  config.max_allowed = 1;
  QXLHead head{};
  head.id = 0;
  head.surface_id = 0;
  head.width = primaryWidth_;
  head.height = primaryHeight_;
  std::memcpy(monitorsConfig_->host, &config, sizeof config);
  std::memcpy(monitorsConfig_->host + sizeof config, &head, sizeof head);
  storeField(ramHeader(), offsetof(QXLRam, monitors_config), uint64_t{monitorsConfig_->guestAddr});
  vmm_.ioWrite(QXL_IO_MONITORS_CONFIG_ASYNC, 0, true);
}

// ---------------------------------------------------------------- a hostile guest's steps

std::optional<Driver::Prepared> Driver::prepare(const Command& command) {
  SB_ASSERT(allocator_, "prepare() before init()");
  reclaim();
  const uint64_t id = nextReleaseId_;
  auto laid = layOut(command, std::nullopt, true);
  if (!laid)
    return std::nullopt;
  return Prepared{id, &pending_.at(id).materialised};
}

void Driver::publishPrepared(std::span<const Prepared> items) {
  std::vector<LaidOut> laid;
  for (const Prepared& p : items)
    laid.push_back(LaidOut{p.laidOut, nullptr, 0});
  publish(laid);
}

void Driver::moveReleaseInfo(uint64_t releaseId, std::byte* host) {
  pending_.at(releaseId).releaseInfo = host;
}

void Driver::waitReleased(uint64_t releaseId) {
  for (;;) {
    reclaim();
    if (!isOutstanding(releaseId))
      return;
    waitForRelease("the device to release a command the attacker waits for");
  }
}

void Driver::abandon(uint64_t releaseId) {
  auto it = pending_.find(releaseId);
  SB_ASSERT(it != pending_.end(), "abandon({}) of no outstanding command", releaseId);
  for (const GuestBlock& block : it->second.materialised.blocks)
    allocator_->free(block);
  pending_.erase(it);
  ++stats_.unreleasable;
}

void Driver::forgetSurface(uint32_t surfaceId) {
  auto it = surfaces_.find(surfaceId);
  if (it == surfaces_.end())
    return;
  allocator_->free(it->second);
  surfaces_.erase(it);
}

void Driver::resetDevice() {
  stats_.forgottenAtReset += restartDevice();
  ++stats_.resets;
}

void Driver::relinked() {
  // What the old device released before it went: walked now, not counted as forgotten.
  if (!releaseRingPoisoned_)
    reclaim();
  std::optional<IoEvent> primaryAgain;
  if (primary_) {
    PrimarySurface again = primaryCreated_;
    const uint64_t absStride =
        again.stride < 0 ? -static_cast<int64_t>(again.stride) : again.stride;
    const auto* pixels = reinterpret_cast<const uint8_t*>(primary_->host);
    again.data.assign(pixels, pixels + absStride * again.height);
    primaryAgain = IoEvent{WorkerMessage::CreatePrimarySurface, std::move(again)};
  }
  const uint64_t forgotten = restartDevice();
  stats_.forgottenAtRelink += forgotten;
  ++stats_.relinks;
  if (primaryAgain)
    createPrimary(*primaryAgain);
  spdlog::info("linked again: {} commands the old device had not released reclaimed{}", forgotten,
               primaryAgain
                   ? fmt::format("; primary {}x{} created again from guest memory",
                                 primaryAgain->primary->width, primaryAgain->primary->height)
                   : std::string("; no primary"));
}

uint64_t Driver::restartDevice() {
  SB_ASSERT(allocator_, "restartDevice() before init()");
  // Acted on at once by the device (it rewrites the rings and forgets the slots), completed once
  // everything queued before it is done.
  vmm_.ioWrite(QXL_IO_RESET, 0, true);
  const uint64_t forgotten = pending_.size();
  pending_.clear();
  surfaces_.clear();
  orphanedSurfaces_.clear();
  primary_.reset();
  monitorsConfig_.reset();
  commandRingsPoisoned_ = releaseRingPoisoned_ = false;
  // Their memory goes with the old allocator: nothing the device still reads (the reset
  // completed after every batch before it).
  setUpSlots();
  return forgotten;
}

void Driver::ramSlotReAdded(uint8_t generation) {
  allocator_->setGeneration(Arena::Ram, generation);
  // The one long-lived RAM block: its address has the old generation.
  if (monitorsConfig_) {
    allocator_->free(*monitorsConfig_);
    monitorsConfig_.reset();
  }
}

}  // namespace spicebox::guestsim
