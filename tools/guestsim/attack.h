// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed, trusted input).
// The hostile guest's vocabulary: what `--scenario hostile` asks the driver to do besides the
// valid commands and IO of a real driver. Pure data, made by the hostile scenario
// (hostile-scenario.h) and carried out by the attacker (attacker.h), which knows the bytes.
//
// Each attack is named after what it does to the device or the renderer, as the hostile unit
// tests are (STYLE.md); docs/architecture.md ("Hostile guest") lists what each must produce.
#pragma once

#include <cstdint>
#include <string_view>
#include <variant>

#include "tools/guestsim/hostile-commands.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

// A command laid out as a driver would, then corrupted in guest memory before it is published:
// every renderer attack of hostile-commands.h. `base` is the command it starts from.
struct CommandAttack {
  HostileCommand kind;
  Command base;
  bool operator==(const CommandAttack&) const = default;
};

// IO port writes no driver makes, or makes in another order. None stops the display.
enum class IoAttack : uint8_t {
  UpdateAreaSurfaceOutOfRange,  // update_surface 5000: refused by the device
  UpdateAreaUnordered,          // top > bottom: refused by the device
  UpdateAreaNegative,           // left -1: refused by the device
  UpdateAreaOutsideTheSurface,  // past the scratch surface's size: refused by the renderer
  UpdateAreaChangedWhileRead,   // update_area flips between two bad rects during the write
  CreatePrimaryWhileOneExists,  // refused by the device: destroy first
  MemslotAddOverALiveSlot,      // slot 1 again
  MemslotAddSlotIdOutOfRange,   // slots 0 (the device's), 8 and 255
  MemslotAddStartAfterEnd,
  MemslotAddOutsideTheBars,
  MemslotDelNeverAdded,
  UnknownIoPorts,      // ports 24 (QXL_IO_RANGE_SIZE) and 200, waited on: ignored, completed
  GuestLogWithoutNul,  // QXL_IO_LOG with log_buf full of unprintable bytes and no NUL
  IoFlood,             // 200 UPDATE_AREA writes without waiting: beyond 64 the device refuses
};
inline constexpr uint8_t IO_ATTACK_COUNT = static_cast<uint8_t>(IoAttack::IoFlood) + 1;

// Memslot add/delete while the guest draws. None stops the display.
enum class MemslotAttack : uint8_t {
  MemslotChurn,                // a spare slot added and deleted 32 times
  SlotInUseDeletedAndReAdded,  // slot 1 deleted, one command with its old address, re-added
};
inline constexpr uint8_t MEMSLOT_ATTACK_COUNT =
    static_cast<uint8_t>(MemslotAttack::SlotInUseDeletedAndReAdded) + 1;

// QXLMonitorsConfig (QXL_IO_MONITORS_CONFIG_ASYNC) whose count claims more heads than follow it:
// CVE-2017-7506's shape. None stops the display.
enum class MonitorsAttack : uint8_t {
  CountLargerThanItsData,  // count 0xffff, one head, at the very end of a slot
  MaxAllowedLargerThanItsData,
  AddressOutsideEverySlot,
  CountChangedWhileRead,  // count flips between 1 and 0xffff while the config is read
};
inline constexpr uint8_t MONITORS_ATTACK_COUNT =
    static_cast<uint8_t>(MonitorsAttack::CountChangedWhileRead) + 1;

// Guest-chosen sizes against the renderer's memory. Leaves the display up.
enum class ResourceAttack : uint8_t {
  // 16 offscreen surfaces of 2048 x 2048 x 4 bytes (256 MiB), each over the same 16 MiB of guest
  // memory: the guest spends nothing, the renderer keeps each in its own surface memory
  // (--surface-memory) until that is full and refuses the rest; then all are destroyed.
  SurfacesBeyondTheRenderersMemory,
};

// Memory of a published command rewritten by a second thread while the device and the renderer
// read it (on the scratch surface: whatever the renderer ends up seeing draws nowhere else).
enum class RaceAttack : uint8_t {
  DrawableChangedWhileRead,  // surface id, bbox, chunk links and sizes, stride, clip count, type
};

// The primary: absurd QXL_IO_CREATE_PRIMARY parameters, and odd ones the device accepts.
// Destroys the guest's primary: only at the end of a round (a reset follows).
enum class PrimaryAttack : uint8_t {
  AbsurdPrimaries,
};

// Ring indices no driver could have written: the device halts the ring until QXL_IO_RESET
// (QEMU's "guest bug" policy). Always followed by a DeviceReset.
enum class RingAttack : uint8_t {
  CommandRingProducerFarAhead,
  CommandRingProducerMovedBack,
  CursorRingProducerFarAhead,
  ReleaseRingConsumerAhead,
  CommandRingProducerChangedWhileRead,
};
inline constexpr uint8_t RING_ATTACK_COUNT =
    static_cast<uint8_t>(RingAttack::CommandRingProducerChangedWhileRead) + 1;

// A valid command that costs the renderer far more time than a batch may take (the broker's
// --batch-deadline): the broker kills the renderer at the deadline, twice, and quarantines the
// command (released undrawn). Not in `--scenario hostile` (which requires the renderer never
// replaced) but in `--scenario expensive` (hostile-scenario.h).
enum class TimeAttack : uint8_t {
  StrokeTakingSeconds,  // EXPENSIVE_STROKE_POINTS points zigzagging across the primary, XOR
};
inline constexpr uint32_t EXPENSIVE_STROKE_POINTS = 1u << 19;

using Attack = std::variant<CommandAttack, IoAttack, MemslotAttack, MonitorsAttack, ResourceAttack,
                            RaceAttack, PrimaryAttack, RingAttack, TimeAttack>;

// What a driver does after the device stopped answering it (a halted ring): QXL_IO_RESET, then
// its set-up again (int_mask, memslots); every command and surface it had is forgotten. A valid
// action: the hostile scenario's --valid-only stream takes it too, at the same places.
struct DeviceReset {
  bool operator==(const DeviceReset&) const = default;
};

// The attack's name ("command-ring-producer-far-ahead"), as logged and counted.
std::string_view attackName(const Attack& attack);

}  // namespace spicebox::guestsim
