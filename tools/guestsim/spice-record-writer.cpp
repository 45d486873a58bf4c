// Runs in: guestsim tools and tests. Input: a RecordEvent tree (ours).
//
// Each serialise step mirrors one function of spice-server's recorder
// (server/red-record-qxl.cpp), in the same order, and prints each field the
// way the recorder's printf does:
//   - "%d" of a 32-bit field prints its bits as a signed int32, so unsigned
//     values above INT32_MAX appear negative;
//   - "%d" of an 8/16-bit field prints the promoted value (0..255, or the
//     signed value for int16 point16 coordinates);
//   - 64-bit ids and uniques use PRIu64, binary sizes and chunk totals PRIuPTR.
// Field types in spice-record.h follow QXL's, so formatting by C++ type gives
// exactly the recorder's output (see printField).

#include "tools/guestsim/spice-record-writer.h"

#include <fcntl.h>
#include <lzma.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <type_traits>

namespace spicebox::guestsim {

namespace {

// spice-protocol values, restated as in spice-record.cpp.
constexpr uint32_t CLIP_RECTS = 1;
constexpr uint32_t BRUSH_SOLID = 1, BRUSH_PATTERN = 2;
constexpr uint8_t IMAGE_BITMAP = 0, IMAGE_QUIC = 1, IMAGE_SURFACE = 104;
constexpr uint8_t BITMAP_DIRECT = 1 << 0;
constexpr uint8_t LINE_STYLED = 1 << 3;
constexpr uint8_t SURFACE_CREATE = 0;
constexpr uint32_t SURF_KEEP_DATA = 1 << 0;
constexpr uint8_t CURSOR_SET = 0, CURSOR_MOVE = 1, CURSOR_TRAIL = 3;
constexpr size_t DRAW_COMPOSITE = 14;
// QXLLineAttr::style_nseg is a uint8.
constexpr size_t MAX_STYLE_SEGMENTS = 255;

void appendU32(std::string& out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, sizeof(b));  // little-endian hosts, as the reader assumes
  out.append(b, sizeof(b));
}

uint64_t absStride(int32_t stride) {
  return stride < 0 ? uint64_t{0} - static_cast<uint64_t>(int64_t{stride})
                    : static_cast<uint64_t>(stride);
}

// One event's serialisation. Steps return false after recording the first
// fault; callers propagate false.
struct Serializer {
  std::string& out;
  int64_t eventIndex;
  std::optional<WriteError> error;

  bool fail(std::string detail) {
    if (!error) {
      error = WriteError{WriteErrorKind::InconsistentTree, eventIndex, std::move(detail)};
    }
    return false;
  }

  template <typename T>
  void printNumber(T v) {
    char b[24];
    auto res = std::to_chars(b, b + sizeof(b), v);
    out.append(b, res.ptr);
  }

  // Prints a value the way the recorder's format for a field of type T does.
  template <typename T>
  void printField(T v) {
    static_assert(std::is_integral_v<T>);
    if constexpr (sizeof(T) == 8) {
      printNumber(static_cast<uint64_t>(v));  // PRIu64
    } else if constexpr (sizeof(T) == 4) {
      printNumber(static_cast<int32_t>(v));  // %d of a 32-bit field
    } else {
      printNumber(static_cast<int>(v));  // %d of a promoted 8/16-bit field
    }
  }

  template <typename T>
  void field(std::string_view key, T v) {
    out += key;
    out += ' ';
    printField(v);
    out += '\n';
  }

  void rect(std::string_view prefix, const Rect& r) {
    out += "rect ";
    out += prefix;
    for (int32_t v : {r.top, r.left, r.bottom, r.right}) {
      out += ' ';
      printField(v);
    }
    out += '\n';
  }
  void point(const Point& p) {
    out += "point ";
    printField(p.x);
    out += ' ';
    printField(p.y);
    out += '\n';
  }
  void point16(std::string_view key, const Point16& p) {
    out += key;
    out += ' ';
    printField(p.x);
    out += ' ';
    printField(p.y);
    out += '\n';
  }

  void binary(std::string_view prefix, const uint8_t* data, size_t size) {
    out += "binary 0 ";  // 0: the recorder's WITH_ZLIB is off
    out += prefix;
    out += ' ';
    printNumber(static_cast<uint64_t>(size));
    out += ':';
    out.append(reinterpret_cast<const char*>(data), size);
    out += '\n';
  }
  void binary(std::string_view prefix, const std::vector<uint8_t>& data) {
    binary(prefix, data.data(), data.size());
  }

  // A QXLDataChunk chain: "data_chunks <extra> <total>" then one binary per
  // chunk. `sizes` empty means one chunk.
  bool chunks(std::string_view prefix, const std::vector<uint8_t>& data,
              const std::vector<uint32_t>& sizes) {
    if (sizes.size() == 1) {
      return fail(std::string(prefix) + ": a single chunk is spelled as empty chunkSizes");
    }
    uint64_t sum = 0;
    for (uint32_t s : sizes) {
      sum += s;
    }
    if (!sizes.empty() && sum != data.size()) {
      return fail(std::string(prefix) + ": chunk sizes sum to " + std::to_string(sum) +
                  ", data holds " + std::to_string(data.size()) + " bytes");
    }
    if (sizes.size() > uint64_t{MAX_DATA_CHUNKS} + 1) {
      return fail(std::string(prefix) + ": more chunks than MAX_DATA_CHUNKS");
    }
    out += "data_chunks ";
    printNumber(static_cast<int>(sizes.empty() ? 0 : sizes.size() - 1));
    out += ' ';
    printNumber(static_cast<uint64_t>(data.size()));
    out += '\n';
    if (sizes.empty()) {
      binary(prefix, data);
      return true;
    }
    size_t at = 0;
    for (uint32_t s : sizes) {
      binary(prefix, data.data() + at, s);
      at += s;
    }
    return true;
  }

  // ------------------------------------------------------------ QXL objects

  bool bitmap(const Bitmap& bm) {
    field("bitmap.format", bm.format);
    field("bitmap.flags", bm.flags);
    field("bitmap.x", bm.x);
    field("bitmap.y", bm.y);
    field("bitmap.stride", bm.stride);
    field("has_palette", static_cast<int>(bm.palette.has_value()));
    if (bm.palette) {
      if (bm.palette->entries.size() > MAX_PALETTE_ENTRIES) {
        return fail("palette above MAX_PALETTE_ENTRIES");
      }
      field("qp.num_ents", static_cast<uint16_t>(bm.palette->entries.size()));
      field("unique", bm.palette->unique);
      for (uint32_t e : bm.palette->entries) {
        field("ents", e);
      }
    }
    uint64_t size = uint64_t{bm.y} * bm.stride;
    if (bm.data.size() != size) {
      return fail("bitmap data is " + std::to_string(bm.data.size()) + " bytes, y*stride is " +
                  std::to_string(size));
    }
    uint32_t count = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
    if (bm.chunkCount != count) {
      return fail("bitmap chunkCount disagrees with chunkSizes");
    }
    if (bm.flags & BITMAP_DIRECT) {
      if (!bm.chunkSizes.empty()) {
        return fail("QXL_BITMAP_DIRECT bitmap cannot be chunked");
      }
      binary("image_data_flat", bm.data);
      return true;
    }
    return chunks("bitmap.data", bm.data, bm.chunkSizes);
  }

  bool image(const std::optional<Image>& img) {
    field("image", static_cast<int>(img.has_value()));
    if (!img) {
      return true;
    }
    field("descriptor.id", img->id);
    field("descriptor.type", img->type);
    field("descriptor.flags", img->flags);
    field("descriptor.width", img->width);
    field("descriptor.height", img->height);
    switch (img->type) {
      case IMAGE_BITMAP:
        if (auto* bm = std::get_if<Bitmap>(&img->payload)) {
          return bitmap(*bm);
        }
        break;
      case IMAGE_SURFACE:
        if (auto* s = std::get_if<SurfaceImage>(&img->payload)) {
          field("surface_image.surface_id", s->surfaceId);
          return true;
        }
        break;
      case IMAGE_QUIC:
        if (auto* q = std::get_if<QuicImage>(&img->payload)) {
          if (q->data.size() > UINT32_MAX) {
            return fail("quic data above 4 GiB");
          }
          field("quic.data_size", static_cast<uint32_t>(q->data.size()));
          return chunks("quic.data", q->data, q->chunkSizes);
        }
        break;
      default:
        // spice-server aborts on any other type while recording.
        return fail("image type " + std::to_string(img->type) + " cannot be recorded");
    }
    return fail("image type " + std::to_string(img->type) + " disagrees with its payload");
  }

  bool brush(const Brush& b) {
    field("type", b.type);
    if (b.type == BRUSH_SOLID) {
      field("u.color", b.color);
    } else if (b.type == BRUSH_PATTERN) {
      if (!image(b.pattern)) {
        return false;
      }
      point(b.patternPos);
    }
    return true;
  }

  bool qmask(const QMask& m) {
    field("flags", m.flags);
    point(m.pos);
    return image(m.bitmap);
  }

  bool clip(const Clip& c) {
    field("type", c.type);
    if (c.type != CLIP_RECTS) {
      return c.rects.empty() || fail("clip rects present but clip type is not RECTS");
    }
    if (c.rects.size() > MAX_CLIP_RECTS) {
      return fail("clip above MAX_CLIP_RECTS");
    }
    field("num_rects", static_cast<uint32_t>(c.rects.size()));
    std::vector<uint8_t> data;
    data.reserve(c.rects.size() * 16);
    std::string raw;
    for (const Rect& r : c.rects) {
      for (int32_t v : {r.top, r.left, r.bottom, r.right}) {
        appendU32(raw, static_cast<uint32_t>(v));
      }
    }
    data.assign(raw.begin(), raw.end());
    return chunks("clip_rects", data, c.chunkSizes);
  }

  bool path(const std::vector<PathSegment>& segs, const std::vector<uint32_t>& sizes) {
    std::string raw;
    for (const PathSegment& seg : segs) {
      appendU32(raw, seg.flags);
      appendU32(raw, static_cast<uint32_t>(seg.points.size()));
      for (const Point& p : seg.points) {
        appendU32(raw, static_cast<uint32_t>(p.x));
        appendU32(raw, static_cast<uint32_t>(p.y));
      }
    }
    return chunks("path", std::vector<uint8_t>(raw.begin(), raw.end()), sizes);
  }

  bool transform(const Transform& t) {
    std::string raw;
    for (uint32_t v : t) {
      appendU32(raw, v);
    }
    binary("transform", reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
    return true;
  }

  bool srcAndArea(const std::optional<Image>& src, const Rect& area) {
    if (!image(src)) {
      return false;
    }
    rect("src_area", area);
    return true;
  }

  bool drawPayload(const Drawable& d) {
    return std::visit(
        [&](const auto& p) -> bool {
          using T = std::decay_t<decltype(p)>;
          if constexpr (std::is_same_v<T, DrawNop>) {
            return true;
          } else if constexpr (std::is_same_v<T, Fill>) {
            if (!brush(p.brush)) {
              return false;
            }
            field("rop_descriptor", p.ropDescriptor);
            return qmask(p.mask);
          } else if constexpr (std::is_same_v<T, Opaque>) {
            if (!srcAndArea(p.srcBitmap, p.srcArea) || !brush(p.brush)) {
              return false;
            }
            field("rop_descriptor", p.ropDescriptor);
            field("scale_mode", p.scaleMode);
            return qmask(p.mask);
          } else if constexpr (std::is_same_v<T, Copy> || std::is_same_v<T, Blend>) {
            if (!srcAndArea(p.srcBitmap, p.srcArea)) {
              return false;
            }
            field("rop_descriptor", p.ropDescriptor);
            field("scale_mode", p.scaleMode);
            return qmask(p.mask);
          } else if constexpr (std::is_same_v<T, CopyBits>) {
            point(p.srcPos);
            return true;
          } else if constexpr (std::is_same_v<T, Blackness> || std::is_same_v<T, Whiteness> ||
                               std::is_same_v<T, Invers>) {
            return qmask(p.mask);
          } else if constexpr (std::is_same_v<T, Rop3>) {
            if (!srcAndArea(p.srcBitmap, p.srcArea) || !brush(p.brush)) {
              return false;
            }
            field("rop3", p.rop3);
            field("scale_mode", p.scaleMode);
            return qmask(p.mask);
          } else if constexpr (std::is_same_v<T, Stroke>) {
            return stroke(p);
          } else if constexpr (std::is_same_v<T, Text>) {
            return text(p);
          } else if constexpr (std::is_same_v<T, Transparent>) {
            if (!srcAndArea(p.srcBitmap, p.srcArea)) {
              return false;
            }
            field("src_color", p.srcColor);
            field("true_color", p.trueColor);
            return true;
          } else if constexpr (std::is_same_v<T, AlphaBlend>) {
            // QXLCompatAlphaBlend has no alpha_flags, so the recorder writes none.
            if (!d.compat) {
              field("alpha_flags", p.alphaFlags);
            } else if (p.alphaFlags != 0) {
              return fail("compat ALPHA_BLEND cannot carry alpha_flags");
            }
            field("alpha", p.alpha);
            return srcAndArea(p.srcBitmap, p.srcArea);
          } else {
            static_assert(std::is_same_v<T, Composite>);
            return composite(p);
          }
        },
        d.payload);
  }

  bool stroke(const Stroke& p) {
    if (!path(p.path, p.pathChunkSizes)) {
      return false;
    }
    field("attr.flags", p.attrFlags);
    if (p.attrFlags & LINE_STYLED) {
      if (p.style.size() > MAX_STYLE_SEGMENTS) {
        return fail("stroke style above 255 segments");
      }
      field("attr.style_nseg", static_cast<uint8_t>(p.style.size()));
      std::string raw;
      for (int32_t v : p.style) {
        appendU32(raw, static_cast<uint32_t>(v));
      }
      binary("style", reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
    } else if (!p.style.empty()) {
      return fail("stroke style present without SPICE_LINE_FLAGS_STYLED");
    }
    if (!brush(p.brush)) {
      return false;
    }
    field("fore_mode", p.foreMode);
    field("back_mode", p.backMode);
    return true;
  }

  bool text(const Text& p) {
    if (p.str.data.size() > UINT32_MAX) {
      return fail("string data above 4 GiB");
    }
    field("data_size", static_cast<uint32_t>(p.str.data.size()));
    field("length", p.str.length);
    field("flags", p.str.flags);
    if (!chunks("string", p.str.data, p.str.chunkSizes)) {
      return false;
    }
    rect("back_area", p.backArea);
    if (!brush(p.foreBrush) || !brush(p.backBrush)) {
      return false;
    }
    field("fore_mode", p.foreMode);
    field("back_mode", p.backMode);
    return true;
  }

  bool composite(const Composite& p) {
    field("flags", p.flags);
    if (!image(p.src)) {
      return false;
    }
    field("src_transform", static_cast<int>(p.srcTransform.has_value()));
    if (p.srcTransform) {
      transform(*p.srcTransform);
    }
    // The recorder prints "mask 1" and then the image's own "image 1".
    field("mask", static_cast<int>(p.mask.has_value()));
    if (p.mask && !image(p.mask)) {
      return false;
    }
    field("mask_transform", static_cast<int>(p.maskTransform.has_value()));
    if (p.maskTransform) {
      transform(*p.maskTransform);
    }
    point16("src_origin", p.srcOrigin);
    point16("mask_origin", p.maskOrigin);
    return true;
  }

  bool drawable(const Drawable& d) {
    if (d.type != d.payload.index()) {
      return fail("draw type " + std::to_string(d.type) + " disagrees with its payload");
    }
    if (d.compat && d.type == DRAW_COMPOSITE) {
      return fail("compat drawables predate COMPOSITE");
    }
    out += "drawable\n";
    rect("bbox", d.bbox);
    if (!clip(d.clip)) {
      return false;
    }
    field("effect", d.effect);
    field("mm_time", d.mmTime);
    if (d.compat) {
      field("bitmap_offset", d.bitmapOffset);
      rect("bitmap_area", d.bitmapArea);
    } else {
      field("self_bitmap", d.selfBitmap);
      rect("self_bitmap_area", d.selfBitmapArea);
      field("surface_id", d.surfaceId);
      for (size_t i = 0; i < 3; ++i) {
        field("surfaces_dest", d.surfacesDest[i]);
        rect("surfaces_rects", d.surfacesRects[i]);
      }
    }
    field("type", d.type);
    return drawPayload(d);
  }

  bool surfaceCmd(const SurfaceCmd& s) {
    out += "surface_cmd\n";
    field("surface_id", s.surfaceId);
    field("type", s.type);
    field("flags", s.flags);
    if (s.type != SURFACE_CREATE) {
      return s.data.empty() || fail("surface DESTROY cannot carry data");
    }
    field("u.surface_create.format", s.format);
    field("u.surface_create.width", s.width);
    field("u.surface_create.height", s.height);
    field("u.surface_create.stride", s.stride);
    if (!(s.flags & SURF_KEEP_DATA)) {
      return s.data.empty() || fail("surface data present without QXL_SURF_FLAG_KEEP_DATA");
    }
    uint64_t size = uint64_t{s.height} * absStride(s.stride);
    if (s.data.size() != size) {
      return fail("surface data is " + std::to_string(s.data.size()) +
                  " bytes, height*|stride| is " + std::to_string(size));
    }
    binary("data", s.data);
    return true;
  }

  bool cursorCmd(const CursorCmd& c) {
    out += "cursor_cmd\n";
    field("type", c.type);
    switch (c.type) {
      case CURSOR_SET: {
        if (!c.shape) {
          return fail("cursor SET without a shape");
        }
        point16("point16", c.position);
        field("u.set.visible", c.visible);
        const CursorShape& sh = *c.shape;
        field("header.unique", sh.unique);
        field("header.type", sh.type);
        field("header.width", sh.width);
        field("header.height", sh.height);
        field("header.hot_spot_x", sh.hotSpotX);
        field("header.hot_spot_y", sh.hotSpotY);
        if (sh.data.size() > UINT32_MAX) {
          return fail("cursor data above 4 GiB");
        }
        field("data_size", static_cast<uint32_t>(sh.data.size()));
        return chunks("cursor", sh.data, sh.chunkSizes);
      }
      case CURSOR_MOVE:
        point16("point16", c.position);
        break;
      case CURSOR_TRAIL:
        field("u.trail.length", c.trailLength);
        field("u.trail.frequency", c.trailFrequency);
        break;
    }
    return !c.shape || fail("cursor shape present on a command other than SET");
  }

  bool command(const Command& cmd) {
    if (static_cast<size_t>(cmd.type) != cmd.body.index() + 1) {
      return fail("command type " + std::to_string(static_cast<int>(cmd.type)) +
                  " disagrees with its body");
    }
    return std::visit(
        [&](const auto& b) -> bool {
          using T = std::decay_t<decltype(b)>;
          if constexpr (std::is_same_v<T, Drawable>) {
            return drawable(b);
          } else if constexpr (std::is_same_v<T, UpdateCmd>) {
            out += "update\n";
            rect("area", b.area);
            field("update_id", b.updateId);
            field("surface_id", b.surfaceId);
            return true;
          } else if constexpr (std::is_same_v<T, CursorCmd>) {
            return cursorCmd(b);
          } else if constexpr (std::is_same_v<T, MessageCmd>) {
            // The recorder takes strlen() of the guest string.
            if (std::memchr(b.text.data(), 0, b.text.size()) != nullptr) {
              return fail("message text contains a NUL byte");
            }
            binary("message", b.text);
            return true;
          } else {
            static_assert(std::is_same_v<T, SurfaceCmd>);
            return surfaceCmd(b);
          }
        },
        cmd.body);
  }

  bool ioEvent(const IoEvent& io) {
    if (!io.primary) {
      return true;
    }
    if (io.message != WorkerMessage::CreatePrimarySurface &&
        io.message != WorkerMessage::CreatePrimarySurfaceAsync) {
      return fail("primary surface on worker message " +
                  std::string(workerMessageName(io.message)));
    }
    const PrimarySurface& p = *io.primary;
    uint64_t size = uint64_t{p.height} * absStride(p.stride);
    if (!p.data.empty() && p.data.size() != size) {
      return fail("primary data is " + std::to_string(p.data.size()) +
                  " bytes, height*|stride| is " + std::to_string(size));
    }
    // red_record_primary_surface_create: two lines of four %d, then the pixels.
    auto line = [&](std::initializer_list<int32_t> vals) {
      bool first = true;
      for (int32_t v : vals) {
        if (!first) {
          out += ' ';
        }
        first = false;
        printField(v);
      }
      out += '\n';
    };
    line({static_cast<int32_t>(p.width), static_cast<int32_t>(p.height), p.stride,
          static_cast<int32_t>(p.format)});
    line({static_cast<int32_t>(p.position), static_cast<int32_t>(p.mouseMode),
          static_cast<int32_t>(p.flags), static_cast<int32_t>(p.type)});
    binary("data", p.data);
    return true;
  }
};

// ---------------------------------------------------------------- sinks

std::string errnoText(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

}  // namespace

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual std::optional<WriteError> write(const char* data, size_t size) = 0;
  // Pushes buffered bytes down; `last` ends a compressed stream.
  virtual std::optional<WriteError> flush(bool last) = 0;
};

namespace {

class FdSink : public ByteSink {
 public:
  explicit FdSink(base::Fd fd) : fd_(std::move(fd)) {}
  std::optional<WriteError> write(const char* data, size_t size) override {
    while (size > 0) {
      ssize_t n = ::write(fd_.get(), data, size);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        return WriteError{WriteErrorKind::Io, -1, errnoText("write")};
      }
      data += n;
      size -= static_cast<size_t>(n);
    }
    return std::nullopt;
  }
  std::optional<WriteError> flush(bool) override { return std::nullopt; }

 private:
  base::Fd fd_;
};

class FileSink : public ByteSink {
 public:
  explicit FileSink(FILE* file) : file_(file) {}
  std::optional<WriteError> write(const char* data, size_t size) override {
    if (size > 0 && std::fwrite(data, 1, size, file_) != size) {
      return WriteError{WriteErrorKind::Io, -1, errnoText("fwrite")};
    }
    return std::nullopt;
  }
  std::optional<WriteError> flush(bool) override {
    if (std::fflush(file_) != 0) {
      return WriteError{WriteErrorKind::Io, -1, errnoText("fflush")};
    }
    return std::nullopt;
  }

 private:
  FILE* file_;  // not owned
};

class XzSink : public ByteSink {
 public:
  explicit XzSink(std::unique_ptr<ByteSink> inner) : inner_(std::move(inner)) {}
  ~XzSink() override { lzma_end(&strm_); }

  std::optional<WriteError> init() {
    // CRC64 is what `xz` uses by default.
    lzma_ret ret = lzma_easy_encoder(&strm_, XZ_WRITE_PRESET, LZMA_CHECK_CRC64);
    if (ret != LZMA_OK) {
      return WriteError{WriteErrorKind::XzError, -1,
                        "lzma_easy_encoder failed: " + std::to_string(ret)};
    }
    return std::nullopt;
  }

  std::optional<WriteError> write(const char* data, size_t size) override {
    strm_.next_in = reinterpret_cast<const uint8_t*>(data);
    strm_.avail_in = size;
    return run(LZMA_RUN);
  }

  std::optional<WriteError> flush(bool last) override {
    if (!last) {
      return inner_->flush(false);  // liblzma keeps its own window; only FINISH ends it
    }
    strm_.next_in = nullptr;
    strm_.avail_in = 0;
    if (auto err = run(LZMA_FINISH)) {
      return err;
    }
    return inner_->flush(true);
  }

 private:
  std::optional<WriteError> run(lzma_action action) {
    for (;;) {
      strm_.next_out = out_;
      strm_.avail_out = sizeof(out_);
      lzma_ret ret = lzma_code(&strm_, action);
      size_t produced = sizeof(out_) - strm_.avail_out;
      if (produced > 0) {
        if (auto err = inner_->write(reinterpret_cast<const char*>(out_), produced)) {
          return err;
        }
      }
      if (ret == LZMA_STREAM_END) {
        return std::nullopt;
      }
      if (ret != LZMA_OK) {
        return WriteError{WriteErrorKind::XzError, -1, "xz encode error " + std::to_string(ret)};
      }
      if (action == LZMA_RUN && strm_.avail_in == 0) {
        return std::nullopt;
      }
    }
  }

  std::unique_ptr<ByteSink> inner_;
  lzma_stream strm_ = LZMA_STREAM_INIT;
  uint8_t out_[64 * 1024];
};

}  // namespace

// ---------------------------------------------------------------- errors

std::string_view writeErrorKindName(WriteErrorKind kind) {
  switch (kind) {
    case WriteErrorKind::Io:
      return "Io";
    case WriteErrorKind::XzError:
      return "XzError";
    case WriteErrorKind::EventOutOfSequence:
      return "EventOutOfSequence";
    case WriteErrorKind::InconsistentTree:
      return "InconsistentTree";
    case WriteErrorKind::WriterFailed:
      return "WriterFailed";
  }
  return "?";
}

std::string WriteError::toString() const {
  std::string s(writeErrorKindName(kind));
  if (eventIndex >= 0) {
    s += " (event " + std::to_string(eventIndex) + ")";
  }
  return s + ": " + detail;
}

namespace {

// Exactly one of cmd / io is set.
std::optional<WriteError> serializeOne(uint32_t index, uint64_t timestampNs, const Command* cmd,
                                       const IoEvent* io, std::string& out) {
  size_t start = out.size();
  Serializer s{out, index, std::nullopt};
  // red_record_event_unlocked: "event %u %d %u %" PRIu64.
  out += "event ";
  s.printNumber(index);
  out += cmd ? " 0 " : " 1 ";
  s.printNumber(cmd ? static_cast<uint32_t>(cmd->type) : static_cast<uint32_t>(io->message));
  out += ' ';
  s.printNumber(timestampNs);
  out += '\n';
  bool ok = cmd ? s.command(*cmd) : s.ioEvent(*io);
  if (!ok) {
    out.resize(start);
    return s.error;
  }
  return std::nullopt;
}

}  // namespace

std::optional<WriteError> serializeEvent(uint32_t index, uint64_t timestampNs,
                                         const std::variant<Command, IoEvent>& body,
                                         std::string& out) {
  return serializeOne(index, timestampNs, std::get_if<Command>(&body), std::get_if<IoEvent>(&body),
                      out);
}

// ---------------------------------------------------------------- writer

RecordWriter::RecordWriter(std::unique_ptr<ByteSink> sink) : sink_(std::move(sink)) {}

RecordWriter::~RecordWriter() = default;

std::variant<std::unique_ptr<RecordWriter>, WriteError> RecordWriter::start(
    std::unique_ptr<ByteSink> sink, Compression compression) {
  if (compression == Compression::Xz) {
    auto xz = std::make_unique<XzSink>(std::move(sink));
    if (auto err = xz->init()) {
      return *err;
    }
    sink = std::move(xz);
  }
  std::unique_ptr<RecordWriter> writer(new RecordWriter(std::move(sink)));
  writer->buf_.reserve(WRITE_BUFFER_BYTES);
  writer->buf_ = "SPICE_REPLAY 1\n";
  writer->bytesWritten_ = writer->buf_.size();
  return writer;
}

std::variant<std::unique_ptr<RecordWriter>, WriteError> RecordWriter::open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return WriteError{WriteErrorKind::Io, -1, errnoText(("open " + path).c_str())};
  }
  bool xz = path.size() >= 3 && path.compare(path.size() - 3, 3, ".xz") == 0;
  return toFd(base::Fd(fd), xz ? Compression::Xz : Compression::None);
}

std::variant<std::unique_ptr<RecordWriter>, WriteError> RecordWriter::toFd(
    base::Fd fd, Compression compression) {
  return start(std::make_unique<FdSink>(std::move(fd)), compression);
}

std::variant<std::unique_ptr<RecordWriter>, WriteError> RecordWriter::toFile(
    FILE* file, Compression compression) {
  return start(std::make_unique<FileSink>(file), compression);
}

std::optional<WriteError> RecordWriter::failed(WriteError error) {
  sticky_ = WriteError{WriteErrorKind::WriterFailed, error.eventIndex,
                       "an earlier write failed: " + error.toString()};
  return error;
}

std::optional<WriteError> RecordWriter::flushBuffer() {
  if (auto err = sink_->write(buf_.data(), buf_.size())) {
    return failed(*err);
  }
  buf_.clear();
  return std::nullopt;
}

std::optional<WriteError> RecordWriter::writeBody(const Command* cmd, const IoEvent* io,
                                                  uint64_t timestampNs) {
  if (sticky_) {
    return sticky_;
  }
  if (finished_) {
    return WriteError{WriteErrorKind::WriterFailed, nextIndex_, "write after finish()"};
  }
  size_t before = buf_.size();
  if (auto err = serializeOne(nextIndex_, timestampNs, cmd, io, buf_)) {
    // A bad tree is the caller's bug, not a broken stream: later events may
    // still be written.
    return err;
  }
  bytesWritten_ += buf_.size() - before;
  ++nextIndex_;
  if (buf_.size() >= WRITE_BUFFER_BYTES) {
    return flushBuffer();
  }
  return std::nullopt;
}

std::optional<WriteError> RecordWriter::write(const RecordEvent& event) {
  if (event.index != nextIndex_) {
    return WriteError{WriteErrorKind::EventOutOfSequence, event.index,
                      "event index " + std::to_string(event.index) + ", writer is at " +
                          std::to_string(nextIndex_)};
  }
  return writeBody(std::get_if<Command>(&event.body), std::get_if<IoEvent>(&event.body),
                   event.timestampNs);
}

std::optional<WriteError> RecordWriter::writeCommand(const Command& command, uint64_t timestampNs) {
  return writeBody(&command, nullptr, timestampNs);
}

std::optional<WriteError> RecordWriter::writeIo(const IoEvent& io, uint64_t timestampNs) {
  return writeBody(nullptr, &io, timestampNs);
}

std::optional<WriteError> RecordWriter::finish() {
  if (sticky_) {
    return sticky_;
  }
  if (finished_) {
    return std::nullopt;
  }
  if (auto err = flushBuffer()) {
    return err;
  }
  finished_ = true;
  if (auto err = sink_->flush(true)) {
    return failed(*err);
  }
  return std::nullopt;
}

}  // namespace spicebox::guestsim
