// Runs in: tests. Input: hand-made client message bodies (hostile ones named after the attack)
// and the server messages netproxy/messages.h marshals, read back field by field against the
// layouts of spice.proto and the sizes of spice/protocol.h's structs.
#include "netproxy/messages.h"

#include <spice/enums.h>
#include <spice/protocol.h>

#include <catch2/catch.hpp>

#include "netproxy/wire.h"

namespace spicebox::netproxy {
namespace {

using Parsed = std::variant<ClientMessage, MessageFault>;

MessageFault faultOf(const Parsed& p) {
  REQUIRE(std::holds_alternative<MessageFault>(p));
  return std::get<MessageFault>(p);
}

InputEvent inputOf(const Parsed& p) {
  REQUIRE(std::holds_alternative<ClientMessage>(p));
  const ClientMessage& m = std::get<ClientMessage>(p);
  REQUIRE(std::holds_alternative<InputEvent>(m));
  return std::get<InputEvent>(m);
}

std::vector<uint8_t> u32(uint32_t v) {
  wire::Writer w;
  w.u32(v);
  return w.take();
}

// spice-gtk's encoding of a PC XT scancode in KEY_DOWN/KEY_UP (spice_make_scancode, as its
// documentation describes it): extended keys are given as 0x100 | code; a release sets 0x80 in
// the code; an extended code goes out as the bytes 0xe0, code (a little-endian u16).
uint32_t spiceGtkCode(uint32_t scancode, bool release) {
  uint32_t code = scancode & 0x7f;
  if (release)
    code |= 0x80;
  if (scancode & 0x100)
    return 0xe0 | code << 8;
  return code;
}

TEST_CASE("inputs: every key spice-gtk can send becomes the make code vmm.capnp wants",
          "[messages][inputs]") {
  for (uint32_t extended : {0u, 0x100u})
    for (uint32_t key = 1; key < 0x80; ++key) {
      const uint32_t scancode = extended | key;
      const uint32_t want = extended ? (0xe0 | key << 8) : key;
      auto down = inputOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_DOWN,
                                             u32(spiceGtkCode(scancode, false))));
      REQUIRE(std::get<KeyEvent>(down).scancode == want);
      REQUIRE(std::get<KeyEvent>(down).down);
      auto up = inputOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_UP,
                                           u32(spiceGtkCode(scancode, true))));
      REQUIRE(std::get<KeyEvent>(up).scancode == want);
      REQUIRE_FALSE(std::get<KeyEvent>(up).down);
    }
}

TEST_CASE("inputs: key codes out of range", "[messages][inputs][hostile]") {
  for (uint32_t code : {0u, 0x80u, 0xe0u, 0x80e0u, 0x1e1u, 0x10000u, 0xffffffffu, 0x00e0e0u})
    CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_DOWN, u32(code))) ==
          MessageFault::BadValue);
  // A make code in KEY_UP is taken (spice-html5 style), a break code in KEY_DOWN is not.
  auto up = inputOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_UP, u32(0x1e)));
  CHECK(std::get<KeyEvent>(up).scancode == 0x1e);
  CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_DOWN, u32(0x9e))) ==
        MessageFault::BadValue);
}

TEST_CASE("inputs: mouse messages are read and range-checked", "[messages][inputs]") {
  wire::Writer motion;
  motion.i32(-5).i32(7).u16(SPICE_MOUSE_BUTTON_MASK_LEFT);
  auto m = std::get<MouseMotion>(inputOf(
      parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_MOTION, motion.take())));
  CHECK(m.dx == -5);
  CHECK(m.dy == 7);
  CHECK(m.buttons == SPICE_MOUSE_BUTTON_MASK_LEFT);

  wire::Writer position;
  position.u32(100).u32(50).u16(0).u8(0);
  auto p = std::get<MousePosition>(inputOf(
      parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_POSITION, position.take())));
  CHECK(p.x == 100);
  CHECK(p.y == 50);

  wire::Writer press;
  press.u8(SPICE_MOUSE_BUTTON_RIGHT).u16(SPICE_MOUSE_BUTTON_MASK_RIGHT);
  auto b = std::get<MouseButton>(inputOf(
      parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_PRESS, press.take())));
  CHECK(b.button == SPICE_MOUSE_BUTTON_RIGHT);
  CHECK(b.pressed);

  SECTION("motion-out-of-range") {
    wire::Writer w;
    w.i32(4097).i32(0).u16(0);
    CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_MOTION,
                                     w.take())) == MessageFault::BadValue);
  }
  SECTION("unknown-buttons") {
    wire::Writer w;
    w.i32(1).i32(1).u16(0x80);
    CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_MOTION,
                                     w.take())) == MessageFault::BadValue);
    for (uint8_t button : {uint8_t{0}, uint8_t{8}, uint8_t{255}}) {
      wire::Writer r;
      r.u8(button).u16(0);
      CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_RELEASE,
                                       r.take())) == MessageFault::BadValue);
    }
  }
}

TEST_CASE("truncated-messages are refused, never read past their end", "[messages][hostile]") {
  const std::vector<uint8_t> three = {1, 2, 3};
  CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_KEY_DOWN, three)) ==
        MessageFault::Truncated);
  CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_INPUTS_MOUSE_POSITION,
                                   std::vector<uint8_t>(10))) == MessageFault::Truncated);
  CHECK(faultOf(parseClientMessage(ChannelKind::Display, SPICE_MSGC_DISPLAY_INIT,
                                   std::vector<uint8_t>(13))) == MessageFault::Truncated);
  CHECK(faultOf(parseClientMessage(ChannelKind::Main, SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST,
                                   std::vector<uint8_t>(1))) == MessageFault::Truncated);
  CHECK(faultOf(parseClientMessage(ChannelKind::Cursor, SPICE_MSGC_ACK_SYNC, three)) ==
        MessageFault::Truncated);
  CHECK(faultOf(parseClientMessage(ChannelKind::Main, SPICE_MSGC_PONG, std::vector<uint8_t>(11))) ==
        MessageFault::Truncated);
}

TEST_CASE("messages-on-the-wrong-channel and unknown types", "[messages][hostile]") {
  wire::Writer motion;
  motion.i32(1).i32(1).u16(0);
  CHECK(faultOf(parseClientMessage(ChannelKind::Display, SPICE_MSGC_INPUTS_MOUSE_MOTION,
                                   motion.take())) == MessageFault::WrongChannel);
  CHECK(faultOf(parseClientMessage(ChannelKind::Inputs, SPICE_MSGC_MAIN_ATTACH_CHANNELS, {})) ==
        MessageFault::WrongChannel);
  CHECK(faultOf(parseClientMessage(ChannelKind::Cursor, 999, {})) == MessageFault::UnknownType);
  CHECK(faultOf(parseClientMessage(ChannelKind::Main, SPICE_MSGC_MIGRATE_DATA, {})) ==
        MessageFault::UnknownType);
  CHECK(faultOf(parseClientMessage(ChannelKind::Main, 0, {})) == MessageFault::UnknownType);
  wire::Writer mode;
  mode.u16(3);  // both modes at once is not a mode
  CHECK(faultOf(parseClientMessage(ChannelKind::Main, SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST,
                                   mode.take())) == MessageFault::BadValue);
}

TEST_CASE("per-channel size limits: main takes agent data, the others a few fields",
          "[messages][hostile]") {
  CHECK(maxClientMessageSize(ChannelKind::Main) >= 2048);
  CHECK(maxClientMessageSize(ChannelKind::Main) <= 4096);
  for (ChannelKind k : {ChannelKind::Display, ChannelKind::Inputs, ChannelKind::Cursor})
    CHECK(maxClientMessageSize(k) <= 64);
}

// --- Marshalling ---

TEST_CASE("framing: full header and mini header", "[messages]") {
  const std::vector<uint8_t> body = {9, 8, 7};
  auto full = wire::frameMessage(false, 42, SPICE_MSG_PING, body);
  REQUIRE(full.size() == sizeof(SpiceDataHeader) + 3);
  wire::Reader r(full);
  CHECK(r.u64() == 42);
  CHECK(r.u16() == SPICE_MSG_PING);
  CHECK(r.u32() == 3);
  CHECK(r.u32() == 0);
  auto mini = wire::frameMessage(true, 42, SPICE_MSG_PING, body);
  REQUIRE(mini.size() == sizeof(SpiceMiniDataHeader) + 3);
  wire::Reader m(mini);
  CHECK(m.u16() == SPICE_MSG_PING);
  CHECK(m.u32() == 3);
  CHECK(m.u8() == 9);
}

TEST_CASE("MAIN_INIT and CHANNELS_LIST layouts", "[messages]") {
  MainInit init;
  init.sessionId = 0xabcdef;
  init.currentMouseMode = SPICE_MOUSE_MODE_CLIENT;
  init.agentTokens = 10;
  init.multiMediaTime = 1234;
  auto m = buildMainInit(init);
  CHECK(m.type == SPICE_MSG_MAIN_INIT);
  REQUIRE(m.body.size() == 32);
  wire::Reader r(m.body);
  CHECK(r.u32() == 0xabcdef);
  CHECK(r.u32() == 1);
  CHECK(r.u32() == (SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT));
  CHECK(r.u32() == SPICE_MOUSE_MODE_CLIENT);
  CHECK(r.u32() == 0);
  CHECK(r.u32() == 10);
  CHECK(r.u32() == 1234);

  const ChannelKind channels[] = {ChannelKind::Display, ChannelKind::Cursor, ChannelKind::Inputs};
  auto list = buildChannelsList(channels);
  wire::Reader l(list.body);
  CHECK(l.u32() == 3);
  CHECK(l.u8() == SPICE_CHANNEL_DISPLAY);
  CHECK(l.u8() == 0);
  CHECK(l.u8() == SPICE_CHANNEL_CURSOR);
  CHECK(l.u8() == 0);
  CHECK(l.u8() == SPICE_CHANNEL_INPUTS);
  CHECK(l.u8() == 0);
  CHECK(l.remaining() == 0);
}

TEST_CASE("DRAW_COPY: the image pointer leads to the descriptor and the rows", "[messages]") {
  EncodedImage image;
  image.width = 3;
  image.height = 2;
  for (uint8_t i = 0; i < 24; ++i)
    image.data.push_back(i);
  const Rect box{10, 20, 12, 23};
  auto m = buildDrawCopy(box, image, 77);
  CHECK(m.type == SPICE_MSG_DISPLAY_DRAW_COPY);
  wire::Reader r(m.body);
  CHECK(r.u32() == 0);  // surface
  CHECK(r.i32() == 10);
  CHECK(r.i32() == 20);
  CHECK(r.i32() == 12);
  CHECK(r.i32() == 23);
  CHECK(r.u8() == SPICE_CLIP_TYPE_NONE);
  const uint32_t imageAt = r.u32();
  CHECK(r.i32() == 0);  // src_area: the whole image
  CHECK(r.i32() == 0);
  CHECK(r.i32() == 2);
  CHECK(r.i32() == 3);
  // spice.proto's Copy: rop_descriptor (u16) comes before scale_mode (u8).
  CHECK(r.u16() == SPICE_ROPD_OP_PUT);
  CHECK(r.u8() == SPICE_IMAGE_SCALE_MODE_NEAREST);
  CHECK(r.u8() == 0);  // mask flags
  r.u32();
  r.u32();
  CHECK(r.u32() == 0);  // no mask bitmap
  CHECK(imageAt == r.position());
  CHECK(r.u64() == 77);
  CHECK(r.u8() == SPICE_IMAGE_TYPE_BITMAP);
  CHECK(r.u8() == 0);
  CHECK(r.u32() == 3);
  CHECK(r.u32() == 2);
  CHECK(r.u8() == SPICE_BITMAP_FMT_32BIT);
  CHECK(r.u8() == SPICE_BITMAP_FLAGS_TOP_DOWN);
  CHECK(r.u32() == 3);
  CHECK(r.u32() == 2);
  CHECK(r.u32() == 12);
  CHECK(r.u32() == 0);  // no palette
  auto rows = r.bytes(24);
  CHECK(std::vector<uint8_t>(rows.begin(), rows.end()) == image.data);
  CHECK(r.ok());
  CHECK(r.remaining() == 0);

  image.encoding = ImageEncoding::Lz4;
  image.data = {1, 2, 3, 4, 5};
  auto lz4 = buildDrawCopy(box, image, 78);
  wire::Reader l(lz4.body);
  l.bytes(imageAt);
  l.u64();
  CHECK(l.u8() == SPICE_IMAGE_TYPE_LZ4);
  l.u8();
  l.u32();
  l.u32();
  CHECK(l.u32() == 5);  // data_size
  CHECK(l.remaining() == 5);
}

TEST_CASE("DRAW_COPY with CACHE_ME, and FROM_CACHE: a descriptor alone", "[messages][cache]") {
  EncodedImage image;
  image.width = 4;
  image.height = 3;
  image.data.assign(48, 0x11);
  const Rect box{5, 6, 8, 10};
  auto cached = buildDrawCopy(box, image, 0x1122334455667788, /*cacheMe=*/true);
  wire::Reader c(cached.body);
  c.bytes(4 + 16 + 1);  // surface, box, clip type
  const uint32_t imageAt = c.u32();
  wire::Reader d(std::span(cached.body).subspan(imageAt));
  CHECK(d.u64() == 0x1122334455667788);
  CHECK(d.u8() == SPICE_IMAGE_TYPE_BITMAP);
  CHECK(d.u8() == SPICE_IMAGE_FLAGS_CACHE_ME);

  auto m = buildDrawCopyFromCache(box, 0x1122334455667788);
  CHECK(m.type == SPICE_MSG_DISPLAY_DRAW_COPY);
  wire::Reader r(m.body);
  CHECK(r.u32() == 0);  // surface
  CHECK(r.i32() == 5);
  CHECK(r.i32() == 6);
  CHECK(r.i32() == 8);
  CHECK(r.i32() == 10);
  CHECK(r.u8() == SPICE_CLIP_TYPE_NONE);
  CHECK(r.u32() == imageAt);  // the same fixed fields before the image
  CHECK(r.i32() == 0);        // src_area: the whole cached image, 4 x 3
  CHECK(r.i32() == 0);
  CHECK(r.i32() == 3);
  CHECK(r.i32() == 4);
  r.bytes(imageAt - r.position());
  CHECK(r.u64() == 0x1122334455667788);
  CHECK(r.u8() == SPICE_IMAGE_TYPE_FROM_CACHE);
  CHECK(r.u8() == 0);
  CHECK(r.u32() == 4);
  CHECK(r.u32() == 3);
  CHECK(r.ok());
  CHECK(r.remaining() == 0);  // no pixel data
}

TEST_CASE("INVAL_LIST and INVAL_ALL_PIXMAPS layouts", "[messages][cache]") {
  const std::vector<uint64_t> ids = {7, 0xfedcba9876543210};
  auto list = buildInvalList(ids);
  CHECK(list.type == SPICE_MSG_DISPLAY_INVAL_LIST);
  // uint16 count, then packed ResourceIDs of 9 bytes (spice.proto's SpiceResourceList).
  REQUIRE(list.body.size() == 2 + 2 * 9);
  wire::Reader r(list.body);
  CHECK(r.u16() == 2);
  CHECK(r.u8() == SPICE_RES_TYPE_PIXMAP);
  CHECK(r.u64() == 7);
  CHECK(r.u8() == SPICE_RES_TYPE_PIXMAP);
  CHECK(r.u64() == 0xfedcba9876543210);
  CHECK(r.ok());

  auto all = buildInvalAllPixmaps();
  CHECK(all.type == SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS);
  CHECK(all.body == std::vector<uint8_t>{0});  // wait_count 0
}

TEST_CASE("DRAW_FILL: solid brush, the rects as the clip, their bounding box", "[messages]") {
  const std::vector<Rect> rects = {{0, 0, 10, 10}, {20, 30, 25, 40}};
  auto m = buildDrawFill(0x00ff8800, rects);
  CHECK(m.type == SPICE_MSG_DISPLAY_DRAW_FILL);
  wire::Reader r(m.body);
  CHECK(r.u32() == 0);
  CHECK(r.i32() == 0);
  CHECK(r.i32() == 0);
  CHECK(r.i32() == 25);
  CHECK(r.i32() == 40);
  CHECK(r.u8() == SPICE_CLIP_TYPE_RECTS);
  CHECK(r.u32() == 2);
  for (const Rect& want : rects) {
    Rect got;
    got.top = r.i32();
    got.left = r.i32();
    got.bottom = r.i32();
    got.right = r.i32();
    CHECK(got == want);
  }
  CHECK(r.u8() == SPICE_BRUSH_TYPE_SOLID);
  CHECK(r.u32() == 0x00ff8800);
  CHECK(r.u16() == SPICE_ROPD_OP_PUT);
  r.bytes(13);  // empty mask
  CHECK(r.ok());
  CHECK(r.remaining() == 0);
}

TEST_CASE("cursor messages: an alpha shape, and no shape", "[messages][cursor]") {
  CursorState c;
  c.visible = true;
  c.x = -3;
  c.y = 40;
  c.shapeSerial = 5;
  c.width = 2;
  c.height = 1;
  c.hotSpotX = 1;
  c.pixels = {0x80ff0000, 0xff00ff00};
  auto set = buildCursorSet(c);
  CHECK(set.type == SPICE_MSG_CURSOR_SET);
  wire::Reader r(set.body);
  CHECK(r.i16() == -3);
  CHECK(r.i16() == 40);
  CHECK(r.u8() == 1);
  CHECK(r.u16() == 0);  // flags: a shape follows
  CHECK(r.u64() == 5);
  CHECK(r.u8() == SPICE_CURSOR_TYPE_ALPHA);
  CHECK(r.u16() == 2);
  CHECK(r.u16() == 1);
  CHECK(r.u16() == 1);
  CHECK(r.u16() == 0);
  CHECK(r.u32() == 0x80ff0000);
  CHECK(r.u32() == 0xff00ff00);
  CHECK(r.remaining() == 0);

  c.pixels.pop_back();  // inconsistent: sent as no shape
  auto none = buildCursorInit(c);
  wire::Reader n(none.body);
  n.bytes(9);
  CHECK(n.u16() == SPICE_CURSOR_FLAGS_NONE);
  CHECK(n.remaining() == 0);
}

}  // namespace
}  // namespace spicebox::netproxy
