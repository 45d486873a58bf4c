// Runs in: tests. Input: hand-made link-stage bytes, hostile ones named after the attack.
// The link stage's parsers (netproxy/link.h) and the ticket's RSA-OAEP (netproxy/ticket.h).
#include "netproxy/link.h"

#include <spice/enums.h>
#include <spice/protocol.h>

#include <catch2/catch.hpp>

#include "netproxy/ticket.h"
#include "netproxy/wire.h"

namespace spicebox::netproxy {
namespace {

std::vector<uint8_t> header(uint32_t magic, uint32_t major, uint32_t minor, uint32_t size) {
  wire::Writer w;
  w.u32(magic).u32(major).u32(minor).u32(size);
  return w.take();
}

// A SpiceLinkMess as spice-gtk writes it: fixed part, then the caps right after it.
std::vector<uint8_t> linkMess(uint32_t connectionId, uint8_t type, uint8_t id,
                              std::vector<uint32_t> common, std::vector<uint32_t> channel,
                              uint32_t capsOffset = LINK_MESS_FIXED_SIZE) {
  wire::Writer w;
  w.u32(connectionId).u8(type).u8(id);
  w.u32(static_cast<uint32_t>(common.size())).u32(static_cast<uint32_t>(channel.size()));
  w.u32(capsOffset);
  for (uint32_t c : common)
    w.u32(c);
  for (uint32_t c : channel)
    w.u32(c);
  return w.take();
}

template <typename T>
LinkFault faultOf(const std::variant<T, LinkFault>& v) {
  REQUIRE(std::holds_alternative<LinkFault>(v));
  return std::get<LinkFault>(v);
}

TEST_CASE("link header: a spice-gtk header is accepted and gives the message size", "[link]") {
  auto parsed = parseLinkHeader(header(SPICE_MAGIC, 2, 2, 26));
  REQUIRE(std::holds_alternative<uint32_t>(parsed));
  CHECK(std::get<uint32_t>(parsed) == 26);
}

TEST_CASE("link header: wrong-magic", "[link][hostile]") {
  CHECK(faultOf(parseLinkHeader(header(0x52454451 /* "QDER": REDQ byte-swapped */, 2, 2, 26))) ==
        LinkFault::BadMagic);
  const std::string http = "GET / HTTP/1.1\r\n";
  CHECK(faultOf(parseLinkHeader({reinterpret_cast<const uint8_t*>(http.data()), 16})) ==
        LinkFault::BadMagic);
}

TEST_CASE("link header: cve-2016-9578 (REDQ, 2.2, size 0xaaaaaaaa) is refused", "[link][hostile]") {
  CHECK(faultOf(parseLinkHeader(header(SPICE_MAGIC, 2, 2, 0xaaaaaaaa))) == LinkFault::TooLarge);
  CHECK(faultOf(parseLinkHeader(header(SPICE_MAGIC, 2, 2, MAX_LINK_MESS_SIZE + 1))) ==
        LinkFault::TooLarge);
  CHECK(std::holds_alternative<uint32_t>(
      parseLinkHeader(header(SPICE_MAGIC, 2, 2, MAX_LINK_MESS_SIZE))));
}

TEST_CASE("link header: other major versions, undersized messages, short headers",
          "[link][hostile]") {
  CHECK(faultOf(parseLinkHeader(header(SPICE_MAGIC, 1, 3, 26))) == LinkFault::VersionMismatch);
  CHECK(faultOf(parseLinkHeader(header(SPICE_MAGIC, 3, 0, 26))) == LinkFault::VersionMismatch);
  CHECK(faultOf(parseLinkHeader(header(SPICE_MAGIC, 2, 2, LINK_MESS_FIXED_SIZE - 1))) ==
        LinkFault::TooSmall);
  auto h = header(SPICE_MAGIC, 2, 2, 26);
  h.resize(15);
  CHECK(faultOf(parseLinkHeader(h)) == LinkFault::BadMagic);  // never read past the end
}

TEST_CASE("link message: channel, session and capabilities are read", "[link]") {
  auto parsed = parseLinkMess(linkMess(0x1234, SPICE_CHANNEL_DISPLAY, 0, {0xb}, {0x22, 0x1}));
  REQUIRE(std::holds_alternative<LinkMess>(parsed));
  const LinkMess& m = std::get<LinkMess>(parsed);
  CHECK(m.connectionId == 0x1234);
  CHECK(m.channelType == SPICE_CHANNEL_DISPLAY);
  CHECK(m.channelId == 0);
  CHECK(m.commonCaps == std::vector<uint32_t>{0xb});
  CHECK(m.channelCaps == std::vector<uint32_t>{0x22, 0x1});
  CHECK(hasCap(m.commonCaps, SPICE_COMMON_CAP_MINI_HEADER));
  CHECK(hasCap(m.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION));
  CHECK_FALSE(hasCap(m.commonCaps, SPICE_COMMON_CAP_AUTH_SASL));
  CHECK(hasCap(m.channelCaps, 32));
  CHECK(hasCap(m.channelCaps, 5));
  CHECK_FALSE(hasCap(m.channelCaps, 33));
  CHECK_FALSE(hasCap(m.channelCaps, 64));  // beyond the words sent
}

TEST_CASE("link message: caps placed after a gap are found at their offset", "[link]") {
  auto bytes = linkMess(0, SPICE_CHANNEL_MAIN, 0, {}, {}, 22);
  wire::Writer w;
  w.bytes(bytes);
  w.u32(0xdeadbeef);  // the gap (4 bytes: offset 18 .. 21)
  w.u32(0x8);         // common cap word at 22
  auto raw = w.take();
  raw[6] = 1;  // num_common_caps (bytes 6..9) = 1
  auto parsed = parseLinkMess(raw);
  REQUIRE(std::holds_alternative<LinkMess>(parsed));
  CHECK(std::get<LinkMess>(parsed).commonCaps == std::vector<uint32_t>{0x8});
}

TEST_CASE("link message: huge-capability-counts", "[link][hostile]") {
  CHECK(faultOf(parseLinkMess(linkMess(0, 1, 0, std::vector<uint32_t>(MAX_CAPS_WORDS + 1, 0),
                                       {}))) == LinkFault::TooManyCaps);
  // Counts that claim far more than the message holds, without the words.
  wire::Writer w;
  w.u32(0).u8(1).u8(0).u32(0xffffffff).u32(0xffffffff).u32(18);
  CHECK(faultOf(parseLinkMess(w.take())) == LinkFault::TooManyCaps);
}

TEST_CASE("link message: capabilities-outside-the-message", "[link][hostile]") {
  // Offset past the end, offset that wraps 32 bits, offset into the fixed part, counts that
  // overrun the end by one word.
  CHECK(faultOf(parseLinkMess(linkMess(0, 1, 0, {1}, {}, 4000))) == LinkFault::CapsOutOfRange);
  CHECK(faultOf(parseLinkMess(linkMess(0, 1, 0, {1}, {}, 0xfffffffe))) ==
        LinkFault::CapsOutOfRange);
  CHECK(faultOf(parseLinkMess(linkMess(0, 1, 0, {1}, {}, 2))) == LinkFault::CapsOutOfRange);
  auto bytes = linkMess(0, 1, 0, {1}, {2});
  bytes.resize(bytes.size() - 1);
  CHECK(faultOf(parseLinkMess(bytes)) == LinkFault::CapsOutOfRange);
  CHECK(faultOf(parseLinkMess(std::vector<uint8_t>(10, 0))) == LinkFault::TooSmall);
}

TEST_CASE("link reply: header, key, capabilities at the offset the spec gives", "[link]") {
  std::vector<uint8_t> key(SPICE_TICKET_PUBKEY_BYTES);
  for (size_t i = 0; i < key.size(); ++i)
    key[i] = static_cast<uint8_t>(i * 7);
  std::vector<uint32_t> common;
  setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
  setCap(common, SPICE_COMMON_CAP_AUTH_SPICE);
  setCap(common, SPICE_COMMON_CAP_MINI_HEADER);
  const std::vector<uint32_t> channel = {0x5};
  auto reply = buildLinkReply(SPICE_LINK_ERR_OK, key, common, channel);
  // sizeof(SpiceLinkHeader) + sizeof(SpiceLinkReply) + 2 caps words, from the C headers.
  REQUIRE(reply.size() == sizeof(SpiceLinkHeader) + sizeof(SpiceLinkReply) + 8);
  wire::Reader r(reply);
  CHECK(r.u32() == SPICE_MAGIC);
  CHECK(r.u32() == SPICE_VERSION_MAJOR);
  CHECK(r.u32() == SPICE_VERSION_MINOR);
  CHECK(r.u32() == sizeof(SpiceLinkReply) + 8);
  CHECK(r.u32() == SPICE_LINK_ERR_OK);
  auto gotKey = r.bytes(SPICE_TICKET_PUBKEY_BYTES);
  CHECK(std::vector<uint8_t>(gotKey.begin(), gotKey.end()) == key);
  CHECK(r.u32() == 1);
  CHECK(r.u32() == 1);
  CHECK(r.u32() == sizeof(SpiceLinkReply));
  CHECK(r.u32() == 0xb);  // bits 0, 1, 3
  CHECK(r.u32() == 0x5);
  CHECK(r.ok());
  CHECK(r.remaining() == 0);
}

TEST_CASE("ticket: a password encrypted as a client does decrypts, others do not",
          "[link][ticket]") {
  auto key = TicketKey::generate();
  REQUIRE(key);
  auto der = key->publicKeyDer();
  REQUIRE(der.size() == SPICE_TICKET_PUBKEY_BYTES);
  CHECK(der[0] == 0x30);  // a DER SEQUENCE: SubjectPublicKeyInfo

  auto ticket = key->encryptForTest("correct horse");
  REQUIRE(ticket);
  REQUIRE(ticket->size() == TICKET_SIZE);
  auto plain = key->decrypt(*ticket);
  REQUIRE(plain);
  CHECK(*plain == "correct horse");

  SECTION("ticket-of-wrong-length") {
    auto shorter = *ticket;
    shorter.pop_back();
    CHECK_FALSE(key->decrypt(shorter));
    auto longer = *ticket;
    longer.push_back(0);
    CHECK_FALSE(key->decrypt(longer));
    CHECK_FALSE(key->decrypt({}));
  }
  SECTION("tampered-ticket") {
    auto tampered = *ticket;
    tampered[60] ^= 1;
    CHECK_FALSE(key->decrypt(tampered));
    CHECK_FALSE(key->decrypt(std::vector<uint8_t>(TICKET_SIZE, 0xff)));
  }
  SECTION("another-server's-key") {
    auto other = TicketKey::generate();
    REQUIRE(other);
    auto foreign = other->encryptForTest("correct horse");
    REQUIRE(foreign);
    CHECK_FALSE(key->decrypt(*foreign));
  }
}

TEST_CASE("ticket: password comparison", "[link][ticket]") {
  CHECK(passwordEquals("abc", "abc"));
  CHECK_FALSE(passwordEquals("abc", "abd"));
  CHECK_FALSE(passwordEquals("abc", "abcd"));
  CHECK_FALSE(passwordEquals("", "a"));
  CHECK(passwordEquals("", ""));
}

}  // namespace
}  // namespace spicebox::netproxy
