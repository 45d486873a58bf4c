// Runs in: every process. Ownership of libuv handles (STYLE.md: a handle's memory is freed only
// in its close callback).
#pragma once

#include <uv.h>

#include <memory>
#include <type_traits>

namespace spicebox::base {

// Owns one libuv handle of type T (uv_poll_t, uv_timer_t, ...). The destructor calls uv_close();
// the memory is released in the close callback, after libuv is done with it, so an owner may be
// destroyed from inside one of the handle's own callbacks.
template <typename T>
class UvHandle {
 public:
  UvHandle() : handle_(new T{}) {}
  UvHandle(UvHandle&&) noexcept = default;
  UvHandle& operator=(UvHandle&& other) noexcept {
    if (this != &other) {
      close();
      handle_ = std::move(other.handle_);
    }
    return *this;
  }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  ~UvHandle() { close(); }

  T* get() const { return handle_.get(); }
  T* operator->() const { return handle_.get(); }
  uv_handle_t* handle() const { return reinterpret_cast<uv_handle_t*>(handle_.get()); }

  // Closes the handle now (idempotent). Handles never initialised (type still zero) are freed
  // directly.
  void close() {
    if (!handle_)
      return;
    T* raw = handle_.release();
    auto* h = reinterpret_cast<uv_handle_t*>(raw);
    if (h->type == UV_UNKNOWN_HANDLE) {
      delete raw;
      return;
    }
    h->data = nullptr;
    uv_close(h, [](uv_handle_t* closed) { delete reinterpret_cast<T*>(closed); });
  }

 private:
  std::unique_ptr<T> handle_;
};

}  // namespace spicebox::base
