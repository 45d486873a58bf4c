#include "sandbox/runtime-rules.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sandbox/sanitizers.h"

namespace spicebox::sandbox {

std::vector<SyscallRule> runtimeRules() {
  // No mapping may ever be executable: running injected code would need one.
  const scmp_arg_cmp NO_EXEC_PROT = argMaskedEquals(2, PROT_EXEC, 0);
  // Our own pid, fixed for the process's life (a pid namespace applies to children only).
  const auto SELF = static_cast<uint64_t>(::getpid());

  std::vector<SyscallRule> rules = {
      // Memory: glibc malloc, pixman images, Cap'n Proto arenas, mapped shared segments.
      // mprotect is not here: a single-threaded process never needs it (only glibc's per-thread
      // arenas and thread stacks do), so no mapping can change its protection at all.
      {"brk", "glibc malloc grows and trims the heap", {}},
      {"mmap",
       "malloc's large blocks; mapping BAR and display segments. Never executable",
       {NO_EXEC_PROT}},
      {"munmap", "free() of large blocks; unmapping segments", {}},
      {"mremap", "realloc() of large blocks", {}},
      {"madvise",
       "freed pages go back to the kernel: the ASan allocator in sanitizer builds, glibc's "
       "malloc_trim and hugetlb tunable (not seen in the glibc build's tests)",
       {}},

      // The libuv loop. It is created after enter(): closeInheritedFds would close the
      // descriptors of one created before.
      {"epoll_create1", "uv_loop_init: the loop's epoll instance", {}},
      {"eventfd2", "uv_loop_init: the loop's uv_async wakeup descriptor", {}},
      {"pipe2", "uv_loop_init: libuv's signal lock pipe (once per process) and signal pipe", {}},
      {"epoll_ctl", "uv_poll and libuv's own watchers register descriptors", {}},
      {"epoll_wait", "uv_run waits for events (glibc's epoll_wait on x86-64)", {}},
      {"epoll_pwait",
       "uv_run waits for events when libuv blocks SIGPROF, and on architectures without the "
       "epoll_wait syscall (not seen on x86-64)",
       {}},
      {"ioctl",
       "uv_poll_init and uv_*_open make the descriptor non-blocking (FIONBIO only)",
       {argEquals(1, FIONBIO)}},
      {"read", "libuv drains its eventfd and pipes; libuv streams read sockets", {}},
      {"write", "logging through base::initLogging's write(2) sink; libuv wakeups; streams", {}},
      {"close", "closing handles, finished connections, received descriptors", {}},
      {"clock_gettime",
       "libuv's loop time and log time stamps. The vDSO answers without a syscall where the "
       "clock source allows it (as on the test host); elsewhere it falls back to this",
       {}},

      // Messages with the broker: Cap'n Proto frames with SCM_RIGHTS on a SOCK_SEQPACKET socket.
      {"recvmsg", "ipc::Channel receives messages and their descriptors", {}},
      {"sendmsg", "ipc::Channel sends messages", {}},

      // Process life.
      {"futex", "pthread_once wakes waiters when done (libuv's uv_once, libstdc++ statics)", {}},
      {"getpid", "log lines carry the pid (%P); abort() signals itself", {}},
      {"gettid", "spdlog records the thread id; abort() signals its own thread", {}},
      {"rt_sigprocmask", "abort() unblocks SIGABRT before raising it", {}},
      {"tgkill",
       "abort() on a failed SB_ASSERT: SIGABRT to ourselves only, so the broker sees an "
       "assertion, not a sandbox violation",
       {argEquals(0, SELF), argEquals(2, SIGABRT)}},
      {"rt_sigreturn",
       "return from a signal handler: none is installed today; one that is must be able to "
       "return rather than kill the process",
       {}},
      {"exit_group", "the process ends (_exit)", {}},
      {"exit", "glibc's _exit falls back to it should exit_group return; ends one thread only", {}},
  };

  // Sanitizer builds only (reviewed in sandbox/seccomp-allowlist-sanitizers.txt): what the
  // sanitizer runtimes do on their own inside the sandbox. Never in a production filter.
  if constexpr (ADDRESS_SANITIZER) {
    const std::vector<SyscallRule> sanitizerRules = {
        {"sigaltstack",
         "ASan's __asan_handle_no_return (before _exit, abort, throw) reads the alternate "
         "signal stack; reading only (new stack NULL), it cannot install one",
         {argEquals(0, 0)}},
    };
    rules.insert(rules.end(), sanitizerRules.begin(), sanitizerRules.end());
  }
  return rules;
}

}  // namespace spicebox::sandbox
