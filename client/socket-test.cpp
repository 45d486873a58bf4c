// Runs in: tests. Input: target strings as a user types them (remote-viewer's URI forms among
// them), and descriptors passed over a socketpair by the test itself, more than a read takes.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "client/socket.h"

using namespace spicebox;
using namespace spicebox::client;

namespace {

Target parsed(const std::string& text) {
  auto t = Target::parse(text);
  if (auto* err = std::get_if<std::string>(&t))
    FAIL("'" << text << "': " << *err);
  return std::get<Target>(t);
}

}  // namespace

TEST_CASE("target: remote-viewer's URIs and the library's own forms", "[socket]") {
  Target t = parsed("spice://127.0.0.1:5930");
  CHECK(t.kind == Target::Kind::Tcp);
  CHECK(t.host == "127.0.0.1");
  CHECK(t.port == 5930);
  t = parsed("spice://[::1]:5900/");
  CHECK(t.host == "::1");
  CHECK(t.port == 5900);
  t = parsed("spice://localhost?port=5901&tls-port=5902");
  CHECK(t.host == "127.0.0.1");
  CHECK(t.port == 5901);
  t = parsed("spice+unix:///run/spicebox/vm.sock");
  CHECK(t.kind == Target::Kind::Unix);
  CHECK(t.path == "/run/spicebox/vm.sock");
  t = parsed("unix:/tmp/x.sock");
  CHECK(t.path == "/tmp/x.sock");
  t = parsed("tcp:10.0.0.1:7");
  CHECK(t.port == 7);

  for (const char* bad : {"spice://127.0.0.1", "spice://127.0.0.1?tls-port=5901",
                          "spice+unix://relative.sock", "spice+unix://", "spice://:5900",
                          "spice://127.0.0.1:0", "spice://127.0.0.1:65536", "nonsense"})
    CHECK(std::holds_alternative<std::string>(Target::parse(bad)));
  std::string longPath = "spice+unix:///" + std::string(200, 'a');
  CHECK(std::holds_alternative<std::string>(Target::parse(longPath)));
}

TEST_CASE("socket: descriptors come with their bytes, too many at once is an error",
          "[socket][hostile]") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
  Socket client{base::Fd(fds[0])};
  base::Fd server(fds[1]);
  auto sendFds = [&](size_t n) {
    std::vector<int> passed(n, STDIN_FILENO);
    uint8_t byte = 42;
    iovec iov{&byte, 1};
    std::vector<uint8_t> control(CMSG_SPACE(sizeof(int) * n));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(c), passed.data(), sizeof(int) * n);
    REQUIRE(::sendmsg(server.get(), &msg, 0) == 1);
  };
  uint8_t buffer[16];
  auto nothing = client.receiveAvailable(buffer);
  REQUIRE(std::holds_alternative<Socket::Received>(nothing));
  CHECK(std::get<Socket::Received>(nothing).bytes == 0);

  sendFds(MAX_FDS_PER_READ);
  auto got = client.receiveAvailable(buffer);
  REQUIRE(std::holds_alternative<Socket::Received>(got));
  auto& received = std::get<Socket::Received>(got);
  CHECK(received.bytes == 1);
  REQUIRE(received.fds.size() == MAX_FDS_PER_READ);
  for (auto& fd : received.fds)
    CHECK((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC));

  sendFds(MAX_FDS_PER_READ + 1);
  auto truncated = client.receiveAvailable(buffer);
  REQUIRE(std::holds_alternative<std::string>(truncated));
  CHECK_THAT(std::get<std::string>(truncated), Catch::Contains("truncated"));

  server.reset();
  auto eof = client.receiveAvailable(buffer);
  REQUIRE(std::holds_alternative<std::string>(eof));
  CHECK_THAT(std::get<std::string>(eof), Catch::Contains("closed"));
}
