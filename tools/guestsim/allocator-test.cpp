// Runs in: tests. Input: none (our own allocator over local buffers).
// Tests for tools/guestsim/allocator.h: first fit, alignment, coalescing, handles, the memslot
// encoding of block addresses and the range checks of hostAddress().
#include "tools/guestsim/allocator.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <vector>

using namespace spicebox::guestsim;

TEST_CASE("first-fit: blocks are aligned and do not overlap", "[allocator]") {
  FirstFitArena arena(1024, 8);
  auto a = arena.allocate(1);
  auto b = arena.allocate(13);
  auto c = arena.allocate(0);
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  CHECK(*a == 0);
  CHECK(*b == 8);
  CHECK(*c == 24);  // 13 rounded up to 16
  CHECK(arena.bytesInUse() == 32);
  CHECK(arena.blocksInUse() == 3);
}

TEST_CASE("exhausted-arena: nullopt, then room again after a free", "[allocator]") {
  FirstFitArena arena(64, 8);
  auto a = arena.allocate(32);
  auto b = arena.allocate(32);
  REQUIRE(a);
  REQUIRE(b);
  CHECK_FALSE(arena.allocate(8));
  CHECK_FALSE(arena.allocate(65));  // larger than the whole arena
  REQUIRE(arena.free(*a));
  auto again = arena.allocate(24);
  REQUIRE(again);
  CHECK(*again == *a);  // first fit reuses the lowest hole
}

TEST_CASE("double-free and foreign offsets are refused", "[allocator]") {
  FirstFitArena arena(64, 8);
  auto a = arena.allocate(16);
  REQUIRE(a);
  CHECK_FALSE(arena.free(*a + 8));  // inside a block, not its start
  CHECK(arena.free(*a));
  CHECK_FALSE(arena.free(*a));
  CHECK(arena.bytesInUse() == 0);
}

TEST_CASE("coalescing: freeing in any order leaves one free range", "[allocator]") {
  std::mt19937 rng(7);
  FirstFitArena arena(1 << 20, 4096);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < 100; ++i) {
    auto o = arena.allocate(4096 * (1 + rng() % 3));
    REQUIRE(o);
    CHECK(*o % 4096 == 0);
    offsets.push_back(*o);
  }
  std::shuffle(offsets.begin(), offsets.end(), rng);
  for (uint64_t o : offsets)
    REQUIRE(arena.free(o));
  CHECK(arena.freeRanges() == 1);
  CHECK(arena.bytesInUse() == 0);
  // The whole arena is one block again.
  CHECK(arena.allocate(1 << 20));
}

TEST_CASE("size-not-multiple-of-alignment: the tail is never handed out", "[allocator]") {
  FirstFitArena arena(4096 + 100, 4096);
  CHECK(arena.size() == 4096);
  CHECK(arena.allocate(4096));
  CHECK_FALSE(arena.allocate(1));
}

namespace {

struct TwoArenas {
  std::vector<std::byte> ram = std::vector<std::byte>(64 * 1024, std::byte{0xaa});
  std::vector<std::byte> vram = std::vector<std::byte>(64 * 1024, std::byte{0xbb});
  ArenaMapping ramMap{ram, 0x100000000ull, 1, 3, 8, 8};
  ArenaMapping vramMap{vram, 0x100010000ull, 2, 5, 8, 8};
  DriverAllocator allocator{ramMap, vramMap};
};

}  // namespace

TEST_CASE("driver-allocator: memslot-encoded addresses, zero fill, handles", "[allocator]") {
  TwoArenas t;
  auto a = t.allocator.allocate(Arena::Ram, 100);
  auto v = t.allocator.allocate(Arena::Vram, 5000);
  REQUIRE(a);
  REQUIRE(v);
  CHECK(a->guestAddr == ((uint64_t{1} << 56) | (uint64_t{3} << 48) | 0x100000000ull));
  CHECK(v->guestAddr == ((uint64_t{2} << 56) | (uint64_t{5} << 48) | 0x100010000ull));
  CHECK(a->host == t.ram.data());
  CHECK(v->host == t.vram.data());
  CHECK(a->handle != v->handle);
  for (size_t i = 0; i < 100; ++i)
    REQUIRE(a->host[i] == std::byte{0});
  CHECK(a->host[100] == std::byte{0xaa});  // only the block is cleared
  auto v2 = t.allocator.allocate(Arena::Vram, 1);
  REQUIRE(v2);
  CHECK(v2->host - t.vram.data() == 8192);  // 5000 rounded up to two pages
  t.allocator.free(*a);
  t.allocator.free(*v);
  t.allocator.free(*v2);
  CHECK(t.allocator.arena(Arena::Ram).bytesInUse() == 0);
  CHECK(t.allocator.arena(Arena::Vram).bytesInUse() == 0);
}

TEST_CASE("host-address: only our slots, generations and ranges translate", "[allocator]") {
  TwoArenas t;
  auto a = t.allocator.allocate(Arena::Ram, 64);
  REQUIRE(a);
  CHECK(t.allocator.hostAddress(a->guestAddr, 64) == a->host);
  CHECK(t.allocator.hostAddress(a->guestAddr + 8, 8) == a->host + 8);
  uint64_t base = (uint64_t{1} << 56) | (uint64_t{3} << 48);
  CHECK(t.allocator.hostAddress(base | 0x100000000ull, t.ram.size()) == t.ram.data());
  // One byte past the arena.
  CHECK(t.allocator.hostAddress(base | 0x100000000ull, t.ram.size() + 1) == nullptr);
  CHECK(t.allocator.hostAddress(base | (0x100000000ull + t.ram.size()), 1) == nullptr);
  // Below the arena's physical start.
  CHECK(t.allocator.hostAddress(base | 0xfffffff8ull, 8) == nullptr);
  // Stale generation, unknown slot.
  CHECK(t.allocator.hostAddress((uint64_t{1} << 56) | (uint64_t{4} << 48) | 0x100000000ull, 8) ==
        nullptr);
  CHECK(t.allocator.hostAddress((uint64_t{7} << 56) | (uint64_t{3} << 48) | 0x100000000ull, 8) ==
        nullptr);
  // A size that would wrap.
  CHECK(t.allocator.hostAddress(a->guestAddr, SIZE_MAX) == nullptr);
  t.allocator.free(*a);
}
