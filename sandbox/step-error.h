// Runs in: the renderer and the netproxy, inside sandbox::enter(). How the steps name a failure:
// "user namespace: EPERM" in a Report, "setNoNewPrivs: prctl(PR_SET_NO_NEW_PRIVS): EINVAL" in a
// SandboxError. Errno names, not strerror() text: they are what an operator searches for.
#pragma once

#include <string.h>

#include <string>

#include "sandbox/sandbox.h"

namespace spicebox::sandbox {

// "EPERM", or the number when glibc has no name for it.
inline std::string errnoName(int err) {
  const char* name = ::strerrorname_np(err);
  return name ? std::string(name) : "errno " + std::to_string(err);
}

// A step that every mode needs failed: there is no sandbox worth running in.
[[noreturn]] inline void throwStepError(const char* step, const std::string& call, int err) {
  throw SandboxError(std::string("sandbox step ") + step + " failed: " + call + ": " +
                     errnoName(err));
}

}  // namespace spicebox::sandbox
