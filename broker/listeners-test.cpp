// Runs in: tests. Input: command-line values as an operator (or a mistake) gives them, and a
// netproxy's messages as a compromised netproxy could send them.
#include <arpa/inet.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>

#include "broker/listeners.h"
#include "broker/peer-netproxy.h"
#include "ipc/display.capnp.h"

using namespace spicebox;

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/spicebox-listeners-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

std::string refusal(const std::variant<broker::ListeningSocket, std::string>& made) {
  const auto* error = std::get_if<std::string>(&made);
  return error ? *error : std::string();
}

bool connectTcp(uint16_t port) {
  base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

TEST_CASE("listen: port 0 gets a real port that the listener's name gives and that accepts") {
  auto made = broker::listenTcp("127.0.0.1:0");
  REQUIRE(refusal(made).empty());
  const auto& l = std::get<broker::ListeningSocket>(made);
  CHECK_FALSE(l.unix);
  REQUIRE(l.name.rfind("127.0.0.1:", 0) == 0);
  const int port = std::stoi(l.name.substr(10));
  CHECK(port > 0);
  CHECK(connectTcp(static_cast<uint16_t>(port)));
}

TEST_CASE("listen: malformed specs and used ports are refused with what to change") {
  CHECK(refusal(broker::listenTcp("127.0.0.1")).find("expected ADDRESS:PORT") != std::string::npos);
  CHECK(refusal(broker::listenTcp("127.0.0.1:70000")).find("0 to 65535") != std::string::npos);
  CHECK(refusal(broker::listenTcp("127.0.0.1:http")).find("not a number") != std::string::npos);
  CHECK(refusal(broker::listenTcp(":5900")).find("no address") != std::string::npos);
  CHECK(refusal(broker::listenTcp("no-such-host.invalid:5900")).find("cannot resolve") !=
        std::string::npos);
  auto first = broker::listenTcp("127.0.0.1:0");
  REQUIRE(refusal(first).empty());
  const std::string taken = std::get<broker::ListeningSocket>(first).name;
  CHECK(refusal(broker::listenTcp(taken)).find("port in use") != std::string::npos);
}

TEST_CASE("unix socket: the asked mode - stale ones replaced - live ones and other files refused") {
  TempDir tmp;
  const std::string path = (tmp.path / "spice.sock").string();
  {
    auto made = broker::listenUnix({path, 0660, "", ""});
    REQUIRE(refusal(made).empty());
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0660);
    // Live: a second server on the same path is refused, the first keeps it.
    CHECK(refusal(broker::listenUnix({path, 0600, "", ""})).find("another server") !=
          std::string::npos);
  }
  // The first listener is closed: its file is stale and is replaced.
  auto again = broker::listenUnix({path, 0600, "", ""});
  CHECK(refusal(again).empty());

  const std::string file = (tmp.path / "not-a-socket").string();
  std::ofstream(file) << "data";
  CHECK(refusal(broker::listenUnix({file, 0600, "", ""})).find("not a socket") !=
        std::string::npos);
  CHECK(std::filesystem::exists(file));  // never removed
  CHECK(refusal(broker::listenUnix({std::string(200, 'x'), 0600, "", ""})).find("1 to") !=
        std::string::npos);
  CHECK(refusal(broker::listenUnix({path + "2", 0600, "no-such-user-here", ""}))
            .find("no such user") != std::string::npos);
}

TEST_CASE("password file: the first line - empty or too long or unreadable files refused") {
  TempDir tmp;
  auto write = [&](const std::string& name, const std::string& text, mode_t mode) {
    const auto p = tmp.path / name;
    std::ofstream(p, std::ios::binary) << text;
    ::chmod(p.c_str(), mode);
    return p.string();
  };
  std::string error, warning;
  auto pw = broker::readPasswordFile(write("ok", "s3cret\nignored\n", 0600), error, warning);
  REQUIRE(pw);
  CHECK(*pw == "s3cret");
  CHECK(warning.empty());

  warning.clear();
  pw = broker::readPasswordFile(write("open", "s3cret\r\n", 0644), error, warning);
  REQUIRE(pw);
  CHECK(*pw == "s3cret");
  CHECK(warning.find("chmod 600") != std::string::npos);

  CHECK_FALSE(broker::readPasswordFile(write("empty", "\nsecond line\n", 0600), error, warning));
  CHECK(error.find("empty") != std::string::npos);
  CHECK_FALSE(
      broker::readPasswordFile(write("long", std::string(61, 'a') + "\n", 0600), error, warning));
  CHECK(error.find("longer than the 60 bytes") != std::string::npos);
  CHECK_FALSE(
      broker::readPasswordFile(write("huge", std::string(100000, 'a'), 0600), error, warning));
  CHECK(error.find("longer") != std::string::npos);
  CHECK_FALSE(
      broker::readPasswordFile(write("nul", std::string("a\0b\n", 4), 0600), error, warning));
  CHECK(error.find("NUL") != std::string::npos);
  CHECK_FALSE(broker::readPasswordFile((tmp.path / "missing").string(), error, warning));
  CHECK(error.find("No such file") != std::string::npos);
  CHECK_FALSE(broker::readPasswordFile(tmp.path.string(), error, warning));
  CHECK(error.find("not a regular file") != std::string::npos);
}

TEST_CASE("password expiry: never or now or +SECONDS or a UNIX time - nonsense refused") {
  const int64_t now = 1'800'000'000;
  CHECK(std::get<int64_t>(broker::parsePasswordExpiry("never", now)) == 0);
  CHECK(std::get<int64_t>(broker::parsePasswordExpiry("now", now)) == now);
  CHECK(std::get<int64_t>(broker::parsePasswordExpiry("+60", now)) == now + 60);
  CHECK(std::get<int64_t>(broker::parsePasswordExpiry("1900000000", now)) == 1'900'000'000);
  for (const char* bad : {"", "+", "-5", "tomorrow", "+9223372036854775807", "12x"})
    CHECK(std::holds_alternative<std::string>(broker::parsePasswordExpiry(bad, now)));
}

// ------------------------------------------------ what a compromised netproxy may send (inputs)

namespace {

using Kind = broker::ChildPeer::Decoded::Kind;

broker::ChildPeer::Decoded decodeInput(
    const std::function<void(ipc::vmm::InputEvent::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  fill(message.initRoot<ipc::display::NetproxyToBroker>().initInput());
  capnp::SegmentArrayMessageReader reader(message.getSegmentsForOutput());
  ipc::ReceivedFds fds({});
  return broker::makeNetproxyPeer()->decode(reader, fds);
}

}  // namespace

TEST_CASE("netproxy input: events in vmm.capnp's ranges pass decoded") {
  auto key = decodeInput([](auto in) { in.setKeyDown(0x1e); });
  REQUIRE(key.kind == Kind::Boundary);
  const auto& k = std::get<broker::NetproxyKey>(std::get<broker::NetproxyInput>(key.boundary));
  CHECK(k.scancode == 0x1e);
  CHECK(k.down);
  CHECK(decodeInput([](auto in) { in.setKeyUp(0x4be0); }).kind == Kind::Boundary);  // extended
  CHECK(decodeInput([](auto in) {
          auto p = in.initMousePosition();
          p.setX(1023);
          p.setY(767);
          p.setButtons(0x7f);
        }).kind == Kind::Boundary);
  CHECK(decodeInput([](auto in) {
          auto m = in.initMouseMotion();
          m.setDx(-4096);
          m.setDy(4096);
        }).kind == Kind::Boundary);
  CHECK(decodeInput([](auto in) {
          auto b = in.initMouseButton();
          b.setButton(5);
          b.setPressed(true);
          b.setButtons(0x10);
        }).kind == Kind::Boundary);
}

TEST_CASE("netproxy input: out-of-range events are refused (the netproxy is replaced)") {
  const std::vector<std::function<void(ipc::vmm::InputEvent::Builder)>> hostile = {
      [](auto in) { in.setKeyDown(0); },
      [](auto in) { in.setKeyDown(0x80); },  // a break code where a make code belongs
      [](auto in) { in.setKeyUp(0xffffffff); },
      [](auto in) { in.setKeyDown(0x80e0); },  // extended, code above 0x7f
      [](auto in) { in.setKeyDown(0x1ee1); },  // not the 0xe0 prefix
      [](auto in) { in.initMouseMotion().setDx(4097); },
      [](auto in) { in.initMouseMotion().setDy(-100000); },
      [](auto in) { in.initMouseMotion().setButtons(0x80); },
      [](auto in) { in.initMousePosition().setX(8192); },
      [](auto in) { in.initMousePosition().setDisplayId(16); },
      [](auto in) { in.initMousePosition().setButtons(0xffffffff); },
      [](auto in) { in.initMouseButton().setButton(0); },
      [](auto in) { in.initMouseButton().setButton(8); },
  };
  for (size_t i = 0; i < hostile.size(); ++i) {
    INFO("case " << i);
    auto d = decodeInput(hostile[i]);
    CHECK(d.kind == Kind::Refused);
    CHECK(d.refusal.rfind("input: ", 0) == 0);
  }
}

TEST_CASE("netproxy: an input event of a kind this broker does not know is refused") {
  // A union discriminant beyond the schema's (a newer or compromised netproxy): a keyDown whose
  // tag is rewritten in the encoded message.
  capnp::MallocMessageBuilder raw;
  auto in = raw.initRoot<ipc::display::NetproxyToBroker>().initInput();
  in.setKeyDown(1);
  auto segs = raw.getSegmentsForOutput();
  // InputEvent's data section: keyDown (UInt32) in bytes 0..3, the union's UInt16 tag in 4..5.
  auto* bytes = reinterpret_cast<uint8_t*>(const_cast<capnp::word*>(segs[0].begin()));
  size_t found = 0;
  for (size_t i = 0; i + 1 < segs[0].size() * sizeof(capnp::word); ++i) {
    // keyDown's tag is 0 and the key value 1 sits right before it in the same word.
    if (bytes[i] == 1 && bytes[i + 1] == 0 && i % 8 == 0 && bytes[i + 4] == 0 && bytes[i + 5] == 0)
      found = i + 4;
  }
  REQUIRE(found != 0);
  bytes[found] = 9;  // no such member
  capnp::SegmentArrayMessageReader reader(segs);
  ipc::ReceivedFds fds({});
  auto d = broker::makeNetproxyPeer()->decode(reader, fds);
  CHECK(d.kind == Kind::Refused);
  CHECK(d.refusal.find("unknown input event") != std::string::npos);
}
