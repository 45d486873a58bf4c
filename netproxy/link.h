// Runs in: netproxy (sandboxed). Input: a SPICE client's link-stage bytes (hostile). Every size,
// count and offset is checked against named limits before anything is allocated from it.
//
// The link stage's messages: SpiceLinkHeader and SpiceLinkMess in, SpiceLinkReply out
// (spice/protocol.h, protocol 2.2), and the capability bit helpers.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

namespace spicebox::netproxy {

// SpiceLinkHeader: magic, major, minor, size (of the SpiceLinkMess that follows).
constexpr size_t LINK_HEADER_SIZE = 16;
// SpiceLinkMess without its capabilities: connection_id u32, channel_type u8, channel_id u8,
// num_common_caps u32, num_channel_caps u32, caps_offset u32.
constexpr size_t LINK_MESS_FIXED_SIZE = 18;
// The largest SpiceLinkMess we read (CVE-2016-9578: spice-server once allocated whatever size a
// client claimed). spice-gtk sends 18 bytes plus a few capability words.
constexpr uint32_t MAX_LINK_MESS_SIZE = 4096;
// Capability words per list: spice-gtk sends 1 common and 1 channel word; 32 words are 1024
// capability bits, far more than SPICE defines.
constexpr uint32_t MAX_CAPS_WORDS = 32;
// The encrypted ticket: one RSA-1024 block.
constexpr size_t TICKET_SIZE = 128;
// SpiceLinkReply without its capabilities: error u32, pub_key[162], num_common_caps u32,
// num_channel_caps u32, caps_offset u32.
constexpr size_t LINK_REPLY_FIXED_SIZE = 4 + 162 + 12;

enum class LinkFault {
  BadMagic,         // not "REDQ": not a SPICE client
  VersionMismatch,  // major version other than 2
  TooLarge,         // link message size above MAX_LINK_MESS_SIZE
  TooSmall,         // link message shorter than its fixed part
  TooManyCaps,      // a capability count above MAX_CAPS_WORDS
  CapsOutOfRange,   // caps_offset/counts point outside the message
};
std::string_view describe(LinkFault fault);

// The header's `size` when the header is acceptable.
std::variant<uint32_t, LinkFault> parseLinkHeader(std::span<const uint8_t> header);

struct LinkMess {
  uint32_t connectionId = 0;
  uint8_t channelType = 0;
  uint8_t channelId = 0;
  std::vector<uint32_t> commonCaps, channelCaps;
};
// `mess` is exactly the header's size bytes.
std::variant<LinkMess, LinkFault> parseLinkMess(std::span<const uint8_t> mess);

// The reply with its SpiceLinkHeader. `publicKey` is the SubjectPublicKeyInfo DER (162 bytes
// for RSA-1024; zero-filled when an error is sent).
std::vector<uint8_t> buildLinkReply(uint32_t error, std::span<const uint8_t> publicKey,
                                    std::span<const uint32_t> commonCaps,
                                    std::span<const uint32_t> channelCaps);

bool hasCap(std::span<const uint32_t> caps, unsigned bit);
void setCap(std::vector<uint32_t>& caps, unsigned bit);

}  // namespace spicebox::netproxy
