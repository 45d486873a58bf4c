// Runs in: SPICE clients (spicebox's tests, spicebox-view, spicebox-latency). Input: a target
// typed by a user (parsed and refused with a reason) and everything a SPICE server sends,
// untrusted: reads are bounded by the caller's buffer, descriptors passed with SCM_RIGHTS are
// received close-on-exec into owned base::Fd objects (closed when unused), and a read whose
// control data was truncated is an error, never a silently lost descriptor.
//
// Where a server listens and a connected stream socket whose every wait has a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"
#include "client/wire.h"

namespace spicebox::client {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
// An error, or nothing: what a failed step says went wrong.
using Error = std::optional<std::string>;

// Where a server listens. Accepted forms: "HOST:PORT", "tcp:HOST:PORT" ("[::1]:5900" for IPv6),
// "unix:PATH", and remote-viewer's URIs "spice://HOST:PORT", "spice://HOST?port=PORT",
// "spice+unix:///PATH". Hosts are numeric addresses (no name resolution), except "localhost".
struct Target {
  enum class Kind { Tcp, Unix } kind = Kind::Tcp;
  std::string host;
  uint16_t port = 0;
  std::string path;

  static std::variant<Target, std::string> parse(const std::string& text);
  std::string describe() const;
};

// Descriptors one read may bring: more than a server may legitimately send at once (one per
// message, and a client keeps at most Channel::MAX_PENDING_FDS unconsumed), so a read that
// brings more finds MSG_CTRUNC and fails instead of growing.
constexpr size_t MAX_FDS_PER_READ = 4;

// A connected stream socket, non-blocking underneath; every wait is bounded by a deadline.
class Socket {
 public:
  static std::variant<Socket, std::string> connect(const Target& target, Deadline deadline);
  explicit Socket(base::Fd fd) : fd_(std::move(fd)) {}

  int fd() const { return fd_.get(); }
  // Sends all of `data`, waiting while the socket is full.
  Error sendAll(std::span<const uint8_t> data, Deadline deadline);
  // Reads exactly `n` bytes.
  std::variant<Bytes, std::string> readExact(size_t n, Deadline deadline);
  // Reads what is available without waiting (up to `max` bytes); empty when nothing is there.
  // An error for EOF or a socket error.
  std::variant<Bytes, std::string> readAvailable(size_t max);

  struct Received {
    size_t bytes = 0;           // bytes written to the buffer; 0: nothing was there
    std::vector<base::Fd> fds;  // descriptors that came with them (SCM_RIGHTS), in order
  };
  // recvmsg of what is available into `buffer`, without waiting, keeping the descriptors the
  // server attached (close-on-exec). An error for EOF, a socket error, truncated control data
  // (more than MAX_FDS_PER_READ descriptors) or ancillary data other than SCM_RIGHTS.
  std::variant<Received, std::string> receiveAvailable(std::span<uint8_t> buffer);

  enum class Closed { Eof, Reset, Timeout };
  // Waits for the server to close: discards what it sends until EOF or a reset, or the deadline.
  Closed awaitClose(Deadline deadline);

 private:
  base::Fd fd_;
};

// Milliseconds left until `deadline`, for poll(); 0 once it passed.
int msLeft(Deadline deadline);
// Waits for `events` on `fd`; false on timeout.
bool waitFor(int fd, short events, Deadline deadline);

}  // namespace spicebox::client
