// Runs in: tests. Input: the real spicebox-broker (with its renderer, netproxy and built-in
// spicebox-guestsim) over SPICE, read by spicebox's own client library (client/spice-client.h),
// and the broker's stderr and sd_notify status.
//
// Several clients at once: two clients both see every update and end with the picture guestsim
// reads back from the device; a client that stops reading for 30 s neither stalls the other nor
// grows the netproxy's memory past a bound; inputs a client sends reach guestsim in order.
#include <spice/enums.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "client/spice-client.h"
#include "sandbox/sanitizers.h"
#include "tests/integration/broker-process.h"
#include "tests/integration/client-steps.h"
#include "tests/oracle/png-image.h"
#include "tests/support/require-ok.h"

using namespace spicebox;
using namespace std::chrono_literals;
using client::Clock;

namespace {

using test::awaitLog;
using test::connectWithDisplay;
using test::Difference;
using test::difference;
using test::draws;
using test::pump;
using test::START_BOUND;
using test::startListening;
using test::STEP_BOUND;
using test::tempDir;

// The netproxy's resident memory while one of two clients reads nothing for 30 s. The server
// bounds what it queues per client (4 MiB of display bytes, pending damage coalesced instead);
// measured: ~20 MiB for a 1280 x 800 desktop. 96 MiB leaves room for two pictures per client and
// the encoders' buffers. Under AddressSanitizer freed memory sits in its quarantine (256 MiB by
// default) and every byte has shadow, so the bound there only catches unbounded growth.
#if SPICEBOX_ADDRESS_SANITIZER
constexpr uint64_t NETPROXY_RSS_BOUND_KIB = 640 * 1024;
#else
constexpr uint64_t NETPROXY_RSS_BOUND_KIB = 96 * 1024;
#endif

std::vector<std::string> brokerArgs(std::vector<std::string> extra) {
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--disable-ticketing"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

TEST_CASE("two clients at once both receive every update and end with the device's picture",
          "[clients]") {
  // Every image encoding the netproxy offers: what each client decodes must give the same pixels.
  std::string compression = GENERATE(as<std::string>{}, "auto_lz", "off", "lz", "lz4");
  INFO("--image-compression " << compression);
  std::string dir = tempDir();
  // A finite run: the clients link while the guest draws (it takes ~2 s), then it stops.
  constexpr uint64_t UNTIL = 2000;
  test::BrokerProcess broker(
      brokerArgs({"--image-compression", compression, "--builtin-guest", "desktop", "--guest-args",
                  "--until " + std::to_string(UNTIL) + " --snapshot-at " + std::to_string(UNTIL) +
                      " --snapshot-prefix " + dir + "/p"}));
  auto target = startListening(broker);
  auto a = connectWithDisplay(target);
  auto b = connectWithDisplay(target);

  // Both receive draws while the guest runs.
  auto err = pump(
      broker, {a.get(), b.get()}, [&] { return draws(*a) > 0 && draws(*b) > 0; }, STEP_BOUND,
      "both clients' first draws");
  INFO(broker.stderrText());
  REQUIRE_OK(std::move(err));

  // The guest is done: --until reached, and its read-back of the primary is on disk.
  auto until = awaitLog(broker, std::regex("--until " + std::to_string(UNTIL) + " reached"), 60s);
  INFO(broker.stderrText());
  REQUIRE(until);
  std::string snapshotPath = dir + "/p-" + std::to_string(UNTIL) + ".png";
  REQUIRE(std::filesystem::exists(snapshotPath));
  auto snapshot = oracle::readPng(snapshotPath);
  REQUIRE(std::holds_alternative<oracle::RgbImage>(snapshot));
  const auto& expected = std::get<oracle::RgbImage>(snapshot);

  // Nothing more is drawn, so each client converges to the snapshot once it has handled what the
  // server sent; the bound is for a server that never sends the last update.
  Difference differA, differB;
  err = pump(
      broker, {a.get(), b.get()},
      [&] {
        differA = difference(a->display()->primary(), expected);
        differB = difference(b->display()->primary(), expected);
        return differA.pixels == 0 && differB.pixels == 0;
      },
      STEP_BOUND, "both clients' pictures to equal the guest's read-back");
  INFO("differing from the guest's " << expected.width << " x " << expected.height
                                     << " read-back: client A " << differA.describe()
                                     << ", client B " << differB.describe());
  INFO("client A draws " << draws(*a) << ", client B draws " << draws(*b));
  CHECK_OK(std::move(err));
  for (auto* s : {a.get(), b.get()}) {
    INFO("last unsupported ROP descriptor 0x" << std::hex
                                              << s->display()->display().lastUnsupportedRop);
    CHECK(s->display()->display().unsupported == 0);
  }
  CHECK(a->display()->error() == std::nullopt);
  CHECK(b->display()->error() == std::nullopt);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a client that stops reading for 30 s stalls neither the other nor the netproxy's memory",
          "[clients][slow]") {
  test::BrokerProcess broker(brokerArgs({"--builtin-guest", "desktop", "--guest-args", "--loop"}));
  auto target = startListening(broker);
  auto status = broker.waitForReady(START_BOUND);
  REQUIRE(status);
  pid_t netproxy = status->netproxy.pid;

  auto fast = connectWithDisplay(target);
  auto slow = connectWithDisplay(target);
  auto err = pump(
      broker, {fast.get(), slow.get()}, [&] { return draws(*fast) > 0 && draws(*slow) > 0; },
      STEP_BOUND, "both clients' first draws");
  INFO(broker.stderrText());
  REQUIRE_OK(std::move(err));

  // From here on `slow` reads nothing: its socket buffers fill, then the server must hold back.
  uint64_t slowDrawsBefore = draws(*slow);
  uint64_t maxRssKiB = 0;
  constexpr int WINDOWS = 30;  // one-second windows
  for (int w = 0; w < WINDOWS; ++w) {
    std::string rss = test::procStatusField(netproxy, "VmRSS");  // "12345 kB"
    REQUIRE_FALSE(rss.empty());
    maxRssKiB = std::max<uint64_t>(maxRssKiB, std::stoull(rss));
    INFO("netproxy VmRSS at most " << maxRssKiB << " KiB so far");
    uint64_t before = draws(*fast);
    auto end = Clock::now() + 1s;
    REQUIRE_OK(pump(
        broker, {fast.get()}, [&] { return Clock::now() >= end; }, 2s,
        "the end of window " + std::to_string(w)));
    INFO("window " << w << " (1 s): the reading client's draws " << before << " -> "
                   << draws(*fast));
    REQUIRE(draws(*fast) > before);
  }
  WARN("netproxy VmRSS at most " << maxRssKiB << " KiB while one client read nothing for 30 s");
  CHECK(maxRssKiB < NETPROXY_RSS_BOUND_KIB);
  CHECK(draws(*slow) == slowDrawsBefore);  // it really read nothing

  // The netproxy did not give up on the process; the slow client resumes and gets updates again.
  auto now = broker.waitForReady(STEP_BOUND);
  REQUIRE(now);
  CHECK(now->netproxy.pid == netproxy);
  CHECK(now->netproxy.restarts == 0);
  err = pump(
      broker, {fast.get(), slow.get()}, [&] { return draws(*slow) > slowDrawsBefore + 100; }, 30s,
      "the resumed client's new draws");
  INFO(broker.stderrText());
  CHECK_OK(std::move(err));
}

namespace {

// One input event: what the client sends and the line guestsim logs for it.
struct SentInput {
  std::function<client::Error(client::InputsChannel&, client::Deadline)> send;
  std::string logged;
};

// A deterministic mix of keys, buttons and pointer moves (position in client mouse mode,
// relative motion in server mouse mode).
std::vector<SentInput> mixedInputs(bool clientMouseMode, int count) {
  std::vector<SentInput> out;
  uint16_t buttons = 0;
  for (int i = 0; out.size() < static_cast<size_t>(count); ++i) {
    uint32_t key = 0x02 + (i * 7) % 0x38;  // make codes 0x02..0x39 (no 0xe0 prefix)
    char hex[16];
    std::snprintf(hex, sizeof hex, "%#x", key);
    switch (i % 5) {
      case 0:
        out.push_back({[key](auto& in, auto d) { return in.keyDown(key, d); },
                       std::string("key down ") + hex});
        out.push_back(
            {[key](auto& in, auto d) { return in.keyUp(key, d); }, std::string("key up ") + hex});
        break;
      case 1:
      case 3: {
        if (clientMouseMode) {
          uint32_t x = 10 + i * 13 % 600, y = 20 + i * 29 % 400;
          out.push_back(
              {[x, y, buttons](auto& in, auto d) { return in.mousePosition(x, y, buttons, 0, d); },
               "mouse position " + std::to_string(x) + "," + std::to_string(y) +
                   " display 0 buttons " + (buttons ? "0x1" : "0x0")});
        } else {
          int32_t dx = (i % 2 ? 3 : -4) * (i % 7 + 1), dy = (i % 3 ? -2 : 5) * (i % 4 + 1);
          out.push_back(
              {[dx, dy, buttons](auto& in, auto d) { return in.mouseMotion(dx, dy, buttons, d); },
               "mouse motion " + std::to_string(dx) + "," + std::to_string(dy) + " buttons " +
                   (buttons ? "0x1" : "0x0")});
        }
        break;
      }
      case 2:
        buttons = SPICE_MOUSE_BUTTON_MASK_LEFT;
        out.push_back({[](auto& in, auto d) {
                         return in.mousePress(SPICE_MOUSE_BUTTON_LEFT, SPICE_MOUSE_BUTTON_MASK_LEFT,
                                              d);
                       },
                       "mouse press 1 buttons 0x1"});
        break;
      case 4:
        buttons = 0;
        out.push_back(
            {[](auto& in, auto d) { return in.mouseRelease(SPICE_MOUSE_BUTTON_LEFT, 0, d); },
             "mouse release 1 buttons 0x0"});
        break;
    }
  }
  out.resize(count);
  return out;
}

void checkInputsArriveInOrder(bool clientMouseMode) {
  test::BrokerProcess broker(
      brokerArgs({"--builtin-guest", "desktop", "--mouse-mode",
                  clientMouseMode ? "client" : "server", "--guest-args", "--until 50"}));
  auto target = startListening(broker);
  client::SessionOptions options;
  options.target = target;
  auto connected = client::Session::connect(options);
  if (auto* e = std::get_if<std::string>(&connected))
    FAIL(*e);
  auto session = std::move(std::get<std::unique_ptr<client::Session>>(connected));
  auto opened = session->openInputs();
  if (auto* e = std::get_if<std::string>(&opened))
    FAIL(*e);
  client::InputsChannel* inputs = std::get<client::InputsChannel*>(opened);
  auto err = pump(
      broker, {session.get()}, [&] { return inputs->initReceived(); }, STEP_BOUND, "INPUTS_INIT");
  REQUIRE_OK(std::move(err));

  constexpr int COUNT = 50;
  auto events = mixedInputs(clientMouseMode, COUNT);
  for (auto& e : events) {
    auto sendErr = e.send(*inputs, Clock::now() + STEP_BOUND);
    REQUIRE_OK(std::move(sendErr));
  }
  // guestsim numbers the events it receives from 1; the last one logged means all arrived.
  auto last = awaitLog(broker, std::regex("input " + std::to_string(COUNT) + ": "), STEP_BOUND);
  std::string text = broker.stderrText();
  INFO(text);
  REQUIRE(last);
  std::vector<std::string> seen;
  std::regex line(R"(input (\d+): ([^\n]*))");
  for (std::sregex_iterator it(text.begin(), text.end(), line), end; it != end; ++it) {
    CHECK(std::stoi((*it)[1]) == static_cast<int>(seen.size()) + 1);
    seen.push_back((*it)[2]);
  }
  REQUIRE(seen.size() == events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    INFO("event " << i + 1);
    CHECK(seen[i] == events[i].logged);
  }
}

}  // namespace

TEST_CASE("inputs reach guestsim in order: keys, buttons, positions (client mouse mode)",
          "[clients][inputs]") {
  checkInputsArriveInOrder(true);
}

TEST_CASE("inputs reach guestsim in order: keys, buttons, motion (server mouse mode)",
          "[clients][inputs]") {
  checkInputsArriveInOrder(false);
}

TEST_CASE("a client on the --unix socket links and receives the picture", "[clients][unix]") {
  std::string dir = tempDir();
  std::string path = dir + "/spice.sock";
  test::BrokerProcess broker({"--unix", path, "--disable-ticketing", "--builtin-guest", "desktop",
                              "--guest-args", "--until 200"});
  INFO(broker.stderrText());
  REQUIRE(broker.waitForReady(START_BOUND));
  REQUIRE(
      awaitLog(broker, std::regex(R"(listening for SPICE clients on \S+ \(unix\))"), START_BOUND));
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);  // --unix-mode's default: only the owner may connect

  auto target = client::Target::parse("unix:" + path);
  REQUIRE(std::holds_alternative<client::Target>(target));
  auto session = connectWithDisplay(std::get<client::Target>(target));
  REQUIRE_OK(pump(
      broker, {session.get()}, [&] { return session->display()->primary() && draws(*session) > 0; },
      STEP_BOUND, "the unix client's picture"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a client beyond --max-clients is refused politely, the others keep working",
          "[clients][limit]") {
  test::BrokerProcess broker(
      brokerArgs({"--max-clients", "1", "--builtin-guest", "desktop", "--guest-args", "--loop"}));
  auto target = startListening(broker);
  auto first = connectWithDisplay(target);
  REQUIRE_OK(pump(
      broker, {first.get()}, [&] { return draws(*first) > 0; }, STEP_BOUND,
      "the first client's draws"));

  client::SessionOptions options;
  options.target = target;
  auto second = client::Session::connect(options);
  REQUIRE(std::holds_alternative<std::string>(second));
  INFO("the second client: " << std::get<std::string>(second));
  // Politely: the server says why in a NOTIFY before it disconnects.
  CHECK(std::get<std::string>(second).find("the server said") != std::string::npos);
  auto refused = awaitLog(broker, std::regex("refused, 1 clients are connected"), STEP_BOUND);
  CHECK(refused);
  auto status = broker.waitForStatus(
      [](const test::BrokerStatus& s) { return s.raw.find("1 refused") != std::string::npos; },
      STEP_BOUND);
  CHECK(status);

  uint64_t before = draws(*first);
  REQUIRE_OK(pump(
      broker, {first.get()}, [&] { return draws(*first) > before; }, STEP_BOUND,
      "the first client's draws after the refusal"));
  // The place is free again once the first client leaves.
  first.reset();
  REQUIRE(broker.waitForStatus(
      [](const test::BrokerStatus& s) { return s.raw.find("clients 0 ") != std::string::npos; },
      STEP_BOUND));
  auto third = connectWithDisplay(target);
  CHECK(third->sessionId() != 0);
}
