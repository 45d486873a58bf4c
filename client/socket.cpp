// Runs in: SPICE clients. Input: a target a user typed, and a SPICE server's bytes, untrusted
// (see socket.h).
#include "client/socket.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace spicebox::client {

// Milliseconds left until `deadline`, for poll(); 0 once it passed.
int msLeft(Deadline deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits for `events` on `fd`; false on timeout.
bool waitFor(int fd, short events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, msLeft(deadline));
    if (n < 0 && errno == EINTR)
      continue;
    return n > 0;
  }
}

namespace {

std::string errnoText(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

// remote-viewer's URI forms: spice://HOST:PORT, spice://HOST?port=PORT, spice+unix:///PATH.
std::variant<Target, std::string> parseUri(const std::string& text) {
  Target t;
  const std::string unixScheme = "spice+unix://";
  if (text.rfind(unixScheme, 0) == 0) {
    t.kind = Target::Kind::Unix;
    t.path = text.substr(unixScheme.size());
    if (t.path.empty() || t.path.front() != '/' || t.path.size() >= sizeof(sockaddr_un::sun_path))
      return "'" + text +
             "' needs an absolute socket path (spice+unix:///run/vm.sock) of at most " +
             std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes";
    return t;
  }
  std::string rest = text.substr(std::string("spice://").size());
  std::string query;
  if (auto q = rest.find('?'); q != std::string::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  while (!rest.empty() && rest.back() == '/')
    rest.pop_back();
  std::string port;
  auto colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    port = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
  }
  // Query parameters: port=N (tls-port is refused: this client speaks no TLS).
  for (size_t pos = 0; pos < query.size();) {
    size_t amp = query.find('&', pos);
    std::string item = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    if (item.rfind("port=", 0) == 0)
      port = item.substr(5);
    pos = amp == std::string::npos ? query.size() : amp + 1;
  }
  if (port.empty())
    return "'" + text + "' names no port (spice://HOST:PORT; this client speaks no TLS, so " +
           "tls-port alone is not enough)";
  return Target::parse(rest + ":" + port);
}

}  // namespace

// ---- Target ----

std::variant<Target, std::string> Target::parse(const std::string& text) {
  Target t;
  if (text.rfind("spice://", 0) == 0 || text.rfind("spice+unix://", 0) == 0)
    return parseUri(text);
  if (text.rfind("unix:", 0) == 0) {
    t.kind = Kind::Unix;
    t.path = text.substr(5);
    if (t.path.empty() || t.path.size() >= sizeof(sockaddr_un::sun_path))
      return "unix socket path '" + t.path + "' is empty or too long";
    return t;
  }
  std::string rest = text.rfind("tcp:", 0) == 0 ? text.substr(4) : text;
  auto colon = rest.rfind(':');
  if (colon == std::string::npos)
    return "target '" + text +
           "' is none of HOST:PORT, unix:PATH, spice://HOST:PORT, spice+unix:///PATH";
  t.host = rest.substr(0, colon);
  if (t.host.size() >= 2 && t.host.front() == '[' && t.host.back() == ']')
    t.host = t.host.substr(1, t.host.size() - 2);
  if (t.host == "localhost")
    t.host = "127.0.0.1";
  std::string port = rest.substr(colon + 1);
  char* end = nullptr;
  long value = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end || value <= 0 || value > 65535 || t.host.empty())
    return "target '" + text + "' needs a host and a port in 1..65535";
  t.port = static_cast<uint16_t>(value);
  return t;
}

std::string Target::describe() const {
  return kind == Kind::Unix ? "unix:" + path : host + ":" + std::to_string(port);
}

// ---- Socket ----

std::variant<Socket, std::string> Socket::connect(const Target& target, Deadline deadline) {
  sockaddr_storage addr{};
  socklen_t addrLen = 0;
  int family = AF_UNIX;
  if (target.kind == Target::Kind::Unix) {
    auto* un = reinterpret_cast<sockaddr_un*>(&addr);
    un->sun_family = AF_UNIX;
    if (target.path.size() >= sizeof un->sun_path)
      return "unix socket path too long: " + target.path;
    std::memcpy(un->sun_path, target.path.c_str(), target.path.size() + 1);
    addrLen = sizeof(sockaddr_un);
  } else {
    // Numeric addresses only: tests connect to what the broker logged, no name resolution.
    auto* in4 = reinterpret_cast<sockaddr_in*>(&addr);
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    if (::inet_pton(AF_INET, target.host.c_str(), &in4->sin_addr) == 1) {
      family = in4->sin_family = AF_INET;
      in4->sin_port = htons(target.port);
      addrLen = sizeof(sockaddr_in);
    } else if (::inet_pton(AF_INET6, target.host.c_str(), &in6->sin6_addr) == 1) {
      family = in6->sin6_family = AF_INET6;
      in6->sin6_port = htons(target.port);
      addrLen = sizeof(sockaddr_in6);
    } else {
      return "'" + target.host + "' is not a numeric IPv4 or IPv6 address";
    }
  }
  base::Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd)
    return errnoText("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), addrLen) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN)
      return errnoText("connecting to " + target.describe());
    if (!waitFor(fd.get(), POLLOUT, deadline))
      return "connecting to " + target.describe() + " timed out";
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
      return "connecting to " + target.describe() + ": " + std::strerror(err);
  }
  return Socket(std::move(fd));
}

Error Socket::sendAll(std::span<const uint8_t> data, Deadline deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd_.get(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!waitFor(fd_.get(), POLLOUT, deadline))
        return "sending " + std::to_string(data.size()) + " bytes timed out after " +
               std::to_string(done);
      continue;
    }
    return errnoText("send");
  }
  return std::nullopt;
}

std::variant<Bytes, std::string> Socket::readExact(size_t n, Deadline deadline) {
  Bytes out(n);
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::recv(fd_.get(), out.data() + done, n - done, 0);
    if (got > 0) {
      done += static_cast<size_t>(got);
      continue;
    }
    if (got == 0)
      return "the server closed the connection after " + std::to_string(done) + " of " +
             std::to_string(n) + " bytes";
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!waitFor(fd_.get(), POLLIN, deadline))
        return "timed out waiting for " + std::to_string(n) + " bytes (got " +
               std::to_string(done) + ")";
      continue;
    }
    return errnoText("recv");
  }
  return out;
}

std::variant<Bytes, std::string> Socket::readAvailable(size_t max) {
  Bytes out(max);
  for (;;) {
    ssize_t got = ::recv(fd_.get(), out.data(), max, 0);
    if (got > 0) {
      out.resize(static_cast<size_t>(got));
      return out;
    }
    if (got == 0)
      return std::string("the server closed the connection");
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return Bytes{};
    return errnoText("recv");
  }
}

std::variant<Socket::Received, std::string> Socket::receiveAvailable(std::span<uint8_t> buffer) {
  // Room for MAX_FDS_PER_READ descriptors: a read that brings more sets MSG_CTRUNC (the kernel
  // closes those that did not fit), which is refused below.
  alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_READ)];
  for (;;) {
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t got = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return Received{};
    if (got < 0)
      return errnoText("recv");
    Received out;
    out.bytes = static_cast<size_t>(got);
    // Take ownership of every descriptor first, so each is closed whatever is refused next.
    bool foreign = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
        foreign = true;
        continue;
      }
      size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < n; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        out.fds.emplace_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC)
      return "the server passed more than " + std::to_string(MAX_FDS_PER_READ) +
             " descriptors at once (control data truncated)";
    if (foreign)
      return std::string("the server sent ancillary data other than SCM_RIGHTS");
    if (got == 0 && out.fds.empty())
      return std::string("the server closed the connection");
    if (got == 0)
      return std::string("the server passed a descriptor with no byte and closed the connection");
    return out;
  }
}

Socket::Closed Socket::awaitClose(Deadline deadline) {
  uint8_t buf[4096];
  for (;;) {
    ssize_t got = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (got == 0)
      return Closed::Eof;
    if (got > 0)
      continue;
    if (errno == EINTR)
      continue;
    if (errno == ECONNRESET || errno == EPIPE)
      return Closed::Reset;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return Closed::Reset;
    if (!waitFor(fd_.get(), POLLIN, deadline))
      return Closed::Timeout;
  }
}

}  // namespace spicebox::client
