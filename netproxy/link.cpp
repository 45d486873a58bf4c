// Runs in: netproxy (sandboxed). Input: a SPICE client's link-stage bytes (hostile).
#include "netproxy/link.h"

#include <spice/protocol.h>

#include <algorithm>

#include "netproxy/wire.h"

namespace spicebox::netproxy {

std::string_view describe(LinkFault fault) {
  switch (fault) {
    case LinkFault::BadMagic:
      return "bad magic (not a SPICE client)";
    case LinkFault::VersionMismatch:
      return "protocol major version is not 2";
    case LinkFault::TooLarge:
      return "link message larger than 4096 bytes";
    case LinkFault::TooSmall:
      return "link message shorter than its fixed part";
    case LinkFault::TooManyCaps:
      return "more than 32 capability words";
    case LinkFault::CapsOutOfRange:
      return "capabilities outside the link message";
  }
  return "unknown";
}

std::variant<uint32_t, LinkFault> parseLinkHeader(std::span<const uint8_t> header) {
  wire::Reader r(header);
  const uint32_t magic = r.u32(), major = r.u32();
  r.u32();  // minor: 2.x clients all speak what we need
  const uint32_t size = r.u32();
  if (!r.ok() || magic != SPICE_MAGIC)
    return LinkFault::BadMagic;
  if (major != SPICE_VERSION_MAJOR)
    return LinkFault::VersionMismatch;
  if (size > MAX_LINK_MESS_SIZE)
    return LinkFault::TooLarge;
  if (size < LINK_MESS_FIXED_SIZE)
    return LinkFault::TooSmall;
  return size;
}

std::variant<LinkMess, LinkFault> parseLinkMess(std::span<const uint8_t> mess) {
  if (mess.size() > MAX_LINK_MESS_SIZE)
    return LinkFault::TooLarge;
  wire::Reader r(mess);
  LinkMess out;
  out.connectionId = r.u32();
  out.channelType = r.u8();
  out.channelId = r.u8();
  const uint32_t numCommon = r.u32(), numChannel = r.u32(), capsOffset = r.u32();
  if (!r.ok())
    return LinkFault::TooSmall;
  if (numCommon > MAX_CAPS_WORDS || numChannel > MAX_CAPS_WORDS)
    return LinkFault::TooManyCaps;
  // 64-bit arithmetic: no overflow with 32-bit counts and offsets.
  const uint64_t capsEnd = uint64_t{capsOffset} + (uint64_t{numCommon} + numChannel) * 4;
  if (capsOffset < LINK_MESS_FIXED_SIZE || capsEnd > mess.size())
    return LinkFault::CapsOutOfRange;
  wire::Reader caps(mess.subspan(capsOffset));
  for (uint32_t i = 0; i < numCommon; ++i)
    out.commonCaps.push_back(caps.u32());
  for (uint32_t i = 0; i < numChannel; ++i)
    out.channelCaps.push_back(caps.u32());
  return out;
}

std::vector<uint8_t> buildLinkReply(uint32_t error, std::span<const uint8_t> publicKey,
                                    std::span<const uint32_t> commonCaps,
                                    std::span<const uint32_t> channelCaps) {
  const size_t bodySize = LINK_REPLY_FIXED_SIZE + 4 * (commonCaps.size() + channelCaps.size());
  wire::Writer w(LINK_HEADER_SIZE + bodySize);
  w.u32(SPICE_MAGIC).u32(SPICE_VERSION_MAJOR).u32(SPICE_VERSION_MINOR);
  w.u32(static_cast<uint32_t>(bodySize));
  w.u32(error);
  uint8_t key[SPICE_TICKET_PUBKEY_BYTES] = {};
  std::copy_n(publicKey.begin(), std::min(publicKey.size(), sizeof key), key);
  w.bytes(key);
  w.u32(static_cast<uint32_t>(commonCaps.size())).u32(static_cast<uint32_t>(channelCaps.size()));
  w.u32(static_cast<uint32_t>(LINK_REPLY_FIXED_SIZE));
  for (uint32_t c : commonCaps)
    w.u32(c);
  for (uint32_t c : channelCaps)
    w.u32(c);
  return w.take();
}

bool hasCap(std::span<const uint32_t> caps, unsigned bit) {
  return bit / 32 < caps.size() && (caps[bit / 32] >> (bit % 32)) & 1;
}

void setCap(std::vector<uint32_t>& caps, unsigned bit) {
  if (caps.size() <= bit / 32)
    caps.resize(bit / 32 + 1, 0);
  caps[bit / 32] |= 1u << (bit % 32);
}

}  // namespace spicebox::netproxy
