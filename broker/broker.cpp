#include "broker/broker.h"

#include <signal.h>
#include <systemd/sd-daemon.h>

#include <spdlog/spdlog.h>
#include "base/syscall.h"
#include "broker/peer-netproxy.h"
#include "broker/peer-renderer.h"

namespace spicebox::broker {

namespace {

// How often STATUS is refreshed with the device's counters (sent only when it changed).
constexpr uint64_t STATUS_REFRESH_MS = 1000;
// How long the built-in guest has to stop after SIGTERM.
constexpr Millis BUILTIN_GUEST_STOP_GRACE{2000};

}  // namespace

std::string builtinGuestPath(const Config& config) {
  return config.libexecDir + "/spicebox-guestsim";
}

bool usesBuiltinGuest(const Config& config) {
  return config.vmmSocket.empty() && config.builtinGuest != "none";
}

Broker::Broker(Config config) : config_(std::move(config)) {
  if (int rc = uv_loop_init(&loop_); rc != 0)
    throw base::SystemError(-rc, "initialising the event loop");
}

Broker::~Broker() {
  vmm_.reset();
  builtinGuest_.reset();
  statusTimer_.close();
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
      .onReady = nullptr,
      .onMessage = nullptr,
  };
  Child::Events rendererEvents = events;
  rendererEvents.onReady = [this] { onRendererReady(); };
  rendererEvents.onMessage = [this](const BoundaryMessage& m) { return onRendererMessage(m); };
  renderer_ = std::make_unique<Child>(&loop_, makeRendererPeer(), childSpec("renderer"),
                                      config_.supervision, rendererEvents);
  netproxy_ = std::make_unique<Child>(&loop_, makeNetproxyPeer(), childSpec("netproxy"),
                                      config_.supervision, events);
  // Before the children start: a socket path that cannot be used ends the broker at once.
  startVmm();
  uv_timer_init(&loop_, statusTimer_.get());
  statusTimer_->data = this;
  uv_timer_start(
      statusTimer_.get(), [](uv_timer_t* t) { static_cast<Broker*>(t->data)->reportStatus(); },
      STATUS_REFRESH_MS, STATUS_REFRESH_MS);
  spdlog::info("spicebox broker starting (pid {}, sandbox mode {})", ::getpid(),
               sandbox::toString(config_.sandboxMode));
  renderer_->start();
  netproxy_->start();

  uv_run(&loop_, UV_RUN_DEFAULT);
  spdlog::info("spicebox broker stopped");
  return exitStatus_;
}

void Broker::startVmm() {
  VmmLink::Events events{
      .onLinked = [this] { onLinked(); },
      .onUnlinked = [this](const std::string&) { onUnlinked(); },
      .sendBatch = [this](uint64_t seq,
                          std::span<const qxl::WorkItem> items) { return sendBatch(seq, items); },
  };
  if (!config_.vmmSocket.empty()) {
    vmm_ = std::make_unique<VmmLink>(&loop_, config_.vmmSocket, std::move(events));
    return;
  }
  if (!usesBuiltinGuest(config_))
    return;
  // The built-in guest is a VMM like any other, on a private socketpair: its end becomes its
  // descriptor 3, ours is served as if it had connected to --vmm-socket.
  auto [ours, theirs] = ipc::socketPair();
  std::vector<std::string> argv{builtinGuestPath(config_), "--vmm-fd", "3", "--scenario",
                                config_.builtinGuest};
  if (!config_.logLevel.empty()) {
    argv.push_back("--log-level");
    argv.push_back(config_.logLevel);
  }
  builtinGuest_ = std::make_unique<OneShotProcess>(&loop_, "built-in guest", argv, theirs.get(),
                                                   [this] { reportStatus(); });
  theirs.reset();
  vmm_ = std::make_unique<VmmLink>(&loop_, std::move(ours), "built-in guest", std::move(events));
}

void Broker::onRendererReady() {
  // A new incarnation: nothing sent to an earlier one is in flight any more (the device resends
  // it from rendererAvailable()).
  inFlight_.clear();
  orphaned_.clear();
  connectRendererToDevice();
}

void Broker::onLinked() {
  reportStatus();
  connectRendererToDevice();
}

void Broker::onUnlinked() {
  // The device is gone. What it sent may still be in the renderer's queue: those answers are
  // accepted in order and ignored.
  orphaned_.insert(orphaned_.end(), inFlight_.begin(), inFlight_.end());
  inFlight_.clear();
  capnp::MallocMessageBuilder message;
  buildDropGuestMemory(message);
  renderer_->send(message);  // no ready renderer: the next one starts without guest memory
  reportStatus();
}

void Broker::connectRendererToDevice() {
  if (!vmm_ || !vmm_->device() || renderer_->state() != ChildState::Ready)
    return;
  const QxlBars* bars = vmm_->bars();
  const LinkSizes& layout = vmm_->layout();
  capnp::MallocMessageBuilder message;
  buildGuestMemory(message, GuestMemoryLayout{bars->ram.size(), bars->vram.size(),
                                              layout.ramPhysStart, layout.vramPhysStart});
  const int fds[] = {bars->ram.fd(), bars->vram.fd()};
  if (!renderer_->send(message, fds))
    return;  // the renderer is being replaced; its successor gets here from onRendererReady()
  vmm_->rendererAvailable();
}

bool Broker::sendBatch(uint64_t seq, std::span<const qxl::WorkItem> items) {
  if (renderer_->state() != ChildState::Ready)
    return false;
  capnp::MallocMessageBuilder message;
  buildBatch(message, seq, items);
  if (!renderer_->send(message))
    return false;
  inFlight_.push_back(seq);
  return true;
}

ipc::Channel::Verdict Broker::onRendererMessage(const BoundaryMessage& message) {
  const auto& done = std::get<RendererBatchDone>(message);
  if (!orphaned_.empty()) {
    if (done.seq != orphaned_.front())
      return fmt::format("batchDone for batch {}, but the oldest batch in flight is {}", done.seq,
                         orphaned_.front());
    orphaned_.pop_front();
    return std::nullopt;
  }
  if (inFlight_.empty())
    return fmt::format("batchDone for batch {}, but no batch is in flight", done.seq);
  if (done.seq != inFlight_.front())
    return fmt::format("batchDone for batch {}, but the oldest batch in flight is {}", done.seq,
                       inFlight_.front());
  inFlight_.pop_front();
  if (done.rejected > 0)
    spdlog::debug("renderer could not read {} commands of batch {}", done.rejected, done.seq);
  const qxl::Device* device = vmm_ ? vmm_->device() : nullptr;
  if (!device || device->batchesInFlight() == 0) {
    // Our bookkeeping and the device's disagree: a bug of ours, not the renderer's.
    spdlog::error("batch {} answered, but the device has no batch in flight; ignored", done.seq);
    return std::nullopt;
  }
  vmm_->batchDone(done.seq);
  return std::nullopt;
}

void Broker::onSignal(int signum) {
  if (shuttingDown_) {
    // A second Ctrl-C: do not wait for the grace period.
    spdlog::warn("{} again: killing the children now", sigabbrev_np(signum));
    renderer_->killNow();
    netproxy_->killNow();
    if (builtinGuest_ && builtinGuest_->pid() > 0)
      ::kill(builtinGuest_->pid(), SIGKILL);
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
  netproxy_->stop([this] {
    renderer_->stop([this] {
      if (builtinGuest_)
        builtinGuest_->stop(BUILTIN_GUEST_STOP_GRACE, [this] { finish(); });
      else
        finish();
    });
  });
}

void Broker::finish() {
  // No child process is left. Closing the last handles lets uv_run() return.
  vmm_.reset();  // the VMM sees its connection end
  statusTimer_.close();
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
