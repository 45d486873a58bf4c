// Runs in: spicebox-guestsim (unsandboxed). Input: none; names of attack.h's attacks.
#include "tools/guestsim/attack.h"

#include <type_traits>

namespace spicebox::guestsim {

namespace {

std::string_view nameOf(IoAttack a) {
  switch (a) {
    case IoAttack::UpdateAreaSurfaceOutOfRange:
      return "update-area-surface-out-of-range";
    case IoAttack::UpdateAreaUnordered:
      return "update-area-unordered";
    case IoAttack::UpdateAreaNegative:
      return "update-area-negative";
    case IoAttack::UpdateAreaOutsideTheSurface:
      return "update-area-outside-the-surface";
    case IoAttack::UpdateAreaChangedWhileRead:
      return "update-area-changed-while-read";
    case IoAttack::CreatePrimaryWhileOneExists:
      return "create-primary-while-one-exists";
    case IoAttack::MemslotAddOverALiveSlot:
      return "memslot-add-over-a-live-slot";
    case IoAttack::MemslotAddSlotIdOutOfRange:
      return "memslot-add-slot-id-out-of-range";
    case IoAttack::MemslotAddStartAfterEnd:
      return "memslot-add-start-after-end";
    case IoAttack::MemslotAddOutsideTheBars:
      return "memslot-add-outside-the-bars";
    case IoAttack::MemslotDelNeverAdded:
      return "memslot-del-never-added";
    case IoAttack::UnknownIoPorts:
      return "unknown-io-ports";
    case IoAttack::GuestLogWithoutNul:
      return "guest-log-without-nul";
    case IoAttack::IoFlood:
      return "io-flood";
  }
  return "unknown-io-attack";
}

std::string_view nameOf(MemslotAttack a) {
  switch (a) {
    case MemslotAttack::MemslotChurn:
      return "memslot-churn";
    case MemslotAttack::SlotInUseDeletedAndReAdded:
      return "slot-in-use-deleted-and-re-added";
  }
  return "unknown-memslot-attack";
}

std::string_view nameOf(MonitorsAttack a) {
  switch (a) {
    case MonitorsAttack::CountLargerThanItsData:
      return "monitors-config-count-larger-than-its-data";
    case MonitorsAttack::MaxAllowedLargerThanItsData:
      return "monitors-config-max-allowed-larger-than-its-data";
    case MonitorsAttack::AddressOutsideEverySlot:
      return "monitors-config-outside-every-slot";
    case MonitorsAttack::CountChangedWhileRead:
      return "monitors-config-count-changed-while-read";
  }
  return "unknown-monitors-attack";
}

std::string_view nameOf(ResourceAttack) {
  return "surfaces-beyond-the-renderers-memory";
}

std::string_view nameOf(RaceAttack) {
  return "drawable-changed-while-read";
}

std::string_view nameOf(PrimaryAttack) {
  return "absurd-primaries";
}

std::string_view nameOf(RingAttack a) {
  switch (a) {
    case RingAttack::CommandRingProducerFarAhead:
      return "command-ring-producer-far-ahead";
    case RingAttack::CommandRingProducerMovedBack:
      return "command-ring-producer-moved-back";
    case RingAttack::CursorRingProducerFarAhead:
      return "cursor-ring-producer-far-ahead";
    case RingAttack::ReleaseRingConsumerAhead:
      return "release-ring-consumer-ahead";
    case RingAttack::CommandRingProducerChangedWhileRead:
      return "command-ring-producer-changed-while-read";
  }
  return "unknown-ring-attack";
}

std::string_view nameOf(TimeAttack) {
  return "stroke-taking-seconds";
}

std::string_view nameOf(const CommandAttack& a) {
  return hostileCommandName(a.kind);
}

}  // namespace

std::string_view attackName(const Attack& attack) {
  return std::visit([](const auto& a) { return nameOf(a); }, attack);
}

}  // namespace spicebox::guestsim
