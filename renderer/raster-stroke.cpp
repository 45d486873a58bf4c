// Runs in: renderer (sandboxed). Input: STROKE paths decoded from guest memory (hostile values;
// products are computed wide enough not to overflow for any int32 input, and the dashed-line
// code only sees segments up to MAX_DASHED_SEGMENT long, which keeps its doubles exact enough
// and its loops short).
#include "renderer/raster-stroke.h"

#include <spice/enums.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

namespace spicebox::renderer::stroke {
namespace {

// X's octant bits (a line's direction) and its default zero-width line bias: in octants 2, 3,
// 4 and 5 (counted counter-clockwise from the +x axis, y pointing down the screen) a tie in the
// error term takes the axial step, elsewhere the diagonal one.
constexpr unsigned X_DECREASING = 4, Y_DECREASING = 2, Y_MAJOR = 1;
constexpr unsigned DEFAULT_BIAS = (1u << (Y_DECREASING | Y_MAJOR)) |                 // octant 2
                                  (1u << (X_DECREASING | Y_DECREASING | Y_MAJOR)) |  // octant 3
                                  (1u << (X_DECREASING | Y_DECREASING)) |            // octant 4
                                  (1u << X_DECREASING);                              // octant 5

// Curves are split at most this deep (2^12 pieces): far below a pixel for any curve that fits a
// surface, and a bound for degenerate curves that never become flat enough (the reference
// recurses until its stack runs out on four coincident points).
constexpr int MAX_BEZIER_DEPTH = 12;

int64_t floorDiv(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

struct FixPoint {
  int32_t x, y;
};

int32_t half(int64_t a, int64_t b) {  // (a + b) / 2, truncated toward zero as C does
  return static_cast<int32_t>((a + b) / 2);
}

// (x1 * x2 + y1 * y2) >> 4 of 28.4 values: a squared length or dot product in 28.4.
__int128 dot(int64_t x1, int64_t y1, int64_t x2, int64_t y2) {
  return (static_cast<__int128>(x1) * x2 + static_cast<__int128>(y1) * y2) >> 4;
}

void appendFix(std::vector<IntPoint>& line, FixPoint p) {
  line.push_back(IntPoint{fixToInt(p.x), fixToInt(p.y)});
}

// Midpoint subdivision until both control points lie within about half a pixel of the chord
// (squared distances compared in 28.4: h = |P - P0|^2 |chord|^2 - (dot)^2, scaled by 1/8,
// against |chord|^2), then the curve is its end point.
void subdivideBezier(std::vector<IntPoint>& line, FixPoint p0, FixPoint p1, FixPoint p2,
                     FixPoint p3, int depth) {
  const __int128 a2 =
      dot(int64_t{p1.x} - p0.x, int64_t{p1.y} - p0.y, int64_t{p1.x} - p0.x, int64_t{p1.y} - p0.y);
  const __int128 b2 =
      dot(int64_t{p3.x} - p0.x, int64_t{p3.y} - p0.y, int64_t{p3.x} - p0.x, int64_t{p3.y} - p0.y);
  const __int128 c2 =
      dot(int64_t{p2.x} - p3.x, int64_t{p2.y} - p3.y, int64_t{p2.x} - p3.x, int64_t{p2.y} - p3.y);
  const __int128 ab =
      dot(int64_t{p1.x} - p0.x, int64_t{p1.y} - p0.y, int64_t{p3.x} - p0.x, int64_t{p3.y} - p0.y);
  const __int128 cb =
      dot(int64_t{p2.x} - p3.x, int64_t{p2.y} - p3.y, int64_t{p0.x} - p3.x, int64_t{p0.y} - p3.y);
  const __int128 h1 = (a2 * b2 - ab * ab) >> 3;
  const __int128 h2 = (c2 * b2 - cb * cb) >> 3;
  if ((h1 < b2 && h2 < b2) || depth >= MAX_BEZIER_DEPTH) {
    appendFix(line, p3);
    return;
  }
  const FixPoint p01{half(p0.x, p1.x), half(p0.y, p1.y)};
  const FixPoint p12{half(p1.x, p2.x), half(p1.y, p2.y)};
  const FixPoint p23{half(p2.x, p3.x), half(p2.y, p3.y)};
  const FixPoint p012{half(p01.x, p12.x), half(p01.y, p12.y)};
  const FixPoint p123{half(p12.x, p23.x), half(p12.y, p23.y)};
  const FixPoint p0123{half(p012.x, p123.x), half(p012.y, p123.y)};
  subdivideBezier(line, p0, p01, p012, p0123, depth + 1);
  subdivideBezier(line, p0123, p123, p23, p3, depth + 1);
}

// ---- dashed lines: X's width-1 wide-line polygons

int64_t ceilDiv(int64_t a, int64_t b) {  // b > 0
  return -floorDiv(-a, b);
}

// X's ICEIL: the smallest integer not below v (v is far inside the int range here).
int64_t iceil(double v) {
  return static_cast<int64_t>(std::ceil(v));
}

struct Vertex {
  double x, y;
};
// An edge's line through the polygon: the points p with p.x * dy - p.y * dx == k.
struct Slope {
  int64_t dx, dy;
  double k;
};
// A line end as joins see it: the corner (xa, ya) on one side of the end point (x, y), the
// line's direction away from it (dx, dy) and its edge constant.
struct Face {
  double xa, ya;
  int64_t dx, dy;
  int64_t x, y;
  double k;
};

// One edge of a polygon being scan-converted: on scanline y (absolute) its pixel bound is
// ceil((K + (y - yi) dx) / dy) - 1 + xi, plus one on a left edge: spans run from the left
// edge's bound to the right edge's, both included, so an edge exactly on a pixel centre owns it
// on the left and not on the right.
struct Edge {
  int64_t K, dx, dy;  // dy > 0
  int64_t xi, yi;
  bool left;
  int64_t height = 0;
  int64_t x(int64_t y) const { return ceilDiv(K + (y - yi) * dx, dy) - 1 + (left ? 1 : 0) + xi; }
};

class DashedLine {
 public:
  DashedLine(const Dashes& d, bool uniqueSpans, int32_t width, int32_t height,
             std::vector<pixman_box32_t>& out)
      : dash_(d.lengths),
        startOffset_(d.offset),
        unique_(uniqueSpans),
        width_(width),
        height_(height),
        out_(out) {}

  void draw(const std::vector<IntPoint>& pts);

 private:
  static constexpr int TOP = 0, RIGHT = 1, BOTTOM = 2, LEFT = 3;  // the dash quad's corners
  // X's miter limit: a join whose miter reaches further than this (squared, in line widths)
  // is bevelled (1 / sin^2(11 degrees / 2)).
  static constexpr double SQUARED_SECANT = 108.856472512142;

  size_t next(size_t i) const { return i + 1 == dash_.size() ? 0 : i + 1; }
  void stepDash(int64_t distance, size_t& index, int64_t& offset) const;
  void segment(int64_t& dashOffset, size_t& dashIndex, IntPoint a, IntPoint b, Face& leftFace,
               Face& rightFace);
  void join(Face l, Face r);
  void fillPolygon(const Vertex* v, const Slope* s, int n, int64_t xi, int64_t yi);

  const std::vector<uint8_t>& dash_;
  const int64_t startOffset_;
  const bool unique_;
  const int64_t width_, height_;
  std::vector<pixman_box32_t>& out_;
};

void DashedLine::stepDash(int64_t distance, size_t& index, int64_t& offset) const {
  if (distance < dash_[index] - offset) {
    offset += distance;
    return;
  }
  distance -= dash_[index] - offset;
  index = next(index);
  int64_t total = 0;
  for (uint8_t len : dash_) {
    total += len;
  }
  if (total > 0 && total <= distance) {
    distance %= total;
  }
  while (distance >= dash_[index]) {
    distance -= dash_[index];
    index = next(index);
  }
  offset = distance;
}

// The polygon's top vertex (first of the lowest y) and bottom vertex (last of the highest y)
// split its edges into a right and a left chain; each edge covers the scanlines from its upper
// vertex's ceil(y) to the next edge's; the chains are walked together from the right chain's
// first scanline, as X's polygon helper does.
void DashedLine::fillPolygon(const Vertex* v, const Slope* s, int n, int64_t xi, int64_t yi) {
  auto around = [n](int i, int step) {
    return i + step < 0 ? n - 1 : i + step == n ? 0 : i + step;
  };
  int top = 0, bottom = 0;
  double minY = v[0].y, maxY = v[0].y;
  for (int i = 1; i < n; ++i) {
    if (v[i].y < minY) {
      top = i;
      minY = v[i].y;
    }
    if (v[i].y >= maxY) {
      bottom = i;
      maxY = v[i].y;
    }
  }
  int clockwise = 1, slopeOffset = 0;
  const int before = around(top, -1);
  if (s[before].dy * s[top].dx > s[top].dy * s[before].dx) {
    clockwise = -1;
    slopeOffset = -1;
  }
  const int64_t bottomY = iceil(maxY) + yi;
  int64_t topY = 0;
  auto chain = [&](int direction, int offset, bool left, std::vector<Edge>& edges) {
    int64_t lastY = 0;
    for (int i = top, e = around(top, offset); i != bottom;
         i = around(i, direction), e = around(e, direction)) {
      if (s[e].dy == 0) {
        continue;
      }
      const bool flip = s[e].dy < 0;
      Edge edge{iceil(flip ? -s[e].k : s[e].k),
                flip ? -s[e].dx : s[e].dx,
                flip ? -s[e].dy : s[e].dy,
                xi,
                yi,
                left};
      const int64_t y = iceil(v[i].y) + yi;
      if (!edges.empty()) {
        edges.back().height = y - lastY;
      } else if (!left) {
        topY = y;
      }
      edges.push_back(edge);
      lastY = y;
    }
    if (!edges.empty()) {
      edges.back().height = bottomY - lastY;
    }
  };
  std::vector<Edge> right, left;
  chain(clockwise, slopeOffset, false, right);
  chain(-clockwise, slopeOffset == 0 ? -1 : 0, true, left);

  size_t li = 0, ri = 0;
  int64_t leftHeight = 0, rightHeight = 0;
  const Edge* l = nullptr;
  const Edge* r = nullptr;
  int64_t y = topY;
  while ((li < left.size() || leftHeight) && (ri < right.size() || rightHeight)) {
    if (!leftHeight && li < left.size()) {
      l = &left[li++];
      leftHeight = l->height;
    }
    if (!rightHeight && ri < right.size()) {
      r = &right[ri++];
      rightHeight = r->height;
    }
    const int64_t rows = std::min(leftHeight, rightHeight);
    leftHeight -= rows;
    rightHeight -= rows;
    for (int64_t k = 0; k < rows; ++k, ++y) {
      if (y < 0 || y >= height_) {
        continue;
      }
      const int64_t x1 = std::max<int64_t>(l->x(y), 0);
      const int64_t x2 = std::min<int64_t>(r->x(y), width_ - 1);
      if (x2 >= x1) {
        out_.push_back(pixman_box32_t{static_cast<int32_t>(x1), static_cast<int32_t>(y),
                                      static_cast<int32_t>(x2 + 1), static_cast<int32_t>(y + 1)});
      }
    }
  }
}

// One line segment's dashes: a quad per "on" stretch, its ends cut square at the dash
// boundaries measured along the ideal line; the dash state carries over to the next segment.
void DashedLine::segment(int64_t& dashOffset, size_t& dashIndex, IntPoint a, IntPoint b,
                         Face& leftFace, Face& rightFace) {
  const int64_t dx = int64_t{b.x} - a.x, dy = int64_t{b.y} - a.y;
  int64_t dashRemain = dash_[dashIndex] - dashOffset;
  const double halfWidth = 0.5;
  double length, rdx, rdy;
  if (dx == 0) {
    length = static_cast<double>(dy < 0 ? -dy : dy);
    rdx = 0;
    rdy = dy < 0 ? -halfWidth : halfWidth;
  } else if (dy == 0) {
    length = static_cast<double>(dx < 0 ? -dx : dx);
    rdx = dx < 0 ? -halfWidth : halfWidth;
    rdy = 0;
  } else {
    length = std::hypot(static_cast<double>(dx), static_cast<double>(dy));
    const double ratio = halfWidth / length;
    rdx = ratio * static_cast<double>(dx);
    rdy = ratio * static_cast<double>(dy);
  }
  const double k = halfWidth * length;
  double remaining = length;
  Slope slopes[4] = {{dx, dy, k}, {-dy, dx, 0}, {-dx, -dy, k}, {dy, -dx, 0}};
  Vertex v[4] = {{rdy, -rdx}, {rdy, -rdx}, {-rdy, rdx}, {-rdy, rdx}};
  while (remaining > static_cast<double>(dashRemain)) {
    const double dashDx = static_cast<double>(dashRemain * dx) / length;
    const double dashDy = static_cast<double>(dashRemain * dy) / length;
    v[RIGHT].x += dashDx;
    v[RIGHT].y += dashDy;
    v[BOTTOM].x += dashDx;
    v[BOTTOM].y += dashDy;
    slopes[RIGHT].k = v[RIGHT].x * static_cast<double>(dx) + v[RIGHT].y * static_cast<double>(dy);
    if (!(dashIndex & 1)) {
      fillPolygon(v, slopes, 4, a.x, a.y);
    }
    remaining -= static_cast<double>(dashRemain);
    dashIndex = next(dashIndex);
    dashRemain = dash_[dashIndex];
    v[TOP] = v[RIGHT];
    v[LEFT] = v[BOTTOM];
    slopes[LEFT].k = -slopes[RIGHT].k;
  }
  if (!(dashIndex & 1)) {  // the last stretch, measured back from the end point
    v[TOP].x -= static_cast<double>(dx);
    v[TOP].y -= static_cast<double>(dy);
    v[LEFT].x -= static_cast<double>(dx);
    v[LEFT].y -= static_cast<double>(dy);
    v[RIGHT] = Vertex{rdy, -rdx};
    v[BOTTOM] = Vertex{-rdy, rdx};
    slopes[RIGHT].k = 0;
    slopes[LEFT].k += static_cast<double>(dx * dx + dy * dy);
    fillPolygon(v, slopes, 4, b.x, b.y);
  }
  dashRemain = static_cast<int64_t>(static_cast<double>(dashRemain) - remaining);
  if (dashRemain == 0) {
    dashIndex = next(dashIndex);
    dashRemain = dash_[dashIndex];
  }
  leftFace = Face{rdy, -rdx, dx, dy, a.x, a.y, k};
  rightFace = Face{-rdy, rdx, -dx, -dy, b.x, b.y, k};
  dashOffset = dash_[dashIndex] - dashRemain;
}

// The corner where an "on" stretch runs from one segment into the next: the miter quad between
// the two lines' outer edges (a bevel triangle past the miter limit). Without unique spans a
// width-1 join is left out when either line already draws the corner pixel.
void DashedLine::join(Face l, Face r) {
  if (!unique_) {
    if (l.dx > 0 || (l.dx == 0 && l.dy > 0)) {
      return;
    }
    if (r.dx > 0 || (r.dx == 0 && r.dy > 0)) {
      return;
    }
  }
  const double denom = static_cast<double>(-l.dx) * static_cast<double>(r.dy) +
                       static_cast<double>(r.dx) * static_cast<double>(l.dy);
  if (denom == 0) {
    return;  // parallel: nothing to join
  }
  // The join polygon is built with both faces pointing the same way round: turn one.
  const bool swapSlopes = denom <= 0;
  Face& flipped = swapSlopes ? r : l;
  flipped.xa = -flipped.xa;
  flipped.ya = -flipped.ya;
  flipped.dx = -flipped.dx;
  flipped.dy = -flipped.dy;
  Vertex v[4];
  Slope s[4];
  v[0] = Vertex{r.xa, r.ya};
  s[0] = Slope{-r.dy, r.dx, 0};
  v[1] = Vertex{0, 0};
  s[1] = Slope{l.dy, -l.dx, 0};
  v[2] = Vertex{l.xa, l.ya};
  const double ldx = static_cast<double>(l.dx), ldy = static_cast<double>(l.dy);
  const double rdx = static_cast<double>(r.dx), rdy = static_cast<double>(r.dy);
  const double my = (ldy * (r.xa * rdy - r.ya * rdx) - rdy * (l.xa * ldy - l.ya * ldx)) / denom;
  const double mx = l.dy != 0 ? l.xa + (my - l.ya) * ldx / ldy : r.xa + (my - r.ya) * rdx / rdy;
  int n;
  if (!((mx * mx + my * my) * 4 > SQUARED_SECANT)) {
    const int64_t sign = swapSlopes ? -1 : 1;
    s[2] = Slope{sign * l.dx, sign * l.dy, swapSlopes ? -l.k : l.k};
    v[3] = Vertex{mx, my};
    s[3] = Slope{sign * r.dx, sign * r.dy, swapSlopes ? -r.k : r.k};
    n = 4;
  } else {
    const double bdx = r.xa - l.xa, bdy = r.ya - l.ya;
    const double scale = std::abs(bdx) > std::abs(bdy) ? std::abs(bdx) : std::abs(bdy);
    if (!(scale > 0)) {
      return;  // the two corners coincide: no bevel to fill
    }
    s[2].dx = static_cast<int64_t>((bdx * 65536) / scale);
    s[2].dy = static_cast<int64_t>((bdy * 65536) / scale);
    s[2].k = ((l.xa + r.xa) * static_cast<double>(s[2].dy) -
              (l.ya + r.ya) * static_cast<double>(s[2].dx)) /
             2.0;
    n = 3;
  }
  fillPolygon(v, s, n, l.x, l.y);
}

void DashedLine::draw(const std::vector<IntPoint>& pts) {
  if (pts.empty()) {
    return;
  }
  const bool selfJoin = pts.front() == pts.back();
  size_t dashIndex = 0;
  int64_t dashOffset = 0;
  stepDash(startOffset_, dashIndex, dashOffset);
  bool first = true, somethingDrawn = false;
  bool endIsFg = false, prevIsFg = false, firstIsFg = false;
  Face leftFace{}, rightFace{}, prevRightFace{}, firstFace{};
  for (size_t i = 1; i < pts.size(); ++i) {
    if (!(pts[i - 1] == pts[i])) {
      somethingDrawn = true;
      const size_t prevDashIndex = dashIndex;
      segment(dashOffset, dashIndex, pts[i - 1], pts[i], leftFace, rightFace);
      const bool startIsFg = !(prevDashIndex & 1);
      endIsFg = ((dashIndex & 1) != 0) != (dashOffset != 0);
      if (startIsFg) {
        if (first || !prevIsFg) {
          if (first && selfJoin) {
            firstFace = leftFace;
            firstIsFg = true;
          }
        } else {
          join(leftFace, prevRightFace);
        }
      }
      prevRightFace = rightFace;
      prevIsFg = endIsFg;
      first = false;
    }
    if (i + 1 == pts.size() && somethingDrawn && endIsFg && selfJoin && firstIsFg) {
      join(firstFace, rightFace);
    }
  }
}

}  // namespace

int32_t fixToInt(int32_t fixed) {
  const int32_t whole = fixed >> 4;  // arithmetic shift: floor
  return (fixed & 0x0f) > 8 ? whole + 1 : whole;
}

std::vector<std::vector<IntPoint>> flattenPath(const std::vector<qxlcmd::PathSegment>& path) {
  std::vector<std::vector<IntPoint>> lines;
  std::vector<IntPoint> current;
  auto finish = [&lines, &current]() {
    if (!current.empty()) {
      lines.push_back(std::move(current));
      current.clear();
    }
  };
  for (const auto& seg : path) {
    size_t i = 0;
    if (seg.flags & SPICE_PATH_BEGIN) {
      finish();
      if (!seg.points.empty()) {
        appendFix(current, FixPoint{seg.points[0].x, seg.points[0].y});
        i = 1;
      }
    }
    if (seg.flags & SPICE_PATH_BEZIER) {
      if ((seg.points.size() - i) % 3 != 0) {
        return lines;  // the reference gives up on the rest of the path
      }
      for (; i + 2 < seg.points.size(); i += 3) {
        if (current.empty()) {  // a curve with no start point: it starts at its end
          appendFix(current, FixPoint{seg.points[i + 2].x, seg.points[i + 2].y});
          continue;
        }
        // The curve starts at the previous point as rounded, back in 28.4.
        const FixPoint p0{static_cast<int32_t>(static_cast<uint32_t>(current.back().x) << 4),
                          static_cast<int32_t>(static_cast<uint32_t>(current.back().y) << 4)};
        subdivideBezier(current, p0, FixPoint{seg.points[i].x, seg.points[i].y},
                        FixPoint{seg.points[i + 1].x, seg.points[i + 1].y},
                        FixPoint{seg.points[i + 2].x, seg.points[i + 2].y}, 0);
      }
    } else {
      for (; i < seg.points.size(); ++i) {
        appendFix(current, FixPoint{seg.points[i].x, seg.points[i].y});
      }
    }
    if (seg.flags & SPICE_PATH_END) {
      if ((seg.flags & SPICE_PATH_CLOSE) && !current.empty()) {
        current.push_back(current.front());
      }
      finish();
    }
  }
  finish();
  return lines;
}

void zeroWidthSegment(IntPoint a, IntPoint b, int32_t width, int32_t height,
                      std::vector<pixman_box32_t>& out) {
  unsigned octant = 0;
  int64_t dx = int64_t{b.x} - a.x, dy = int64_t{b.y} - a.y;
  int64_t sx = 1, sy = 1;
  if (dx < 0) {
    dx = -dx;
    sx = -1;
    octant |= X_DECREASING;
  }
  if (dy < 0) {
    dy = -dy;
    sy = -1;
    octant |= Y_DECREASING;
  }
  const bool yMajor = dx <= dy;  // a diagonal is Y-major
  if (yMajor) {
    octant |= Y_MAJOR;
  }
  const int64_t bias = (DEFAULT_BIAS >> octant) & 1u;
  const int64_t major = yMajor ? dy : dx, minor = yMajor ? dx : dy;
  const int64_t majorStart = yMajor ? a.y : a.x, minorStart = yMajor ? a.x : a.y;
  const int64_t majorStep = yMajor ? sy : sx, minorStep = yMajor ? sx : sy;
  const int64_t majorSize = yMajor ? height : width, minorSize = yMajor ? width : height;
  if (major == 0) {
    return;  // a single point that is its own last point: nothing
  }
  // Pixel j (0 <= j < major; the end point, j == major, is left out) is majorStart + j steps
  // along the major axis and n(j) along the minor one. Bresenham's loop with error
  // e(0) = 2 minor - major - bias takes a minor step after pixel i when e(i) >= 0; counting
  // those steps gives n(j) = max(0, floor((e(0) + 2 minor (j - 1) + 2 major) / (2 major))).
  const int64_t e0 = 2 * minor - major - bias;
  auto minorSteps = [&](int64_t j) -> int64_t {
    if (j == 0) {
      return 0;
    }
    return std::max<int64_t>(0, floorDiv(e0 + 2 * minor * (j - 1) + 2 * major, 2 * major));
  };
  // Only the pixels whose major coordinate lies inside the surface.
  int64_t first = 0, last = major - 1;
  if (majorStep > 0) {
    first = std::max(first, -majorStart);
    last = std::min(last, majorSize - 1 - majorStart);
  } else {
    first = std::max(first, majorStart - (majorSize - 1));
    last = std::min(last, majorStart);
  }
  for (int64_t j = first; j <= last; ++j) {
    const int64_t m = majorStart + majorStep * j;
    const int64_t n = minorStart + minorStep * minorSteps(j);
    if (n < 0 || n >= minorSize) {
      continue;
    }
    const int32_t x = static_cast<int32_t>(yMajor ? n : m),
                  y = static_cast<int32_t>(yMajor ? m : n);
    out.push_back(pixman_box32_t{x, y, x + 1, y + 1});
  }
}

}  // namespace spicebox::renderer::stroke

namespace spicebox::renderer::stroke {

bool Dashes::usable() const {
  return std::any_of(lengths.begin(), lengths.end(), [](uint8_t len) { return len != 0; });
}

Dashes dashesFromStyle(const std::vector<int32_t>& style, bool startWithGap) {
  Dashes d;
  for (int32_t v : style) {
    d.lengths.push_back(static_cast<uint8_t>(fixToInt(v)));  // the reference keeps 8 bits
  }
  if (startWithGap && !d.lengths.empty()) {
    std::rotate(d.lengths.begin(), d.lengths.begin() + 1, d.lengths.end());
    d.offset = d.lengths[0];
  }
  return d;
}

void dashedPolyline(const std::vector<IntPoint>& points, const Dashes& dashes, bool uniqueSpans,
                    int32_t width, int32_t height, std::vector<pixman_box32_t>& out) {
  DashedLine(dashes, uniqueSpans && points.size() >= 3, width, height, out).draw(points);
}

}  // namespace spicebox::renderer::stroke
