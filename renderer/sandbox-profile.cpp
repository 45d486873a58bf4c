#include "renderer/sandbox-profile.h"

#include <fcntl.h>

#include <utility>

#include "sandbox/runtime-rules.h"

namespace spicebox::renderer {

// RLIMIT_NOFILE: the IPC socket, the log, the BARs and a few display segments, with room to
// receive replacements before the old ones are closed.
constexpr rlim_t MAX_OPEN_FILES = 64;

// RLIMIT_AS: the mapped BARs and display segments plus pixman's scratch images, with headroom.
// Hostile commands asking for huge surfaces fail an allocation instead of exhausting the host.
// TODO(security): derive from the configured BAR and segment sizes instead of a fixed bound.
constexpr rlim_t MAX_ADDRESS_SPACE = 4ull << 30;

sandbox::Profile sandboxProfile(std::vector<int> keepFds) {
  sandbox::Profile profile;
  profile.name = "renderer";
  profile.keepFds = std::move(keepFds);
  profile.limits.maxOpenFiles = MAX_OPEN_FILES;
  profile.limits.maxAddressSpace = MAX_ADDRESS_SPACE;
  // Memory (mmap of the BAR and segment memfds included), the libuv loop, logging, IPC with the
  // broker, exit: see sandbox/runtime-rules.cpp. The renderer needs nothing beyond them:
  // pixman draws in memory it is given, Cap'n Proto reads and builds messages in memory.
  profile.allow = sandbox::runtimeRules();
  // Checking a display segment before it is mapped (worker.cpp DisplaySegmentMapping::map): a
  // segment smaller than announced, or one that can still shrink, would fault a draw (SIGBUS).
  profile.allow.push_back({"newfstatat",
                           "fstat(2) of a received display segment: its size (glibc's fstat is "
                           "fstatat(fd, \"\", AT_EMPTY_PATH)); the sandbox has no file system",
                           {sandbox::argEquals(3, AT_EMPTY_PATH)}});
  profile.allow.push_back({"fcntl",
                           "F_GET_SEALS of a received display segment: sealed against shrinking",
                           {sandbox::argEquals(1, F_GET_SEALS)}});
  return profile;
}

}  // namespace spicebox::renderer
