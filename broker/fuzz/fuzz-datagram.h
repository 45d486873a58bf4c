// Runs in: the broker's libFuzzer targets (spicebox-peer-renderer-fuzz,
// spicebox-peer-netproxy-fuzz; built by tools/fuzz.sh) and their tests
// (broker-fuzz-regression-tests). Input: fuzz bytes, wholly hostile: one datagram as a
// compromised renderer or netproxy sends it on its channel, the flat-array Cap'n Proto bytes.
//
// Reads the datagram the way the broker does: ipc/channel.cpp's checks (not empty, a whole number
// of words, at most MAX_FRAME_BYTES; the structure walked once with READER_OPTIONS and nothing
// after the message), then a fresh FlatArrayMessageReader with the same options handed to the
// peer's decode (ChildPeer::decode, as Child::onMessage calls it), with a kj::Exception or
// std::exception from the read turned into a refusal as Channel::dispatch does. What the peer
// decodes is then put through the checks its owner makes (checkOutput against primaries of several
// sizes) and the properties below, which SB_ASSERT: the broker relies on them.
//
// Every refusal is an acceptable answer (the broker would restart the child). Findings are
// crashes, SB_ASSERTs, sanitizer reports, leaks and timeouts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "broker/peer-child.h"

namespace spicebox::broker::fuzz {

// Where a datagram stopped.
enum class DatagramStop {
  Framing,    // refused by the channel before parsing: empty, not whole words, too large
  Structure,  // refused by the channel's structure walk (bounds, nesting, traversal, trailing)
  Malformed,  // the peer's read threw (a pointer of the wrong type for the schema)
  Refused,    // the peer refused it (ChildPeer::Decoded::Kind::Refused)
  Decoded,    // decoded: hello, pong or a boundary message
};
std::string_view describe(DatagramStop stop);

struct DatagramResult {
  DatagramStop stop = DatagramStop::Framing;
  std::string reason;                         // why, for every stop but Decoded
  std::optional<ChildPeer::Decoded> decoded;  // Decoded
};

// One datagram from the renderer (render.capnp RendererToBroker).
DatagramResult feedRendererDatagram(std::span<const uint8_t> bytes);
// One datagram from the netproxy (display.capnp NetproxyToBroker).
DatagramResult feedNetproxyDatagram(std::span<const uint8_t> bytes);

}  // namespace spicebox::broker::fuzz
