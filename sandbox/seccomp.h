// Runs in: the renderer and the netproxy, as sandbox::enter()'s last step; and in tests, which
// export the filter without loading it. Trusts the profile: its rules are reviewed code.
#pragma once

#include "sandbox/sandbox.h"

namespace spicebox::sandbox {

// Builds the profile's filter (default action: kill the process with SIGSYS; one rule per
// SyscallRule) and loads it into the kernel for every thread of the process. From then on any
// system call outside the profile kills the process. Throws SandboxError when a rule names a
// syscall libseccomp does not know (a bug in the profile) or the kernel refuses the filter.
void setupSeccomp(const Profile& profile);

}  // namespace spicebox::sandbox
