// Runs in: tests (broker-fuzz-regression-tests; tools/fuzz.sh replays the same .bin files through
// the clang-built fuzzers). Input: the fuzz inputs beside this file, minimised findings of the
// peer-renderer and peer-netproxy fuzzers (hostile by construction), and the committed seed
// corpora in broker/fuzz/seeds/ (one datagram each, broker/fuzz/fuzz-datagram.h).
//
// Every input in this directory is replayed as its fuzzer did, chosen by its name's prefix
// (peer-renderer-*.bin, peer-netproxy-*.bin); under the sanitizer build the original crash or
// report would fail the test. A finding that needs its answer pinned gets a test case of its own
// below, named after the attack. The seeds are checked to be what they are meant to be: messages
// the broker accepts.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <vector>

#include "broker/fuzz/fuzz-datagram.h"
#include "broker/fuzz/fuzz-seeds.h"
#include "tests/support/fuzz-inputs.h"

namespace spicebox::broker::fuzz {
namespace {

namespace fs = std::filesystem;

const fs::path FUZZ_DIR = SPICEBOX_BROKER_FUZZ_DIR;
const char* const WRITE_SEEDS =
    "regenerate them with: broker-fuzz-regression-tests '[.write-seeds]' (from the build's bin/)";

using test::fuzzInputsIn;
using test::readFuzzInput;

DatagramResult feed(const std::string& target, const std::vector<uint8_t>& bytes) {
  return target == "peer-renderer" ? feedRendererDatagram(bytes) : feedNetproxyDatagram(bytes);
}

// A seed decodes. A hello whose protocol version has moved on since the seeds were written is
// still a good seed (the fuzzer finds the new constant at once): only its version may be refused.
void checkSeed(const std::string& target, const std::vector<uint8_t>& bytes, bool hello) {
  const DatagramResult r = feed(target, bytes);
  INFO(describe(r.stop) << ": " << r.reason);
  if (hello && r.stop == DatagramStop::Refused && r.reason.starts_with("protocol version "))
    return;
  CHECK(r.stop == DatagramStop::Decoded);
}

TEST_CASE("broker-fuzz-regressions-replay", "[fuzz-regression]") {
  const auto inputs = fuzzInputsIn(FUZZ_DIR / "regressions");
  for (const auto& path : inputs) {
    INFO("regression input " << path);
    const std::string name = path.filename().string();
    const auto bytes = readFuzzInput(path);
    if (name.starts_with("peer-renderer-")) {
      feedRendererDatagram(bytes);
    } else if (name.starts_with("peer-netproxy-")) {
      feedNetproxyDatagram(bytes);
    } else {
      FAIL("the name says which fuzzer it is for: peer-renderer-*.bin or peer-netproxy-*.bin");
    }
  }
  SUCCEED(inputs.size() << " regression inputs replayed");
}

TEST_CASE("broker-fuzz-seeds-decode", "[fuzz-seeds]") {
  for (const std::string target : {"peer-renderer", "peer-netproxy"}) {
    const auto seeds = fuzzInputsIn(FUZZ_DIR / "seeds" / target);
    INFO("seeds of " << target << " in " << (FUZZ_DIR / "seeds" / target) << "; " << WRITE_SEEDS);
    CHECK(!seeds.empty());
    for (const auto& path : seeds) {
      INFO("seed " << path);
      checkSeed(target, readFuzzInput(path), path.filename().string().starts_with("hello"));
    }
  }
}

TEST_CASE("broker-fuzz-seeds-are-committed", "[fuzz-seeds]") {
  for (const Seed& seed : makeSeeds()) {
    const fs::path path = FUZZ_DIR / "seeds" / seed.target / seed.name;
    INFO("seed " << path << " is made by fuzz-seeds.cpp but not committed; " << WRITE_SEEDS);
    CHECK(fs::exists(path));
    checkSeed(seed.target, seed.bytes, false);
  }
}

// The largest messages the schema's limits allow decode, and what the broker forwards from them
// (a frame, the cursor) fits MAX_FRAME_BYTES: the harness asserts it (checkForwarding).
TEST_CASE("broker-fuzz-largest-batch-done-forwards", "[fuzz-seeds]") {
  for (const Seed& message : makeLargestMessages()) {
    INFO(message.name << ", " << message.bytes.size() << " bytes");
    const DatagramResult r = feedRendererDatagram(message.bytes);
    INFO(describe(r.stop) << ": " << r.reason);
    CHECK(r.stop == DatagramStop::Decoded);
  }
}

// Hidden (not run by CTest): rewrites broker/fuzz/seeds/ from fuzz-seeds.cpp.
TEST_CASE("broker-fuzz-write-seeds", "[.write-seeds]") {
  for (const char* target : {"peer-renderer", "peer-netproxy"}) {
    fs::create_directories(FUZZ_DIR / "seeds" / target);
    for (const auto& old : fuzzInputsIn(FUZZ_DIR / "seeds" / target))
      fs::remove(old);
  }
  const auto seeds = makeSeeds();
  for (const Seed& seed : seeds) {
    std::ofstream out(FUZZ_DIR / "seeds" / seed.target / seed.name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(seed.bytes.data()),
              static_cast<std::streamsize>(seed.bytes.size()));
    REQUIRE(out.good());
  }
  WARN(seeds.size() << " seeds written to " << (FUZZ_DIR / "seeds"));
}

}  // namespace
}  // namespace spicebox::broker::fuzz
