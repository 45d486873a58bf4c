// Runs in: spicebox-view and spicebox-latency (a user's client tools; unsandboxed). Input: the
// command line and a password file the user names (first line only, length-checked), and
// everything a SPICE server sends, untrusted (handled by the client library, spice-client.h).
//
// What both tools share: connecting a session (main + display channels) to a URI with the
// shared-memory wish, pumping its channels with a bounded wait, and writing the picture as PNG.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "client/spice-client.h"

namespace spicebox::client::tools {

struct ConnectOptions {
  std::string uri;           // spice://HOST:PORT, spice+unix:///PATH (Target::parse)
  std::string passwordFile;  // empty: the server has ticketing disabled
  ShmWish shm = ShmWish::Accept;
  std::optional<uint8_t> preferredCompression;
  std::chrono::milliseconds stepTimeout{10000};  // each step of linking
};

// A password file's first line (without its line end): at most 60 bytes, as SPICE tickets.
std::variant<std::string, std::string> readPasswordFile(const std::string& path);

// A session with its display channel open.
class ToolSession {
 public:
  static std::variant<std::unique_ptr<ToolSession>, std::string> connect(
      const ConnectOptions& options);

  DisplayChannel& display() { return *display_; }
  Session& session() { return *session_; }
  // Waits at most `wait` for bytes on any channel, then handles what arrived on each. An error
  // once a channel failed (the server closed it, or sent something malformed). A signal ends the
  // wait early (no error).
  Error pump(std::chrono::milliseconds wait);
  // "shm-tear-free", "shm" or "normal": what the display channel ended up in.
  std::string mode() const;

 private:
  std::unique_ptr<Session> session_;
  DisplayChannel* display_ = nullptr;
};

// Writes a canvas (x8r8g8b8) as an 8-bit RGB PNG; an error names the file.
Error writeCanvasPng(const std::string& path, const Canvas& canvas);

}  // namespace spicebox::client::tools
