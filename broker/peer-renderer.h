// Runs in: broker. Input: render.capnp messages from the renderer, assumed compromised.
#pragma once

#include <memory>

#include "broker/peer-child.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeRendererPeer();

}  // namespace spicebox::broker
