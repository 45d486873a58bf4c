// Runs in: broker. Input: a ring header and its items inside the QXL RAM BAR, which the guest
// writes at any moment (the BAR is a mapping of a memfd shared with the VMM), so every index and
// item read here is hostile. The BAR span and the header offset come from our own device model
// (trusted); the span must outlive the ring objects that view it.
//
// Ring bookkeeping only: a command is copied out as {addr, type} and handed on; what `addr`
// points at is read by the renderer, never here (DESIGN.md invariant 3).
//
// Layout and protocol follow spice/ipc_ring.h (SPICE_RING_*): free-running uint32 `prod` and
// `cons`, item index = idx & (size - 1), and the notify_on_prod / notify_on_cons handshake that
// decides when the other side is told. The ring size is the compile-time size from qxl_dev.h;
// the `num_items` field in guest memory is written by `reset()` and never read back.
#pragma once

#include <spice/qxl_dev.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <variant>
#include <vector>

namespace spicebox::qxl {

// Where the rings live relative to the QXLRam header (QXLRom::ram_header_offset inside the RAM
// BAR). The caller adds the header offset; `attach` checks the sum against the BAR.
inline constexpr uint64_t COMMAND_RING_OFFSET = offsetof(QXLRam, cmd_ring);
inline constexpr uint64_t CURSOR_RING_OFFSET = offsetof(QXLRam, cursor_ring);
inline constexpr uint64_t RELEASE_RING_OFFSET = offsetof(QXLRam, release_ring);

// The two guest-produced rings share one layout; one consumer type serves both.
enum class CommandRingKind : uint8_t { Display, Cursor };

// Why a ring could not be attached to a BAR. These are our own device model's mistakes or a
// BAR smaller than announced, not guest behaviour, but they are reported rather than asserted
// because the BAR size comes from the VMM.
enum class RingAttachError : uint8_t {
  OutsideBar,  // [offset, offset + sizeof(ring)) does not fit in the BAR
  Misaligned,  // header not 4-byte aligned: std::atomic_ref<uint32_t> would be undefined
};

// A hostile ring state. Once one is seen the ring is halted: every later call returns
// `Halted` without touching guest memory until `reset()` (QXL_IO_RESET). This is QEMU's
// "guest bug" policy: a guest that corrupts its own ring loses its display, not our process,
// and we never guess which of its indices was the lie.
enum class RingFault : uint8_t {
  ProducerOutOfRange,  // command ring: prod - cons > size (far ahead, or moved backwards)
  ConsumerOutOfRange,  // release ring: guest's cons claims entries we never produced
  Halted,              // an earlier fault; nothing read until reset()
};

// A command copied out of the ring. Only the renderer may follow `addr`.
struct RingCommand {
  uint64_t addr = 0;  // QXLCommand::data, a memslot-encoded guest address
  uint32_t type = 0;  // QXLCommand::type, unvalidated (QXLCmdType is the renderer's to check)
  bool operator==(const RingCommand&) const = default;
};

struct RingEmpty {};

struct Popped {
  RingCommand command;
  // QXL_INTERRUPT_DISPLAY or QXL_INTERRUPT_CURSOR when the guest asked to be told of this pop
  // (cons reached notify_on_cons: it was waiting for room), else 0. The caller ORs it into
  // int_pending and raises the interrupt.
  uint32_t interrupts = 0;
};

using PopResult = std::variant<Popped, RingEmpty, RingFault>;

struct PopBatch {
  std::vector<RingCommand> commands;
  uint32_t interrupts = 0;  // OR of every pop's request
  // Why the batch stopped early, if it did because of the guest: the commands before the fault
  // were validated and are good to process.
  std::optional<RingFault> fault;
  bool empty = false;  // the ring was drained (notify_on_prod armed for the next guest push)
};

// Device side of the command ring or the cursor ring: the guest produces, we consume.
class CommandRingConsumer {
 public:
  // Checks the ring lies inside the BAR, then initialises it as device power-on does (reset()).
  static std::variant<CommandRingConsumer, RingAttachError> attach(std::span<std::byte> bar,
                                                                   uint64_t headerOffset,
                                                                   CommandRingKind kind);

  // Takes one command. On an empty ring it arms notify_on_prod (so the guest's next push kicks
  // QXL_IO_NOTIFY_CMD / _CURSOR) and looks once more, closing the race with a push that landed
  // in between; so at most two reads of `prod`, each validated on its own.
  PopResult pop();

  // At most `maxCount` pops: bounded work per event-loop turn whatever the guest writes.
  PopBatch popBatch(size_t maxCount);

  // Device reset (QXL_IO_RESET, power on): rewrites the header as SPICE_RING_INIT does and
  // clears a halt. `startIndex` is 0 for SPICE_RING_INIT; any other value is as valid for
  // free-running indices and lets tests cross 2^32 without four billion pops.
  void reset(uint32_t startIndex = 0);

  bool halted() const { return halted_; }
  // Hostile states seen since construction (not cleared by reset): for metrics and rate limits.
  uint64_t faultCount() const { return faultCount_; }
  uint32_t consumed() const { return cons_; }

 private:
  CommandRingConsumer(std::byte* header, CommandRingKind kind) : header_(header), kind_(kind) {}
  PopResult popOnce(uint32_t prod);
  uint32_t readProd() const;
  RingFault fault(RingFault why);

  std::byte* header_;
  CommandRingKind kind_;
  // Our own consumer index: the guest can write `cons` in its RAM but we only ever write it.
  uint32_t cons_ = 0;
  bool halted_ = false;
  uint64_t faultCount_ = 0;
};

enum class PushStatus : uint8_t {
  Pushed,
  Full,  // every slot holds an id the guest has not consumed; retry after it does
};

struct PushResult {
  PushStatus status = PushStatus::Pushed;
  // QXL_INTERRUPT_DISPLAY when prod reached the guest's notify_on_prod, else 0.
  uint32_t interrupts = 0;
};

// Device side of the release ring: we produce 64-bit release ids, the guest consumes.
class ReleaseRingProducer {
 public:
  // As CommandRingConsumer::attach.
  static std::variant<ReleaseRingProducer, RingAttachError> attach(std::span<std::byte> bar,
                                                                   uint64_t headerOffset);

  // Writes `releaseId` into the next free slot. Never overwrites an entry the guest has not
  // consumed: a full ring is reported and nothing is written.
  std::variant<PushResult, RingFault> push(uint64_t releaseId);

  // As CommandRingConsumer::reset.
  void reset(uint32_t startIndex = 0);

  bool halted() const { return halted_; }
  uint64_t faultCount() const { return faultCount_; }
  uint32_t produced() const { return prod_; }

 private:
  explicit ReleaseRingProducer(std::byte* header) : header_(header) {}
  RingFault fault(RingFault why);

  std::byte* header_;
  uint32_t prod_ = 0;  // our own producer index; the value in guest RAM is only written
  bool halted_ = false;
  uint64_t faultCount_ = 0;
};

}  // namespace spicebox::qxl
