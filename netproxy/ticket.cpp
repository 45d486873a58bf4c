// Runs in: netproxy (sandboxed). Input: a client's encrypted ticket (hostile: any 128 bytes).
#include "netproxy/ticket.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <spice/protocol.h>

#include <cstring>

#include "netproxy/link.h"

namespace spicebox::netproxy {

struct TicketKey::Key {
  EVP_PKEY* pkey = nullptr;
  ~Key() { EVP_PKEY_free(pkey); }
};

TicketKey::~TicketKey() = default;

std::unique_ptr<TicketKey> TicketKey::generate() {
  std::unique_ptr<TicketKey> key(new TicketKey);
  key->key_ = std::make_unique<Key>();
  key->key_->pkey = EVP_RSA_gen(SPICE_TICKET_KEY_PAIR_LENGTH);
  if (!key->key_->pkey) {
    spdlog::error("ticket: generating the RSA-{} key failed (OpenSSL)",
                  SPICE_TICKET_KEY_PAIR_LENGTH);
    return nullptr;
  }
  const int len = i2d_PUBKEY(key->key_->pkey, nullptr);
  if (len != SPICE_TICKET_PUBKEY_BYTES) {
    spdlog::error("ticket: public key is {} bytes of DER, SPICE needs {}", len,
                  SPICE_TICKET_PUBKEY_BYTES);
    return nullptr;
  }
  key->publicDer_.resize(static_cast<size_t>(len));
  uint8_t* p = key->publicDer_.data();
  i2d_PUBKEY(key->key_->pkey, &p);
  return key;
}

namespace {

// OAEP with SHA-1 (OpenSSL's default digest for OAEP): what spice-gtk encrypts with.
bool setOaep(EVP_PKEY_CTX* ctx) {
  return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
         EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) > 0;
}

}  // namespace

std::optional<std::string> TicketKey::decrypt(std::span<const uint8_t> ticket) const {
  if (ticket.size() != TICKET_SIZE)
    return std::nullopt;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key_->pkey, nullptr);
  if (!ctx)
    return std::nullopt;
  uint8_t plain[TICKET_SIZE];
  size_t plainLen = sizeof plain;
  const bool ok = EVP_PKEY_decrypt_init(ctx) > 0 && setOaep(ctx) &&
                  EVP_PKEY_decrypt(ctx, plain, &plainLen, ticket.data(), ticket.size()) > 0;
  EVP_PKEY_CTX_free(ctx);
  if (!ok)
    return std::nullopt;
  const size_t end = strnlen(reinterpret_cast<const char*>(plain), plainLen);
  std::string password(reinterpret_cast<const char*>(plain), end);
  OPENSSL_cleanse(plain, sizeof plain);
  return password;
}

std::optional<std::vector<uint8_t>> TicketKey::encryptForTest(std::string_view password) const {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key_->pkey, nullptr);
  if (!ctx)
    return std::nullopt;
  std::string plain(password);
  plain.push_back('\0');
  std::vector<uint8_t> out(TICKET_SIZE);
  size_t outLen = out.size();
  const bool ok =
      EVP_PKEY_encrypt_init(ctx) > 0 && setOaep(ctx) &&
      EVP_PKEY_encrypt(ctx, out.data(), &outLen, reinterpret_cast<const uint8_t*>(plain.data()),
                       plain.size()) > 0;
  EVP_PKEY_CTX_free(ctx);
  if (!ok || outLen != TICKET_SIZE)
    return std::nullopt;
  return out;
}

bool passwordEquals(std::string_view given, std::string_view expected) {
  // Lengths are compared openly (the ticket's length is no secret worth a timing channel of its
  // own: at most 60 characters); the contents with CRYPTO_memcmp.
  if (given.size() != expected.size())
    return false;
  return CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

}  // namespace spicebox::netproxy
