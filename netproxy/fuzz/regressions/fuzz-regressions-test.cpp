// Runs in: tests (netproxy-fuzz-regression-tests; tools/fuzz.sh replays the same .bin files
// through the clang-built fuzzers). Input: the fuzz inputs beside this file, minimised findings of
// the link and messages fuzzers (hostile by construction), and the committed seed corpora in
// netproxy/fuzz/seeds/ (layouts in netproxy/fuzz/fuzz-stream.h).
//
// Every input in this directory is replayed as its fuzzer did, chosen by its name's prefix
// (link-*.bin, messages-*.bin); under the sanitizer build the original crash or report would fail
// the test. A finding that needs its answer pinned gets a test case of its own below, named after
// the attack. The seeds are checked to be what they are meant to be: accepted client streams.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <vector>

#include "netproxy/fuzz/fuzz-seeds.h"
#include "netproxy/fuzz/fuzz-stream.h"
#include "tests/support/fuzz-inputs.h"

namespace spicebox::netproxy::fuzz {
namespace {

namespace fs = std::filesystem;

const fs::path FUZZ_DIR = SPICEBOX_NETPROXY_FUZZ_DIR;
const char* const WRITE_SEEDS =
    "regenerate them with: netproxy-fuzz-regression-tests '[.write-seeds]' (from the build's bin/)";

using test::fuzzInputsIn;
using test::readFuzzInput;

// A link seed is a whole link stage: refused only at the ticket (which no seed can encrypt for a
// key made at run time), or linked with every data message after it accepted.
void checkLinkSeed(const std::vector<uint8_t>& bytes) {
  const LinkResult r = feedLinkInput(bytes);
  INFO("stopped: " << describe(r.stop));
  REQUIRE((r.stop == LinkStop::Linked || r.stop == LinkStop::TicketRefused));
  if (r.stop == LinkStop::Linked) {
    REQUIRE(r.messages);
    CHECK(r.messages->stop == MessagesStop::NeedMore);
    CHECK(r.messages->leftover == 0);
    CHECK(r.messages->accepted >= 1);
  }
}

// A messages seed is a channel byte, a flags byte and well-formed messages, each accepted.
void checkMessagesSeed(const std::vector<uint8_t>& bytes) {
  const auto r = feedMessagesInput(bytes);
  REQUIRE(r);
  INFO("stopped: " << describe(r->stop) << " after " << r->accepted << " messages");
  CHECK(r->stop == MessagesStop::NeedMore);
  CHECK(r->leftover == 0);
  CHECK(r->dropped == 0);
  CHECK(r->accepted >= 1);
}

TEST_CASE("netproxy-fuzz-regressions-replay", "[fuzz-regression]") {
  const auto inputs = fuzzInputsIn(FUZZ_DIR / "regressions");
  for (const auto& path : inputs) {
    INFO("regression input " << path);
    const std::string name = path.filename().string();
    const auto bytes = readFuzzInput(path);
    if (name.starts_with("link-")) {
      feedLinkInput(bytes);
    } else if (name.starts_with("messages-")) {
      feedMessagesInput(bytes);
    } else {
      FAIL("the name says which fuzzer it is for: link-*.bin or messages-*.bin");
    }
  }
  SUCCEED(inputs.size() << " regression inputs replayed");
}

TEST_CASE("netproxy-fuzz-seeds-are-accepted-streams", "[fuzz-seeds]") {
  for (const char* target : {"link", "messages"}) {
    const auto seeds = fuzzInputsIn(FUZZ_DIR / "seeds" / target);
    INFO("seeds of " << target << " in " << (FUZZ_DIR / "seeds" / target) << "; " << WRITE_SEEDS);
    CHECK(!seeds.empty());
    for (const auto& path : seeds) {
      INFO("seed " << path);
      if (std::string(target) == "link")
        checkLinkSeed(readFuzzInput(path));
      else
        checkMessagesSeed(readFuzzInput(path));
    }
  }
}

TEST_CASE("netproxy-fuzz-seeds-are-committed", "[fuzz-seeds]") {
  for (const Seed& seed : makeSeeds()) {
    const fs::path path = FUZZ_DIR / "seeds" / seed.target / seed.name;
    INFO("seed " << path << " is made by fuzz-seeds.cpp but not committed; " << WRITE_SEEDS);
    CHECK(fs::exists(path));
    if (seed.target == "link")
      checkLinkSeed(seed.bytes);
    else
      checkMessagesSeed(seed.bytes);
  }
}

// Hidden (not run by CTest): rewrites netproxy/fuzz/seeds/ from fuzz-seeds.cpp.
TEST_CASE("netproxy-fuzz-write-seeds", "[.write-seeds]") {
  for (const char* target : {"link", "messages"}) {
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
}  // namespace spicebox::netproxy::fuzz
