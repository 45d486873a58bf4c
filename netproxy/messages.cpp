// Runs in: netproxy (sandboxed). Input: message bodies from SPICE clients (hostile).
#include "netproxy/messages.h"

#include <spice/enums.h>
#include <spice/protocol.h>

#include <algorithm>

#include "base/assert.h"
#include "base/shm-protocol.h"
#include "netproxy/wire.h"

namespace spicebox::netproxy {

namespace {

// Largest relative motion per event (ipc/vmm.capnp MouseMotion) and the button bits it takes.
constexpr int32_t MAX_MOTION = 4096;
constexpr uint32_t BUTTONS_MASK_LIMIT = 0x80;
// The agent data the main channel takes (and discards): VD_AGENT_MAX_DATA_SIZE.
constexpr uint32_t MAX_AGENT_DATA = 2048;

using Parsed = std::variant<ClientMessage, MessageFault>;

// `m` when every field was there, else Truncated.
template <typename M>
Parsed checked(const wire::Reader& r, const M& m) {
  if (!r.ok())
    return MessageFault::Truncated;
  return ClientMessage{m};
}

bool knownOn(ChannelKind channel, uint16_t type) {
  switch (channel) {
    case ChannelKind::Main:
      return type == SPICE_MSGC_MAIN_ATTACH_CHANNELS ||
             type == SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST || type == SPICE_MSGC_MAIN_AGENT_START ||
             type == SPICE_MSGC_MAIN_AGENT_DATA || type == SPICE_MSGC_MAIN_AGENT_TOKEN;
    case ChannelKind::Display:
      return type == SPICE_MSGC_DISPLAY_INIT || type == SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION ||
             type == shm::MSGC_SHM_REPLY || type == shm::MSGC_SHM_DAMAGE_HANDLED;
    case ChannelKind::Inputs:
      return type == SPICE_MSGC_INPUTS_KEY_DOWN || type == SPICE_MSGC_INPUTS_KEY_UP ||
             type == SPICE_MSGC_INPUTS_KEY_MODIFIERS || type == SPICE_MSGC_INPUTS_MOUSE_MOTION ||
             type == SPICE_MSGC_INPUTS_MOUSE_POSITION || type == SPICE_MSGC_INPUTS_MOUSE_PRESS ||
             type == SPICE_MSGC_INPUTS_MOUSE_RELEASE;
    case ChannelKind::Cursor:
      return false;
  }
  return false;
}

std::variant<ClientMessage, MessageFault> parseCommon(uint16_t type, wire::Reader& r) {
  switch (type) {
    case SPICE_MSGC_ACK_SYNC: {
      AckSync m{r.u32()};
      return checked(r, m);
    }
    case SPICE_MSGC_ACK:
      return ClientMessage{Ack{}};
    case SPICE_MSGC_PONG: {
      Pong m{r.u32()};
      r.u64();
      return checked(r, m);
    }
    case SPICE_MSGC_DISCONNECTING:
      return ClientMessage{ClientDisconnecting{}};
    default:
      // MIGRATE_FLUSH_MARK, MIGRATE_DATA: no migration here.
      return MessageFault::UnknownType;
  }
}

std::variant<ClientMessage, MessageFault> parseMain(uint16_t type, wire::Reader& r) {
  switch (type) {
    case SPICE_MSGC_MAIN_ATTACH_CHANNELS:
      return ClientMessage{AttachChannels{}};
    case SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST: {
      MouseModeRequest m{r.u16()};
      if (!r.ok())
        return MessageFault::Truncated;
      if (m.mode != SPICE_MOUSE_MODE_SERVER && m.mode != SPICE_MOUSE_MODE_CLIENT)
        return MessageFault::BadValue;
      return ClientMessage{m};
    }
    case SPICE_MSGC_MAIN_AGENT_START: {
      AgentStart m{r.u32()};
      return checked(r, m);
    }
    case SPICE_MSGC_MAIN_AGENT_DATA:
      return ClientMessage{AgentData{r.remaining()}};
    case SPICE_MSGC_MAIN_AGENT_TOKEN: {
      AgentToken m{r.u32()};
      return checked(r, m);
    }
  }
  return MessageFault::UnknownType;
}

std::variant<ClientMessage, MessageFault> parseDisplay(uint16_t type, wire::Reader& r) {
  switch (type) {
    case SPICE_MSGC_DISPLAY_INIT: {
      DisplayInit m;
      m.pixmapCacheId = r.u8();
      m.pixmapCacheSize = static_cast<int64_t>(r.u64());
      r.u8();   // glz_dictionary_id: spicebox sends no GLZ
      r.i32();  // glz_dictionary_window_size
      return checked(r, m);
    }
    case SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION: {
      PreferredCompression m{r.u8()};
      return checked(r, m);
    }
    case shm::MSGC_SHM_REPLY: {
      ShmReply m;
      m.segmentId = r.u32();
      const uint32_t accepted = r.u32();
      m.flags = r.u32();
      if (!r.ok())
        return MessageFault::Truncated;
      if (accepted > 1 || (m.flags & ~shm::REPLY_TEAR_FREE) != 0)
        return MessageFault::BadValue;
      m.accepted = accepted == 1;
      return ClientMessage{m};
    }
    case shm::MSGC_SHM_DAMAGE_HANDLED: {
      DamageHandled m{r.u64()};
      return checked(r, m);
    }
  }
  return MessageFault::UnknownType;
}

std::variant<ClientMessage, MessageFault> parseInputs(uint16_t type, wire::Reader& r) {
  switch (type) {
    case SPICE_MSGC_INPUTS_KEY_DOWN:
    case SPICE_MSGC_INPUTS_KEY_UP: {
      const uint32_t code = r.u32();
      if (!r.ok())
        return MessageFault::Truncated;
      const bool down = type == SPICE_MSGC_INPUTS_KEY_DOWN;
      auto make = makeCodeFromKeyMessage(code, down);
      if (!make)
        return MessageFault::BadValue;
      return ClientMessage{InputEvent{KeyEvent{*make, down}}};
    }
    case SPICE_MSGC_INPUTS_KEY_MODIFIERS: {
      KeyModifiers m{r.u16()};
      return checked(r, m);
    }
    case SPICE_MSGC_INPUTS_MOUSE_MOTION: {
      MouseMotion m;
      m.dx = r.i32();
      m.dy = r.i32();
      m.buttons = r.u16();
      if (!r.ok())
        return MessageFault::Truncated;
      if (m.dx < -MAX_MOTION || m.dx > MAX_MOTION || m.dy < -MAX_MOTION || m.dy > MAX_MOTION ||
          m.buttons >= BUTTONS_MASK_LIMIT)
        return MessageFault::BadValue;
      return ClientMessage{InputEvent{m}};
    }
    case SPICE_MSGC_INPUTS_MOUSE_POSITION: {
      MousePosition m;
      m.x = r.u32();
      m.y = r.u32();
      m.buttons = r.u16();
      m.displayId = r.u8();
      if (!r.ok())
        return MessageFault::Truncated;
      // x/y against the display's size and displayId against the monitor count: the server.
      if (m.buttons >= BUTTONS_MASK_LIMIT)
        return MessageFault::BadValue;
      return ClientMessage{InputEvent{m}};
    }
    case SPICE_MSGC_INPUTS_MOUSE_PRESS:
    case SPICE_MSGC_INPUTS_MOUSE_RELEASE: {
      MouseButton m;
      m.button = r.u8();
      m.buttons = r.u16();
      m.pressed = type == SPICE_MSGC_INPUTS_MOUSE_PRESS;
      if (!r.ok())
        return MessageFault::Truncated;
      if (m.button < SPICE_MOUSE_BUTTON_LEFT || m.button > SPICE_MOUSE_BUTTON_EXTRA ||
          m.buttons >= BUTTONS_MASK_LIMIT)
        return MessageFault::BadValue;
      return ClientMessage{InputEvent{m}};
    }
  }
  return MessageFault::UnknownType;
}

}  // namespace

uint32_t maxClientMessageSize(ChannelKind channel) {
  switch (channel) {
    case ChannelKind::Main:
      return MAX_AGENT_DATA + 64;
    case ChannelKind::Display:
    case ChannelKind::Inputs:
    case ChannelKind::Cursor:
      return 64;  // the largest fixed message (PONG, DISPLAY_INIT) is under 20 bytes
  }
  return 0;
}

std::string_view describe(MessageFault fault) {
  switch (fault) {
    case MessageFault::UnknownType:
      return "unknown message type";
    case MessageFault::WrongChannel:
      return "message type of another channel";
    case MessageFault::Truncated:
      return "message shorter than its fields";
    case MessageFault::BadValue:
      return "field out of range";
  }
  return "unknown";
}

std::optional<uint32_t> makeCodeFromKeyMessage(uint32_t code, bool down) {
  // spice-gtk sends the break code (make | 0x80) in KEY_UP; other clients may send the make
  // code there: both are taken. KEY_DOWN must carry a make code.
  uint32_t key = 0;
  uint32_t extended = 0;
  if (code <= 0xff) {
    key = code;
  } else if ((code & 0xff) == 0xe0 && code <= 0xffff) {
    key = code >> 8;
    extended = 0xe0;
  } else {
    return std::nullopt;
  }
  if (key & 0x80) {
    if (down)
      return std::nullopt;
    key &= 0x7f;
  }
  if (key == 0)
    return std::nullopt;
  return extended ? (extended | key << 8) : key;
}

std::variant<ClientMessage, MessageFault> parseClientMessage(ChannelKind channel, uint16_t type,
                                                             std::span<const uint8_t> body) {
  wire::Reader r(body);
  if (type < SPICE_MSG_BASE_LAST)
    return parseCommon(type, r);
  std::variant<ClientMessage, MessageFault> out = MessageFault::UnknownType;
  switch (channel) {
    case ChannelKind::Main:
      out = parseMain(type, r);
      break;
    case ChannelKind::Display:
      out = parseDisplay(type, r);
      break;
    case ChannelKind::Inputs:
      out = parseInputs(type, r);
      break;
    case ChannelKind::Cursor:
      break;
  }
  if (std::holds_alternative<MessageFault>(out) &&
      std::get<MessageFault>(out) == MessageFault::UnknownType) {
    for (ChannelKind other : {ChannelKind::Main, ChannelKind::Display, ChannelKind::Inputs})
      if (other != channel && knownOn(other, type))
        return MessageFault::WrongChannel;
  }
  return out;
}

// --- Server messages ---

namespace {

void putRect(wire::Writer& w, const Rect& r) {
  w.i32(r.top).i32(r.left).i32(r.bottom).i32(r.right);
}

// DisplayBase: surface 0, the box, and either no clip or the rects inline (ClipRects @to_ptr).
void putDisplayBase(wire::Writer& w, const Rect& box, std::span<const Rect> clipRects) {
  w.u32(0);
  putRect(w, box);
  if (clipRects.empty()) {
    w.u8(SPICE_CLIP_TYPE_NONE);
  } else {
    w.u8(SPICE_CLIP_TYPE_RECTS).u32(static_cast<uint32_t>(clipRects.size()));
    for (const Rect& r : clipRects)
      putRect(w, r);
  }
}

// QMask with no bitmap: flags, pos, a null Image pointer.
void putNoMask(wire::Writer& w) {
  w.u8(0).i32(0).i32(0).u32(0);
}

OutMessage make(uint16_t type, wire::Writer& w) {
  return {type, w.take()};
}

void putCursor(wire::Writer& w, const CursorState& c) {
  const bool shape = c.shapeSerial != 0 && c.width > 0 && c.height > 0 &&
                     c.pixels.size() == size_t{c.width} * c.height;
  if (!shape) {
    w.u16(SPICE_CURSOR_FLAGS_NONE);
    return;
  }
  w.u16(0);
  w.u64(c.shapeSerial).u8(SPICE_CURSOR_TYPE_ALPHA);
  w.u16(c.width).u16(c.height).u16(c.hotSpotX).u16(c.hotSpotY);
  for (uint32_t p : c.pixels)
    w.u32(p);
}

}  // namespace

OutMessage buildSetAck(uint32_t generation, uint32_t window) {
  wire::Writer w;
  w.u32(generation).u32(window);
  return make(SPICE_MSG_SET_ACK, w);
}

OutMessage buildPing(uint32_t id, uint64_t timestamp) {
  wire::Writer w;
  w.u32(id).u64(timestamp);
  return make(SPICE_MSG_PING, w);
}

OutMessage buildNotify(uint64_t timestamp, std::string_view text) {
  wire::Writer w;
  w.u64(timestamp).u32(SPICE_NOTIFY_SEVERITY_WARN).u32(SPICE_NOTIFY_VISIBILITY_HIGH);
  w.u32(SPICE_WARN_GENERAL).u32(static_cast<uint32_t>(text.size()));
  w.bytes({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  w.u8(0);  // spice-gtk prints the message as a C string
  return make(SPICE_MSG_NOTIFY, w);
}

OutMessage buildDisconnecting(uint64_t timestamp, uint32_t reason) {
  wire::Writer w;
  w.u64(timestamp).u32(reason);
  return make(SPICE_MSG_DISCONNECTING, w);
}

OutMessage buildMainInit(const MainInit& init) {
  wire::Writer w;
  w.u32(init.sessionId).u32(1);  // one display channel
  w.u32(SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT).u32(init.currentMouseMode);
  w.u32(0).u32(init.agentTokens).u32(init.multiMediaTime).u32(0);  // no agent; no RAM hint
  return make(SPICE_MSG_MAIN_INIT, w);
}

OutMessage buildChannelsList(std::span<const ChannelKind> channels) {
  wire::Writer w;
  w.u32(static_cast<uint32_t>(channels.size()));
  for (ChannelKind c : channels)
    w.u8(static_cast<uint8_t>(c)).u8(0);
  return make(SPICE_MSG_MAIN_CHANNELS_LIST, w);
}

OutMessage buildMouseMode(uint16_t current) {
  wire::Writer w;
  w.u16(SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT).u16(current);
  return make(SPICE_MSG_MAIN_MOUSE_MODE, w);
}

OutMessage buildMultiMediaTime(uint32_t time) {
  wire::Writer w;
  w.u32(time);
  return make(SPICE_MSG_MAIN_MULTI_MEDIA_TIME, w);
}

OutMessage buildAgentToken(uint32_t tokens) {
  wire::Writer w;
  w.u32(tokens);
  return make(SPICE_MSG_MAIN_AGENT_TOKEN, w);
}

OutMessage buildSurfaceCreate(uint32_t width, uint32_t height) {
  wire::Writer w;
  w.u32(0).u32(width).u32(height).u32(SPICE_SURFACE_FMT_32_xRGB).u32(SPICE_SURFACE_FLAGS_PRIMARY);
  return make(SPICE_MSG_DISPLAY_SURFACE_CREATE, w);
}

OutMessage buildShmOffer(uint32_t segmentId, uint64_t size, uint32_t flags) {
  wire::Writer w;
  w.u32(segmentId).u64(size).u32(flags);
  return make(shm::MSG_SHM_OFFER, w);
}

OutMessage buildSurfaceCreateShm(uint32_t width, uint32_t height, uint32_t segmentId,
                                 uint64_t offset, uint32_t stride) {
  wire::Writer w;
  w.u32(0).u32(width).u32(height).u32(SPICE_SURFACE_FMT_32_xRGB).u32(SPICE_SURFACE_FLAGS_PRIMARY);
  w.u32(segmentId).u64(offset).u32(stride);
  return make(shm::MSG_SURFACE_CREATE_SHM, w);
}

OutMessage buildShmDamage(uint64_t offset, uint64_t frame, std::span<const Rect> rects) {
  wire::Writer w;
  w.u32(0).u64(offset).u64(frame).u32(static_cast<uint32_t>(rects.size()));
  for (const Rect& r : rects)
    w.i32(r.top).i32(r.left).i32(r.bottom).i32(r.right);
  return make(shm::MSG_SHM_DAMAGE, w);
}

OutMessage buildSurfaceDestroy() {
  wire::Writer w;
  w.u32(0);
  return make(SPICE_MSG_DISPLAY_SURFACE_DESTROY, w);
}

OutMessage buildMonitorsConfig(uint32_t width, uint32_t height) {
  wire::Writer w;
  w.u16(1).u16(1);
  w.u32(0).u32(0).u32(width).u32(height).u32(0).u32(0).u32(0);  // id, surface, size, x, y, flags
  return make(SPICE_MSG_DISPLAY_MONITORS_CONFIG, w);
}

OutMessage buildMark() {
  return {SPICE_MSG_DISPLAY_MARK, {}};
}

OutMessage buildDisplayReset() {
  return {SPICE_MSG_DISPLAY_RESET, {}};
}

OutMessage buildDrawFill(uint32_t color, std::span<const Rect> rects) {
  Rect box = rects.empty() ? Rect{} : rects[0];
  for (const Rect& r : rects) {
    box.top = std::min(box.top, r.top);
    box.left = std::min(box.left, r.left);
    box.bottom = std::max(box.bottom, r.bottom);
    box.right = std::max(box.right, r.right);
  }
  wire::Writer w;
  putDisplayBase(w, box, rects);
  w.u8(SPICE_BRUSH_TYPE_SOLID).u32(color).u16(SPICE_ROPD_OP_PUT);
  putNoMask(w);
  return make(SPICE_MSG_DISPLAY_DRAW_FILL, w);
}

OutMessage buildCopyBits(const Rect& dest, int32_t srcX, int32_t srcY) {
  wire::Writer w;
  putDisplayBase(w, dest, {});
  w.i32(srcX).i32(srcY);
  return make(SPICE_MSG_DISPLAY_COPY_BITS, w);
}

namespace {

// DRAW_COPY up to its image: the base, src_bitmap pointing just past the fixed fields (offsets
// count from the body's start), src_area = the whole width x height image, OP_PUT, no mask.
void putDrawCopyHead(wire::Writer& w, const Rect& box, uint32_t width, uint32_t height) {
  putDisplayBase(w, box, {});
  const size_t imagePointer = w.size();
  w.u32(0);  // src_bitmap: patched below
  putRect(w, Rect{0, 0, static_cast<int32_t>(height), static_cast<int32_t>(width)});
  w.u16(SPICE_ROPD_OP_PUT).u8(SPICE_IMAGE_SCALE_MODE_NEAREST);  // spice.proto: rop, then scale
  putNoMask(w);
  w.patchU32(imagePointer, static_cast<uint32_t>(w.size()));
}

}  // namespace

OutMessage buildDrawCopy(const Rect& box, const EncodedImage& image, uint64_t imageId,
                         bool cacheMe) {
  wire::Writer w(64 + image.data.size());
  putDrawCopyHead(w, box, image.width, image.height);
  // ImageDescriptor: id, type, flags, width, height.
  uint8_t type = SPICE_IMAGE_TYPE_BITMAP;
  if (image.encoding == ImageEncoding::Lz4)
    type = SPICE_IMAGE_TYPE_LZ4;
  else if (image.encoding == ImageEncoding::LzRgb)
    type = SPICE_IMAGE_TYPE_LZ_RGB;
  const uint8_t flags = cacheMe ? SPICE_IMAGE_FLAGS_CACHE_ME : 0;
  w.u64(imageId).u8(type).u8(flags).u32(image.width).u32(image.height);
  if (image.encoding == ImageEncoding::Bitmap) {
    // BitmapData: format, flags, x, y, stride, a null palette pointer, then the rows.
    w.u8(SPICE_BITMAP_FMT_32BIT).u8(SPICE_BITMAP_FLAGS_TOP_DOWN);
    w.u32(image.width).u32(image.height).u32(image.width * 4).u32(0);
  } else {
    w.u32(static_cast<uint32_t>(image.data.size()));  // LZ4Data / LZData data_size
  }
  w.bytes(image.data);
  return make(SPICE_MSG_DISPLAY_DRAW_COPY, w);
}

OutMessage buildDrawCopyFromCache(const Rect& box, uint64_t imageId) {
  const auto width = static_cast<uint32_t>(box.right - box.left);
  const auto height = static_cast<uint32_t>(box.bottom - box.top);
  wire::Writer w(96);
  putDrawCopyHead(w, box, width, height);
  // A descriptor alone: the client takes the pixels from its cache.
  w.u64(imageId).u8(SPICE_IMAGE_TYPE_FROM_CACHE).u8(0).u32(width).u32(height);
  return make(SPICE_MSG_DISPLAY_DRAW_COPY, w);
}

OutMessage buildInvalList(std::span<const uint64_t> pixmapIds) {
  SB_ASSERT(!pixmapIds.empty() && pixmapIds.size() <= MAX_INVAL_IDS, "{} ids", pixmapIds.size());
  wire::Writer w(2 + 9 * pixmapIds.size());
  w.u16(static_cast<uint16_t>(pixmapIds.size()));
  for (uint64_t id : pixmapIds)
    w.u8(SPICE_RES_TYPE_PIXMAP).u64(id);  // ResourceID: type, id (packed)
  return make(SPICE_MSG_DISPLAY_INVAL_LIST, w);
}

OutMessage buildInvalAllPixmaps() {
  wire::Writer w;
  w.u8(0);  // wait_count: no WaitForChannel entries
  return make(SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS, w);
}

OutMessage buildCursorInit(const CursorState& cursor) {
  wire::Writer w;
  w.i16(cursor.x).i16(cursor.y).u16(0).u16(0).u8(cursor.visible ? 1 : 0);
  putCursor(w, cursor);
  return make(SPICE_MSG_CURSOR_INIT, w);
}

OutMessage buildCursorSet(const CursorState& cursor) {
  wire::Writer w;
  w.i16(cursor.x).i16(cursor.y).u8(cursor.visible ? 1 : 0);
  putCursor(w, cursor);
  return make(SPICE_MSG_CURSOR_SET, w);
}

OutMessage buildCursorMove(int16_t x, int16_t y) {
  wire::Writer w;
  w.i16(x).i16(y);
  return make(SPICE_MSG_CURSOR_MOVE, w);
}

OutMessage buildCursorHide() {
  return {SPICE_MSG_CURSOR_HIDE, {}};
}

OutMessage buildInputsInit(uint16_t modifiers) {
  wire::Writer w;
  w.u16(modifiers);
  return make(SPICE_MSG_INPUTS_INIT, w);
}

OutMessage buildMotionAck() {
  return {SPICE_MSG_INPUTS_MOUSE_MOTION_ACK, {}};
}

}  // namespace spicebox::netproxy
