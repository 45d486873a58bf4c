// Runs in: tests. Input: a client's bytes, read with bounded sizes and deadlines (see
// fake-spice-server.h).
#include "client/fake-spice-server.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <poll.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "base/latency-stamp.h"
#include "base/shm-protocol.h"
#include "client/canvas.h"
#include "client/wire.h"

namespace spicebox::client::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Every wait of the server: a client that does not answer in time fails the test.
constexpr auto STEP_TIMEOUT = std::chrono::seconds(20);

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The client closed the connection: the end of the session (a tool that has seen enough leaves
// while frames are still coming), not a protocol error.
struct ClientClosed : Failure {
  using Failure::Failure;
};

// The DER public key sent in every link reply (RSA-1024, as SPICE tickets need); the server
// never decrypts the ticket: the fake has no password.
const Bytes& publicKey() {
  static const Bytes der = [] {
    EVP_PKEY* key = EVP_RSA_gen(1024);
    if (!key)
      throw Failure("EVP_RSA_gen failed");
    int len = i2d_PUBKEY(key, nullptr);
    Bytes out(static_cast<size_t>(len));
    uint8_t* p = out.data();
    i2d_PUBKEY(key, &p);
    EVP_PKEY_free(key);
    return out;
  }();
  return der;
}

// One connection, every wait bounded by STEP_TIMEOUT and ended early by the stop eventfd.
class Conn {
 public:
  Conn(base::Fd fd, int stopFd) : fd_(std::move(fd)), stopFd_(stopFd) {}

  // Waits until the socket is readable; false when it is not within the step timeout.
  void waitReadable(const char* what) {
    auto deadline = Clock::now() + STEP_TIMEOUT;
    for (;;) {
      pollfd p[2] = {{fd_.get(), POLLIN, 0}, {stopFd_, POLLIN, 0}};
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0)
        throw Failure(std::string("timed out waiting for ") + what);
      int n = ::poll(p, 2, static_cast<int>(left));
      if (n < 0 && errno == EINTR)
        continue;
      if (p[1].revents)
        throw Failure(std::string("stopped while waiting for ") + what);
      if (n > 0)
        return;
    }
  }
  Bytes read(size_t n, const char* what) {
    Bytes out(n);
    size_t done = 0;
    while (done < n) {
      waitReadable(what);
      ssize_t got = ::recv(fd_.get(), out.data() + done, n - done, MSG_DONTWAIT);
      if (got == 0 || (got < 0 && (errno == ECONNRESET || errno == EPIPE)))
        throw ClientClosed(std::string("the client closed the connection before ") + what);
      if (got < 0 && errno != EAGAIN && errno != EINTR)
        throw Failure(std::string("recv: ") + std::strerror(errno));
      if (got > 0)
        done += static_cast<size_t>(got);
    }
    return out;
  }
  void write(const Bytes& bytes, int passFd = -1) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int))];
    if (passFd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &passFd, sizeof(int));
    }
    // Blocking socket: sendmsg waits while the client's buffer is full (the client reads).
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
      throw ClientClosed("the client closed the connection");
    if (n != static_cast<ssize_t>(bytes.size()))
      throw Failure(std::string("sendmsg: ") + (n < 0 ? std::strerror(errno) : "short write"));
  }
  void send(uint16_t type, const Bytes& body, int passFd = -1) {
    write(buildMessage(type, body), passFd);
  }
  struct Message {
    uint16_t type = 0;
    Bytes body;
  };
  Message message(const char* what) {
    Bytes h = read(MINI_HEADER_SIZE, what);
    MiniHeader mh = parseMiniHeader(std::span<const uint8_t, MINI_HEADER_SIZE>(h.data(), h.size()));
    if (mh.size > 4096)
      throw Failure("client message of " + std::to_string(mh.size) + " bytes");
    return {mh.type, read(mh.size, what)};
  }
  bool readable() {
    pollfd p{fd_.get(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }
  // Reads until EOF (skipping what the client sends): true when the client closed.
  bool awaitClose() {
    uint8_t buf[4096];
    for (;;) {
      try {
        waitReadable("the client to close");
      } catch (const Failure&) {
        return false;
      }
      ssize_t got = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
        return true;
    }
  }

 private:
  base::Fd fd_;
  int stopFd_;
};

struct Linked {
  std::unique_ptr<Conn> conn;
  uint8_t type = 0;
  std::vector<uint32_t> channelCaps;
};

Linked acceptAndLink(int listener, int stopFd, const std::vector<uint32_t>& serverCaps) {
  Conn waiter(base::Fd(::dup(listener)), stopFd);
  waiter.waitReadable("a client to connect");
  base::Fd fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd)
    throw Failure(std::string("accept: ") + std::strerror(errno));
  Linked l;
  l.conn = std::make_unique<Conn>(std::move(fd), stopFd);
  Conn& c = *l.conn;
  Bytes header = c.read(LINK_HEADER_SIZE, "the link header");
  Reader h(header);
  uint32_t magic = h.u32(), major = h.u32();
  h.u32();
  uint32_t size = h.u32();
  if (magic != SPICE_MAGIC || major != SPICE_VERSION_MAJOR || size < LINK_MESS_SIZE || size > 4096)
    throw Failure("bad link header (size " + std::to_string(size) + ")");
  Bytes body = c.read(size, "the link message");
  Reader m(body);
  m.u32();  // connection id
  l.type = m.u8();
  m.u8();
  uint32_t numCommon = m.u32(), numChannel = m.u32(), capsOffset = m.u32();
  Reader caps(body, capsOffset);
  caps.skip(size_t{numCommon} * 4);
  for (uint32_t i = 0; i < numChannel && i < 32; ++i)
    l.channelCaps.push_back(caps.u32());
  if (m.failed() || caps.failed())
    throw Failure("link message truncated");

  std::vector<uint32_t> common;
  setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
  setCap(common, SPICE_COMMON_CAP_AUTH_SPICE);
  setCap(common, SPICE_COMMON_CAP_MINI_HEADER);
  Writer reply;
  uint32_t replySize = static_cast<uint32_t>(LINK_REPLY_SIZE + 4 * (1 + serverCaps.size()));
  reply.u32(SPICE_MAGIC).u32(SPICE_VERSION_MAJOR).u32(SPICE_VERSION_MINOR).u32(replySize);
  reply.u32(SPICE_LINK_ERR_OK).bytes(publicKey());
  reply.u32(1).u32(static_cast<uint32_t>(serverCaps.size())).u32(LINK_REPLY_SIZE);
  reply.u32(common[0]);
  for (uint32_t w : serverCaps)
    reply.u32(w);
  c.write(reply.take());
  c.read(4, "the auth mechanism");
  c.read(TICKET_SIZE, "the ticket");
  Writer ok;
  ok.u32(SPICE_LINK_ERR_OK);
  c.write(ok.take());
  return l;
}

// A display segment: memfd, two buffers, sealed; the client gets a read-only descriptor.
struct Segment {
  base::Fd rw, ro;
  uint8_t* data = nullptr;
  size_t size = 0;
  explicit Segment(size_t bytes) : size(bytes) {
    rw = base::Fd(::memfd_create("fake-server-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!rw || ::ftruncate(rw.get(), static_cast<off_t>(bytes)) != 0)
      throw Failure("memfd");
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rw.get(), 0);
    if (p == MAP_FAILED)
      throw Failure("mmap");
    data = static_cast<uint8_t*>(p);
    if (::fcntl(rw.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      throw Failure("F_ADD_SEALS");
    ro = base::Fd(
        ::open(("/proc/self/fd/" + std::to_string(rw.get())).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ro)
      throw Failure("reopening the segment read-only");
  }
  ~Segment() {
    if (data)
      ::munmap(data, size);
  }
};

}  // namespace

FakeSpiceServer::FakeSpiceServer(FakeServerOptions options) : options_(options) {
  char tmpl[] = "/tmp/fake-spice-XXXXXX";
  if (!::mkdtemp(tmpl))
    throw Failure("mkdtemp");
  dir_ = tmpl;
  path_ = dir_ + "/spice.sock";
  listener_ = base::Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
  if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener_.get(), 4) != 0)
    throw Failure(std::string("bind/listen: ") + std::strerror(errno));
  stop_ = base::Fd(::eventfd(0, EFD_CLOEXEC));
  publicKey();  // made before a client waits on it
  thread_ = std::thread([this] { run(); });
}

FakeSpiceServer::~FakeSpiceServer() {
  uint64_t one = 1;
  if (::write(stop_.get(), &one, sizeof one) < 0) {
    // The eventfd cannot be full after one write; the thread ends at its step timeout anyway.
  }
  wait();
  ::unlink(path_.c_str());
  ::rmdir(dir_.c_str());
}

const FakeServerResult& FakeSpiceServer::wait() {
  if (!joined_) {
    thread_.join();
    joined_ = true;
  }
  return result_;
}

void FakeSpiceServer::run() {
  try {
    serve();
  } catch (const ClientClosed&) {
    result_.clientClosed = true;
  } catch (const std::exception& e) {
    result_.error = e.what();
  }
}

void FakeSpiceServer::serve() {
  const FakeServerOptions& o = options_;
  Linked main = acceptAndLink(listener_.get(), stop_.get(), {});
  if (main.type != SPICE_CHANNEL_MAIN)
    throw Failure("first channel linked is type " + std::to_string(main.type));
  Writer init;  // session_id, display hint, mouse modes, current mode, agent, tokens, mm time, ram
  init.u32(1).u32(1).u32(3).u32(SPICE_MOUSE_MODE_CLIENT).u32(0).u32(0).u32(0).u32(0);
  main.conn->send(SPICE_MSG_MAIN_INIT, init.take());
  Writer list;
  list.u32(1).u8(SPICE_CHANNEL_DISPLAY).u8(0);
  main.conn->send(SPICE_MSG_MAIN_CHANNELS_LIST, list.take());

  std::vector<uint32_t> displayCaps;
  if (o.offerShm) {
    setCap(displayCaps, shm::CAP_SHARED_MEMORY);
    if (o.offerTearFree)
      setCap(displayCaps, shm::CAP_TEAR_FREE);
  }
  Linked d = acceptAndLink(listener_.get(), stop_.get(), displayCaps);
  if (d.type != SPICE_CHANNEL_DISPLAY)
    throw Failure("second channel linked is type " + std::to_string(d.type));
  Conn& c = *d.conn;
  Writer setAck;
  setAck.u32(1).u32(10);  // generation 1, window 10
  c.send(SPICE_MSG_SET_ACK, setAck.take());

  uint32_t stride = o.width * 4 + o.stridePadding;
  size_t bufferBytes = size_t{stride} * o.height;
  std::unique_ptr<Segment> segment;
  if (o.offerShm && hasCap(d.channelCaps, shm::CAP_SHARED_MEMORY)) {
    segment = std::make_unique<Segment>(2 * bufferBytes);
    bool tearFreeOffered = o.offerTearFree && hasCap(d.channelCaps, shm::CAP_TEAR_FREE);
    Writer offer;
    offer.u32(5).u64(segment->size).u32(tearFreeOffered ? shm::OFFER_TEAR_FREE : 0);
    c.send(shm::MSG_SHM_OFFER, offer.take(), segment->ro.get());
    result_.shmOffered = true;
    for (;;) {
      auto m = c.message("SHM_REPLY");
      if (m.type != shm::MSGC_SHM_REPLY)
        continue;  // ACK_SYNC, DISPLAY_INIT
      Reader r(m.body);
      uint32_t id = r.u32(), accepted = r.u32(), flags = r.u32();
      if (m.body.size() != shm::SHM_REPLY_SIZE || id != 5 || accepted > 1 ||
          (flags & ~shm::REPLY_TEAR_FREE) || (flags && (!accepted || !tearFreeOffered)))
        throw Failure("malformed SHM_REPLY");
      result_.shmAccepted = accepted == 1;
      result_.tearFree = flags & shm::REPLY_TEAR_FREE;
      break;
    }
    if (!result_.shmAccepted)
      segment.reset();
  }

  // The picture: a gradient, then per frame an 8 x 6 rectangle of a new colour; a stamp at
  // (0,0) in every frame.
  Canvas picture(o.width, o.height);
  Rect whole{0, 0, static_cast<int32_t>(o.height), static_cast<int32_t>(o.width)};
  for (uint32_t y = 0; y < o.height; ++y)
    for (uint32_t x = 0; x < o.width; ++x)
      picture.fill(Rect{int32_t(y), int32_t(x), int32_t(y + 1), int32_t(x + 1)}, {},
                   (x * 4 & 0xff) << 16 | (y * 4 & 0xff) << 8 | 0x40);
  if (segment) {
    Writer create;
    create.u32(0).u32(o.width).u32(o.height).u32(SPICE_SURFACE_FMT_32_xRGB);
    create.u32(SPICE_SURFACE_FLAGS_PRIMARY).u32(5).u64(0).u32(stride);
    c.send(shm::MSG_SURFACE_CREATE_SHM, create.take());
  } else {
    Writer create;
    create.u32(0).u32(o.width).u32(o.height).u32(SPICE_SURFACE_FMT_32_xRGB);
    create.u32(SPICE_SURFACE_FLAGS_PRIMARY);
    c.send(SPICE_MSG_DISPLAY_SURFACE_CREATE, create.take());
  }

  for (uint32_t frame = 0; frame <= o.frames; ++frame) {
    std::vector<Rect> damage;
    if (frame == 0) {
      damage.push_back(whole);
    } else {
      int32_t x0 = int32_t((frame * 7) % (o.width - 8)),
              y0 = int32_t((frame * 5) % (o.height - 8) + 1);
      Rect r{y0, x0, y0 + 6, x0 + 8};
      picture.fill(r, {}, (0x900000 + frame * 0x010305) & 0xffffff);
      damage.push_back(r);
      damage.push_back(Rect{0, 0, 1, int32_t(stamp::STAMP_WIDTH)});
    }
    uint32_t px[stamp::STAMP_WIDTH];
    stamp::encode(stamp::Stamp{frame + 1, stamp::monotonicNowNs()}, px);
    for (uint32_t x = 0; x < stamp::STAMP_WIDTH; ++x)
      picture.fill(Rect{0, int32_t(x), 1, int32_t(x + 1)}, {}, px[x]);

    if (segment) {
      size_t offset = (frame % 2) * bufferBytes;
      for (uint32_t y = 0; y < o.height; ++y)
        std::memcpy(segment->data + offset + size_t{y} * stride,
                    picture.pixels().data() + size_t{y} * o.width, size_t{o.width} * 4);
      Writer w;
      w.u32(0).u64(offset).u64(frame + 1).u32(static_cast<uint32_t>(damage.size()));
      for (const Rect& r : damage)
        w.i32(r.top).i32(r.left).i32(r.bottom).i32(r.right);
      c.send(shm::MSG_SHM_DAMAGE, w.take());
      // Tear-free in lock step: the next frame's buffer is written only after this one was
      // acknowledged (the client may read the buffer a frame names until it acknowledges it).
      while (result_.tearFree) {
        auto m = c.message("DAMAGE_HANDLED");
        if (m.type != shm::MSGC_SHM_DAMAGE_HANDLED)
          continue;
        Reader r(m.body);
        uint64_t acked = r.u64();
        if (m.body.size() != shm::DAMAGE_HANDLED_SIZE || acked != frame + 1)
          throw Failure("DAMAGE_HANDLED for frame " + std::to_string(acked) + ", expected " +
                        std::to_string(frame + 1));
        ++result_.acksReceived;
        break;
      }
    } else {
      for (const Rect& r : damage) {
        uint32_t w = uint32_t(r.right - r.left), h = uint32_t(r.bottom - r.top);
        Writer m;  // DisplayBase, Copy, then the image right after them
        m.u32(0).i32(r.top).i32(r.left).i32(r.bottom).i32(r.right).u8(SPICE_CLIP_TYPE_NONE);
        uint32_t imageOffset = 21 + 4 + 16 + 2 + 1 + 13;
        m.u32(imageOffset).i32(0).i32(0).i32(int32_t(h)).i32(int32_t(w));
        m.u16(SPICE_ROPD_OP_PUT).u8(0).u8(0).i32(0).i32(0).u32(0);
        m.u64(0).u8(SPICE_IMAGE_TYPE_BITMAP).u8(0).u32(w).u32(h);
        m.u8(SPICE_BITMAP_FMT_32BIT).u8(SPICE_BITMAP_FLAGS_TOP_DOWN).u32(w).u32(h).u32(w * 4);
        m.u32(0);
        for (int32_t y = r.top; y < r.bottom; ++y)
          for (int32_t x = r.left; x < r.right; ++x)
            m.u32(picture.pixel(uint32_t(x), uint32_t(y)));
        c.send(SPICE_MSG_DISPLAY_DRAW_COPY, m.take());
      }
    }
    ++result_.framesSent;
    // Kept per frame: a client that has seen the last frame may leave while the rest of this
    // loop still reads what it sent.
    result_.picture = picture.pixels();
    while (c.readable() && !result_.tearFree)
      c.message("client messages");  // ACKs, DISPLAY_INIT: read so the socket never fills
  }
  result_.clientClosed = c.awaitClose();
}

}  // namespace spicebox::client::testing
