// Runs in: spicebox-bench-render (developer machine, unsandboxed). Input: see bench-stream.h.
#include "bench/bench-stream.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "tools/guestsim/scenario.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::bench {

namespace {

// Address space reserved for one stream's image (MAP_NORESERVE: only what is written costs
// memory). The shared recordings need well under 1 GiB; surfaces are never freed here, so a long
// stream with many surface creates needs more than its file size.
constexpr size_t IMAGE_RESERVE = size_t{16} << 30;

const char* commandTypeName(uint32_t type) {
  switch (type) {
    case QXL_CMD_DRAW:
      return "DRAW";
    case QXL_CMD_UPDATE:
      return "UPDATE";
    case QXL_CMD_CURSOR:
      return "CURSOR";
    case QXL_CMD_MESSAGE:
      return "MESSAGE";
    case QXL_CMD_SURFACE:
      return "SURFACE";
    default:
      return "OTHER";
  }
}

// Turns actions (recorded events or scenario actions) into a Stream, tracking live surface sizes
// so that each draw's update area can be clipped the way a device model would.
class StreamBuilder {
 public:
  StreamBuilder(std::string name, std::unique_ptr<GuestImage> image) {
    stream_.name = std::move(name);
    stream_.image = std::move(image);
  }

  std::optional<std::string> add(const guestsim::Command& command) {
    auto laid = guestsim::materialise(command, stream_.commands + 1, *stream_.image);
    if (auto* error = std::get_if<guestsim::MaterialiseError>(&laid)) {
      if (error->kind == guestsim::MaterialiseErrorKind::Unsupported) {
        ++stream_.notMaterialised;  // e.g. compat drawables: left out of both runs, reported
        return std::nullopt;
      }
      return "cannot lay out command " + std::to_string(stream_.commands + 1) +
             " in guest memory: " + error->detail;
    }
    const auto& m = std::get<guestsim::Materialised>(laid);
    BenchCommand c;
    c.qxlType = m.qxlType;
    c.addr = m.commandAddr;
    c.releaseId = stream_.commands + 1;
    c.cursorRing = m.cursorRing;
    if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body)) {
      c.isDraw = true;
      ++stream_.draws;
      c.surfaceId = draw->surfaceId;
      if (auto it = sizes_.find(draw->surfaceId); it != sizes_.end()) {
        const auto [w, h] = it->second;
        QXLRect r;
        r.left = std::clamp<int64_t>(draw->bbox.left, 0, w);
        r.right = std::clamp<int64_t>(draw->bbox.right, 0, w);
        r.top = std::clamp<int64_t>(draw->bbox.top, 0, h);
        r.bottom = std::clamp<int64_t>(draw->bbox.bottom, 0, h);
        if (r.left < r.right && r.top < r.bottom) {
          c.hasUpdateArea = true;
          c.updateArea = r;
          ++stream_.eagerUpdates;
        }
      }
    } else if (const auto* s = std::get_if<qxlcmd::SurfaceCmd>(&command.body)) {
      if (s->type == QXL_SURFACE_CMD_CREATE)
        sizes_[s->surfaceId] = {s->width, s->height};
      else
        sizes_.erase(s->surfaceId);
    }
    ++stream_.commands;
    ++stream_.commandsByType[commandTypeName(c.qxlType)];
    stream_.events.emplace_back(c);
    return std::nullopt;
  }

  std::optional<std::string> add(const guestsim::IoEvent& io) {
    using M = guestsim::WorkerMessage;
    BenchIo e;
    switch (io.message) {
      case M::CreatePrimarySurface:
      case M::CreatePrimarySurfaceAsync: {
        if (!io.primary) {  // the recorder writes no body for a request spice-server refused
          ++stream_.ioIgnored;
          return std::nullopt;
        }
        const auto& p = *io.primary;
        e.kind = BenchIo::Kind::CreatePrimary;
        e.width = p.width;
        e.height = p.height;
        e.stride = p.stride;
        e.format = p.format;
        e.position = p.position;
        e.mouseMode = p.mouseMode;
        e.flags = p.flags;
        e.type = p.type;
        const uint64_t absStride = p.stride < 0 ? -int64_t{p.stride} : p.stride;
        const uint64_t bytes = absStride * p.height;
        if (bytes == 0)
          return "a create-primary event with an empty surface (" + std::to_string(p.width) + "x" +
                 std::to_string(p.height) + ", stride " + std::to_string(p.stride) + ")";
        auto block = stream_.image->allocate(guestsim::Arena::Vram, bytes);
        if (!block)
          return "the guest-memory image is full (raise IMAGE_RESERVE in bench-stream.cpp)";
        if (p.data.size() == bytes)
          std::memcpy(block->host, p.data.data(), bytes);
        e.memAddr = block->guestAddr;
        sizes_[0] = {p.width, p.height};
        break;
      }
      case M::DestroyPrimarySurface:
      case M::DestroyPrimarySurfaceAsync:
        e.kind = BenchIo::Kind::DestroyPrimary;
        sizes_.erase(0);
        break;
      case M::DestroySurfaces:
      case M::DestroySurfacesAsync:
        e.kind = BenchIo::Kind::DestroySurfaces;
        sizes_.clear();
        break;
      default:
        ++stream_.ioIgnored;
        return std::nullopt;
    }
    ++stream_.ioReplayed;
    stream_.events.emplace_back(e);
    return std::nullopt;
  }

  Stream finish() {
    stream_.image->snapshot();
    return std::move(stream_);
  }

 private:
  Stream stream_;
  std::map<uint32_t, std::pair<uint32_t, uint32_t>> sizes_;  // live surfaces: id -> (w, h)
};

std::variant<std::unique_ptr<GuestImage>, std::string> makeImage() {
  return GuestImage::create(IMAGE_RESERVE);
}

}  // namespace

std::variant<Stream, std::string> loadRecording(const std::string& path) {
  auto opened = guestsim::RecordReader::open(path);
  if (auto* error = std::get_if<guestsim::RecordError>(&opened))
    return path + ": " + error->toString();
  auto& reader = *std::get<std::unique_ptr<guestsim::RecordReader>>(opened);
  auto image = makeImage();
  if (auto* error = std::get_if<std::string>(&image))
    return *error;
  StreamBuilder builder(path, std::move(std::get<std::unique_ptr<GuestImage>>(image)));
  for (;;) {
    auto next = reader.next();
    if (std::holds_alternative<guestsim::EndOfRecording>(next))
      break;
    if (auto* error = std::get_if<guestsim::RecordError>(&next))
      return path + ": " + error->toString();
    const auto& event = std::get<guestsim::RecordEvent>(next);
    std::optional<std::string> error;
    if (const auto* io = std::get_if<guestsim::IoEvent>(&event.body))
      error = builder.add(*io);
    else
      error = builder.add(std::get<guestsim::Command>(event.body));
    if (error)
      return path + ", event " + std::to_string(event.index) + ": " + *error;
  }
  return builder.finish();
}

std::variant<Stream, std::string> loadStress(uint64_t count, uint64_t seed) {
  auto loaded = loadScenario("stress", count, seed);
  if (auto* stream = std::get_if<Stream>(&loaded))
    stream->name = "stress --count " + std::to_string(count) + " --seed " + std::to_string(seed);
  return loaded;
}

std::variant<Stream, std::string> loadScenario(const std::string& name, uint64_t count,
                                               uint64_t seed) {
  guestsim::ScenarioOptions options;
  options.seed = seed;
  options.maxCommands = count;
  options.referenceFormatsOnly = true;
  std::unique_ptr<guestsim::Scenario> scenario;
  try {
    scenario = guestsim::makeScenario(name, options);
  } catch (const std::invalid_argument& e) {
    return std::string(e.what());
  }
  auto image = makeImage();
  if (auto* error = std::get_if<std::string>(&image))
    return *error;
  StreamBuilder builder(name, std::move(std::get<std::unique_ptr<GuestImage>>(image)));
  while (auto action = scenario->next()) {
    std::optional<std::string> error;
    if (const auto* io = std::get_if<guestsim::IoEvent>(&*action))
      error = builder.add(*io);
    else
      error = builder.add(std::get<guestsim::Command>(*action));
    if (error)
      return name + ": " + *error;
  }
  return builder.finish();
}

}  // namespace spicebox::bench
