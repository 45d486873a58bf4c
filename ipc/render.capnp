@0xdd6d1b4d47b377d1;
# The broker-renderer boundary. The renderer parses guest memory and is assumed compromised
# when the broker reads what it sends (broker/peer-renderer.cpp). The renderer trusts the broker,
# but still range-checks what it uses (renderer/worker.cpp): a broker bug must not become a
# renderer memory error.
#
# Order: hello, then (while a VMM is linked) guestMemory, recoveryArea, then any number of batch;
# dropGuestMemory when the VMM's link ends. A batch holding a createPrimary is preceded by the
# displaySegment the primary is drawn into. On every renderer (re)start the broker sends
# guestMemory and the link's recoveryArea again (what the earlier renderer left there is taken
# over: surfaces, the primary, the pointer, the batch it was in), then the segment the shown
# primary is drawn into and the newest one (if any), then the memslot table and every batch still
# in flight, oldest first; a resent batch is preceded by its displaySegment again and lists the
# items quarantined so far.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::render");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 7;

# Output bounds of one batchDone (the broker refuses more, and kills the renderer).
const maxDamageRects :UInt32 = 64;   # damage rectangles; more are merged into their bounding box
const maxHints :UInt32 = 64;         # hints; more degrade to damage
const maxHintRects :UInt32 = 64;     # rectangles of one solidFill hint
# Largest display segment width or height (the device refuses larger primaries).
const maxDisplayDimension :UInt32 = 8192;

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

# The memory a primary surface is drawn into, one descriptor attached: a memfd the broker created
# (sealed against shrinking, growing and further sealing) that it keeps and later hands read-only
# to the netproxy (and, through it, to local shared-memory viewers). The renderer maps it
# MAP_SHARED read-write and refuses (exits) when the descriptor is smaller than `size` or the
# dimensions are out of range. The next createPrimary whose width and height equal the segment's
# is drawn into it (32 bpp x8r8g8b8; for a non-32 bpp primary the 32 bpp shadow); a createPrimary
# of other dimensions is not created.
#
# Two buffers (backOffset != 0): the picture alternates between them. A batch whose output was
# reported (BatchDone damage or hints) leaves its buffer "presented": once outputTaken for it
# arrives the renderer copies that output's rectangles into the other buffer, and draws the next
# batch there, so a reader of the presented buffer (a tear-free viewer, until it acknowledges a
# later frame) never sees it change. BatchDone.buffer names the buffer holding the picture.
struct DisplaySegment {
  generation @0 :UInt64;     # broker's id of the segment, increasing per broker run
  size @1 :UInt64;           # bytes of the descriptor: >= offset + stride * height (and
                             # backOffset + stride * height), multiple of 4096
  offset @2 :UInt64;         # bytes from the start to the top row of buffer 0; 0 today
  stride @3 :UInt32;         # bytes per row: width * 4 (top row first)
  width @4 :UInt32;          # pixels, 1 .. maxDisplayDimension
  height @5 :UInt32;         # pixels, 1 .. maxDisplayDimension
  backOffset @6 :UInt64;     # top row of buffer 1, at or after offset + stride * height;
                             # 0: one buffer only (no flipping)
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
  quarantine @2 :List(UInt32);       # indices of items the renderer must skip (counted as
                                     # `prefix` says): commands that brought a renderer down
                                     # twice (released undrawn); 0 .. maxItemsPerBatch entries
  prefix @3 :UInt32;                 # leading items the broker added when it sent the batch
                                     # again (the memslot table the batch was built with); item
                                     # indices (quarantine, the recovery area's progress record)
                                     # count from items[prefix], so they name the same item in
                                     # every sending; 0 .. 1
}

# The recovery area of a VMM link (renderer/recovery.h), one descriptor: a memfd the broker made
# (sealed against shrinking and growing) of recovery::areaBytes(arenaBytes) bytes, mapped
# MAP_SHARED read-write. Every renderer of the link keeps its surfaces, its primary's records, its
# pointer and its progress through batches there, so that the next one takes up where it stopped.
# Sent after guestMemory, before the display segments and batches; the renderer checks the
# descriptor (size, seals) and every record it adopts.
struct RecoveryArea {
  arenaBytes @0 :UInt64;             # surface arena: 4 KiB multiple, 4 KiB .. 2 GiB
}

# What a batch did to the primary, beyond plain damage: operations a remote client can replay on
# its own copy of the picture instead of receiving the pixels.
struct Hint {
  union {
    solidFill @0 :SolidFill;
    copyBits @1 :CopyBits;
  }
  # Every rectangle set to `color` (the segment's 32 bpp pixel value, as stored).
  struct SolidFill {
    color @0 :UInt32;
    rects @1 :List(Rect);            # 1 .. maxHintRects, each non-empty, inside the primary
  }
  # `dest` takes the pixels of the same-sized rectangle at (srcX, srcY), read as they were before
  # the copy (source and destination may overlap: copy as if from a snapshot of the source).
  struct CopyBits {
    srcX @0 :Int32;                  # the source rectangle lies inside the primary too
    srcY @1 :Int32;
    dest @2 :Rect;                   # non-empty, inside the primary
  }
}

# Answer to a batch, in order: the renderer is done with every item of batch `seq`.
#
# After sending a batchDone the renderer does not touch the display segment (nor take any other
# message but ping) until the broker answers `outputTaken` with the same seq: whoever reads the
# segment (the netproxy) sees the picture of exactly this batch, never one half drawn.
#
# Output invariant: a remote client that applies `hints` in order to its copy of the primary as
# it was after the previous batch, and then paints every `damage` rectangle from the segment's
# final pixels, has exactly the segment's picture. So a copyBits hint is only emitted when its
# source does not intersect damage accumulated earlier in the batch (else its destination becomes
# damage). Local shared-memory clients use the union of damage and hint rectangles. Rectangles are
# in primary coordinates (of the primary that exists when the batch ends: a createPrimary in the
# batch makes the whole primary damage and drops earlier hints; no primary at the end, no output).
struct BatchDone {
  seq @0 :UInt64;                    # must be the oldest batch in flight, else the renderer is killed
  rejected @1 :UInt32;               # commands it could not read (address outside every slot,
                                     # unknown type); <= the batch's item count
  damage @2 :List(Rect);             # 0 .. maxDamageRects, each non-empty, inside the primary
  hints @3 :List(Hint);              # 0 .. maxHints, in draw order
  cursor @4 :Cursor;                 # the pointer after the batch; set only when it differs from
                                     # the last one reported (else null)
  buffer @5 :UInt8;                  # the segment's buffer holding the picture after the batch:
                                     # 0 (offset) or 1 (backOffset); 0 without a primary
}

# Largest cursor shape the renderer reports (pixels per side): what SPICE clients draw (they take
# up to 512, but 128 x 128 x 4 bytes keeps a batchDone inside one IPC frame). A larger shape is not
# reported: the pointer keeps the previous shape.
const maxCursorDimension :UInt32 = 128;

# The guest's pointer, sanitised by the renderer (renderer/raster.h sanitiseCursor): whatever the
# guest's cursor format, an ARGB32 straight-alpha shape (what spice-html5 draws).
struct Cursor {
  visible @0 :Bool;
  x @1 :Int16;                       # hot spot position on the primary (may lie outside it)
  y @2 :Int16;
  shapeSerial @3 :UInt64;            # changes whenever the shape changes; 0: no shape yet
  width @4 :UInt16;                  # 0 .. maxCursorDimension; 0 only with shapeSerial 0
  height @5 :UInt16;                 # same
  hotSpotX @6 :UInt16;               # < width (0 without a shape)
  hotSpotY @7 :UInt16;               # < height
  pixels @8 :Data;                   # width * height * 4 bytes, row-major, little-endian ARGB32
}

# Broker -> renderer.
struct BrokerToRenderer {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors
    ping @1 :Common.Heartbeat;    # no descriptors
    guestMemory @2 :GuestMemory;  # two descriptors (RAM, VRAM)
    dropGuestMemory @3 :Void;     # the VMM's link ended: unmap, forget slots; no descriptors
    batch @4 :Batch;              # no descriptors
    displaySegment @5 :DisplaySegment;  # one descriptor (the segment's memfd)
    outputTaken @6 :UInt64;       # seq of the last batchDone: its pixels have been read (the
                                  # netproxy copied them, or nobody reads them); no descriptors
    recoveryArea @7 :RecoveryArea;  # one descriptor (the area's memfd)

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
