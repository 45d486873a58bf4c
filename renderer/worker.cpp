// Runs in: renderer (sandboxed). Input: see worker.h. Guest memory is read only through
// SlotMemory, by the decoder (qxl-decode.cpp).
#include "renderer/worker.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "renderer/raster-pixels.h"

namespace spicebox::renderer {

namespace {

using ipc::render::Batch;
using ipc::render::Command;
using ipc::render::Ring;
using ipc::render::WorkItem;

// The largest BAR the broker accepts (broker/vmm-link.h, MAX_RAM_BYTES / MAX_VRAM_BYTES).
constexpr uint64_t MAX_BAR_BYTES = 1024ull * 1024 * 1024;
constexpr uint64_t PAGE = 4096;
// Double buffering: rectangles kept of what the other buffer lacks, beyond that their bounding box.
constexpr size_t MAX_FORWARD_RECTS = 128;
// The largest display buffer: a maxDisplayDimension square at 4 bytes a pixel (256 MiB); a
// segment holds two.
constexpr uint64_t MAX_SEGMENT_BYTES =
    uint64_t{ipc::render::MAX_DISPLAY_DIMENSION} * ipc::render::MAX_DISPLAY_DIMENSION * 4;

void* mapShared(int fd, uint64_t size) {
  return ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
}

// Logged at the 1st, 2nd, 4th, 8th ... occurrence: a guest controls how often this happens.
bool powerOfTwo(uint64_t n) {
  return n != 0 && (n & (n - 1)) == 0;
}

// The ring each command type belongs on (the broker copies type and address out of the ring).
std::optional<Ring> ringOf(uint32_t type) {
  switch (type) {
    case QXL_CMD_DRAW:
    case QXL_CMD_UPDATE:
    case QXL_CMD_MESSAGE:
    case QXL_CMD_SURFACE:
      return Ring::DISPLAY;
    case QXL_CMD_CURSOR:
      return Ring::CURSOR;
    default:
      return std::nullopt;
  }
}

}  // namespace

std::variant<GuestMapping, std::string> GuestMapping::map(base::Fd ram, base::Fd vram,
                                                          ipc::render::GuestMemory::Reader layout) {
  const uint64_t sizes[2] = {layout.getRamSize(), layout.getVramSize()};
  const uint64_t starts[2] = {layout.getRamPhysStart(), layout.getVramPhysStart()};
  const char* names[2] = {"RAM", "VRAM"};
  if (!ram || !vram)
    return std::string("guestMemory without its two descriptors (RAM, VRAM)");
  for (int i = 0; i < 2; ++i) {
    if (sizes[i] == 0 || sizes[i] % PAGE != 0 || sizes[i] > MAX_BAR_BYTES ||
        sizes[i] > UINT64_MAX - starts[i])
      return fmt::format("guestMemory {} size {} bytes at {:#x} is out of range", names[i],
                         sizes[i], starts[i]);
  }
  GuestMapping mapping;
  void* r = mapShared(ram.get(), sizes[0]);
  if (r == MAP_FAILED)
    return fmt::format("cannot map the guest RAM ({} bytes): {}", sizes[0], std::strerror(errno));
  mapping.view_.ram = {static_cast<std::byte*>(r), sizes[0]};
  void* v = mapShared(vram.get(), sizes[1]);
  if (v == MAP_FAILED)
    return fmt::format("cannot map the guest VRAM ({} bytes): {}", sizes[1],
                       std::strerror(errno));  // `mapping` unmaps the RAM
  mapping.view_.vram = {static_cast<std::byte*>(v), sizes[1]};
  mapping.view_.ramPhysStart = starts[0];
  mapping.view_.vramPhysStart = starts[1];
  // The descriptors close here: the mappings keep the memory.
  return mapping;
}

GuestMapping::GuestMapping(GuestMapping&& other) noexcept
    : view_(std::exchange(other.view_, GuestView{})) {}

GuestMapping& GuestMapping::operator=(GuestMapping&& other) noexcept {
  if (this != &other) {
    unmap();
    view_ = std::exchange(other.view_, GuestView{});
  }
  return *this;
}

GuestMapping::~GuestMapping() {
  unmap();
}

void GuestMapping::unmap() {
  if (!view_.ram.empty())
    ::munmap(view_.ram.data(), view_.ram.size());
  if (!view_.vram.empty())
    ::munmap(view_.vram.data(), view_.vram.size());
  view_ = GuestView{};
}

std::variant<std::unique_ptr<DisplaySegmentMapping>, std::string> DisplaySegmentMapping::map(
    base::Fd fd, ipc::render::DisplaySegment::Reader segment) {
  const uint32_t w = segment.getWidth(), h = segment.getHeight(), stride = segment.getStride();
  const uint64_t size = segment.getSize(), offset = segment.getOffset();
  if (!fd)
    return std::string("displaySegment without its descriptor");
  if (w == 0 || h == 0 || w > ipc::render::MAX_DISPLAY_DIMENSION ||
      h > ipc::render::MAX_DISPLAY_DIMENSION)
    return fmt::format("displaySegment of {}x{} pixels: width and height must be 1 .. {}", w, h,
                       ipc::render::MAX_DISPLAY_DIMENSION);
  // 64-bit arithmetic: every factor is below 2^32, and offset is bounded before it is added.
  const uint64_t back = segment.getBackOffset();
  if (stride < uint64_t{w} * 4 || stride % 4 != 0 || size == 0 || size % PAGE != 0 ||
      size > 2 * MAX_SEGMENT_BYTES + PAGE || offset % 4 != 0 || offset > size ||
      uint64_t{stride} * h > size - offset)
    return fmt::format(
        "displaySegment layout out of range: {} bytes, offset {}, stride {} for {}x{} pixels", size,
        offset, stride, w, h);
  // The second buffer, when there is one, lies after the first and inside the segment.
  if (back != 0 && (back % 4 != 0 || back > size || back < offset + uint64_t{stride} * h ||
                    uint64_t{stride} * h > size - back))
    return fmt::format(
        "displaySegment second buffer out of range: offset {} for {} rows of {} bytes in a "
        "{}-byte segment whose first buffer starts at {}",
        back, h, stride, size, offset);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return fmt::format("cannot fstat the displaySegment descriptor: {}", std::strerror(errno));
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < size)
    return fmt::format("displaySegment descriptor holds {} bytes, {} were announced", st.st_size,
                       size);
  // Unsealed, it could shrink under the mapping and fault us (SIGBUS) on the next draw.
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
    return std::string("displaySegment descriptor is not sealed against shrinking (F_SEAL_SHRINK)");
  void* base = mapShared(fd.get(), size);
  if (base == MAP_FAILED)
    return fmt::format("cannot map the displaySegment ({} bytes): {}", size, std::strerror(errno));
  std::unique_ptr<DisplaySegmentMapping> m(new DisplaySegmentMapping());
  m->base_ = base;
  m->size_ = size;
  m->generation_ = segment.getGeneration();
  m->width_ = w;
  m->height_ = h;
  m->stride_ = stride;
  m->buffers_[0] = {static_cast<std::byte*>(base) + offset, uint64_t{stride} * h};
  if (back != 0)
    m->buffers_[1] = {static_cast<std::byte*>(base) + back, uint64_t{stride} * h};
  return m;  // the descriptor closes here: the mapping keeps the memory
}

DisplaySegmentMapping::~DisplaySegmentMapping() {
  if (base_ != nullptr)
    ::munmap(base_, size_);
}

std::optional<std::string> Worker::receiveSegment(base::Fd fd,
                                                  ipc::render::DisplaySegment::Reader segment) {
  auto mapped = DisplaySegmentMapping::map(std::move(fd), segment);
  if (auto* error = std::get_if<std::string>(&mapped))
    return *error;
  segment_ = std::move(std::get<std::unique_ptr<DisplaySegmentMapping>>(mapped));
  ++stats_.segments;
  spdlog::debug("display segment {} received: {}x{}", segment_->generation(), segment_->width(),
                segment_->height());
  adoptPrimaryIfReady();
  return std::nullopt;
}

Worker::~Worker() {
  // Surfaces may point into the recovery area's arena: they go before it is unmapped.
  raster_.destroyAll();
  raster_.setSurfaceStore(nullptr);
  raster_.setJournal(nullptr);
}

void Worker::attach(const GuestView& view) {
  detach();
  view_ = view;
}

void Worker::detach() {
  view_.reset();
  slots_.reset();
  primary_.reset();
  forgetSurfaces();
  // A new guest starts with a new device's pointer. Not reported by itself: the next batch
  // reports it when it differs from the last pointer reported.
  resetCursor();
  // The VMM is gone: so is its display (the broker dropped the segment too), and the recovery
  // area of its link.
  segment_.reset();
  raster_.setSurfaceStore(nullptr);
  raster_.setJournal(nullptr);
  log_.reset();
  resume_.reset();
  pendingPrimary_.reset();
}

void Worker::forgetSurfaces() {
  raster_.destroyAll();
  primarySegment_.reset();  // after the rasteriser let go of it
  guestSurfaces_.clear();
  resetBuffers();
  pendingPrimary_.reset();
  if (log_)
    log_->clearAll();
}

void Worker::resetBuffers() {
  buffer_ = 0;
  presented_ = false;
  forward_.clear();
  logBuffers();
}

void Worker::logBuffers() {
  if (log_)
    log_->setBuffers(buffer_, presented_, forward_);
}

void Worker::logCursor() {
  if (!log_)
    return;
  auto record = std::make_unique<recovery::CursorRecord>();
  record->visible = cursor_.visible ? 1 : 0;
  record->x = cursor_.x;
  record->y = cursor_.y;
  record->shapeSerial = cursor_.shapeSerial;
  record->lastShapeSerial = lastShapeSerial_;
  const SanitisedCursor& shape = cursor_.shape;
  if (cursor_.shapeSerial != 0 && shape.width <= recovery::MAX_CURSOR_SIDE &&
      shape.height <= recovery::MAX_CURSOR_SIDE &&
      shape.pixels.size() == size_t{shape.width} * shape.height) {
    record->width = shape.width;
    record->height = shape.height;
    record->hotSpotX = shape.hotSpotX;
    record->hotSpotY = shape.hotSpotY;
    std::copy(shape.pixels.begin(), shape.pixels.end(), record->pixels);
  } else {
    record->shapeSerial = 0;
  }
  log_->setCursor(*record);
}

std::optional<std::string> Worker::attachRecovery(base::Fd fd, uint64_t arenaBytes) {
  // Surfaces drawn so far live in this process's memory: a new area starts from nothing (the
  // broker sends one per link, before any batch of it).
  raster_.destroyAll();
  primarySegment_.reset();
  guestSurfaces_.clear();
  raster_.setSurfaceStore(nullptr);
  raster_.setJournal(nullptr);
  log_.reset();
  resume_.reset();
  pendingPrimary_.reset();
  auto opened = RecoveryLog::open(std::move(fd), arenaBytes);
  if (auto* error = std::get_if<std::string>(&opened))
    return *error;
  log_ = std::move(std::get<std::unique_ptr<RecoveryLog>>(opened));
  raster_.setSurfaceStore(log_.get());
  raster_.setJournal(log_.get());
  auto adopted = log_->takeAdopted();
  adoptSurfaces(adopted);
  return std::nullopt;
}

void Worker::adoptSurfaces(RecoveryLog::Adopted& adopted) {
  stats_.adoptionRefused += adopted.dropped;
  for (const RecoveryLog::AdoptedSurface& a : adopted.surfaces) {
    const recovery::SurfaceRecord& r = a.record;
    if (auto error = raster_.adoptSurface(a.id, r.format, r.width, r.height, a.memory)) {
      ++stats_.adoptionRefused;
      log_->release(a.id, a.memory);
      log_->clearSurface(a.id);
      continue;
    }
    ++stats_.adoptedSurfaces;
    if (r.guestSize > 0)
      guestSurfaces_[a.id] = {r.guestAddr, r.guestSize, r.guestStride};
  }
  if (adopted.primary)
    pendingPrimary_ = PendingPrimary{*adopted.primary, adopted.primaryNative, adopted.buffers};
  if (adopted.cursor) {
    const recovery::CursorRecord& c = *adopted.cursor;
    cursor_.visible = c.visible != 0;
    cursor_.x = c.x;
    cursor_.y = c.y;
    cursor_.shapeSerial = c.shapeSerial;
    cursor_.shape = SanitisedCursor{};
    if (c.shapeSerial != 0) {
      cursor_.shape.width = c.width;
      cursor_.shape.height = c.height;
      cursor_.shape.hotSpotX = c.hotSpotX;
      cursor_.shape.hotSpotY = c.hotSpotY;
      cursor_.shape.pixels.assign(c.pixels, c.pixels + size_t{c.width} * c.height);
    }
    lastShapeSerial_ = std::max(lastShapeSerial_, c.lastShapeSerial);
    // The broker has this pointer already: nothing to report until it changes.
    reportedCursor_ = CursorKey{cursor_.visible, cursor_.x, cursor_.y, cursor_.shapeSerial};
  }
  if (adopted.progress.phase != recovery::Phase::Idle)
    resume_ = adopted.progress;
  if (stats_.adoptedSurfaces > 0 || pendingPrimary_ || resume_)
    spdlog::info(
        "recovery: took over {} surfaces{}{} from the renderer before ({} records refused)",
        stats_.adoptedSurfaces, pendingPrimary_ ? " and the primary" : "",
        resume_ ? fmt::format(", batch {} from item {}", resume_->seq, resume_->index) : "",
        adopted.dropped);
  adoptPrimaryIfReady();
}

void Worker::adoptPrimaryIfReady() {
  if (!pendingPrimary_ || !segment_ ||
      segment_->generation() != pendingPrimary_->record.segmentGeneration)
    return;
  PendingPrimary p = std::move(*pendingPrimary_);
  pendingPrimary_.reset();
  const recovery::PrimaryRecord& r = p.record;
  if (segment_->width() != r.width || segment_->height() != r.height) {
    ++stats_.adoptionRefused;
    log_->clearPrimary();
    return;
  }
  const uint8_t shown = p.buffers.buffer & 1;
  const uint8_t buffer = segment_->hasBackBuffer() ? shown : 0;
  std::span<std::byte> native = p.native ? p.native->memory : std::span<std::byte>{};
  if (auto error = raster_.adoptPrimary(r.width, r.height, static_cast<int32_t>(segment_->stride()),
                                        r.format, segment_->pixels(buffer), native)) {
    ++stats_.adoptionRefused;
    if (p.native)
      log_->release(0, p.native->memory);
    log_->clearPrimary();
    return;
  }
  primarySegment_ = segment_;
  primary_ = PrimaryState{r.width, r.height, r.guestStride, r.format, r.guestMem};
  buffer_ = buffer;
  presented_ = p.buffers.presented != 0 && segment_->hasBackBuffer();
  forward_.clear();
  if (p.buffers.forwardCount > recovery::MAX_FORWARD_RECTS) {
    forward_.push_back(
        qxlcmd::Rect{0, 0, static_cast<int32_t>(r.height), static_cast<int32_t>(r.width)});
  } else {
    for (uint32_t i = 0; i < p.buffers.forwardCount; ++i) {
      const recovery::RectRecord& f = p.buffers.forward[i];
      forward_.push_back(qxlcmd::Rect{f.top, f.left, f.bottom, f.right});
    }
  }
  spdlog::info("recovery: took over the {}x{} primary in segment {} (buffer {})", r.width, r.height,
               segment_->generation(), buffer_);
}

void Worker::restoreUndo(const RecoveryLog::Undo& undo) {
  const Surface* s = raster_.surface(undo.surface);
  if (s == nullptr)
    return;
  pixman_image_t* image = s->image.get();
  const size_t stride = static_cast<size_t>(pixman_image_get_stride(image));
  const uint64_t height = static_cast<uint64_t>(pixman_image_get_height(image));
  if (uint64_t{undo.top} + undo.rows > height || uint64_t{undo.byteOffset} + undo.rowBytes > stride)
    return;  // not this surface's: the saved bytes are not ours to put anywhere
  auto* bits = reinterpret_cast<std::byte*>(pixman_image_get_data(image));
  for (uint32_t y = 0; y < undo.rows; ++y)
    std::memcpy(bits + (uint64_t{undo.top} + y) * stride + undo.byteOffset,
                undo.bytes.data() + uint64_t{y} * undo.rowBytes, undo.rowBytes);
  if (undo.surface == 0) {
    const int bpp = PIXMAN_FORMAT_BPP(pixman_image_get_format(image));
    const pixman_box32_t box{
        static_cast<int32_t>(uint64_t{undo.byteOffset} * 8 / static_cast<unsigned>(bpp)),
        static_cast<int32_t>(undo.top),
        static_cast<int32_t>(std::min<uint64_t>(
            (uint64_t{undo.byteOffset} + undo.rowBytes) * 8 / static_cast<unsigned>(bpp),
            static_cast<uint64_t>(pixman_image_get_width(image)))),
        static_cast<int32_t>(undo.top + undo.rows)};
    raster_.refreshPrimaryShadow(box);
  }
  spdlog::info("recovery: surface {} rows {}..{} restored from before the interrupted draw",
               undo.surface, undo.top, undo.top + undo.rows);
}

void Worker::flipIfPresented() {
  if (!presented_ || !primarySegment_ || !primarySegment_->hasBackBuffer() ||
      raster_.surface(0) == nullptr)
    return;
  presented_ = false;
  const uint8_t next = buffer_ ^ 1;
  const std::span<std::byte> from = primarySegment_->pixels(buffer_);
  const std::span<std::byte> to = primarySegment_->pixels(next);
  const size_t stride = primarySegment_->stride();
  const int32_t w = static_cast<int32_t>(primarySegment_->width());
  const int32_t h = static_cast<int32_t>(primarySegment_->height());
  for (const qxlcmd::Rect& r : forward_) {
    const int32_t left = std::clamp(r.left, 0, w), right = std::clamp(r.right, 0, w);
    const int32_t top = std::clamp(r.top, 0, h), bottom = std::clamp(r.bottom, 0, h);
    if (right <= left)
      continue;
    const size_t x = static_cast<size_t>(left) * 4, bytes = static_cast<size_t>(right - left) * 4;
    for (int32_t y = top; y < bottom; ++y) {
      const size_t row = static_cast<size_t>(y) * stride + x;
      std::memcpy(to.data() + row, from.data() + row, bytes);
    }
  }
  forward_.clear();
  if (auto error = raster_.movePrimary(to)) {
    rasterFailed("primary buffer flip", *error);
    return;
  }
  buffer_ = next;
  logBuffers();
  if (log_)
    log_->commitIdle();
}

void Worker::notePresented(const PrimaryOutput& output) {
  if (output.damage.empty() && output.hints.empty())
    return;
  presented_ = true;
  // One region, so that a rectangle changed by several draws (a batch of full-screen fills is
  // a list of identical hint rectangles) is copied forward once.
  pixels::Region changed;
  auto add = [&](const qxlcmd::Rect& r) {
    pixels::Region one(r.left, r.top, r.right, r.bottom);
    changed.unite(one);
  };
  for (const qxlcmd::Rect& r : forward_)
    add(r);
  for (const qxlcmd::Rect& r : output.damage)
    add(r);
  for (const OutputHint& hint : output.hints) {
    if (const auto* fill = std::get_if<SolidFillHint>(&hint))
      for (const qxlcmd::Rect& r : fill->rects)
        add(r);
    else
      add(std::get<CopyBitsHint>(hint).dest);
  }
  int n = 0;
  const pixman_box32_t* boxes = changed.rects(&n);
  forward_.clear();
  if (static_cast<size_t>(n) > MAX_FORWARD_RECTS) {
    const pixman_box32_t* e = pixman_region32_extents(changed.get());
    forward_.push_back(qxlcmd::Rect{e->y1, e->x1, e->y2, e->x2});
    logBuffers();
    return;
  }
  for (int i = 0; i < n; ++i)
    forward_.push_back(qxlcmd::Rect{boxes[i].y1, boxes[i].x1, boxes[i].y2, boxes[i].x2});
  logBuffers();
}

void Worker::resetCursor() {
  cursor_ = CursorState{};  // lastShapeSerial_ stays: serials are never reused
}

void Worker::cursorShapeRefused(const qxlcmd::CursorShape& shape, std::string_view why) {
  const uint64_t n = ++stats_.cursorShapesRefused;
  if (powerOfTwo(n))
    spdlog::debug("cursor shape {}x{} (type {}) not taken, the pointer keeps its own: {} ({})",
                  shape.width, shape.height, unsigned{shape.type}, why, n);
}

void Worker::setCursorShape(const qxlcmd::CursorShape& shape) {
  // The decoder allows MAX_CURSOR_DIMENSION (512, what clients take); the broker takes at most
  // maxCursorDimension, so that a batchDone fits one IPC frame.
  if (shape.width > ipc::render::MAX_CURSOR_DIMENSION ||
      shape.height > ipc::render::MAX_CURSOR_DIMENSION)
    return cursorShapeRefused(
        shape, fmt::format("larger than {} pixels a side", ipc::render::MAX_CURSOR_DIMENSION));
  // render.capnp: a 0 x 0 shape means "no shape"; a guest cannot set that.
  if (shape.width == 0 || shape.height == 0)
    return cursorShapeRefused(shape, "empty");
  auto sanitised = sanitiseCursor(shape);
  if (const auto* error = std::get_if<RasterError>(&sanitised))
    return cursorShapeRefused(shape, describe(*error));
  auto& next = std::get<SanitisedCursor>(sanitised);
  const SanitisedCursor& now = cursor_.shape;
  // Guests set the same shape again and again (on every SET, often with a new `unique`): the
  // serial changes only when what a client draws changes.
  if (cursor_.shapeSerial != 0 && next.width == now.width && next.height == now.height &&
      next.hotSpotX == now.hotSpotX && next.hotSpotY == now.hotSpotY && next.pixels == now.pixels)
    return;
  cursor_.shape = std::move(next);
  cursor_.shapeSerial = ++lastShapeSerial_;
  ++stats_.cursorShapes;
}

void Worker::applyCursor(const qxlcmd::CursorCmd& command) {
  switch (command.type) {
    case QXL_CURSOR_SET:
      cursor_.x = command.position.x;
      cursor_.y = command.position.y;
      cursor_.visible = command.visible != 0;
      // Without a shape (address 0) the pointer keeps the one it has.
      if (command.shape)
        setCursorShape(*command.shape);
      break;
    case QXL_CURSOR_MOVE:
      // As spice-server's cursor channel does (CursorChannel::process_cmd): a move shows a
      // hidden pointer.
      cursor_.x = command.position.x;
      cursor_.y = command.position.y;
      cursor_.visible = true;
      break;
    case QXL_CURSOR_HIDE:
      cursor_.visible = false;
      break;
    default:
      // QXL_CURSOR_TRAIL (the decoder refuses other types): trails are drawn by no client we
      // serve, so they are ignored.
      break;
  }
}

void Worker::rasterFailed(const char* what, RasterError error) {
  const uint64_t n = ++stats_.drawErrors;
  if ((n & (n - 1)) == 0)  // 1, 2, 4, 8 ...
    spdlog::warn("{} not drawn: {} ({} so far)", what, describe(error), n);
}

void Worker::createPrimary(const PrimaryState& p) {
  raster_.destroyPrimary();  // a primary replacing one the guest did not destroy
  primarySegment_.reset();
  if (log_)
    log_->clearPrimary();
  resetBuffers();
  primaryCreatedInBatch_ = true;
  if (p.width == 0 || p.height == 0 || p.width > MAX_SURFACE_DIMENSION ||
      p.height > MAX_SURFACE_DIMENSION) {
    rasterFailed("primary surface", RasterError::BadSurfaceSize);
    return;
  }
  // The broker sends the segment for a primary before the batch that creates it, sized for it.
  if (!segment_ || segment_->width() != p.width || segment_->height() != p.height) {
    spdlog::error("primary {}x{} has no display segment of its size (have {}); not created",
                  p.width, p.height,
                  segment_ ? fmt::format("{}x{}", segment_->width(), segment_->height())
                           : std::string("none"));
    rasterFailed("primary surface", RasterError::SurfaceMemoryTooSmall);
    return;
  }
  std::memset(segment_->pixels().data(), 0, segment_->pixels().size());
  if (auto error =
          raster_.createPrimary(p.width, p.height, static_cast<int32_t>(segment_->stride()),
                                p.format, segment_->pixels())) {
    rasterFailed("primary surface", *error);
    return;
  }
  primarySegment_ = segment_;
  loadInitialPixels(p);
  if (log_) {
    log_->setPrimary(recovery::PrimaryRecord{1, p.width, p.height, p.format, p.stride, 0, p.mem,
                                             segment_->generation()});
    const Surface* s = raster_.surface(0);
    if (s && !s->stored.empty())
      if (auto offset = log_->arenaOffsetOf(s->stored))
        log_->setSurface(
            0, recovery::SurfaceRecord{1, p.format, p.width, p.height, *offset, 0, 0, 0, 0});
  }
}

std::span<std::byte> Worker::locate(uint64_t addr, uint64_t size) const {
  if (!view_ || !slots_)
    return {};
  SlotMemory memory(*slots_, *view_);
  auto located = memory.locate(addr, size);
  if (auto* span = std::get_if<std::span<std::byte>>(&located))
    return *span;
  return {};
}

void Worker::loadInitialPixels(const PrimaryState& p) {
  const uint64_t absStride = p.stride < 0 ? -static_cast<int64_t>(p.stride) : p.stride;
  const uint64_t size = absStride * p.height;
  auto memory = locate(p.mem, size);
  RasterResult result = RasterError::BadArea;
  if (!memory.empty())
    result = raster_.loadPrimary(memory, p.stride);
  if (result) {
    const uint64_t n = ++stats_.initialPixelsMissing;
    if (powerOfTwo(n))
      spdlog::warn(
          "primary {}x{}: its pixels ({} bytes at {:#x}) are not in guest memory, it starts "
          "black ({}; {} so far)",
          p.width, p.height, size, p.mem, describe(*result), n);
  }
}

void Worker::updateAreaRefused(uint32_t surfaceId, const std::string& why) {
  const uint64_t n = ++stats_.updateAreaRefused;
  if (powerOfTwo(n))
    spdlog::warn("UPDATE_AREA of surface {} not written back: {} ({} so far)", surfaceId, why, n);
}

void Worker::updateArea(ipc::render::UpdateArea::Reader update) {
  const uint32_t id = update.getSurfaceId();
  auto a = update.getArea();
  const qxlcmd::Rect area{a.getTop(), a.getLeft(), a.getBottom(), a.getRight()};
  const Surface* surface = raster_.surface(id);
  if (surface == nullptr)
    return updateAreaRefused(id, "no such surface");
  if (area.left >= area.right || area.top >= area.bottom)
    return updateAreaRefused(id, fmt::format("empty or inverted area ({}, {}) - ({}, {})",
                                             area.left, area.top, area.right, area.bottom));
  if (area.right <= 0 || area.bottom <= 0 || int64_t{area.left} >= surface->width ||
      int64_t{area.top} >= surface->height)
    return updateAreaRefused(
        id, fmt::format("area ({}, {}) - ({}, {}) outside the {}x{} surface", area.left, area.top,
                        area.right, area.bottom, surface->width, surface->height));
  uint64_t addr = 0, size = 0;
  int32_t stride = 0;
  if (id == 0) {
    if (!primary_)
      return updateAreaRefused(id, "no primary");
    stride = primary_->stride;
    addr = primary_->mem;
    size = (stride < 0 ? -static_cast<int64_t>(stride) : stride) * uint64_t{primary_->height};
  } else {
    auto it = guestSurfaces_.find(id);
    if (it == guestSurfaces_.end())
      return updateAreaRefused(id, "its guest memory is unknown");
    addr = it->second.guestAddr;
    size = it->second.size;
    stride = it->second.stride;
  }
  // Translated now, not at create: the guest may have moved or deleted the slot since.
  auto memory = locate(addr, size);
  if (memory.empty())
    return updateAreaRefused(
        id, fmt::format("its memory ({} bytes at {:#x}) is in no memslot", size, addr));
  if (auto error = raster_.updateArea(id, area, memory, stride))
    return updateAreaRefused(id, std::string(describe(*error)));
  ++stats_.updateAreaWrites;
}

void Worker::render(const qxlcmd::Command& command, const SurfaceMemory& memory) {
  RasterResult result;
  if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body)) {
    result = raster_.draw(*draw);
  } else if (const auto* surface = std::get_if<qxlcmd::SurfaceCmd>(&command.body)) {
    result = raster_.apply(*surface);
    if (!result && surface->type == QXL_SURFACE_CMD_DESTROY) {
      guestSurfaces_.erase(surface->surfaceId);
      if (log_)
        log_->clearSurface(surface->surfaceId);
    } else if (!result) {
      if (memory.size > 0)
        guestSurfaces_[surface->surfaceId] = {memory.guestAddr, memory.size, surface->stride};
      const Surface* made = raster_.surface(surface->surfaceId);
      if (log_ && made)
        if (auto offset = log_->arenaOffsetOf(made->stored))
          log_->setSurface(
              surface->surfaceId,
              recovery::SurfaceRecord{1, surface->format, surface->width, surface->height, *offset,
                                      memory.guestAddr, memory.size, surface->stride, 0});
    }
  } else if (const auto* cursor = std::get_if<qxlcmd::CursorCmd>(&command.body)) {
    return applyCursor(*cursor);  // not a draw: refused shapes are counted on their own
  } else {
    return;  // update and message commands draw nothing
  }
  if (result)
    rasterFailed("command", *result);
  else
    ++stats_.drawn;
}

void Worker::replayStateItem(WorkItem::Reader item) {
  if (item.which() == WorkItem::MEMSLOTS) {
    loadMemslots(item.getMemslots());
    return;
  }
  if (item.which() != WorkItem::COMMAND || item.getCommand().getRing() != Ring::CURSOR || !view_ ||
      !slots_)
    return;
  // The pointer is committed with the batch, so a cursor command of the interrupted batch is
  // applied again (SET, MOVE, HIDE set state: the same command gives the same pointer).
  SlotMemory memory(*slots_, *view_);
  auto command = item.getCommand();
  auto decoded = decodeCommand(memory, command.getType(), command.getAddr(), nullptr);
  if (const auto* tree = std::get_if<qxlcmd::Command>(&decoded))
    if (const auto* cursor = std::get_if<qxlcmd::CursorCmd>(&tree->body))
      applyCursor(*cursor);
}

uint32_t Worker::runBatch(Batch::Reader batch) {
  ++stats_.batches;
  uint32_t rejected = 0;
  primaryCreatedInBatch_ = false;
  const uint64_t seq = batch.getSeq();
  auto items = batch.getItems();
  unsigned count = items.size();
  if (count > ipc::render::MAX_ITEMS_PER_BATCH) {
    stats_.droppedItems += count - ipc::render::MAX_ITEMS_PER_BATCH;
    spdlog::error("batch {} holds {} items, at most {} are read (a broker bug)", seq, count,
                  ipc::render::MAX_ITEMS_PER_BATCH);
    count = ipc::render::MAX_ITEMS_PER_BATCH;
  }
  // Leading items the broker added to a batch sent again (the memslot table): not numbered.
  const unsigned prefix = std::min<unsigned>(batch.getPrefix(), count);
  for (unsigned p = 0; p < prefix; ++p)
    replayStateItem(items[p]);
  const unsigned numbered = count - prefix;
  // Where an earlier renderer stopped in this batch, if it did.
  unsigned start = 0;
  bool resumed = false, finished = false;
  if (resume_ && resume_->seq == seq) {
    resumed = true;
    finished = resume_->phase == recovery::Phase::Finished;
    start = std::min<unsigned>(resume_->index, numbered);
    ++stats_.resumedBatches;
    spdlog::info("batch {}: taken up at item {} of {} where the renderer before stopped", seq,
                 start, numbered);
  }
  resume_.reset();
  // A finished batch's picture is already in its buffer (presented, not yet reported): copying
  // it into the other buffer now would write what readers of the last reported frame read.
  if (!finished)
    flipIfPresented();
  std::vector<bool> quarantined(numbered, false);
  for (uint32_t index : batch.getQuarantine())
    if (index < numbered)
      quarantined[index] = true;
  if (log_)
    log_->beginBatch(seq, start);
  if (resumed && !finished && log_)
    if (auto undo = log_->undoFor(seq, start))
      restoreUndo(*undo);
  for (unsigned i = 0; i < start; ++i)
    replayStateItem(items[prefix + i]);
  for (unsigned i = start; i < numbered; ++i) {
    auto item = items[prefix + i];
    if (quarantined[i]) {
      ++stats_.quarantinedSkipped;
      spdlog::warn("batch {} item {} skipped: quarantined by the broker", seq, i);
      if (log_)
        log_->endItem(i);
      continue;
    }
    if (log_)
      log_->beginItem(i);
    switch (item.which()) {
      case WorkItem::COMMAND:
        if (auto error = runCommand(item.getCommand())) {
          ++rejected;
          reject(*error);
        } else {
          ++stats_.commands;
        }
        break;
      case WorkItem::CREATE_PRIMARY: {
        auto p = item.getCreatePrimary();
        primary_ =
            PrimaryState{p.getWidth(), p.getHeight(), p.getStride(), p.getFormat(), p.getMem()};
        createPrimary(*primary_);
        break;
      }
      case WorkItem::DESTROY_PRIMARY:
        primary_.reset();
        raster_.destroyPrimary();
        primarySegment_.reset();
        if (log_)
          log_->clearPrimary();
        break;
      case WorkItem::DESTROY_SURFACE: {
        const uint32_t id = item.getDestroySurface();
        if (auto error = raster_.destroySurface(id))
          rasterFailed("surface destroy", *error);
        guestSurfaces_.erase(id);
        if (id == 0) {
          primary_.reset();
          primarySegment_.reset();
          if (log_)
            log_->clearPrimary();
        } else if (log_) {
          log_->clearSurface(id);
        }
        break;
      }
      case WorkItem::DESTROY_ALL_SURFACES:
        primary_.reset();
        forgetSurfaces();
        // spice-server resets its cursor channel here too (handle_dev_destroy_surfaces): the
        // guest sets its pointer again.
        resetCursor();
        break;
      case WorkItem::UPDATE_AREA:
        // Inside the batch: the device completes the UPDATE_AREA when the batch is done, and the
        // guest reads its memory after that.
        ++stats_.updateAreas;
        updateArea(item.getUpdateArea());
        break;
      case WorkItem::MONITORS_CONFIG:
        // TODO(issue-5): copy QXLMonitorsConfig (translate, copy once, bound count by max_allowed)
        // and report it for the display channel's MONITORS_CONFIG.
        break;
      case WorkItem::MEMSLOTS:
        loadMemslots(item.getMemslots());
        break;
      case WorkItem::RESET:
        primary_.reset();
        forgetSurfaces();
        if (slots_)
          slots_->reset();
        resetCursor();  // QEMU's hard reset resets spice-server's cursor channel
        break;
      default:
        // A newer broker's item this renderer does not know: a mismatched installation, and the
        // hello's version check makes it impossible; nothing to do with it.
        spdlog::error("unknown work item {} in batch {}", static_cast<unsigned>(item.which()), seq);
        break;
    }
    if (log_)
      log_->endItem(i);
  }
  lastOutput_ = raster_.takeOutput();
  if (raster_.surface(0) == nullptr) {
    lastOutput_ = {};  // no primary at the end of the batch: nothing to show
  } else if (primaryCreatedInBatch_ || resumed) {
    // A new primary (its initial pixels included): all of it is new to every client. Or a batch
    // taken up after a restart: what its first items changed is not known here.
    const Surface* s = raster_.surface(0);
    lastOutput_.hints.clear();
    lastOutput_.damage = {
        qxlcmd::Rect{0, 0, static_cast<int32_t>(s->height), static_cast<int32_t>(s->width)}};
  }
  // Reported whenever the pointer differs from the last report, whatever changed it: a cursor
  // command, a reset or all surfaces destroyed (then the initial pointer is reported).
  const CursorKey key{cursor_.visible, cursor_.x, cursor_.y, cursor_.shapeSerial};
  cursorChanged_ = key != reportedCursor_;
  if (cursorChanged_) {
    reportedCursor_ = key;
    ++stats_.cursorReports;
  }
  notePresented(lastOutput_);
  stats_.damageRects += lastOutput_.damage.size();
  stats_.hints += lastOutput_.hints.size();
  if (log_) {
    logCursor();
    log_->finishBatch(numbered);
  }
  return rejected;
}

void Worker::loadMemslots(capnp::List<ipc::render::Memslot>::Reader slots) {
  slots_.reset();
  if (!view_)
    return;  // slots without memory: every command is rejected until guestMemory
  const std::array<qxl::BarRange, qxl::BAR_COUNT> bars = {
      qxl::BarRange{view_->ramPhysStart, view_->ram.size()},
      qxl::BarRange{view_->vramPhysStart, view_->vram.size()}};
  // The device's layout is MemslotLayout's default (broker/qxl/device.cpp writes it into QXLRom).
  auto created = qxl::MemslotTable::create(qxl::MemslotLayout{}, bars);
  if (!std::holds_alternative<qxl::MemslotTable>(created)) {
    spdlog::error("guest memory layout refused by the memslot table (a broker bug)");
    return;
  }
  slots_.emplace(std::move(std::get<qxl::MemslotTable>(created)));
  ++stats_.memslotTables;
  for (auto slot : slots) {
    QXLMemSlot range{};
    range.mem_start = slot.getMemStart();
    range.mem_end = slot.getMemEnd();
    auto added = slots_->addWithGeneration(slot.getId(), range, slot.getGeneration());
    const bool wantVram = slot.getBar() == ipc::render::Bar::VRAM;
    bool ok = std::holds_alternative<uint8_t>(added);
    if (ok) {
      // The replica picks the BAR from the range; it must be the one the broker named.
      auto where =
          slots_->translate(slots_->encode(slot.getId(), slot.getGeneration(), range.mem_start), 1);
      if (auto* at = std::get_if<qxl::BarOffset>(&where)) {
        ok = (at->bar == qxl::BarId::Vram) == wantVram;
      }  // an empty slot (start == end) translates nothing: accepted as is
      if (!ok)
        slots_->remove(slot.getId());
    }
    if (!ok) {
      ++stats_.badMemslots;
      spdlog::error("memslot {} [{:#x}, {:#x}) from the broker refused by the replica",
                    slot.getId(), slot.getMemStart(), slot.getMemEnd());
    }
  }
}

void Worker::reject(const DecodeError& error) {
  ++stats_.rejected;
  const auto kind = static_cast<size_t>(error.kind);
  // The kind comes from our own enum; guarded anyway so a new kind cannot index past the array.
  const uint64_t n = kind < stats_.rejectedByKind.size() ? ++stats_.rejectedByKind[kind] : 1;
  if (powerOfTwo(n))
    spdlog::warn("guest command rejected, not drawn ({}: {}); {} of this kind so far, {} in all",
                 decodeErrorName(error.kind), error.detail, n, stats_.rejected);
}

std::optional<DecodeError> Worker::runCommand(Command::Reader command) {
  const uint32_t type = command.getType();
  auto ring = ringOf(type);
  if (!ring)
    return DecodeError{DecodeErrorKind::UnknownCommandType,
                       fmt::format("command type {} is no QXL_CMD_*", type)};
  if (*ring != command.getRing())
    return DecodeError{DecodeErrorKind::WrongRing,
                       fmt::format("command type {} on the wrong ring", type)};
  if (!view_)
    return DecodeError{DecodeErrorKind::NoGuestMemory, "no guest memory mapped"};
  if (!slots_)
    return DecodeError{DecodeErrorKind::NoMemslots, "no memslot table yet"};
  SlotMemory memory(*slots_, *view_);
  SurfaceMemory surface;
  auto decoded = decodeCommand(memory, type, command.getAddr(), &surface);
  if (auto* error = std::get_if<DecodeError>(&decoded))
    return std::move(*error);
  CommandContext context;
  if (surface.size > 0) {
    auto located = memory.locate(surface.guestAddr, surface.size);
    if (auto* span = std::get_if<std::span<std::byte>>(&located))
      context.surfaceMemory = *span;
  }
  switch (type) {
    case QXL_CMD_DRAW:
      ++stats_.draws;
      break;
    case QXL_CMD_UPDATE:
      ++stats_.updates;
      break;
    case QXL_CMD_MESSAGE:
      ++stats_.messages;
      break;
    case QXL_CMD_SURFACE:
      ++stats_.surfaceCmds;
      break;
    case QXL_CMD_CURSOR:
      ++stats_.cursors;
      break;
  }
  const auto& tree = std::get<qxlcmd::Command>(decoded);
  render(tree, surface);
  if (hook_)
    hook_(tree, context);
  return std::nullopt;
}

}  // namespace spicebox::renderer
