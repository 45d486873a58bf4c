#include "broker/status.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace spicebox::broker {

namespace {

// Connections served per readiness callback: a connect flood cannot hold the loop.
constexpr int MAX_ACCEPTS_PER_CALLBACK = 16;

}  // namespace

std::string toJson(const StatusReport& r) {
  using nlohmann::json;
  json children = json::array();
  for (const ChildStatus& c : r.children)
    children.push_back({{"name", c.name},
                        {"state", c.state},
                        {"pid", c.pid},
                        {"restarts", c.restarts},
                        {"sandbox", c.sandbox},
                        {"last_exit", c.lastExit}});
  json doc = {
      {"broker", {{"pid", r.pid}, {"uptime_s", r.uptimeSeconds}}},
      {"children", children},
      {"vmm",
       {{"linked", r.vmmLinked},
        {"description", r.vmm},
        {"commands", r.vmmCommands},
        {"released", r.vmmReleased}}},
      {"display",
       {{"width", r.displayWidth}, {"height", r.displayHeight}, {"segment", r.displaySegment}}},
      {"clients",
       {{"sessions", r.sessions},
        {"connections", r.connections},
        {"refused", r.refused},
        // A session shows one display: those not in shared-memory mode get images.
        {"normal", r.sessions > r.shm ? r.sessions - r.shm : 0},
        {"shared_memory", r.shm},
        {"tear_free", r.tearFree}}},
      {"commands",
       {{"rendered", r.commandsRendered},
        {"rejected", r.commandsRejected},
        {"quarantined", r.commandsQuarantined},
        {"released", r.commandsReleased}}},
      {"damage_sent", {{"rectangles", r.damageRects}, {"hints", r.hints}}},
      {"inputs", r.inputs},
      {"rendering", {{"stopped", r.renderingStopped}, {"note", r.renderingNote}}},
      {"last_error", r.lastError},
  };
  // A log line may hold bytes that are not UTF-8 (a peer's name): replaced, never thrown.
  return doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

StatusServer::StatusServer(uv_loop_t* loop, ListeningSocket socket,
                           std::function<StatusReport()> report)
    : socket_(std::move(socket)), report_(std::move(report)) {
  uv_poll_init(loop, poll_.get(), socket_.fd.get());
  poll_->data = this;
  uv_poll_start(poll_.get(), UV_READABLE, [](uv_poll_t* handle, int status, int) {
    if (status == 0)
      static_cast<StatusServer*>(handle->data)->onAcceptable();
  });
}

StatusServer::~StatusServer() {
  poll_.close();
  // The socket file goes with the server (a stale one would be replaced at the next start).
  if (!socket_.name.empty())
    ::unlink(socket_.name.c_str());
}

void StatusServer::onAcceptable() {
  for (int i = 0; i < MAX_ACCEPTS_PER_CALLBACK; ++i) {
    base::Fd conn(::accept4(socket_.fd.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
        spdlog::warn("status socket {}: accept: {}", socket_.name, std::strerror(errno));
      return;
    }
    const std::string doc = toJson(report_());
    const ssize_t n = ::send(conn.get(), doc.data(), doc.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != static_cast<ssize_t>(doc.size()))
      spdlog::debug("status socket {}: a reader took {} of {} bytes; closed", socket_.name, n,
                    doc.size());
  }
}

}  // namespace spicebox::broker
