@0xb2abe89491da97cf;
# Types shared by every spicebox boundary. Each boundary has its own schema file and socket
# (render.capnp, display.capnp, vmm.capnp); never two privileges on one socket.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc");

# The broker's first message to a child, or to a VMM: who it is speaking to.
struct Hello {
  protocolVersion @0 :UInt32;   # the boundary's `protocolVersion` constant; a mismatch ends the link
}

# How far a process got into its sandbox (sandbox/sandbox.h).
enum SandboxLevel {
  off @0;        # --sandbox=off: debugging only
  partial @1;    # seccomp and rlimits in force, some namespace missing (host refused it)
  full @2;       # every step: fds, rlimits, no_new_privs, namespaces, empty root, seccomp
}

# A child's first message, sent after it has entered its sandbox and before it reads anything else.
struct ChildHello {
  protocolVersion @0 :UInt32;   # must equal the boundary's `protocolVersion`
  pid @1 :Int32;                # the child's pid as it sees it (informational; the broker knows the real one)
  sandboxLevel @2 :SandboxLevel;
  sandboxMissing @3 :List(Text); # steps not reached, for the log; at most 16 entries of 128 bytes
}

# Heartbeat: the broker sends `ping`, the child answers `pong` with the same sequence number
# before the deadline, or is killed and restarted.
struct Heartbeat {
  seq @0 :UInt64;               # strictly increasing per child
}
