// Runs in: netproxy (sandboxed). Input: a client's encrypted ticket (hostile: any 128 bytes).
// The key pair is made before the sandbox is entered (TicketKey::generate, from Server::prepare).
//
// SPICE's ticket: the client encrypts its password (nul-terminated) with the RSA-1024 public key
// of our link reply, padded with RSA-OAEP (SHA-1, as spice-server and spice-gtk use it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace spicebox::netproxy {

class TicketKey {
 public:
  // A fresh RSA-1024 key pair; nullptr when OpenSSL fails (logged).
  static std::unique_ptr<TicketKey> generate();
  ~TicketKey();
  TicketKey(const TicketKey&) = delete;
  TicketKey& operator=(const TicketKey&) = delete;

  // SubjectPublicKeyInfo DER: SPICE_TICKET_PUBKEY_BYTES (162) bytes.
  std::span<const uint8_t> publicKeyDer() const { return publicDer_; }
  // The password in `ticket` (up to its first nul), or nullopt when it does not decrypt (wrong
  // size, wrong key, bad padding).
  std::optional<std::string> decrypt(std::span<const uint8_t> ticket) const;
  // Encrypts like a client does (tests).
  std::optional<std::vector<uint8_t>> encryptForTest(std::string_view password) const;

 private:
  TicketKey() = default;
  struct Key;
  std::unique_ptr<Key> key_;
  std::vector<uint8_t> publicDer_;
};

// Equal strings, in time that depends on the lengths only (not on where they first differ).
bool passwordEquals(std::string_view given, std::string_view expected);

}  // namespace spicebox::netproxy
