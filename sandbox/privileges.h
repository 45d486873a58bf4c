// Runs in: the renderer and the netproxy, inside sandbox::enter(). What the process may gain or
// expose: privileges through exec, ptrace and core dumps, capabilities.
#pragma once

#include <string>
#include <vector>

namespace spicebox::sandbox {

// PR_SET_NO_NEW_PRIVS: no exec can grant privileges (setuid bits, file capabilities) any more;
// also what lets an unprivileged process load a seccomp filter. Throws SandboxError on failure.
void setNoNewPrivs();

// PR_SET_DUMPABLE 0: no core dumps, and processes of the same uid cannot ptrace us or read our
// /proc files (memory maps, environment). Throws SandboxError on failure.
void setNotDumpable();

// Clears the effective, permitted and inheritable capabilities (the ambient set follows) and the
// bounding set, with libcap-ng. Dropping the bounding set needs CAP_SETPCAP, which a process has
// in its own user namespace or as root; without it the step is reported missing ("capability
// bounding set: ..."). Throws SandboxError when capabilities remain after capset.
// Returns the missing steps.
std::vector<std::string> dropCapabilities();

}  // namespace spicebox::sandbox
