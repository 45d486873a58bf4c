// Runs in: the libFuzzer target spicebox-peer-netproxy-fuzz (developer and CI machines; built by
// tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined). Input: fuzz bytes, wholly
// hostile: one datagram from a compromised netproxy (display.capnp NetproxyToBroker, flat array).
//
// Reads it as the broker's channel and the netproxy's peer do (broker/fuzz/fuzz-datagram.h) and
// checks what decodes against the owner's checks; every refusal is an acceptable answer.
#include <cstddef>
#include <cstdint>

#include "broker/fuzz/fuzz-datagram.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using spicebox::broker::fuzz::DatagramStop;
  auto result = spicebox::broker::fuzz::feedNetproxyDatagram({data, size});
  // -1: the channel refuses it before any schema is read (framing, structure); such inputs
  // reach only capnp's own checks, so they stay out of the corpus.
  return result.stop == DatagramStop::Framing || result.stop == DatagramStop::Structure ? -1 : 0;
}
