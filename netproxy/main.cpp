// Runs in: netproxy. Makes the ticket key, enters the sandbox, then reads the first byte. Input:
// display.capnp messages from the broker (trusted, but a malformed one ends the link rather than
// reaching the server: each is checked here); SPICE clients are netproxy/server.h's.
#include <memory>
#include <optional>

#include "ipc/child-link.h"
#include "ipc/display.capnp.h"
#include "ipc/render.capnp.h"
#include "netproxy/sandbox-profile.h"
#include "netproxy/server.h"

namespace spicebox::netproxy {
namespace {

using ipc::display::BrokerToNetproxy;
using ipc::display::NetproxyToBroker;

Rect toRect(ipc::render::Rect::Reader r) {
  return Rect{r.getTop(), r.getLeft(), r.getBottom(), r.getRight()};
}

ImageCompression toCompression(ipc::display::ImageCompression c) {
  switch (c) {
    case ipc::display::ImageCompression::OFF:
      return ImageCompression::Off;
    case ipc::display::ImageCompression::LZ:
      return ImageCompression::Lz;
    case ipc::display::ImageCompression::LZ4:
      return ImageCompression::Lz4;
    case ipc::display::ImageCompression::AUTO_LZ:
    default:
      return ImageCompression::AutoLz;
  }
}

class NetproxyLink
    : public ipc::ChildLink<BrokerToNetproxy, NetproxyToBroker, ipc::display::PROTOCOL_VERSION> {
 public:
  NetproxyLink(uv_loop_t* loop, base::Fd socket, sandbox::Report report)
      : ChildLink(loop, std::move(socket), std::move(report)),
        server_(loop, Server::Events{
                          .onInput = [this](const InputEvent& e) { sendInput(e); },
                          .onClients = [this](const ClientCounts& c) { sendClients(c); },
                      }) {}

 protected:
  ipc::Channel::Verdict onBoundaryMessage(BrokerToNetproxy::Reader root,
                                          ipc::ReceivedFds& fds) override {
    switch (root.which()) {
      case BrokerToNetproxy::CONFIGURE:
        return configure(root.getConfigure(), fds);
      case BrokerToNetproxy::DISPLAY_SEGMENT: {
        if (!configured_)
          return std::string("a display segment before configure");
        auto shown = root.getDisplaySegment();
        auto s = shown.getSegment();
        DisplayLayout layout{s.getGeneration(), s.getSize(),   s.getOffset(),    s.getStride(),
                             s.getWidth(),      s.getHeight(), s.getBackOffset()};
        base::Fd fd = fds.take(0);
        if (!fd)
          return std::string("a display segment without its descriptor");
        if (auto error = server_.setDisplay(std::move(fd), layout, shown.getBuffer()))
          return "display segment refused: " + *error;  // a broker bug: it restarts us
        return std::nullopt;
      }
      case BrokerToNetproxy::NO_DISPLAY:
        server_.dropDisplay();
        return std::nullopt;
      case BrokerToNetproxy::FRAME: {
        auto f = root.getFrame();
        std::vector<Rect> damage;
        for (auto r : f.getDamage())
          damage.push_back(toRect(r));
        std::vector<Hint> hints;
        for (auto h : f.getHints()) {
          if (h.isSolidFill()) {
            SolidFill fill{h.getSolidFill().getColor(), {}};
            for (auto r : h.getSolidFill().getRects())
              fill.rects.push_back(toRect(r));
            hints.emplace_back(std::move(fill));
          } else if (h.isCopyBits()) {
            auto c = h.getCopyBits();
            hints.emplace_back(CopyBits{c.getSrcX(), c.getSrcY(), toRect(c.getDest())});
          }
        }
        server_.frame(f.getGeneration(), f.getBuffer(), hints, damage);
        return std::nullopt;
      }
      case BrokerToNetproxy::CURSOR: {
        auto c = root.getCursor();
        CursorState cursor;
        cursor.visible = c.getVisible();
        cursor.x = c.getX();
        cursor.y = c.getY();
        cursor.shapeSerial = c.getShapeSerial();
        cursor.width = c.getWidth();
        cursor.height = c.getHeight();
        cursor.hotSpotX = c.getHotSpotX();
        cursor.hotSpotY = c.getHotSpotY();
        auto pixels = c.getPixels();
        if (pixels.size() != size_t{cursor.width} * cursor.height * 4)
          return std::string("a cursor whose pixels do not match its size");
        cursor.pixels.resize(pixels.size() / 4);
        for (size_t i = 0; i < cursor.pixels.size(); ++i)
          cursor.pixels[i] = uint32_t{pixels[i * 4]} | uint32_t{pixels[i * 4 + 1]} << 8 |
                             uint32_t{pixels[i * 4 + 2]} << 16 | uint32_t{pixels[i * 4 + 3]} << 24;
        server_.setCursor(cursor);
        return std::nullopt;
      }
      case BrokerToNetproxy::SYNC: {
        // Everything before it was handled synchronously (the segment's pixels it needed are
        // copied); the renderer may draw again once tear-free viewers let go of the buffer it
        // will draw into (at once when there are none).
        server_.sync([this, seq = root.getSync()] {
          capnp::MallocMessageBuilder reply;
          reply.initRoot<NetproxyToBroker>().setSynced(seq);
          channel().send(reply);
        });
        return std::nullopt;
      }
      default:
        return "unknown message " + std::to_string(static_cast<unsigned>(root.which())) +
               " from the broker";
    }
  }

 private:
  ipc::Channel::Verdict configure(ipc::display::Configure::Reader c, ipc::ReceivedFds& fds) {
    if (configured_)
      return std::string("configure sent twice");
    auto names = c.getListeners();
    if (names.size() == 0 || names.size() > ipc::display::MAX_LISTENERS ||
        names.size() != fds.size())
      return "configure with " + std::to_string(names.size()) + " listeners and " +
             std::to_string(fds.size()) + " descriptors";
    std::vector<Listener> listeners;
    for (unsigned i = 0; i < names.size(); ++i) {
      Listener l;
      l.fd = fds.take(i);
      l.kind = names[i].getKind() == ipc::display::ListenerKind::UNIX ? ListenerKind::Unix
                                                                      : ListenerKind::Tcp;
      l.name = names[i].getName();
      listeners.push_back(std::move(l));
    }
    Settings settings;
    if (c.isPassword())
      settings.password = std::string(c.getPassword());
    settings.passwordExpiresAt = c.getPasswordExpiresAt();
    settings.maxClients = c.getMaxClients();
    settings.imageCompression = toCompression(c.getImageCompression());
    settings.mouseMode =
        c.getMouseMode() == ipc::display::MouseMode::SERVER ? MouseMode::Server : MouseMode::Client;
    if (c.getShmUids().size() > ipc::display::MAX_SHM_UIDS)
      return "configure with " + std::to_string(c.getShmUids().size()) +
             " shared-memory users, at most " + std::to_string(ipc::display::MAX_SHM_UIDS);
    for (uint32_t uid : c.getShmUids())
      settings.shmUids.push_back(uid);
    if (auto error = server_.configure(std::move(settings), std::move(listeners)))
      return "configuration refused: " + *error;
    configured_ = true;
    return std::nullopt;
  }

  void sendInput(const InputEvent& event) {
    capnp::MallocMessageBuilder message;
    auto out = message.initRoot<NetproxyToBroker>().initInput();
    if (const auto* key = std::get_if<KeyEvent>(&event)) {
      if (key->down)
        out.setKeyDown(key->scancode);
      else
        out.setKeyUp(key->scancode);
    } else if (const auto* m = std::get_if<MouseMotion>(&event)) {
      auto o = out.initMouseMotion();
      o.setDx(m->dx);
      o.setDy(m->dy);
      o.setButtons(m->buttons);
    } else if (const auto* p = std::get_if<MousePosition>(&event)) {
      auto o = out.initMousePosition();
      o.setX(p->x);
      o.setY(p->y);
      o.setDisplayId(p->displayId);
      o.setButtons(p->buttons);
    } else {
      const auto& b = std::get<MouseButton>(event);
      auto o = out.initMouseButton();
      o.setButton(b.button);
      o.setPressed(b.pressed);
      o.setButtons(b.buttons);
    }
    channel().send(message);
  }

  void sendClients(const ClientCounts& counts) {
    capnp::MallocMessageBuilder message;
    auto out = message.initRoot<NetproxyToBroker>().initClients();
    out.setSessions(counts.sessions);
    out.setConnections(counts.connections);
    out.setRefused(counts.refused);
    out.setShm(counts.shm);
    out.setTearFree(counts.tearFree);
    channel().send(message);
  }

  Server server_;
  bool configured_ = false;
};

}  // namespace
}  // namespace spicebox::netproxy

int main(int argc, char** argv) {
  using namespace spicebox;
  ipc::runChild<netproxy::NetproxyLink>(argc, argv, "netproxy", netproxy::sandboxProfile,
                                        [] { netproxy::Server::prepare(); });
}
