#include "netproxy/sandbox-profile.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
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

  // Serving clients on the sockets the broker opened for us. Not socket, bind, listen or
  // connect: the netproxy never makes a socket or reaches out. libuv's uv_listen would call
  // listen(2), so accepting is a uv_poll on the inherited listening socket and accept4 (libuv's
  // own choice too; plain accept(2) is not needed), then uv_tcp_open / uv_pipe_open.
  const std::vector<sandbox::SyscallRule> clientRules = {
      {"accept4", "accept a client on an inherited listening socket (non-blocking, cloexec)", {}},
      {"writev", "libuv streams write a message's header and body in one call", {}},
      {"shutdown", "uv_shutdown: finish sending to a client before closing", {}},
      {"getsockname", "log which listening address a client came in on", {}},
      {"getpeername", "log the client's address", {}},
      {"fcntl",
       "uv_pipe_open reads a local viewer socket's access mode (F_GETFL only)",
       {argEquals(1, F_GETFL)}},
      {"getsockopt",
       "read a local viewer's uid and pid on a unix socket (SO_PEERCRED)",
       {argEquals(1, SOL_SOCKET), argEquals(2, SO_PEERCRED)}},
      {"setsockopt",
       "uv_tcp_nodelay: SPICE messages are latency-bound (TCP_NODELAY)",
       {argEquals(1, IPPROTO_TCP), argEquals(2, TCP_NODELAY)}},
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

  // Not allowed, but not fatal either: the first libuv stream on a loop (uv_tcp_init,
  // uv_pipe_init) opens "/dev/null", then "/", read-only as a spare descriptor for its EMFILE
  // trick, and carries on without one when both fail. Exactly those flags fail with EACCES, so
  // nothing is ever opened; any other open still kills the process.
  profile.allow.push_back(
      {"openat",
       "libuv's EMFILE reserve (uv__stream_init): refused with EACCES, never run",
       {argEquals(2, O_RDONLY | O_CLOEXEC)},
       EACCES});
  return profile;
}

}  // namespace spicebox::netproxy
