// Runs in: spicebox-guestsim (unsandboxed). Input: attacks (attack.h, trusted), and what the
// device writes back (int_pending, the ROM's slot generation, release chains), checked as the
// driver checks it.
//
// The hostile half of the guest driver: carries out each attack of attack.h through the driver
// (driver.h's hostile steps) and the VMM's IO port, and checks what the guest can see of the
// device's answer. An attack the device must notice raises QXL_INTERRUPT_ERROR (the device's
// "guest bug" report, read from int_pending right after the IO the attack waits on); a hostile
// command must come back on the release ring (or, when its release info translates nowhere, be
// counted by the device and freed by the guest). Anything else is logged as an attack not met
// and counted: guestsim then exits with status 1. What the renderer makes of each command is in
// the broker's log (the renderer's "guest command rejected" lines), which tests read.
//
// Every attack ends with a flush (QXL_IO_FLUSH_SURFACES_ASYNC: done once everything queued
// before it was drawn or refused), so that the next action starts from a quiet device and the
// memory an attack used can be reused.
#pragma once

#include <spice/qxl_dev.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "tools/guestsim/attack.h"
#include "tools/guestsim/driver.h"
#include "tools/guestsim/hostile-commands.h"
#include "tools/guestsim/racer.h"

namespace spicebox::guestsim {

struct AttackStats {
  uint64_t attacks = 0;
  uint64_t unmet = 0;       // attacks whose effect the guest could check and did not see
  uint64_t raceRounds = 0;  // rounds of rewrites the racer made while the device read
  std::map<std::string, uint64_t> byName;
};

class Attacker final : private GuestPoke {
 public:
  // `driver` is initialised (Driver::init) and outlives this.
  explicit Attacker(Driver& driver);
  ~Attacker() override;
  Attacker(const Attacker&) = delete;
  Attacker& operator=(const Attacker&) = delete;

  void perform(const Attack& attack);
  // DeviceReset: Driver::resetDevice(), and everything this attacker had in guest memory (its
  // window slot, its scratch surface) is gone with it.
  void reset();

  const AttackStats& stats() const { return stats_; }

 private:
  void run(const CommandAttack& attack, std::string_view name);
  void run(IoAttack attack, std::string_view name);
  void run(MemslotAttack attack, std::string_view name);
  void run(MonitorsAttack attack, std::string_view name);
  void run(ResourceAttack attack, std::string_view name);
  void run(RaceAttack attack, std::string_view name);
  void run(PrimaryAttack attack, std::string_view name);
  void run(RingAttack attack, std::string_view name);
  void run(TimeAttack attack, std::string_view name);

  // GuestPoke: our blocks and the window.
  std::byte* host(uint64_t addr, size_t size) const override;
  AddressCodec codec() const override;
  Window window() const override;

  void ensureScratch();
  void ensureWindow();
  uint8_t addSlot(uint8_t id, uint64_t start, uint64_t end);
  // Waits until everything queued before it is done, then walks the release ring.
  void flush();
  // Waits until every IO write so far was answered (after a flood the device refused some of).
  void drainIo();
  // Runs `act`, which ends with an IO write the VMM waits on; the device must have raised
  // QXL_INTERRUPT_ERROR by then. Returns whether it did.
  template <typename F>
  bool expectError(std::string_view name, F&& act);
  // The same, for attacks the device must accept (or ignore) without an error.
  template <typename F>
  bool expectNoError(std::string_view name, F&& act);
  void unmet(std::string_view name, std::string_view why);
  // QXL_IO_CREATE_PRIMARY_ASYNC with `create` in QXLRam.create_surface.
  void createPrimary(const QXLSurfaceCreate& create);
  void updateArea(uint32_t surfaceId, QXLRect area, bool wait);
  void monitorsConfig(uint64_t addr);
  template <typename T>
  void store(size_t offsetInQxlRam, const T& value);

  Driver& driver_;
  Vmm& vmm_;
  Racer racer_;
  bool scratch_ = false;  // the scratch surface exists
  std::optional<GuestBlock> windowBlock_;
  uint64_t windowAddr_ = 0;  // the window's first byte, addressed through WINDOW_SLOT
  AttackStats stats_;
};

}  // namespace spicebox::guestsim
