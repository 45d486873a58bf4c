// Runs in: spicebox-guestsim (a developer tool and test peer; unsandboxed, trusted input).
// The guest workloads: each scenario is a stream of guest actions in the same tree the recording
// reader produces (spice-record.h), so one materialiser puts both into the BARs and one writer
// records both (--record-out).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tools/guestsim/attack.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

// One thing the guest does next. An IoEvent uses the recorder's vocabulary (WorkerMessage), so a
// scenario and a replayed file drive the guest driver the same way; the driver maps it to the
// QXL IO port writes a real driver makes (CreatePrimarySurface -> QXL_IO_CREATE_PRIMARY with
// the surface in VRAM, Update -> QXL_IO_UPDATE_AREA of the whole primary, Wakeup ->
// QXL_IO_NOTIFY_CMD, Oom -> QXL_IO_NOTIFY_OOM, ...). DeviceReset and Attack come from the
// hostile scenario only (attack.h): they have no place in a recording.
using GuestAction = std::variant<Command, IoEvent, DeviceReset, Attack>;

struct ScenarioOptions {
  // stress, small-fills, fullhd, flash: the random sequence (fullhd: its picture, flash: its
  // colours); same seed, same stream
  uint64_t seed = 1;
  uint64_t maxCommands = 0;  // 0: the scenario's own length (all but all-draws: unbounded)
  // stress, small-fills, fullhd(-bands), flash: commands per second (--rate); 0: the scenario's
  // default (stress 2000, small-fills 200, fullhd 30, flash 0 = as fast as the device takes them)
  double rate = 0;
  // Only what libspice-server's canvas renders as spicebox does, for recordings the oracle
  // must render (--reference-formats); spicebox itself renders all of it. Bitmap sources in
  // 1 bpp and 4 bpp big-endian, 8, 16, 24, 32 bpp and RGBA (it aborts on 1BIT_LE, 4BIT_LE and
  // 8BIT_A), 32 bpp surfaces, ROP3 codes that read all three operands (no handler for the
  // others: abort), ROP3 pattern positions not past the bbox's corner (it reads before the
  // pattern), no A8 text (read one row off). docs/architecture.md has the details.
  bool referenceFormatsOnly = false;
  // hostile, expensive: the same stream with every Attack left out (--valid-only): its valid
  // commands and device resets only, whose pictures the attacks must not change.
  bool validOnly = false;
};

class Scenario {
 public:
  virtual ~Scenario() = default;
  // The next action, or nullopt at the end (all-draws ends by itself; the others run until
  // maxCommands if set, else forever).
  virtual std::optional<GuestAction> next() = 0;
  // Pacing hint for the driver, in commands per second; 0: as fast as the device takes them.
  virtual double commandsPerSecond() const = 0;
};

// Names: "desktop", "all-draws", "stress", and the latency / tear workloads (one command per
// update, a 1024x768 or 1920x1080 primary first):
//   "small-fills": a DRAW_FILL of a solid 8..64 pixel square-ish rectangle, seeded place and
//                  colour, 200 updates/s by default;
//   "fullhd":      a full-screen DRAW_COPY of a 1920x1080 32 bpp bitmap that changes every update
//                  (a photograph-like picture panning: smooth colours, texture, pixel noise),
//                  30 updates/s by default;
//   "fullhd-bands": the same with diagonal colour bands (each row its predecessor shifted: what
//                  a dictionary coder compresses best);
//   "flash":       a full-screen solid DRAW_FILL, never the previous update's colour, as fast as
//                  the device takes them by default.
// And "hostile" (hostile-scenario.h): stress's valid commands with every attack of attack.h;
// "expensive" (the same header): stress's valid commands with a command that takes the renderer
// seconds after every 100 of them.
// Throws std::invalid_argument with the list of known names for anything else.
std::unique_ptr<Scenario> makeScenario(std::string_view name, const ScenarioOptions& options);
std::vector<std::string> scenarioNames();

}  // namespace spicebox::guestsim
