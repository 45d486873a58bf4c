// Runs in: spicebox-guestsim (developer tool and test peer, unsandboxed). Input: ScenarioOptions
// (trusted). A pure generator, like every scenario: no I/O.
//
// `--scenario hostile`: a guest that draws correctly and attacks at the same time. It runs in
// rounds of HOSTILE_ROUND_COMMANDS valid commands, each round a stress scenario of its own
// (seeded from the seed and the round: a 1024x768 primary, then random valid commands). Between
// a round's valid commands, at seeded places, come every attack that leaves the display up:
// each hostile command (hostile-commands.h), each IO, memslot, monitors-config and resource
// attack, and races (attack.h). After a round's last valid command come the attacks that take the
// display down: the primary attacks, then each ring attack, each followed by the DeviceReset a
// driver makes to get its display back; the next round's stress scenario creates the primary again.
// The last round of a bounded run (--count) ends after its valid commands.
//
// With ScenarioOptions::validOnly (--valid-only) the same seed gives the same stream with every
// Attack left out: the same valid commands, IO and device resets at the same places. Both
// streams number their valid commands alike (attacks are not commands), so guestsim's snapshot
// after valid command N is comparable between them, pixel for pixel.
#pragma once

#include <cstdint>
#include <memory>

#include "tools/guestsim/scenario.h"

namespace spicebox::guestsim {

inline constexpr uint64_t HOSTILE_ROUND_COMMANDS = 250;
// How many of each race a round runs: a race is won or lost by timing, so a few tries.
inline constexpr int HOSTILE_RACES_PER_ROUND = 3;

std::unique_ptr<Scenario> makeHostileScenario(const ScenarioOptions& options);

// `--scenario expensive`: stress's valid commands (seeded from the seed), and after every
// EXPENSIVE_EVERY of them TimeAttack::StrokeTakingSeconds, a valid command the renderer needs
// seconds for: against a broker's --batch-deadline of a few hundred milliseconds, each is
// quarantined, and EXPENSIVE_EVERY is small enough that three come within the broker's minute.
// With ScenarioOptions::validOnly the same stream without them.
inline constexpr uint64_t EXPENSIVE_EVERY = 100;
std::unique_ptr<Scenario> makeExpensiveScenario(const ScenarioOptions& options);

}  // namespace spicebox::guestsim
