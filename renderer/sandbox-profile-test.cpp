// The renderer's sandbox: each way out is killed with SIGSYS, and the work the renderer exists
// for (mapping segments, drawing with pixman, its libuv loop, Cap'n Proto messages with
// descriptors, logging) still works inside it. Every test runs in a forked child.
#include "renderer/sandbox-profile.h"

#include <capnp/message.h>
#include <capnp/schema.capnp.h>
#include <capnp/serialize.h>
#include <fcntl.h>
#include <pixman.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "base/fd.h"
#include "base/log.h"
#include "sandbox/testing.h"

namespace spicebox::renderer {
namespace {

using sandbox::testing::AttackOutcome;
using sandbox::testing::ChildOutcome;
using sandbox::testing::runInChild;

constexpr size_t SEGMENT_SIZE = 64 * 64 * 4;  // one 64x64 32 bpp surface
constexpr int SURFACE_SIDE = 64;
constexpr int SURFACE_STRIDE = SURFACE_SIDE * 4;

AttackOutcome attackRenderer(const std::function<void()>& attack, std::vector<int> keepFds = {}) {
  return sandbox::testing::runAttack(sandboxProfile, std::move(keepFds), attack);
}

void requireKilled(const AttackOutcome& outcome) {
  INFO(outcome.child.describe());
  REQUIRE(outcome.reachedAttack);
  REQUIRE(outcome.child.killedBy(SIGSYS));
}

// Enters the renderer sandbox (best effort; strict has its own test), logging warnings only.
void enterRendererSandbox(std::vector<int> keepFds) {
  base::initLogging("renderer", 2, "warn");
  sandbox::enter(sandboxProfile(std::move(keepFds)), sandbox::Mode::BestEffort);
}

// A display segment as the broker makes one: a memfd of SEGMENT_SIZE holding `content`.
base::Fd makeSegment(const std::string& content) {
  base::Fd fd(::memfd_create("test-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), SEGMENT_SIZE) == 0);
  REQUIRE(::pwrite(fd.get(), content.data(), content.size(), 0) ==
          static_cast<ssize_t>(content.size()));
  return fd;
}

// The broker's IPC socket pair (SOCK_SEQPACKET, as ipc::socketPair makes it).
struct SocketPair {
  base::Fd parentEnd;
  base::Fd childEnd;  // the parent closes its copy once the child runs, so it sees hang-ups
};

SocketPair seqpacketPair() {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0);
  return {base::Fd(fds[0]), base::Fd(fds[1])};
}

}  // namespace

// --- Ways out: each is killed with SIGSYS. -----------------------------------------------------

TEST_CASE("renderer: opening a file is killed") {
  SECTION("glibc open() (openat underneath on x86-64)") {
    requireKilled(attackRenderer([] { ::open("/etc/passwd", O_RDONLY); }));
  }
  SECTION("the open syscall") {
    requireKilled(attackRenderer([] { ::syscall(SYS_open, "/etc/passwd", O_RDONLY); }));
  }
}

TEST_CASE("renderer: openat is killed") {
  SECTION("openat") {
    requireKilled(attackRenderer([] { ::syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY); }));
  }
  SECTION("openat2") {
    requireKilled(attackRenderer([] {
      std::uint64_t how[3] = {O_RDONLY, 0, 0};  // struct open_how
      ::syscall(SYS_openat2, AT_FDCWD, "/etc/passwd", how, sizeof how);
    }));
  }
}

TEST_CASE("renderer: creating a socket is killed") {
  SECTION("inet") {
    requireKilled(attackRenderer([] { ::syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); }));
  }
  SECTION("unix") {
    requireKilled(attackRenderer([] { ::syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0); }));
  }
}

TEST_CASE("renderer: connecting an inherited socket is killed") {
  base::Fd unconnected(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(unconnected);
  requireKilled(attackRenderer(
      [fd = unconnected.get()] {
        sockaddr_un address = {};
        address.sun_family = AF_UNIX;
        std::strcpy(address.sun_path + 1, "spicebox-test-no-such-listener");  // abstract
        ::syscall(SYS_connect, fd, &address, sizeof address);
      },
      {unconnected.get()}));
}

TEST_CASE("renderer: executing a program is killed") {
  SECTION("execve") {
    requireKilled(attackRenderer([] {
      const char* argv[] = {"/bin/true", nullptr};
      const char* envp[] = {nullptr};
      ::syscall(SYS_execve, "/bin/true", argv, envp);
    }));
  }
  SECTION("execveat") {
    requireKilled(attackRenderer([] {
      const char* argv[] = {"/bin/true", nullptr};
      const char* envp[] = {nullptr};
      ::syscall(SYS_execveat, AT_FDCWD, "/bin/true", argv, envp, 0);
    }));
  }
}

TEST_CASE("renderer: ptrace is killed") {
  requireKilled(attackRenderer([] { ::syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0); }));
}

TEST_CASE("renderer: making a process or thread is killed") {
  // glibc 2.36's fork() is the clone syscall with SIGCHLD (strace shows clone(...,
  // flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD)); each way in is tried on its own.
  SECTION("glibc fork() (clone underneath)") {
    requireKilled(attackRenderer([] { ::fork(); }));
  }
  SECTION("fork syscall") {
    requireKilled(attackRenderer([] { ::syscall(SYS_fork); }));
  }
  SECTION("vfork syscall") {
    requireKilled(attackRenderer([] {
      if (::syscall(SYS_vfork) == 0)
        ::_exit(0);  // only reached if the filter failed
    }));
  }
  SECTION("clone syscall") {
    requireKilled(attackRenderer([] { ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0); }));
  }
  SECTION("clone3 syscall") {
    requireKilled(attackRenderer([] {
      std::uint64_t args[8] = {};  // struct clone_args, version 0
      args[4] = SIGCHLD;           // exit_signal
      ::syscall(SYS_clone3, args, sizeof args);
    }));
  }
}

TEST_CASE("renderer: making memory executable is killed") {
  SECTION("mmap with PROT_EXEC") {
    requireKilled(attackRenderer(
        [] { ::mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); }));
  }
  SECTION("mprotect to PROT_EXEC") {
    requireKilled(attackRenderer([] {
      void* page =
          ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (page == MAP_FAILED)
        ::_exit(1);
      ::mprotect(page, 4096, PROT_READ | PROT_EXEC);
    }));
  }
}

// --- The renderer's work still runs. ----------------------------------------------------------

TEST_CASE("renderer: strict mode reaches the full level on this host") {
  ChildOutcome outcome = runInChild([] {
    base::initLogging("renderer", 2, "warn");
    sandbox::Report report = sandbox::enter(sandboxProfile({}), sandbox::Mode::Strict);
    CHILD_CHECK(report.level == sandbox::Level::Full, 1);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("renderer: a display segment passed in is mapped read/write and shared") {
  base::Fd segment = makeSegment("from broker");
  ChildOutcome outcome = runInChild([fd = segment.get()] {
    enterRendererSandbox({fd});
    void* mapped = ::mmap(nullptr, SEGMENT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHILD_CHECK(mapped != MAP_FAILED, 1);
    auto* bytes = static_cast<char*>(mapped);
    CHILD_CHECK(std::memcmp(bytes, "from broker", 11) == 0, 2);
    std::memcpy(bytes + 100, "from renderer", 13);
    CHILD_CHECK(::munmap(mapped, SEGMENT_SIZE) == 0, 3);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  char written[13] = {};
  REQUIRE(::pread(segment.get(), written, sizeof written, 100) == sizeof written);
  CHECK(std::string(written, sizeof written) == "from renderer");
}

TEST_CASE("renderer: the heap grows, large blocks are reallocated, memory is given back") {
  ChildOutcome outcome = runInChild([] {
    enterRendererSandbox({});
    return sandbox::testing::exerciseMemory();
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("renderer: pixman draws into a mapped segment") {
  base::Fd segment = makeSegment("");
  ChildOutcome outcome = runInChild([fd = segment.get()] {
    enterRendererSandbox({fd});
    void* mapped = ::mmap(nullptr, SEGMENT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHILD_CHECK(mapped != MAP_FAILED, 1);
    pixman_image_t* surface =
        pixman_image_create_bits(PIXMAN_x8r8g8b8, SURFACE_SIDE, SURFACE_SIDE,
                                 static_cast<uint32_t*>(mapped), SURFACE_STRIDE);
    CHILD_CHECK(surface != nullptr, 2);
    // A scratch image pixman allocates itself (malloc inside the sandbox).
    pixman_image_t* scratch =
        pixman_image_create_bits(PIXMAN_a8r8g8b8, SURFACE_SIDE, SURFACE_SIDE, nullptr, 0);
    CHILD_CHECK(scratch != nullptr, 3);
    const pixman_color_t red = {0xffff, 0, 0, 0xffff};
    const pixman_rectangle16_t square = {8, 8, 16, 16};
    CHILD_CHECK(pixman_image_fill_rectangles(PIXMAN_OP_SRC, scratch, &red, 1, &square), 4);
    pixman_image_composite32(PIXMAN_OP_OVER, scratch, nullptr, surface, 0, 0, 0, 0, 0, 0,
                             SURFACE_SIDE, SURFACE_SIDE);
    const auto* pixels = static_cast<const uint32_t*>(mapped);
    CHILD_CHECK((pixels[10 * SURFACE_SIDE + 10] & 0xffffff) == 0xff0000, 5);
    CHILD_CHECK((pixels[30 * SURFACE_SIDE + 30] & 0xffffff) == 0, 6);
    pixman_image_unref(scratch);
    pixman_image_unref(surface);
    ::munmap(mapped, SEGMENT_SIZE);
    return 0;
  });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
  uint32_t pixel = 0;
  REQUIRE(::pread(segment.get(), &pixel, sizeof pixel, (12 * SURFACE_SIDE + 12) * 4) == 4);
  CHECK((pixel & 0xffffff) == 0xff0000);  // drawn where the broker (and clients) see it
}

TEST_CASE("renderer: a libuv loop with a timer and a poll on the broker socket runs") {
  SocketPair sockets = seqpacketPair();
  ChildOutcome outcome = runInChild(
      [fd = sockets.childEnd.get()] {
        enterRendererSandbox({fd});
        return sandbox::testing::exerciseEventLoop(fd);
      },
      [&sockets](pid_t) {
        sockets.childEnd.reset();
        CHECK(sandbox::testing::pingEventLoop(sockets.parentEnd.get()));
      });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("renderer: Cap'n Proto messages with descriptors go both ways") {
  SocketPair sockets = seqpacketPair();
  base::Fd segment = makeSegment("segment");

  // The broker's message: a small struct, received with a segment descriptor attached.
  capnp::MallocMessageBuilder request;
  request.initRoot<capnp::schema::Node>().setDisplayName("draw please");
  kj::Array<capnp::word> requestWords = capnp::messageToFlatArray(request);

  ChildOutcome outcome = runInChild(
      [fd = sockets.childEnd.get()] {
        enterRendererSandbox({fd});
        alignas(8) capnp::word buffer[256];
        char control[CMSG_SPACE(sizeof(int))] = {};
        iovec iov = {buffer, sizeof buffer};
        msghdr message = {};
        message.msg_iov = &iov;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        ssize_t n = ::recvmsg(fd, &message, MSG_CMSG_CLOEXEC);
        CHILD_CHECK(n > 0 && n % sizeof(capnp::word) == 0, 1);
        cmsghdr* header = CMSG_FIRSTHDR(&message);
        CHILD_CHECK(header != nullptr && header->cmsg_type == SCM_RIGHTS, 2);
        int received = -1;
        std::memcpy(&received, CMSG_DATA(header), sizeof received);
        // The descriptor is usable: map it and read what the broker wrote.
        void* mapped = ::mmap(nullptr, SEGMENT_SIZE, PROT_READ, MAP_SHARED, received, 0);
        CHILD_CHECK(mapped != MAP_FAILED, 3);
        CHILD_CHECK(std::memcmp(mapped, "segment", 7) == 0, 4);
        ::munmap(mapped, SEGMENT_SIZE);
        ::close(received);

        kj::ArrayPtr<const capnp::word> words(buffer, static_cast<size_t>(n) / sizeof(capnp::word));
        {
          capnp::FlatArrayMessageReader reader(words);
          CHILD_CHECK(reader.getRoot<capnp::schema::Node>().getDisplayName() == "draw please", 5);
        }
        // A limit violation throws kj::Exception (capturing a stack trace): that path must not
        // need anything the sandbox forbids either.
        bool limitHit = false;
        try {
          capnp::ReaderOptions tight;
          tight.traversalLimitInWords = 1;
          capnp::FlatArrayMessageReader reader(words, tight);
          (void)reader.getRoot<capnp::schema::Node>().getDisplayName();
        } catch (const kj::Exception&) {
          limitHit = true;
        }
        CHILD_CHECK(limitHit, 6);

        capnp::MallocMessageBuilder reply;
        reply.initRoot<capnp::schema::Node>().setDisplayName("damage");
        kj::Array<capnp::word> replyWords = capnp::messageToFlatArray(reply);
        auto replyBytes = replyWords.asBytes();
        iovec replyIov = {const_cast<kj::byte*>(replyBytes.begin()), replyBytes.size()};
        msghdr replyMessage = {};
        replyMessage.msg_iov = &replyIov;
        replyMessage.msg_iovlen = 1;
        CHILD_CHECK(
            ::sendmsg(fd, &replyMessage, MSG_NOSIGNAL) == static_cast<ssize_t>(replyBytes.size()),
            7);
        return 0;
      },
      [&](pid_t) {
        sockets.childEnd.reset();
        auto bytes = requestWords.asBytes();
        char control[CMSG_SPACE(sizeof(int))] = {};
        iovec iov = {const_cast<kj::byte*>(bytes.begin()), bytes.size()};
        msghdr message = {};
        message.msg_iov = &iov;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        cmsghdr* header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        int fd = segment.get();
        std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
        REQUIRE(::sendmsg(sockets.parentEnd.get(), &message, 0) ==
                static_cast<ssize_t>(bytes.size()));

        alignas(8) capnp::word buffer[256];
        ssize_t n = ::recv(sockets.parentEnd.get(), buffer, sizeof buffer, 0);
        REQUIRE(n > 0);
        capnp::FlatArrayMessageReader reader(
            kj::ArrayPtr<const capnp::word>(buffer, static_cast<size_t>(n) / sizeof(capnp::word)));
        CHECK(reader.getRoot<capnp::schema::Node>().getDisplayName() == "damage");
      });
  INFO(outcome.describe());
  REQUIRE(outcome.exitedWith(0));
}

TEST_CASE("renderer: logging through the descriptor the broker passed works") {
  auto run = sandbox::testing::runLoggingChild("renderer", sandboxProfile, [] {
    spdlog::info("drew {} rectangles", 3);
    spdlog::warn("quarantined command {}", 7);
  });
  INFO(run.outcome.describe());
  INFO(run.log);
  REQUIRE(run.outcome.exitedWith(0));
  CHECK(run.log.find("renderer[") != std::string::npos);
  CHECK(run.log.find("sandbox level full") != std::string::npos);
  CHECK(run.log.find("drew 3 rectangles") != std::string::npos);
  CHECK(run.log.find("quarantined command 7") != std::string::npos);
}

TEST_CASE("renderer: the seccomp filter matches the reviewed allowlist") {
  const std::string difference =
      sandbox::testing::allowlistMismatch(sandboxProfile({}), SPICEBOX_RENDERER_ALLOWLIST);
  INFO("reviewed list: " SPICEBOX_RENDERER_ALLOWLIST);
  INFO(difference);
  CHECK(difference.empty());
}

}  // namespace spicebox::renderer
