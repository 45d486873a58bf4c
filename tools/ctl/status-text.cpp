#include "tools/ctl/status-text.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/fd.h"

namespace spicebox::ctl {

namespace {

// A status document is a few KiB; this bounds what a wrong socket can make us read.
constexpr size_t MAX_DOCUMENT_BYTES = 1 << 20;
// The broker answers at once; a socket that stays silent this long is not a broker's.
constexpr int READ_TIMEOUT_MS = 5000;

using nlohmann::json;

std::string text(const json& j, const char* key, const char* otherwise = "?") {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : otherwise;
}

std::string number(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number())
    return "?";
  if (it->is_number_float())
    return fmt::format("{:.0f}", it->get<double>());
  return it->dump();
}

const json& object(const json& j, const char* key) {
  static const json empty = json::object();
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : empty;
}

}  // namespace

std::variant<std::string, Failure> readStatus(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path))
    return Failure{"status socket path too long (at most " +
                   std::to_string(sizeof(addr.sun_path) - 1) + " bytes): " + path};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd)
    return Failure{std::string("socket: ") + std::strerror(errno)};
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return Failure{"cannot connect to " + path + ": " + std::strerror(errno) +
                   " (is spicebox-broker running with --status-socket " + path + "?)"};
  std::string doc;
  char buf[4096];
  for (;;) {
    pollfd p{fd.get(), POLLIN, 0};
    const int ready = ::poll(&p, 1, READ_TIMEOUT_MS);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready <= 0)
      return Failure{path + " sent no status within " + std::to_string(READ_TIMEOUT_MS / 1000) +
                     " s (is it a spicebox broker's --status-socket?)"};
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return Failure{"reading " + path + ": " + std::strerror(errno)};
    if (n == 0)
      break;
    doc.append(buf, static_cast<size_t>(n));
    if (doc.size() > MAX_DOCUMENT_BYTES)
      return Failure{path + " sent more than " + std::to_string(MAX_DOCUMENT_BYTES) +
                     " bytes: not a spicebox status document"};
  }
  if (doc.empty())
    return Failure{path + " closed without a status document"};
  return doc;
}

std::variant<std::string, Failure> formatStatus(const std::string& document) {
  const json j = json::parse(document, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Failure{std::string("the status document is not a JSON object")};
  std::string out;
  const json& broker = object(j, "broker");
  out += fmt::format("broker     pid {}, up {} s\n", number(broker, "pid"),
                     number(broker, "uptime_s"));
  if (auto it = j.find("children"); it != j.end() && it->is_array())
    for (const json& c : *it) {
      if (!c.is_object())
        continue;
      std::string line = fmt::format("{:<10} {}", text(c, "name"), text(c, "state"));
      if (c.value("pid", -1) > 0)
        line += fmt::format(", pid {}", number(c, "pid"));
      if (const std::string sandbox = text(c, "sandbox", ""); !sandbox.empty())
        line += ", sandbox " + sandbox;
      line += fmt::format(", {} restarts", number(c, "restarts"));
      if (const std::string exit = text(c, "last_exit", ""); !exit.empty())
        line += " (last " + exit + ")";
      out += line + "\n";
    }
  out += fmt::format("vmm        {}\n", text(object(j, "vmm"), "description"));
  const json& display = object(j, "display");
  if (display.value("segment", 0) != 0)
    out += fmt::format("display    {}x{} (segment {})\n", number(display, "width"),
                       number(display, "height"), number(display, "segment"));
  else
    out += "display    none\n";
  const json& clients = object(j, "clients");
  out += fmt::format(
      "clients    {} normal, {} shared-memory ({} tear-free); {} sessions, {} connections, {} "
      "refused\n",
      number(clients, "normal"), number(clients, "shared_memory"), number(clients, "tear_free"),
      number(clients, "sessions"), number(clients, "connections"), number(clients, "refused"));
  const json& commands = object(j, "commands");
  out += fmt::format("commands   {} rendered, {} quarantined, {} released, {} rejected\n",
                     number(commands, "rendered"), number(commands, "quarantined"),
                     number(commands, "released"), number(commands, "rejected"));
  const json& damage = object(j, "damage_sent");
  out += fmt::format("damage     {} rectangles, {} hints sent\n", number(damage, "rectangles"),
                     number(damage, "hints"));
  const json& rendering = object(j, "rendering");
  if (rendering.value("stopped", false))
    out += "rendering  STOPPED: " + text(rendering, "note", "no reason given") + "\n";
  else
    out += "rendering  running\n";
  const std::string lastError = text(j, "last_error", "");
  out += "last error " + (lastError.empty() ? std::string("none") : lastError) + "\n";
  return out;
}

}  // namespace spicebox::ctl
