// Runs in: renderer (sandboxed). Input: qxlcmd::Command trees built by the decoder from guest
// memory. The decoder has checked strides, data sizes, palettes and layouts, but every value is
// still the guest's: ids, rectangles, positions and sizes are range-checked here again and every
// draw is clipped to its target surface, so no command can make us read or write outside the
// images we own. Output: pixels in pixman images (the primary's memory is the caller's) and the
// damage each batch left on the primary.
//
// The rules follow libspice-server's software canvas (spice-common canvas_base.c, sw_canvas.c,
// pixman_utils.c), because the goal is pixel-exact equality with it: raw bit operations for
// ROPs, fills and blits (the 32 bpp "x" byte is kept as the guest wrote it), pixman compositing
// where the reference composites (scaling, alpha blending, COMPOSITE).
#pragma once

#include <pixman.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "renderer/limits.h"
#include "renderer/qxl-command.h"

namespace spicebox::renderer {

// Why a command could not be (fully) drawn. Each value names what the guest did wrong.
enum class RasterError : uint8_t {
  SurfaceIdOutOfRange,       // id >= MAX_SURFACES
  SurfaceAlreadyExists,      // create of an id that is live (double create)
  SurfaceUnknown,            // destroy of / draw on an id that is not live
  UnsupportedSurfaceFormat,  // not one of SPICE_SURFACE_FMT_{1_A,8_A,16_555,16_565,32_xRGB,32_ARGB}
  BadSurfaceSize,            // zero or above MAX_SURFACE_DIMENSION, or |stride| too small
  SurfaceMemoryTooSmall,     // createPrimary: the caller's span cannot hold height * stride
  SourceSurfaceUnknown,      // an image of type SURFACE names a surface that is not live
  UnsupportedImage,          // QUIC and other compressed images, unknown bitmap formats
  BadImage,                  // bitmap data, palette or size inconsistent (decoder should catch)
  BadDrawType,               // unknown QXL_DRAW_* or payload/type mismatch
  BadGlyphString,            // glyph records run past the string data
  BadCursor,                 // cursor data shorter than its shape needs
  UnsupportedCursor,         // cursor type we do not convert
  CursorTooLarge,            // width or height above MAX_CURSOR_DIMENSION
  BadArea,                   // updateArea: rectangle or guest memory does not fit
  PrimaryByCommand,          // QXL_SURFACE_CMD on surface 0: the primary comes and goes by IO only
};
std::string_view describe(RasterError error);

using RasterResult = std::optional<RasterError>;  // nullopt: success

// Limits: renderer/limits.h (shared with the decoder).

struct PixmanImageDeleter {
  void operator()(pixman_image_t* image) const { pixman_image_unref(image); }
};
using PixmanImage = std::unique_ptr<pixman_image_t, PixmanImageDeleter>;

struct Surface {
  uint32_t format = 0;  // SPICE_SURFACE_FMT_*
  uint32_t width = 0, height = 0;
  // What is drawn on. Its bits are `owned` or `stored` (offscreen surfaces, a non-32 bpp primary)
  // or the caller's memory (a 32 bpp primary).
  PixmanImage image;
  std::vector<uint32_t> owned;
  std::span<std::byte> stored;  // from the SurfaceStore, released when the surface goes
  // Non-32 bpp primary only: the 32 bpp image in the caller's memory that is shown.
  PixmanImage shadow;
};

// Where surfaces' own pixels live (offscreen surfaces, a non-32 bpp primary's native image)
// when not in the rasteriser's own memory: the renderer keeps them in the recovery area, which
// outlives the process (renderer/recovery.h).
class SurfaceStore {
 public:
  virtual ~SurfaceStore() = default;
  // `bytes` for surface `id`, zeroed, 4-byte aligned; empty when there is no room.
  virtual std::span<std::byte> allocate(uint32_t id, uint64_t bytes) = 0;
  // Surface `id`'s memory is no longer used.
  virtual void release(uint32_t id, std::span<std::byte> memory) = 0;
};

// Told before a draw whose result depends on the destination's pixels (an XOR, a blend, a ROP3
// that reads the destination, a copy within one surface): drawing it again over a partly drawn
// first attempt would not give the same pixels, so the journal saves `box` of `image` (surface
// `id`'s drawn image) first. Other draws are simply drawn again (renderer/recovery.h).
class DrawJournal {
 public:
  virtual ~DrawJournal() = default;
  virtual void beforeUnrepeatableDraw(uint32_t id, pixman_image_t* image,
                                      const pixman_box32_t& box) = 0;
};

// Whether drawing `d` (on surface d.surfaceId) again over a partly drawn first attempt gives the
// same pixels: no destination pixel's new value depends on the destination.
bool repeatable(const qxlcmd::Drawable& d);

// A sanitised cursor: ARGB32 (premultiplied no; straight alpha) pixels, row-major, no padding.
struct SanitisedCursor {
  uint16_t width = 0, height = 0;
  uint16_t hotSpotX = 0, hotSpotY = 0;  // clamped into the shape
  std::vector<uint32_t> pixels;         // width * height
};
std::variant<SanitisedCursor, RasterError> sanitiseCursor(const qxlcmd::CursorShape& shape);

// What a draw did to the primary that a remote client can replay instead of receiving pixels.
struct SolidFillHint {
  uint32_t color = 0;               // the 32 bpp pixel value stored
  std::vector<qxlcmd::Rect> rects;  // 1 .. MAX_HINT_RECTS, disjoint, inside the primary
  bool operator==(const SolidFillHint&) const = default;
};
struct CopyBitsHint {
  int32_t srcX = 0, srcY = 0;  // top-left of the source rectangle (inside the primary)
  qxlcmd::Rect dest;           // non-empty, inside the primary
  bool operator==(const CopyBitsHint&) const = default;
};
using OutputHint = std::variant<SolidFillHint, CopyBitsHint>;

// At most this many damage rectangles (more: their bounding box), hints (more: damage) and
// rectangles per solid fill hint (more: damage); render.capnp's maxDamageRects, maxHints and
// maxHintRects (the broker refuses more).
inline constexpr size_t MAX_DAMAGE_RECTS = 64;
inline constexpr size_t MAX_HINTS = 64;
inline constexpr size_t MAX_HINT_RECTS = 64;

// The primary's output of a batch. Invariant: a client that applies `hints` in order to its copy
// of the picture, then paints every `damage` rectangle from the final pixels, has the final
// picture. So a copy-bits hint is only recorded when its source does not intersect damage
// recorded before it (else its destination becomes damage); hint rectangles are not in `damage`.
struct PrimaryOutput {
  std::vector<qxlcmd::Rect> damage;  // disjoint, at most MAX_DAMAGE_RECTS
  std::vector<OutputHint> hints;     // draw order, at most MAX_HINTS
};

class Rasteriser {
 public:
  Rasteriser();
  ~Rasteriser();
  Rasteriser(const Rasteriser&) = delete;
  Rasteriser& operator=(const Rasteriser&) = delete;

  // Surface 0 on the caller's memory (later: a broker-owned display segment). For a 32 bpp
  // format the surface is drawn straight into `memory` (`stride` bytes per row, top row first).
  // For any other format the rasteriser draws into its own image of that format and `memory`
  // holds the 32 bpp x8r8g8b8 shadow that is shown (`stride` is the shadow's), refreshed after
  // each draw. `memory` must outlive the surface and be 4-byte aligned.
  RasterResult createPrimary(uint32_t width, uint32_t height, int32_t stride, uint32_t format,
                             std::span<std::byte> memory);
  RasterResult destroyPrimary() { return destroySurface(0); }
  // The primary's shown pixels move to `memory` (same size and stride as at createPrimary; the
  // caller has copied the picture there): later draws land there. For double buffering.
  RasterResult movePrimary(std::span<std::byte> memory);
  // The primary's initial pixels: `guestMemory` laid out like the guest's primary (native format,
  // rows of `stride` bytes; negative: the top row is the last one in memory), copied once (the
  // shadow is refreshed). BadArea when the memory cannot hold height * |stride| bytes.
  RasterResult loadPrimary(std::span<const std::byte> guestMemory, int32_t stride);

  // Where surfaces' own pixels come from from now on (null: the rasteriser's own memory), and who
  // is told before unrepeatable draws (null: nobody). Both outlive the rasteriser.
  void setSurfaceStore(SurfaceStore* store);
  void setJournal(DrawJournal* journal);

  // Recovery (renderer/recovery.h): surfaces drawn by an earlier renderer, on memory that kept
  // their pixels. An offscreen surface (id 1 ..) on `memory` (`stride` bytes a row, the
  // rasteriser's own stride for the format); a primary whose shown pixels are `shown` (32 bpp,
  // `stride`) and, for a non-32 bpp format, whose native image is `native`. Nothing is zeroed or
  // copied. Refused like a create (id, format, size), or SurfaceMemoryTooSmall.
  RasterResult adoptSurface(uint32_t id, uint32_t format, uint32_t width, uint32_t height,
                            std::span<std::byte> memory);
  RasterResult adoptPrimary(uint32_t width, uint32_t height, int32_t stride, uint32_t format,
                            std::span<std::byte> shown, std::span<std::byte> native);
  // Bytes a row of a surface of `format` and `width` takes in the rasteriser's own images.
  static std::optional<uint32_t> ownStride(uint32_t format, uint32_t width);
  // The shown 32 bpp pixels of `box` of the primary made from its native image again (after
  // its native pixels were restored); a no-op for a 32 bpp primary.
  void refreshPrimaryShadow(const pixman_box32_t& box);

  // QXL_SURFACE_CMD_CREATE / _DESTROY of an offscreen surface (memory owned here; KEEP_DATA
  // initialises it from the command's data, otherwise it starts zeroed as in spice-server).
  RasterResult apply(const qxlcmd::SurfaceCmd& cmd);
  RasterResult destroySurface(uint32_t id);
  void destroyAll();

  // One QXL draw command on its surface. Output on the primary accumulates until takeOutput();
  // destroying or creating the primary forgets it.
  RasterResult draw(const qxlcmd::Drawable& drawable);

  // Copies the rendered pixels of `area` (clipped to the surface) of surface `id` into
  // `guestMemory`, laid out like the surface (rows of `stride` bytes, top row first; a negative
  // stride means the top row is the last one in memory, as for QXL surfaces).
  RasterResult updateArea(uint32_t id, const qxlcmd::Rect& area, std::span<std::byte> guestMemory,
                          int32_t stride);

  // What changed on the primary since the last call (see PrimaryOutput), then forgets it.
  PrimaryOutput takeOutput();
  // The primary's changed rectangles since the last call, damage and hint rectangles together
  // (what a local shared-memory client needs), coalesced (y-x banded, disjoint).
  std::vector<qxlcmd::Rect> takeDamage();

  const Surface* surface(uint32_t id) const;
  // The 32 bpp image that is shown for the primary (the shadow in VGA modes), or null.
  pixman_image_t* displayImage() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spicebox::renderer
