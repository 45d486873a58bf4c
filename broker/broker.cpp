#include "broker/broker.h"

#include <signal.h>
#include <systemd/sd-daemon.h>

#include <spdlog/spdlog.h>
#include "base/syscall.h"
#include "broker/peer-netproxy.h"
#include "broker/peer-renderer.h"

namespace spicebox::broker {

Broker::Broker(Config config) : config_(std::move(config)) {
  if (int rc = uv_loop_init(&loop_); rc != 0)
    throw base::SystemError(-rc, "initialising the event loop");
}

Broker::~Broker() {
  vmm_.reset();
  renderer_.reset();
  netproxy_.reset();
  sigterm_.close();
  sigint_.close();
  uv_run(&loop_, UV_RUN_NOWAIT);  // runs the close callbacks, which free the handles
  uv_loop_close(&loop_);
}

ChildSpec Broker::childSpec(const char* name) const {
  ChildSpec spec;
  spec.binary = config_.libexecDir + "/spicebox-" + name;
  spec.args = {"--sandbox", sandbox::toString(config_.sandboxMode)};
  if (!config_.logLevel.empty()) {
    spec.args.push_back("--log-level");
    spec.args.push_back(config_.logLevel);
  }
  return spec;
}

int Broker::run() {
  // Writes to a peer that died must fail with EPIPE, not kill the broker.
  ::signal(SIGPIPE, SIG_IGN);
  for (auto* sig : {&sigterm_, &sigint_}) {
    uv_signal_init(&loop_, sig->get());
    (*sig)->data = this;
  }
  auto onSig = [](uv_signal_t* handle, int signum) {
    static_cast<Broker*>(handle->data)->onSignal(signum);
  };
  uv_signal_start(sigterm_.get(), onSig, SIGTERM);
  uv_signal_start(sigint_.get(), onSig, SIGINT);

  Child::Events events{
      .onStateChange = [this] { reportStatus(); },
      .onGaveUp = [this](const std::string&) { shutdown(1); },
  };
  // Before the children start: a socket path that cannot be used ends the broker at once.
  if (!config_.vmmSocket.empty()) {
    vmm_ =
        std::make_unique<VmmLink>(&loop_, config_.vmmSocket,
                                  VmmLink::Events{
                                      .onLinked = [this] { reportStatus(); },
                                      .onUnlinked = [this](const std::string&) { reportStatus(); },
                                  });
  }
  renderer_ = std::make_unique<Child>(&loop_, makeRendererPeer(), childSpec("renderer"),
                                      config_.supervision, events);
  netproxy_ = std::make_unique<Child>(&loop_, makeNetproxyPeer(), childSpec("netproxy"),
                                      config_.supervision, events);
  spdlog::info("spicebox broker starting (pid {}, sandbox mode {})", ::getpid(),
               sandbox::toString(config_.sandboxMode));
  renderer_->start();
  netproxy_->start();

  uv_run(&loop_, UV_RUN_DEFAULT);
  spdlog::info("spicebox broker stopped");
  return exitStatus_;
}

void Broker::onSignal(int signum) {
  if (shuttingDown_) {
    // A second Ctrl-C: do not wait for the grace period.
    spdlog::warn("{} again: killing the children now", sigabbrev_np(signum));
    renderer_->killNow();
    netproxy_->killNow();
    return;
  }
  spdlog::info("SIG{}: shutting down", sigabbrev_np(signum));
  shutdown(0);
}

void Broker::shutdown(int exitStatus) {
  if (shuttingDown_)
    return;
  shuttingDown_ = true;
  exitStatus_ = exitStatus;
  sd_notify(0, "STOPPING=1");
  netproxy_->stop([this] { renderer_->stop([this] { finish(); }); });
}

void Broker::finish() {
  // No child process is left. Closing the last handles lets uv_run() return.
  vmm_.reset();  // the VMM sees its connection end
  sigterm_.close();
  sigint_.close();
  uv_stop(&loop_);
}

void Broker::reportStatus() {
  std::string status = renderer_->describe() + "; " + netproxy_->describe();
  if (vmm_)
    status += "; " + vmm_->describe();
  if (status == lastStatus_)
    return;
  lastStatus_ = status;
  spdlog::debug("status: {}", status);
  sd_notifyf(0, "STATUS=%s", status.c_str());
  if (!notifiedReady_ && renderer_->state() == ChildState::Ready &&
      netproxy_->state() == ChildState::Ready) {
    notifiedReady_ = true;
    sd_notify(0, "READY=1");
  }
}

}  // namespace spicebox::broker
