// Runs in: netproxy (sandboxed). Input: message bodies from SPICE clients (hostile: each parser
// checks the body's length and every value's range, and names the fault); the builders' inputs
// come from the server (trusted).
//
// The data messages after the link stage: what clients send, parsed into typed messages, and
// the server messages spicebox sends, marshalled (layouts from spice-common's spice.proto).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "netproxy/image-encode.h"
#include "netproxy/server.h"

namespace spicebox::netproxy {

enum class ChannelKind : uint8_t {
  Main = 1,
  Display = 2,
  Inputs = 3,
  Cursor = 4
};  // SPICE numbers

// The largest body a client may send on each channel. Main: agent data is at most 2048 bytes
// (VD_AGENT_MAX_DATA_SIZE) plus its header; everything else is a few fixed fields.
uint32_t maxClientMessageSize(ChannelKind channel);

struct AckSync {
  uint32_t generation = 0;
};
struct Ack {};
struct Pong {
  uint32_t id = 0;
};
struct ClientDisconnecting {};
struct AttachChannels {};
struct MouseModeRequest {
  uint16_t mode = 0;  // SPICE_MOUSE_MODE_SERVER or _CLIENT (checked)
};
struct AgentStart {
  uint32_t tokens = 0;
};
struct AgentData {
  size_t size = 0;  // discarded: no agent is attached
};
struct AgentToken {
  uint32_t tokens = 0;
};
struct DisplayInit {
  uint8_t pixmapCacheId = 0;
  int64_t pixmapCacheSize = 0;  // in pixels (spice-gtk's unit)
};
struct PreferredCompression {
  uint8_t mode = 0;
};
struct KeyModifiers {
  uint16_t modifiers = 0;
};
// The shared-memory extension (base/shm-protocol.h): the answer to SHM_OFFER, and a tear-free
// client's acknowledgement of a SHM_DAMAGE.
struct ShmReply {
  uint32_t segmentId = 0;
  bool accepted = false;  // the field is 0 or 1 (checked)
  uint32_t flags = 0;     // only shm::REPLY_TEAR_FREE may be set (checked)
};
struct DamageHandled {
  uint64_t frame = 0;
};
using ClientMessage =
    std::variant<AckSync, Ack, Pong, ClientDisconnecting, AttachChannels, MouseModeRequest,
                 AgentStart, AgentData, AgentToken, DisplayInit, PreferredCompression, KeyModifiers,
                 InputEvent, ShmReply, DamageHandled>;

enum class MessageFault {
  UnknownType,   // no such client message on this channel (or one spicebox does not take)
  WrongChannel,  // a message type of another channel
  Truncated,     // body shorter than the message's fixed fields
  BadValue,      // a field out of its range (scancode, button, motion, mouse mode)
};
std::string_view describe(MessageFault fault);

std::variant<ClientMessage, MessageFault> parseClientMessage(ChannelKind channel, uint16_t type,
                                                             std::span<const uint8_t> body);

// KEY_DOWN / KEY_UP codes as spice-gtk sends them (spice_make_scancode): 0x01..0x7f (up: |0x80)
// or 0xe0 | code << 8 (up: code | 0x80). The make code the broker wants, or nullopt.
std::optional<uint32_t> makeCodeFromKeyMessage(uint32_t code, bool down);

// A server message ready for framing.
struct OutMessage {
  uint16_t type = 0;
  std::vector<uint8_t> body;
};

OutMessage buildSetAck(uint32_t generation, uint32_t window);
OutMessage buildPing(uint32_t id, uint64_t timestamp);
OutMessage buildNotify(uint64_t timestamp, std::string_view text);
OutMessage buildDisconnecting(uint64_t timestamp, uint32_t reason);

struct MainInit {
  uint32_t sessionId = 0;
  uint32_t currentMouseMode = 0;
  uint32_t agentTokens = 0;
  uint32_t multiMediaTime = 0;
};
OutMessage buildMainInit(const MainInit& init);
OutMessage buildChannelsList(std::span<const ChannelKind> channels);  // channel id 0 each
OutMessage buildMouseMode(uint16_t current);
OutMessage buildMultiMediaTime(uint32_t time);
OutMessage buildAgentToken(uint32_t tokens);

OutMessage buildSurfaceCreate(uint32_t width, uint32_t height);  // the primary, surface 0
OutMessage buildSurfaceDestroy();
OutMessage buildMonitorsConfig(uint32_t width, uint32_t height);
OutMessage buildMark();
// The display is gone (the guest reset or destroyed it): the client clears its picture and forgets
// its palettes; a MARK follows the next picture.
OutMessage buildDisplayReset();
// SOLID brush, OP_PUT, `rects` as the clip (the box is their bounding box). 1..MAX_FILL_RECTS.
constexpr size_t MAX_FILL_RECTS = 256;
OutMessage buildDrawFill(uint32_t color, std::span<const Rect> rects);
OutMessage buildCopyBits(const Rect& dest, int32_t srcX, int32_t srcY);
// The image at (box.left, box.top), box's size = image's size. `imageId` is the image
// descriptor's id (unique per image sent). With `cacheMe` (SPICE_IMAGE_FLAGS_CACHE_ME) the client
// keeps the decoded image under `imageId` in its pixmap cache until INVAL_LIST or
// INVAL_ALL_PIXMAPS drops it (see image-cache.h).
OutMessage buildDrawCopy(const Rect& box, const EncodedImage& image, uint64_t imageId,
                         bool cacheMe = false);
// The image the client cached under `imageId` (SPICE_IMAGE_TYPE_FROM_CACHE, no pixel data), at
// (box.left, box.top); box's size is the cached image's size.
OutMessage buildDrawCopyFromCache(const Rect& box, uint64_t imageId);
// INVAL_LIST: the client drops these pixmap ids (SPICE_RES_TYPE_PIXMAP) from its cache. The count
// is a uint16: 1 .. MAX_INVAL_IDS ids (the caller splits longer lists).
constexpr size_t MAX_INVAL_IDS = 65535;
OutMessage buildInvalList(std::span<const uint64_t> pixmapIds);
// INVAL_ALL_PIXMAPS with no channel to wait for (spicebox has one display channel per client).
OutMessage buildInvalAllPixmaps();

// The shared-memory extension (layouts in base/shm-protocol.h and docs/protocol.md). The offer's
// descriptor is attached by the server when it writes the message.
OutMessage buildShmOffer(uint32_t segmentId, uint64_t size, uint32_t flags);
OutMessage buildSurfaceCreateShm(uint32_t width, uint32_t height, uint32_t segmentId,
                                 uint64_t offset, uint32_t stride);
// 0 .. shm::MAX_DAMAGE_RECTS rects.
OutMessage buildShmDamage(uint64_t offset, uint64_t frame, std::span<const Rect> rects);

OutMessage buildCursorInit(const CursorState& cursor);
OutMessage buildCursorSet(const CursorState& cursor);
OutMessage buildCursorMove(int16_t x, int16_t y);
OutMessage buildCursorHide();

OutMessage buildInputsInit(uint16_t modifiers);
OutMessage buildMotionAck();

}  // namespace spicebox::netproxy
