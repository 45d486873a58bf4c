// Runs in: developer machine / tests, as `spicebox-record-rewrite IN OUT`.
// Input: a recording (plain or .xz), hostile as far as RecordReader is
// concerned. Reads every event into the typed tree and writes it back with
// RecordWriter (xz when OUT ends in ".xz"). For a file spice-server wrote,
// OUT is byte-identical to IN's uncompressed bytes; the oracle tests feed OUT
// to libspice-server to prove the writer's files are accepted.

#include <cstdio>

#include "tools/guestsim/spice-record-writer.h"
#include "tools/guestsim/spice-record.h"

int main(int argc, char** argv) {
  using namespace spicebox::guestsim;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  auto opened = RecordReader::open(argv[1]);
  if (auto* err = std::get_if<RecordError>(&opened)) {
    std::fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], err->toString().c_str());
    return 1;
  }
  auto& reader = *std::get<std::unique_ptr<RecordReader>>(opened);
  auto created = RecordWriter::open(argv[2]);
  if (auto* err = std::get_if<WriteError>(&created)) {
    std::fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], err->toString().c_str());
    return 1;
  }
  auto& writer = *std::get<std::unique_ptr<RecordWriter>>(created);
  for (;;) {
    auto ev = reader.next();
    if (auto* err = std::get_if<RecordError>(&ev)) {
      std::fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], err->toString().c_str());
      return 1;
    }
    if (std::holds_alternative<EndOfRecording>(ev)) {
      break;
    }
    if (auto err = writer.write(std::get<RecordEvent>(ev))) {
      std::fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], err->toString().c_str());
      return 1;
    }
  }
  if (auto err = writer.finish()) {
    std::fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], err->toString().c_str());
    return 1;
  }
  return 0;
}
