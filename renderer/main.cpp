// Runs in: renderer. Enters the sandbox, then reads the first byte. Input: render.capnp messages
// from the broker (trusted) and, through them, guest memory (hostile: renderer/worker.h).
#include "ipc/child-link.h"
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
      case BrokerToRenderer::DISPLAY_SEGMENT:
        // A segment we cannot use is a broker bug: refuse it, the broker restarts us.
        return worker_.receiveSegment(fds.take(0), root.getDisplaySegment());
      case BrokerToRenderer::BATCH: {
        auto batch = root.getBatch();
        uint32_t rejected = worker_.runBatch(batch);
        capnp::MallocMessageBuilder reply;
        auto done = reply.initRoot<RendererToBroker>().initBatchDone();
        done.setSeq(batch.getSeq());
        done.setRejected(rejected);
        buildOutput(done, worker_.lastOutput());
        channel().send(reply);
        return std::nullopt;
      }
      default:
        return ChildLink::onBoundaryMessage(root, fds);
    }
  }

 private:
  std::optional<GuestMapping> mapping_;
  Worker worker_;
};

}  // namespace
}  // namespace spicebox::renderer

int main(int argc, char** argv) {
  using namespace spicebox;
  ipc::runChild<renderer::RendererLink>(argc, argv, "renderer", renderer::sandboxProfile);
}
