// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: guest actions
// (Command trees and IoEvents from a recording or a scenario, trusted), and the device's side of
// guest memory, written by the broker: the ROM, ring indices, int_pending and the release ring
// with its QXLReleaseInfo.next chains. Those are range-checked before use: a device that breaks
// the protocol ends the run with an error naming the fault, it cannot make us write outside
// our BARs.
//
// The QXL guest driver, modelled on the Linux kernel's drivers/gpu/drm/qxl (qxl_kms.c: ROM and
// memslots; qxl_cmd.c: rings and IO; qxl_irq.c: interrupts; qxl_release.c: the release ring):
//  - init(): check the ROM, set int_mask, add two memslots (1: the RAM BAR's command area below
//    the QXLRam header; 2: the VRAM BAR) with QXL_IO_MEMSLOT_ADD_ASYNC.
//  - perform(): a Command is materialised into guest memory and pushed on the command or cursor
//    ring; an IoEvent becomes the IO port writes a real driver makes (see perform()).
//  - released memory comes back through the release ring (reclaim()).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tools/guestsim/allocator.h"
#include "tools/guestsim/materialise.h"
#include "tools/guestsim/scenario.h"
#include "tools/guestsim/vmm.h"

namespace spicebox::guestsim {

// The primary's pixels as the guest reads them back after QXL_IO_UPDATE_AREA of the whole
// surface: `bytes` is the allocation (height * |stride|, lowest address first; with a negative
// stride the top row is the last one in memory).
struct PrimarySnapshot {
  uint32_t width = 0, height = 0;
  int32_t stride = 0;
  uint32_t format = 0;  // SPICE_SURFACE_FMT_*
  std::vector<uint8_t> bytes;
};

// How many times a command that does not fit is retried after reclaiming (and, from the second
// round on, after QXL_IO_NOTIFY_OOM and waiting for releases) before the run gives up.
inline constexpr int MAX_OOM_ROUNDS = 64;

// What the driver did, for the summary line.
struct DriverStats {
  uint64_t commands = 0;  // submitted to a ring
  uint64_t released = 0;  // came back on the release ring
  uint64_t ioEvents = 0;  // IoEvents performed or skipped
  uint64_t ioSkipped = 0;
  uint64_t notSubmitted = 0;  // commands the materialiser could not lay out (Unsupported, ...)
  uint64_t oomNotifications = 0;
  uint64_t interrupts = 0;
  uint64_t deviceErrors = 0;  // QXL_INTERRUPT_ERROR seen
  uint64_t snapshots = 0;     // snapshotPrimary() read-backs
  uint64_t stamps = 0;        // submitWithStamp(); also in commands (DRAW)
  // A hostile guest's (attacker.h): commands the device could not release (their release info
  // translates nowhere; it counts them too), commands forgotten at a QXL_IO_RESET, and resets.
  uint64_t unreleasable = 0;
  uint64_t forgottenAtReset = 0;
  uint64_t resets = 0;
  // --relink: links to a new broker after the one before went away, and the commands the old
  // device had not released (they died with it; the driver reclaimed them).
  uint64_t relinks = 0;
  uint64_t forgottenAtRelink = 0;
  std::map<std::string, uint64_t> commandsByType;  // "DRAW", "SURFACE", ...
  std::map<std::string, uint64_t> ioByName;        // performed, by recorded worker message name
  std::map<std::string, uint64_t> skippedByName;   // skipped, same names
};

class Driver {
 public:
  explicit Driver(Vmm& vmm);
  ~Driver();
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  // After link: ROM and RAM header checks, interrupts, memslots. Throws VmmError naming what the
  // device got wrong.
  void init();
  // Performs one action. Returns false when it was not performed: a skipped IoEvent (counted by
  // name), or a command the materialiser refused (counted in notSubmitted; not recorded).
  bool perform(const GuestAction& action);
  // --stamps after an update: lays out `command` (not a cursor command) and stampCommand(seq),
  // then publishes both on the command ring with one producer-index update and at most one
  // doorbell, CLOCK_MONOTONIC written into the stamp right before: the stamp measures from the
  // update's doorbell. `performed` says whether the command was submitted (as perform()); the
  // stamp's time is nullopt when no stamp went with it (the command was not submitted, or the
  // stamp did not fit in guest memory without waiting: counted as notSubmitted).
  struct StampedResult {
    bool performed = false;
    std::optional<uint64_t> stampNs;
  };
  StampedResult submitWithStamp(const Command& command, uint32_t seq);
  // Frees what the device released (walks the release ring).
  void reclaim();
  // Waits until every submitted command was released. Throws VmmError naming the first command
  // still outstanding when the device stops releasing.
  void drain();
  // What a guest does to read its screen: QXL_IO_UPDATE_AREA of the whole primary (the device
  // answers once every earlier command is drawn and the pixels are in guest memory), then a copy
  // of the primary's memory. nullopt when there is no primary. Not recorded, not counted as an
  // IoEvent (stats().snapshots).
  std::optional<PrimarySnapshot> snapshotPrimary();

  const DriverStats& stats() const { return stats_; }
  size_t outstanding() const { return pending_.size(); }

  // ---- A hostile guest's steps (attacker.h), which no driver takes on its own.

  // A command laid out and outstanding but not published: the attacker may rewrite its memory
  // and its ring item (Materialised::commandAddr, qxlType, cursorRing) first.
  struct Prepared {
    uint64_t releaseId = 0;
    Materialised* laidOut = nullptr;  // valid while the command is outstanding
  };
  // Lays out `command` as perform() does (reclaiming, waiting for memory). nullopt: not laid out
  // (counted in notSubmitted).
  std::optional<Prepared> prepare(const Command& command);
  // Publishes prepared commands (all for one ring) as their ring items now say.
  void publishPrepared(std::span<const Prepared> items);
  // The command's QXLReleaseInfo moved to `host` (the device writes `next` there now).
  void moveReleaseInfo(uint64_t releaseId, std::byte* host);
  bool isOutstanding(uint64_t releaseId) const { return pending_.count(releaseId) != 0; }
  // Waits until the device released it (reclaiming), under the watchdog.
  void waitReleased(uint64_t releaseId);
  // The device will never release it (its release info translates nowhere): frees its memory,
  // counted as unreleasable. Only once the device is done with it (after a flush).
  void abandon(uint64_t releaseId);
  // A surface create the renderer refused: its pixel memory is freed now.
  void forgetSurface(uint32_t surfaceId);
  // The attacker broke the command rings (their producer indices) or the release ring (its
  // consumer index): nothing is published on, or walked from, them until resetDevice().
  void poisonCommandRings() { commandRingsPoisoned_ = true; }
  void poisonReleaseRing() { releaseRingPoisoned_ = true; }
  // What a driver does once the device stopped answering (a halted ring): QXL_IO_RESET, then the
  // set-up of init() again (int_mask, both memslots with their new generations). Everything
  // outstanding is forgotten (counted in forgottenAtReset): the device releases none of it. Every
  // GuestBlock handed out before is gone with the old allocator.
  void resetDevice();
  // The link was taken again by a new broker (Vmm::relink): a new device, which knows nothing of
  // this driver. As a driver resuming: QXL_IO_RESET and the set-up of init() again, every command
  // outstanding at the old device reclaimed (counted in forgottenAtRelink), then the primary
  // created again with its parameters and its pixels as they are in guest memory now (the guest's
  // last read-back), which the new device shows. Offscreen surfaces are forgotten, as at a reset.
  void relinked();
  // The attacker deleted and re-added the RAM slot: it has `generation` now.
  void ramSlotReAdded(uint8_t generation);
  // Handles what int_pending holds now, without waiting for the interrupt eventfd.
  void pollInterrupts() { onInterrupt(); }

  // Where things are, for the attacker.
  std::byte* ramHeader() const;
  DriverAllocator& allocator() { return *allocator_; }
  Vmm& vmm() { return vmm_; }
  struct SlotLayout {
    uint8_t ramSlot = 0, vramSlot = 0;
    uint8_t slotIdBits = 0, slotGenBits = 0;
    uint64_t ramStart = 0, ramEnd = 0;  // slot 1's guest physical range (end exclusive)
  };
  const SlotLayout& slots() const { return slots_; }
  bool hasPrimary() const { return primary_.has_value(); }
  uint32_t primaryWidth() const { return primaryWidth_; }
  uint32_t primaryHeight() const { return primaryHeight_; }

 private:
  struct Pending {
    Materialised materialised;
    std::byte* releaseInfo = nullptr;  // QXLReleaseInfo at the start of the command
    std::string typeName;
    std::optional<uint32_t> destroysSurface;  // QXL_SURFACE_CMD_DESTROY of this id
  };

  void onInterrupt();
  // resetDevice()'s and relinked()'s common part: QXL_IO_RESET, everything forgotten (returns how
  // many commands were outstanding), the slots set up again.
  uint64_t restartDevice();
  // init()'s and resetDevice()'s common part: int_mask, both memslots, a fresh allocator.
  void setUpSlots();
  // A command laid out in guest memory (in pending_), not yet on its ring. `stampPixels`, when
  // set: the stamp's 20 bytes in guest memory, written with `stampSeq` and the time just before
  // the command is published (the time goes to lastStampNs_).
  struct LaidOut {
    const Materialised* materialised = nullptr;
    uint8_t* stampPixels = nullptr;
    uint32_t stampSeq = 0;
  };
  // `stampSeq`: the command is stampCommand(*stampSeq). Out of guest memory, `mayWait` reclaims
  // and asks the device (QXL_IO_NOTIFY_OOM) until it fits; otherwise one reclaim and one retry.
  // nullopt: not laid out (counted as notSubmitted, or thrown when memory never frees).
  std::optional<LaidOut> layOut(const Command& command, std::optional<uint32_t> stampSeq,
                                bool mayWait);
  bool submit(const Command& command, std::optional<uint32_t> stampSeq = std::nullopt);
  // Puts `items` (all for the same ring) on their ring at once: waits for room for all, writes
  // the stamps' time, the ring items, then one producer index; rings the doorbell when the
  // device's notify_on_prod lies among the new entries.
  void publish(std::span<const LaidOut> items);
  bool performIo(const IoEvent& io);
  void createPrimary(const IoEvent& io);
  void destroyPrimary();
  void destroyAllSurfaces();
  void updatePrimary();
  void monitorsConfig();
  void releaseOne(uint64_t id, uint64_t& next);
  void waitForRelease(const char* why);
  void freeSurfaceMemory();

  Vmm& vmm_;
  std::unique_ptr<DriverAllocator> allocator_;
  uint64_t ramHeaderOffset_ = 0;
  uint64_t nextReleaseId_ = 1;  // 0 ends a release chain, so ids start at 1
  std::unordered_map<uint64_t, Pending> pending_;
  // Surface pixels (VRAM) by surface id, freed when the DESTROY command is released.
  std::unordered_map<uint32_t, GuestBlock> surfaces_;
  std::vector<GuestBlock> orphanedSurfaces_;  // re-created ids; freed at DestroyAllSurfaces
  std::optional<GuestBlock> primary_;
  uint32_t primaryWidth_ = 0, primaryHeight_ = 0;
  int32_t primaryStride_ = 0;
  uint32_t primaryFormat_ = 0;
  PrimarySurface primaryCreated_;  // its create parameters (data empty), for relinked()
  std::optional<GuestBlock> monitorsConfig_;
  DriverStats stats_;
  uint64_t lastStampNs_ = 0;  // what push() wrote into the last stamp
  SlotLayout slots_;
  bool commandRingsPoisoned_ = false, releaseRingPoisoned_ = false;
};

}  // namespace spicebox::guestsim
