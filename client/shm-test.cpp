// Runs in: tests. Input: a fake server in the test: the shared-memory display extension's
// messages built byte by byte from docs/protocol.md and base/shm-protocol.h (field order and
// widths noted beside each), real sealed memfds passed with SCM_RIGHTS over a socketpair, and
// hostile variants of each that must close the channel with a reason (or be answered
// accepted=0), never crash the client, read outside the mapping or leak a descriptor.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <climits>
#include <cstring>

#include "base/shm-protocol.h"
#include "client/spice-client.h"

using namespace spicebox;
using namespace spicebox::client;

namespace {

size_t openFdCount() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d);
  while (::readdir(d))
    ++n;
  ::closedir(d);
  return n;
}

// A display segment as a server makes it: a memfd, a writable mapping for the server's side,
// sealed with `seals`, and a read-only descriptor (reopened through /proc) for the client.
struct Segment {
  base::Fd rw, ro;
  uint8_t* data = nullptr;
  size_t size = 0;

  Segment(size_t bytes, int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) : size(bytes) {
    rw = base::Fd(::memfd_create("test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(rw);
    REQUIRE(::ftruncate(rw.get(), static_cast<off_t>(bytes)) == 0);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rw.get(), 0);
    REQUIRE(p != MAP_FAILED);
    data = static_cast<uint8_t*>(p);
    if (seals)
      REQUIRE(::fcntl(rw.get(), F_ADD_SEALS, seals) == 0);
    std::string path = "/proc/self/fd/" + std::to_string(rw.get());
    ro = base::Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(ro);
  }
  ~Segment() { ::munmap(data, size); }
  void put(size_t offset, uint32_t stride, uint32_t x, uint32_t y, uint32_t value) {
    std::memcpy(data + offset + size_t{y} * stride + size_t{x} * 4, &value, 4);
  }
};

struct FakeServer {
  int server = -1;
  std::unique_ptr<DisplayChannel> display;

  explicit FakeServer(ShmWish wish) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    server = fds[1];
    display = std::make_unique<DisplayChannel>(Socket(base::Fd(fds[0])), SPICE_CHANNEL_DISPLAY);
    display->setShmWish(wish);
  }
  ~FakeServer() { ::close(server); }

  // Sends `bytes` in one sendmsg with `fds` attached (SCM_RIGHTS) to its first byte.
  void sendWithFds(const Bytes& bytes, std::vector<int> fds) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(fds.size(), 1)));
    if (!fds.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    REQUIRE(::sendmsg(server, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
  }
  Error deliver(uint16_t type, const Bytes& body, std::vector<int> fds = {}) {
    sendWithFds(buildMessage(type, body), std::move(fds));
    return display->processAvailable();
  }

  // The next message the client sent, or nullopt when none is waiting.
  std::optional<std::pair<uint16_t, Bytes>> received() {
    uint8_t header[MINI_HEADER_SIZE];
    ssize_t n = ::recv(server, header, sizeof header, MSG_DONTWAIT);
    if (n <= 0)
      return std::nullopt;
    REQUIRE(n == static_cast<ssize_t>(MINI_HEADER_SIZE));
    MiniHeader h = parseMiniHeader(std::span<const uint8_t, MINI_HEADER_SIZE>(header, n));
    Bytes body(h.size);
    if (h.size)
      REQUIRE(::recv(server, body.data(), h.size, MSG_DONTWAIT) == static_cast<ssize_t>(h.size));
    return std::make_pair(h.type, body);
  }
  // Expects SHM_REPLY (segment_id u32, accepted u32, flags u32) and returns accepted, flags.
  std::pair<uint32_t, uint32_t> reply(uint32_t segmentId) {
    auto m = received();
    REQUIRE(m);
    REQUIRE(m->first == shm::MSGC_SHM_REPLY);
    REQUIRE(m->second.size() == shm::SHM_REPLY_SIZE);
    Reader r(m->second);
    CHECK(r.u32() == segmentId);
    uint32_t accepted = r.u32();
    return {accepted, r.u32()};
  }
};

// SHM_OFFER: u32 segment_id, u64 size, u32 flags.
Bytes offer(uint32_t segmentId, uint64_t size, uint32_t flags = 0) {
  Writer w;
  w.u32(segmentId).u64(size).u32(flags);
  return w.take();
}

// SURFACE_CREATE_SHM: u32 surface_id, width, height, format, flags, segment_id; u64 shm_offset;
// u32 stride.
Bytes surfaceCreateShm(uint32_t width, uint32_t height, uint32_t segmentId, uint64_t offset,
                       uint32_t stride, uint32_t format = SPICE_SURFACE_FMT_32_xRGB,
                       uint32_t flags = SPICE_SURFACE_FLAGS_PRIMARY) {
  Writer w;
  w.u32(0).u32(width).u32(height).u32(format).u32(flags).u32(segmentId).u64(offset).u32(stride);
  return w.take();
}

// SHM_DAMAGE: u32 surface_id, u64 shm_offset, u64 frame, u32 count, then count x (i32 top,
// left, bottom, right).
Bytes damage(uint64_t offset, uint64_t frame, std::vector<Rect> rects, uint32_t surfaceId = 0) {
  Writer w;
  w.u32(surfaceId).u64(offset).u64(frame).u32(static_cast<uint32_t>(rects.size()));
  for (const Rect& r : rects)
    w.i32(r.top).i32(r.left).i32(r.bottom).i32(r.right);
  return w.take();
}

// The picture used below: 8 x 4 pixels, stride 40 (8 bytes of padding per row), two buffers.
constexpr uint32_t W = 8, H = 4, STRIDE = 40;
constexpr size_t BUFFER = size_t{STRIDE} * H;  // 160 bytes
constexpr size_t SEGMENT = 2 * BUFFER + 64;
// Bytes a picture covers: its last row has no padding after it.
constexpr size_t SPAN = size_t{STRIDE} * (H - 1) + W * 4;  // 152

uint32_t pattern(uint32_t buffer, uint32_t x, uint32_t y) {
  return (buffer + 1) << 16 | y << 8 | x;
}

void fillBuffer(Segment& s, uint32_t buffer) {
  for (uint32_t y = 0; y < H; ++y)
    for (uint32_t x = 0; x < W; ++x)
      s.put(buffer * BUFFER, STRIDE, x, y, pattern(buffer, x, y));
}

// Offer accepted, SURFACE_CREATE_SHM of the 8 x 4 picture in buffer 0.
void enterShmMode(FakeServer& f, Segment& s, uint32_t offerFlags = 0) {
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(7, SEGMENT, offerFlags), {s.ro.get()}));
  REQUIRE(f.reply(7).first == 1);
  REQUIRE(f.display->shmActive());
  REQUIRE_FALSE(f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 7, 0, STRIDE)));
  REQUIRE(f.display->primary());
}

}  // namespace

TEST_CASE("shm: an accepted offer maps the segment, damage copies only its rects", "[shm]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  fillBuffer(s, 0);
  fillBuffer(s, 1);
  enterShmMode(f, s);
  CHECK_FALSE(f.display->tearFree());
  CHECK(f.display->segmentFd() >= 0);
  CHECK(f.display->segment().size() == SEGMENT);
  CHECK(f.display->shmStride() == STRIDE);

  // Frame 1: the whole picture, from buffer 0.
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, {{0, 0, H, W}})));
  const Canvas* c = f.display->primary();
  REQUIRE(c);
  REQUIRE(c->width() == W);
  for (uint32_t y = 0; y < H; ++y)
    for (uint32_t x = 0; x < W; ++x)
      CHECK(c->pixel(x, y) == pattern(0, x, y));

  // Frame 2 names buffer 1 and damages rows 1..2, columns 2..4 only: the rest of the client's
  // copy keeps buffer 0's pixels, although buffer 1 differs everywhere.
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(BUFFER, 2, {{1, 2, 3, 5}})));
  for (uint32_t y = 0; y < H; ++y)
    for (uint32_t x = 0; x < W; ++x) {
      bool damaged = y >= 1 && y < 3 && x >= 2 && x < 5;
      CHECK(c->pixel(x, y) == pattern(damaged ? 1 : 0, x, y));
    }
  CHECK(f.display->shmOffset() == BUFFER);
  CHECK(f.display->lastFrame() == 2);
  CHECK(f.display->shm().frames == 2);
  CHECK(f.display->shm().rects == 2);
  CHECK(f.display->shm().bytesCopied == (W * H + 3 * 2) * 4);
  // Not tear-free: nothing acknowledged.
  CHECK_FALSE(f.received());
}

TEST_CASE("shm: a picture that ends at the segment's last byte is used", "[shm]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  enterShmMode(f, s);
  s.put(SEGMENT - SPAN, STRIDE, W - 1, H - 1, 0x123456);
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(SEGMENT - SPAN, 1, {{0, 0, H, W}})));
  CHECK(f.display->primary()->pixel(W - 1, H - 1) == 0x123456);
}

TEST_CASE("shm: the segment the client maps is read-only", "[shm]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  enterShmMode(f, s);
  int fd = f.display->segmentFd();
  CHECK((::fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
  CHECK(::mmap(nullptr, SEGMENT, PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
  CHECK(::ftruncate(fd, 0) != 0);
}

TEST_CASE("shm: a refused offer leaves the ordinary display", "[shm]") {
  ShmWish wish = GENERATE(ShmWish::Reject, ShmWish::Off);
  FakeServer f(wish);
  Segment s(SEGMENT);
  size_t before = openFdCount();
  REQUIRE_FALSE(
      f.deliver(shm::MSG_SHM_OFFER, offer(3, SEGMENT, shm::OFFER_TEAR_FREE), {s.ro.get()}));
  CHECK(f.reply(3) == std::make_pair(0u, 0u));
  CHECK_FALSE(f.display->shmActive());
  CHECK(f.display->segmentFd() == -1);
  CHECK(f.display->shmRefusal());
  CHECK(openFdCount() == before);  // the received descriptor was closed
  // SURFACE_CREATE and DRAW_FILL as ever.
  Writer create;
  create.u32(0).u32(4).u32(4).u32(SPICE_SURFACE_FMT_32_xRGB).u32(SPICE_SURFACE_FLAGS_PRIMARY);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_CREATE, create.take()));
  Writer fill;
  fill.u32(0).i32(0).i32(0).i32(4).i32(4).u8(SPICE_CLIP_TYPE_NONE);
  fill.u8(SPICE_BRUSH_TYPE_SOLID).u32(0xabcdef).u16(SPICE_ROPD_OP_PUT).u8(0).i32(0).i32(0).u32(0);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, fill.take()));
  CHECK(f.display->primary()->pixel(3, 3) == 0xabcdef);
  // ... and no shared-memory message is taken in that mode.
  CHECK(f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 3, 0, STRIDE)));
}

TEST_CASE("shm: tear-free acknowledges each frame after the callback read the buffer", "[shm]") {
  FakeServer f(ShmWish::TearFree);
  Segment s(SEGMENT);
  fillBuffer(s, 0);
  fillBuffer(s, 1);
  REQUIRE_FALSE(
      f.deliver(shm::MSG_SHM_OFFER, offer(9, SEGMENT, shm::OFFER_TEAR_FREE), {s.ro.get()}));
  CHECK(f.reply(9) == std::make_pair(1u, shm::REPLY_TEAR_FREE));
  REQUIRE(f.display->tearFree());
  REQUIRE_FALSE(f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 9, 0, STRIDE)));

  std::vector<uint64_t> seen;
  f.display->setFrameCallback([&](uint64_t frame, std::span<const Rect> rects) {
    seen.push_back(frame);
    // The buffer named by this frame is readable here and the ack is not sent yet.
    auto picture = f.display->segment().subspan(f.display->shmOffset());
    uint32_t first;
    std::memcpy(&first, picture.data() + size_t{STRIDE} * rects[0].top + rects[0].left * 4, 4);
    CHECK(first == f.display->primary()->pixel(rects[0].left, rects[0].top));
    CHECK_FALSE(f.received());
  });
  for (uint64_t frame = 1; frame <= 3; ++frame) {
    uint64_t offset = (frame % 2) * BUFFER;
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(offset, frame, {{0, 1, 2, 3}})));
    auto ack = f.received();
    REQUIRE(ack);
    CHECK(ack->first == shm::MSGC_SHM_DAMAGE_HANDLED);
    REQUIRE(ack->second.size() == shm::DAMAGE_HANDLED_SIZE);
    CHECK(Reader(ack->second).u64() == frame);
  }
  CHECK(seen == std::vector<uint64_t>{1, 2, 3});
  CHECK(f.display->shm().acksSent == 3);
  CHECK(f.display->primary()->pixel(1, 0) == pattern(1, 1, 0));
}

TEST_CASE("shm: tear-free wished but not offered: accepted without acknowledgements", "[shm]") {
  FakeServer f(ShmWish::TearFree);
  Segment s(SEGMENT);
  enterShmMode(f, s, 0);
  CHECK_FALSE(f.display->tearFree());
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, {{0, 0, 1, 1}})));
  CHECK_FALSE(f.received());
}

TEST_CASE("shm: a new primary brings a new segment without a second reply", "[shm]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  enterShmMode(f, s);
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, {{0, 0, H, W}})));
  int oldFd = f.display->segmentFd();

  // 4 x 2, stride 16, in a new segment; SURFACE_DESTROY first (u32 surface_id).
  Segment next(2 * 32);
  for (uint32_t y = 0; y < 2; ++y)
    for (uint32_t x = 0; x < 4; ++x)
      next.put(32, 16, x, y, 0x100 + y * 4 + x);
  Writer destroy;
  destroy.u32(0);
  REQUIRE_FALSE(f.deliver(SPICE_MSG_DISPLAY_SURFACE_DESTROY, destroy.take()));
  CHECK_FALSE(f.display->primary());
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(8, 64), {next.ro.get()}));
  CHECK_FALSE(f.received());  // no SHM_REPLY for later offers
  REQUIRE_FALSE(f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(4, 2, 8, 32, 16)));
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(32, 2, {{0, 0, 2, 4}})));
  const Canvas* c = f.display->primary();
  REQUIRE(c);
  CHECK(c->width() == 4);
  CHECK(c->pixel(3, 1) == 0x107);
  CHECK(f.display->shm().segments == 2);
  // The old mapping's descriptor is closed (the number may have been reused by the new one).
  CHECK((::fcntl(oldFd, F_GETFD) == -1 || oldFd == f.display->segmentFd()));
}

TEST_CASE("shm: an unusable segment is answered accepted=0 with the reason", "[shm][hostile]") {
  FakeServer f(ShmWish::Accept);
  size_t before = openFdCount();
  std::string reason;
  SECTION("segment-without-seals") {
    Segment s(SEGMENT, 0);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, SEGMENT), {s.ro.get()}));
    reason = "sealed";
  }
  SECTION("segment-sealed-against-shrinking-only") {
    Segment s(SEGMENT, F_SEAL_SHRINK);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, SEGMENT), {s.ro.get()}));
    reason = "sealed";
  }
  SECTION("segment-smaller-than-offered") {
    Segment s(SEGMENT);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, SEGMENT + 4096), {s.ro.get()}));
    reason = "announces";
  }
  SECTION("offered-size-zero") {
    Segment s(SEGMENT);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, 0), {s.ro.get()}));
    reason = "outside";
  }
  SECTION("offered-size-1-shl-63") {
    Segment s(SEGMENT);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, uint64_t{1} << 63), {s.ro.get()}));
    reason = "outside";
  }
  SECTION("descriptor-is-a-pipe") {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    REQUIRE_FALSE(f.deliver(shm::MSG_SHM_OFFER, offer(1, 4096), {p[0]}));
    ::close(p[0]);
    ::close(p[1]);
    reason = "regular file";
  }
  CHECK(f.reply(1) == std::make_pair(0u, 0u));
  CHECK(f.display->open());
  CHECK_FALSE(f.display->shmActive());
  REQUIRE(f.display->shmRefusal());
  CHECK_THAT(*f.display->shmRefusal(), Catch::Contains(reason));
  CHECK(openFdCount() == before);
}

TEST_CASE("shm: hostile messages close the channel, touch nothing outside the mapping",
          "[shm][hostile]") {
  size_t before = openFdCount();
  {
    FakeServer f(ShmWish::Accept);
    Segment s(SEGMENT);
    fillBuffer(s, 0);
    Error err;
    SECTION("offer-without-descriptor") {
      err = f.deliver(shm::MSG_SHM_OFFER, offer(1, SEGMENT));
    }
    SECTION("two-descriptors-on-one-offer") {
      err = f.deliver(shm::MSG_SHM_OFFER, offer(1, SEGMENT), {s.ro.get(), s.rw.get()});
    }
    SECTION("second-descriptor-sent-separately-within-the-offer") {
      Bytes m = buildMessage(shm::MSG_SHM_OFFER, offer(1, SEGMENT));
      f.sendWithFds(Bytes(m.begin(), m.begin() + 8), {s.ro.get()});
      f.sendWithFds(Bytes(m.begin() + 8, m.end()), {s.rw.get()});
      err = f.display->processAvailable();
      if (!err)
        err = f.display->processAvailable();
    }
    SECTION("descriptor-on-a-mark") {
      err = f.deliver(SPICE_MSG_DISPLAY_MARK, {}, {s.ro.get()});
    }
    SECTION("five-descriptors-waiting") {
      // A 1000-byte message arrives one byte at a time, each byte with a descriptor.
      Writer h;
      h.u16(SPICE_MSG_DISPLAY_MARK).u32(1000);
      f.sendWithFds(h.take(), {});
      for (int i = 0; i < 5; ++i)
        f.sendWithFds(Bytes{0}, {s.ro.get()});
      err = f.display->processAvailable();
    }
    SECTION("offer-of-15-bytes") {
      Bytes body = offer(1, SEGMENT);
      body.pop_back();
      err = f.deliver(shm::MSG_SHM_OFFER, body, {s.ro.get()});
    }
    SECTION("damage-before-any-offer") {
      err = f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, {{0, 0, 1, 1}}));
    }
    SECTION("in-shm-mode") {
      enterShmMode(f, s);
      SECTION("surface-beyond-mapping") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM,
                        surfaceCreateShm(W, H, 7, SEGMENT - SPAN + 1, STRIDE));
      }
      SECTION("surface-offset-max-u64") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 7, UINT64_MAX, STRIDE));
      }
      SECTION("surface-stride-shorter-than-a-row") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 7, 0, W * 4 - 1));
      }
      SECTION("surface-stride-max-u32") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 7, 0, UINT32_MAX));
      }
      SECTION("surface-of-another-segment") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM, surfaceCreateShm(W, H, 6, 0, STRIDE));
      }
      SECTION("surface-16bpp") {
        err = f.deliver(shm::MSG_SURFACE_CREATE_SHM,
                        surfaceCreateShm(W, H, 7, 0, STRIDE, SPICE_SURFACE_FMT_16_565));
      }
      SECTION("damage-offset-beyond-mapping") {
        err = f.deliver(shm::MSG_SHM_DAMAGE, damage(SEGMENT - SPAN + 1, 1, {{0, 0, 1, 1}}));
      }
      SECTION("damage-count-257") {
        err = f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, std::vector<Rect>(257)));
      }
      SECTION("damage-count-beyond-message") {
        Bytes body = damage(0, 1, {{0, 0, 1, 1}, {0, 0, 1, 1}});
        body.resize(body.size() - shm::SHM_RECT_SIZE);
        err = f.deliver(shm::MSG_SHM_DAMAGE, body);
      }
      SECTION("damage-header-truncated") {
        Bytes body = damage(0, 1, {});
        body.resize(20);
        err = f.deliver(shm::MSG_SHM_DAMAGE, body);
      }
      SECTION("damage-frame-repeated") {
        REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 5, {{0, 0, 1, 1}})));
        err = f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 5, {{0, 0, 1, 1}}));
      }
      SECTION("damage-of-another-surface") {
        err = f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1, {{0, 0, 1, 1}}, 3));
      }
      SECTION("draw-fill-in-shm-mode") {
        Writer fill;
        fill.u32(0).i32(0).i32(0).i32(4).i32(4).u8(SPICE_CLIP_TYPE_NONE);
        fill.u8(SPICE_BRUSH_TYPE_SOLID).u32(1).u16(SPICE_ROPD_OP_PUT).u8(0).i32(0).i32(0).u32(0);
        err = f.deliver(SPICE_MSG_DISPLAY_DRAW_FILL, fill.take());
      }
      SECTION("new-segment-without-seals") {
        Segment unsealed(SEGMENT, 0);
        err = f.deliver(shm::MSG_SHM_OFFER, offer(8, SEGMENT), {unsealed.ro.get()});
      }
    }
    REQUIRE(err);
    CHECK_FALSE(f.display->open());
  }
  // Every descriptor the client received was closed with the channel.
  CHECK(openFdCount() == before);
}

TEST_CASE("shm: damage rects outside the surface are clipped, not an error", "[shm][hostile]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  fillBuffer(s, 0);
  enterShmMode(f, s);
  std::vector<Rect> seen;
  f.display->setFrameCallback(
      [&](uint64_t, std::span<const Rect> rects) { seen.assign(rects.begin(), rects.end()); });
  REQUIRE_FALSE(f.deliver(shm::MSG_SHM_DAMAGE, damage(0, 1,
                                                      {{INT_MIN, INT_MIN, INT_MAX, INT_MAX},
                                                       {-5, -5, 1, 1},
                                                       {2, 6, 100, 100},
                                                       {3, 3, 1, 1},  // inverted
                                                       {100, 100, 200, 200}})));
  CHECK(seen == std::vector<Rect>{{0, 0, H, W}, {0, 0, 1, 1}, {2, 6, H, W}});
  const Canvas* c = f.display->primary();
  CHECK(c->pixel(W - 1, H - 1) == pattern(0, W - 1, H - 1));
  CHECK(c->pixels().size() == W * H);
  CHECK(f.display->open());
}

TEST_CASE("shm: ACK windows count the extension's messages like any other", "[shm]") {
  FakeServer f(ShmWish::Accept);
  Segment s(SEGMENT);
  Writer setAck;
  setAck.u32(1).u32(2);  // generation 1, window 2
  REQUIRE_FALSE(f.deliver(SPICE_MSG_SET_ACK, setAck.take()));
  auto sync = f.received();
  REQUIRE(sync);
  CHECK(sync->first == SPICE_MSGC_ACK_SYNC);
  enterShmMode(f, s);  // SHM_OFFER and SURFACE_CREATE_SHM: one window
  auto ack = f.received();
  REQUIRE(ack);
  CHECK(ack->first == SPICE_MSGC_ACK);
}
