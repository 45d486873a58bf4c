// Runs in: spicebox-guestsim (unsandboxed). Input: ScenarioOptions (trusted). See the header.
#include "tools/guestsim/hostile-scenario.h"

#include <deque>
#include <map>
#include <random>
#include <vector>

#include "base/assert.h"

namespace spicebox::guestsim {

namespace {

// Every attack that leaves the display up, once (a round's catalogue).
std::vector<Attack> nonHaltingAttacks() {
  std::vector<Attack> all;
  for (uint8_t k = 0; k < HOSTILE_COMMAND_COUNT; ++k) {
    const auto kind = static_cast<HostileCommand>(k);
    all.emplace_back(CommandAttack{kind, attackBase(kind)});
  }
  for (uint8_t k = 0; k < IO_ATTACK_COUNT; ++k)
    all.emplace_back(static_cast<IoAttack>(k));
  for (uint8_t k = 0; k < MEMSLOT_ATTACK_COUNT; ++k)
    all.emplace_back(static_cast<MemslotAttack>(k));
  for (uint8_t k = 0; k < MONITORS_ATTACK_COUNT; ++k)
    all.emplace_back(static_cast<MonitorsAttack>(k));
  all.emplace_back(ResourceAttack::SurfacesBeyondTheRenderersMemory);
  for (int i = 0; i < HOSTILE_RACES_PER_ROUND; ++i)
    all.emplace_back(RaceAttack::DrawableChangedWhileRead);
  return all;
}

class HostileScenario final : public Scenario {
 public:
  explicit HostileScenario(const ScenarioOptions& options)
      : options_(options), rng_(options.seed * 0x9e3779b97f4a7c15ull + 0x686f7374696c65ull) {}

  double commandsPerSecond() const override { return options_.rate; }

  std::optional<GuestAction> next() override {
    for (;;) {
      while (!queue_.empty()) {
        GuestAction action = std::move(queue_.front());
        queue_.pop_front();
        // Made either way, so that both modes draw the same random numbers.
        if (options_.validOnly && std::holds_alternative<Attack>(action))
          continue;
        return action;
      }
      if (!refill())
        return std::nullopt;
    }
  }

 private:
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(rng_() % n); }

  bool bounded() const { return options_.maxCommands != 0; }
  uint64_t left() const { return options_.maxCommands - commands_; }

  // Queues the next actions; false at the end of a bounded run.
  bool refill() {
    if (!round_) {
      if (bounded() && left() == 0)
        return false;
      startRound();
    }
    // Attacks due before the next valid command: only once the round's primary exists (the
    // stress scenario's first action creates it).
    if (primaryCreated_) {
      auto due = plan_.find(commandsInRound_);
      if (due != plan_.end()) {
        for (Attack& a : due->second)
          queue_.emplace_back(std::move(a));
        plan_.erase(due);
        return true;
      }
    }
    std::optional<GuestAction> action = round_->next();
    if (!action) {
      endRound();
      return true;
    }
    if (std::holds_alternative<Command>(*action)) {
      ++commands_;
      ++commandsInRound_;
    } else {
      primaryCreated_ = true;  // stress begins with its CreatePrimarySurface
    }
    queue_.push_back(std::move(*action));
    return true;
  }

  void startRound() {
    const uint64_t commands =
        bounded() ? std::min(left(), HOSTILE_ROUND_COMMANDS) : HOSTILE_ROUND_COMMANDS;
    ScenarioOptions stress;
    stress.seed = options_.seed * 1000003 + roundNumber_;
    stress.maxCommands = commands;
    stress.referenceFormatsOnly = options_.referenceFormatsOnly;
    round_ = makeScenario("stress", stress);
    commandsInRound_ = 0;
    primaryCreated_ = false;
    // Each attack goes before a seeded valid command of this round, never before the first
    // (the primary is created right before it).
    plan_.clear();
    for (Attack& a : nonHaltingAttacks()) {
      const uint64_t before = commands > 1 ? 1 + below(static_cast<uint32_t>(commands - 1)) : 1;
      plan_[before].push_back(std::move(a));
    }
  }

  void endRound() {
    round_.reset();
    ++roundNumber_;
    // Attacks planned past the round's end (a short last round) are dropped with it.
    plan_.clear();
    if (bounded() && left() == 0)
      return;  // the last round ends with its valid picture
    queue_.emplace_back(Attack{PrimaryAttack::AbsurdPrimaries});
    for (uint8_t k = 0; k < RING_ATTACK_COUNT; ++k) {
      queue_.emplace_back(Attack{static_cast<RingAttack>(k)});
      queue_.emplace_back(DeviceReset{});
    }
  }

  ScenarioOptions options_;
  std::mt19937_64 rng_;
  std::deque<GuestAction> queue_;
  std::unique_ptr<Scenario> round_;  // the running round's valid commands (a stress scenario)
  std::map<uint64_t, std::vector<Attack>> plan_;  // by the valid command they go before
  uint64_t roundNumber_ = 0;
  uint64_t commands_ = 0;  // valid commands so far
  uint64_t commandsInRound_ = 0;
  bool primaryCreated_ = false;
};

class ExpensiveScenario final : public Scenario {
 public:
  explicit ExpensiveScenario(const ScenarioOptions& options) : options_(options) {
    ScenarioOptions stress = options;
    stress.validOnly = false;
    valid_ = makeScenario("stress", stress);
  }

  double commandsPerSecond() const override { return options_.rate; }

  std::optional<GuestAction> next() override {
    if (expensiveDue_) {
      expensiveDue_ = false;
      if (!options_.validOnly)
        return GuestAction(Attack{TimeAttack::StrokeTakingSeconds});
    }
    std::optional<GuestAction> action = valid_->next();
    if (action && std::holds_alternative<Command>(*action) && ++commands_ % EXPENSIVE_EVERY == 0)
      expensiveDue_ = true;
    return action;
  }

 private:
  ScenarioOptions options_;
  std::unique_ptr<Scenario> valid_;
  uint64_t commands_ = 0;
  bool expensiveDue_ = false;
};

}  // namespace

std::unique_ptr<Scenario> makeExpensiveScenario(const ScenarioOptions& options) {
  return std::make_unique<ExpensiveScenario>(options);
}

std::unique_ptr<Scenario> makeHostileScenario(const ScenarioOptions& options) {
  return std::make_unique<HostileScenario>(options);
}

}  // namespace spicebox::guestsim
