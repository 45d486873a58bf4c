// Runs in: spicebox-guestsim (its --stamps driver path) and the benchmarks (bench/), both
// unsandboxed developer tools. Input: our own command trees and the guest memory our own
// materialiser wrote (trusted); the guest-address walk still checks every pointer it follows
// through the caller's address translation, so a wrong layout fails instead of writing astray.
//
// Latency stamps (base/latency-stamp.h) as guest commands. A stamp is a QXL_CMD_DRAW DRAW_COPY
// onto the primary (surface 0) of a STAMP_WIDTH x 1, 32 bpp top-down bitmap at (0,0)..(5,1),
// rop OP_PUT, no clip, whose pixels are stamp::encode({seq, monotonicNs}). The command tree is
// built with monotonicNs 0; the driver lays it out in guest memory, then writes the real
// CLOCK_MONOTONIC time into the 20 pixel bytes right before it publishes the command on the ring
// and rings the doorbell, so the stamp measures from the doorbell to the client's screen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "base/latency-stamp.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

// Bytes of the stamp's pixels: STAMP_WIDTH x8r8g8b8 pixels, little endian.
inline constexpr size_t STAMP_BYTES = stamp::STAMP_WIDTH * 4;
// QXLImageDescriptor.id of stamp `seq` is STAMP_IMAGE_ID_TAG | seq: distinct from every other
// stamp and from the scenarios' ids (counters from 1); the image is not marked cacheable either.
inline constexpr uint64_t STAMP_IMAGE_ID_TAG = 0x5b0c570000000000ull;

// The stamp command for sequence number `seq` (24 bits are carried; seq counts from 1), its
// pixels encoding monotonicNs 0. The bitmap's data is one QXLDataChunk (no DIRECT flag), as
// every scenario bitmap.
Command stampCommand(uint32_t seq);

// Writes stamp::encode({seq, ns}) into the 20 raw bytes at `bitmapPixels` (x8r8g8b8, x = 0,
// little endian, whatever the host's byte order).
void writeStamp(uint8_t* bitmapPixels, uint32_t seq, uint64_t ns);

// Translates a guest address range to where the caller can write it; nullptr when the range is
// not inside the caller's guest memory.
using GuestToHost = std::function<std::byte*(uint64_t guestAddr, size_t size)>;

// Where the 20 pixel bytes of a stamp command lie once a materialiser has laid stampCommand()
// out at `commandAddr` (QXLCommand.data): QXLDrawable.u.copy.src_bitmap -> QXLImage ->
// QXLBitmap.data -> the first QXLDataChunk's data (or the flat data with QXL_BITMAP_DIRECT).
// nullptr when that walk leaves guest memory or the layout is not a stamp's (not a DRAW_COPY,
// not a 32 bpp bitmap of at least STAMP_WIDTH pixels in its first chunk).
uint8_t* locateStampPixels(uint64_t commandAddr, const GuestToHost& toHost);

}  // namespace spicebox::guestsim
