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
      case BrokerToRenderer::BATCH: {
        auto batch = root.getBatch();
        uint32_t rejected = worker_.runBatch(batch);
        capnp::MallocMessageBuilder reply;
        auto done = reply.initRoot<RendererToBroker>().initBatchDone();
        done.setSeq(batch.getSeq());
        done.setRejected(rejected);
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
