// Runs in: broker-fuzz-regression-tests. Input: none.
#include "broker/fuzz/fuzz-seeds.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <functional>
#include <string>

#include "broker/peer-child.h"
#include "ipc/display.capnp.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker::fuzz {

namespace {

using ipc::render::MAX_CURSOR_DIMENSION;
using ipc::render::MAX_DAMAGE_RECTS;
using ipc::render::MAX_HINT_RECTS;
using ipc::render::MAX_HINTS;

// One datagram: the flat array Channel::send writes.
std::vector<uint8_t> datagram(capnp::MallocMessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return {bytes.begin(), bytes.end()};
}

template <typename Root>
Seed seed(const char* target, std::string name,
          const std::function<void(typename Root::Builder)>& fill) {
  capnp::MallocMessageBuilder message;
  fill(message.initRoot<Root>());
  return {target, std::move(name), datagram(message)};
}

void fillHello(ipc::ChildHello::Builder hello, uint32_t version, ipc::SandboxLevel level,
               std::initializer_list<const char*> missing) {
  hello.setProtocolVersion(version);
  hello.setPid(2);
  hello.setSandboxLevel(level);
  auto list = hello.initSandboxMissing(static_cast<unsigned>(missing.size()));
  unsigned i = 0;
  for (const char* text : missing)
    list.set(i++, text);
}

// A hello at the report's limits: MAX_SANDBOX_MISSING_ENTRIES entries, one of
// MAX_SANDBOX_MISSING_TEXT bytes.
void fillHelloMostMissing(ipc::ChildHello::Builder hello, uint32_t version) {
  hello.setProtocolVersion(version);
  hello.setPid(2);
  hello.setSandboxLevel(ipc::SandboxLevel::PARTIAL);
  auto list = hello.initSandboxMissing(MAX_SANDBOX_MISSING_ENTRIES);
  for (unsigned i = 0; i < list.size(); ++i)
    list.set(i, i == 0 ? std::string(MAX_SANDBOX_MISSING_TEXT, 'x') : "step " + std::to_string(i));
}

void setRect(ipc::render::Rect::Builder r, int32_t left, int32_t top, int32_t right,
             int32_t bottom) {
  r.setLeft(left);
  r.setTop(top);
  r.setRight(right);
  r.setBottom(bottom);
}

void fillCursor(ipc::render::Cursor::Builder c, uint16_t width, uint16_t height) {
  c.setVisible(true);
  c.setX(100);
  c.setY(-3);  // a pointer may lie off the primary
  c.setShapeSerial(7);
  c.setWidth(width);
  c.setHeight(height);
  c.setHotSpotX(width / 2);
  c.setHotSpotY(height - 1);
  auto pixels = c.initPixels(unsigned{width} * height * 4);
  for (unsigned i = 0; i < pixels.size(); ++i)
    pixels[i] = static_cast<uint8_t>(i * 13);
}

std::vector<Seed> rendererSeeds() {
  using ipc::render::RendererToBroker;
  constexpr const char* T = "peer-renderer";
  constexpr uint32_t V = ipc::render::PROTOCOL_VERSION;
  using B = RendererToBroker::Builder;
  std::vector<Seed> out;
  out.push_back(seed<RendererToBroker>(
      T, "hello-full.bin", [](B m) { fillHello(m.initHello(), V, ipc::SandboxLevel::FULL, {}); }));
  out.push_back(seed<RendererToBroker>(T, "hello-partial-missing.bin", [](B m) {
    fillHello(m.initHello(), V, ipc::SandboxLevel::PARTIAL,
              {"user namespace (EPERM)", "mount namespace (EPERM)"});
  }));
  out.push_back(seed<RendererToBroker>(T, "hello-most-missing.bin",
                                       [](B m) { fillHelloMostMissing(m.initHello(), V); }));
  out.push_back(seed<RendererToBroker>(T, "pong.bin", [](B m) { m.initPong().setSeq(1); }));
  out.push_back(
      seed<RendererToBroker>(T, "batch-done-empty.bin", [](B m) { m.initBatchDone().setSeq(1); }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-damage.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(2);
    done.setRejected(1);
    done.setBuffer(1);
    auto damage = done.initDamage(3);
    setRect(damage[0], 0, 0, 640, 480);
    setRect(damage[1], 10, 20, 30, 40);
    setRect(damage[2], 8191, 8191, 8192, 8192);
  }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-hints.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(3);
    setRect(done.initDamage(1)[0], 0, 0, 64, 64);
    auto hints = done.initHints(2);
    auto fill = hints[0].initSolidFill();
    fill.setColor(0xff336699);
    auto rects = fill.initRects(2);
    setRect(rects[0], 0, 0, 32, 32);
    setRect(rects[1], 32, 32, 64, 64);
    auto copy = hints[1].initCopyBits();
    copy.setSrcX(0);
    copy.setSrcY(8);
    setRect(copy.initDest(), 0, 0, 64, 8);
  }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-cursor.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(4);
    fillCursor(done.initCursor(), 4, 4);
  }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-cursor-hidden.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(5);
    done.initCursor().setVisible(false);  // no shape: serial 0, 0x0
  }));
  // At the limits, kept small: every list at its longest, the widest cursor. (The largest
  // messages, 64 KiB each, are checked by the tests, makeLargestMessages(): as seeds they slowed
  // the fuzzer about fourfold and it reached less.)
  out.push_back(seed<RendererToBroker>(T, "batch-done-longest-lists.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(6);
    auto damage = done.initDamage(MAX_DAMAGE_RECTS);
    for (unsigned i = 0; i < damage.size(); ++i)
      setRect(damage[i], static_cast<int32_t>(i), 0, static_cast<int32_t>(i + 1), 1);
    auto hints = done.initHints(MAX_HINTS);
    auto rects = hints[0].initSolidFill().initRects(MAX_HINT_RECTS);
    for (unsigned i = 0; i < rects.size(); ++i)
      setRect(rects[i], static_cast<int32_t>(i), 0, static_cast<int32_t>(i + 1), 1);
    for (unsigned h = 1; h < hints.size(); ++h) {
      auto copy = hints[h].initCopyBits();
      copy.setSrcX(static_cast<int32_t>(h));
      setRect(copy.initDest(), 0, static_cast<int32_t>(h), 1, static_cast<int32_t>(h + 1));
    }
  }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-cursor-widest.bin", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(7);
    fillCursor(done.initCursor(), static_cast<uint16_t>(MAX_CURSOR_DIMENSION), 2);
  }));
  return out;
}

std::vector<Seed> netproxySeeds() {
  using ipc::display::NetproxyToBroker;
  constexpr const char* T = "peer-netproxy";
  constexpr uint32_t V = ipc::display::PROTOCOL_VERSION;
  using B = NetproxyToBroker::Builder;
  std::vector<Seed> out;
  out.push_back(seed<NetproxyToBroker>(
      T, "hello-full.bin", [](B m) { fillHello(m.initHello(), V, ipc::SandboxLevel::FULL, {}); }));
  out.push_back(seed<NetproxyToBroker>(T, "hello-off-missing.bin", [](B m) {
    fillHello(m.initHello(), V, ipc::SandboxLevel::OFF, {"seccomp (--sandbox=off)"});
  }));
  out.push_back(seed<NetproxyToBroker>(T, "hello-most-missing.bin",
                                       [](B m) { fillHelloMostMissing(m.initHello(), V); }));
  out.push_back(seed<NetproxyToBroker>(T, "pong.bin", [](B m) { m.initPong().setSeq(1); }));
  out.push_back(
      seed<NetproxyToBroker>(T, "input-key-down.bin", [](B m) { m.initInput().setKeyDown(0x1e); }));
  out.push_back(seed<NetproxyToBroker>(T, "input-key-up-extended.bin",
                                       [](B m) { m.initInput().setKeyUp(0x48e0); }));
  out.push_back(seed<NetproxyToBroker>(T, "input-mouse-motion.bin", [](B m) {
    auto motion = m.initInput().initMouseMotion();
    motion.setDx(-4096);
    motion.setDy(12);
    motion.setButtons(1);
  }));
  out.push_back(seed<NetproxyToBroker>(T, "input-mouse-position.bin", [](B m) {
    auto position = m.initInput().initMousePosition();
    position.setX(1023);
    position.setY(767);
    position.setDisplayId(0);
    position.setButtons(0);
  }));
  out.push_back(seed<NetproxyToBroker>(T, "input-mouse-button.bin", [](B m) {
    auto button = m.initInput().initMouseButton();
    button.setButton(1);
    button.setPressed(true);
    button.setButtons(1);
  }));
  out.push_back(seed<NetproxyToBroker>(T, "clients.bin", [](B m) {
    auto clients = m.initClients();
    clients.setSessions(2);
    clients.setConnections(7);
    clients.setRefused(1);
    clients.setShm(1);
    clients.setTearFree(1);
  }));
  out.push_back(seed<NetproxyToBroker>(T, "synced.bin", [](B m) { m.setSynced(3); }));
  return out;
}

}  // namespace

std::vector<Seed> makeLargestMessages() {
  using ipc::render::RendererToBroker;
  constexpr const char* T = "peer-renderer";
  using B = RendererToBroker::Builder;
  std::vector<Seed> out;
  out.push_back(seed<RendererToBroker>(T, "batch-done-largest-cursor", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(1);
    const auto side = static_cast<uint16_t>(MAX_CURSOR_DIMENSION);
    fillCursor(done.initCursor(), side, side);
  }));
  out.push_back(seed<RendererToBroker>(T, "batch-done-most-output", [](B m) {
    auto done = m.initBatchDone();
    done.setSeq(2);
    auto damage = done.initDamage(MAX_DAMAGE_RECTS);
    for (unsigned i = 0; i < damage.size(); ++i)
      setRect(damage[i], static_cast<int32_t>(i), 0, static_cast<int32_t>(i + 1), 1);
    auto hints = done.initHints(MAX_HINTS);
    for (unsigned h = 0; h < hints.size(); ++h) {
      auto rects = hints[h].initSolidFill().initRects(MAX_HINT_RECTS);
      for (unsigned i = 0; i < rects.size(); ++i)
        setRect(rects[i], static_cast<int32_t>(i), static_cast<int32_t>(h),
                static_cast<int32_t>(i + 1), static_cast<int32_t>(h + 1));
    }
    // With the largest cursor as well the message would exceed one frame: the renderer then
    // sends the whole primary as damage instead (renderer/main.cpp).
  }));
  return out;
}

std::vector<Seed> makeSeeds() {
  auto out = rendererSeeds();
  for (auto& s : netproxySeeds())
    out.push_back(std::move(s));
  return out;
}

}  // namespace spicebox::broker::fuzz
