// Runs in: tests. Input: keys and pictures made here. Checks the pixmap cache mirror: LRU order,
// the pixel and entry bounds, which ids eviction names (they go to INVAL_LIST), the collision
// guard, and that ids follow the pixels.
#include "netproxy/image-cache.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

namespace spicebox::netproxy {
namespace {

// A key of `width` x `height` with a chosen id and check byte (ids under the test's control).
ImageKey key(uint64_t id, uint32_t width, uint32_t height, uint8_t check = 0) {
  ImageKey k;
  k.id = id;
  k.width = width;
  k.height = height;
  k.check.fill(check);
  return k;
}

std::vector<uint8_t> picture(uint32_t width, uint32_t height, uint32_t seed) {
  std::vector<uint8_t> rows(size_t{width} * height * 4);
  for (size_t i = 0; i < rows.size(); ++i)
    rows[i] = static_cast<uint8_t>((i * 31 + seed * 7) ^ (i >> 5));
  return rows;
}

TEST_CASE("image ids follow the pixels and the shape", "[image-cache]") {
  const auto a = picture(16, 8, 1);
  const ImageKey k1 = imageKey(16, 8, a.data());
  CHECK(imageKey(16, 8, a.data()) == k1);  // same pixels, same key
  CHECK(k1.width == 16);
  CHECK(k1.height == 8);
  auto b = a;
  b[200] ^= 1;  // one bit of one pixel
  const ImageKey k2 = imageKey(16, 8, b.data());
  CHECK(k2.id != k1.id);
  CHECK(k2.check != k1.check);
  // The same bytes as 8 x 16: another image.
  const ImageKey k3 = imageKey(8, 16, a.data());
  CHECK(k3.id != k1.id);
  CHECK_FALSE(k3 == k1);
}

TEST_CASE("a client without a cache caches nothing", "[image-cache]") {
  for (int64_t size : {int64_t{0}, int64_t{-1}, INT64_MIN}) {
    ImageCache cache(size);
    CHECK_FALSE(cache.enabled());
    std::vector<uint64_t> evicted;
    CHECK_FALSE(cache.insert(key(1, 16, 16), evicted));
    CHECK(cache.find(key(1, 16, 16)) == ImageCache::Lookup::Miss);
  }
}

TEST_CASE("a huge announced size is clamped, the entry count stays bounded", "[image-cache]") {
  ImageCache cache(INT64_MAX);
  CHECK(cache.capacityPixels() == uint64_t(ImageCache::MAX_CAPACITY_PIXELS));
  std::vector<uint64_t> evicted;
  for (uint64_t id = 1; id <= ImageCache::MAX_ENTRIES + 100; ++id)
    REQUIRE(cache.insert(key(id, 8, 8), evicted));
  CHECK(cache.entries() == ImageCache::MAX_ENTRIES);
  // The oldest 100 went, oldest first.
  REQUIRE(evicted.size() == 100);
  for (uint64_t i = 0; i < 100; ++i)
    CHECK(evicted[i] == i + 1);
}

TEST_CASE("eviction is least-recently-used and names exactly the dropped ids", "[image-cache]") {
  ImageCache cache(1000);  // pixels
  std::vector<uint64_t> evicted;
  REQUIRE(cache.insert(key(1, 10, 30), evicted));  // 300
  REQUIRE(cache.insert(key(2, 10, 30), evicted));  // 600
  REQUIRE(cache.insert(key(3, 10, 30), evicted));  // 900
  CHECK(evicted.empty());
  CHECK(cache.usedPixels() == 900);
  // Using 1 makes 2 the oldest.
  CHECK(cache.find(key(1, 10, 30)) == ImageCache::Lookup::Hit);
  REQUIRE(cache.insert(key(4, 10, 20), evicted));  // 200 more: 2 (the oldest) goes
  CHECK(evicted == std::vector<uint64_t>{2});
  CHECK(cache.usedPixels() == 800);
  CHECK(cache.find(key(2, 10, 30)) == ImageCache::Lookup::Miss);
  // A big one pushes out several, in LRU order: 3, then 1 (4 was used last).
  evicted.clear();
  CHECK(cache.find(key(4, 10, 20)) == ImageCache::Lookup::Hit);
  REQUIRE(cache.insert(key(5, 20, 35), evicted));  // 700
  CHECK(evicted == std::vector<uint64_t>{3, 1});
  CHECK(cache.usedPixels() == 900);
  CHECK(cache.entries() == 2);
  CHECK(cache.stats().evicted == 3);
}

TEST_CASE("images that cannot be cached change nothing", "[image-cache]") {
  ImageCache cache(1000);
  std::vector<uint64_t> evicted;
  REQUIRE(cache.insert(key(1, 20, 20), evicted));
  SECTION("larger than the whole cache: sent whole, nothing evicted for it") {
    CHECK_FALSE(cache.insert(key(2, 40, 40), evicted));
  }
  SECTION("smaller than MIN_CACHED_PIXELS") {
    CHECK_FALSE(cache.insert(key(2, 7, 9), evicted));
  }
  SECTION("an id the client already holds (spice-gtk would count it twice)") {
    CHECK_FALSE(cache.insert(key(1, 20, 20), evicted));
  }
  CHECK(evicted.empty());
  CHECK(cache.entries() == 1);
  CHECK(cache.usedPixels() == 400);
}

TEST_CASE("id-collision: a different image with a held id is never drawn from the cache",
          "[image-cache][hostile]") {
  ImageCache cache(100000);
  std::vector<uint64_t> evicted;
  REQUIRE(cache.insert(key(42, 16, 16, 0xaa), evicted));
  // Same id, other check bits; same id, other size.
  CHECK(cache.find(key(42, 16, 16, 0xab)) == ImageCache::Lookup::Collision);
  CHECK(cache.find(key(42, 32, 8, 0xaa)) == ImageCache::Lookup::Collision);
  // And it cannot replace the held one (the client would keep the first under that id).
  CHECK_FALSE(cache.insert(key(42, 16, 16, 0xab), evicted));
  CHECK(cache.find(key(42, 16, 16, 0xaa)) == ImageCache::Lookup::Hit);
  CHECK(cache.stats().collisions == 2);
  CHECK(cache.stats().hits == 1);
}

TEST_CASE("clear empties the mirror, as INVAL_ALL_PIXMAPS empties the client", "[image-cache]") {
  ImageCache cache(100000);
  std::vector<uint64_t> evicted;
  REQUIRE(cache.insert(key(1, 16, 16), evicted));
  REQUIRE(cache.insert(key(2, 16, 16), evicted));
  cache.clear();
  CHECK(cache.entries() == 0);
  CHECK(cache.usedPixels() == 0);
  CHECK(cache.find(key(1, 16, 16)) == ImageCache::Lookup::Miss);
  REQUIRE(cache.insert(key(1, 16, 16), evicted));
  CHECK(evicted.empty());
}

// A model of spice-gtk's cache (unbounded, drops only what it is told) driven by the mirror's
// decisions over a random workload: every Hit the mirror reports is an id the model holds, with
// the same image, and the model never exceeds the capacity.
TEST_CASE("the mirror never claims an image the client does not hold", "[image-cache]") {
  const uint64_t capacity = 5000;
  ImageCache cache(static_cast<int64_t>(capacity));
  std::vector<std::pair<uint64_t, ImageKey>> client;  // what the client holds
  uint32_t state = 12345;
  auto rnd = [&] {
    state = state * 1103515245u + 12345u;
    return state >> 8;
  };
  size_t hits = 0;
  for (int i = 0; i < 20000; ++i) {
    const uint64_t id = rnd() % 60 + 1;
    const ImageKey k = key(id, 8 + uint32_t(id % 9) * 4, 8 + uint32_t(id % 5) * 6);
    std::vector<uint64_t> evicted;
    if (cache.find(k) == ImageCache::Lookup::Hit) {
      ++hits;
      auto held =
          std::find_if(client.begin(), client.end(), [&](auto& e) { return e.first == id; });
      REQUIRE(held != client.end());
      REQUIRE(held->second == k);
      continue;
    }
    if (!cache.insert(k, evicted))
      continue;
    for (uint64_t gone : evicted) {
      auto held =
          std::find_if(client.begin(), client.end(), [&](auto& e) { return e.first == gone; });
      REQUIRE(held != client.end());  // an INVAL for an id the client holds
      client.erase(held);
    }
    client.emplace_back(id, k);
    uint64_t used = 0;
    for (auto& [cid, ck] : client)
      used += ck.pixels();
    REQUIRE(used <= capacity);
    REQUIRE(used == cache.usedPixels());
    REQUIRE(client.size() == cache.entries());
  }
  CHECK(hits > 1000);  // the workload does repeat
}

}  // namespace
}  // namespace spicebox::netproxy
