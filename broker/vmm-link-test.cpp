// Tests for broker/vmm-link.h. A real VmmLink listens on a real unix socket; the fake VMM on the
// other end is an ipc::Channel on the same libuv loop, sending hand-built qxl-link messages and
// descriptors. Every test runs the loop until the awaited event (no sleeps) and checks that the
// process holds exactly the descriptors it held before. Hostile cases are named after the attack.
#include "broker/vmm-link.h"
#include "tests/support/test-loop.h"

#include <capnp/serialize.h>

#include <capnp/message.h>
#include <dirent.h>
#include <fcntl.h>
#include <spice/qxl_dev.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "broker/broker.h"
#include "broker/peer-renderer.h"
#include "ipc/channel.h"
#include "ipc/render.capnp.h"
#include "ipc/vmm.capnp.h"

namespace {

using namespace spicebox;
using broker::VmmLink;
using ipc::vmm::BrokerToVmm;
using ipc::vmm::VmmToBroker;
using test::countOpenFds;
using test::initLibuvGlobals;
using test::TestLoop;

constexpr uint64_t ROM_SIZE = 8192;
constexpr uint64_t RAM_SIZE = 1024 * 1024;
constexpr uint64_t VRAM_SIZE = 256 * 1024;
// Where the fake guest's PCI configuration put the BARs.
constexpr uint64_t RAM_PHYS = 0xc0000000;
constexpr uint64_t VRAM_PHYS = 0xc8000000;

// A temporary directory holding the socket path, removed afterwards.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/spicebox-vmm-link-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    ::unlink((path_ + "/vmm.sock").c_str());
    ::rmdir(path_.c_str());
  }
  std::string socketPath() const { return path_ + "/vmm.sock"; }

 private:
  std::string path_;
};

// The link under test and what it reported. It plays the renderer too: batches are recorded and
// answered by answerBatches() (called between loop iterations, as the broker answers from the
// renderer's channel).
struct LinkUnderTest {
  LinkUnderTest(uv_loop_t* loop, const std::string& path)
      : link(loop, path,
             VmmLink::Events{
                 .onLinked = [this] { ++linkedEvents; },
                 .onUnlinked =
                     [this](const std::string& why) {
                       ++unlinkedEvents;
                       lastReason = why;
                     },
                 .sendBatch =
                     [this](uint64_t seq, std::span<const spicebox::qxl::WorkItem> items) {
                       if (!rendererPresent)
                         return false;
                       batches.push_back(seq);
                       items_ += items.size();
                       return true;
                     },
             }) {}
  // Answers every batch received so far, oldest first.
  void answerBatches() {
    while (!batches.empty()) {
      uint64_t seq = batches.front();
      batches.erase(batches.begin());
      link.batchDone(seq);
    }
  }
  int linkedEvents = 0;
  int unlinkedEvents = 0;
  std::string lastReason;
  bool rendererPresent = true;
  std::vector<uint64_t> batches;
  size_t items_ = 0;
  VmmLink link;
};

// The fake VMM: a client socket with a Channel on the test loop.
struct FakeVmm {
  FakeVmm(uv_loop_t* loop, const std::string& path) {
    base::Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(fd);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    channel = std::make_unique<ipc::Channel>(
        loop, std::move(fd), "fake-vmm",
        [this](capnp::MessageReader& message, ipc::ReceivedFds&) -> ipc::Channel::Verdict {
          auto root = message.getRoot<BrokerToVmm>();
          switch (root.which()) {
            case BrokerToVmm::HELLO:
              helloVersion = root.getHello().getProtocolVersion();
              break;
            case BrokerToVmm::IO_COMPLETE:
              completions.push_back(root.getIoComplete().getPort());
              break;
            default:
              break;
          }
          return std::nullopt;
        },
        [this](const std::string& why) { closeReason = why; });
  }

  void sendHello(uint32_t version = ipc::vmm::PROTOCOL_VERSION) {
    capnp::MallocMessageBuilder message;
    message.initRoot<VmmToBroker>().initHello().setProtocolVersion(version);
    REQUIRE(channel->send(message));
  }
  void sendLink(uint64_t rom, uint64_t ram, uint64_t vram, const std::vector<int>& fds,
                uint64_t ramPhys = RAM_PHYS, uint64_t vramPhys = VRAM_PHYS) {
    capnp::MallocMessageBuilder message;
    auto link = message.initRoot<VmmToBroker>().initLink();
    link.setRomSize(rom);
    link.setRamSize(ram);
    link.setVramSize(vram);
    link.setRamPhysStart(ramPhys);
    link.setVramPhysStart(vramPhys);
    REQUIRE(channel->send(message, fds));
  }
  void sendIoWrite(uint8_t port, uint8_t value, bool async) {
    capnp::MallocMessageBuilder message;
    auto io = message.initRoot<VmmToBroker>().initIoWrite();
    io.setPort(port);
    io.setValue(value);
    io.setAsync(async);
    REQUIRE(channel->send(message));
  }
  bool closed() const { return closeReason.has_value(); }

  std::optional<uint32_t> helloVersion;
  std::vector<unsigned> completions;
  std::optional<std::string> closeReason;
  std::unique_ptr<ipc::Channel> channel;
};

base::Fd makeBarMemfd(uint64_t size, unsigned seals = F_SEAL_SHRINK) {
  base::Fd fd(::memfd_create("test-bar", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
  if (seals)
    REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
  return fd;
}

base::Fd makeEventFd() {
  base::Fd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  REQUIRE(fd);
  return fd;
}

// The six descriptors of a correct link; tests replace one to make it wrong.
struct LinkFds {
  std::vector<base::Fd> fds;
  LinkFds() {
    fds.push_back(makeBarMemfd(ROM_SIZE));
    fds.push_back(makeBarMemfd(RAM_SIZE));
    fds.push_back(makeBarMemfd(VRAM_SIZE));
    for (int i = 0; i < 3; ++i)
      fds.push_back(makeEventFd());
  }
  std::vector<int> raw() const {
    std::vector<int> out;
    for (const auto& fd : fds)
      out.push_back(fd.get());
    return out;
  }
};

// Runs `body` with a fresh loop, a link listening in a fresh directory, then checks no
// descriptor was leaked.
template <typename Body>
void withLink(Body body) {
  initLibuvGlobals();
  const size_t before = countOpenFds();
  {
    TempDir dir;
    TestLoop loop;
    {
      LinkUnderTest link(loop.get(), dir.socketPath());
      body(loop, link, dir.socketPath());
    }
  }
  CHECK(countOpenFds() == before);
}

// Connects, says hello, sends the link, and waits until the broker accepted or refused it.
void linkAndWait(TestLoop& loop, LinkUnderTest& t, FakeVmm& vmm, const std::vector<int>& fds,
                 uint64_t rom = ROM_SIZE, uint64_t ram = RAM_SIZE, uint64_t vram = VRAM_SIZE,
                 uint64_t ramPhys = RAM_PHYS, uint64_t vramPhys = VRAM_PHYS) {
  const int linked = t.linkedEvents, unlinked = t.unlinkedEvents;
  vmm.sendHello();
  vmm.sendLink(rom, ram, vram, fds, ramPhys, vramPhys);
  loop.runUntil([&] { return t.linkedEvents > linked || t.unlinkedEvents > unlinked; });
}

// Expects the link to be refused with `fragment` in the reason, and the VMM's connection closed.
void expectRefused(TestLoop& loop, LinkUnderTest& t, FakeVmm& vmm, const std::string& fragment) {
  loop.runUntil([&] { return t.unlinkedEvents == 1 && vmm.closed(); });
  CHECK(t.linkedEvents == 0);
  CHECK_FALSE(t.link.linked());
  CHECK(t.link.bars() == nullptr);
  INFO("reason: " << t.lastReason);
  CHECK(t.lastReason.find(fragment) != std::string::npos);
}

TEST_CASE("good-link: BARs mapped shared, hello answered", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    REQUIRE(t.link.linked());
    loop.runUntil([&] { return vmm.helloVersion.has_value(); });
    CHECK(*vmm.helloVersion == ipc::vmm::PROTOCOL_VERSION);
    CHECK(t.link.stats().links == 1);
    CHECK(t.link.describe() == "vmm linked (ram 1 MiB, vram 256 KiB, 0 commands, 0 released)");

    const broker::QxlBars* bars = t.link.bars();
    REQUIRE(bars != nullptr);
    REQUIRE(bars->rom.size() == ROM_SIZE);
    REQUIRE(bars->ram.size() == RAM_SIZE);
    REQUIRE(bars->vram.size() == VRAM_SIZE);
    // The VMM writes through its own mapping; the broker reads it through the link's, and back.
    auto* ram = static_cast<uint8_t*>(
        ::mmap(nullptr, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds.fds[1].get(), 0));
    REQUIRE(ram != MAP_FAILED);
    std::memcpy(ram + RAM_SIZE - 4, "QXRA", 4);
    CHECK(std::memcmp(bars->ram.bytes().data() + RAM_SIZE - 4, "QXRA", 4) == 0);
    bars->ram.bytes()[0] = 0x5a;
    CHECK(ram[0] == 0x5a);
    ::munmap(ram, RAM_SIZE);
  });
}

TEST_CASE("unsealed-ram-memfd: refused, VMM told to seal", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    fds.fds[1] = makeBarMemfd(RAM_SIZE, 0);
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    expectRefused(loop, t, vmm,
                  "RAM BAR memfd is not sealed against shrinking (F_SEAL_SHRINK); the VMM must "
                  "seal BAR memfds before handing them over");
  });
}

TEST_CASE("memfd-without-sealing: MFD_ALLOW_SEALING missing, refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    base::Fd plain(::memfd_create("no-sealing", MFD_CLOEXEC));
    REQUIRE(::ftruncate(plain.get(), VRAM_SIZE) == 0);
    fds.fds[2] = std::move(plain);
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    expectRefused(loop, t, vmm,
                  "VRAM BAR memfd is not sealed against shrinking (F_SEAL_SHRINK) and can no "
                  "longer be");
  });
}

TEST_CASE("bar-shorter-than-announced: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    fds.fds[1] = makeBarMemfd(RAM_SIZE / 2);
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    expectRefused(loop, t, vmm,
                  "RAM BAR memfd holds 524288 bytes, less than the 1048576 announced");
  });
}

TEST_CASE("announced-size-over-cap: refused before any descriptor is used", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw(), ROM_SIZE, RAM_SIZE, broker::MAX_VRAM_BYTES + 4096);
    expectRefused(loop, t, vmm, "VRAM BAR announced size 1073745920 bytes is outside");
  });
}

TEST_CASE("announced-size-zero-or-unaligned: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    SECTION("zero") {
      FakeVmm vmm(loop.get(), path);
      linkAndWait(loop, t, vmm, fds.raw(), 0, RAM_SIZE, VRAM_SIZE);
      expectRefused(loop, t, vmm, "ROM BAR announced size is 0");
    }
    SECTION("unaligned") {
      FakeVmm vmm(loop.get(), path);
      linkAndWait(loop, t, vmm, fds.raw(), ROM_SIZE, RAM_SIZE - 1, VRAM_SIZE);
      expectRefused(loop, t, vmm, "not a multiple of the page size");
    }
  });
}

TEST_CASE("pipe-in-bar-slot: refused as not a memfd", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    fds.fds[0] = base::Fd(p[0]);
    base::Fd writeEnd(p[1]);
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    expectRefused(loop, t, vmm, "ROM BAR (descriptor 0) is a pipe, not a memfd");
  });
}

TEST_CASE("memfd-in-eventfd-slot: refused as not an eventfd", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    fds.fds[5] = makeBarMemfd(4096);
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    expectRefused(loop, t, vmm, "interrupt (descriptor 5) is /memfd:test-bar");
  });
}

TEST_CASE("same-memfd-for-two-bars: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    std::vector<int> raw = fds.raw();
    raw[2] = raw[1];  // RAM passed again as VRAM (RAM is the larger, so the size check passes)
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, raw);
    expectRefused(loop, t, vmm, "the RAM and VRAM BARs are the same memfd");
  });
}

TEST_CASE("missing-descriptors: five of six, refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    std::vector<int> raw = fds.raw();
    raw.pop_back();
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, raw);
    expectRefused(loop, t, vmm, "link carries 5 descriptors, 6 are required");
  });
}

TEST_CASE("link-before-hello: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    vmm.sendLink(ROM_SIZE, RAM_SIZE, VRAM_SIZE, fds.raw());
    expectRefused(loop, t, vmm, "link before hello");
  });
}

TEST_CASE("hello-wrong-version: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    FakeVmm vmm(loop.get(), path);
    vmm.sendHello(ipc::vmm::PROTOCOL_VERSION + 1);
    expectRefused(loop, t, vmm, "VMM speaks qxl-link protocol version 2");
  });
}

TEST_CASE("io-write-before-link: refused", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    FakeVmm vmm(loop.get(), path);
    vmm.sendHello();
    vmm.sendIoWrite(QXL_IO_NOTIFY_CMD, 0, false);
    expectRefused(loop, t, vmm, "ioWrite before link");
  });
}

TEST_CASE("second-link-on-one-connection: refused, BARs unmapped", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds first, second;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, first.raw());
    REQUIRE(t.link.linked());
    vmm.sendLink(ROM_SIZE, RAM_SIZE, VRAM_SIZE, second.raw());
    loop.runUntil([&] { return t.unlinkedEvents == 1 && vmm.closed(); });
    CHECK_FALSE(t.link.linked());
    CHECK(t.lastReason.find("link sent twice") != std::string::npos);
  });
}

TEST_CASE("vmm-hang-up-then-relink: accepted again", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    {
      LinkFds fds;
      FakeVmm vmm(loop.get(), path);
      linkAndWait(loop, t, vmm, fds.raw());
      REQUIRE(t.link.linked());
    }  // the VMM goes away: its socket closes
    loop.runUntil([&] { return t.unlinkedEvents == 1; });
    CHECK_FALSE(t.link.linked());
    CHECK(t.link.describe() == "vmm not linked");
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    CHECK(t.link.linked());
    CHECK(t.linkedEvents == 2);
    CHECK(t.link.stats().links == 2);
  });
}

TEST_CASE("second-vmm-while-linked: refused, first stays linked", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm first(loop.get(), path);
    linkAndWait(loop, t, first, fds.raw());
    REQUIRE(t.link.linked());
    FakeVmm second(loop.get(), path);
    second.sendHello();
    loop.runUntil([&] { return second.closed(); });
    CHECK(t.link.stats().refusedConnections == 1);
    CHECK(t.link.linked());
    CHECK_FALSE(first.closed());
    // The first still works (UPDATE_AREA completes once the renderer answered).
    first.sendIoWrite(QXL_IO_UPDATE_AREA_ASYNC, 0, true);
    loop.runUntil([&] {
      t.answerBatches();
      return first.completions.size() == 1;
    });
  });
}

TEST_CASE("async-io-write: acked with ioComplete, in order", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    REQUIRE(t.link.linked());
    // UPDATE_AREA waits for the renderer; the MEMSLOT_ADD after it must not overtake it.
    t.rendererPresent = false;
    vmm.sendIoWrite(QXL_IO_UPDATE_AREA_ASYNC, 0, true);
    vmm.sendIoWrite(QXL_IO_NOTIFY_CMD, 0, false);  // synchronous: no answer
    vmm.sendIoWrite(QXL_IO_MEMSLOT_ADD_ASYNC, 1, true);
    vmm.sendIoWrite(QXL_IO_DESTROY_PRIMARY_ASYNC, 0, true);
    loop.runUntil([&] { return t.link.device()->stats().ioWrites == 4; });
    loop.spin();
    CHECK(vmm.completions.empty());
    t.rendererPresent = true;
    t.link.rendererAvailable();
    loop.runUntil([&] {
      t.answerBatches();
      return vmm.completions.size() == 3;
    });
    CHECK(vmm.completions == std::vector<unsigned>{QXL_IO_UPDATE_AREA_ASYNC,
                                                   QXL_IO_MEMSLOT_ADD_ASYNC,
                                                   QXL_IO_DESTROY_PRIMARY_ASYNC});
    CHECK(t.link.stats().ioWrites == 4);
    CHECK(t.link.linked());
  });
}

TEST_CASE("unknown-io-port: counted and ignored, async still acked", "[vmm-link][hostile]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    REQUIRE(t.link.linked());
    vmm.sendIoWrite(QXL_IO_RANGE_SIZE, 0, false);
    vmm.sendIoWrite(200, 7, true);
    loop.runUntil([&] { return vmm.completions.size() == 1; });
    CHECK(vmm.completions[0] == 200);
    CHECK(t.link.stats().unknownIoPorts == 2);
    CHECK(t.link.stats().ioWrites == 0);
    CHECK(t.link.linked());
    CHECK_FALSE(vmm.closed());
  });
}

TEST_CASE("socket-file: mode 0600, stale socket replaced, other files refused", "[vmm-link]") {
  initLibuvGlobals();
  const size_t before = countOpenFds();
  {
    TempDir dir;
    TestLoop loop;
    const std::string path = dir.socketPath();
    {
      LinkUnderTest t(loop.get(), path);
      struct stat st;
      REQUIRE(::lstat(path.c_str(), &st) == 0);
      CHECK(S_ISSOCK(st.st_mode));
      CHECK((st.st_mode & 0777) == 0600);
    }
    struct stat st;
    CHECK(::lstat(path.c_str(), &st) != 0);  // removed on destruction

    {
      // A stale socket (bound, nobody listening) is replaced.
      base::Fd stale(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
      REQUIRE(::bind(stale.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
      stale.reset();
      LinkUnderTest t(loop.get(), path);
      FakeVmm vmm(loop.get(), path);
      LinkFds fds;
      linkAndWait(loop, t, vmm, fds.raw());
      CHECK(t.link.linked());
    }

    {
      // A regular file is somebody's: left alone, with an error that says so.
      base::Fd file(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
      REQUIRE(file);
      try {
        LinkUnderTest t(loop.get(), path);
        FAIL("a regular file was replaced");
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()).find("exists and is a regular file, not a socket") !=
              std::string::npos);
      }
      REQUIRE(::lstat(path.c_str(), &st) == 0);
      CHECK(S_ISREG(st.st_mode));
    }
  }
  CHECK(countOpenFds() == before);
}

}  // namespace

namespace {

// Links with the BARs placed at `ramPhys` / `vramPhys` and expects a refusal mentioning
// `fragment`.
void expectLayoutRefused(uint64_t ramPhys, uint64_t vramPhys, const std::string& fragment,
                         uint64_t vram = VRAM_SIZE) {
  withLink([&](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw(), ROM_SIZE, RAM_SIZE, vram, ramPhys, vramPhys);
    expectRefused(loop, t, vmm, fragment);
  });
}

}  // namespace

TEST_CASE("bars-overlap-in-guest-physical-space: refused", "[vmm-link][hostile]") {
  expectLayoutRefused(RAM_PHYS, RAM_PHYS, "overlap");
  // VRAM starting inside RAM, and RAM starting inside VRAM.
  expectLayoutRefused(RAM_PHYS, RAM_PHYS + RAM_SIZE - 4096, "overlap");
  expectLayoutRefused(VRAM_PHYS + 4096, VRAM_PHYS, "overlap");
  // Zero is an address like any other: RAM at 0 and VRAM right after it is fine (next test).
}

TEST_CASE("bars-adjacent-in-guest-physical-space: accepted", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw(), ROM_SIZE, RAM_SIZE, VRAM_SIZE, 0, RAM_SIZE);
    CHECK(t.link.linked());
    CHECK(t.link.layout().vramPhysStart == RAM_SIZE);
    REQUIRE(t.link.device() != nullptr);
  });
}

TEST_CASE("bar-phys-start-unaligned: refused", "[vmm-link][hostile]") {
  expectLayoutRefused(RAM_PHYS + 1, VRAM_PHYS, "not page aligned");
  expectLayoutRefused(RAM_PHYS, VRAM_PHYS + 2048, "not page aligned");
}

TEST_CASE("bar-phys-range-wraps: refused", "[vmm-link][hostile]") {
  // The last page of the address space holds less than the VRAM BAR.
  expectLayoutRefused(RAM_PHYS, UINT64_MAX - 4095, "wraps");
  expectLayoutRefused(UINT64_MAX - 4095, VRAM_PHYS, "wraps");
}

TEST_CASE("interrupt eventfd: made non-blocking at link", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    // The VMM hands over a blocking eventfd; our copy shares its file status flags.
    fds.fds[broker::LINK_FD_INTERRUPT] = base::Fd(::eventfd(0, EFD_CLOEXEC));
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    REQUIRE(t.link.linked());
    CHECK((::fcntl(fds.fds[broker::LINK_FD_INTERRUPT].get(), F_GETFL) & O_NONBLOCK) != 0);
  });
}

TEST_CASE("device on link: ROM written, renderer given the memslot table", "[vmm-link]") {
  withLink([](TestLoop& loop, LinkUnderTest& t, const std::string& path) {
    LinkFds fds;
    FakeVmm vmm(loop.get(), path);
    linkAndWait(loop, t, vmm, fds.raw());
    REQUIRE(t.link.device() != nullptr);
    // The device wrote its ROM into the VMM's memfd: the guest sees QXL_ROM_MAGIC.
    uint32_t magic = 0;
    REQUIRE(::pread(fds.fds[0].get(), &magic, sizeof magic, 0) == sizeof magic);
    CHECK(magic == QXL_ROM_MAGIC);
    CHECK(t.link.describe().find("0 commands, 0 released") != std::string::npos);
    t.link.rendererAvailable();
    CHECK(t.batches.size() == 1);  // the memslot table, in a batch of its own
    t.answerBatches();
    CHECK(t.link.device()->batchesInFlight() == 0);
  });
}

// ---------------------------------------------------------------- the renderer's output (issue 4)

namespace {

using RenderOut = ipc::render::RendererToBroker;

// A batchDone from a (compromised) renderer, decoded by the broker's renderer peer.
broker::ChildPeer::Decoded decodeBatchDone(
    const std::function<void(ipc::render::BatchDone::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  auto done = message.initRoot<RenderOut>().initBatchDone();
  done.setSeq(7);
  fill(done);
  capnp::SegmentArrayMessageReader reader(message.getSegmentsForOutput());
  ipc::ReceivedFds fds({});
  return broker::makeRendererPeer()->decode(reader, fds);
}

void setRect(ipc::render::Rect::Builder r, int32_t left, int32_t top, int32_t right,
             int32_t bottom) {
  r.setLeft(left);
  r.setTop(top);
  r.setRight(right);
  r.setBottom(bottom);
}

using Kind = broker::ChildPeer::Decoded::Kind;

}  // namespace

TEST_CASE("batch-done output: damage and hints decoded", "[peer-renderer]") {
  auto d = decodeBatchDone([](auto done) {
    setRect(done.initDamage(1)[0], 0, 0, 10, 5);
    auto hints = done.initHints(2);
    auto fill = hints[0].initSolidFill();
    fill.setColor(0xff00);
    setRect(fill.initRects(1)[0], 1, 1, 2, 2);
    auto copy = hints[1].initCopyBits();
    copy.setSrcX(3);
    copy.setSrcY(4);
    setRect(copy.initDest(), 5, 5, 7, 7);
  });
  REQUIRE(d.kind == Kind::Boundary);
  const auto& done = std::get<broker::RendererBatchDone>(d.boundary);
  CHECK(done.seq == 7);
  CHECK(done.damage == std::vector<broker::RendererRect>{{0, 0, 5, 10}});
  REQUIRE(done.hints.size() == 2);
  CHECK(std::get<broker::RendererSolidFill>(done.hints[0]).color == 0xff00u);
  CHECK(std::get<broker::RendererCopyBits>(done.hints[1]).srcY == 4);
  CHECK_FALSE(broker::checkOutput(done, broker::PrimarySize{10, 10}));
}

TEST_CASE("batch-done-buffer: 0 and 1 decoded, anything else refused", "[peer-renderer][hostile]") {
  for (uint8_t buffer : {0, 1}) {
    auto d = decodeBatchDone([&](auto done) { done.setBuffer(buffer); });
    REQUIRE(d.kind == Kind::Boundary);
    CHECK(std::get<broker::RendererBatchDone>(d.boundary).buffer == buffer);
  }
  for (uint8_t buffer : {2, 255}) {
    auto d = decodeBatchDone([&](auto done) { done.setBuffer(buffer); });
    CHECK(d.kind == Kind::Refused);
    CHECK_THAT(d.refusal, Catch::Contains("names buffer " + std::to_string(buffer)));
  }
}

TEST_CASE("batch-done-too-many-damage-rects: refused", "[peer-renderer][hostile]") {
  auto d = decodeBatchDone([](auto done) {
    auto damage = done.initDamage(ipc::render::MAX_DAMAGE_RECTS + 1);
    for (unsigned i = 0; i < damage.size(); ++i)
      setRect(damage[i], static_cast<int32_t>(i), 0, static_cast<int32_t>(i) + 1, 1);
  });
  CHECK(d.kind == Kind::Refused);
  CHECK_THAT(d.refusal, Catch::Contains("65 damage rectangles"));
}

TEST_CASE("batch-done-too-many-hints-or-fill-rects: refused", "[peer-renderer][hostile]") {
  auto hints = decodeBatchDone([](auto done) {
    auto list = done.initHints(ipc::render::MAX_HINTS + 1);
    for (unsigned i = 0; i < list.size(); ++i)
      setRect(list[i].initCopyBits().initDest(), 0, 0, 1, 1);
  });
  CHECK(hints.kind == Kind::Refused);
  auto rects = decodeBatchDone([](auto done) {
    auto fill = done.initHints(1)[0].initSolidFill();
    auto list = fill.initRects(ipc::render::MAX_HINT_RECTS + 1);
    for (unsigned i = 0; i < list.size(); ++i)
      setRect(list[i], 0, 0, 1, 1);
  });
  CHECK(rects.kind == Kind::Refused);
  auto none = decodeBatchDone([](auto done) { done.initHints(1)[0].initSolidFill(); });
  CHECK(none.kind == Kind::Refused);
}

TEST_CASE("batch-done-empty-inverted-or-negative-rect: refused", "[peer-renderer][hostile]") {
  for (const auto& rect : std::vector<std::array<int32_t, 4>>{{5, 5, 5, 9},
                                                                {5, 5, 9, 5},
                                                                {9, 0, 5, 4},
                                                                {-1, 0, 4, 4},
                                                                {0, INT32_MIN, 4, 4},
                                                                {0, 0, INT32_MAX, 4}}) {
    // Named copies, not structured bindings: clang 14 cannot capture those in the lambdas.
    const int32_t l = rect[0], t = rect[1], r = rect[2], b = rect[3];
    INFO(l << " " << t << " " << r << " " << b);
    auto damage = decodeBatchDone([&](auto done) { setRect(done.initDamage(1)[0], l, t, r, b); });
    CHECK(damage.kind == Kind::Refused);
    auto copy = decodeBatchDone(
        [&](auto done) { setRect(done.initHints(1)[0].initCopyBits().initDest(), l, t, r, b); });
    CHECK(copy.kind == Kind::Refused);
  }
}

TEST_CASE("batch-done-rect-outside-primary: refused by the owner's check",
          "[peer-renderer][hostile]") {
  broker::RendererBatchDone done;
  done.damage = {{0, 0, 5, 11}};  // right 11 on a 10 wide primary
  CHECK(broker::checkOutput(done, broker::PrimarySize{10, 10}));
  CHECK(broker::checkOutput(done, std::nullopt));  // output without a primary at all
  done.damage.clear();
  done.hints = {broker::RendererCopyBits{8, 0, {0, 0, 2, 4}}};  // source runs to x = 12
  CHECK(broker::checkOutput(done, broker::PrimarySize{10, 10}));
  done.hints = {broker::RendererCopyBits{6, 0, {0, 0, 2, 4}}};
  CHECK_FALSE(broker::checkOutput(done, broker::PrimarySize{10, 10}));
  done.hints = {broker::RendererSolidFill{1, {{8, 0, 11, 1}}}};
  CHECK(broker::checkOutput(done, broker::PrimarySize{10, 10}));
  done.hints.clear();
  CHECK_FALSE(broker::checkOutput(done, std::nullopt));
}

// A renderer's cursor: a w x h shape (serial 3) whose pixel i is i * 0x01010101, hot spot
// (1, 1), at (-4, 600), then `change` tampers with it.
broker::ChildPeer::Decoded decodeCursor(
    unsigned w, unsigned h,
    const std::function<void(ipc::render::Cursor::Builder)>& change = [](auto) {}) {
  return decodeBatchDone([&](auto done) {
    auto c = done.initCursor();
    c.setVisible(true);
    c.setX(-4);
    c.setY(600);
    c.setShapeSerial(3);
    c.setWidth(static_cast<uint16_t>(w));
    c.setHeight(static_cast<uint16_t>(h));
    c.setHotSpotX(1);
    c.setHotSpotY(1);
    auto bytes = c.initPixels(w * h * 4);
    for (unsigned i = 0; i < bytes.size(); ++i)
      bytes[i] = static_cast<kj::byte>(i / 4);  // little-endian: every byte of pixel i is i
    change(c);
  });
}

TEST_CASE("batch-done cursor: decoded, pixels little-endian, absent when not sent",
          "[peer-renderer]") {
  auto d = decodeCursor(2, 3);
  REQUIRE(d.kind == Kind::Boundary);
  const auto& done = std::get<broker::RendererBatchDone>(d.boundary);
  REQUIRE(done.cursor);
  const broker::RendererCursor& c = *done.cursor;
  CHECK(c.visible);
  CHECK(c.x == -4);
  CHECK(c.y == 600);
  CHECK(c.shapeSerial == 3);
  CHECK(c.width == 2);
  CHECK(c.height == 3);
  CHECK(c.hotSpotX == 1);
  CHECK(c.hotSpotY == 1);
  CHECK(c.pixels ==
        std::vector<uint32_t>{0u, 0x01010101u, 0x02020202u, 0x03030303u, 0x04040404u, 0x05050505u});
  // The largest shape.
  const unsigned max = ipc::render::MAX_CURSOR_DIMENSION;
  auto big = decodeCursor(max, max);
  REQUIRE(big.kind == Kind::Boundary);
  CHECK(std::get<broker::RendererBatchDone>(big.boundary).cursor->pixels.size() == max * max);
  // No shape yet: serial 0, 0 x 0, no pixels.
  auto none = decodeCursor(0, 0, [](auto c) {
    c.setShapeSerial(0);
    c.setHotSpotX(0);
    c.setHotSpotY(0);
  });
  REQUIRE(none.kind == Kind::Boundary);
  CHECK(std::get<broker::RendererBatchDone>(none.boundary).cursor->pixels.empty());
  auto without = decodeBatchDone([](auto) {});
  REQUIRE(without.kind == Kind::Boundary);
  CHECK_FALSE(std::get<broker::RendererBatchDone>(without.boundary).cursor);
}

TEST_CASE("batch-done-cursor-oversized: wider or taller than maxCursorDimension, refused",
          "[peer-renderer][hostile]") {
  const unsigned over = ipc::render::MAX_CURSOR_DIMENSION + 1;
  for (auto [w, h] : std::vector<std::pair<unsigned, unsigned>>{{over, 1}, {1, over}, {65535, 2}}) {
    INFO(w << "x" << h);
    // The pixels match the dimensions: only the size is wrong.
    auto d = decodeCursor(w, h);
    CHECK(d.kind == Kind::Refused);
    CHECK_THAT(d.refusal, Catch::Contains("at most 128"));
  }
}

TEST_CASE("batch-done-cursor-pixels-short-or-long: refused", "[peer-renderer][hostile]") {
  for (int delta : {-4, -1, 1, 4}) {
    INFO(delta);
    auto d =
        decodeCursor(4, 4, [delta](auto c) { c.initPixels(static_cast<unsigned>(64 + delta)); });
    CHECK(d.kind == Kind::Refused);
    CHECK_THAT(d.refusal, Catch::Contains("bytes of pixels"));
  }
  auto missing = decodeCursor(4, 4, [](auto c) { c.disownPixels(); });
  CHECK(missing.kind == Kind::Refused);
}

TEST_CASE("batch-done-cursor-hot-spot-outside: refused", "[peer-renderer][hostile]") {
  auto x = decodeCursor(4, 4, [](auto c) { c.setHotSpotX(4); });
  CHECK(x.kind == Kind::Refused);
  CHECK_THAT(x.refusal, Catch::Contains("hot spot"));
  auto y = decodeCursor(4, 4, [](auto c) { c.setHotSpotY(65535); });
  CHECK(y.kind == Kind::Refused);
  auto inside = decodeCursor(4, 4, [](auto c) {
    c.setHotSpotX(3);
    c.setHotSpotY(3);
  });
  CHECK(inside.kind == Kind::Boundary);
  // Without a shape there is nothing for a hot spot to lie in.
  auto shapeless = decodeCursor(0, 0, [](auto c) { c.setShapeSerial(0); });
  CHECK(shapeless.kind == Kind::Refused);
}

TEST_CASE("batch-done-cursor-serial-and-shape-disagree: refused", "[peer-renderer][hostile]") {
  // Serial 0 (no shape) with a shape.
  auto shaped = decodeCursor(2, 2, [](auto c) { c.setShapeSerial(0); });
  CHECK(shaped.kind == Kind::Refused);
  CHECK_THAT(shaped.refusal, Catch::Contains("shapeSerial"));
  // A serial without a shape, or half a shape.
  auto empty = decodeCursor(0, 0, [](auto c) {
    c.setHotSpotX(0);
    c.setHotSpotY(0);
  });
  CHECK(empty.kind == Kind::Refused);
  auto flat = decodeCursor(0, 4, [](auto c) { c.setHotSpotX(0); });
  CHECK(flat.kind == Kind::Refused);
}

TEST_CASE("display segment: sealed memfd of the page-rounded size, oversized refused",
          "[broker][segment]") {
  auto made = broker::createDisplaySegment(100, 3, 9);
  REQUIRE(std::holds_alternative<std::shared_ptr<broker::DisplaySegment>>(made));
  const auto& segment = *std::get<std::shared_ptr<broker::DisplaySegment>>(made);
  CHECK(segment.layout.stride == 400);
  // Two buffers of 1200 bytes, each rounded up to a page.
  CHECK(segment.layout.backOffset == 4096);
  CHECK(segment.layout.size == 8192);
  CHECK(segment.layout.generation == 9);
  struct stat st {};
  REQUIRE(::fstat(segment.fd.get(), &st) == 0);
  CHECK(st.st_size == 8192);
  const int seals = ::fcntl(segment.fd.get(), F_GET_SEALS);
  CHECK((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
        (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
  CHECK(::ftruncate(segment.fd.get(), 0) != 0);  // cannot be shrunk under a viewer
  auto huge = broker::createDisplaySegment(8193, 10, 1);
  REQUIRE(std::holds_alternative<std::string>(huge));
  CHECK_THAT(std::get<std::string>(huge), Catch::Contains("8192x8192"));
  CHECK(std::holds_alternative<std::string>(broker::createDisplaySegment(0, 10, 1)));
}
