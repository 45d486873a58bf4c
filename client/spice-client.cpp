// Runs in: SPICE clients. Input: a SPICE server's bytes, untrusted (see spice-client.h).
#include "client/spice-client.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace spicebox::client {
namespace {

std::string errnoText(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

}  // namespace

// ---- link ----

Error linkChannel(Socket& socket, const LinkOptions& options, Deadline deadline,
                  LinkReply* replyOut) {
  LinkMess mess;
  mess.connectionId = options.connectionId;
  mess.channelType = options.channelType;
  mess.channelId = options.channelId;
  setCap(mess.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
  setCap(mess.commonCaps, SPICE_COMMON_CAP_AUTH_SPICE);
  setCap(mess.commonCaps, SPICE_COMMON_CAP_MINI_HEADER);
  mess.channelCaps = options.channelCaps;
  if (auto err = socket.sendAll(buildLinkMessage(mess), deadline))
    return "sending the link message: " + *err;

  auto headerBytes = socket.readExact(LINK_HEADER_SIZE, deadline);
  if (auto* err = std::get_if<std::string>(&headerBytes))
    return "reading the link reply header: " + *err;
  auto header = parseLinkReplyHeader(std::get<Bytes>(headerBytes));
  if (auto* err = std::get_if<std::string>(&header))
    return *err;
  auto body = socket.readExact(std::get<LinkHeader>(header).size, deadline);
  if (auto* err = std::get_if<std::string>(&body))
    return "reading the link reply: " + *err;
  auto parsed = parseLinkReply(std::get<Bytes>(body));
  if (auto* err = std::get_if<std::string>(&parsed))
    return *err;
  LinkReply& reply = std::get<LinkReply>(parsed);
  if (reply.error != SPICE_LINK_ERR_OK)
    return "the server refused the link: SPICE_LINK_ERR " + std::to_string(reply.error);
  if (!hasCap(reply.commonCaps, SPICE_COMMON_CAP_MINI_HEADER))
    return std::string("the server does not offer mini headers; this client speaks only those");

  if (hasCap(reply.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION)) {
    Writer mechanism;
    mechanism.u32(SPICE_COMMON_CAP_AUTH_SPICE);
    if (auto err = socket.sendAll(mechanism.data(), deadline))
      return "sending the auth mechanism: " + *err;
  }
  auto ticket = encryptTicket(reply.publicKey, options.password.value_or(""));
  if (auto* err = std::get_if<std::string>(&ticket))
    return *err;
  if (auto err = socket.sendAll(std::get<Bytes>(ticket), deadline))
    return "sending the ticket: " + *err;
  auto result = socket.readExact(4, deadline);
  if (auto* err = std::get_if<std::string>(&result))
    return "reading the link result: " + *err;
  Reader r(std::get<Bytes>(result));
  uint32_t code = r.u32();
  if (code != SPICE_LINK_ERR_OK)
    return "the server refused the ticket: SPICE_LINK_ERR " + std::to_string(code) +
           (code == SPICE_LINK_ERR_PERMISSION_DENIED ? " (permission denied: wrong password?)"
                                                     : "");
  if (replyOut)
    *replyOut = std::move(reply);
  return std::nullopt;
}

// ---- Channel ----

Channel::Channel(Socket socket, uint8_t type) : socket_(std::move(socket)), type_(type) {}

void Channel::fail(std::string why) {
  if (error_)
    return;
  spdlog::debug("client channel {}: {}", type_, why);
  error_ = "channel type " + std::to_string(type_) + ": " + std::move(why);
  fds_.clear();  // closes every descriptor still waiting
  if (!notices_.empty())
    *error_ += " (the server said before: \"" + notices_.back() + "\")";
}

Error Channel::send(uint16_t type, std::span<const uint8_t> body, Deadline deadline) {
  if (error_)
    return error_;
  if (auto err = socket_.sendAll(buildMessage(type, body), deadline)) {
    fail("sending message " + std::to_string(type) + ": " + *err);
    return error_;
  }
  return std::nullopt;
}

Error Channel::processAvailable() {
  // Reads at most a few chunks per call so that one busy channel cannot starve the others of a
  // pumpUntil; the rest stays in the socket for the next call.
  constexpr size_t CHUNK = 256 * 1024;
  for (int round = 0; round < 16 && !error_; ++round) {
    size_t had = input_.size();
    input_.resize(had + CHUNK);
    auto got = socket_.receiveAvailable(std::span<uint8_t>(input_).subspan(had));
    if (auto* err = std::get_if<std::string>(&got)) {
      input_.resize(had);
      fail(*err);
      break;
    }
    auto& received = std::get<Socket::Received>(got);
    input_.resize(had + received.bytes);
    uint64_t readStart = inputOffset_ + had;
    counters_.fds += received.fds.size();
    if (received.fds.size() > 1) {
      fail("one read brought " + std::to_string(received.fds.size()) +
           " descriptors: a message carries at most one");
      break;
    }
    for (auto& fd : received.fds)
      fds_.push_back({std::move(fd), readStart, readStart + received.bytes});
    if (fds_.size() > MAX_PENDING_FDS) {
      fail("more than " + std::to_string(MAX_PENDING_FDS) +
           " descriptors received and not yet taken by their messages");
      break;
    }
    if (received.bytes == 0)
      break;
    size_t pos = 0;
    while (!error_ && input_.size() - pos >= MINI_HEADER_SIZE) {
      MiniHeader h = parseMiniHeader(
          std::span<const uint8_t, MINI_HEADER_SIZE>(input_.data() + pos, MINI_HEADER_SIZE));
      if (h.size > MAX_MESSAGE_SIZE) {
        fail("message type " + std::to_string(h.type) + " announces " + std::to_string(h.size) +
             " bytes (at most " + std::to_string(MAX_MESSAGE_SIZE) + ")");
        break;
      }
      if (input_.size() - pos - MINI_HEADER_SIZE < h.size)
        break;
      std::span<const uint8_t> body(input_.data() + pos + MINI_HEADER_SIZE, h.size);
      messageStart_ = inputOffset_ + pos;
      pos += MINI_HEADER_SIZE + h.size;
      ++counters_.messages;
      counters_.bytes += MINI_HEADER_SIZE + h.size;
      bool handled = false;
      Error err = handleBase(h.type, body, &handled);
      if (!err && !handled)
        err = handle(h.type, body);
      if (err) {
        fail(*err);
        break;
      }
      // A descriptor whose read ended within this message came with it (or an earlier one) and
      // was not taken: the server attached it to a message that carries none, or two to one.
      if (!fds_.empty() && fds_.front().end <= inputOffset_ + pos) {
        fail("a descriptor came with message type " + std::to_string(h.type) +
             ", which carries none (or it came with one that carries only one)");
        break;
      }
      // The ACK window counts every message received after SET_ACK (not SET_ACK itself).
      if (h.type == SPICE_MSG_SET_ACK)
        continue;
      if (ackWindow_ && ++sinceAck_ >= ackWindow_) {
        sinceAck_ = 0;
        ++counters_.acksSent;
        if (send(SPICE_MSGC_ACK, {}, Clock::now() + std::chrono::seconds(10)))
          break;
      }
    }
    input_.erase(input_.begin(), input_.begin() + static_cast<ptrdiff_t>(pos));
    inputOffset_ += pos;
  }
  return error_;
}

base::Fd Channel::takeDescriptor() {
  if (fds_.empty() || fds_.front().first > messageStart_ || fds_.front().end <= messageStart_)
    return base::Fd();
  base::Fd fd = std::move(fds_.front().fd);
  fds_.pop_front();
  return fd;
}

Error Channel::handleBase(uint16_t type, std::span<const uint8_t> body, bool* handled) {
  *handled = true;
  Reader r(body);
  auto deadline = Clock::now() + std::chrono::seconds(10);
  switch (type) {
    case SPICE_MSG_SET_ACK: {
      uint32_t generation = r.u32();
      uint32_t window = r.u32();
      if (r.failed())
        return std::string("SET_ACK truncated");
      ackWindow_ = window;
      sinceAck_ = 0;
      Writer w;
      w.u32(generation);
      return send(SPICE_MSGC_ACK_SYNC, w.data(), deadline);
    }
    case SPICE_MSG_PING: {
      uint32_t id = r.u32();
      uint64_t timestamp = r.u64();
      if (r.failed())
        return std::string("PING truncated");
      ++counters_.pings;
      Writer w;
      w.u32(id).u64(timestamp);
      return send(SPICE_MSGC_PONG, w.data(), deadline);
    }
    case SPICE_MSG_NOTIFY: {
      r.u64();
      uint32_t severity = r.u32();
      r.u32();
      uint32_t what = r.u32();
      uint32_t len = r.u32();
      auto text = r.bytes(std::min<size_t>({len, r.remaining(), MAX_NOTICE_BYTES}));
      if (notices_.size() < MAX_NOTICES)
        notices_.emplace_back(text.begin(), text.end());
      spdlog::info("client channel {}: server notify (severity {}, what {}): {}", type_, severity,
                   what, std::string(text.begin(), text.end()));
      return std::nullopt;
    }
    case SPICE_MSG_DISCONNECTING:
      disconnecting_ = true;
      return std::nullopt;
    case SPICE_MSG_WAIT_FOR_CHANNELS:
    case SPICE_MSG_MIGRATE:
    case SPICE_MSG_MIGRATE_DATA:
    case SPICE_MSG_LIST:
      return std::nullopt;
    default:
      // Channel messages start above SPICE_MSG_BASE_LAST; an unknown common message below it is
      // skipped (its size was already checked), as a newer server may send one.
      *handled = type <= SPICE_MSG_BASE_LAST;
      return std::nullopt;
  }
}

// ---- main ----

Error MainChannel::handle(uint16_t type, std::span<const uint8_t> body) {
  Reader r(body);
  switch (type) {
    case SPICE_MSG_MAIN_INIT: {
      uint32_t session = r.u32();
      r.u32();  // display channels hint
      r.u32();  // supported mouse modes
      mouseMode_ = r.u32();
      if (r.failed())
        return std::string("MAIN_INIT truncated: ") + std::to_string(body.size()) + " bytes";
      sessionId_ = session;
      return send(SPICE_MSGC_MAIN_ATTACH_CHANNELS, {}, Clock::now() + std::chrono::seconds(10));
    }
    case SPICE_MSG_MAIN_CHANNELS_LIST: {
      uint32_t n = r.u32();
      // Each entry is 2 bytes: a count larger than the body allows is refused before reserving.
      if (r.failed() || n > r.remaining() / 2)
        return "CHANNELS_LIST announces " + std::to_string(n) + " channels in " +
               std::to_string(body.size()) + " bytes";
      std::vector<ChannelId> list(n);
      for (auto& c : list) {
        c.type = r.u8();
        c.id = r.u8();
      }
      channels_ = std::move(list);
      return std::nullopt;
    }
    case SPICE_MSG_MAIN_MOUSE_MODE: {
      r.u16();
      uint16_t current = r.u16();
      if (r.failed())
        return std::string("MOUSE_MODE truncated");
      mouseMode_ = current;
      return std::nullopt;
    }
    default:
      return std::nullopt;  // migration, agent and name messages: nothing to do for a test client
  }
}

// ---- inputs ----

namespace {

Bytes keyCode(uint32_t scancode, bool up) {
  // Extended keys (0xe0 prefix) travel as 0xe0 in the low byte and the code above it.
  uint32_t code = scancode > 0xff ? scancode : scancode | (up ? 0x80 : 0);
  if (scancode > 0xff && up)
    code = scancode | 0x8000;
  Writer w;
  w.u32(code);
  return w.take();
}

}  // namespace

Error InputsChannel::keyDown(uint32_t scancode, Deadline deadline) {
  return send(SPICE_MSGC_INPUTS_KEY_DOWN, keyCode(scancode, false), deadline);
}

Error InputsChannel::keyUp(uint32_t scancode, Deadline deadline) {
  return send(SPICE_MSGC_INPUTS_KEY_UP, keyCode(scancode, true), deadline);
}

Error InputsChannel::mousePosition(uint32_t x, uint32_t y, uint16_t buttons, uint8_t displayId,
                                   Deadline deadline) {
  Writer w;
  w.u32(x).u32(y).u16(buttons).u8(displayId);
  return send(SPICE_MSGC_INPUTS_MOUSE_POSITION, w.data(), deadline);
}

Error InputsChannel::mouseMotion(int32_t dx, int32_t dy, uint16_t buttons, Deadline deadline) {
  Writer w;
  w.i32(dx).i32(dy).u16(buttons);
  return send(SPICE_MSGC_INPUTS_MOUSE_MOTION, w.data(), deadline);
}

Error InputsChannel::mousePress(uint8_t button, uint16_t buttons, Deadline deadline) {
  Writer w;
  w.u8(button).u16(buttons);
  return send(SPICE_MSGC_INPUTS_MOUSE_PRESS, w.data(), deadline);
}

Error InputsChannel::mouseRelease(uint8_t button, uint16_t buttons, Deadline deadline) {
  Writer w;
  w.u8(button).u16(buttons);
  return send(SPICE_MSGC_INPUTS_MOUSE_RELEASE, w.data(), deadline);
}

Error InputsChannel::handle(uint16_t type, std::span<const uint8_t>) {
  if (type == SPICE_MSG_INPUTS_INIT)
    initReceived_ = true;
  return std::nullopt;
}

// ---- pumping ----

Error pumpUntil(std::span<Channel* const> channels, const std::function<bool()>& done,
                Deadline deadline, const std::string& what) {
  for (;;) {
    for (Channel* c : channels)
      if (auto err = c->processAvailable())
        return "while waiting for " + what + ": " + *err;
    if (done())
      return std::nullopt;
    std::vector<pollfd> fds;
    for (Channel* c : channels)
      fds.push_back({c->fd(), POLLIN, 0});
    int left = msLeft(deadline);
    if (left == 0)
      return "timed out waiting for " + what;
    int n = ::poll(fds.data(), fds.size(), left);
    if (n < 0 && errno != EINTR)
      return errnoText("poll");
  }
}

// ---- session ----

std::variant<Socket, std::string> Session::link(uint8_t type, std::vector<uint32_t> caps,
                                                LinkReply* replyOut) {
  auto deadline = stepDeadline();
  auto socket = Socket::connect(options_.target, deadline);
  if (auto* err = std::get_if<std::string>(&socket))
    return *err;
  LinkOptions link;
  link.connectionId = main_ && main_->sessionId() ? *main_->sessionId() : 0;
  link.channelType = type;
  link.channelCaps = std::move(caps);
  link.password = options_.password;
  if (auto err = linkChannel(std::get<Socket>(socket), link, deadline, replyOut))
    return "linking channel type " + std::to_string(type) + ": " + *err;
  return std::move(std::get<Socket>(socket));
}

std::variant<std::unique_ptr<Session>, std::string> Session::connect(
    const SessionOptions& options) {
  std::unique_ptr<Session> session(new Session(options));
  auto socket = session->link(SPICE_CHANNEL_MAIN, {});
  if (auto* err = std::get_if<std::string>(&socket))
    return *err;
  session->main_ =
      std::make_unique<MainChannel>(std::move(std::get<Socket>(socket)), SPICE_CHANNEL_MAIN);
  Channel* main = session->main_.get();
  if (auto err = pumpUntil(
          std::span<Channel* const>(&main, 1),
          [&] { return session->main_->channels().has_value(); }, session->stepDeadline(),
          "MAIN_INIT and CHANNELS_LIST"))
    return *err;
  return session;
}

std::variant<DisplayChannel*, std::string> Session::openDisplay() {
  std::vector<uint32_t> caps;
  if (options_.lz4)
    setCap(caps, SPICE_DISPLAY_CAP_LZ4_COMPRESSION);
  if (options_.preferredCompression)
    setCap(caps, SPICE_DISPLAY_CAP_PREF_COMPRESSION);
  addShmCaps(caps, options_.shm);
  LinkReply reply;
  auto socket = link(SPICE_CHANNEL_DISPLAY, caps, &reply);
  if (auto* err = std::get_if<std::string>(&socket))
    return *err;
  display_ =
      std::make_unique<DisplayChannel>(std::move(std::get<Socket>(socket)), SPICE_CHANNEL_DISPLAY);
  // The wish must be in place before the first byte is read: SHM_OFFER follows SET_ACK.
  display_->setShmWish(options_.shm);
  if (auto err = display_->sendInit(stepDeadline()))
    return *err;
  if (options_.preferredCompression &&
      hasCap(reply.channelCaps, SPICE_DISPLAY_CAP_PREF_COMPRESSION)) {
    Writer w;
    w.u8(*options_.preferredCompression);
    if (auto err =
            display_->send(SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION, w.data(), stepDeadline()))
      return *err;
  }
  return display_.get();
}

std::variant<InputsChannel*, std::string> Session::openInputs() {
  auto socket = link(SPICE_CHANNEL_INPUTS, {});
  if (auto* err = std::get_if<std::string>(&socket))
    return *err;
  inputs_ =
      std::make_unique<InputsChannel>(std::move(std::get<Socket>(socket)), SPICE_CHANNEL_INPUTS);
  return inputs_.get();
}

std::vector<Channel*> Session::channels() {
  std::vector<Channel*> out{main_.get()};
  if (display_)
    out.push_back(display_.get());
  if (inputs_)
    out.push_back(inputs_.get());
  return out;
}

}  // namespace spicebox::client
