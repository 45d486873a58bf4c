// Runs in: tests. Input: a byte buffer laid out like the QXL RAM BAR, written by a simulated guest
// that follows spice/ipc_ring.h when it behaves and lies about its indices when it does not.
#include "broker/qxl/ring.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <deque>
#include <limits>
#include <vector>

namespace spicebox::qxl {
namespace {

// Where QXLRam sits in the RAM BAR (QXLRom::ram_header_offset); not page 0, like QEMU.
constexpr uint64_t RAM_HEADER_OFFSET = 4096;
constexpr uint32_t CMD_SIZE = QXL_COMMAND_RING_SIZE;
constexpr uint32_t RELEASE_SIZE = QXL_RELEASE_RING_SIZE;

// The guest's side of the rings: plain loads and stores on the shared buffer, the way
// SPICE_RING_PUSH / SPICE_RING_POP do them (single-threaded here, so no barriers needed).
class GuestRam {
 public:
  GuestRam() : storage_((RAM_HEADER_OFFSET + sizeof(QXLRam) + 7) / 8, 0) {}

  std::span<std::byte> bar() {
    return {reinterpret_cast<std::byte*>(storage_.data()), storage_.size() * 8};
  }
  QXLRam& ram() { return *reinterpret_cast<QXLRam*>(bar().data() + RAM_HEADER_OFFSET); }
  QXLCommandRing& cmdRing() { return ram().cmd_ring; }

  // SPICE_RING_PUSH on a command ring: returns whether the guest would kick the device.
  template <typename Ring>
  bool pushCommand(Ring& ring, uint64_t addr, uint32_t type) {
    QXLCommand command{addr, type, 0};
    std::memcpy(&ring.items[ring.prod % CMD_SIZE], &command, sizeof(command));
    ring.prod = ring.prod + 1;
    return ring.prod == ring.notify_on_prod;
  }

  // SPICE_RING_POP on the release ring.
  std::optional<uint64_t> popRelease() {
    QXLReleaseRing& ring = ram().release_ring;
    if (ring.cons == ring.prod) {
      return std::nullopt;
    }
    uint64_t id;
    std::memcpy(&id, &ring.items[ring.cons % RELEASE_SIZE], sizeof(id));
    ring.cons = ring.cons + 1;
    return id;
  }

 private:
  std::vector<uint64_t> storage_;  // uint64_t: the BAR mapping is page-aligned, so are we
};

CommandRingConsumer attachCommandRing(GuestRam& guest,
                                      CommandRingKind kind = CommandRingKind::Display) {
  uint64_t at = RAM_HEADER_OFFSET +
                (kind == CommandRingKind::Display ? COMMAND_RING_OFFSET : CURSOR_RING_OFFSET);
  auto attached = CommandRingConsumer::attach(guest.bar(), at, kind);
  REQUIRE(std::holds_alternative<CommandRingConsumer>(attached));
  return std::get<CommandRingConsumer>(std::move(attached));
}

ReleaseRingProducer attachReleaseRing(GuestRam& guest) {
  auto attached = ReleaseRingProducer::attach(guest.bar(), RAM_HEADER_OFFSET + RELEASE_RING_OFFSET);
  REQUIRE(std::holds_alternative<ReleaseRingProducer>(attached));
  return std::get<ReleaseRingProducer>(std::move(attached));
}

RingCommand popCommand(CommandRingConsumer& ring) {
  PopResult result = ring.pop();
  REQUIRE(std::holds_alternative<Popped>(result));
  return std::get<Popped>(result).command;
}

RingFault popFault(CommandRingConsumer& ring) {
  PopResult result = ring.pop();
  REQUIRE(std::holds_alternative<RingFault>(result));
  return std::get<RingFault>(result);
}

PushResult pushRelease(ReleaseRingProducer& ring, uint64_t id) {
  auto result = ring.push(id);
  REQUIRE(std::holds_alternative<PushResult>(result));
  return std::get<PushResult>(result);
}

// ---- attach ----

TEST_CASE("attach initialises the ring header as SPICE_RING_INIT does", "[ring]") {
  GuestRam guest;
  std::memset(&guest.cmdRing(), 0xA5, sizeof(QXLCommandRing));  // leftovers from a previous boot
  CommandRingConsumer ring = attachCommandRing(guest);
  CHECK(guest.cmdRing().num_items == CMD_SIZE);
  CHECK(guest.cmdRing().prod == 0);
  CHECK(guest.cmdRing().cons == 0);
  CHECK(guest.cmdRing().notify_on_prod == 1);
  CHECK(guest.cmdRing().notify_on_cons == 0);
  CHECK(std::holds_alternative<RingEmpty>(ring.pop()));
}

TEST_CASE("ring header outside the BAR is refused before any access", "[ring][hostile]") {
  GuestRam guest;
  std::span<std::byte> bar = guest.bar();
  const uint64_t lastFit = bar.size() - sizeof(QXLCommandRing);
  REQUIRE(lastFit % 4 == 0);

  auto fits = CommandRingConsumer::attach(bar, lastFit, CommandRingKind::Display);
  CHECK(std::holds_alternative<CommandRingConsumer>(fits));

  for (uint64_t offset : {lastFit + 4, uint64_t{bar.size()}, uint64_t{bar.size()} + 1,
                          std::numeric_limits<uint64_t>::max(),
                          std::numeric_limits<uint64_t>::max() - sizeof(QXLCommandRing) + 1}) {
    auto refused = CommandRingConsumer::attach(bar, offset, CommandRingKind::Display);
    REQUIRE(std::holds_alternative<RingAttachError>(refused));
    CHECK(std::get<RingAttachError>(refused) == RingAttachError::OutsideBar);
  }
  auto releaseRefused = ReleaseRingProducer::attach(bar, bar.size() - sizeof(QXLReleaseRing) + 4);
  REQUIRE(std::holds_alternative<RingAttachError>(releaseRefused));
  CHECK(std::get<RingAttachError>(releaseRefused) == RingAttachError::OutsideBar);

  auto tooSmall = CommandRingConsumer::attach(bar.first(sizeof(QXLCommandRing) - 1), 0,
                                              CommandRingKind::Display);
  CHECK(std::get<RingAttachError>(tooSmall) == RingAttachError::OutsideBar);
}

TEST_CASE("misaligned ring header is refused", "[ring]") {
  GuestRam guest;
  auto refused = CommandRingConsumer::attach(guest.bar(), 1, CommandRingKind::Display);
  REQUIRE(std::holds_alternative<RingAttachError>(refused));
  CHECK(std::get<RingAttachError>(refused) == RingAttachError::Misaligned);
}

// ---- command ring: behaviour ----

TEST_CASE("commands come out in order across 2^32 and many ring laps", "[ring]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  // Start just below 2^32 so the free-running indices wrap mid-test; 97 laps of a 32-item ring.
  const uint32_t start = std::numeric_limits<uint32_t>::max() - 40;
  ring.reset(start);
  uint64_t nextToPush = 0;
  uint64_t nextToPop = 0;
  const uint64_t total = 97 * CMD_SIZE + 5;
  size_t round = 0;
  while (nextToPop < total) {
    // Vary the fill level so every slot index and both empty and full are visited.
    const uint32_t fill = static_cast<uint32_t>(round * 7 % (CMD_SIZE + 1));
    while (nextToPush < total && nextToPush - nextToPop < fill) {
      guest.pushCommand(guest.cmdRing(), 0x1000 + nextToPush, QXL_CMD_DRAW);
      ++nextToPush;
    }
    PopBatch batch = ring.popBatch(round % 5 + 1);
    for (const RingCommand& command : batch.commands) {
      REQUIRE(command == RingCommand{0x1000 + nextToPop, QXL_CMD_DRAW});
      ++nextToPop;
    }
    REQUIRE_FALSE(batch.fault);
    REQUIRE(guest.cmdRing().cons == ring.consumed());
    ++round;
  }
  CHECK(ring.consumed() == static_cast<uint32_t>(start + total));
  CHECK(ring.consumed() < start);  // wrapped past 2^32
  CHECK(ring.faultCount() == 0);
}

TEST_CASE("a full ring (prod - cons == size) is legitimate and drains completely", "[ring]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  for (uint32_t i = 0; i < CMD_SIZE; ++i) {
    guest.pushCommand(guest.cmdRing(), i, QXL_CMD_DRAW);
  }
  PopBatch batch = ring.popBatch(1000);
  CHECK(batch.commands.size() == CMD_SIZE);
  CHECK(batch.empty);
  CHECK_FALSE(batch.fault);
  CHECK(batch.commands.back().addr == CMD_SIZE - 1);
}

TEST_CASE("popBatch does bounded work whatever the ring holds", "[ring]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  for (uint32_t i = 0; i < CMD_SIZE; ++i) {
    guest.pushCommand(guest.cmdRing(), i, QXL_CMD_DRAW);
  }
  PopBatch none = ring.popBatch(0);
  CHECK(none.commands.empty());
  CHECK_FALSE(none.empty);
  CHECK(guest.cmdRing().cons == 0);

  PopBatch five = ring.popBatch(5);
  CHECK(five.commands.size() == 5);
  CHECK_FALSE(five.empty);
  CHECK(guest.cmdRing().cons == 5);
}

TEST_CASE("cursor ring is consumed like the command ring and raises the cursor interrupt",
          "[ring]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest, CommandRingKind::Cursor);
  guest.ram().cursor_ring.notify_on_cons = 1;
  guest.pushCommand(guest.ram().cursor_ring, 0xC0, QXL_CMD_CURSOR);
  PopResult result = ring.pop();
  REQUIRE(std::holds_alternative<Popped>(result));
  CHECK(std::get<Popped>(result).command == RingCommand{0xC0, QXL_CMD_CURSOR});
  CHECK(std::get<Popped>(result).interrupts == QXL_INTERRUPT_CURSOR);
  CHECK(guest.cmdRing().prod == 0);  // the display ring was not touched
}

// ---- command ring: notify handshake ----

TEST_CASE("guest kicks the device exactly when the device armed notify_on_prod", "[ring][notify]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  CHECK(guest.pushCommand(guest.cmdRing(), 1, QXL_CMD_DRAW));  // SPICE_RING_INIT arms the first
  CHECK_FALSE(guest.pushCommand(guest.cmdRing(), 2, QXL_CMD_DRAW));  // device not waiting
  popCommand(ring);
  CHECK_FALSE(guest.pushCommand(guest.cmdRing(), 3, QXL_CMD_DRAW));  // device still has work
  CHECK(ring.popBatch(10).empty);  // drained: device asks to be told of the next push
  CHECK(guest.cmdRing().notify_on_prod == guest.cmdRing().prod + 1);
  CHECK(guest.pushCommand(guest.cmdRing(), 4, QXL_CMD_DRAW));
  CHECK_FALSE(guest.pushCommand(guest.cmdRing(), 5, QXL_CMD_DRAW));
}

TEST_CASE("pop requests an interrupt exactly when cons reaches the guest's notify_on_cons",
          "[ring][notify]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  for (uint32_t i = 0; i < CMD_SIZE; ++i) {
    guest.pushCommand(guest.cmdRing(), i, QXL_CMD_DRAW);
  }
  guest.cmdRing().notify_on_cons = 3;  // SPICE_RING_PROD_WAIT: full guest waits for room
  std::vector<uint32_t> interrupts;
  for (int i = 0; i < 5; ++i) {
    PopResult result = ring.pop();
    REQUIRE(std::holds_alternative<Popped>(result));
    interrupts.push_back(std::get<Popped>(result).interrupts);
  }
  CHECK(interrupts == std::vector<uint32_t>{0, 0, QXL_INTERRUPT_DISPLAY, 0, 0});

  guest.cmdRing().notify_on_cons = 7;
  PopBatch batch = ring.popBatch(4);
  CHECK(batch.interrupts == QXL_INTERRUPT_DISPLAY);
}

// ---- command ring: hostile guest ----

TEST_CASE("attack: producer far ahead halts the ring, nothing read, until reset",
          "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  guest.pushCommand(guest.cmdRing(), 1, QXL_CMD_DRAW);
  popCommand(ring);
  guest.cmdRing().prod = 1 + CMD_SIZE + 1;  // one more than the ring can hold

  CHECK(popFault(ring) == RingFault::ProducerOutOfRange);
  CHECK(ring.halted());
  CHECK(guest.cmdRing().cons == 1);  // nothing consumed
  // Even a now-sane ring is not read again until the device is reset.
  guest.cmdRing().prod = 2;
  CHECK(popFault(ring) == RingFault::Halted);
  PopBatch batch = ring.popBatch(10);
  CHECK(batch.commands.empty());
  CHECK(batch.fault == RingFault::Halted);
  CHECK(ring.faultCount() == 1);  // one hostile state, however often it is asked about

  ring.reset();  // QXL_IO_RESET
  CHECK_FALSE(ring.halted());
  guest.pushCommand(guest.cmdRing(), 7, QXL_CMD_DRAW);
  CHECK(popCommand(ring) == RingCommand{7, QXL_CMD_DRAW});
  CHECK(ring.faultCount() == 1);
}

TEST_CASE("attack: producer moved backwards behind the consumer halts the ring",
          "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  for (int i = 0; i < 5; ++i) {
    guest.pushCommand(guest.cmdRing(), i, QXL_CMD_DRAW);
  }
  ring.popBatch(5);
  guest.cmdRing().prod = 3;  // would replay commands already handed on
  CHECK(popFault(ring) == RingFault::ProducerOutOfRange);
}

TEST_CASE("attack: producer far ahead across the 2^32 wrap halts the ring", "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  ring.reset(std::numeric_limits<uint32_t>::max() - 3);
  guest.cmdRing().prod = CMD_SIZE;  // wrapped distance CMD_SIZE + 4
  CHECK(popFault(ring) == RingFault::ProducerOutOfRange);
}

TEST_CASE("attack: consumer index moved by the guest is ignored and rewritten", "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  for (uint32_t i = 0; i < 4; ++i) {
    guest.pushCommand(guest.cmdRing(), 100 + i, QXL_CMD_DRAW);
  }
  CHECK(popCommand(ring).addr == 100);
  guest.cmdRing().cons = 0xDEAD0000;  // try to make the device skip or replay
  CHECK(popCommand(ring).addr == 101);
  CHECK(guest.cmdRing().cons == 2);
  guest.cmdRing().cons = 0;
  CHECK(popCommand(ring).addr == 102);
  CHECK(popCommand(ring).addr == 103);
  CHECK(std::holds_alternative<RingEmpty>(ring.pop()));
  CHECK(ring.faultCount() == 0);
}

TEST_CASE("attack: num_items rewritten by the guest does not change the ring size",
          "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  guest.cmdRing().num_items = 0x80000000;  // "the ring is huge": items far outside it
  for (uint32_t i = 0; i < CMD_SIZE + 3; ++i) {
    guest.pushCommand(guest.cmdRing(), i, QXL_CMD_DRAW);  // guest laps its own entries
  }
  CHECK(popFault(ring) == RingFault::ProducerOutOfRange);
}

TEST_CASE("attack: item rewritten after the pop does not change the command handed on",
          "[ring][hostile]") {
  GuestRam guest;
  CommandRingConsumer ring = attachCommandRing(guest);
  guest.pushCommand(guest.cmdRing(), 0xAAAA, QXL_CMD_DRAW);
  RingCommand command = popCommand(ring);
  QXLCommand changed{0xBBBB, QXL_CMD_SURFACE, 0};
  std::memcpy(&guest.cmdRing().items[0], &changed, sizeof(changed));
  CHECK(command == RingCommand{0xAAAA, QXL_CMD_DRAW});  // a copy, not a view
}

// ---- release ring ----

TEST_CASE("release ids reach the guest in order across 2^32 and many ring laps", "[ring]") {
  GuestRam guest;
  ReleaseRingProducer ring = attachReleaseRing(guest);
  ring.reset(std::numeric_limits<uint32_t>::max() - 5);
  std::deque<uint64_t> inFlight;
  uint64_t next = 0xFEED000000000000ull;
  for (uint32_t round = 0; round < 300; ++round) {
    for (uint32_t i = 0; i < round % (RELEASE_SIZE + 2); ++i) {
      PushResult pushed = pushRelease(ring, next);
      if (pushed.status == PushStatus::Full) {
        break;
      }
      inFlight.push_back(next++);
    }
    for (uint32_t i = 0; i < round % 4 + 1; ++i) {
      std::optional<uint64_t> id = guest.popRelease();
      if (!id) {
        break;
      }
      REQUIRE(*id == inFlight.front());
      inFlight.pop_front();
    }
  }
  CHECK(ring.produced() < 10000);  // wrapped past 2^32
  CHECK(ring.faultCount() == 0);
}

TEST_CASE("release ring full: reported, nothing overwritten, pushes resume after a consume",
          "[ring]") {
  GuestRam guest;
  ReleaseRingProducer ring = attachReleaseRing(guest);
  for (uint64_t id = 1; id <= RELEASE_SIZE; ++id) {
    CHECK(pushRelease(ring, id).status == PushStatus::Pushed);
  }
  std::vector<std::byte> before(sizeof(QXLReleaseRing));
  std::memcpy(before.data(), &guest.ram().release_ring, before.size());
  CHECK(pushRelease(ring, 999).status == PushStatus::Full);
  CHECK(std::memcmp(before.data(), &guest.ram().release_ring, before.size()) == 0);

  CHECK(guest.popRelease() == uint64_t{1});
  CHECK(pushRelease(ring, 999).status == PushStatus::Pushed);
  for (uint64_t id = 2; id <= RELEASE_SIZE; ++id) {
    CHECK(guest.popRelease() == id);
  }
  CHECK(guest.popRelease() == uint64_t{999});
  CHECK(guest.popRelease() == std::nullopt);
}

TEST_CASE("release push requests an interrupt exactly when prod reaches notify_on_prod",
          "[ring][notify]") {
  GuestRam guest;
  ReleaseRingProducer ring = attachReleaseRing(guest);
  CHECK(pushRelease(ring, 1).interrupts == QXL_INTERRUPT_DISPLAY);  // SPICE_RING_INIT: 1
  CHECK(pushRelease(ring, 2).interrupts == 0);
  guest.ram().release_ring.notify_on_prod = 4;  // guest waits for the 4th id
  CHECK(pushRelease(ring, 3).interrupts == 0);
  CHECK(pushRelease(ring, 4).interrupts == QXL_INTERRUPT_DISPLAY);
  CHECK(pushRelease(ring, 5).interrupts == 0);
}

TEST_CASE("attack: guest release cons beyond prod halts the release ring", "[ring][hostile]") {
  GuestRam guest;
  ReleaseRingProducer ring = attachReleaseRing(guest);
  pushRelease(ring, 1);
  guest.ram().release_ring.cons = 5;  // "consumed" ids never produced: prod - cons wraps
  auto result = ring.push(2);
  REQUIRE(std::holds_alternative<RingFault>(result));
  CHECK(std::get<RingFault>(result) == RingFault::ConsumerOutOfRange);
  CHECK(guest.ram().release_ring.prod == 1);  // nothing written
  guest.ram().release_ring.cons = 1;
  CHECK(std::get<RingFault>(ring.push(2)) == RingFault::Halted);
  CHECK(ring.faultCount() == 1);
  ring.reset();
  CHECK(pushRelease(ring, 2).status == PushStatus::Pushed);
}

TEST_CASE("attack: guest release cons moved backwards cannot make the device overwrite",
          "[ring][hostile]") {
  GuestRam guest;
  ReleaseRingProducer ring = attachReleaseRing(guest);
  for (uint64_t id = 1; id <= RELEASE_SIZE; ++id) {
    pushRelease(ring, id);
  }
  guest.popRelease();
  guest.ram().release_ring.cons = 0;  // un-consume: the slot is not free after all
  CHECK(pushRelease(ring, 99).status == PushStatus::Full);
  guest.ram().release_ring.cons = 0xFFFFFFF0;  // further back than the ring can be
  auto result = ring.push(99);
  REQUIRE(std::holds_alternative<RingFault>(result));
  CHECK(std::get<RingFault>(result) == RingFault::ConsumerOutOfRange);
}

}  // namespace
}  // namespace spicebox::qxl
