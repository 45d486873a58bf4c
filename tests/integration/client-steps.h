// Runs in: tests. Input: the real spicebox-broker's stderr and status (trusted test peer) and
// what spicebox's client library received from its netproxy.
//
// The steps the client integration tests share: await a broker log line, find where it listens,
// connect a client with its display channel, pump clients while keeping the broker's pipes
// drained, and compare a client's picture with guestsim's read-back.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "base/fd.h"
#include "client/spice-client.h"
#include "tests/integration/broker-process.h"
#include "tests/oracle/png-image.h"

namespace spicebox::test {

inline constexpr std::chrono::seconds START_BOUND{15};  // broker ready (ASan builds start slowly)
inline constexpr std::chrono::seconds STEP_BOUND{10};   // one client step: link, first picture

// Pumps the broker's notifications and stderr until its stderr matches `re` (the whole text so
// far); the match's groups (0: the whole match), or nullopt after `timeout`.
std::optional<std::vector<std::string>> awaitLog(BrokerProcess& broker, const std::regex& re,
                                                 std::chrono::milliseconds timeout);

// The broker ready and listening; the client target of its first listener of `kind` ("tcp" or
// "unix"), from its log line.
client::Target startListening(BrokerProcess& broker, const std::string& kind = "tcp");

// A session with its display channel linked (fails the test otherwise).
std::unique_ptr<client::Session> connectWithDisplay(const client::SessionOptions& options);
std::unique_ptr<client::Session> connectWithDisplay(const client::Target& target);

// Handles every message of `sessions`' channels until `done()` or `timeout`; keeps the broker's
// pipes drained meanwhile (a full stderr pipe would block the broker), by waking at least every
// 200 ms. An error names `what` did not happen.
client::Error pump(BrokerProcess& broker, std::vector<client::Session*> sessions,
                   const std::function<bool()>& done, std::chrono::milliseconds timeout,
                   const std::string& what);

// How a client's primary differs from `image`: pixel count and their bounding box.
struct Difference {
  uint64_t pixels = 0;
  uint32_t left = UINT32_MAX, top = UINT32_MAX, right = 0, bottom = 0;
  std::string describe() const;
};
Difference difference(const client::Canvas* canvas, const oracle::RgbImage& image);

uint64_t draws(client::Session& s);

// A program a test started (fork + execv), its stdout and stderr in the files `dir`/`name`.out
// and .err; with `pipeStdout`, its stdout comes through `stdoutPipe` instead (awaitLine()).
struct Program {
  std::string name;
  pid_t pid = -1;
  base::Fd pidfd;
  std::filesystem::path outPath, errPath;
  base::Fd stdoutPipe;
  std::string stdoutText;  // read from the pipe so far
};
Program startProgram(const char* binary, const std::vector<std::string>& args,
                     const std::filesystem::path& dir, const std::string& name,
                     bool pipeStdout = false);
// Reads `p`'s piped stdout until it holds `count` complete lines, keeping the broker drained;
// false when `bound` passes first or the program closes its stdout.
bool awaitLines(Program& p, BrokerProcess& broker, size_t count, std::chrono::milliseconds bound);

struct Exit {
  int waitStatus = -1;
  std::string out;  // its stdout
  std::string err;  // its stderr
};
// Waits for `p` to exit (reaping it), keeping the broker's notification queue and stderr pipe
// drained meanwhile (full, they would block it). Past `bound` the program is killed and the test
// fails with its stderr.
Exit awaitExit(Program& p, BrokerProcess& broker, std::chrono::milliseconds bound);

std::string readFile(const std::filesystem::path& path);

// A new directory under /tmp named after `what`.
std::string tempDir(const std::string& what = "clients");

}  // namespace spicebox::test
