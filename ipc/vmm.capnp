@0xdf5e93f701760f6f;
# qxl-link: the VMM-broker boundary (in the spirit of vhost-user). The VMM hands over the QXL
# BARs and doorbells; the broker checks every descriptor it is given (DESIGN.md, trust boundary 6)
# and refuses the link, closing the connection, when one is wrong. Documented message by message
# in docs/protocol.md; the checks live in broker/vmm-link.cpp.
#
# Transport: one unix SOCK_SEQPACKET connection per VMM, one message per datagram, descriptors
# attached with SCM_RIGHTS (ipc/channel.h), at most ipc::MAX_FDS_PER_MESSAGE (8) per message.
#
# Order (the broker's permit table): the VMM sends `hello` first, then `link` exactly once, then
# any number of `ioWrite`. `pong` is permitted any time after `hello`. Anything else out of order
# ends the connection; the VMM may connect again.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::vmm");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 1;

# The QXL device's memory, announced with the descriptors attached to the `link` message, in this
# order (descriptor index: what it is):
#   0: ROM BAR   memfd, read-write (the device writes the QXLRom contents and the mode list)
#   1: RAM BAR   memfd, read-write; holds the QXLRam header at QXLRom.ram_header_offset
#   2: VRAM BAR  memfd, read-write (surfaces)
#   3: command doorbell  eventfd: the VMM signals it when the guest writes QXL_IO_NOTIFY_CMD
#                (an ioeventfd); the broker reads it
#   4: cursor doorbell   eventfd: same for QXL_IO_NOTIFY_CURSOR
#   5: interrupt         eventfd: the broker signals it after changing QXLRam.int_pending; the VMM
#                then sets the guest's interrupt line to (int_pending & int_mask) != 0
# Exactly these six: fewer is refused, more closes the connection.
#
# Each BAR memfd must be a memfd (or regular file) opened read-write, sealed against shrinking
# (F_SEAL_SHRINK; F_SEAL_SEAL is not required), not sealed against writing, at least as large as
# announced, and distinct from the other BARs. The broker maps exactly the announced size.
# Sizes are in bytes, non-zero multiples of the host page size (4096 on x86-64 and arm64).
# The broker sets O_NONBLOCK on the interrupt eventfd (file status flags are shared with the VMM's
# copy) and never blocks writing it: EAGAIN means the counter is already signalled.
struct Link {
  romSize @0 :UInt64;     # bytes of BAR 0; 4096 .. 65536 (QEMU's QXL uses 8192)
  ramSize @1 :UInt64;     # bytes of BAR 1; 65536 .. 1 GiB (QEMU's default is 64 MiB)
  vramSize @2 :UInt64;    # bytes of BAR 2; 4096 .. 1 GiB (QEMU's default is 64 MiB)
  ramPhysStart @3 :UInt64;  # guest physical address where the guest's PCI config put BAR 1;
                            # page aligned, ramPhysStart + ramSize must not wrap 64 bits
  vramPhysStart @4 :UInt64; # same for BAR 2; [vramPhysStart, +vramSize) must not overlap the RAM
                            # range. QXL_IO_MEMSLOT_ADD ranges are checked against these two
                            # ranges: a memslot lies wholly inside one of them.
}

# A guest write to the QXL IO BAR, forwarded by the VMM (QEMU's qxl ioport_write). The guest
# chooses the port and the value: a port that is not a QXL_IO_* of spice/qxl_dev.h is counted
# and ignored, as a real device ignores it; it does not end the link.
struct IoWrite {
  port @0 :UInt8;         # offset into the IO BAR: a QXL_IO_* value, 0 .. QXL_IO_RANGE_SIZE-1 (24)
  value @1 :UInt8;        # the byte the guest wrote (QXL IO accesses are one byte wide)
  async @2 :Bool;         # true: the VMM waits for an `ioComplete` with this port, sent once the
                          # operation is done (the QXL_IO_*_ASYNC ports; a VMM may set it on any
                          # port it wants to wait on). false: no answer is sent.
}

# Answer to an `ioWrite` with async = true. Exactly one per such write, in the order of the writes.
struct IoComplete {
  port @0 :UInt8;         # the port of the write being completed, 0 .. QXL_IO_RANGE_SIZE-1
}

# An input event for the guest, from a SPICE client (validated by the netproxy and the broker
# before it gets here). The VMM injects it into its emulated keyboard and mouse / tablet.
struct InputEvent {
  union {
    keyDown @0 :UInt32;   # PC XT (set 1) make code as SPICE_MSGC_INPUTS_KEY_DOWN carries it:
                          # 0x01 .. 0x7f, or 0xe0 | code << 8 for extended keys (0x01e0 .. 0x7fe0)
    keyUp @1 :UInt32;     # same encoding as keyDown, the key's make code (not the break code)
    mouseMotion @2 :MouseMotion;       # relative motion (PS/2 mouse)
    mousePosition @3 :MousePosition;   # absolute position (tablet, client mouse mode)
    mouseButton @4 :MouseButton;       # a button pressed or released
  }
}

struct MouseMotion {
  dx @0 :Int32;           # pixels, positive to the right; -4096 .. 4096 per event
  dy @1 :Int32;           # pixels, positive downwards; -4096 .. 4096 per event
  buttons @2 :UInt32;     # buttons held: SPICE_MOUSE_BUTTON_MASK_* bits (spice/enums.h), < 0x80
}

struct MousePosition {
  x @0 :UInt32;           # pixels from the left edge of the display; < that display's width
  y @1 :UInt32;           # pixels from the top edge; < that display's height
  displayId @2 :UInt8;    # which display (monitor) the position is on; < the monitor count (<= 16)
  buttons @3 :UInt32;     # buttons held: SPICE_MOUSE_BUTTON_MASK_* bits, < 0x80
}

struct MouseButton {
  button @0 :UInt8;       # SPICE_MOUSE_BUTTON_* (spice/enums.h): 1 left .. 7 extra (4/5 wheel)
  pressed @1 :Bool;       # true: press; false: release
  buttons @2 :UInt32;     # buttons held after this event: SPICE_MOUSE_BUTTON_MASK_* bits, < 0x80
}

# VMM -> broker.
struct VmmToBroker {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors. Version must equal protocolVersion
    pong @1 :Common.Heartbeat;    # answer to the broker's ping; no descriptors
    link @2 :Link;                # second message, once; six descriptors (see Link)
    ioWrite @3 :IoWrite;          # after link; no descriptors
  }
}

# Broker -> VMM.
struct BrokerToVmm {
  union {
    hello @0 :Common.Hello;       # answer to the VMM's hello; no descriptors
    ping @1 :Common.Heartbeat;    # link liveness; no descriptors (not sent yet)
    ioComplete @2 :IoComplete;    # after an async ioWrite; no descriptors
    input @3 :InputEvent;         # after link; no descriptors (not produced yet)
  }
}
