// Runs in: guestsim-driver-tests. Input: none. The racer (racer.h): it really flips what it is
// given while it runs, and leaves each location at its first value when stopped.
#include "tools/guestsim/racer.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>

namespace spicebox::guestsim {
namespace {

uint32_t load(const std::byte* at) {
  uint32_t v = 0;
  for (size_t i = 0; i < sizeof v; ++i)
    v |= uint32_t{std::atomic_ref<const uint8_t>(*reinterpret_cast<const uint8_t*>(at + i))
                      .load(std::memory_order_relaxed)}
         << (8 * i);
  return v;
}

TEST_CASE("racer-flips-while-running-and-leaves-the-first-value", "[racer]") {
  alignas(4) std::byte memory[8] = {};
  std::memset(memory, 0x11, sizeof memory);
  Racer racer;
  racer.start({flipOf(memory, uint32_t{0}, uint32_t{0xffffffff})});
  // One of the two values (or a byte-wise mix) is in place before start() returns: never what
  // was there before.
  CHECK(load(memory) != 0x11111111);
  bool sawSecond = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!sawSecond && std::chrono::steady_clock::now() < deadline)
    sawSecond = load(memory) == 0xffffffff;
  CHECK(sawSecond);
  CHECK(racer.stop() > 0);
  CHECK_FALSE(racer.running());
  CHECK(load(memory) == 0);
  // Beyond the flip, nothing was touched.
  CHECK(std::to_integer<uint8_t>(memory[4]) == 0x11);
}

}  // namespace
}  // namespace spicebox::guestsim
