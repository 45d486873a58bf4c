// Runs in: broker. Input: messages from a child process (renderer or netproxy), which is assumed
// compromised. The part of each child boundary that every child shares: the versioned hello and
// the heartbeat. What a child may send depends on its state (OpenSSH's permit table); anything
// else is fatal for the child, which the broker then kills and restarts.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "ipc/channel.h"
#include "ipc/common.capnp.h"
#include "sandbox/sandbox.h"

namespace spicebox::broker {

// What a child told the broker in its hello, checked.
struct ChildHelloInfo {
  sandbox::Level sandboxLevel = sandbox::Level::Off;
  std::vector<std::string> sandboxMissing;
};

// Longest text and most entries accepted in ChildHello.sandboxMissing (see common.capnp).
inline constexpr size_t MAX_SANDBOX_MISSING_ENTRIES = 16;
inline constexpr size_t MAX_SANDBOX_MISSING_TEXT = 128;

// render.capnp batchDone, decoded (the seq check against the batches in flight is the owner's;
// so is the check that every rectangle lies inside the primary: peer-renderer.h checkOutput).
struct RendererRect {
  int32_t top = 0, left = 0, bottom = 0, right = 0;
  bool operator==(const RendererRect&) const = default;
};
struct RendererSolidFill {
  uint32_t color = 0;
  std::vector<RendererRect> rects;
};
struct RendererCopyBits {
  int32_t srcX = 0, srcY = 0;
  RendererRect dest;
};
using RendererHint = std::variant<RendererSolidFill, RendererCopyBits>;
// render.capnp Cursor, checked (sizes against maxCursorDimension, pixels exactly width*height*4).
struct RendererCursor {
  bool visible = false;
  int16_t x = 0, y = 0;
  uint64_t shapeSerial = 0;
  uint16_t width = 0, height = 0, hotSpotX = 0, hotSpotY = 0;
  std::vector<uint32_t> pixels;  // ARGB32, width * height
  bool operator==(const RendererCursor&) const = default;
};
struct RendererBatchDone {
  uint64_t seq = 0;
  uint32_t rejected = 0;
  std::vector<RendererRect> damage;      // render.capnp BatchDone.damage, in primary coordinates
  std::vector<RendererHint> hints;       // BatchDone.hints, in draw order
  std::optional<RendererCursor> cursor;  // BatchDone.cursor, when the batch changed the pointer
  uint8_t buffer = 0;  // BatchDone.buffer: 0 or 1 (checked against the segment by the owner)
};

// display.capnp NetproxyToBroker.input, checked against vmm.capnp InputEvent's ranges.
struct NetproxyKey {
  uint32_t scancode = 0;
  bool down = false;
};
struct NetproxyMouseMotion {
  int32_t dx = 0, dy = 0;
  uint32_t buttons = 0;
};
struct NetproxyMousePosition {
  uint32_t x = 0, y = 0;
  uint8_t displayId = 0;
  uint32_t buttons = 0;
};
struct NetproxyMouseButton {
  uint8_t button = 0;
  bool pressed = false;
  uint32_t buttons = 0;
};
using NetproxyInput =
    std::variant<NetproxyKey, NetproxyMouseMotion, NetproxyMousePosition, NetproxyMouseButton>;
// display.capnp Clients (counts only, for the status line).
struct NetproxyClients {
  uint32_t sessions = 0, connections = 0;
  uint64_t refused = 0;
  uint32_t shm = 0, tearFree = 0;  // display channels in shared-memory (tear-free) mode
};

// display.capnp synced: the netproxy took in everything before the `sync` of this value.
struct NetproxySynced {
  uint64_t seq = 0;
};

// A boundary message beyond hello and heartbeat, decoded and range-checked by the peer, for the
// Child's owner to act on. One alternative per message type of each boundary.
using BoundaryMessage =
    std::variant<RendererBatchDone, NetproxyInput, NetproxyClients, NetproxySynced>;

// The boundary-specific half: one implementation per schema (peer-renderer.cpp,
// peer-netproxy.cpp). It builds the broker's messages and decodes the child's into the events
// below; the supervisor (children.h) owns the state and the permit table.
class ChildPeer {
 public:
  // A child message, decoded and range-checked, or the reason it is refused.
  struct Decoded {
    enum class Kind { Hello, Pong, Boundary, Refused } kind = Kind::Refused;
    ChildHelloInfo hello;      // Kind::Hello
    uint64_t seq = 0;          // Kind::Pong
    BoundaryMessage boundary;  // Kind::Boundary: permitted only after hello (children.cpp)
    std::string refusal;       // Kind::Refused
  };

  virtual ~ChildPeer() = default;
  virtual const char* name() const = 0;  // "renderer", "netproxy": also the binary's suffix
  virtual bool sendHello(ipc::Channel& channel) = 0;
  virtual bool sendPing(ipc::Channel& channel, uint64_t seq) = 0;
  virtual Decoded decode(capnp::MessageReader& message, ipc::ReceivedFds& fds) = 0;
};

// Checks a ChildHello common to every boundary: version and sandbox report.
ChildPeer::Decoded decodeChildHello(ipc::ChildHello::Reader hello, uint32_t expectedVersion);

}  // namespace spicebox::broker

namespace spicebox::broker {

// The shared hello/heartbeat for a boundary whose schemas have the union members `hello` and
// `ping` (broker to child) and `hello` and `pong` (child to broker). ToChild / FromChild are the
// generated struct types; `Version` is the schema's protocolVersion constant.
template <typename ToChild, typename FromChild, uint32_t Version>
class HeartbeatPeer : public ChildPeer {
 public:
  explicit HeartbeatPeer(const char* name) : name_(name) {}
  const char* name() const override { return name_; }

  bool sendHello(ipc::Channel& channel) override {
    capnp::MallocMessageBuilder message;
    message.initRoot<ToChild>().initHello().setProtocolVersion(Version);
    return channel.send(message);
  }

  bool sendPing(ipc::Channel& channel, uint64_t seq) override {
    capnp::MallocMessageBuilder message;
    message.initRoot<ToChild>().initPing().setSeq(seq);
    return channel.send(message);
  }

  Decoded decode(capnp::MessageReader& message, ipc::ReceivedFds& fds) override {
    // No message of this boundary carries descriptors yet: any attached are left untaken, and the
    // channel refuses the message for it.
    auto root = message.getRoot<FromChild>();
    switch (root.which()) {
      case FromChild::HELLO:
        return decodeChildHello(root.getHello(), Version);
      case FromChild::PONG: {
        Decoded d;
        d.kind = Decoded::Kind::Pong;
        d.seq = root.getPong().getSeq();
        return d;
      }
      default:
        break;  // a boundary message: decodeBoundary()
    }
    return decodeBoundary(root, fds);
  }

 protected:
  // The boundary's own messages (everything but hello and pong). Default: none are known.
  virtual Decoded decodeBoundary(typename FromChild::Reader root, ipc::ReceivedFds&) {
    Decoded d;
    d.refusal = "unknown message type " + std::to_string(static_cast<unsigned>(root.which()));
    return d;
  }

 private:
  const char* name_;
};

}  // namespace spicebox::broker
