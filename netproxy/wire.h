// Runs in: netproxy (sandboxed). Input: bytes from a SPICE client (hostile): every read is
// range-checked, a short buffer sets the reader's failure flag instead of reading past the end.
//
// Little-endian reader and writer for SPICE's packed wire structures, and the data-message
// framing (SpiceDataHeader, or SpiceMiniDataHeader when both sides announced MINI_HEADER).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace spicebox::netproxy::wire {

// Reads fixed-size little-endian fields from a span. After any short read `ok()` is false and
// every later read returns 0: callers read all fields, then check once.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  uint8_t u8() { return static_cast<uint8_t>(take(1)); }
  uint16_t u16() { return static_cast<uint16_t>(take(2)); }
  uint32_t u32() { return static_cast<uint32_t>(take(4)); }
  uint64_t u64() { return take(8); }
  int16_t i16() { return static_cast<int16_t>(u16()); }
  int32_t i32() { return static_cast<int32_t>(u32()); }
  // `n` bytes, or an empty span (and failure) when fewer are left.
  std::span<const uint8_t> bytes(size_t n) {
    if (!ok_ || remaining() < n) {
      ok_ = false;
      return {};
    }
    auto out = bytes_.subspan(pos_, n);
    pos_ += n;
    return out;
  }

  bool ok() const { return ok_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }

 private:
  uint64_t take(size_t n) {
    if (!ok_ || remaining() < n) {
      ok_ = false;
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
      v |= uint64_t{bytes_[pos_ + i]} << (8 * i);
    pos_ += n;
    return v;
  }

  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Appends little-endian fields to a byte vector.
class Writer {
 public:
  Writer() = default;
  explicit Writer(size_t reserve) { out_.reserve(reserve); }

  Writer& u8(uint8_t v) { return put(v, 1); }
  Writer& u16(uint16_t v) { return put(v, 2); }
  Writer& u32(uint32_t v) { return put(v, 4); }
  Writer& u64(uint64_t v) { return put(v, 8); }
  Writer& i16(int16_t v) { return put(static_cast<uint16_t>(v), 2); }
  Writer& i32(int32_t v) { return put(static_cast<uint32_t>(v), 4); }
  Writer& bytes(std::span<const uint8_t> b) {
    out_.insert(out_.end(), b.begin(), b.end());
    return *this;
  }
  // Overwrites a u32 written earlier (a size or an offset known only later).
  void patchU32(size_t at, uint32_t v) {
    for (size_t i = 0; i < 4; ++i)
      out_[at + i] = static_cast<uint8_t>(v >> (8 * i));
  }

  size_t size() const { return out_.size(); }
  std::vector<uint8_t>& data() { return out_; }
  std::vector<uint8_t> take() { return std::move(out_); }

 private:
  Writer& put(uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i)
      out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  std::vector<uint8_t> out_;
};

// SpiceDataHeader: u64 serial, u16 type, u32 size, u32 sub_list. SpiceMiniDataHeader: u16 type,
// u32 size.
constexpr size_t FULL_HEADER_SIZE = 18;
constexpr size_t MINI_HEADER_SIZE = 6;

struct DataHeader {
  uint16_t type = 0;
  uint32_t size = 0;  // of the body that follows
};

inline size_t headerSize(bool mini) {
  return mini ? MINI_HEADER_SIZE : FULL_HEADER_SIZE;
}

// Parses a data header from the first headerSize(mini) bytes (the caller has them). The full
// header's serial is ignored (we never use it) and its sub-message list is refused by the caller
// through `subList`.
inline DataHeader parseDataHeader(std::span<const uint8_t> bytes, bool mini, uint32_t* subList) {
  Reader r(bytes);
  DataHeader h;
  if (mini) {
    h.type = r.u16();
    h.size = r.u32();
    *subList = 0;
  } else {
    r.u64();
    h.type = r.u16();
    h.size = r.u32();
    *subList = r.u32();
  }
  return h;
}

// A whole message: header then body. `serial` is used by the full header only.
inline std::vector<uint8_t> frameMessage(bool mini, uint64_t serial, uint16_t type,
                                         std::span<const uint8_t> body) {
  Writer w(headerSize(mini) + body.size());
  if (!mini)
    w.u64(serial);
  w.u16(type).u32(static_cast<uint32_t>(body.size()));
  if (!mini)
    w.u32(0);
  w.bytes(body);
  return w.take();
}

}  // namespace spicebox::netproxy::wire
