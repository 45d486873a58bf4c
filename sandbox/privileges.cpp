#include "sandbox/privileges.h"

#include <cap-ng.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "sandbox/step-error.h"

namespace spicebox::sandbox {
namespace {

// The capabilities still in the bounding set. Asks the kernel (PR_CAPBSET_READ until EINVAL)
// rather than libcap-ng's compiled-in CAP_LAST_CAP, so a kernel newer than the headers cannot
// leave capabilities behind unnoticed.
std::vector<int> boundingSetLeft() {
  std::vector<int> left;
  for (int cap = 0;; ++cap) {
    int r = ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (r < 0)
      break;  // EINVAL: past the last capability this kernel knows
    if (r > 0)
      left.push_back(cap);
  }
  return left;
}

}  // namespace

void setNoNewPrivs() {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    throwStepError("setNoNewPrivs", "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  }
}

void setNotDumpable() {
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    throwStepError("setNotDumpable", "prctl(PR_SET_DUMPABLE, 0)", errno);
  }
}

std::vector<std::string> dropCapabilities() {
  std::vector<std::string> missing;
  capng_clear(CAPNG_SELECT_BOTH);
  // The return value mixes both halves (libcap-ng silently skips the bounding set without
  // CAP_SETPCAP), so each half is checked against the kernel below instead.
  (void)capng_apply(CAPNG_SELECT_BOTH);

  // The kernel's word on the capability sets: anything left here is a bug, not a host
  // limitation (dropping capabilities is always permitted).
  __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0) {
    throwStepError("dropCapabilities", "capget", errno);
  }
  for (const auto& word : data) {
    if (word.effective != 0 || word.permitted != 0 || word.inheritable != 0) {
      throw SandboxError("sandbox step dropCapabilities failed: capabilities remain after capset");
    }
  }

  // The bounding set limits what an exec could regain; no_new_privs and the filter (no execve)
  // already close that door, so a host that refuses this is reported, not fatal.
  std::vector<int> left = boundingSetLeft();
  for (int cap : left) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      missing.push_back("capability bounding set: " + errnoName(errno));
      break;
    }
  }
  return missing;
}

}  // namespace spicebox::sandbox
