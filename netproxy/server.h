// Runs in: netproxy (sandboxed). Input: SPICE clients' bytes (hostile, from the network); the
// broker's configuration, display segments, frames and cursor (trusted, but range-checked).
//
// The SPICE server: accepts clients on the listening sockets the broker opened, runs the link
// stage (ticket, session ids) and the main, display, cursor and inputs channels, sends each client
// the display segment's picture and then every frame's hints and damage, and hands the clients'
// input events to the broker. Knows nothing of capnp: netproxy/main.cpp translates.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"

namespace spicebox::netproxy {

struct Rect {
  int32_t top = 0, left = 0, bottom = 0, right = 0;
  bool operator==(const Rect&) const = default;
};

// A frame's hints (render.capnp Hint): replayed by a client on its copy of the picture.
struct SolidFill {
  uint32_t color = 0;  // x8r8g8b8 as stored in the segment
  std::vector<Rect> rects;
};
struct CopyBits {
  int32_t srcX = 0, srcY = 0;
  Rect dest;
};
using Hint = std::variant<SolidFill, CopyBits>;

enum class ListenerKind { Tcp, Unix };
struct Listener {
  base::Fd fd;  // listening stream socket, made by the broker
  ListenerKind kind = ListenerKind::Tcp;
  std::string name;  // for logs
};

enum class ImageCompression { AutoLz, Off, Lz, Lz4 };
enum class MouseMode { Client, Server };

struct Settings {
  std::optional<std::string> password;  // nullopt: ticketing disabled
  int64_t passwordExpiresAt = 0;        // unix seconds; 0: never
  uint32_t maxClients = 16;             // linked sessions at once
  ImageCompression imageCompression = ImageCompression::AutoLz;
  MouseMode mouseMode = MouseMode::Client;
  // Unix-socket peers (SO_PEERCRED uid) offered the shared-memory display; empty: nobody.
  std::vector<uint32_t> shmUids;
};

// The primary's pixels: a read-only descriptor, x8r8g8b8, top row first, in one or two buffers
// (render.capnp DisplaySegment: the picture alternates between them; each frame names its buffer).
struct DisplayLayout {
  uint64_t generation = 0;
  uint64_t size = 0;    // bytes of the descriptor
  uint64_t offset = 0;  // top row of buffer 0
  uint32_t stride = 0;  // width * 4
  uint32_t width = 0, height = 0;
  uint64_t backOffset = 0;  // top row of buffer 1; 0: one buffer
};

struct CursorState {
  bool visible = false;
  int16_t x = 0, y = 0;
  uint64_t shapeSerial = 0;  // 0: no shape
  uint16_t width = 0, height = 0, hotSpotX = 0, hotSpotY = 0;
  std::vector<uint32_t> pixels;  // ARGB32 straight alpha, width * height
};

// A client's input, validated (ranges of ipc/vmm.capnp InputEvent).
struct KeyEvent {
  uint32_t scancode = 0;
  bool down = false;
};
struct MouseMotion {
  int32_t dx = 0, dy = 0;
  uint32_t buttons = 0;
};
struct MousePosition {
  uint32_t x = 0, y = 0;
  uint8_t displayId = 0;
  uint32_t buttons = 0;
};
struct MouseButton {
  uint8_t button = 0;
  bool pressed = false;
  uint32_t buttons = 0;
};
using InputEvent = std::variant<KeyEvent, MouseMotion, MousePosition, MouseButton>;

struct ClientCounts {
  uint32_t sessions = 0, connections = 0;
  uint64_t refused = 0;
  uint32_t shm = 0, tearFree = 0;  // display channels in shared-memory (and tear-free) mode
  bool operator==(const ClientCounts&) const = default;
};

class Server {
 public:
  struct Events {
    std::function<void(const InputEvent&)> onInput;
    std::function<void(const ClientCounts&)> onClients;
  };

  // Work that needs what the sandbox forbids, done once per process before it is entered (the
  // ticket's RSA key pair, OpenSSL's initialisation and random seeding).
  static void prepare();

  Server(uv_loop_t* loop, Events events);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Once: starts accepting on `listeners`. Returns an error (the settings or a descriptor are
  // unusable) instead of starting.
  std::optional<std::string> configure(Settings settings, std::vector<Listener> listeners);

  // A new primary: maps `segment` read-only (after checking it is at least layout.size bytes
  // and the layout fits), and sends every display client the new surface and its whole picture
  // (the picture is in `buffer`). Shared-memory clients get the descriptor itself (SHM_OFFER).
  // Returns an error when the segment is unusable (the previous display is then gone too).
  std::optional<std::string> setDisplay(base::Fd segment, const DisplayLayout& layout,
                                        uint8_t buffer = 0);
  // The primary is gone: clients get a surface destroy.
  void dropDisplay();
  // A rendered batch: hints then damage (render.capnp's replay invariant), for the display of
  // `generation` (ignored for any other).
  // The picture is now in `buffer`.
  void frame(uint64_t generation, uint8_t buffer, std::span<const Hint> hints,
             std::span<const Rect> damage);
  // Calls `done` once the renderer may draw again: every tear-free shared-memory client has
  // acknowledged the last frame it was sent (SHM_DAMAGE_HANDLED), or missed TEAR_FREE_ACK_MS
  // (it then loses tear-free mode, logged). At once when no client is waiting.
  void sync(std::function<void()> done);
  void setCursor(const CursorState& cursor);

  ClientCounts counts() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spicebox::netproxy
