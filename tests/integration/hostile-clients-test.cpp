// Runs in: tests. Input: the real spicebox-broker (renderer, netproxy, built-in spicebox-guestsim)
// over SPICE, its stderr and sd_notify status.
//
// Hostile clients, named after the attack: each opens its own connection and misbehaves. Each
// must end only that connection (the test sees EOF or a reset within a bound), leave a log line,
// not restart the netproxy, and leave a good client that is linked throughout still receiving
// updates.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spice/enums.h>
#include <spice/protocol.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <string>
#include <vector>

#include "client/spice-client.h"
#include "tests/integration/broker-process.h"
#include "tests/support/require-ok.h"

using namespace spicebox;
using namespace std::chrono_literals;
using client::Bytes;
using client::Clock;
using client::Socket;
using client::Writer;

namespace {

constexpr auto START_BOUND = 15s;
constexpr auto STEP_BOUND = 10s;
// The netproxy's link deadline (a connection must finish the link stage within it) is 10 s; a
// connection stalled in the link stage must be closed by then, plus scheduling slack.
constexpr auto LINK_DEADLINE_BOUND = 20s;
// A connection the server should close at once (malformed input): well below any deadline.
constexpr auto PROMPT_CLOSE_BOUND = 5s;
// An established channel that stops mid-message: the server may wait for the rest as long as it
// waits for an idle client; the test gives it this long.
constexpr auto STALLED_MESSAGE_BOUND = 60s;
const std::string PASSWORD = "hostile-test-password";

struct Outcome {
  std::string attack;
  Socket::Closed closed = Socket::Closed::Timeout;
  std::chrono::milliseconds took{0};
  std::string detail;  // what the server answered along the way
  std::string local;   // the connection's own address ("127.0.0.1:PORT"), as the server logs it
};

std::string localAddress(const Socket& s) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return "?";
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
  return std::string(text) + ":" + std::to_string(ntohs(addr.sin_port));
}

std::string closedText(Socket::Closed c) {
  switch (c) {
    case Socket::Closed::Eof:
      return "EOF";
    case Socket::Closed::Reset:
      return "reset";
    case Socket::Closed::Timeout:
      return "still open at the bound";
  }
  return "?";
}

Socket connectOrFail(const client::Target& target) {
  auto s = Socket::connect(target, Clock::now() + STEP_BOUND);
  if (auto* err = std::get_if<std::string>(&s))
    throw std::runtime_error("connect: " + *err);
  return std::move(std::get<Socket>(s));
}

// The link message of protocol.h with the common caps spice-gtk sends and `patch` applied to its
// bytes (offsets into the whole message, header included).
Bytes linkMessage(uint8_t channelType, uint32_t connectionId) {
  client::LinkMess mess;
  mess.connectionId = connectionId;
  mess.channelType = channelType;
  client::setCap(mess.commonCaps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
  client::setCap(mess.commonCaps, SPICE_COMMON_CAP_AUTH_SPICE);
  client::setCap(mess.commonCaps, SPICE_COMMON_CAP_MINI_HEADER);
  return client::buildLinkMessage(mess);
}

// Sends `bytes` (a send error means the server already closed: fine) and awaits the close.
Outcome sendAndAwaitClose(const std::string& attack, const client::Target& target,
                          const Bytes& bytes, std::chrono::milliseconds bound) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  Outcome o;
  o.attack = attack;
  o.local = localAddress(s);
  if (auto err = s.sendAll(bytes, Clock::now() + STEP_BOUND))
    o.detail = "send: " + *err;
  o.closed = s.awaitClose(t0 + bound);
  o.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  return o;
}

// Runs the link stage up to the link reply; returns the reply (for its public key).
client::LinkReply linkUpToTicket(Socket& s, uint8_t channelType, uint32_t connectionId) {
  auto deadline = Clock::now() + STEP_BOUND;
  if (auto err = s.sendAll(linkMessage(channelType, connectionId), deadline))
    throw std::runtime_error(*err);
  auto head = s.readExact(client::LINK_HEADER_SIZE, deadline);
  if (auto* err = std::get_if<std::string>(&head))
    throw std::runtime_error("link reply header: " + *err);
  auto header = client::parseLinkReplyHeader(std::get<Bytes>(head));
  if (auto* err = std::get_if<std::string>(&header))
    throw std::runtime_error(*err);
  auto body = s.readExact(std::get<client::LinkHeader>(header).size, deadline);
  if (auto* err = std::get_if<std::string>(&body))
    throw std::runtime_error("link reply: " + *err);
  auto reply = client::parseLinkReply(std::get<Bytes>(body));
  if (auto* err = std::get_if<std::string>(&reply))
    throw std::runtime_error(*err);
  return std::get<client::LinkReply>(reply);
}

// A channel linked properly in a session of its own (a main channel linked just for it), so that
// the attack is not mistaken for a second channel of the good client's session.
struct OwnChannel {
  std::unique_ptr<client::Session> session;
  Socket socket;
};

OwnChannel linkedChannel(const client::Target& target, uint8_t type) {
  client::SessionOptions sessionOptions;
  sessionOptions.target = target;
  sessionOptions.password = PASSWORD;
  auto session = client::Session::connect(sessionOptions);
  if (auto* err = std::get_if<std::string>(&session))
    throw std::runtime_error("the attack's own session: " + *err);
  auto own = std::move(std::get<std::unique_ptr<client::Session>>(session));
  Socket s = connectOrFail(target);
  client::LinkOptions options;
  options.channelType = type;
  options.connectionId = own->sessionId();
  options.password = PASSWORD;
  if (auto err = client::linkChannel(s, options, Clock::now() + STEP_BOUND))
    throw std::runtime_error("linking channel " + std::to_string(type) + ": " + *err);
  return OwnChannel{std::move(own), std::move(s)};
}

Outcome awaitClose(const std::string& attack, Socket& s, Clock::time_point t0,
                   std::chrono::milliseconds bound, std::string detail = "") {
  Outcome o;
  o.attack = attack;
  o.detail = std::move(detail);
  o.local = localAddress(s);
  o.closed = s.awaitClose(t0 + bound);
  o.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  return o;
}

// ---- the attacks ----

Outcome wrongMagic(const client::Target& target) {
  Bytes b = linkMessage(SPICE_CHANNEL_MAIN, 0);
  b[0] = 'X';
  b[3] = 'Y';
  return sendAndAwaitClose("wrong-magic", target, b, PROMPT_CLOSE_BOUND);
}

// spice-server's CVE-2016-9578: the link header's size was trusted for an allocation.
Outcome cve20169578Header(const client::Target& target) {
  Writer w;
  w.u32(SPICE_MAGIC).u32(2).u32(2).u32(0xaaaaaaaa);
  return sendAndAwaitClose("cve-2016-9578-link-size", target, w.take(), PROMPT_CLOSE_BOUND);
}

Outcome hugeCapabilityCounts(const client::Target& target) {
  Bytes b = linkMessage(SPICE_CHANNEL_MAIN, 0);
  // num_common_caps (offset 16 + 6) and num_channel_caps (16 + 10): 2^30 words each.
  for (size_t off : {22u, 26u}) {
    b[off] = 0;
    b[off + 1] = 0;
    b[off + 2] = 0;
    b[off + 3] = 0x40;
  }
  return sendAndAwaitClose("huge-capability-counts", target, b, PROMPT_CLOSE_BOUND);
}

Outcome unknownChannelType(const client::Target& target) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  (void)s.sendAll(linkMessage(77, 0), t0 + STEP_BOUND);
  std::string detail;
  // A polite server answers with a link reply carrying an error; either way it must close.
  auto head = s.readExact(client::LINK_HEADER_SIZE, t0 + PROMPT_CLOSE_BOUND);
  if (auto* bytes = std::get_if<Bytes>(&head)) {
    auto header = client::parseLinkReplyHeader(*bytes);
    if (auto* h = std::get_if<client::LinkHeader>(&header)) {
      auto body = s.readExact(h->size, t0 + PROMPT_CLOSE_BOUND);
      if (auto* b = std::get_if<Bytes>(&body)) {
        client::Reader r(*b);
        detail = "link error " + std::to_string(r.u32());
      }
    }
  }
  return awaitClose("unknown-channel-type", s, t0, PROMPT_CLOSE_BOUND, detail);
}

Outcome shortTicketThenSilence(const client::Target& target) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  linkUpToTicket(s, SPICE_CHANNEL_MAIN, 0);
  Writer w;
  w.u32(SPICE_COMMON_CAP_AUTH_SPICE);
  w.bytes(Bytes(10, 0x55));  // 10 of the ticket's 128 bytes, then nothing
  (void)s.sendAll(w.data(), t0 + STEP_BOUND);
  return awaitClose("short-ticket-then-silence", s, t0, LINK_DEADLINE_BOUND);
}

Outcome garbageTicket(const client::Target& target) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  linkUpToTicket(s, SPICE_CHANNEL_MAIN, 0);
  Writer w;
  w.u32(SPICE_COMMON_CAP_AUTH_SPICE);
  Bytes garbage(client::TICKET_SIZE);
  for (size_t i = 0; i < garbage.size(); ++i)
    garbage[i] = static_cast<uint8_t>(i * 37 + 11);
  w.bytes(garbage);
  (void)s.sendAll(w.data(), t0 + STEP_BOUND);
  std::string detail = "no link result";
  auto result = s.readExact(4, t0 + PROMPT_CLOSE_BOUND);
  if (auto* b = std::get_if<Bytes>(&result)) {
    client::Reader r(*b);
    uint32_t code = r.u32();
    detail = "link result " + std::to_string(code);
    if (code == SPICE_LINK_ERR_OK)
      detail += " (OK: the garbage ticket was accepted!)";
  }
  return awaitClose("garbage-ticket-with-password", s, t0, PROMPT_CLOSE_BOUND, detail);
}

Outcome wrongSessionId(const client::Target& target, uint32_t goodSession) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  (void)s.sendAll(linkMessage(SPICE_CHANNEL_DISPLAY, goodSession ^ 0x5a5a5a5a), t0 + STEP_BOUND);
  std::string detail = "no link reply";
  auto head = s.readExact(client::LINK_HEADER_SIZE, t0 + PROMPT_CLOSE_BOUND);
  if (auto* bytes = std::get_if<Bytes>(&head)) {
    auto header = client::parseLinkReplyHeader(*bytes);
    if (auto* h = std::get_if<client::LinkHeader>(&header)) {
      auto body = s.readExact(h->size, t0 + PROMPT_CLOSE_BOUND);
      if (auto* b = std::get_if<Bytes>(&body)) {
        client::Reader r(*b);
        uint32_t code = r.u32();
        detail = "link error " + std::to_string(code);
        if (code == SPICE_LINK_ERR_OK) {
          // Refusal may also come after the ticket: send it and read the result.
          auto reply = client::parseLinkReply(*b);
          if (auto* rep = std::get_if<client::LinkReply>(&reply)) {
            Writer w;
            w.u32(SPICE_COMMON_CAP_AUTH_SPICE);
            auto ticket = client::encryptTicket(rep->publicKey, PASSWORD);
            if (auto* t = std::get_if<Bytes>(&ticket))
              w.bytes(*t);
            (void)s.sendAll(w.data(), t0 + STEP_BOUND);
            auto result = s.readExact(4, t0 + PROMPT_CLOSE_BOUND);
            if (auto* rb = std::get_if<Bytes>(&result)) {
              client::Reader rr(*rb);
              detail = "link result " + std::to_string(rr.u32());
            }
          }
        }
      }
    }
  }
  return awaitClose("second-link-wrong-session-id", s, t0, PROMPT_CLOSE_BOUND, detail);
}

Outcome inputsMessageOnDisplayChannel(const client::Target& target) {
  auto t0 = Clock::now();
  OwnChannel own = linkedChannel(target, SPICE_CHANNEL_DISPLAY);
  Socket& s = own.socket;
  Writer body;
  body.i32(5).i32(5).u16(0);  // a MOUSE_MOTION body
  (void)s.sendAll(client::buildMessage(SPICE_MSGC_INPUTS_MOUSE_MOTION, body.data()),
                  Clock::now() + STEP_BOUND);
  return awaitClose("inputs-message-on-display-channel", s, t0, PROMPT_CLOSE_BOUND);
}

Outcome truncatedMessageThenClose(const client::Target& target) {
  auto t0 = Clock::now();
  OwnChannel own = linkedChannel(target, SPICE_CHANNEL_INPUTS);
  Socket& s = own.socket;
  Writer w;
  // A KEY_DOWN of the right size (4 bytes) of which only 2 arrive.
  w.u16(SPICE_MSGC_INPUTS_KEY_DOWN).u32(4).u16(0x1e);
  (void)s.sendAll(w.data(), Clock::now() + STEP_BOUND);
  ::shutdown(s.fd(), SHUT_WR);
  return awaitClose("truncated-message-then-close", s, t0, PROMPT_CLOSE_BOUND);
}

Outcome truncatedMessageThenSilence(const client::Target& target) {
  auto t0 = Clock::now();
  OwnChannel own = linkedChannel(target, SPICE_CHANNEL_INPUTS);
  Socket& s = own.socket;
  Writer w;
  w.u16(SPICE_MSGC_INPUTS_KEY_DOWN).u32(4).u16(0x1e);
  (void)s.sendAll(w.data(), Clock::now() + STEP_BOUND);
  return awaitClose("truncated-message-then-silence", s, t0, STALLED_MESSAGE_BOUND);
}

Outcome hugeMessageSize(const client::Target& target) {
  auto t0 = Clock::now();
  OwnChannel own = linkedChannel(target, SPICE_CHANNEL_INPUTS);
  Socket& s = own.socket;
  Writer w;
  w.u16(SPICE_MSGC_INPUTS_KEY_DOWN).u32(0xfffffff0).u32(0x1e);
  (void)s.sendAll(w.data(), Clock::now() + STEP_BOUND);
  return awaitClose("message-size-0xfffffff0", s, t0, PROMPT_CLOSE_BOUND);
}

// 100 000 unsolicited PONGs as fast as the socket takes them: the server must not queue them
// without bound; it may process them or close the connection, but it must stay up. The test then
// closes and expects the server to notice.
Outcome pongFlood(const client::Target& target) {
  auto t0 = Clock::now();
  OwnChannel own = linkedChannel(target, SPICE_CHANNEL_DISPLAY);
  Socket& s = own.socket;
  Bytes flood;
  for (uint32_t i = 0; i < 100000; ++i) {
    Writer body;
    body.u32(0x70000000 + i).u64(i);
    auto m = client::buildMessage(SPICE_MSGC_PONG, body.data());
    flood.insert(flood.end(), m.begin(), m.end());
  }
  std::string detail;
  if (auto err = s.sendAll(flood, t0 + 30s))
    detail = "send stopped: " + *err;
  else
    detail = "all 100000 sent";
  // The flood itself need not end the connection, but whatever the server made of it, the
  // channel must end when this client stops: half-close and expect EOF.
  ::shutdown(s.fd(), SHUT_WR);
  return awaitClose("pong-flood", s, t0, 30s + PROMPT_CLOSE_BOUND, detail);
}

// One byte of the link header per second: closed by the link deadline.
Outcome trickle(const client::Target& target) {
  auto t0 = Clock::now();
  Socket s = connectOrFail(target);
  Bytes b = linkMessage(SPICE_CHANNEL_MAIN, 0);
  Outcome o;
  o.attack = "trickle-one-byte-a-second";
  o.local = localAddress(s);
  for (size_t i = 0; i < b.size(); ++i) {
    if (s.sendAll(std::span<const uint8_t>(&b[i], 1), t0 + LINK_DEADLINE_BOUND)) {
      o.detail = "send failed after " + std::to_string(i) + " bytes";
      break;
    }
    // Waiting for the close, one second at most, is the pace of the trickle.
    auto c = s.awaitClose(Clock::now() + 1s);
    if (c != Socket::Closed::Timeout) {
      o.closed = c;
      o.detail = "closed after " + std::to_string(i + 1) + " bytes";
      break;
    }
    if (Clock::now() - t0 > LINK_DEADLINE_BOUND)
      break;
  }
  if (o.closed == Socket::Closed::Timeout)
    o.closed = s.awaitClose(t0 + LINK_DEADLINE_BOUND);
  o.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  return o;
}

// ---- the good client and the broker ----

client::Error pump(test::BrokerProcess& broker, client::Session& s,
                   const std::function<bool()>& done, std::chrono::milliseconds timeout,
                   const std::string& what) {
  auto deadline = Clock::now() + timeout;
  auto channels = s.channels();
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

uint64_t draws(client::Session& s) {
  return s.display()->display().draws();
}

// The netproxy's log line about the connection from `local` ending: it names the client by its
// address; the last such line is the one about the end.
std::string endLogLine(const std::string& text, const std::string& local) {
  std::string last;
  for (size_t at = text.find(local); at != std::string::npos; at = text.find(local, at + 1)) {
    size_t after = at + local.size();
    if (after < text.size() && std::isdigit(static_cast<unsigned char>(text[after])))
      continue;  // 127.0.0.1:4242 is not 127.0.0.1:42
    size_t begin = text.rfind('\n', at);
    begin = begin == std::string::npos ? 0 : begin + 1;
    last = text.substr(begin, text.find('\n', at) - begin);
  }
  return last;
}

}  // namespace

TEST_CASE("hostile clients each end only their own connection", "[hostile][clients]") {
  char tmpl[] = "/tmp/spicebox-hostile-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string dir = tmpl;
  std::string passwordFile = dir + "/password";
  {
    std::ofstream f(passwordFile);
    f << PASSWORD << "\n";
  }
  std::filesystem::permissions(
      passwordFile, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  test::BrokerProcess broker({"--listen", "127.0.0.1:0", "--password-file", passwordFile,
                              "--max-clients", "16", "--builtin-guest", "desktop", "--guest-args",
                              "--loop"});
  auto ready = broker.waitForReady(START_BOUND);
  INFO(broker.stderrText());
  REQUIRE(ready);
  pid_t netproxy = ready->netproxy.pid;
  std::vector<std::string> groups;
  REQUIRE(broker.waitForStatus(
      [&](const test::BrokerStatus&) {
        std::smatch m;
        const std::string& text = broker.stderrText();
        if (!std::regex_search(text, m,
                               std::regex(R"(listening for SPICE clients on (\S+) \(tcp\))")))
          return false;
        groups = {m[1].str()};
        return true;
      },
      START_BOUND));
  auto parsed = client::Target::parse(groups[0]);
  REQUIRE(std::holds_alternative<client::Target>(parsed));
  const client::Target target = std::get<client::Target>(parsed);

  client::SessionOptions options;
  options.target = target;
  options.password = PASSWORD;
  auto connected = client::Session::connect(options);
  if (auto* err = std::get_if<std::string>(&connected))
    FAIL("the good client: " << *err);
  auto good = std::move(std::get<std::unique_ptr<client::Session>>(connected));
  auto display = good->openDisplay();
  if (auto* err = std::get_if<std::string>(&display))
    FAIL("the good client's display: " << *err);
  REQUIRE_OK(pump(
      broker, *good, [&] { return draws(*good) > 0; }, STEP_BOUND,
      "the good client's first draws"));
  const uint32_t session = good->sessionId();

  // The slow attacks (bounded by the link deadline or longer) run in the background meanwhile.
  using Attack = std::function<Outcome()>;
  std::vector<Attack> slow = {
      [&] { return trickle(target); },
      [&] { return shortTicketThenSilence(target); },
      [&] { return truncatedMessageThenSilence(target); },
      [&] { return pongFlood(target); },
  };
  std::vector<std::future<Outcome>> running;
  for (auto& a : slow)
    running.push_back(std::async(std::launch::async, [a] {
      try {
        return a();
      } catch (const std::exception& e) {
        return Outcome{"(setup)", Socket::Closed::Timeout, {}, e.what(), ""};
      }
    }));

  std::vector<Attack> quick = {
      [&] { return wrongMagic(target); },
      [&] { return cve20169578Header(target); },
      [&] { return hugeCapabilityCounts(target); },
      [&] { return unknownChannelType(target); },
      [&] { return garbageTicket(target); },
      [&] { return wrongSessionId(target, session); },
      [&] { return inputsMessageOnDisplayChannel(target); },
      [&] { return truncatedMessageThenClose(target); },
      [&] { return hugeMessageSize(target); },
  };
  std::vector<Outcome> outcomes;
  for (auto& attack : quick) {
    Outcome o;
    try {
      o = attack();
    } catch (const std::exception& e) {
      o = Outcome{"(setup)", Socket::Closed::Timeout, {}, e.what(), ""};
    }
    outcomes.push_back(o);
    // Between attacks the good client keeps receiving updates.
    uint64_t before = draws(*good);
    auto err = pump(
        broker, *good, [&] { return draws(*good) > before; }, STEP_BOUND,
        "the good client's draws after " + o.attack);
    INFO(broker.stderrText());
    REQUIRE_OK(std::move(err));
  }
  // While the slow ones finish, the good client keeps reading.
  for (auto& f : running) {
    auto err = pump(
        broker, *good, [&] { return f.wait_for(0s) == std::future_status::ready; },
        STALLED_MESSAGE_BOUND + 10s, "the slow attacks to finish");
    REQUIRE_OK(std::move(err));
    outcomes.push_back(f.get());
  }

  std::string summary;
  for (const Outcome& o : outcomes)
    summary += "\n  " + o.attack + ": " + closedText(o.closed) + " after " +
               std::to_string(o.took.count()) + " ms" + (o.detail.empty() ? "" : "; " + o.detail) +
               "\n    log: " + endLogLine(broker.stderrText(), o.local);
  WARN("hostile connections:" << summary);
  for (const Outcome& o : outcomes) {
    INFO(o.attack << ": " << closedText(o.closed) << " after " << o.took.count() << " ms"
                  << (o.detail.empty() ? "" : "; " + o.detail));
    CHECK(o.attack != "(setup)");
    CHECK(o.closed != Socket::Closed::Timeout);
    if (o.attack == "garbage-ticket-with-password")
      CHECK(o.detail.find("link result 0 ") == std::string::npos);
  }

  // Every hostile connection is gone from the netproxy's count: only the good client's session
  // (main and display channels) is left.
  auto counted = broker.waitForStatus(
      [](const test::BrokerStatus& s) {
        return s.raw.find("clients 1 (2 connections") != std::string::npos;
      },
      STEP_BOUND);
  INFO("last status: " << (counted ? counted->raw : "none matching"));
  CHECK(counted);

  // Still the same netproxy, never restarted; the good client still gets updates.
  auto after = broker.waitForReady(STEP_BOUND);
  REQUIRE(after);
  CHECK(after->netproxy.pid == netproxy);
  CHECK(after->netproxy.restarts == 0);
  uint64_t before = draws(*good);
  CHECK_OK(pump(
      broker, *good, [&] { return draws(*good) > before; }, STEP_BOUND,
      "the good client's draws after every attack"));
  CHECK(good->display()->error() == std::nullopt);

  // A log line for each ended connection, naming the client by its address.
  std::string text = broker.stderrText();
  for (const Outcome& o : outcomes) {
    if (o.local.empty())
      continue;  // a setup failure, reported above
    std::string line = endLogLine(text, o.local);
    INFO(o.attack << " from " << o.local << ": " << (line.empty() ? "no log line" : line));
    CHECK_FALSE(line.empty());
  }
  std::filesystem::remove_all(dir);
}
