// Runs in: spicebox-guestsim (developer tool and test peer; unsandboxed). Input: the broker's
// qxl-link messages (ipc/vmm.capnp: hello, ioComplete, input, ping), checked: a wrong protocol
// version or an ioComplete that matches no waiting write ends the run with a clear error.
//
// The VMM half of the guest simulator: it owns the QXL device's memory (ROM, RAM and VRAM BARs
// as sealed memfds, mapped here as the guest's view) and its doorbell and interrupt eventfds,
// links them to the broker over qxl-link, and forwards the driver's IO port writes. The driver is
// straight-line code: it waits by running the uv loop (waitUntil) until a condition holds, with a
// watchdog so that nothing hangs forever.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "base/fd.h"
#include "base/uv-handle.h"
#include "ipc/channel.h"

namespace spicebox::guestsim {

// How long any one wait may take before the run fails (a device that stopped answering).
inline constexpr std::chrono::milliseconds WATCHDOG{30000};

// Where our BARs sit in guest physical address space (the PCI BAR addresses a VMM would assign):
// RAM at 4 GiB, VRAM right after it (page aligned), as sent in qxl-link's Link.
inline constexpr uint64_t RAM_PHYS_START = 0x100000000ull;

struct VmmOptions {
  uint64_t romBytes = 8192;          // QEMU's QXL ROM size
  uint64_t ramBytes = 64ull << 20;   // QEMU's default RAM BAR
  uint64_t vramBytes = 64ull << 20;  // QEMU's default VRAM BAR
};

// A failure the run cannot go on from; main() prints it and exits 1.
class VmmError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The qxl-link closed (the broker went away): with --relink, guestsim links again (Vmm::relink).
class LinkClosed : public VmmError {
 public:
  using VmmError::VmmError;
};
// SIGTERM / SIGINT arrived while waiting: main() finishes the recording and exits 0.
class StopRequested : public std::exception {
 public:
  const char* what() const noexcept override { return "stop requested (SIGTERM/SIGINT)"; }
};

// SIGTERM / SIGINT (and SIGUSR1) watched on the loop: they set a flag the waits check (no work is
// done in the handler). Lives as long as the loop runs.
class StopSignals {
 public:
  explicit StopSignals(uv_loop_t* loop);
  bool requested() const { return requested_; }
  // SIGUSR1: stop submitting now and stay linked, as --until does at a count (tests that decide
  // when the guest is done: tests/fault).
  bool finishRequested() const { return finishRequested_; }

 private:
  bool requested_ = false;
  bool finishRequested_ = false;
  base::UvHandle<uv_signal_t> sigterm_, sigint_, sigusr1_;
};

class Vmm {
 public:
  // Creates and maps the BAR memfds (sealed against shrinking and growing) and the eventfds.
  // Throws base::SystemError when the kernel refuses.
  Vmm(uv_loop_t* loop, VmmOptions options, const StopSignals& stop);
  ~Vmm();
  Vmm(const Vmm&) = delete;
  Vmm& operator=(const Vmm&) = delete;

  // Connects to a broker's --vmm-socket, or takes an already connected SOCK_SEQPACKET socket
  // (--vmm-fd). Throws VmmError with what to do when it fails.
  void connect(const std::string& socketPath);
  void adopt(int fd);
  // hello, waits for the broker's hello, then link with the six descriptors.
  void link();
  // After the link closed (LinkClosed): connects to `socketPath` again, trying every 50 ms for
  // up to `timeout` (a new broker may not be listening yet), and links the same BARs and eventfds:
  // the guest's memory as it is now. Async writes the old broker had not completed are dropped
  // (their waits ended with LinkClosed). Throws VmmError when no broker answered in time.
  void relink(const std::string& socketPath, std::chrono::milliseconds timeout);

  // A guest write to the QXL IO BAR. With `async` the call waits for the broker's ioComplete.
  void ioWrite(uint8_t port, uint8_t value, bool async);
  // The guest wrote QXL_IO_NOTIFY_CMD / QXL_IO_NOTIFY_CURSOR: an ioeventfd in a real VMM.
  void ringCommandDoorbell();
  void ringCursorDoorbell();
  // Called (from the loop) each time the broker signals the interrupt eventfd.
  void setInterruptHandler(std::function<void()> handler) { onInterrupt_ = std::move(handler); }

  // Runs the loop until `done` holds. Throws VmmError when `timeout` passes first ("timed out
  // after 30 s waiting for <what>") or the link closes, StopRequested on SIGTERM / SIGINT.
  void waitUntil(const std::function<bool()>& done, std::string_view what,
                 std::chrono::milliseconds timeout = WATCHDOG);
  // Runs the loop for `delay` (pacing); interrupts are served meanwhile.
  void pause(std::chrono::milliseconds delay);
  // Runs the loop until SIGTERM / SIGINT (then throws StopRequested) or the link closes.
  void serveForever();

  std::span<std::byte> rom() const { return rom_.bytes; }
  std::span<std::byte> ram() const { return ram_.bytes; }
  std::span<std::byte> vram() const { return vram_.bytes; }
  uint64_t ramPhysStart() const { return RAM_PHYS_START; }
  uint64_t vramPhysStart() const;
  uint64_t asyncWrites() const { return asyncSent_; }
  uint64_t inputEvents() const { return inputEvents_; }

 private:
  struct Bar {
    base::Fd fd;
    std::span<std::byte> bytes;
  };
  static Bar makeBar(const char* name, uint64_t size);
  void startChannel(base::Fd socket);
  ipc::Channel::Verdict onMessage(capnp::MessageReader& message, ipc::ReceivedFds& fds);
  void checkOpen() const;

  uv_loop_t* loop_;
  VmmOptions options_;
  Bar rom_, ram_, vram_;
  base::Fd commandDoorbell_, cursorDoorbell_, interrupt_;
  std::unique_ptr<ipc::Channel> channel_;
  std::string closeReason_;
  bool closed_ = false;
  bool helloAnswered_ = false;
  std::deque<uint8_t> awaitingCompletion_;  // ports of async writes, oldest first
  uint64_t asyncSent_ = 0, asyncCompleted_ = 0;
  uint64_t inputEvents_ = 0;
  std::function<void()> onInterrupt_;
  const StopSignals& stop_;
  // Declared after the descriptor it watches, so destroyed (stopped) before it.
  base::UvHandle<uv_poll_t> interruptPoll_;
};

}  // namespace spicebox::guestsim
