// Runs in: the broker's libFuzzer targets and their tests. Input: fuzz bytes, wholly hostile.
#include "broker/fuzz/fuzz-datagram.h"

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <exception>
#include <memory>
#include <variant>

#include "base/assert.h"
#include "broker/peer-netproxy.h"
#include "broker/peer-renderer.h"
#include "ipc/limits.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker::fuzz {

namespace {

using ipc::render::MAX_CURSOR_DIMENSION;
using ipc::render::MAX_DAMAGE_RECTS;
using ipc::render::MAX_DISPLAY_DIMENSION;
using ipc::render::MAX_HINT_RECTS;
using ipc::render::MAX_HINTS;
using ipc::render::MAX_ITEMS_PER_BATCH;

constexpr size_t WORD_BYTES = sizeof(capnp::word);

// ipc/channel.cpp receiveOne and dispatch, then the peer's decode.
DatagramResult readDatagram(ChildPeer& peer, std::span<const uint8_t> bytes) {
  DatagramResult out;
  // receiveOne: an empty datagram is the end of the stream; a larger one than the receive buffer
  // is truncated by the kernel (MSG_TRUNC) and refused; so is a partial word.
  if (bytes.empty()) {
    out.reason = "empty datagram";
    return out;
  }
  if (bytes.size() > ipc::MAX_FRAME_BYTES) {
    out.reason = "datagram larger than MAX_FRAME_BYTES";
    return out;
  }
  if (bytes.size() % WORD_BYTES != 0) {
    out.reason = "datagram is not a whole number of words";
    return out;
  }
  // The channel receives into a word-aligned buffer; fuzz data is not aligned.
  auto words = kj::heapArray<capnp::word>(bytes.size() / WORD_BYTES);
  std::memcpy(words.begin(), bytes.data(), bytes.size());

  // checkStructure: every pointer walked once, nothing after the message.
  try {
    capnp::FlatArrayMessageReader reader(words, ipc::READER_OPTIONS);
    if (reader.getEnd() != words.end()) {
      out.stop = DatagramStop::Structure;
      out.reason = "bytes follow the end of the message";
      return out;
    }
    reader.getRoot<capnp::AnyPointer>().targetSize();
  } catch (const kj::Exception& e) {
    out.stop = DatagramStop::Structure;
    out.reason = e.getDescription().cStr();
    return out;
  }

  // dispatch: a fresh reader (the walk above used up its own traversal budget).
  try {
    capnp::FlatArrayMessageReader reader(words, ipc::READER_OPTIONS);
    ipc::ReceivedFds fds{std::vector<base::Fd>{}};
    auto decoded = peer.decode(reader, fds);
    if (decoded.kind == ChildPeer::Decoded::Kind::Refused) {
      out.stop = DatagramStop::Refused;
      out.reason = std::move(decoded.refusal);
      return out;
    }
    out.stop = DatagramStop::Decoded;
    out.decoded = std::move(decoded);
  } catch (const kj::Exception& e) {
    out.stop = DatagramStop::Malformed;
    out.reason = e.getDescription().cStr();
  } catch (const std::exception& e) {
    out.stop = DatagramStop::Malformed;
    out.reason = e.what();
  }
  return out;
}

// What Child::onMessage relies on for a hello (it logs the entries).
void checkHello(const ChildHelloInfo& hello) {
  SB_ASSERT(hello.sandboxMissing.size() <= MAX_SANDBOX_MISSING_ENTRIES, "{} entries",
            hello.sandboxMissing.size());
  for (const auto& text : hello.sandboxMissing)
    SB_ASSERT(text.size() <= MAX_SANDBOX_MISSING_TEXT, "an entry of {} bytes", text.size());
}

// decodeRect's promise: non-empty, inside [0, MAX_DISPLAY_DIMENSION] in both directions.
void checkRect(const RendererRect& r) {
  const int64_t max = MAX_DISPLAY_DIMENSION;
  SB_ASSERT(r.left >= 0 && r.top >= 0 && r.left < r.right && r.top < r.bottom && r.right <= max &&
                r.bottom <= max,
            "rectangle (left {}, top {}, right {}, bottom {})", r.left, r.top, r.right, r.bottom);
}

// The broker forwards a batch's output to the netproxy (broker.cpp forwardOutput: a frame, and
// the cursor when it changed). A message above MAX_FRAME_BYTES is not sent and closes the
// netproxy's channel: a renderer able to cause one would get the netproxy restarted. So what
// decodes must always forward.
void checkForwarding(const RendererBatchDone& done) {
  if (!done.damage.empty() || !done.hints.empty()) {
    capnp::MallocMessageBuilder message;
    buildFrame(message, 1, done.buffer, done.damage, done.hints);
    const size_t bytes = capnp::computeSerializedSizeInWords(message) * WORD_BYTES;
    SB_ASSERT(bytes <= ipc::MAX_FRAME_BYTES, "the frame forwarded is {} bytes", bytes);
  }
  if (done.cursor) {
    capnp::MallocMessageBuilder message;
    buildCursor(message, *done.cursor);
    const size_t bytes = capnp::computeSerializedSizeInWords(message) * WORD_BYTES;
    SB_ASSERT(bytes <= ipc::MAX_FRAME_BYTES, "the cursor forwarded is {} bytes", bytes);
  }
}

// What the broker relies on once a batchDone decoded (peer-renderer.h, broker.cpp).
void checkBatchDone(const RendererBatchDone& done) {
  SB_ASSERT(done.rejected <= MAX_ITEMS_PER_BATCH, "{} rejected", done.rejected);
  SB_ASSERT(done.buffer <= 1, "buffer {}", done.buffer);
  SB_ASSERT(done.damage.size() <= MAX_DAMAGE_RECTS, "{} damage rectangles", done.damage.size());
  SB_ASSERT(done.hints.size() <= MAX_HINTS, "{} hints", done.hints.size());
  for (const auto& r : done.damage)
    checkRect(r);
  bool copies = false;
  for (const auto& hint : done.hints) {
    if (const auto* fill = std::get_if<RendererSolidFill>(&hint)) {
      SB_ASSERT(!fill->rects.empty() && fill->rects.size() <= MAX_HINT_RECTS,
                "a solidFill of {} rectangles", fill->rects.size());
      for (const auto& r : fill->rects)
        checkRect(r);
    } else {
      checkRect(std::get<RendererCopyBits>(hint).dest);
      copies = true;
    }
  }
  if (const auto& c = done.cursor) {
    SB_ASSERT(c->width <= MAX_CURSOR_DIMENSION && c->height <= MAX_CURSOR_DIMENSION, "cursor {}x{}",
              c->width, c->height);
    SB_ASSERT((c->shapeSerial != 0) == (c->width != 0) && (c->width != 0) == (c->height != 0),
              "cursor {}x{} with serial {}", c->width, c->height, c->shapeSerial);
    SB_ASSERT(c->width == 0 || (c->hotSpotX < c->width && c->hotSpotY < c->height),
              "hot spot ({}, {}) of a {}x{} cursor", c->hotSpotX, c->hotSpotY, c->width, c->height);
    SB_ASSERT(c->pixels.size() == size_t{c->width} * c->height, "{} pixels for {}x{}",
              c->pixels.size(), c->width, c->height);
  }

  // The owner's check against the primary of the batch (Broker::onRendererMessage).
  const bool output = !done.damage.empty() || !done.hints.empty();
  SB_ASSERT(checkOutput(done, std::nullopt).has_value() == output,
            "output without a primary is refused exactly when there is some");
  (void)checkOutput(done, PrimarySize{1, 1});
  (void)checkOutput(done, PrimarySize{1024, 768});
  // Everything decodeRect accepts lies inside the largest primary: only a copy's source can be
  // refused there.
  auto largest = checkOutput(done, PrimarySize{MAX_DISPLAY_DIMENSION, MAX_DISPLAY_DIMENSION});
  SB_ASSERT(copies || !largest, "refused inside the largest primary: {}", *largest);

  checkForwarding(done);
}

void checkNetproxyMessage(const BoundaryMessage& message) {
  SB_ASSERT(!std::holds_alternative<RendererBatchDone>(message),
            "the netproxy's peer decoded a renderer message");
  if (const auto* input = std::get_if<NetproxyInput>(&message)) {
    auto refusal = checkInput(*input);
    SB_ASSERT(!refusal, "decoded, yet checkInput refuses it: {}", *refusal);
  }
}

}  // namespace

std::string_view describe(DatagramStop stop) {
  switch (stop) {
    case DatagramStop::Framing:
      return "refused by the channel's framing";
    case DatagramStop::Structure:
      return "refused by the channel's structure walk";
    case DatagramStop::Malformed:
      return "malformed for the schema";
    case DatagramStop::Refused:
      return "refused by the peer";
    case DatagramStop::Decoded:
      return "decoded";
  }
  return "unknown";
}

DatagramResult feedRendererDatagram(std::span<const uint8_t> bytes) {
  static const std::unique_ptr<ChildPeer> peer = makeRendererPeer();
  auto out = readDatagram(*peer, bytes);
  if (!out.decoded)
    return out;
  const auto& d = *out.decoded;
  if (d.kind == ChildPeer::Decoded::Kind::Hello)
    checkHello(d.hello);
  if (d.kind == ChildPeer::Decoded::Kind::Boundary) {
    const auto* done = std::get_if<RendererBatchDone>(&d.boundary);
    SB_ASSERT(done, "the renderer's peer decoded a message of another boundary");
    checkBatchDone(*done);
  }
  return out;
}

DatagramResult feedNetproxyDatagram(std::span<const uint8_t> bytes) {
  static const std::unique_ptr<ChildPeer> peer = makeNetproxyPeer();
  auto out = readDatagram(*peer, bytes);
  if (!out.decoded)
    return out;
  const auto& d = *out.decoded;
  if (d.kind == ChildPeer::Decoded::Kind::Hello)
    checkHello(d.hello);
  if (d.kind == ChildPeer::Decoded::Kind::Boundary)
    checkNetproxyMessage(d.boundary);
  return out;
}

}  // namespace spicebox::broker::fuzz
