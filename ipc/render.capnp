@0xdd6d1b4d47b377d1;
# The broker-renderer boundary. The renderer parses guest memory and is assumed compromised
# when the broker reads what it sends (broker/peer-renderer.cpp).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::render");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 1;

# Broker -> renderer.
struct BrokerToRenderer {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors
    ping @1 :Common.Heartbeat;    # no descriptors
  }
}

# Renderer -> broker. Permitted: `hello` once, first; then `pong`. Anything else ends the renderer.
struct RendererToBroker {
  union {
    hello @0 :Common.ChildHello;  # no descriptors
    pong @1 :Common.Heartbeat;    # no descriptors; seq of the latest ping
  }
}
