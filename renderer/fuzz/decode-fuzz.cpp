// Runs in: the libFuzzer target spicebox-decode-fuzz (developer and CI machines; built by
// tools/fuzz.sh with clang -fsanitize=fuzzer,address,undefined). Input: fuzz bytes,
// wholly hostile, laid out as renderer/fuzz/fuzz-image.h describes (command type, command
// address, RAM image, VRAM image).
//
// Decodes the one command once through the real SlotMemory and memslot table and ignores the
// result: every DecodeError is an acceptable answer. Findings are crashes, SB_ASSERTs, ASan and
// UBSan reports, leaks and timeouts. The BARs are heap buffers exactly as large as the BARs, so
// ASan reports any read the memslot checks should have refused.
#include <cstddef>
#include <cstdint>

#include "renderer/fuzz/fuzz-image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static spicebox::renderer::fuzz::FuzzGuest guest;
  auto result = spicebox::renderer::fuzz::decodeFuzzInput(guest, {data, size});
  return result ? 0 : -1;  // -1: not a command, keep it out of the corpus
}
