// Runs in: netproxy-fuzz-regression-tests (developer and CI machines). Input: none; builds
// well-formed client streams from spicebox's own constants.
//
// The seed corpora of the netproxy's fuzzers, committed in netproxy/fuzz/seeds/link/ and
// seeds/messages/ (layouts in fuzz-stream.h): every client message the server takes, on each
// channel, with either data header, and a whole link stage per channel. The tests check that the
// committed seeds are still accepted, and rewrite them on request:
//
//   build/bin/netproxy-fuzz-regression-tests '[.write-seeds]'
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace spicebox::netproxy::fuzz {

struct Seed {
  std::string target;  // "link" or "messages": the directory under netproxy/fuzz/seeds/
  std::string name;    // file name, ".bin"
  std::vector<uint8_t> bytes;
};

std::vector<Seed> makeSeeds();

}  // namespace spicebox::netproxy::fuzz
