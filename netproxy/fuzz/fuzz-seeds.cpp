// Runs in: netproxy-fuzz-regression-tests. Input: none.
#include "netproxy/fuzz/fuzz-seeds.h"

#include <spice/enums.h>
#include <spice/protocol.h>

#include "base/shm-protocol.h"
#include "netproxy/fuzz/fuzz-stream.h"
#include "netproxy/link.h"
#include "netproxy/wire.h"

namespace spicebox::netproxy::fuzz {

namespace {

// Any non-zero id: a secondary channel names its main channel's session.
constexpr uint32_t SESSION_ID = 0x5eed0001;

struct Message {
  std::string name;
  uint16_t type = 0;
  std::vector<uint8_t> body;
};

Message message(std::string name, uint16_t type, std::vector<uint8_t> body = {}) {
  return {std::move(name), type, std::move(body)};
}

std::vector<Message> commonMessages() {
  return {
      message("ack-sync", SPICE_MSGC_ACK_SYNC, wire::Writer().u32(1).take()),
      message("ack", SPICE_MSGC_ACK),
      message("pong", SPICE_MSGC_PONG, wire::Writer().u32(1).u64(1'000'000).take()),
      message("disconnecting", SPICE_MSGC_DISCONNECTING,
              wire::Writer().u64(1'000'000).u32(SPICE_LINK_ERR_OK).take()),
  };
}

std::vector<Message> channelMessages(ChannelKind channel) {
  switch (channel) {
    case ChannelKind::Main: {
      // A VDAgentMessage: protocol 1, type 2 (VD_AGENT_MONITORS_CONFIG), opaque, 4 bytes of data.
      wire::Writer agent;
      agent.u32(1).u32(2).u64(0).u32(4).u8('f').u8('u').u8('z').u8('z');
      return {
          message("attach-channels", SPICE_MSGC_MAIN_ATTACH_CHANNELS),
          message("mouse-mode-request", SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST,
                  wire::Writer().u16(SPICE_MOUSE_MODE_CLIENT).take()),
          message("agent-start", SPICE_MSGC_MAIN_AGENT_START, wire::Writer().u32(10).take()),
          message("agent-data", SPICE_MSGC_MAIN_AGENT_DATA, agent.take()),
          message("agent-token", SPICE_MSGC_MAIN_AGENT_TOKEN, wire::Writer().u32(5).take()),
      };
    }
    case ChannelKind::Display:
      return {
          // spice-gtk's: pixmap cache 0 of 80 Mi pixels, GLZ dictionary 0 of 16 Mi pixels.
          message("display-init", SPICE_MSGC_DISPLAY_INIT,
                  wire::Writer().u8(0).u64(80ull << 20).u8(0).i32(16 << 20).take()),
          message("preferred-compression", SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION,
                  wire::Writer().u8(SPICE_IMAGE_COMPRESSION_LZ4).take()),
          message("shm-reply", shm::MSGC_SHM_REPLY,
                  wire::Writer().u32(1).u32(1).u32(shm::REPLY_TEAR_FREE).take()),
          message("shm-damage-handled", shm::MSGC_SHM_DAMAGE_HANDLED, wire::Writer().u64(1).take()),
      };
    case ChannelKind::Inputs:
      return {
          message("key-down", SPICE_MSGC_INPUTS_KEY_DOWN, wire::Writer().u32(0x1e).take()),
          message("key-up", SPICE_MSGC_INPUTS_KEY_UP, wire::Writer().u32(0x9e).take()),
          message("key-down-extended", SPICE_MSGC_INPUTS_KEY_DOWN,
                  wire::Writer().u32(0x48e0).take()),
          message("key-up-extended", SPICE_MSGC_INPUTS_KEY_UP, wire::Writer().u32(0xc8e0).take()),
          message("key-modifiers", SPICE_MSGC_INPUTS_KEY_MODIFIERS,
                  wire::Writer().u16(SPICE_KEYBOARD_MODIFIER_FLAGS_NUM_LOCK).take()),
          message("mouse-motion", SPICE_MSGC_INPUTS_MOUSE_MOTION,
                  wire::Writer().i32(-5).i32(7).u16(SPICE_MOUSE_BUTTON_MASK_LEFT).take()),
          message("mouse-position", SPICE_MSGC_INPUTS_MOUSE_POSITION,
                  wire::Writer().u32(320).u32(200).u16(0).u8(0).take()),
          message(
              "mouse-press", SPICE_MSGC_INPUTS_MOUSE_PRESS,
              wire::Writer().u8(SPICE_MOUSE_BUTTON_LEFT).u16(SPICE_MOUSE_BUTTON_MASK_LEFT).take()),
          message("mouse-release", SPICE_MSGC_INPUTS_MOUSE_RELEASE,
                  wire::Writer().u8(SPICE_MOUSE_BUTTON_LEFT).u16(0).take()),
      };
    case ChannelKind::Cursor:
      return {};
  }
  return {};
}

std::string channelName(ChannelKind channel) {
  switch (channel) {
    case ChannelKind::Main:
      return "main";
    case ChannelKind::Display:
      return "display";
    case ChannelKind::Inputs:
      return "inputs";
    case ChannelKind::Cursor:
      return "cursor";
  }
  return "unknown";
}

// The selector byte feedMessagesInput maps to `channel`.
uint8_t selectorOf(ChannelKind channel) {
  for (uint8_t s = 0; s < 4; ++s)
    if (channelOfSelector(s) == channel)
      return s;
  return 0;
}

void append(std::vector<uint8_t>& out, const std::vector<uint8_t>& bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

// The channel's messages, then the common ones, each framed.
std::vector<uint8_t> session(ChannelKind channel, bool mini) {
  std::vector<uint8_t> out;
  uint64_t serial = 1;
  auto all = channelMessages(channel);
  for (auto& m : commonMessages())
    all.push_back(std::move(m));
  for (const auto& m : all)
    append(out, wire::frameMessage(mini, serial++, m.type, m.body));
  return out;
}

// SpiceLinkHeader + SpiceLinkMess as spice-gtk sends them.
std::vector<uint8_t> linkStage(ChannelKind channel, const std::vector<uint32_t>& commonCaps,
                               const std::vector<uint32_t>& channelCaps) {
  wire::Writer mess;
  mess.u32(channel == ChannelKind::Main ? 0 : SESSION_ID);
  mess.u8(static_cast<uint8_t>(channel)).u8(0);
  mess.u32(static_cast<uint32_t>(commonCaps.size())).u32(static_cast<uint32_t>(channelCaps.size()));
  mess.u32(LINK_MESS_FIXED_SIZE);
  for (uint32_t c : commonCaps)
    mess.u32(c);
  for (uint32_t c : channelCaps)
    mess.u32(c);
  wire::Writer out;
  out.u32(SPICE_MAGIC).u32(SPICE_VERSION_MAJOR).u32(SPICE_VERSION_MINOR);
  out.u32(static_cast<uint32_t>(mess.size()));
  out.bytes(mess.data());
  return out.take();
}

// An encrypted ticket is 128 bytes; these never decrypt (the key is made at run time).
std::vector<uint8_t> ticket() {
  std::vector<uint8_t> out(TICKET_SIZE);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(i * 37 + 11);
  return out;
}

Seed linkSeed(std::string name, bool ticketing, ChannelKind channel, bool modernClient,
              std::vector<uint32_t> channelCaps) {
  std::vector<uint32_t> common;
  if (modernClient) {
    setCap(common, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    setCap(common, SPICE_COMMON_CAP_AUTH_SPICE);
    setCap(common, SPICE_COMMON_CAP_MINI_HEADER);
  }
  std::vector<uint8_t> bytes{ticketing ? LINK_TICKETING : uint8_t{0}};
  append(bytes, linkStage(channel, common, channelCaps));
  if (modernClient) {
    wire::Writer mechanism;
    mechanism.u32(SPICE_COMMON_CAP_AUTH_SPICE);
    append(bytes, mechanism.take());
  }
  append(bytes, ticket());
  if (!ticketing)
    append(bytes, session(channel, modernClient));
  return {"link", std::move(name), std::move(bytes)};
}

}  // namespace

std::vector<Seed> makeSeeds() {
  std::vector<Seed> out;
  std::vector<uint32_t> displayCaps;
  setCap(displayCaps, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
  setCap(displayCaps, SPICE_DISPLAY_CAP_LZ4_COMPRESSION);
  setCap(displayCaps, shm::CAP_SHARED_MEMORY);
  setCap(displayCaps, shm::CAP_TEAR_FREE);

  out.push_back(linkSeed("main-ticket.bin", true, ChannelKind::Main, true, {}));
  out.push_back(linkSeed("main-no-ticketing.bin", false, ChannelKind::Main, true, {}));
  out.push_back(
      linkSeed("display-shm-tear-free.bin", false, ChannelKind::Display, true, displayCaps));
  out.push_back(
      linkSeed("display-old-client-full-header.bin", false, ChannelKind::Display, false, {}));
  out.push_back(linkSeed("inputs.bin", false, ChannelKind::Inputs, true, {}));
  out.push_back(linkSeed("cursor.bin", false, ChannelKind::Cursor, true, {}));

  for (ChannelKind channel :
       {ChannelKind::Main, ChannelKind::Display, ChannelKind::Inputs, ChannelKind::Cursor}) {
    const std::string prefix = channelName(channel) + "-";
    auto all = channelMessages(channel);
    for (auto& m : commonMessages())
      all.push_back(std::move(m));
    for (const auto& m : all) {
      std::vector<uint8_t> bytes{selectorOf(channel), MESSAGES_MINI_HEADER};
      append(bytes, wire::frameMessage(true, 1, m.type, m.body));
      out.push_back({"messages", prefix + m.name + ".bin", std::move(bytes)});
    }
    std::vector<uint8_t> bytes{selectorOf(channel), 0};
    append(bytes, session(channel, false));
    out.push_back({"messages", prefix + "session-full-header.bin", std::move(bytes)});
  }
  return out;
}

}  // namespace spicebox::netproxy::fuzz
