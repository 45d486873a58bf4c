#include "broker/peer-renderer.h"

#include "ipc/render.capnp.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeRendererPeer() {
  using namespace ipc::render;
  return std::make_unique<HeartbeatPeer<BrokerToRenderer, RendererToBroker, PROTOCOL_VERSION>>(
      "renderer");
}

}  // namespace spicebox::broker
