// Runs in: tests. Input: none.
// The machinery of bench/machine-floor.h, not the speed: the relay completes its rounds through
// real processes and reaps them; the codec figures tell the two full-HD pictures apart. No
// timing is asserted beyond "positive".
#include <sys/wait.h>

#include <cerrno>

#include <catch2/catch.hpp>

#include "bench/machine-floor.h"

namespace spicebox::bench {
namespace {

TEST_CASE("machine floor: a relay through 3 processes completes every round and leaves no child") {
  auto floor = measureRelayFloor(3, 20, std::chrono::microseconds(100));
  REQUIRE(std::holds_alternative<RelayFloor>(floor));
  const RelayFloor& f = std::get<RelayFloor>(floor);
  CHECK(f.handOffs == 3);
  CHECK(f.p50Us > 0);
  CHECK(f.p99Us >= f.p50Us);
  // Every child was reaped: none is left to wait for.
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);
  CHECK(errno == ECHILD);
  CHECK(std::holds_alternative<std::string>(measureRelayFloor(1, 20, {})));
}

TEST_CASE(
    "machine floor: LZ4 compresses the bands picture far better than the photograph-like one") {
  auto photo = lz4OnFirstFrame("fullhd", 1);
  auto bands = lz4OnFirstFrame("fullhd-bands", 1);
  REQUIRE(std::holds_alternative<CodecFigures>(photo));
  REQUIRE(std::holds_alternative<CodecFigures>(bands));
  const double photoRatio = std::get<CodecFigures>(photo).ratio;
  const double bandsRatio = std::get<CodecFigures>(bands).ratio;
  INFO("photo " << photoRatio << ", bands " << bandsRatio);
  // A photograph hardly compresses; each bands row is its predecessor shifted.
  CHECK(photoRatio > 0.9);
  CHECK(photoRatio < 1.5);
  CHECK(bandsRatio > 10);
  CHECK(std::get<CodecFigures>(photo).megabytesPerS > 0);
  CHECK(std::holds_alternative<std::string>(lz4OnFirstFrame("small-fills", 1)));
  CHECK(std::holds_alternative<std::string>(lz4OnFirstFrame("no-such-scenario", 1)));
}

}  // namespace
}  // namespace spicebox::bench
