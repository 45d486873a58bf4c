#include "broker/peer-netproxy.h"

#include <spdlog/fmt/fmt.h>
#include <spice/enums.h>

#include "ipc/display.capnp.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker {

namespace {

using namespace ipc::display;

// vmm.capnp InputEvent's ranges.
constexpr int32_t MAX_MOTION = 4096;
constexpr uint32_t BUTTON_MASK_LIMIT = 0x80;
constexpr uint32_t MAX_DISPLAY_ID = 16;
constexpr uint32_t MAX_POSITION = ipc::render::MAX_DISPLAY_DIMENSION;

bool validScancode(uint32_t code) {
  if (code >= 0x01 && code <= 0x7f)
    return true;  // plain make code
  // 0xe0 prefix in the low byte, the make code above it.
  return (code & 0xff) == 0xe0 && (code >> 8) >= 0x01 && (code >> 8) <= 0x7f;
}

class NetproxyPeer : public HeartbeatPeer<BrokerToNetproxy, NetproxyToBroker, PROTOCOL_VERSION> {
 public:
  NetproxyPeer() : HeartbeatPeer("netproxy") {}

 protected:
  Decoded decodeBoundary(NetproxyToBroker::Reader root, ipc::ReceivedFds& fds) override {
    Decoded d;
    switch (root.which()) {
      case NetproxyToBroker::INPUT: {
        auto decoded = decodeInput(root.getInput());
        if (auto* refusal = std::get_if<std::string>(&decoded)) {
          d.refusal = std::move(*refusal);
          return d;
        }
        d.boundary = std::get<NetproxyInput>(decoded);
        break;
      }
      case NetproxyToBroker::CLIENTS: {
        auto c = root.getClients();
        d.boundary = NetproxyClients{c.getSessions(), c.getConnections(), c.getRefused(),
                                     c.getShm(), c.getTearFree()};
        break;
      }
      case NetproxyToBroker::SYNCED:
        d.boundary = NetproxySynced{root.getSynced()};
        break;
      default:
        return HeartbeatPeer::decodeBoundary(root, fds);
    }
    d.kind = Decoded::Kind::Boundary;
    return d;
  }

 private:
  static std::variant<NetproxyInput, std::string> decodeInput(ipc::vmm::InputEvent::Reader in) {
    NetproxyInput input;
    switch (in.which()) {
      case ipc::vmm::InputEvent::KEY_DOWN:
        input = NetproxyKey{in.getKeyDown(), true};
        break;
      case ipc::vmm::InputEvent::KEY_UP:
        input = NetproxyKey{in.getKeyUp(), false};
        break;
      case ipc::vmm::InputEvent::MOUSE_MOTION: {
        auto m = in.getMouseMotion();
        input = NetproxyMouseMotion{m.getDx(), m.getDy(), m.getButtons()};
        break;
      }
      case ipc::vmm::InputEvent::MOUSE_POSITION: {
        auto p = in.getMousePosition();
        input = NetproxyMousePosition{p.getX(), p.getY(), p.getDisplayId(), p.getButtons()};
        break;
      }
      case ipc::vmm::InputEvent::MOUSE_BUTTON: {
        auto b = in.getMouseButton();
        input = NetproxyMouseButton{b.getButton(), b.getPressed(), b.getButtons()};
        break;
      }
      default:
        return "unknown input event type " + std::to_string(static_cast<unsigned>(in.which()));
    }
    if (auto refusal = checkInput(input))
      return *refusal;
    return input;
  }
};

}  // namespace

std::unique_ptr<ChildPeer> makeNetproxyPeer() {
  return std::make_unique<NetproxyPeer>();
}

std::optional<std::string> checkInput(const NetproxyInput& input) {
  if (const auto* key = std::get_if<NetproxyKey>(&input)) {
    if (!validScancode(key->scancode))
      return fmt::format(
          "input: scancode {:#x} is not a set-1 make code (0x01..0x7f or "
          "0xe0 | code << 8)",
          key->scancode);
  } else if (const auto* m = std::get_if<NetproxyMouseMotion>(&input)) {
    if (m->dx < -MAX_MOTION || m->dx > MAX_MOTION || m->dy < -MAX_MOTION || m->dy > MAX_MOTION)
      return fmt::format("input: mouse motion {},{} beyond +-{}", m->dx, m->dy, MAX_MOTION);
    if (m->buttons >= BUTTON_MASK_LIMIT)
      return fmt::format("input: button mask {:#x} has unknown bits", m->buttons);
  } else if (const auto* p = std::get_if<NetproxyMousePosition>(&input)) {
    if (p->x >= MAX_POSITION || p->y >= MAX_POSITION || p->displayId >= MAX_DISPLAY_ID)
      return fmt::format("input: mouse position {},{} on display {} is out of range", p->x, p->y,
                         p->displayId);
    if (p->buttons >= BUTTON_MASK_LIMIT)
      return fmt::format("input: button mask {:#x} has unknown bits", p->buttons);
  } else {
    const auto& b = std::get<NetproxyMouseButton>(input);
    if (b.button < SPICE_MOUSE_BUTTON_LEFT || b.button > 7)
      return fmt::format("input: mouse button {} is not 1..7", b.button);
    if (b.buttons >= BUTTON_MASK_LIMIT)
      return fmt::format("input: button mask {:#x} has unknown bits", b.buttons);
  }
  return std::nullopt;
}

void buildConfigure(capnp::MessageBuilder& message, const NetproxySettings& settings) {
  auto c = message.initRoot<BrokerToNetproxy>().initConfigure();
  auto listeners = c.initListeners(static_cast<unsigned>(settings.listeners.size()));
  for (unsigned i = 0; i < listeners.size(); ++i) {
    listeners[i].setKind(settings.listeners[i].first ? ListenerKind::UNIX : ListenerKind::TCP);
    listeners[i].setName(settings.listeners[i].second);
  }
  if (settings.password)
    c.setPassword(*settings.password);
  else
    c.setDisableTicketing();
  c.setPasswordExpiresAt(settings.passwordExpiresAt);
  c.setMaxClients(settings.maxClients);
  auto uids = c.initShmUids(static_cast<unsigned>(settings.shmUids.size()));
  for (unsigned i = 0; i < uids.size(); ++i)
    uids.set(i, settings.shmUids[i]);
  switch (settings.imageCompression) {
    case ImageCompression::AutoLz:
      c.setImageCompression(ipc::display::ImageCompression::AUTO_LZ);
      break;
    case ImageCompression::Off:
      c.setImageCompression(ipc::display::ImageCompression::OFF);
      break;
    case ImageCompression::Lz:
      c.setImageCompression(ipc::display::ImageCompression::LZ);
      break;
    case ImageCompression::Lz4:
      c.setImageCompression(ipc::display::ImageCompression::LZ4);
      break;
  }
  c.setMouseMode(settings.mouseMode == MouseMode::Client ? ipc::display::MouseMode::CLIENT
                                                         : ipc::display::MouseMode::SERVER);
}

void buildNetproxySegment(capnp::MessageBuilder& message, const DisplaySegmentLayout& layout,
                          uint8_t buffer) {
  auto shown = message.initRoot<BrokerToNetproxy>().initDisplaySegment();
  fillDisplaySegment(shown.initSegment(), layout);
  shown.setBuffer(buffer);
}

void buildNoDisplay(capnp::MessageBuilder& message) {
  message.initRoot<BrokerToNetproxy>().setNoDisplay();
}

namespace {
void setRect(ipc::render::Rect::Builder out, const RendererRect& r) {
  out.setTop(r.top);
  out.setLeft(r.left);
  out.setBottom(r.bottom);
  out.setRight(r.right);
}
}  // namespace

void buildFrame(capnp::MessageBuilder& message, uint64_t generation, uint8_t buffer,
                std::span<const RendererRect> damage, std::span<const RendererHint> hints) {
  auto f = message.initRoot<BrokerToNetproxy>().initFrame();
  f.setGeneration(generation);
  f.setBuffer(buffer);
  auto d = f.initDamage(static_cast<unsigned>(damage.size()));
  for (unsigned i = 0; i < d.size(); ++i)
    setRect(d[i], damage[i]);
  auto h = f.initHints(static_cast<unsigned>(hints.size()));
  for (unsigned i = 0; i < h.size(); ++i) {
    if (const auto* fill = std::get_if<RendererSolidFill>(&hints[i])) {
      auto out = h[i].initSolidFill();
      out.setColor(fill->color);
      auto rects = out.initRects(static_cast<unsigned>(fill->rects.size()));
      for (unsigned r = 0; r < rects.size(); ++r)
        setRect(rects[r], fill->rects[r]);
    } else {
      const auto& copy = std::get<RendererCopyBits>(hints[i]);
      auto out = h[i].initCopyBits();
      out.setSrcX(copy.srcX);
      out.setSrcY(copy.srcY);
      setRect(out.initDest(), copy.dest);
    }
  }
}

void buildSync(capnp::MessageBuilder& message, uint64_t seq) {
  message.initRoot<BrokerToNetproxy>().setSync(seq);
}

void buildCursor(capnp::MessageBuilder& message, const RendererCursor& cursor) {
  auto c = message.initRoot<BrokerToNetproxy>().initCursor();
  c.setVisible(cursor.visible);
  c.setX(cursor.x);
  c.setY(cursor.y);
  c.setShapeSerial(cursor.shapeSerial);
  c.setWidth(cursor.width);
  c.setHeight(cursor.height);
  c.setHotSpotX(cursor.hotSpotX);
  c.setHotSpotY(cursor.hotSpotY);
  auto pixels = c.initPixels(static_cast<unsigned>(cursor.pixels.size() * 4));
  for (size_t i = 0; i < cursor.pixels.size(); ++i) {
    const uint32_t p = cursor.pixels[i];
    pixels[i * 4 + 0] = static_cast<uint8_t>(p);
    pixels[i * 4 + 1] = static_cast<uint8_t>(p >> 8);
    pixels[i * 4 + 2] = static_cast<uint8_t>(p >> 16);
    pixels[i * 4 + 3] = static_cast<uint8_t>(p >> 24);
  }
}

}  // namespace spicebox::broker
