// Runs in: renderer (sandboxed). Input: see worker.h. Guest memory is read only through
// SlotMemory, by the decoder (qxl-decode.cpp).
#include "renderer/worker.h"

#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace spicebox::renderer {

namespace {

using ipc::render::Batch;
using ipc::render::Command;
using ipc::render::Ring;
using ipc::render::WorkItem;

// The largest BAR the broker accepts (broker/vmm-link.h, MAX_RAM_BYTES / MAX_VRAM_BYTES).
constexpr uint64_t MAX_BAR_BYTES = 1024ull * 1024 * 1024;
constexpr uint64_t PAGE = 4096;

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

void Worker::attach(const GuestView& view) {
  detach();
  view_ = view;
}

void Worker::detach() {
  view_.reset();
  slots_.reset();
  primary_.reset();
  raster_.destroyAll();
}

void Worker::rasterFailed(const char* what, RasterError error) {
  const uint64_t n = ++stats_.drawErrors;
  if ((n & (n - 1)) == 0)  // 1, 2, 4, 8 ...
    spdlog::warn("{} not drawn: {} ({} so far)", what, describe(error), n);
}

void Worker::createPrimary(const PrimaryState& p) {
  raster_.destroyPrimary();  // a primary replacing one the guest did not destroy
  primaryPixels_.clear();
  if (p.width == 0 || p.height == 0 || p.width > MAX_SURFACE_DIMENSION ||
      p.height > MAX_SURFACE_DIMENSION) {
    rasterFailed("primary surface", RasterError::BadSurfaceSize);
    return;
  }
  primaryPixels_.assign(static_cast<size_t>(p.width) * p.height, 0);
  if (auto error =
          raster_.createPrimary(p.width, p.height, static_cast<int32_t>(p.width * 4), p.format,
                                std::as_writable_bytes(std::span(primaryPixels_))))
    rasterFailed("primary surface", *error);
}

void Worker::render(const qxlcmd::Command& command) {
  RasterResult result;
  if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body)) {
    result = raster_.draw(*draw);
  } else if (const auto* surface = std::get_if<qxlcmd::SurfaceCmd>(&command.body)) {
    result = raster_.apply(*surface);
  } else if (const auto* cursor = std::get_if<qxlcmd::CursorCmd>(&command.body)) {
    if (cursor->shape) {
      // TODO(issue-5): the sanitised shape goes to the cursor channel.
      auto shape = sanitiseCursor(*cursor->shape);
      if (auto* error = std::get_if<RasterError>(&shape))
        result = *error;
    }
  } else {
    return;  // update and message commands draw nothing
  }
  if (result)
    rasterFailed("command", *result);
  else
    ++stats_.drawn;
}

uint32_t Worker::runBatch(Batch::Reader batch) {
  ++stats_.batches;
  uint32_t rejected = 0;
  auto items = batch.getItems();
  unsigned count = items.size();
  if (count > ipc::render::MAX_ITEMS_PER_BATCH) {
    stats_.droppedItems += count - ipc::render::MAX_ITEMS_PER_BATCH;
    spdlog::error("batch {} holds {} items, at most {} are read (a broker bug)", batch.getSeq(),
                  count, ipc::render::MAX_ITEMS_PER_BATCH);
    count = ipc::render::MAX_ITEMS_PER_BATCH;
  }
  for (unsigned i = 0; i < count; ++i) {
    auto item = items[i];
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
        // TODO(issue-4): the guest's initial pixels at `mem` (translated and copied once) and
        // UPDATE_AREA writing rendered pixels back there; the primary starts black.
        primary_ = PrimaryState{p.getWidth(), p.getHeight(), p.getStride(), p.getFormat()};
        createPrimary(*primary_);
        break;
      }
      case WorkItem::DESTROY_PRIMARY:
        primary_.reset();
        raster_.destroyPrimary();
        break;
      case WorkItem::DESTROY_SURFACE:
        if (auto error = raster_.destroySurface(item.getDestroySurface()))
          rasterFailed("surface destroy", *error);
        break;
      case WorkItem::DESTROY_ALL_SURFACES:
        primary_.reset();
        raster_.destroyAll();
        break;
      case WorkItem::UPDATE_AREA:
        // TODO(issue-4): render what is pending for the area into the guest's surface memory.
        ++stats_.updateAreas;
        break;
      case WorkItem::MONITORS_CONFIG:
        // TODO(issue-4): copy QXLMonitorsConfig (translate, copy once, bound count by max_allowed).
        break;
      case WorkItem::MEMSLOTS:
        loadMemslots(item.getMemslots());
        break;
      case WorkItem::RESET:
        primary_.reset();
        raster_.destroyAll();
        if (slots_)
          slots_->reset();
        break;
      default:
        // A newer broker's item this renderer does not know: a mismatched installation, and the
        // hello's version check makes it impossible; nothing to do with it.
        spdlog::error("unknown work item {} in batch {}", static_cast<unsigned>(item.which()),
                      batch.getSeq());
        break;
    }
  }
  stats_.damageRects += raster_.takeDamage().size();  // TODO(issue-4): reported in batchDone
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
  render(tree);
  if (hook_)
    hook_(tree, context);
  return std::nullopt;
}

}  // namespace spicebox::renderer
