// Runs in: the renderer and the netproxy, inside sandbox::enter(). Detaches the process from the
// host's users, network, SysV IPC, process ids and file system, as far as the host permits.
#pragma once

#include <string>
#include <vector>

namespace spicebox::sandbox {

// Enters, each on its own so that one refusal does not cost the others:
//   user namespace   unshare(CLONE_NEWUSER), setgroups "deny", uid_map and gid_map mapping the
//                    current uid and gid to themselves. Gives the capabilities the other steps
//                    need without being root. When it fails the others are still tried: they
//                    succeed when the process has CAP_SYS_ADMIN (runs as root).
//   network          unshare(CLONE_NEWNET): only a loopback interface, down.
//   ipc              unshare(CLONE_NEWIPC): no SysV IPC or POSIX message queues of the host.
//   pid              unshare(CLONE_NEWPID): applies to children only; none can be made.
//   mount            unshare(CLONE_NEWNS), all mounts made private (nothing propagates back).
//   empty root       a tiny tmpfs, pivoted to be "/", the host's tree detached, remounted
//                    read-only, nosuid, nodev, noexec. No path reaches a host file any more.
// Returns what the host refused, one entry per step: "user namespace: EPERM". Must run while the
// process is single-threaded and still dumpable (the id maps are written through /proc/self).
std::vector<std::string> enterNamespaces();

}  // namespace spicebox::sandbox
