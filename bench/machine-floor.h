// Runs in: spicebox-bench-latency and bench-tests (developer machine). Input: none (its own
// processes and a guestsim scenario).
//
// Context for the latency table (issue 6, point 5), measured in the same run:
// - the machine's floor for a chain of processes: how long a message takes through as many
//   process hand-offs as spicebox makes between a guest's doorbell and a client (VMM -> broker
//   -> renderer -> broker -> netproxy -> client: 5), with no work at all in between. On a
//   virtual machine a hand-off to an idle virtual CPU costs tens of microseconds, which no
//   design with that many processes can go below.
// - what the full-HD pictures cost a server that compresses them: liblz4's ratio and speed on
//   one frame, the codec libspice-server is asked to use in the comparison.
#pragma once

#include <chrono>
#include <string>
#include <variant>

namespace spicebox::bench {

struct RelayFloor {
  unsigned handOffs = 0;
  double p50Us = 0, p99Us = 0;
};

// Starts `processes - 1` children that pass a message on through SOCK_SEQPACKET socket pairs,
// each waiting in poll() as an event loop does, so that one round is `processes` hand-offs; times
// `rounds` rounds, one every `period` (so the processes are idle in between, as between a guest's
// updates). The children are reaped before it returns.
std::variant<RelayFloor, std::string> measureRelayFloor(unsigned processes, unsigned rounds,
                                                        std::chrono::microseconds period);

struct CodecFigures {
  double ratio = 0;          // bytes in / bytes out
  double megabytesPerS = 0;  // input bytes per second, one thread (median of the runs)
};

// LZ4_compress_default over the bitmap of the first full-screen copy the guestsim scenario
// `scenario` draws (fullhd, fullhd-bands), `runs` times.
std::variant<CodecFigures, std::string> lz4OnFirstFrame(const std::string& scenario, unsigned runs);

}  // namespace spicebox::bench
