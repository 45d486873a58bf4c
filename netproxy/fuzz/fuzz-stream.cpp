// Runs in: the netproxy's libFuzzer targets and their tests. Input: fuzz bytes, wholly hostile.
#include "netproxy/fuzz/fuzz-stream.h"

#include <spice/protocol.h>

#include <memory>
#include <variant>

#include "base/assert.h"
#include "base/shm-protocol.h"
#include "broker/peer-netproxy.h"
#include "ipc/render.capnp.h"
#include "netproxy/ticket.h"
#include "netproxy/wire.h"

namespace spicebox::netproxy::fuzz {

namespace {

// Hands out the stream in the server's units: a unit is given only whole, as the server's read
// loop collects exactly `need` bytes before it calls the parser.
class UnitReader {
 public:
  explicit UnitReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  std::optional<std::span<const uint8_t>> take(size_t need) {
    if (bytes_.size() - pos_ < need)
      return std::nullopt;
    auto unit = bytes_.subspan(pos_, need);
    pos_ += need;
    return unit;
  }
  std::span<const uint8_t> rest() const { return bytes_.subspan(pos_); }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

// The largest display the broker announces: a client position the server forwards lies inside
// the display (server.cpp drops the others), so at most this.
constexpr uint32_t MAX_DISPLAY = ipc::render::MAX_DISPLAY_DIMENSION;

// The server forwards an accepted input to the broker (netproxy/main.cpp sendInput copies each
// field into display.capnp), and the broker kills a netproxy that sends an input its checkInput
// refuses: one hostile client would then disconnect every client. So every input the parser
// accepts and the server forwards must pass the broker's check.
void checkForwardedInput(const InputEvent& event) {
  broker::NetproxyInput forwarded;
  if (const auto* key = std::get_if<KeyEvent>(&event)) {
    forwarded = broker::NetproxyKey{key->scancode, key->down};
  } else if (const auto* m = std::get_if<MouseMotion>(&event)) {
    forwarded = broker::NetproxyMouseMotion{m->dx, m->dy, m->buttons};
  } else if (const auto* p = std::get_if<MousePosition>(&event)) {
    // server.cpp: positions outside the (single) display are dropped, not forwarded.
    if (p->displayId != 0 || p->x >= MAX_DISPLAY || p->y >= MAX_DISPLAY)
      return;
    forwarded = broker::NetproxyMousePosition{p->x, p->y, p->displayId, p->buttons};
  } else {
    const auto& b = std::get<MouseButton>(event);
    forwarded = broker::NetproxyMouseButton{b.button, b.pressed, b.buttons};
  }
  auto refusal = broker::checkInput(forwarded);
  SB_ASSERT(!refusal, "the netproxy accepts an input the broker refuses: {}", *refusal);
}

const TicketKey& ticketKey() {
  // RSA-1024 key generation takes milliseconds: once per process, as the server does once per
  // incarnation (before its sandbox).
  static const std::unique_ptr<TicketKey> key = TicketKey::generate();
  SB_ASSERT(key, "OpenSSL could not make the ticket key");
  return *key;
}

}  // namespace

std::string_view describe(MessagesStop stop) {
  switch (stop) {
    case MessagesStop::NeedMore:
      return "need more";
    case MessagesStop::SubList:
      return "sub-message list";
    case MessagesStop::TooLarge:
      return "body above the channel's limit";
    case MessagesStop::Fault:
      return "message refused";
  }
  return "unknown";
}

std::string_view describe(LinkStop stop) {
  switch (stop) {
    case LinkStop::NeedMore:
      return "need more";
    case LinkStop::HeaderFault:
      return "link header refused";
    case LinkStop::MessFault:
      return "link message refused";
    case LinkStop::ChannelNotServed:
      return "channel not served";
    case LinkStop::AuthRefused:
      return "authentication mechanism refused";
    case LinkStop::TicketRefused:
      return "ticket refused";
    case LinkStop::Linked:
      return "linked";
  }
  return "unknown";
}

MessagesResult feedChannelMessages(ChannelKind channel, bool mini, std::span<const uint8_t> bytes) {
  MessagesResult out;
  UnitReader in(bytes);
  for (;;) {
    // server.cpp onData: a header, then (unless empty) a body of the header's size.
    auto header = in.take(wire::headerSize(mini));
    if (!header) {
      out.leftover = in.remaining();
      return out;
    }
    uint32_t subList = 0;
    const wire::DataHeader h = wire::parseDataHeader(*header, mini, &subList);
    if (subList != 0) {
      out.stop = MessagesStop::SubList;
      return out;
    }
    if (h.size > maxClientMessageSize(channel)) {
      out.stop = MessagesStop::TooLarge;
      return out;
    }
    auto body = in.take(h.size);
    if (!body) {
      out.leftover = in.remaining() + header->size();
      return out;
    }
    auto parsed = parseClientMessage(channel, h.type, *body);
    if (const auto* fault = std::get_if<MessageFault>(&parsed)) {
      // server.cpp: an input with a field out of range is dropped and the connection kept.
      if (*fault == MessageFault::BadValue && channel == ChannelKind::Inputs) {
        ++out.dropped;
        continue;
      }
      out.stop = MessagesStop::Fault;
      out.fault = *fault;
      out.faultType = h.type;
      return out;
    }
    const auto& message = std::get<ClientMessage>(parsed);
    if (const auto* input = std::get_if<InputEvent>(&message))
      checkForwardedInput(*input);
    if (const auto* agent = std::get_if<AgentData>(&message))
      SB_ASSERT(agent->size == h.size, "agent data of {} bytes in a body of {}", agent->size,
                h.size);
    ++out.accepted;
    out.types.push_back(h.type);
  }
}

ChannelKind channelOfSelector(uint8_t selector) {
  static constexpr ChannelKind KINDS[] = {ChannelKind::Main, ChannelKind::Display,
                                          ChannelKind::Inputs, ChannelKind::Cursor};
  return KINDS[selector % 4];
}

std::optional<MessagesResult> feedMessagesInput(std::span<const uint8_t> input) {
  if (input.size() < 2)
    return std::nullopt;
  return feedChannelMessages(channelOfSelector(input[0]), (input[1] & MESSAGES_MINI_HEADER) != 0,
                             input.subspan(2));
}

LinkResult feedLinkInput(std::span<const uint8_t> input) {
  LinkResult out;
  if (input.empty())
    return out;
  const bool ticketing = (input[0] & LINK_TICKETING) != 0;
  UnitReader in(input.subspan(1));

  // server.cpp onLinkHeader: exactly LINK_HEADER_SIZE bytes.
  auto header = in.take(LINK_HEADER_SIZE);
  if (!header)
    return out;
  auto size = parseLinkHeader(*header);
  if (auto* fault = std::get_if<LinkFault>(&size)) {
    out.stop = LinkStop::HeaderFault;
    out.fault = *fault;
    return out;
  }
  // onLinkMess: exactly the header's size, which parseLinkHeader bounded.
  auto messBytes = in.take(std::get<uint32_t>(size));
  if (!messBytes)
    return out;
  auto parsed = parseLinkMess(*messBytes);
  if (auto* fault = std::get_if<LinkFault>(&parsed)) {
    out.stop = LinkStop::MessFault;
    out.fault = *fault;
    return out;
  }
  const LinkMess& mess = out.mess.emplace(std::move(std::get<LinkMess>(parsed)));
  SB_ASSERT(mess.commonCaps.size() <= MAX_CAPS_WORDS && mess.channelCaps.size() <= MAX_CAPS_WORDS,
            "{} + {} capability words", mess.commonCaps.size(), mess.channelCaps.size());
  const uint8_t type = mess.channelType;
  if ((type != SPICE_CHANNEL_MAIN && type != SPICE_CHANNEL_DISPLAY &&
       type != SPICE_CHANNEL_CURSOR && type != SPICE_CHANNEL_INPUTS) ||
      mess.channelId != 0) {
    out.stop = LinkStop::ChannelNotServed;
    return out;
  }
  // The capabilities the server reads from a link message.
  out.mini = hasCap(mess.commonCaps, SPICE_COMMON_CAP_MINI_HEADER);
  const bool authSelection = hasCap(mess.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
  (void)hasCap(mess.channelCaps, SPICE_DISPLAY_CAP_LZ4_COMPRESSION);
  (void)hasCap(mess.channelCaps, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
  (void)hasCap(mess.channelCaps, shm::CAP_SHARED_MEMORY);
  (void)hasCap(mess.channelCaps, shm::CAP_TEAR_FREE);

  // onAuthMechanism: 4 bytes, only after AUTH_SELECTION.
  if (authSelection) {
    auto mechanism = in.take(4);
    if (!mechanism)
      return out;
    wire::Reader r(*mechanism);
    if (r.u32() != SPICE_COMMON_CAP_AUTH_SPICE) {
      out.stop = LinkStop::AuthRefused;
      return out;
    }
  }
  // onTicket: TICKET_SIZE bytes, decrypted only when a password is set.
  auto ticket = in.take(TICKET_SIZE);
  if (!ticket)
    return out;
  if (ticketing) {
    auto password = ticketKey().decrypt(*ticket);
    if (!password || !passwordEquals(*password, PASSWORD)) {
      out.stop = LinkStop::TicketRefused;
      return out;
    }
  }
  out.stop = LinkStop::Linked;
  out.messages = feedChannelMessages(static_cast<ChannelKind>(type), out.mini, in.rest());
  return out;
}

}  // namespace spicebox::netproxy::fuzz
