// Runs in: broker. Command line -> Config -> Broker::run(); nothing else.
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <climits>
#include <filesystem>

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
  app.add_option("--builtin-guest", config.builtinGuest,
                 "Without --vmm-socket: start spicebox-guestsim (from --libexec-dir) with this "
                 "scenario as the VMM, over a private socket; 'none' starts no guest")
      ->capture_default_str();
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
  sup.heartbeatInterval = broker::Millis(heartbeatInterval);
  sup.heartbeatTimeout = broker::Millis(heartbeatTimeout);
  sup.restartDelayMin = broker::Millis(restartMin);
  sup.restartDelayMax = broker::Millis(restartMax);
  sup.healthyAfter = broker::Millis(healthyAfter);
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
