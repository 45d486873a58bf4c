// Runs in: the libFuzzer target spicebox-link-fuzz (developer and CI machines; built by
// tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined). Input: fuzz bytes, wholly
// hostile: a settings byte, then what a client sends on one connection from its first byte
// (layout in netproxy/fuzz/fuzz-stream.h).
//
// Runs the link stage as the server does (header, link message, authentication mechanism,
// ticket) and, once linked, the channel's data messages; every typed fault is an acceptable
// answer.
#include <cstddef>
#include <cstdint>

#include "netproxy/fuzz/fuzz-stream.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  spicebox::netproxy::fuzz::feedLinkInput({data, size});
  return 0;
}
