// Runs in: renderer (sandboxed). Input: decoded command trees (hostile values, checked here
// before use). See raster.h for the rules followed.
#include "renderer/raster.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "renderer/raster-images.h"
#include "renderer/raster-pixels.h"
#include "renderer/raster-stroke.h"

namespace spicebox::renderer {

using pixels::Region;
using pixels::Rop;

std::string_view describe(RasterError error) {
  switch (error) {
    case RasterError::SurfaceIdOutOfRange:
      return "surface id out of range (>= 1024)";
    case RasterError::SurfaceAlreadyExists:
      return "surface created twice without a destroy";
    case RasterError::SurfaceUnknown:
      return "surface id is not live (destroyed or never created)";
    case RasterError::UnsupportedSurfaceFormat:
      return "unsupported surface format";
    case RasterError::BadSurfaceSize:
      return "surface size zero, too large, or stride too small";
    case RasterError::SurfaceMemoryTooSmall:
      return "surface memory smaller than height * stride";
    case RasterError::SourceSurfaceUnknown:
      return "image names a surface that is not live";
    case RasterError::UnsupportedImage:
      return "unsupported image type or bitmap format";
    case RasterError::BadImage:
      return "bitmap size, stride, data or palette inconsistent";
    case RasterError::BadDrawType:
      return "unknown draw type";
    case RasterError::BadGlyphString:
      return "glyph records run past the string data";
    case RasterError::BadCursor:
      return "cursor data shorter than its shape needs";
    case RasterError::UnsupportedCursor:
      return "unsupported cursor type";
    case RasterError::CursorTooLarge:
      return "cursor larger than 512 x 512";
    case RasterError::BadArea:
      return "area or memory does not fit the surface";
    case RasterError::PrimaryByCommand:
      return "surface command on surface 0, the primary (created and destroyed by IO only)";
  }
  return "unknown raster error";
}

namespace {

std::optional<pixman_format_code_t> pixmanFormatOf(uint32_t surfaceFormat) {
  switch (surfaceFormat) {
    case SPICE_SURFACE_FMT_1_A:
      return PIXMAN_a1;
    case SPICE_SURFACE_FMT_8_A:
      return PIXMAN_a8;
    case SPICE_SURFACE_FMT_16_555:
      return PIXMAN_x1r5g5b5;
    case SPICE_SURFACE_FMT_16_565:
      return PIXMAN_r5g6b5;
    case SPICE_SURFACE_FMT_32_xRGB:
      return PIXMAN_x8r8g8b8;
    case SPICE_SURFACE_FMT_32_ARGB:
      return PIXMAN_a8r8g8b8;
    default:
      return std::nullopt;
  }
}

int32_t clampToInt32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(),
                                                  std::numeric_limits<int32_t>::max()));
}

int64_t width(const qxlcmd::Rect& r) {
  return int64_t{r.right} - r.left;
}
int64_t height(const qxlcmd::Rect& r) {
  return int64_t{r.bottom} - r.top;
}
bool sameSize(const qxlcmd::Rect& a, const qxlcmd::Rect& b) {
  return width(a) == width(b) && height(a) == height(b);
}

// Scaled sources through pixman exactly as the reference calls it (same transform arithmetic,
// same filter), so that pixman's rounding is the same on both sides.
void setScaleTransform(pixman_image_t* src, const qxlcmd::Rect& srcArea, int64_t destW,
                       int64_t destH, uint8_t scaleMode) {
  pixman_transform_t t;
  const auto fsx = static_cast<pixman_fixed_t>((width(srcArea) * 65536) / destW);
  const auto fsy = static_cast<pixman_fixed_t>((height(srcArea) * 65536) / destH);
  pixman_transform_init_scale(&t, fsx, fsy);
  pixman_transform_translate(&t, nullptr, pixman_int_to_fixed(srcArea.left),
                             pixman_int_to_fixed(srcArea.top));
  pixman_image_set_transform(src, &t);
  pixman_image_set_repeat(src, PIXMAN_REPEAT_NONE);
  pixman_image_set_filter(
      src, scaleMode == SPICE_IMAGE_SCALE_MODE_NEAREST ? PIXMAN_FILTER_NEAREST : PIXMAN_FILTER_GOOD,
      nullptr, 0);
}
void resetTransform(pixman_image_t* src) {
  pixman_transform_t t;
  pixman_transform_init_identity(&t);
  pixman_image_set_transform(src, &t);
}

// Scales srcArea of src to a new destW x destH image of src's format (canvas_scale_surface).
PixmanImage scaledCopy(pixman_image_t* src, const qxlcmd::Rect& srcArea, int64_t destW,
                       int64_t destH, uint8_t scaleMode) {
  PixmanImage out(pixman_image_create_bits(pixman_image_get_format(src), static_cast<int>(destW),
                                           static_cast<int>(destH), nullptr, 0));
  if (!out) {
    return out;
  }
  setScaleTransform(src, srcArea, destW, destH, scaleMode);
  pixman_image_composite32(PIXMAN_OP_SRC, src, nullptr, out.get(), 0, 0, 0, 0, 0, 0,
                           static_cast<int>(destW), static_cast<int>(destH));
  resetTransform(src);
  return out;
}

bool validPixmanOp(uint32_t op) {
  return op <= PIXMAN_OP_SATURATE ||
         (op >= PIXMAN_OP_DISJOINT_CLEAR && op <= PIXMAN_OP_DISJOINT_XOR) ||
         (op >= PIXMAN_OP_CONJOINT_CLEAR && op <= PIXMAN_OP_CONJOINT_XOR) ||
         (op >= PIXMAN_OP_MULTIPLY && op <= PIXMAN_OP_HSL_LUMINOSITY);
}
pixman_filter_t safeFilter(uint32_t f) {
  // Convolution filters need parameters the command does not carry; NEAREST stands in.
  return f <= PIXMAN_FILTER_BILINEAR ? static_cast<pixman_filter_t>(f) : PIXMAN_FILTER_NEAREST;
}

}  // namespace

struct Rasteriser::Impl {
  std::array<std::unique_ptr<Surface>, MAX_SURFACES> surfaces;
  SurfaceStore* store = nullptr;
  DrawJournal* journal = nullptr;
  // The primary's output since takeOutput(): what draws without a hint changed, the hints, and
  // the hints' rectangles (takeDamage() reports them together with the damage).
  Region damage;
  std::vector<OutputHint> hints;
  Region hinted;

  void clearOutput() {
    pixman_region32_clear(damage.get());
    pixman_region32_clear(hinted.get());
    hints.clear();
  }
  // `region` of the primary was changed by `d` (`failed`: not completely drawn).
  void recordPrimaryOutput(const Surface& s, const qxlcmd::Drawable& d, Region& region,
                           bool failed);
  std::optional<OutputHint> hintFor(const Surface& s, const qxlcmd::Drawable& d, Region& region);

  pixman_image_t* lookup(uint32_t id) const {
    return id < MAX_SURFACES && surfaces[id] ? surfaces[id]->image.get() : nullptr;
  }
  images::SurfaceLookup lookupFn() const {
    return [this](uint32_t id) { return lookup(id); };
  }

  RasterResult checkNew(uint32_t id, uint32_t format, uint32_t w, uint32_t h) const {
    if (id >= MAX_SURFACES) {
      return RasterError::SurfaceIdOutOfRange;
    }
    if (surfaces[id]) {
      return RasterError::SurfaceAlreadyExists;
    }
    if (!pixmanFormatOf(format)) {
      return RasterError::UnsupportedSurfaceFormat;
    }
    if (w == 0 || h == 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION) {
      return RasterError::BadSurfaceSize;
    }
    return std::nullopt;
  }

  // Offscreen surface (or a primary's native image) on memory owned here or taken from the
  // store, zeroed. Its image is null when the store has no room.
  std::unique_ptr<Surface> makeOwned(uint32_t id, uint32_t format, uint32_t w, uint32_t h) {
    auto s = std::make_unique<Surface>();
    s->format = format;
    s->width = w;
    s->height = h;
    const pixman_format_code_t pf = *pixmanFormatOf(format);
    const size_t strideWords = (static_cast<size_t>(w) * PIXMAN_FORMAT_BPP(pf) + 31) / 32;
    uint32_t* bits = nullptr;
    if (store) {
      s->stored = store->allocate(id, uint64_t{strideWords} * 4 * h);
      if (s->stored.empty())
        return s;
      bits = reinterpret_cast<uint32_t*>(s->stored.data());
    } else {
      s->owned.assign(strideWords * h, 0);
      bits = s->owned.data();
    }
    s->image.reset(pixman_image_create_bits(pf, static_cast<int>(w), static_cast<int>(h), bits,
                                            static_cast<int>(strideWords * 4)));
    return s;
  }

  // Surface `id` goes: its stored memory back to the store.
  void drop(uint32_t id) {
    if (!surfaces[id])
      return;
    std::span<std::byte> stored = surfaces[id]->stored;
    surfaces[id].reset();  // the image first: it points into the memory
    if (store && !stored.empty())
      store->release(id, stored);
  }

  // The VGA case: the native image converted into the 32 bpp shadow over `region`.
  void refreshShadow(Surface& s, Region& region) {
    if (!s.shadow) {
      return;
    }
    pixman_image_set_clip_region32(s.shadow.get(), region.get());
    pixman_image_composite32(PIXMAN_OP_SRC, s.image.get(), nullptr, s.shadow.get(), 0, 0, 0, 0, 0,
                             0, static_cast<int>(s.width), static_cast<int>(s.height));
    pixman_image_set_clip_region32(s.shadow.get(), nullptr);
  }

  RasterResult drawOn(Surface& s, uint32_t id, const qxlcmd::Drawable& d);
};

Rasteriser::Rasteriser() : impl_(std::make_unique<Impl>()) {}
Rasteriser::~Rasteriser() = default;

RasterResult Rasteriser::createPrimary(uint32_t w, uint32_t h, int32_t stride, uint32_t format,
                                       std::span<std::byte> memory) {
  if (auto error = impl_->checkNew(0, format, w, h)) {
    return error;
  }
  const pixman_format_code_t pf = *pixmanFormatOf(format);
  const bool direct = PIXMAN_FORMAT_BPP(pf) == 32;
  const int64_t minStride = static_cast<int64_t>(w) * 4;
  if (stride < minStride || stride % 4 != 0) {
    return RasterError::BadSurfaceSize;
  }
  if (static_cast<uint64_t>(stride) * h > memory.size() ||
      reinterpret_cast<uintptr_t>(memory.data()) % 4 != 0) {
    return RasterError::SurfaceMemoryTooSmall;
  }
  auto* bits = reinterpret_cast<uint32_t*>(memory.data());
  std::unique_ptr<Surface> s;
  if (direct) {
    s = std::make_unique<Surface>();
    s->format = format;
    s->width = w;
    s->height = h;
    s->image.reset(
        pixman_image_create_bits(pf, static_cast<int>(w), static_cast<int>(h), bits, stride));
  } else {
    s = impl_->makeOwned(0, format, w, h);
    if (!s->image) {
      return RasterError::SurfaceMemoryTooSmall;
    }
    s->shadow.reset(pixman_image_create_bits(PIXMAN_x8r8g8b8, static_cast<int>(w),
                                             static_cast<int>(h), bits, stride));
    Region all(0, 0, static_cast<int32_t>(w), static_cast<int32_t>(h));
    impl_->refreshShadow(*s, all);
  }
  impl_->surfaces[0] = std::move(s);
  impl_->clearOutput();  // output of an earlier primary means nothing for this one
  return std::nullopt;
}

RasterResult Rasteriser::movePrimary(std::span<std::byte> memory) {
  Surface* s = impl_->surfaces[0].get();
  if (s == nullptr) {
    return RasterError::SurfaceUnknown;
  }
  pixman_image_t* shown = s->shadow ? s->shadow.get() : s->image.get();
  const int stride = pixman_image_get_stride(shown);
  if (static_cast<uint64_t>(stride) * s->height > memory.size() ||
      reinterpret_cast<uintptr_t>(memory.data()) % 4 != 0) {
    return RasterError::SurfaceMemoryTooSmall;
  }
  PixmanImage moved(pixman_image_create_bits(
      pixman_image_get_format(shown), static_cast<int>(s->width), static_cast<int>(s->height),
      reinterpret_cast<uint32_t*>(memory.data()), stride));
  if (!moved) {
    return RasterError::BadSurfaceSize;
  }
  (s->shadow ? s->shadow : s->image) = std::move(moved);
  return std::nullopt;
}

RasterResult Rasteriser::loadPrimary(std::span<const std::byte> guestMemory, int32_t stride) {
  Surface* s = impl_->surfaces[0].get();
  if (s == nullptr) {
    return RasterError::SurfaceUnknown;
  }
  pixman_image_t* img = s->image.get();
  const uint64_t rowBytes = (static_cast<uint64_t>(s->width) * pixels::bitsPerPixel(img) + 7) / 8;
  const uint64_t absStride = stride < 0 ? -static_cast<int64_t>(stride) : stride;
  if (absStride < rowBytes || absStride * s->height > guestMemory.size()) {
    return RasterError::BadArea;
  }
  // Raw bytes only: the guest may change them while we copy, which costs it its own picture.
  auto* dest = reinterpret_cast<uint8_t*>(pixman_image_get_data(img));
  const size_t destStride = static_cast<size_t>(pixman_image_get_stride(img));
  const auto* src = reinterpret_cast<const uint8_t*>(guestMemory.data());
  for (uint32_t y = 0; y < s->height; ++y) {
    const uint64_t srcRow = stride < 0 ? s->height - 1 - y : y;
    std::memcpy(dest + destStride * y, src + absStride * srcRow, rowBytes);
  }
  Region all(0, 0, static_cast<int32_t>(s->width), static_cast<int32_t>(s->height));
  impl_->refreshShadow(*s, all);
  return std::nullopt;
}

RasterResult Rasteriser::apply(const qxlcmd::SurfaceCmd& cmd) {
  // Surface 0 is the primary: created into its display segment and destroyed by the device's IO
  // ports only. A surface command on it would leave the renderer's primary out of step with the
  // one the broker knows (and checks the output against).
  if (cmd.surfaceId == 0) {
    return RasterError::PrimaryByCommand;
  }
  if (cmd.type == QXL_SURFACE_CMD_DESTROY) {
    return destroySurface(cmd.surfaceId);
  }
  if (auto error = impl_->checkNew(cmd.surfaceId, cmd.format, cmd.width, cmd.height)) {
    return error;
  }
  const pixman_format_code_t pf = *pixmanFormatOf(cmd.format);
  const uint64_t rowBytes = (static_cast<uint64_t>(cmd.width) * PIXMAN_FORMAT_BPP(pf) + 7) / 8;
  const uint64_t absStride = cmd.stride < 0 ? -static_cast<int64_t>(cmd.stride) : cmd.stride;
  if (absStride < rowBytes) {
    return RasterError::BadSurfaceSize;
  }
  if ((cmd.flags & QXL_SURF_FLAG_KEEP_DATA) && absStride * cmd.height > cmd.data.size()) {
    return RasterError::SurfaceMemoryTooSmall;
  }
  auto s = impl_->makeOwned(cmd.surfaceId, cmd.format, cmd.width, cmd.height);
  if (!s->image) {
    // No room in the store (or pixman refused the size): nothing was drawn on it.
    const bool full = impl_->store && s->stored.empty();
    if (impl_->store && !s->stored.empty()) {
      impl_->store->release(cmd.surfaceId, s->stored);
    }
    return full ? RasterError::SurfaceMemoryTooSmall : RasterError::BadSurfaceSize;
  }
  if (cmd.flags & QXL_SURF_FLAG_KEEP_DATA) {
    // Negative stride: the top row is the last one in memory.
    auto* dest = reinterpret_cast<uint8_t*>(pixman_image_get_data(s->image.get()));
    const size_t destStride = static_cast<size_t>(pixman_image_get_stride(s->image.get()));
    for (uint32_t y = 0; y < cmd.height; ++y) {
      const uint32_t srcRow = cmd.stride < 0 ? cmd.height - 1 - y : y;
      std::memcpy(dest + destStride * y, cmd.data.data() + absStride * srcRow, rowBytes);
    }
  }
  impl_->surfaces[cmd.surfaceId] = std::move(s);
  return std::nullopt;
}

RasterResult Rasteriser::destroySurface(uint32_t id) {
  if (id >= MAX_SURFACES) {
    return RasterError::SurfaceIdOutOfRange;
  }
  if (!impl_->surfaces[id]) {
    return RasterError::SurfaceUnknown;
  }
  impl_->drop(id);
  if (id == 0) {
    impl_->clearOutput();
  }
  return std::nullopt;
}

void Rasteriser::destroyAll() {
  for (uint32_t id = 0; id < MAX_SURFACES; ++id) {
    impl_->drop(id);
  }
  impl_->clearOutput();
}

void Rasteriser::setSurfaceStore(SurfaceStore* store) {
  impl_->store = store;
}

void Rasteriser::setJournal(DrawJournal* journal) {
  impl_->journal = journal;
}

std::optional<uint32_t> Rasteriser::ownStride(uint32_t format, uint32_t width) {
  const auto pf = pixmanFormatOf(format);
  if (!pf || width == 0 || width > MAX_SURFACE_DIMENSION) {
    return std::nullopt;
  }
  return static_cast<uint32_t>((uint64_t{width} * PIXMAN_FORMAT_BPP(*pf) + 31) / 32 * 4);
}

RasterResult Rasteriser::adoptSurface(uint32_t id, uint32_t format, uint32_t w, uint32_t h,
                                      std::span<std::byte> memory) {
  if (id == 0) {
    return RasterError::PrimaryByCommand;
  }
  if (auto error = impl_->checkNew(id, format, w, h)) {
    return error;
  }
  const uint32_t stride = *ownStride(format, w);
  if (uint64_t{stride} * h > memory.size() || reinterpret_cast<uintptr_t>(memory.data()) % 4 != 0) {
    return RasterError::SurfaceMemoryTooSmall;
  }
  auto s = std::make_unique<Surface>();
  s->format = format;
  s->width = w;
  s->height = h;
  s->stored = memory.first(uint64_t{stride} * h);
  s->image.reset(pixman_image_create_bits(
      *pixmanFormatOf(format), static_cast<int>(w), static_cast<int>(h),
      reinterpret_cast<uint32_t*>(memory.data()), static_cast<int>(stride)));
  if (!s->image) {
    return RasterError::BadSurfaceSize;
  }
  impl_->surfaces[id] = std::move(s);
  return std::nullopt;
}

RasterResult Rasteriser::adoptPrimary(uint32_t w, uint32_t h, int32_t stride, uint32_t format,
                                      std::span<std::byte> shown, std::span<std::byte> native) {
  if (auto error = impl_->checkNew(0, format, w, h)) {
    return error;
  }
  const pixman_format_code_t pf = *pixmanFormatOf(format);
  if (stride < static_cast<int64_t>(w) * 4 || stride % 4 != 0) {
    return RasterError::BadSurfaceSize;
  }
  if (static_cast<uint64_t>(stride) * h > shown.size() ||
      reinterpret_cast<uintptr_t>(shown.data()) % 4 != 0) {
    return RasterError::SurfaceMemoryTooSmall;
  }
  auto s = std::make_unique<Surface>();
  s->format = format;
  s->width = w;
  s->height = h;
  auto* shownBits = reinterpret_cast<uint32_t*>(shown.data());
  if (PIXMAN_FORMAT_BPP(pf) == 32) {
    s->image.reset(
        pixman_image_create_bits(pf, static_cast<int>(w), static_cast<int>(h), shownBits, stride));
  } else {
    const uint32_t nativeStride = *ownStride(format, w);
    if (uint64_t{nativeStride} * h > native.size() ||
        reinterpret_cast<uintptr_t>(native.data()) % 4 != 0) {
      return RasterError::SurfaceMemoryTooSmall;
    }
    s->stored = native.first(uint64_t{nativeStride} * h);
    s->image.reset(pixman_image_create_bits(pf, static_cast<int>(w), static_cast<int>(h),
                                            reinterpret_cast<uint32_t*>(native.data()),
                                            static_cast<int>(nativeStride)));
    s->shadow.reset(pixman_image_create_bits(PIXMAN_x8r8g8b8, static_cast<int>(w),
                                             static_cast<int>(h), shownBits, stride));
  }
  if (!s->image) {
    return RasterError::BadSurfaceSize;
  }
  impl_->surfaces[0] = std::move(s);
  impl_->clearOutput();
  return std::nullopt;
}

void Rasteriser::refreshPrimaryShadow(const pixman_box32_t& box) {
  Surface* s = impl_->surfaces[0].get();
  if (s == nullptr) {
    return;
  }
  Region region(box.x1, box.y1, box.x2, box.y2);
  impl_->refreshShadow(*s, region);
}

const Surface* Rasteriser::surface(uint32_t id) const {
  return id < MAX_SURFACES ? impl_->surfaces[id].get() : nullptr;
}

pixman_image_t* Rasteriser::displayImage() const {
  const Surface* s = impl_->surfaces[0].get();
  if (s == nullptr) {
    return nullptr;
  }
  return s->shadow ? s->shadow.get() : s->image.get();
}

std::vector<qxlcmd::Rect> Rasteriser::takeDamage() {
  std::vector<qxlcmd::Rect> out;
  impl_->damage.unite(impl_->hinted);
  int n = 0;
  pixman_box32_t* boxes = impl_->damage.rects(&n);
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    out.push_back(qxlcmd::Rect{boxes[i].y1, boxes[i].x1, boxes[i].y2, boxes[i].x2});
  }
  impl_->clearOutput();
  return out;
}

PrimaryOutput Rasteriser::takeOutput() {
  PrimaryOutput out;
  int n = 0;
  pixman_box32_t* boxes = impl_->damage.rects(&n);
  if (static_cast<size_t>(n) > MAX_DAMAGE_RECTS) {
    // Too many to report one by one: their bounding box (repainting unchanged pixels is safe).
    const pixman_box32_t* e = pixman_region32_extents(impl_->damage.get());
    out.damage.push_back(qxlcmd::Rect{e->y1, e->x1, e->y2, e->x2});
  } else {
    out.damage.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      out.damage.push_back(qxlcmd::Rect{boxes[i].y1, boxes[i].x1, boxes[i].y2, boxes[i].x2});
    }
  }
  out.hints = std::move(impl_->hints);
  impl_->clearOutput();
  return out;
}

std::optional<OutputHint> Rasteriser::Impl::hintFor(const Surface& s, const qxlcmd::Drawable& d,
                                                    Region& region) {
  int n = 0;
  const pixman_box32_t* boxes = region.rects(&n);
  if (const auto* f = std::get_if<qxlcmd::Fill>(&d.payload)) {
    // Exact only when the stored pixel is the brush colour: a solid PUT without mask, drawn
    // straight into the shown 32 bpp image (a shadow holds a converted colour).
    if (s.shadow || f->brush.type != SPICE_BRUSH_TYPE_SOLID || f->mask.bitmap ||
        pixels::ropFromDescriptor(f->ropDescriptor, SPICE_ROPD_INVERS_BRUSH,
                                  SPICE_ROPD_INVERS_DEST) != Rop::Copy ||
        n < 1 || static_cast<size_t>(n) > MAX_HINT_RECTS) {
      return std::nullopt;
    }
    SolidFillHint hint{f->brush.color, {}};
    for (int i = 0; i < n; ++i) {
      hint.rects.push_back(qxlcmd::Rect{boxes[i].y1, boxes[i].x1, boxes[i].y2, boxes[i].x2});
    }
    return hint;
  }
  if (const auto* cb = std::get_if<qxlcmd::CopyBits>(&d.payload)) {
    // One destination rectangle (several would have to be copied from one snapshot). drawCopyBits
    // left only destinations whose source lies on the surface in `region`.
    if (n != 1) {
      return std::nullopt;
    }
    const int64_t dx = int64_t{d.bbox.left} - cb->srcPos.x;
    const int64_t dy = int64_t{d.bbox.top} - cb->srcPos.y;
    const pixman_box32_t& b = boxes[0];
    const int64_t sx = b.x1 - dx, sy = b.y1 - dy;
    if (sx < 0 || sy < 0 || sx + (b.x2 - b.x1) > s.width || sy + (b.y2 - b.y1) > s.height) {
      return std::nullopt;
    }
    // The client's copy of the source must equal ours: no damage it has not seen yet there.
    Region source(static_cast<int32_t>(sx), static_cast<int32_t>(sy),
                  static_cast<int32_t>(sx + (b.x2 - b.x1)),
                  static_cast<int32_t>(sy + (b.y2 - b.y1)));
    source.intersect(damage);
    if (!source.empty()) {
      return std::nullopt;
    }
    return CopyBitsHint{static_cast<int32_t>(sx), static_cast<int32_t>(sy),
                        qxlcmd::Rect{b.y1, b.x1, b.y2, b.x2}};
  }
  return std::nullopt;
}

void Rasteriser::Impl::recordPrimaryOutput(const Surface& s, const qxlcmd::Drawable& d,
                                           Region& region, bool failed) {
  std::optional<OutputHint> hint;
  if (!failed && hints.size() < MAX_HINTS) {
    hint = hintFor(s, d, region);
  }
  if (hint) {
    hints.push_back(std::move(*hint));
    hinted.unite(region);
  } else {
    damage.unite(region);
  }
}

RasterResult Rasteriser::updateArea(uint32_t id, const qxlcmd::Rect& area,
                                    std::span<std::byte> guestMemory, int32_t stride) {
  if (id >= MAX_SURFACES) {
    return RasterError::SurfaceIdOutOfRange;
  }
  const Surface* s = impl_->surfaces[id].get();
  if (s == nullptr) {
    return RasterError::SurfaceUnknown;
  }
  pixman_image_t* img = s->image.get();
  const int bpp = pixels::bitsPerPixel(img);
  const uint64_t rowBytes = (static_cast<uint64_t>(s->width) * bpp + 7) / 8;
  const uint64_t absStride = stride < 0 ? -static_cast<int64_t>(stride) : stride;
  if (absStride < rowBytes || absStride * s->height > guestMemory.size()) {
    return RasterError::BadArea;
  }
  const int32_t x1 = std::max(area.left, 0), y1 = std::max(area.top, 0);
  const int32_t x2 = std::min<int64_t>(area.right, s->width);
  const int32_t y2 = std::min<int64_t>(area.bottom, s->height);
  if (x2 <= x1 || y2 <= y1) {
    return std::nullopt;  // nothing to copy
  }
  auto* mem = reinterpret_cast<uint8_t*>(guestMemory.data());
  const auto* bits = reinterpret_cast<const uint8_t*>(pixman_image_get_data(img));
  const size_t imgStride = static_cast<size_t>(pixman_image_get_stride(img));
  // Whole bytes covering [x1, x2); at 1 bpp the partial bytes at the edges are rewritten whole.
  const size_t b1 = static_cast<size_t>(x1) * bpp / 8;
  const size_t b2 = (static_cast<size_t>(x2) * bpp + 7) / 8;
  for (int32_t y = y1; y < y2; ++y) {
    const uint64_t memRow = stride < 0 ? s->height - 1 - static_cast<uint32_t>(y) : y;
    std::memcpy(mem + memRow * absStride + b1, bits + imgStride * y + b1, b2 - b1);
  }
  return std::nullopt;
}

RasterResult Rasteriser::draw(const qxlcmd::Drawable& d) {
  const uint32_t id = d.surfaceId;
  if (id >= MAX_SURFACES) {
    return RasterError::SurfaceIdOutOfRange;
  }
  Surface* s = impl_->surfaces[id].get();
  if (s == nullptr) {
    return RasterError::SurfaceUnknown;
  }
  if (d.payload.index() != d.type) {
    return RasterError::BadDrawType;
  }
  return impl_->drawOn(*s, id, d);
}

// ------------------------------------------------------------------ the draw types

namespace {

struct DrawContext {
  Surface& surface;
  pixman_image_t* dest;
  pixman_format_code_t format;
  const qxlcmd::Drawable& d;
  const images::SurfaceLookup& lookup;
  Region region;  // bbox ∩ surface ∩ clip (∩ mask where the type has one)

  DrawContext(Surface& s, const qxlcmd::Drawable& drawable, const images::SurfaceLookup& l)
      : surface(s),
        dest(s.image.get()),
        format(pixman_image_get_format(s.image.get())),
        d(drawable),
        lookup(l),
        region(std::max(drawable.bbox.left, 0), std::max(drawable.bbox.top, 0),
               clampToInt32(std::min<int64_t>(drawable.bbox.right, s.width)),
               clampToInt32(std::min<int64_t>(drawable.bbox.bottom, s.height))) {
    if (d.clip.type == SPICE_CLIP_TYPE_RECTS) {
      Region clip;
      for (const auto& r : d.clip.rects) {
        Region one(r.left, r.top, r.right, r.bottom);
        clip.unite(one);
      }
      region.intersect(clip);
    }
  }

  RasterResult applyMask(const qxlcmd::QMask& mask) {
    if (!mask.bitmap) {
      return std::nullopt;
    }
    auto m = images::maskImage(*mask.bitmap, lookup);
    if (auto* e = std::get_if<RasterError>(&m)) {
      return *e;
    }
    pixman_image_t* img = std::get<PixmanImage>(m).get();
    Region maskRegion;
    pixman_region32_init_from_image(maskRegion.get(), img);
    if (mask.flags & SPICE_MASK_FLAGS_INVERS) {
      pixman_box32_t all{0, 0, pixman_image_get_width(img), pixman_image_get_height(img)};
      pixman_region32_inverse(maskRegion.get(), maskRegion.get(), &all);
    }
    // Mask pixel (pos.x, pos.y) lies on the bbox's top-left corner.
    pixman_region32_translate(maskRegion.get(), clampToInt32(int64_t{d.bbox.left} - mask.pos.x),
                              clampToInt32(int64_t{d.bbox.top} - mask.pos.y));
    region.intersect(maskRegion);
    return std::nullopt;
  }

  std::variant<PixmanImage, RasterError> image(const qxlcmd::Image& img, bool wantOriginal) {
    return images::imageForCanvas(img, format, wantOriginal, lookup);
  }

  // draw_brush of the reference.
  RasterResult brush(const qxlcmd::Brush& b, Rop rop) {
    if (b.type == SPICE_BRUSH_TYPE_SOLID) {
      pixels::fillRegion(dest, region, b.color, rop);
    } else if (b.type == SPICE_BRUSH_TYPE_PATTERN) {
      if (!b.pattern) {
        return RasterError::BadImage;
      }
      auto tile = image(*b.pattern, false);
      if (auto* e = std::get_if<RasterError>(&tile)) {
        return *e;
      }
      pixels::tileRegion(dest, region, std::get<PixmanImage>(tile).get(), b.patternPos.x,
                         b.patternPos.y, rop);
    } else {
      // NONE: still applied, the rop may ignore the brush (e.g. invert the destination).
      pixels::fillRegion(dest, region, 0, rop);
    }
    return std::nullopt;
  }

  // COPY / BLEND / OPAQUE source step: blit or scale `srcArea` of the image onto the bbox.
  RasterResult source(const std::optional<qxlcmd::Image>& src, const qxlcmd::Rect& srcArea,
                      uint8_t scaleMode, Rop rop) {
    if (!src) {
      return RasterError::BadImage;
    }
    auto got = image(*src, false);
    if (auto* e = std::get_if<RasterError>(&got)) {
      return *e;
    }
    pixman_image_t* img = std::get<PixmanImage>(got).get();
    PixmanImage selfCopy;
    if (img == dest) {  // a surface copied onto itself: read from a snapshot
      selfCopy = images::convertImage(dest, format);
      if (!selfCopy) {
        return RasterError::BadImage;
      }
      img = selfCopy.get();
    }
    const qxlcmd::Rect& bbox = d.bbox;
    if (sameSize(bbox, srcArea)) {
      pixels::blitRegion(dest, region, img, int64_t{bbox.left} - srcArea.left,
                         int64_t{bbox.top} - srcArea.top, rop);
      return std::nullopt;
    }
    const int64_t w = width(bbox), h = height(bbox);
    if (w <= 0 || h <= 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION ||
        width(srcArea) < 0 || height(srcArea) < 0) {
      return RasterError::BadArea;
    }
    if (rop == Rop::Copy) {
      // __scale_image: SRC composite through the clip region straight onto the canvas.
      setScaleTransform(img, srcArea, w, h, scaleMode);
      pixman_image_set_clip_region32(dest, region.get());
      pixman_image_composite32(PIXMAN_OP_SRC, img, nullptr, dest, 0, 0, 0, 0, bbox.left, bbox.top,
                               static_cast<int>(w), static_cast<int>(h));
      pixman_image_set_clip_region32(dest, nullptr);
      resetTransform(img);
      return std::nullopt;
    }
    PixmanImage scaled = scaledCopy(img, srcArea, w, h, scaleMode);
    if (!scaled) {
      return RasterError::BadArea;
    }
    pixels::blitRegion(dest, region, scaled.get(), bbox.left, bbox.top, rop);
    return std::nullopt;
  }
};

// COPY_BITS on a 1 bpp surface: a snapshot of the source, then a blit (rare; not worth an
// in-place bit copy).
RasterResult copyBitsSnapshot(DrawContext& c, int64_t dx, int64_t dy) {
  const pixman_box32_t* box = pixman_region32_extents(c.region.get());
  const int32_t sx = clampToInt32(box->x1 - dx), sy = clampToInt32(box->y1 - dy);
  const int w = box->x2 - box->x1, h = box->y2 - box->y1;
  PixmanImage snapshot(pixman_image_create_bits(c.format, w, h, nullptr, 0));
  if (!snapshot) {
    return RasterError::BadArea;
  }
  pixman_image_composite32(PIXMAN_OP_SRC, c.dest, nullptr, snapshot.get(), sx, sy, 0, 0, 0, 0, w,
                           h);
  pixels::blitRegion(c.dest, c.region, snapshot.get(), dx + sx, dy + sy, pixels::Rop::Copy);
  return std::nullopt;
}

RasterResult drawCopyBits(DrawContext& c, const qxlcmd::CopyBits& cb) {
  const int64_t dx = int64_t{c.d.bbox.left} - cb.srcPos.x;
  const int64_t dy = int64_t{c.d.bbox.top} - cb.srcPos.y;
  if (dx == 0 && dy == 0) {
    return std::nullopt;
  }
  // Only destinations whose source lies on the surface (canvas_copy_bits).
  Region source(clampToInt32(dx), clampToInt32(dy), clampToInt32(dx + c.surface.width),
                clampToInt32(dy + c.surface.height));
  c.region.intersect(source);
  if (c.region.empty()) {
    return std::nullopt;
  }
  // Copied in place, one memmove per row: every row is read before anything overwrites it, so
  // overlapping source and destination give the pixels as they were before the command (what
  // the reference's ordered row copies give). Rows go bottom-up when the destination lies below
  // the source; with no vertical move a row reads only itself, so its rectangles go right to left
  // when the destination lies to the right (memmove handles the overlap inside one rectangle).
  const int bpp = PIXMAN_FORMAT_BPP(c.format);
  if (bpp < 8) {
    return copyBitsSnapshot(c, dx, dy);
  }
  const int64_t imgW = pixman_image_get_width(c.dest), imgH = pixman_image_get_height(c.dest);
  auto* bits = reinterpret_cast<uint8_t*>(pixman_image_get_data(c.dest));
  const ptrdiff_t stride = pixman_image_get_stride(c.dest);
  const size_t pixelBytes = static_cast<size_t>(bpp / 8);
  int n = 0;
  const pixman_box32_t* boxes = pixman_region32_rectangles(c.region.get(), &n);
  // Defensive: every rectangle and its source inside the surface (the region is clipped to both).
  for (int i = 0; i < n; ++i) {
    const pixman_box32_t& b = boxes[i];
    if (b.x1 < 0 || b.y1 < 0 || b.x2 > imgW || b.y2 > imgH || b.x1 - dx < 0 || b.y1 - dy < 0 ||
        b.x2 - dx > imgW || b.y2 - dy > imgH) {
      return RasterError::BadArea;
    }
  }
  const bool bottomUp = dy > 0;
  const bool rightToLeft = dy == 0 && dx > 0;
  // pixman's rectangles are y-x banded: sorted by y1, one band's rectangles share y1 and y2.
  int bandStart = bottomUp ? n - 1 : 0;
  while (bottomUp ? bandStart >= 0 : bandStart < n) {
    int bandEnd = bandStart;  // inclusive, the band's other end in the walking direction
    const int step = bottomUp ? -1 : 1;
    while (bandEnd + step >= 0 && bandEnd + step < n &&
           boxes[bandEnd + step].y1 == boxes[bandStart].y1) {
      bandEnd += step;
    }
    const int lo = std::min(bandStart, bandEnd), hi = std::max(bandStart, bandEnd);
    const int32_t y1 = boxes[lo].y1, y2 = boxes[lo].y2;
    for (int32_t r = 0; r < y2 - y1; ++r) {
      const int64_t y = bottomUp ? y2 - 1 - r : y1 + r;
      uint8_t* destRow = bits + stride * y;
      const uint8_t* srcRow = bits + stride * (y - dy);
      for (int k = 0; k <= hi - lo; ++k) {
        const pixman_box32_t& b = boxes[rightToLeft ? hi - k : lo + k];
        std::memmove(destRow + static_cast<size_t>(b.x1) * pixelBytes,
                     srcRow + static_cast<size_t>(b.x1 - dx) * pixelBytes,
                     static_cast<size_t>(b.x2 - b.x1) * pixelBytes);
      }
    }
    bandStart = bandEnd + step;
  }
  return std::nullopt;
}

RasterResult drawRop3(DrawContext& c, const qxlcmd::Rop3& r) {
  const qxlcmd::Rect& bbox = c.d.bbox;
  const int64_t w = width(bbox), h = height(bbox);
  if (w <= 0 || h <= 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION) {
    return std::nullopt;
  }
  if (!r.srcBitmap) {
    return RasterError::BadImage;
  }
  auto got = c.image(*r.srcBitmap, false);
  if (auto* e = std::get_if<RasterError>(&got)) {
    return *e;
  }
  PixmanImage src = std::move(std::get<PixmanImage>(got));
  int64_t sx = r.srcArea.left, sy = r.srcArea.top;
  if (!sameSize(bbox, r.srcArea)) {
    src = scaledCopy(src.get(), r.srcArea, w, h, r.scaleMode);
    if (!src) {
      return RasterError::BadArea;
    }
    sx = sy = 0;
  }
  if (sx < 0 || sy < 0 || pixman_image_get_width(src.get()) - sx < w ||
      pixman_image_get_height(src.get()) - sy < h) {
    return RasterError::BadArea;  // the reference refuses ("bad src bitmap size")
  }
  PixmanImage pattern;
  if (r.brush.type == SPICE_BRUSH_TYPE_PATTERN) {
    if (!r.brush.pattern) {
      return RasterError::BadImage;
    }
    auto p = c.image(*r.brush.pattern, false);
    if (auto* e = std::get_if<RasterError>(&p)) {
      return *e;
    }
    pattern = std::move(std::get<PixmanImage>(p));
  }
  const int bpp = pixels::bitsPerPixel(c.dest);
  if (pixels::bitsPerPixel(src.get()) != bpp ||
      (pattern && pixels::bitsPerPixel(pattern.get()) != bpp)) {
    return RasterError::UnsupportedImage;
  }
  // The ROP3's eight minterms as all-ones / all-zero masks: the same bits as
  // pixels::applyRop3, without a loop per pixel.
  std::array<uint32_t, 8> m{};
  for (unsigned idx = 0; idx < 8; ++idx) {
    m[idx] = (r.rop3 & (1u << idx)) ? 0xffffffffu : 0u;
  }
  auto rop3 = [&m](uint32_t p, uint32_t s, uint32_t d) {
    return (m[7] & p & s & d) | (m[6] & p & s & ~d) | (m[5] & p & ~s & d) | (m[4] & p & ~s & ~d) |
           (m[3] & ~p & s & d) | (m[2] & ~p & s & ~d) | (m[1] & ~p & ~s & d) |
           (m[0] & ~p & ~s & ~d);
  };
  const int pw = pattern ? pixman_image_get_width(pattern.get()) : 1;
  const int ph = pattern ? pixman_image_get_height(pattern.get()) : 1;
  if (pw <= 0 || ph <= 0) {
    return RasterError::BadImage;
  }
  auto positiveMod = [](int64_t v, int64_t mod) {
    const int64_t rem = v % mod;
    return rem < 0 ? rem + mod : rem;
  };
  // Rows of pixels of type T, in the same order as a pixel-by-pixel walk (the source may be the
  // destination surface itself).
  auto run = [&](auto pixel) {
    using T = decltype(pixel);
    auto rowOf = [](pixman_image_t* img, int64_t y) {
      return reinterpret_cast<T*>(reinterpret_cast<uint8_t*>(pixman_image_get_data(img)) +
                                  static_cast<ptrdiff_t>(y) * pixman_image_get_stride(img));
    };
    int n = 0;
    pixman_box32_t* boxes = c.region.rects(&n);
    for (int i = 0; i < n; ++i) {
      const pixman_box32_t& b = boxes[i];
      const int64_t px0 = pattern ? positiveMod(b.x1 - int64_t{r.brush.patternPos.x}, pw) : 0;
      for (int y = b.y1; y < b.y2; ++y) {
        T* dest = rowOf(c.dest, y);
        const T* srcRow = rowOf(src.get(), sy + (y - bbox.top));
        const int64_t srcShift = sx - bbox.left;  // >= -x for every x of the region (in bbox)
        const T* patRow =
            pattern ? rowOf(pattern.get(), positiveMod(y - int64_t{r.brush.patternPos.y}, ph))
                    : nullptr;
        int64_t px = px0;
        for (int x = b.x1; x < b.x2; ++x) {
          uint32_t p = r.brush.color;
          if (patRow) {
            p = patRow[px];
            if (++px == pw) {
              px = 0;
            }
          }
          dest[x] = static_cast<T>(rop3(p, srcRow[srcShift + x], dest[x]));
        }
      }
    }
  };
  switch (bpp) {
    case 32:
      run(uint32_t{});
      break;
    case 16:
      run(uint16_t{});
      break;
    case 8:
      run(uint8_t{});
      break;
    default: {  // 1 bpp: pixel by pixel
      int n = 0;
      pixman_box32_t* boxes = c.region.rects(&n);
      for (int i = 0; i < n; ++i) {
        for (int y = boxes[i].y1; y < boxes[i].y2; ++y) {
          for (int x = boxes[i].x1; x < boxes[i].x2; ++x) {
            const int64_t ox = x - bbox.left, oy = y - bbox.top;
            uint32_t p = r.brush.color;
            if (pattern) {
              p = pixels::getPixel(
                  pattern.get(),
                  static_cast<int>(positiveMod(x - int64_t{r.brush.patternPos.x}, pw)),
                  static_cast<int>(positiveMod(y - int64_t{r.brush.patternPos.y}, ph)));
            }
            const uint32_t s =
                pixels::getPixel(src.get(), static_cast<int>(sx + ox), static_cast<int>(sy + oy));
            pixels::putPixel(c.dest, x, y,
                             pixels::applyRop3(r.rop3, p, s, pixels::getPixel(c.dest, x, y)));
          }
        }
      }
    }
  }
  return std::nullopt;
}

RasterResult drawTransparent(DrawContext& c, const qxlcmd::Transparent& t) {
  if (!t.srcBitmap) {
    return RasterError::BadImage;
  }
  uint32_t key = 0;
  switch (c.surface.format) {
    case SPICE_SURFACE_FMT_32_xRGB:
    case SPICE_SURFACE_FMT_32_ARGB:
      key = t.trueColor;
      break;
    case SPICE_SURFACE_FMT_16_555:
      key = ((t.trueColor >> 3) & 0x001f) | ((t.trueColor >> 6) & 0x03e0) |
            ((t.trueColor >> 9) & 0x7c00);
      break;
    case SPICE_SURFACE_FMT_16_565:
      key = ((t.trueColor >> 3) & 0x001f) | ((t.trueColor >> 5) & 0x07e0) |
            ((t.trueColor >> 8) & 0xf800);
      break;
    default:
      key = 0;
  }
  auto got = c.image(*t.srcBitmap, false);
  if (auto* e = std::get_if<RasterError>(&got)) {
    return *e;
  }
  PixmanImage src = std::move(std::get<PixmanImage>(got));
  const qxlcmd::Rect& bbox = c.d.bbox;
  if (sameSize(bbox, t.srcArea)) {
    pixels::colorKeyRegion(c.dest, c.region, src.get(), int64_t{bbox.left} - t.srcArea.left,
                           int64_t{bbox.top} - t.srcArea.top, key);
    return std::nullopt;
  }
  const int64_t w = width(bbox), h = height(bbox);
  if (w <= 0 || h <= 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION) {
    return RasterError::BadArea;
  }
  PixmanImage scaled = scaledCopy(src.get(), t.srcArea, w, h, SPICE_IMAGE_SCALE_MODE_NEAREST);
  if (!scaled) {
    return RasterError::BadArea;
  }
  pixels::colorKeyRegion(c.dest, c.region, scaled.get(), bbox.left, bbox.top, key);
  return std::nullopt;
}

// clear_dest_alpha of the reference: after OVER onto an xRGB canvas, if the first pixel of the
// bbox (clipped to the image) came out with alpha 0xff, the alpha bytes of that whole rectangle
// are cleared, whatever the clip.
void clearDestAlpha(pixman_image_t* dest, int64_t x, int64_t y, int64_t w, int64_t h) {
  const int64_t iw = pixman_image_get_width(dest), ih = pixman_image_get_height(dest);
  const int64_t x1 = std::max<int64_t>(x, 0), y1 = std::max<int64_t>(y, 0);
  const int64_t x2 = std::min(x + w, iw), y2 = std::min(y + h, ih);
  if (x2 <= x1 || y2 <= y1) {
    return;
  }
  if ((pixels::getPixel(dest, static_cast<int>(x1), static_cast<int>(y1)) & 0xff000000u) !=
      0xff000000u) {
    return;
  }
  Region r(static_cast<int32_t>(x1), static_cast<int32_t>(y1), static_cast<int32_t>(x2),
           static_cast<int32_t>(y2));
  pixels::fillRegion(dest, r, 0x00ffffffu, Rop::And);
}

RasterResult drawAlphaBlend(DrawContext& c, const qxlcmd::AlphaBlend& a) {
  if (a.alpha == 0 || c.region.empty()) {
    return std::nullopt;
  }
  if (!a.srcBitmap) {
    return RasterError::BadImage;
  }
  const bool destHasAlpha = a.alphaFlags & SPICE_ALPHA_FLAGS_DEST_HAS_ALPHA;
  PixmanImage src;
  if (const auto* si = std::get_if<qxlcmd::SurfaceImage>(&a.srcBitmap->payload)) {
    pixman_image_t* img = c.lookup(si->surfaceId);
    if (img == nullptr) {
      return RasterError::SourceSurfaceUnknown;
    }
    const bool srcHasAlpha = a.alphaFlags & SPICE_ALPHA_FLAGS_SRC_SURFACE_HAS_ALPHA;
    if (srcHasAlpha && pixman_image_get_format(img) == PIXMAN_x8r8g8b8) {
      src.reset(pixman_image_create_bits(PIXMAN_a8r8g8b8, pixman_image_get_width(img),
                                         pixman_image_get_height(img), pixman_image_get_data(img),
                                         pixman_image_get_stride(img)));
    } else {
      src = images::convertImage(img, pixman_image_get_format(img));  // not aliased with dest
    }
  } else {
    auto got = c.image(*a.srcBitmap, true);
    if (auto* e = std::get_if<RasterError>(&got)) {
      return *e;
    }
    src = std::move(std::get<PixmanImage>(got));
  }
  if (!src) {
    return RasterError::BadImage;
  }
  const bool xrgb = c.surface.format == SPICE_SURFACE_FMT_32_xRGB;
  PixmanImage dest;
  if (destHasAlpha && xrgb) {
    dest.reset(pixman_image_create_bits(
        PIXMAN_a8r8g8b8, pixman_image_get_width(c.dest), pixman_image_get_height(c.dest),
        pixman_image_get_data(c.dest), pixman_image_get_stride(c.dest)));
  } else {
    dest.reset(pixman_image_ref(c.dest));
  }
  const qxlcmd::Rect& bbox = c.d.bbox;
  const int64_t w = width(bbox), h = height(bbox);
  if (w <= 0 || h <= 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION) {
    return std::nullopt;
  }
  PixmanImage mask;
  if (a.alpha != 0xff) {
    pixman_color_t color{0, 0, 0, static_cast<uint16_t>(a.alpha * 0x101)};
    mask.reset(pixman_image_create_solid_fill(&color));
  }
  pixman_image_set_clip_region32(dest.get(), c.region.get());
  pixman_image_set_repeat(src.get(), PIXMAN_REPEAT_NONE);
  if (sameSize(bbox, a.srcArea)) {
    pixman_image_composite32(PIXMAN_OP_OVER, src.get(), mask.get(), dest.get(), a.srcArea.left,
                             a.srcArea.top, 0, 0, bbox.left, bbox.top, static_cast<int>(w),
                             static_cast<int>(h));
  } else {
    setScaleTransform(src.get(), a.srcArea, w, h, SPICE_IMAGE_SCALE_MODE_NEAREST);
    pixman_image_composite32(PIXMAN_OP_OVER, src.get(), mask.get(), dest.get(), 0, 0, 0, 0,
                             bbox.left, bbox.top, static_cast<int>(w), static_cast<int>(h));
    resetTransform(src.get());
  }
  if (xrgb && !destHasAlpha) {
    clearDestAlpha(dest.get(), bbox.left, bbox.top, w, h);
  }
  pixman_image_set_clip_region32(dest.get(), nullptr);
  return std::nullopt;
}

RasterResult drawComposite(DrawContext& c, const qxlcmd::Composite& k) {
  const qxlcmd::Rect& bbox = c.d.bbox;
  const int64_t w = width(bbox), h = height(bbox);
  const uint32_t op = k.flags & 0xff;
  if (w <= 0 || h <= 0 || w > MAX_SURFACE_DIMENSION || h > MAX_SURFACE_DIMENSION ||
      c.region.empty()) {
    return std::nullopt;
  }
  if (!validPixmanOp(op)) {
    return RasterError::BadDrawType;
  }
  if (!k.src) {
    return RasterError::BadImage;
  }
  // The destination: a copy of the bbox area (opaque view on request), composited, blitted back.
  pixman_format_code_t dformat = c.format;
  if ((k.flags & SPICE_COMPOSITE_DEST_OPAQUE) && PIXMAN_FORMAT_A(dformat) != 0) {
    dformat = static_cast<pixman_format_code_t>(static_cast<uint32_t>(dformat) & ~(0xfu << 12));
  }
  PixmanImage d(
      pixman_image_create_bits(dformat, static_cast<int>(w), static_cast<int>(h), nullptr, 0));
  if (!d) {
    return RasterError::BadArea;
  }
  {
    Region all(0, 0, static_cast<int32_t>(w), static_cast<int32_t>(h));
    pixels::blitRegion(d.get(), all, c.dest, -int64_t{bbox.left}, -int64_t{bbox.top}, Rop::Copy);
  }
  auto takeImage = [&](const qxlcmd::Image& img,
                       bool opaque) -> std::variant<PixmanImage, RasterError> {
    if (const auto* si = std::get_if<qxlcmd::SurfaceImage>(&img.payload)) {
      pixman_image_t* s = c.lookup(si->surfaceId);
      if (s == nullptr) {
        return RasterError::SourceSurfaceUnknown;
      }
      pixman_format_code_t f = pixman_image_get_format(s);
      if (opaque && PIXMAN_FORMAT_A(f) != 0) {
        f = static_cast<pixman_format_code_t>(static_cast<uint32_t>(f) & ~(0xfu << 12));
      }
      return PixmanImage(
          pixman_image_create_bits(f, pixman_image_get_width(s), pixman_image_get_height(s),
                                   pixman_image_get_data(s), pixman_image_get_stride(s)));
    }
    return c.image(img, false);
  };
  auto srcGot = takeImage(*k.src, k.flags & SPICE_COMPOSITE_SOURCE_OPAQUE);
  if (auto* e = std::get_if<RasterError>(&srcGot)) {
    return *e;
  }
  pixman_image_t* s = std::get<PixmanImage>(srcGot).get();
  pixman_transform_t t;
  auto toPixman = [&t](const qxlcmd::Transform& m) {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 3; ++j) {
        t.matrix[i][j] = static_cast<pixman_fixed_t>(m[static_cast<size_t>(i * 3 + j)]);
      }
    }
    t.matrix[2][0] = 0;
    t.matrix[2][1] = 0;
    t.matrix[2][2] = pixman_fixed_1;
  };
  if ((k.flags & SPICE_COMPOSITE_HAS_SRC_TRANSFORM) && k.srcTransform) {
    toPixman(*k.srcTransform);
    pixman_image_set_transform(s, &t);
  }
  pixman_image_set_filter(s, safeFilter((k.flags >> 8) & 7), nullptr, 0);
  pixman_image_set_repeat(s, static_cast<pixman_repeat_t>((k.flags >> 14) & 3));
  PixmanImage m;
  if (k.flags & SPICE_COMPOSITE_HAS_MASK) {
    if (!k.mask) {
      return RasterError::BadImage;
    }
    auto maskGot = takeImage(*k.mask, false);
    if (auto* e = std::get_if<RasterError>(&maskGot)) {
      return *e;
    }
    m = std::move(std::get<PixmanImage>(maskGot));
    if ((k.flags & SPICE_COMPOSITE_HAS_MASK_TRANSFORM) && k.maskTransform) {
      toPixman(*k.maskTransform);
      pixman_image_set_transform(m.get(), &t);
    }
    pixman_image_set_repeat(m.get(), static_cast<pixman_repeat_t>((k.flags >> 16) & 3));
    pixman_image_set_filter(m.get(), safeFilter((k.flags >> 11) & 7), nullptr, 0);
    pixman_image_set_component_alpha(m.get(), (k.flags >> 18) & 1);
  }
  pixman_image_composite32(static_cast<pixman_op_t>(op), s, m.get(), d.get(), k.srcOrigin.x,
                           k.srcOrigin.y, k.maskOrigin.x, k.maskOrigin.y, 0, 0, static_cast<int>(w),
                           static_cast<int>(h));
  if (const auto* si = std::get_if<qxlcmd::SurfaceImage>(&k.src->payload); si == nullptr) {
    resetTransform(s);
  }
  pixels::blitRegion(c.dest, c.region, d.get(), bbox.left, bbox.top, Rop::Copy);
  return std::nullopt;
}

// STROKE as the reference draws it (raster-stroke.h): along the flattened path, X's zero-width
// lines, each line segment filled on its own (so XOR-like ROPs combine where segments cross, as
// in the reference); STYLED strokes as X's width-1 dashed lines, each polyline filled once.
// Clipped to bbox and clip.
RasterResult drawStroke(DrawContext& c, const qxlcmd::Stroke& st) {
  const Rop rop =
      pixels::ropFromDescriptor(st.foreMode, SPICE_ROPD_INVERS_BRUSH, SPICE_ROPD_INVERS_DEST);
  // X's raster ops that must not touch a pixel twice (its miSpansCarefulRop), in spice's ROP
  // numbering (the same as X's GX functions).
  const unsigned ropNumber = static_cast<unsigned>(rop);
  const bool careful = (ropNumber & 0xc) == 0x8 || (ropNumber & 0x3) == 0x2;
  stroke::Dashes dashes;
  if (st.attrFlags & SPICE_LINE_FLAGS_STYLED) {
    dashes = stroke::dashesFromStyle(st.style, st.attrFlags & SPICE_LINE_FLAGS_START_WITH_GAP);
  }
  std::vector<pixman_box32_t> boxes;
  auto fill = [&]() -> RasterResult {
    if (boxes.empty()) {
      return std::nullopt;
    }
    Region pixelsHit;
    pixman_region32_init_rects(pixelsHit.get(), boxes.data(), static_cast<int>(boxes.size()));
    boxes.clear();
    DrawContext part(c.surface, c.d, c.lookup);
    part.region.intersect(c.region);
    part.region.intersect(pixelsHit);
    if (part.region.empty()) {
      return std::nullopt;
    }
    return part.brush(st.brush, rop);  // a NONE brush fills with 0, as in the reference
  };
  for (const auto& line : stroke::flattenPath(st.path)) {
    bool dashable = dashes.usable();
    for (size_t i = 1; i < line.size() && dashable; ++i) {
      dashable = std::abs(int64_t{line[i].x} - line[i - 1].x) <= stroke::MAX_DASHED_SEGMENT &&
                 std::abs(int64_t{line[i].y} - line[i - 1].y) <= stroke::MAX_DASHED_SEGMENT;
    }
    if (dashable) {
      stroke::dashedPolyline(line, dashes, careful, c.surface.width, c.surface.height, boxes);
      if (auto e = fill()) {
        return e;
      }
      continue;
    }
    for (size_t i = 1; i < line.size(); ++i) {
      stroke::zeroWidthSegment(line[i - 1], line[i], c.surface.width, c.surface.height, boxes);
      if (auto e = fill()) {
        return e;
      }
    }
  }
  return std::nullopt;
}

// TEXT as spice-common's canvas draws it: a non-empty back_area is filled with the back brush by
// copy (only when fore_mode is exactly PUT; any other fore mode then draws nothing at all).
// The glyphs make one coverage mask over their bounding box (A1: 0 or 255, A4: value * 16, A8:
// value; overlapping glyphs keep the larger coverage, but for the reference's quirk in odd A4
// pixels), through which the fore brush is put OVER
// the surface (fore_mode plays no part), clipped to bbox and clip; a NONE fore brush draws no
// glyphs. Glyph rows are stored bottom-up whatever SPICE_STRING_FLAGS_RASTER_TOP_DOWN says
// (the reference ignores that flag too). QXLRasterGlyph records: render_pos (2 x int32),
// glyph_origin (2 x int32), width, height (uint16 each), then rows of ceil(width * bpp / 8)
// bytes.
RasterResult drawText(DrawContext& c, const qxlcmd::Text& t) {
  unsigned bpp = 0;
  if (t.str.flags & SPICE_STRING_FLAGS_RASTER_A1) {
    bpp = 1;
  } else if (t.str.flags & SPICE_STRING_FLAGS_RASTER_A4) {
    bpp = 4;
  } else if (t.str.flags & SPICE_STRING_FLAGS_RASTER_A8) {
    bpp = 8;
  } else {
    return RasterError::BadGlyphString;  // vector glyphs: no driver sends them
  }
  struct Glyph {
    int64_t left, top;
    uint16_t width, height;
    size_t offset;  // of its rows in the string data
  };
  std::vector<Glyph> glyphs;
  const auto& data = t.str.data;
  size_t off = 0;
  auto readU32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, data.data() + at, 4);
    return v;
  };
  auto readU16 = [&](size_t at) { return static_cast<uint16_t>(data[at] | (data[at + 1] << 8)); };
  for (uint16_t g = 0; g < t.str.length; ++g) {
    constexpr size_t HEADER = 20;
    if (off > data.size() || data.size() - off < HEADER) {
      return RasterError::BadGlyphString;
    }
    const int64_t x0 =
        static_cast<int32_t>(readU32(off)) + int64_t{static_cast<int32_t>(readU32(off + 8))};
    const int64_t y0 =
        static_cast<int32_t>(readU32(off + 4)) + int64_t{static_cast<int32_t>(readU32(off + 12))};
    const uint16_t w = readU16(off + 16), h = readU16(off + 18);
    off += HEADER;
    const size_t rowBytes = (static_cast<size_t>(w) * bpp + 7) / 8;
    if ((data.size() - off) / std::max<size_t>(rowBytes, 1) < h && rowBytes != 0) {
      return RasterError::BadGlyphString;
    }
    glyphs.push_back(Glyph{x0, y0, w, h, off});
    off += rowBytes * h;
  }
  if (c.region.empty()) {
    return std::nullopt;  // clipped away: nothing at all, as in the reference
  }
  const bool backArea = t.backArea.left < t.backArea.right && t.backArea.top < t.backArea.bottom;
  if (backArea) {
    if (t.foreMode != SPICE_ROPD_OP_PUT) {
      return std::nullopt;
    }
    // A NONE back brush fills too (with 0), as every brush does (DrawContext::brush).
    Region back(t.backArea.left, t.backArea.top, t.backArea.right, t.backArea.bottom);
    back.intersect(c.region);
    DrawContext backCtx(c.surface, c.d, c.lookup);
    backCtx.region.intersect(back);
    if (auto e = backCtx.brush(t.backBrush, pixels::ropFromDescriptor(SPICE_ROPD_OP_PUT, 0, 0))) {
      return e;
    }
  }
  if (glyphs.empty() || t.foreBrush.type == SPICE_BRUSH_TYPE_NONE) {
    return std::nullopt;  // (the reference crashes on an empty string)
  }
  // The glyphs' bounding box, and the part of it on the surface: only that part of the mask
  // is built (the composite is clipped to the surface anyway).
  int64_t left = glyphs[0].left, top = glyphs[0].top;
  int64_t right = left + glyphs[0].width, bottom = top + glyphs[0].height;
  for (const Glyph& g : glyphs) {
    left = std::min(left, g.left);
    top = std::min(top, g.top);
    right = std::max(right, g.left + g.width);
    bottom = std::max(bottom, g.top + g.height);
  }
  const int64_t mx1 = std::max<int64_t>(left, 0), my1 = std::max<int64_t>(top, 0);
  const int64_t mx2 = std::min<int64_t>(right, c.surface.width);
  const int64_t my2 = std::min<int64_t>(bottom, c.surface.height);
  if (mx2 > mx1 && my2 > my1) {
    // pixman zero-fills the bits it allocates: no coverage yet.
    PixmanImage mask(pixman_image_create_bits(PIXMAN_a8, static_cast<int>(mx2 - mx1),
                                              static_cast<int>(my2 - my1), nullptr, 0));
    if (!mask) {
      return RasterError::BadImage;
    }
    auto* maskBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(mask.get()));
    const int maskStride = pixman_image_get_stride(mask.get());
    for (const Glyph& g : glyphs) {
      const size_t rowBytes = (static_cast<size_t>(g.width) * bpp + 7) / 8;
      for (uint16_t y = 0; y < g.height; ++y) {
        const int64_t py = g.top + y;
        if (py < my1 || py >= my2) {
          continue;
        }
        const uint8_t* row = data.data() + g.offset + rowBytes * (g.height - 1u - y);
        for (uint16_t x = 0; x < g.width; ++x) {
          const int64_t px = g.left + x;
          if (px < mx1 || px >= mx2) {
            continue;
          }
          uint8_t& m = maskBits[(py - my1) * maskStride + (px - mx1)];
          if (bpp == 1) {
            m = std::max<uint8_t>(m, ((row[x / 8] >> (7 - x % 8)) & 1u) ? 0xff : 0);
          } else if (bpp == 8) {
            m = std::max(m, row[x]);
          } else if (x % 2 == 0) {
            m = std::max<uint8_t>(m, row[x / 2] & 0xf0);
          } else {
            // The reference compares the whole byte shifted left by 4 before it keeps the low 8
            // bits: a byte with a non-zero high nibble always replaces what an earlier glyph
            // left in the odd pixel (with the low nibble's coverage), else the larger one wins.
            const unsigned shifted = unsigned{row[x / 2]} << 4;
            if (shifted > m) {
              m = static_cast<uint8_t>(shifted & 0xff);
            }
          }
        }
      }
    }
    PixmanImage brush;
    if (t.foreBrush.type == SPICE_BRUSH_TYPE_SOLID) {
      // The brush colour's channels scaled to 16 bits with the canvas' channel size (5 bits
      // for every 16 bpp format, else 8: the reference's colour_mask / colour_shift).
      const bool depth16 = c.surface.format == SPICE_SURFACE_FMT_16_555 ||
                           c.surface.format == SPICE_SURFACE_FMT_16_565;
      const uint32_t channelMask = depth16 ? 0x1f : 0xff, shift = depth16 ? 5 : 8;
      uint32_t color = t.foreBrush.color;
      pixman_color_t pc;
      pc.blue = static_cast<uint16_t>(((color & channelMask) * 0xffff) / channelMask);
      color >>= shift;
      pc.green = static_cast<uint16_t>(((color & channelMask) * 0xffff) / channelMask);
      color >>= shift;
      pc.red = static_cast<uint16_t>(((color & channelMask) * 0xffff) / channelMask);
      pc.alpha = 0xffff;
      brush.reset(pixman_image_create_solid_fill(&pc));
    } else if (t.foreBrush.type == SPICE_BRUSH_TYPE_PATTERN) {
      if (!t.foreBrush.pattern) {
        return RasterError::BadImage;
      }
      auto tile = c.image(*t.foreBrush.pattern, false);
      if (auto* e = std::get_if<RasterError>(&tile)) {
        return *e;
      }
      // A copy, so a surface used as the pattern keeps its own transform and repeat.
      pixman_image_t* src = std::get<PixmanImage>(tile).get();
      brush = images::convertImage(src, pixman_image_get_format(src));
      if (brush) {
        pixman_transform_t tr;
        pixman_transform_init_translate(&tr, pixman_int_to_fixed(-t.foreBrush.patternPos.x),
                                        pixman_int_to_fixed(-t.foreBrush.patternPos.y));
        pixman_image_set_transform(brush.get(), &tr);
        pixman_image_set_repeat(brush.get(), PIXMAN_REPEAT_NORMAL);
      }
    } else {
      return RasterError::BadImage;  // no such brush type
    }
    if (!brush) {
      return RasterError::BadImage;
    }
    pixman_image_set_clip_region32(c.dest, c.region.get());
    // Brush coordinates are the surface's minus the mask origin's offset from the glyph box:
    // the reference composites from (0, 0) of brush and mask at the box's corner.
    pixman_image_composite32(PIXMAN_OP_OVER, brush.get(), mask.get(), c.dest,
                             static_cast<int32_t>(mx1 - left), static_cast<int32_t>(my1 - top), 0,
                             0, static_cast<int32_t>(mx1), static_cast<int32_t>(my1),
                             static_cast<int32_t>(mx2 - mx1), static_cast<int32_t>(my2 - my1));
    pixman_image_set_clip_region32(c.dest, nullptr);
  }
  if (c.surface.format == SPICE_SURFACE_FMT_32_xRGB) {
    clearDestAlpha(c.dest, left, top, right - left, bottom - top);
  }
  return std::nullopt;
}

}  // namespace

namespace {

// Whether `image` reads surface `id` (a copy within one surface).
bool reads(const std::optional<qxlcmd::Image>& image, uint32_t id) {
  if (!image) {
    return false;
  }
  const auto* surface = std::get_if<qxlcmd::SurfaceImage>(&image->payload);
  return surface != nullptr && surface->surfaceId == id;
}

// A raster op whose result does not depend on the destination.
bool overwrites(Rop rop) {
  return rop == Rop::Copy || rop == Rop::CopyInverted || rop == Rop::Clear || rop == Rop::Set ||
         rop == Rop::Noop;
}

bool readsBrush(const qxlcmd::Brush& brush, uint32_t id) {
  return reads(brush.pattern, id);
}

}  // namespace

bool repeatable(const qxlcmd::Drawable& d) {
  const uint32_t id = d.surfaceId;
  const auto rop = [](uint16_t desc, uint16_t srcBit, uint16_t destBit) {
    return pixels::ropFromDescriptor(desc, srcBit, destBit);
  };
  return std::visit(
      [&](const auto& p) -> bool {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, qxlcmd::DrawNop>) {
          return true;
        } else if constexpr (std::is_same_v<T, qxlcmd::Blackness> ||
                             std::is_same_v<T, qxlcmd::Whiteness>) {
          return !reads(p.mask.bitmap, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::Fill>) {
          return overwrites(
                     rop(p.ropDescriptor, SPICE_ROPD_INVERS_BRUSH, SPICE_ROPD_INVERS_DEST)) &&
                 !readsBrush(p.brush, id) && !reads(p.mask.bitmap, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::Opaque>) {
          // The image is put first, then the brush combines with it: the destination's old
          // pixels take no part.
          return !reads(p.srcBitmap, id) && !readsBrush(p.brush, id) && !reads(p.mask.bitmap, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::Copy> || std::is_same_v<T, qxlcmd::Blend>) {
          return overwrites(rop(p.ropDescriptor, SPICE_ROPD_INVERS_SRC, SPICE_ROPD_INVERS_DEST)) &&
                 !reads(p.srcBitmap, id) && !reads(p.mask.bitmap, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::CopyBits>) {
          // Within one surface: a repeat reads what the first attempt wrote where the source and
          // destination overlap.
          const int64_t w = int64_t{d.bbox.right} - d.bbox.left;
          const int64_t h = int64_t{d.bbox.bottom} - d.bbox.top;
          const bool apart = p.srcPos.x + w <= d.bbox.left || d.bbox.right <= p.srcPos.x ||
                             p.srcPos.y + h <= d.bbox.top || d.bbox.bottom <= p.srcPos.y;
          return apart;
        } else if constexpr (std::is_same_v<T, qxlcmd::Rop3>) {
          // ROP3 bit (p << 2 | s << 1 | d): the destination does not matter when each pair of
          // bits that differ only in d is equal.
          const unsigned r = p.rop3;
          return ((r ^ (r >> 1)) & 0x55u) == 0 && !reads(p.srcBitmap, id) &&
                 !readsBrush(p.brush, id) && !reads(p.mask.bitmap, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::Stroke>) {
          return overwrites(rop(p.foreMode, SPICE_ROPD_INVERS_BRUSH, SPICE_ROPD_INVERS_DEST)) &&
                 !readsBrush(p.brush, id);
        } else if constexpr (std::is_same_v<T, qxlcmd::Transparent>) {
          // Colour-keyed: a pixel keeps the destination or takes the source, whatever it was.
          return !reads(p.srcBitmap, id);
        } else {
          // TEXT (glyph edges blend), INVERS, ALPHA_BLEND, COMPOSITE: they read the destination.
          return false;
        }
      },
      d.payload);
}

RasterResult Rasteriser::Impl::drawOn(Surface& s, uint32_t id, const qxlcmd::Drawable& d) {
  const images::SurfaceLookup fn = lookupFn();
  DrawContext c(s, d, fn);
  RasterResult result;
  // Before the first pixel changes: what a repeat could not restore is saved.
  if (journal && !c.region.empty() && !repeatable(d)) {
    journal->beforeUnrepeatableDraw(id, s.image.get(), *pixman_region32_extents(c.region.get()));
  }
  const auto brushRop = [](uint16_t desc, uint16_t srcBit, uint16_t destBit) {
    return pixels::ropFromDescriptor(desc, srcBit, destBit);
  };
  std::visit(
      [&](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, qxlcmd::DrawNop>) {
          pixman_region32_clear(c.region.get());
        } else if constexpr (std::is_same_v<T, qxlcmd::Fill>) {
          if ((result = c.applyMask(p.mask))) {
            return;
          }
          const Rop rop =
              brushRop(p.ropDescriptor, SPICE_ROPD_INVERS_BRUSH, SPICE_ROPD_INVERS_DEST);
          if (rop != Rop::Noop && !c.region.empty()) {
            result = c.brush(p.brush, rop);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Opaque>) {
          if ((result = c.applyMask(p.mask))) {
            return;
          }
          // The image is put first, then the brush combines with it (brush = "source",
          // the just-put image = "destination").
          const Rop rop = brushRop(p.ropDescriptor, SPICE_ROPD_INVERS_BRUSH, SPICE_ROPD_INVERS_SRC);
          if (rop == Rop::Noop || c.region.empty()) {
            return;
          }
          if (!(result = c.source(p.srcBitmap, p.srcArea, p.scaleMode, Rop::Copy))) {
            result = c.brush(p.brush, rop);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Copy> || std::is_same_v<T, qxlcmd::Blend>) {
          // COPY and BLEND are the same operation in the reference.
          if ((result = c.applyMask(p.mask))) {
            return;
          }
          const Rop rop = brushRop(p.ropDescriptor, SPICE_ROPD_INVERS_SRC, SPICE_ROPD_INVERS_DEST);
          if (rop != Rop::Noop && !c.region.empty()) {
            result = c.source(p.srcBitmap, p.srcArea, p.scaleMode, rop);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::CopyBits>) {
          result = drawCopyBits(c, p);
        } else if constexpr (std::is_same_v<T, qxlcmd::Blackness>) {
          if (!(result = c.applyMask(p.mask))) {
            pixels::fillRegion(c.dest, c.region, 0x000000u, Rop::Copy);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Whiteness>) {
          if (!(result = c.applyMask(p.mask))) {
            pixels::fillRegion(c.dest, c.region, 0xffffffffu, Rop::Copy);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Invers>) {
          if (!(result = c.applyMask(p.mask))) {
            pixels::fillRegion(c.dest, c.region, 0, Rop::Invert);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Rop3>) {
          if (!(result = c.applyMask(p.mask))) {
            result = drawRop3(c, p);
          }
        } else if constexpr (std::is_same_v<T, qxlcmd::Stroke>) {
          result = drawStroke(c, p);
        } else if constexpr (std::is_same_v<T, qxlcmd::Text>) {
          result = drawText(c, p);
        } else if constexpr (std::is_same_v<T, qxlcmd::Transparent>) {
          result = drawTransparent(c, p);
        } else if constexpr (std::is_same_v<T, qxlcmd::AlphaBlend>) {
          result = drawAlphaBlend(c, p);
        } else if constexpr (std::is_same_v<T, qxlcmd::Composite>) {
          result = drawComposite(c, p);
        }
      },
      d.payload);
  // Damage: what the command may have changed (bbox ∩ clip ∩ mask, clipped to the surface).
  // Reported even after a partial failure: the pixels drawn before the error are real.
  if (!c.region.empty()) {
    refreshShadow(s, c.region);
    if (id == 0) {
      recordPrimaryOutput(s, d, c.region, result.has_value());
    }
  }
  return result;
}

// ------------------------------------------------------------------ cursor

std::variant<SanitisedCursor, RasterError> sanitiseCursor(const qxlcmd::CursorShape& shape) {
  if (shape.width > MAX_CURSOR_DIMENSION || shape.height > MAX_CURSOR_DIMENSION) {
    return RasterError::CursorTooLarge;
  }
  SanitisedCursor out;
  out.width = shape.width;
  out.height = shape.height;
  out.hotSpotX = shape.width ? std::min<uint16_t>(shape.hotSpotX, shape.width - 1) : 0;
  out.hotSpotY = shape.height ? std::min<uint16_t>(shape.hotSpotY, shape.height - 1) : 0;
  const size_t w = shape.width, h = shape.height, n = w * h;
  out.pixels.assign(n, 0);
  const auto& data = shape.data;
  const size_t maskStride = (w + 7) / 8;
  auto bit = [&](size_t base, size_t x, size_t y) {
    return (data[base + y * maskStride + x / 8] >> (7 - x % 8)) & 1u;
  };
  // Colour cursors: pixels, then (COLOR4/8: a palette, then) the 1 bpp AND mask. A set AND bit
  // is transparent; the reference's XOR-with-screen for set AND bits and non-black pixels
  // cannot be shown by a client cursor and becomes transparent too.
  auto colour = [&](size_t pixelBytes, size_t paletteEntries, auto pixelAt) -> RasterResult {
    const size_t stride = (w * pixelBytes + 7) / 8;  // pixelBytes in bits here
    const size_t pixelsSize = stride * h;
    const size_t paletteOff = pixelsSize;
    const size_t maskOff = paletteOff + paletteEntries * 4;
    if (data.size() < maskOff + maskStride * h) {
      return RasterError::BadCursor;
    }
    for (size_t y = 0; y < h; ++y) {
      for (size_t x = 0; x < w; ++x) {
        const uint32_t rgb = pixelAt(data.data() + y * stride, x, data.data() + paletteOff);
        out.pixels[y * w + x] = bit(maskOff, x, y) ? 0u : (0xff000000u | (rgb & 0xffffffu));
      }
    }
    return std::nullopt;
  };
  auto le32 = [](const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  };
  RasterResult r;
  switch (shape.type) {
    case SPICE_CURSOR_TYPE_ALPHA:
      if (data.size() < n * 4) {
        return RasterError::BadCursor;
      }
      for (size_t i = 0; i < n; ++i) {
        out.pixels[i] = le32(data.data() + 4 * i);
      }
      break;
    case SPICE_CURSOR_TYPE_MONO: {
      // AND mask then XOR mask: (0,0) black, (0,1) white, (1,0) transparent, (1,1) inverted
      // (shown as black: a client cursor cannot invert the screen).
      if (data.size() < 2 * maskStride * h) {
        return RasterError::BadCursor;
      }
      for (size_t y = 0; y < h; ++y) {
        for (size_t x = 0; x < w; ++x) {
          const unsigned a = bit(0, x, y), xr = bit(maskStride * h, x, y);
          out.pixels[y * w + x] = a && !xr ? 0u : (!a && xr ? 0xffffffffu : 0xff000000u);
        }
      }
      break;
    }
    case SPICE_CURSOR_TYPE_COLOR32:
      r = colour(32, 0,
                 [&](const uint8_t* row, size_t x, const uint8_t*) { return le32(row + 4 * x); });
      break;
    case SPICE_CURSOR_TYPE_COLOR24:
      r = colour(24, 0, [](const uint8_t* row, size_t x, const uint8_t*) {
        return uint32_t{row[3 * x]} | uint32_t{row[3 * x + 1]} << 8 |
               uint32_t{row[3 * x + 2]} << 16;
      });
      break;
    case SPICE_CURSOR_TYPE_COLOR16:  // 5-5-5, expanded by bit replication
      r = colour(16, 0, [](const uint8_t* row, size_t x, const uint8_t*) {
        const uint32_t c = uint32_t{row[2 * x]} | uint32_t{row[2 * x + 1]} << 8;
        uint32_t v = ((c & 0x001f) << 3) | ((c & 0x001c) >> 2);
        v |= ((c & 0x03e0) << 6) | ((c & 0x0380) << 1);
        v |= ((c & 0x7c00) << 9) | ((c & 0x7000) << 4);
        return v;
      });
      break;
    case SPICE_CURSOR_TYPE_COLOR8:
      r = colour(8, 256, [&](const uint8_t* row, size_t x, const uint8_t* pal) {
        return le32(pal + 4 * size_t{row[x]});
      });
      break;
    case SPICE_CURSOR_TYPE_COLOR4:
      r = colour(4, 16, [&](const uint8_t* row, size_t x, const uint8_t* pal) {
        const unsigned idx = (x % 2 ? row[x / 2] : row[x / 2] >> 4) & 0xfu;
        return le32(pal + 4 * size_t{idx});
      });
      break;
    default:
      return RasterError::UnsupportedCursor;
  }
  if (r) {
    return *r;
  }
  return out;
}

}  // namespace spicebox::renderer
