// Runs in: broker. Input: render.capnp messages from the renderer, assumed compromised: each is
// decoded and range-checked here; what it may mean in the current state (the permit table) is
// checked by Child (children.cpp) and the Broker (batchDone against the batches in flight).
// Also builds the broker's render.capnp messages from the device's WorkItems.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "broker/peer-child.h"
#include "broker/qxl/device.h"
#include "ipc/render.capnp.h"

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

// A display segment the broker created for a primary (render.capnp DisplaySegment; the memfd is
// attached by the caller).
struct DisplaySegmentLayout {
  uint64_t generation = 0;
  uint64_t size = 0;  // bytes of the memfd
  uint32_t stride = 0, width = 0, height = 0;
  uint64_t backOffset = 0;  // buffer 1's top row (buffer 0's is 0); 0: one buffer
};
void buildDisplaySegment(capnp::MessageBuilder& message, const DisplaySegmentLayout& layout);
// The same record inside another message (display.capnp uses render.capnp's DisplaySegment).
void fillDisplaySegment(ipc::render::DisplaySegment::Builder out,
                        const DisplaySegmentLayout& layout);

// The primary's size when a batch ended (what its batchDone rectangles must lie in).
struct PrimarySize {
  uint32_t width = 0, height = 0;
  bool operator==(const PrimarySize&) const = default;
};
// Checks a decoded batchDone's damage and hints against the primary that exists when the batch
// ends (none: no output at all). The refusal names the offending rectangle.
std::optional<std::string> checkOutput(const RendererBatchDone& done,
                                       const std::optional<PrimarySize>& primary);
void buildDropGuestMemory(capnp::MessageBuilder& message);
// The renderer may draw again after batch `seq` (render.capnp outputTaken).
void buildOutputTaken(capnp::MessageBuilder& message, uint64_t seq);
// `items` holds at most qxl::MAX_ITEMS_PER_BATCH items (asserted: the device bounds its batches).
// `prefix`: leading items added to a batch sent again (not numbered); `quarantine`: indices,
// counted from items[prefix], of items the renderer must skip.
void buildBatch(capnp::MessageBuilder& message, uint64_t seq, std::span<const qxl::WorkItem> items,
                uint32_t prefix = 0, std::span<const uint32_t> quarantine = {});
// The link's recovery area (render.capnp RecoveryArea; the memfd is attached by the caller).
void buildRecoveryArea(capnp::MessageBuilder& message, uint64_t arenaBytes);

}  // namespace spicebox::broker
