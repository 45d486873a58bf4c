// Runs in: the renderer and the netproxy, before they read any untrusted byte. Mechanism only:
// each process owns its Profile (renderer/sandbox-profile.cpp, netproxy/sandbox-profile.cpp).
#pragma once

#include <seccomp.h>
#include <sys/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace spicebox::sandbox {

// What the operator asked for (--sandbox=...).
enum class Mode {
  Strict,      // refuse to run below Level::Full
  BestEffort,  // enter every step the host permits; report what was missing
  Off,         // debugging only: nothing is entered, loudly logged
};

// What was reached. Mirrors ipc::SandboxLevel.
enum class Level { Off, Partial, Full };

// Parses "strict" / "best-effort" / "off"; throws std::invalid_argument naming the choices.
Mode parseMode(const std::string& text);
const char* toString(Mode mode);
const char* toString(Level level);

// One allowed system call, with the reason it is needed. `conditions` (libseccomp argument
// comparisons) narrow it further; all must hold (e.g. mmap only without PROT_EXEC).
struct SyscallRule {
  const char* syscall;                  // name as libseccomp knows it ("read", "epoll_wait")
  const char* reason;                   // why this process needs it: reviewed with the profile
  std::vector<scmp_arg_cmp> conditions;  // empty: any arguments
};

struct ResourceLimits {
  rlim_t maxOpenFiles = 64;                // RLIMIT_NOFILE
  rlim_t maxAddressSpace = 4ull << 30;     // RLIMIT_AS, bytes (not applied under ASan: its
                                           // shadow memory needs terabytes of address space)
  // Always: RLIMIT_NPROC 0 (no new processes), RLIMIT_CORE 0 (no core dumps of guest data).
};

struct Profile {
  std::string name;                 // "renderer", "netproxy": for logs and errors
  std::vector<int> keepFds;         // descriptors that survive closeInheritedFds (0, 1, 2 always)
  ResourceLimits limits;
  std::vector<SyscallRule> allow;   // the seccomp allowlist; anything else kills the process
};

// What enter() reached, for the log and the broker.
struct Report {
  Level level = Level::Off;
  std::vector<std::string> missing;  // steps the host refused, e.g. "user namespace: EPERM"
};

// Thrown when Mode::Strict cannot reach Level::Full, or a step that every mode needs fails
// (closing fds, rlimits, no_new_privs, seccomp). The message says which step and why.
class SandboxError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Enters the sandbox, in this order (each step's reason is in sandbox.cpp):
//   closeInheritedFds, setResourceLimits, setNoNewPrivs, enterNamespaces (user, net, ipc, pid,
//   mount with an empty read-only root), setNotDumpable, dropCapabilities, setupSeccomp.
// After it returns, any system call outside `profile.allow` kills the process with SIGSYS.
Report enter(const Profile& profile, Mode mode);

// The profile's seccomp filter in libseccomp's pseudo-filter-code text (seccomp_export_pfc),
// without loading it. Tests compare it with the reviewed allowlist.
std::string exportFilter(const Profile& profile);

// The syscall names `exportFilter` allows, resolved back from their numbers (native arch),
// sorted. Lets a test notice a widened policy without depending on PFC layout details.
std::vector<std::string> allowedSyscalls(const Profile& profile);

}  // namespace spicebox::sandbox
