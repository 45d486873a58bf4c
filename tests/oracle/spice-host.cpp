#include "tests/oracle/spice-host.h"

#include <cstring>

// spice-core.h declares these opaque at global scope; complete them here, once.
struct SpiceTimer {};
struct SpiceWatch {};

namespace spicebox::oracle {
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

void attachedWorker(QXLInstance* qin) {
  QXLDevMemSlot slot{};
  slot.slot_group_id = MEMSLOT_GROUP;
  slot.slot_id = 0;
  slot.generation = 0;
  slot.virt_start = 0;
  slot.virt_end = ~uint64_t{0};
  slot.addr_delta = 0;
  slot.qxl_ram_size = ~uint32_t{0};
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
int noCommand(QXLInstance*, QXLCommandExt*) {
  return 0;
}
int wakeMe(QXLInstance*) {
  return 1;
}
void ignoreRelease(QXLInstance*, QXLReleaseInfoExt) {}
void notifyUpdate(QXLInstance*, uint32_t) {}
int flushResources(QXLInstance*) {
  return 0;
}
void asyncComplete(QXLInstance*, uint64_t) {}

}  // namespace

SpiceCoreInterface inertCore(const char* description) {
  SpiceCoreInterface core{};
  core.base.type = SPICE_INTERFACE_CORE;
  core.base.description = description;
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

QXLInterface replayQxlInterface(const char* description) {
  QXLInterface sif{};
  sif.base.type = SPICE_INTERFACE_QXL;
  sif.base.description = description;
  sif.base.major_version = SPICE_INTERFACE_QXL_MAJOR;
  sif.base.minor_version = SPICE_INTERFACE_QXL_MINOR;
  sif.attached_worker = attachedWorker;
  sif.set_compression_level = setCompressionLevel;
  sif.get_init_info = getInitInfo;
  sif.get_command = noCommand;
  sif.req_cmd_notification = wakeMe;
  sif.release_resource = ignoreRelease;
  sif.get_cursor_command = noCommand;
  sif.req_cursor_notification = wakeMe;
  sif.notify_update = notifyUpdate;
  sif.flush_resources = flushResources;
  sif.async_complete = asyncComplete;
  return sif;
}

}  // namespace spicebox::oracle
