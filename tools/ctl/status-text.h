// Runs in: spicebox-ctl (the operator's command line tool; unsandboxed). Input: the JSON document
// a broker's status socket sends (broker/status.h): parsed with nlohmann::json, every field
// looked up with a default, so a missing or mistyped field prints as unknown instead of failing.
#pragma once

#include <string>
#include <variant>

namespace spicebox::ctl {

// What went wrong, for the operator: what and what to do.
struct Failure {
  std::string why;
};

// Connects to the unix socket at `path` and reads the document until the broker closes.
// The error says what was wrong and what to do ("is the broker running with --status-socket?").
std::variant<std::string, Failure> readStatus(const std::string& path);

// The status as text for a terminal, one aspect per line; a Failure when `json` is not a JSON
// object.
std::variant<std::string, Failure> formatStatus(const std::string& json);

}  // namespace spicebox::ctl
