// Runs in: renderer. The bounds the decoder checks guest values against and the rasteriser
// relies on; one definition so the two can never disagree.
#pragma once

#include <cstdint>

namespace spicebox::renderer {

// QXLRom::n_surfaces as the device announces it (broker/qxl/device.cpp MAX_SURFACES, QEMU's
// default): surface ids are [0, MAX_SURFACES).
inline constexpr uint32_t MAX_SURFACES = 1024;
// Surfaces: 8192 in each direction is more than any monitor a QXL guest drives (QEMU's own limit
// for a surface is 8192 x 8192 x 4 bytes as well).
inline constexpr uint32_t MAX_SURFACE_DIMENSION = 8192;
// Cursor shapes: SPICE clients and QEMU take at most 512 x 512.
inline constexpr uint32_t MAX_CURSOR_DIMENSION = 512;

}  // namespace spicebox::renderer
