// Runs in: broker (privileged). Input: the VMM's qxl-link messages (ipc/vmm.capnp) and the
// descriptors attached to them, hostile: every BAR memfd and eventfd is checked (type, seals,
// size, access mode) before it is mapped or kept (DESIGN.md, trust boundary 6). A VMM at fault
// has its connection closed with a logged reason saying what it must do; the broker keeps
// listening and the VMM may link again.
//
// One VMM at a time: while a connection is open, further connections are accepted and closed at
// once, with the reason logged. The BARs live in a QxlBars owned by the connection; they are
// unmapped when the link ends.
//
// On link a qxl::Device (broker/qxl/device.h) is created on the mapped BARs; this class is its
// DeviceOutput towards the VMM (interrupt eventfd, ioComplete) and polls its doorbells. Batches
// for the renderer go to the owner (Events::sendBatch); the owner hands the renderer's answers
// back through batchDone() / rendererAvailable(). The device is destroyed when the link ends.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "broker/peer-child.h"
#include "broker/qxl/device.h"
#include "ipc/channel.h"

namespace spicebox::broker {

// Bounds on the announced BAR sizes (ipc/vmm.capnp, Link). They bound what one VMM can make the
// broker map (its address space, not its memory: the pages belong to the memfd).
// QEMU's QXL ROM is 8 KiB (QXLRom + the mode list); 64 KiB leaves room for a longer mode list.
inline constexpr uint64_t MAX_ROM_BYTES = 64 * 1024;
// The RAM BAR holds the QXLRam header (rings, about 4 KiB) and the guest's command memory. QEMU
// defaults to 64 MiB; 1 GiB is above any configuration seen in practice.
inline constexpr uint64_t MIN_RAM_BYTES = 64 * 1024;
inline constexpr uint64_t MAX_RAM_BYTES = 1024ull * 1024 * 1024;
// Surfaces. QEMU defaults to 64 MiB (vram64 aside, which spicebox does not support).
inline constexpr uint64_t MAX_VRAM_BYTES = 1024ull * 1024 * 1024;

// Descriptor indices of the `link` message (ipc/vmm.capnp documents the same table).
enum LinkFd : size_t {
  LINK_FD_ROM = 0,
  LINK_FD_RAM = 1,
  LINK_FD_VRAM = 2,
  LINK_FD_COMMAND_DOORBELL = 3,
  LINK_FD_CURSOR_DOORBELL = 4,
  LINK_FD_INTERRUPT = 5,
  LINK_FD_COUNT = 6,
};

// One BAR memfd, mapped MAP_SHARED read-write. Unmapped and closed on destruction. Move-only.
class MappedBar {
 public:
  MappedBar() = default;
  MappedBar(base::Fd fd, void* addr, size_t size) : fd_(std::move(fd)), addr_(addr), size_(size) {}
  MappedBar(MappedBar&& other) noexcept;
  MappedBar& operator=(MappedBar&& other) noexcept;
  MappedBar(const MappedBar&) = delete;
  MappedBar& operator=(const MappedBar&) = delete;
  ~MappedBar();

  // The mapping: guest memory, hostile, may change while read (the renderer parses it; the
  // broker only keeps ring indices).
  std::span<uint8_t> bytes() const { return {static_cast<uint8_t*>(addr_), size_}; }
  int fd() const { return fd_.get(); }
  size_t size() const { return size_; }

 private:
  void unmap();

  base::Fd fd_;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// What a successful link hands the device model.
struct QxlBars {
  MappedBar rom;
  MappedBar ram;
  MappedBar vram;
  base::Fd commandDoorbell;  // eventfd, read by the broker
  base::Fd cursorDoorbell;   // eventfd, read by the broker
  base::Fd interrupt;        // eventfd, written by the broker
};

// Announced sizes of a link message, bytes, and where the guest placed the RAM and VRAM BARs in
// its physical address space.
struct LinkSizes {
  uint64_t rom = 0;
  uint64_t ram = 0;
  uint64_t vram = 0;
  uint64_t ramPhysStart = 0;
  uint64_t vramPhysStart = 0;
};

// Checks the announced sizes and guest physical ranges (page aligned, no wrap, RAM and VRAM do
// not overlap). The refusal says what the VMM must fix.
std::optional<std::string> checkLinkLayout(const LinkSizes& sizes);

// Checks the link's sizes, ranges and descriptors (takes them out of `fds`) and maps the BARs. The
// refusal says what was wrong and what the VMM must do. Separate from VmmLink so each check can
// be read on its own; pure apart from the mmaps.
std::variant<std::unique_ptr<QxlBars>, std::string> checkAndMapLink(const LinkSizes& sizes,
                                                                    ipc::ReceivedFds& fds);

// Name of a QXL IO port ("QXL_IO_NOTIFY_CMD"), or nullptr if `port` is not a QXL_IO_* value.
const char* qxlIoPortName(unsigned port);

class VmmLink : private qxl::DeviceOutput {
 public:
  struct Events {
    // A VMM's link was accepted and its device created (device() is set).
    std::function<void()> onLinked;
    // A connection ended (linked or not). If it was linked, the device is already destroyed: the
    // owner tells the renderer to drop guest memory.
    std::function<void(const std::string& why)> onUnlinked;
    // qxl::DeviceOutput::sendBatch, passed on: hand `items` to the renderer as batch `seq`.
    // False (or unset): no renderer now; the device resends from rendererAvailable().
    std::function<bool(uint64_t seq, std::span<const qxl::WorkItem> items)> sendBatch;
  };
  // Counters, for status and tests.
  struct Stats {
    uint64_t connections = 0;         // accepted and served
    uint64_t refusedConnections = 0;  // closed at once: a VMM was already connected
    uint64_t links = 0;               // link messages accepted
    uint64_t ioWrites = 0;            // ioWrite messages with a known port
    uint64_t unknownIoPorts = 0;      // ioWrite messages with a port that is no QXL_IO_*: ignored
    uint64_t inputs = 0;              // input events sent to the VMM
    uint64_t releasedByEarlierLinks = 0;  // commands released by devices of ended links
  };

  // Listens on `socketPath` (SOCK_SEQPACKET, mode 0600). A stale socket there is replaced;
  // anything else there is an error. Throws base::SystemError / std::runtime_error with a message
  // for the user.
  VmmLink(uv_loop_t* loop, std::string socketPath, Events events);
  // Serves one already connected SOCK_SEQPACKET socket (the built-in guest's end of a
  // socketpair); there is no listener, so once it ends no VMM can link again. `peerName` is for
  // logs.
  VmmLink(uv_loop_t* loop, base::Fd connected, std::string peerName, Events events);
  // Closes the connection and the listener and removes the socket file (if it is still ours).
  ~VmmLink();
  VmmLink(const VmmLink&) = delete;
  VmmLink& operator=(const VmmLink&) = delete;

  bool linked() const;
  // The linked VMM's BARs, or nullptr.
  const QxlBars* bars() const;
  // The linked VMM's device, or nullptr.
  const qxl::Device* device() const;
  // Where the linked guest placed RAM and VRAM (meaningful while linked()).
  const LinkSizes& layout() const;

  // The renderer finished batch `seq`; the owner checked it is the oldest in flight.
  void batchDone(uint64_t seq);
  // A (new) renderer is ready and has the guest memory: the device resends its state.
  void rendererAvailable();
  // A client's input event (checked by the netproxy's peer) for the linked VMM to inject; false
  // when no VMM is linked (the event is dropped).
  bool sendInput(const NetproxyInput& input);
  const Stats& stats() const { return stats_; }
  // Commands released to guests since the broker started, by every link.
  uint64_t released() const {
    return stats_.releasedByEarlierLinks + (device() ? device()->stats().released : 0);
  }
  const std::string& socketPath() const { return socketPath_; }
  // One line for logs and sd_notify STATUS: "vmm linked (ram 64 MiB, vram 64 MiB, 12 commands, 12
  // released)" or "vmm not linked".
  std::string describe() const;

 private:
  // The permit table's states (OpenSSH monitor style): what the VMM may send next.
  enum class Phase { AwaitHello, AwaitLink, Linked };
  struct Connection {
    std::unique_ptr<ipc::Channel> channel;
    Phase phase = Phase::AwaitHello;
    std::unique_ptr<QxlBars> bars;
    LinkSizes layout;
    // Ports of the async ioWrites not completed yet, oldest first: completions must match.
    std::deque<uint8_t> pendingAsync;
    // Declared after bars: destroyed before the BARs are unmapped.
    std::unique_ptr<qxl::Device> device;
    base::UvHandle<uv_poll_t> commandDoorbell;
    base::UvHandle<uv_poll_t> cursorDoorbell;
    base::UvHandle<uv_timer_t> retryTimer;  // runs only while the device has releases waiting
  };

  void listen();
  void onAcceptable();
  ipc::Channel::Verdict onMessage(capnp::MessageReader& message, ipc::ReceivedFds& fds);
  ipc::Channel::Verdict onHello(capnp::MessageReader& message);
  ipc::Channel::Verdict onLink(capnp::MessageReader& message, ipc::ReceivedFds& fds);
  ipc::Channel::Verdict onIoWrite(capnp::MessageReader& message);
  void onClosed(const std::string& reason);
  void adopt(base::Fd socket);
  bool startDevice(std::string& refusal);
  void onDoorbell(qxl::CommandRingKind kind);
  // Starts the retry timer if the device has releases waiting for room in the release ring.
  void armRetry();

  // qxl::DeviceOutput
  void raiseInterrupt() override;
  void completeIo(uint8_t port) override;
  bool sendBatch(uint64_t seq, std::span<const qxl::WorkItem> items) override;

  uv_loop_t* loop_;
  std::string socketPath_;
  Events events_;
  Stats stats_;
  base::Fd listenFd_;
  dev_t socketDev_ = 0;  // identity of the socket file we created, so we remove only ours
  ino_t socketIno_ = 0;
  // Declared after listenFd_, so destroyed before it (epoll stops watching first).
  base::UvHandle<uv_poll_t> listenPoll_;
  std::unique_ptr<Connection> connection_;
};

}  // namespace spicebox::broker
