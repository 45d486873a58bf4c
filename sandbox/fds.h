// Runs in: the renderer and the netproxy, as sandbox::enter()'s first step. Trusts the profile's
// list of descriptors to keep; closes everything else the parent may have leaked to it.
#pragma once

#include <vector>

namespace spicebox::sandbox {

// Closes every descriptor except 0, 1, 2 and `keepFds`, with close_range(2) (or, on kernels
// before 5.9, by listing /proc/self/fd). Throws SandboxError when a descriptor cannot be closed
// or `keepFds` holds a negative number.
void closeInheritedFds(const std::vector<int>& keepFds);

}  // namespace spicebox::sandbox
