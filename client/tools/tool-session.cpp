// Runs in: spicebox-view and spicebox-latency. Input: see tool-session.h.
#include "client/tools/tool-session.h"

#include <poll.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "tests/oracle/png-image.h"

namespace spicebox::client::tools {

// A SPICE ticket holds at most 60 bytes of password (spice-server's SPICE_MAX_PASSWORD_LENGTH).
constexpr size_t MAX_PASSWORD_BYTES = 60;

std::variant<std::string, std::string> readPasswordFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return std::variant<std::string, std::string>(
        std::in_place_index<1>,
        "cannot read the password file '" + path + "': " + std::strerror(errno));
  std::string line;
  std::getline(in, line);
  if (!line.empty() && line.back() == '\r')
    line.pop_back();
  if (line.size() > MAX_PASSWORD_BYTES)
    return std::variant<std::string, std::string>(
        std::in_place_index<1>, "the password in '" + path + "' has " +
                                    std::to_string(line.size()) + " bytes (at most " +
                                    std::to_string(MAX_PASSWORD_BYTES) + ")");
  return std::variant<std::string, std::string>(std::in_place_index<0>, line);
}

std::variant<std::unique_ptr<ToolSession>, std::string> ToolSession::connect(
    const ConnectOptions& options) {
  auto target = Target::parse(options.uri);
  if (auto* err = std::get_if<std::string>(&target))
    return *err;
  SessionOptions so;
  so.target = std::get<Target>(target);
  if (!options.passwordFile.empty()) {
    auto password = readPasswordFile(options.passwordFile);
    if (password.index() == 1)
      return std::get<1>(password);
    so.password = std::get<0>(password);
  }
  so.shm = options.shm;
  so.preferredCompression = options.preferredCompression;
  so.timeout = options.stepTimeout;
  auto session = Session::connect(so);
  if (auto* err = std::get_if<std::string>(&session))
    return *err;
  std::unique_ptr<ToolSession> tool(new ToolSession());
  tool->session_ = std::move(std::get<std::unique_ptr<Session>>(session));
  auto display = tool->session_->openDisplay();
  if (auto* err = std::get_if<std::string>(&display))
    return "opening the display channel of " + so.target.describe() + ": " + *err;
  tool->display_ = std::get<DisplayChannel*>(display);
  return tool;
}

Error ToolSession::pump(std::chrono::milliseconds wait) {
  std::vector<Channel*> channels = session_->channels();
  std::vector<pollfd> fds;
  for (Channel* c : channels)
    fds.push_back({c->fd(), POLLIN, 0});
  int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait.count(), 0)));
  if (n < 0 && errno != EINTR)
    return std::string("poll: ") + std::strerror(errno);
  for (size_t i = 0; i < channels.size(); ++i)
    if (n > 0 && fds[i].revents)
      if (auto err = channels[i]->processAvailable())
        return err;
  return std::nullopt;
}

std::string ToolSession::mode() const {
  if (!display_->shmActive())
    return "normal";
  return display_->tearFree() ? "shm-tear-free" : "shm";
}

Error writeCanvasPng(const std::string& path, const Canvas& canvas) {
  oracle::RgbImage image;
  image.width = canvas.width();
  image.height = canvas.height();
  image.rgb.resize(size_t{image.width} * image.height * 3);
  const auto& px = canvas.pixels();
  for (size_t i = 0; i < px.size(); ++i) {
    image.rgb[3 * i] = static_cast<uint8_t>(px[i] >> 16);
    image.rgb[3 * i + 1] = static_cast<uint8_t>(px[i] >> 8);
    image.rgb[3 * i + 2] = static_cast<uint8_t>(px[i]);
  }
  std::string err = oracle::writePng(path, image);
  if (!err.empty())
    return "writing " + path + ": " + err;
  return std::nullopt;
}

}  // namespace spicebox::client::tools
