#include "broker/peer-renderer.h"

#include <type_traits>

#include "base/assert.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker {

namespace {

using namespace ipc::render;

static_assert(qxl::MAX_ITEMS_PER_BATCH == MAX_ITEMS_PER_BATCH,
              "render.capnp's maxItemsPerBatch must equal the device's MAX_ITEMS_PER_BATCH");

class RendererPeer : public HeartbeatPeer<BrokerToRenderer, RendererToBroker, PROTOCOL_VERSION> {
 public:
  RendererPeer() : HeartbeatPeer("renderer") {}

 protected:
  Decoded decodeBoundary(RendererToBroker::Reader root, ipc::ReceivedFds& fds) override {
    if (root.which() != RendererToBroker::BATCH_DONE)
      return HeartbeatPeer::decodeBoundary(root, fds);
    auto done = root.getBatchDone();
    Decoded d;
    // A batch holds at most MAX_ITEMS_PER_BATCH items, so no more commands can be rejected.
    if (done.getRejected() > MAX_ITEMS_PER_BATCH) {
      d.refusal = "batchDone reports " + std::to_string(done.getRejected()) +
                  " rejected commands, a batch holds at most " +
                  std::to_string(MAX_ITEMS_PER_BATCH);
      return d;
    }
    d.kind = Decoded::Kind::Boundary;
    d.boundary = RendererBatchDone{done.getSeq(), done.getRejected()};
    return d;
  }
};

void fillItem(WorkItem::Builder out, const qxl::WorkItem& item) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, qxl::CommandItem>) {
          auto c = out.initCommand();
          c.setRing(v.ring == qxl::CommandRingKind::Cursor ? Ring::CURSOR : Ring::DISPLAY);
          c.setAddr(v.addr);
          c.setType(v.type);
        } else if constexpr (std::is_same_v<T, qxl::CreatePrimaryItem>) {
          auto p = out.initCreatePrimary();
          p.setWidth(v.width);
          p.setHeight(v.height);
          p.setStride(v.stride);
          p.setFormat(v.format);
          p.setPosition(v.position);
          p.setMouseMode(v.mouseMode);
          p.setFlags(v.flags);
          p.setType(v.type);
          p.setMem(v.mem);
        } else if constexpr (std::is_same_v<T, qxl::DestroyPrimaryItem>) {
          out.setDestroyPrimary();
        } else if constexpr (std::is_same_v<T, qxl::DestroySurfaceItem>) {
          out.setDestroySurface(v.surfaceId);
        } else if constexpr (std::is_same_v<T, qxl::DestroyAllSurfacesItem>) {
          out.setDestroyAllSurfaces();
        } else if constexpr (std::is_same_v<T, qxl::UpdateAreaItem>) {
          auto u = out.initUpdateArea();
          u.setSurfaceId(v.surfaceId);
          auto r = u.initArea();
          r.setTop(v.area.top);
          r.setLeft(v.area.left);
          r.setBottom(v.area.bottom);
          r.setRight(v.area.right);
        } else if constexpr (std::is_same_v<T, qxl::MonitorsConfigItem>) {
          out.setMonitorsConfig(v.addr);
        } else if constexpr (std::is_same_v<T, qxl::MemslotsItem>) {
          auto slots = out.initMemslots(static_cast<unsigned>(v.slots.size()));
          for (unsigned i = 0; i < slots.size(); ++i) {
            const auto& s = v.slots[i];
            slots[i].setId(s.id);
            slots[i].setGeneration(s.generation);
            slots[i].setBar(s.bar == qxl::BarId::Vram ? Bar::VRAM : Bar::RAM);
            slots[i].setMemStart(s.memStart);
            slots[i].setMemEnd(s.memEnd);
          }
        } else {
          static_assert(std::is_same_v<T, qxl::ResetItem>, "a WorkItem without a wire form");
          out.setReset();
        }
      },
      item);
}

}  // namespace

std::unique_ptr<ChildPeer> makeRendererPeer() {
  return std::make_unique<RendererPeer>();
}

void buildGuestMemory(capnp::MessageBuilder& message, const GuestMemoryLayout& layout) {
  auto g = message.initRoot<BrokerToRenderer>().initGuestMemory();
  g.setRamSize(layout.ramSize);
  g.setVramSize(layout.vramSize);
  g.setRamPhysStart(layout.ramPhysStart);
  g.setVramPhysStart(layout.vramPhysStart);
}

void buildDropGuestMemory(capnp::MessageBuilder& message) {
  message.initRoot<BrokerToRenderer>().setDropGuestMemory();
}

void buildBatch(capnp::MessageBuilder& message, uint64_t seq,
                std::span<const qxl::WorkItem> items) {
  SB_ASSERT(items.size() <= qxl::MAX_ITEMS_PER_BATCH, "device made a batch of {} items",
            items.size());
  auto batch = message.initRoot<BrokerToRenderer>().initBatch();
  batch.setSeq(seq);
  auto list = batch.initItems(static_cast<unsigned>(items.size()));
  for (unsigned i = 0; i < list.size(); ++i)
    fillItem(list[i], items[i]);
}

}  // namespace spicebox::broker
