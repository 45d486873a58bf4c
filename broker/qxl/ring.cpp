// Runs in: broker. Input: ring headers and items in guest RAM (hostile, changing under us).
// Every guest index is read exactly once per step into a local through std::atomic_ref, checked,
// and only the local is used afterwards; items are copied out once, after the acquire load of
// `prod` that published them, and before the release store of `cons` that lets the guest reuse
// their slot.
#include "broker/qxl/ring.h"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace spicebox::qxl {
namespace {

static_assert(sizeof(QXLCommandRing) == sizeof(QXLCursorRing) &&
                  offsetof(QXLCommandRing, items) == offsetof(QXLCursorRing, items) &&
                  QXL_COMMAND_RING_SIZE == QXL_CURSOR_RING_SIZE,
              "one consumer type serves both guest-produced rings");

// Sizes are ours (qxl_dev.h), never the guest-writable num_items.
constexpr uint32_t COMMAND_RING_SIZE =
    sizeof(QXLCommandRing::items) / sizeof(QXLCommandRing::items[0]);
constexpr uint32_t RELEASE_RING_SIZE =
    sizeof(QXLReleaseRing::items) / sizeof(QXLReleaseRing::items[0]);
static_assert(COMMAND_RING_SIZE != 0 && (COMMAND_RING_SIZE & (COMMAND_RING_SIZE - 1)) == 0);
static_assert(RELEASE_RING_SIZE != 0 && (RELEASE_RING_SIZE & (RELEASE_RING_SIZE - 1)) == 0);
// Every header field offset is the same in all three rings (SPICE_RING_DECLARE).
static_assert(offsetof(QXLCommandRing, prod) == offsetof(QXLReleaseRing, prod));
static_assert(offsetof(QXLCommandRing, notify_on_cons) == offsetof(QXLReleaseRing, notify_on_cons));

constexpr size_t NUM_ITEMS_AT = offsetof(QXLCommandRing, num_items);
constexpr size_t PROD_AT = offsetof(QXLCommandRing, prod);
constexpr size_t NOTIFY_ON_PROD_AT = offsetof(QXLCommandRing, notify_on_prod);
constexpr size_t CONS_AT = offsetof(QXLCommandRing, cons);
constexpr size_t NOTIFY_ON_CONS_AT = offsetof(QXLCommandRing, notify_on_cons);
static_assert(NOTIFY_ON_CONS_AT % alignof(uint32_t) == 0, "header fields are 4-byte aligned");

// The header is a packed C struct in shared memory; `attach` checked the alignment that
// std::atomic_ref requires, so viewing a field as a uint32_t is sound.
std::atomic_ref<uint32_t> field(std::byte* header, size_t at) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(header + at));
}

// The ring [offset, offset + ringSize) must lie inside the BAR. Written so that no sum can wrap:
// offset is compared with the size first, then ringSize with what remains.
std::variant<std::byte*, RingAttachError> locateRing(std::span<std::byte> bar, uint64_t offset,
                                                     size_t ringSize) {
  if (offset > bar.size() || ringSize > bar.size() - offset) {
    return RingAttachError::OutsideBar;
  }
  std::byte* header = bar.data() + offset;
  if (reinterpret_cast<uintptr_t>(header) % std::atomic_ref<uint32_t>::required_alignment != 0) {
    return RingAttachError::Misaligned;
  }
  return header;
}

// SPICE_RING_INIT, written with the device's own size.
void initHeader(std::byte* header, uint32_t size, uint32_t startIndex) {
  field(header, NUM_ITEMS_AT).store(size, std::memory_order_relaxed);
  field(header, PROD_AT).store(startIndex, std::memory_order_relaxed);
  field(header, CONS_AT).store(startIndex, std::memory_order_relaxed);
  // The guest's first push is announced; its first consume is not asked for.
  field(header, NOTIFY_ON_PROD_AT).store(startIndex + 1, std::memory_order_relaxed);
  // SPICE_RING_INIT's 0 in the index space of startIndex: already passed, so no interrupt.
  field(header, NOTIFY_ON_CONS_AT).store(startIndex, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace

// ---- command / cursor ring: guest produces, device consumes ----

std::variant<CommandRingConsumer, RingAttachError> CommandRingConsumer::attach(
    std::span<std::byte> bar, uint64_t headerOffset, CommandRingKind kind) {
  auto located = locateRing(bar, headerOffset, sizeof(QXLCommandRing));
  if (auto* error = std::get_if<RingAttachError>(&located)) {
    return *error;
  }
  CommandRingConsumer ring(std::get<std::byte*>(located), kind);
  ring.reset();
  return ring;
}

uint32_t CommandRingConsumer::readProd() const {
  // Acquire: the items the guest wrote before bumping prod are visible once we see the bump.
  return field(header_, PROD_AT).load(std::memory_order_acquire);
}

RingFault CommandRingConsumer::fault(RingFault why) {
  halted_ = true;
  ++faultCount_;
  return why;
}

PopResult CommandRingConsumer::pop() {
  if (halted_) {
    return RingFault::Halted;
  }
  const uint32_t prod = readProd();
  PopResult result = popOnce(prod);
  if (!std::holds_alternative<RingEmpty>(result)) {
    return result;
  }
  // SPICE_RING_CONS_WAIT: ask the guest to kick us when it pushes the next item, then look
  // again. Without the second look a push landing between our read and this store would see
  // the old notify_on_prod, send no kick, and leave the command sitting until the one after.
  field(header_, NOTIFY_ON_PROD_AT).store(prod + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return popOnce(readProd());
}

PopResult CommandRingConsumer::popOnce(uint32_t prod) {
  // Free-running indices: the distance is exact modulo 2^32. Anything above the ring size means
  // the guest's prod is not one it could legitimately have written (too far ahead, or moved
  // back behind what we consumed); reading items then would replay or skip commands.
  const uint32_t available = prod - cons_;
  if (available == 0) {
    return RingEmpty{};
  }
  if (available > COMMAND_RING_SIZE) {
    return fault(RingFault::ProducerOutOfRange);
  }

  QXLCommand copy;
  const size_t itemAt = offsetof(QXLCommandRing, items) +
                        (cons_ & (COMMAND_RING_SIZE - 1)) * sizeof(QXLCommandRing::items[0]);
  std::memcpy(&copy, header_ + itemAt, sizeof(copy));

  ++cons_;
  // Release: our copy of the item is complete before the guest may see the slot as free.
  field(header_, CONS_AT).store(cons_, std::memory_order_release);
  // SPICE_RING_POP's barrier: the store above must be visible before we read notify_on_cons, or
  // a guest waiting for room could set it just after our read and sleep forever.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint32_t notifyOnCons = field(header_, NOTIFY_ON_CONS_AT).load(std::memory_order_relaxed);

  Popped popped;
  popped.command = RingCommand{copy.data, copy.type};
  if (cons_ == notifyOnCons) {
    popped.interrupts =
        kind_ == CommandRingKind::Display ? QXL_INTERRUPT_DISPLAY : QXL_INTERRUPT_CURSOR;
  }
  return popped;
}

PopBatch CommandRingConsumer::popBatch(size_t maxCount) {
  PopBatch batch;
  batch.commands.reserve(std::min<size_t>(maxCount, COMMAND_RING_SIZE));
  for (size_t i = 0; i < maxCount; ++i) {
    PopResult result = pop();
    if (auto* popped = std::get_if<Popped>(&result)) {
      batch.commands.push_back(popped->command);
      batch.interrupts |= popped->interrupts;
    } else if (std::holds_alternative<RingEmpty>(result)) {
      batch.empty = true;
      break;
    } else {
      batch.fault = std::get<RingFault>(result);
      break;
    }
  }
  return batch;
}

void CommandRingConsumer::reset(uint32_t startIndex) {
  initHeader(header_, COMMAND_RING_SIZE, startIndex);
  cons_ = startIndex;
  halted_ = false;
}

// ---- release ring: device produces, guest consumes ----

std::variant<ReleaseRingProducer, RingAttachError> ReleaseRingProducer::attach(
    std::span<std::byte> bar, uint64_t headerOffset) {
  auto located = locateRing(bar, headerOffset, sizeof(QXLReleaseRing));
  if (auto* error = std::get_if<RingAttachError>(&located)) {
    return *error;
  }
  ReleaseRingProducer ring(std::get<std::byte*>(located));
  ring.reset();
  return ring;
}

RingFault ReleaseRingProducer::fault(RingFault why) {
  halted_ = true;
  ++faultCount_;
  return why;
}

std::variant<PushResult, RingFault> ReleaseRingProducer::push(uint64_t releaseId) {
  if (halted_) {
    return RingFault::Halted;
  }
  // Acquire: the guest finished reading a slot before it advanced cons past it, so once we see
  // the advance we may overwrite the slot.
  const uint32_t cons = field(header_, CONS_AT).load(std::memory_order_acquire);
  const uint32_t used = prod_ - cons;
  if (used > RELEASE_RING_SIZE) {
    // The guest claims to have consumed ids we never produced. Pushing on would overwrite
    // entries it has not read (and lose the release ids of the resources in them).
    return fault(RingFault::ConsumerOutOfRange);
  }
  if (used == RELEASE_RING_SIZE) {
    return PushResult{PushStatus::Full, 0};
  }

  const size_t itemAt = offsetof(QXLReleaseRing, items) +
                        (prod_ & (RELEASE_RING_SIZE - 1)) * sizeof(QXLReleaseRing::items[0]);
  std::memcpy(header_ + itemAt, &releaseId, sizeof(releaseId));

  ++prod_;
  // Release: the id is in place before the guest can see prod cover it.
  field(header_, PROD_AT).store(prod_, std::memory_order_release);
  // SPICE_RING_PUSH's barrier, mirroring the pop side.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint32_t notifyOnProd = field(header_, NOTIFY_ON_PROD_AT).load(std::memory_order_relaxed);
  return PushResult{PushStatus::Pushed,
                    prod_ == notifyOnProd ? uint32_t{QXL_INTERRUPT_DISPLAY} : 0};
}

void ReleaseRingProducer::reset(uint32_t startIndex) {
  initHeader(header_, RELEASE_RING_SIZE, startIndex);
  prod_ = startIndex;
  halted_ = false;
}

}  // namespace spicebox::qxl
