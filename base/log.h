// Runs in: every process. One spdlog logger per process.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace spicebox::base {

// Makes the process's one logger, named after the process ("broker", "renderer", ...), writing to
// `fd` (stderr by default; a sandboxed child writes to the descriptor its broker handed it, it
// cannot open files). Level from SPICEBOX_LOG (trace, debug, info, warn, error) or `level`.
// Call before entering a sandbox: it reads the time zone once, and later log calls then need only
// write(2) and the clock.
void initLogging(const std::string& processName, int fd = 2, const std::string& level = "");

// The last warning or error this process logged ("2026-12-07 16:21:54 error: ..."), empty when
// none was: what a status report calls the last error.
std::string lastProblem();

}  // namespace spicebox::base
