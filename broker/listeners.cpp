#include "broker/listeners.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <spdlog/fmt/fmt.h>

#include "ipc/display.capnp.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>

namespace spicebox::broker {

namespace {

// What getuid() and SO_PEERCRED report for a uid with no mapping in the current user namespace.
constexpr uint32_t OVERFLOW_UID = 65534;

// Pending connections the kernel queues before the netproxy accepts them.
constexpr int LISTEN_BACKLOG = 64;

std::string describeAddress(const sockaddr* addr) {
  char host[INET6_ADDRSTRLEN] = {};
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    return fmt::format("{}:{}", host, ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
  ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
  return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
}

std::optional<uint32_t> parseId(const std::string& text) {
  uint32_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    return std::nullopt;
  return value;
}

}  // namespace

std::variant<ListeningSocket, std::string> listenTcp(const std::string& spec) {
  const auto colon = spec.rfind(':');
  if (colon == std::string::npos || colon + 1 == spec.size())
    return fmt::format("--listen {}: expected ADDRESS:PORT, e.g. 127.0.0.1:5900 or [::1]:5900",
                       spec);
  std::string host = spec.substr(0, colon);
  const std::string port = spec.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  auto portNumber = parseId(port);
  if (!portNumber || *portNumber > 65535)
    return fmt::format("--listen {}: port '{}' is not a number from 0 to 65535", spec, port);
  if (host.empty())
    return fmt::format(
        "--listen {}: no address; name the interface to listen on (0.0.0.0 for all IPv4 "
        "interfaces, 127.0.0.1 for this machine only)",
        spec);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0)
    return fmt::format("--listen {}: cannot resolve '{}': {}", spec, host, ::gai_strerror(rc));
  std::string lastError;
  for (const addrinfo* ai = found; ai; ai = ai->ai_next) {
    base::Fd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      lastError = std::strerror(errno);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 ||
        ::listen(fd.get(), LISTEN_BACKLOG) != 0) {
      lastError = fmt::format("{}: {}", describeAddress(ai->ai_addr), std::strerror(errno));
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    ::freeaddrinfo(found);
    return ListeningSocket{std::move(fd), false,
                           describeAddress(reinterpret_cast<const sockaddr*>(&bound))};
  }
  ::freeaddrinfo(found);
  return fmt::format(
      "--listen {}: cannot listen there ({}); is the port in use, or the address "
      "not one of this machine's?",
      spec, lastError);
}

std::variant<std::vector<uint32_t>, std::string> resolveShmUsers(
    const std::vector<std::string>& users, uint32_t ownUid) {
  if (users.empty())
    return std::vector<uint32_t>{ownUid};
  if (users.size() > ipc::display::MAX_SHM_UIDS)
    return fmt::format("--shm-allow given {} times; at most {} users", users.size(),
                       ipc::display::MAX_SHM_UIDS);
  std::vector<uint32_t> uids;
  for (const std::string& user : users) {
    uint32_t uid = 0;
    if (auto id = parseId(user)) {
      uid = *id;
    } else if (const passwd* pw = ::getpwnam(user.c_str())) {
      uid = pw->pw_uid;
    } else {
      return fmt::format("--shm-allow {}: no such user", user);
    }
    if (uid == OVERFLOW_UID)
      return fmt::format(
          "--shm-allow {}: uid {} is the overflow uid, which every unmapped user shows as "
          "inside the netproxy's user namespace; allow a real account",
          user, uid);
    if (std::find(uids.begin(), uids.end(), uid) == uids.end())
      uids.push_back(uid);
  }
  return uids;
}

std::variant<ListeningSocket, std::string> listenUnix(const UnixSocketOptions& options) {
  const std::string& path = options.path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return fmt::format("--unix {}: a socket path must be 1 to {} bytes long", path,
                       sizeof addr.sun_path - 1);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (!options.owner.empty()) {
    if (auto id = parseId(options.owner)) {
      uid = *id;
    } else if (const passwd* pw = ::getpwnam(options.owner.c_str())) {
      uid = pw->pw_uid;
    } else {
      return fmt::format("--unix-owner {}: no such user", options.owner);
    }
  }
  if (!options.group.empty()) {
    if (auto id = parseId(options.group)) {
      gid = *id;
    } else if (const group* gr = ::getgrnam(options.group.c_str())) {
      gid = gr->gr_gid;
    } else {
      return fmt::format("--unix-group {}: no such group", options.group);
    }
  }
  base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd)
    return fmt::format("cannot create a unix socket: {}", std::strerror(errno));
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fmt::format(
          "--unix {}: the path exists and is not a socket; remove it or choose "
          "another path",
          path);
    // A socket file: live if something accepts on it.
    base::Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      return fmt::format(
          "--unix {}: another server is listening there (a second spicebox for "
          "the same VM?); stop it or choose another path",
          path);
    ::unlink(path.c_str());
  }
  // Created with no permission for anyone, then given the asked mode: never briefly too open.
  const mode_t old = ::umask(0777);
  const int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bindErrno = errno;
  ::umask(old);
  if (rc != 0)
    return fmt::format(
        "--unix {}: cannot bind: {} (does the directory exist and is it "
        "writable?)",
        path, std::strerror(bindErrno));
  if ((uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) &&
      ::chown(path.c_str(), uid, gid) != 0) {
    const int e = errno;
    ::unlink(path.c_str());
    return fmt::format(
        "--unix {}: cannot give it owner {} / group {}: {} (changing the owner "
        "needs root)",
        path, options.owner, options.group, std::strerror(e));
  }
  if (::chmod(path.c_str(), options.mode) != 0 || ::listen(fd.get(), LISTEN_BACKLOG) != 0) {
    const int e = errno;
    ::unlink(path.c_str());
    return fmt::format("--unix {}: cannot set mode {:o} and listen: {}", path, options.mode,
                       std::strerror(e));
  }
  return ListeningSocket{std::move(fd), true, path};
}

std::optional<std::string> readPasswordFile(const std::string& path, std::string& error,
                                            std::string& warning) {
  base::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    error = fmt::format("--password-file {}: {}", path, std::strerror(errno));
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    error = fmt::format("--password-file {}: not a regular file", path);
    return std::nullopt;
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO))
    warning = fmt::format(
        "--password-file {} is readable by others than its owner (mode {:o}); "
        "chmod 600 it",
        path, st.st_mode & 0777);
  char buffer[256];
  ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
  if (n < 0) {
    error = fmt::format("--password-file {}: {}", path, std::strerror(errno));
    return std::nullopt;
  }
  std::string text(buffer, static_cast<size_t>(n));
  if (auto nl = text.find_first_of("\r\n"); nl != std::string::npos)
    text.resize(nl);
  else if (static_cast<size_t>(n) == sizeof buffer)
    text.resize(MAX_PASSWORD_BYTES + 1);  // reported as too long below
  if (text.empty()) {
    error = fmt::format(
        "--password-file {}: the first line is empty; write the password there "
        "(or pass --disable-ticketing to let anyone connect)",
        path);
    return std::nullopt;
  }
  if (text.size() > MAX_PASSWORD_BYTES) {
    error = fmt::format(
        "--password-file {}: the password is longer than the {} bytes SPICE "
        "allows",
        path, MAX_PASSWORD_BYTES);
    return std::nullopt;
  }
  if (text.find('\0') != std::string::npos) {
    error = fmt::format("--password-file {}: the password holds a NUL byte", path);
    return std::nullopt;
  }
  return text;
}

std::variant<int64_t, std::string> parsePasswordExpiry(const std::string& text, int64_t now) {
  if (text == "never")
    return int64_t{0};
  if (text == "now")
    return now;
  const bool relative = !text.empty() && text[0] == '+';
  const std::string digits = relative ? text.substr(1) : text;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || value < 0)
    return fmt::format("--password-expiry {}: expected never, now, +SECONDS or a UNIX time", text);
  if (relative) {
    if (value > INT64_MAX - now)
      return fmt::format("--password-expiry {}: too far in the future; use never", text);
    return now + value;
  }
  return value;
}

}  // namespace spicebox::broker
