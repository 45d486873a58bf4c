#include "ipc/channel.h"

#include <capnp/any.h>
#include <fcntl.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <exception>

#include "base/assert.h"
#include "base/syscall.h"
#include "ipc/limits.h"

namespace spicebox::ipc {
namespace {

// Datagrams handled per readiness event before yielding to the other handles on the loop; the
// poll is level-triggered, so whatever is left wakes us again on the next iteration. Keeps one
// chatty (or hostile) peer from starving the others.
constexpr int MAX_MESSAGES_PER_WAKE = 64;

constexpr size_t WORD_BYTES = sizeof(capnp::word);
constexpr size_t FRAME_WORDS = MAX_FRAME_BYTES / WORD_BYTES;
static_assert(MAX_FRAME_BYTES % WORD_BYTES == 0, "the receive buffer is whole words");

// Room for exactly MAX_FDS_PER_MESSAGE descriptors in one SCM_RIGHTS message: when the peer
// attaches more, the kernel sets MSG_CTRUNC and discards the rest.
constexpr size_t CONTROL_BYTES = CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE);

const std::string PEER_CLOSED_TEXT(Channel::PEER_CLOSED);

// Moves every descriptor of every SCM_RIGHTS message into an owner, before anything is checked,
// so that no path below can leak one.
std::vector<base::Fd> takeDescriptors(msghdr& msg) {
  std::vector<base::Fd> fds;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
      continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));  // CMSG_DATA need not be aligned
      fds.emplace_back(fd);
    }
  }
  // TODO(security): closing a received descriptor can block when it is the last reference to a
  // TCP socket with SO_LINGER set, or to a file on a stalled FUSE or network file system. A peer
  // able to create one (a VMM; a child only if its sandbox allows it) could stall our loop that
  // way. Closing unwanted descriptors off the loop thread would remove the risk.
  return fds;
}

// Checks every pointer of the message once, with a reader of its own, so that the structural
// faults (out of bounds, too deep, too much traversal, far pointers to nowhere) are found before
// the handler acts on any part of the message. The handler gets a fresh reader: this walk does
// not use up its traversal budget. Returns why the message is malformed, or std::nullopt.
std::optional<std::string> checkStructure(kj::ArrayPtr<const capnp::word> words) {
  try {
    capnp::FlatArrayMessageReader reader(words, READER_OPTIONS);
    if (reader.getEnd() != words.end()) {
      return fmt::format("{} bytes follow the end of the message",
                         (words.end() - reader.getEnd()) * WORD_BYTES);
    }
    reader.getRoot<capnp::AnyPointer>().targetSize();
  } catch (const kj::Exception& e) {
    return std::string("malformed message: ") + e.getDescription().cStr();
  }
  return std::nullopt;
}

}  // namespace

std::pair<base::Fd, base::Fd> socketPair() {
  int fds[2];
  SB_SYSCALL(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds),
             "creating an IPC socket pair");
  return {base::Fd(fds[0]), base::Fd(fds[1])};
}

size_t ReceivedFds::remaining() const {
  size_t n = 0;
  for (const auto& fd : fds_)
    n += fd ? 1 : 0;
  return n;
}

base::Fd ReceivedFds::take(size_t i) {
  if (i >= fds_.size())
    return base::Fd();
  return std::move(fds_[i]);
}

Channel::Channel(uv_loop_t* loop, base::Fd socket, std::string peerName, MessageHandler onMessage,
                 CloseHandler onClose)
    : loop_(loop),
      socket_(std::move(socket)),
      peerName_(std::move(peerName)),
      onMessage_(std::move(onMessage)),
      onClose_(std::move(onClose)),
      inBuffer_(kj::heapArray<capnp::word>(FRAME_WORDS)) {
  // The socket type is not checked here (getsockopt(SO_TYPE)): children build their Channel
  // inside the sandbox, whose seccomp profile does not allow getsockopt.
  int err = uv_idle_init(loop_, deferredClose_.get());
  SB_ASSERT(err == 0, "uv_idle_init: {}", uv_strerror(err));  // cannot fail on Linux
  deferredClose_->data = this;

  // uv_poll_init also makes the socket non-blocking, in case it was handed over blocking.
  if (err = uv_poll_init(loop_, poll_.get(), socket_.get()); err != 0) {
    closeWith(CloseCause::LocalError, fmt::format("cannot poll the socket: {}", uv_strerror(err)));
    return;
  }
  poll_->data = this;
  updatePollEvents();
}

Channel::~Channel() {
  SB_ASSERT(!dispatching_,
            "channel to {} destroyed inside its message handler; close it, and destroy it from "
            "the close handler",
            peerName_);
  if (state_ == State::Open)
    spdlog::debug("channel to {}: destroyed while open", peerName_);
  // Order: stop polling before the socket is closed (see poll_ in the header).
  poll_.close();
  socket_.reset();
}

bool Channel::send(capnp::MessageBuilder& message, std::span<const int> fds) {
  SB_ASSERT(fds.size() <= MAX_FDS_PER_MESSAGE,
            "message to {} with {} descriptors; no message type carries more than {}", peerName_,
            fds.size(), MAX_FDS_PER_MESSAGE);
  if (state_ != State::Open)
    return false;

  size_t bytes = capnp::computeSerializedSizeInWords(message) * WORD_BYTES;
  if (bytes > MAX_FRAME_BYTES) {
    closeWith(CloseCause::LocalError,
              fmt::format("refusing to send a {}-byte message (MAX_FRAME_BYTES is {})", bytes,
                          MAX_FRAME_BYTES));
    return false;
  }
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);

  // The fast path sends the caller's descriptors as they are; only a message that has to wait
  // needs duplicates of its own.
  if (queue_.empty()) {
    switch (sendDatagram(words, fds)) {
      case SendResult::Sent:
        return true;
      case SendResult::Failed:
        return false;
      case SendResult::WouldBlock:
        break;
    }
  }

  if (queue_.size() >= MAX_QUEUED_MESSAGES) {
    closeWith(CloseCause::PeerFault,
              fmt::format("peer stopped reading: {} messages queued", queue_.size()));
    return false;
  }
  Outgoing outgoing{std::move(words), {}};
  for (int fd : fds) {
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      int err = errno;
      SB_ASSERT(err != EBADF, "message to {} attaches fd {}, which is not open", peerName_, fd);
      closeWith(
          CloseCause::LocalError,
          fmt::format("cannot keep a descriptor for a queued message: {}", std::strerror(err)));
      return false;
    }
    outgoing.fds.emplace_back(copy);
  }
  queue_.push_back(std::move(outgoing));
  updatePollEvents();
  return state_ == State::Open;
}

void Channel::close(const std::string& reason) {
  closeWith(CloseCause::Local, reason);
}

void Channel::closeWith(CloseCause cause, const std::string& reason) {
  if (state_ != State::Open)
    return;
  state_ = State::Closing;
  closeReason_ = reason;
  switch (cause) {
    case CloseCause::Local:
      spdlog::info("channel to {} closed: {}", peerName_, reason);
      break;
    case CloseCause::PeerHangUp:
      spdlog::info("channel to {} closed: {}", peerName_, reason);
      break;
    case CloseCause::PeerFault:
      spdlog::warn("channel to {} closed, peer at fault: {}", peerName_, reason);
      break;
    case CloseCause::LocalError:
      spdlog::error("channel to {} closed: {}", peerName_, reason);
      break;
  }
  // Order: stop polling before the socket is closed (see poll_ in the header). Closing the poll
  // handle from inside its own callback is allowed; its memory goes in the close callback.
  poll_.close();
  pollEvents_ = 0;
  socket_.reset();
  queue_.clear();  // closes our duplicates of the queued descriptors
  // Deferred: close() may be called from send(), from the message handler or from the owner's
  // own call stack, none of which expects the close handler to run inside it.
  uv_idle_start(deferredClose_.get(), &Channel::onDeferredClose);
}

void Channel::onDeferredClose(uv_idle_t* handle) {
  auto* self = static_cast<Channel*>(handle->data);
  if (self == nullptr)
    return;
  uv_idle_stop(handle);
  if (self->state_ != State::Closing)
    return;
  self->state_ = State::Closed;
  // Moved out first: the handler may destroy this Channel, and with it onClose_ and
  // closeReason_. Nothing below touches `self`.
  CloseHandler onClose = std::move(self->onClose_);
  std::string reason = self->closeReason_;
  if (onClose)
    onClose(reason);
}

void Channel::onPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<Channel*>(handle->data);
  if (self == nullptr || self->state_ != State::Open)
    return;
  if (status < 0) {
    // POLLERR, and libuv has stopped the watcher. On a unix socket it means ECONNRESET: the peer
    // closed with our messages unread. recvmsg reports the error once, then returns what the peer
    // sent before, then end of stream (receiveOne). Not getsockopt(SO_ERROR): the children's
    // seccomp profiles do not allow it.
    self->pollEvents_ = 0;
    bool progress = self->readAvailable() > 0;
    if (self->state_ != State::Open)
      return;
    if (!progress) {
      // An error recvmsg does not report: nothing left to wait for.
      self->closeWith(CloseCause::LocalError, fmt::format("socket error: {}", uv_strerror(status)));
      return;
    }
    self->updatePollEvents();  // more datagrams than one wake handles: watch again
    return;
  }
  // Reading first: what the peer sent before hanging up is delivered before the hang-up closes
  // the channel. POLLHUP arrives as UV_READABLE (libuv adds it), and then recvmsg returns 0.
  if (events & UV_READABLE)
    self->readAvailable();
  if (self->state_ == State::Open && (events & UV_WRITABLE))
    self->flushQueue();
}

int Channel::readAvailable() {
  int handled = 0;
  while (handled < MAX_MESSAGES_PER_WAKE && state_ == State::Open && receiveOne())
    ++handled;
  return handled;
}

bool Channel::receiveOne() {
  alignas(cmsghdr) unsigned char control[CONTROL_BYTES];
  iovec iov{.iov_base = inBuffer_.begin(), .iov_len = inBuffer_.size() * WORD_BYTES};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);

  ssize_t n;
  do {
    n = ::recvmsg(socket_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK)
      return false;
    // The peer closed with our messages unread. Reported once; what it sent before is still
    // queued for us, and end of stream follows it.
    if (err == ECONNRESET)
      return true;
    closeWith(CloseCause::LocalError, fmt::format("recvmsg failed: {}", std::strerror(err)));
    return false;
  }

  // Owned from here: every return below closes what is not handed to the handler.
  std::vector<base::Fd> fds = takeDescriptors(msg);
  size_t bytes = static_cast<size_t>(n);

  if ((msg.msg_flags & MSG_CTRUNC) || fds.size() > MAX_FDS_PER_MESSAGE) {
    // The second test matters when CMSG_SPACE's padding has room for one more descriptor.
    closeWith(CloseCause::PeerFault,
              fmt::format("peer attached more than {} descriptors", MAX_FDS_PER_MESSAGE));
    return false;
  }
  if (msg.msg_flags & MSG_TRUNC) {
    closeWith(CloseCause::PeerFault,
              fmt::format("datagram larger than {} bytes (MAX_FRAME_BYTES)", MAX_FRAME_BYTES));
    return false;
  }
  if (bytes == 0) {
    // On SOCK_SEQPACKET end of stream and an empty datagram read the same; descriptors tell
    // them apart. Either way the channel ends.
    if (fds.empty()) {
      closeWith(CloseCause::PeerHangUp, PEER_CLOSED_TEXT);
    } else {
      closeWith(CloseCause::PeerFault, "empty datagram with descriptors");
    }
    return false;
  }
  if (bytes % WORD_BYTES != 0) {
    closeWith(CloseCause::PeerFault,
              fmt::format("datagram of {} bytes is not a whole number of words", bytes));
    return false;
  }
  return dispatch(inBuffer_.slice(0, bytes / WORD_BYTES), std::move(fds));
}

bool Channel::dispatch(kj::ArrayPtr<const capnp::word> words, std::vector<base::Fd> fds) {
  if (auto fault = checkStructure(words)) {
    closeWith(CloseCause::PeerFault, *fault);
    return false;
  }

  ReceivedFds received(std::move(fds));
  Verdict verdict;
  dispatching_ = true;
  try {
    capnp::FlatArrayMessageReader reader(words, READER_OPTIONS);
    verdict = onMessage_(reader, received);
  } catch (const kj::Exception& e) {
    verdict = std::string("malformed message: ") + e.getDescription().cStr();
  } catch (const std::exception& e) {
    // Whatever the handler did with the message failed (an mmap of a descriptor the peer sent,
    // say); an exception must not unwind through libuv.
    verdict = std::string("message could not be handled: ") + e.what();
  }
  dispatching_ = false;

  if (state_ != State::Open)
    return false;  // the handler closed the channel
  if (verdict) {
    closeWith(CloseCause::PeerFault, *verdict);
    return false;
  }
  if (size_t left = received.remaining(); left > 0) {
    closeWith(CloseCause::PeerFault,
              fmt::format("peer attached {} descriptors the message does not use", left));
    return false;
  }
  return true;
}

Channel::SendResult Channel::sendDatagram(kj::ArrayPtr<const capnp::word> words,
                                          std::span<const int> fds) {
  size_t bytes = words.size() * WORD_BYTES;
  iovec iov{.iov_base = const_cast<capnp::word*>(words.begin()), .iov_len = bytes};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[CONTROL_BYTES] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }

  ssize_t n;
  do {
    // MSG_NOSIGNAL: a peer that died yields EPIPE, not a SIGPIPE that kills this process.
    n = ::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) {
    SB_ASSERT(static_cast<size_t>(n) == bytes, "SOCK_SEQPACKET sent {} of {} bytes", n, bytes);
    return SendResult::Sent;
  }
  int err = errno;
  if (err == EAGAIN || err == EWOULDBLOCK)
    return SendResult::WouldBlock;
  SB_ASSERT(err != EBADF, "message to {} attaches a descriptor that is not open", peerName_);
  if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
    closeWith(CloseCause::PeerHangUp, PEER_CLOSED_TEXT);
  } else {
    // EMSGSIZE (a socket buffer below MAX_FRAME_BYTES), ETOOMANYREFS (too many descriptors in
    // flight), ENOBUFS/ENOMEM.
    closeWith(CloseCause::LocalError, fmt::format("sendmsg of {} bytes with {} descriptors: {}",
                                                  bytes, fds.size(), std::strerror(err)));
  }
  return SendResult::Failed;
}

void Channel::flushQueue() {
  while (!queue_.empty() && state_ == State::Open) {
    Outgoing& next = queue_.front();
    std::array<int, MAX_FDS_PER_MESSAGE> raw{};
    for (size_t i = 0; i < next.fds.size(); ++i)
      raw[i] = next.fds[i].get();
    if (sendDatagram(next.words, std::span<const int>(raw.data(), next.fds.size())) !=
        SendResult::Sent) {
      break;  // WouldBlock: UV_WRITABLE wakes us again; Failed: closed
    }
    queue_.pop_front();
  }
  updatePollEvents();
}

void Channel::updatePollEvents() {
  if (state_ != State::Open)
    return;
  int wanted = UV_READABLE | (queue_.empty() ? 0 : UV_WRITABLE);
  if (wanted == pollEvents_)
    return;
  if (int err = uv_poll_start(poll_.get(), wanted, &Channel::onPoll); err != 0) {
    closeWith(CloseCause::LocalError, fmt::format("cannot poll the socket: {}", uv_strerror(err)));
    return;
  }
  pollEvents_ = wanted;
}

}  // namespace spicebox::ipc
