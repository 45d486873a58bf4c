#include "base/syscall.h"

#include <cstring>

namespace spicebox::base {

void throwSystemError(int err, const char* call, const std::string& context) {
  throw SystemError(err, context + ": " + call + " failed");
}

}  // namespace spicebox::base
