// Runs in: broker. Input: display.capnp messages from the netproxy, assumed compromised.
#pragma once

#include <memory>

#include "broker/peer-child.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeNetproxyPeer();

}  // namespace spicebox::broker
