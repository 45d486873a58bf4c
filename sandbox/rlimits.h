// Runs in: the renderer and the netproxy, inside sandbox::enter(). Trusts the profile's limits.
#pragma once

#include "sandbox/sandbox.h"

namespace spicebox::sandbox {

// Sets RLIMIT_NPROC 0, RLIMIT_CORE 0, RLIMIT_NOFILE and RLIMIT_AS from `limits` (soft and hard,
// so the process cannot raise them again). RLIMIT_AS is skipped, with a warning in the log, in
// AddressSanitizer builds. Throws SandboxError when the kernel refuses a limit.
void setResourceLimits(const ResourceLimits& limits);

}  // namespace spicebox::sandbox
