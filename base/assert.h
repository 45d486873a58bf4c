// Runs in: every process. Assertions are for bugs only (STYLE.md #1): no input a guest, a
// client or a child can send may reach one. A fuzzer that hits one has found a bug.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdlib>

// Logs the failed condition and a formatted message, then aborts. Active in every build.
//   SB_ASSERT(n <= MAX, "n = {}", n);   SB_ASSERT(ptr);
#define SB_ASSERT(cond, ...)                                                           \
  do {                                                                                 \
    if (!(cond)) [[unlikely]] {                                                        \
      spdlog::critical("assertion failed at {}:{}: {}: {}", __FILE__, __LINE__, #cond, \
                       fmt::format("" __VA_ARGS__));                                   \
      spdlog::shutdown();                                                              \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
