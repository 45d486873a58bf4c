// Runs in: the renderer and the netproxy (part of their seccomp profiles). The syscalls every
// sandboxed spicebox process needs just to run: memory, its libuv loop, logging, messages with
// the broker, abort and exit. Each profile adds what its own work needs.
#pragma once

#include <vector>

#include "sandbox/sandbox.h"

namespace spicebox::sandbox {

// The rules, each with its reason. Found by running the allowed-work tests of both processes
// under the filter (sandbox-test.cpp, renderer/ and netproxy/sandbox-profile-test.cpp) and
// looking at what was killed; the few rules no test exercises on the test host (a clock the
// vDSO cannot serve, epoll_pwait, exit, rt_sigreturn, madvise outside ASan) say so in their
// reason. Sanitizer builds add the sanitizer runtimes' own needs, and only those builds.
std::vector<SyscallRule> runtimeRules();

}  // namespace spicebox::sandbox
