// Runs in: spicebox-view (a user's SPICE viewer; unsandboxed). Input: the command line, a
// password file, and everything a SPICE server sends, untrusted: parsed and range-checked by the
// client library (client/spice-client.h, which also checks and maps shared-memory segments
// read-only). What reaches SDL is the client's own copy of the picture, with rectangles clipped
// to it.
//
// spicebox-view [options] URI: shows a SPICE display (remote-viewer's URIs: spice://HOST:PORT,
// spice+unix:///PATH) in an SDL window, or headless; uses spicebox's shared-memory display
// extension on unix sockets unless told not to; can dump frames as PNG and exit by itself.
#include <SDL.h>
#include <signal.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "base/log.h"
#include "base/memory.h"
#include "client/tools/tool-session.h"

namespace {

using namespace spicebox::client;
using namespace spicebox::client::tools;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string uri;
  std::string passwordFile;
  bool noShm = false, shmReject = false, tearFree = false, headless = false;
  std::string dumpDir;
  uint32_t dumpFrames = 0;
  uint64_t exitAfterFrames = 0;
  uint64_t exitWhenIdleMs = 0;
  double timeoutS = 0;
  std::string logLevel;
};

volatile sig_atomic_t stopRequested = 0;

void requestStop(int) {
  stopRequested = 1;
}

// The SDL window, made when the first picture arrives (its size is the picture's).
class Window {
 public:
  ~Window() {
    if (texture_)
      SDL_DestroyTexture(texture_);
    if (renderer_)
      SDL_DestroyRenderer(renderer_);
    if (window_)
      SDL_DestroyWindow(window_);
    SDL_Quit();
  }
  // Initialises SDL's video (a display is needed: DISPLAY or WAYLAND_DISPLAY).
  static std::variant<std::unique_ptr<Window>, std::string> open(const std::string& title) {
    if (SDL_Init(SDL_INIT_VIDEO) != 0)
      return std::string("SDL cannot start its video: ") + SDL_GetError() +
             " (no display? run with --headless)";
    auto w = std::make_unique<Window>();
    w->title_ = title;
    return w;
  }

  // Shows `canvas`, updating the texture where `rects` say it changed (all of it after a size
  // change).
  Error present(const Canvas& canvas, std::span<const Rect> rects) {
    int w = static_cast<int>(canvas.width()), h = static_cast<int>(canvas.height());
    bool whole = false;
    if (!window_) {
      window_ = SDL_CreateWindow(title_.c_str(), SDL_WINDOWPOS_UNDEFINED, SDL_WINDOWPOS_UNDEFINED,
                                 w, h, 0);
      if (!window_)
        return std::string("SDL_CreateWindow: ") + SDL_GetError();
      renderer_ = SDL_CreateRenderer(window_, -1, 0);
      if (!renderer_)
        return std::string("SDL_CreateRenderer: ") + SDL_GetError();
    }
    if (w != width_ || h != height_) {
      if (texture_)
        SDL_DestroyTexture(texture_);
      SDL_SetWindowSize(window_, w, h);
      // RGB888 is SDL's 32-bit 0x00RRGGBB: the canvas's pixels as they are.
      texture_ =
          SDL_CreateTexture(renderer_, SDL_PIXELFORMAT_RGB888, SDL_TEXTUREACCESS_STREAMING, w, h);
      if (!texture_)
        return std::string("SDL_CreateTexture: ") + SDL_GetError();
      width_ = w;
      height_ = h;
      whole = true;
    }
    const uint32_t* pixels = canvas.pixels().data();
    int pitch = w * 4;
    if (whole) {
      SDL_UpdateTexture(texture_, nullptr, pixels, pitch);
    } else {
      for (const Rect& r : rects) {
        SDL_Rect area{r.left, r.top, r.right - r.left, r.bottom - r.top};
        SDL_UpdateTexture(texture_, &area, pixels + size_t(r.top) * canvas.width() + r.left, pitch);
      }
    }
    SDL_RenderCopy(renderer_, texture_, nullptr, nullptr);
    SDL_RenderPresent(renderer_);
    return std::nullopt;
  }

  // Handles pending window events; true once the window was closed.
  bool closed() {
    SDL_Event e;
    while (SDL_PollEvent(&e)) {
      if (e.type == SDL_QUIT ||
          (e.type == SDL_WINDOWEVENT && e.window.event == SDL_WINDOWEVENT_CLOSE))
        closed_ = true;
      if (e.type == SDL_WINDOWEVENT && e.window.event == SDL_WINDOWEVENT_EXPOSED && texture_) {
        SDL_RenderCopy(renderer_, texture_, nullptr, nullptr);
        SDL_RenderPresent(renderer_);
      }
    }
    return closed_;
  }

 private:
  std::string title_;
  SDL_Window* window_ = nullptr;
  SDL_Renderer* renderer_ = nullptr;
  SDL_Texture* texture_ = nullptr;
  int width_ = 0, height_ = 0;
  bool closed_ = false;
};

std::string framePath(const std::string& dir, uint64_t frame) {
  char name[32];
  std::snprintf(name, sizeof name, "frame-%06llu.png", static_cast<unsigned long long>(frame));
  return dir + "/" + name;
}

int run(const Options& o) {
  std::optional<Clock::time_point> giveUpAt;
  if (o.timeoutS > 0)
    giveUpAt = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.timeoutS * 1000));
  if (!o.dumpDir.empty() && ::mkdir(o.dumpDir.c_str(), 0755) != 0 && errno != EEXIST) {
    spdlog::error("cannot create the dump directory '{}': {}", o.dumpDir, std::strerror(errno));
    return 1;
  }
  std::unique_ptr<Window> window;
  if (!o.headless) {
    auto opened = Window::open("spicebox-view " + o.uri);
    if (auto* err = std::get_if<std::string>(&opened)) {
      spdlog::error("{}", *err);
      return 1;
    }
    window = std::move(std::get<std::unique_ptr<Window>>(opened));
  }

  ConnectOptions co;
  co.uri = o.uri;
  co.passwordFile = o.passwordFile;
  co.shm = o.noShm       ? ShmWish::Off
           : o.shmReject ? ShmWish::Reject
           : o.tearFree  ? ShmWish::TearFree
                         : ShmWish::Accept;
  if (giveUpAt)
    co.stepTimeout = std::min<std::chrono::milliseconds>(
        co.stepTimeout,
        std::chrono::duration_cast<std::chrono::milliseconds>(*giveUpAt - Clock::now()));
  auto connected = ToolSession::connect(co);
  if (auto* err = std::get_if<std::string>(&connected)) {
    spdlog::error("{}", *err);
    return 1;
  }
  ToolSession& tool = *std::get<std::unique_ptr<ToolSession>>(connected);
  DisplayChannel& display = tool.display();

  uint64_t frames = 0;
  std::optional<std::string> failure;
  auto frameDone = [&] {
    ++frames;
    if (frames <= o.dumpFrames && !o.dumpDir.empty() && display.primary() && !failure)
      failure = writeCanvasPng(framePath(o.dumpDir, frames), *display.primary());
  };
  // Shared memory: one frame per SHM_DAMAGE, seen (and dumped) before it is acknowledged.
  display.setFrameCallback([&](uint64_t, std::span<const Rect>) { frameDone(); });

  uint64_t seenMessages = display.counters().messages;
  Clock::time_point lastMessage = Clock::now();
  bool windowClosed = false;
  while (!stopRequested && !failure) {
    auto now = Clock::now();
    if (giveUpAt && now >= *giveUpAt) {
      failure = "gave up after " + fmt::format("{:g}", o.timeoutS) + " s (--timeout) with " +
                std::to_string(frames) + " frames";
      break;
    }
    auto wait = std::chrono::milliseconds(window ? 16 : 200);
    if (giveUpAt)
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                *giveUpAt - now + std::chrono::milliseconds(1)));
    if (auto err = tool.pump(wait)) {
      failure = *err;
      break;
    }
    now = Clock::now();
    if (display.counters().messages != seenMessages) {
      seenMessages = display.counters().messages;
      lastMessage = now;
    }
    std::vector<Rect> damage = display.takeDamage();
    // The ordinary display: one frame per batch of messages that changed the picture.
    if (!display.shmActive() && !damage.empty())
      frameDone();
    if (window && display.primary() && !damage.empty())
      if (auto err = window->present(*display.primary(), damage)) {
        failure = *err;
        break;
      }
    if (window && window->closed()) {
      windowClosed = true;
      break;
    }
    if (o.exitAfterFrames && frames >= o.exitAfterFrames)
      break;
    if (o.exitWhenIdleMs && frames > 0 &&
        now - lastMessage >= std::chrono::milliseconds(o.exitWhenIdleMs))
      break;
  }

  if (!o.dumpDir.empty() && !failure) {
    if (display.primary())
      failure = writeCanvasPng(o.dumpDir + "/final.png", *display.primary());
    else
      failure = "no picture arrived to write as final.png";
  }
  const Canvas* p = display.primary();
  std::printf(
      "spicebox-view: mode %s, frames %llu, display bytes %llu, shared-memory bytes copied %llu, "
      "picture %ux%u, draws not reproduced %llu%s\n",
      tool.mode().c_str(), static_cast<unsigned long long>(frames),
      static_cast<unsigned long long>(display.counters().bytes),
      static_cast<unsigned long long>(display.shm().bytesCopied), p ? p->width() : 0,
      p ? p->height() : 0, static_cast<unsigned long long>(display.display().unsupported),
      windowClosed ? ", window closed" : (stopRequested ? ", interrupted" : ""));
  std::fflush(stdout);
  if (failure) {
    spdlog::error("{}", *failure);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "spicebox-view: shows a SPICE display, using spicebox's shared-memory extension on unix "
      "sockets"};
  Options o;
  app.add_option("URI", o.uri, "spice://HOST:PORT or spice+unix:///PATH")->required();
  app.add_option("--password-file", o.passwordFile,
                 "log in with the password on this file's first line")
      ->check(CLI::ExistingFile);
  auto* noShm = app.add_flag("--no-shm", o.noShm, "do not advertise shared memory");
  auto* reject = app.add_flag("--shm-reject", o.shmReject,
                              "advertise shared memory, then answer the offer accepted=0");
  auto* tearFree = app.add_flag("--tear-free", o.tearFree,
                                "ask for tear-free shared memory (acknowledge every frame)");
  noShm->excludes(reject)->excludes(tearFree);
  reject->excludes(tearFree);
  app.add_flag("--headless", o.headless, "no window (SDL's video is not started)");
  app.add_option("--dump", o.dumpDir,
                 "write DIR/frame-NNNNNN.png for the first --dump-frames frames and "
                 "DIR/final.png at exit");
  app.add_option("--dump-frames", o.dumpFrames, "frames to dump (default 0)");
  app.add_option("--exit-after-frames", o.exitAfterFrames, "exit after N frames");
  app.add_option("--exit-when-idle", o.exitWhenIdleMs,
                 "exit once no display message came for MS milliseconds after the first picture");
  app.add_option("--timeout", o.timeoutS, "give up with an error after S seconds")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", o.logLevel, "trace, debug, info, warn, error (or SPICEBOX_LOG)");
  CLI11_PARSE(app, argc, argv);
  spicebox::base::initLogging("view", 2, o.logLevel);
  spicebox::base::keepFrameBuffersInHeap();
  struct sigaction sa {};
  sa.sa_handler = requestStop;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return run(o);
}
