@0xdd6d1b4d47b377d1;
# The broker-renderer boundary. The renderer parses guest memory and is assumed compromised
# when the broker reads what it sends (broker/peer-renderer.cpp). The renderer trusts the broker,
# but still range-checks what it uses (renderer/worker.cpp): a broker bug must not become a
# renderer memory error.
#
# Order: hello, then (while a VMM is linked) guestMemory, then any number of batch; dropGuestMemory
# when the VMM's link ends. On every renderer (re)start the broker sends guestMemory again and
# resends the memslot table and every batch still in flight (the new renderer knows nothing).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::render");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 2;

# Items per batch at most (broker/qxl/device.h: MAX_ITEMS_PER_BATCH; the broker asserts they are
# equal). A batch with more is a broker bug; the renderer rejects the excess.
const maxItemsPerBatch :UInt32 = 64;

# The guest's RAM and VRAM BARs, two memfds attached in this order: 0 RAM, 1 VRAM. The renderer
# maps both MAP_SHARED read-write (it writes surfaces on UPDATE_AREA). The broker checked them
# (sealed against shrinking, at least these sizes) when the VMM linked.
struct GuestMemory {
  ramSize @0 :UInt64;        # bytes of descriptor 0; 65536 .. 1 GiB, a multiple of 4096
  vramSize @1 :UInt64;       # bytes of descriptor 1; 4096 .. 1 GiB, a multiple of 4096
  ramPhysStart @2 :UInt64;   # guest physical address of the RAM BAR (memslot ranges refer to it)
  vramPhysStart @3 :UInt64;  # guest physical address of the VRAM BAR; ranges do not overlap
}

# Which BAR a memslot lies in (broker/qxl/memslot.h BarId).
enum Bar {
  ram @0;
  vram @1;
}

# One active memslot, as the broker's table holds it.
struct Memslot {
  id @0 :UInt8;              # slot id: QXLRom slots_start .. slots_end (1 .. 7 with our ROM)
  generation @1 :UInt8;      # the generation guest addresses must carry; < 2^slot_gen_bits (256)
  bar @2 :Bar;
  memStart @3 :UInt64;       # guest physical, inclusive; inside the BAR's range
  memEnd @4 :UInt64;         # guest physical, exclusive; memStart <= memEnd <= BAR end
}

# QXLRect, as the guest wrote it (unvalidated: the renderer clips it to the surface).
struct Rect {
  top @0 :Int32;
  left @1 :Int32;
  bottom @2 :Int32;
  right @3 :Int32;
}

# Which guest ring a command came from.
enum Ring {
  display @0;
  cursor @1;
}

# A command taken off a ring: the renderer translates `addr` through its memslot table for the
# fixed structure of `type` and copies it once.
struct Command {
  ring @0 :Ring;
  addr @1 :UInt64;           # memslot-encoded guest address; unvalidated guest data
  type @2 :UInt32;           # QXLCommand type (QXL_CMD_*), unvalidated: unknown = rejected
}

# QXL_IO_CREATE_PRIMARY: QXLRam.create_surface as the device copied it (partly checked by the
# device; the renderer checks what it uses).
struct CreatePrimary {
  width @0 :UInt32;          # pixels
  height @1 :UInt32;         # pixels
  stride @2 :Int32;          # bytes per row; negative: bottom-up
  format @3 :UInt32;         # SPICE_SURFACE_FMT_*
  position @4 :UInt32;
  mouseMode @5 :UInt32;
  flags @6 :UInt32;
  type @7 :UInt32;
  mem @8 :UInt64;            # memslot-encoded guest address of the pixels; unvalidated
}

struct UpdateArea {
  surfaceId @0 :UInt32;      # guest's choice; unvalidated
  area @1 :Rect;
}

# One unit of work, mirroring qxl::WorkItem (broker/qxl/device.h), in guest order.
struct WorkItem {
  union {
    command @0 :Command;
    createPrimary @1 :CreatePrimary;
    destroyPrimary @2 :Void;
    destroySurface @3 :UInt32;       # surface id (the IO port's value), unvalidated
    destroyAllSurfaces @4 :Void;
    updateArea @5 :UpdateArea;
    monitorsConfig @6 :UInt64;       # memslot-encoded address of a QXLMonitorsConfig; unvalidated
    memslots @7 :List(Memslot);      # the whole table from now on; at most 256 entries
    reset @8 :Void;                  # QXL_IO_RESET: forget every surface and slot
  }
}

struct Batch {
  seq @0 :UInt64;                    # strictly increasing per VMM link; resent unchanged
  items @1 :List(WorkItem);          # 0 .. maxItemsPerBatch
}

# Answer to a batch, in order: the renderer is done with every item of batch `seq`.
struct BatchDone {
  seq @0 :UInt64;                    # must be the oldest batch in flight, else the renderer is killed
  rejected @1 :UInt32;               # commands it could not read (address outside every slot,
                                     # unknown type); <= the batch's item count
}

# Broker -> renderer.
struct BrokerToRenderer {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors
    ping @1 :Common.Heartbeat;    # no descriptors
    guestMemory @2 :GuestMemory;  # two descriptors (RAM, VRAM)
    dropGuestMemory @3 :Void;     # the VMM's link ended: unmap, forget slots; no descriptors
    batch @4 :Batch;              # no descriptors
  }
}

# Renderer -> broker. Permitted: `hello` once, first; then `pong` and `batchDone` (for the oldest
# batch in flight only). Anything else ends the renderer.
struct RendererToBroker {
  union {
    hello @0 :Common.ChildHello;  # no descriptors
    pong @1 :Common.Heartbeat;    # no descriptors; seq of the latest ping
    batchDone @2 :BatchDone;      # no descriptors
  }
}
