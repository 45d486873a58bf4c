#include "sandbox/fds.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>

#include "sandbox/step-error.h"

namespace spicebox::sandbox {
namespace {

constexpr const char* STEP = "closeInheritedFds";

// Fallback for kernels without close_range (before 5.9): closes the listed descriptors in
// [first, last]. Reads the directory completely before closing anything, so closing does not
// disturb the listing.
void closeListedFds(unsigned first, unsigned last) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    throwStepError(STEP, "opendir(/proc/self/fd)", errno);
  std::vector<unsigned> open;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    unsigned long fd = std::strtoul(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0')
      continue;  // "." and ".."
    if (static_cast<int>(fd) == ::dirfd(dir))
      continue;
    if (fd >= first && fd <= last)
      open.push_back(static_cast<unsigned>(fd));
  }
  ::closedir(dir);
  for (unsigned fd : open) {
    // EINTR still releases the descriptor on Linux, so only EBADF-free success matters here.
    if (::close(static_cast<int>(fd)) != 0 && errno != EINTR) {
      throwStepError(STEP, "close(" + std::to_string(fd) + ")", errno);
    }
  }
}

void closeRange(unsigned first, unsigned last) {
  if (::close_range(first, last, 0) == 0)
    return;
  if (errno != ENOSYS) {
    throwStepError(STEP, "close_range(" + std::to_string(first) + ", " + std::to_string(last) + ")",
                   errno);
  }
  closeListedFds(first, last);
}

}  // namespace

void closeInheritedFds(const std::vector<int>& keepFds) {
  std::vector<unsigned> keep = {0, 1, 2};
  for (int fd : keepFds) {
    if (fd < 0) {
      throw SandboxError(std::string("sandbox step ") + STEP +
                         " failed: profile keeps descriptor " + std::to_string(fd));
    }
    keep.push_back(static_cast<unsigned>(fd));
  }
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());

  // Close the gaps between the kept descriptors, then everything above the last one.
  unsigned next = 0;
  for (unsigned fd : keep) {
    if (fd > next)
      closeRange(next, fd - 1);
    next = fd + 1;
  }
  closeRange(next, ~0u);
}

}  // namespace spicebox::sandbox
