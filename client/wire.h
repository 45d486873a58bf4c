// Runs in: SPICE clients (spicebox's own client library and tests). Input: bytes from a SPICE
// server, untrusted: every read is bounds-checked by Reader, which fails (and stays failed)
// instead of reading past the end.
//
// The SPICE wire format as a client sees it (spice-common's spice.proto, spice/protocol.h): the
// link stage (SpiceLinkHeader, SpiceLinkMess, SpiceLinkReply) and the mini data header that
// frames every later message. Little-endian, packed.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace spicebox::client {

using Bytes = std::vector<uint8_t>;

// Reads little-endian fields from a span. A read past the end (or at an offset outside the span)
// sets failed() and returns zeros from then on, so a parser reads a whole structure and checks
// once.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> data, size_t offset = 0)
      : data_(data), pos_(offset), failed_(offset > data.size()) {}

  uint8_t u8();
  uint16_t u16();
  uint32_t u32();
  uint64_t u64();
  int32_t i32() { return static_cast<int32_t>(u32()); }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  // The next `n` bytes, or an empty span (and failed()) when fewer are left.
  std::span<const uint8_t> bytes(size_t n);
  void skip(size_t n) { bytes(n); }

  size_t position() const { return pos_; }
  size_t remaining() const { return failed_ ? 0 : data_.size() - pos_; }
  bool failed() const { return failed_; }

 private:
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

// Appends little-endian fields.
class Writer {
 public:
  Writer& u8(uint8_t v);
  Writer& u16(uint16_t v);
  Writer& u32(uint32_t v);
  Writer& u64(uint64_t v);
  Writer& i32(int32_t v) { return u32(static_cast<uint32_t>(v)); }
  Writer& i64(int64_t v) { return u64(static_cast<uint64_t>(v)); }
  Writer& bytes(std::span<const uint8_t> b);

  Bytes& data() { return out_; }
  Bytes take() { return std::move(out_); }

 private:
  Bytes out_;
};

// SpiceLinkHeader: magic "REDQ", major, minor, size of what follows.
constexpr size_t LINK_HEADER_SIZE = 16;
// SpiceLinkMess without its capability words.
constexpr size_t LINK_MESS_SIZE = 18;
// SpiceLinkReply without its capability words: error, 162-byte public key, 3 u32.
constexpr size_t LINK_REPLY_SIZE = 4 + 162 + 12;
// SpiceMiniDataHeader: u16 type, u32 size.
constexpr size_t MINI_HEADER_SIZE = 6;
// The encrypted ticket: one RSA-1024 block.
constexpr size_t TICKET_SIZE = 128;
// A link reply larger than this is refused: a reply carries a few capability words (spice-server
// sends fewer than ten); the bound keeps a hostile server from making the client allocate.
constexpr uint32_t MAX_LINK_REPLY_SIZE = 4096;
// Capability words accepted per list in a link reply (1024 capability bits).
constexpr uint32_t MAX_CAPABILITY_WORDS = 32;

struct LinkMess {
  uint32_t connectionId = 0;  // 0 for the main channel, else the session id from MAIN_INIT
  uint8_t channelType = 0;
  uint8_t channelId = 0;
  std::vector<uint32_t> commonCaps;
  std::vector<uint32_t> channelCaps;
};

// SpiceLinkHeader (protocol 2.2) followed by SpiceLinkMess and its capability words.
Bytes buildLinkMessage(const LinkMess& mess);

struct LinkHeader {
  uint32_t magic = 0, major = 0, minor = 0, size = 0;
};
// Parses exactly LINK_HEADER_SIZE bytes; refuses a wrong magic, a version other than 2.x or a
// size outside [LINK_REPLY_SIZE, MAX_LINK_REPLY_SIZE].
std::variant<LinkHeader, std::string> parseLinkReplyHeader(std::span<const uint8_t> bytes);

struct LinkReply {
  uint32_t error = 0;              // SPICE_LINK_ERR_*
  std::vector<uint8_t> publicKey;  // DER SubjectPublicKeyInfo, 162 bytes
  std::vector<uint32_t> commonCaps;
  std::vector<uint32_t> channelCaps;
};
// Parses the SpiceLinkReply body (what the link header's size announced).
std::variant<LinkReply, std::string> parseLinkReply(std::span<const uint8_t> body);

// Whether capability bit `cap` is set in a list of capability words.
bool hasCap(const std::vector<uint32_t>& words, unsigned cap);
// Sets capability bit `cap`, growing the list.
void setCap(std::vector<uint32_t>& words, unsigned cap);

struct MiniHeader {
  uint16_t type = 0;
  uint32_t size = 0;
};
Bytes buildMessage(uint16_t type, std::span<const uint8_t> body);
// Parses MINI_HEADER_SIZE bytes.
MiniHeader parseMiniHeader(std::span<const uint8_t, MINI_HEADER_SIZE> bytes);

// The ticket: `password` plus its terminating NUL, encrypted with RSA-OAEP (SHA-1, MGF1 SHA-1)
// under the server's DER public key; exactly TICKET_SIZE bytes, or an error (unusable key,
// password too long for one block).
std::variant<Bytes, std::string> encryptTicket(std::span<const uint8_t> publicKeyDer,
                                               const std::string& password);

}  // namespace spicebox::client
