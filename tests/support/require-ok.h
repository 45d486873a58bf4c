// Runs in: tests. Catch2 checks for steps that return std::optional<std::string> (the error, or
// nothing): a failure prints what went wrong (REQUIRE_FALSE would print only "{?}").
#pragma once

#include <catch2/catch.hpp>

#define REQUIRE_OK(expr)  \
  do {                    \
    if (auto e_ = (expr)) \
      FAIL(*e_);          \
  } while (false)
#define CHECK_OK(expr)    \
  do {                    \
    if (auto e_ = (expr)) \
      FAIL_CHECK(*e_);    \
  } while (false)
