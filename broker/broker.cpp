#include "broker/broker.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>
#include <utility>

#include <spdlog/spdlog.h>
#include "base/log.h"
#include "base/syscall.h"
#include "broker/peer-netproxy.h"
#include "broker/peer-renderer.h"
#include "ipc/render.capnp.h"

namespace spicebox::broker {

namespace {

// How often STATUS is refreshed with the device's counters (sent only when it changed).
constexpr uint64_t STATUS_REFRESH_MS = 1000;
// How long the built-in guest has to stop after SIGTERM.
constexpr Millis BUILTIN_GUEST_STOP_GRACE{2000};
constexpr uint64_t PAGE_BYTES = 4096;

}  // namespace

std::variant<std::shared_ptr<DisplaySegment>, std::string> createDisplaySegment(
    uint32_t width, uint32_t height, uint64_t generation) {
  // The device refuses larger primaries already; this bounds what the broker allocates even if
  // it did not (8192 x 8192 x 4 = 256 MiB).
  const uint32_t max = ipc::render::MAX_DISPLAY_DIMENSION;
  if (width == 0 || height == 0 || width > max || height > max)
    return fmt::format("primary of {}x{} pixels: no display segment is made above {}x{}", width,
                       height, max, max);
  const uint32_t stride = width * 4;
  // Two buffers, each page-aligned: the renderer draws into one while a tear-free viewer reads the
  // other (render.capnp DisplaySegment).
  const uint64_t buffer = (uint64_t{stride} * height + PAGE_BYTES - 1) / PAGE_BYTES * PAGE_BYTES;
  const uint64_t size = 2 * buffer;
  base::Fd fd(::memfd_create("spicebox-display", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd)
    return fmt::format("memfd_create of a display segment failed: {}", std::strerror(errno));
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    return fmt::format("cannot size a display segment to {} bytes: {} (is memory short?)", size,
                       std::strerror(errno));
  // Nobody who gets the descriptor can shrink it under another's mapping (SIGBUS) or grow it.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return fmt::format("cannot seal a display segment: {}", std::strerror(errno));
  // The netproxy's copy: a new open file description, read-only, so no mapping of it can write.
  base::Fd readOnly(
      ::open(fmt::format("/proc/self/fd/{}", fd.get()).c_str(), O_RDONLY | O_CLOEXEC));
  if (!readOnly)
    return fmt::format(
        "cannot reopen a display segment read-only through /proc/self/fd: {} (is "
        "/proc mounted?)",
        std::strerror(errno));
  auto segment = std::make_shared<DisplaySegment>();
  segment->fd = std::move(fd);
  segment->readOnly = std::move(readOnly);
  segment->layout = DisplaySegmentLayout{generation, size, stride, width, height, buffer};
  return segment;
}

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
  localTimer_.close();
  deadlineTimer_.close();
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
      .onDied = nullptr,
  };
  Child::Events netproxyEvents = events;
  netproxyEvents.onStateChange = [this] {
    onNetproxyStateChange();
    reportStatus();
  };
  netproxyEvents.onReady = [this] { onNetproxyReady(); };
  netproxyEvents.onMessage = [this](const BoundaryMessage& m) { return onNetproxyMessage(m); };
  Child::Events rendererEvents = events;
  rendererEvents.onReady = [this] { onRendererReady(); };
  rendererEvents.onMessage = [this](const BoundaryMessage& m) { return onRendererMessage(m); };
  rendererEvents.onDied = [this](const ChildDeath& death) { onRendererDied(death); };
  for (auto* timer : {&localTimer_, &deadlineTimer_}) {
    uv_timer_init(&loop_, timer->get());
    (*timer)->data = this;
  }
  renderer_ = std::make_unique<Child>(&loop_, makeRendererPeer(), childSpec("renderer"),
                                      config_.supervision, rendererEvents);
  netproxy_ = std::make_unique<Child>(&loop_, makeNetproxyPeer(), childSpec("netproxy"),
                                      config_.supervision, netproxyEvents);
  // Before the children start: an address or a socket path that cannot be used ends the broker
  // at once.
  if (!openListeners())
    return 2;
  if (!config_.statusSocket.empty()) {
    auto made = listenUnix(UnixSocketOptions{config_.statusSocket, 0600, "", ""});
    if (auto* error = std::get_if<std::string>(&made)) {
      spdlog::error("--status-socket: {}", *error);
      return 2;
    }
    statusServer_ = std::make_unique<StatusServer>(
        &loop_, std::move(std::get<ListeningSocket>(made)), [this] { return statusReport(); });
    spdlog::info("status on {} (spicebox-ctl --status-socket {} status)", config_.statusSocket,
                 config_.statusSocket);
  }
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
  std::vector<std::string> argv{builtinGuestPath(config_), "--vmm-fd", "3"};
  // A recording named in --guest-args replaces the scenario.
  if (std::find(config_.guestArgs.begin(), config_.guestArgs.end(), "--replay") ==
      config_.guestArgs.end())
    argv.insert(argv.end(), {"--scenario", config_.builtinGuest});
  argv.insert(argv.end(), config_.guestArgs.begin(), config_.guestArgs.end());
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
  localBatches_.clear();
  rendererWaitsForTaken_ = false;
  disarmBatchDeadline();
  ++rendererIncarnation_;
  // The old renderer's wait is over with it; the netproxy's answer to it is ignored.
  if (awaitingSync_)
    staleSync_ = std::exchange(awaitingSync_, std::nullopt);
  connectRendererToDevice();
}

bool Broker::openListeners() {
  for (const std::string& spec : config_.listen) {
    auto made = listenTcp(spec);
    if (auto* error = std::get_if<std::string>(&made)) {
      spdlog::error("{}", *error);
      return false;
    }
    listeners_.push_back(std::move(std::get<ListeningSocket>(made)));
  }
  if (config_.unixSocket) {
    auto made = listenUnix(*config_.unixSocket);
    if (auto* error = std::get_if<std::string>(&made)) {
      spdlog::error("{}", *error);
      return false;
    }
    listeners_.push_back(std::move(std::get<ListeningSocket>(made)));
  }
  config_.clients.listeners.clear();
  for (const ListeningSocket& l : listeners_) {
    spdlog::info("listening for SPICE clients on {} ({})", l.name, l.unix ? "unix" : "tcp");
    config_.clients.listeners.emplace_back(l.unix, l.name);
  }
  if (listeners_.empty())
    spdlog::info("no --listen or --unix: no SPICE client can connect");
  return true;
}

void Broker::onNetproxyReady() {
  if (listeners_.empty())
    return;  // it serves nobody: nothing to tell it
  capnp::MallocMessageBuilder message;
  buildConfigure(message, config_.clients);
  std::vector<int> fds;
  for (const ListeningSocket& l : listeners_)
    fds.push_back(l.fd.get());
  if (!netproxy_->send(message, fds))
    return;  // being replaced: its successor gets here again
  sendNetproxySegment();
  // It copied the segment with no regard to the renderer: the next frame repaints all of it.
  fullFrameNext_ = shownSegment_ != nullptr;
  if (cursor_) {
    capnp::MallocMessageBuilder cursor;
    buildCursor(cursor, *cursor_);
    netproxy_->send(cursor);
  }
}

void Broker::sendNetproxySegment() {
  if (listeners_.empty())
    return;
  capnp::MallocMessageBuilder message;
  if (!shownSegment_) {
    buildNoDisplay(message);
    netproxy_->send(message);
    return;
  }
  buildNetproxySegment(message, shownSegment_->layout, shownBuffer_);
  const int fds[] = {shownSegment_->readOnly.get()};
  netproxy_->send(message, fds);
}

bool Broker::forwardOutput(const std::shared_ptr<DisplaySegment>& segmentAfter,
                           const RendererBatchDone& done) {
  bool reads = false;  // whether the netproxy reads the segment for what is sent here
  shownBuffer_ = segmentAfter ? done.buffer : 0;
  if (segmentAfter != shownSegment_) {
    // A new primary (the renderer has drawn this batch into it: clients get the whole picture),
    // or none.
    shownSegment_ = segmentAfter;
    sendNetproxySegment();
    fullFrameNext_ = false;
    reads = shownSegment_ != nullptr;
  } else if (shownSegment_ && !listeners_.empty() && fullFrameNext_) {
    const RendererRect whole{0, 0, static_cast<int32_t>(shownSegment_->layout.height),
                             static_cast<int32_t>(shownSegment_->layout.width)};
    capnp::MallocMessageBuilder message;
    buildFrame(message, shownSegment_->layout.generation, shownBuffer_, std::span(&whole, 1), {});
    if (netproxy_->send(message))
      fullFrameNext_ = false;
    reads = true;
  } else if (shownSegment_ && !listeners_.empty() &&
             (!done.damage.empty() || !done.hints.empty())) {
    capnp::MallocMessageBuilder message;
    buildFrame(message, shownSegment_->layout.generation, shownBuffer_, done.damage, done.hints);
    netproxy_->send(message);
    reads = true;
  }
  if (done.cursor) {
    cursor_ = done.cursor;
    // Serials are per renderer process (a restarted one counts from 1 again): made unique per
    // broker run, so a netproxy that keeps the shape of a serial never shows a stale one.
    if (cursor_->shapeSerial != 0)
      cursor_->shapeSerial |= rendererIncarnation_ << 32;
    if (!listeners_.empty()) {
      capnp::MallocMessageBuilder message;
      buildCursor(message, *cursor_);
      netproxy_->send(message);
    }
  }
  return reads;
}

void Broker::gateOutput(uint64_t seq, bool netproxyReads) {
  // Nothing of this batch to read: every earlier read ended before the renderer drew it (each
  // batch that gave the netproxy something waited for its sync).
  if (!netproxyReads || listeners_.empty() || netproxy_->state() != ChildState::Ready) {
    sendOutputTaken(seq);
    return;
  }
  capnp::MallocMessageBuilder message;
  buildSync(message, seq);
  if (!netproxy_->send(message)) {
    sendOutputTaken(seq);  // no netproxy to wait for (it is being replaced)
    return;
  }
  awaitingSync_ = seq;
}

void Broker::sendOutputTaken(uint64_t seq) {
  capnp::MallocMessageBuilder message;
  buildOutputTaken(message, seq);
  renderer_->send(message);  // no ready renderer: its successor starts without waiting
  rendererWaitsForTaken_ = false;
  // It goes on with the next batch it has, if any.
  if (!inFlight_.empty() && !localBatches_.count(inFlight_.front()))
    armBatchDeadline();
}

void Broker::armBatchDeadline() {
  uv_timer_start(
      deadlineTimer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Broker*>(t->data);
        if (self->inFlight_.empty() || self->renderer_->state() != ChildState::Ready)
          return;
        self->renderer_->kill(
            fmt::format("it did not finish batch {} within the batch deadline of {} ms",
                        self->inFlight_.front(), self->config_.batchDeadline.count()),
            true);
      },
      static_cast<uint64_t>(config_.batchDeadline.count()), 0);
}

void Broker::disarmBatchDeadline() {
  uv_timer_stop(deadlineTimer_.get());
}

void Broker::completeLocalBatches() {
  while (!inFlight_.empty() && localBatches_.count(inFlight_.front())) {
    const uint64_t seq = inFlight_.front();
    inFlight_.pop_front();
    localBatches_.erase(seq);
    plans_.erase(seq);
    if (vmm_ && vmm_->device() && vmm_->device()->batchesInFlight() > 0)
      vmm_->batchDone(seq);
  }
}

void Broker::onRendererDied(const ChildDeath& death) {
  disarmBatchDeadline();
  if (!recovery_ || inFlight_.empty())
    return;
  const auto progress = renderer::recovery::readProgress(recovery_->view->state());
  if (progress.phase != renderer::recovery::Phase::Running || progress.seq != inFlight_.front())
    return;  // between commands: nothing to blame
  auto plan = plans_.find(progress.seq);
  if (plan == plans_.end() || progress.index >= plan->second.items.size())
    return;  // not a batch and item we sent (a compromised renderer's record): nothing to blame
  const std::string what = describeItem(plan->second.items[progress.index]);
  if (death.fromOutside || !(death.crashed || death.hung)) {
    spdlog::info(
        "renderer ended ({}) in batch {} item {} ({}): not the command's doing, not "
        "counted against it",
        death.how, progress.seq, progress.index, what);
    return;
  }
  const int deaths = ++deathsAt_[{progress.seq, progress.index}];
  spdlog::warn("renderer {} in batch {} item {} ({}): {} time{} for this item", death.how,
               progress.seq, progress.index, what, deaths, deaths == 1 ? "" : "s");
  if (deaths >= DEATHS_TO_QUARANTINE)
    quarantine(progress.seq, progress.index);
}

void Broker::quarantine(uint64_t seq, uint32_t index) {
  auto& list = quarantined_[seq];
  if (std::find(list.begin(), list.end(), index) != list.end())
    return;
  list.push_back(index);
  ++commandsQuarantined_;
  const auto plan = plans_.find(seq);
  spdlog::error(
      "quarantined batch {} item {} ({}): it brought the renderer down {} times; it is released "
      "to the guest without being drawn ({} quarantined so far)",
      seq, index, plan != plans_.end() ? describeItem(plan->second.items[index]) : std::string("?"),
      DEATHS_TO_QUARANTINE, commandsQuarantined_);
  const auto now = std::chrono::steady_clock::now();
  recentQuarantines_.push_back(now);
  while (!recentQuarantines_.empty() && now - recentQuarantines_.front() > QUARANTINE_WINDOW)
    recentQuarantines_.pop_front();
  if (recentQuarantines_.size() >= QUARANTINES_TO_STOP && !renderingStopped_)
    stopRendering(fmt::format(
        "{} commands quarantined within {} s: the guest is sending commands that crash the "
        "renderer; its commands are released without drawing and clients keep the last picture "
        "until the guest's link ends",
        recentQuarantines_.size(), QUARANTINE_WINDOW.count()));
  reportStatus();
}

void Broker::stopRendering(const std::string& why) {
  renderingStopped_ = true;
  renderingNote_ = why;
  spdlog::critical("rendering STOPPED for this guest: {}", why);
}

void Broker::onNetproxyStateChange() {
  // A netproxy that is not ready will not answer: the renderer need not wait for it.
  if (netproxy_->state() != ChildState::Ready && awaitingSync_)
    sendOutputTaken(*std::exchange(awaitingSync_, std::nullopt));
  if (netproxy_->state() != ChildState::Ready)
    staleSync_.reset();
}

ipc::Channel::Verdict Broker::onNetproxyMessage(const BoundaryMessage& message) {
  if (const auto* synced = std::get_if<NetproxySynced>(&message)) {
    if (staleSync_ && synced->seq == *staleSync_) {
      staleSync_.reset();
      return std::nullopt;
    }
    if (!awaitingSync_ || *awaitingSync_ != synced->seq)
      return fmt::format("synced {} answers no sync", synced->seq);
    awaitingSync_.reset();
    sendOutputTaken(synced->seq);
    return std::nullopt;
  }
  if (const auto* clients = std::get_if<NetproxyClients>(&message)) {
    clients_ = *clients;
    reportStatus();
    return std::nullopt;
  }
  if (const auto* input = std::get_if<NetproxyInput>(&message)) {
    ++inputs_;
    if (vmm_)
      vmm_->sendInput(*input);  // no VMM linked: the event has nowhere to go
    return std::nullopt;
  }
  return std::string("a renderer message on the netproxy's channel");
}

void Broker::onLinked() {
  if (!createRecoveryArea())
    spdlog::error(
        "no recovery area for this guest: a renderer that dies loses its surfaces (is memory "
        "short?)");
  reportStatus();
  connectRendererToDevice();
}

bool Broker::createRecoveryArea() {
  recovery_.reset();
  const uint64_t size = renderer::recovery::areaBytes(config_.arenaBytes);
  base::Fd fd(::memfd_create("spicebox-recovery", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0 ||
      ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    spdlog::error("cannot make the {}-byte recovery area: {}", size, std::strerror(errno));
    return false;
  }
  base::Fd viewFd(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  auto view = renderer::recovery::Area::map(std::move(viewFd), config_.arenaBytes, false);
  if (auto* error = std::get_if<std::string>(&view)) {
    spdlog::error("recovery area: {}", *error);
    return false;
  }
  recovery_ =
      Recovery{std::move(fd), std::move(std::get<std::unique_ptr<renderer::recovery::Area>>(view))};
  return true;
}

void Broker::onUnlinked() {
  // The device is gone. What it sent may still be in the renderer's queue: those answers are
  // accepted in order and ignored.
  orphaned_.insert(orphaned_.end(), inFlight_.begin(), inFlight_.end());
  inFlight_.clear();
  localBatches_.clear();
  disarmBatchDeadline();
  recovery_.reset();
  deathsAt_.clear();
  quarantined_.clear();
  recentQuarantines_.clear();
  if (renderingStopped_)
    spdlog::info("the guest's link ended: rendering starts again for the next one");
  renderingStopped_ = false;
  renderingNote_.clear();
  dropSegments();
  if (cursor_) {
    // The guest's pointer went with it: clients see none until the next guest sets one.
    cursor_ = RendererCursor{};
    if (!listeners_.empty()) {
      capnp::MallocMessageBuilder message;
      buildCursor(message, *cursor_);
      netproxy_->send(message);
    }
  }
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
  if (recovery_) {
    capnp::MallocMessageBuilder area;
    buildRecoveryArea(area, config_.arenaBytes);
    const int areaFd[] = {recovery_->fd.get()};
    if (!renderer_->send(area, areaFd))
      return;
  }
  // The picture lives on in the segments: the one the shown primary is drawn into (the recovery
  // area's primary record names it), then the newest, before the batches.
  if (shownSegment_ && shownSegment_ != segment_ && !sendSegment(*shownSegment_))
    return;
  if (segment_ && !sendSegment(*segment_))
    return;
  vmm_->rendererAvailable();
}

bool Broker::sendSegment(const DisplaySegment& segment) {
  capnp::MallocMessageBuilder message;
  buildDisplaySegment(message, segment.layout);
  const int fds[] = {segment.fd.get()};
  return renderer_->send(message, fds);
}

void Broker::dropSegments() {
  segment_.reset();
  plannedPrimary_.reset();
  plans_.clear();
  if (shownSegment_) {
    shownSegment_.reset();
    sendNetproxySegment();
  }
}

Broker::BatchOutputPlan Broker::planBatch(std::span<const qxl::WorkItem> items) {
  BatchOutputPlan plan;
  // The last createPrimary of the batch gets a segment (the renderer draws a createPrimary into
  // the latest segment of its size: an earlier one in the same batch, of another size, is not
  // created; the device lets a guest do that only by destroying the primary in between).
  for (const qxl::WorkItem& item : items) {
    if (const auto* create = std::get_if<qxl::CreatePrimaryItem>(&item)) {
      plannedPrimary_ = PrimarySize{create->width, create->height};
      auto made = createDisplaySegment(create->width, create->height, nextSegmentGeneration_);
      if (auto* error = std::get_if<std::string>(&made)) {
        spdlog::error("{}; the primary is not shown", *error);
        plan.segment.reset();
        segment_.reset();
        plannedPrimary_.reset();  // the renderer cannot create it: it reports no output
        continue;
      }
      ++nextSegmentGeneration_;
      plan.segment = std::move(std::get<std::shared_ptr<DisplaySegment>>(made));
      segment_ = plan.segment;
    } else if (std::holds_alternative<qxl::DestroyPrimaryItem>(item) ||
               std::holds_alternative<qxl::DestroyAllSurfacesItem>(item) ||
               std::holds_alternative<qxl::ResetItem>(item) ||
               (std::holds_alternative<qxl::DestroySurfaceItem>(item) &&
                std::get<qxl::DestroySurfaceItem>(item).surfaceId == 0)) {
      // The renderer keeps its mapping until it is done with the batch; ours goes now.
      segment_.reset();
      plannedPrimary_.reset();
    }
  }
  plan.primaryAfter = plannedPrimary_;
  plan.segmentAfter = segment_;
  for (const qxl::WorkItem& item : items) {
    BatchOutputPlan::Item planned{static_cast<uint8_t>(item.index())};
    if (const auto* command = std::get_if<qxl::CommandItem>(&item)) {
      ++plan.commands;
      planned.commandType = command->type;
      planned.addr = command->addr;
    }
    plan.items.push_back(planned);
  }
  return plan;
}

std::string Broker::describeItem(const BatchOutputPlan::Item& item) {
  if (item.kind == 0) {
    // QXLCmdType (qxl_dev.h), by value.
    static constexpr const char* TYPES[] = {"NOP",    "DRAW",    "UPDATE",
                                            "CURSOR", "MESSAGE", "SURFACE"};
    return fmt::format("{} command (QXL type {}) at guest address {:#x}",
                       item.commandType < std::size(TYPES) ? TYPES[item.commandType] : "unknown",
                       item.commandType, item.addr);
  }
  // The other qxl::WorkItem alternatives, in order.
  static constexpr const char* NAMES[] = {"command",        "createPrimary",   "destroyPrimary",
                                          "destroySurface", "destroySurfaces", "updateArea",
                                          "monitorsConfig", "memslots",        "reset"};
  return item.kind < std::size(NAMES) ? NAMES[item.kind] : "unknown item";
}

bool Broker::sendBatch(uint64_t seq, std::span<const qxl::WorkItem> items) {
  // Planned once, when the device first hands the batch over; a resend (same seq, same items)
  // reuses the plan and its segment.
  auto it = plans_.find(seq);
  if (it == plans_.end())
    it = plans_.emplace(seq, planBatch(items)).first;
  if (renderingStopped_) {
    // Released without drawing, in its turn after the batches the renderer still has.
    inFlight_.push_back(seq);
    localBatches_.insert(seq);
    uv_timer_start(
        localTimer_.get(),
        [](uv_timer_t* t) { static_cast<Broker*>(t->data)->completeLocalBatches(); }, 0, 0);
    return true;
  }
  if (renderer_->state() != ChildState::Ready)
    return false;
  if (it->second.segment && !sendSegment(*it->second.segment))
    return false;
  capnp::MallocMessageBuilder message;
  auto skip = quarantined_.find(seq);
  // A batch sent again may start with the memslot table it was built with (Device::
  // rendererAvailable): not one of its numbered items.
  const size_t numbered = it->second.items.size();
  const uint32_t prefix =
      items.size() > numbered ? static_cast<uint32_t>(items.size() - numbered) : 0;
  buildBatch(message, seq, items, prefix,
             skip != quarantined_.end() ? std::span<const uint32_t>(skip->second)
                                        : std::span<const uint32_t>{});
  if (!renderer_->send(message))
    return false;
  const bool idle = inFlight_.empty() && !rendererWaitsForTaken_;
  inFlight_.push_back(seq);
  if (idle)
    armBatchDeadline();
  return true;
}

ipc::Channel::Verdict Broker::onRendererMessage(const BoundaryMessage& message) {
  const auto& done = std::get<RendererBatchDone>(message);
  if (!orphaned_.empty()) {
    if (done.seq != orphaned_.front())
      return fmt::format("batchDone for batch {}, but the oldest batch in flight is {}", done.seq,
                         orphaned_.front());
    orphaned_.pop_front();
    sendOutputTaken(done.seq);
    return std::nullopt;
  }
  if (inFlight_.empty())
    return fmt::format("batchDone for batch {}, but no batch is in flight", done.seq);
  if (done.seq != inFlight_.front())
    return fmt::format("batchDone for batch {}, but the oldest batch in flight is {}", done.seq,
                       inFlight_.front());
  // The output must lie inside the primary as it is when the batch ends.
  auto plan = plans_.find(done.seq);
  const std::optional<PrimarySize> primary =
      plan != plans_.end() ? plan->second.primaryAfter : std::nullopt;
  if (auto refusal = checkOutput(done, primary))
    return refusal;
  if (plan != plans_.end() && plan->second.segmentAfter && done.buffer == 1 &&
      plan->second.segmentAfter->layout.backOffset == 0)
    return fmt::format("batchDone {} names buffer 1 of a segment that has one buffer", done.seq);
  disarmBatchDeadline();
  rendererWaitsForTaken_ = true;
  if (plan != plans_.end()) {
    auto skipped = quarantined_.find(done.seq);
    const uint32_t quarantinedHere =
        skipped != quarantined_.end() ? static_cast<uint32_t>(skipped->second.size()) : 0;
    const uint32_t drawable =
        plan->second.commands - std::min(quarantinedHere, plan->second.commands);
    const uint32_t rejected = std::min(done.rejected, drawable);
    commandsRendered_ += drawable - rejected;
    commandsRejected_ += rejected;
  }
  quarantined_.erase(done.seq);
  deathsAt_.erase(deathsAt_.lower_bound({done.seq, 0}), deathsAt_.lower_bound({done.seq + 1, 0}));
  const bool reads =
      forwardOutput(plan != plans_.end() ? plan->second.segmentAfter : nullptr, done);
  gateOutput(done.seq, reads);
  plans_.erase(plans_.begin(), plans_.upper_bound(done.seq));
  inFlight_.pop_front();
  damageRects_ += done.damage.size();
  hints_ += done.hints.size();
  if (done.rejected > 0)
    spdlog::debug("renderer could not read {} commands of batch {}", done.rejected, done.seq);
  const qxl::Device* device = vmm_ ? vmm_->device() : nullptr;
  if (!device || device->batchesInFlight() == 0) {
    // Our bookkeeping and the device's disagree: a bug of ours, not the renderer's.
    spdlog::error("batch {} answered, but the device has no batch in flight; ignored", done.seq);
    return std::nullopt;
  }
  vmm_->batchDone(done.seq);
  // Batches answered here while rendering is stopped may be next in line.
  if (!inFlight_.empty() && localBatches_.count(inFlight_.front()))
    uv_timer_start(
        localTimer_.get(),
        [](uv_timer_t* t) { static_cast<Broker*>(t->data)->completeLocalBatches(); }, 0, 0);
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
  statusServer_.reset();
  localTimer_.close();
  deadlineTimer_.close();
  statusTimer_.close();
  sigterm_.close();
  sigint_.close();
  uv_stop(&loop_);
}

StatusReport Broker::statusReport() const {
  StatusReport r;
  r.pid = ::getpid();
  r.uptimeSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - startedAt_).count();
  for (const Child* child : {renderer_.get(), netproxy_.get()}) {
    ChildStatus c;
    c.name = child->name();
    c.state = toString(child->state());
    c.pid = child->pid();
    c.restarts = child->restarts();
    c.sandbox = child->state() == ChildState::Ready ? sandbox::toString(child->sandboxLevel()) : "";
    c.lastExit = child->lastExit();
    r.children.push_back(std::move(c));
  }
  r.vmmLinked = vmm_ && vmm_->linked();
  if (const qxl::Device* device = vmm_ ? vmm_->device() : nullptr) {
    r.vmmCommands = device->stats().commands + device->stats().cursorCommands;
    r.vmmReleased = device->stats().released;
  }
  r.vmm = vmm_ ? vmm_->describe() : "no VMM (--vmm-socket not given, no built-in guest)";
  if (shownSegment_) {
    r.displayWidth = shownSegment_->layout.width;
    r.displayHeight = shownSegment_->layout.height;
    r.displaySegment = shownSegment_->layout.generation;
  }
  r.sessions = clients_.sessions;
  r.connections = clients_.connections;
  r.refused = clients_.refused;
  r.shm = clients_.shm;
  r.tearFree = clients_.tearFree;
  r.commandsRendered = commandsRendered_;
  r.commandsRejected = commandsRejected_;
  r.commandsQuarantined = commandsQuarantined_;
  r.commandsReleased = vmm_ ? vmm_->released() : 0;
  r.damageRects = damageRects_;
  r.hints = hints_;
  r.inputs = inputs_;
  r.renderingStopped = renderingStopped_;
  r.renderingNote = renderingNote_;
  r.lastError = base::lastProblem();
  return r;
}

void Broker::reportStatus() {
  std::string status = renderer_->describe() + "; " + netproxy_->describe();
  if (vmm_)
    status += "; " + vmm_->describe();
  if (segment_)
    status += fmt::format("; display {}x{} (segment {}), {} damage rects, {} hints",
                          segment_->layout.width, segment_->layout.height,
                          segment_->layout.generation, damageRects_, hints_);
  if (!listeners_.empty())
    status += fmt::format(
        "; clients {} ({} connections, {} refused, {} shared-memory, {} tear-free), {} inputs",
        clients_.sessions, clients_.connections, clients_.refused, clients_.shm, clients_.tearFree,
        inputs_);
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
