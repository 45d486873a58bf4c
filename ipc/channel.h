// Runs in: every process. One Cap'n Proto message per SOCK_SEQPACKET datagram on a unix socket,
// descriptors attached with SCM_RIGHTS, driven by a libuv loop (uv_poll: uv_write2 cannot send
// memfds). Input: whatever the peer sends, hostile: bad framing, oversized datagrams, too many
// descriptors, messages that fail validation each close the channel with a logged reason.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <uv.h>

#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/uv-handle.h"

namespace spicebox::ipc {

// A connected SOCK_SEQPACKET socket pair, both ends O_CLOEXEC and non-blocking.
std::pair<base::Fd, base::Fd> socketPair();

// Descriptors received with one message. The handler moves out each descriptor the message type
// calls for (take()); any left over when the handler returns mean the peer attached more than
// the message allows, and the channel is closed. Whatever is not taken is closed, never leaked.
class ReceivedFds {
 public:
  explicit ReceivedFds(std::vector<base::Fd> fds) : fds_(std::move(fds)) {}
  size_t size() const { return fds_.size(); }
  size_t remaining() const;
  // The i-th descriptor of the message, or an empty Fd if there is none or it was taken already.
  base::Fd take(size_t i);

 private:
  std::vector<base::Fd> fds_;
};

class Channel {
 public:
  // Result of handling one message: std::nullopt = accepted; otherwise why the peer is at fault.
  using Verdict = std::optional<std::string>;
  // Called for each message. Reading fields may throw kj::Exception (the reader's limits, or a
  // malformed pointer): the channel catches it and closes with that reason.
  using MessageHandler = std::function<Verdict(capnp::MessageReader& message, ReceivedFds& fds)>;
  // Called once when the channel closes, for any reason (peer hung up, peer at fault, local
  // close()). Always deferred to a later loop iteration, never from inside send() or close().
  using CloseHandler = std::function<void(const std::string& reason)>;

  // Takes ownership of `socket` (a SOCK_SEQPACKET unix socket). `peerName` appears in logs.
  Channel(uv_loop_t* loop, base::Fd socket, std::string peerName, MessageHandler onMessage,
          CloseHandler onClose);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Queues one message with descriptors to send (the descriptors are duplicated by the kernel
  // when sent; the caller keeps its own). Returns false when the channel is closed, or when the
  // queue is full (the channel is then closed as stuck).
  bool send(capnp::MessageBuilder& message, std::span<const int> fds = {});

  // Closes the channel: stops reading, drops what is queued, closes the socket. The close handler
  // runs later, once, with `reason`. Idempotent.
  void close(const std::string& reason);

  bool isOpen() const { return state_ == State::Open; }
  const std::string& peerName() const { return peerName_; }

 private:
  enum class State { Open, Closing, Closed };
  struct Outgoing {
    kj::Array<capnp::word> words;
    std::vector<base::Fd> fds;  // our duplicates, alive until sent
  };

  static void onPoll(uv_poll_t* handle, int status, int events);
  void readAvailable();
  // Receives and dispatches one datagram. Returns false when nothing more should be read now.
  bool receiveOne();
  void flushQueue();
  void updatePollEvents();
  void finishClose();

  uv_loop_t* loop_;
  base::Fd socket_;
  std::string peerName_;
  MessageHandler onMessage_;
  CloseHandler onClose_;
  State state_ = State::Open;
  std::string closeReason_;
  base::UvHandle<uv_poll_t> poll_;
  base::UvHandle<uv_idle_t> deferredClose_;  // runs the close handler on the next iteration
  std::deque<Outgoing> queue_;
  kj::Array<capnp::word> inBuffer_;          // one receive buffer per channel
  int pollEvents_ = 0;
};

}  // namespace spicebox::ipc
