// Runs in: the netproxy (sandboxed), before it reads the first byte from the network. The
// netproxy parses hostile network bytes, so it may only serve the listening sockets and client
// connections it inherited or accepted, map display segments read-only, and talk to the broker:
// it cannot open files, make sockets, connect anywhere or start processes.
#pragma once

#include <vector>

#include "sandbox/sandbox.h"

namespace spicebox::netproxy {

// The netproxy's profile: `keepFds` are the descriptors the broker gave it (its IPC socket, its
// log descriptor, the listening TCP and unix sockets, read-only display segments). Every rule
// carries its reason; the reviewed list of syscall names is netproxy/seccomp-allowlist.txt,
// checked by netproxy-tests.
sandbox::Profile sandboxProfile(std::vector<int> keepFds);

}  // namespace spicebox::netproxy
