// Runs in: spicebox-bench-render (developer machine, unsandboxed). Input: see render-runs.h.
//
// How libspice-server's worker is driven (the facts are libspice-server 0.15's, see
// tests/oracle/spice-render-oracle.cpp for the same hand-over):
// - Commands go into two rings (display, cursor) that the QXL interface's get_command callbacks
//   pop on the worker thread. The worker processes a command right after taking it, so a
//   get_command that finds a ring empty means every command pushed before is processed.
// - spice_qxl_update_area is synchronous, and the worker flushes its display ring before it
//   renders the area; so in eager mode a draw is pushed and its area updated with no wake-up.
// - Before an io event (create / destroy primary, destroy surfaces) and at the end, the main
//   thread wakes the worker (spice_qxl_wakeup) and waits until both rings were found empty, so
//   io events meet the commands in the stream's order.
// - release_resource is ignored: every command lives in the stream's image until it is unmapped.
#include "bench/render-runs.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <iterator>

#include "renderer/qxl-decode.h"
#include "renderer/raster.h"
#include "tests/oracle/spice-host.h"

namespace spicebox::bench {

namespace {

using Clock = std::chrono::steady_clock;

// How long the main thread waits for the worker to empty its rings before calling it a hang.
// The wait ends on the worker's event; this only turns a deadlock into an error message.
constexpr std::chrono::seconds WORKER_TIMEOUT{120};

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool is32bpp(uint32_t format) {
  return format == SPICE_SURFACE_FMT_32_xRGB || format == SPICE_SURFACE_FMT_32_ARGB;
}

// Reads a 32 bpp surface laid out as QXL surfaces are: `lowest` is the lowest address of
// height * |stride| bytes; with a negative stride the top row is the last one in memory.
Picture readSurface(const std::byte* lowest, uint32_t width, uint32_t height, int32_t stride) {
  Picture p{width, height, std::vector<uint32_t>(size_t{width} * height)};
  const size_t absStride = stride < 0 ? -int64_t{stride} : stride;
  for (uint32_t y = 0; y < height; ++y) {
    const size_t row = stride < 0 ? height - 1 - y : y;
    std::memcpy(p.pixels.data() + size_t{y} * width, lowest + row * absStride, size_t{width} * 4);
  }
  return p;
}

// What renderer/worker.cpp's Worker::render does with a decoded command.
bool render(renderer::Rasteriser& raster, const qxlcmd::Command& command) {
  renderer::RasterResult result;
  if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body)) {
    result = raster.draw(*draw);
  } else if (const auto* surface = std::get_if<qxlcmd::SurfaceCmd>(&command.body)) {
    result = raster.apply(*surface);
  } else if (const auto* cursor = std::get_if<qxlcmd::CursorCmd>(&command.body)) {
    if (cursor->shape) {
      auto shape = renderer::sanitiseCursor(*cursor->shape);
      if (auto* error = std::get_if<renderer::RasterError>(&shape))
        result = *error;
    }
  }
  return !result;
}

}  // namespace

// ------------------------------------------------------------------ spicebox

namespace {

const char* drawTypeName(uint8_t type) {
  static constexpr const char* NAMES[] = {
      "NOP",    "FILL", "OPAQUE", "COPY", "COPY_BITS",   "BLEND",       "BLACKNESS", "WHITENESS",
      "INVERS", "ROP3", "STROKE", "TEXT", "TRANSPARENT", "ALPHA_BLEND", "COMPOSITE"};
  return type < std::size(NAMES) ? NAMES[type] : "?";
}

std::string kindOf(const qxlcmd::Command& command) {
  if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body))
    return std::string("DRAW ") + drawTypeName(draw->type);
  if (std::holds_alternative<qxlcmd::SurfaceCmd>(command.body))
    return "SURFACE";
  if (std::holds_alternative<qxlcmd::CursorCmd>(command.body))
    return "CURSOR";
  if (std::holds_alternative<qxlcmd::UpdateCmd>(command.body))
    return "UPDATE";
  return "MESSAGE";
}

}  // namespace

RunResult runSpicebox(Stream& stream, Breakdown* breakdown, const Verify& verify) {
  stream.image->restore();
  GuestImage& image = *stream.image;
  renderer::Rasteriser raster;
  renderer::SlotMemory memory(image.slots(), image.view());
  std::vector<uint32_t> primary;  // xRGB, top row first, as renderer/worker.cpp keeps it
  const BenchIo* current = nullptr;
  RunResult r;
  uint64_t logged = 0;

  // One command the way renderer/worker.cpp runs it.
  auto runCommand = [&](const BenchCommand& c) {
    renderer::SurfaceMemory surface;
    const auto decodeStart = breakdown ? Clock::now() : Clock::time_point{};
    auto decoded = renderer::decodeCommand(memory, c.qxlType, c.addr, &surface);
    const auto renderStart = breakdown ? Clock::now() : Clock::time_point{};
    if (auto* error = std::get_if<renderer::DecodeError>(&decoded)) {
      if (++logged <= 3)
        spdlog::warn("spicebox rejected command {}: {}: {}", r.commands,
                     renderer::decodeErrorName(error->kind), error->detail);
      ++r.failed;
      return;
    }
    if (surface.size > 0)  // as the worker does for its surface-memory hook
      (void)memory.locate(surface.guestAddr, surface.size);
    if (!render(raster, std::get<qxlcmd::Command>(decoded)))
      ++r.failed;
    (void)raster.takeDamage();  // the shared-memory mode reports damage after each command
    if (breakdown) {
      const auto end = Clock::now();
      KindTime& k = (*breakdown)[kindOf(std::get<qxlcmd::Command>(decoded))];
      ++k.count;
      k.decodeSeconds += std::chrono::duration<double>(renderStart - decodeStart).count();
      k.renderSeconds += std::chrono::duration<double>(end - renderStart).count();
    }
  };
  auto snapshot = [&] {
    if (verify.every && r.commands % verify.every == 0 && current)
      verify.out->push_back({r.commands, Picture{current->width, current->height, primary}});
  };

  const auto start = Clock::now();
  for (const BenchEvent& event : stream.events) {
    if (const auto* c = std::get_if<BenchCommand>(&event)) {
      ++r.commands;
      runCommand(*c);
      snapshot();
      continue;
    }
    const auto& io = std::get<BenchIo>(event);
    switch (io.kind) {
      case BenchIo::Kind::CreatePrimary: {
        raster.destroyPrimary();
        current = nullptr;
        primary.assign(size_t{io.width} * io.height, 0);
        // libspice-server clears a primary created without KEEP_DATA; keep the same rule.
        if ((io.flags & QXL_SURF_FLAG_KEEP_DATA) && is32bpp(io.format)) {
          const size_t bytes = size_t(io.stride < 0 ? -int64_t{io.stride} : io.stride) * io.height;
          if (const std::byte* at = image.host(io.memAddr, bytes))
            primary = readSurface(at, io.width, io.height, io.stride).pixels;
        }
        if (!raster.createPrimary(io.width, io.height, static_cast<int32_t>(io.width * 4),
                                  io.format, std::as_writable_bytes(std::span(primary))))
          current = &io;
        break;
      }
      case BenchIo::Kind::DestroyPrimary:
        raster.destroyPrimary();
        current = nullptr;
        break;
      case BenchIo::Kind::DestroySurfaces:
        raster.destroyAll();
        current = nullptr;
        break;
    }
  }
  r.seconds = secondsSince(start);
  if (current)
    r.primary = Picture{current->width, current->height, std::move(primary)};
  return r;
}

uint64_t pictureHash(const Picture& p) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint32_t px : p.pixels) {
    for (int shift = 0; shift < 24; shift += 8) {
      h ^= (px >> shift) & 0xffu;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

uint64_t differingPixels(const Picture& a, const Picture& b) {
  if (a.width != b.width || a.height != b.height)
    return std::max(uint64_t{a.width} * a.height, uint64_t{b.width} * b.height);
  uint64_t n = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i)
    n += ((a.pixels[i] ^ b.pixels[i]) & 0xffffffu) != 0;
  return n;
}

// ------------------------------------------------------------------ libspice-server

namespace {

SpiceServerRunner& runnerOf(QXLInstance* qin) {
  return *reinterpret_cast<SpiceServerRunner::Instance*>(qin)->runner;
}
int getDisplayCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return runnerOf(qin).getCommand(false, ext);
}
int getCursorCommand(QXLInstance* qin, QXLCommandExt* ext) {
  return runnerOf(qin).getCommand(true, ext);
}
int requestDisplayNotification(QXLInstance* qin) {
  return runnerOf(qin).requestNotification(false);
}
int requestCursorNotification(QXLInstance* qin) {
  return runnerOf(qin).requestNotification(true);
}

}  // namespace

int SpiceServerRunner::getCommand(bool cursor, QXLCommandExt* out) {
  return (cursor ? cursor_ : display_)->pop(out) ? 1 : 0;
}

// 1 = "nothing pending, wake me", 0 = "look again".
int SpiceServerRunner::requestNotification(bool cursor) {
  return (cursor ? cursor_ : display_)->empty() ? 1 : 0;
}

SpiceServerRunner::SpiceServerRunner()
    : core_(oracle::inertCore("spicebox-bench-render")),
      sif_(oracle::replayQxlInterface("spicebox-bench-render")),
      display_(std::make_unique<oracle::WorkerQueue>()),
      cursor_(std::make_unique<oracle::WorkerQueue>()) {
  static_assert(std::is_standard_layout_v<Instance>);
  instance_.runner = this;
  sif_.get_command = getDisplayCommand;
  sif_.req_cmd_notification = requestDisplayNotification;
  sif_.get_cursor_command = getCursorCommand;
  sif_.req_cursor_notification = requestCursorNotification;
  SpiceServer* server = spice_server_new();
  spice_server_set_noauth(server);
  if (spice_server_init(server, &core_) != 0) {
    error_ = "spice_server_init failed (see libspice-server's messages above)";
    spice_server_destroy(server);
    return;
  }
  instance_.qxl.base.sif = &sif_.base;
  if (spice_server_add_interface(server, &instance_.qxl.base) != 0) {
    error_ = "spice_server_add_interface(QXL) failed (see libspice-server's messages above)";
    spice_server_destroy(server);
    return;
  }
  spice_server_vm_start(server);
  server_ = server;
}

SpiceServerRunner::~SpiceServerRunner() {
  if (!server_)
    return;
  tearDown();
  spice_server_vm_stop(server_);
  spice_server_remove_interface(&instance_.qxl.base);  // joins the worker thread
  spice_server_destroy(server_);
}

bool SpiceServerRunner::drain() {
  spice_qxl_wakeup(&instance_.qxl);
  if (display_->waitDrained(WORKER_TIMEOUT) && cursor_->waitDrained(WORKER_TIMEOUT))
    return true;
  error_ = "libspice-server's worker did not take the pending commands within " +
           std::to_string(WORKER_TIMEOUT.count()) + " s (hung?)";
  return false;
}

void SpiceServerRunner::tearDown() {
  // Synchronous calls: the worker flushes both rings, destroys every surface and releases the
  // drawables it still holds, so the next run starts from nothing.
  if (primaryLive_)
    spice_qxl_destroy_primary_surface(&instance_.qxl, 0);
  primaryLive_ = false;
  spice_qxl_destroy_surfaces(&instance_.qxl);
  spice_qxl_reset_image_cache(&instance_.qxl);
  spice_qxl_reset_cursor(&instance_.qxl);
}

std::optional<RunResult> SpiceServerRunner::run(Stream& stream, bool eager, const Verify& verify) {
  stream.image->restore();
  std::vector<QXLCommandExt> commands;  // built outside the clock, as the rings hold them
  commands.reserve(stream.commands);
  for (const BenchEvent& event : stream.events) {
    if (const auto* c = std::get_if<BenchCommand>(&event)) {
      QXLCommandExt ext{};
      ext.cmd.data = c->addr;
      ext.cmd.type = c->qxlType;
      ext.group_id = oracle::MEMSLOT_GROUP;
      commands.push_back(ext);
    }
  }
  display_->takeCount();
  cursor_->takeCount();
  const BenchIo* current = nullptr;
  size_t next = 0;
  RunResult r;

  const auto start = Clock::now();
  for (const BenchEvent& event : stream.events) {
    if (const auto* c = std::get_if<BenchCommand>(&event)) {
      (c->cursorRing ? cursor_ : display_)->push(&commands[next++]);
      if (eager && c->hasUpdateArea) {
        QXLRect area = c->updateArea;
        spice_qxl_update_area(&instance_.qxl, c->surfaceId, &area, nullptr, 0, 0);
      }
      if (verify.every && next % verify.every == 0 && current) {
        if (auto picture = readPrimary(stream, *current))
          verify.out->push_back({next, std::move(*picture)});
      }
      continue;
    }
    if (!drain())
      return std::nullopt;
    const auto& io = std::get<BenchIo>(event);
    switch (io.kind) {
      case BenchIo::Kind::CreatePrimary: {
        QXLDevSurfaceCreate create{};
        create.width = io.width;
        create.height = io.height;
        create.stride = io.stride;
        create.format = io.format;
        create.position = io.position;
        create.mouse_mode = io.mouseMode;
        create.flags = io.flags;
        create.type = io.type;
        create.mem = io.memAddr;
        create.group_id = oracle::MEMSLOT_GROUP;
        spice_qxl_create_primary_surface(&instance_.qxl, 0, &create);
        current = &io;
        primaryLive_ = true;
        break;
      }
      case BenchIo::Kind::DestroyPrimary:
        spice_qxl_destroy_primary_surface(&instance_.qxl, 0);
        current = nullptr;
        primaryLive_ = false;
        break;
      case BenchIo::Kind::DestroySurfaces:
        spice_qxl_destroy_surfaces(&instance_.qxl);
        current = nullptr;
        primaryLive_ = false;
        break;
    }
  }
  if (!drain())
    return std::nullopt;
  if (current)
    updateWholePrimary(*current);
  r.seconds = secondsSince(start);

  r.commands = display_->takeCount() + cursor_->takeCount();
  if (current)
    r.primary = readPrimary(stream, *current);
  tearDown();
  return r;
}

void SpiceServerRunner::updateWholePrimary(const BenchIo& primary) {
  QXLRect all{};
  all.right = static_cast<int32_t>(primary.width);
  all.bottom = static_cast<int32_t>(primary.height);
  spice_qxl_update_area(&instance_.qxl, 0, &all, nullptr, 0, 0);
}

std::optional<Picture> SpiceServerRunner::readPrimary(Stream& stream, const BenchIo& primary) {
  if (!is32bpp(primary.format))
    return std::nullopt;
  updateWholePrimary(primary);  // synchronous: the worker renders everything pending first
  const size_t bytes =
      size_t(primary.stride < 0 ? -int64_t{primary.stride} : primary.stride) * primary.height;
  const std::byte* at = stream.image->host(primary.memAddr, bytes);
  if (!at)
    return std::nullopt;
  return readSurface(at, primary.width, primary.height, primary.stride);
}

}  // namespace spicebox::bench
