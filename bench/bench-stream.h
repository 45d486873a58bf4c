// Runs in: spicebox-bench-render and spicebox-bench-spice-serve (developer machine,
// unsandboxed). Input: a SPICE_REPLAY 1 recording (plain or .xz), read by guestsim's checked
// RecordReader, or one of guestsim's scenarios; both already yield checked command trees.
//
// A command stream loaded before any timing starts: every command materialised once into one
// GuestImage (bench/guest-image.h) that both renderers read, and the io events the benchmark
// replays (create / destroy primary, destroy surfaces). Parse and layout time are excluded for
// both sides. Other io events (UPDATE, WAKEUP, memslots, monitors config, ...) are counted and
// not replayed: neither libspice-server's replayer nor spicebox's render-recording acts on them,
// and the benchmark defines the updates itself (lazy: one at the end; eager: one per draw).
#pragma once

#include <spice/qxl_dev.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "bench/guest-image.h"
#include "renderer/qxl-command.h"

namespace spicebox::bench {

struct BenchCommand {
  uint32_t qxlType = 0;     // QXL_CMD_*
  uint64_t addr = 0;        // QXLCommand::data: a guest address in the stream's image
  uint64_t releaseId = 0;   // QXLReleaseInfo.id: 1 for the stream's first command, then + 1
  bool cursorRing = false;  // QXL_CMD_CURSOR
  // QXL_CMD_DRAW only: the draw's surface and its bbox clipped to that surface's size, for the
  // eager mode's update_area. hasUpdateArea is false when the clipped bbox is empty or the
  // surface is not live at that point of the stream.
  bool isDraw = false;
  bool hasUpdateArea = false;
  uint32_t surfaceId = 0;
  QXLRect updateArea{};
};

struct BenchIo {
  enum class Kind : uint8_t { CreatePrimary, DestroyPrimary, DestroySurfaces };
  Kind kind = Kind::CreatePrimary;
  // CreatePrimary only.
  uint32_t width = 0, height = 0;
  int32_t stride = 0;
  uint32_t format = 0, position = 0, mouseMode = 0, flags = 0, type = 0;
  // The primary's memory in the image (height * |stride| bytes, lowest address), holding the
  // recorded pixels; libspice-server draws there, spicebox copies it (KEEP_DATA) into its own.
  uint64_t memAddr = 0;
};

using BenchEvent = std::variant<BenchCommand, BenchIo>;

struct Stream {
  std::string name;
  std::unique_ptr<GuestImage> image;
  std::vector<BenchEvent> events;
  uint64_t commands = 0;
  std::map<std::string, uint64_t> commandsByType;  // "DRAW", "SURFACE", ...
  uint64_t draws = 0;                              // QXL_CMD_DRAW commands
  uint64_t eagerUpdates = 0;                       // draws with an update area
  uint64_t ioReplayed = 0, ioIgnored = 0;
  uint64_t notMaterialised = 0;  // commands the materialiser refused (left out of both runs)
};

// Loads a recording. On error, a message saying what was wrong with which file.
std::variant<Stream, std::string> loadRecording(const std::string& path);
// Loads `count` commands of guestsim's stress scenario with `seed`, restricted to the bitmap
// formats libspice-server renders (ScenarioOptions::referenceFormatsOnly).
std::variant<Stream, std::string> loadStress(uint64_t count, uint64_t seed);
// Loads the first `count` commands of guestsim's scenario `name` (and the io events among them)
// with `seed`, restricted to what libspice-server renders. On error (an unknown name: the
// message lists the known ones), a message saying what was wrong.
std::variant<Stream, std::string> loadScenario(const std::string& name, uint64_t count,
                                               uint64_t seed);

}  // namespace spicebox::bench
