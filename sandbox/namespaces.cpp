#include "sandbox/namespaces.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "sandbox/step-error.h"

namespace spicebox::sandbox {
namespace {

// The empty root: 4 KiB and two inodes are more than an empty directory needs; it is read-only
// before anything untrusted runs, so the sizes only bound a bug in this file.
constexpr const char* EMPTY_ROOT_OPTIONS = "size=4k,nr_inodes=2,mode=0555";

// Where the empty root is mounted before it is pivoted to "/": any existing directory will do,
// since the mount is only visible in our own mount namespace. /proc is the last resort: every
// Linux host has it, and it is not needed once the id maps are written.
constexpr const char* EMPTY_ROOT_MOUNT_POINTS[] = {"/tmp", "/mnt", "/proc"};

// Writes `text` to a /proc/self file. Returns 0 or errno.
int writeProcFile(const char* path, const std::string& text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  ssize_t n = ::write(fd, text.data(), text.size());
  int err = n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
  ::close(fd);
  return err;
}

// Returns an empty string on success, else the missing-step entry.
std::string enterUserNamespace() {
  // Read before unshare: until the maps are written, the new namespace shows them as the
  // overflow id (65534).
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  if (::unshare(CLONE_NEWUSER) != 0)
    return "user namespace: " + errnoName(errno);
  // An unprivileged process may map only its own ids, and its gid only after giving up
  // setgroups (else it could drop a group used to deny it access). ENOENT: kernel before 3.19,
  // which has no such file and no such restriction.
  if (int err = writeProcFile("/proc/self/setgroups", "deny"); err != 0 && err != ENOENT) {
    return "user namespace setgroups: " + errnoName(err);
  }
  // Same ids inside as outside, so getuid() and file ownership read as before.
  if (int err = writeProcFile("/proc/self/uid_map",
                              std::to_string(uid) + " " + std::to_string(uid) + " 1\n");
      err != 0) {
    return "user namespace uid_map: " + errnoName(err);
  }
  if (int err = writeProcFile("/proc/self/gid_map",
                              std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
      err != 0) {
    return "user namespace gid_map: " + errnoName(err);
  }
  return {};
}

std::string unshareOne(int flag, const char* what) {
  if (::unshare(flag) != 0)
    return std::string(what) + ": " + errnoName(errno);
  return {};
}

// Replaces the root with an empty read-only tmpfs. Returns an empty string on success, else the
// missing-step entry naming the call that failed.
std::string enterEmptyRoot() {
  // Private first: otherwise the mounts below could propagate back into the host's namespace
  // (systemd makes "/" shared), and pivot_root refuses a shared root.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return "empty root: mount(/, MS_PRIVATE): " + errnoName(errno);
  }
  const char* mountPoint = nullptr;
  int mountError = 0;
  for (const char* candidate : EMPTY_ROOT_MOUNT_POINTS) {
    if (::mount("spicebox-empty-root", candidate, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                EMPTY_ROOT_OPTIONS) == 0) {
      mountPoint = candidate;
      break;
    }
    mountError = errno;
  }
  if (mountPoint == nullptr)
    return "empty root: mount(tmpfs): " + errnoName(mountError);

  // pivot_root(".", ".") stacks the old root on top of the new one at "/", so no directory for
  // the old root is needed inside the (read-only, empty) new one; detaching it then leaves only
  // the tmpfs. MNT_DETACH also takes every mount below the old root with it (/proc, /dev, ...).
  if (::chdir(mountPoint) != 0)
    return "empty root: chdir: " + errnoName(errno);
  if (::syscall(SYS_pivot_root, ".", ".") != 0) {
    std::string entry = "empty root: pivot_root: " + errnoName(errno);
    (void)::chdir("/");
    return entry;
  }
  if (::umount2(".", MNT_DETACH) != 0)
    return "empty root: umount2(old root): " + errnoName(errno);
  if (::chdir("/") != 0)
    return "empty root: chdir(/): " + errnoName(errno);
  // Read-only last: nothing needs to be written into it, ever.
  if (::mount(nullptr, "/", nullptr,
              MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    return "empty root: remount read-only: " + errnoName(errno);
  }
  return {};
}

}  // namespace

std::vector<std::string> enterNamespaces() {
  std::vector<std::string> missing;
  auto note = [&missing](std::string entry) {
    if (!entry.empty())
      missing.push_back(std::move(entry));
  };

  // The user namespace first: the namespaces below are then owned by it, and its capabilities
  // are what lets an unprivileged process create them.
  note(enterUserNamespace());
  note(unshareOne(CLONE_NEWNET, "network namespace"));
  note(unshareOne(CLONE_NEWIPC, "ipc namespace"));
  note(unshareOne(CLONE_NEWPID, "pid namespace"));
  std::string mountEntry = unshareOne(CLONE_NEWNS, "mount namespace");
  if (mountEntry.empty()) {
    note(enterEmptyRoot());
  } else {
    // Never pivot the host's own mount namespace.
    note(std::move(mountEntry));
    note("empty root: no mount namespace");
  }
  return missing;
}

}  // namespace spicebox::sandbox
