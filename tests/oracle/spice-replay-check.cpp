// Runs in: tests (developer machine / CI), as `spicebox-replay-check FILE`.
// Input: an uncompressed SPICE_REPLAY recording, trusted only as far as
// libspice-server trusts it: this program is the oracle that says whether
// the real spice-server replayer accepts a file (ours or spice-server's own).
//
// It pulls every command out of the file with spice_replay_next_cmd until
// that returns NULL, counts them by QXL_CMD_* type and frees them; the
// commands never reach the worker. The io events in between (create primary
// surface, destroy surfaces, ...) are replayed by libspice-server into the
// QXL instance's worker thread, so a minimal server with one QXL interface
// must exist. It listens on no port (spice_server_set_port is never called,
// so reds opens no socket) and runs no event loop: the core's timers and
// watches are accepted and never fire, which nothing here needs.
//
// Exit status: 0 when libspice-server read the stream to its end, 1 when it
// stopped before (or rejected the header), 2 on usage or setup errors.
// spice_replay_next_cmd returns NULL both at a clean end and on a parse error
// (it reports nothing else), so a file cut inside its last event also reads
// to the end: callers must compare the printed "commands: N" with what they
// expect, as the CTest driver does with the .stats.txt count.

#include <spice.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include "tests/oracle/spice-host.h"

namespace {

using spicebox::oracle::MAX_SURFACES;

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

const char* commandName(uint32_t type) {
  static const char* const NAMES[] = {"NOP", "DRAW", "UPDATE", "CURSOR", "MESSAGE", "SURFACE"};
  return type < sizeof(NAMES) / sizeof(NAMES[0]) ? NAMES[type] : "UNKNOWN";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FILE  (an uncompressed SPICE_REPLAY recording)\n", argv[0]);
    return 2;
  }
  std::unique_ptr<FILE, FileCloser> file(std::fopen(argv[1], "rbe"));
  if (!file) {
    std::fprintf(stderr, "%s: open %s: %s\n", argv[0], argv[1], std::strerror(errno));
    return 2;
  }
  std::fseek(file.get(), 0, SEEK_END);
  long size = std::ftell(file.get());
  std::rewind(file.get());

  // Order: the replay reads the header first (NULL on a bad one); the server
  // and its QXL instance must exist before the first io event is replayed.
  SpiceReplay* replay = spice_replay_new(file.get(), MAX_SURFACES);
  if (!replay) {
    std::fprintf(stderr, "%s: spice_replay_new rejected %s\n", argv[0], argv[1]);
    return 1;
  }
  // From here the replay owns the stream: spice_replay_free fclose()s it.
  FILE* stream = file.release();
  // Commands go to our counter, never to the worker: the interface's defaults.
  static SpiceCoreInterface core = spicebox::oracle::inertCore("spicebox-replay-check");
  static QXLInterface sif = spicebox::oracle::replayQxlInterface("spicebox-replay-check");
  static QXLInstance qxl{};
  SpiceServer* server = spice_server_new();
  spice_server_set_noauth(server);
  if (spice_server_init(server, &core) != 0) {
    std::fprintf(stderr, "%s: spice_server_init failed\n", argv[0]);
    return 2;
  }
  qxl.base.sif = &sif.base;
  if (spice_server_add_interface(server, &qxl.base) != 0) {
    std::fprintf(stderr, "%s: spice_server_add_interface failed\n", argv[0]);
    return 2;
  }
  spice_server_vm_start(server);

  uint64_t counts[6] = {};
  uint64_t total = 0;
  while (QXLCommandExt* cmd = spice_replay_next_cmd(replay, &qxl)) {
    uint32_t type = cmd->cmd.type;
    counts[type < 6 ? type : 0]++;
    ++total;
    spice_replay_free_cmd(replay, cmd);
  }
  long at = std::ftell(stream);
  bool consumed = at == size;

  for (uint32_t t = 1; t < 6; ++t) {
    if (counts[t] > 0) {
      std::printf("%-8s %llu\n", commandName(t), static_cast<unsigned long long>(counts[t]));
    }
  }
  if (counts[0] > 0) {
    std::printf("%-8s %llu\n", "UNKNOWN", static_cast<unsigned long long>(counts[0]));
  }
  std::printf("commands: %llu\n", static_cast<unsigned long long>(total));
  std::printf("consumed: %ld of %ld bytes\n", at, size);

  spice_server_vm_stop(server);
  spice_server_remove_interface(&qxl.base);
  spice_server_destroy(server);
  spice_replay_free(replay);
  return consumed ? 0 : 1;
}
