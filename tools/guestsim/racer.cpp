// Runs in: spicebox-guestsim (unsandboxed). Input: locations inside our own BAR mappings.
#include "tools/guestsim/racer.h"

#include "base/assert.h"

namespace spicebox::guestsim {

namespace {

// Byte by byte, relaxed: the bytes are shared with other processes through the BAR memfds, and
// an atomic store is never merged or dropped by the compiler the way a plain one in a loop may be.
void store(std::byte* at, const std::vector<uint8_t>& value) {
  for (size_t i = 0; i < value.size(); ++i)
    std::atomic_ref<uint8_t>(*reinterpret_cast<uint8_t*>(at + i))
        .store(value[i], std::memory_order_relaxed);
}

}  // namespace

Racer::~Racer() {
  if (running())
    stop();
}

void Racer::start(std::vector<Flip> flips) {
  SB_ASSERT(!running(), "a racer runs already");
  for (const Flip& f : flips)
    SB_ASSERT(f.at && f.first.size() == f.second.size(), "a flip without two equal-sized values");
  flips_ = std::move(flips);
  // Every location holds its first value before the thread runs: a reader that comes before the
  // thread's first round still sees one of the two values, never what was there before.
  for (const Flip& f : flips_)
    store(f.at, f.first);
  stop_.store(false);
  rounds_.store(0);
  thread_ = std::thread([this] { run(); });
}

uint64_t Racer::stop() {
  SB_ASSERT(running(), "stop() without start()");
  stop_.store(true);
  thread_.join();
  for (const Flip& f : flips_)
    store(f.at, f.first);
  flips_.clear();
  return rounds_.load();
}

void Racer::run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    for (const Flip& f : flips_)
      store(f.at, f.second);
    for (const Flip& f : flips_)
      store(f.at, f.first);
    rounds_.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace spicebox::guestsim
