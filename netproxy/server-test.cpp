// Runs in: tests. Input: the Server under test in this process, on the test's libuv loop, and
// the real client spice-gtk's spicy-screenshot (a child process), whose saved picture is
// compared with the display segment pixel for pixel. A raw-socket client of the test's own
// speaks the protocol where spicy-screenshot cannot (frames after the first picture, hostile
// peers).
#include "netproxy/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/details/null_mutex.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <algorithm>

#include <catch2/catch.hpp>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "base/shm-protocol.h"
#include "netproxy/link.h"
#include "netproxy/messages.h"
#include "netproxy/wire.h"
#include "sandbox/sanitizers.h"
#include "tests/support/test-loop.h"

extern char** environ;

namespace spicebox::netproxy {
namespace {

using test::TestLoop;

// --- The picture ---

// A deterministic picture with gradients and sharp edges, in a segment whose rows are padded
// (stride > width * 4) and which starts past a header (offset > 0), as the broker's may.
struct Segment {
  DisplayLayout layout;
  base::Fd fd;
  uint8_t* map = nullptr;

  // `twoBuffers`: a second buffer after the first (layout.backOffset), as the broker's segments
  // have; the picture is drawn into buffer 0.
  Segment(uint32_t width, uint32_t height, uint64_t generation, bool twoBuffers = false) {
    layout.generation = generation;
    layout.width = width;
    layout.height = height;
    layout.stride = width * 4 + 12;
    layout.offset = 4096;
    layout.size = layout.offset + uint64_t{layout.stride} * height;
    if (twoBuffers) {
      layout.backOffset = (layout.size + 4095) / 4096 * 4096;
      layout.size = layout.backOffset + uint64_t{layout.stride} * height;
    }
    fd = base::Fd(::memfd_create("server-test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(layout.size)) == 0);
    // As the broker seals its segments (setDisplay refuses one that can shrink).
    REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
    void* p = ::mmap(nullptr, layout.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    REQUIRE(p != MAP_FAILED);
    map = static_cast<uint8_t*>(p);
    for (uint32_t y = 0; y < height; ++y)
      for (uint32_t x = 0; x < width; ++x) {
        uint32_t r = x * 255 / width, g = y * 255 / height, b = (x ^ y) & 0xff;
        if (x / 8 % 2 != y / 8 % 2 && x < width / 3)  // a checkerboard: sharp edges
          r = g = b = (x + y) % 2 ? 255 : 0;
        if (x > width / 2 && x < width / 2 + 40 && y > 20 && y < 60)  // a solid block
          r = 200, g = 10, b = 30;
        setPixel(x, y, r << 16 | g << 8 | b);
      }
  }
  ~Segment() { ::munmap(map, layout.size); }

  uint32_t pixel(uint32_t x, uint32_t y) const {
    uint32_t v;
    std::memcpy(&v, map + layout.offset + size_t{y} * layout.stride + size_t{x} * 4, 4);
    return v;
  }
  void setPixel(uint32_t x, uint32_t y, uint32_t v) {
    std::memcpy(map + layout.offset + size_t{y} * layout.stride + size_t{x} * 4, &v, 4);
  }
  // Buffer 1 takes buffer 0's picture (as the renderer copies forward before drawing there).
  void copyToBack() {
    std::memcpy(map + layout.backOffset, map + layout.offset,
                size_t{layout.stride} * layout.height);
  }
  // A read-only descriptor of the same memory, as the broker passes it.
  base::Fd readOnly() const {
    const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
    base::Fd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(ro);
    return ro;
  }
};

struct Ppm {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

std::optional<Ppm> readPpm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return std::nullopt;
  std::string magic;
  unsigned maxval = 0;
  Ppm ppm;
  in >> magic >> ppm.width >> ppm.height >> maxval;
  if (magic != "P6" || maxval != 255)
    return std::nullopt;
  in.get();  // the single whitespace after maxval
  ppm.rgb.resize(size_t{ppm.width} * ppm.height * 3);
  in.read(reinterpret_cast<char*>(ppm.rgb.data()), static_cast<std::streamsize>(ppm.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(ppm.rgb.size()))
    return std::nullopt;
  return ppm;
}

// Pixels that differ between the saved picture and the segment (0: identical).
size_t countDifferences(const Ppm& ppm, const Segment& seg) {
  REQUIRE(ppm.width == seg.layout.width);
  REQUIRE(ppm.height == seg.layout.height);
  size_t diffs = 0;
  for (uint32_t y = 0; y < ppm.height; ++y)
    for (uint32_t x = 0; x < ppm.width; ++x) {
      const uint8_t* p = &ppm.rgb[(size_t{y} * ppm.width + x) * 3];
      const uint32_t got = uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | p[2];
      if (got != (seg.pixel(x, y) & 0xffffff)) {
        if (diffs == 0)
          UNSCOPED_INFO("first difference at " << x << "," << y << ": got " << std::hex << got
                                               << " want " << (seg.pixel(x, y) & 0xffffff));
        ++diffs;
      }
    }
  return diffs;
}

// --- The server on the test's loop ---

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-server-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    const std::string cmd = "rm -rf '" + path + "'";
    (void)std::system(cmd.c_str());
  }
};

struct Harness {
  TempDir dir;
  TestLoop loop;
  std::unique_ptr<Server> server;
  std::vector<InputEvent> inputs;
  ClientCounts lastCounts;
  uint16_t port = 0;
  std::string unixPath;

  explicit Harness(Settings settings) {
    test::initLibuvGlobals();
    Server::prepare();
    std::vector<Listener> listeners;
    base::Fd tcp(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(tcp);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(tcp.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(tcp.get(), 64) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(tcp.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
    listeners.push_back({std::move(tcp), ListenerKind::Tcp, "tcp:127.0.0.1"});

    unixPath = dir.path + "/spice.sock";
    base::Fd local(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(local);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strncpy(un.sun_path, unixPath.c_str(), sizeof un.sun_path - 1);
    REQUIRE(::bind(local.get(), reinterpret_cast<sockaddr*>(&un), sizeof un) == 0);
    REQUIRE(::listen(local.get(), 64) == 0);
    listeners.push_back({std::move(local), ListenerKind::Unix, "unix:" + unixPath});

    Server::Events events;
    events.onInput = [this](const InputEvent& e) { inputs.push_back(e); };
    events.onClients = [this](const ClientCounts& c) { lastCounts = c; };
    server = std::make_unique<Server>(loop.get(), std::move(events));
    auto error = server->configure(std::move(settings), std::move(listeners));
    REQUIRE_FALSE(error);
  }
  ~Harness() {
    server.reset();
    loop.spin();
  }

  // Runs spicy-screenshot with `args` and waits (on the loop, which serves it) for its exit;
  // `whileRunning` is called after each turn of the loop meanwhile.
  int screenshot(const std::vector<std::string>& args,
                 const std::function<void()>& whileRunning = {}) {
    std::vector<std::string> all = {"spicy-screenshot"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir.path + "/spicy-screenshot.log";
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, "spicy-screenshot", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    base::Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    struct Reaper {
      pid_t pid;
      bool reaped = false;
      ~Reaper() {
        if (!reaped) {
          ::kill(pid, SIGKILL);
          ::waitpid(pid, nullptr, 0);
        }
      }
    } reaper{pid};
    REQUIRE(pidfd);
    bool exited = false;
    base::UvHandle<uv_poll_t> poll;
    REQUIRE(uv_poll_init(loop.get(), poll.get(), pidfd.get()) == 0);
    poll->data = &exited;
    uv_poll_start(poll.get(), UV_READABLE,
                  [](uv_poll_t* h, int, int) { *static_cast<bool*>(h->data) = true; });
    loop.runUntil([&] {
      if (whileRunning && !exited)
        whileRunning();
      return exited;
    });
    poll.close();
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    reaper.reaped = true;
    std::ifstream logFile(log);
    std::stringstream text;
    text << logFile.rdbuf();
    UNSCOPED_INFO("spicy-screenshot output:\n" << text.str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::vector<std::string> tcpArgs(const std::string& out) const {
    return {"-h", "127.0.0.1", "-p", std::to_string(port), "-o", out};
  }
};

// Collects what the server logs (spdlog's default logger, at debug level) while it lives, so a
// test can await a log line, an event, instead of sleeping.
class LogWatch {
 public:
  LogWatch() : sink_(std::make_shared<Sink>()), logger_(spdlog::default_logger()) {
    level_ = logger_->level();
    logger_->sinks().push_back(sink_);
    logger_->set_level(spdlog::level::debug);
  }
  ~LogWatch() {
    auto& sinks = logger_->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
    logger_->set_level(level_);
  }
  bool saw(std::string_view text) const { return sink_->text.find(text) != std::string::npos; }

 private:
  // The tests and the server share one thread: no lock.
  struct Sink : spdlog::sinks::base_sink<spdlog::details::null_mutex> {
    std::string text;
    void sink_it_(const spdlog::details::log_msg& msg) override {
      text.append(msg.payload.data(), msg.payload.size());
      text.push_back('\n');
    }
    void flush_() override {}
  };
  std::shared_ptr<Sink> sink_;
  std::shared_ptr<spdlog::logger> logger_;
  spdlog::level::level_enum level_;
};

bool fileExists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

// --- spicy-screenshot ---

TEST_CASE("spicy-screenshot saves the segment's picture, for each image compression",
          "[server][spicy-screenshot]") {
  const ImageCompression mode = GENERATE(ImageCompression::Off, ImageCompression::Lz,
                                         ImageCompression::Lz4, ImageCompression::AutoLz);
  INFO("compression mode " << static_cast<int>(mode));
  Settings settings;
  settings.imageCompression = mode;
  Harness h(settings);
  Segment seg(333, 211, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  const std::string out = h.dir.path + "/shot.ppm";
  REQUIRE(h.screenshot(h.tcpArgs(out)) == 0);
  auto ppm = readPpm(out);
  REQUIRE(ppm);
  CHECK(countDifferences(*ppm, seg) == 0);
}

TEST_CASE("spicy-screenshot with a password: the right one is let in, a wrong one refused",
          "[server][spicy-screenshot][ticket]") {
  Settings settings;
  settings.password = "s3cret-pass";
  Harness h(settings);
  Segment seg(160, 120, 7);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));

  const std::string good = h.dir.path + "/good.ppm";
  auto args = h.tcpArgs(good);
  args.insert(args.end(), {"-w", "s3cret-pass"});
  REQUIRE(h.screenshot(args) == 0);
  auto ppm = readPpm(good);
  REQUIRE(ppm);
  CHECK(countDifferences(*ppm, seg) == 0);

  const std::string bad = h.dir.path + "/bad.ppm";
  args = h.tcpArgs(bad);
  args.insert(args.end(), {"-w", "s3cret-pasS"});
  CHECK(h.screenshot(args) != 0);
  CHECK_FALSE(fileExists(bad));

  const std::string none = h.dir.path + "/none.ppm";
  CHECK(h.screenshot(h.tcpArgs(none)) != 0);
  CHECK_FALSE(fileExists(none));
}

TEST_CASE("an expired password is refused", "[server][spicy-screenshot][ticket]") {
  Settings settings;
  settings.password = "pw";
  settings.passwordExpiresAt = 1;  // 1970
  Harness h(settings);
  Segment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  const std::string out = h.dir.path + "/expired.ppm";
  auto args = h.tcpArgs(out);
  args.insert(args.end(), {"-w", "pw"});
  CHECK(h.screenshot(args) != 0);
  CHECK_FALSE(fileExists(out));
}

TEST_CASE("spicy-screenshot over the unix socket", "[server][spicy-screenshot][unix]") {
  Harness h(Settings{});
  Segment seg(200, 100, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  const std::string out = h.dir.path + "/unix.ppm";
  REQUIRE(h.screenshot({"--uri", "spice+unix://" + h.unixPath, "-o", out}) == 0);
  auto ppm = readPpm(out);
  REQUIRE(ppm);
  CHECK(countDifferences(*ppm, seg) == 0);
}

TEST_CASE("spicy-screenshot announces a cache: its first picture is cached and exact",
          "[server][spicy-screenshot][cache]") {
  // spice-gtk sends DISPLAY_INIT after the link, when a display that exists already has had its
  // first picture sent whole. Here the display appears only once its DISPLAY_INIT enabled the
  // cache (the server logs it): the real client gets INVAL_ALL_PIXMAPS, then the picture with
  // CACHE_ME, and must still save it pixel for pixel. (FROM_CACHE is out of its reach: it exits
  // at its first picture, which is one image; the raw-client tests above cover FROM_CACHE.)
  Harness h(Settings{});
  LogWatch log;
  Segment seg(160, 120, 1);
  bool shown = false;
  const std::string out = h.dir.path + "/cached.ppm";
  REQUIRE(h.screenshot(h.tcpArgs(out), [&] {
    if (!shown && log.saw("pixmap cache of")) {
      shown = true;
      REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
    }
  }) == 0);
  CHECK(shown);
  h.loop.runUntil([&] { return log.saw("image cache:"); });  // logged when its channel closes
  CHECK(log.saw("1 cached"));
  auto ppm = readPpm(out);
  REQUIRE(ppm);
  CHECK(countDifferences(*ppm, seg) == 0);
}

TEST_CASE("after a new display and a frame, a new client sees the new pixels",
          "[server][spicy-screenshot][frame]") {
  Harness h(Settings{});
  Segment first(120, 90, 1);
  REQUIRE_FALSE(h.server->setDisplay(first.readOnly(), first.layout));
  Segment second(150, 100, 2);
  REQUIRE_FALSE(h.server->setDisplay(second.readOnly(), second.layout));
  for (uint32_t y = 10; y < 30; ++y)
    for (uint32_t x = 5; x < 50; ++x)
      second.setPixel(x, y, 0x00123456);
  const std::vector<Hint> hints = {SolidFill{0x00123456, {Rect{10, 5, 30, 50}}}};
  const std::vector<Rect> damage = {Rect{10, 5, 30, 50}};
  h.server->frame(2, 0, hints, damage);
  const std::string out = h.dir.path + "/frame.ppm";
  REQUIRE(h.screenshot(h.tcpArgs(out)) == 0);
  auto ppm = readPpm(out);
  REQUIRE(ppm);
  CHECK(countDifferences(*ppm, second) == 0);
}

// --- A raw test client ---

// Speaks SPICE over a socket to the server on the same loop: writes are small and blocking,
// reads are a uv_poll that collects everything, and each await runs the loop until the bytes
// (or the end of the connection) are there.
class RawClient {
 public:
  // Over TCP, or over the harness's unix socket (where descriptors can come with the bytes).
  explicit RawClient(Harness& h, bool overUnix = false) : h_(h) {
    if (overUnix) {
      fd_ = base::Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      REQUIRE(fd_);
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      std::strncpy(un.sun_path, h.unixPath.c_str(), sizeof un.sun_path - 1);
      REQUIRE(::connect(fd_.get(), reinterpret_cast<sockaddr*>(&un), sizeof un) == 0);
    } else {
      fd_ = base::Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      REQUIRE(fd_);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(h.port);
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      REQUIRE(::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    }
    REQUIRE(uv_poll_init(h.loop.get(), poll_.get(), fd_.get()) == 0);
    poll_->data = this;
    uv_poll_start(poll_.get(), UV_READABLE, [](uv_poll_t* p, int, int) {
      auto* self = static_cast<RawClient*>(p->data);
      uint8_t buf[65536];
      iovec iov{buf, sizeof buf};
      alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(self->fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n > 0) {
        // Descriptors are kept with the stream range of the read they came with (the kernel
        // hands them to the read that takes the first byte sent with them).
        const size_t from = self->streamOffset_ + self->received_.size();
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
          if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
              int fd = -1;
              std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
              self->fds_.push_back({from, from + static_cast<size_t>(n), base::Fd(fd)});
            }
        self->received_.insert(self->received_.end(), buf, buf + n);
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        self->eof_ = true;
        uv_poll_stop(p);
      }
    });
  }

  void send(std::span<const uint8_t> bytes) {
    REQUIRE(::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(bytes.size()));
  }
  void sendMessage(uint16_t type, std::span<const uint8_t> body) {
    send(wire::frameMessage(mini_, ++serial_, type, body));
  }
  // Stops reading: what the server sends piles up in the socket buffers, then in its queue.
  void pauseReading() { uv_poll_stop(poll_.get()); }
  // Answers SET_ACK and ACKs every window's worth of messages, as spice-gtk does.
  void setAutoAck(bool on) { autoAck_ = on; }

  // The next `n` bytes, waiting for them.
  std::vector<uint8_t> take(size_t n) {
    h_.loop.runUntil([&] { return available() >= n || eof_; });
    REQUIRE(available() >= n);
    std::vector<uint8_t> out(received_.begin() + static_cast<ptrdiff_t>(consumed_),
                             received_.begin() + static_cast<ptrdiff_t>(consumed_ + n));
    consumed_ += n;
    if (consumed_ > (1u << 20)) {  // keep only what is not taken yet
      received_.erase(received_.begin(), received_.begin() + static_cast<ptrdiff_t>(consumed_));
      streamOffset_ += consumed_;
      consumed_ = 0;
    }
    return out;
  }
  // Where the next unread byte is in the whole stream.
  size_t position() const { return streamOffset_ + consumed_; }
  // Descriptors received so far, with the stream range [from, to) of the read each came with.
  struct Received {
    size_t from = 0, to = 0;
    base::Fd fd;
  };
  std::vector<Received>& descriptors() { return fds_; }
  // Waits for the server to end the connection; what it sent before is kept.
  void awaitEnd() {
    h_.loop.runUntil([&] { return eof_; });
  }
  bool ended() const { return eof_; }
  int fd() const { return fd_.get(); }
  size_t available() const { return received_.size() - consumed_; }

  struct Message {
    uint16_t type = 0;
    std::vector<uint8_t> body;
  };
  Message next() {
    auto head = take(wire::headerSize(mini_));
    uint32_t subList = 0;
    auto h = wire::parseDataHeader(head, mini_, &subList);
    Message m{h.type, take(h.size)};
    if (m.type == SPICE_MSG_SET_ACK) {
      wire::Reader r(m.body);
      const uint32_t generation = r.u32();
      ackWindow_ = r.u32();
      unacked_ = 0;
      if (autoAck_) {
        wire::Writer w;
        w.u32(generation);
        sendMessage(SPICE_MSGC_ACK_SYNC, w.data());
      }
    } else if (ackWindow_ != 0 && autoAck_ && ++unacked_ == ackWindow_) {
      sendMessage(SPICE_MSGC_ACK, {});
      unacked_ = 0;
    }
    return m;
  }
  // A whole message has arrived (next() will not wait).
  bool hasMessage() const {
    const size_t head = wire::headerSize(mini_);
    if (available() < head)
      return false;
    uint32_t subList = 0;
    auto h = wire::parseDataHeader(std::span(received_).subspan(consumed_, head), mini_, &subList);
    return available() >= head + h.size;
  }
  // Skips messages until one of `type` (fails the test at the end of the connection).
  Message nextOf(uint16_t type) {
    for (;;) {
      Message m = next();
      if (m.type == type)
        return m;
    }
  }

  // The link stage with ticketing disabled (any 128 bytes are the ticket). Returns the error
  // of the reply, or of the 4-byte result.
  uint32_t link(uint8_t channelType, uint32_t connectionId, bool mini = true,
                uint32_t channelCaps = 0) {
    std::vector<uint32_t> common;
    setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    setCap(common, SPICE_COMMON_CAP_AUTH_SPICE);
    if (mini)
      setCap(common, SPICE_COMMON_CAP_MINI_HEADER);
    wire::Writer w;
    const uint32_t channelWords = channelCaps ? 1 : 0;
    w.u32(SPICE_MAGIC).u32(2).u32(2).u32(18 + 4 + 4 * channelWords);
    w.u32(connectionId).u8(channelType).u8(0).u32(1).u32(channelWords).u32(18).u32(common[0]);
    if (channelCaps)
      w.u32(channelCaps);
    send(w.data());
    return finishLink(mini);
  }
  // The server's channel capabilities in its link reply (word 0), after link().
  uint32_t serverChannelCaps() const { return serverChannelCaps_; }
  uint32_t finishLink(bool mini) {
    const auto head = take(16);
    wire::Reader h(head);
    h.u32();
    h.u32();
    h.u32();
    auto reply = take(h.u32());
    wire::Reader r(reply);
    const uint32_t error = r.u32();
    if (error != SPICE_LINK_ERR_OK)
      return error;
    // pub_key[162], num_common_caps, num_channel_caps, caps_offset (from the reply's start)
    r.bytes(SPICE_TICKET_PUBKEY_BYTES);
    const uint32_t commonWords = r.u32(), channelWords = r.u32(), capsOffset = r.u32();
    serverChannelCaps_ = 0;
    if (channelWords > 0) {
      const size_t at = size_t{capsOffset} + 4 * size_t{commonWords};
      REQUIRE(at + 4 <= reply.size());
      wire::Reader caps{std::span<const uint8_t>(reply).subspan(at)};
      serverChannelCaps_ = caps.u32();
    }
    wire::Writer auth;
    auth.u32(SPICE_COMMON_CAP_AUTH_SPICE);
    send(auth.data());
    send(std::vector<uint8_t>(128, 0x5a));
    const auto resultBytes = take(4);
    wire::Reader result(resultBytes);
    mini_ = mini;
    return result.u32();
  }

  // Links a main channel and returns the session id from MAIN_INIT.
  uint32_t linkMain() {
    REQUIRE(link(SPICE_CHANNEL_MAIN, 0) == SPICE_LINK_ERR_OK);
    Message init = nextOf(SPICE_MSG_MAIN_INIT);
    wire::Reader r(init.body);
    return r.u32();
  }

 private:
  Harness& h_;
  base::Fd fd_;
  base::UvHandle<uv_poll_t> poll_;
  std::vector<uint8_t> received_;
  size_t consumed_ = 0;
  bool eof_ = false;
  bool mini_ = true;
  uint64_t serial_ = 0;
  size_t streamOffset_ = 0;  // bytes dropped from received_ before its first
  std::vector<Received> fds_;
  uint32_t serverChannelCaps_ = 0;
  bool autoAck_ = true;
  uint32_t ackWindow_ = 0, unacked_ = 0;
};

// The client's copy of the primary, kept by replaying what the server sends (uncompressed
// bitmaps only: the tests run with ImageCompression::Off), like spice-gtk's canvas. Its pixmap
// cache is spice-gtk's as the protocol defines it (unbounded, drops only what INVAL_LIST or
// INVAL_ALL_PIXMAPS name) but stricter: caching a held id, dropping or drawing an id not held,
// and holding more pixels than announced fail the test.
struct Canvas {
  uint32_t width = 0, height = 0;
  std::vector<uint32_t> pixels;
  bool marked = false;
  struct Cached {
    uint32_t width = 0, height = 0;
    std::vector<uint32_t> pixels;
  };
  std::map<uint64_t, Cached> cache;
  uint64_t cacheCapacity = 0;  // pixels, as announced
  bool cacheReset = false;     // INVAL_ALL_PIXMAPS seen
  size_t cachedImages = 0, fromCache = 0, invalidated = 0;

  uint64_t cachedPixels() const {
    uint64_t n = 0;
    for (const auto& [id, c] : cache)
      n += uint64_t{c.width} * c.height;
    return n;
  }

  static Rect readRect(wire::Reader& r) {
    Rect x;
    x.top = r.i32();
    x.left = r.i32();
    x.bottom = r.i32();
    x.right = r.i32();
    return x;
  }

  // Applies one display message; returns false for a type it does not know.
  bool apply(const RawClient::Message& m) {
    wire::Reader r(m.body);
    switch (m.type) {
      case SPICE_MSG_SET_ACK:
      case SPICE_MSG_DISPLAY_MONITORS_CONFIG:
        return true;
      case SPICE_MSG_DISPLAY_SURFACE_CREATE:
        r.u32();
        width = r.u32();
        height = r.u32();
        pixels.assign(size_t{width} * height, 0xdeadbeef);
        return true;
      case SPICE_MSG_DISPLAY_MARK:
        marked = true;
        return true;
      case SPICE_MSG_DISPLAY_INVAL_LIST: {
        const uint16_t count = r.u16();
        for (uint16_t i = 0; i < count; ++i) {
          REQUIRE(r.u8() == SPICE_RES_TYPE_PIXMAP);
          const uint64_t id = r.u64();
          REQUIRE(r.ok());
          REQUIRE(cache.erase(id) == 1);  // only ids the client holds
          ++invalidated;
        }
        REQUIRE(r.remaining() == 0);
        return true;
      }
      case SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS:
        REQUIRE(r.u8() == 0);  // nothing to wait for
        cache.clear();
        cacheReset = true;
        return true;
      case SPICE_MSG_DISPLAY_DRAW_COPY: {
        r.u32();
        const Rect box = readRect(r);
        REQUIRE(r.u8() == SPICE_CLIP_TYPE_NONE);
        const uint32_t at = r.u32();
        wire::Reader img(std::span(m.body).subspan(at));
        const uint64_t id = img.u64();
        const uint8_t type = img.u8();
        const uint8_t flags = img.u8();
        if (type == SPICE_IMAGE_TYPE_FROM_CACHE) {
          auto held = cache.find(id);
          REQUIRE(held != cache.end());  // spice-gtk would wait for it forever
          REQUIRE(img.u32() == held->second.width);
          REQUIRE(img.u32() == held->second.height);
          requireInside(box);
          REQUIRE(held->second.width == static_cast<uint32_t>(box.right - box.left));
          REQUIRE(held->second.height == static_cast<uint32_t>(box.bottom - box.top));
          for (uint32_t y = 0; y < held->second.height; ++y)
            for (uint32_t x = 0; x < held->second.width; ++x)
              at_(box.left + x, box.top + y) =
                  held->second.pixels[size_t{y} * held->second.width + x];
          ++fromCache;
          return true;
        }
        REQUIRE(type == SPICE_IMAGE_TYPE_BITMAP);
        const uint32_t w = img.u32(), h = img.u32();
        REQUIRE(img.u8() == SPICE_BITMAP_FMT_32BIT);
        REQUIRE(img.u8() == SPICE_BITMAP_FLAGS_TOP_DOWN);
        REQUIRE(img.u32() == w);
        REQUIRE(img.u32() == h);
        const uint32_t stride = img.u32();
        REQUIRE(stride >= w * 4);
        REQUIRE(img.u32() == 0);  // no palette
        requireInside(box);
        REQUIRE(w == static_cast<uint32_t>(box.right - box.left));
        REQUIRE(h == static_cast<uint32_t>(box.bottom - box.top));
        Cached decoded{w, h, std::vector<uint32_t>(size_t{w} * h)};
        for (uint32_t y = 0; y < h; ++y) {
          auto row = img.bytes(stride);
          REQUIRE(img.ok());
          for (uint32_t x = 0; x < w; ++x)
            decoded.pixels[size_t{y} * w + x] = at_(box.left + x, box.top + y) =
                wire::Reader(row.subspan(x * 4)).u32();
        }
        if (flags & SPICE_IMAGE_FLAGS_CACHE_ME) {
          REQUIRE(cacheCapacity > 0);     // only to a client that announced a cache
          REQUIRE(cache.count(id) == 0);  // spice-gtk would count a held id twice
          cache[id] = std::move(decoded);
          REQUIRE(cachedPixels() <= cacheCapacity);
          ++cachedImages;
        }
        return true;
      }
      case SPICE_MSG_DISPLAY_DRAW_FILL: {
        r.u32();
        readRect(r);
        REQUIRE(r.u8() == SPICE_CLIP_TYPE_RECTS);
        std::vector<Rect> rects(r.u32());
        for (Rect& x : rects)
          x = readRect(r);
        REQUIRE(r.u8() == SPICE_BRUSH_TYPE_SOLID);
        const uint32_t color = r.u32();
        REQUIRE(r.ok());
        for (const Rect& x : rects)
          requireInside(x);
        for (const Rect& x : rects)
          for (int32_t y = x.top; y < x.bottom; ++y)
            for (int32_t xx = x.left; xx < x.right; ++xx)
              at_(xx, y) = color;
        return true;
      }
      case SPICE_MSG_DISPLAY_COPY_BITS: {
        r.u32();
        const Rect box = readRect(r);
        REQUIRE(r.u8() == SPICE_CLIP_TYPE_NONE);
        const int32_t sx = r.i32(), sy = r.i32();
        requireInside(box);
        requireInside(Rect{sy, sx, sy + box.bottom - box.top, sx + box.right - box.left});
        const std::vector<uint32_t> before = pixels;
        for (int32_t y = box.top; y < box.bottom; ++y)
          for (int32_t x = box.left; x < box.right; ++x)
            at_(x, y) = before[size_t(sy + y - box.top) * width + size_t(sx + x - box.left)];
        return true;
      }
    }
    return false;
  }

  size_t differences(const Segment& seg) const {
    REQUIRE(width == seg.layout.width);
    REQUIRE(height == seg.layout.height);
    size_t n = 0;
    for (uint32_t y = 0; y < height; ++y)
      for (uint32_t x = 0; x < width; ++x)
        n += (pixels[size_t{y} * width + x] & 0xffffff) != (seg.pixel(x, y) & 0xffffff);
    return n;
  }

 private:
  // Fails the test when `r` is not inside the surface (then indexes without checks).
  void requireInside(const Rect& r) const {
    REQUIRE(r.left >= 0);
    REQUIRE(r.top >= 0);
    REQUIRE(r.left <= r.right);
    REQUIRE(r.top <= r.bottom);
    REQUIRE(static_cast<uint32_t>(r.right) <= width);
    REQUIRE(static_cast<uint32_t>(r.bottom) <= height);
  }
  uint32_t& at_(int32_t x, int32_t y) { return pixels[size_t(y) * width + size_t(x)]; }
};

// A display client linked into a new session, its first picture received (up to MARK). With
// `cachePixels` > 0 it announces a pixmap cache of that many pixels in DISPLAY_INIT (as
// spice-gtk does, right after the link) and also waits for the server's INVAL_ALL_PIXMAPS.
struct DisplayClient {
  RawClient main, display;
  Canvas canvas;
  explicit DisplayClient(Harness& h, bool autoAck = true, int64_t cachePixels = 0)
      : main(h), display(h) {
    display.setAutoAck(autoAck);
    const uint32_t session = main.linkMain();
    REQUIRE(display.link(SPICE_CHANNEL_DISPLAY, session) == SPICE_LINK_ERR_OK);
    if (cachePixels != 0)
      sendDisplayInit(cachePixels);
    while (!canvas.marked || (cachePixels > 0 && !canvas.cacheReset))
      REQUIRE(canvas.apply(display.next()));
  }
  void sendDisplayInit(int64_t cachePixels) {
    canvas.cacheCapacity = cachePixels > 0 ? static_cast<uint64_t>(cachePixels) : 0;
    wire::Writer w;
    // pixmap_cache_id, pixmap_cache_size, glz_dictionary_id, glz_dictionary_window_size
    w.u8(1).u64(static_cast<uint64_t>(cachePixels)).u8(1).u32(1 << 20);
    display.sendMessage(SPICE_MSGC_DISPLAY_INIT, w.data());
  }
  void ack() { display.sendMessage(SPICE_MSGC_ACK, {}); }
};

// Moves a block of the segment as a renderer's copy-bits does, and fills a rect.
void drawFrame(Segment& seg, int n) {
  const uint32_t w = seg.layout.width;
  // Copy rows 40..60 of columns 0..w/2 down by 5 (bottom-up: overlapping).
  for (int32_t y = 64; y >= 45; --y)
    for (uint32_t x = 0; x < w / 2; ++x)
      seg.setPixel(x, static_cast<uint32_t>(y), seg.pixel(x, static_cast<uint32_t>(y - 5)));
  for (uint32_t y = 5; y < 15; ++y)
    for (uint32_t x = 10; x < 30; ++x)
      seg.setPixel(x, y, 0x00102030u * static_cast<uint32_t>(n + 1));
  for (uint32_t y = 100; y < 110; ++y)
    for (uint32_t x = static_cast<uint32_t>(n); x < static_cast<uint32_t>(n) + 7; ++x)
      seg.setPixel(x, y, x * 0x10101 + y);
}

std::vector<Hint> frameHints(int n, uint32_t w) {
  return {CopyBits{0, 40, Rect{45, 0, 65, static_cast<int32_t>(w / 2)}},
          SolidFill{0x00102030u * static_cast<uint32_t>(n + 1), {Rect{5, 10, 15, 30}}}};
}
std::vector<Rect> frameDamage(int n) {
  return {Rect{100, n, 110, n + 7}};
}

Settings offSettings() {
  Settings s;
  s.imageCompression = ImageCompression::Off;
  return s;
}

TEST_CASE("a frame reaches a display client as fill, copy-bits and draw-copy, in order",
          "[server][frame]") {
  Harness h(offSettings());
  Segment seg(200, 150, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient a(h), b(h);
  CHECK(a.canvas.differences(seg) == 0);
  drawFrame(seg, 0);
  auto hints = frameHints(0, 200);
  auto damage = frameDamage(0);
  h.server->frame(1, 0, hints, damage);
  for (DisplayClient* c : {&a, &b}) {
    auto m1 = c->display.next();
    CHECK(m1.type == SPICE_MSG_DISPLAY_COPY_BITS);
    auto m2 = c->display.next();
    CHECK(m2.type == SPICE_MSG_DISPLAY_DRAW_FILL);
    auto m3 = c->display.next();
    CHECK(m3.type == SPICE_MSG_DISPLAY_DRAW_COPY);
    for (auto* m : {&m1, &m2, &m3})
      REQUIRE(c->canvas.apply(*m));
    CHECK(c->canvas.differences(seg) == 0);
  }
  // A frame for another display generation is ignored.
  h.server->frame(2, 0, hints, damage);
  h.loop.spin();
  CHECK(a.display.available() == 0);
  CHECK(h.server->counts() == ClientCounts{2, 4, 0});
}

// Pixels (the x byte aside) that differ between two segments of the same size.
size_t segmentDifferences(const Segment& a, const Segment& b) {
  size_t n = 0;
  for (uint32_t y = 0; y < a.layout.height; ++y)
    for (uint32_t x = 0; x < a.layout.width; ++x)
      n += (a.pixel(x, y) & 0xffffff) != (b.pixel(x, y) & 0xffffff);
  return n;
}

TEST_CASE("clients get the picture as of the last frame, never pixels drawn since",
          "[server][frame]") {
  // The renderer draws into the segment between frames; what it drew is not the client's until
  // its frame arrives (a half-drawn picture plus a later copy-bits would copy wrong pixels).
  Harness h(offSettings());
  Segment seg(200, 150, 1);
  Segment asShown(200, 150, 1);  // the same initial picture, never drawn on
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  drawFrame(seg, 0);  // the renderer's next batch, its frame not sent yet
  REQUIRE(segmentDifferences(asShown, seg) > 0);
  DisplayClient late(h);
  CHECK(late.canvas.differences(asShown) == 0);
  CHECK(late.canvas.differences(seg) > 0);
  // The frame: now the drawing is the client's.
  auto hints = frameHints(0, 200);
  auto damage = frameDamage(0);
  h.server->frame(1, 0, hints, damage);
  for (int i = 0; i < 3; ++i)
    REQUIRE(late.canvas.apply(late.display.next()));
  CHECK(late.canvas.differences(seg) == 0);
}

TEST_CASE("a display that goes away: RESET, then SURFACE_DESTROY", "[server][frame]") {
  Harness h(offSettings());
  Segment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient c(h);
  h.server->dropDisplay();
  CHECK(c.display.next().type == SPICE_MSG_DISPLAY_RESET);
  CHECK(c.display.next().type == SPICE_MSG_DISPLAY_SURFACE_DESTROY);
}

TEST_CASE("the main channel pings at link, the client's PONG is taken", "[server][main]") {
  Harness h(offSettings());
  RawClient main(h);
  REQUIRE(main.link(SPICE_CHANNEL_MAIN, 0) == SPICE_LINK_ERR_OK);
  REQUIRE(main.next().type == SPICE_MSG_MAIN_INIT);
  auto ping = main.next();
  REQUIRE(ping.type == SPICE_MSG_PING);
  wire::Reader r(ping.body);
  const uint32_t id = r.u32();
  wire::Writer pong;
  pong.u32(id).u64(r.u64());
  main.sendMessage(SPICE_MSGC_PONG, pong.data());
  // Still served: the channel list comes back.
  main.sendMessage(SPICE_MSGC_MAIN_ATTACH_CHANNELS, {});
  CHECK(main.nextOf(SPICE_MSG_MAIN_CHANNELS_LIST).type == SPICE_MSG_MAIN_CHANNELS_LIST);
}

TEST_CASE("hints and damage outside the display are clipped or redrawn, never replayed wrong",
          "[server][frame]") {
  Harness h(offSettings());
  Segment seg(100, 80, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient c(h);
  for (uint32_t y = 0; y < 80; ++y)
    for (uint32_t x = 60; x < 100; ++x)
      seg.setPixel(x, y, 0x00445566);
  for (uint32_t y = 10; y < 20; ++y)
    for (uint32_t x = 0; x < 10; ++x)
      seg.setPixel(x, y, seg.pixel(x + 50, y - 10 + 50));  // the copy-bits below
  const std::vector<Hint> hints = {
      SolidFill{0x00445566, {Rect{-50, 60, 500, 900}, Rect{5, 5, 5, 50}}},  // clipped; empty
      CopyBits{50, 50, Rect{10, 0, 20, 10}},                                // valid
      CopyBits{95, 75, Rect{0, 0, 10, 10}},          // source past the edge: sent as damage
      CopyBits{INT32_MAX - 2, 0, Rect{0, 0, 1, 5}},  // overflowing source: damage
  };
  const std::vector<Rect> damage = {Rect{-10, -10, 0, 0}, Rect{70, 90, 200, 200}};
  h.server->frame(1, 0, hints, damage);
  h.loop.runUntil([&] {
    while (c.display.hasMessage())
      REQUIRE(c.canvas.apply(c.display.next()));
    return c.canvas.differences(seg) == 0;
  });
  CHECK(c.canvas.differences(seg) == 0);
}

TEST_CASE("a client that stops ACKing gets pending damage, bounded, then catches up",
          "[server][frame][flow-control]") {
  Harness h(offSettings());
  Segment seg(256, 160, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient slow(h, /*autoAck=*/false), fast(h);
  for (int n = 0; n < 200; ++n) {
    drawFrame(seg, n);
    auto hints = frameHints(n, 256);
    auto damage = frameDamage(n);
    h.server->frame(1, 0, hints, damage);
    // The fast client ACKs as spice-gtk does: every frame reaches it as its three messages.
    for (int i = 0; i < 3; ++i)
      REQUIRE(fast.canvas.apply(fast.display.next()));
  }
  CHECK(fast.canvas.differences(seg) == 0);

  // The slow one sent no ACK: the server stopped at two windows (40 messages after SET_ACK,
  // 3 of them the first picture), whatever the frame count; the rest is pending damage.
  h.loop.spin();
  size_t held = 0;
  while (slow.display.hasMessage()) {
    REQUIRE(slow.canvas.apply(slow.display.next()));
    ++held;
  }
  CHECK(held <= 40 - 3);
  CHECK(held >= 30);
  CHECK(slow.canvas.differences(seg) > 0);

  // Its ACKs arrive: the pending region is sent from the segment, the picture is right again.
  slow.display.setAutoAck(true);
  slow.ack();
  slow.ack();
  h.loop.runUntil([&] {
    while (slow.display.hasMessage())
      REQUIRE(slow.canvas.apply(slow.display.next()));
    return slow.canvas.differences(seg) == 0;
  });
  CHECK(slow.canvas.differences(seg) == 0);
}

// --- The pixmap cache ---

// Paints `r` of the segment with a pattern picked by `seed` (the same seed, the same pixels).
void paint(Segment& seg, const Rect& r, uint32_t seed) {
  for (int32_t y = r.top; y < r.bottom; ++y)
    for (int32_t x = r.left; x < r.right; ++x) {
      const auto dx = static_cast<uint32_t>(x - r.left), dy = static_cast<uint32_t>(y - r.top);
      seg.setPixel(static_cast<uint32_t>(x), static_cast<uint32_t>(y),
                   (dx * 37 + dy * 11 + seed * 0x9e3779b9u) & 0x00ffffff);
    }
}

// Sends `damage` as a frame and applies what arrives until the client's picture is the segment.
void drawAndFollow(Harness& h, DisplayClient& c, Segment& seg, std::vector<Rect> damage) {
  h.server->frame(seg.layout.generation, 0, {}, damage);
  h.loop.runUntil([&] {
    while (c.display.hasMessage())
      REQUIRE(c.canvas.apply(c.display.next()));
    return c.canvas.differences(seg) == 0 && c.display.available() == 0;
  });
  REQUIRE(c.canvas.differences(seg) == 0);
}

TEST_CASE("a client with a cache gets CACHE_ME, then FROM_CACHE for a repeated damage rect",
          "[server][cache]") {
  Harness h(offSettings());
  Segment seg(200, 150, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient c(h, true, /*cachePixels=*/100000);
  const Rect caret{20, 30, 50, 70};  // 40 x 30
  // A blinking caret: on, off, on, off. The first two are new images, the last two repeats.
  paint(seg, caret, 1);
  drawAndFollow(h, c, seg, {caret});
  CHECK(c.canvas.cachedImages == 1);
  paint(seg, caret, 2);
  drawAndFollow(h, c, seg, {caret});
  CHECK(c.canvas.cachedImages == 2);
  CHECK(c.canvas.fromCache == 0);
  paint(seg, caret, 1);
  drawAndFollow(h, c, seg, {caret});
  CHECK(c.canvas.fromCache == 1);
  paint(seg, caret, 2);
  drawAndFollow(h, c, seg, {caret});
  CHECK(c.canvas.fromCache == 2);
  // The same pixels elsewhere (a window moved back): from the cache too, drawn at the new place.
  const Rect moved{100, 120, 130, 160};
  paint(seg, moved, 1);
  drawAndFollow(h, c, seg, {moved});
  CHECK(c.canvas.fromCache == 3);
  CHECK(c.canvas.cachedImages == 2);
  // One pixel changed: a new image, never the cached one.
  seg.setPixel(121, 101, 0x00abcdef);
  drawAndFollow(h, c, seg, {moved});
  CHECK(c.canvas.fromCache == 3);
  CHECK(c.canvas.cachedImages == 3);
}

TEST_CASE("a client without a cache never gets CACHE_ME or FROM_CACHE", "[server][cache]") {
  Harness h(offSettings());
  Segment seg(200, 150, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  // One announces no cache (size 0, as a client may), one sends no DISPLAY_INIT at all.
  const int64_t announced = GENERATE(int64_t{0}, int64_t{-5});
  DisplayClient silent(h), zero(h, true, announced);
  const Rect caret{20, 30, 50, 70};
  for (uint32_t n = 0; n < 4; ++n) {
    paint(seg, caret, n % 2);
    for (DisplayClient* c : {&silent, &zero})
      drawAndFollow(h, *c, seg, {caret});  // the canvas fails the test on a CACHE_ME
  }
  for (DisplayClient* c : {&silent, &zero}) {
    CHECK(c->canvas.fromCache == 0);
    CHECK(c->canvas.cachedImages == 0);
    CHECK_FALSE(c->canvas.cacheReset);
  }
}

TEST_CASE("a small cache: INVAL_LIST drops the oldest image before the one that needs its room",
          "[server][cache]") {
  Harness h(offSettings());
  Segment seg(200, 150, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient c(h, true, /*cachePixels=*/2500);  // room for two 40 x 30 images
  const Rect area{20, 30, 50, 70};
  for (uint32_t seed : {1u, 2u})
    paint(seg, area, seed), drawAndFollow(h, c, seg, {area});
  CHECK(c.canvas.cachedImages == 2);
  CHECK(c.canvas.invalidated == 0);
  paint(seg, area, 3);  // evicts 1 (the least recently used)
  drawAndFollow(h, c, seg, {area});
  CHECK(c.canvas.invalidated == 1);
  paint(seg, area, 2);  // still held
  drawAndFollow(h, c, seg, {area});
  CHECK(c.canvas.fromCache == 1);
  paint(seg, area, 1);  // dropped: sent again with CACHE_ME, evicting 3 (2 was used since)
  drawAndFollow(h, c, seg, {area});
  CHECK(c.canvas.fromCache == 1);
  CHECK(c.canvas.cachedImages == 4);
  CHECK(c.canvas.invalidated == 2);
  paint(seg, area, 2);
  drawAndFollow(h, c, seg, {area});
  CHECK(c.canvas.fromCache == 2);
  // An image larger than the whole cache is sent whole and evicts nothing.
  const Rect big{0, 0, 100, 100};
  paint(seg, big, 9);
  drawAndFollow(h, c, seg, {big});
  CHECK(c.canvas.cachedImages == 4);
  CHECK(c.canvas.invalidated == 2);
  CHECK(c.canvas.cache.size() == 2);
}

// --- Hostile clients: each ends its own connection only ---

// A working client after an attack: the server still serves others.
void requireStillServing(Harness& h) {
  RawClient main(h);
  const uint32_t session = main.linkMain();
  CHECK(session != 0);
}

std::vector<uint8_t> linkBytes(uint32_t magic, uint32_t major, uint32_t size,
                               std::span<const uint8_t> mess) {
  wire::Writer w;
  w.u32(magic).u32(major).u32(2).u32(size);
  w.bytes(mess);
  return w.take();
}

uint32_t replyError(RawClient& c) {
  const auto head = c.take(16);
  wire::Reader h(head);
  h.bytes(12);
  const auto body = c.take(h.u32());
  return wire::Reader(body).u32();
}

TEST_CASE("hostile link stages end their connection with the SPICE error", "[server][hostile]") {
  Harness h(Settings{});
  RawClient bystander(h);
  const uint32_t session = bystander.linkMain();

  SECTION("wrong-magic") {
    RawClient c(h);
    c.send(linkBytes(0x50545448, 2, 22, std::vector<uint8_t>(22)));
    c.awaitEnd();
    CHECK(c.available() == 0);  // not SPICE: no SPICE reply
  }
  SECTION("cve-2016-9578-link-header") {
    RawClient c(h);
    c.send(linkBytes(SPICE_MAGIC, 2, 0xaaaaaaaa, {}));
    CHECK(replyError(c) == SPICE_LINK_ERR_INVALID_DATA);
    c.awaitEnd();
  }
  SECTION("old-major-version") {
    RawClient c(h);
    c.send(linkBytes(SPICE_MAGIC, 1, 22, {}));
    CHECK(replyError(c) == SPICE_LINK_ERR_VERSION_MISMATCH);
    c.awaitEnd();
  }
  SECTION("huge-capability-counts") {
    wire::Writer m;
    m.u32(0).u8(SPICE_CHANNEL_MAIN).u8(0).u32(0x40000000).u32(0x40000000).u32(18);
    RawClient c(h);
    c.send(linkBytes(SPICE_MAGIC, 2, 18, m.data()));
    CHECK(replyError(c) == SPICE_LINK_ERR_INVALID_DATA);
    c.awaitEnd();
  }
  SECTION("unknown-channel-types") {
    for (uint8_t type : {uint8_t{0}, uint8_t{SPICE_CHANNEL_PLAYBACK},
                         uint8_t{SPICE_CHANNEL_USBREDIR}, uint8_t{200}}) {
      RawClient c(h);
      CHECK(c.link(type, session) == SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE);
      c.awaitEnd();
    }
    wire::Writer second;  // display channel 1: only id 0 is served
    second.u32(session).u8(SPICE_CHANNEL_DISPLAY).u8(1).u32(0).u32(0).u32(18);
    RawClient c(h);
    c.send(linkBytes(SPICE_MAGIC, 2, 18, second.data()));
    CHECK(replyError(c) == SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE);
  }
  SECTION("wrong-session-id") {
    RawClient c(h);
    CHECK(c.link(SPICE_CHANNEL_DISPLAY, session ^ 0x5a5a) == SPICE_LINK_ERR_BAD_CONNECTION_ID);
    c.awaitEnd();
    RawClient main(h);
    CHECK(main.link(SPICE_CHANNEL_MAIN, session) == SPICE_LINK_ERR_BAD_CONNECTION_ID);
  }
  SECTION("sasl-requested") {
    RawClient c(h);
    std::vector<uint32_t> common;
    setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire::Writer m;
    m.u32(0).u8(SPICE_CHANNEL_MAIN).u8(0).u32(1).u32(0).u32(18).u32(common[0]);
    c.send(linkBytes(SPICE_MAGIC, 2, 22, m.data()));
    CHECK(replyError(c) == SPICE_LINK_ERR_OK);
    wire::Writer sasl;
    sasl.u32(SPICE_COMMON_CAP_AUTH_SASL);
    c.send(sasl.data());
    const auto result = c.take(4);
    CHECK(wire::Reader(result).u32() == SPICE_LINK_ERR_INVALID_DATA);
    c.awaitEnd();
  }
  SECTION("closed-mid-link") {
    {
      RawClient c(h);
      c.send(linkBytes(SPICE_MAGIC, 2, 22, std::vector<uint8_t>(5)));
      h.loop.spin();
    }
    h.loop.runUntil([&] { return h.lastCounts.connections == 1; });
  }
  requireStillServing(h);
  CHECK(h.server->counts().sessions >= 1);
  CHECK_FALSE(bystander.ended());
}

TEST_CASE("hostile messages after the link end their connection", "[server][hostile]") {
  Harness h(Settings{});
  Segment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  RawClient main(h);
  const uint32_t session = main.linkMain();
  RawClient inputs(h);
  REQUIRE(inputs.link(SPICE_CHANNEL_INPUTS, session) == SPICE_LINK_ERR_OK);
  inputs.nextOf(SPICE_MSG_INPUTS_INIT);

  SECTION("message-on-the-wrong-channel") {
    wire::Writer motion;
    motion.i32(1).i32(1).u16(0);
    main.sendMessage(SPICE_MSGC_INPUTS_MOUSE_MOTION, motion.data());
    main.awaitEnd();
    // The session ended with its main channel: its inputs channel goes too.
    inputs.awaitEnd();
  }
  SECTION("unknown-message-type") {
    inputs.sendMessage(0x7777, {});
    inputs.awaitEnd();
    CHECK_FALSE(main.ended());
  }
  SECTION("oversized-message") {
    wire::Writer head;
    head.u16(SPICE_MSGC_INPUTS_KEY_DOWN).u32(1 << 20);
    inputs.send(head.data());
    inputs.awaitEnd();
    CHECK_FALSE(main.ended());
  }
  SECTION("truncated-message-waits-for-the-rest") {
    auto whole = wire::frameMessage(true, 0, SPICE_MSGC_INPUTS_KEY_DOWN,
                                    std::vector<uint8_t>{0x1e, 0, 0, 0});
    inputs.send(std::span(whole).first(7));
    h.loop.spin();
    CHECK(h.inputs.empty());
    inputs.send(std::span(whole).subspan(7));
    h.loop.runUntil([&] { return !h.inputs.empty(); });
    CHECK(std::get<KeyEvent>(h.inputs[0]).scancode == 0x1e);
  }
  SECTION("asking-without-reading") {
    main.pauseReading();
    for (int batch = 0; batch < 400 && h.lastCounts.sessions != 0; ++batch) {
      std::vector<uint8_t> many;
      for (int i = 0; i < 500; ++i) {
        auto m = wire::frameMessage(true, 0, SPICE_MSGC_MAIN_ATTACH_CHANNELS, {});
        many.insert(many.end(), m.begin(), m.end());
      }
      if (::send(main.fd(), many.data(), many.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        break;  // the server closed it
      h.loop.spin();
    }
    h.loop.runUntil([&] { return h.lastCounts.sessions == 0; });
  }
  SECTION("display-init-twice") {
    RawClient display(h);
    REQUIRE(display.link(SPICE_CHANNEL_DISPLAY, session) == SPICE_LINK_ERR_OK);
    wire::Writer w;
    w.u8(1).u64(1 << 20).u8(1).u32(1 << 20);
    display.sendMessage(SPICE_MSGC_DISPLAY_INIT, w.data());
    display.sendMessage(SPICE_MSGC_DISPLAY_INIT, w.data());
    display.awaitEnd();
  }
  SECTION("input-flood") {
    wire::Writer key;
    key.u32(0x1e);
    for (int i = 0; i < 2000 && !inputs.ended(); ++i) {
      inputs.sendMessage(SPICE_MSGC_INPUTS_KEY_DOWN, key.data());
      if (i % 50 == 0)
        h.loop.spin();
    }
    inputs.awaitEnd();
    CHECK(h.inputs.size() <= 400);
    CHECK_FALSE(main.ended());
  }
  requireStillServing(h);
}

TEST_CASE("inputs arrive in order, validated, motion is ACKed every 4 events", "[server][inputs]") {
  Harness h(Settings{});
  Segment seg(640, 480, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  RawClient main(h);
  const uint32_t session = main.linkMain();
  RawClient inputs(h);
  REQUIRE(inputs.link(SPICE_CHANNEL_INPUTS, session) == SPICE_LINK_ERR_OK);
  inputs.nextOf(SPICE_MSG_INPUTS_INIT);

  auto u32 = [](uint32_t v) {
    wire::Writer w;
    w.u32(v);
    return w.take();
  };
  inputs.sendMessage(SPICE_MSGC_INPUTS_KEY_DOWN, u32(0x1d));
  inputs.sendMessage(SPICE_MSGC_INPUTS_KEY_DOWN, u32(0x48e0));  // extended: cursor up
  inputs.sendMessage(SPICE_MSGC_INPUTS_KEY_UP, u32(0xc8e0));
  inputs.sendMessage(SPICE_MSGC_INPUTS_KEY_UP, u32(0x9d));
  for (int i = 0; i < 3; ++i) {
    wire::Writer m;
    m.i32(i).i32(-i).u16(SPICE_MOUSE_BUTTON_MASK_LEFT);
    inputs.sendMessage(SPICE_MSGC_INPUTS_MOUSE_MOTION, m.data());
  }
  wire::Writer outside;  // beyond the 640x480 display: dropped, but ACK-counted
  outside.u32(640).u32(10).u16(0).u8(0);
  inputs.sendMessage(SPICE_MSGC_INPUTS_MOUSE_POSITION, outside.data());
  wire::Writer pos;
  pos.u32(639).u32(479).u16(0).u8(0);
  inputs.sendMessage(SPICE_MSGC_INPUTS_MOUSE_POSITION, pos.data());
  wire::Writer press;
  press.u8(SPICE_MOUSE_BUTTON_MIDDLE).u16(SPICE_MOUSE_BUTTON_MASK_MIDDLE);
  inputs.sendMessage(SPICE_MSGC_INPUTS_MOUSE_PRESS, press.data());

  CHECK(inputs.next().type == SPICE_MSG_INPUTS_MOUSE_MOTION_ACK);
  h.loop.runUntil([&] { return h.inputs.size() == 9; });
  CHECK(std::get<KeyEvent>(h.inputs[0]).scancode == 0x1d);
  CHECK(std::get<KeyEvent>(h.inputs[0]).down);
  CHECK(std::get<KeyEvent>(h.inputs[1]).scancode == 0x48e0);
  CHECK(std::get<KeyEvent>(h.inputs[2]).scancode == 0x48e0);
  CHECK_FALSE(std::get<KeyEvent>(h.inputs[2]).down);
  CHECK(std::get<KeyEvent>(h.inputs[3]).scancode == 0x1d);
  for (int i = 0; i < 3; ++i) {
    const auto& m = std::get<MouseMotion>(h.inputs[4 + static_cast<size_t>(i)]);
    CHECK(m.dx == i);
    CHECK(m.dy == -i);
    CHECK(m.buttons == SPICE_MOUSE_BUTTON_MASK_LEFT);
  }
  CHECK(std::get<MousePosition>(h.inputs[7]).x == 639);
  CHECK(std::get<MouseButton>(h.inputs[8]).button == SPICE_MOUSE_BUTTON_MIDDLE);
  CHECK(std::get<MouseButton>(h.inputs[8]).pressed);
}

TEST_CASE("the cursor channel sends init, then only what changed", "[server][cursor]") {
  Harness h(Settings{});
  CursorState cursor;
  cursor.visible = true;
  cursor.x = 10;
  cursor.y = 20;
  cursor.shapeSerial = 1;
  cursor.width = 2;
  cursor.height = 2;
  cursor.pixels = {0xff000000, 0xffffffff, 0x80ff0000, 0};
  h.server->setCursor(cursor);
  RawClient main(h);
  const uint32_t session = main.linkMain();
  RawClient c(h);
  REQUIRE(c.link(SPICE_CHANNEL_CURSOR, session) == SPICE_LINK_ERR_OK);
  auto init = c.next();
  REQUIRE(init.type == SPICE_MSG_CURSOR_INIT);
  wire::Reader r(init.body);
  CHECK(r.i16() == 10);
  CHECK(r.i16() == 20);
  r.u32();
  CHECK(r.u8() == 1);
  CHECK(r.u16() == 0);  // a shape follows
  CHECK(r.u64() == 1);
  CHECK(r.u8() == SPICE_CURSOR_TYPE_ALPHA);

  cursor.x = 11;
  h.server->setCursor(cursor);
  auto move = c.next();
  CHECK(move.type == SPICE_MSG_CURSOR_MOVE);
  CHECK(move.body.size() == 4);
  h.server->setCursor(cursor);  // nothing changed: nothing sent
  cursor.visible = false;
  h.server->setCursor(cursor);
  CHECK(c.next().type == SPICE_MSG_CURSOR_HIDE);
  cursor.visible = true;
  cursor.shapeSerial = 2;
  h.server->setCursor(cursor);
  CHECK(c.next().type == SPICE_MSG_CURSOR_SET);
  h.loop.spin();
  CHECK(c.available() == 0);
}

TEST_CASE("the main channel: channel list, mouse mode, agent data without an agent",
          "[server][main]") {
  Settings settings;
  settings.mouseMode = MouseMode::Server;
  Harness h(settings);
  RawClient main(h);
  REQUIRE(main.link(SPICE_CHANNEL_MAIN, 0) == SPICE_LINK_ERR_OK);
  auto init = main.next();
  REQUIRE(init.type == SPICE_MSG_MAIN_INIT);
  wire::Reader r(init.body);
  CHECK(r.u32() != 0);
  r.u32();
  CHECK(r.u32() == (SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT));
  CHECK(r.u32() == SPICE_MOUSE_MODE_SERVER);
  CHECK(r.u32() == 0);  // no agent

  main.sendMessage(SPICE_MSGC_MAIN_ATTACH_CHANNELS, {});
  auto list = main.nextOf(SPICE_MSG_MAIN_CHANNELS_LIST);
  wire::Reader l(list.body);
  REQUIRE(l.u32() == 3);
  std::vector<uint8_t> types;
  for (int i = 0; i < 3; ++i) {
    types.push_back(l.u8());
    CHECK(l.u8() == 0);
  }
  std::sort(types.begin(), types.end());
  CHECK(types ==
        std::vector<uint8_t>{SPICE_CHANNEL_DISPLAY, SPICE_CHANNEL_INPUTS, SPICE_CHANNEL_CURSOR});

  wire::Writer start;
  start.u32(10);
  main.sendMessage(SPICE_MSGC_MAIN_AGENT_START, start.data());
  main.sendMessage(SPICE_MSGC_MAIN_AGENT_DATA, std::vector<uint8_t>(2048, 0x41));
  wire::Writer mode;
  mode.u16(SPICE_MOUSE_MODE_CLIENT);
  main.sendMessage(SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST, mode.data());
  auto reply = main.nextOf(SPICE_MSG_MAIN_MOUSE_MODE);
  wire::Reader m(reply.body);
  CHECK(m.u16() == (SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT));
  CHECK(m.u16() == SPICE_MOUSE_MODE_CLIENT);

  SECTION("agent data above the limit ends the connection") {
    main.sendMessage(SPICE_MSGC_MAIN_AGENT_DATA, std::vector<uint8_t>(8192, 0x41));
    main.awaitEnd();
  }
}

TEST_CASE("a client beyond the limit is told so and disconnected", "[server][limit]") {
  Settings settings;
  settings.maxClients = 1;
  Harness h(settings);
  RawClient first(h);
  first.linkMain();
  RawClient second(h);
  REQUIRE(second.link(SPICE_CHANNEL_MAIN, 0) == SPICE_LINK_ERR_OK);
  auto notify = second.next();
  CHECK(notify.type == SPICE_MSG_NOTIFY);
  const std::string text(notify.body.begin() + 24, notify.body.end());
  CHECK_THAT(text, Catch::Contains("full"));
  CHECK(second.next().type == SPICE_MSG_DISCONNECTING);
  second.awaitEnd();
  h.loop.runUntil([&] { return h.lastCounts.refused == 1 && h.lastCounts.connections == 1; });
  CHECK(h.lastCounts.sessions == 1);
  CHECK_FALSE(first.ended());
}

// Resident memory of this process (the server's share is what grows, if anything does).
size_t residentBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

TEST_CASE("a client that ACKs but never reads does not grow the server, nor stall others",
          "[server][flow-control][memory]") {
  Harness h(offSettings());
  Segment seg(1024, 768, 1);  // 3 MiB a picture, sent raw
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  DisplayClient stuck(h), fast(h);
  stuck.display.pauseReading();
  // Hostile: ACKs for messages it never read, so only the byte bound can hold it back.
  for (int i = 0; i < 200; ++i)
    stuck.ack();
  h.loop.spin();
  const size_t before = residentBytes();
  const std::vector<Rect> everything = {Rect{0, 0, 768, 1024}};
  for (int n = 0; n < 60; ++n) {
    seg.setPixel(static_cast<uint32_t>(n), 0, 0x00ffffff);
    h.server->frame(1, 0, {}, everything);
    REQUIRE(fast.canvas.apply(fast.display.next()));  // the other client is served each frame
  }
  h.loop.spin();
  const size_t grown = residentBytes() > before ? residentBytes() - before : 0;
  // 60 frames of 3 MiB would be 180 MiB queued; the bound is 4 MiB + one message, plus the
  // fast client's buffers in this same process.
  INFO("resident memory grew by " << grown / 1024 << " KiB");
  if constexpr (sandbox::ADDRESS_SANITIZER)
    WARN("resident memory not checked: ASan's quarantine keeps freed blocks resident");
  else
    CHECK(grown < 24u << 20);
  CHECK(fast.canvas.differences(seg) == 0);
}

TEST_CASE("a-client-trickling-one-byte-a-second is dropped at the link deadline",
          "[server][hostile][slow]") {
  Harness h(Settings{});
  RawClient c(h);
  const auto header = linkBytes(SPICE_MAGIC, 2, 22, {});
  struct Trickle {
    RawClient* client;
    const std::vector<uint8_t>* bytes;
    size_t sent = 0;
  } trickle{&c, &header};
  base::UvHandle<uv_timer_t> timer;
  uv_timer_init(h.loop.get(), timer.get());
  timer->data = &trickle;
  // The attack itself is timed (a byte a second); what the test awaits is the server's close.
  uv_timer_start(
      timer.get(),
      [](uv_timer_t* t) {
        auto* tr = static_cast<Trickle*>(t->data);
        if (tr->sent < tr->bytes->size() && !tr->client->ended())
          tr->client->send(std::span(*tr->bytes).subspan(tr->sent++, 1));
      },
      0, 1000);
  const uint64_t start = uv_now(h.loop.get());
  // Each runUntil has a 10 s watchdog; the deadline is 10 s, so await in steps.
  for (int i = 0; i < 3 && !c.ended(); ++i)
    h.loop.runUntil([&] { return c.ended() || trickle.sent >= 6 * static_cast<size_t>(i + 1); });
  c.awaitEnd();
  const uint64_t elapsed = uv_now(h.loop.get()) - start;
  CHECK(elapsed >= 10000);
  CHECK(elapsed < 13000);
  CHECK(trickle.sent < header.size());
  requireStillServing(h);
}

TEST_CASE("setDisplay refuses a segment smaller than its layout", "[server]") {
  Harness h(Settings{});
  Segment seg(64, 64, 1);
  DisplayLayout layout = seg.layout;
  layout.size += 4096;  // claims more than the descriptor has
  layout.height += 1;
  auto error = h.server->setDisplay(seg.readOnly(), layout);
  REQUIRE(error);
  CHECK_THAT(*error, Catch::Contains("segment"));
  layout = seg.layout;
  layout.stride = 4;
  CHECK(h.server->setDisplay(seg.readOnly(), layout));
}

TEST_CASE("setDisplay refuses a segment that is not sealed against shrinking",
          "[server][hostile]") {
  Harness h(Settings{});
  constexpr uint32_t SIDE = 32;
  DisplayLayout layout;
  layout.generation = 1;
  layout.width = layout.height = SIDE;
  layout.stride = SIDE * 4;
  layout.size = uint64_t{SIDE} * SIDE * 4;
  SECTION("a memfd without seals (truncating it under the mapping would SIGBUS the netproxy)") {
    base::Fd fd(::memfd_create("unsealed-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(layout.size)) == 0);
    REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW) == 0);  // sealed, but not the one needed
    auto error = h.server->setDisplay(std::move(fd), layout);
    REQUIRE(error);
    CHECK_THAT(*error,
               Catch::Contains("not sealed against shrinking") && Catch::Contains("F_SEAL_SHRINK"));
  }
  SECTION("a memfd that cannot be sealed") {
    base::Fd fd(::memfd_create("unsealable-segment", MFD_CLOEXEC));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(layout.size)) == 0);
    auto error = h.server->setDisplay(std::move(fd), layout);
    REQUIRE(error);
    CHECK_THAT(*error, Catch::Contains("F_SEAL_SHRINK"));
  }
  SECTION("not a memfd at all") {
    base::Fd fd(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    auto error = h.server->setDisplay(std::move(fd), layout);
    REQUIRE(error);
    CHECK_THAT(*error, Catch::Contains("seals"));
  }
  // The same layout in a sealed segment (as the broker makes them) is taken.
  Segment sealed(SIDE, SIDE, 1);
  CHECK_FALSE(h.server->setDisplay(sealed.readOnly(), sealed.layout));
}

// --- The shared-memory extension (base/shm-protocol.h) ---

constexpr uint32_t bit(uint32_t cap) {
  return 1u << cap;
}

// A segment with two buffers, as the broker makes them: buffer 0 holds the Segment's picture,
// buffer 1 a copy of it (the renderer's state right after a flip).
struct TwoBufferSegment : Segment {
  TwoBufferSegment(uint32_t width, uint32_t height, uint64_t generation)
      : Segment(width, height, generation, /*spare=*/true) {}
};

Settings shmSettings(std::vector<uint32_t> uids) {
  Settings s = offSettings();
  s.shmUids = std::move(uids);
  return s;
}

// Main and display channels, the display linked with `caps` (word 0 of its channel caps).
struct ShmClient {
  RawClient main, display;
  ShmClient(Harness& h, uint32_t caps, bool overUnix = true) : main(h), display(h, overUnix) {
    const uint32_t session = main.linkMain();
    REQUIRE(display.link(SPICE_CHANNEL_DISPLAY, session, true, caps) == SPICE_LINK_ERR_OK);
  }
  // The next display message that is not SET_ACK, and the stream offset its header began at.
  RawClient::Message next(size_t* start = nullptr) {
    for (;;) {
      const size_t at = display.position();
      RawClient::Message m = display.next();
      if (m.type == SPICE_MSG_SET_ACK)
        continue;
      if (start)
        *start = at;
      return m;
    }
  }
  void reply(uint32_t segmentId, uint32_t accepted, uint32_t flags) {
    wire::Writer w;
    w.u32(segmentId).u32(accepted).u32(flags);
    display.sendMessage(shm::MSGC_SHM_REPLY, w.data());
  }
  void handled(uint64_t frame) {
    wire::Writer w;
    w.u64(frame);
    display.sendMessage(shm::MSGC_SHM_DAMAGE_HANDLED, w.data());
  }
};

struct Offer {
  uint32_t segmentId = 0, flags = 0;
  uint64_t size = 0;
};
Offer readOffer(const RawClient::Message& m) {
  REQUIRE(m.type == shm::MSG_SHM_OFFER);
  REQUIRE(m.body.size() == shm::SHM_OFFER_SIZE);
  wire::Reader r(m.body);
  Offer o;
  o.segmentId = r.u32();
  o.size = r.u64();
  o.flags = r.u32();
  return o;
}

struct ShmDamage {
  uint64_t offset = 0, frame = 0;
  std::vector<Rect> rects;
};
ShmDamage readDamage(const RawClient::Message& m) {
  REQUIRE(m.type == shm::MSG_SHM_DAMAGE);
  wire::Reader r(m.body);
  REQUIRE(r.u32() == 0);  // surface id
  ShmDamage d;
  d.offset = r.u64();
  d.frame = r.u64();
  const uint32_t count = r.u32();
  for (uint32_t i = 0; i < count; ++i) {
    Rect rect;
    rect.top = r.i32();
    rect.left = r.i32();
    rect.bottom = r.i32();
    rect.right = r.i32();
    d.rects.push_back(rect);
  }
  REQUIRE(r.ok());
  REQUIRE(r.remaining() == 0);
  return d;
}

TEST_CASE("a local viewer of an allowed user gets the segment read-only, then only damage",
          "[server][shm]") {
  Harness h(shmSettings({::getuid()}));
  TwoBufferSegment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout, 0));
  ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
  CHECK((c.display.serverChannelCaps() & bit(shm::CAP_SHARED_MEMORY)) != 0);

  size_t start = 0;
  const Offer offer = readOffer(c.next(&start));
  CHECK(offer.size == seg.layout.size);
  CHECK(offer.flags == 0);  // no tear-free asked for
  // Exactly one descriptor, with the read that took the offer's first byte.
  REQUIRE(c.display.descriptors().size() == 1);
  CHECK(c.display.descriptors()[0].from <= start);
  CHECK(c.display.descriptors()[0].to > start);
  const int fd = c.display.descriptors()[0].fd.get();
  CHECK((::fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
  CHECK((::fcntl(fd, F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW)) ==
        (F_SEAL_SHRINK | F_SEAL_GROW));
  CHECK(::mmap(nullptr, offer.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
  void* view = ::mmap(nullptr, offer.size, PROT_READ, MAP_SHARED, fd, 0);
  REQUIRE(view != MAP_FAILED);
  auto pixelIn = [&](uint64_t offset, uint32_t x, uint32_t y) {
    uint32_t v;
    std::memcpy(&v, static_cast<uint8_t*>(view) + offset + size_t{y} * seg.layout.stride + x * 4,
                4);
    return v;
  };
  CHECK(pixelIn(seg.layout.offset, 7, 9) == seg.pixel(7, 9));

  c.reply(offer.segmentId, 1, 0);
  const RawClient::Message create = c.next();
  REQUIRE(create.type == shm::MSG_SURFACE_CREATE_SHM);
  REQUIRE(create.body.size() == shm::SURFACE_CREATE_SHM_SIZE);
  wire::Reader r(create.body);
  CHECK(r.u32() == 0);
  CHECK(r.u32() == 64);
  CHECK(r.u32() == 48);
  CHECK(r.u32() == SPICE_SURFACE_FMT_32_xRGB);
  CHECK(r.u32() == SPICE_SURFACE_FLAGS_PRIMARY);
  CHECK(r.u32() == offer.segmentId);
  CHECK(r.u64() == seg.layout.offset);
  CHECK(r.u32() == seg.layout.stride);
  const ShmDamage first = readDamage(c.next());
  CHECK(first.offset == seg.layout.offset);
  CHECK(first.frame == 1);
  CHECK(first.rects == std::vector<Rect>{Rect{0, 0, 48, 64}});
  h.loop.runUntil([&] { return h.lastCounts.shm == 1; });
  CHECK(h.lastCounts.tearFree == 0);

  // A batch drawn into buffer 1: the damage names it, with every changed rect (hints too).
  seg.copyToBack();
  const std::vector<Hint> hints = {SolidFill{0x123456, {Rect{1, 2, 3, 4}}},
                                   CopyBits{0, 0, Rect{10, 10, 20, 20}}};
  const std::vector<Rect> damage = {Rect{30, 5, 40, 90}};  // clipped to the picture
  h.server->frame(1, 1, hints, damage);
  const ShmDamage second = readDamage(c.next());
  CHECK(second.offset == seg.layout.backOffset);
  CHECK(second.frame == 2);
  CHECK(second.rects ==
        std::vector<Rect>{Rect{1, 2, 3, 4}, Rect{10, 10, 20, 20}, Rect{30, 5, 40, 64}});
  // No image, no draw: only the two descriptors' worth of shared memory.
  h.loop.spin();
  CHECK_FALSE(c.display.hasMessage());
  CHECK(c.display.descriptors().size() == 1);
  ::munmap(view, offer.size);
}

TEST_CASE("no offer over TCP, nor to another user: images, whatever the client advertises",
          "[server][shm]") {
  const bool overUnix = GENERATE(false, true);
  // Over TCP our own user is allowed; over the unix socket only someone else is.
  Harness h(shmSettings({overUnix ? ::getuid() + 1 : ::getuid()}));
  Segment seg(32, 16, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  ShmClient c(h, bit(shm::CAP_SHARED_MEMORY) | bit(shm::CAP_TEAR_FREE), overUnix);
  CHECK((c.display.serverChannelCaps() & bit(shm::CAP_SHARED_MEMORY)) == 0);
  CHECK(c.next().type == SPICE_MSG_DISPLAY_SURFACE_CREATE);
  RawClient::Message m = c.next();
  while (m.type != SPICE_MSG_DISPLAY_MARK) {
    CHECK(m.type != shm::MSG_SHM_OFFER);
    m = c.next();
  }
  CHECK(c.display.descriptors().empty());
  CHECK(h.lastCounts.shm == 0);
}

TEST_CASE("a viewer that declines the offer gets the normal display", "[server][shm]") {
  Harness h(shmSettings({::getuid()}));
  Segment seg(32, 16, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout));
  ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
  const Offer offer = readOffer(c.next());
  // Nothing else comes before the answer.
  h.loop.spin();
  CHECK_FALSE(c.display.hasMessage());
  c.reply(offer.segmentId, 0, 0);
  const RawClient::Message create = c.next();
  REQUIRE(create.type == SPICE_MSG_DISPLAY_SURFACE_CREATE);
  Canvas canvas;
  REQUIRE(canvas.apply(create));
  while (!canvas.marked)
    REQUIRE(canvas.apply(c.next()));
  for (uint32_t y = 0; y < 16; ++y)
    for (uint32_t x = 0; x < 32; ++x)
      REQUIRE((canvas.pixels[y * 32 + x] & 0xffffff) == (seg.pixel(x, y) & 0xffffff));
  CHECK(h.lastCounts.shm == 0);
}

TEST_CASE("a batch that changed the same area many times is announced as disjoint rectangles",
          "[server][shm]") {
  Harness h(shmSettings({::getuid()}));
  TwoBufferSegment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout, 0));
  ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
  const Offer offer = readOffer(c.next());
  c.reply(offer.segmentId, 1, 0);
  REQUIRE(c.next().type == shm::MSG_SURFACE_CREATE_SHM);
  readDamage(c.next());
  // Ten full-screen fills (a burst of them in one batch), a damage rectangle inside them and one
  // beside them: the viewer copies the screen once, and the rest once.
  std::vector<Hint> hints;
  for (uint32_t n = 0; n < 10; ++n)
    hints.push_back(SolidFill{0x00010101u * n, {Rect{0, 0, 40, 64}}});
  const std::vector<Rect> damage = {Rect{5, 5, 10, 10}, Rect{40, 0, 48, 20}};
  h.server->frame(1, 1, hints, damage);
  const ShmDamage d = readDamage(c.next());
  CHECK(d.rects == std::vector<Rect>{Rect{0, 0, 40, 64}, Rect{40, 0, 48, 20}});
}

TEST_CASE(
    "tear-free: the renderer draws the next frame while the viewer reads this one, and "
    "waits for the one before",
    "[server][shm]") {
  LogWatch log;
  Harness h(shmSettings({::getuid()}));
  TwoBufferSegment seg(64, 48, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout, 0));
  ShmClient c(h, bit(shm::CAP_SHARED_MEMORY) | bit(shm::CAP_TEAR_FREE));
  const Offer offer = readOffer(c.next());
  CHECK(offer.flags == shm::OFFER_TEAR_FREE);
  c.reply(offer.segmentId, 1, shm::REPLY_TEAR_FREE);
  REQUIRE(c.next().type == shm::MSG_SURFACE_CREATE_SHM);
  const ShmDamage first = readDamage(c.next());
  CHECK(first.offset == seg.layout.offset);
  h.loop.runUntil([&] { return h.lastCounts.tearFree == 1; });

  // Frame 1 (buffer 0) is not acknowledged, but it is the current picture: the renderer draws
  // the next batch into buffer 1, so the go-ahead is not held.
  bool synced = false;
  h.server->sync([&] { synced = true; });
  h.loop.runUntil([&] { return synced; });

  // Frame 2 in buffer 1 while frame 1 is still unacknowledged: the next batch would draw into
  // buffer 0, which the viewer may still be reading. Held; the server answers the same client's
  // main channel meanwhile (it is not blocked), and still holds it.
  seg.copyToBack();
  const std::vector<Rect> damage = {Rect{0, 0, 8, 8}};
  h.server->frame(1, 1, {}, damage);
  const ShmDamage second = readDamage(c.next());
  CHECK(second.offset == seg.layout.backOffset);
  synced = false;
  h.server->sync([&] { synced = true; });
  wire::Writer mode;
  mode.u16(SPICE_MOUSE_MODE_SERVER);
  c.main.sendMessage(SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST, mode.data());
  c.main.nextOf(SPICE_MSG_MAIN_MOUSE_MODE);
  CHECK_FALSE(synced);
  c.handled(first.frame);
  h.loop.runUntil([&] { return synced; });

  // Frame 3 in buffer 0; acknowledging frame 3 acknowledges frame 2 with it.
  h.server->frame(1, 0, {}, damage);
  const ShmDamage third = readDamage(c.next());
  CHECK(third.offset == seg.layout.offset);
  synced = false;
  h.server->sync([&] { synced = true; });
  h.loop.spin();
  CHECK_FALSE(synced);  // frame 2 (buffer 1) is outstanding
  c.handled(third.frame);
  h.loop.runUntil([&] { return synced; });

  // Frame 4 in buffer 1, and frame 5 in buffer 0 while frame 4 is never acknowledged: the
  // go-ahead comes at the timeout, and the viewer is no longer tear-free (it is told nothing; it
  // may now see tearing).
  h.server->frame(1, 1, {}, damage);
  readDamage(c.next());
  synced = false;
  h.server->sync([&] { synced = true; });
  h.loop.runUntil([&] { return synced; });
  h.server->frame(1, 0, {}, damage);
  readDamage(c.next());
  synced = false;
  h.server->sync([&] { synced = true; });
  h.loop.runUntil([&] { return synced; });
  CHECK(log.saw("did not acknowledge frame 4"));
  h.loop.runUntil([&] { return h.lastCounts.tearFree == 0; });
  CHECK(h.lastCounts.shm == 1);
}

TEST_CASE("hostile shared-memory messages end their connection", "[server][shm][hostile]") {
  Harness h(shmSettings({::getuid()}));
  TwoBufferSegment seg(32, 16, 1);
  REQUIRE_FALSE(h.server->setDisplay(seg.readOnly(), seg.layout, 0));
  SECTION("a reply to no offer (TCP)") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY), false);
    c.reply(1, 1, 0);
    c.display.awaitEnd();
  }
  SECTION("a reply naming another segment") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
    const Offer offer = readOffer(c.next());
    c.reply(offer.segmentId + 1, 1, 0);
    c.display.awaitEnd();
  }
  SECTION("accepted = 2") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
    const Offer offer = readOffer(c.next());
    c.reply(offer.segmentId, 2, 0);
    c.display.awaitEnd();
  }
  SECTION("unknown reply flags") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
    const Offer offer = readOffer(c.next());
    c.reply(offer.segmentId, 1, 0x80);
    c.display.awaitEnd();
  }
  SECTION("a truncated reply") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
    readOffer(c.next());
    const uint8_t shortBody[5] = {1, 0, 0, 0, 1};
    c.display.sendMessage(shm::MSGC_SHM_REPLY, shortBody);
    c.display.awaitEnd();
  }
  SECTION("acknowledging a frame never sent") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY) | bit(shm::CAP_TEAR_FREE));
    const Offer offer = readOffer(c.next());
    c.reply(offer.segmentId, 1, shm::REPLY_TEAR_FREE);
    REQUIRE(c.next().type == shm::MSG_SURFACE_CREATE_SHM);
    readDamage(c.next());
    c.handled(99);
    c.display.awaitEnd();
  }
  SECTION("descriptors a client sends are never taken in") {
    ShmClient c(h, bit(shm::CAP_SHARED_MEMORY));
    readOffer(c.next());
    // Whether any descriptor of this process (the server's included) is the client's memfd.
    auto holdsClientMemfd = [] {
      for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code error;
        const auto target = std::filesystem::read_symlink(e.path(), error);
        if (!error && target.string().find("sent-by-client") != std::string::npos)
          return true;
      }
      return false;
    };
    base::Fd spare(::memfd_create("sent-by-client", MFD_CLOEXEC));
    REQUIRE(spare);
    wire::Writer w;
    w.u32(0).u32(0).u32(0);
    const std::vector<uint8_t> bytes = wire::frameMessage(true, 99, shm::MSGC_SHM_REPLY, w.data());
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    const int sent = spare.get();
    std::memcpy(CMSG_DATA(cm), &sent, sizeof sent);
    REQUIRE(::sendmsg(c.display.fd(), &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    spare.reset();
    // The reply (segment 0) is refused; the descriptor went nowhere (the server reads with
    // read(2), which takes no ancillary data: the kernel closes it).
    c.display.awaitEnd();
    h.loop.spin();
    CHECK_FALSE(holdsClientMemfd());
  }
  requireStillServing(h);
}

}  // namespace
}  // namespace spicebox::netproxy
