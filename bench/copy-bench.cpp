// Runs in: a developer machine, as spicebox-bench-copy [--iterations N] [--width W --height H].
// Input: none from outside; the command is built here and laid out in guest memory by guestsim's
// materialiser. Figures are only meaningful from an optimised build (RelWithDebInfo/Release).
//
// Issue 4, point 6: a full-HD 32 bpp bitmap COPY (ROP copy, no clip, no scaling) onto a primary of
// the same size, against memcpy of the same byte count between two buffers of that size, all in
// the same run. Four figures, each the median of --iterations, interleaved:
//   memcpy            the reference bandwidth;
//   rasterise         Rasteriser::draw of the decoded tree (the pixels move once);
//   decode            decodeCommand from guest memory (structures copied and validated; the
//                     one-chunk bitmap's pixels come back as a view of guest memory, not copied);
//   decode+rasterise  the renderer's whole per-command path, the honest figure;
//   floor: ...        one pixman SRC composite of the bitmap's bytes, with and without the
//                     decode: the bare blit, without the rasteriser's checks and clipping.
// The target (>= 60% of memcpy) is judged on the whole path; the rasterise-only figure is
// printed beside it. Exit status 0 unless setup fails (1) or the usage is wrong (2).
#include <pixman.h>
#include <spdlog/spdlog.h>
#include <spice/enums.h>
#include <spice/qxl_dev.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "base/log.h"
#include "bench/build-note.h"
#include "bench/guest-image.h"
#include "renderer/qxl-decode.h"
#include "renderer/raster.h"

namespace {

using namespace spicebox;
using Clock = std::chrono::steady_clock;

// Issue 4's target: the COPY moves at least this fraction of memcpy's bandwidth.
constexpr double MEMCPY_TARGET = 0.60;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Keeps the compiler from dropping or merging stores whose results nothing reads.
void clobberMemory() {
  asm volatile("" ::: "memory");
}

qxlcmd::Command fullScreenCopy(uint32_t w, uint32_t h) {
  qxlcmd::Bitmap bm;
  bm.format = SPICE_BITMAP_FMT_32BIT;
  bm.flags = QXL_BITMAP_TOP_DOWN;
  bm.x = w;
  bm.y = h;
  bm.stride = w * 4;
  bm.data.resize(size_t{bm.stride} * h);
  for (size_t i = 0; i < bm.data.size(); ++i)  // any non-uniform picture
    bm.data[i] = static_cast<uint8_t>(i * 131 + (i >> 12));
  qxlcmd::Image image;
  image.id = 1;
  image.type = SPICE_IMAGE_TYPE_BITMAP;
  image.width = w;
  image.height = h;
  image.payload = std::move(bm);
  qxlcmd::Copy copy;
  copy.srcBitmap = std::move(image);
  copy.srcArea = qxlcmd::Rect{0, 0, static_cast<int32_t>(h), static_cast<int32_t>(w)};
  copy.ropDescriptor = SPICE_ROPD_OP_PUT;
  copy.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;
  qxlcmd::Drawable d;
  d.bbox = copy.srcArea;
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.effect = QXL_EFFECT_OPAQUE;
  d.surfaceId = 0;
  d.type = QXL_DRAW_COPY;
  d.payload = std::move(copy);
  qxlcmd::Command c;
  c.type = qxlcmd::CommandType::Draw;
  c.body = std::move(d);
  return c;
}

template <typename F>
double timeOnce(F&& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t width = 1920, height = 1080;
  unsigned iterations = 30;
  std::string logLevel;
  CLI::App app{
      "spicebox-bench-copy: a full-screen 32 bpp bitmap COPY through spicebox's decoder and "
      "rasteriser, against memcpy of the same bytes in the same run."};
  app.add_option("--width", width, "Bitmap and primary width")
      ->check(CLI::Range(1u, 8192u))
      ->capture_default_str();
  app.add_option("--height", height, "Bitmap and primary height")
      ->check(CLI::Range(1u, 4096u))  // keeps the bitmap within the decoder's 128 MiB cap
      ->capture_default_str();
  app.add_option("--iterations", iterations, "Timed repetitions of each figure (median printed)")
      ->check(CLI::Range(1u, 100000u))
      ->capture_default_str();
  app.add_option("--log-level", logLevel, "trace, debug, info, warn or error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  CLI11_PARSE(app, argc, argv);
  base::initLogging("bench-copy", STDERR_FILENO, logLevel);

  spicebox::bench::printBuildNote();
  const size_t bytes = size_t{width} * height * 4;
  auto created = bench::GuestImage::create(bytes + (size_t{16} << 20));
  if (auto* error = std::get_if<std::string>(&created)) {
    spdlog::error("{}", *error);
    return 1;
  }
  auto& image = *std::get<std::unique_ptr<bench::GuestImage>>(created);
  const qxlcmd::Command command = fullScreenCopy(width, height);
  auto laid = guestsim::materialise(command, 1, image);
  if (auto* error = std::get_if<guestsim::MaterialiseError>(&laid)) {
    spdlog::error("cannot lay out the COPY in guest memory: {}", error->detail);
    return 1;
  }
  const auto& m = std::get<guestsim::Materialised>(laid);
  renderer::SlotMemory memory(image.slots(), image.view());
  auto decode = [&] { return renderer::decodeCommand(memory, m.qxlType, m.commandAddr); };
  auto first = decode();
  if (auto* error = std::get_if<renderer::DecodeError>(&first)) {
    spdlog::error("the decoder refused the COPY: {}: {}", renderer::decodeErrorName(error->kind),
                  error->detail);
    return 1;
  }
  const auto& tree = std::get<qxlcmd::Drawable>(std::get<qxlcmd::Command>(first).body);

  std::vector<uint32_t> primary(size_t{width} * height);
  renderer::Rasteriser raster;
  if (auto error = raster.createPrimary(width, height, static_cast<int32_t>(width * 4),
                                        SPICE_SURFACE_FMT_32_xRGB,
                                        std::as_writable_bytes(std::span(primary)))) {
    spdlog::error("createPrimary {}x{}: {}", width, height, renderer::describe(*error));
    return 1;
  }
  // memcpy's source is a copy of the bitmap's bytes (the tree's view lies in guest memory).
  const auto* decodedCopy = std::get_if<qxlcmd::Copy>(&tree.payload);
  const auto* bitmap = decodedCopy && decodedCopy->srcBitmap
                           ? std::get_if<qxlcmd::Bitmap>(&decodedCopy->srcBitmap->payload)
                           : nullptr;
  if (!bitmap || bitmap->bytes().size() != bytes) {
    spdlog::error("the decoder did not return the COPY's bitmap as built (a decoder change?)");
    return 1;
  }
  std::vector<uint8_t> src(bitmap->bytes().begin(), bitmap->bytes().end()), dst(bytes);

  bool drawFailed = false;
  auto draw = [&](const qxlcmd::Drawable& d) {
    drawFailed |= raster.draw(d).has_value();
    (void)raster.takeDamage();
  };
  // The floor, for the profile in docs/performance.md (NOT spicebox's path): one pixman SRC
  // composite straight from the bitmap's bytes, the bare blit under the rasteriser's COPY.
  std::vector<uint32_t> floorPixels(size_t{width} * height);
  renderer::PixmanImage floorDest(
      pixman_image_create_bits(PIXMAN_x8r8g8b8, static_cast<int>(width), static_cast<int>(height),
                               floorPixels.data(), static_cast<int>(width * 4)));
  auto blit = [&](std::span<const uint8_t> data) {
    // pixman only reads a source image; the cast is for its C signature.
    renderer::PixmanImage s(
        pixman_image_create_bits(PIXMAN_x8r8g8b8, static_cast<int>(width), static_cast<int>(height),
                                 reinterpret_cast<uint32_t*>(const_cast<uint8_t*>(data.data())),
                                 static_cast<int>(width * 4)));
    pixman_image_composite32(PIXMAN_OP_SRC, s.get(), nullptr, floorDest.get(), 0, 0, 0, 0, 0, 0,
                             static_cast<int>(width), static_cast<int>(height));
  };
  auto bitmapOf = [](const qxlcmd::Command& cmd) {
    const auto& copy = std::get<qxlcmd::Copy>(std::get<qxlcmd::Drawable>(cmd.body).payload);
    return std::get<qxlcmd::Bitmap>(copy.srcBitmap->payload).bytes();
  };

  std::vector<double> tMemcpy, tDraw, tDecode, tWhole, tBlit, tDecodeBlit;
  for (unsigned i = 0; i <= iterations; ++i) {  // iteration 0 warms up and is not kept
    const double a = timeOnce([&] {
      std::memcpy(dst.data(), src.data(), bytes);
      clobberMemory();
    });
    const double b = timeOnce([&] { draw(tree); });
    const double c = timeOnce([&] {
      auto d = decode();
      clobberMemory();
    });
    const double e = timeOnce([&] {
      auto d = decode();
      if (auto* cmd = std::get_if<qxlcmd::Command>(&d))
        draw(std::get<qxlcmd::Drawable>(cmd->body));
    });
    const double f = timeOnce([&] { blit(src); });
    const double g = timeOnce([&] {
      auto d = decode();
      if (auto* cmd = std::get_if<qxlcmd::Command>(&d))
        blit(bitmapOf(*cmd));
    });
    if (i == 0)
      continue;
    tBlit.push_back(f);
    tDecodeBlit.push_back(g);
    tMemcpy.push_back(a);
    tDraw.push_back(b);
    tDecode.push_back(c);
    tWhole.push_back(e);
  }
  if (drawFailed) {
    spdlog::error("the rasteriser refused the COPY");
    return 1;
  }
  // Sanity check: the primary holds the bitmap (RGB; the x byte is kept as the guest wrote it).
  uint64_t differing = 0;
  for (size_t i = 0; i < primary.size(); ++i) {
    uint32_t s;
    std::memcpy(&s, src.data() + i * 4, 4);
    differing += ((s ^ primary[i]) & 0xffffffu) != 0;
  }

  const double mb = bytes / 1e6;
  const double memcpyRate = bytes / median(tMemcpy);
  fmt::print(
      "full-screen 32 bpp bitmap COPY {}x{} ({:.1f} MB), ROP copy, no clip; {} iterations"
      " (median)\n",
      width, height, mb, iterations);
  fmt::print("  {:<28} {:>8.2f} GB/s  ({:.3f} ms)\n", "memcpy", memcpyRate / 1e9,
             median(tMemcpy) * 1e3);
  struct Row {
    const char* name;
    const std::vector<double>* t;
  };
  for (Row row : {Row{"rasterise (decoded tree)", &tDraw}, Row{"decode (guest -> tree)", &tDecode},
                  Row{"decode + rasterise", &tWhole}, Row{"floor: pixman SRC blit", &tBlit},
                  Row{"floor: decode + SRC blit", &tDecodeBlit}}) {
    const double rate = bytes / median(*row.t);
    fmt::print("  {:<28} {:>8.2f} GB/s  ({:.3f} ms)  {:5.1f}% of memcpy\n", row.name, rate / 1e9,
               median(*row.t) * 1e3, 100 * rate / memcpyRate);
  }
  const double whole = bytes / median(tWhole) / memcpyRate;
  const double drawOnly = bytes / median(tDraw) / memcpyRate;
  fmt::print(
      "  target >= {:.0f}% of memcpy, whole per-command path: {} ({:.1f}%); rasterise "
      "alone: {} ({:.1f}%)\n",
      100 * MEMCPY_TARGET, whole >= MEMCPY_TARGET ? "met" : "NOT met", 100 * whole,
      drawOnly >= MEMCPY_TARGET ? "met" : "NOT met", 100 * drawOnly);
  fmt::print("  sanity: {} of {} primary pixels differ from the bitmap\n", differing,
             primary.size());
  fmt::print(
      "  (floor: one bare pixman SRC blit of the bitmap, without the rasteriser's checks; not "
      "spicebox's path)\n");
  return 0;
}
