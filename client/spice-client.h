// Runs in: SPICE clients (spicebox's tests now, a viewer library later). Input: everything a SPICE
// server sends, untrusted: message sizes are capped before allocation, every field is read
// through a bounds-checked Reader, geometry is clipped by Canvas, images are decoded by the
// hostile-safe decoders of client/image-decode.h. A malformed message closes that channel with
// an error saying what was wrong; nothing a server sends can crash the client.
//
// Blocking by design, with a bound on every wait: each call that waits takes a deadline and
// returns an error naming what did not happen in time, so a test never hangs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"
#include "client/canvas.h"
#include "client/wire.h"

namespace spicebox::client {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
// An error, or nothing: what a failed step says went wrong.
using Error = std::optional<std::string>;

// Where a server listens: "HOST:PORT" or "tcp:HOST:PORT" ("[::1]:5900" for IPv6), or
// "unix:PATH".
struct Target {
  enum class Kind { Tcp, Unix } kind = Kind::Tcp;
  std::string host;
  uint16_t port = 0;
  std::string path;

  static std::variant<Target, std::string> parse(const std::string& text);
  std::string describe() const;
};

// A connected stream socket, non-blocking underneath; every wait is bounded by a deadline.
class Socket {
 public:
  static std::variant<Socket, std::string> connect(const Target& target, Deadline deadline);
  explicit Socket(base::Fd fd) : fd_(std::move(fd)) {}

  int fd() const { return fd_.get(); }
  // Sends all of `data`, waiting while the socket is full.
  Error sendAll(std::span<const uint8_t> data, Deadline deadline);
  // Reads exactly `n` bytes.
  std::variant<Bytes, std::string> readExact(size_t n, Deadline deadline);
  // Reads what is available without waiting (up to `max` bytes); empty when nothing is there.
  // An error for EOF or a socket error.
  std::variant<Bytes, std::string> readAvailable(size_t max);

  enum class Closed { Eof, Reset, Timeout };
  // Waits for the server to close: discards what it sends until EOF or a reset, or the deadline.
  Closed awaitClose(Deadline deadline);

 private:
  base::Fd fd_;
};

// Largest message body accepted from a server: an uncompressed 32 bpp image of 4096 x 4096 plus
// its headers. Anything larger closes the channel before any allocation.
constexpr uint32_t MAX_MESSAGE_SIZE = 64 * 1024 * 1024 + 4096;

struct LinkOptions {
  uint32_t connectionId = 0;
  uint8_t channelType = 0;
  uint8_t channelId = 0;
  std::vector<uint32_t> channelCaps;
  // nullopt: the server has ticketing disabled (an empty ticket is still sent, as spice-gtk does).
  std::optional<std::string> password;
};

// The link stage on a connected socket: link message, reply, auth mechanism, ticket, result.
// The error names the step and, for a refused link, the SPICE_LINK_ERR_* value.
Error linkChannel(Socket& socket, const LinkOptions& options, Deadline deadline,
                  LinkReply* replyOut = nullptr);

// NOTIFY messages a channel keeps, and the longest text kept of each.
constexpr size_t MAX_NOTICES = 16;
constexpr size_t MAX_NOTICE_BYTES = 1024;

struct ChannelCounters {
  uint64_t messages = 0;  // every message received
  uint64_t bytes = 0;     // bodies and headers
  uint64_t acksSent = 0;
  uint64_t pings = 0;
};

// One linked SPICE channel with mini headers: framing, SET_ACK/ACK, PING/PONG, NOTIFY. Subclasses
// handle their channel's messages.
class Channel {
 public:
  Channel(Socket socket, uint8_t type);
  virtual ~Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  uint8_t type() const { return type_; }
  int fd() const { return socket_.fd(); }
  Socket& socket() { return socket_; }
  const ChannelCounters& counters() const { return counters_; }
  // Why the channel stopped (server closed, malformed message), or nullopt while it works.
  const Error& error() const { return error_; }
  bool open() const { return !error_; }
  // NOTIFY texts the server sent (at most MAX_NOTICES kept), e.g. why it refuses a client.
  const std::vector<std::string>& notices() const { return notices_; }
  bool disconnectingReceived() const { return disconnecting_; }

  Error send(uint16_t type, std::span<const uint8_t> body, Deadline deadline);
  // Reads what the socket has and handles every complete message, without waiting. Returns the
  // channel's error once it has one.
  Error processAvailable();

 protected:
  // A message of this channel's own range (>= 101); an error closes the channel.
  virtual Error handle(uint16_t type, std::span<const uint8_t> body) = 0;
  void fail(std::string why);

 private:
  Error handleBase(uint16_t type, std::span<const uint8_t> body, bool* handled);

  Socket socket_;
  uint8_t type_;
  Bytes input_;  // bytes of incomplete messages
  ChannelCounters counters_;
  Error error_;
  std::vector<std::string> notices_;
  bool disconnecting_ = false;
  uint32_t ackWindow_ = 0;  // 0: no SET_ACK yet, no ACKs owed
  uint32_t sinceAck_ = 0;
};

struct ChannelId {
  uint8_t type = 0, id = 0;
};

class MainChannel : public Channel {
 public:
  using Channel::Channel;
  // Session id from MAIN_INIT (nullopt before it).
  std::optional<uint32_t> sessionId() const { return sessionId_; }
  const std::optional<std::vector<ChannelId>>& channels() const { return channels_; }
  uint32_t currentMouseMode() const { return mouseMode_; }

 protected:
  Error handle(uint16_t type, std::span<const uint8_t> body) override;

 private:
  std::optional<uint32_t> sessionId_;
  std::optional<std::vector<ChannelId>> channels_;
  uint32_t mouseMode_ = 0;
};

struct DisplayCounters {
  uint64_t fills = 0, copyBits = 0, copies = 0;  // draws applied
  uint64_t marks = 0, resets = 0;
  uint64_t surfaceCreates = 0, surfaceDestroys = 0;
  uint64_t cacheHits = 0, cacheInserts = 0, invalidations = 0;
  uint64_t bitmaps = 0, lzRgb = 0, lz4 = 0;  // images by encoding
  uint64_t ignored = 0;  // messages of types this client does not draw (streams, other draws)
  // Draws this client cannot reproduce (a ROP other than OP_PUT, a mask, a pattern brush):
  // counted, not drawn, so its picture is then known to be incomplete.
  uint64_t unsupported = 0;
  uint16_t lastUnsupportedRop = 0;
  uint64_t draws() const { return fills + copyBits + copies; }
};

// Pixmap cache the client announces in DISPLAY_INIT, in pixels (spice-gtk announces 80 MiB of
// 32-bit pixels; the server must not make the client hold more).
constexpr int64_t PIXMAP_CACHE_PIXELS = 20 * 1024 * 1024;
// Surfaces a server may create at once.
constexpr size_t MAX_SURFACES = 1024;

class DisplayChannel : public Channel {
 public:
  using Channel::Channel;
  // Sends DISPLAY_INIT (pixmap cache id 1, PIXMAP_CACHE_PIXELS, no GLZ dictionary).
  Error sendInit(Deadline deadline);

  const DisplayCounters& display() const { return display_; }
  // The primary surface (flag PRIMARY in SURFACE_CREATE), or null.
  const Canvas* primary() const;

 protected:
  Error handle(uint16_t type, std::span<const uint8_t> body) override;

 private:
  struct Base {
    uint32_t surfaceId = 0;
    Rect box;
    std::vector<Rect> clip;
  };
  struct Image {
    uint32_t width = 0, height = 0;
    std::shared_ptr<const std::vector<uint32_t>> pixels;
  };
  std::variant<Base, std::string> readBase(Reader& r);
  std::variant<Image, std::string> readImage(std::span<const uint8_t> body, uint32_t offset);
  Canvas* surface(uint32_t id);

  Error surfaceCreate(std::span<const uint8_t> body);
  Error drawFill(std::span<const uint8_t> body);
  Error drawCopy(std::span<const uint8_t> body);
  Error copyBits(std::span<const uint8_t> body);
  Error invalList(std::span<const uint8_t> body);

  DisplayCounters display_;
  std::map<uint32_t, Canvas> surfaces_;
  std::optional<uint32_t> primaryId_;
  std::map<uint64_t, Image> cache_;
  int64_t cachedPixels_ = 0;
};

class InputsChannel : public Channel {
 public:
  using Channel::Channel;
  // PC AT scancodes as SPICE sends them: the make code, with 0xe0 in the low byte and the code
  // in the next one for extended keys. keyUp sends the break code (make | 0x80).
  Error keyDown(uint32_t scancode, Deadline deadline);
  Error keyUp(uint32_t scancode, Deadline deadline);
  Error mousePosition(uint32_t x, uint32_t y, uint16_t buttons, uint8_t displayId,
                      Deadline deadline);
  Error mouseMotion(int32_t dx, int32_t dy, uint16_t buttons, Deadline deadline);
  // button: SPICE_MOUSE_BUTTON_* (1 left, 2 middle, 3 right, ...); buttons: the state after.
  Error mousePress(uint8_t button, uint16_t buttons, Deadline deadline);
  Error mouseRelease(uint8_t button, uint16_t buttons, Deadline deadline);

  bool initReceived() const { return initReceived_; }

 protected:
  Error handle(uint16_t type, std::span<const uint8_t> body) override;

 private:
  bool initReceived_ = false;
};

// Waits until `done()` holds, handling every message that arrives on `channels` meanwhile. An
// error when the deadline passes first (naming `what`) or a channel fails.
Error pumpUntil(std::span<Channel* const> channels, const std::function<bool()>& done,
                Deadline deadline, const std::string& what);

struct SessionOptions {
  Target target;
  std::optional<std::string> password;       // nullopt: ticketing disabled
  bool lz4 = true;                           // advertise SPICE_DISPLAY_CAP_LZ4_COMPRESSION
  std::chrono::milliseconds timeout{10000};  // each step of connect()
};

// A client session: the main channel linked, MAIN_INIT and CHANNELS_LIST received; display and
// inputs channels opened on request with the session id.
class Session {
 public:
  static std::variant<std::unique_ptr<Session>, std::string> connect(const SessionOptions& options);

  MainChannel& main() { return *main_; }
  uint32_t sessionId() const { return *main_->sessionId(); }
  // Links the display channel and sends DISPLAY_INIT.
  std::variant<DisplayChannel*, std::string> openDisplay();
  std::variant<InputsChannel*, std::string> openInputs();
  DisplayChannel* display() { return display_.get(); }
  InputsChannel* inputs() { return inputs_.get(); }
  // Every open channel, for pumpUntil.
  std::vector<Channel*> channels();

 private:
  explicit Session(SessionOptions options) : options_(std::move(options)) {}
  std::variant<Socket, std::string> link(uint8_t type, std::vector<uint32_t> caps);
  Deadline stepDeadline() const { return Clock::now() + options_.timeout; }

  SessionOptions options_;
  std::unique_ptr<MainChannel> main_;
  std::unique_ptr<DisplayChannel> display_;
  std::unique_ptr<InputsChannel> inputs_;
};

}  // namespace spicebox::client
