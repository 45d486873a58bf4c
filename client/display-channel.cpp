// Runs in: SPICE clients. Input: display-channel messages from a SPICE server, untrusted: every
// field is read through a bounds-checked Reader, every offset (image pointers) is checked against
// the message, sizes are capped before allocation, geometry is clipped by Canvas.
#include <spice/enums.h>
#include <spice/protocol.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "client/image-decode.h"
#include "client/spice-client.h"

namespace spicebox::client {
namespace {

std::string rectText(const Rect& r) {
  return "(" + std::to_string(r.left) + "," + std::to_string(r.top) + ")-(" +
         std::to_string(r.right) + "," + std::to_string(r.bottom) + ")";
}

Rect readRect(Reader& r) {
  Rect rect;
  rect.top = r.i32();
  rect.left = r.i32();
  rect.bottom = r.i32();
  rect.right = r.i32();
  return rect;
}

}  // namespace

Error DisplayChannel::sendInit(Deadline deadline) {
  Writer w;
  w.u8(1).i64(PIXMAP_CACHE_PIXELS).u8(0).i32(0);
  return send(SPICE_MSGC_DISPLAY_INIT, w.data(), deadline);
}

const Canvas* DisplayChannel::primary() const {
  if (!primaryId_)
    return nullptr;
  auto it = surfaces_.find(*primaryId_);
  return it == surfaces_.end() ? nullptr : &it->second;
}

Canvas* DisplayChannel::surface(uint32_t id) {
  auto it = surfaces_.find(id);
  return it == surfaces_.end() ? nullptr : &it->second;
}

std::variant<DisplayChannel::Base, std::string> DisplayChannel::readBase(Reader& r) {
  Base b;
  b.surfaceId = r.u32();
  b.box = readRect(r);
  uint8_t clipType = r.u8();
  if (clipType == SPICE_CLIP_TYPE_RECTS) {
    uint32_t n = r.u32();
    if (r.failed() || n > r.remaining() / 16)
      return "clip announces " + std::to_string(n) + " rects, the message has room for " +
             std::to_string(r.remaining() / 16);
    b.clip.resize(n);
    for (auto& rect : b.clip)
      rect = readRect(r);
  } else if (clipType != SPICE_CLIP_TYPE_NONE) {
    return "unknown clip type " + std::to_string(clipType);
  }
  if (r.failed())
    return std::string("display base truncated");
  if (!surface(b.surfaceId))
    return "draw on surface " + std::to_string(b.surfaceId) + ", which does not exist";
  return b;
}

std::variant<DisplayChannel::Image, std::string> DisplayChannel::readImage(
    std::span<const uint8_t> body, uint32_t offset) {
  if (offset == 0)
    return std::string("image pointer is null");
  Reader r(body, offset);
  uint64_t id = r.u64();
  uint8_t type = r.u8();
  uint8_t flags = r.u8();
  uint32_t width = r.u32();
  uint32_t height = r.u32();
  if (r.failed())
    return "image descriptor at offset " + std::to_string(offset) + " lies outside the " +
           std::to_string(body.size()) + "-byte message";
  if (type == SPICE_IMAGE_TYPE_FROM_CACHE || type == SPICE_IMAGE_TYPE_FROM_CACHE_LOSSLESS) {
    auto it = cache_.find(id);
    if (it == cache_.end())
      return "image FROM_CACHE with id " + std::to_string(id) + ", which is not in the cache";
    ++display_.cacheHits;
    return it->second;
  }
  if (width == 0 || height == 0 || width > MAX_SURFACE_SIDE || height > MAX_SURFACE_SIDE)
    return "image of " + std::to_string(width) + " x " + std::to_string(height) +
           " (each side 1.." + std::to_string(MAX_SURFACE_SIDE) + ")";
  Image image{width, height, nullptr};
  if (type == SPICE_IMAGE_TYPE_BITMAP) {
    uint8_t format = r.u8();
    uint8_t bitmapFlags = r.u8();
    uint32_t x = r.u32();
    uint32_t y = r.u32();
    uint32_t stride = r.u32();
    if (bitmapFlags & SPICE_BITMAP_FLAGS_PAL_FROM_CACHE)
      r.u64();
    else
      r.u32();  // palette pointer: unused for 32-bit formats
    if (r.failed())
      return std::string("bitmap header truncated");
    if (format != SPICE_BITMAP_FMT_32BIT && format != SPICE_BITMAP_FMT_RGBA)
      return "bitmap format " + std::to_string(format) + " (this client draws 32-bit only)";
    if (x != width || y != height)
      return "bitmap of " + std::to_string(x) + " x " + std::to_string(y) +
             " in an image descriptor of " + std::to_string(width) + " x " + std::to_string(height);
    if (stride / 4 < width)
      return "bitmap stride " + std::to_string(stride) + " too small for width " +
             std::to_string(width);
    auto data = r.bytes(size_t{stride} * height);
    if (r.failed())
      return "bitmap data of " + std::to_string(size_t{stride} * height) +
             " bytes runs past the message's end";
    auto pixels = std::make_shared<std::vector<uint32_t>>(size_t{width} * height);
    bool topDown = bitmapFlags & SPICE_BITMAP_FLAGS_TOP_DOWN;
    for (uint32_t row = 0; row < height; ++row) {
      const uint8_t* src = data.data() + size_t{stride} * (topDown ? row : height - 1 - row);
      std::memcpy(pixels->data() + size_t{row} * width, src, size_t{width} * 4);
    }
    ++display_.bitmaps;
    image.pixels = std::move(pixels);
  } else if (type == SPICE_IMAGE_TYPE_LZ_RGB || type == SPICE_IMAGE_TYPE_LZ4) {
    uint32_t size = r.u32();
    auto data = r.bytes(size);
    if (r.failed())
      return "image data of " + std::to_string(size) + " bytes runs past the message's end";
    auto decoded = type == SPICE_IMAGE_TYPE_LZ4 ? decodeLz4(data, width, height)
                                                : decodeLzRgb(data, width, height);
    if (auto* err = std::get_if<std::string>(&decoded))
      return std::string(type == SPICE_IMAGE_TYPE_LZ4 ? "LZ4" : "LZ_RGB") + " image: " + *err;
    auto& px = std::get<Pixels>(decoded);
    if (px.size() != size_t{width} * height)
      return std::string("decoder returned a wrong pixel count");
    ++(type == SPICE_IMAGE_TYPE_LZ4 ? display_.lz4 : display_.lzRgb);
    image.pixels = std::make_shared<std::vector<uint32_t>>(std::move(px));
  } else if (type == SPICE_IMAGE_TYPE_SURFACE) {
    // Another surface as the source (libspice-server sends these for copies between surfaces):
    // its pixels are borrowed, not copied; the caller copies when source and target are one.
    uint32_t sourceId = r.u32();
    if (r.failed())
      return std::string("SURFACE image truncated");
    Canvas* source = surface(sourceId);
    if (!source)
      return "image from surface " + std::to_string(sourceId) + ", which does not exist";
    static const std::shared_ptr<void> none;
    return Image{source->width(), source->height(),
                 std::shared_ptr<const std::vector<uint32_t>>(none, &source->pixels())};
  } else {
    // QUIC, GLZ, JPEG, palette images: not decoded by this client. Counted; the draw is skipped
    // (and the picture known to be incomplete), but a CACHE_ME still takes its place in the
    // cache so that later FROM_CACHE references stay in step with the server.
    ++display_.undecodedImages;
  }
  if (flags & SPICE_IMAGE_FLAGS_CACHE_ME) {
    auto old = cache_.find(id);
    if (old != cache_.end()) {
      cachedPixels_ -= int64_t{old->second.width} * old->second.height;
      cache_.erase(old);
    }
    int64_t pixels = int64_t{width} * height;
    if (cachedPixels_ + pixels > PIXMAP_CACHE_PIXELS)
      return "CACHE_ME of image " + std::to_string(id) + " would hold " +
             std::to_string(cachedPixels_ + pixels) + " pixels, more than the " +
             std::to_string(PIXMAP_CACHE_PIXELS) + " announced in DISPLAY_INIT";
    cachedPixels_ += pixels;
    cache_[id] = image;
    ++display_.cacheInserts;
  }
  return image;
}

Error DisplayChannel::surfaceCreate(std::span<const uint8_t> body) {
  Reader r(body);
  uint32_t id = r.u32();
  uint32_t width = r.u32();
  uint32_t height = r.u32();
  uint32_t format = r.u32();
  uint32_t flags = r.u32();
  if (r.failed())
    return std::string("SURFACE_CREATE truncated");
  if (width == 0 || height == 0 || width > MAX_SURFACE_SIDE || height > MAX_SURFACE_SIDE)
    return "SURFACE_CREATE of " + std::to_string(width) + " x " + std::to_string(height) +
           " (each side 1.." + std::to_string(MAX_SURFACE_SIDE) + ")";
  // Other formats (16 bpp, alpha-only offscreen surfaces) are kept as 32 bpp canvases: what is
  // drawn on them is approximate, which the unsupported count says.
  if (format != SPICE_SURFACE_FMT_32_xRGB && format != SPICE_SURFACE_FMT_32_ARGB)
    ++display_.unsupported;
  if (!surfaces_.count(id) && surfaces_.size() >= MAX_SURFACES)
    return "more than " + std::to_string(MAX_SURFACES) + " surfaces";
  if (Error err = reserveSurface(id, width, height))
    return "SURFACE_CREATE: " + *err;
  surfaces_[id] = Canvas(width, height);
  if (flags & SPICE_SURFACE_FLAGS_PRIMARY) {
    primaryId_ = id;
    noteDamage(id, Rect{0, 0, static_cast<int32_t>(height), static_cast<int32_t>(width)});
  }
  ++display_.surfaceCreates;
  return std::nullopt;
}

void DisplayChannel::noteDamage(uint32_t surfaceId, const Rect& box) {
  const Canvas* p = primary();
  if (!p || surfaceId != *primaryId_)
    return;
  Rect r = intersect(
      box, Rect{0, 0, static_cast<int32_t>(p->height()), static_cast<int32_t>(p->width())});
  if (r.empty())
    return;
  if (damage_.size() < MAX_PENDING_DAMAGE) {
    damage_.push_back(r);
    return;
  }
  // Too many to keep apart: one bounding rectangle stands for all of them.
  Rect& all = damage_.front();
  for (const Rect& d : damage_)
    all = Rect{std::min(all.top, d.top), std::min(all.left, d.left), std::max(all.bottom, d.bottom),
               std::max(all.right, d.right)};
  all = Rect{std::min(all.top, r.top), std::min(all.left, r.left), std::max(all.bottom, r.bottom),
             std::max(all.right, r.right)};
  damage_.resize(1);
}

std::vector<Rect> DisplayChannel::takeDamage() {
  return std::exchange(damage_, {});
}

Error DisplayChannel::reserveSurface(uint32_t id, uint32_t width, uint32_t height) {
  releaseSurface(id);  // a surface created again replaces the old one
  uint64_t pixels = uint64_t{width} * height;
  if (surfacePixels_ + pixels > MAX_SURFACE_PIXELS)
    return "surfaces of " + std::to_string(surfacePixels_ + pixels) + " pixels in all (at most " +
           std::to_string(MAX_SURFACE_PIXELS) + ")";
  surfacePixels_ += pixels;
  return std::nullopt;
}

void DisplayChannel::releaseSurface(uint32_t id) {
  auto it = surfaces_.find(id);
  if (it == surfaces_.end())
    return;
  surfacePixels_ -= uint64_t{it->second.width()} * it->second.height();
  surfaces_.erase(it);
}

Error DisplayChannel::drawFill(std::span<const uint8_t> body) {
  Reader r(body);
  auto base = readBase(r);
  if (auto* err = std::get_if<std::string>(&base))
    return "DRAW_FILL: " + *err;
  uint8_t brush = r.u8();
  if (brush != SPICE_BRUSH_TYPE_SOLID) {
    ++display_.unsupported;  // pattern fills are not what spicebox sends; not drawn
    return std::nullopt;
  }
  uint32_t color = r.u32();
  uint16_t rop = r.u16();
  r.u8();  // mask flags
  r.i32();
  r.i32();
  uint32_t mask = r.u32();
  if (r.failed())
    return std::string("DRAW_FILL truncated");
  if (rop != SPICE_ROPD_OP_PUT || mask != 0) {
    ++display_.unsupported;
    display_.lastUnsupportedRop = rop;
    return std::nullopt;
  }
  auto& b = std::get<Base>(base);
  surface(b.surfaceId)->fill(b.box, b.clip, color);
  noteDamage(b.surfaceId, b.box);
  ++display_.fills;
  return std::nullopt;
}

Error DisplayChannel::copyBits(std::span<const uint8_t> body) {
  Reader r(body);
  auto base = readBase(r);
  if (auto* err = std::get_if<std::string>(&base))
    return "COPY_BITS: " + *err;
  int32_t x = r.i32();
  int32_t y = r.i32();
  if (r.failed())
    return std::string("COPY_BITS truncated");
  auto& b = std::get<Base>(base);
  surface(b.surfaceId)->copyBits(b.box, b.clip, x, y);
  noteDamage(b.surfaceId, b.box);
  ++display_.copyBits;
  return std::nullopt;
}

Error DisplayChannel::drawCopy(std::span<const uint8_t> body) {
  Reader r(body);
  auto base = readBase(r);
  if (auto* err = std::get_if<std::string>(&base))
    return "DRAW_COPY: " + *err;
  uint32_t imageOffset = r.u32();
  Rect srcArea = readRect(r);
  uint16_t rop = r.u16();
  r.u8();  // scale mode: irrelevant when sizes match, which is checked below
  r.u8();
  r.i32();
  r.i32();
  uint32_t mask = r.u32();
  if (r.failed())
    return std::string("DRAW_COPY truncated");
  auto image = readImage(body, imageOffset);
  if (auto* err = std::get_if<std::string>(&image))
    return "DRAW_COPY: " + *err;
  auto& b = std::get<Base>(base);
  auto& img = std::get<Image>(image);
  int64_t boxW = int64_t{b.box.right} - b.box.left, boxH = int64_t{b.box.bottom} - b.box.top;
  int64_t srcW = int64_t{srcArea.right} - srcArea.left;
  int64_t srcH = int64_t{srcArea.bottom} - srcArea.top;
  if (boxW != srcW || boxH != srcH || !img.pixels) {
    ++display_.unsupported;  // a scaled copy or an image this client does not decode
    return std::nullopt;
  }
  if (srcArea.left < 0 || srcArea.top < 0 || srcArea.right > int64_t{img.width} ||
      srcArea.bottom > int64_t{img.height})
    return "DRAW_COPY source " + rectText(srcArea) + " outside its " + std::to_string(img.width) +
           " x " + std::to_string(img.height) + " image";
  if (rop != SPICE_ROPD_OP_PUT || mask != 0) {
    ++display_.unsupported;
    display_.lastUnsupportedRop = rop;
    return std::nullopt;
  }
  Canvas* target = surface(b.surfaceId);
  if (img.pixels.get() == &target->pixels())  // a copy within one surface: read a snapshot
    img.pixels = std::make_shared<std::vector<uint32_t>>(target->pixels());
  target->blit(b.box, b.clip, *img.pixels, img.width, img.height, srcArea);
  noteDamage(b.surfaceId, b.box);
  ++display_.copies;
  return std::nullopt;
}

Error DisplayChannel::drawUnsupported(uint16_t type, std::span<const uint8_t> body) {
  ++display_.unsupported;
  // Draws this client does not reproduce may still carry a CACHE_ME image: read it so that the
  // cache stays in step with the server's (a later DRAW_COPY may take it FROM_CACHE).
  Reader r(body);
  auto base = readBase(r);
  if (auto* err = std::get_if<std::string>(&base))
    return "draw type " + std::to_string(type) + ": " + *err;
  if (type == SPICE_MSG_DISPLAY_DRAW_ALPHA_BLEND)
    r.skip(2);  // alpha_flags, alpha
  else if (type == SPICE_MSG_DISPLAY_DRAW_COMPOSITE)
    r.skip(4);  // flags
  uint32_t imageOffset = r.u32();
  if (r.failed())
    return "draw type " + std::to_string(type) + " truncated";
  if (imageOffset == 0)
    return std::nullopt;
  auto image = readImage(body, imageOffset);
  if (auto* err = std::get_if<std::string>(&image))
    return "draw type " + std::to_string(type) + ": " + *err;
  return std::nullopt;
}

Error DisplayChannel::invalList(std::span<const uint8_t> body) {
  Reader r(body);
  uint16_t count = r.u16();
  for (uint16_t i = 0; i < count && !r.failed(); ++i) {
    uint8_t type = r.u8();
    uint64_t id = r.u64();
    if (r.failed())
      break;
    if (type != SPICE_RES_TYPE_PIXMAP)
      continue;
    auto it = cache_.find(id);
    if (it != cache_.end()) {
      cachedPixels_ -= int64_t{it->second.width} * it->second.height;
      cache_.erase(it);
    }
  }
  if (r.failed())
    return "INVAL_LIST of " + std::to_string(count) + " resources truncated";
  ++display_.invalidations;
  return std::nullopt;
}

Error DisplayChannel::handle(uint16_t type, std::span<const uint8_t> body) {
  bool handled = false;
  Error shmErr = handleShm(type, body, &handled);
  if (handled)
    return shmErr;
  switch (type) {
    case SPICE_MSG_DISPLAY_SURFACE_CREATE:
      return surfaceCreate(body);
    case SPICE_MSG_DISPLAY_SURFACE_DESTROY: {
      Reader r(body);
      uint32_t id = r.u32();
      if (r.failed())
        return std::string("SURFACE_DESTROY truncated");
      releaseSurface(id);
      if (primaryId_ == id)
        primaryId_.reset();
      if (shmSurface_ && shmSurface_->id == id)
        shmSurface_.reset();
      ++display_.surfaceDestroys;
      return std::nullopt;
    }
    case SPICE_MSG_DISPLAY_DRAW_FILL:
      return drawFill(body);
    case SPICE_MSG_DISPLAY_DRAW_COPY:
      return drawCopy(body);
    case SPICE_MSG_DISPLAY_COPY_BITS:
      return copyBits(body);
    case SPICE_MSG_DISPLAY_DRAW_OPAQUE:
    case SPICE_MSG_DISPLAY_DRAW_BLEND:
    case SPICE_MSG_DISPLAY_DRAW_ROP3:
    case SPICE_MSG_DISPLAY_DRAW_TRANSPARENT:
    case SPICE_MSG_DISPLAY_DRAW_ALPHA_BLEND:
    case SPICE_MSG_DISPLAY_DRAW_COMPOSITE:
      return drawUnsupported(type, body);
    case SPICE_MSG_DISPLAY_INVAL_LIST:
      return invalList(body);
    case SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS:
      cache_.clear();
      cachedPixels_ = 0;
      ++display_.invalidations;
      return std::nullopt;
    case SPICE_MSG_DISPLAY_INVAL_PALETTE:
    case SPICE_MSG_DISPLAY_INVAL_ALL_PALETTES:
      return std::nullopt;  // this client keeps no palettes (32-bit images only)
    case SPICE_MSG_DISPLAY_MARK:
      ++display_.marks;
      return std::nullopt;
    case SPICE_MSG_DISPLAY_RESET:
      ++display_.resets;
      return std::nullopt;
    default:
      ++display_.ignored;
      return std::nullopt;
  }
}

}  // namespace spicebox::client
