// Runs in: broker. Input: display.capnp messages from the netproxy, assumed compromised (it parses
// network bytes): every input event is range-checked here against vmm.capnp InputEvent's ranges
// before the broker forwards it to the VMM. Also builds the broker's display.capnp messages.
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "broker/peer-child.h"
#include "broker/peer-renderer.h"

namespace spicebox::broker {

std::unique_ptr<ChildPeer> makeNetproxyPeer();

// Checks one decoded input event against vmm.capnp's ranges (also used for what the peer decodes).
std::optional<std::string> checkInput(const NetproxyInput& input);

enum class ImageCompression { AutoLz, Off, Lz, Lz4 };
enum class MouseMode { Client, Server };

// What the netproxy is told once per incarnation (display.capnp Configure); the listening
// descriptors are attached by the caller, in the order of `listenerNames`.
struct NetproxySettings {
  std::vector<std::pair<bool, std::string>> listeners;  // (is unix, name for logs)
  std::optional<std::string> password;                  // nullopt: ticketing disabled
  int64_t passwordExpiresAt = 0;                        // unix seconds, 0: never
  uint32_t maxClients = 4;
  ImageCompression imageCompression = ImageCompression::AutoLz;
  MouseMode mouseMode = MouseMode::Client;
  std::vector<uint32_t> shmUids;  // peers offered the shared-memory display (empty: nobody)
};

void buildConfigure(capnp::MessageBuilder& message, const NetproxySettings& settings);
// The segment's descriptor (read-only) is attached by the caller.
void buildNetproxySegment(capnp::MessageBuilder& message, const DisplaySegmentLayout& layout,
                          uint8_t buffer);
void buildNoDisplay(capnp::MessageBuilder& message);
void buildFrame(capnp::MessageBuilder& message, uint64_t generation, uint8_t buffer,
                std::span<const RendererRect> damage, std::span<const RendererHint> hints);
void buildCursor(capnp::MessageBuilder& message, const RendererCursor& cursor);
void buildSync(capnp::MessageBuilder& message, uint64_t seq);

}  // namespace spicebox::broker
