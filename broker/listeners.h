// Runs in: broker (privileged). Input: the operator's command line (--listen, --unix and their
// options, --password-file). Makes the listening sockets SPICE clients connect to; the netproxy
// gets copies and accepts on them (it cannot create sockets itself), the broker keeps the
// originals so that a restarted netproxy serves the same addresses.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "base/fd.h"

namespace spicebox::broker {

struct ListeningSocket {
  base::Fd fd;  // non-blocking, close-on-exec, listening
  bool unix = false;
  std::string name;  // "127.0.0.1:5900", "[::1]:5900", "/run/spicebox/vm.sock"
};

// --listen ADDR:PORT: an IPv4 address, a bracketed IPv6 address or a host name, and a port
// (0: the kernel picks one; `name` then holds the real port). The refusal says what to change.
std::variant<ListeningSocket, std::string> listenTcp(const std::string& spec);

// --unix PATH with the socket file's mode (e.g. 0600) and, when set, owner and group (names or
// numeric ids). A stale socket at PATH (nobody accepting on it) is replaced; a live one or any
// other kind of file is refused.
struct UnixSocketOptions {
  std::string path;
  mode_t mode = 0600;
  std::string owner;  // empty: the broker's uid
  std::string group;  // empty: the broker's gid
};
std::variant<ListeningSocket, std::string> listenUnix(const UnixSocketOptions& options);

// --shm-allow USER (repeatable; names or numeric uids): the peers of unix-socket connections
// offered the shared-memory display. Empty `users`: the broker's own uid only. The overflow uid
// (65534, "nobody": what SO_PEERCRED reports inside a user namespace for any unmapped uid) is
// refused, as is more than display.capnp maxShmUids entries.
std::variant<std::vector<uint32_t>, std::string> resolveShmUsers(
    const std::vector<std::string>& users, uint32_t ownUid);

// Longest SPICE password (spice/protocol.h SPICE_MAX_PASSWORD_LENGTH, the NUL excluded).
inline constexpr size_t MAX_PASSWORD_BYTES = 60;

// --password-file FILE: its contents up to the first line break (a trailing newline is what an
// editor adds). Refused: unreadable, empty, longer than MAX_PASSWORD_BYTES, holding a NUL byte.
// On refusal `error` says why; `warning` is set when the file is readable by others than its owner.
std::optional<std::string> readPasswordFile(const std::string& path, std::string& error,
                                            std::string& warning);

// --password-expiry: "never" (0), "now", "+SECONDS" from now, or an absolute UNIX time.
std::variant<int64_t, std::string> parsePasswordExpiry(const std::string& text, int64_t now);

}  // namespace spicebox::broker
