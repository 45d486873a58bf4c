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

namespace {

// Surface ids the replayer may allocate; QEMU's MAX_SURFACE_NUM, which is
// also what spice-server's own replay tool passes.
constexpr int MAX_SURFACES = 1024;
constexpr uint32_t MEMSLOT_GROUP = 0;

// ---------------------------------------------------------------- inert core

}  // namespace

// Timers and watches that exist but never fire: spice_server_init needs
// non-NULL handles (a NULL migration timer is fatal), and with no client and
// no listening socket no callback is ever due. These complete spice-core.h's
// opaque types, so they live at global scope.
struct SpiceTimer {};
struct SpiceWatch {};

namespace {

SpiceTimer* timerAdd(SpiceTimerFunc, void*) {
  return new SpiceTimer;
}
void timerStart(SpiceTimer*, uint32_t) {}
void timerCancel(SpiceTimer*) {}
void timerRemove(SpiceTimer* timer) {
  delete timer;
}
SpiceWatch* watchAdd(int, int, SpiceWatchFunc, void*) {
  return new SpiceWatch;
}
void watchUpdateMask(SpiceWatch*, int) {}
void watchRemove(SpiceWatch* watch) {
  delete watch;
}
void channelEvent(int, SpiceChannelEventInfo*) {}

SpiceCoreInterface makeCore() {
  SpiceCoreInterface core{};
  core.base.type = SPICE_INTERFACE_CORE;
  core.base.description = "spicebox-replay-check";
  core.base.major_version = SPICE_INTERFACE_CORE_MAJOR;
  core.base.minor_version = SPICE_INTERFACE_CORE_MINOR;
  core.timer_add = timerAdd;
  core.timer_start = timerStart;
  core.timer_cancel = timerCancel;
  core.timer_remove = timerRemove;
  core.watch_add = watchAdd;
  core.watch_update_mask = watchUpdateMask;
  core.watch_remove = watchRemove;
  core.channel_event = channelEvent;
  return core;
}

// ---------------------------------------------------------------- QXL stubs

// The replayer hands the worker pointers into its own heap as QXLPHYSICAL
// addresses, so one slot must map the whole address space 1:1.
QXLDevMemSlot identitySlot() {
  QXLDevMemSlot slot{};
  slot.slot_group_id = MEMSLOT_GROUP;
  slot.slot_id = 0;
  slot.generation = 0;
  slot.virt_start = 0;
  slot.virt_end = ~uint64_t{0};
  slot.addr_delta = 0;
  slot.qxl_ram_size = ~uint32_t{0};
  return slot;
}

void attachedWorker(QXLInstance* qin) {
  QXLDevMemSlot slot = identitySlot();
  spice_qxl_add_memslot(qin, &slot);
}
void setCompressionLevel(QXLInstance*, int) {}
void getInitInfo(QXLInstance*, QXLDevInitInfo* info) {
  std::memset(info, 0, sizeof(*info));
  info->num_memslots = 1;
  info->num_memslots_groups = 1;
  info->memslot_id_bits = 1;
  info->memslot_gen_bits = 1;
  info->n_surfaces = MAX_SURFACES;
}
// Commands go to our counter, never to the worker.
int getCommand(QXLInstance*, QXLCommandExt*) {
  return 0;
}
int reqNotification(QXLInstance*) {
  return 1;
}
void releaseResource(QXLInstance*, QXLReleaseInfoExt) {}
void notifyUpdate(QXLInstance*, uint32_t) {}
int flushResources(QXLInstance*) {
  return 0;
}
void asyncComplete(QXLInstance*, uint64_t) {}

QXLInterface makeQxlInterface() {
  QXLInterface sif{};
  sif.base.type = SPICE_INTERFACE_QXL;
  sif.base.description = "spicebox-replay-check";
  sif.base.major_version = SPICE_INTERFACE_QXL_MAJOR;
  sif.base.minor_version = SPICE_INTERFACE_QXL_MINOR;
  sif.attached_worker = attachedWorker;
  sif.set_compression_level = setCompressionLevel;
  sif.get_init_info = getInitInfo;
  sif.get_command = getCommand;
  sif.req_cmd_notification = reqNotification;
  sif.release_resource = releaseResource;
  sif.get_cursor_command = getCommand;
  sif.req_cursor_notification = reqNotification;
  sif.notify_update = notifyUpdate;
  sif.flush_resources = flushResources;
  sif.async_complete = asyncComplete;
  return sif;
}

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
  static SpiceCoreInterface core = makeCore();
  static QXLInterface sif = makeQxlInterface();
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
