// Runs in: renderer. Enters the sandbox, then reads the first byte. Input: render.capnp messages
// from the broker (trusted) and, through them, guest memory (hostile: renderer/worker.h).
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <memory>

#include "ipc/child-link.h"
#include "ipc/limits.h"
#include "ipc/render.capnp.h"
#include "renderer/sandbox-profile.h"
#include "renderer/worker.h"

namespace spicebox::renderer {
namespace {

using ipc::render::BrokerToRenderer;
using ipc::render::RendererToBroker;

void setRect(ipc::render::Rect::Builder out, const qxlcmd::Rect& r) {
  out.setTop(r.top);
  out.setLeft(r.left);
  out.setBottom(r.bottom);
  out.setRight(r.right);
}

// The whole pointer, shape included (the broker keeps no state to apply a partial one to).
void buildCursor(ipc::render::Cursor::Builder out, const CursorState& cursor) {
  out.setVisible(cursor.visible);
  out.setX(cursor.x);
  out.setY(cursor.y);
  out.setShapeSerial(cursor.shapeSerial);
  const SanitisedCursor& shape = cursor.shape;
  out.setWidth(shape.width);
  out.setHeight(shape.height);
  out.setHotSpotX(shape.hotSpotX);
  out.setHotSpotY(shape.hotSpotY);
  // At most maxCursorDimension^2 pixels (Worker::setCursorShape): 64 KiB.
  auto bytes = out.initPixels(static_cast<unsigned>(shape.pixels.size() * 4));
  for (size_t i = 0; i < shape.pixels.size(); ++i) {
    const uint32_t p = shape.pixels[i];  // little-endian on the wire, whatever the host
    bytes[4 * i] = static_cast<kj::byte>(p);
    bytes[4 * i + 1] = static_cast<kj::byte>(p >> 8);
    bytes[4 * i + 2] = static_cast<kj::byte>(p >> 16);
    bytes[4 * i + 3] = static_cast<kj::byte>(p >> 24);
  }
}

// The batch's damage and hints (the rasteriser bounds both by render.capnp's limits).
void buildOutput(ipc::render::BatchDone::Builder done, const PrimaryOutput& output) {
  auto damage = done.initDamage(static_cast<unsigned>(output.damage.size()));
  for (unsigned i = 0; i < damage.size(); ++i)
    setRect(damage[i], output.damage[i]);
  auto hints = done.initHints(static_cast<unsigned>(output.hints.size()));
  for (unsigned i = 0; i < hints.size(); ++i) {
    if (const auto* fill = std::get_if<SolidFillHint>(&output.hints[i])) {
      auto f = hints[i].initSolidFill();
      f.setColor(fill->color);
      auto rects = f.initRects(static_cast<unsigned>(fill->rects.size()));
      for (unsigned r = 0; r < rects.size(); ++r)
        setRect(rects[r], fill->rects[r]);
    } else {
      const auto& copy = std::get<CopyBitsHint>(output.hints[i]);
      auto c = hints[i].initCopyBits();
      c.setSrcX(copy.srcX);
      c.setSrcY(copy.srcY);
      setRect(c.initDest(), copy.dest);
    }
  }
}

class RendererLink
    : public ipc::ChildLink<BrokerToRenderer, RendererToBroker, ipc::render::PROTOCOL_VERSION> {
 public:
  using ChildLink::ChildLink;

 protected:
  ipc::Channel::Verdict onBoundaryMessage(BrokerToRenderer::Reader root,
                                          ipc::ReceivedFds& fds) override {
    if (root.which() == BrokerToRenderer::OUTPUT_TAKEN)
      return outputTaken(root.getOutputTaken());
    if (awaitingTaken_) {
      // The last batch's pixels are still being read: everything else waits, in order.
      if (deferred_.size() >= MAX_DEFERRED_MESSAGES)
        return std::string("more than ") + std::to_string(MAX_DEFERRED_MESSAGES) +
               " messages while waiting for outputTaken (a broker bug)";
      Deferred d;
      d.message = std::make_unique<capnp::MallocMessageBuilder>();
      d.message->setRoot(root);
      for (size_t i = 0; i < fds.size(); ++i)
        d.fds.push_back(fds.take(i));
      deferred_.push_back(std::move(d));
      return std::nullopt;
    }
    return handle(root, fds);
  }

 private:
  // Messages that arrived while the renderer waited for outputTaken, with their descriptors.
  struct Deferred {
    std::unique_ptr<capnp::MallocMessageBuilder> message;
    std::vector<base::Fd> fds;
  };
  // More than the broker ever has in flight (the device's batches, their segments, memory).
  static constexpr size_t MAX_DEFERRED_MESSAGES = 512;

  ipc::Channel::Verdict outputTaken(uint64_t seq) {
    if (!awaitingTaken_ || *awaitingTaken_ != seq)
      return "outputTaken " + std::to_string(seq) + " for a batch not waiting for it";
    awaitingTaken_.reset();
    // The next buffer is prepared now, while the guest is likely still writing its next update:
    // the copy is then off the path from its doorbell to the client's screen.
    worker_.flipIfPresented();
    // What waited runs now, in order, until a batch makes the renderer wait again.
    while (!awaitingTaken_ && !deferred_.empty()) {
      Deferred d = std::move(deferred_.front());
      deferred_.pop_front();
      ipc::ReceivedFds fds(std::move(d.fds));
      if (auto verdict = handle(d.message->getRoot<BrokerToRenderer>().asReader(), fds))
        return verdict;
    }
    return std::nullopt;
  }

  ipc::Channel::Verdict handle(BrokerToRenderer::Reader root, ipc::ReceivedFds& fds) {
    switch (root.which()) {
      case BrokerToRenderer::GUEST_MEMORY: {
        worker_.detach();
        mapping_.reset();  // unmap the previous guest first: address space is capped
        auto mapped = GuestMapping::map(fds.take(0), fds.take(1), root.getGuestMemory());
        if (auto* error = std::get_if<std::string>(&mapped))
          return *error;  // the broker restarts us; it will not send nonsense twice
        mapping_.emplace(std::move(std::get<GuestMapping>(mapped)));
        worker_.attach(mapping_->view());
        spdlog::info("guest memory mapped: RAM {} bytes, VRAM {} bytes",
                     mapping_->view().ram.size(), mapping_->view().vram.size());
        return std::nullopt;
      }
      case BrokerToRenderer::DROP_GUEST_MEMORY:
        worker_.detach();
        mapping_.reset();
        spdlog::info("guest memory dropped");
        return std::nullopt;
      case BrokerToRenderer::RECOVERY_AREA:
        // An area we cannot use is a broker bug: refuse it, the broker restarts us.
        return worker_.attachRecovery(fds.take(0), root.getRecoveryArea().getArenaBytes());
      case BrokerToRenderer::DISPLAY_SEGMENT:
        // A segment we cannot use is a broker bug: refuse it, the broker restarts us.
        return worker_.receiveSegment(fds.take(0), root.getDisplaySegment());
      case BrokerToRenderer::BATCH: {
        auto batch = root.getBatch();
        uint32_t rejected = worker_.runBatch(batch);
        capnp::MallocMessageBuilder reply;
        buildBatchDone(reply, batch.getSeq(), rejected, worker_.lastOutput());
        // Every bound at its maximum (64 hints of 64 rectangles and a 128 x 128 cursor) makes a
        // reply larger than one frame, which the channel refuses to send (ending this process).
        // Then the primary's whole area is damage instead: always correct, never large.
        if (capnp::computeSerializedSizeInWords(reply) * sizeof(capnp::word) >
            ipc::MAX_FRAME_BYTES) {
          PrimaryOutput whole;
          if (pixman_image_t* image = worker_.displayImage())
            whole.damage = {
                qxlcmd::Rect{0, 0, pixman_image_get_height(image), pixman_image_get_width(image)}};
          capnp::MallocMessageBuilder smaller;
          buildBatchDone(smaller, batch.getSeq(), rejected, whole);
          spdlog::debug("batchDone {}: damage and hints exceed one frame, sent as whole damage",
                        batch.getSeq());
          channel().send(smaller);
        } else {
          channel().send(reply);
        }
        awaitingTaken_ = batch.getSeq();
        return std::nullopt;
      }
      default:
        return ChildLink::onBoundaryMessage(root, fds);
    }
  }

  // The reply to one batch: its output, and the pointer when the batch changed it.
  void buildBatchDone(capnp::MessageBuilder& message, uint64_t seq, uint32_t rejected,
                      const PrimaryOutput& output) {
    auto done = message.initRoot<RendererToBroker>().initBatchDone();
    done.setSeq(seq);
    done.setRejected(rejected);
    buildOutput(done, output);
    done.setBuffer(worker_.buffer());
    if (worker_.cursorChanged())
      buildCursor(done.initCursor(), worker_.cursor());
  }

  std::optional<GuestMapping> mapping_;
  Worker worker_;
  std::optional<uint64_t> awaitingTaken_;  // the batch whose output is being read
  std::deque<Deferred> deferred_;
};

}  // namespace
}  // namespace spicebox::renderer

int main(int argc, char** argv) {
  using namespace spicebox;
  ipc::runChild<renderer::RendererLink>(argc, argv, "renderer", renderer::sandboxProfile);
}
