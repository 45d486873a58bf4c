#include "tests/integration/client-steps.h"

#include <stdlib.h>

#include <catch2/catch.hpp>

namespace spicebox::test {

using client::Clock;
using namespace std::chrono_literals;

std::optional<std::vector<std::string>> awaitLog(BrokerProcess& broker, const std::regex& re,
                                                 std::chrono::milliseconds timeout) {
  std::vector<std::string> groups;
  auto found = broker.waitForStatus(
      [&](const BrokerStatus&) {
        const std::string& text = broker.stderrText();
        std::smatch m;
        if (!std::regex_search(text, m, re))
          return false;
        for (const auto& g : m)
          groups.push_back(g.str());
        return true;
      },
      timeout);
  if (!found)
    return std::nullopt;
  return groups;
}

client::Target startListening(BrokerProcess& broker, const std::string& kind) {
  INFO(broker.stderrText());
  REQUIRE(broker.waitForReady(START_BOUND));
  auto m =
      awaitLog(broker, std::regex(R"(listening for SPICE clients on (\S+) \()" + kind + R"(\))"),
               START_BOUND);
  INFO(broker.stderrText());
  REQUIRE(m);
  auto target = client::Target::parse(kind == "unix" ? "unix:" + (*m)[1] : (*m)[1]);
  REQUIRE(std::holds_alternative<client::Target>(target));
  return std::get<client::Target>(target);
}

std::unique_ptr<client::Session> connectWithDisplay(const client::SessionOptions& options) {
  auto session = client::Session::connect(options);
  if (auto* err = std::get_if<std::string>(&session))
    FAIL("connecting a client to " << options.target.describe() << ": " << *err);
  auto s = std::move(std::get<std::unique_ptr<client::Session>>(session));
  auto display = s->openDisplay();
  if (auto* err = std::get_if<std::string>(&display))
    FAIL("opening the display channel: " << *err);
  return s;
}

std::unique_ptr<client::Session> connectWithDisplay(const client::Target& target) {
  client::SessionOptions options;
  options.target = target;
  return connectWithDisplay(options);
}

client::Error pump(BrokerProcess& broker, std::vector<client::Session*> sessions,
                   const std::function<bool()>& done, std::chrono::milliseconds timeout,
                   const std::string& what) {
  auto deadline = Clock::now() + timeout;
  std::vector<client::Channel*> channels;
  for (auto* s : sessions)
    for (auto* c : s->channels())
      channels.push_back(c);
  for (;;) {
    broker.drain();
    auto slice = std::min(deadline, Clock::now() + 200ms);
    auto err = client::pumpUntil(channels, done, slice, what);
    if (!err)
      return std::nullopt;
    if (Clock::now() >= deadline || err->find("timed out") == std::string::npos)
      return err;
  }
}

std::string Difference::describe() const {
  if (pixels == 0)
    return "none";
  return std::to_string(pixels) + " pixels within (" + std::to_string(left) + "," +
         std::to_string(top) + ")-(" + std::to_string(right) + "," + std::to_string(bottom) + ")";
}

Difference difference(const client::Canvas* canvas, const oracle::RgbImage& image) {
  Difference d;
  if (!canvas || canvas->width() != image.width || canvas->height() != image.height) {
    d.pixels = uint64_t{image.width} * image.height + 1;
    return d;
  }
  for (uint32_t y = 0; y < image.height; ++y)
    for (uint32_t x = 0; x < image.width; ++x) {
      uint32_t p = canvas->pixel(x, y);
      const uint8_t* rgb = image.pixel(x, y);
      if (((p >> 16) & 0xff) != rgb[0] || ((p >> 8) & 0xff) != rgb[1] || (p & 0xff) != rgb[2]) {
        ++d.pixels;
        d.left = std::min(d.left, x);
        d.top = std::min(d.top, y);
        d.right = std::max(d.right, x + 1);
        d.bottom = std::max(d.bottom, y + 1);
      }
    }
  return d;
}

uint64_t draws(client::Session& s) {
  return s.display() ? s.display()->display().draws() : 0;
}

std::string tempDir(const std::string& what) {
  std::string tmpl = "/tmp/spicebox-" + what + "-XXXXXX";
  REQUIRE(::mkdtemp(tmpl.data()));
  return tmpl;
}

}  // namespace spicebox::test
