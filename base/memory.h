// Runs in: the renderer, the netproxy and spicebox's clients (processes that handle whole
// frames). Input: none.
//
// A full-HD frame is 8 MiB, and the renderer, the netproxy and the clients allocate and free
// buffers of that size for every frame (encoded images, messages, decoded pictures). glibc
// serves such sizes with fresh mmaps, or trims the heap when they are freed, so each frame would
// fault in and zero its pages again: in the netproxy, page faults were the largest cost of a
// full-HD frame for an image client (perf: a quarter of its time). Called once at start, before
// any sandbox (mallopt itself makes no system call).
#pragma once

#include <malloc.h>

namespace spicebox::base {

// Allocations up to 32 MiB (glibc's largest M_MMAP_THRESHOLD) come from the heap, and the heap
// keeps up to 256 MiB of free memory instead of returning it after each frame. The memory stays
// bounded by what the process's own limits allow (the per-client queues, RLIMIT_AS).
inline void keepFrameBuffersInHeap() {
  ::mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  ::mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
}

}  // namespace spicebox::base
