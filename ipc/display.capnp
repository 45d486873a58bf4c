@0xefbf9176c6f6f179;
# The broker-netproxy boundary. The netproxy parses network bytes and is assumed compromised
# when the broker reads what it sends (broker/peer-netproxy.cpp). It never receives guest memory.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("spicebox::ipc::display");
using Common = import "common.capnp";

const protocolVersion :UInt32 = 1;

# Broker -> netproxy.
struct BrokerToNetproxy {
  union {
    hello @0 :Common.Hello;       # first message; no descriptors
    ping @1 :Common.Heartbeat;    # no descriptors
  }
}

# Netproxy -> broker. Permitted: `hello` once, first; then `pong`. Anything else ends the netproxy.
struct NetproxyToBroker {
  union {
    hello @0 :Common.ChildHello;  # no descriptors
    pong @1 :Common.Heartbeat;    # no descriptors
  }
}
