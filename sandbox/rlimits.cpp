#include "sandbox/rlimits.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <string>

#include "sandbox/sanitizers.h"
#include "sandbox/step-error.h"

namespace spicebox::sandbox {
namespace {

// Sets soft and hard limit to `value`, or to the current hard limit when that is lower already
// (raising a hard limit needs CAP_SYS_RESOURCE, and a lower one is what we want anyway).
void setLimit(int resource, const char* name, rlim_t value) {
  rlimit limit = {};
  if (::getrlimit(resource, &limit) != 0) {
    throwStepError("setResourceLimits", std::string("getrlimit(") + name + ")", errno);
  }
  if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < value)
    value = limit.rlim_max;
  limit = {value, value};
  if (::setrlimit(resource, &limit) != 0) {
    throwStepError("setResourceLimits",
                   std::string("setrlimit(") + name + ", " + std::to_string(value) + ")", errno);
  }
}

}  // namespace

void setResourceLimits(const ResourceLimits& limits) {
  // No new processes, even if a bug let clone through the filter. (Not enforced for uid 0 by the
  // kernel: the seccomp filter is what really forbids fork.)
  setLimit(RLIMIT_NPROC, "RLIMIT_NPROC", 0);
  // A crash must not write guest memory or client data into a core file.
  setLimit(RLIMIT_CORE, "RLIMIT_CORE", 0);
  // Bounds how many descriptors a peer can make us hold (SCM_RIGHTS floods, accepted clients).
  setLimit(RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.maxOpenFiles);
  // Bounds how much memory hostile input can make us allocate.
  if constexpr (ADDRESS_SANITIZER) {
    spdlog::warn(
        "sandbox: RLIMIT_AS not applied: AddressSanitizer build (its shadow memory "
        "reserves terabytes of address space)");
  } else {
    setLimit(RLIMIT_AS, "RLIMIT_AS", limits.maxAddressSpace);
  }
}

}  // namespace spicebox::sandbox
