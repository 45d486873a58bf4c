// Runs in: netproxy (sandboxed). Input: pixels copied from a display segment (values only, any
// value is fine) and the pixmap cache size a SPICE client announced in DISPLAY_INIT (hostile:
// any 64-bit value; non-positive means no cache, the rest is clamped).
//
// The server's mirror of one display client's pixmap cache (SPICE's "client-side image cache").
// What the protocol says, learnt from spice-server (dcc.cpp dcc_pixmap_cache_unlocked_add,
// dcc-send.cpp) and spice-gtk (channel-display.c, spice-channel-cache.h):
// - DISPLAY_INIT's pixmap_cache_size counts PIXELS (spice-gtk sends its cache-size in bytes / 4,
//   80 MiB / 4 by default); an image costs width * height of it.
// - The client never evicts by itself: its cache is an unbounded hash table. The server mirrors
//   it, evicts least-recently-used entries when an image to cache does not fit, and tells the
//   client which ids to drop with INVAL_LIST before the message that caches the new image.
//   INVAL_ALL_PIXMAPS empties it.
// - An image sent with SPICE_IMAGE_FLAGS_CACHE_ME is stored under its descriptor id; a later
//   SPICE_IMAGE_TYPE_FROM_CACHE names that id. A FROM_CACHE for an id the client does not hold
//   makes spice-gtk wait for it forever: the mirror must never claim more than the client holds.
// - spice-gtk reference-counts ids: caching an id it already holds needs two INVALs to drop it.
//   So an id is only ever cached while the mirror says the client does not hold it.
//
// Ids: SHA-256 over (width, height, the rows' bytes); the id is its first 64 bits, and each entry
// keeps the size and the next 128 bits as an independent check. A different image whose id is
// already held (a 64-bit collision) is a Collision: sent whole, never cached, never drawn from
// the cache. Residual risk: two different images of the same size whose SHA-256 agree in 192
// bits would show the older one's pixels; by chance that is about n^2 / 2^193 for n images, and
// on purpose it needs a SHA-256 collision attack (none is known). The pixels are the guest's own
// picture either way: the worst case is an earlier part of the same display shown again.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace spicebox::netproxy {

// An image's identity, from imageKey().
struct ImageKey {
  uint64_t id = 0;
  uint32_t width = 0, height = 0;
  std::array<uint8_t, 16> check{};

  uint64_t pixels() const { return uint64_t{width} * height; }
  bool operator==(const ImageKey&) const = default;
};

// `rows`: height rows of width * 4 bytes, back to back (a copy: the segment may change while it
// is read, and the caller must send the same bytes it hashed).
ImageKey imageKey(uint32_t width, uint32_t height, const uint8_t* rows);

class ImageCache {
 public:
  // At most this many entries, whatever the client's size: the mirror's own memory (about 100
  // bytes an entry) stays under half a MiB per display client.
  static constexpr size_t MAX_ENTRIES = 4096;
  // The largest capacity taken from a client (256 Mi pixels, 1 GiB at 32 bpp): larger claims are
  // clamped. Only ever makes the server evict earlier than the client needs.
  static constexpr int64_t MAX_CAPACITY_PIXELS = int64_t{1} << 28;
  // Smaller images are sent whole: a FROM_CACHE message (about 70 bytes) saves nothing on them.
  static constexpr uint64_t MIN_CACHED_PIXELS = 64;

  // `capacityPixels` as the client announced it (<= 0: the client has no cache; enabled() false).
  explicit ImageCache(int64_t capacityPixels = 0, size_t maxEntries = MAX_ENTRIES);

  bool enabled() const { return capacity_ > 0; }

  enum class Lookup {
    Hit,   // the client holds exactly this image under key.id: send FROM_CACHE (now most recent)
    Miss,  // not held
    Collision,  // key.id is held for a different image: send it whole, do not cache it
  };
  Lookup find(const ImageKey& key);

  // The image will be sent with CACHE_ME: records it as held (most recent), evicting the least
  // recently used entries to make room; their ids are appended to `evicted`, which the caller
  // must send in INVAL_LIST BEFORE the image. False (nothing changes, nothing evicted) when the
  // image must not be cached: the cache is off, the image is smaller than MIN_CACHED_PIXELS or
  // larger than the whole capacity, or its id is already held (call find() first).
  bool insert(const ImageKey& key, std::vector<uint64_t>& evicted);

  // The client's cache was emptied (INVAL_ALL_PIXMAPS sent).
  void clear();

  size_t entries() const { return lru_.size(); }
  uint64_t usedPixels() const { return used_; }
  uint64_t capacityPixels() const { return capacity_; }

  // Counters for the log and the hit-rate report.
  struct Stats {
    uint64_t hits = 0, misses = 0, collisions = 0, inserted = 0, evicted = 0;
    uint64_t pixelsSaved = 0;  // pixels of images drawn from the cache instead of sent
  };
  const Stats& stats() const { return stats_; }

 private:
  uint64_t capacity_ = 0;
  size_t maxEntries_ = 0;
  uint64_t used_ = 0;
  std::list<ImageKey> lru_;  // front: most recently used
  std::unordered_map<uint64_t, std::list<ImageKey>::iterator> byId_;
  Stats stats_;
};

}  // namespace spicebox::netproxy
