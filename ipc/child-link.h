// Runs in: the renderer and the netproxy (sandboxed). Input: messages from the broker, which the
// child trusts. The child half of the hello/heartbeat every child boundary starts with, and the
// start-up sequence every child follows: command line, logging, sandbox, then the first read.
#pragma once

#include <sys/stat.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <functional>
#include <string>

#include "base/log.h"
#include "base/memory.h"
#include "ipc/channel.h"
#include "ipc/child-fds.h"
#include "ipc/common.capnp.h"
#include "sandbox/sandbox.h"

namespace spicebox::ipc {

// Exit status of a child that could not enter its sandbox (EX_CONFIG from sysexits.h: the
// operator's configuration or the host does not permit what was asked).
inline constexpr int EXIT_SANDBOX_REFUSED = 78;

inline SandboxLevel toWire(sandbox::Level level) {
  switch (level) {
    case sandbox::Level::Off:
      return SandboxLevel::OFF;
    case sandbox::Level::Partial:
      return SandboxLevel::PARTIAL;
    case sandbox::Level::Full:
      return SandboxLevel::FULL;
  }
  return SandboxLevel::OFF;
}

// Answers the broker's hello with this child's ChildHello and its pings with pongs.
// ToChild / FromChild are the boundary's generated message structs, Version its protocolVersion.
// A child whose boundary has more messages derives and overrides onBoundaryMessage().
template <typename ToChild, typename FromChild, uint32_t Version>
class ChildLink {
 public:
  virtual ~ChildLink() = default;

  ChildLink(uv_loop_t* loop, base::Fd socket, sandbox::Report report)
      : report_(std::move(report)),
        channel_(
            loop, std::move(socket), "broker",
            [this](capnp::MessageReader& message, ReceivedFds& fds) {
              return onMessage(message, fds);
            },
            [loop](const std::string& reason) {
              // Without its broker a child has nothing to do: the broker restarts a new one.
              spdlog::info("channel to the broker closed ({}); exiting", reason);
              uv_stop(loop);
            }) {}

 protected:
  // A message other than hello and ping, after hello. Default: none is known.
  virtual Channel::Verdict onBoundaryMessage(typename ToChild::Reader root, ReceivedFds&) {
    return "unknown message " + std::to_string(static_cast<unsigned>(root.which())) +
           " from the broker";
  }
  Channel& channel() { return channel_; }
  bool helloDone() const { return helloDone_; }

 private:
  Channel::Verdict onMessage(capnp::MessageReader& message, ReceivedFds& fds) {
    auto root = message.getRoot<ToChild>();
    switch (root.which()) {
      case ToChild::HELLO: {
        uint32_t version = root.getHello().getProtocolVersion();
        if (version != Version) {
          return "broker speaks protocol version " + std::to_string(version) + ", this binary " +
                 std::to_string(Version) + " (mismatched installation)";
        }
        capnp::MallocMessageBuilder reply;
        auto hello = reply.initRoot<FromChild>().initHello();
        hello.setProtocolVersion(Version);
        hello.setPid(::getpid());
        hello.setSandboxLevel(toWire(report_.level));
        auto missing = hello.initSandboxMissing(
            static_cast<unsigned>(std::min<size_t>(report_.missing.size(), 16)));
        for (unsigned i = 0; i < missing.size(); ++i)
          missing.set(i, report_.missing[i].substr(0, 128));
        channel_.send(reply);
        helloDone_ = true;
        return std::nullopt;
      }
      case ToChild::PING: {
        capnp::MallocMessageBuilder reply;
        reply.initRoot<FromChild>().initPong().setSeq(root.getPing().getSeq());
        channel_.send(reply);
        return std::nullopt;
      }
      default:
        break;
    }
    if (!helloDone_)
      return std::string("a message from the broker before its hello");
    return onBoundaryMessage(root, fds);
  }

  sandbox::Report report_;
  bool helloDone_ = false;
  Channel channel_;
};

// A child's whole life: parses the command line (--sandbox, --log-level), makes the logger, runs
// `beforeSandbox` (work the sandbox forbids, reading nothing from anyone), enters the sandbox
// built by `profile` before reading any byte from anyone, then serves its link to the
// broker until the broker goes away. Never returns: it ends with _exit (at-exit handlers such as
// LeakSanitizer's would make system calls the sandbox forbids).
template <typename Link>
[[noreturn]] void runChild(int argc, char** argv, const char* name,
                           const std::function<sandbox::Profile(std::vector<int> keepFds)>& profile,
                           const std::function<void()>& beforeSandbox = nullptr) {
  std::string mode = "strict", level;
  CLI::App app{std::string("spicebox-") + name + ": started by spicebox-broker, not by hand."};
  app.add_option("--sandbox", mode, "strict, best-effort or off");
  app.add_option("--log-level", level, "trace, debug, info, warn or error");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    ::_exit(app.exit(e));
  }
  base::initLogging(name, STDERR_FILENO, level);
  base::keepFrameBuffersInHeap();
  struct stat channel {};
  if (::fstat(CHILD_CHANNEL_FD, &channel) != 0 || !S_ISSOCK(channel.st_mode)) {
    spdlog::critical(
        "no channel to the broker at descriptor {}: spicebox-{} is started by "
        "spicebox-broker, not by hand",
        CHILD_CHANNEL_FD, name);
    ::_exit(2);
  }
  if (beforeSandbox) {
    try {
      beforeSandbox();
    } catch (const std::exception& e) {
      spdlog::critical("cannot start: {}", e.what());
      ::_exit(1);
    }
  }
  sandbox::Report report;
  try {
    report = sandbox::enter(profile({CHILD_CHANNEL_FD}), sandbox::parseMode(mode));
  } catch (const std::exception& e) {
    spdlog::critical("cannot enter the sandbox: {}", e.what());
    ::_exit(EXIT_SANDBOX_REFUSED);
  }
  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) {
    spdlog::critical("cannot create the event loop: {}", uv_strerror(rc));
    ::_exit(1);
  }
  {
    Link link(&loop, base::Fd(CHILD_CHANNEL_FD), report);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  ::_exit(0);
}

}  // namespace spicebox::ipc
