#include "broker/peer-netproxy.h"

#include "ipc/display.capnp.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeNetproxyPeer() {
  using namespace ipc::display;
  return std::make_unique<HeartbeatPeer<BrokerToNetproxy, NetproxyToBroker, PROTOCOL_VERSION>>(
      "netproxy");
}

}  // namespace spicebox::broker
