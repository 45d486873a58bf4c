// Runs in: spicebox-guestsim and the benchmarks (unsandboxed developer tools). Input: our own
// command trees; guest memory our own materialiser wrote, read through the caller's translation,
// which range-checks every address (see stamp.h).
#include "tools/guestsim/stamp.h"

#include <spice/enums.h>
#include <spice/qxl_dev.h>

#include <cstring>

namespace spicebox::guestsim {

Command stampCommand(uint32_t seq) {
  Image img;
  img.id = STAMP_IMAGE_ID_TAG | seq;
  img.type = SPICE_IMAGE_TYPE_BITMAP;
  img.flags = 0;  // not QXL_IMAGE_CACHE: every stamp differs, caching one would only cost
  img.width = stamp::STAMP_WIDTH;
  img.height = 1;
  Bitmap& bm = img.payload.emplace<Bitmap>();
  bm.format = SPICE_BITMAP_FMT_32BIT;
  bm.flags = QXL_BITMAP_TOP_DOWN;
  bm.x = stamp::STAMP_WIDTH;
  bm.y = 1;
  bm.stride = STAMP_BYTES;
  bm.data.resize(STAMP_BYTES);
  writeStamp(bm.data.data(), seq, 0);

  Copy copy;
  copy.srcBitmap = std::move(img);
  copy.srcArea = Rect{0, 0, 1, static_cast<int32_t>(stamp::STAMP_WIDTH)};
  copy.ropDescriptor = SPICE_ROPD_OP_PUT;
  copy.scaleMode = SPICE_IMAGE_SCALE_MODE_NEAREST;

  Drawable d;
  d.bbox = Rect{0, 0, 1, static_cast<int32_t>(stamp::STAMP_WIDTH)};
  d.clip.type = SPICE_CLIP_TYPE_NONE;
  d.effect = QXL_EFFECT_OPAQUE;  // a PUT of a whole bitmap covers its bbox
  d.surfaceId = 0;
  d.type = QXL_DRAW_COPY;
  d.payload = std::move(copy);

  Command c;
  c.type = CommandType::Draw;
  c.body = std::move(d);
  return c;
}

void writeStamp(uint8_t* bitmapPixels, uint32_t seq, uint64_t ns) {
  uint32_t pixels[stamp::STAMP_WIDTH];
  stamp::encode(stamp::Stamp{seq, ns}, pixels);
  for (uint32_t i = 0; i < stamp::STAMP_WIDTH; ++i) {
    for (uint32_t b = 0; b < 4; ++b)
      bitmapPixels[i * 4 + b] = static_cast<uint8_t>(pixels[i] >> (8 * b));
  }
}

uint8_t* locateStampPixels(uint64_t commandAddr, const GuestToHost& toHost) {
  const std::byte* drawable = toHost(commandAddr, sizeof(QXLDrawable));
  if (!drawable)
    return nullptr;
  QXLDrawable d;
  std::memcpy(&d, drawable, sizeof d);
  if (d.type != QXL_DRAW_COPY)
    return nullptr;
  // Only the descriptor and the QXLBitmap are read: a materialiser may allocate no more than
  // that for a bitmap image (the union's other members are larger).
  constexpr size_t IMAGE_BYTES = sizeof(QXLImageDescriptor) + sizeof(QXLBitmap);
  const std::byte* image = toHost(d.u.copy.src_bitmap, IMAGE_BYTES);
  if (!image)
    return nullptr;
  QXLImage img{};
  std::memcpy(&img, image, IMAGE_BYTES);
  if (img.descriptor.type != SPICE_IMAGE_TYPE_BITMAP ||
      img.bitmap.format != SPICE_BITMAP_FMT_32BIT || img.bitmap.x < stamp::STAMP_WIDTH ||
      img.bitmap.y < 1)
    return nullptr;
  if (img.bitmap.flags & QXL_BITMAP_DIRECT)
    return reinterpret_cast<uint8_t*>(toHost(img.bitmap.data, STAMP_BYTES));
  // The chunk header and the stamp's bytes right after it, in one checked range.
  std::byte* chunk = toHost(img.bitmap.data, sizeof(QXLDataChunk) + STAMP_BYTES);
  if (!chunk)
    return nullptr;
  QXLDataChunk header;
  std::memcpy(&header, chunk, sizeof header);
  if (header.data_size < STAMP_BYTES)
    return nullptr;
  return reinterpret_cast<uint8_t*>(chunk + sizeof(QXLDataChunk));
}

}  // namespace spicebox::guestsim
