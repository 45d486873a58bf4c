// Runs in: broker. Input: render.capnp messages from the renderer, assumed compromised: each is
// decoded and range-checked here; what it may mean in the current state (the permit table) is
// checked by Child (children.cpp) and the Broker (batchDone against the batches in flight).
// Also builds the broker's render.capnp messages from the device's WorkItems.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <memory>
#include <span>

#include "broker/peer-child.h"
#include "broker/qxl/device.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeRendererPeer();

// Where the guest's RAM and VRAM are, for the renderer's guestMemory message (its two descriptors
// are attached by the caller: RAM, then VRAM).
struct GuestMemoryLayout {
  uint64_t ramSize = 0;
  uint64_t vramSize = 0;
  uint64_t ramPhysStart = 0;
  uint64_t vramPhysStart = 0;
};

void buildGuestMemory(capnp::MessageBuilder& message, const GuestMemoryLayout& layout);
void buildDropGuestMemory(capnp::MessageBuilder& message);
// `items` holds at most qxl::MAX_ITEMS_PER_BATCH items (asserted: the device bounds its batches).
void buildBatch(capnp::MessageBuilder& message, uint64_t seq, std::span<const qxl::WorkItem> items);

}  // namespace spicebox::broker
