// Runs in: tests. Input: a whole session against the fake server of fake-spice-server.h (link
// stage, main and display channels over a unix socket): the picture the client ends up with
// must equal the one the server drew, in each shared-memory wish.
#include <sys/socket.h>

#include <catch2/catch.hpp>

#include "client/fake-spice-server.h"
#include "client/spice-client.h"
#include "tests/support/require-ok.h"

using namespace spicebox::client;
using namespace spicebox::client::testing;

namespace {

struct Outcome {
  FakeServerResult server;
  std::vector<uint32_t> picture;
  uint64_t frames = 0;
  bool shmActive = false, tearFree = false;
};

Outcome runSession(ShmWish wish, FakeServerOptions options) {
  FakeSpiceServer server(options);
  SessionOptions so;
  auto target = Target::parse(server.uri());
  REQUIRE(std::holds_alternative<Target>(target));
  so.target = std::get<Target>(target);
  so.shm = wish;
  auto connected = Session::connect(so);
  if (auto* err = std::get_if<std::string>(&connected))
    FAIL(*err << " (the server: " << server.wait().error << ")");
  auto& session = *std::get<std::unique_ptr<Session>>(connected);
  auto display = session.openDisplay();
  if (auto* err = std::get_if<std::string>(&display))
    FAIL(*err);
  DisplayChannel* d = std::get<DisplayChannel*>(display);
  Outcome out;
  d->setFrameCallback([&](uint64_t, std::span<const Rect>) { ++out.frames; });
  // The last frame carries stamp sequence frames + 1 at (1, 0).
  auto channels = session.channels();
  REQUIRE_OK(pumpUntil(
      channels,
      [&] {
        const Canvas* p = d->primary();
        return p && p->width() > 1 && p->pixel(1, 0) == options.frames + 1;
      },
      Clock::now() + std::chrono::seconds(20), "the last frame"));
  out.picture = d->primary()->pixels();
  out.shmActive = d->shmActive();
  out.tearFree = d->tearFree();
  // Closing the display connection lets the server finish.
  ::shutdown(d->fd(), SHUT_RDWR);
  out.server = server.wait();
  return out;
}

// Where two pictures first differ, for the failure message.
std::string firstDifference(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
                            uint32_t width) {
  if (a.size() != b.size())
    return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i])
      return "first at (" + std::to_string(i % width) + "," + std::to_string(i / width) +
             "): " + std::to_string(a[i]) + " and " + std::to_string(b[i]);
  return "none";
}

}  // namespace

TEST_CASE("session: each shared-memory wish against a server, the picture as drawn",
          "[session][shm]") {
  FakeServerOptions options;
#define CHECK_SAME_PICTURE(o)                                                             \
  do {                                                                                    \
    INFO("differences: " << firstDifference(o.picture, o.server.picture, options.width)); \
    CHECK(o.picture == o.server.picture);                                                 \
  } while (false)
  SECTION("accept") {
    auto o = runSession(ShmWish::Accept, options);
    CHECK(o.server.error.empty());
    CHECK(o.server.shmAccepted);
    CHECK_FALSE(o.server.tearFree);
    CHECK(o.shmActive);
    CHECK(o.frames == options.frames + 1);
    CHECK_SAME_PICTURE(o);
  }
  SECTION("tear-free") {
    auto o = runSession(ShmWish::TearFree, options);
    CHECK(o.server.error.empty());
    CHECK(o.server.tearFree);
    CHECK(o.tearFree);
    CHECK(o.server.acksReceived == options.frames + 1);
    CHECK_SAME_PICTURE(o);
  }
  SECTION("reject") {
    auto o = runSession(ShmWish::Reject, options);
    CHECK(o.server.error.empty());
    CHECK(o.server.shmOffered);
    CHECK_FALSE(o.server.shmAccepted);
    CHECK_FALSE(o.shmActive);
    CHECK_SAME_PICTURE(o);
  }
  SECTION("off") {
    auto o = runSession(ShmWish::Off, options);
    CHECK(o.server.error.empty());
    CHECK_FALSE(o.server.shmOffered);
    CHECK_SAME_PICTURE(o);
  }
  SECTION("accept, server without the extension") {
    options.offerShm = false;
    auto o = runSession(ShmWish::Accept, options);
    CHECK(o.server.error.empty());
    CHECK_FALSE(o.shmActive);
    CHECK_SAME_PICTURE(o);
  }
}
