// Runs in: renderer (sandboxed). Input: STROKE paths decoded from guest memory (28.4 fixed-point
// points and segment flags, hostile: any value, any count the decoder let through); the
// surface size is ours.
//
// The pixels of a STROKE, by the rules libspice-server's canvas follows (spice-common's lines.c,
// a port of the X server's mi line code): points rounded from 28.4 with ties going down, Bezier
// curves flattened by midpoint subdivision, and every polyline drawn as X's zero-width lines
// with the "cap not last" style (Windows cosmetic lines leave out their last point). Written
// from the rules, not from that code.
#pragma once

#include <pixman.h>

#include <cstdint>
#include <vector>

#include "renderer/qxl-command.h"

namespace spicebox::renderer::stroke {

struct IntPoint {
  int32_t x = 0, y = 0;
  bool operator==(const IntPoint&) const = default;
};

// 28.4 fixed point -> integer: round to nearest, a half rounding down (spice-common's
// fix_to_int: only a fraction above 8/16 rounds up).
int32_t fixToInt(int32_t fixed);

// The polylines the path describes, as the reference assembles them: SPICE_PATH_BEGIN starts a
// polyline at the segment's first point, SPICE_PATH_BEZIER takes the points three at a time as
// cubic curves from the last point, SPICE_PATH_END (with SPICE_PATH_CLOSE: back to the
// polyline's first point) ends it. A Bezier segment whose point count is not a multiple of three
// stops the path there (the reference returns; what was ended before stays drawn).
std::vector<std::vector<IntPoint>> flattenPath(const std::vector<qxlcmd::PathSegment>& path);

// Pixels of X's zero-width line from `a` towards `b`, the last point left out, inside
// [0, width) x [0, height): appended to `out` as 1-pixel-high boxes, one per pixel. Ties in
// the Bresenham error go the way X's default bias says (an axial step in octants 2 to 5). Cost
// is in the pixels inside the surface, not in the line's length.
void zeroWidthSegment(IntPoint a, IntPoint b, int32_t width, int32_t height,
                      std::vector<pixman_box32_t>& out);

// A STYLED stroke's dash pattern as the reference uses it: lengths in whole pixels (each style
// entry rounded like a point, kept to 8 bits), "on" at even positions, and a start offset into
// it (START_WITH_GAP rotates the style by one and starts at the first dash's end).
struct Dashes {
  std::vector<uint8_t> lengths;
  int32_t offset = 0;
  // False for patterns the reference cannot draw (no entries, or every length zero: it loops
  // for ever); such strokes are drawn solid.
  bool usable() const;
};
Dashes dashesFromStyle(const std::vector<int32_t>& style, bool startWithGap);

// A longer dashed line segment (in either axis) is drawn solid: the reference's integer
// arithmetic overflows on such lengths, and the cost stays bounded.
inline constexpr int32_t MAX_DASHED_SEGMENT = 16384;

// The pixels of one dashed polyline, as X draws a width-1 on/off-dashed wide line with butt
// ("not last") caps and miter joins (what the reference does for every STYLED stroke): each
// dash a 1-pixel-wide polygon along the ideal line, scan-converted with X's rules, joins filled
// where a dash runs through a corner. `uniqueSpans` is X's choice for raster ops that must not
// touch a pixel twice (spice's ROPs 2, 6, 8 to 11 and 14, with 3 or more points): joins are
// then always filled. Output: 1-pixel-high boxes inside [0, width) x [0, height), possibly
// overlapping (the caller unites them).
void dashedPolyline(const std::vector<IntPoint>& points, const Dashes& dashes, bool uniqueSpans,
                    int32_t width, int32_t height, std::vector<pixman_box32_t>& out);

}  // namespace spicebox::renderer::stroke
