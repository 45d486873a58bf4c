// Runs in: spicebox-ctl, the operator's tool (unsandboxed). Input: the command line and the
// broker's status document (tools/ctl/status-text.h).
//
//   spicebox-ctl --status-socket PATH status [--json]
//
// Prints the broker's state: its children (state, pid, sandbox level, restarts), the VMM, the
// display, the clients (normal and shared-memory), commands rendered, quarantined and released,
// damage sent, whether rendering is stopped and why, and the last error. Exit status: 0, 1 when
// the broker cannot be reached or sent nothing usable, 2 on usage errors.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "tools/ctl/status-text.h"

int main(int argc, char** argv) {
  using namespace spicebox;
  CLI::App app{"spicebox-ctl: asks a running spicebox-broker for its state"};
  std::string socketPath;
  bool json = false;
  app.add_option("--status-socket", socketPath, "The broker's --status-socket path")->required();
  app.require_subcommand(1);
  auto* status = app.add_subcommand("status", "Print the broker's state");
  status->add_flag("--json", json, "Print the broker's JSON document as it came");
  CLI11_PARSE(app, argc, argv);

  auto doc = ctl::readStatus(socketPath);
  if (auto* error = std::get_if<ctl::Failure>(&doc)) {
    std::fprintf(stderr, "spicebox-ctl: %s\n", error->why.c_str());
    return 1;
  }
  const std::string& text = std::get<std::string>(doc);
  if (json) {
    std::fputs(text.c_str(), stdout);
    return 0;
  }
  auto formatted = ctl::formatStatus(text);
  if (auto* error = std::get_if<ctl::Failure>(&formatted)) {
    std::fprintf(stderr, "spicebox-ctl: %s: %s\n", socketPath.c_str(), error->why.c_str());
    return 1;
  }
  std::fputs(std::get<std::string>(formatted).c_str(), stdout);
  return 0;
}
