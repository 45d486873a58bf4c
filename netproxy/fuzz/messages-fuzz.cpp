// Runs in: the libFuzzer target spicebox-messages-fuzz (developer and CI machines; built by
// tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined). Input: fuzz bytes, wholly
// hostile: a channel byte, a flags byte, then the data messages a linked client sends on that
// channel (layout in netproxy/fuzz/fuzz-stream.h).
//
// One target for the four channels: the selector byte lets one corpus share what the channels
// share (headers, the common messages) and keeps `make fuzz-smoke` to one 30 s slot.
#include <cstddef>
#include <cstdint>

#include "netproxy/fuzz/fuzz-stream.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto result = spicebox::netproxy::fuzz::feedMessagesInput({data, size});
  return result ? 0 : -1;  // -1: no channel byte, keep it out of the corpus
}
