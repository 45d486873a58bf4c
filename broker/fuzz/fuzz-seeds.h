// Runs in: broker-fuzz-regression-tests (developer and CI machines). Input: none; builds
// well-formed child messages with the generated Cap'n Proto builders.
//
// The seed corpora of the broker's fuzzers, committed in broker/fuzz/seeds/peer-renderer/ and
// seeds/peer-netproxy/: each message type a renderer or a netproxy sends, one datagram each (the
// flat-array bytes ipc::Channel sends), including messages at the schema's limits. The tests
// check that the committed seeds still decode, and rewrite them on request:
//
//   build/bin/broker-fuzz-regression-tests '[.write-seeds]'
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spicebox::broker::fuzz {

struct Seed {
  std::string target;  // "peer-renderer" or "peer-netproxy": the directory under seeds/
  std::string name;    // file name, ".bin"
  std::vector<uint8_t> bytes;
};

std::vector<Seed> makeSeeds();

// The largest messages a renderer sends (every list at its longest; the largest cursor): not
// seeds (64 KiB each, they slow the fuzzer down), but the tests check that they decode and that
// what the broker forwards from them fits a frame.
std::vector<Seed> makeLargestMessages();

}  // namespace spicebox::broker::fuzz
