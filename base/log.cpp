#include "base/log.h"

#include <spdlog/sinks/base_sink.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <mutex>

namespace spicebox::base {
namespace {

// Writes each formatted record with write(2) on a descriptor it does not own. Unlike spdlog's
// file sinks it never opens, seeks or flushes a FILE*, so it works inside the seccomp sandbox.
class FdSink : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
 public:
  explicit FdSink(int fd) : fd_(fd) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    const char* p = formatted.data();
    size_t left = formatted.size();
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return;  // A log that cannot be written is dropped; never fatal.
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  void flush_() override {}

 private:
  int fd_;
};

// Remembers the last record at warning level or above, for lastProblem().
class LastProblemSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string last() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (msg.level < spdlog::level::warn)
      return;
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    last_.assign(formatted.data(), formatted.size());
    while (!last_.empty() && (last_.back() == '\n' || last_.back() == '\r'))
      last_.pop_back();
  }
  void flush_() override {}

 private:
  std::string last_;
};

std::shared_ptr<LastProblemSink>& lastProblemSink() {
  static auto sink = std::make_shared<LastProblemSink>();
  return sink;
}

}  // namespace

std::string lastProblem() {
  return lastProblemSink()->last();
}

void initLogging(const std::string& processName, int fd, const std::string& level) {
  ::tzset();  // Reads /etc/localtime now, while the process may still open files.
  spdlog::sinks_init_list sinks{std::make_shared<FdSink>(fd), lastProblemSink()};
  auto logger = std::make_shared<spdlog::logger>(processName, sinks);
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %n[%P] %^%l%$: %v");
  lastProblemSink()->set_pattern("%Y-%m-%d %H:%M:%S %l: %v");
  std::string wanted = level;
  if (const char* env = std::getenv("SPICEBOX_LOG"); wanted.empty() && env)
    wanted = env;
  // spdlog maps any unknown name to "off": a typo must not silence every log line.
  auto parsed = wanted.empty() ? spdlog::level::info : spdlog::level::from_str(wanted);
  bool unknown = parsed == spdlog::level::off && wanted != "off";
  logger->set_level(unknown ? spdlog::level::info : parsed);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
  if (unknown) {
    spdlog::warn(
        "unknown log level '{}' (SPICEBOX_LOG or --log-level); using info. Levels: trace, "
        "debug, info, warn, error, critical, off",
        wanted);
  }
}

}  // namespace spicebox::base
