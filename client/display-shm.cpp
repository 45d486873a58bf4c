// Runs in: SPICE clients. Input: spicebox's shared-memory display messages (base/shm-protocol.h,
// docs/protocol.md) from a SPICE server, untrusted: every message has its exact size checked, a
// descriptor must come with SHM_OFFER and with nothing else (Channel::takeDescriptor), the
// segment is checked before it is mapped (client/shm-segment.h), every buffer a message names is
// checked to lie inside the mapping, and damage rectangles are clipped to the surface. A
// violation closes the display channel with the reason; an unusable segment offered first is
// answered accepted=0 with the reason logged, and the ordinary display goes on.
#include <spdlog/spdlog.h>
#include <spice/enums.h>
#include <spice/protocol.h>

#include "base/shm-protocol.h"
#include "client/spice-client.h"

namespace spicebox::client {

void addShmCaps(std::vector<uint32_t>& caps, ShmWish wish) {
  if (wish == ShmWish::Off)
    return;
  setCap(caps, shm::CAP_SHARED_MEMORY);
  if (wish == ShmWish::TearFree)
    setCap(caps, shm::CAP_TEAR_FREE);
}

namespace {

// Messages that carry pictures other than through the segment: a server in shared-memory mode
// sends none of them (docs/protocol.md), so one means the two sides disagree about the mode.
bool drawsOutsideSegment(uint16_t type) {
  switch (type) {
    case SPICE_MSG_DISPLAY_COPY_BITS:
    case SPICE_MSG_DISPLAY_STREAM_CREATE:
    case SPICE_MSG_DISPLAY_STREAM_DATA:
    case SPICE_MSG_DISPLAY_STREAM_DATA_SIZED:
    case SPICE_MSG_DISPLAY_DRAW_COMPOSITE:
      return true;
    default:
      // Every DRAW_* from FILL to ALPHA_BLEND, and SURFACE_CREATE right after them.
      return type >= SPICE_MSG_DISPLAY_DRAW_FILL && type <= SPICE_MSG_DISPLAY_SURFACE_CREATE;
  }
}

// Whether a width x height picture with `stride` starting at `offset` lies inside `size` bytes:
// offset + (height - 1) * stride + width * 4 <= size, in 64-bit arithmetic that cannot overflow
// (stride < 2^32, height <= MAX_SURFACE_SIDE).
bool fitsIn(uint64_t size, uint64_t offset, uint32_t width, uint32_t height, uint32_t stride) {
  uint64_t span = uint64_t{height - 1} * stride + uint64_t{width} * 4;
  return offset <= size && span <= size - offset;
}

}  // namespace

Error DisplayChannel::handleShm(uint16_t type, std::span<const uint8_t> body, bool* handled) {
  *handled = true;
  switch (type) {
    case shm::MSG_SHM_OFFER:
      return shmOffer(body);
    case shm::MSG_SURFACE_CREATE_SHM:
      return shmSurfaceCreate(body);
    case shm::MSG_SHM_DAMAGE:
      return shmDamage(body);
    default:
      break;
  }
  if (shmActive_ && drawsOutsideSegment(type))
    return "message type " + std::to_string(type) +
           " in shared-memory mode, where the server sends pictures only through the segment";
  *handled = false;
  return std::nullopt;
}

Error DisplayChannel::shmReply(uint32_t segmentId, bool accepted, uint32_t flags) {
  Writer w;
  w.u32(segmentId).u32(accepted ? 1 : 0).u32(flags);
  return send(shm::MSGC_SHM_REPLY, w.data(), Clock::now() + std::chrono::seconds(10));
}

Error DisplayChannel::shmOffer(std::span<const uint8_t> body) {
  ++shm_.offers;
  // Taken first: whatever is refused below, the descriptor is closed, never left waiting.
  base::Fd fd = takeDescriptor();
  Reader r(body);
  uint32_t segmentId = r.u32();
  uint64_t size = r.u64();
  uint32_t flags = r.u32();
  if (body.size() != shm::SHM_OFFER_SIZE)
    return "SHM_OFFER of " + std::to_string(body.size()) + " bytes (it has exactly " +
           std::to_string(shm::SHM_OFFER_SIZE) + ")";
  if (!fd)
    return std::string(
        "SHM_OFFER without a descriptor (exactly one must be attached to its first byte)");

  if (shmActive_) {
    // A new primary's segment (after SURFACE_DESTROY): no reply; the old mapping goes.
    auto mapped = ShmSegment::map(std::move(fd), size);
    if (auto* err = std::get_if<std::string>(&mapped))
      return "the server's new segment " + std::to_string(segmentId) + " is unusable: " + *err;
    segment_ = std::move(std::get<ShmSegment>(mapped));
    segmentId_ = segmentId;
    shmSurface_.reset();
    ++shm_.segments;
    return std::nullopt;
  }

  auto refuse = [&](std::string why) -> Error {
    spdlog::warn("client: answering the shared-memory offer of segment {} with accepted=0: {}",
                 segmentId, why);
    shmRefusal_ = std::move(why);
    ++shm_.refused;
    return shmReply(segmentId, false, 0);
  };
  if (shmWish_ == ShmWish::Off)
    return refuse("this client did not advertise CAP_SHARED_MEMORY, yet the server offered");
  if (shmWish_ == ShmWish::Reject)
    return refuse("this client was asked to refuse shared memory");
  auto mapped = ShmSegment::map(std::move(fd), size);
  if (auto* err = std::get_if<std::string>(&mapped))
    return refuse(*err);
  segment_ = std::move(std::get<ShmSegment>(mapped));
  if (segment_->writable())
    spdlog::warn(
        "client: segment {} came with a writable descriptor (the extension hands out "
        "read-only ones); mapped read-only all the same",
        segmentId);
  segmentId_ = segmentId;
  ++shm_.segments;
  shmActive_ = true;
  tearFree_ = shmWish_ == ShmWish::TearFree && (flags & shm::OFFER_TEAR_FREE);
  if (shmWish_ == ShmWish::TearFree && !tearFree_)
    spdlog::info("client: the server does not offer tear-free updates; frames go unacknowledged");
  // From here on the picture comes only through the segment.
  surfaces_.clear();
  surfacePixels_ = 0;
  primaryId_.reset();
  return shmReply(segmentId, true, tearFree_ ? shm::REPLY_TEAR_FREE : 0);
}

Error DisplayChannel::shmSurfaceCreate(std::span<const uint8_t> body) {
  if (!shmActive_)
    return std::string("SURFACE_CREATE_SHM, but this client accepted no shared-memory offer");
  Reader r(body);
  uint32_t id = r.u32();
  uint32_t width = r.u32();
  uint32_t height = r.u32();
  uint32_t format = r.u32();
  uint32_t flags = r.u32();
  uint32_t segmentId = r.u32();
  uint64_t offset = r.u64();
  uint32_t stride = r.u32();
  if (body.size() != shm::SURFACE_CREATE_SHM_SIZE)
    return "SURFACE_CREATE_SHM of " + std::to_string(body.size()) + " bytes (it has exactly " +
           std::to_string(shm::SURFACE_CREATE_SHM_SIZE) + ")";
  if (!segment_ || segmentId != segmentId_)
    return "SURFACE_CREATE_SHM names segment " + std::to_string(segmentId) +
           (segment_ ? ", the one offered is " + std::to_string(segmentId_)
                     : ", but no segment is mapped");
  if (width == 0 || height == 0 || width > MAX_SURFACE_SIDE || height > MAX_SURFACE_SIDE)
    return "SURFACE_CREATE_SHM of " + std::to_string(width) + " x " + std::to_string(height) +
           " (each side 1.." + std::to_string(MAX_SURFACE_SIDE) + ")";
  if (format != SPICE_SURFACE_FMT_32_xRGB)
    return "SURFACE_CREATE_SHM with format " + std::to_string(format) +
           " (the extension's pictures are SPICE_SURFACE_FMT_32_xRGB)";
  if (!(flags & SPICE_SURFACE_FLAGS_PRIMARY))
    return std::string("SURFACE_CREATE_SHM without the PRIMARY flag (only primaries are shared)");
  if (stride / 4 < width)
    return "SURFACE_CREATE_SHM stride " + std::to_string(stride) + " is shorter than a row of " +
           std::to_string(width) + " pixels";
  if (!fitsIn(segment_->bytes().size(), offset, width, height, stride))
    return "SURFACE_CREATE_SHM places " + std::to_string(width) + " x " + std::to_string(height) +
           " (stride " + std::to_string(stride) + ") at offset " + std::to_string(offset) +
           ", beyond the " + std::to_string(segment_->bytes().size()) + "-byte segment";
  surfaces_.clear();
  surfacePixels_ = 0;
  if (Error err = reserveSurface(id, width, height))
    return "SURFACE_CREATE_SHM: " + *err;
  surfaces_[id] = Canvas(width, height);
  primaryId_ = id;
  shmSurface_ = ShmSurface{id, width, height, stride, offset};
  damage_.clear();  // the new picture arrives with the first SHM_DAMAGE
  ++shm_.surfaces;
  ++display_.surfaceCreates;
  return std::nullopt;
}

Error DisplayChannel::shmDamage(std::span<const uint8_t> body) {
  if (!shmActive_)
    return std::string("SHM_DAMAGE, but this client accepted no shared-memory offer");
  Reader r(body);
  uint32_t id = r.u32();
  uint64_t offset = r.u64();
  uint64_t frame = r.u64();
  uint32_t count = r.u32();
  if (r.failed())
    return "SHM_DAMAGE of " + std::to_string(body.size()) + " bytes (its header has " +
           std::to_string(shm::SHM_DAMAGE_HEADER_SIZE) + ")";
  if (count > shm::MAX_DAMAGE_RECTS)
    return "SHM_DAMAGE with " + std::to_string(count) + " rectangles (at most " +
           std::to_string(shm::MAX_DAMAGE_RECTS) + ")";
  if (body.size() != shm::SHM_DAMAGE_HEADER_SIZE + size_t{count} * shm::SHM_RECT_SIZE)
    return "SHM_DAMAGE of " + std::to_string(body.size()) + " bytes for " + std::to_string(count) +
           " rectangles (it has " +
           std::to_string(shm::SHM_DAMAGE_HEADER_SIZE + size_t{count} * shm::SHM_RECT_SIZE) + ")";
  if (!shmSurface_ || id != shmSurface_->id)
    return "SHM_DAMAGE for surface " + std::to_string(id) +
           (shmSurface_ ? ", the shared one is " + std::to_string(shmSurface_->id)
                        : ", before SURFACE_CREATE_SHM");
  if (frame <= lastFrame_)
    return "SHM_DAMAGE frame " + std::to_string(frame) + " after frame " +
           std::to_string(lastFrame_) + " (frames increase)";
  const ShmSurface& s = *shmSurface_;
  auto bytes = segment_->bytes();
  if (!fitsIn(bytes.size(), offset, s.width, s.height, s.stride))
    return "SHM_DAMAGE names a buffer at offset " + std::to_string(offset) + " for " +
           std::to_string(s.width) + " x " + std::to_string(s.height) + " (stride " +
           std::to_string(s.stride) + "), beyond the " + std::to_string(bytes.size()) +
           "-byte segment";
  Canvas& canvas = surfaces_.at(s.id);
  auto picture = bytes.subspan(offset);
  Rect whole{0, 0, static_cast<int32_t>(s.height), static_cast<int32_t>(s.width)};
  frameRects_.clear();
  for (uint32_t i = 0; i < count; ++i) {
    Rect rect;
    rect.top = r.i32();
    rect.left = r.i32();
    rect.bottom = r.i32();
    rect.right = r.i32();
    Rect clipped = intersect(rect, whole);
    if (clipped.empty())
      continue;  // outside the surface, or inverted: nothing to copy
    frameRects_.push_back(clipped);
    noteDamage(s.id, clipped);
    if (!shmCopy_)
      continue;
    canvas.load(clipped, picture, s.stride);  // cannot fail: fitsIn checked the geometry
    shm_.bytesCopied += uint64_t(clipped.right - clipped.left) * 4 * (clipped.bottom - clipped.top);
  }
  shmSurface_->offset = offset;
  lastFrame_ = frame;
  ++shm_.frames;
  shm_.rects += frameRects_.size();
  shm_.maxDamageRects = std::max<uint64_t>(shm_.maxDamageRects, count);
  if (onFrame_)
    onFrame_(frame, frameRects_);
  if (!tearFree_)
    return std::nullopt;
  // Everything this frame named has been read: the server may draw into the other buffer.
  Writer w;
  w.u64(frame);
  ++shm_.acksSent;
  return send(shm::MSGC_SHM_DAMAGE_HANDLED, w.data(), Clock::now() + std::chrono::seconds(10));
}

}  // namespace spicebox::client
