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
#include <string_view>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/uv-handle.h"

namespace spicebox::ipc {

// A connected SOCK_SEQPACKET socket pair, both ends O_CLOEXEC and non-blocking. Throws
// base::SystemError when the kernel refuses (EMFILE, ENFILE).
std::pair<base::Fd, base::Fd> socketPair();

// Descriptors received with one message. The handler moves out each descriptor the message type
// calls for (take()); any left over when the handler returns mean the peer attached more than
// the message allows, and the channel is closed. Whatever is not taken is closed, never leaked.
// What a descriptor is (memfd, eventfd, its seals and size) is for the handler to check: the
// channel only counts them.
class ReceivedFds {
 public:
  explicit ReceivedFds(std::vector<base::Fd> fds) : fds_(std::move(fds)) {}
  size_t size() const { return fds_.size(); }
  // How many descriptors have not been taken yet.
  size_t remaining() const;
  // The i-th descriptor of the message, or an empty Fd if there is none or it was taken already.
  base::Fd take(size_t i);

 private:
  std::vector<base::Fd> fds_;
};

// One end of a message channel. Every callback runs on `loop`, from uv_run.
//
// Reading: each datagram is checked before the handler sees it: its size (a whole number of
// words, at most MAX_FRAME_BYTES), its descriptors (at most MAX_FDS_PER_MESSAGE), its segment
// table, and every pointer in the message (bounds, nesting and traversal limits of
// READER_OPTIONS). A message that fails closes the channel; the handler never sees it, so it
// never acts on half of a malformed message.
//
// Lifetime: the owner destroys the Channel from the close handler (that is safe), or at any time
// from outside this channel's own callbacks; destroying it before the close handler ran cancels
// the handler. The message handler must not destroy the Channel (asserted): it calls close() or
// returns a verdict instead. `loop` must outlive the Channel and run at least once after it is
// destroyed, so its handles' memory is freed (base/uv-handle.h).
class Channel {
 public:
  // The close reason when the peer hung up (EOF or a reset) rather than sent anything wrong.
  static constexpr std::string_view PEER_CLOSED = "peer closed the channel";
  // Result of handling one message: std::nullopt = accepted; otherwise why the peer is at fault.
  using Verdict = std::optional<std::string>;
  // Called for each message, in order. The message has passed the structural checks above, but a
  // read can still throw kj::Exception (a pointer of the wrong type for the schema): the channel
  // catches it, and any std::exception, and closes with that reason. The handler may call send()
  // and close().
  using MessageHandler = std::function<Verdict(capnp::MessageReader& message, ReceivedFds& fds)>;
  // Called once when the channel closes, for any reason (peer hung up, peer at fault, local
  // close()). Always deferred to a later loop iteration, never from inside send() or close().
  // The channel is already closed when it runs: the handler may destroy it. Must not throw.
  using CloseHandler = std::function<void(const std::string& reason)>;

  // Takes ownership of `socket`, which must be a connected SOCK_SEQPACKET unix socket (from
  // socketPair(); not checked, see the constructor). `peerName` appears in logs.
  Channel(uv_loop_t* loop, base::Fd socket, std::string peerName, MessageHandler onMessage,
          CloseHandler onClose);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Queues one message with descriptors to send, in order (the kernel duplicates the descriptors
  // when the message is sent; the caller keeps its own). Returns false, and the channel is then
  // closed, when:
  //  - the channel was closed already (nothing else happens);
  //  - the peer stopped reading: more than MAX_QUEUED_MESSAGES wait (closed as stuck);
  //  - the message serialises to more than MAX_FRAME_BYTES (a local error, logged: message sizes
  //    may depend on data, so this is not an assertion that input could reach);
  //  - the socket fails (peer gone, out of descriptors).
  // More than MAX_FDS_PER_MESSAGE descriptors, or one that is not open, is a bug: SB_ASSERT.
  bool send(capnp::MessageBuilder& message, std::span<const int> fds = {});

  // Closes the channel: stops reading, drops what is queued, closes the socket. The close handler
  // runs later, once, with `reason`. Idempotent: the first reason wins.
  void close(const std::string& reason);

  bool isOpen() const { return state_ == State::Open; }
  const std::string& peerName() const { return peerName_; }

 private:
  // Closing (close handler pending) and Closed (handler ran) both refuse all work.
  enum class State { Open, Closing, Closed };
  // Who ended the channel; chooses the log level.
  enum class CloseCause { Local, PeerHangUp, PeerFault, LocalError };
  enum class SendResult { Sent, WouldBlock, Failed };
  struct Outgoing {
    kj::Array<capnp::word> words;
    std::vector<base::Fd> fds;  // our duplicates, alive until sent
  };

  static void onPoll(uv_poll_t* handle, int status, int events);
  static void onDeferredClose(uv_idle_t* handle);
  // Returns how many datagrams (or errors) were handled; at most MAX_MESSAGES_PER_WAKE.
  int readAvailable();
  // Receives and dispatches one datagram. Returns false when nothing more should be read now.
  bool receiveOne();
  bool dispatch(kj::ArrayPtr<const capnp::word> words, std::vector<base::Fd> fds);
  // One sendmsg. On failure the channel is closed.
  SendResult sendDatagram(kj::ArrayPtr<const capnp::word> words, std::span<const int> fds);
  void flushQueue();
  void updatePollEvents();
  void closeWith(CloseCause cause, const std::string& reason);

  uv_loop_t* loop_;
  base::Fd socket_;
  std::string peerName_;
  MessageHandler onMessage_;
  CloseHandler onClose_;
  State state_ = State::Open;
  bool dispatching_ = false;  // inside onMessage_: destruction now is a bug
  std::string closeReason_;
  // Declared after socket_, so destroyed before it: epoll stops watching before the number is
  // freed for reuse.
  base::UvHandle<uv_poll_t> poll_;
  base::UvHandle<uv_idle_t> deferredClose_;  // runs the close handler on the next iteration
  std::deque<Outgoing> queue_;
  kj::Array<capnp::word> inBuffer_;  // one receive buffer per channel, word-aligned
  int pollEvents_ = 0;               // what poll_ is started with; 0 = not started
};

}  // namespace spicebox::ipc
