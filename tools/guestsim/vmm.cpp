// Runs in: spicebox-guestsim (unsandboxed). Input: the broker's qxl-link messages, checked in
// onMessage(); the eventfd counter the broker signals.
#include "tools/guestsim/vmm.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/assert.h"
#include "base/log.h"
#include "base/syscall.h"
#include "ipc/vmm.capnp.h"

namespace spicebox::guestsim {

namespace vmmipc = spicebox::ipc::vmm;

namespace {

constexpr uint64_t PAGE = 4096;

base::Fd makeEventFd(const char* what) {
  return base::Fd(SB_SYSCALL(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), what));
}

void signalEventFd(const base::Fd& fd, const char* what) {
  uint64_t one = 1;
  ssize_t n = ::write(fd.get(), &one, sizeof one);
  // EAGAIN: the counter is at its maximum, the reader has a wake-up pending anyway.
  if (n != sizeof one && errno != EAGAIN)
    throw VmmError(fmt::format("cannot signal the {} eventfd: {}", what, std::strerror(errno)));
}

}  // namespace

StopSignals::StopSignals(uv_loop_t* loop) {
  for (auto [handle, signum] : {std::pair{&sigterm_, SIGTERM}, std::pair{&sigint_, SIGINT}}) {
    uv_signal_init(loop, handle->get());
    (*handle)->data = this;
    uv_signal_start(
        handle->get(),
        [](uv_signal_t* h, int) {
          if (h->data)
            static_cast<StopSignals*>(h->data)->requested_ = true;
        },
        signum);
    // A pending stop never keeps the loop alive by itself.
    uv_unref(handle->handle());
  }
  uv_signal_init(loop, sigusr1_.get());
  sigusr1_->data = this;
  uv_signal_start(
      sigusr1_.get(),
      [](uv_signal_t* h, int) {
        if (h->data)
          static_cast<StopSignals*>(h->data)->finishRequested_ = true;
      },
      SIGUSR1);
  uv_unref(sigusr1_.handle());
}

Vmm::Bar Vmm::makeBar(const char* name, uint64_t size) {
  base::Fd fd(SB_SYSCALL(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), name));
  SB_SYSCALL(::ftruncate(fd.get(), static_cast<off_t>(size)), name);
  // The broker refuses a BAR it could be made to fault on (docs/protocol.md): sealed against
  // shrinking; growing is sealed too, the BAR size is fixed for the device's life.
  SB_SYSCALL(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), name);
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (addr == MAP_FAILED)
    base::throwSystemError(errno, "mmap", name);
  return Bar{std::move(fd), {static_cast<std::byte*>(addr), size}};
}

Vmm::Vmm(uv_loop_t* loop, VmmOptions options, const StopSignals& stop)
    : loop_(loop), options_(options), stop_(stop) {
  SB_ASSERT(options_.romBytes % PAGE == 0 && options_.ramBytes % PAGE == 0 &&
                options_.vramBytes % PAGE == 0,
            "BAR sizes must be page multiples (checked by main)");
  rom_ = makeBar("spicebox-guestsim-rom", options_.romBytes);
  ram_ = makeBar("spicebox-guestsim-ram", options_.ramBytes);
  vram_ = makeBar("spicebox-guestsim-vram", options_.vramBytes);
  commandDoorbell_ = makeEventFd("command doorbell eventfd");
  cursorDoorbell_ = makeEventFd("cursor doorbell eventfd");
  interrupt_ = makeEventFd("interrupt eventfd");

  uv_poll_init(loop_, interruptPoll_.get(), interrupt_.get());
  interruptPoll_->data = this;
  uv_poll_start(interruptPoll_.get(), UV_READABLE, [](uv_poll_t* h, int status, int) {
    auto* self = static_cast<Vmm*>(h->data);
    if (!self || status < 0)
      return;
    uint64_t count = 0;
    // Non-blocking: EAGAIN means another wake-up consumed it already.
    if (::read(self->interrupt_.get(), &count, sizeof count) != sizeof count)
      return;
    if (self->onInterrupt_)
      self->onInterrupt_();
  });
  // The interrupt line alone does not keep the loop alive: waits have their own watchdog.
  uv_unref(interruptPoll_.handle());
}

Vmm::~Vmm() {
  channel_.reset();
  interruptPoll_.close();
  for (Bar* bar : {&rom_, &ram_, &vram_}) {
    if (!bar->bytes.empty())
      ::munmap(bar->bytes.data(), bar->bytes.size());
  }
}

uint64_t Vmm::vramPhysStart() const {
  return RAM_PHYS_START + (options_.ramBytes + PAGE - 1) / PAGE * PAGE;
}

void Vmm::connect(const std::string& socketPath) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socketPath.size() >= sizeof addr.sun_path)
    throw VmmError(
        fmt::format("--vmm-socket path is {} bytes, longer than a unix socket path may "
                    "be ({}); use a shorter path",
                    socketPath.size(), sizeof addr.sun_path - 1));
  std::memcpy(addr.sun_path, socketPath.c_str(), socketPath.size() + 1);
  base::Fd fd(SB_SYSCALL(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), "vmm socket"));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw VmmError(
        fmt::format("cannot connect to the broker at {}: {}. Start spicebox-broker "
                    "with --vmm-socket {} first",
                    socketPath, std::strerror(errno), socketPath));
  SB_SYSCALL(::fcntl(fd.get(), F_SETFL, O_NONBLOCK), "vmm socket");
  startChannel(std::move(fd));
}

void Vmm::adopt(int fd) {
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
    throw VmmError(fmt::format("--vmm-fd {} is not a socket: {}", fd, std::strerror(errno)));
  len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX ||
      type != SOCK_SEQPACKET)
    throw VmmError(
        fmt::format("--vmm-fd {} is not a unix SOCK_SEQPACKET socket; pass a "
                    "connected qxl-link socket",
                    fd));
  base::Fd owned(fd);
  SB_SYSCALL(::fcntl(fd, F_SETFD, FD_CLOEXEC), "--vmm-fd");
  SB_SYSCALL(::fcntl(fd, F_SETFL, O_NONBLOCK), "--vmm-fd");
  startChannel(std::move(owned));
}

void Vmm::startChannel(base::Fd socket) {
  channel_ = std::make_unique<ipc::Channel>(
      loop_, std::move(socket), "broker",
      [this](capnp::MessageReader& message, ipc::ReceivedFds& fds) {
        return onMessage(message, fds);
      },
      [this](const std::string& reason) {
        closed_ = true;
        closeReason_ = reason;
      });
}

ipc::Channel::Verdict Vmm::onMessage(capnp::MessageReader& message, ipc::ReceivedFds&) {
  auto root = message.getRoot<vmmipc::BrokerToVmm>();
  switch (root.which()) {
    case vmmipc::BrokerToVmm::HELLO: {
      uint32_t version = root.getHello().getProtocolVersion();
      if (version != vmmipc::PROTOCOL_VERSION)
        return fmt::format(
            "the broker speaks qxl-link protocol version {}, this guestsim speaks "
            "version {}; use a guestsim and a broker of the same version",
            version, vmmipc::PROTOCOL_VERSION);
      if (helloAnswered_)
        return std::string("the broker sent a second hello");
      helloAnswered_ = true;
      return std::nullopt;
    }
    case vmmipc::BrokerToVmm::PING: {
      capnp::MallocMessageBuilder pong;
      pong.initRoot<vmmipc::VmmToBroker>().initPong().setSeq(root.getPing().getSeq());
      channel_->send(pong);
      return std::nullopt;
    }
    case vmmipc::BrokerToVmm::IO_COMPLETE: {
      uint8_t port = root.getIoComplete().getPort();
      if (awaitingCompletion_.empty())
        return fmt::format("the broker completed IO port {} but no async write is waiting", port);
      if (awaitingCompletion_.front() != port)
        return fmt::format(
            "the broker completed IO port {} but the oldest async write waiting "
            "is port {} (completions must come in the order of the writes)",
            port, awaitingCompletion_.front());
      awaitingCompletion_.pop_front();
      ++asyncCompleted_;
      return std::nullopt;
    }
    case vmmipc::BrokerToVmm::INPUT: {
      // A guest would see these as keyboard and mouse events; guestsim logs each, numbered, so
      // tests can check they arrive complete and in order.
      const uint64_t n = ++inputEvents_;
      auto input = root.getInput();
      switch (input.which()) {
        case vmmipc::InputEvent::KEY_DOWN:
          spdlog::info("input {}: key down {:#x}", n, input.getKeyDown());
          break;
        case vmmipc::InputEvent::KEY_UP:
          spdlog::info("input {}: key up {:#x}", n, input.getKeyUp());
          break;
        case vmmipc::InputEvent::MOUSE_MOTION: {
          auto m = input.getMouseMotion();
          spdlog::info("input {}: mouse motion {},{} buttons {:#x}", n, m.getDx(), m.getDy(),
                       m.getButtons());
          break;
        }
        case vmmipc::InputEvent::MOUSE_POSITION: {
          auto m = input.getMousePosition();
          spdlog::info("input {}: mouse position {},{} display {} buttons {:#x}", n, m.getX(),
                       m.getY(), m.getDisplayId(), m.getButtons());
          break;
        }
        case vmmipc::InputEvent::MOUSE_BUTTON: {
          auto m = input.getMouseButton();
          spdlog::info("input {}: mouse {} {} buttons {:#x}", n,
                       m.getPressed() ? "press" : "release", m.getButton(), m.getButtons());
          break;
        }
        default:
          spdlog::info("input {}: an event kind this guestsim does not know (ignored)", n);
      }
      return std::nullopt;
    }
    default:
      return fmt::format(
          "unknown message type {} from the broker (this guestsim speaks qxl-link "
          "protocol version {})",
          static_cast<unsigned>(root.which()), vmmipc::PROTOCOL_VERSION);
  }
}

void Vmm::checkOpen() const {
  if (!channel_)
    throw VmmError("not connected to a broker");
  if (closed_ || !channel_->isOpen())
    throw LinkClosed(fmt::format("the qxl-link to the broker closed: {}",
                                 closeReason_.empty() ? "the broker went away" : closeReason_));
}

void Vmm::link() {
  checkOpen();
  capnp::MallocMessageBuilder hello;
  hello.initRoot<vmmipc::VmmToBroker>().initHello().setProtocolVersion(vmmipc::PROTOCOL_VERSION);
  channel_->send(hello);
  waitUntil([this] { return helloAnswered_; }, "the broker's hello");

  capnp::MallocMessageBuilder message;
  auto link = message.initRoot<vmmipc::VmmToBroker>().initLink();
  link.setRomSize(options_.romBytes);
  link.setRamSize(options_.ramBytes);
  link.setVramSize(options_.vramBytes);
  // Where the guest's PCI configuration placed the BARs: what the device checks memslots against.
  link.setRamPhysStart(ramPhysStart());
  link.setVramPhysStart(vramPhysStart());
  const int fds[] = {rom_.fd.get(),          ram_.fd.get(),         vram_.fd.get(),
                     commandDoorbell_.get(), cursorDoorbell_.get(), interrupt_.get()};
  if (!channel_->send(message, fds))
    checkOpen();
  spdlog::info("linked: ROM {} KiB, RAM {} MiB at {:#x}, VRAM {} MiB at {:#x}",
               options_.romBytes >> 10, options_.ramBytes >> 20, ramPhysStart(),
               options_.vramBytes >> 20, vramPhysStart());
}

void Vmm::relink(const std::string& socketPath, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    channel_.reset();
    closed_ = false;
    closeReason_.clear();
    helloAnswered_ = false;
    awaitingCompletion_.clear();
    asyncCompleted_ = asyncSent_;
    try {
      connect(socketPath);
      link();
      return;
    } catch (const VmmError& e) {
      // Refused, or accepted and closed: a dying broker's socket can still take a connection
      // while the kernel tears the process down. Either way, the next broker is not there yet.
      if (std::chrono::steady_clock::now() >= deadline)
        throw VmmError(fmt::format("no broker took the link again within {} s: {}",
                                   timeout.count() / 1000.0, e.what()));
    }
    channel_.reset();
    pause(std::chrono::milliseconds(50));
  }
}

void Vmm::ioWrite(uint8_t port, uint8_t value, bool async) {
  checkOpen();
  capnp::MallocMessageBuilder message;
  auto io = message.initRoot<vmmipc::VmmToBroker>().initIoWrite();
  io.setPort(port);
  io.setValue(value);
  io.setAsync(async);
  if (!channel_->send(message))
    checkOpen();
  if (!async)
    return;
  awaitingCompletion_.push_back(port);
  uint64_t ticket = ++asyncSent_;
  waitUntil([this, ticket] { return asyncCompleted_ >= ticket; },
            fmt::format("the broker to complete IO port {} (value {})", port, value));
}

void Vmm::ringCommandDoorbell() {
  signalEventFd(commandDoorbell_, "command doorbell");
}
void Vmm::ringCursorDoorbell() {
  signalEventFd(cursorDoorbell_, "cursor doorbell");
}

void Vmm::waitUntil(const std::function<bool()>& done, std::string_view what,
                    std::chrono::milliseconds timeout) {
  if (done())
    return;
  bool expired = false;
  base::UvHandle<uv_timer_t> watchdog;
  uv_timer_init(loop_, watchdog.get());
  watchdog->data = &expired;
  // uv_stop: libuv (1.44) runs due timers *before* UV_RUN_ONCE's poll, which then blocks until
  // the next timer or descriptor event; a timer that ends the wait must keep that poll from
  // blocking, or the wait lasts until some unrelated event (up to this 30 s watchdog).
  uv_timer_start(
      watchdog.get(),
      [](uv_timer_t* t) {
        *static_cast<bool*>(t->data) = true;
        uv_stop(t->loop);
      },
      static_cast<uint64_t>(timeout.count()), 0);
  while (!done()) {
    if (stop_.requested())
      throw StopRequested();
    if (channel_)
      checkOpen();
    if (expired)
      throw VmmError(
          fmt::format("timed out after {} s waiting for {}; the broker's device did "
                      "not answer (is its QXL device model running?)",
                      timeout.count() / 1000.0, what));
    uv_run(loop_, UV_RUN_ONCE);
  }
}

void Vmm::pause(std::chrono::milliseconds delay) {
  bool fired = false;
  base::UvHandle<uv_timer_t> timer;
  uv_timer_init(loop_, timer.get());
  timer->data = &fired;
  uv_timer_start(
      timer.get(),
      [](uv_timer_t* t) {
        *static_cast<bool*>(t->data) = true;
        uv_stop(t->loop);  // see waitUntil(): the poll after a due timer must not block
      },
      static_cast<uint64_t>(delay.count()), 0);
  waitUntil([&fired] { return fired; }, "a pacing timer", delay + WATCHDOG);
}

void Vmm::serveForever() {
  for (;;) {
    if (stop_.requested())
      throw StopRequested();
    checkOpen();
    uv_run(loop_, UV_RUN_ONCE);
  }
}

}  // namespace spicebox::guestsim
