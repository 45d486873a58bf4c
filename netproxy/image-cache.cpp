// Runs in: netproxy (sandboxed). Input: pixels copied from a display segment (values only) and a
// client's announced cache size (hostile, clamped). See image-cache.h for the protocol facts.
#include "netproxy/image-cache.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "base/assert.h"

namespace spicebox::netproxy {

ImageKey imageKey(uint32_t width, uint32_t height, const uint8_t* rows) {
  // Width and height go first so that two images with the same bytes in another shape differ.
  uint8_t shape[8];
  std::memcpy(shape, &width, 4);
  std::memcpy(shape + 4, &height, 4);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, shape, sizeof shape) == 1 &&
                  EVP_DigestUpdate(ctx, rows, size_t{width} * height * 4) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &length) == 1;
  EVP_MD_CTX_free(ctx);
  // OpenSSL's SHA-256 fails only without memory; the server warms it up before the sandbox.
  SB_ASSERT(ok && length == 32, "SHA-256 of an image failed");
  ImageKey key;
  std::memcpy(&key.id, digest, 8);
  std::memcpy(key.check.data(), digest + 8, 16);
  key.width = width;
  key.height = height;
  return key;
}

ImageCache::ImageCache(int64_t capacityPixels, size_t maxEntries)
    : capacity_(capacityPixels <= 0
                    ? 0
                    : static_cast<uint64_t>(std::min(capacityPixels, MAX_CAPACITY_PIXELS))),
      maxEntries_(std::min(maxEntries, MAX_ENTRIES)) {}

ImageCache::Lookup ImageCache::find(const ImageKey& key) {
  auto it = byId_.find(key.id);
  if (it == byId_.end()) {
    ++stats_.misses;
    return Lookup::Miss;
  }
  if (!(*it->second == key)) {
    ++stats_.collisions;
    return Lookup::Collision;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  ++stats_.hits;
  stats_.pixelsSaved += key.pixels();
  return Lookup::Hit;
}

bool ImageCache::insert(const ImageKey& key, std::vector<uint64_t>& evicted) {
  const uint64_t size = key.pixels();
  if (!enabled() || maxEntries_ == 0 || size < MIN_CACHED_PIXELS || size > capacity_ ||
      byId_.contains(key.id))
    return false;
  while (!lru_.empty() && (used_ + size > capacity_ || lru_.size() >= maxEntries_)) {
    const ImageKey& oldest = lru_.back();
    evicted.push_back(oldest.id);
    used_ -= oldest.pixels();
    byId_.erase(oldest.id);
    lru_.pop_back();
    ++stats_.evicted;
  }
  lru_.push_front(key);
  byId_[key.id] = lru_.begin();
  used_ += size;
  ++stats_.inserted;
  return true;
}

void ImageCache::clear() {
  lru_.clear();
  byId_.clear();
  used_ = 0;
}

}  // namespace spicebox::netproxy
