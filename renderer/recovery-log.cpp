#include "renderer/recovery-log.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>

namespace spicebox::renderer {

namespace {

using recovery::Commit;
using recovery::Phase;

void store(uint64_t& word, uint64_t value) {
  std::atomic_ref<uint64_t>(word).store(value, std::memory_order_release);
}

uint64_t load(const uint64_t& word) {
  return std::atomic_ref<const uint64_t>(word).load(std::memory_order_acquire);
}

}  // namespace

std::variant<std::unique_ptr<RecoveryLog>, std::string> RecoveryLog::open(base::Fd fd,
                                                                          uint64_t arenaBytes) {
  auto mapped = recovery::Area::map(std::move(fd), arenaBytes);
  if (auto* error = std::get_if<std::string>(&mapped))
    return *error;
  std::unique_ptr<RecoveryLog> log(
      new RecoveryLog(std::move(std::get<std::unique_ptr<recovery::Area>>(mapped)), arenaBytes));
  log->readAdopted();
  return log;
}

RecoveryLog::RecoveryLog(std::unique_ptr<recovery::Area> area, uint64_t arenaBytes)
    : area_(std::move(area)),
      allocator_(arenaBytes),
      cursor_(std::make_unique<recovery::CursorRecord>()) {}

RecoveryLog::~RecoveryLog() = default;

void RecoveryLog::readAdopted() {
  recovery::State& s = area_->state();
  committed_ = Commit::unpack(load(s.progress.commit));
  if (!area_->used())
    return;  // fresh: nothing to adopt, the commit word is 0 (Idle, copies 0)
  adopted_.progress = recovery::readProgress(s);
  const recovery::SurfaceTable& table = s.tables[committed_.tableCopy];
  const auto arena = area_->arena();
  // Each record is the earlier renderer's word: checked as guest data would be.
  auto check = [&](uint32_t id, const recovery::SurfaceRecord& r) -> std::optional<AdoptedSurface> {
    if (r.live != 1)
      return std::nullopt;
    const auto stride = Rasteriser::ownStride(r.format, r.width);
    if (!stride || r.height == 0 || r.height > MAX_SURFACE_DIMENSION ||
        !allocator_.claim(r.arenaOffset, uint64_t{*stride} * r.height)) {
      ++adopted_.dropped;
      return std::nullopt;
    }
    AdoptedSurface a;
    a.id = id;
    a.record = r;
    a.memory = arena.subspan(r.arenaOffset, uint64_t{*stride} * r.height);
    return a;
  };
  for (uint32_t id = 1; id < MAX_SURFACES; ++id)
    if (auto a = check(id, table.surfaces[id]))
      adopted_.surfaces.push_back(*a);
  if (table.primary.live == 1) {
    const recovery::PrimaryRecord& p = table.primary;
    if (p.width == 0 || p.height == 0 || p.width > MAX_SURFACE_DIMENSION ||
        p.height > MAX_SURFACE_DIMENSION || !Rasteriser::ownStride(p.format, p.width)) {
      ++adopted_.dropped;
    } else {
      adopted_.primary = p;
      adopted_.primaryNative = check(0, table.surfaces[0]);
    }
  }
  adopted_.buffers = s.buffers[committed_.bufferCopy];
  if (adopted_.buffers.buffer > 1 || adopted_.buffers.presented > 1 ||
      adopted_.buffers.forwardCount > recovery::MAX_FORWARD_RECTS) {
    // Nonsense: the other buffer is taken to lag everywhere (the whole picture is copied over).
    ++adopted_.dropped;
    adopted_.buffers = {};
    adopted_.buffers.presented = 1;
    adopted_.buffers.forwardCount = recovery::MAX_FORWARD_RECTS + 1;
  }
  const recovery::CursorRecord& c = s.cursors[committed_.cursorCopy];
  if (c.width <= recovery::MAX_CURSOR_SIDE && c.height <= recovery::MAX_CURSOR_SIDE &&
      (c.width == 0) == (c.height == 0) && (c.shapeSerial == 0) == (c.width == 0) &&
      (c.width == 0 || (c.hotSpotX < c.width && c.hotSpotY < c.height)))
    adopted_.cursor = c;
  else
    ++adopted_.dropped;
  // This process continues from the committed records.
  table_ = table;
  for (uint32_t id = 0; id < MAX_SURFACES; ++id)
    table_.surfaces[id].live = 0;
  table_.primary.live = 0;
  for (const AdoptedSurface& a : adopted_.surfaces)
    table_.surfaces[a.id] = a.record;
  if (adopted_.primary) {
    table_.primary = *adopted_.primary;
    if (adopted_.primaryNative)
      table_.surfaces[0] = adopted_.primaryNative->record;
  }
  buffers_ = adopted_.buffers;
  if (adopted_.cursor)
    *cursor_ = *adopted_.cursor;
}

RecoveryLog::Adopted RecoveryLog::takeAdopted() {
  return std::exchange(adopted_, Adopted{});
}

void RecoveryLog::commit(uint32_t index, Phase phase) {
  recovery::State& s = area_->state();
  Commit next = committed_;
  next.index = index;
  next.phase = phase;
  if (tableDirty_) {
    next.tableCopy ^= 1;
    std::memcpy(&s.tables[next.tableCopy], &table_, sizeof table_);
  }
  if (buffersDirty_) {
    next.bufferCopy ^= 1;
    std::memcpy(&s.buffers[next.bufferCopy], &buffers_, sizeof buffers_);
  }
  if (cursorDirty_) {
    next.cursorCopy ^= 1;
    std::memcpy(&s.cursors[next.cursorCopy], cursor_.get(), sizeof *cursor_);
  }
  store(s.progress.commit, next.pack());
  committed_ = next;
  tableDirty_ = buffersDirty_ = cursorDirty_ = false;
}

void RecoveryLog::beginBatch(uint64_t seq, uint32_t index) {
  recovery::State& s = area_->state();
  // Idle first: a death between the two stores must not pair the new seq with the old index.
  commit(committed_.index, Phase::Idle);
  store(s.progress.seq, seq);
  seq_ = seq;
  commit(index, Phase::Running);
}

void RecoveryLog::beginItem(uint32_t index) {
  runningIndex_ = index;
}

void RecoveryLog::endItem(uint32_t index) {
  commit(index + 1, Phase::Running);
}

void RecoveryLog::finishBatch(uint32_t count) {
  commit(count, Phase::Finished);
}

void RecoveryLog::commitIdle() {
  if (tableDirty_ || buffersDirty_ || cursorDirty_)
    commit(committed_.index, committed_.phase);
}

void RecoveryLog::setSurface(uint32_t id, const recovery::SurfaceRecord& record) {
  if (id >= MAX_SURFACES)
    return;
  table_.surfaces[id] = record;
  table_.surfaces[id].live = 1;
  tableDirty_ = true;
}

void RecoveryLog::clearSurface(uint32_t id) {
  if (id >= MAX_SURFACES || table_.surfaces[id].live == 0)
    return;
  table_.surfaces[id] = {};
  tableDirty_ = true;
}

void RecoveryLog::setPrimary(const recovery::PrimaryRecord& record) {
  table_.primary = record;
  table_.primary.live = 1;
  tableDirty_ = true;
}

void RecoveryLog::clearPrimary() {
  table_.primary = {};
  table_.surfaces[0] = {};
  tableDirty_ = true;
}

void RecoveryLog::clearAll() {
  table_ = {};
  tableDirty_ = true;
}

void RecoveryLog::setBuffers(uint8_t buffer, bool presented,
                             std::span<const qxlcmd::Rect> forward) {
  buffers_.buffer = buffer;
  buffers_.presented = presented ? 1 : 0;
  if (forward.size() > recovery::MAX_FORWARD_RECTS) {
    buffers_.forwardCount = recovery::MAX_FORWARD_RECTS + 1;  // everywhere (never written so)
  } else {
    buffers_.forwardCount = static_cast<uint32_t>(forward.size());
    for (size_t i = 0; i < forward.size(); ++i)
      buffers_.forward[i] = {forward[i].top, forward[i].left, forward[i].bottom, forward[i].right};
  }
  buffersDirty_ = true;
}

void RecoveryLog::setCursor(const recovery::CursorRecord& cursor) {
  *cursor_ = cursor;
  cursorDirty_ = true;
}

std::optional<uint64_t> RecoveryLog::arenaOffsetOf(std::span<const std::byte> memory) const {
  const auto arena = area_->arena();
  if (memory.empty() || memory.data() < arena.data() ||
      memory.data() + memory.size() > arena.data() + arena.size())
    return std::nullopt;
  return static_cast<uint64_t>(memory.data() - arena.data());
}

std::optional<RecoveryLog::Undo> RecoveryLog::undoFor(uint64_t seq, uint32_t index) const {
  const recovery::Progress& p = area_->state().progress;
  if (load(p.undoToken) != recovery::undoToken(seq, index))
    return std::nullopt;
  const uint64_t bytes = uint64_t{p.undoRows} * p.undoRowBytes;
  if (p.undoSurface >= MAX_SURFACES || bytes > area_->undo().size())
    return std::nullopt;
  Undo u;
  u.surface = p.undoSurface;
  u.top = p.undoTop;
  u.rows = p.undoRows;
  u.byteOffset = p.undoByteOffset;
  u.rowBytes = p.undoRowBytes;
  u.bytes = area_->undo().first(bytes);
  return u;
}

std::span<std::byte> RecoveryLog::allocate(uint32_t, uint64_t bytes) {
  auto offset = allocator_.allocate(bytes);
  if (!offset)
    return {};
  auto memory = area_->arena().subspan(*offset, bytes);
  std::memset(memory.data(), 0, memory.size());
  return memory;
}

void RecoveryLog::release(uint32_t, std::span<std::byte> memory) {
  if (auto offset = arenaOffsetOf(memory))
    allocator_.release(*offset, memory.size());
}

void RecoveryLog::beforeUnrepeatableDraw(uint32_t id, pixman_image_t* image,
                                         const pixman_box32_t& box) {
  const int bpp = PIXMAN_FORMAT_BPP(pixman_image_get_format(image));
  const int width = pixman_image_get_width(image), height = pixman_image_get_height(image);
  const int32_t x1 = std::max(box.x1, 0), x2 = std::min(box.x2, width);
  const int32_t y1 = std::max(box.y1, 0), y2 = std::min(box.y2, height);
  if (x2 <= x1 || y2 <= y1)
    return;
  // Whole bytes covering [x1, x2) (1 bpp surfaces share bytes between pixels).
  const uint32_t byteOffset = static_cast<uint32_t>(uint64_t{static_cast<uint32_t>(x1)} * bpp / 8);
  const uint32_t byteEnd =
      static_cast<uint32_t>((uint64_t{static_cast<uint32_t>(x2)} * bpp + 7) / 8);
  const uint32_t rowBytes = byteEnd - byteOffset, rows = static_cast<uint32_t>(y2 - y1);
  recovery::Progress& p = area_->state().progress;
  auto undo = area_->undo();
  if (uint64_t{rowBytes} * rows > undo.size())
    return;  // larger than any surface: cannot happen; nothing is saved
  // Invalid while it is rewritten; valid again (for this item) once complete.
  store(p.undoToken, 0);
  const auto* bits = reinterpret_cast<const std::byte*>(pixman_image_get_data(image));
  const size_t stride = static_cast<size_t>(pixman_image_get_stride(image));
  for (uint32_t y = 0; y < rows; ++y)
    std::memcpy(undo.data() + uint64_t{y} * rowBytes,
                bits + (static_cast<size_t>(y1) + y) * stride + byteOffset, rowBytes);
  p.undoSurface = id;
  p.undoRowBytes = rowBytes;
  p.undoRows = rows;
  p.undoTop = static_cast<uint32_t>(y1);
  p.undoByteOffset = byteOffset;
  store(p.undoToken, recovery::undoToken(seq_, runningIndex_));
}

}  // namespace spicebox::renderer
