#include "tests/integration/client-steps.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

namespace spicebox::test {

using client::Clock;
using namespace std::chrono_literals;

std::optional<std::vector<std::string>> awaitLog(BrokerProcess& broker, const std::regex& re,
                                                 std::chrono::milliseconds timeout) {
  std::vector<std::string> groups;
  auto found = broker.waitForStatus(
      [&](const BrokerStatus&) {
        const std::string& text = broker.stderrText();
        std::smatch m;
        if (!std::regex_search(text, m, re))
          return false;
        for (const auto& g : m)
          groups.push_back(g.str());
        return true;
      },
      timeout);
  if (!found)
    return std::nullopt;
  return groups;
}

client::Target startListening(BrokerProcess& broker, const std::string& kind) {
  INFO(broker.stderrText());
  REQUIRE(broker.waitForReady(START_BOUND));
  auto m =
      awaitLog(broker, std::regex(R"(listening for SPICE clients on (\S+) \()" + kind + R"(\))"),
               START_BOUND);
  INFO(broker.stderrText());
  REQUIRE(m);
  auto target = client::Target::parse(kind == "unix" ? "unix:" + (*m)[1] : (*m)[1]);
  REQUIRE(std::holds_alternative<client::Target>(target));
  return std::get<client::Target>(target);
}

std::unique_ptr<client::Session> connectWithDisplay(const client::SessionOptions& options) {
  auto session = client::Session::connect(options);
  if (auto* err = std::get_if<std::string>(&session))
    FAIL("connecting a client to " << options.target.describe() << ": " << *err);
  auto s = std::move(std::get<std::unique_ptr<client::Session>>(session));
  auto display = s->openDisplay();
  if (auto* err = std::get_if<std::string>(&display))
    FAIL("opening the display channel: " << *err);
  return s;
}

std::unique_ptr<client::Session> connectWithDisplay(const client::Target& target) {
  client::SessionOptions options;
  options.target = target;
  return connectWithDisplay(options);
}

client::Error pump(BrokerProcess& broker, std::vector<client::Session*> sessions,
                   const std::function<bool()>& done, std::chrono::milliseconds timeout,
                   const std::string& what) {
  auto deadline = Clock::now() + timeout;
  std::vector<client::Channel*> channels;
  for (auto* s : sessions)
    for (auto* c : s->channels())
      channels.push_back(c);
  for (;;) {
    broker.drain();
    auto slice = std::min(deadline, Clock::now() + 200ms);
    auto err = client::pumpUntil(channels, done, slice, what);
    if (!err)
      return std::nullopt;
    if (Clock::now() >= deadline || err->find("timed out") == std::string::npos)
      return err;
  }
}

std::string Difference::describe() const {
  if (pixels == 0)
    return "none";
  return std::to_string(pixels) + " pixels within (" + std::to_string(left) + "," +
         std::to_string(top) + ")-(" + std::to_string(right) + "," + std::to_string(bottom) + ")";
}

Difference difference(const client::Canvas* canvas, const oracle::RgbImage& image) {
  Difference d;
  if (!canvas || canvas->width() != image.width || canvas->height() != image.height) {
    d.pixels = uint64_t{image.width} * image.height + 1;
    return d;
  }
  for (uint32_t y = 0; y < image.height; ++y)
    for (uint32_t x = 0; x < image.width; ++x) {
      uint32_t p = canvas->pixel(x, y);
      const uint8_t* rgb = image.pixel(x, y);
      if (((p >> 16) & 0xff) != rgb[0] || ((p >> 8) & 0xff) != rgb[1] || (p & 0xff) != rgb[2]) {
        ++d.pixels;
        d.left = std::min(d.left, x);
        d.top = std::min(d.top, y);
        d.right = std::max(d.right, x + 1);
        d.bottom = std::max(d.bottom, y + 1);
      }
    }
  return d;
}

uint64_t draws(client::Session& s) {
  return s.display() ? s.display()->display().draws() : 0;
}

std::string tempDir(const std::string& what) {
  std::string tmpl = "/tmp/spicebox-" + what + "-XXXXXX";
  REQUIRE(::mkdtemp(tmpl.data()));
  return tmpl;
}

std::string readFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

Program startProgram(const char* binary, const std::vector<std::string>& args,
                     const std::filesystem::path& dir, const std::string& name, bool pipeStdout) {
  Program p{name, -1, {}, dir / (name + ".out"), dir / (name + ".err"), {}, {}};
  int pipeFds[2] = {-1, -1};
  if (pipeStdout)
    REQUIRE(::pipe2(pipeFds, O_CLOEXEC) == 0);
  p.pid = ::fork();
  REQUIRE(p.pid >= 0);
  if (p.pid == 0) {
    int out =
        pipeStdout ? pipeFds[1] : ::open(p.outPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = ::open(p.errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0)
      ::_exit(126);
    std::vector<std::string> store{binary};
    store.insert(store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : store)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (pipeStdout) {
    ::close(pipeFds[1]);
    p.stdoutPipe = base::Fd(pipeFds[0]);
  }
  p.pidfd = base::Fd(static_cast<int>(::syscall(SYS_pidfd_open, p.pid, 0)));
  REQUIRE(p.pidfd);
  return p;
}

bool awaitLines(Program& p, BrokerProcess& broker, size_t count, std::chrono::milliseconds bound) {
  REQUIRE(p.stdoutPipe);
  const auto deadline = std::chrono::steady_clock::now() + bound;
  auto lines = [&p] {
    return static_cast<size_t>(std::count(p.stdoutText.begin(), p.stdoutText.end(), '\n'));
  };
  while (lines() < count) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    pollfd fd{p.stdoutPipe.get(), POLLIN, 0};
    const int n = ::poll(&fd, 1, 50);  // wakes to keep the broker drained
    broker.drain();
    if (n <= 0)
      continue;
    char buffer[4096];
    const ssize_t got = ::read(p.stdoutPipe.get(), buffer, sizeof buffer);
    if (got <= 0)
      return false;
    p.stdoutText.append(buffer, static_cast<size_t>(got));
  }
  return true;
}

Exit awaitExit(Program& p, BrokerProcess& broker, std::chrono::milliseconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  for (;;) {
    pollfd fd{p.pidfd.get(), POLLIN, 0};
    const int n = ::poll(&fd, 1, 50);
    broker.drain();
    if (n > 0)
      break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, nullptr, 0);
      FAIL(p.name << " did not finish within " << bound.count() << " ms:\n" << readFile(p.errPath));
    }
  }
  Exit exit;
  REQUIRE(::waitpid(p.pid, &exit.waitStatus, 0) == p.pid);
  if (p.stdoutPipe) {
    char buffer[4096];
    ssize_t got;
    while ((got = ::read(p.stdoutPipe.get(), buffer, sizeof buffer)) > 0)
      p.stdoutText.append(buffer, static_cast<size_t>(got));
    exit.out = p.stdoutText;
  } else {
    exit.out = readFile(p.outPath);
  }
  exit.err = readFile(p.errPath);
  return exit;
}

}  // namespace spicebox::test
