// Runs in: spicebox-decode-fuzz-seeds, a developer tool run by tools/fuzz.sh (unsandboxed).
// Input: guestsim's all-draws and stress scenarios (trusted) and QXL recordings named on the
// command line (checked by RecordReader; a bad file stops that file with its error).
//
// Writes the decoder fuzzer's seed corpus: each command is materialised by the guest simulator
// into the fixed image of renderer/fuzz/fuzz-image.h and written as one fuzz input. Commands
// that do not fit the small BARs are skipped. Recordings repeat the same few shapes thousands of
// times, so at most MAX_SEEDS_PER_SHAPE commands of each (command, draw type, clip type) shape
// are kept per source.
//
//   spicebox-decode-fuzz-seeds OUT_DIR [RECORDING...]
#include <spdlog/spdlog.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "renderer/fuzz/fuzz-image.h"
#include "tools/guestsim/materialise.h"
#include "tools/guestsim/scenario.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::renderer::fuzz {
namespace {

constexpr size_t MAX_SEEDS_PER_SHAPE = 12;
constexpr uint64_t STRESS_COMMANDS = 3000;

// The materialiser's allocator over the fuzz image: a bump allocator per BAR, rewound before
// each command (one command per seed).
class SeedGuest final : public guestsim::GuestAllocator {
 public:
  std::optional<guestsim::GuestBlock> allocate(guestsim::Arena arena, size_t size) override {
    const bool isRam = arena == guestsim::Arena::Ram;
    std::vector<std::byte>& bytes = isRam ? ram_ : vram_;
    size_t& used = isRam ? ramUsed_ : vramUsed_;
    const size_t align = isRam ? 8 : 4096;
    const size_t start = (used + align - 1) / align * align;
    if (start > bytes.size() || size > bytes.size() - start)
      return std::nullopt;
    used = start + size;
    const uint64_t addr = isRam ? slots_.ramAddress(start) : slots_.vramAddress(start);
    return guestsim::GuestBlock{bytes.data() + start, addr, nextHandle_++, arena};
  }
  void free(const guestsim::GuestBlock&) override {}  // rewound by reset()
  size_t capacity(guestsim::Arena arena) const override {
    return arena == guestsim::Arena::Ram ? RAM_SIZE : VRAM_SIZE;
  }

  void reset() {
    std::memset(ram_.data(), 0, ramUsed_);
    std::memset(vram_.data(), 0, vramUsed_);
    ramUsed_ = vramUsed_ = 0;
  }
  // The fuzz input for the command just materialised. Surface pixels stay zero, so the VRAM
  // image is left out (the fuzzer zero-fills it).
  std::vector<uint8_t> input(const guestsim::Materialised& m) const {
    auto header = encodeHeader({static_cast<uint8_t>(m.qxlType), m.commandAddr});
    std::vector<uint8_t> out(header.begin(), header.end());
    const auto* ram = reinterpret_cast<const uint8_t*>(ram_.data());
    out.insert(out.end(), ram, ram + ramUsed_);
    return out;
  }

 private:
  FuzzSlots slots_;
  std::vector<std::byte> ram_ = std::vector<std::byte>(RAM_SIZE);
  std::vector<std::byte> vram_ = std::vector<std::byte>(VRAM_SIZE);
  size_t ramUsed_ = 0, vramUsed_ = 0;
  uint64_t nextHandle_ = 1;
};

using Shape = std::tuple<size_t, int, int>;

Shape shapeOf(const qxlcmd::Command& cmd) {
  if (const auto* d = std::get_if<qxlcmd::Drawable>(&cmd.body))
    return {cmd.body.index(), d->type, static_cast<int>(d->clip.type)};
  return {cmd.body.index(), -1, -1};
}

class SeedWriter {
 public:
  explicit SeedWriter(std::filesystem::path dir) : dir_(std::move(dir)) {}

  void beginSource(const std::string& name) {
    source_ = name;
    perShape_.clear();
  }
  void add(const qxlcmd::Command& cmd) {
    size_t& count = perShape_[shapeOf(cmd)];
    if (count >= MAX_SEEDS_PER_SHAPE)
      return;
    guest_.reset();
    auto m = guestsim::materialise(cmd, 1, guest_);
    if (std::holds_alternative<guestsim::MaterialiseError>(m)) {
      ++skipped_;
      return;
    }
    auto bytes = guest_.input(std::get<guestsim::Materialised>(m));
    auto path = dir_ / (source_ + "-" + std::to_string(written_) + ".bin");
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    if (!out)
      throw std::runtime_error("cannot write seed " + path.string() +
                               ": check that the directory is writable and the disk not full");
    ++count;
    ++written_;
  }
  size_t written() const { return written_; }
  size_t skipped() const { return skipped_; }

 private:
  std::filesystem::path dir_;
  std::string source_;
  std::map<Shape, size_t> perShape_;
  SeedGuest guest_;
  size_t written_ = 0, skipped_ = 0;
};

void addScenario(SeedWriter& writer, const std::string& name, uint64_t maxCommands) {
  writer.beginSource(name);
  guestsim::ScenarioOptions options;
  options.maxCommands = maxCommands;
  auto scenario = guestsim::makeScenario(name, options);
  while (auto action = scenario->next())
    if (const auto* cmd = std::get_if<qxlcmd::Command>(&*action))
      writer.add(*cmd);
}

bool addRecording(SeedWriter& writer, const std::string& path) {
  auto opened = guestsim::RecordReader::open(path);
  if (auto* err = std::get_if<guestsim::RecordError>(&opened)) {
    spdlog::error("{}: cannot read the recording: {}", path, err->toString());
    return false;
  }
  auto& reader = std::get<std::unique_ptr<guestsim::RecordReader>>(opened);
  writer.beginSource(std::filesystem::path(path).stem().stem().string());
  for (;;) {
    auto event = reader->next();
    if (std::holds_alternative<guestsim::EndOfRecording>(event))
      return true;
    if (auto* err = std::get_if<guestsim::RecordError>(&event)) {
      spdlog::error("{}: recording broken, seeds so far kept: {}", path, err->toString());
      return false;
    }
    const auto& body = std::get<guestsim::RecordEvent>(event).body;
    if (const auto* cmd = std::get_if<qxlcmd::Command>(&body))
      writer.add(*cmd);
  }
}

}  // namespace
}  // namespace spicebox::renderer::fuzz

int main(int argc, char** argv) {
  using namespace spicebox::renderer::fuzz;
  if (argc < 2) {
    spdlog::error("usage: {} OUT_DIR [RECORDING...]: writes the decoder fuzzer's seed corpus",
                  argv[0]);
    return 2;
  }
  std::filesystem::create_directories(argv[1]);
  SeedWriter writer(argv[1]);
  addScenario(writer, "all-draws", 0);
  addScenario(writer, "stress", STRESS_COMMANDS);
  bool ok = true;
  for (int i = 2; i < argc; ++i)
    ok = addRecording(writer, argv[i]) && ok;
  spdlog::info("wrote {} seeds to {} ({} commands too large for the fuzz image skipped)",
               writer.written(), argv[1], writer.skipped());
  return ok ? 0 : 1;
}
