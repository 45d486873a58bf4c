// Runs in: the renderer (sandboxed), before it reads the first byte of guest memory. The
// renderer parses hostile guest memory, so its sandbox is the tightest: no file system, no
// network, no new processes; it may only map the descriptors the broker hands it, draw, and talk
// to the broker.
#pragma once

#include <vector>

#include "sandbox/sandbox.h"

namespace spicebox::renderer {

// The renderer's profile: `keepFds` are the descriptors the broker gave it (its IPC socket, its
// log descriptor, BAR and display segment memfds). Every rule carries its reason; the reviewed
// list of syscall names is renderer/seccomp-allowlist.txt, checked by renderer-tests.
sandbox::Profile sandboxProfile(std::vector<int> keepFds);

}  // namespace spicebox::renderer
