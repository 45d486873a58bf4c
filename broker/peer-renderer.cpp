#include "broker/peer-renderer.h"

#include <spdlog/fmt/fmt.h>

#include <type_traits>
#include <variant>

#include "base/assert.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker {

namespace {

using namespace ipc::render;

static_assert(qxl::MAX_ITEMS_PER_BATCH == MAX_ITEMS_PER_BATCH,
              "render.capnp's maxItemsPerBatch must equal the device's MAX_ITEMS_PER_BATCH");

class RendererPeer : public HeartbeatPeer<BrokerToRenderer, RendererToBroker, PROTOCOL_VERSION> {
 public:
  RendererPeer() : HeartbeatPeer("renderer") {}

 protected:
  Decoded decodeBoundary(RendererToBroker::Reader root, ipc::ReceivedFds& fds) override {
    if (root.which() != RendererToBroker::BATCH_DONE)
      return HeartbeatPeer::decodeBoundary(root, fds);
    auto done = root.getBatchDone();
    Decoded d;
    // A batch holds at most MAX_ITEMS_PER_BATCH items, so no more commands can be rejected.
    if (done.getRejected() > MAX_ITEMS_PER_BATCH) {
      d.refusal = "batchDone reports " + std::to_string(done.getRejected()) +
                  " rejected commands, a batch holds at most " +
                  std::to_string(MAX_ITEMS_PER_BATCH);
      return d;
    }
    RendererBatchDone decoded;
    decoded.seq = done.getSeq();
    decoded.rejected = done.getRejected();
    if (done.getBuffer() > 1) {
      d.refusal = fmt::format("batchDone {} names buffer {}; a segment has buffers 0 and 1",
                              decoded.seq, done.getBuffer());
      return d;
    }
    decoded.buffer = done.getBuffer();
    if (auto refusal = decodeOutput(done, decoded)) {
      d.refusal = std::move(*refusal);
      return d;
    }
    if (done.hasCursor()) {
      auto cursor = decodeCursor(done.getCursor());
      if (auto* refusal = std::get_if<std::string>(&cursor)) {
        d.refusal = fmt::format("batchDone {}: {}", decoded.seq, *refusal);
        return d;
      }
      decoded.cursor = std::move(std::get<RendererCursor>(cursor));
    }
    d.kind = Decoded::Kind::Boundary;
    d.boundary = std::move(decoded);
    return d;
  }

 private:
  // Counts and non-empty rectangles inside the largest display; the owner checks the rectangles
  // against the primary of the batch (checkOutput).
  static std::optional<std::string> decodeOutput(BatchDone::Reader done, RendererBatchDone& out) {
    auto damage = done.getDamage();
    if (damage.size() > MAX_DAMAGE_RECTS)
      return fmt::format("batchDone reports {} damage rectangles, at most {} are allowed",
                         damage.size(), MAX_DAMAGE_RECTS);
    for (auto r : damage) {
      auto rect = decodeRect(r);
      if (!rect)
        return fmt::format("batchDone damage rectangle {} is empty or out of range",
                           describeRect(r));
      out.damage.push_back(*rect);
    }
    auto hints = done.getHints();
    if (hints.size() > MAX_HINTS)
      return fmt::format("batchDone reports {} hints, at most {} are allowed", hints.size(),
                         MAX_HINTS);
    for (auto hint : hints) {
      switch (hint.which()) {
        case Hint::SOLID_FILL: {
          auto fill = hint.getSolidFill();
          auto rects = fill.getRects();
          if (rects.size() == 0 || rects.size() > MAX_HINT_RECTS)
            return fmt::format("batchDone solidFill hint of {} rectangles, 1 .. {} are allowed",
                               rects.size(), MAX_HINT_RECTS);
          RendererSolidFill f{fill.getColor(), {}};
          for (auto r : rects) {
            auto rect = decodeRect(r);
            if (!rect)
              return fmt::format("batchDone solidFill rectangle {} is empty or out of range",
                                 describeRect(r));
            f.rects.push_back(*rect);
          }
          out.hints.emplace_back(std::move(f));
          break;
        }
        case Hint::COPY_BITS: {
          auto copy = hint.getCopyBits();
          auto dest = decodeRect(copy.getDest());
          if (!dest)
            return fmt::format("batchDone copyBits destination {} is empty or out of range",
                               describeRect(copy.getDest()));
          out.hints.emplace_back(RendererCopyBits{copy.getSrcX(), copy.getSrcY(), *dest});
          break;
        }
        default:
          return fmt::format("batchDone hint of unknown type {}",
                             static_cast<unsigned>(hint.which()));
      }
    }
    return std::nullopt;
  }

  // render.capnp Cursor's invariants: a shape of 1 .. maxCursorDimension pixels a side exactly
  // when shapeSerial is not 0, its hot spot inside it, exactly width * height ARGB32 pixels.
  // The position is any Int16 (a pointer may lie off the primary).
  static std::variant<RendererCursor, std::string> decodeCursor(Cursor::Reader c) {
    const unsigned w = c.getWidth(), h = c.getHeight();
    if (w > MAX_CURSOR_DIMENSION || h > MAX_CURSOR_DIMENSION)
      return fmt::format("cursor shape of {}x{} pixels, at most {} a side are allowed", w, h,
                         MAX_CURSOR_DIMENSION);
    const bool hasShape = c.getShapeSerial() != 0;
    if (hasShape != (w != 0) || hasShape != (h != 0))
      return fmt::format("cursor shape of {}x{} pixels with shapeSerial {} (serial 0 is no shape)",
                         w, h, c.getShapeSerial());
    if (hasShape ? c.getHotSpotX() >= w || c.getHotSpotY() >= h
                 : c.getHotSpotX() != 0 || c.getHotSpotY() != 0)
      return fmt::format("cursor hot spot ({}, {}) lies outside its {}x{} shape", c.getHotSpotX(),
                         c.getHotSpotY(), w, h);
    auto bytes = c.getPixels();
    // At most 128 * 128 * 4: both sides are checked above.
    const uint64_t want = uint64_t{w} * h * 4;
    if (bytes.size() != want)
      return fmt::format("cursor shape of {}x{} pixels carries {} bytes of pixels, not {}", w, h,
                         bytes.size(), want);
    RendererCursor out{c.getVisible(),     c.getX(),        c.getY(),
                       c.getShapeSerial(), c.getWidth(),    c.getHeight(),
                       c.getHotSpotX(),    c.getHotSpotY(), {}};
    out.pixels.resize(size_t{w} * h);
    for (size_t i = 0; i < out.pixels.size(); ++i)  // little-endian ARGB32 on the wire
      out.pixels[i] = uint32_t{bytes[4 * i]} | uint32_t{bytes[4 * i + 1]} << 8 |
                      uint32_t{bytes[4 * i + 2]} << 16 | uint32_t{bytes[4 * i + 3]} << 24;
    return out;
  }

  // Non-empty and inside [0, maxDisplayDimension) in both directions, or nullopt.
  static std::optional<RendererRect> decodeRect(Rect::Reader r) {
    const int64_t max = MAX_DISPLAY_DIMENSION;
    if (r.getLeft() < 0 || r.getTop() < 0 || r.getLeft() >= r.getRight() ||
        r.getTop() >= r.getBottom() || r.getRight() > max || r.getBottom() > max)
      return std::nullopt;
    return RendererRect{r.getTop(), r.getLeft(), r.getBottom(), r.getRight()};
  }
  static std::string describeRect(Rect::Reader r) {
    return fmt::format("(left {}, top {}, right {}, bottom {})", r.getLeft(), r.getTop(),
                       r.getRight(), r.getBottom());
  }
};

bool inside(const RendererRect& r, const PrimarySize& p) {
  return r.left >= 0 && r.top >= 0 && r.left < r.right && r.top < r.bottom &&
         int64_t{r.right} <= p.width && int64_t{r.bottom} <= p.height;
}

std::string describe(const RendererRect& r) {
  return fmt::format("(left {}, top {}, right {}, bottom {})", r.left, r.top, r.right, r.bottom);
}

void fillItem(WorkItem::Builder out, const qxl::WorkItem& item) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, qxl::CommandItem>) {
          auto c = out.initCommand();
          c.setRing(v.ring == qxl::CommandRingKind::Cursor ? Ring::CURSOR : Ring::DISPLAY);
          c.setAddr(v.addr);
          c.setType(v.type);
        } else if constexpr (std::is_same_v<T, qxl::CreatePrimaryItem>) {
          auto p = out.initCreatePrimary();
          p.setWidth(v.width);
          p.setHeight(v.height);
          p.setStride(v.stride);
          p.setFormat(v.format);
          p.setPosition(v.position);
          p.setMouseMode(v.mouseMode);
          p.setFlags(v.flags);
          p.setType(v.type);
          p.setMem(v.mem);
        } else if constexpr (std::is_same_v<T, qxl::DestroyPrimaryItem>) {
          out.setDestroyPrimary();
        } else if constexpr (std::is_same_v<T, qxl::DestroySurfaceItem>) {
          out.setDestroySurface(v.surfaceId);
        } else if constexpr (std::is_same_v<T, qxl::DestroyAllSurfacesItem>) {
          out.setDestroyAllSurfaces();
        } else if constexpr (std::is_same_v<T, qxl::UpdateAreaItem>) {
          auto u = out.initUpdateArea();
          u.setSurfaceId(v.surfaceId);
          auto r = u.initArea();
          r.setTop(v.area.top);
          r.setLeft(v.area.left);
          r.setBottom(v.area.bottom);
          r.setRight(v.area.right);
        } else if constexpr (std::is_same_v<T, qxl::MonitorsConfigItem>) {
          out.setMonitorsConfig(v.addr);
        } else if constexpr (std::is_same_v<T, qxl::MemslotsItem>) {
          auto slots = out.initMemslots(static_cast<unsigned>(v.slots.size()));
          for (unsigned i = 0; i < slots.size(); ++i) {
            const auto& s = v.slots[i];
            slots[i].setId(s.id);
            slots[i].setGeneration(s.generation);
            slots[i].setBar(s.bar == qxl::BarId::Vram ? Bar::VRAM : Bar::RAM);
            slots[i].setMemStart(s.memStart);
            slots[i].setMemEnd(s.memEnd);
          }
        } else {
          static_assert(std::is_same_v<T, qxl::ResetItem>, "a WorkItem without a wire form");
          out.setReset();
        }
      },
      item);
}

}  // namespace

std::unique_ptr<ChildPeer> makeRendererPeer() {
  return std::make_unique<RendererPeer>();
}

void buildGuestMemory(capnp::MessageBuilder& message, const GuestMemoryLayout& layout) {
  auto g = message.initRoot<BrokerToRenderer>().initGuestMemory();
  g.setRamSize(layout.ramSize);
  g.setVramSize(layout.vramSize);
  g.setRamPhysStart(layout.ramPhysStart);
  g.setVramPhysStart(layout.vramPhysStart);
}

void buildDisplaySegment(capnp::MessageBuilder& message, const DisplaySegmentLayout& layout) {
  fillDisplaySegment(message.initRoot<BrokerToRenderer>().initDisplaySegment(), layout);
}

void fillDisplaySegment(ipc::render::DisplaySegment::Builder s,
                        const DisplaySegmentLayout& layout) {
  s.setGeneration(layout.generation);
  s.setSize(layout.size);
  s.setOffset(0);
  s.setStride(layout.stride);
  s.setWidth(layout.width);
  s.setHeight(layout.height);
  s.setBackOffset(layout.backOffset);
}

std::optional<std::string> checkOutput(const RendererBatchDone& done,
                                       const std::optional<PrimarySize>& primary) {
  if (!primary) {
    if (!done.damage.empty() || !done.hints.empty())
      return fmt::format("batchDone {} reports output, but no primary exists after that batch",
                         done.seq);
    return std::nullopt;
  }
  const auto outside = [&](const char* what, const RendererRect& r) {
    return fmt::format("batchDone {}: {} {} lies outside the {}x{} primary", done.seq, what,
                       describe(r), primary->width, primary->height);
  };
  for (const RendererRect& r : done.damage)
    if (!inside(r, *primary))
      return outside("damage rectangle", r);
  for (const RendererHint& hint : done.hints) {
    if (const auto* fill = std::get_if<RendererSolidFill>(&hint)) {
      for (const RendererRect& r : fill->rects)
        if (!inside(r, *primary))
          return outside("solidFill rectangle", r);
    } else {
      const auto& copy = std::get<RendererCopyBits>(hint);
      if (!inside(copy.dest, *primary))
        return outside("copyBits destination", copy.dest);
      // 64-bit: the source corner is any int32 pair.
      const int64_t w = int64_t{copy.dest.right} - copy.dest.left;
      const int64_t h = int64_t{copy.dest.bottom} - copy.dest.top;
      if (copy.srcX < 0 || copy.srcY < 0 || copy.srcX + w > primary->width ||
          copy.srcY + h > primary->height)
        return fmt::format(
            "batchDone {}: copyBits source at ({}, {}) of {}x{} lies outside the "
            "{}x{} primary",
            done.seq, copy.srcX, copy.srcY, w, h, primary->width, primary->height);
    }
  }
  return std::nullopt;
}

void buildOutputTaken(capnp::MessageBuilder& message, uint64_t seq) {
  message.initRoot<BrokerToRenderer>().setOutputTaken(seq);
}

void buildDropGuestMemory(capnp::MessageBuilder& message) {
  message.initRoot<BrokerToRenderer>().setDropGuestMemory();
}

void buildBatch(capnp::MessageBuilder& message, uint64_t seq, std::span<const qxl::WorkItem> items,
                uint32_t prefix, std::span<const uint32_t> quarantine) {
  SB_ASSERT(items.size() <= qxl::MAX_ITEMS_PER_BATCH, "device made a batch of {} items",
            items.size());
  SB_ASSERT(prefix <= items.size(), "prefix {} of a batch of {}", prefix, items.size());
  auto batch = message.initRoot<BrokerToRenderer>().initBatch();
  batch.setSeq(seq);
  auto list = batch.initItems(static_cast<unsigned>(items.size()));
  for (unsigned i = 0; i < list.size(); ++i)
    fillItem(list[i], items[i]);
  batch.setPrefix(prefix);
  if (!quarantine.empty()) {
    auto skip = batch.initQuarantine(static_cast<unsigned>(quarantine.size()));
    for (unsigned i = 0; i < skip.size(); ++i) {
      SB_ASSERT(quarantine[i] + prefix < items.size(), "quarantined item {} of a batch of {}",
                quarantine[i], items.size());
      skip.set(i, quarantine[i]);
    }
  }
}

void buildRecoveryArea(capnp::MessageBuilder& message, uint64_t arenaBytes) {
  message.initRoot<BrokerToRenderer>().initRecoveryArea().setArenaBytes(arenaBytes);
}

}  // namespace spicebox::broker
