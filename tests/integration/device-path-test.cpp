// Runs in: tests. The device path end to end: the real spicebox-broker (with its real renderer)
// and a minimal VMM written here, which also plays the guest driver: it links memfd BARs and
// eventfds over qxl-link, adds a memslot, pushes QXLUpdateCmd commands on the command ring, kicks
// the doorbell and waits on the interrupt eventfd until every command came back on the release
// ring. Everything awaited is an event (socket, eventfd, sd_notify STATUS) with a watchdog.
#include <fcntl.h>
#include <signal.h>
#include <spice/qxl_dev.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "ipc/channel.h"
#include "ipc/vmm.capnp.h"
#include "tests/integration/broker-process.h"
#include "tests/support/test-loop.h"

using namespace spicebox;
using namespace std::chrono_literals;

namespace {

using ipc::vmm::BrokerToVmm;
using ipc::vmm::VmmToBroker;

constexpr size_t ROM_SIZE = 8192;
constexpr size_t RAM_SIZE = 4 * 1024 * 1024;
constexpr size_t VRAM_SIZE = 1024 * 1024;
constexpr uint64_t RAM_PHYS = 0x80000000;
constexpr uint64_t VRAM_PHYS = 0x90000000;
// Where the guest puts its commands in RAM, and how far apart.
constexpr size_t COMMANDS_OFFSET = 64 * 1024;
constexpr size_t COMMAND_STRIDE = 64;
constexpr uint64_t FIRST_ID = 1000;  // release ids; 0 ends a chain

constexpr auto START_BOUND = 10000ms;

const std::vector<std::string> FAST = {"--heartbeat-interval", "50", "--heartbeat-timeout", "400",
                                       "--restart-delay-min",  "10", "--restart-delay-max", "200"};

base::Fd barMemfd(size_t size) {
  base::Fd fd(::memfd_create("guest-bar", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
  REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK) == 0);
  return fd;
}

std::byte* mapBar(const base::Fd& fd, size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  REQUIRE(p != MAP_FAILED);
  return static_cast<std::byte*>(p);
}

// A 32-bit field of a packed guest structure, accessed atomically (the broker writes the same
// memory concurrently). The QXL layouts keep these fields 4-byte aligned.
#define GUEST_U32(object, Type, field)                                                             \
  std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(reinterpret_cast<std::byte*>(&(object)) + \
                                                         offsetof(Type, field)))

// The VMM and its guest driver.
class TestVmm {
 public:
  TestVmm(test::TestLoop& loop, test::BrokerProcess& broker, const std::string& socketPath)
      : loop_(loop), broker_(broker) {
    rom_ = barMemfd(ROM_SIZE);
    ram_ = barMemfd(RAM_SIZE);
    vram_ = barMemfd(VRAM_SIZE);
    cmdBell_ = base::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    cursorBell_ = base::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    irq_ = base::Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    romMap_ = mapBar(rom_, ROM_SIZE);
    ramMap_ = mapBar(ram_, RAM_SIZE);

    base::Fd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(sock);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socketPath.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    channel_ = std::make_unique<ipc::Channel>(
        loop.get(), std::move(sock), "broker",
        [this](capnp::MessageReader& message, ipc::ReceivedFds&) -> ipc::Channel::Verdict {
          auto root = message.getRoot<BrokerToVmm>();
          if (root.which() == BrokerToVmm::HELLO)
            helloAnswered_ = true;
          else if (root.which() == BrokerToVmm::IO_COMPLETE)
            completions_.push_back(root.getIoComplete().getPort());
          return std::nullopt;
        },
        [this](const std::string& why) { closed_ = why; });

    uv_poll_init(loop.get(), irqPoll_.get(), irq_.get());
    irqPoll_->data = this;
    uv_poll_start(irqPoll_.get(), UV_READABLE, [](uv_poll_t* h, int, int) {
      auto* self = static_cast<TestVmm*>(h->data);
      uint64_t n;
      if (::read(self->irq_.get(), &n, sizeof n) == sizeof n)
        ++self->interrupts_;
    });
  }

  ~TestVmm() {
    ::munmap(romMap_, ROM_SIZE);
    ::munmap(ramMap_, RAM_SIZE);
  }

  // hello, link, int_mask, memslot 1 over the RAM below the QXLRam header.
  void linkAndAddMemslot() {
    capnp::MallocMessageBuilder hello;
    hello.initRoot<VmmToBroker>().initHello().setProtocolVersion(ipc::vmm::PROTOCOL_VERSION);
    REQUIRE(channel_->send(hello));
    runUntil([&] { return helloAnswered_; });

    capnp::MallocMessageBuilder linkMessage;
    auto link = linkMessage.initRoot<VmmToBroker>().initLink();
    link.setRomSize(ROM_SIZE);
    link.setRamSize(RAM_SIZE);
    link.setVramSize(VRAM_SIZE);
    link.setRamPhysStart(RAM_PHYS);
    link.setVramPhysStart(VRAM_PHYS);
    const int fds[] = {rom_.get(),     ram_.get(),        vram_.get(),
                       cmdBell_.get(), cursorBell_.get(), irq_.get()};
    REQUIRE(channel_->send(linkMessage, fds));

    // The device writes the ROM on link; the guest reads it as a driver does at probe time.
    runUntil([&] { return rom().magic == QXL_ROM_MAGIC; });
    REQUIRE(rom().ram_header_offset + sizeof(QXLRam) <= RAM_SIZE);
    REQUIRE(rom().ram_header_offset > COMMANDS_OFFSET + 4096);
    runUntil([&] { return ramHeader().magic == QXL_RAM_MAGIC; });
    GUEST_U32(ramHeader(), QXLRam, int_mask).store(~0u);

    slotId_ = rom().slots_start;
    ramHeader().mem_slot.mem_start = RAM_PHYS;
    ramHeader().mem_slot.mem_end = RAM_PHYS + rom().ram_header_offset;
    ioWrite(QXL_IO_MEMSLOT_ADD_ASYNC, slotId_, true);
    runUntil([&] { return !completions_.empty(); });
    REQUIRE(completions_.front() == QXL_IO_MEMSLOT_ADD_ASYNC);
    generation_ = rom().slot_generation;
  }

  // Writes `count` QXLUpdateCmd with ids FIRST_ID.. into RAM (not yet pushed).
  void writeCommands(size_t count) {
    commandCount_ = count;
    for (size_t i = 0; i < count; ++i) {
      QXLUpdateCmd cmd{};
      cmd.release_info.id = FIRST_ID + i;
      cmd.area = QXLRect{0, 0, 16, 16};
      cmd.update_id = static_cast<uint32_t>(i);
      cmd.surface_id = 0;
      std::memcpy(ramMap_ + commandOffset(i), &cmd, sizeof cmd);
    }
  }

  // Pushes what fits on the command ring, kicks the doorbell; returns how many were pushed.
  size_t pushCommands() {
    auto& ring = ramHeader().cmd_ring;
    size_t pushed = 0;
    while (next_ < commandCount_) {
      const uint32_t prod = GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, prod)
                                .load(std::memory_order_relaxed);
      const uint32_t cons = GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, cons)
                                .load(std::memory_order_acquire);
      if (prod - cons >= QXL_COMMAND_RING_SIZE)
        break;
      QXLCommand& item = ring.items[prod & (QXL_COMMAND_RING_SIZE - 1)].el;
      item.data = address(commandOffset(next_));
      item.type = QXL_CMD_UPDATE;
      GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, prod)
          .store(prod + 1, std::memory_order_release);
      ++next_;
      ++pushed;
    }
    if (pushed) {
      const uint64_t one = 1;  // the ioeventfd a real VMM wires to QXL_IO_NOTIFY_CMD
      REQUIRE(::write(cmdBell_.get(), &one, sizeof one) == sizeof one);
    }
    return pushed;
  }

  // Takes every chain off the release ring. Returns how many ids it found.
  size_t drainReleases() {
    auto& ring = ramHeader().release_ring;
    size_t found = 0;
    for (;;) {
      const uint32_t cons = GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, cons)
                                .load(std::memory_order_relaxed);
      const uint32_t prod = GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, prod)
                                .load(std::memory_order_acquire);
      if (cons == prod)
        return found;
      uint64_t id = ring.items[cons & (QXL_RELEASE_RING_SIZE - 1)].el;
      // The chain: each released command's release_info now holds the next id.
      for (size_t guard = 0; id != 0 && guard <= commandCount_; ++guard) {
        REQUIRE(id >= FIRST_ID);
        REQUIRE(id < FIRST_ID + commandCount_);
        REQUIRE(released_.insert(id).second);  // never released twice
        ++found;
        uint64_t next;
        std::memcpy(&next, ramMap_ + commandOffset(id - FIRST_ID), sizeof next);
        id = next;
      }
      GUEST_U32(ring, std::remove_reference_t<decltype(ring)>, cons)
          .store(cons + 1, std::memory_order_release);
    }
  }

  // The guest's main loop: push, drain, and when neither can progress, arm the rings' notify
  // fields and wait for the interrupt.
  void runUntilAllReleased() {
    while (released_.size() < commandCount_) {
      pushCommands();
      drainReleases();
      if (released_.size() == commandCount_)
        break;
      auto& cmd = ramHeader().cmd_ring;
      auto& rel = ramHeader().release_ring;
      GUEST_U32(ramHeader(), QXLRam, int_pending).store(0);
      const uint64_t before = interrupts_;
      // Tell me when a release arrives, and when the command ring has room again.
      GUEST_U32(rel, std::remove_reference_t<decltype(rel)>, notify_on_prod)
          .store(GUEST_U32(rel, std::remove_reference_t<decltype(rel)>, cons).load() + 1);
      GUEST_U32(cmd, std::remove_reference_t<decltype(cmd)>, notify_on_cons)
          .store(GUEST_U32(cmd, std::remove_reference_t<decltype(cmd)>, cons).load() + 1);
      // Re-check after arming: what landed in between raised nothing.
      const bool releaseWaiting =
          GUEST_U32(rel, std::remove_reference_t<decltype(rel)>, prod).load() !=
          GUEST_U32(rel, std::remove_reference_t<decltype(rel)>, cons).load();
      const bool roomWaiting =
          next_ < commandCount_ &&
          GUEST_U32(cmd, std::remove_reference_t<decltype(cmd)>, prod).load() -
                  GUEST_U32(cmd, std::remove_reference_t<decltype(cmd)>, cons).load() <
              QXL_COMMAND_RING_SIZE;
      if (releaseWaiting || roomWaiting)
        continue;
      runUntil([&] { return interrupts_ > before; });
    }
  }

  void ioWrite(uint8_t port, uint8_t value, bool async) {
    capnp::MallocMessageBuilder message;
    auto io = message.initRoot<VmmToBroker>().initIoWrite();
    io.setPort(port);
    io.setValue(value);
    io.setAsync(async);
    REQUIRE(channel_->send(message));
  }

  // QXL_IO_<port>_ASYNC, then waits for its completion (the device completes CREATE_PRIMARY and
  // UPDATE_AREA once the renderer has answered the batch holding them).
  void ioAndWait(uint8_t port, uint8_t value) {
    const size_t before = completions_.size();
    ioWrite(port, value, true);
    runUntil([&] { return completions_.size() > before; });
    REQUIRE(completions_.back() == port);
  }

  // QXL_IO_CREATE_PRIMARY_ASYNC of a 32 bpp primary whose pixels are at `ramOffset`.
  void createPrimary(uint32_t width, uint32_t height, int32_t stride, size_t ramOffset) {
    QXLSurfaceCreate& c = ramHeader().create_surface;
    c.width = width;
    c.height = height;
    c.stride = stride;
    c.format = SPICE_SURFACE_FMT_32_xRGB;
    c.position = 0;
    c.mouse_mode = 0;
    c.flags = 0;
    c.type = QXL_SURF_TYPE_PRIMARY;
    c.mem = address(ramOffset);
    ioAndWait(QXL_IO_CREATE_PRIMARY_ASYNC, 0);
  }

  // QXL_IO_UPDATE_AREA_ASYNC of `area` on surface 0.
  void updatePrimary(QXLRect area) {
    ramHeader().update_area = area;
    ramHeader().update_surface = 0;
    ioAndWait(QXL_IO_UPDATE_AREA_ASYNC, 0);
  }

  std::byte* ram() { return ramMap_; }

  const std::set<uint64_t>& released() const { return released_; }
  size_t pushed() const { return next_; }
  bool closed() const { return closed_.has_value(); }

 private:
  QXLRom& rom() { return *reinterpret_cast<QXLRom*>(romMap_); }
  QXLRam& ramHeader() { return *reinterpret_cast<QXLRam*>(ramMap_ + rom().ram_header_offset); }
  static size_t commandOffset(size_t i) { return COMMANDS_OFFSET + i * COMMAND_STRIDE; }
  // qxl_bo_physical_address: slot id, generation, physical address.
  uint64_t address(size_t ramOffset) {
    const unsigned idShift = 64 - rom().slot_id_bits;
    const unsigned genShift = idShift - rom().slot_gen_bits;
    return (uint64_t{slotId_} << idShift) | (uint64_t{generation_} << genShift) |
           (RAM_PHYS + ramOffset);
  }
  // Runs the loop until `done`, draining the broker's notifications and stderr meanwhile (full,
  // they would block it). The TestLoop's watchdog fails the test instead of hanging.
  void runUntil(const std::function<bool()>& done) {
    loop_.runUntil([&] {
      broker_.drain();
      INFO(closed_.value_or("channel open"));
      REQUIRE_FALSE(closed_);
      return done();
    });
  }

  test::TestLoop& loop_;
  test::BrokerProcess& broker_;
  base::Fd rom_, ram_, vram_, cmdBell_, cursorBell_, irq_;
  std::byte* romMap_ = nullptr;
  std::byte* ramMap_ = nullptr;
  std::unique_ptr<ipc::Channel> channel_;
  base::UvHandle<uv_poll_t> irqPoll_;
  bool helloAnswered_ = false;
  std::vector<unsigned> completions_;
  std::optional<std::string> closed_;
  uint64_t interrupts_ = 0;
  uint8_t slotId_ = 0;
  uint8_t generation_ = 0;
  size_t commandCount_ = 0;
  size_t next_ = 0;
  std::set<uint64_t> released_;
};

std::string tempSocketPath(std::string& dir) {
  char tmpl[] = "/tmp/spicebox-device-path-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  dir = tmpl;
  return dir + "/vmm.sock";
}

// "vmm linked (ram 4 MiB, vram 1 MiB, 12 commands, 3 released)" -> 12
long statusCommands(const test::BrokerStatus& s) {
  std::smatch m;
  static const std::regex re(R"((\d+) commands, (\d+) released)");
  return std::regex_search(s.raw, m, re) ? std::stol(m[1]) : -1;
}

}  // namespace

TEST_CASE("guest commands travel VMM -> broker -> renderer and every one is released",
          "[device-path]") {
  std::string dir;
  const std::string path = tempSocketPath(dir);
  std::vector<std::string> args = FAST;
  args.insert(args.end(), {"--vmm-socket", path});
  test::BrokerProcess broker(args);
  REQUIRE(broker.waitForReady(START_BOUND));
  {
    test::TestLoop loop;
    TestVmm vmm(loop, broker, path);
    vmm.linkAndAddMemslot();
    // More than the command ring (32) and the release ring (8) hold: both wait on the guest.
    constexpr size_t N = 200;
    vmm.writeCommands(N);
    vmm.runUntilAllReleased();
    CHECK(vmm.released().size() == N);
    CHECK(*vmm.released().begin() == FIRST_ID);
    CHECK(*vmm.released().rbegin() == FIRST_ID + N - 1);
  }
  // The VMM hung up: the broker keeps running and reports the link gone.
  auto after = broker.waitForStatus(
      [](const test::BrokerStatus& s) { return s.raw.find("vmm not linked") != std::string::npos; },
      START_BOUND);
  INFO(broker.stderrText());
  CHECK(after);
  CHECK(broker.stderrText().find("renderer could not read") == std::string::npos);
  ::rmdir(dir.c_str());
}

TEST_CASE("renderer killed with commands in flight: every command is still released",
          "[device-path]") {
  std::string dir;
  const std::string path = tempSocketPath(dir);
  std::vector<std::string> args = FAST;
  // A stopped renderer misses heartbeats; a long timeout keeps the broker from replacing it
  // before the test has seen the commands in flight.
  args[3] = "60000";
  args.insert(args.end(), {"--vmm-socket", path});
  test::BrokerProcess broker(args);
  auto ready = broker.waitForReady(START_BOUND);
  REQUIRE(ready);
  const pid_t renderer = ready->renderer.pid;
  {
    test::TestLoop loop;
    TestVmm vmm(loop, broker, path);
    vmm.linkAndAddMemslot();
    constexpr size_t N = 24;  // fits the command ring: all pushed at once
    vmm.writeCommands(N);
    // The renderer cannot answer: the commands stay in flight.
    REQUIRE(::kill(renderer, SIGSTOP) == 0);
    REQUIRE(vmm.pushCommands() == N);
    auto inFlight = broker.waitForStatus(
        [](const test::BrokerStatus& s) { return statusCommands(s) == static_cast<long>(N); },
        START_BOUND);
    INFO(broker.stderrText());
    REQUIRE(inFlight);
    CHECK(vmm.drainReleases() == 0);
    REQUIRE(::kill(renderer, SIGKILL) == 0);
    auto replaced = broker.waitForStatus(
        [&](const test::BrokerStatus& s) {
          return s.renderer.state == "ready" && s.renderer.pid != renderer;
        },
        START_BOUND);
    REQUIRE(replaced);
    vmm.runUntilAllReleased();
    CHECK(vmm.released().size() == N);
    CHECK_FALSE(vmm.closed());
  }
  ::rmdir(dir.c_str());
}

TEST_CASE(
    "primary: drawn into a broker display segment from the guest's pixels, written back "
    "on UPDATE_AREA",
    "[device-path][output]") {
  std::string dir;
  const std::string path = tempSocketPath(dir);
  std::vector<std::string> args = FAST;
  args.insert(args.end(), {"--vmm-socket", path});
  test::BrokerProcess broker(args);
  REQUIRE(broker.waitForReady(START_BOUND));
  {
    test::TestLoop loop;
    TestVmm vmm(loop, broker, path);
    vmm.linkAndAddMemslot();
    // A bottom-up primary (negative stride, as drivers make them): row y of the picture lies at
    // PRIMARY + (H - 1 - y) * 4W.
    constexpr uint32_t W = 64, H = 32;
    constexpr size_t PRIMARY = 1024 * 1024;
    auto pixelAt = [&vmm](uint32_t x, uint32_t y) -> uint32_t& {
      return *reinterpret_cast<uint32_t*>(vmm.ram() + PRIMARY + (H - 1 - y) * W * 4 + x * 4);
    };
    for (uint32_t y = 0; y < H; ++y)
      for (uint32_t x = 0; x < W; ++x)
        pixelAt(x, y) = 0x00010000u * y + 0x100u * x + 0x5a;
    vmm.createPrimary(W, H, -static_cast<int32_t>(W * 4), PRIMARY);
    // The guest forgets its pixels; UPDATE_AREA brings back what the renderer holds: the
    // initial pixels it copied into the segment. Only the area is written.
    for (uint32_t y = 0; y < H; ++y)
      for (uint32_t x = 0; x < W; ++x)
        pixelAt(x, y) = 0;
    vmm.updatePrimary(QXLRect{2, 0, static_cast<int32_t>(H), static_cast<int32_t>(W) - 4});
    INFO(broker.stderrText());
    for (uint32_t y = 0; y < H; ++y) {
      for (uint32_t x = 0; x < W; ++x) {
        const bool inArea = y >= 2 && x < W - 4;
        INFO("x=" << x << " y=" << y);
        REQUIRE(pixelAt(x, y) == (inArea ? 0x00010000u * y + 0x100u * x + 0x5a : 0u));
      }
    }
    auto shown = broker.waitForStatus(
        [](const test::BrokerStatus& s) {
          return s.raw.find("display 64x32 (segment 1)") != std::string::npos;
        },
        START_BOUND);
    CHECK(shown);
  }
  CHECK(broker.stderrText().find("refus") == std::string::npos);
  ::rmdir(dir.c_str());
}
