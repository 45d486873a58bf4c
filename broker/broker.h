// Runs in: broker (privileged). Owns the event loop, the children, and (later) every shared-memory
// segment and the QXL device model. Parses no draw command and no SPICE message.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "base/uv-handle.h"
#include "broker/children.h"
#include "broker/vmm-link.h"
#include "sandbox/sandbox.h"

namespace spicebox::broker {

struct Config {
  sandbox::Mode sandboxMode = sandbox::Mode::BestEffort;
  std::string libexecDir;  // where spicebox-renderer and spicebox-netproxy are
  std::string logLevel;    // passed on to the children
  SupervisionPolicy supervision;
  std::string vmmSocket;  // --vmm-socket: where a VMM links (qxl-link); empty: no VMM listener
};

class Broker {
 public:
  explicit Broker(Config config);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Starts the children and runs until SIGTERM/SIGINT (exit status 0) or until a child is given
  // up on (exit status 1). Returns the process exit status.
  int run();

 private:
  ChildSpec childSpec(const char* name) const;
  void onSignal(int signum);
  // Stops the children in order (netproxy first: clients stop seeing the display; then the
  // renderer), then lets the loop end.
  void shutdown(int exitStatus);
  void finish();
  void reportStatus();

  Config config_;
  uv_loop_t loop_{};
  base::UvHandle<uv_signal_t> sigterm_;
  base::UvHandle<uv_signal_t> sigint_;
  std::unique_ptr<Child> renderer_;
  std::unique_ptr<Child> netproxy_;
  std::unique_ptr<VmmLink> vmm_;  // with --vmm-socket only
  bool shuttingDown_ = false;
  bool notifiedReady_ = false;
  int exitStatus_ = 0;
  std::string lastStatus_;
};

}  // namespace spicebox::broker
