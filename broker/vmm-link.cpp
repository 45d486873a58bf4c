#include "broker/vmm-link.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <spice/qxl_dev.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "base/assert.h"
#include "base/syscall.h"
#include "ipc/vmm.capnp.h"

namespace spicebox::broker {

namespace {

using ipc::vmm::BrokerToVmm;
using ipc::vmm::VmmToBroker;

static_assert(sizeof(QXLRam) <= MIN_RAM_BYTES, "the RAM BAR minimum must hold the QXLRam header");
static_assert(LINK_FD_COUNT <= 8, "a link must fit ipc::MAX_FDS_PER_MESSAGE");

constexpr std::array<const char*, 3> BAR_NAMES = {"ROM", "RAM", "VRAM"};
constexpr std::array<const char*, 3> EVENTFD_NAMES = {"command doorbell", "cursor doorbell",
                                                      "interrupt"};
// What /proc/self/fd/N links to for an eventfd (fs/eventfd.c: anon_inode_getfile("[eventfd]")).
constexpr std::string_view EVENTFD_LINK = "anon_inode:[eventfd]";

// How often releases that found the guest's release ring full are retried. The guest consumes its
// release ring without telling the device, so this is polled; the timer runs only while something
// waits. 5 ms is well below a frame and costs nothing while idle.
constexpr uint64_t RELEASE_RETRY_MS = 5;

// Pending connections the kernel keeps for us: one VMM is expected; a few more are refused.
constexpr int LISTEN_BACKLOG = 4;

constexpr std::array<const char*, QXL_IO_RANGE_SIZE> IO_PORT_NAMES = {
    "QXL_IO_NOTIFY_CMD",
    "QXL_IO_NOTIFY_CURSOR",
    "QXL_IO_UPDATE_AREA",
    "QXL_IO_UPDATE_IRQ",
    "QXL_IO_NOTIFY_OOM",
    "QXL_IO_RESET",
    "QXL_IO_SET_MODE",
    "QXL_IO_LOG",
    "QXL_IO_MEMSLOT_ADD",
    "QXL_IO_MEMSLOT_DEL",
    "QXL_IO_DETACH_PRIMARY",
    "QXL_IO_ATTACH_PRIMARY",
    "QXL_IO_CREATE_PRIMARY",
    "QXL_IO_DESTROY_PRIMARY",
    "QXL_IO_DESTROY_SURFACE_WAIT",
    "QXL_IO_DESTROY_ALL_SURFACES",
    "QXL_IO_UPDATE_AREA_ASYNC",
    "QXL_IO_MEMSLOT_ADD_ASYNC",
    "QXL_IO_CREATE_PRIMARY_ASYNC",
    "QXL_IO_DESTROY_PRIMARY_ASYNC",
    "QXL_IO_DESTROY_SURFACE_ASYNC",
    "QXL_IO_DESTROY_ALL_SURFACES_ASYNC",
    "QXL_IO_FLUSH_SURFACES_ASYNC",
    "QXL_IO_FLUSH_RELEASE",
    // QXL_IO_MONITORS_CONFIG_ASYNC is the last; the array size fails the build if one is added.
    "QXL_IO_MONITORS_CONFIG_ASYNC",
};

uint64_t pageSize() {
  static const uint64_t size = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::string humanBytes(uint64_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
    return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= 1024 && bytes % 1024 == 0)
    return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} bytes", bytes);
}

const char* describeFileType(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFIFO:
      return "pipe";
    case S_IFSOCK:
      return "socket";
    case S_IFDIR:
      return "directory";
    case S_IFCHR:
      return "character device";
    case S_IFBLK:
      return "block device";
    case S_IFLNK:
      return "symbolic link";
    case S_IFREG:
      return "regular file";
    default:
      return "descriptor of unknown type (anonymous inode?)";
  }
}

using Refusal = std::optional<std::string>;

Refusal checkAnnouncedSize(const char* name, uint64_t size, uint64_t min, uint64_t max) {
  if (size == 0)
    return fmt::format(
        "{} BAR announced size is 0; the VMM must announce the size of the memfd "
        "it sends",
        name);
  if (size % pageSize() != 0)
    return fmt::format(
        "{} BAR announced size {} bytes is not a multiple of the page size ({}); "
        "the VMM must round BAR sizes up to whole pages",
        name, size, pageSize());
  if (size < min || size > max)
    return fmt::format(
        "{} BAR announced size {} bytes is outside the permitted {} .. {}; the "
        "VMM must configure a BAR size in that range",
        name, size, humanBytes(min), humanBytes(max));
  return std::nullopt;
}

// A BAR descriptor: a sealable regular file (memfd), read-write, sealed against shrinking (so
// the mapping can never SIGBUS the broker), not sealed against writing, large enough.
Refusal checkBarFd(const char* name, size_t index, int fd, uint64_t announced, struct stat& st) {
  if (::fstat(fd, &st) != 0)
    return fmt::format("{} BAR (descriptor {}): fstat failed: {}", name, index,
                       std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    return fmt::format(
        "{} BAR (descriptor {}) is a {}, not a memfd; the VMM must pass a "
        "memfd_create() descriptor for each BAR",
        name, index, describeFileType(st.st_mode));
  int flags = ::fcntl(fd, F_GETFL);
  if (flags == -1 || (flags & O_ACCMODE) != O_RDWR)
    return fmt::format(
        "{} BAR memfd (descriptor {}) is not open read-write; the device writes "
        "the BARs, so the VMM must pass the read-write memfd_create() descriptor",
        name, index);
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals == -1)
    return fmt::format(
        "{} BAR (descriptor {}) cannot be sealed (F_GET_SEALS: {}); the VMM must "
        "create BAR memfds with MFD_ALLOW_SEALING and seal them with F_SEAL_SHRINK",
        name, index, std::strerror(errno));
  // A memfd made without MFD_ALLOW_SEALING reports F_SEAL_SEAL: it can never be sealed.
  if (!(seals & F_SEAL_SHRINK) && (seals & F_SEAL_SEAL))
    return fmt::format(
        "{} BAR memfd is not sealed against shrinking (F_SEAL_SHRINK) and can no "
        "longer be (F_SEAL_SEAL is set: made without MFD_ALLOW_SEALING?); the VMM "
        "must create BAR memfds with MFD_ALLOW_SEALING and seal them with "
        "F_SEAL_SHRINK before handing them over",
        name);
  if (!(seals & F_SEAL_SHRINK))
    return fmt::format(
        "{} BAR memfd is not sealed against shrinking (F_SEAL_SHRINK); the VMM "
        "must seal BAR memfds before handing them over",
        name);
  if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
    return fmt::format(
        "{} BAR memfd is sealed against writing (F_SEAL_WRITE or "
        "F_SEAL_FUTURE_WRITE); the device writes the BARs, so the VMM must seal "
        "them with F_SEAL_SHRINK only",
        name);
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) < announced)
    return fmt::format(
        "{} BAR memfd holds {} bytes, less than the {} announced; the VMM must "
        "size the memfd (ftruncate) to the announced size before sealing it",
        name, st.st_size, announced);
  return std::nullopt;
}

Refusal checkEventFd(const char* name, size_t index, int fd) {
  std::string path = fmt::format("/proc/self/fd/{}", fd);
  char target[256];
  ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
  if (n < 0)
    return fmt::format("{} (descriptor {}): cannot tell what it is ({}: {})", name, index, path,
                       std::strerror(errno));
  std::string_view what(target, static_cast<size_t>(n));
  if (what != EVENTFD_LINK)
    return fmt::format(
        "{} (descriptor {}) is {}, not an eventfd; the VMM must pass eventfd() "
        "descriptors for the doorbells and the interrupt",
        name, index, what);
  return std::nullopt;
}

}  // namespace

MappedBar::MappedBar(MappedBar&& other) noexcept
    : fd_(std::move(other.fd_)),
      addr_(std::exchange(other.addr_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedBar& MappedBar::operator=(MappedBar&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedBar::~MappedBar() {
  unmap();
}

void MappedBar::unmap() {
  if (addr_)
    ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

const char* qxlIoPortName(unsigned port) {
  return port < IO_PORT_NAMES.size() ? IO_PORT_NAMES[port] : nullptr;
}

std::optional<std::string> checkLinkLayout(const LinkSizes& sizes) {
  const std::array<uint64_t, 3> announced = {sizes.rom, sizes.ram, sizes.vram};
  const std::array<uint64_t, 3> mins = {pageSize(), MIN_RAM_BYTES, pageSize()};
  const std::array<uint64_t, 3> maxes = {MAX_ROM_BYTES, MAX_RAM_BYTES, MAX_VRAM_BYTES};
  for (size_t i = 0; i < 3; ++i) {
    if (auto refusal = checkAnnouncedSize(BAR_NAMES[i], announced[i], mins[i], maxes[i]))
      return refusal;
  }
  // Where the guest placed RAM and VRAM: memslot ranges are checked against these, so they must
  // be real BAR placements (page aligned, inside the 64-bit space, not on top of each other).
  const std::array<uint64_t, 2> starts = {sizes.ramPhysStart, sizes.vramPhysStart};
  const std::array<uint64_t, 2> lengths = {sizes.ram, sizes.vram};
  for (size_t i = 0; i < 2; ++i) {
    const char* name = BAR_NAMES[i + 1];
    if (starts[i] % pageSize() != 0)
      return fmt::format(
          "{} BAR guest physical start {:#x} is not page aligned ({} bytes); the VMM must send "
          "the address the guest's PCI configuration gave the BAR",
          name, starts[i], pageSize());
    if (lengths[i] > UINT64_MAX - starts[i])
      return fmt::format(
          "{} BAR guest physical range {:#x} + {} bytes wraps past the end of the 64-bit address "
          "space; the VMM must send the address the guest's PCI configuration gave the BAR",
          name, starts[i], lengths[i]);
  }
  // Both ranges are non-empty and do not wrap: they overlap iff each starts before the other ends.
  if (sizes.ramPhysStart < sizes.vramPhysStart + sizes.vram &&
      sizes.vramPhysStart < sizes.ramPhysStart + sizes.ram)
    return fmt::format(
        "RAM BAR at guest physical {:#x} ({}) and VRAM BAR at {:#x} ({}) overlap; the VMM must "
        "send the distinct addresses the guest's PCI configuration gave the two BARs",
        sizes.ramPhysStart, humanBytes(sizes.ram), sizes.vramPhysStart, humanBytes(sizes.vram));
  return std::nullopt;
}

std::variant<std::unique_ptr<QxlBars>, std::string> checkAndMapLink(const LinkSizes& sizes,
                                                                    ipc::ReceivedFds& fds) {
  if (fds.size() < LINK_FD_COUNT)
    return fmt::format(
        "link carries {} descriptors, {} are required: the ROM, RAM and VRAM "
        "memfds, then the command doorbell, cursor doorbell and interrupt "
        "eventfds, in that order",
        fds.size(), static_cast<size_t>(LINK_FD_COUNT));
  if (auto refusal = checkLinkLayout(sizes))
    return *refusal;
  const std::array<uint64_t, 3> announced = {sizes.rom, sizes.ram, sizes.vram};

  std::array<base::Fd, 3> barFds;
  std::array<struct stat, 3> stats{};
  for (size_t i = 0; i < 3; ++i) {
    barFds[i] = fds.take(LINK_FD_ROM + i);
    if (auto refusal =
            checkBarFd(BAR_NAMES[i], LINK_FD_ROM + i, barFds[i].get(), announced[i], stats[i]))
      return *refusal;
  }
  // One memfd passed as two BARs would let the guest rewrite one BAR through the other.
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = i + 1; j < 3; ++j) {
      if (stats[i].st_dev == stats[j].st_dev && stats[i].st_ino == stats[j].st_ino)
        return fmt::format(
            "the {} and {} BARs are the same memfd; the VMM must pass one memfd "
            "per BAR",
            BAR_NAMES[i], BAR_NAMES[j]);
    }
  }

  std::array<base::Fd, 3> eventFds;
  for (size_t i = 0; i < 3; ++i) {
    eventFds[i] = fds.take(LINK_FD_COMMAND_DOORBELL + i);
    if (auto refusal =
            checkEventFd(EVENTFD_NAMES[i], LINK_FD_COMMAND_DOORBELL + i, eventFds[i].get()))
      return *refusal;
  }
  // The interrupt is written by the broker's loop, which must never block: non-blocking, and
  // raiseInterrupt() also polls for POLLOUT first. The flag is shared with the VMM's copy (one
  // open file description), which is what a VMM that reads it non-blocking wants anyway.
  // TODO(security): a hostile VMM can clear O_NONBLOCK again and race a full counter in between
  // our poll and our write; an eventfd offers no per-call MSG_DONTWAIT.
  {
    const int fd = eventFds[2].get();
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags == -1 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1)
      return fmt::format("interrupt (descriptor {}): cannot make it non-blocking: {}",
                         static_cast<size_t>(LINK_FD_INTERRUPT), std::strerror(errno));
  }

  auto bars = std::make_unique<QxlBars>();
  std::array<MappedBar*, 3> mapped = {&bars->rom, &bars->ram, &bars->vram};
  for (size_t i = 0; i < 3; ++i) {
    // The whole announced size, shared: the guest's writes through the VMM's mapping are seen
    // here. The seal against shrinking means no page of it can disappear (no SIGBUS).
    void* addr =
        ::mmap(nullptr, announced[i], PROT_READ | PROT_WRITE, MAP_SHARED, barFds[i].get(), 0);
    if (addr == MAP_FAILED)
      return fmt::format("cannot map the {} BAR ({} bytes): {}", BAR_NAMES[i], announced[i],
                         std::strerror(errno));
    *mapped[i] = MappedBar(std::move(barFds[i]), addr, announced[i]);
  }
  bars->commandDoorbell = std::move(eventFds[0]);
  bars->cursorDoorbell = std::move(eventFds[1]);
  bars->interrupt = std::move(eventFds[2]);
  return bars;
}

VmmLink::VmmLink(uv_loop_t* loop, std::string socketPath, Events events)
    : loop_(loop), socketPath_(std::move(socketPath)), events_(std::move(events)) {
  listen();
}

VmmLink::VmmLink(uv_loop_t* loop, base::Fd connected, std::string peerName, Events events)
    : loop_(loop), events_(std::move(events)) {
  spdlog::info("serving the {} on an inherited connection", peerName);
  ++stats_.connections;
  adopt(std::move(connected));
}

VmmLink::~VmmLink() {
  connection_.reset();  // outside the channel's callbacks: its close handler is cancelled
  listenPoll_.close();
  listenFd_.reset();
  if (socketPath_.empty())
    return;  // an adopted connection: no socket file of ours
  struct stat st;
  if (::lstat(socketPath_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == socketDev_ &&
      st.st_ino == socketIno_)
    ::unlink(socketPath_.c_str());
}

void VmmLink::listen() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socketPath_.empty() || socketPath_.size() >= sizeof addr.sun_path)
    throw std::runtime_error(
        fmt::format("--vmm-socket path '{}' is {} bytes; a unix socket path must be 1 to {} bytes",
                    socketPath_, socketPath_.size(), sizeof addr.sun_path - 1));
  std::memcpy(addr.sun_path, socketPath_.c_str(), socketPath_.size());

  // A socket file left by a broker that did not exit cleanly is replaced; anything else is
  // somebody's file, which we must not remove.
  struct stat st;
  if (::lstat(socketPath_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      throw std::runtime_error(fmt::format(
          "--vmm-socket {} exists and is a {}, not a socket; refusing to replace it. Remove it "
          "or choose another path",
          socketPath_, describeFileType(st.st_mode)));
    spdlog::info("replacing the stale socket {}", socketPath_);
    SB_SYSCALL(::unlink(socketPath_.c_str()), "removing the stale VMM socket " + socketPath_);
  } else if (errno != ENOENT) {
    base::throwSystemError(errno, "lstat", "checking the VMM socket path " + socketPath_);
  }

  listenFd_ = base::Fd(SB_SYSCALL(
      ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), "the VMM socket"));
  // Mode 0600 from the start (umask applies to the socket file bind creates): only the broker's
  // user may connect, and there is no window in which anyone else can.
  mode_t oldMask = ::umask(0177);
  int rc = ::bind(listenFd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::umask(oldMask);
  if (rc != 0)
    base::throwSystemError(err, "bind", "the VMM socket " + socketPath_);
  SB_SYSCALL(::lstat(socketPath_.c_str(), &st), "the VMM socket " + socketPath_);
  socketDev_ = st.st_dev;
  socketIno_ = st.st_ino;
  SB_SYSCALL(::listen(listenFd_.get(), LISTEN_BACKLOG), "the VMM socket " + socketPath_);

  if (int e = uv_poll_init(loop_, listenPoll_.get(), listenFd_.get()); e != 0)
    throw base::SystemError(-e, "polling the VMM socket");
  listenPoll_->data = this;
  int e = uv_poll_start(listenPoll_.get(), UV_READABLE, [](uv_poll_t* handle, int, int) {
    if (handle->data)
      static_cast<VmmLink*>(handle->data)->onAcceptable();
  });
  if (e != 0)
    throw base::SystemError(-e, "polling the VMM socket");
  spdlog::info("waiting for a VMM on {}", socketPath_);
}

void VmmLink::onAcceptable() {
  for (;;) {
    int fd = ::accept4(listenFd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        // TODO(cleanup): on EMFILE the listener stays readable and this repeats each iteration.
        spdlog::error("accepting a VMM connection on {}: {}", socketPath_, std::strerror(errno));
      return;
    }
    base::Fd socket(fd);
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
      cred.pid = -1;
    if (connection_) {
      ++stats_.refusedConnections;
      spdlog::warn(
          "refused a VMM connection (pid {}): a VMM is already {} (one VMM per broker); "
          "the first VMM must disconnect before another can link",
          cred.pid, connection_->phase == Phase::Linked ? "linked" : "connected");
      continue;  // `socket` closes: the peer sees the connection end
    }
    ++stats_.connections;
    spdlog::info("VMM connected (pid {}, uid {})", cred.pid, cred.uid);
    adopt(std::move(socket));
  }
}

void VmmLink::adopt(base::Fd socket) {
  SB_ASSERT(!connection_);
  connection_ = std::make_unique<Connection>();
  connection_->channel = std::make_unique<ipc::Channel>(
      loop_, std::move(socket), "vmm",
      [this](capnp::MessageReader& message, ipc::ReceivedFds& fds) {
        return onMessage(message, fds);
      },
      [this](const std::string& reason) { onClosed(reason); });
}

ipc::Channel::Verdict VmmLink::onMessage(capnp::MessageReader& message, ipc::ReceivedFds& fds) {
  SB_ASSERT(connection_);
  auto root = message.getRoot<VmmToBroker>();
  const Phase phase = connection_->phase;
  switch (root.which()) {
    case VmmToBroker::HELLO:
      if (phase != Phase::AwaitHello)
        return "hello sent twice; the VMM sends hello once, first";
      return onHello(message);
    case VmmToBroker::PONG:
      if (phase == Phase::AwaitHello)
        return "pong before hello; the VMM must send hello first";
      return std::nullopt;  // the broker does not ping the VMM yet
    case VmmToBroker::LINK:
      if (phase == Phase::AwaitHello)
        return "link before hello; the VMM must send hello (qxl-link protocol version " +
               std::to_string(ipc::vmm::PROTOCOL_VERSION) + ") first";
      if (phase == Phase::Linked)
        return "link sent twice on one connection; to link again the VMM must close the "
               "connection and connect again";
      return onLink(message, fds);
    case VmmToBroker::IO_WRITE:
      if (phase != Phase::Linked)
        return "ioWrite before link; the VMM must send link (the BARs) first";
      return onIoWrite(message);
  }
  return fmt::format("unknown message type {} (this broker speaks qxl-link protocol version {})",
                     static_cast<unsigned>(root.which()), ipc::vmm::PROTOCOL_VERSION);
}

ipc::Channel::Verdict VmmLink::onHello(capnp::MessageReader& message) {
  uint32_t version = message.getRoot<VmmToBroker>().getHello().getProtocolVersion();
  if (version != ipc::vmm::PROTOCOL_VERSION)
    return fmt::format(
        "VMM speaks qxl-link protocol version {}, this broker speaks version {}; "
        "install a VMM adapter and a broker of the same version",
        version, ipc::vmm::PROTOCOL_VERSION);
  connection_->phase = Phase::AwaitLink;
  capnp::MallocMessageBuilder answer;
  answer.initRoot<BrokerToVmm>().initHello().setProtocolVersion(ipc::vmm::PROTOCOL_VERSION);
  connection_->channel->send(answer);  // a failure closes the channel, which reports why
  return std::nullopt;
}

ipc::Channel::Verdict VmmLink::onLink(capnp::MessageReader& message, ipc::ReceivedFds& fds) {
  auto link = message.getRoot<VmmToBroker>().getLink();
  LinkSizes sizes{link.getRomSize(), link.getRamSize(), link.getVramSize(), link.getRamPhysStart(),
                  link.getVramPhysStart()};
  auto result = checkAndMapLink(sizes, fds);
  if (auto* refusal = std::get_if<std::string>(&result))
    return "link refused: " + *refusal;
  connection_->bars = std::move(std::get<std::unique_ptr<QxlBars>>(result));
  connection_->layout = sizes;
  std::string refusal;
  if (!startDevice(refusal))
    return "link refused: " + refusal;
  connection_->phase = Phase::Linked;
  ++stats_.links;
  spdlog::info("VMM linked: ROM {}, RAM {} at {:#x}, VRAM {} at {:#x}", humanBytes(sizes.rom),
               humanBytes(sizes.ram), sizes.ramPhysStart, humanBytes(sizes.vram),
               sizes.vramPhysStart);
  if (events_.onLinked)
    events_.onLinked();
  return std::nullopt;
}

ipc::Channel::Verdict VmmLink::onIoWrite(capnp::MessageReader& message) {
  auto io = message.getRoot<VmmToBroker>().getIoWrite();
  const unsigned port = io.getPort();
  if (const char* name = qxlIoPortName(port)) {
    ++stats_.ioWrites;
    spdlog::trace("VMM ioWrite {} value {}{}", name, io.getValue(),
                  io.getAsync() ? " (async)" : "");
  } else {
    // The guest picks the port, the VMM only forwards it: like a real device (and QEMU's "guest
    // bug" policy), ignore it and count it rather than end the link. Logged at 1, 2, 4, 8...
    uint64_t n = ++stats_.unknownIoPorts;
    if ((n & (n - 1)) == 0)
      spdlog::warn("guest wrote to IO port {} which is no QXL_IO_* port; ignored ({} so far)", port,
                   n);
  }
  // Every port goes to the device, unknown ones included: completions are the device's, in the
  // order of the writes, and an async write to an ignored port must still be answered in its
  // turn (a VMM never waits for a completion that cannot come).
  if (io.getAsync())
    connection_->pendingAsync.push_back(static_cast<uint8_t>(port));
  connection_->device->ioWrite(static_cast<uint8_t>(port), io.getValue(), io.getAsync());
  armRetry();
  return std::nullopt;
}

bool VmmLink::startDevice(std::string& refusal) {
  Connection& c = *connection_;
  auto asBytes = [](const MappedBar& bar) {
    auto b = bar.bytes();
    return std::span<std::byte>(reinterpret_cast<std::byte*>(b.data()), b.size());
  };
  qxl::DeviceBars bars{asBytes(c.bars->rom), asBytes(c.bars->ram), asBytes(c.bars->vram),
                       c.layout.ramPhysStart, c.layout.vramPhysStart};
  auto created = qxl::Device::create(bars, *this);
  if (auto* error = std::get_if<qxl::DeviceSetupError>(&created)) {
    refusal = fmt::format(
        "the QXL device cannot be set up on these BARs: {}; the VMM must "
        "announce larger BARs",
        qxl::describe(*error));
    return false;
  }
  c.device = std::move(std::get<std::unique_ptr<qxl::Device>>(created));

  // Doorbells: the VMM's ioeventfds, readable when the guest wrote QXL_IO_NOTIFY_CMD / _CURSOR.
  // uv_poll_init makes them non-blocking; a VMM that clears the flag again can at worst make us
  // read a counter that is already non-zero (we read only when poll said readable).
  struct Bell {
    base::UvHandle<uv_poll_t>* handle;
    int fd;
    qxl::CommandRingKind kind;
  };
  const Bell bells[] = {
      {&c.commandDoorbell, c.bars->commandDoorbell.get(), qxl::CommandRingKind::Display},
      {&c.cursorDoorbell, c.bars->cursorDoorbell.get(), qxl::CommandRingKind::Cursor}};
  for (const Bell& bell : bells) {
    if (int e = uv_poll_init(loop_, bell.handle->get(), bell.fd); e != 0) {
      refusal = fmt::format("cannot watch a doorbell eventfd: {}", uv_strerror(e));
      return false;
    }
    (*bell.handle)->data = this;
    auto onReadable = bell.kind == qxl::CommandRingKind::Display
                          ? +[](uv_poll_t* h, int, int) {
                              if (h->data)
                                static_cast<VmmLink*>(h->data)->onDoorbell(
                                    qxl::CommandRingKind::Display);
                            }
                          : +[](uv_poll_t* h, int, int) {
                              if (h->data)
                                static_cast<VmmLink*>(h->data)->onDoorbell(
                                    qxl::CommandRingKind::Cursor);
                            };
    if (int e = uv_poll_start(bell.handle->get(), UV_READABLE, onReadable); e != 0) {
      refusal = fmt::format("cannot watch a doorbell eventfd: {}", uv_strerror(e));
      return false;
    }
  }
  uv_timer_init(loop_, c.retryTimer.get());
  c.retryTimer->data = this;
  return true;
}

void VmmLink::onDoorbell(qxl::CommandRingKind kind) {
  if (!linked())
    return;
  const int fd = kind == qxl::CommandRingKind::Display ? connection_->bars->commandDoorbell.get()
                                                       : connection_->bars->cursorDoorbell.get();
  // Reset the counter; how many kicks there were does not matter, the ring says what is there.
  uint64_t counter = 0;
  ssize_t n = ::read(fd, &counter, sizeof counter);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    connection_->channel->close(
        fmt::format("reading a doorbell eventfd failed: {}", std::strerror(errno)));
    return;
  }
  connection_->device->doorbell(kind);
  armRetry();
}

void VmmLink::armRetry() {
  if (!linked() || uv_is_active(reinterpret_cast<uv_handle_t*>(connection_->retryTimer.get())))
    return;
  if (!connection_->device->retryPending())
    return;
  uv_timer_start(
      connection_->retryTimer.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<VmmLink*>(t->data);
        if (!self->linked() || !self->connection_->device->retryPending())
          uv_timer_stop(t);
      },
      RELEASE_RETRY_MS, RELEASE_RETRY_MS);
}

void VmmLink::batchDone(uint64_t seq) {
  if (!linked())
    return;
  connection_->device->batchDone(seq);
  armRetry();
}

void VmmLink::rendererAvailable() {
  if (!linked())
    return;
  connection_->device->rendererAvailable();
  armRetry();
}

void VmmLink::raiseInterrupt() {
  SB_ASSERT(connection_ && connection_->bars);
  const int fd = connection_->bars->interrupt.get();
  // Never block the broker's loop: a full counter (POLLOUT not set) already signals the VMM.
  pollfd p{fd, POLLOUT, 0};
  if (::poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT))
    return;
  const uint64_t one = 1;
  if (::write(fd, &one, sizeof one) < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    // Deferred close: the device is mid-call; the close handler tears it down later.
    connection_->channel->close(
        fmt::format("signalling the interrupt eventfd failed: {}", std::strerror(errno)));
  }
}

void VmmLink::completeIo(uint8_t port) {
  SB_ASSERT(connection_);
  // In order, except for a write the device refuses at once because the guest floods it with
  // writes (device.cpp: MAX_PENDING_IO): that one is the newest.
  auto& pending = connection_->pendingAsync;
  if (!pending.empty() && pending.front() == port) {
    pending.pop_front();
  } else {
    SB_ASSERT(!pending.empty() && pending.back() == port,
              "the device completed IO port {} that no async write is waiting for",
              static_cast<unsigned>(port));
    pending.pop_back();
  }
  capnp::MallocMessageBuilder answer;
  answer.initRoot<BrokerToVmm>().initIoComplete().setPort(port);
  connection_->channel->send(answer);  // a failure closes the channel, which reports why
}

bool VmmLink::sendInput(const NetproxyInput& input) {
  if (!connection_ || connection_->phase != Phase::Linked)
    return false;
  capnp::MallocMessageBuilder message;
  auto event = message.initRoot<BrokerToVmm>().initInput();
  if (const auto* key = std::get_if<NetproxyKey>(&input)) {
    if (key->down)
      event.setKeyDown(key->scancode);
    else
      event.setKeyUp(key->scancode);
  } else if (const auto* m = std::get_if<NetproxyMouseMotion>(&input)) {
    auto out = event.initMouseMotion();
    out.setDx(m->dx);
    out.setDy(m->dy);
    out.setButtons(m->buttons);
  } else if (const auto* p = std::get_if<NetproxyMousePosition>(&input)) {
    auto out = event.initMousePosition();
    out.setX(p->x);
    out.setY(p->y);
    out.setDisplayId(p->displayId);
    out.setButtons(p->buttons);
  } else {
    const auto& b = std::get<NetproxyMouseButton>(input);
    auto out = event.initMouseButton();
    out.setButton(b.button);
    out.setPressed(b.pressed);
    out.setButtons(b.buttons);
  }
  ++stats_.inputs;
  return connection_->channel->send(message);  // a failure closes the channel, which says why
}

bool VmmLink::sendBatch(uint64_t seq, std::span<const qxl::WorkItem> items) {
  return events_.sendBatch ? events_.sendBatch(seq, items) : false;
}

void VmmLink::onClosed(const std::string& closeReason) {
  SB_ASSERT(connection_);
  const std::string reason = closeReason;  // may live in the channel destroyed below
  const bool wasLinked = connection_->phase == Phase::Linked;
  if (connection_->device)
    stats_.releasedByEarlierLinks += connection_->device->stats().released;
  connection_.reset();  // from the close handler: permitted (ipc/channel.h); unmaps the BARs
  if (wasLinked && socketPath_.empty())
    spdlog::info("VMM unlinked: {}; no other VMM can link (it was the built-in guest)", reason);
  else if (wasLinked)
    spdlog::info("VMM unlinked: {}; waiting for a VMM on {}", reason, socketPath_);
  else
    spdlog::info("VMM connection ended before linking: {}", reason);
  if (events_.onUnlinked)
    events_.onUnlinked(reason);
}

bool VmmLink::linked() const {
  return connection_ && connection_->phase == Phase::Linked;
}

const QxlBars* VmmLink::bars() const {
  return linked() ? connection_->bars.get() : nullptr;
}

const qxl::Device* VmmLink::device() const {
  return linked() ? connection_->device.get() : nullptr;
}

const LinkSizes& VmmLink::layout() const {
  static const LinkSizes none;
  return linked() ? connection_->layout : none;
}

std::string VmmLink::describe() const {
  if (const QxlBars* b = bars()) {
    const auto& s = connection_->device->stats();
    return fmt::format("vmm linked (ram {}, vram {}, {} commands, {} released)",
                       humanBytes(b->ram.size()), humanBytes(b->vram.size()),
                       s.commands + s.cursorCommands, s.released);
  }
  return connection_ ? "vmm connected, not linked" : "vmm not linked";
}

}  // namespace spicebox::broker
