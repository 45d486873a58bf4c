// Runs in: spicebox-guestsim (unsandboxed). Input: guest memory locations the attacker chose
// (trusted; inside our own BAR mappings).
//
// A second vCPU of a hostile guest: a thread that keeps rewriting chosen bytes of guest memory,
// each location flipping between two values, while the device and the renderer read them (data
// changed while it is being read: spice-server's double-fetch CVE-2015-3247, 5260, 5261). Each
// byte is stored on its own (relaxed atomics), so a reader may also see any mix of the two
// values: a torn pointer or size, which is more hostile still.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace spicebox::guestsim {

// One location and the two values it flips between (`first` is what stays when the race ends).
struct Flip {
  std::byte* at = nullptr;
  std::vector<uint8_t> first, second;  // same length
};

// Build a Flip of a trivially copyable field.
template <typename T>
Flip flipOf(std::byte* at, const T& first, const T& second) {
  Flip f{at, std::vector<uint8_t>(sizeof(T)), std::vector<uint8_t>(sizeof(T))};
  __builtin_memcpy(f.first.data(), &first, sizeof(T));
  __builtin_memcpy(f.second.data(), &second, sizeof(T));
  return f;
}

class Racer {
 public:
  Racer() = default;
  ~Racer();
  Racer(const Racer&) = delete;
  Racer& operator=(const Racer&) = delete;

  // Starts flipping every location until stop(). The memory must stay ours until then.
  void start(std::vector<Flip> flips);
  // Stops and joins the thread; each location is left at its `first` value. Returns how many
  // rounds of flips ran (for the log: a race that never ran proves nothing).
  uint64_t stop();
  bool running() const { return thread_.joinable(); }

 private:
  void run();

  std::vector<Flip> flips_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> rounds_{0};
  std::thread thread_;
};

}  // namespace spicebox::guestsim
