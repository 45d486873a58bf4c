// Runs in: tests (client-tests, client-tool-tests). Input: what the client under test sends,
// read with bounded sizes and a deadline on every wait (a broken client fails the test, never
// hangs it).
//
// A small SPICE server written for the client's tests: on a unix socket it links a main and a
// display channel (RSA-1024 ticket, no password check), then draws a picture of its own in
// frames, each with a latency stamp (base/latency-stamp.h) at (0,0): through the shared-memory
// extension (SHM_OFFER with a real sealed memfd, SURFACE_CREATE_SHM, SHM_DAMAGE over two
// buffers, waiting for DAMAGE_HANDLED in tear-free mode) when the client advertises it, else as
// SURFACE_CREATE and DRAW_COPY of raw bitmaps. Tests compare what the client shows with the
// picture the server drew (picture()), so nothing expected is hard-coded from the client's side.
#pragma once

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"

namespace spicebox::client::testing {

struct FakeServerOptions {
  uint32_t width = 64, height = 48;
  uint32_t frames = 10;  // frames drawn after the first (whole) picture
  bool offerShm = true;  // offer when the client advertises CAP_SHARED_MEMORY
  bool offerTearFree = true;
  // Row padding of the shared buffers (bytes after each row): the client must use the stride.
  uint32_t stridePadding = 12;
};

struct FakeServerResult {
  std::string error;  // empty: every step went as the protocol says
  bool shmOffered = false, shmAccepted = false, tearFree = false;
  uint64_t framesSent = 0;        // including the first picture
  uint64_t acksReceived = 0;      // DAMAGE_HANDLED, each for the frame just sent
  bool clientClosed = false;      // the client closed the display connection
  std::vector<uint32_t> picture;  // the last picture drawn, width * height x8r8g8b8
};

class FakeSpiceServer {
 public:
  explicit FakeSpiceServer(FakeServerOptions options);
  ~FakeSpiceServer();
  FakeSpiceServer(const FakeSpiceServer&) = delete;
  FakeSpiceServer& operator=(const FakeSpiceServer&) = delete;

  // spice+unix:///... of the listening socket.
  std::string uri() const { return "spice+unix://" + path_; }
  // Waits for the server's thread: it ends when the client closed the display connection, or
  // when a step timed out (then error says what it was waiting for).
  const FakeServerResult& wait();

 private:
  void run();
  void serve();

  FakeServerOptions options_;
  std::string dir_, path_;
  base::Fd listener_;
  base::Fd stop_;  // eventfd: written by the destructor to end every wait of the thread
  std::thread thread_;
  FakeServerResult result_;
  bool joined_ = false;
};

}  // namespace spicebox::client::testing
