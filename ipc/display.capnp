@0xefbf9176c6f6f179;
# The broker-netproxy boundary. The netproxy parses network bytes and is assumed compromised
# when the broker reads what it sends (broker/peer-netproxy.cpp). It never receives guest memory:
# only the display segments (read-only descriptors), the renderer's damage and hints, the
# renderer's sanitised cursor, and its configuration (including the password, never on a command
# line).
#
# Order: hello; then `configure` once, with the listening sockets; then any number of
# `displaySegment`, `noDisplay`, `frame` and `cursor`. On every netproxy (re)start the broker sends
# `configure` again with the same listening sockets (it keeps them), then the current display
# segment, then the current cursor.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::display");
using Common = import "common.capnp";
using Render = import "render.capnp";
using Vmm = import "vmm.capnp";

const protocolVersion :UInt32 = 4;

# Most listening sockets one `configure` carries (one descriptor each, ipc::MAX_FDS_PER_MESSAGE).
const maxListeners :UInt32 = 4;

enum ListenerKind {
  tcp @0;     # AF_INET / AF_INET6 stream socket, listening
  unix @1;    # AF_UNIX stream socket, listening (local viewers; SO_PEERCRED is meaningful)
}

struct Listener {
  kind @0 :ListenerKind;
  name @1 :Text;              # for logs: "127.0.0.1:5900", "/run/spicebox/vm1.sock"; <= 256 bytes
}

# SPICE image compression, as QEMU's -spice image-compression names it (glz and quic are not
# built: auto_glz and quic are refused by the broker's option parser).
enum ImageCompression {
  autoLz @0;   # per client and per image: LZ4 when the client has the capability, else LZ_RGB,
               # whichever is smaller than the raw bitmap; raw when neither is
  off @1;      # raw 32 bpp bitmaps only
  lz @2;       # LZ_RGB for every image (raw if the encoder cannot shrink it)
  lz4 @3;      # LZ4 for clients with the capability, LZ_RGB for the others
}

enum MouseMode {
  client @0;   # absolute positions (a tablet): SPICE_MOUSE_MODE_CLIENT
  server @1;   # relative motion (a PS/2 mouse): SPICE_MOUSE_MODE_SERVER
}

struct Configure {
  listeners @0 :List(Listener);     # 1 .. maxListeners; the same number of descriptors, in order
  union {
    disableTicketing @1 :Void;      # any ticket (or none) is accepted
    password @2 :Text;              # 1 .. 60 bytes (SPICE_MAX_PASSWORD_LENGTH); the ticket must
                                    # decrypt to exactly this
  }
  passwordExpiresAt @3 :Int64;      # unix time (seconds) after which no ticket is accepted;
                                    # 0: never
  maxClients @4 :UInt32;            # sessions (main channels) at once, 1 .. 1024
  imageCompression @5 :ImageCompression;
  mouseMode @6 :MouseMode;          # the initial mode; a client may ask for the other
  shmUids @7 :List(UInt32);         # peers (SO_PEERCRED uid) of unix-socket connections offered
                                    # the shared-memory display (SHM_OFFER); 0 .. maxShmUids;
                                    # empty: offered to nobody
}

const maxShmUids :UInt32 = 16;

# The display: a segment (render.capnp DisplaySegment, one read-only descriptor attached) and
# which of its buffers holds the picture now.
struct ShownSegment {
  segment @0 :Render.DisplaySegment;
  buffer @1 :UInt8;                 # 0 or 1 (1 only when segment.backOffset != 0)
}

# A rendered batch's output for the display of segment `generation` (render.capnp BatchDone's
# damage and hints, checked by the broker against that primary). Same replay invariant.
struct Frame {
  generation @0 :UInt64;            # the segment it applies to; a frame for another is ignored
  damage @1 :List(Render.Rect);     # 0 .. Render.maxDamageRects
  hints @2 :List(Render.Hint);      # 0 .. Render.maxHints
  buffer @3 :UInt8;                 # the segment's buffer holding the picture after this frame
}

# What clients are connected (for the broker's status line). Counts only; the broker trusts none
# of it for anything but display.
struct Clients {
  sessions @0 :UInt32;              # linked main channels
  connections @1 :UInt32;           # open sockets, linked or not
  refused @2 :UInt64;               # connections ended by the netproxy since it started
  shm @3 :UInt32;                   # display channels in shared-memory mode
  tearFree @4 :UInt32;              # of those, tear-free ones
}

# Broker -> netproxy.
struct BrokerToNetproxy {
  union {
    hello @0 :Common.Hello;                   # first message; no descriptors
    ping @1 :Common.Heartbeat;                # no descriptors
    configure @2 :Configure;                  # once, after hello; one descriptor per listener
    displaySegment @3 :ShownSegment;          # a new primary: one descriptor, read-only (O_RDONLY)
    noDisplay @4 :Void;                       # the primary is gone; no descriptors
    frame @5 :Frame;                          # no descriptors
    cursor @6 :Render.Cursor;                 # no descriptors; checked by the broker
    sync @7 :UInt64;                          # answer `synced` with this value once everything
                                              # sent before has been taken in (the segment's
                                              # pixels copied) and every tear-free viewer has
                                              # acknowledged the last frame (or timed out): the
                                              # renderer waits for it
  }
}

# Netproxy -> broker. Permitted: `hello` once, first; then `pong`, `input`, `clients`, and
# `synced` (only for the one `sync` outstanding). Every
# `input` is checked against vmm.capnp's ranges (broker/peer-netproxy.cpp) before it is forwarded
# to the VMM; anything else ends the netproxy.
struct NetproxyToBroker {
  union {
    hello @0 :Common.ChildHello;  # no descriptors
    pong @1 :Common.Heartbeat;    # no descriptors
    input @2 :Vmm.InputEvent;     # a client's input, in the order the clients sent them
    clients @3 :Clients;          # after each change
    synced @4 :UInt64;            # answer to `sync`, with its value; only then
  }
}
