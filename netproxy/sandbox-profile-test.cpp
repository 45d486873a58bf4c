// The netproxy's sandbox: it serves clients on the sockets it inherited (TCP for remote viewers,
// unix for local ones), maps display segments read-only, runs its libuv loop and logs; it
// cannot open files, make or connect sockets, or run programs. Every test runs in a forked
// child.
#include "netproxy/sandbox-profile.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <string>

#include "base/fd.h"
#include "base/log.h"
#include "netproxy/server.h"
#include "sandbox/testing.h"

namespace spicebox::netproxy {
namespace {

using sandbox::testing::AttackOutcome;
using sandbox::testing::ChildOutcome;
using sandbox::testing::runInChild;

constexpr size_t SEGMENT_SIZE = 16384;

// What the child answers a client: a header and a body in one sendmsg, as server.cpp sends a
// SPICE message.
constexpr char REPLY_HEADER[] = "REDQ";
constexpr char REPLY_BODY[] = "hello client";

AttackOutcome attackNetproxy(const std::function<void()>& attack, std::vector<int> keepFds = {}) {
  return sandbox::testing::runAttack(sandboxProfile, std::move(keepFds), attack);
}

void requireKilled(const AttackOutcome& outcome) {
  INFO(outcome.child.describe());
  REQUIRE(outcome.reachedAttack);
  REQUIRE(outcome.child.killedBy(SIGSYS));
}

void enterNetproxySandbox(std::vector<int> keepFds) {
  base::initLogging("netproxy", 2, "warn");
  sandbox::enter(sandboxProfile(std::move(keepFds)), sandbox::Mode::BestEffort);
}

// A listening TCP socket on an ephemeral loopback port, as the broker would pass one.
base::Fd listenTcp(uint16_t& port) {
  base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::listen(fd.get(), 4) == 0);
  socklen_t length = sizeof address;
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
  port = ntohs(address.sin_port);
  return fd;
}

// A listening unix socket in the abstract namespace (nothing on disk to clean up).
sockaddr_un localViewerAddress() {
  sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  std::string name = "spicebox-test-netproxy-" + std::to_string(::getpid());
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  return address;
}

base::Fd listenUnix(const sockaddr_un& address) {
  base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  REQUIRE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::listen(fd.get(), 4) == 0);
  return fd;
}

// The client's side: sends 'h', reads everything until the server closes the connection.
std::string talkAsClient(int fd) {
  timeval timeout = {static_cast<time_t>(sandbox::testing::CHILD_TIMEOUT_SECONDS), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  REQUIRE(::write(fd, "h", 1) == 1);
  return sandbox::testing::readAll(fd);
}

// Serves one client inside the sandbox the way netproxy/server.cpp does: a uv_poll on the
// inherited listening socket, accept4 with the peer's address, TCP_NODELAY on a TCP client, a
// uv_poll on the client, read(2) of 'h', the header and body in one
// sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT), then close. Returns 0 or a failure code 50..69.
int serveOneClient(int listenFd, ListenerKind kind) {
  struct Serving {
    int listenFd;
    ListenerKind kind;
    int client = -1;
    sa_family_t peerFamily = AF_UNSPEC;
    uv_poll_t clientPoll = {};
    bool clientPolled = false;
    int failure = 0;
  };
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0)
    return 50;
  Serving serving{listenFd, kind};
  uv_poll_t listening;
  if (uv_poll_init(&loop, &listening, listenFd) != 0)
    return 51;
  listening.data = &serving;
  int started = uv_poll_start(&listening, UV_READABLE, [](uv_poll_t* poll, int status, int) {
    auto* s = static_cast<Serving*>(poll->data);
    uv_poll_stop(poll);
    sockaddr_storage address = {};
    socklen_t length = sizeof address;
    s->client = status < 0 ? -1
                           : ::accept4(s->listenFd, reinterpret_cast<sockaddr*>(&address), &length,
                                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (s->client < 0) {
      s->failure = 53;
      return;
    }
    s->peerFamily = address.ss_family;
    if (s->kind == ListenerKind::Tcp) {
      const int one = 1;
      if (::setsockopt(s->client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        s->failure = 54;
        return;
      }
    }
    if (uv_poll_init(poll->loop, &s->clientPoll, s->client) != 0) {
      s->failure = 55;
      return;
    }
    s->clientPolled = true;
    s->clientPoll.data = s;
    uv_poll_start(&s->clientPoll, UV_READABLE, [](uv_poll_t* clientPoll, int status, int) {
      auto* s = static_cast<Serving*>(clientPoll->data);
      uv_poll_stop(clientPoll);
      char request[16];
      const ssize_t n = status < 0 ? -1 : ::read(s->client, request, sizeof request);
      if (n != 1 || request[0] != 'h') {
        s->failure = 56;
        return;
      }
      iovec reply[2] = {
          {const_cast<char*>(REPLY_HEADER), sizeof REPLY_HEADER - 1},
          {const_cast<char*>(REPLY_BODY), sizeof REPLY_BODY - 1},
      };
      msghdr message = {};
      message.msg_iov = reply;
      message.msg_iovlen = 2;
      const ssize_t sent = ::sendmsg(s->client, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent != static_cast<ssize_t>(sizeof REPLY_HEADER - 1 + sizeof REPLY_BODY - 1))
        s->failure = 57;
    });
  });
  if (started != 0)
    return 52;
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close(reinterpret_cast<uv_handle_t*>(&listening), nullptr);
  if (serving.clientPolled)
    uv_close(reinterpret_cast<uv_handle_t*>(&serving.clientPoll), nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (serving.client >= 0)
    ::close(serving.client);  // the client reads to the end
  if (serving.failure != 0)
    return serving.failure;
  const sa_family_t expected = kind == ListenerKind::Tcp ? AF_INET : AF_UNIX;
  if (serving.peerFamily != expected)
    return 58;
  return uv_loop_close(&loop) == 0 ? 0 : 59;
}

base::Fd makeSegment(const std::string& content) {
  base::Fd fd(::memfd_create("test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), SEGMENT_SIZE) == 0);
  REQUIRE(::pwrite(fd.get(), content.data(), content.size(), 0) ==
          static_cast<ssize_t>(content.size()));
  return fd;
}

}  // namespace

// --- Ways out: each is killed with SIGSYS. -----------------------------------------------------

TEST_CASE("netproxy: opening a file is killed") {
  SECTION("glibc open() (openat underneath on x86-64)") {
    requireKilled(attackNetproxy([] { ::open("/etc/passwd", O_RDONLY); }));
  }
  SECTION("openat") {
    requireKilled(attackNetproxy([] { ::syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY); }));
  }
  SECTION("openat for writing, with the flags libuv's refused open uses plus O_WRONLY") {
    requireKilled(attackNetproxy(
        [] { ::syscall(SYS_openat, AT_FDCWD, "/tmp/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600); }));
  }
}

TEST_CASE("netproxy: even a read-only open of /dev/null is killed") {
  // Once needed by libuv streams (uv__stream_init's EMFILE reserve) and refused with EACCES;
  // the server uses no libuv stream now, so no open is ever made.
  SECTION("/dev/null, O_RDONLY | O_CLOEXEC") {
    requireKilled(attackNetproxy([] { ::open("/dev/null", O_RDONLY | O_CLOEXEC); }));
  }
  SECTION("/, O_RDONLY | O_CLOEXEC") {
    requireKilled(attackNetproxy([] { ::open("/", O_RDONLY | O_CLOEXEC); }));
  }
}

TEST_CASE("netproxy: calls only libuv streams made are killed") {
  // writev, shutdown, getsockname, getpeername, fcntl(F_GETFL), getsockopt(SO_ERROR) served
  // uv_tcp / uv_pipe streams: the server uses none of them.
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  base::Fd ours(fds[0]);
  base::Fd peer(fds[1]);
  const int fd = ours.get();
  SECTION("writev") {
    requireKilled(attackNetproxy(
        [fd] {
          char byte = 'x';
          iovec iov = {&byte, 1};
          ::writev(fd, &iov, 1);
        },
        {fd}));
  }
  SECTION("shutdown") {
    requireKilled(attackNetproxy([fd] { ::shutdown(fd, SHUT_WR); }, {fd}));
  }
  SECTION("getsockname") {
    requireKilled(attackNetproxy(
        [fd] {
          sockaddr_storage address = {};
          socklen_t length = sizeof address;
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
        },
        {fd}));
  }
  SECTION("getpeername") {
    requireKilled(attackNetproxy(
        [fd] {
          sockaddr_storage address = {};
          socklen_t length = sizeof address;
          ::getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length);
        },
        {fd}));
  }
  // getsockopt is allowed for SO_PEERCRED only (a local viewer's uid decides the shared-memory
  // offer); any other option is still killed.
  SECTION("getsockopt SO_ERROR") {
    requireKilled(attackNetproxy(
        [fd] {
          int error = 0;
          socklen_t length = sizeof error;
          ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        },
        {fd}));
  }
  SECTION("fcntl F_GETFL") {
    requireKilled(attackNetproxy([fd] { ::fcntl(fd, F_GETFL); }, {fd}));
  }
}

TEST_CASE("netproxy: executing a program is killed") {
  requireKilled(attackNetproxy([] {
    const char* argv[] = {"/bin/true", nullptr};
    const char* envp[] = {nullptr};
    ::syscall(SYS_execve, "/bin/true", argv, envp);
  }));
}

TEST_CASE("netproxy: making a socket or reaching out is killed") {
  base::Fd unbound(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(unbound);
  const int fd = unbound.get();
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(9);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  SECTION("socket") {
    requireKilled(attackNetproxy([] { ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); }));
  }
  SECTION("connect on an inherited socket") {
    requireKilled(attackNetproxy(
        [fd, address] { ::syscall(SYS_connect, fd, &address, sizeof address); }, {fd}));
  }
  SECTION("bind on an inherited socket") {
    requireKilled(
        attackNetproxy([fd, address] { ::syscall(SYS_bind, fd, &address, sizeof address); }, {fd}));
  }
  SECTION("listen on an inherited socket") {
    requireKilled(attackNetproxy([fd] { ::syscall(SYS_listen, fd, 4); }, {fd}));
  }
  SECTION("setsockopt other than TCP_NODELAY") {
    requireKilled(attackNetproxy(
        [fd] {
          const char device[] = "lo";
          ::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, device, sizeof device);
        },
        {fd}));
  }
}

// --- The netproxy's work still runs. ----------------------------------------------------------

TEST_CASE("netproxy: strict mode reaches the full level on this host") {
  ChildOutcome outcome = runInChild([] {
    base::initLogging("netproxy", 2, "warn");
    sandbox::Report report = sandbox::enter(sandboxProfile({}), sandbox::Mode::Strict);
    CHILD_CHECK(report.level == sandbox::Level::Full, 1);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("netproxy: a remote viewer is accepted on the inherited TCP socket and served") {
  uint16_t port = 0;
  base::Fd listening = listenTcp(port);
  std::string received;
  ChildOutcome outcome = runInChild(
      [fd = listening.get()] {
        enterNetproxySandbox({fd});
        return serveOneClient(fd, ListenerKind::Tcp);
      },
      [&](pid_t) {
        base::Fd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in address = {};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) ==
                0);
        received = talkAsClient(client.get());
      });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  CHECK(received == std::string(REPLY_HEADER) + REPLY_BODY);
}

TEST_CASE("netproxy: a local viewer is accepted on the inherited unix socket and served") {
  const sockaddr_un address = localViewerAddress();
  base::Fd listening = listenUnix(address);
  std::string received;
  ChildOutcome outcome = runInChild(
      [fd = listening.get()] {
        enterNetproxySandbox({fd});
        return serveOneClient(fd, ListenerKind::Unix);
      },
      [&](pid_t) {
        base::Fd viewer(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(::connect(viewer.get(), reinterpret_cast<const sockaddr*>(&address),
                          sizeof address) == 0);
        received = talkAsClient(viewer.get());
      });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  CHECK(received == std::string(REPLY_HEADER) + REPLY_BODY);
}

TEST_CASE("netproxy: a display segment passed read-only is mapped read-only, never writable") {
  base::Fd segment = makeSegment("the picture");
  // The broker's way to hand out a read-only descriptor (DESIGN.md, invariant 5).
  base::Fd readOnly(
      ::open(("/proc/self/fd/" + std::to_string(segment.get())).c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(readOnly);
  ChildOutcome outcome = runInChild([fd = readOnly.get()] {
    enterNetproxySandbox({fd});
    void* mapped = ::mmap(nullptr, SEGMENT_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    CHILD_CHECK(mapped != MAP_FAILED, 1);
    CHILD_CHECK(std::memcmp(mapped, "the picture", 11) == 0, 2);
    // The kernel, not the filter, refuses a writable shared mapping of a read-only descriptor.
    void* writable = ::mmap(nullptr, SEGMENT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHILD_CHECK(writable == MAP_FAILED && errno == EACCES, 3);
    CHILD_CHECK(::munmap(mapped, SEGMENT_SIZE) == 0, 4);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("netproxy: a segment's seals can be read, not changed") {
  base::Fd segment = makeSegment("the picture");
  REQUIRE(::fcntl(segment.get(), F_ADD_SEALS, F_SEAL_SHRINK) == 0);
  ChildOutcome outcome = runInChild([fd = segment.get()] {
    enterNetproxySandbox({fd});
    CHILD_CHECK(::fcntl(fd, F_GET_SEALS) == F_SEAL_SHRINK, 1);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  SECTION("adding a seal (F_ADD_SEALS) is killed") {
    requireKilled(attackNetproxy([fd = segment.get()] { ::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE); },
                                 {segment.get()}));
  }
  SECTION("changing a descriptor's flags (F_SETFL) is killed") {
    requireKilled(attackNetproxy([fd = segment.get()] { ::fcntl(fd, F_SETFL, O_NONBLOCK); },
                                 {segment.get()}));
  }
}

TEST_CASE("netproxy: a libuv loop with a timer and a poll on the broker socket runs") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
  base::Fd parentEnd(fds[0]);
  base::Fd childEnd(fds[1]);
  ChildOutcome outcome = runInChild(
      [fd = childEnd.get()] {
        enterNetproxySandbox({fd});
        return sandbox::testing::exerciseEventLoop(fd);
      },
      [&](pid_t) {
        childEnd.reset();
        CHECK(sandbox::testing::pingEventLoop(parentEnd.get()));
      });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("netproxy: the heap grows, large blocks are reallocated, memory is given back") {
  ChildOutcome outcome = runInChild([] {
    enterNetproxySandbox({});
    return sandbox::testing::exerciseMemory();
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("netproxy: logging through the descriptor the broker passed works") {
  auto run = sandbox::testing::runLoggingChild("netproxy", sandboxProfile,
                                               [] { spdlog::info("client {} connected", 1); });
  INFO(run.outcome.describe());
  INFO(run.log);
  REQUIRE(run.outcome.exitedWith(0));
  CHECK(run.log.find("netproxy[") != std::string::npos);
  CHECK(run.log.find("sandbox level full") != std::string::npos);
  CHECK(run.log.find("client 1 connected") != std::string::npos);
}

TEST_CASE("netproxy: the SPICE server serves spicy-screenshot from inside the sandbox") {
  // The real client against netproxy/server.cpp in a sandboxed child: link stage with a
  // password (RSA-OAEP decryption, OpenSSL's generator), the segment mapped read-only, the
  // picture encoded (AutoLz) and sent. The child ends when the client's session does.
  uint16_t port = 0;
  base::Fd listening = listenTcp(port);
  constexpr uint32_t WIDTH = 96, HEIGHT = 64;
  base::Fd segment(::memfd_create("netproxy-test-picture", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(segment);
  std::vector<uint32_t> picture(WIDTH * HEIGHT);
  for (uint32_t i = 0; i < picture.size(); ++i)
    picture[i] = (i % WIDTH) * 2 << 16 | (i / WIDTH) * 3 << 8 | ((i % 7) ? 0x40 : 0xff);
  const size_t bytes = picture.size() * 4;
  REQUIRE(::write(segment.get(), picture.data(), bytes) == static_cast<ssize_t>(bytes));
  // Sealed as the broker seals its segments: setDisplay reads the seals (F_GET_SEALS) inside.
  REQUIRE(::fcntl(segment.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
  base::Fd readOnly(
      ::open(("/proc/self/fd/" + std::to_string(segment.get())).c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(readOnly);
  char dir[] = "/tmp/spicebox-netproxy-test-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string out = std::string(dir) + "/shot.ppm";
  int clientStatus = -1;

  ChildOutcome outcome = runInChild(
      [listen = listening.get(), seg = readOnly.get()] {
        Server::prepare();
        enterNetproxySandbox({listen, seg});
        uv_loop_t loop;
        CHILD_CHECK(uv_loop_init(&loop) == 0, 1);
        bool served = false;
        Server::Events events;
        events.onClients = [&](const ClientCounts& counts) {
          if (counts.sessions > 0)
            served = true;
          else if (served && counts.connections == 0)
            uv_stop(&loop);
        };
        {
          Server server(&loop, events);
          Settings settings;
          settings.password = "inside";
          std::vector<Listener> listeners;
          listeners.push_back({base::Fd(listen), ListenerKind::Tcp, "tcp"});
          CHILD_CHECK(!server.configure(settings, std::move(listeners)), 2);
          DisplayLayout layout;
          layout.generation = 1;
          layout.size = WIDTH * HEIGHT * 4;
          layout.stride = WIDTH * 4;
          layout.width = WIDTH;
          layout.height = HEIGHT;
          CHILD_CHECK(!server.setDisplay(base::Fd(seg), layout), 3);
          uv_run(&loop, UV_RUN_DEFAULT);
          CHILD_CHECK(served, 4);
        }
        uv_run(&loop, UV_RUN_NOWAIT);  // close callbacks
        return 0;
      },
      [&](pid_t) {
        std::string portText = std::to_string(port);
        std::vector<std::string> args = {
            "spicy-screenshot", "-h", "127.0.0.1", "-p", portText, "-w", "inside", "-o", out};
        std::vector<char*> argv;
        for (auto& a : args)
          argv.push_back(a.data());
        argv.push_back(nullptr);
        pid_t pid = 0;
        REQUIRE(posix_spawnp(&pid, "spicy-screenshot", nullptr, nullptr, argv.data(), environ) ==
                0);
        // The child serves the client; its exit is what this waits for (no timeout needed
        // beyond the test's: a hung server is a failure either way).
        REQUIRE(::waitpid(pid, &clientStatus, 0) == pid);
      });
  INFO(outcome.describe());
  CHECK(outcome.exitedWith(0));
  REQUIRE(WIFEXITED(clientStatus));
  CHECK(WEXITSTATUS(clientStatus) == 0);
  std::ifstream in(out, std::ios::binary);
  std::string magic;
  unsigned w = 0, h = 0, maxval = 0;
  in >> magic >> w >> h >> maxval;
  in.get();
  REQUIRE(magic == "P6");
  REQUIRE(w == WIDTH);
  REQUIRE(h == HEIGHT);
  size_t differences = 0;
  for (uint32_t p : picture) {
    uint8_t rgb[3];
    in.read(reinterpret_cast<char*>(rgb), 3);
    if ((uint32_t{rgb[0]} << 16 | uint32_t{rgb[1]} << 8 | rgb[2]) != (p & 0xffffff))
      ++differences;
  }
  CHECK(in.good());
  CHECK(differences == 0);
  ::unlink(out.c_str());
  ::rmdir(dir);
}

TEST_CASE("netproxy: the seccomp filter matches the reviewed allowlist") {
  const std::string difference =
      sandbox::testing::allowlistMismatch(sandboxProfile({}), SPICEBOX_NETPROXY_ALLOWLIST);
  INFO("reviewed list: " SPICEBOX_NETPROXY_ALLOWLIST);
  INFO(difference);
  CHECK(difference.empty());
}

}  // namespace spicebox::netproxy
