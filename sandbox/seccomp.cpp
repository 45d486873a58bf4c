#include "sandbox/seccomp.h"

#include <seccomp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "sandbox/step-error.h"

namespace spicebox::sandbox {
namespace {

struct FilterDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Filter = std::unique_ptr<void, FilterDeleter>;

// libseccomp returns -errno.
[[noreturn]] void throwLibseccompError(const Profile& profile, const std::string& call, int rc) {
  throw SandboxError("sandbox step setupSeccomp failed for " + profile.name + ": " + call + ": " +
                     errnoName(-rc));
}

Filter buildFilter(const Profile& profile) {
  // Kill the whole process, not just the thread: a half-dead process is harder to notice for the
  // broker than one that exits with SIGSYS.
  Filter filter(seccomp_init(SCMP_ACT_KILL_PROCESS));
  if (!filter)
    throw SandboxError("sandbox: seccomp_init failed (kernel without seccomp filters?)");
  // A syscall made through another ABI (int 0x80 from x86-64 code, x32 numbers) would bypass a
  // filter written for the native one: kill it the same way.
  if (int rc = seccomp_attr_set(filter.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
      rc < 0) {
    throwLibseccompError(profile, "seccomp_attr_set(ACT_BADARCH)", rc);
  }
  // Every thread gets the filter, should one exist despite enter()'s precondition.
  if (int rc = seccomp_attr_set(filter.get(), SCMP_FLTATR_CTL_TSYNC, 1); rc < 0) {
    throwLibseccompError(profile, "seccomp_attr_set(CTL_TSYNC)", rc);
  }
  for (const SyscallRule& rule : profile.allow) {
    int nr = seccomp_syscall_resolve_name(rule.syscall);
    if (nr == __NR_SCMP_ERROR) {
      throw SandboxError("sandbox profile " + profile.name + " names unknown syscall \"" +
                         rule.syscall + "\" (a bug in the profile)");
    }
    const uint32_t action =
        rule.failWithErrno == 0 ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(rule.failWithErrno);
    int rc = seccomp_rule_add_array(filter.get(), action, nr,
                                    static_cast<unsigned>(rule.conditions.size()),
                                    rule.conditions.data());
    if (rc < 0)
      throwLibseccompError(profile, std::string("rule for ") + rule.syscall, rc);
  }
  return filter;
}

}  // namespace

void setupSeccomp(const Profile& profile) {
  Filter filter = buildFilter(profile);
  if (int rc = seccomp_load(filter.get()); rc < 0)
    throwLibseccompError(profile, "seccomp_load", rc);
  // `filter` is freed on return: free() must be in the profile (runtimeRules() has it).
}

std::string exportFilter(const Profile& profile) {
  Filter filter = buildFilter(profile);
  // seccomp_export_pfc writes to a descriptor; a memfd keeps the text off the file system.
  int fd = ::memfd_create("spicebox-seccomp-pfc", MFD_CLOEXEC);
  if (fd < 0)
    throwStepError("exportFilter", "memfd_create", errno);
  std::string text;
  int rc = seccomp_export_pfc(filter.get(), fd);
  if (rc == 0 && ::lseek(fd, 0, SEEK_SET) == 0) {
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof buffer)) > 0)
      text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  if (rc < 0)
    throwLibseccompError(profile, "seccomp_export_pfc", rc);
  return text;
}

std::vector<std::string> allowedSyscalls(const Profile& profile) {
  // Each syscall with a rule has a block starting `if ($syscall == <number>)` in the pseudo
  // filter code, holding its actions; it is allowed if one of them is ALLOW.
  constexpr std::string_view MARKER = "if ($syscall == ";
  constexpr std::string_view ALLOW = "action ALLOW;";
  const std::string text = exportFilter(profile);
  std::vector<std::string> names;
  for (size_t at = text.find(MARKER); at != std::string::npos;) {
    const size_t next = text.find(MARKER, at + 1);
    const std::string_view block =
        std::string_view(text).substr(at, next == std::string::npos ? next : next - at);
    at = next;
    if (block.find(ALLOW) == std::string_view::npos)
      continue;
    const char* digits = block.data() + MARKER.size();
    char* end = nullptr;
    long nr = std::strtol(digits, &end, 10);
    if (end == digits)
      continue;
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(nr));
    names.push_back(name ? name : "syscall " + std::to_string(nr));
    std::free(name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

}  // namespace spicebox::sandbox
