// Runs in: SPICE clients. Input: bytes from a SPICE server, untrusted (see wire.h).
#include "client/wire.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <spice/protocol.h>

#include <memory>

namespace spicebox::client {

std::span<const uint8_t> Reader::bytes(size_t n) {
  if (failed_ || n > data_.size() - pos_) {
    failed_ = true;
    return {};
  }
  auto out = data_.subspan(pos_, n);
  pos_ += n;
  return out;
}

uint8_t Reader::u8() {
  auto b = bytes(1);
  return b.empty() ? 0 : b[0];
}

uint16_t Reader::u16() {
  auto b = bytes(2);
  return b.empty() ? 0 : static_cast<uint16_t>(b[0] | b[1] << 8);
}

uint32_t Reader::u32() {
  auto b = bytes(4);
  if (b.empty())
    return 0;
  return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
}

uint64_t Reader::u64() {
  uint64_t lo = u32();
  uint64_t hi = u32();
  return lo | hi << 32;
}

Writer& Writer::u8(uint8_t v) {
  out_.push_back(v);
  return *this;
}

Writer& Writer::u16(uint16_t v) {
  out_.push_back(static_cast<uint8_t>(v));
  out_.push_back(static_cast<uint8_t>(v >> 8));
  return *this;
}

Writer& Writer::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  return *this;
}

Writer& Writer::u64(uint64_t v) {
  u32(static_cast<uint32_t>(v));
  return u32(static_cast<uint32_t>(v >> 32));
}

Writer& Writer::bytes(std::span<const uint8_t> b) {
  out_.insert(out_.end(), b.begin(), b.end());
  return *this;
}

Bytes buildLinkMessage(const LinkMess& mess) {
  uint32_t capsBytes =
      static_cast<uint32_t>(4 * (mess.commonCaps.size() + mess.channelCaps.size()));
  Writer w;
  w.u32(SPICE_MAGIC).u32(SPICE_VERSION_MAJOR).u32(SPICE_VERSION_MINOR);
  w.u32(static_cast<uint32_t>(LINK_MESS_SIZE) + capsBytes);
  w.u32(mess.connectionId).u8(mess.channelType).u8(mess.channelId);
  w.u32(static_cast<uint32_t>(mess.commonCaps.size()));
  w.u32(static_cast<uint32_t>(mess.channelCaps.size()));
  w.u32(static_cast<uint32_t>(LINK_MESS_SIZE));  // caps_offset: from the start of SpiceLinkMess
  for (uint32_t c : mess.commonCaps)
    w.u32(c);
  for (uint32_t c : mess.channelCaps)
    w.u32(c);
  return w.take();
}

std::variant<LinkHeader, std::string> parseLinkReplyHeader(std::span<const uint8_t> bytes) {
  Reader r(bytes);
  LinkHeader h{r.u32(), r.u32(), r.u32(), r.u32()};
  if (r.failed())
    return std::string("link reply header truncated");
  if (h.magic != SPICE_MAGIC)
    return "link reply has magic 0x" + std::to_string(h.magic) + ", not REDQ";
  if (h.major != SPICE_VERSION_MAJOR)
    return "server speaks protocol " + std::to_string(h.major) + "." + std::to_string(h.minor) +
           ", this client only 2.x";
  if (h.size < LINK_REPLY_SIZE || h.size > MAX_LINK_REPLY_SIZE)
    return "link reply size " + std::to_string(h.size) + " outside [" +
           std::to_string(LINK_REPLY_SIZE) + ", " + std::to_string(MAX_LINK_REPLY_SIZE) + "]";
  return h;
}

std::variant<LinkReply, std::string> parseLinkReply(std::span<const uint8_t> body) {
  Reader r(body);
  LinkReply reply;
  reply.error = r.u32();
  auto key = r.bytes(SPICE_TICKET_PUBKEY_BYTES);
  reply.publicKey.assign(key.begin(), key.end());
  uint32_t numCommon = r.u32();
  uint32_t numChannel = r.u32();
  uint32_t capsOffset = r.u32();
  if (r.failed())
    return std::string("link reply truncated: ") + std::to_string(body.size()) + " bytes";
  if (numCommon > MAX_CAPABILITY_WORDS || numChannel > MAX_CAPABILITY_WORDS)
    return "link reply announces " + std::to_string(numCommon) + " + " +
           std::to_string(numChannel) + " capability words (at most " +
           std::to_string(MAX_CAPABILITY_WORDS) + " each)";
  Reader caps(body, capsOffset);
  for (uint32_t i = 0; i < numCommon; ++i)
    reply.commonCaps.push_back(caps.u32());
  for (uint32_t i = 0; i < numChannel; ++i)
    reply.channelCaps.push_back(caps.u32());
  if (caps.failed())
    return "link reply's capabilities (offset " + std::to_string(capsOffset) +
           ") lie outside its " + std::to_string(body.size()) + " bytes";
  return reply;
}

bool hasCap(const std::vector<uint32_t>& words, unsigned cap) {
  return cap / 32 < words.size() && (words[cap / 32] >> (cap % 32) & 1);
}

void setCap(std::vector<uint32_t>& words, unsigned cap) {
  if (words.size() <= cap / 32)
    words.resize(cap / 32 + 1);
  words[cap / 32] |= 1u << (cap % 32);
}

Bytes buildMessage(uint16_t type, std::span<const uint8_t> body) {
  Writer w;
  w.u16(type).u32(static_cast<uint32_t>(body.size())).bytes(body);
  return w.take();
}

MiniHeader parseMiniHeader(std::span<const uint8_t, MINI_HEADER_SIZE> bytes) {
  Reader r(bytes);
  MiniHeader h;
  h.type = r.u16();
  h.size = r.u32();
  return h;
}

std::variant<Bytes, std::string> encryptTicket(std::span<const uint8_t> publicKeyDer,
                                               const std::string& password) {
  const unsigned char* p = publicKeyDer.data();
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      d2i_PUBKEY(nullptr, &p, static_cast<long>(publicKeyDer.size())), EVP_PKEY_free);
  if (!key)
    return std::string("the server's public key is not a DER SubjectPublicKeyInfo");
  if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA || EVP_PKEY_get_size(key.get()) != 128)
    return std::string("the server's public key is not RSA-1024");
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new(key.get(), nullptr), EVP_PKEY_CTX_free);
  // OAEP's default digest and MGF1 digest are SHA-1, which is what SPICE specifies.
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) <= 0)
    return std::string("OpenSSL cannot set up RSA-OAEP");
  // 128-byte block minus OAEP SHA-1 overhead (2 * 20 + 2).
  if (password.size() + 1 > TICKET_SIZE - 42)
    return "password of " + std::to_string(password.size()) + " bytes is too long (at most " +
           std::to_string(TICKET_SIZE - 43) + ")";
  Bytes out(TICKET_SIZE);
  size_t outLen = out.size();
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &outLen,
                       reinterpret_cast<const unsigned char*>(password.c_str()),
                       password.size() + 1) <= 0 ||
      outLen != TICKET_SIZE)
    return std::string("RSA-OAEP encryption of the ticket failed");
  return out;
}

}  // namespace spicebox::client
