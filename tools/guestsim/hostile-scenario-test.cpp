// Runs in: guestsim-scenario-tests. Input: the hostile scenario's own streams. What the stream
// must hold for the hostile tests to mean anything: determinism for a seed, the valid-only
// stream being the hostile one without its attacks, every attack in every round, attacks only
// while a primary exists, and every display-stopping attack followed by a device reset.
#include "tools/guestsim/hostile-scenario.h"

#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <string>

namespace spicebox::guestsim {
namespace {

constexpr uint64_t ROUNDS = 3;
constexpr size_t ACTION_CAP = 100000;

std::vector<GuestAction> stream(uint64_t seed, bool validOnly, uint64_t commands) {
  ScenarioOptions options;
  options.seed = seed;
  options.maxCommands = commands;
  options.validOnly = validOnly;
  auto scenario = makeScenario("hostile", options);
  std::vector<GuestAction> out;
  while (auto action = scenario->next()) {
    out.push_back(std::move(*action));
    REQUIRE(out.size() < ACTION_CAP);
  }
  return out;
}

std::map<std::string, size_t> attackCounts(const std::vector<GuestAction>& actions) {
  std::map<std::string, size_t> counts;
  for (const GuestAction& a : actions)
    if (const auto* attack = std::get_if<Attack>(&a))
      ++counts[std::string(attackName(*attack))];
  return counts;
}

TEST_CASE("hostile-is-deterministic-for-a-seed", "[scenario][hostile]") {
  const auto a = stream(5, false, ROUNDS * HOSTILE_ROUND_COMMANDS);
  CHECK(a == stream(5, false, ROUNDS * HOSTILE_ROUND_COMMANDS));
  CHECK(a != stream(6, false, ROUNDS * HOSTILE_ROUND_COMMANDS));
}

TEST_CASE("valid-only-is-the-hostile-stream-without-its-attacks", "[scenario][hostile]") {
  const auto hostile = stream(9, false, ROUNDS * HOSTILE_ROUND_COMMANDS);
  std::vector<GuestAction> withoutAttacks;
  for (const GuestAction& a : hostile)
    if (!std::holds_alternative<Attack>(a))
      withoutAttacks.push_back(a);
  const auto valid = stream(9, true, ROUNDS * HOSTILE_ROUND_COMMANDS);
  CHECK(withoutAttacks.size() < hostile.size());
  CHECK(valid == withoutAttacks);
  CHECK(attackCounts(valid).empty());
  const auto commands = std::count_if(valid.begin(), valid.end(), [](const GuestAction& a) {
    return std::holds_alternative<Command>(a);
  });
  CHECK(static_cast<uint64_t>(commands) == ROUNDS * HOSTILE_ROUND_COMMANDS);
}

TEST_CASE("hostile-runs-every-attack-in-every-round", "[scenario][hostile]") {
  const auto counts = attackCounts(stream(1, false, ROUNDS * HOSTILE_ROUND_COMMANDS));
  std::set<std::string> expected;
  for (uint8_t k = 0; k < HOSTILE_COMMAND_COUNT; ++k)
    expected.insert(std::string(hostileCommandName(static_cast<HostileCommand>(k))));
  for (uint8_t k = 0; k < IO_ATTACK_COUNT; ++k)
    expected.insert(std::string(attackName(Attack{static_cast<IoAttack>(k)})));
  for (uint8_t k = 0; k < MEMSLOT_ATTACK_COUNT; ++k)
    expected.insert(std::string(attackName(Attack{static_cast<MemslotAttack>(k)})));
  for (uint8_t k = 0; k < MONITORS_ATTACK_COUNT; ++k)
    expected.insert(std::string(attackName(Attack{static_cast<MonitorsAttack>(k)})));
  expected.insert(
      std::string(attackName(Attack{ResourceAttack::SurfacesBeyondTheRenderersMemory})));
  for (const std::string& name : expected) {
    INFO(name);
    CHECK(counts.count(name) == 1);
    CHECK(counts.at(name) == ROUNDS);
  }
  CHECK(counts.at(std::string(attackName(Attack{RaceAttack::DrawableChangedWhileRead}))) ==
        ROUNDS * HOSTILE_RACES_PER_ROUND);
  // The display-stopping ones end every round but the last, which ends with its valid picture.
  CHECK(counts.at(std::string(attackName(Attack{PrimaryAttack::AbsurdPrimaries}))) == ROUNDS - 1);
  for (uint8_t k = 0; k < RING_ATTACK_COUNT; ++k) {
    const std::string name(attackName(Attack{static_cast<RingAttack>(k)}));
    INFO(name);
    CHECK(counts.at(name) == ROUNDS - 1);
  }
}

TEST_CASE("hostile-attacks-only-while-a-primary-exists-and-resets-after-ring-attacks",
          "[scenario][hostile]") {
  const auto actions = stream(3, false, ROUNDS * HOSTILE_ROUND_COMMANDS);
  bool primary = false;  // a primary the attacks may count on
  size_t resets = 0;
  for (size_t i = 0; i < actions.size(); ++i) {
    INFO("action " << i);
    const GuestAction& a = actions[i];
    if (const auto* io = std::get_if<IoEvent>(&a)) {
      if (io->message == WorkerMessage::CreatePrimarySurface)
        primary = true;
    } else if (std::holds_alternative<DeviceReset>(a)) {
      primary = false;
      ++resets;
    } else if (const auto* attack = std::get_if<Attack>(&a)) {
      if (std::holds_alternative<RingAttack>(*attack)) {
        REQUIRE(i + 1 < actions.size());
        CHECK(std::holds_alternative<DeviceReset>(actions[i + 1]));
      } else if (std::holds_alternative<PrimaryAttack>(*attack)) {
        CHECK(primary);
        primary = false;  // it destroys the primary
      } else {
        CHECK(primary);
      }
    }
  }
  CHECK(resets == (ROUNDS - 1) * RING_ATTACK_COUNT);
  CHECK(primary);  // the last round ends with its picture up
}

TEST_CASE("hostile-rounds-are-stress-scenarios-of-their-own", "[scenario][hostile]") {
  // The second round's valid commands are stress's, seeded from the seed and the round.
  const auto valid = stream(4, true, 2 * HOSTILE_ROUND_COMMANDS);
  ScenarioOptions options;
  options.seed = 4 * 1000003 + 1;
  options.maxCommands = HOSTILE_ROUND_COMMANDS;
  auto stress = makeScenario("stress", options);
  std::vector<GuestAction> expected;
  while (auto a = stress->next())
    expected.push_back(std::move(*a));
  size_t lastReset = 0;
  for (size_t i = 0; i < valid.size(); ++i)
    if (std::holds_alternative<DeviceReset>(valid[i]))
      lastReset = i;
  REQUIRE(lastReset != 0);
  const std::vector<GuestAction> secondRound(valid.begin() + static_cast<ptrdiff_t>(lastReset) + 1,
                                             valid.end());
  CHECK(secondRound == expected);
}

}  // namespace
}  // namespace spicebox::guestsim
