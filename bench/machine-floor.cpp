#include "bench/machine-floor.h"

#include <lz4.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "base/fd.h"
#include "tools/guestsim/scenario.h"

namespace spicebox::bench {

namespace {

uint64_t nowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// Waits for the datagram on `fd` as an event loop would (poll, then read); false at EOF.
bool relayRead(int fd, char* buf, size_t size) {
  pollfd p{fd, POLLIN, 0};
  while (::poll(&p, 1, -1) < 0)
    if (errno != EINTR)
      return false;
  ssize_t n;
  do
    n = ::read(fd, buf, size);
  while (n < 0 && errno == EINTR);
  return n > 0;
}

double percentile(std::vector<uint64_t> sorted, double p) {
  std::sort(sorted.begin(), sorted.end());
  const size_t k = std::min(sorted.size() - 1, static_cast<size_t>(p / 100 * sorted.size()));
  return sorted[k] / 1000.0;
}

}  // namespace

std::variant<RelayFloor, std::string> measureRelayFloor(unsigned processes, unsigned rounds,
                                                        std::chrono::microseconds period) {
  if (processes < 2 || rounds == 0)
    return std::string("a relay needs 2 processes and 1 round at least");
  // pairs[i]: process i writes to [0], process i + 1 reads [1]; the last pair leads back to us.
  std::vector<std::pair<base::Fd, base::Fd>> pairs;
  for (unsigned i = 0; i < processes; ++i) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      return std::string("socketpair: ") + std::strerror(errno);
    pairs.emplace_back(base::Fd(sv[0]), base::Fd(sv[1]));
  }
  std::vector<pid_t> children;
  for (unsigned i = 1; i < processes; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0)
      break;
    if (pid == 0) {
      // Only its own two ends stay open here, so that each end's EOF reaches its reader.
      for (unsigned k = 0; k < pairs.size(); ++k) {
        if (k != i)
          ::close(pairs[k].first.get());
        if (k != i - 1)
          ::close(pairs[k].second.get());
      }
      char buf[64];
      while (relayRead(pairs[i - 1].second.get(), buf, sizeof buf))
        if (::write(pairs[i].first.get(), buf, sizeof buf) < 0)
          break;
      ::_exit(0);
    }
    children.push_back(pid);
  }
  // Ours: the first pair's writing end and the last pair's reading end.
  for (unsigned k = 0; k < pairs.size(); ++k) {
    if (k != 0)
      pairs[k].first.reset();
    if (k != processes - 1)
      pairs[k].second.reset();
  }
  std::vector<uint64_t> samples;
  if (children.size() == processes - 1) {
    char buf[64] = {};
    for (unsigned r = 0; r < rounds; ++r) {
      const uint64_t start = nowNs();
      if (::write(pairs[0].first.get(), buf, sizeof buf) < 0 ||
          !relayRead(pairs[processes - 1].second.get(), buf, sizeof buf))
        break;
      samples.push_back(nowNs() - start);
      ::usleep(static_cast<useconds_t>(period.count()));
    }
  }
  pairs.clear();  // the first child sees EOF and exits, then the next, and so on
  for (pid_t pid : children) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (children.size() != processes - 1)
    return std::string("fork: ") + std::strerror(errno);
  if (samples.size() != rounds)
    return std::string("the relay broke off after ") + std::to_string(samples.size()) + " rounds";
  return RelayFloor{processes, percentile(samples, 50), percentile(samples, 99)};
}

std::variant<CodecFigures, std::string> lz4OnFirstFrame(const std::string& scenario,
                                                        unsigned runs) {
  guestsim::ScenarioOptions options;
  options.maxCommands = 1;
  std::unique_ptr<guestsim::Scenario> source;
  try {
    source = guestsim::makeScenario(scenario, options);
  } catch (const std::invalid_argument& e) {
    return std::string(e.what());
  }
  const std::vector<uint8_t>* pixels = nullptr;
  std::optional<guestsim::GuestAction> action;
  while (!pixels && (action = source->next())) {
    const auto* command = std::get_if<guestsim::Command>(&*action);
    const auto* draw = command ? std::get_if<guestsim::Drawable>(&command->body) : nullptr;
    const auto* copy = draw ? std::get_if<guestsim::Copy>(&draw->payload) : nullptr;
    if (copy && copy->srcBitmap)
      if (const auto* bitmap = std::get_if<guestsim::Bitmap>(&copy->srcBitmap->payload))
        pixels = &bitmap->data;
  }
  if (!pixels || pixels->empty())
    return "the scenario " + scenario + " draws no bitmap copy";
  const int size = static_cast<int>(pixels->size());
  std::vector<char> out(static_cast<size_t>(LZ4_compressBound(size)));
  std::vector<uint64_t> times;
  int compressed = 0;
  for (unsigned r = 0; r < std::max(1u, runs); ++r) {
    const uint64_t start = nowNs();
    compressed = LZ4_compress_default(reinterpret_cast<const char*>(pixels->data()), out.data(),
                                      size, static_cast<int>(out.size()));
    times.push_back(nowNs() - start);
  }
  if (compressed <= 0)
    return std::string("LZ4_compress_default failed");
  std::sort(times.begin(), times.end());
  const double seconds = times[times.size() / 2] / 1e9;
  return CodecFigures{double(size) / compressed, size / seconds / 1e6};
}

}  // namespace spicebox::bench
