// Runs in: netproxy (sandboxed). Input: SPICE clients' bytes (hostile, from the network); the
// broker's settings, display segments, frames and cursor (trusted, but range-checked).
//
// Design. One libuv loop, no threads. Each client connection is a non-blocking socket with its
// own uv_poll, one input buffer (never more than one message: the next read asks for exactly
// the bytes still missing, and a header announcing more than the channel's limit ends the
// connection) and one outbound queue written with sendmsg(MSG_NOSIGNAL). Sending only queues
// and asks for writability; the poll callback writes, so nothing re-enters a caller. A
// connection that ends is marked Closed at once (callbacks check first) and freed on the next
// loop turn (reap timer), so pointers on the stack stay valid.
//
// Link stage: header (16 bytes, size <= 4 KiB), link message (caps bounded), reply with the
// RSA-1024 public key, optional auth mechanism (SPICE ticket only), 128-byte ticket (OAEP),
// 4-byte result; all within LINK_DEADLINE_MS. A main channel makes a session (random non-zero
// id); display, cursor and inputs must name one. Sessions beyond Settings::maxClients get a
// NOTIFY and DISCONNECTING, then the connection ends.
//
// Display flow control: SET_ACK window ACK_WINDOW; a display client is "in step" while fewer
// than 2 windows of messages are un-ACKed and fewer than MAX_QUEUED_DISPLAY_BYTES are queued.
// Frames go to in-step clients as hints (DRAW_FILL, COPY_BITS) then DRAW_COPY per damage rect;
// a client out of step (or falling out mid-frame) gets its share as pending damage instead (at
// most MAX_PENDING_RECTS rects, merged beyond), sent from the shadow when it catches up. Any
// hint after pending damage becomes damage too, since hints replay on the client's old picture.
// Memory per display client: MAX_QUEUED_DISPLAY_BYTES plus one message (at most one full
// picture as a raw bitmap: 4 * width * height + 128 bytes), input under 4 KiB, and 16 rects.
//
// Image cache (image-cache.h): a display client whose DISPLAY_INIT announces a pixmap cache gets
// INVAL_ALL_PIXMAPS at once (its cache then matches the empty mirror, whatever it held), then
// each DRAW_COPY image of MIN_CACHED_PIXELS or more is copied out of the shadow (struct Display),
// hashed (SHA-256), and sent either as FROM_CACHE (the mirror says the client holds it) or whole
// with CACHE_ME and its hash id (after an INVAL_LIST of what its room evicts). The contiguous copy
// costs one more picture-sized buffer while an image is encoded. The mirror stays
// valid across new primaries (cached images are not tied to a surface; spice-server does not
// invalidate them either) and is dropped with the connection. Messages reach the client in the
// order they are queued, so the mirror is exact at each point of the stream.
#include "netproxy/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <pixman.h>
#include <spdlog/spdlog.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>

#include "base/shm-protocol.h"
#include "base/uv-handle.h"
#include "netproxy/image-cache.h"
#include "netproxy/image-encode.h"
#include "netproxy/link.h"
#include "netproxy/messages.h"
#include "netproxy/ticket.h"
#include "netproxy/wire.h"

namespace spicebox::netproxy {

namespace {

// Open client connections at once: the sandbox allows 256 descriptors (RLIMIT_NOFILE), and the
// IPC socket, log, listeners and segments need some. Connections beyond are accepted and closed.
constexpr size_t MAX_CONNECTIONS = 200;
// A client must finish the link stage within this (a peer trickling bytes holds a descriptor).
constexpr uint64_t LINK_DEADLINE_MS = 10000;
// A message begun after the link must be finished within this (a truncated message, then
// silence, would hold the descriptor forever).
constexpr uint64_t MESSAGE_DEADLINE_MS = 10000;
// Main channel keepalive: a PING this often (spice-gtk answers each with a PONG).
constexpr uint64_t PING_INTERVAL_MS = 30000;
// Display: the SET_ACK window (spice-server's is 20 too) and the bytes queued on a client's
// socket beyond which it gets no new drawing (pending damage instead).
constexpr uint32_t ACK_WINDOW = 20;
constexpr size_t MAX_QUEUED_DISPLAY_BYTES = 4u << 20;
constexpr size_t MAX_PENDING_RECTS = 16;
// Other channels send little; a queue above this means the client stopped reading: the cursor
// channel then skips updates (sends the latest state when drained), others end the connection.
constexpr size_t MAX_QUEUED_SMALL_BYTES = 256u << 10;
// Inputs: events per connection per second. The broker's IPC queue holds 1024 messages; a
// person makes far fewer (spice-gtk also waits for MOTION_ACKs), a flood ends the connection.
constexpr uint32_t MAX_INPUT_EVENTS_PER_SECOND = 400;
// Agent tokens offered in MAIN_INIT (spice-server's REDS_AGENT_WINDOW_SIZE). No agent exists.
constexpr uint32_t AGENT_TOKENS = 10;
// Largest primary accepted from the broker (the renderer's limit is lower).
constexpr uint32_t MAX_DISPLAY_SIDE = 16384;
// Cursor shapes larger than this are sent as "no shape" (the renderer sanitises to less).
constexpr uint32_t MAX_CURSOR_SIDE = 512;
// Shared memory: a client must answer SHM_OFFER within this (nothing else is drawn for it until
// it does), and a tear-free client must acknowledge each SHM_DAMAGE within TEAR_FREE_ACK_MS (the
// renderer waits for it; a client that does not loses tear-free mode, so a hung viewer costs the
// display one pause, not a stall).
constexpr uint64_t SHM_REPLY_DEADLINE_MS = 10000;
constexpr uint64_t TEAR_FREE_ACK_MS = 1000;
// A tear-free client holds the renderer once it has a frame unacknowledged in the buffer about
// to be drawn, so it can only have the current frame and the one before it outstanding (and the
// whole-surface frames of SURFACE_CREATE_SHM); more means it stopped acknowledging.
constexpr size_t MAX_UNACKED_FRAMES = 8;
// Messages per read callback and accepts per listener callback: one busy client or a connect
// flood cannot hold the loop.
constexpr int MAX_READS_PER_CALLBACK = 64;
constexpr int MAX_ACCEPTS_PER_CALLBACK = 16;

// The key pair made by prepare() before the sandbox (RSA key generation needs more randomness
// and more syscalls than the sandbox allows). One per process; read-only afterwards.
std::unique_ptr<TicketKey>& ticketKey() {
  static std::unique_ptr<TicketKey> key;
  return key;
}

const char* channelName(uint8_t type) {
  switch (type) {
    case SPICE_CHANNEL_MAIN:
      return "main";
    case SPICE_CHANNEL_DISPLAY:
      return "display";
    case SPICE_CHANNEL_INPUTS:
      return "inputs";
    case SPICE_CHANNEL_CURSOR:
      return "cursor";
  }
  return "link";
}

bool emptyRect(const Rect& r) {
  return r.right <= r.left || r.bottom <= r.top;
}

Rect unite(const Rect& a, const Rect& b) {
  return {std::min(a.top, b.top), std::min(a.left, b.left), std::max(a.bottom, b.bottom),
          std::max(a.right, b.right)};
}

int64_t area(const Rect& r) {
  return int64_t{r.right - r.left} * (r.bottom - r.top);
}

bool contains(const Rect& outer, const Rect& inner) {
  return outer.left <= inner.left && outer.top <= inner.top && outer.right >= inner.right &&
         outer.bottom >= inner.bottom;
}

// The union of `rects` as disjoint rectangles (pixman's region arithmetic), in band order.
std::vector<Rect> disjointUnion(std::span<const Rect> rects) {
  pixman_region32_t region;
  pixman_region32_init(&region);
  for (const Rect& r : rects)
    if (r.right > r.left && r.bottom > r.top)
      pixman_region32_union_rect(&region, &region, r.left, r.top,
                                 static_cast<unsigned>(r.right - r.left),
                                 static_cast<unsigned>(r.bottom - r.top));
  int n = 0;
  const pixman_box32_t* boxes = pixman_region32_rectangles(&region, &n);
  std::vector<Rect> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    out.push_back(Rect{boxes[i].y1, boxes[i].x1, boxes[i].y2, boxes[i].x2});
  pixman_region32_fini(&region);
  return out;
}

Rect clipTo(const Rect& r, uint32_t width, uint32_t height) {
  return {std::clamp<int32_t>(r.top, 0, static_cast<int32_t>(height)),
          std::clamp<int32_t>(r.left, 0, static_cast<int32_t>(width)),
          std::clamp<int32_t>(r.bottom, 0, static_cast<int32_t>(height)),
          std::clamp<int32_t>(r.right, 0, static_cast<int32_t>(width))};
}

enum class ConnState { LinkHeader, LinkMess, AuthMechanism, Ticket, Linked, Closed };

struct Conn {
  void* owner = nullptr;  // the Server::Impl (a private type, not nameable here)
  uint64_t id = 0;
  std::string peer;
  base::Fd fd;
  base::UvHandle<uv_poll_t> poll;  // after fd: closed (uv_close) before the descriptor
  ConnState state = ConnState::LinkHeader;
  uint64_t linkDeadline = 0;
  int pollEvents = 0;            // what the poll watches now
  bool closeAfterFlush = false;  // refused or done: nothing more is read, the queue is written

  // Input: the bytes of the unit being read (link header, link message, ticket, data header or
  // body); `need` is that unit's full size.
  std::vector<uint8_t> in;
  size_t need = LINK_HEADER_SIZE;
  bool inBody = false;
  uint16_t bodyType = 0;
  // When the message being read (after the link stage) was begun; 0: none is. A peer that
  // starts one and never finishes it holds a descriptor: it is closed at MESSAGE_DEADLINE_MS.
  uint64_t partialSince = 0;
  // Main channel: the last PING's id and when it went out (0: answered), the last round trip.
  uint32_t pingId = 0;
  uint64_t pingSentAt = 0;
  uint64_t roundTripMs = 0;

  // Output: framed messages; `frontSent` bytes of the first are written. A message carrying a
  // descriptor (SHM_OFFER) starts a sendmsg of its own, with SCM_RIGHTS on its first byte.
  struct OutChunk {
    std::vector<uint8_t> bytes;
    std::shared_ptr<const base::Fd> fd;  // null: none, or already sent
  };
  std::deque<OutChunk> out;
  size_t frontSent = 0;
  size_t outBytes = 0;

  // Link.
  uint8_t channelType = 0;
  uint32_t sessionId = 0;
  bool mini = false;
  bool authSelection = false;
  uint64_t serial = 0;

  // Display.
  bool lz4 = false, monitorsConfig = false;
  uint64_t sentSinceAck = 0, acked = 0;
  bool surfaceLive = false, needMark = false;
  std::vector<Rect> pending;
  bool displayInitSeen = false;
  ImageCache cache;  // off until DISPLAY_INIT announces a pixmap cache

  // Shared memory (display channels from unix listeners): the peer's uid (SO_PEERCRED), what the
  // client advertised, and where the offer stands.
  bool unixPeer = false;
  std::optional<uint32_t> peerUid;
  bool shmCap = false, tearFreeCap = false;
  enum class Shm { None, Offered, Declined, Active } shm = Shm::None;
  uint32_t shmSegmentId = 0;  // the last segment offered to it (0: none)
  uint64_t shmOfferedAt = 0;
  bool tearFree = false;
  uint64_t shmFrame = 0;  // the last SHM_DAMAGE's frame number
  // Tear-free: the frames sent and not yet acknowledged, oldest first, with the buffer each
  // named: the client may still be reading those buffers.
  struct Unacked {
    uint64_t frame = 0;
    uint8_t buffer = 0;
  };
  std::deque<Unacked> unacked;

  // Cursor: what the client shows.
  bool cursorSent = false, cursorVisible = false, cursorDirty = false;
  int16_t cursorX = 0, cursorY = 0;
  uint64_t cursorSerial = 0;

  // Inputs.
  uint32_t motions = 0;
  uint64_t inputWindowStart = 0;
  uint32_t inputWindowCount = 0;
};

struct Session {
  uint64_t mainConn = 0;
  uint16_t mouseMode = SPICE_MOUSE_MODE_CLIENT;
};

// The primary: the broker's segment, mapped read-only, and the netproxy's own copy of it (the
// shadow). The segment is read only inside setDisplay() and frame(), which the broker calls while
// the renderer waits (render.capnp outputTaken): the shadow is always the picture after one whole
// batch, and every image sent to a client, now or later (pending damage, a new client), comes from
// it. Reading the segment at any other time could send half-drawn pixels that a later copy-bits
// hint would then copy elsewhere on the client.
struct Display {
  const uint8_t* map = nullptr;
  size_t size = 0;
  DisplayLayout layout;
  std::shared_ptr<const base::Fd> fd;  // handed to shared-memory clients
  uint32_t shmId = 0;                  // its segment id in SHM_OFFER
  uint8_t current = 0;                 // the buffer holding the picture
  uint64_t offset() const { return current == 1 ? layout.backOffset : layout.offset; }
  std::vector<uint8_t> shadow;  // width * height * 4 bytes, rows of width * 4, top first
  ~Display() {
    if (map)
      ::munmap(const_cast<uint8_t*>(map), size);
  }
  uint32_t shadowStride() const { return layout.width * 4; }
  // Copies `r` (already clipped to the picture) from the segment into the shadow.
  void take(const Rect& r) {
    const size_t bytes = size_t{static_cast<uint32_t>(r.right - r.left)} * 4;
    for (int32_t y = r.top; y < r.bottom; ++y) {
      const size_t row = static_cast<uint32_t>(y);
      const size_t x = size_t{static_cast<uint32_t>(r.left)} * 4;
      std::memcpy(shadow.data() + row * shadowStride() + x,
                  map + offset() + row * layout.stride + x, bytes);
    }
  }
};

}  // namespace

struct Server::Impl {
  uv_loop_t* loop;
  Events events;
  Settings settings;
  bool configured = false;
  std::vector<Listener> listeners;
  std::vector<base::UvHandle<uv_poll_t>> listenerPolls;
  base::UvHandle<uv_timer_t> tick, reap;
  std::map<uint64_t, std::unique_ptr<Conn>> conns;
  std::vector<std::unique_ptr<Conn>> dead;
  std::map<uint32_t, Session> sessions;
  std::unique_ptr<Display> display;
  CursorState cursor;
  uint64_t nextConnId = 1;
  uint64_t nextImageId = 1;
  uint64_t lastPings = 0;  // uv_now of the last round of main-channel pings
  uint64_t refused = 0;
  ClientCounts reported;
  uint64_t lastRefusalLog = 0;
  uint32_t nextShmId = 1;
  // sync(): the renderer's go-ahead, held until tear-free clients acknowledge (or time out).
  std::function<void()> pendingSync;
  base::UvHandle<uv_timer_t> ackTimer;

  Impl(uv_loop_t* l, Events e) : loop(l), events(std::move(e)) {}

  // --- Bookkeeping ---

  void reportCounts() {
    ClientCounts now = counts();
    if (now == reported)
      return;
    reported = now;
    if (events.onClients)
      events.onClients(now);
  }

  ClientCounts counts() const {
    ClientCounts now{static_cast<uint32_t>(sessions.size()), static_cast<uint32_t>(conns.size()),
                     refused};
    for (const auto& [id, c] : conns)
      if (c->state == ConnState::Linked && c->shm == Conn::Shm::Active) {
        ++now.shm;
        now.tearFree += c->tearFree ? 1 : 0;
      }
    return now;
  }

  void closeConn(Conn& c, const std::string& reason, bool hostile) {
    if (c.state == ConnState::Closed)
      return;
    if (hostile)
      spdlog::warn("client {} ({}): {}; connection closed", c.peer, channelName(c.channelType),
                   reason);
    else
      spdlog::info("client {} ({}): {}", c.peer, channelName(c.channelType), reason);
    const bool wasLinked = c.state == ConnState::Linked;
    if (wasLinked && c.channelType == SPICE_CHANNEL_MAIN && c.pingId > 0)
      spdlog::info("client {}: main channel round trip {} ms (last answered ping)", c.peer,
                   c.roundTripMs);
    if (c.cache.enabled()) {
      const ImageCache::Stats& st = c.cache.stats();
      const uint64_t lookups = st.hits + st.misses + st.collisions;
      spdlog::info(
          "client {}: image cache: {} of {} images drawn from it ({:.1f}%), {} pixels not sent, "
          "{} cached, {} evicted, {} id collisions",
          c.peer, st.hits, lookups, lookups ? 100.0 * double(st.hits) / double(lookups) : 0.0,
          st.pixelsSaved, st.inserted, st.evicted, st.collisions);
    }
    c.state = ConnState::Closed;
    c.poll.close();
    c.out.clear();
    c.outBytes = 0;
    auto node = conns.extract(c.id);
    if (!node.empty())
      dead.push_back(std::move(node.mapped()));
    uv_timer_start(
        reap.get(), [](uv_timer_t* t) { static_cast<Impl*>(t->data)->dead.clear(); }, 0, 0);
    // A session ends with its main channel: its other channels go too.
    if (wasLinked && c.channelType == SPICE_CHANNEL_MAIN) {
      auto s = sessions.find(c.sessionId);
      if (s != sessions.end() && s->second.mainConn == c.id) {
        sessions.erase(s);
        std::vector<Conn*> members;
        for (auto& [id, other] : conns)
          if (other->sessionId == c.sessionId && other->state != ConnState::Closed)
            members.push_back(other.get());
        for (Conn* m : members)
          closeConn(*m, "session ended (main channel closed)", false);
      }
    }
    reportCounts();
    maybeFinishSync();  // it may have been the tear-free client the renderer waited for
  }

  // --- Output ---

  // Watches for input unless the connection is finishing, and for writability while output is
  // queued.
  void updatePoll(Conn& c) {
    if (c.state == ConnState::Closed)
      return;
    const int want = (c.closeAfterFlush ? 0 : UV_READABLE) | (c.out.empty() ? 0 : UV_WRITABLE);
    if (want == c.pollEvents)
      return;
    c.pollEvents = want;
    if (want == 0)
      uv_poll_stop(c.poll.get());
    else
      uv_poll_start(c.poll.get(), want, onConnEvent);
  }

  void finish(Conn& c) {
    c.closeAfterFlush = true;
    c.linkDeadline = uv_now(loop) + LINK_DEADLINE_MS;  // to take its last messages
    if (c.out.empty())
      closeConn(c, "closed after its last message", false);
    else
      updatePoll(c);
  }

  void queueRaw(Conn& c, std::vector<uint8_t> bytes, std::shared_ptr<const base::Fd> fd = nullptr) {
    if (c.state == ConnState::Closed)
      return;
    c.outBytes += bytes.size();
    c.out.push_back({std::move(bytes), std::move(fd)});
    updatePoll(c);
    // Display output is bounded by its flow control, the cursor's by sendCursor. Main and
    // inputs only answer the client: one that keeps asking without reading is cut off.
    if ((c.channelType == SPICE_CHANNEL_MAIN || c.channelType == SPICE_CHANNEL_INPUTS) &&
        c.outBytes > MAX_QUEUED_SMALL_BYTES)
      closeConn(c, fmt::format("stopped reading ({} bytes queued)", c.outBytes), true);
  }

  void send(Conn& c, const OutMessage& m, std::shared_ptr<const base::Fd> fd = nullptr) {
    if (c.state == ConnState::Closed)
      return;
    ++c.serial;
    ++c.sentSinceAck;
    queueRaw(c, wire::frameMessage(c.mini, c.serial, m.type, m.body), std::move(fd));
  }

  void flush(Conn& c) {
    while (!c.out.empty() && c.state != ConnState::Closed) {
      iovec iov[32];
      int n = 0;
      size_t skip = c.frontSent;
      // A descriptor goes with the first byte of its message: that message starts a sendmsg,
      // and the one before it ends where it begins.
      for (auto it = c.out.begin(); it != c.out.end() && n < 32; ++it, ++n) {
        if (n > 0 && it->fd)
          break;
        iov[n].iov_base = it->bytes.data() + skip;
        iov[n].iov_len = it->bytes.size() - skip;
        skip = 0;
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<size_t>(n);
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      const bool withFd = c.out.front().fd && c.frontSent == 0;
      if (withFd) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        const int fd = c.out.front().fd->get();
        std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
      }
      const ssize_t sent = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent < 0) {
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return;
        closeConn(c, std::string("send failed: ") + std::strerror(errno), false);
        return;
      }
      size_t left = static_cast<size_t>(sent);
      c.outBytes -= left;
      if (withFd && sent > 0)
        c.out.front().fd.reset();  // it went with the first byte
      while (left > 0) {
        const size_t frontLeft = c.out.front().bytes.size() - c.frontSent;
        if (left >= frontLeft) {
          left -= frontLeft;
          c.out.pop_front();
          c.frontSent = 0;
        } else {
          c.frontSent += left;
          left = 0;
        }
      }
    }
    if (c.state == ConnState::Closed)
      return;
    updatePoll(c);
    if (c.closeAfterFlush) {
      closeConn(c, "closed after its last message", false);
      return;
    }
    caughtUp(c);
  }

  // A channel's queue drained or its ACKs arrived: send what was held back.
  void caughtUp(Conn& c) {
    if (c.state != ConnState::Linked)
      return;
    if (c.channelType == SPICE_CHANNEL_DISPLAY)
      sendPending(c);
    else if (c.channelType == SPICE_CHANNEL_CURSOR && c.cursorDirty)
      sendCursor(c);
  }

  // --- Events from libuv ---

  static void onConnEvent(uv_poll_t* handle, int status, int events) {
    auto* c = static_cast<Conn*>(handle->data);
    if (!c || c->state == ConnState::Closed)
      return;
    auto* impl = static_cast<Impl*>(c->owner);
    if (status < 0) {
      // libuv reports a socket error (EPOLLERR: mostly a peer that reset the connection) as
      // UV_EBADF; reading says what it really was (and takes what the peer sent before).
      impl->readFrom(*c);
      if (c->state != ConnState::Closed)
        impl->closeConn(*c, std::string("connection error (") + uv_strerror(status) + ")", false);
      return;
    }
    if (events & UV_WRITABLE)
      impl->flush(*c);
    if ((events & UV_READABLE) && c->state != ConnState::Closed)
      impl->readFrom(*c);
  }

  void readFrom(Conn& c) {
    // A refused or finishing connection reads nothing more (closeAfterFlush).
    for (int round = 0;
         round < MAX_READS_PER_CALLBACK && c.state != ConnState::Closed && !c.closeAfterFlush;
         ++round) {
      const size_t have = c.in.size();
      c.in.resize(c.need);
      const ssize_t n = ::read(c.fd.get(), c.in.data() + have, c.need - have);
      if (n < 0) {
        c.in.resize(have);
        if (errno == EINTR)
          continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          break;
        closeConn(c, std::string("receive failed: ") + std::strerror(errno), false);
        return;
      }
      if (n == 0) {
        c.in.resize(have);
        closeConn(c, have ? "disconnected in the middle of a message" : "disconnected", false);
        return;
      }
      c.in.resize(have + static_cast<size_t>(n));
      if (c.in.size() == c.need)
        handleUnit(c);
    }
    if (c.state == ConnState::Linked) {
      const bool partial = !c.in.empty() || c.inBody;
      if (!partial)
        c.partialSince = 0;
      else if (c.partialSince == 0)
        c.partialSince = uv_now(loop);
    }
  }

  // --- Link stage ---

  void linkFail(Conn& c, uint32_t error, const std::string& reason) {
    spdlog::warn("client {} ({}): link refused: {}", c.peer, channelName(c.channelType), reason);
    queueRaw(c, buildLinkReply(error, {}, {}, {}));
    finish(c);
  }

  void linkResult(Conn& c, uint32_t error, const std::string& reason) {
    if (error != SPICE_LINK_ERR_OK)
      spdlog::warn("client {} ({}): link refused: {}", c.peer, channelName(c.channelType), reason);
    wire::Writer w;
    w.u32(error);
    queueRaw(c, w.take());
    if (error != SPICE_LINK_ERR_OK)
      finish(c);
  }

  void expect(Conn& c, ConnState state, size_t need) {
    c.state = state;
    c.in.clear();
    c.need = need;
  }

  void handleUnit(Conn& c) {
    switch (c.state) {
      case ConnState::LinkHeader:
        return onLinkHeader(c);
      case ConnState::LinkMess:
        return onLinkMess(c);
      case ConnState::AuthMechanism:
        return onAuthMechanism(c);
      case ConnState::Ticket:
        return onTicket(c);
      case ConnState::Linked:
        return onData(c);
      case ConnState::Closed:
        return;
    }
  }

  void onLinkHeader(Conn& c) {
    auto parsed = parseLinkHeader(c.in);
    if (auto* fault = std::get_if<LinkFault>(&parsed)) {
      const std::string reason(describe(*fault));
      if (*fault == LinkFault::BadMagic) {
        closeConn(c, "link: " + reason, true);  // not SPICE: no SPICE reply either
        return;
      }
      linkFail(c,
               *fault == LinkFault::VersionMismatch ? SPICE_LINK_ERR_VERSION_MISMATCH
                                                    : SPICE_LINK_ERR_INVALID_DATA,
               reason);
      return;
    }
    expect(c, ConnState::LinkMess, std::get<uint32_t>(parsed));
  }

  void onLinkMess(Conn& c) {
    auto parsed = parseLinkMess(c.in);
    if (auto* fault = std::get_if<LinkFault>(&parsed)) {
      linkFail(c, SPICE_LINK_ERR_INVALID_DATA, std::string(describe(*fault)));
      return;
    }
    const LinkMess& mess = std::get<LinkMess>(parsed);
    const uint8_t type = mess.channelType;
    if ((type != SPICE_CHANNEL_MAIN && type != SPICE_CHANNEL_DISPLAY &&
         type != SPICE_CHANNEL_CURSOR && type != SPICE_CHANNEL_INPUTS) ||
        mess.channelId != 0) {
      linkFail(c, SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE,
               fmt::format("channel type {} id {} is not served (main, display, cursor and "
                           "inputs with id 0 are)",
                           type, mess.channelId));
      return;
    }
    c.channelType = type;
    if (type == SPICE_CHANNEL_MAIN && mess.connectionId != 0) {
      linkFail(c, SPICE_LINK_ERR_BAD_CONNECTION_ID,
               fmt::format("a main channel must start a new session (id 0), it named {:#x}; "
                           "joining an existing session (migration) is not supported",
                           mess.connectionId));
      return;
    }
    if (type != SPICE_CHANNEL_MAIN && !sessions.contains(mess.connectionId)) {
      linkFail(c, SPICE_LINK_ERR_BAD_CONNECTION_ID,
               fmt::format("session id {:#x} is unknown", mess.connectionId));
      return;
    }
    c.sessionId = mess.connectionId;
    c.mini = hasCap(mess.commonCaps, SPICE_COMMON_CAP_MINI_HEADER);
    c.authSelection = hasCap(mess.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    std::vector<uint32_t> channelCaps;
    if (type == SPICE_CHANNEL_DISPLAY) {
      c.lz4 = hasCap(mess.channelCaps, SPICE_DISPLAY_CAP_LZ4_COMPRESSION);
      c.monitorsConfig = hasCap(mess.channelCaps, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
      c.shmCap = hasCap(mess.channelCaps, shm::CAP_SHARED_MEMORY);
      c.tearFreeCap = c.shmCap && hasCap(mess.channelCaps, shm::CAP_TEAR_FREE);
      // Advertised only where it can be offered: never on TCP, never to another user.
      if (shmAllowed(c)) {
        setCap(channelCaps, shm::CAP_SHARED_MEMORY);
        setCap(channelCaps, shm::CAP_TEAR_FREE);
      } else if (c.shmCap) {
        spdlog::info("client {}: asks for the shared-memory display; not offered ({})", c.peer,
                     c.unixPeer ? "its user is not allowed (--shm-allow)"
                                : "shared memory is for local viewers on the unix socket");
      }
    }
    std::vector<uint32_t> common;
    setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    setCap(common, SPICE_COMMON_CAP_AUTH_SPICE);
    setCap(common, SPICE_COMMON_CAP_MINI_HEADER);
    queueRaw(c,
             buildLinkReply(SPICE_LINK_ERR_OK, ticketKey()->publicKeyDer(), common, channelCaps));
    if (c.authSelection)
      expect(c, ConnState::AuthMechanism, 4);
    else
      expect(c, ConnState::Ticket, TICKET_SIZE);
  }

  void onAuthMechanism(Conn& c) {
    wire::Reader r(c.in);
    const uint32_t mechanism = r.u32();
    if (mechanism != SPICE_COMMON_CAP_AUTH_SPICE) {
      linkResult(c, SPICE_LINK_ERR_INVALID_DATA,
                 mechanism == SPICE_COMMON_CAP_AUTH_SASL
                     ? "client asked for SASL authentication; spicebox offers only the SPICE "
                       "ticket (password)"
                     : fmt::format("unknown authentication mechanism {}", mechanism));
      return;
    }
    expect(c, ConnState::Ticket, TICKET_SIZE);
  }

  void onTicket(Conn& c) {
    if (settings.password) {
      auto password = ticketKey()->decrypt(c.in);
      if (!password) {
        linkResult(c, SPICE_LINK_ERR_PERMISSION_DENIED, "ticket does not decrypt");
        return;
      }
      const bool matches = passwordEquals(*password, *settings.password);
      if (!matches) {
        linkResult(c, SPICE_LINK_ERR_PERMISSION_DENIED, "wrong password");
        return;
      }
      if (settings.passwordExpiresAt != 0 && ::time(nullptr) > settings.passwordExpiresAt) {
        linkResult(c, SPICE_LINK_ERR_PERMISSION_DENIED,
                   "password expired (the operator must set a new one)");
        return;
      }
    }
    if (c.channelType != SPICE_CHANNEL_MAIN && !sessions.contains(c.sessionId)) {
      linkResult(c, SPICE_LINK_ERR_BAD_CONNECTION_ID, "session ended during the link stage");
      return;
    }
    linkResult(c, SPICE_LINK_ERR_OK, "");
    expect(c, ConnState::Linked, wire::headerSize(c.mini));
    c.inBody = false;
    startChannel(c);
  }

  uint32_t newSessionId() {
    for (;;) {
      uint32_t id = 0;
      if (RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof id) != 1)
        id = static_cast<uint32_t>(uv_hrtime()) ^ static_cast<uint32_t>(nextConnId * 2654435761u);
      if (id != 0 && !sessions.contains(id))
        return id;
    }
  }

  void startChannel(Conn& c) {
    switch (c.channelType) {
      case SPICE_CHANNEL_MAIN: {
        if (sessions.size() >= settings.maxClients) {
          ++refused;
          if (uv_now(loop) - lastRefusalLog >= 1000 || lastRefusalLog == 0) {
            lastRefusalLog = uv_now(loop);
            spdlog::warn("client {}: refused, {} clients are connected (the configured limit)",
                         c.peer, sessions.size());
          }
          send(c, buildNotify(uv_now(loop),
                              fmt::format("The server is full: {} clients are connected. Try "
                                          "again later.",
                                          sessions.size())));
          send(c, buildDisconnecting(uv_now(loop), SPICE_LINK_ERR_OK));
          c.channelType = 0;
          finish(c);
          reportCounts();
          return;
        }
        c.sessionId = newSessionId();
        Session s;
        s.mainConn = c.id;
        s.mouseMode = settings.mouseMode == MouseMode::Client ? SPICE_MOUSE_MODE_CLIENT
                                                              : SPICE_MOUSE_MODE_SERVER;
        sessions[c.sessionId] = s;
        spdlog::info("client {}: new session {:#x}", c.peer, c.sessionId);
        MainInit init;
        init.sessionId = c.sessionId;
        init.currentMouseMode = s.mouseMode;
        init.agentTokens = AGENT_TOKENS;
        init.multiMediaTime = static_cast<uint32_t>(uv_now(loop));
        send(c, buildMainInit(init));
        sendPing(c);  // as spice-server's network test: the client answers at once
        reportCounts();
        return;
      }
      case SPICE_CHANNEL_DISPLAY:
        send(c, buildSetAck(1, ACK_WINDOW));
        c.sentSinceAck = 0;
        c.acked = 0;
        if (display)
          showDisplay(c);
        return;
      case SPICE_CHANNEL_CURSOR:
        c.cursorSent = false;
        sendCursor(c);
        return;
      case SPICE_CHANNEL_INPUTS:
        send(c, buildInputsInit(0));
        c.inputWindowStart = uv_now(loop);
        return;
    }
  }

  // --- Data messages ---

  void onData(Conn& c) {
    const ChannelKind kind = static_cast<ChannelKind>(c.channelType);
    if (!c.inBody) {
      uint32_t subList = 0;
      const wire::DataHeader h = wire::parseDataHeader(c.in, c.mini, &subList);
      if (subList != 0) {
        closeConn(c, "sent a sub-message list (clients never do)", true);
        return;
      }
      if (h.size > maxClientMessageSize(kind)) {
        closeConn(c,
                  fmt::format("message type {} of {} bytes exceeds the channel's limit of {}",
                              h.type, h.size, maxClientMessageSize(kind)),
                  true);
        return;
      }
      c.bodyType = h.type;
      c.inBody = true;
      c.in.clear();
      c.need = h.size;
      if (h.size > 0)
        return;
    }
    std::vector<uint8_t> body = std::move(c.in);
    const uint16_t type = c.bodyType;
    c.in.clear();
    c.inBody = false;
    c.need = wire::headerSize(c.mini);
    auto parsed = parseClientMessage(kind, type, body);
    if (auto* fault = std::get_if<MessageFault>(&parsed)) {
      if (*fault == MessageFault::BadValue && kind == ChannelKind::Inputs) {
        spdlog::debug("client {}: input message {} dropped: field out of range", c.peer, type);
        return;
      }
      closeConn(c, fmt::format("message type {}: {}", type, describe(*fault)), true);
      return;
    }
    std::visit([&](const auto& m) { handle(c, m); }, std::get<ClientMessage>(parsed));
  }

  void handle(Conn&, const AckSync&) {}
  void handle(Conn& c, const Ack&) {
    c.acked += ACK_WINDOW;
    caughtUp(c);
  }
  void handle(Conn& c, const Pong& p) {
    if (p.id == c.pingId && c.pingSentAt != 0) {
      c.roundTripMs = uv_now(loop) - c.pingSentAt;
      c.pingSentAt = 0;
    }
  }

  // A PING on the main channel: at link, then every PING_INTERVAL_MS; its PONG gives the round
  // trip (logged when the session ends).
  void sendPing(Conn& c) {
    c.pingId++;
    c.pingSentAt = uv_now(loop);
    send(c, buildPing(c.pingId, c.pingSentAt * 1000000));
  }
  void handle(Conn& c, const ClientDisconnecting&) { closeConn(c, "disconnecting", false); }
  void handle(Conn& c, const AttachChannels&) {
    const ChannelKind channels[] = {ChannelKind::Display, ChannelKind::Cursor, ChannelKind::Inputs};
    send(c, buildChannelsList(channels));
    send(c, buildMultiMediaTime(static_cast<uint32_t>(uv_now(loop))));
  }
  void handle(Conn& c, const MouseModeRequest& m) {
    auto s = sessions.find(c.sessionId);
    if (s == sessions.end())
      return;
    s->second.mouseMode = m.mode;
    send(c, buildMouseMode(m.mode));
  }
  void handle(Conn&, const AgentStart&) {}
  void handle(Conn& c, const AgentData& d) {
    spdlog::debug("client {}: {} bytes of agent data discarded (no agent)", c.peer, d.size);
  }
  void handle(Conn&, const AgentToken&) {}
  void handle(Conn& c, const DisplayInit& init) {
    // spice-gtk sends one per connection; spice-server drops a client that sends another.
    if (c.displayInitSeen) {
      closeConn(c, "sent DISPLAY_INIT twice", true);
      return;
    }
    c.displayInitSeen = true;
    // The GLZ dictionary it also announces is unused: spicebox sends no GLZ image.
    if (init.pixmapCacheSize <= 0) {
      spdlog::debug("client {}: no pixmap cache (size {})", c.peer, init.pixmapCacheSize);
      return;
    }
    c.cache = ImageCache(init.pixmapCacheSize);
    // Whatever the client's cache holds (a reconnecting spice-gtk keeps its session's cache),
    // it is empty after this, as the mirror is.
    send(c, buildInvalAllPixmaps());
    spdlog::debug("client {}: pixmap cache of {} pixels (announced {})", c.peer,
                  c.cache.capacityPixels(), init.pixmapCacheSize);
  }
  void handle(Conn&, const PreferredCompression&) {}
  void handle(Conn&, const KeyModifiers&) {}
  void handle(Conn& c, const ShmReply& m) {
    if (c.shm != Conn::Shm::Offered || m.segmentId != c.shmSegmentId) {
      closeConn(c, fmt::format("SHM_REPLY for segment {}, which was not offered", m.segmentId),
                true);
      return;
    }
    if (!m.accepted) {
      c.shm = Conn::Shm::Declined;
      spdlog::info("client {}: declined the shared-memory display; images follow", c.peer);
      if (display)
        createSurface(c);
      return;
    }
    c.shm = Conn::Shm::Active;
    c.tearFree = (m.flags & shm::REPLY_TEAR_FREE) != 0 && c.tearFreeCap;
    spdlog::info("client {}: shared-memory display{}", c.peer, c.tearFree ? ", tear-free" : "");
    if (display)
      createSurfaceShm(c);
    reportCounts();
  }
  void handle(Conn& c, const DamageHandled& m) {
    if (c.shm != Conn::Shm::Active || m.frame == 0 || m.frame > c.shmFrame) {
      closeConn(c, fmt::format("SHM_DAMAGE_HANDLED for frame {}, which was never sent", m.frame),
                true);
      return;
    }
    const size_t before = c.unacked.size();
    while (!c.unacked.empty() && c.unacked.front().frame <= m.frame)
      c.unacked.pop_front();
    if (c.unacked.size() != before)
      maybeFinishSync();
  }
  void handle(Conn& c, const InputEvent& e) {
    const uint64_t now = uv_now(loop);
    if (now - c.inputWindowStart >= 1000) {
      c.inputWindowStart = now;
      c.inputWindowCount = 0;
    }
    if (++c.inputWindowCount > MAX_INPUT_EVENTS_PER_SECOND) {
      closeConn(
          c, fmt::format("input flood (more than {} events a second)", MAX_INPUT_EVENTS_PER_SECOND),
          true);
      return;
    }
    const bool motion =
        std::holds_alternative<MouseMotion>(e) || std::holds_alternative<MousePosition>(e);
    if (motion && ++c.motions % SPICE_INPUT_MOTION_ACK_BUNCH == 0)
      send(c, buildMotionAck());
    if (auto* p = std::get_if<MousePosition>(&e)) {
      if (!display || p->displayId != 0 || p->x >= display->layout.width ||
          p->y >= display->layout.height) {
        spdlog::debug("client {}: mouse position outside the display dropped", c.peer);
        return;
      }
    }
    if (events.onInput)
      events.onInput(e);
  }

  // --- Display ---

  std::vector<Conn*> linked(uint8_t channelType) {
    std::vector<Conn*> out;
    for (auto& [id, c] : conns)
      if (c->state == ConnState::Linked && c->channelType == channelType && !c->closeAfterFlush)
        out.push_back(c.get());
    return out;
  }

  bool inStep(const Conn& c) const {
    return c.state == ConnState::Linked && c.sentSinceAck < c.acked + 2 * ACK_WINDOW &&
           c.outBytes < MAX_QUEUED_DISPLAY_BYTES;
  }

  Rect fullRect() const {
    return {0, 0, static_cast<int32_t>(display->layout.height),
            static_cast<int32_t>(display->layout.width)};
  }

  // --- Shared memory ---

  // Offered only to viewers on a unix socket whose user is allowed, whatever a client claims.
  bool shmAllowed(const Conn& c) const {
    return c.unixPeer && c.peerUid &&
           std::find(settings.shmUids.begin(), settings.shmUids.end(), *c.peerUid) !=
               settings.shmUids.end();
  }

  // A display client gets the display: an offer first when it asked for shared memory and may
  // have it; the answer decides between images and shared memory.
  void showDisplay(Conn& c) {
    switch (c.shm) {
      case Conn::Shm::None:
        if (c.shmCap && shmAllowed(c)) {
          sendOffer(c);
          c.shm = Conn::Shm::Offered;
          c.shmOfferedAt = uv_now(loop);
          return;
        }
        createSurface(c);
        return;
      case Conn::Shm::Offered:
        return;  // its SHM_REPLY decides
      case Conn::Shm::Declined:
        createSurface(c);
        return;
      case Conn::Shm::Active:
        createSurfaceShm(c);
        return;
    }
  }

  void sendOffer(Conn& c) {
    c.shmSegmentId = display->shmId;
    send(c, buildShmOffer(display->shmId, display->size, c.tearFreeCap ? shm::OFFER_TEAR_FREE : 0),
         display->fd);
  }

  void createSurfaceShm(Conn& c) {
    if (c.shmSegmentId != display->shmId)
      sendOffer(c);  // a new segment: no second reply is asked for
    const DisplayLayout& l = display->layout;
    send(c, buildSurfaceCreateShm(l.width, l.height, display->shmId, display->offset(), l.stride));
    c.surfaceLive = true;
    c.needMark = false;
    c.pending.clear();
    const Rect full = fullRect();
    sendShmDamage(c, std::span(&full, 1));
  }

  void sendShmDamage(Conn& c, std::span<const Rect> rects) {
    Rect box;
    if (rects.size() > shm::MAX_DAMAGE_RECTS) {
      box = rects.front();
      for (const Rect& r : rects)
        box = unite(box, r);
      rects = std::span(&box, 1);
    }
    ++c.shmFrame;
    send(c, buildShmDamage(display->offset(), c.shmFrame, rects));
    if (!c.tearFree)
      return;
    if (c.unacked.size() >= MAX_UNACKED_FRAMES) {
      endTearFree(c, fmt::format("left {} frames unacknowledged", c.unacked.size()));
      return;
    }
    c.unacked.push_back({c.shmFrame, display->current});
  }

  // A frame for a shared-memory client: its changed rectangles, even none (the buffer changed).
  // A tear-free client gets every frame (it acknowledges each, so its queue stays short); others
  // follow the ACK window like any display client, with pending damage while out of step.
  void shmFrame(Conn& c, std::span<const Rect> changed) {
    if (c.tearFree && c.outBytes > MAX_QUEUED_SMALL_BYTES)
      endTearFree(c, fmt::format("stopped reading ({} bytes queued)", c.outBytes));
    if (c.tearFree || (c.pending.empty() && inStep(c))) {
      sendShmDamage(c, changed);
      return;
    }
    for (const Rect& r : changed)
      addPending(c, r);
  }

  void endTearFree(Conn& c, const std::string& why) {
    spdlog::warn("client {}: {}: tear-free mode off for it (it may now see partly drawn frames)",
                 c.peer, why);
    c.tearFree = false;
    c.unacked.clear();
    reportCounts();
  }

  // Whether tear-free client `c` may still be reading the buffer the renderer draws into next.
  // The renderer writes only the buffer that does not hold the current picture (it flips before
  // drawing after a frame, render.capnp "Double buffering"), so a client reading the current
  // picture holds nothing up: the renderer draws the next frame while the client reads this one,
  // and waits only for a client still on the frame before. With one buffer, any unacknowledged
  // frame holds it.
  bool holdsRenderer(const Conn& c) const {
    if (c.state != ConnState::Linked)
      return false;
    const bool oneBuffer = !display || display->layout.backOffset == 0;
    for (const Conn::Unacked& u : c.unacked)
      if (oneBuffer || u.buffer != display->current)
        return true;
    return false;
  }

  // Answers the pending sync once no tear-free client still reads the buffer the renderer will
  // draw into next. Returns whether nothing is pending any more.
  bool maybeFinishSync() {
    if (!pendingSync)
      return true;
    for (const auto& [id, c] : conns)
      if (holdsRenderer(*c))
        return false;
    uv_timer_stop(ackTimer.get());
    std::exchange(pendingSync, nullptr)();
    return true;
  }

  void onAckTimeout() {
    std::vector<Conn*> late;
    for (auto& [id, c] : conns)
      if (holdsRenderer(*c))
        late.push_back(c.get());
    for (Conn* c : late)
      endTearFree(*c, fmt::format("did not acknowledge frame {} within {} ms",
                                  c->unacked.front().frame, TEAR_FREE_ACK_MS));
    maybeFinishSync();
  }

  void createSurface(Conn& c) {
    const DisplayLayout& l = display->layout;
    send(c, buildSurfaceCreate(l.width, l.height));
    if (c.monitorsConfig)
      send(c, buildMonitorsConfig(l.width, l.height));
    c.surfaceLive = true;
    c.needMark = true;
    c.pending.assign(1, fullRect());
    sendPending(c);
  }

  void addPending(Conn& c, const Rect& r) {
    if (emptyRect(r))
      return;
    for (const Rect& p : c.pending)
      if (contains(p, r))
        return;
    if (c.pending.size() < MAX_PENDING_RECTS) {
      c.pending.push_back(r);
      return;
    }
    // Full: grow the rect whose area grows least.
    size_t best = 0;
    int64_t bestGrowth = INT64_MAX;
    for (size_t i = 0; i < c.pending.size(); ++i) {
      const int64_t growth = area(unite(c.pending[i], r)) - area(c.pending[i]);
      if (growth < bestGrowth) {
        bestGrowth = growth;
        best = i;
      }
    }
    c.pending[best] = unite(c.pending[best], r);
  }

  void sendDrawCopy(Conn& c, const Rect& r) {
    PixelRect px;
    px.pixels = display->shadow.data() +
                size_t{static_cast<uint32_t>(r.top)} * display->shadowStride() +
                size_t{static_cast<uint32_t>(r.left)} * 4;
    px.stride = display->shadowStride();
    px.width = static_cast<uint32_t>(r.right - r.left);
    px.height = static_cast<uint32_t>(r.bottom - r.top);
    // Not worth caching, or larger than the client's whole cache (so never in it): sent as is.
    const uint64_t pixels = uint64_t{px.width} * px.height;
    if (!c.cache.enabled() || pixels < ImageCache::MIN_CACHED_PIXELS ||
        pixels > c.cache.capacityPixels()) {
      // TODO(perf): clients with the same compression share one encoding per rect.
      const EncodedImage image = encodeImage(px, settings.imageCompression, c.lz4);
      send(c, buildDrawCopy(r, image, nextImageId++));
      return;
    }
    // Hashed and encoded from one contiguous copy.
    // TODO(perf): clients share one copy, hash and encoding per rect.
    std::vector<uint8_t> copy(size_t{px.width} * px.height * 4);
    for (uint32_t y = 0; y < px.height; ++y)
      std::memcpy(copy.data() + size_t{y} * px.width * 4, px.pixels + size_t{y} * px.stride,
                  size_t{px.width} * 4);
    const ImageKey key = imageKey(px.width, px.height, copy.data());
    const ImageCache::Lookup found = c.cache.find(key);
    if (found == ImageCache::Lookup::Hit) {
      send(c, buildDrawCopyFromCache(r, key.id));
      return;
    }
    const PixelRect local{copy.data(), px.width * 4, px.width, px.height};
    const EncodedImage image = encodeImage(local, settings.imageCompression, c.lz4);
    std::vector<uint64_t> evicted;
    const bool cacheMe = found == ImageCache::Lookup::Miss && c.cache.insert(key, evicted);
    // The evicted ids are dropped before the image that took their room is cached.
    for (size_t i = 0; i < evicted.size(); i += MAX_INVAL_IDS)
      send(c, buildInvalList(
                  std::span(evicted).subspan(i, std::min(MAX_INVAL_IDS, evicted.size() - i))));
    send(c, buildDrawCopy(r, image, cacheMe ? key.id : nextImageId++, cacheMe));
  }

  void sendPending(Conn& c) {
    if (!c.surfaceLive || !display)
      return;
    if (c.shm == Conn::Shm::Active) {
      if (!c.pending.empty() && inStep(c)) {
        const std::vector<Rect> rects = std::exchange(c.pending, {});
        sendShmDamage(c, rects);
      }
      return;
    }
    while (!c.pending.empty() && inStep(c)) {
      const Rect r = c.pending.front();
      c.pending.erase(c.pending.begin());
      sendDrawCopy(c, r);
    }
    if (c.pending.empty() && c.needMark) {
      send(c, buildMark());
      c.needMark = false;
    }
  }

  void sendFrame(Conn& c, std::span<const Hint> hints, std::span<const Rect> damage) {
    const uint32_t w = display->layout.width, h = display->layout.height;
    const Rect full = fullRect();
    bool direct = c.pending.empty() && inStep(c);
    for (const Hint& hint : hints) {
      if (auto* fill = std::get_if<SolidFill>(&hint)) {
        std::vector<Rect> rects;
        for (const Rect& r : fill->rects) {
          const Rect clipped = clipTo(r, w, h);
          if (!emptyRect(clipped))
            rects.push_back(clipped);
        }
        for (size_t i = 0; i < rects.size(); i += MAX_FILL_RECTS) {
          const size_t n = std::min(MAX_FILL_RECTS, rects.size() - i);
          direct = direct && inStep(c);
          if (direct)
            send(c, buildDrawFill(fill->color, std::span(rects).subspan(i, n)));
          else
            for (size_t k = i; k < i + n; ++k)
              addPending(c, rects[k]);
        }
      } else {
        const auto& copy = std::get<CopyBits>(hint);
        const Rect dest = clipTo(copy.dest, w, h);
        // In 64 bits: the broker's values are range-checked here, not trusted to be small.
        const int64_t srcBottom = int64_t{copy.srcY} + copy.dest.bottom - copy.dest.top;
        const int64_t srcRight = int64_t{copy.srcX} + copy.dest.right - copy.dest.left;
        const bool valid = !emptyRect(dest) && dest == copy.dest && copy.srcX >= 0 &&
                           copy.srcY >= 0 && srcBottom <= full.bottom && srcRight <= full.right;
        direct = direct && valid && inStep(c);
        if (direct)
          send(c, buildCopyBits(dest, copy.srcX, copy.srcY));
        else
          addPending(c, dest);
      }
    }
    for (const Rect& r : damage) {
      const Rect clipped = clipTo(r, w, h);
      if (emptyRect(clipped))
        continue;
      if (direct && inStep(c))
        sendDrawCopy(c, clipped);
      else
        addPending(c, clipped);
    }
  }

  // --- Cursor ---

  void sendCursor(Conn& c) {
    if (c.outBytes >= MAX_QUEUED_SMALL_BYTES) {
      c.cursorDirty = true;
      return;
    }
    c.cursorDirty = false;
    const CursorState& s = cursor;
    if (!c.cursorSent) {
      send(c, buildCursorInit(s));
    } else if (s.shapeSerial != c.cursorSerial || (s.visible && !c.cursorVisible)) {
      send(c, buildCursorSet(s));
    } else if (!s.visible && c.cursorVisible) {
      send(c, buildCursorHide());
    } else if (s.visible && (s.x != c.cursorX || s.y != c.cursorY)) {
      send(c, buildCursorMove(s.x, s.y));
    }
    c.cursorSent = true;
    c.cursorSerial = s.shapeSerial;
    c.cursorVisible = s.visible;
    c.cursorX = s.x;
    c.cursorY = s.y;
  }

  // --- Accepting ---

  static void onListenerEvent(uv_poll_t* handle, int status, int) {
    auto* impl = static_cast<Impl*>(handle->data);
    if (!impl || status < 0)
      return;
    size_t index = 0;
    for (; index < impl->listenerPolls.size(); ++index)
      if (impl->listenerPolls[index].get() == handle)
        break;
    if (index < impl->listeners.size())
      impl->acceptFrom(impl->listeners[index]);
  }

  void acceptFrom(const Listener& listener) {
    for (int i = 0; i < MAX_ACCEPTS_PER_CALLBACK; ++i) {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      const int fd = ::accept4(listener.fd.get(), reinterpret_cast<sockaddr*>(&addr), &len,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
          spdlog::warn("{}: accepting a client failed: {}", listener.name, std::strerror(errno));
        return;
      }
      base::Fd client(fd);
      std::string peer = listener.name;
      if (listener.kind == ListenerKind::Tcp) {
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char host[INET6_ADDRSTRLEN] = "?";
        uint16_t port = 0;
        if (addr.ss_family == AF_INET) {
          auto* a = reinterpret_cast<sockaddr_in*>(&addr);
          inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
          port = ntohs(a->sin_port);
        } else if (addr.ss_family == AF_INET6) {
          auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
          inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
          port = ntohs(a->sin6_port);
        }
        peer = fmt::format("{}:{}", host, port);
      }
      if (conns.size() >= MAX_CONNECTIONS) {
        ++refused;
        if (uv_now(loop) - lastRefusalLog >= 1000 || lastRefusalLog == 0) {
          lastRefusalLog = uv_now(loop);
          spdlog::warn("client {}: refused, {} connections are open (the limit)", peer,
                       conns.size());
        }
        reportCounts();
        continue;  // `client` closes here
      }
      auto c = std::make_unique<Conn>();
      c->id = nextConnId++;
      if (listener.kind == ListenerKind::Unix) {
        c->unixPeer = true;
        ucred credentials{};
        socklen_t length = sizeof credentials;
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 &&
            length == sizeof credentials) {
          c->peerUid = credentials.uid;
          peer = fmt::format("{} (uid {}, pid {})", peer, credentials.uid, credentials.pid);
        }
      }
      c->peer = std::move(peer);
      c->fd = std::move(client);
      c->linkDeadline = uv_now(loop) + LINK_DEADLINE_MS;
      if (uv_poll_init(loop, c->poll.get(), c->fd.get()) != 0) {
        spdlog::warn("client {}: cannot watch its socket", c->peer);
        continue;
      }
      c->owner = this;
      c->poll->data = c.get();
      updatePoll(*c);
      spdlog::debug("client {}: connected", c->peer);
      conns[c->id] = std::move(c);
      reportCounts();
    }
  }

  void onTick() {
    const uint64_t now = uv_now(loop);
    if (now >= lastPings + PING_INTERVAL_MS) {
      lastPings = now;
      for (Conn* c : linked(SPICE_CHANNEL_MAIN))
        if (c->outBytes < MAX_QUEUED_SMALL_BYTES)
          sendPing(*c);
    }
    std::vector<Conn*> late;
    for (auto& [id, c] : conns)
      if ((c->state != ConnState::Linked || c->closeAfterFlush) && c->state != ConnState::Closed &&
          now > c->linkDeadline)
        late.push_back(c.get());
    for (Conn* c : late)
      closeConn(*c,
                c->closeAfterFlush
                    ? "did not take its last messages in time"
                    : fmt::format("link stage not finished within {} s", LINK_DEADLINE_MS / 1000),
                true);
    std::vector<Conn*> silent;
    for (auto& [id, c] : conns)
      if (c->state == ConnState::Linked && c->shm == Conn::Shm::Offered &&
          now > c->shmOfferedAt + SHM_REPLY_DEADLINE_MS)
        silent.push_back(c.get());
    for (Conn* c : silent)
      closeConn(*c,
                fmt::format("did not answer SHM_OFFER within {} s", SHM_REPLY_DEADLINE_MS / 1000),
                true);
    std::vector<Conn*> stuck;
    for (auto& [id, c] : conns)
      if (c->state == ConnState::Linked && !c->closeAfterFlush && c->partialSince != 0 &&
          now > c->partialSince + MESSAGE_DEADLINE_MS)
        stuck.push_back(c.get());
    for (Conn* c : stuck)
      closeConn(
          *c,
          fmt::format("a message begun {} s ago was never finished", MESSAGE_DEADLINE_MS / 1000),
          true);
  }
};

void Server::prepare() {
  // OpenSSL's configuration, error strings and random generator are set up here, before the
  // sandbox: later calls only use the seeded generator (getrandom to reseed).
  // Both generators: the public one (session ids) and the private one (RSA blinding).
  unsigned char seed[16];
  if (RAND_bytes(seed, sizeof seed) != 1 || RAND_priv_bytes(seed, sizeof seed) != 1)
    spdlog::error("ticket: OpenSSL's random generator does not work");
  if (!ticketKey())
    ticketKey() = TicketKey::generate();
  // OpenSSL looks SHA-256 up (and may load its provider) on first use: here, before the sandbox.
  const uint8_t pixels[4] = {};
  (void)imageKey(1, 1, pixels);
}

Server::Server(uv_loop_t* loop, Events events)
    : impl_(std::make_unique<Impl>(loop, std::move(events))) {
  uv_timer_init(loop, impl_->tick.get());
  uv_timer_init(loop, impl_->reap.get());
  uv_timer_init(loop, impl_->ackTimer.get());
  impl_->tick->data = impl_.get();
  impl_->reap->data = impl_.get();
  impl_->ackTimer->data = impl_.get();
}

// Handles close in their destructors; libuv frees them on the loop's next turn.
Server::~Server() = default;

std::optional<std::string> Server::configure(Settings settings, std::vector<Listener> listeners) {
  Impl& s = *impl_;
  if (s.configured)
    return "the server is already configured";
  if (settings.password && settings.password->size() > SPICE_MAX_PASSWORD_LENGTH)
    return fmt::format("the password is {} characters long; SPICE allows at most {}",
                       settings.password->size(), SPICE_MAX_PASSWORD_LENGTH);
  if (settings.maxClients == 0 || settings.maxClients > 64)
    return fmt::format("max clients is {}; use 1 .. 64", settings.maxClients);
  if (listeners.empty())
    return "no listening socket: give at least one TCP or unix listener";
  if (settings.shmUids.size() > 64)
    return fmt::format("{} users allowed shared memory; at most 64", settings.shmUids.size());
  if (!ticketKey())
    prepare();
  if (!ticketKey())
    return "no RSA key for the ticket: Server::prepare() must run before the sandbox";
  for (const Listener& l : listeners)
    if (!l.fd)
      return fmt::format("listener {} has no descriptor", l.name);
  s.settings = std::move(settings);
  s.listeners = std::move(listeners);
  for (const Listener& l : s.listeners) {
    base::UvHandle<uv_poll_t> poll;
    if (int err = uv_poll_init(s.loop, poll.get(), l.fd.get()); err != 0)
      return fmt::format("listener {}: cannot watch its descriptor: {}", l.name, uv_strerror(err));
    poll->data = impl_.get();
    uv_poll_start(poll.get(), UV_READABLE, Impl::onListenerEvent);
    s.listenerPolls.push_back(std::move(poll));
  }
  uv_timer_start(
      s.tick.get(), [](uv_timer_t* t) { static_cast<Impl*>(t->data)->onTick(); }, 1000, 1000);
  uv_unref(s.tick.handle());
  s.configured = true;
  for (const Listener& l : s.listeners)
    spdlog::info("serving SPICE on {}", l.name);
  return std::nullopt;
}

std::optional<std::string> Server::setDisplay(base::Fd segment, const DisplayLayout& l,
                                              uint8_t buffer) {
  Impl& s = *impl_;
  dropDisplay();
  if (l.width == 0 || l.height == 0 || l.width > MAX_DISPLAY_SIDE || l.height > MAX_DISPLAY_SIDE)
    return fmt::format("display size {}x{} is outside 1 .. {}", l.width, l.height,
                       MAX_DISPLAY_SIDE);
  if (l.stride < uint64_t{l.width} * 4)
    return fmt::format("stride {} is less than width {} * 4", l.stride, l.width);
  const uint64_t end = l.offset + uint64_t{l.stride} * (l.height - 1) + uint64_t{l.width} * 4;
  if (l.offset > l.size || end > l.size)
    return fmt::format(
        "the picture (offset {}, {} rows of stride {}) does not fit the segment's "
        "{} bytes",
        l.offset, l.height, l.stride, l.size);
  if (l.backOffset != 0) {
    const uint64_t backEnd =
        l.backOffset + uint64_t{l.stride} * (l.height - 1) + uint64_t{l.width} * 4;
    if (l.backOffset > l.size || backEnd > l.size || l.backOffset < end)
      return fmt::format(
          "the second buffer (offset {}, {} rows of stride {}) does not fit the segment's {} "
          "bytes after the first",
          l.backOffset, l.height, l.stride, l.size);
  }
  if (buffer > 1 || (buffer == 1 && l.backOffset == 0))
    return fmt::format("the picture is said to be in buffer {} of a segment with {}", buffer,
                       l.backOffset ? "two" : "one");
  // A segment that can shrink would SIGBUS this process on the next read of its lost pages: the
  // broker seals its segments (SHRINK | GROW | SEAL), and a descriptor without the seal is refused.
  const int seals = ::fcntl(segment.get(), F_GET_SEALS);
  if (seals < 0)
    return fmt::format(
        "cannot read the display segment's seals ({}): it must be a memfd created with "
        "MFD_ALLOW_SEALING and sealed with F_SEAL_SHRINK",
        std::strerror(errno));
  if (!(seals & F_SEAL_SHRINK))
    return "the display segment is not sealed against shrinking: a viewer or the VMM could "
           "truncate it under the mapping; seal it with fcntl(F_ADD_SEALS, F_SEAL_SHRINK)";
  const off_t actual = ::lseek(segment.get(), 0, SEEK_END);
  if (actual < 0 || static_cast<uint64_t>(actual) < l.size)
    return fmt::format("the display segment is {} bytes, its layout says {}", actual, l.size);
  void* map = ::mmap(nullptr, l.size, PROT_READ, MAP_SHARED, segment.get(), 0);
  if (map == MAP_FAILED)
    return fmt::format("mapping the display segment ({} bytes) failed: {}", l.size,
                       std::strerror(errno));
  s.display = std::make_unique<Display>();
  s.display->map = static_cast<const uint8_t*>(map);
  s.display->size = l.size;
  s.display->layout = l;
  s.display->current = buffer;
  s.display->fd = std::make_shared<const base::Fd>(std::move(segment));
  s.display->shmId = s.nextShmId++;
  s.display->shadow.resize(size_t{l.width} * l.height * 4);
  s.display->take(s.fullRect());
  for (Conn* c : s.linked(SPICE_CHANNEL_DISPLAY))
    s.showDisplay(*c);
  return std::nullopt;
}

void Server::dropDisplay() {
  Impl& s = *impl_;
  if (!s.display)
    return;
  for (Conn* c : s.linked(SPICE_CHANNEL_DISPLAY)) {
    if (c->surfaceLive) {
      s.send(*c, buildDisplayReset());
      s.send(*c, buildSurfaceDestroy());
    }
    c->surfaceLive = false;
    c->needMark = false;
    c->pending.clear();
    c->unacked.clear();  // the renderer draws into a new segment: nothing to wait for
  }
  s.display.reset();
  s.maybeFinishSync();
}

void Server::frame(uint64_t generation, uint8_t buffer, std::span<const Hint> hints,
                   std::span<const Rect> damage) {
  Impl& s = *impl_;
  if (!s.display || generation != s.display->layout.generation)
    return;
  if (buffer > 1 || (buffer == 1 && s.display->layout.backOffset == 0)) {
    spdlog::error("a frame names buffer {} of a segment with {}; frame ignored", buffer,
                  s.display->layout.backOffset ? "two" : "one");
    return;
  }
  s.display->current = buffer;
  // Every changed rectangle, hints included (clipped, non-empty).
  const uint32_t w = s.display->layout.width, h = s.display->layout.height;
  std::vector<Rect> changed;
  auto note = [&](const Rect& r) {
    const Rect clipped = clipTo(r, w, h);
    if (!emptyRect(clipped))
      changed.push_back(clipped);
  };
  for (const Hint& hint : hints) {
    if (const auto* fill = std::get_if<SolidFill>(&hint))
      for (const Rect& r : fill->rects)
        note(r);
    else
      note(std::get<CopyBits>(hint).dest);
  }
  for (const Rect& r : damage)
    note(r);
  // As disjoint rectangles: an area several draws of the batch changed (a run of full-screen
  // fills is a list of identical hint rectangles) is copied and announced once.
  changed = disjointUnion(changed);
  // Shared-memory clients first, written at once: they need no pixels from here, so their
  // damage does not wait for the shadow's copy.
  const std::vector<Conn*> displays = s.linked(SPICE_CHANNEL_DISPLAY);
  for (Conn* c : displays)
    if (c->surfaceLive && c->shm == Conn::Shm::Active) {
      s.shmFrame(*c, changed);
      s.flush(*c);
    }
  // The shadow takes every pixel the batch changed, before any image client is served from it.
  for (const Rect& r : changed)
    s.display->take(r);
  for (Conn* c : displays)
    if (c->state == ConnState::Linked && c->surfaceLive && c->shm != Conn::Shm::Active)
      s.sendFrame(*c, hints, damage);
}

void Server::sync(std::function<void()> done) {
  Impl& s = *impl_;
  if (s.pendingSync)
    std::exchange(s.pendingSync, nullptr)();  // answered in order (the broker sends one at a time)
  s.pendingSync = std::move(done);
  if (!s.maybeFinishSync())
    uv_timer_start(
        s.ackTimer.get(), [](uv_timer_t* t) { static_cast<Impl*>(t->data)->onAckTimeout(); },
        TEAR_FREE_ACK_MS, 0);
}

void Server::setCursor(const CursorState& cursor) {
  Impl& s = *impl_;
  s.cursor = cursor;
  if (cursor.width > MAX_CURSOR_SIDE || cursor.height > MAX_CURSOR_SIDE ||
      cursor.pixels.size() != size_t{cursor.width} * cursor.height) {
    s.cursor.shapeSerial = 0;
    s.cursor.pixels.clear();
  }
  for (Conn* c : s.linked(SPICE_CHANNEL_CURSOR))
    s.sendCursor(*c);
}

ClientCounts Server::counts() const {
  return impl_->counts();
}

}  // namespace spicebox::netproxy
