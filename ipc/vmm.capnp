@0xdf5e93f701760f6f;
# qxl-link: the VMM-broker boundary (in the spirit of vhost-user). The VMM hands over the QXL
# BARs and doorbells; the broker checks every descriptor it is given. Documented in
# docs/protocol.md.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::vmm");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 1;

# VMM -> broker.
struct VmmToBroker {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors
    pong @1 :Common.Heartbeat;    # answer to the broker's ping; no descriptors
  }
}

# Broker -> VMM.
struct BrokerToVmm {
  union {
    hello @0 :Common.Hello;       # answer to the VMM's hello; no descriptors
    ping @1 :Common.Heartbeat;    # link liveness; no descriptors
  }
}
