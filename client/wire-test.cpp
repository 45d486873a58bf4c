// Runs in: tests. Input: byte arrays written by hand from spice/protocol.h and spice.proto (not
// produced by the code under test).
#include "client/wire.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <catch2/catch.hpp>
#include <memory>

using namespace spicebox::client;

namespace {

Bytes replyBody(uint32_t numCommon, uint32_t numChannel, uint32_t capsOffset,
                std::vector<uint8_t> tail) {
  Bytes b = {0, 0, 0, 0};        // error: SPICE_LINK_ERR_OK
  b.insert(b.end(), 162, 0xab);  // public key bytes
  auto le = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i)
      b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  le(numCommon);
  le(numChannel);
  le(capsOffset);
  b.insert(b.end(), tail.begin(), tail.end());
  return b;
}

}  // namespace

TEST_CASE("link message: header, SpiceLinkMess and caps as protocol.h lays them out", "[wire]") {
  LinkMess mess;
  mess.connectionId = 0x11223344;
  mess.channelType = 2;  // display
  mess.channelId = 0;
  mess.commonCaps = {0x0b};  // auth selection, auth spice, mini header
  mess.channelCaps = {0x20};
  Bytes expected = {
      'R',  'E',  'D',  'Q',   // magic
      2,    0,    0,    0,     // major
      2,    0,    0,    0,     // minor
      26,   0,    0,    0,     // size: 18-byte SpiceLinkMess + 2 caps words
      0x44, 0x33, 0x22, 0x11,  // connection_id
      2,                       // channel_type
      0,                       // channel_id
      1,    0,    0,    0,     // num_common_caps
      1,    0,    0,    0,     // num_channel_caps
      18,   0,    0,    0,     // caps_offset, from the start of SpiceLinkMess
      0x0b, 0,    0,    0,     // common caps
      0x20, 0,    0,    0,     // channel caps
  };
  CHECK(buildLinkMessage(mess) == expected);
}

TEST_CASE("link reply header: magic, version and size bounds", "[wire]") {
  Bytes good = {'R', 'E', 'D', 'Q', 2, 0, 0, 0, 2, 0, 0, 0, 186, 0, 0, 0};
  auto ok = parseLinkReplyHeader(good);
  REQUIRE(std::holds_alternative<LinkHeader>(ok));
  CHECK(std::get<LinkHeader>(ok).size == 186);

  SECTION("wrong magic") {
    Bytes b = good;
    b[0] = 'X';
    CHECK(std::holds_alternative<std::string>(parseLinkReplyHeader(b)));
  }
  SECTION("CVE-2016-9578-sized reply") {
    Bytes b = {'R', 'E', 'D', 'Q', 2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa};
    CHECK(std::holds_alternative<std::string>(parseLinkReplyHeader(b)));
  }
  SECTION("major version 1") {
    Bytes b = good;
    b[4] = 1;
    CHECK(std::holds_alternative<std::string>(parseLinkReplyHeader(b)));
  }
  SECTION("truncated") {
    CHECK(std::holds_alternative<std::string>(
        parseLinkReplyHeader(std::span<const uint8_t>(good.data(), 10))));
  }
}

TEST_CASE("link reply: caps read at caps_offset, hostile counts and offsets refused", "[wire]") {
  // 178 bytes of fixed fields, then two cap words.
  auto body = replyBody(1, 1, 178, {0x09, 0, 0, 0, 0x01, 0, 0, 0});
  auto parsed = parseLinkReply(body);
  REQUIRE(std::holds_alternative<LinkReply>(parsed));
  auto& reply = std::get<LinkReply>(parsed);
  CHECK(reply.error == 0);
  CHECK(reply.publicKey.size() == 162);
  CHECK(reply.publicKey[161] == 0xab);
  CHECK(reply.commonCaps == std::vector<uint32_t>{9});
  CHECK(reply.channelCaps == std::vector<uint32_t>{1});
  CHECK(hasCap(reply.commonCaps, 0));
  CHECK(hasCap(reply.commonCaps, 3));
  CHECK_FALSE(hasCap(reply.commonCaps, 1));
  CHECK_FALSE(hasCap(reply.commonCaps, 200));

  CHECK(std::holds_alternative<std::string>(parseLinkReply(replyBody(0x40000000, 0, 178, {}))));
  CHECK(std::holds_alternative<std::string>(parseLinkReply(replyBody(1, 0, 0xfffffff0, {}))));
  CHECK(std::holds_alternative<std::string>(parseLinkReply(replyBody(2, 0, 178, {1, 0, 0, 0}))));
  CHECK(std::holds_alternative<std::string>(
      parseLinkReply(std::span<const uint8_t>(body.data(), 100))));
}

TEST_CASE("mini header: u16 type, u32 size", "[wire]") {
  Bytes expected = {0x2e, 0x01, 3, 0, 0, 0, 7, 8, 9};  // type 302, size 3
  Bytes body = {7, 8, 9};
  CHECK(buildMessage(302, body) == expected);
  uint8_t raw[6] = {0x03, 0x00, 0xaa, 0xaa, 0xaa, 0xaa};
  MiniHeader h = parseMiniHeader(std::span<const uint8_t, 6>(raw, 6));
  CHECK(h.type == 3);
  CHECK(h.size == 0xaaaaaaaau);
}

TEST_CASE("reader: reads past the end fail and stay failed", "[wire]") {
  Bytes b = {1, 2, 3, 4, 5};
  Reader r(b);
  CHECK(r.u32() == 0x04030201u);
  CHECK_FALSE(r.failed());
  CHECK(r.u16() == 0);
  CHECK(r.failed());
  CHECK(r.u8() == 0);  // the one byte left is not read after a failure
  Reader far(b, 6);
  CHECK(far.failed());
  Reader huge(b);
  CHECK(huge.bytes(SIZE_MAX).empty());
  CHECK(huge.failed());
}

TEST_CASE("ticket: RSA-OAEP SHA-1 that the private key's owner decrypts", "[wire]") {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_RSA_gen(1024), EVP_PKEY_free);
  REQUIRE(key);
  unsigned char* der = nullptr;
  int derLen = i2d_PUBKEY(key.get(), &der);
  REQUIRE(derLen == 162);  // SPICE_TICKET_PUBKEY_BYTES
  Bytes pub(der, der + derLen);
  OPENSSL_free(der);

  auto ticket = encryptTicket(pub, "s3cret");
  REQUIRE(std::holds_alternative<Bytes>(ticket));
  auto& encrypted = std::get<Bytes>(ticket);
  REQUIRE(encrypted.size() == 128);

  // Decrypt as a server does: OAEP with OpenSSL's defaults (SHA-1).
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new(key.get(), nullptr), EVP_PKEY_CTX_free);
  REQUIRE(EVP_PKEY_decrypt_init(ctx.get()) > 0);
  REQUIRE(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) > 0);
  REQUIRE(EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha1()) > 0);
  unsigned char plain[128];
  size_t plainLen = sizeof plain;
  REQUIRE(EVP_PKEY_decrypt(ctx.get(), plain, &plainLen, encrypted.data(), encrypted.size()) > 0);
  CHECK(std::string(reinterpret_cast<char*>(plain), plainLen) == std::string("s3cret\0", 7));

  CHECK(std::holds_alternative<std::string>(encryptTicket(Bytes(162, 0x30), "x")));
  CHECK(std::holds_alternative<std::string>(encryptTicket(pub, std::string(100, 'a'))));
}
