// Runs in: the renderer and the netproxy, before they read any untrusted byte. Mechanism only:
// each process owns its Profile (renderer/sandbox-profile.cpp, netproxy/sandbox-profile.cpp).
#pragma once

#include <seccomp.h>
#include <sys/resource.h>
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
//   Full:    every step, including every namespace and the empty root.
//   Partial: descriptors closed, rlimits, no_new_privs, capabilities dropped and the seccomp
//            filter loaded, but the host refused some namespace step (see Report::missing).
//   Off:     nothing entered (Mode::Off).
enum class Level { Off, Partial, Full };

// Parses "strict" / "best-effort" / "off"; throws std::invalid_argument naming the choices.
Mode parseMode(const std::string& text);
const char* toString(Mode mode);
const char* toString(Level level);

// One allowed system call, with the reason it is needed. `conditions` (libseccomp argument
// comparisons) narrow it further; all must hold (e.g. mmap only without PROT_EXEC). Several
// rules for the same syscall are alternatives: any one of them matches the call.
//
// With `failWithErrno` set, a matching call is not run but fails with that errno instead of
// killing the process: for a call a library makes on its own and copes with failing (libuv opens
// /dev/null for its EMFILE reserve), where being killed would be wrong and allowing it would
// widen the sandbox. Such a rule never lets the call reach the kernel.
struct SyscallRule {
  const char* syscall;                   // name as libseccomp knows it ("read", "epoll_wait")
  const char* reason;                    // why this process needs it: reviewed with the profile
  std::vector<scmp_arg_cmp> conditions;  // empty: any arguments
  int failWithErrno = 0;                 // 0: allow; else fail with this errno, never run
};

// Condition for SyscallRule::conditions: argument `index` (0-based) equals `value`.
constexpr scmp_arg_cmp argEquals(unsigned index, uint64_t value) {
  return scmp_arg_cmp{index, SCMP_CMP_EQ, value, 0};
}

// Condition for SyscallRule::conditions: (argument `index` & `mask`) == `value`. With value 0
// it forbids the bits of `mask` (mmap's prot & PROT_EXEC == 0). Masked compares ignore bits
// outside the mask, so garbage in the upper half of a 32-bit argument cannot slip past them.
constexpr scmp_arg_cmp argMaskedEquals(unsigned index, uint64_t mask, uint64_t value) {
  return scmp_arg_cmp{index, SCMP_CMP_MASKED_EQ, mask, value};
}

struct ResourceLimits {
  rlim_t maxOpenFiles = 64;             // RLIMIT_NOFILE
  rlim_t maxAddressSpace = 4ull << 30;  // RLIMIT_AS, bytes (not applied under ASan: its
                                        // shadow memory needs terabytes of address space)
  // Always: RLIMIT_NPROC 0 (no new processes), RLIMIT_CORE 0 (no core dumps of guest data).
};

struct Profile {
  std::string name;          // "renderer", "netproxy": for logs and errors
  std::vector<int> keepFds;  // descriptors that survive closeInheritedFds (0, 1, 2 always)
  ResourceLimits limits;
  std::vector<SyscallRule> allow;  // the seccomp allowlist; anything else kills the process
};

// What enter() reached, for the log and the broker.
struct Report {
  Level level = Level::Off;
  std::vector<std::string> missing;  // steps the host refused, e.g. "user namespace: EPERM"
};

// Thrown when Mode::Strict cannot reach Level::Full, or a step that every mode needs fails
// (closing fds, rlimits, no_new_privs, dropping capabilities, seccomp), or the profile names a
// syscall libseccomp does not know (a bug in the profile). The message says which step and why.
class SandboxError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Enters the sandbox, in this order (each step's reason is in sandbox.cpp):
//   closeInheritedFds, setResourceLimits, setNoNewPrivs, enterNamespaces (user, net, ipc, pid,
//   mount with an empty read-only root), setNotDumpable, dropCapabilities, setupSeccomp.
// After it returns, any system call outside `profile.allow` kills the process with SIGSYS.
//
// Preconditions, because of that order:
//  - The process is single-threaded (a user namespace cannot be entered otherwise, and the
//    namespaces make new threads impossible afterwards: clone is not allowed anyway).
//  - Everything that needs the file system is done already (base::initLogging, which reads the
//    time zone; loading libraries): after enterNamespaces the root is an empty directory.
//  - Descriptors the process needs later are in profile.keepFds; every other one is closed.
//    This includes a libuv loop's own descriptors, so create the uv loop after enter().
//  - After the filter is loaded enter() only frees memory and returns, so the profile must allow
//    what free() needs (runtimeRules() does).
Report enter(const Profile& profile, Mode mode);

// The profile's seccomp filter in libseccomp's pseudo-filter-code text (seccomp_export_pfc),
// without loading it. Tests compare it with the reviewed allowlist.
std::string exportFilter(const Profile& profile);

// The syscall names `exportFilter` allows (those with an ALLOW action; rules with
// failWithErrno are not listed, as they never run the call), resolved back from their numbers
// (native arch), sorted. Lets a test notice a widened policy without depending on PFC layout
// details beyond the `if ($syscall == N)` and `action ALLOW` lines.
std::vector<std::string> allowedSyscalls(const Profile& profile);

}  // namespace spicebox::sandbox
