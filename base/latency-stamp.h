// Runs in: spicebox-guestsim (writes stamps into guest memory) and spicebox's client tools and
// benchmarks (read them back from the pixels they received). Input: pixels, untrusted: a stamp
// is recognised only by its magic, and a pixel run that is not one reads as nullopt.
//
// The latency stamp: a run of STAMP_WIDTH x 1 pixels at the top-left corner of the primary that
// carries the moment the guest rang the doorbell for the batch that drew it (CLOCK_MONOTONIC,
// nanoseconds) and a sequence number. Each pixel carries 24 bits in its r, g, b bytes (x8r8g8b8;
// the x byte is written 0 and ignored), so every lossless path (raw, LZ_RGB, LZ4, shared memory)
// delivers it exactly. A client that sees a new sequence number at (0, 0) computes the latency as
// its own CLOCK_MONOTONIC now minus the stamp (same machine, same clock).
#pragma once

#include <time.h>

#include <cstdint>
#include <optional>

namespace spicebox::stamp {

inline constexpr uint32_t STAMP_WIDTH = 5;
inline constexpr uint32_t STAMP_MAGIC = 0x5b0c57;  // pixel 0

struct Stamp {
  uint32_t seq = 0;          // 24 bits: pixel 1
  uint64_t monotonicNs = 0;  // pixels 2, 3 (bits 0..47) and 4 (bits 48..63)
};

// Pixels of a stamp, x8r8g8b8 (x = 0).
inline void encode(const Stamp& s, uint32_t out[STAMP_WIDTH]) {
  out[0] = STAMP_MAGIC;
  out[1] = s.seq & 0xffffff;
  out[2] = static_cast<uint32_t>(s.monotonicNs & 0xffffff);
  out[3] = static_cast<uint32_t>((s.monotonicNs >> 24) & 0xffffff);
  out[4] = static_cast<uint32_t>((s.monotonicNs >> 48) & 0xffff);
}

// The stamp in a run of STAMP_WIDTH pixels, or nullopt when they are not one.
inline std::optional<Stamp> decode(const uint32_t in[STAMP_WIDTH]) {
  if ((in[0] & 0xffffff) != STAMP_MAGIC || (in[4] & 0xff0000) != 0)
    return std::nullopt;
  Stamp s;
  s.seq = in[1] & 0xffffff;
  s.monotonicNs = uint64_t{in[2] & 0xffffff} | (uint64_t{in[3] & 0xffffff} << 24) |
                  (uint64_t{in[4] & 0xffff} << 48);
  return s;
}

inline uint64_t monotonicNowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

}  // namespace spicebox::stamp
