// Runs in: tests (developer machine / CI), as
//   spicebox-render-recording FILE [--at N,...] [--every K] [--last] --out-prefix PREFIX
// Input: a SPICE_REPLAY 1 recording (plain or .xz), read by guestsim's checked RecordReader.
//
// spicebox's side of the oracle comparison: the recording's commands drawn by the renderer's
// Rasteriser, the primary written as PNG after the same command counts spicebox-render-oracle
// uses for libspice-server, so the two can be compared pixel by pixel. The trees are drawn as the
// reader produced them; that the renderer's decoder yields the very same trees from guest memory
// is shown for every command of the shared recordings by renderer-decode-tests.
#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <spice/enums.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "base/log.h"
#include "renderer/raster.h"
#include "tests/oracle/png-image.h"
#include "tools/guestsim/spice-record.h"

namespace {

using namespace spicebox;

struct Primary {
  uint32_t width = 0, height = 0;
  uint32_t format = 0;
  std::vector<uint32_t> pixels;  // width * height, top row first (4-byte aligned)
};

// The recorded pixels of a created primary: `data` is the memory block from its lowest address;
// with a negative stride the top row is the last one in memory.
void loadPrimary(Primary& p, const guestsim::PrimarySurface& s) {
  const size_t rowBytes = static_cast<size_t>(p.width) * 4;
  const size_t absStride = static_cast<size_t>(s.stride < 0 ? -int64_t{s.stride} : s.stride);
  if (s.data.size() < absStride * p.height || absStride < rowBytes)
    return;  // no (or short) data: the primary starts black, as the replayer's zeroed memory
  auto* out = reinterpret_cast<uint8_t*>(p.pixels.data());
  for (uint32_t y = 0; y < p.height; ++y) {
    const size_t srcRow = s.stride < 0 ? p.height - 1 - y : y;
    std::memcpy(out + y * rowBytes, s.data.data() + srcRow * absStride, rowBytes);
  }
}

bool writeSnapshot(const Primary& p, uint64_t command, const std::string& prefix) {
  oracle::SurfaceView view{reinterpret_cast<const uint8_t*>(p.pixels.data()),
                           p.pixels.size() * 4,
                           p.width,
                           p.height,
                           static_cast<int32_t>(p.width * 4),
                           SPICE_SURFACE_FMT_32_xRGB};
  auto rgb = oracle::surfaceToRgb(view);
  if (auto* error = std::get_if<std::string>(&rgb)) {
    spdlog::error("primary after command {}: {}", command, *error);
    return false;
  }
  const std::string path = prefix + "-" + std::to_string(command) + ".png";
  if (auto error = oracle::writePng(path, std::get<oracle::RgbImage>(rgb)); !error.empty()) {
    spdlog::error("writing {}: {}", path, error);
    return false;
  }
  fmt::print("primary after command {}: {}x{} written to {}\n", command, p.width, p.height, path);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string file, prefix;
  std::vector<uint64_t> at;
  uint64_t every = 0;
  bool last = false;
  CLI::App app{
      "spicebox-render-recording: draws a QXL recording with spicebox's rasteriser and writes "
      "the primary as PNG after chosen commands (the counterpart of spicebox-render-oracle)."};
  app.add_option("file", file, "SPICE_REPLAY 1 recording (.xz read directly)")->required();
  app.add_option("--at", at, "Command counts to snapshot at")->delimiter(',');
  app.add_option("--every", every, "Also every K-th command");
  app.add_flag("--last", last, "Also after the last command");
  app.add_option("--out-prefix", prefix, "Writes PREFIX-N.png")->required();
  std::vector<int64_t> probe;
  app.add_option("--probe", probe,
                 "SURFACE,X,Y: print that pixel's value whenever a command changes it")
      ->expected(3)
      ->delimiter(',');
  bool list = false;
  app.add_flag("--list", list,
               "Also print each draw command (number, QXL_DRAW_* type, surface, bbox): to find "
               "the command behind a differing snapshot");
  CLI11_PARSE(app, argc, argv);
  base::initLogging("render-recording", STDERR_FILENO, "");

  auto opened = guestsim::RecordReader::open(file);
  if (auto* error = std::get_if<guestsim::RecordError>(&opened)) {
    spdlog::error("{}: {}", file, error->toString());
    return 2;
  }
  auto& reader = *std::get<std::unique_ptr<guestsim::RecordReader>>(opened);
  const std::set<uint64_t> wanted(at.begin(), at.end());

  renderer::Rasteriser raster;
  Primary primary;
  bool havePrimary = false;
  uint64_t commands = 0, failures = 0, lastSnapshot = 0;
  for (;;) {
    auto next = reader.next();
    if (std::holds_alternative<guestsim::EndOfRecording>(next))
      break;
    if (auto* error = std::get_if<guestsim::RecordError>(&next)) {
      spdlog::error("{}: {}", file, error->toString());
      return 1;
    }
    const auto& event = std::get<guestsim::RecordEvent>(next);
    if (const auto* io = std::get_if<guestsim::IoEvent>(&event.body)) {
      using M = guestsim::WorkerMessage;
      if ((io->message == M::CreatePrimarySurface || io->message == M::CreatePrimarySurfaceAsync) &&
          io->primary) {
        const auto& s = *io->primary;
        primary = Primary{s.width, s.height, s.format,
                          std::vector<uint32_t>(static_cast<size_t>(s.width) * s.height)};
        loadPrimary(primary, s);
        auto memory = std::as_writable_bytes(std::span(primary.pixels));
        if (auto error = raster.createPrimary(s.width, s.height, static_cast<int32_t>(s.width * 4),
                                              s.format, memory)) {
          spdlog::error("event {}: create primary {}x{}: {}", event.index, s.width, s.height,
                        renderer::describe(*error));
          return 1;
        }
        havePrimary = true;
      } else if (io->message == M::DestroyPrimarySurface ||
                 io->message == M::DestroyPrimarySurfaceAsync) {
        raster.destroyPrimary();
        havePrimary = false;
      } else if (io->message == M::DestroySurfaces || io->message == M::DestroySurfacesAsync) {
        raster.destroyAll();
        havePrimary = false;
      }
      continue;
    }
    const auto& command = std::get<guestsim::Command>(event.body);
    ++commands;
    renderer::RasterResult result;
    if (const auto* draw = std::get_if<qxlcmd::Drawable>(&command.body)) {
      if (list) {
        fmt::print("command {}: draw type {} surface {} bbox ({},{})-({},{}) clip {}", commands,
                   draw->type, draw->surfaceId, draw->bbox.left, draw->bbox.top, draw->bbox.right,
                   draw->bbox.bottom, draw->clip.rects.size());
        for (const auto& r : draw->clip.rects)
          fmt::print(" ({},{})-({},{})", r.left, r.top, r.right, r.bottom);
        fmt::print("\n");
      }
      if (const auto* cp = std::get_if<qxlcmd::Copy>(&draw->payload); list && cp) {
        const auto* bm =
            cp->srcBitmap ? std::get_if<qxlcmd::Bitmap>(&cp->srcBitmap->payload) : nullptr;
        fmt::print(
            "  copy src type {} format/surface {} flags {} {}x{} area ({},{})-({},{}) scale {} "
            "rop {} mask {}\n",
            cp->srcBitmap ? cp->srcBitmap->type : -1,
            bm ? bm->format
            : cp->srcBitmap && std::holds_alternative<qxlcmd::SurfaceImage>(cp->srcBitmap->payload)
                ? static_cast<int>(std::get<qxlcmd::SurfaceImage>(cp->srcBitmap->payload).surfaceId)
                : -1,
            bm ? bm->flags : -1, cp->srcBitmap ? cp->srcBitmap->width : 0,
            cp->srcBitmap ? cp->srcBitmap->height : 0, cp->srcArea.left, cp->srcArea.top,
            cp->srcArea.right, cp->srcArea.bottom, cp->scaleMode, cp->ropDescriptor,
            cp->mask.bitmap.has_value());
      }
      if (const auto* tx = std::get_if<qxlcmd::Text>(&draw->payload); list && tx) {
        fmt::print("  text flags {} glyphs {} back ({},{})-({},{}) fore brush {} mode {}\n",
                   tx->str.flags, tx->str.length, tx->backArea.left, tx->backArea.top,
                   tx->backArea.right, tx->backArea.bottom, tx->foreBrush.type, tx->foreMode);
      }
      if (const auto* f = std::get_if<qxlcmd::Fill>(&draw->payload); list && f) {
        fmt::print("  fill brush type {} color {:#x} rop {} mask {}", f->brush.type, f->brush.color,
                   f->ropDescriptor, f->mask.bitmap.has_value());
        for (const auto& r : draw->clip.rects)
          fmt::print(" clip ({},{})-({},{})", r.left, r.top, r.right, r.bottom);
        fmt::print("\n");
      }
      if (const auto* r3 = std::get_if<qxlcmd::Rop3>(&draw->payload); list && r3) {
        const auto* bm =
            r3->srcBitmap ? std::get_if<qxlcmd::Bitmap>(&r3->srcBitmap->payload) : nullptr;
        fmt::print(
            "  rop3 {:#04x} src type {} format {} flags {} {}x{} area ({},{})-({},{}) "
            "scale {} brush type {} color {:#x} mask {}\n",
            r3->rop3, r3->srcBitmap ? r3->srcBitmap->type : -1, bm ? bm->format : -1,
            bm ? bm->flags : -1, r3->srcBitmap ? r3->srcBitmap->width : 0,
            r3->srcBitmap ? r3->srcBitmap->height : 0, r3->srcArea.left, r3->srcArea.top,
            r3->srcArea.right, r3->srcArea.bottom, r3->scaleMode, r3->brush.type, r3->brush.color,
            r3->mask.bitmap.has_value());
      }
      if (const auto* ab = std::get_if<qxlcmd::AlphaBlend>(&draw->payload); list && ab) {
        const auto* bm =
            ab->srcBitmap ? std::get_if<qxlcmd::Bitmap>(&ab->srcBitmap->payload) : nullptr;
        fmt::print(
            "  alpha-blend flags {} alpha {} src type {} format {} bitmap flags {} {}x{} "
            "stride {} area ({},{})-({},{})\n",
            ab->alphaFlags, ab->alpha, ab->srcBitmap ? ab->srcBitmap->type : -1,
            bm ? bm->format : -1, bm ? bm->flags : -1, bm ? bm->x : 0, bm ? bm->y : 0,
            bm ? bm->stride : 0, ab->srcArea.left, ab->srcArea.top, ab->srcArea.right,
            ab->srcArea.bottom);
      }
      if (const auto* st = std::get_if<qxlcmd::Stroke>(&draw->payload); list && st) {
        fmt::print("  stroke attr {} style [{}] fore {}:", st->attrFlags, fmt::join(st->style, " "),
                   st->foreMode);
        for (const auto& seg : st->path)
          for (const auto& p : seg.points)
            fmt::print(" ({},{})/16", p.x, p.y);
        fmt::print("\n");
      }
      result = raster.draw(*draw);
    } else if (const auto* surface = std::get_if<qxlcmd::SurfaceCmd>(&command.body)) {
      if (list)
        fmt::print("command {}: surface {} {} format {} {}x{}\n", commands, surface->surfaceId,
                   surface->type == 0 ? "create" : "destroy", surface->format, surface->width,
                   surface->height);
      result = raster.apply(*surface);
    }
    if (probe.size() == 3) {
      static std::optional<uint32_t> seen;
      const auto* ps = raster.surface(static_cast<uint32_t>(probe[0]));
      std::optional<uint32_t> now;
      if (ps && ps->image && probe[1] >= 0 && probe[2] >= 0 && probe[1] < ps->width &&
          probe[2] < ps->height &&
          PIXMAN_FORMAT_BPP(pixman_image_get_format(ps->image.get())) == 32)
        now = pixman_image_get_data(
            ps->image.get())[probe[2] * pixman_image_get_stride(ps->image.get()) / 4 + probe[1]];
      if (now != seen)
        fmt::print("probe after command {}: {:#010x}\n", commands, now.value_or(0));
      seen = now;
    }
    if (result) {
      const uint64_t n = ++failures;
      if ((n & (n - 1)) == 0)  // logged at 1, 2, 4, 8...
        spdlog::warn("command {} (event {}): {} ({} so far)", commands, event.index,
                     renderer::describe(*result), n);
    }
    if ((wanted.count(commands) || (every && commands % every == 0)) && havePrimary) {
      if (!writeSnapshot(primary, commands, prefix))
        return 1;
      lastSnapshot = commands;
    }
  }
  if (last && havePrimary && lastSnapshot != commands && !writeSnapshot(primary, commands, prefix))
    return 1;
  fmt::print("commands: {} not drawn: {}\n", commands, failures);
  return 0;
}
