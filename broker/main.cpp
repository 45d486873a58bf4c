// Runs in: broker. Command line -> Config -> Broker::run(); nothing else.
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <climits>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <sstream>

#include "base/log.h"
#include "broker/broker.h"

namespace {

std::string ownDirectory() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spicebox;
  broker::Config config;
  std::string sandboxMode = "best-effort";
  config.libexecDir = ownDirectory();
  auto& sup = config.supervision;
  long heartbeatInterval = sup.heartbeatInterval.count(),
       heartbeatTimeout = sup.heartbeatTimeout.count(), restartMin = sup.restartDelayMin.count(),
       restartMax = sup.restartDelayMax.count(), healthyAfter = sup.healthyAfter.count();

  std::string guestArgs, unixPath, unixOwner, unixGroup, passwordFilePath;
  std::string unixMode = "0600", passwordExpiry = "never", imageCompression = "auto_lz",
              mouseMode = "client";
  bool disableTicketing = false;
  CLI::App app{
      "spicebox-broker: the privileged process of the spicebox SPICE display server.\n"
      "Starts and supervises spicebox-renderer and spicebox-netproxy."};
  app.set_version_flag("--version", "spicebox 0.1.0");
  app.add_option("--sandbox", sandboxMode,
                 "Sandbox for the children: strict (refuse to run below full confinement), "
                 "best-effort, or off (debugging only)")
      ->check(CLI::IsMember({"strict", "best-effort", "off"}))
      ->capture_default_str();
  app.add_option("--libexec-dir", config.libexecDir,
                 "Directory holding spicebox-renderer and spicebox-netproxy")
      ->check(CLI::ExistingDirectory)
      ->capture_default_str();
  app.add_option("--log-level", config.logLevel,
                 "trace, debug, info, warn or error (default: info, or $SPICEBOX_LOG)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_option("--vmm-socket", config.vmmSocket,
                 "Listen for a VMM (qxl-link, docs/protocol.md) on this unix socket path, created "
                 "with mode 0600; a stale socket there is replaced");
  app.add_option("--status-socket", config.statusSocket,
                 "Serve the broker's state on this unix socket path (mode 0600), for "
                 "`spicebox-ctl --status-socket PATH status [--json]`");
  app.add_option("--builtin-guest", config.builtinGuest,
                 "Without --vmm-socket: start spicebox-guestsim (from --libexec-dir) with this "
                 "scenario as the VMM, over a private socket; 'none' starts no guest")
      ->capture_default_str();
  app.add_option("--guest-args", guestArgs,
                 "More arguments for the built-in guest, one string split at spaces (e.g. "
                 "\"--loop --rate 500\"; \"--replay FILE\" plays a recording instead of the "
                 "scenario); see spicebox-guestsim --help");

  // SPICE clients. Names follow QEMU's -spice where it has one (disable-ticketing,
  // image-compression, password-secret's file form, unix).
  auto* spice = app.add_option_group("SPICE clients", "Where clients connect and how they log in");
  spice->add_option("--listen", config.listen,
                    "Listen for SPICE clients on ADDRESS:PORT over TCP (e.g. 127.0.0.1:5900, "
                    "[::1]:5900; port 0 picks a free one, logged); may be repeated");
  spice->add_option("--unix", unixPath, "Listen for SPICE clients on this unix socket path");
  spice->add_option("--unix-mode", unixMode, "Permissions of the --unix socket file (octal)")
      ->capture_default_str();
  spice->add_option("--unix-owner", unixOwner, "Owner of the --unix socket file (user or uid)");
  spice->add_option("--unix-group", unixGroup, "Group of the --unix socket file (group or gid)");
  auto* passwordFile = spice->add_option(
      "--password-file", passwordFilePath,
      "Clients must give the password on the first line of this file (never on the command "
      "line, where ps shows it); at most 60 bytes");
  auto* noTicket = spice->add_flag("--disable-ticketing", disableTicketing,
                                   "Any client may connect without a password");
  passwordFile->excludes(noTicket);
  spice
      ->add_option("--password-expiry", passwordExpiry,
                   "When the password stops being accepted: never, now, +SECONDS or a UNIX time")
      ->capture_default_str();
  spice
      ->add_option("--max-clients", config.clients.maxClients,
                   "Clients connected at once; one more is told the limit is reached")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  spice
      ->add_option("--image-compression", imageCompression,
                   "auto_lz (LZ4 or LZ, whichever is smaller, per image), off, lz or lz4 (LZ for "
                   "clients without LZ4)")
      ->check(CLI::IsMember({"auto_lz", "off", "lz", "lz4"}))
      ->capture_default_str();
  spice
      ->add_option("--mouse-mode", mouseMode,
                   "client (absolute pointer, a tablet) or server (relative motion)")
      ->check(CLI::IsMember({"client", "server"}))
      ->capture_default_str();

  std::vector<std::string> shmAllow;
  bool noShm = false;
  spice->add_option("--shm-allow", shmAllow,
                    "A user (name or uid) whose viewers on the --unix socket are offered the "
                    "shared-memory display; may be repeated (default: the broker's own user)");
  spice->add_flag("--no-shm", noShm, "Offer the shared-memory display to nobody");

  auto* tuning = app.add_option_group("Supervision", "How children are kept alive (milliseconds)");
  tuning->add_option("--heartbeat-interval", heartbeatInterval, "Between heartbeats")
      ->check(CLI::Range(10L, 60000L))
      ->capture_default_str();
  tuning
      ->add_option("--heartbeat-timeout", heartbeatTimeout,
                   "A child silent this long is killed and restarted")
      ->check(CLI::Range(20L, 600000L))
      ->capture_default_str();
  tuning->add_option("--restart-delay-min", restartMin, "First restart delay; doubles per death")
      ->check(CLI::Range(0L, 60000L))
      ->capture_default_str();
  tuning->add_option("--restart-delay-max", restartMax, "Longest restart delay")
      ->check(CLI::Range(0L, 600000L))
      ->capture_default_str();
  tuning
      ->add_option("--healthy-after", healthyAfter,
                   "Ready this long, a child's backoff starts over")
      ->check(CLI::Range(0L, 3600000L))
      ->capture_default_str();
  long batchDeadline = config.batchDeadline.count();
  tuning
      ->add_option("--batch-deadline", batchDeadline,
                   "A renderer that has not finished the batch it works on after this long is "
                   "killed and replaced; a command that brings it down twice is quarantined")
      ->check(CLI::Range(10L, 600000L))
      ->capture_default_str();
  uint64_t surfaceMemoryMiB = config.arenaBytes >> 20;
  app.add_option("--surface-memory", surfaceMemoryMiB,
                 "MiB for the guest's offscreen surfaces, kept in a memory area that outlives "
                 "the renderer (only what is used is allocated)")
      ->check(CLI::Range(16, 2048))
      ->capture_default_str();
  tuning
      ->add_option("--max-startup-failures", sup.maxStartupFailures,
                   "Give up on a child that fails this many times in a row before becoming ready")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  base::initLogging("broker", STDERR_FILENO, config.logLevel);
  if (heartbeatTimeout <= heartbeatInterval) {
    spdlog::error("--heartbeat-timeout ({} ms) must be longer than --heartbeat-interval ({} ms)",
                  heartbeatTimeout, heartbeatInterval);
    return 2;
  }
  if (restartMax < restartMin) {
    spdlog::error("--restart-delay-max ({} ms) must not be below --restart-delay-min ({} ms)",
                  restartMax, restartMin);
    return 2;
  }
  if (!config.listen.empty() || !unixPath.empty()) {
    if (passwordFilePath.empty() && !disableTicketing) {
      spdlog::error(
          "clients would need a password, but none is set: pass --password-file FILE, "
          "or --disable-ticketing to let anyone who reaches the socket connect");
      return 2;
    }
    if (config.listen.size() + (unixPath.empty() ? 0 : 1) > 4) {
      spdlog::error("at most 4 listening sockets (--listen and --unix together)");
      return 2;
    }
  } else if (!passwordFilePath.empty() || disableTicketing) {
    spdlog::warn(
        "--password-file / --disable-ticketing without --listen or --unix: no client "
        "can connect anyway");
  }
  if (noShm && !shmAllow.empty()) {
    spdlog::error("--no-shm and --shm-allow contradict each other: give one of them");
    return 2;
  }
  if (!noShm) {
    auto uids = broker::resolveShmUsers(shmAllow, ::getuid());
    if (auto* error = std::get_if<std::string>(&uids)) {
      spdlog::error("{}", *error);
      return 2;
    }
    config.clients.shmUids = std::get<std::vector<uint32_t>>(uids);
    if (!shmAllow.empty() && unixPath.empty())
      spdlog::warn(
          "--shm-allow without --unix: the shared-memory display is offered on unix "
          "sockets only, so nobody gets it");
  }
  if (!unixPath.empty()) {
    broker::UnixSocketOptions unix;
    unix.path = unixPath;
    unix.owner = unixOwner;
    unix.group = unixGroup;
    char* end = nullptr;
    unsigned long mode = std::strtoul(unixMode.c_str(), &end, 8);
    if (unixMode.empty() || *end != '\0' || mode > 0777) {
      spdlog::error("--unix-mode {}: expected octal permissions such as 0600 or 0660", unixMode);
      return 2;
    }
    unix.mode = static_cast<mode_t>(mode);
    config.unixSocket = unix;
  }
  if (!passwordFilePath.empty()) {
    std::string error, warning;
    config.clients.password = broker::readPasswordFile(passwordFilePath, error, warning);
    if (!config.clients.password) {
      spdlog::error("{}", error);
      return 2;
    }
    if (!warning.empty())
      spdlog::warn("{}", warning);
  }
  auto expiry = broker::parsePasswordExpiry(passwordExpiry, static_cast<int64_t>(::time(nullptr)));
  if (auto* error = std::get_if<std::string>(&expiry)) {
    spdlog::error("{}", *error);
    return 2;
  }
  config.clients.passwordExpiresAt = std::get<int64_t>(expiry);
  using broker::ImageCompression;
  config.clients.imageCompression = imageCompression == "off"   ? ImageCompression::Off
                                    : imageCompression == "lz"  ? ImageCompression::Lz
                                    : imageCompression == "lz4" ? ImageCompression::Lz4
                                                                : ImageCompression::AutoLz;
  config.clients.mouseMode =
      mouseMode == "server" ? broker::MouseMode::Server : broker::MouseMode::Client;
  {
    std::istringstream words(guestArgs);
    std::string word;
    while (words >> word)
      config.guestArgs.push_back(word);
  }
  sup.heartbeatInterval = broker::Millis(heartbeatInterval);
  sup.heartbeatTimeout = broker::Millis(heartbeatTimeout);
  sup.restartDelayMin = broker::Millis(restartMin);
  sup.restartDelayMax = broker::Millis(restartMax);
  sup.healthyAfter = broker::Millis(healthyAfter);
  config.batchDeadline = broker::Millis(batchDeadline);
  config.arenaBytes = surfaceMemoryMiB << 20;
  config.sandboxMode = sandbox::parseMode(sandboxMode);
  for (const char* child : {"spicebox-renderer", "spicebox-netproxy"}) {
    std::string path = config.libexecDir + "/" + child;
    if (::access(path.c_str(), X_OK) != 0) {
      spdlog::error("cannot run {}: {}. Install spicebox completely or pass --libexec-dir DIR",
                    path, std::strerror(errno));
      return 2;
    }
  }
  if (broker::usesBuiltinGuest(config)) {
    std::string path = broker::builtinGuestPath(config);
    if (::access(path.c_str(), X_OK) != 0) {
      spdlog::error(
          "cannot run the built-in guest {}: {}. Install spicebox-guestsim there, pass "
          "--builtin-guest none to start without a guest, or --vmm-socket PATH to wait for a VMM",
          path, std::strerror(errno));
      return 2;
    }
  }
  if (config.sandboxMode == sandbox::Mode::Off) {
    spdlog::warn("--sandbox=off: the renderer and the netproxy run UNCONFINED. Debugging only.");
  }
  try {
    broker::Broker broker(std::move(config));
    return broker.run();
  } catch (const std::exception& e) {
    spdlog::critical("broker failed: {}", e.what());
    return 1;
  }
}
