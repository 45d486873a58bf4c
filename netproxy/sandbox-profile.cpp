#include "netproxy/sandbox-profile.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <utility>

#include "sandbox/runtime-rules.h"

namespace spicebox::netproxy {

// RLIMIT_NOFILE: the IPC socket, the log, the listening sockets and the display segments, plus
// one descriptor per client channel (a SPICE client opens about six). Bounds how many
// connections a flood can make us hold open.
constexpr rlim_t MAX_OPEN_FILES = 256;

// RLIMIT_AS: the read-only display segments plus per-connection buffers and image encoding
// scratch memory, with headroom.
// TODO(security): derive from the configured segment sizes and client limit.
constexpr rlim_t MAX_ADDRESS_SPACE = 4ull << 30;

sandbox::Profile sandboxProfile(std::vector<int> keepFds) {
  using sandbox::argEquals;
  sandbox::Profile profile;
  profile.name = "netproxy";
  profile.keepFds = std::move(keepFds);
  profile.limits.maxOpenFiles = MAX_OPEN_FILES;
  profile.limits.maxAddressSpace = MAX_ADDRESS_SPACE;
  // Memory, the libuv loop, logging, IPC with the broker, exit: see sandbox/runtime-rules.cpp.
  profile.allow = sandbox::runtimeRules();

  // Serving clients on the sockets the broker opened for us, the way netproxy/server.cpp does:
  // a uv_poll on each inherited listening socket, accept4 (which also gives the peer's address
  // for the log), then a uv_poll on the client's non-blocking socket, read(2) in and
  // sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT) out (read and sendmsg: sandbox/runtime-rules.cpp). Not
  // socket, bind, listen or connect: the netproxy never makes a socket or reaches out. No libuv
  // stream (uv_tcp, uv_pipe), so none of what they need: no writev, shutdown, getsockname,
  // getpeername, fcntl(F_GETFL), and no open of /dev/null (uv__stream_init's EMFILE reserve).
  const std::vector<sandbox::SyscallRule> clientRules = {
      {"accept4",
       "accept a client on an inherited listening socket (non-blocking, cloexec) and learn its "
       "address for the log",
       {}},
      {"setsockopt",
       "TCP_NODELAY on an accepted TCP client: SPICE messages are latency-bound",
       {argEquals(1, IPPROTO_TCP), argEquals(2, TCP_NODELAY)}},
      {"getsockopt",
       "SO_PEERCRED of a client accepted on a unix socket: only the allowed users' viewers are "
       "offered the shared-memory display (descriptors go out with sendmsg SCM_RIGHTS)",
       {argEquals(1, SOL_SOCKET), argEquals(2, SO_PEERCRED)}},
  };
  profile.allow.insert(profile.allow.end(), clientRules.begin(), clientRules.end());

  // The SPICE server (netproxy/server.cpp). Its RSA key is made before the sandbox
  // (Server::prepare), but decrypting a ticket uses RSA blinding and new session ids come from
  // OpenSSL's generator: both draw random bytes, and OpenSSL reseeds from the kernel now and then.
  const std::vector<sandbox::SyscallRule> serverRules = {
      {"getrandom", "OpenSSL reseeds its generator (ticket RSA blinding, session ids)", {}},
      {"fcntl",
       "setDisplay checks a display segment's seals before mapping it (F_GET_SEALS only): one "
       "that can shrink would SIGBUS the netproxy on its next read (the renderer's profile has "
       "the same rule)",
       {argEquals(1, F_GET_SEALS)}},
      {"lseek",
       "setDisplay checks a display segment's size before mapping it (SEEK_END only): a "
       "mapping past the end would fault on first read",
       {argEquals(2, SEEK_END)}},
  };
  profile.allow.insert(profile.allow.end(), serverRules.begin(), serverRules.end());

  return profile;
}

}  // namespace spicebox::netproxy
