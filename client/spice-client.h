// Runs in: SPICE clients (spicebox's tests, spicebox-view, spicebox-latency). Input: everything a
// SPICE server sends, untrusted: message sizes are capped before allocation, every field is read
// through a bounds-checked Reader, geometry is clipped by Canvas, images are decoded by the
// hostile-safe decoders of client/image-decode.h. A malformed message closes that channel with
// an error saying what was wrong; nothing a server sends can crash the client.
//
// Blocking by design, with a bound on every wait: each call that waits takes a deadline and
// returns an error naming what did not happen in time, so a test never hangs.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
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
#include "client/shm-segment.h"
#include "client/socket.h"
#include "client/wire.h"

namespace spicebox::client {

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
  uint64_t fds = 0;  // descriptors received (SCM_RIGHTS)
};

// One linked SPICE channel with mini headers: framing, SET_ACK/ACK, PING/PONG, NOTIFY. Subclasses
// handle their channel's messages.
//
// Descriptors: the socket is read with recvmsg, and each descriptor a server passes is kept in
// arrival order with the stream bytes its read brought, until the message it came with takes it
// (takeDescriptor). A message carries at most one; a read that brings two, more than
// MAX_PENDING_FDS waiting, or one left untaken by the message it came with is a protocol error
// that closes the channel (and every waiting descriptor).
class Channel {
 public:
  // Descriptors received and not yet taken by their message.
  static constexpr size_t MAX_PENDING_FDS = 4;

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
  // Inside handle(): the descriptor passed with the message being handled (with a read that
  // brought its first byte), or an empty Fd when none came with it.
  base::Fd takeDescriptor();

 private:
  struct PendingFd {
    base::Fd fd;
    uint64_t first = 0, end = 0;  // stream offsets of the bytes its read brought: [first, end)
  };

  Error handleBase(uint16_t type, std::span<const uint8_t> body, bool* handled);

  Socket socket_;
  uint8_t type_;
  Bytes input_;                // bytes of incomplete messages
  uint64_t inputOffset_ = 0;   // stream offset of input_[0]
  uint64_t messageStart_ = 0;  // stream offset of the message being handled
  std::deque<PendingFd> fds_;
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
  uint64_t undecodedImages = 0;  // QUIC, GLZ, JPEG, palette images: not decoded, not drawn
  uint64_t ignored = 0;  // messages of types this client does not draw (streams, other draws)
  // Draws this client cannot reproduce (a ROP other than OP_PUT, a mask, a pattern brush, a
  // scaled copy, an undecoded image, OPAQUE, BLEND, ROP3, TRANSPARENT, ALPHA_BLEND, COMPOSITE):
  // counted, not drawn, so its picture is then known to be incomplete.
  uint64_t unsupported = 0;
  uint16_t lastUnsupportedRop = 0;
  uint64_t draws() const { return fills + copyBits + copies; }
};

// What a client asks of spicebox's shared-memory display extension (base/shm-protocol.h).
enum class ShmWish {
  Off,       // not advertised: ordinary SPICE display
  Accept,    // CAP_SHARED_MEMORY advertised; an offer is accepted when its segment is usable
  Reject,    // CAP_SHARED_MEMORY advertised; every offer is answered accepted=0
  TearFree,  // CAP_SHARED_MEMORY and CAP_TEAR_FREE advertised; accepted, and when the offer
             // has OFFER_TEAR_FREE each SHM_DAMAGE is acknowledged with DAMAGE_HANDLED
};
// The display channel capabilities a wish advertises, added to `caps`.
void addShmCaps(std::vector<uint32_t>& caps, ShmWish wish);

struct ShmCounters {
  uint64_t offers = 0;          // SHM_OFFERs received
  uint64_t refused = 0;         // offers answered accepted=0 (the wish, or an unusable segment)
  uint64_t segments = 0;        // segments mapped
  uint64_t surfaces = 0;        // SURFACE_CREATE_SHM
  uint64_t frames = 0;          // SHM_DAMAGE applied
  uint64_t rects = 0;           // damage rectangles copied (clipped, non-empty)
  uint64_t bytesCopied = 0;     // pixel bytes copied out of the segment
  uint64_t acksSent = 0;        // DAMAGE_HANDLED
  uint64_t maxDamageRects = 0;  // the largest count of one SHM_DAMAGE
};

// Pixmap cache the client announces in DISPLAY_INIT, in pixels (spice-gtk announces 80 MiB of
// 32-bit pixels; the server must not make the client hold more).
constexpr int64_t PIXMAP_CACHE_PIXELS = 20 * 1024 * 1024;
// Surfaces a server may create at once, and their pixels in all: 512 MiB of 32-bit pixels, room
// for the largest primary (MAX_SURFACE_SIDE squared, 256 MiB) and as much again of offscreen
// surfaces; the bound keeps a hostile server from making the client allocate without end.
constexpr size_t MAX_SURFACES = 1024;
constexpr uint64_t MAX_SURFACE_PIXELS = uint64_t{128} * 1024 * 1024;

class DisplayChannel : public Channel {
 public:
  using Channel::Channel;
  // Sends DISPLAY_INIT (pixmap cache id 1, PIXMAP_CACHE_PIXELS, no GLZ dictionary).
  Error sendInit(Deadline deadline);

  const DisplayCounters& display() const { return display_; }
  // The primary surface (flag PRIMARY in SURFACE_CREATE or SURFACE_CREATE_SHM), or null. In
  // shared-memory mode the client's own copy: each SHM_DAMAGE copies its rectangles into it.
  const Canvas* primary() const;

  // The parts of primary() that changed since the last call (clipped to it; a new primary is
  // damaged whole), for a viewer that updates only those. At most MAX_PENDING_DAMAGE
  // rectangles: more are merged into their bounding rectangle.
  std::vector<Rect> takeDamage();
  static constexpr size_t MAX_PENDING_DAMAGE = 64;

  // ---- shared-memory display extension (display-shm.cpp) ----
  // How to answer SHM_OFFER; set before the server can send one (Session does it before
  // DISPLAY_INIT). The capabilities themselves are chosen at link time (addShmCaps).
  void setShmWish(ShmWish wish) { shmWish_ = wish; }
  // Whether the client answered accepted=1 (the server now sends SURFACE_CREATE_SHM and
  // SHM_DAMAGE only), and whether frames are acknowledged (both sides asked for tear-free).
  bool shmActive() const { return shmActive_; }
  bool tearFree() const { return tearFree_; }
  const ShmCounters& shm() const { return shm_; }
  // Why the last offer was answered accepted=0 (the wish, or what was wrong with the segment).
  const std::optional<std::string>& shmRefusal() const { return shmRefusal_; }
  // The mapped segment's descriptor (-1 without one), e.g. for tests that try to write it.
  int segmentFd() const { return segment_ ? segment_->fd() : -1; }
  // The whole read-only mapping (empty without one), and where in it the buffer holding the
  // current picture starts (the last SHM_DAMAGE's shm_offset, or SURFACE_CREATE_SHM's).
  std::span<const uint8_t> segment() const {
    return segment_ ? segment_->bytes() : std::span<const uint8_t>{};
  }
  uint64_t shmOffset() const { return shmSurface_ ? shmSurface_->offset : 0; }
  uint32_t shmStride() const { return shmSurface_ ? shmSurface_->stride : 0; }
  // Whether each SHM_DAMAGE copies its rectangles into primary() (the default: the client keeps
  // its own picture, as spicebox-view does). Off, primary() keeps the picture it had and the
  // client reads the pixels in place, from segment() at shmOffset() in the frame callback (zero
  // copy: what spicebox-latency times).
  void setShmCopy(bool copy) { shmCopy_ = copy; }
  // The frame number of the last SHM_DAMAGE applied (0 before one).
  uint64_t lastFrame() const { return lastFrame_; }
  // Called after each SHM_DAMAGE was applied (copied into primary(), see setShmCopy) and before
  // DAMAGE_HANDLED is sent,
  // with the frame number and the damaged rectangles clipped to the surface: the buffer at
  // shmOffset() is still the server's picture of that frame.
  using FrameCallback = std::function<void(uint64_t frame, std::span<const Rect> rects)>;
  void setFrameCallback(FrameCallback callback) { onFrame_ = std::move(callback); }

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
  // Accounts for a surface of width x height replacing surface `id` (MAX_SURFACE_PIXELS).
  Error reserveSurface(uint32_t id, uint32_t width, uint32_t height);
  // Records that `box` of surface `surfaceId` changed, when it is the primary.
  void noteDamage(uint32_t surfaceId, const Rect& box);
  void releaseSurface(uint32_t id);

  Error surfaceCreate(std::span<const uint8_t> body);
  Error drawFill(std::span<const uint8_t> body);
  Error drawCopy(std::span<const uint8_t> body);
  Error copyBits(std::span<const uint8_t> body);
  Error invalList(std::span<const uint8_t> body);
  Error drawUnsupported(uint16_t type, std::span<const uint8_t> body);
  // display-shm.cpp: shm messages, and whether `type` may arrive in the current mode.
  Error handleShm(uint16_t type, std::span<const uint8_t> body, bool* handled);
  Error shmOffer(std::span<const uint8_t> body);
  Error shmSurfaceCreate(std::span<const uint8_t> body);
  Error shmDamage(std::span<const uint8_t> body);
  Error shmReply(uint32_t segmentId, bool accepted, uint32_t flags);

  DisplayCounters display_;
  std::map<uint32_t, Canvas> surfaces_;
  uint64_t surfacePixels_ = 0;  // pixels of every surface in surfaces_
  std::optional<uint32_t> primaryId_;
  std::map<uint64_t, Image> cache_;
  int64_t cachedPixels_ = 0;

  struct ShmSurface {
    uint32_t id = 0, width = 0, height = 0, stride = 0;
    uint64_t offset = 0;
  };
  ShmWish shmWish_ = ShmWish::Off;
  bool shmActive_ = false, tearFree_ = false, shmCopy_ = true;
  std::optional<ShmSegment> segment_;
  uint32_t segmentId_ = 0;
  std::optional<ShmSurface> shmSurface_;
  uint64_t lastFrame_ = 0;
  ShmCounters shm_;
  std::optional<std::string> shmRefusal_;
  FrameCallback onFrame_;
  std::vector<Rect> frameRects_;  // the clipped rectangles of the SHM_DAMAGE being applied
  std::vector<Rect> damage_;      // changed on the primary since takeDamage() (see there)
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
  std::optional<std::string> password;  // nullopt: ticketing disabled
  bool lz4 = true;                      // advertise SPICE_DISPLAY_CAP_LZ4_COMPRESSION
  ShmWish shm = ShmWish::Off;           // the shared-memory extension (unix sockets)
  // Sent as DISPLAY_PREFERRED_COMPRESSION (SPICE_IMAGE_COMPRESSION_*) when the server
  // advertises SPICE_DISPLAY_CAP_PREF_COMPRESSION: libspice-server then stays with what this
  // client decodes (LZ4 or OFF) instead of GLZ and QUIC.
  std::optional<uint8_t> preferredCompression;
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
  std::variant<Socket, std::string> link(uint8_t type, std::vector<uint32_t> caps,
                                         LinkReply* replyOut = nullptr);
  Deadline stepDeadline() const { return Clock::now() + options_.timeout; }

  SessionOptions options_;
  std::unique_ptr<MainChannel> main_;
  std::unique_ptr<DisplayChannel> display_;
  std::unique_ptr<InputsChannel> inputs_;
};

}  // namespace spicebox::client
