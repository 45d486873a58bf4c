// Runs in: the netproxy's libFuzzer targets (spicebox-link-fuzz, spicebox-messages-fuzz; built by
// tools/fuzz.sh) and their tests (netproxy-fuzz-regression-tests). Input: fuzz bytes, wholly
// hostile: what one client sends on one connection.
//
// Feeds a client's byte stream to the netproxy's parsers the way netproxy/server.cpp does: in the
// units the server reads (link header, the link message of the size the header gave, the
// authentication mechanism when the client announced AUTH_SELECTION, the ticket, then a data
// header and its body, again and again), each unit whole and exactly as long as the server makes
// it, with the server's limits (parseLinkHeader's MAX_LINK_MESS_SIZE, maxClientMessageSize per
// channel, no sub-message lists). The stream stops where the server would close the connection or
// wait for more bytes. Decisions that depend on the server's other state (which sessions exist,
// how many clients are connected) are not modelled: the units after them are read the same way.
//
// Every typed fault is an acceptable answer. Findings are crashes, SB_ASSERTs (the properties
// checked below), sanitizer reports, leaks and timeouts.
//
// Fuzz input layouts:
//   link      byte 0: server settings (bit 0: ticketing on, so the ticket is decrypted), then the
//             client's stream from its first byte; once linked (only with ticketing off: the
//             fuzzer cannot encrypt a ticket for a key made at run time) the rest is that
//             channel's data messages.
//   messages  byte 0: the channel (its value modulo 4: main, display, inputs, cursor), byte 1:
//             bit 0 the mini header (SPICE_COMMON_CAP_MINI_HEADER), then data messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "netproxy/link.h"
#include "netproxy/messages.h"

namespace spicebox::netproxy::fuzz {

// The password of the fuzzed server when ticketing is on.
inline constexpr std::string_view PASSWORD = "fuzz-password";

// Settings byte of a link input.
inline constexpr uint8_t LINK_TICKETING = 1u << 0;
// Flags byte of a messages input.
inline constexpr uint8_t MESSAGES_MINI_HEADER = 1u << 0;

// Where a stream of data messages stopped.
enum class MessagesStop {
  NeedMore,  // the stream ended (between messages, or inside one: the server would wait)
  SubList,   // a full header with a sub-message list (closed)
  TooLarge,  // a body above maxClientMessageSize(channel) (closed)
  Fault,     // parseClientMessage refused a message (closed)
};
std::string_view describe(MessagesStop stop);

struct MessagesResult {
  MessagesStop stop = MessagesStop::NeedMore;
  size_t accepted = 0;          // messages parsed into a ClientMessage
  size_t dropped = 0;           // inputs with a field out of range: dropped, connection kept
  size_t leftover = 0;          // bytes of an unfinished unit at the end of the stream
  MessageFault fault{};         // MessagesStop::Fault
  uint16_t faultType = 0;       // the refused message's type
  std::vector<uint16_t> types;  // types of the accepted messages, in order
};

// Feeds data messages (after the link stage) as the server's onData does.
MessagesResult feedChannelMessages(ChannelKind channel, bool mini, std::span<const uint8_t> bytes);

// Where a link stage stopped.
enum class LinkStop {
  NeedMore,          // the stream ended inside a link-stage unit
  HeaderFault,       // parseLinkHeader refused the header
  MessFault,         // parseLinkMess refused the link message
  ChannelNotServed,  // a channel type or id the server does not serve (link error reply)
  AuthRefused,       // an authentication mechanism other than the SPICE ticket
  TicketRefused,     // the ticket does not decrypt, or holds another password
  Linked,            // linked: what follows is data messages (`messages`)
};
std::string_view describe(LinkStop stop);

struct LinkResult {
  LinkStop stop = LinkStop::NeedMore;
  std::optional<LinkFault> fault;          // HeaderFault, MessFault
  std::optional<LinkMess> mess;            // once parsed
  bool mini = false;                       // the client announced SPICE_COMMON_CAP_MINI_HEADER
  std::optional<MessagesResult> messages;  // Linked
};

// Feeds one link fuzz input (settings byte, then the stream).
LinkResult feedLinkInput(std::span<const uint8_t> input);

// Feeds one messages fuzz input (channel byte, flags byte, then messages); nullopt when the input
// is shorter than its two leading bytes.
std::optional<MessagesResult> feedMessagesInput(std::span<const uint8_t> input);

// The channel a messages input's first byte selects.
ChannelKind channelOfSelector(uint8_t selector);

}  // namespace spicebox::netproxy::fuzz
