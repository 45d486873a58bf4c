#include "sandbox/sandbox.h"

#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "sandbox/fds.h"
#include "sandbox/namespaces.h"
#include "sandbox/privileges.h"
#include "sandbox/rlimits.h"
#include "sandbox/seccomp.h"

namespace spicebox::sandbox {
namespace {

// What an operator can do when Strict mode refuses to start.
constexpr const char* STRICT_ADVICE =
    "To reach the full sandbox, let unprivileged processes create user namespaces (sysctl "
    "kernel.unprivileged_userns_clone=1 where it exists, user.max_user_namespaces > 0, and on "
    "hosts with AppArmor's restriction kernel.apparmor_restrict_unprivileged_userns=0), and do "
    "not run spicebox in a container that forbids unshare(2). Or run with --sandbox=best-effort "
    "to accept a partial sandbox (seccomp, rlimits and no_new_privs still apply).";

}  // namespace

Mode parseMode(const std::string& text) {
  if (text == "strict")
    return Mode::Strict;
  if (text == "best-effort")
    return Mode::BestEffort;
  if (text == "off")
    return Mode::Off;
  throw std::invalid_argument("unknown sandbox mode \"" + text +
                              "\": choose strict, best-effort or off");
}

const char* toString(Mode mode) {
  switch (mode) {
    case Mode::Strict:
      return "strict";
    case Mode::BestEffort:
      return "best-effort";
    case Mode::Off:
      return "off";
  }
  return "?";
}

const char* toString(Level level) {
  switch (level) {
    case Level::Off:
      return "off";
    case Level::Partial:
      return "partial";
    case Level::Full:
      return "full";
  }
  return "?";
}

// The checklist. Each step is a named function in its own file; the order is the point:
//
//  1. closeInheritedFds  Before anything else, so no later step (or bug) can use a descriptor
//                        the parent leaked; and before enterNamespaces, because its fallback on
//                        old kernels lists /proc/self/fd, which the empty root takes away.
//  2. setResourceLimits  Early, while every limit can still be set, and before namespaces so
//                        that no step after it runs without them.
//  3. setNoNewPrivs      Before entering namespaces and loading the filter: from here on no exec
//                        could gain privileges, and it lets an unprivileged process load seccomp.
//  4. enterNamespaces    While the process is still dumpable (the uid_map and gid_map writes go
//                        through /proc/self, which a non-dumpable process no longer owns) and
//                        before seccomp (unshare, mount and pivot_root are not in any profile).
//                        After it, no path reaches a host file: every later step must not need
//                        one.
//  5. setNotDumpable     After the id maps are written; before anything untrusted is read, so
//                        guest data never lands in a core file and no same-uid process can
//                        ptrace us or read our memory through /proc.
//  6. dropCapabilities   After the namespace steps, which use the capabilities the user
//                        namespace grants (mount, pivot_root); before seccomp, whose filter
//                        forbids capset and prctl.
//  7. setupSeccomp       Last, because every step above makes syscalls the profile forbids. Only
//                        freeing the filter's memory and returning follow it.
Report enter(const Profile& profile, Mode mode) {
  Report report;
  if (mode == Mode::Off) {
    spdlog::warn(
        "sandbox is OFF: debugging only. {} runs with every privilege of its user: "
        "network, files, exec. Never use --sandbox=off in production.",
        profile.name);
    report.level = Level::Off;
    return report;
  }
  // The first log line is written before any step: a logger that buffers through stdio
  // allocates its buffer now (fstat), not after the filter forbids it.
  spdlog::info("sandbox: entering {} sandbox ({} mode)", profile.name, toString(mode));

  closeInheritedFds(profile.keepFds);
  setResourceLimits(profile.limits);
  setNoNewPrivs();
  report.missing = enterNamespaces();
  setNotDumpable();
  for (std::string& entry : dropCapabilities())
    report.missing.push_back(std::move(entry));

  report.level = report.missing.empty() ? Level::Full : Level::Partial;
  if (report.level != Level::Full) {
    if (mode == Mode::Strict) {
      // Nothing untrusted has been read yet: refusing here loses nothing.
      throw SandboxError(fmt::format(
          "sandbox for {} cannot reach the full level required by --sandbox=strict; the host "
          "refused: {}. {}",
          profile.name, fmt::join(report.missing, "; "), STRICT_ADVICE));
    }
    spdlog::warn("sandbox: {} runs with a partial sandbox; the host refused: {}", profile.name,
                 fmt::join(report.missing, "; "));
  }
  // Logged before the filter is loaded: if loading fails, enter() throws instead.
  spdlog::info("sandbox: {} sandbox level {}, loading {} seccomp rules", profile.name,
               toString(report.level), profile.allow.size());
  setupSeccomp(profile);
  return report;
}

}  // namespace spicebox::sandbox
