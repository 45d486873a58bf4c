// Runs in: guestsim tools and tests. Input: a recording file, hostile.
//
// Grammar of the text stream (every line ends in '\n'; integers are decimal,
// 32-bit fields are printed with %d so unsigned values may appear negative):
//
//   file        := "SPICE_REPLAY 1\n" event*
//   event       := "event <counter> <what> <type> <ns>\n" body
//   body(what=1) := primary if type is CREATE_PRIMARY_SURFACE(_ASYNC) and
//                   spice-server accepted the surface; otherwise nothing
//   primary     := "<w> <h> <stride> <format>\n"
//                  "<position> <mouse_mode> <flags> <type>\n" binary("data")
//   body(what=0) := one of drawable / update / message / surface / cursor
//   binary(p)   := "binary <z> <p> <size>:" <size raw bytes> "\n"
//                  (z=1 would insert "<zsize>:" and zlib data; spice-server
//                  builds with it off)
//   chunks(p)   := "data_chunks <extra chunk count> <total size>\n"
//                  binary(p) repeated extra+1 times
//   rect(p)     := "rect <p> <top> <left> <bottom> <right>\n"
//   image       := "image 0\n" | "image 1\n" descriptor fields, then per type
//
// Each parse step below mirrors one recorder function, in the same order.

#include "tools/guestsim/spice-record.h"

#include <fcntl.h>
#include <lzma.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <type_traits>

namespace spicebox::guestsim {

namespace {

// Read granularity; also the most a binary block grows its vector per step,
// so a truncated block never allocates much beyond what the file held.
constexpr size_t READ_BUFFER_BYTES = 64 * 1024;
// The binary header "binary <z> <prefix> <size>:" is a text token too.
constexpr size_t MAX_BINARY_HEADER_LENGTH = 128;

// Values from spice-protocol (qxl_dev.h / enums.h), restated here so the
// grammar reads in one place; the header constants would need casts anyway.
constexpr uint32_t CMD_DRAW = 1, CMD_UPDATE = 2, CMD_CURSOR = 3, CMD_MESSAGE = 4, CMD_SURFACE = 5;
constexpr uint32_t CLIP_RECTS = 1;
constexpr uint32_t BRUSH_SOLID = 1, BRUSH_PATTERN = 2;
constexpr uint32_t IMAGE_BITMAP = 0, IMAGE_QUIC = 1, IMAGE_SURFACE = 104;
constexpr uint8_t BITMAP_DIRECT = 1 << 0;
constexpr uint8_t LINE_STYLED = 1 << 3;
constexpr uint32_t SURFACE_CREATE = 0;
constexpr uint32_t SURF_KEEP_DATA = 1 << 0;
constexpr uint8_t CURSOR_SET = 0, CURSOR_MOVE = 1, CURSOR_TRAIL = 3;
constexpr uint8_t DRAW_COMPOSITE = 14;
constexpr size_t QXL_RECT_BYTES = 16;        // 4 x int32
constexpr size_t PATH_SEG_HEADER_BYTES = 8;  // flags, count
constexpr size_t POINT_FIX_BYTES = 8;        // 2 x int32
constexpr size_t TRANSFORM_BYTES = 24;       // SpiceTransform: 6 x uint32
constexpr size_t FIXED_BYTES = 4;            // QXLFIXED

uint32_t loadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;  // recordings are written on little-endian hosts, as is x86/arm64
}

// ---------------------------------------------------------------- sources

}  // namespace

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Bytes read into dst (0 at end of stream), or an error (Io or XzError;
  // the reader fills in offset and event).
  virtual std::variant<size_t, RecordError> read(uint8_t* dst, size_t cap) = 0;
};

namespace {

class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::string bytes) : bytes_(std::move(bytes)) {}
  std::variant<size_t, RecordError> read(uint8_t* dst, size_t cap) override {
    size_t n = std::min(cap, bytes_.size() - pos_);
    std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  std::string bytes_;
  size_t pos_ = 0;
};

class FdSource : public ByteSource {
 public:
  explicit FdSource(int fd) : fd_(fd) {}
  ~FdSource() override { ::close(fd_); }
  std::variant<size_t, RecordError> read(uint8_t* dst, size_t cap) override {
    for (;;) {
      ssize_t n = ::read(fd_, dst, cap);
      if (n >= 0) {
        return static_cast<size_t>(n);
      }
      if (errno != EINTR) {
        return RecordError{RecordErrorKind::Io, 0, -1,
                           std::string("read: ") + std::strerror(errno)};
      }
    }
  }

 private:
  int fd_;
};

// Streams an .xz file through liblzma so a 60 MB recording never sits in
// memory whole.
class XzSource : public ByteSource {
 public:
  explicit XzSource(std::unique_ptr<ByteSource> inner) : inner_(std::move(inner)) {}
  ~XzSource() override { lzma_end(&strm_); }

  std::optional<std::string> init() {
    // CONCATENATED: `xz` output may hold several streams back to back.
    lzma_ret ret = lzma_stream_decoder(&strm_, XZ_MEMORY_LIMIT, LZMA_CONCATENATED);
    if (ret != LZMA_OK) {
      return "lzma_stream_decoder failed: " + std::to_string(ret);
    }
    return std::nullopt;
  }

  std::variant<size_t, RecordError> read(uint8_t* dst, size_t cap) override {
    if (done_) {
      return size_t{0};
    }
    strm_.next_out = dst;
    strm_.avail_out = cap;
    while (strm_.avail_out == cap) {
      if (strm_.avail_in == 0 && !inputEof_) {
        auto got = inner_->read(in_, sizeof(in_));
        if (auto* err = std::get_if<RecordError>(&got)) {
          return *err;
        }
        size_t n = std::get<size_t>(got);
        inputEof_ = n == 0;
        strm_.next_in = in_;
        strm_.avail_in = n;
      }
      lzma_ret ret = lzma_code(&strm_, inputEof_ ? LZMA_FINISH : LZMA_RUN);
      if (ret == LZMA_STREAM_END) {
        done_ = true;
        break;
      }
      if (ret == LZMA_BUF_ERROR && inputEof_) {
        return RecordError{RecordErrorKind::XzError, 0, -1, "xz stream truncated"};
      }
      if (ret != LZMA_OK) {
        return RecordError{
            RecordErrorKind::XzError, 0, -1,
            "xz decode error " + std::to_string(ret) +
                (ret == LZMA_MEMLIMIT_ERROR ? " (dictionary above XZ_MEMORY_LIMIT)" : "")};
      }
    }
    return cap - strm_.avail_out;
  }

 private:
  std::unique_ptr<ByteSource> inner_;
  lzma_stream strm_ = LZMA_STREAM_INIT;
  uint8_t in_[READ_BUFFER_BYTES];
  bool inputEof_ = false;
  bool done_ = false;
};

// A decimal integer token as printed by %d / %u / PRIu64.
struct Num {
  bool negative = false;
  uint64_t magnitude = 0;
};

bool parseNum(std::string_view token, Num& out) {
  out = {};
  if (!token.empty() && token[0] == '-') {
    out.negative = true;
    token.remove_prefix(1);
  }
  if (token.empty()) {
    return false;
  }
  auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), out.magnitude);
  return ec == std::errc() && ptr == token.data() + token.size();
}

// Stores a recorded integer into a field of type T. The recorder prints
// unsigned fields with %d, so the accepted range is [signed min, unsigned
// max] of T's width, and the bits are kept (two's complement).
template <typename T>
bool narrow(const Num& n, T& out) {
  using U = std::make_unsigned_t<T>;
  constexpr uint64_t UMAX = std::numeric_limits<U>::max();
  constexpr uint64_t NEG_MAX = (UMAX >> 1) + 1;  // |signed min|
  if (n.negative) {
    if (n.magnitude > NEG_MAX) {
      return false;
    }
    out = static_cast<T>(static_cast<U>(static_cast<U>(0) - static_cast<U>(n.magnitude)));
  } else {
    if (n.magnitude > UMAX) {
      return false;
    }
    out = static_cast<T>(static_cast<U>(n.magnitude));
  }
  return true;
}

// Space-separated tokens of one line, without allocating: the grammar never
// has more than MAX_TOKENS on a line, so `count` above it just means "too many".
constexpr size_t MAX_TOKENS = 8;
struct Tokens {
  std::array<std::string_view, MAX_TOKENS> items;
  size_t count = 0;
  size_t size() const { return count; }
  std::string_view operator[](size_t i) const { return items[i]; }
};

Tokens splitSpaces(std::string_view line) {
  Tokens out;
  size_t i = 0;
  while (i <= line.size()) {
    size_t j = line.find(' ', i);
    if (j == std::string_view::npos) {
      j = line.size();
    }
    if (out.count == MAX_TOKENS) {
      out.count = MAX_TOKENS + 1;
      break;
    }
    out.items[out.count++] = line.substr(i, j - i);
    i = j + 1;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- errors

std::string_view recordErrorKindName(RecordErrorKind kind) {
  switch (kind) {
    case RecordErrorKind::Io:
      return "Io";
    case RecordErrorKind::XzError:
      return "XzError";
    case RecordErrorKind::BadHeader:
      return "BadHeader";
    case RecordErrorKind::UnsupportedVersion:
      return "UnsupportedVersion";
    case RecordErrorKind::Truncated:
      return "Truncated";
    case RecordErrorKind::LineTooLong:
      return "LineTooLong";
    case RecordErrorKind::BadEventLine:
      return "BadEventLine";
    case RecordErrorKind::EventOutOfSequence:
      return "EventOutOfSequence";
    case RecordErrorKind::UnexpectedLine:
      return "UnexpectedLine";
    case RecordErrorKind::BadNumber:
      return "BadNumber";
    case RecordErrorKind::UnknownWhat:
      return "UnknownWhat";
    case RecordErrorKind::UnknownWorkerMessage:
      return "UnknownWorkerMessage";
    case RecordErrorKind::UnknownCommandType:
      return "UnknownCommandType";
    case RecordErrorKind::UnknownDrawType:
      return "UnknownDrawType";
    case RecordErrorKind::UnknownImageType:
      return "UnknownImageType";
    case RecordErrorKind::BadBinaryHeader:
      return "BadBinaryHeader";
    case RecordErrorKind::CompressedBinaryUnsupported:
      return "CompressedBinaryUnsupported";
    case RecordErrorKind::BinaryTooLarge:
      return "BinaryTooLarge";
    case RecordErrorKind::MissingBinaryTerminator:
      return "MissingBinaryTerminator";
    case RecordErrorKind::CountTooLarge:
      return "CountTooLarge";
    case RecordErrorKind::SizeMismatch:
      return "SizeMismatch";
    case RecordErrorKind::PathSegmentBeyondData:
      return "PathSegmentBeyondData";
  }
  return "?";
}

std::string RecordError::toString() const {
  std::string s(recordErrorKindName(kind));
  s += " at byte " + std::to_string(offset);
  if (eventIndex >= 0) {
    s += " (event " + std::to_string(eventIndex) + ")";
  }
  s += ": " + detail;
  return s;
}

std::string_view workerMessageName(WorkerMessage message) {
  static constexpr std::string_view NAMES[WORKER_MESSAGE_COUNT] = {
      "NOP",
      "UPDATE",
      "WAKEUP",
      "OOM",
      "READY",
      "DISPLAY_CONNECT_DEPRECATED",
      "DISPLAY_DISCONNECT_DEPRECATED",
      "DISPLAY_MIGRATE_DEPRECATED",
      "START",
      "STOP",
      "CURSOR_CONNECT_DEPRECATED",
      "CURSOR_DISCONNECT_DEPRECATED",
      "CURSOR_MIGRATE_DEPRECATED",
      "SET_COMPRESSION",
      "SET_STREAMING_VIDEO",
      "SET_MOUSE_MODE",
      "ADD_MEMSLOT",
      "DEL_MEMSLOT",
      "RESET_MEMSLOTS",
      "DESTROY_SURFACES",
      "CREATE_PRIMARY_SURFACE",
      "DESTROY_PRIMARY_SURFACE",
      "RESET_CURSOR",
      "RESET_IMAGE_CACHE",
      "DESTROY_SURFACE_WAIT",
      "LOADVM_COMMANDS",
      "UPDATE_ASYNC",
      "ADD_MEMSLOT_ASYNC",
      "DESTROY_SURFACES_ASYNC",
      "CREATE_PRIMARY_SURFACE_ASYNC",
      "DESTROY_PRIMARY_SURFACE_ASYNC",
      "DESTROY_SURFACE_WAIT_ASYNC",
      "FLUSH_SURFACES_ASYNC",
      "DISPLAY_CHANNEL_CREATE",
      "CURSOR_CHANNEL_CREATE",
      "MONITORS_CONFIG_ASYNC",
      "DRIVER_UNLOAD",
      "GL_SCANOUT",
      "GL_DRAW_ASYNC",
      "SET_VIDEO_CODECS",
      "CLOSE_WORKER",
  };
  auto i = static_cast<uint32_t>(message);
  return i < WORKER_MESSAGE_COUNT ? NAMES[i] : std::string_view("UNKNOWN");
}

// ---------------------------------------------------------------- reader core

RecordReader::RecordReader(std::unique_ptr<ByteSource> source)
    : source_(std::move(source)), buf_(READ_BUFFER_BYTES + MAX_LINE_LENGTH) {}

RecordReader::~RecordReader() = default;

std::variant<std::unique_ptr<RecordReader>, RecordError> RecordReader::open(
    const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return RecordError{RecordErrorKind::Io, 0, -1, "open " + path + ": " + std::strerror(errno)};
  }
  std::unique_ptr<ByteSource> source = std::make_unique<FdSource>(fd);
  // Sniff the xz magic rather than trusting the file name.
  static constexpr uint8_t XZ_MAGIC[6] = {0xfd, '7', 'z', 'X', 'Z', 0x00};
  uint8_t head[sizeof(XZ_MAGIC)];
  ssize_t n = ::pread(fd, head, sizeof(head), 0);
  if (n == static_cast<ssize_t>(sizeof(head)) && std::memcmp(head, XZ_MAGIC, sizeof(head)) == 0) {
    auto xz = std::make_unique<XzSource>(std::move(source));
    if (auto err = xz->init()) {
      return RecordError{RecordErrorKind::XzError, 0, -1, *err};
    }
    source = std::move(xz);
  }
  std::unique_ptr<RecordReader> reader(new RecordReader(std::move(source)));
  if (auto err = reader->readHeader()) {
    return *err;
  }
  return reader;
}

std::variant<std::unique_ptr<RecordReader>, RecordError> RecordReader::fromBytes(
    std::string bytes) {
  std::unique_ptr<RecordReader> reader(
      new RecordReader(std::make_unique<MemorySource>(std::move(bytes))));
  if (auto err = reader->readHeader()) {
    return *err;
  }
  return reader;
}

std::optional<RecordError> RecordReader::fill(size_t want) {
  while (end_ - pos_ < want && !sourceDone_) {
    if (pos_ > 0) {
      std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    auto got = source_->read(buf_.data() + end_, buf_.size() - end_);
    if (auto* err = std::get_if<RecordError>(&got)) {
      err->offset = offset_;
      err->eventIndex = nextIndex_;
      return *err;
    }
    size_t n = std::get<size_t>(got);
    if (n == 0) {
      sourceDone_ = true;
    }
    end_ += n;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- parser

// One event's worth of parsing state. Steps return false after recording the
// first fault in `error`; callers just propagate false.
struct RecordReader::Parser {
  Parser(RecordReader& reader, int64_t index) : r(reader), eventIndex(index) {}

  RecordReader& r;
  int64_t eventIndex;
  uint64_t binaryBudget = MAX_EVENT_BINARY_BYTES;
  std::optional<RecordError> error;
  std::string line;

  bool fail(RecordErrorKind kind, std::string detail) {
    if (!error) {
      error = RecordError{kind, r.offset_, eventIndex, std::move(detail)};
    }
    return false;
  }

  bool ioOk(std::optional<RecordError> err) {
    if (err) {
      error = std::move(err);
      error->eventIndex = eventIndex;
      return false;
    }
    return true;
  }

  void consume(size_t n) {
    r.pos_ += n;
    r.offset_ += n;
  }

  // Reads bytes up to `terminator` (consumed, not stored), at most `cap`.
  bool readToken(char terminator, size_t cap, std::string& out, const char* what) {
    if (!ioOk(r.fill(cap + 1))) {
      return false;
    }
    size_t avail = r.end_ - r.pos_;
    const uint8_t* start = r.buf_.data() + r.pos_;
    const void* hit = std::memchr(start, terminator, std::min(avail, cap + 1));
    // A binary header never spans lines: a newline before the ':' means the
    // header is malformed, not that it is long.
    if (terminator != '\n') {
      const void* nl = std::memchr(start, '\n', std::min(avail, cap + 1));
      if (nl && (!hit || nl < hit)) {
        return fail(RecordErrorKind::BadBinaryHeader,
                    std::string(what) + " \"" +
                        std::string(reinterpret_cast<const char*>(start),
                                    static_cast<const uint8_t*>(nl) - start) +
                        "\" has no ':'");
      }
    }
    if (!hit) {
      if (avail <= cap) {
        return fail(RecordErrorKind::Truncated, std::string("end of file inside ") + what);
      }
      return fail(RecordErrorKind::LineTooLong,
                  std::string(what) + " longer than " + std::to_string(cap) + " bytes");
    }
    size_t len = static_cast<const uint8_t*>(hit) - start;
    out.assign(reinterpret_cast<const char*>(start), len);
    consume(len + 1);
    return true;
  }

  bool readLine() { return readToken('\n', MAX_LINE_LENGTH, line, "text line"); }

  bool peekStartsWith(std::string_view prefix) {
    if (!ioOk(r.fill(prefix.size()))) {
      return false;
    }
    return r.end_ - r.pos_ >= prefix.size() &&
           std::memcmp(r.buf_.data() + r.pos_, prefix.data(), prefix.size()) == 0;
  }

  bool atEnd() {
    if (!ioOk(r.fill(1))) {
      return false;
    }
    return r.end_ == r.pos_;
  }

  // Reads "<key> v1 ... vN" (key may contain spaces; empty key means the
  // line is only numbers).
  bool expectNums(std::string_view key, Num* values, size_t count) {
    uint64_t lineOffset = r.offset_;
    if (!readLine()) {
      return false;
    }
    std::string_view rest(line);
    if (!key.empty()) {
      if (rest.substr(0, key.size()) != key ||
          (rest.size() > key.size() && rest[key.size()] != ' ') ||
          (count > 0 && rest.size() == key.size())) {
        error = RecordError{RecordErrorKind::UnexpectedLine, lineOffset, eventIndex,
                            "expected \"" + std::string(key) + "\", found \"" + line + "\""};
        return false;
      }
      rest.remove_prefix(std::min(rest.size(), key.size() + 1));
    }
    Tokens tokens = count == 0 && rest.empty() ? Tokens{} : splitSpaces(rest);
    if (tokens.size() != count) {
      error = RecordError{RecordErrorKind::UnexpectedLine, lineOffset, eventIndex,
                          "\"" + line + "\": expected " + std::to_string(count) + " values"};
      return false;
    }
    for (size_t i = 0; i < count; ++i) {
      if (!parseNum(tokens[i], values[i])) {
        error = RecordError{RecordErrorKind::BadNumber, lineOffset, eventIndex,
                            "\"" + line + "\": not a decimal integer"};
        return false;
      }
    }
    return true;
  }

  bool expectKeyword(std::string_view key) { return expectNums(key, nullptr, 0); }

  template <typename T>
  bool field(std::string_view key, T& out) {
    Num n;
    uint64_t lineOffset = r.offset_;
    if (!expectNums(key, &n, 1)) {
      return false;
    }
    if (!narrow(n, out)) {
      error = RecordError{
          RecordErrorKind::BadNumber, lineOffset, eventIndex,
          "\"" + line + "\": out of range for a " + std::to_string(sizeof(T) * 8) + "-bit field"};
      return false;
    }
    return true;
  }

  template <typename T>
  bool fields(std::string_view key, std::initializer_list<T*> outs) {
    Num n[8];
    uint64_t lineOffset = r.offset_;
    if (!expectNums(key, n, outs.size())) {
      return false;
    }
    size_t i = 0;
    for (T* out : outs) {
      if (!narrow(n[i++], *out)) {
        error = RecordError{RecordErrorKind::BadNumber, lineOffset, eventIndex,
                            "\"" + line + "\": value out of range"};
        return false;
      }
    }
    return true;
  }

  bool flag(std::string_view key, bool& out) {
    uint32_t v;
    uint64_t lineOffset = r.offset_;
    if (!field(key, v)) {
      return false;
    }
    if (v > 1) {
      error = RecordError{RecordErrorKind::BadNumber, lineOffset, eventIndex,
                          "\"" + line + "\": expected 0 or 1"};
      return false;
    }
    out = v == 1;
    return true;
  }

  // `key` is "rect <prefix>", spelled out at each call to avoid building it.
  bool rect(std::string_view key, Rect& out) {
    return fields<int32_t>(key, {&out.top, &out.left, &out.bottom, &out.right});
  }
  bool point(Point& out) { return fields<int32_t>("point", {&out.x, &out.y}); }
  bool point16(Point16& out) { return fields<int16_t>("point16", {&out.x, &out.y}); }

  // "binary <z> <prefix> <size>:" <size bytes> "\n", appended to out.
  // `expected`, when set, is the size the grammar requires here.
  // `limit`, when set, is the most the grammar leaves room for (the rest of
  // a chunk list's declared total); checked before any byte is read.
  bool binary(std::string_view prefix, std::vector<uint8_t>& out,
              std::optional<uint64_t> expected = std::nullopt,
              std::optional<uint64_t> limit = std::nullopt) {
    uint64_t headerOffset = r.offset_;
    std::string header;
    if (!readToken(':', MAX_BINARY_HEADER_LENGTH, header, "binary header")) {
      return false;
    }
    auto bad = [&](RecordErrorKind kind, std::string detail) {
      error = RecordError{kind, headerOffset, eventIndex, std::move(detail)};
      return false;
    };
    auto tokens = splitSpaces(header);
    Num z, size;
    if (tokens.size() != 4 || tokens[0] != "binary" || !parseNum(tokens[1], z) ||
        !parseNum(tokens[3], size) || size.negative) {
      return bad(RecordErrorKind::BadBinaryHeader, "\"" + header + "\"");
    }
    if (tokens[2] != prefix) {
      return bad(RecordErrorKind::BadBinaryHeader,
                 "expected binary \"" + std::string(prefix) + "\", found \"" + header + "\"");
    }
    if (z.magnitude == 1 && !z.negative) {
      return bad(RecordErrorKind::CompressedBinaryUnsupported, "\"" + header + "\"");
    }
    if (z.magnitude != 0) {
      return bad(RecordErrorKind::BadBinaryHeader, "\"" + header + "\": bad zlib flag");
    }
    if (size.magnitude > MAX_BINARY_BYTES) {
      return bad(RecordErrorKind::BinaryTooLarge, "\"" + header + "\": above MAX_BINARY_BYTES");
    }
    if (size.magnitude > binaryBudget) {
      return bad(RecordErrorKind::BinaryTooLarge,
                 "\"" + header + "\": event exceeds MAX_EVENT_BINARY_BYTES");
    }
    if (limit && size.magnitude > *limit) {
      return bad(RecordErrorKind::SizeMismatch, "\"" + header + "\": only " +
                                                    std::to_string(*limit) +
                                                    " bytes left of the declared chunk total");
    }
    if (expected && *expected != size.magnitude) {
      return bad(RecordErrorKind::SizeMismatch,
                 "\"" + header + "\": expected " + std::to_string(*expected) + " bytes");
    }
    binaryBudget -= size.magnitude;
    uint64_t left = size.magnitude;
    while (left > 0) {
      if (!ioOk(r.fill(1))) {
        return false;
      }
      size_t avail = r.end_ - r.pos_;
      if (avail == 0) {
        return fail(RecordErrorKind::Truncated, "end of file inside binary \"" +
                                                    std::string(prefix) + "\" with " +
                                                    std::to_string(left) + " bytes missing");
      }
      size_t take = static_cast<size_t>(std::min<uint64_t>(avail, left));
      const uint8_t* src = r.buf_.data() + r.pos_;
      out.insert(out.end(), src, src + take);
      consume(take);
      left -= take;
    }
    if (!peekStartsWith("\n")) {
      if (error) {
        return false;
      }
      return fail(
          r.end_ == r.pos_ ? RecordErrorKind::Truncated : RecordErrorKind::MissingBinaryTerminator,
          "no newline after binary \"" + std::string(prefix) + "\"");
    }
    consume(1);
    return true;
  }

  // The chunk list of one QXLDataChunk chain; returns the joined bytes and,
  // when there was more than one chunk, each chunk's size in `chunkSizes`.
  bool chunks(std::string_view prefix, std::vector<uint8_t>& out, std::vector<uint32_t>& chunkSizes,
              std::optional<uint64_t> expectedTotal) {
    Num n[2];
    uint64_t lineOffset = r.offset_;
    if (!expectNums("data_chunks", n, 2)) {
      return false;
    }
    if (n[0].negative || n[1].negative) {
      error = RecordError{RecordErrorKind::BadNumber, lineOffset, eventIndex,
                          "\"" + line + "\": negative count"};
      return false;
    }
    if (n[0].magnitude > MAX_DATA_CHUNKS) {
      error = RecordError{RecordErrorKind::CountTooLarge, lineOffset, eventIndex,
                          "\"" + line + "\": above MAX_DATA_CHUNKS"};
      return false;
    }
    uint64_t total = n[1].magnitude;
    if (expectedTotal && *expectedTotal != total) {
      error = RecordError{RecordErrorKind::SizeMismatch, lineOffset, eventIndex,
                          "\"" + line + "\": expected total " + std::to_string(*expectedTotal)};
      return false;
    }
    if (total > MAX_BINARY_BYTES) {
      error = RecordError{RecordErrorKind::BinaryTooLarge, lineOffset, eventIndex,
                          "\"" + line + "\": above MAX_BINARY_BYTES"};
      return false;
    }
    size_t start = out.size();
    chunkSizes.clear();
    for (uint64_t i = 0; i <= n[0].magnitude; ++i) {
      size_t before = out.size();
      if (!binary(prefix, out, std::nullopt, total - (out.size() - start))) {
        return false;
      }
      if (n[0].magnitude > 0) {
        // At most MAX_BINARY_BYTES, so it fits QXLDataChunk's 32-bit data_size.
        chunkSizes.push_back(static_cast<uint32_t>(out.size() - before));
      }
      if (out.size() - start > total) {
        return fail(RecordErrorKind::SizeMismatch, "chunks of \"" + std::string(prefix) +
                                                       "\" exceed declared total " +
                                                       std::to_string(total));
      }
    }
    if (out.size() - start != total) {
      return fail(RecordErrorKind::SizeMismatch, "chunks of \"" + std::string(prefix) + "\" hold " +
                                                     std::to_string(out.size() - start) +
                                                     " bytes, declared " + std::to_string(total));
    }
    return true;
  }

  // ------------------------------------------------------------ QXL objects

  bool bitmap(Bitmap& bm) {
    bool hasPalette = false;
    if (!field("bitmap.format", bm.format) || !field("bitmap.flags", bm.flags) ||
        !field("bitmap.x", bm.x) || !field("bitmap.y", bm.y) ||
        !field("bitmap.stride", bm.stride) || !flag("has_palette", hasPalette)) {
      return false;
    }
    if (hasPalette) {
      uint32_t count;
      Palette& pal = bm.palette.emplace();
      uint64_t lineOffset = r.offset_;
      if (!field("qp.num_ents", count)) {
        return false;
      }
      // Checked before any entry is read: the entries are one line each.
      if (count > MAX_PALETTE_ENTRIES) {
        error = RecordError{RecordErrorKind::CountTooLarge, lineOffset, eventIndex,
                            "\"" + line + "\": above MAX_PALETTE_ENTRIES"};
        return false;
      }
      if (!field("unique", pal.unique)) {
        return false;
      }
      pal.entries.resize(count);
      for (auto& e : pal.entries) {
        if (!field("ents", e)) {
          return false;
        }
      }
    }
    // 32x32-bit product cannot overflow 64 bits.
    uint64_t size = uint64_t{bm.y} * bm.stride;
    if (size > MAX_BINARY_BYTES) {
      return fail(RecordErrorKind::BinaryTooLarge,
                  "bitmap y*stride = " + std::to_string(size) + " above MAX_BINARY_BYTES");
    }
    if (bm.flags & BITMAP_DIRECT) {
      bm.chunkCount = 1;
      return binary("image_data_flat", bm.data, size);
    }
    if (!chunks("bitmap.data", bm.data, bm.chunkSizes, size)) {
      return false;
    }
    bm.chunkCount = bm.chunkSizes.empty() ? 1 : static_cast<uint32_t>(bm.chunkSizes.size());
    return true;
  }

  bool image(std::optional<Image>& out) {
    bool present = false;
    if (!flag("image", present)) {
      return false;
    }
    if (!present) {
      return true;
    }
    Image& img = out.emplace();
    if (!field("descriptor.id", img.id) || !field("descriptor.type", img.type) ||
        !field("descriptor.flags", img.flags) || !field("descriptor.width", img.width) ||
        !field("descriptor.height", img.height)) {
      return false;
    }
    switch (img.type) {
      case IMAGE_BITMAP:
        return bitmap(img.payload.emplace<Bitmap>());
      case IMAGE_SURFACE:
        return field("surface_image.surface_id", img.payload.emplace<SurfaceImage>().surfaceId);
      case IMAGE_QUIC: {
        uint32_t dataSize;
        if (!field("quic.data_size", dataSize)) {
          return false;
        }
        auto& quic = img.payload.emplace<QuicImage>();
        return chunks("quic.data", quic.data, quic.chunkSizes, dataSize);
      }
      default:
        // spice-server aborts on any other type, so it never reaches a file.
        return fail(RecordErrorKind::UnknownImageType, "image type " + std::to_string(img.type));
    }
  }

  bool brush(Brush& b) {
    if (!field("type", b.type)) {
      return false;
    }
    if (b.type == BRUSH_SOLID) {
      return field("u.color", b.color);
    }
    if (b.type == BRUSH_PATTERN) {
      return image(b.pattern) && point(b.patternPos);
    }
    return true;  // NONE or a value the recorder writes no body for
  }

  bool qmask(QMask& m) { return field("flags", m.flags) && point(m.pos) && image(m.bitmap); }

  bool clip(Clip& c) {
    if (!field("type", c.type)) {
      return false;
    }
    if (c.type != CLIP_RECTS) {
      return true;
    }
    uint32_t count;
    uint64_t lineOffset = r.offset_;
    if (!field("num_rects", count)) {
      return false;
    }
    if (count > MAX_CLIP_RECTS) {
      error = RecordError{RecordErrorKind::CountTooLarge, lineOffset, eventIndex,
                          "\"" + line + "\": above MAX_CLIP_RECTS"};
      return false;
    }
    std::vector<uint8_t> data;
    if (!chunks("clip_rects", data, c.chunkSizes, uint64_t{count} * QXL_RECT_BYTES)) {
      return false;
    }
    c.rects.resize(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint8_t* p = data.data() + i * QXL_RECT_BYTES;
      c.rects[i] =
          Rect{static_cast<int32_t>(loadU32(p)), static_cast<int32_t>(loadU32(p + 4)),
               static_cast<int32_t>(loadU32(p + 8)), static_cast<int32_t>(loadU32(p + 12))};
    }
    return true;
  }

  bool path(std::vector<PathSegment>& segs, std::vector<uint32_t>& chunkSizes) {
    std::vector<uint8_t> data;
    if (!chunks("path", data, chunkSizes, std::nullopt)) {
      return false;
    }
    size_t at = 0;
    uint64_t points = 0;
    while (at < data.size()) {
      if (data.size() - at < PATH_SEG_HEADER_BYTES) {
        return fail(RecordErrorKind::PathSegmentBeyondData,
                    "partial segment header at path byte " + std::to_string(at));
      }
      PathSegment seg;
      seg.flags = loadU32(&data[at]);
      uint32_t count = loadU32(&data[at + 4]);
      at += PATH_SEG_HEADER_BYTES;
      if (uint64_t{count} * POINT_FIX_BYTES > data.size() - at) {
        return fail(RecordErrorKind::PathSegmentBeyondData,
                    "segment of " + std::to_string(count) + " points at path byte " +
                        std::to_string(at - PATH_SEG_HEADER_BYTES) + " runs past " +
                        std::to_string(data.size()) + " bytes of path data");
      }
      points += count;
      if (points > MAX_PATH_POINTS) {
        return fail(RecordErrorKind::CountTooLarge, "path above MAX_PATH_POINTS");
      }
      seg.points.resize(count);
      for (auto& pt : seg.points) {
        pt.x = static_cast<int32_t>(loadU32(&data[at]));
        pt.y = static_cast<int32_t>(loadU32(&data[at + 4]));
        at += POINT_FIX_BYTES;
      }
      segs.push_back(std::move(seg));
    }
    return true;
  }

  bool transform(std::optional<Transform>& out) {
    std::vector<uint8_t> data;
    if (!binary("transform", data, TRANSFORM_BYTES)) {
      return false;
    }
    Transform& t = out.emplace();
    for (size_t i = 0; i < t.size(); ++i) {
      t[i] = loadU32(&data[i * 4]);
    }
    return true;
  }

  bool srcAndArea(std::optional<Image>& src, Rect& area) {
    return image(src) && rect("rect src_area", area);
  }

  bool drawPayload(Drawable& d) {
    switch (d.type) {
      case 0:
        d.payload.emplace<DrawNop>();
        return true;
      case 1: {
        auto& p = d.payload.emplace<Fill>();
        return brush(p.brush) && field("rop_descriptor", p.ropDescriptor) && qmask(p.mask);
      }
      case 2: {
        auto& p = d.payload.emplace<Opaque>();
        return srcAndArea(p.srcBitmap, p.srcArea) && brush(p.brush) &&
               field("rop_descriptor", p.ropDescriptor) && field("scale_mode", p.scaleMode) &&
               qmask(p.mask);
      }
      case 3: {
        auto& p = d.payload.emplace<Copy>();
        return srcAndArea(p.srcBitmap, p.srcArea) && field("rop_descriptor", p.ropDescriptor) &&
               field("scale_mode", p.scaleMode) && qmask(p.mask);
      }
      case 4:
        return point(d.payload.emplace<CopyBits>().srcPos);
      case 5: {
        auto& p = d.payload.emplace<Blend>();
        return srcAndArea(p.srcBitmap, p.srcArea) && field("rop_descriptor", p.ropDescriptor) &&
               field("scale_mode", p.scaleMode) && qmask(p.mask);
      }
      case 6:
        return qmask(d.payload.emplace<Blackness>().mask);
      case 7:
        return qmask(d.payload.emplace<Whiteness>().mask);
      case 8:
        return qmask(d.payload.emplace<Invers>().mask);
      case 9: {
        auto& p = d.payload.emplace<Rop3>();
        return srcAndArea(p.srcBitmap, p.srcArea) && brush(p.brush) && field("rop3", p.rop3) &&
               field("scale_mode", p.scaleMode) && qmask(p.mask);
      }
      case 10: {
        auto& p = d.payload.emplace<Stroke>();
        if (!path(p.path, p.pathChunkSizes) || !field("attr.flags", p.attrFlags)) {
          return false;
        }
        if (p.attrFlags & LINE_STYLED) {
          uint8_t nseg;  // uint8 in QXLLineAttr, so at most 255 segments
          std::vector<uint8_t> data;
          if (!field("attr.style_nseg", nseg) ||
              !binary("style", data, uint64_t{nseg} * FIXED_BYTES)) {
            return false;
          }
          p.style.resize(nseg);
          for (size_t i = 0; i < nseg; ++i) {
            p.style[i] = static_cast<int32_t>(loadU32(&data[i * FIXED_BYTES]));
          }
        }
        return brush(p.brush) && field("fore_mode", p.foreMode) && field("back_mode", p.backMode);
      }
      case 11: {
        auto& p = d.payload.emplace<Text>();
        uint32_t dataSize;
        return field("data_size", dataSize) && field("length", p.str.length) &&
               field("flags", p.str.flags) &&
               chunks("string", p.str.data, p.str.chunkSizes, dataSize) &&
               rect("rect back_area", p.backArea) && brush(p.foreBrush) && brush(p.backBrush) &&
               field("fore_mode", p.foreMode) && field("back_mode", p.backMode);
      }
      case 12: {
        auto& p = d.payload.emplace<Transparent>();
        return srcAndArea(p.srcBitmap, p.srcArea) && field("src_color", p.srcColor) &&
               field("true_color", p.trueColor);
      }
      case 13: {
        auto& p = d.payload.emplace<AlphaBlend>();
        if (!d.compat && !field("alpha_flags", p.alphaFlags)) {
          return false;
        }
        return field("alpha", p.alpha) && srcAndArea(p.srcBitmap, p.srcArea);
      }
      case DRAW_COMPOSITE: {
        auto& p = d.payload.emplace<Composite>();
        bool has = false;
        if (!field("flags", p.flags) || !image(p.src) || !flag("src_transform", has) ||
            (has && !transform(p.srcTransform)) || !flag("mask", has) || (has && !image(p.mask)) ||
            !flag("mask_transform", has) || (has && !transform(p.maskTransform))) {
          return false;
        }
        return fields<int16_t>("src_origin", {&p.srcOrigin.x, &p.srcOrigin.y}) &&
               fields<int16_t>("mask_origin", {&p.maskOrigin.x, &p.maskOrigin.y});
      }
    }
    return false;  // unreachable: type checked by the caller
  }

  bool drawable(Drawable& d) {
    if (!expectKeyword("drawable") || !rect("rect bbox", d.bbox) || !clip(d.clip) ||
        !field("effect", d.effect) || !field("mm_time", d.mmTime)) {
      return false;
    }
    // The recorder writes QXLCompatDrawable for old drivers without saying so
    // in the file; its first differing line is the tell.
    bool compat = peekStartsWith("bitmap_offset ");
    if (error) {
      return false;
    }
    d.compat = compat;
    if (compat) {
      if (!field("bitmap_offset", d.bitmapOffset) || !rect("rect bitmap_area", d.bitmapArea)) {
        return false;
      }
    } else {
      if (!field("self_bitmap", d.selfBitmap) || !rect("rect self_bitmap_area", d.selfBitmapArea) ||
          !field("surface_id", d.surfaceId)) {
        return false;
      }
      for (size_t i = 0; i < 3; ++i) {
        if (!field("surfaces_dest", d.surfacesDest[i]) ||
            !rect("rect surfaces_rects", d.surfacesRects[i])) {
          return false;
        }
      }
    }
    uint64_t lineOffset = r.offset_;
    if (!field("type", d.type)) {
      return false;
    }
    // Unknown types make spice-server abort while recording; compat
    // drawables predate COMPOSITE.
    if (d.type > DRAW_COMPOSITE || (compat && d.type == DRAW_COMPOSITE)) {
      error = RecordError{RecordErrorKind::UnknownDrawType, lineOffset, eventIndex,
                          "draw type " + std::to_string(d.type)};
      return false;
    }
    return drawPayload(d);
  }

  bool surfaceCmd(SurfaceCmd& s) {
    if (!expectKeyword("surface_cmd") || !field("surface_id", s.surfaceId) ||
        !field("type", s.type) || !field("flags", s.flags)) {
      return false;
    }
    if (s.type != SURFACE_CREATE) {
      return true;
    }
    if (!field("u.surface_create.format", s.format) || !field("u.surface_create.width", s.width) ||
        !field("u.surface_create.height", s.height) ||
        !field("u.surface_create.stride", s.stride)) {
      return false;
    }
    if (!(s.flags & SURF_KEEP_DATA)) {
      return true;
    }
    uint64_t absStride = s.stride < 0 ? uint64_t{0} - static_cast<uint64_t>(int64_t{s.stride})
                                      : static_cast<uint64_t>(s.stride);
    return binary("data", s.data, uint64_t{s.height} * absStride);
  }

  bool cursorCmd(CursorCmd& c) {
    if (!expectKeyword("cursor_cmd") || !field("type", c.type)) {
      return false;
    }
    switch (c.type) {
      case CURSOR_SET: {
        if (!point16(c.position) || !field("u.set.visible", c.visible)) {
          return false;
        }
        CursorShape& sh = c.shape.emplace();
        uint32_t dataSize;
        return field("header.unique", sh.unique) && field("header.type", sh.type) &&
               field("header.width", sh.width) && field("header.height", sh.height) &&
               field("header.hot_spot_x", sh.hotSpotX) && field("header.hot_spot_y", sh.hotSpotY) &&
               field("data_size", dataSize) && chunks("cursor", sh.data, sh.chunkSizes, dataSize);
      }
      case CURSOR_MOVE:
        return point16(c.position);
      case CURSOR_TRAIL:
        return field("u.trail.length", c.trailLength) &&
               field("u.trail.frequency", c.trailFrequency);
      default:
        return true;  // HIDE, or a type the recorder writes no body for
    }
  }

  bool command(uint32_t type, Command& cmd) {
    switch (type) {
      case CMD_DRAW:
        cmd.type = CommandType::Draw;
        return drawable(cmd.body.emplace<Drawable>());
      case CMD_UPDATE: {
        cmd.type = CommandType::Update;
        auto& u = cmd.body.emplace<UpdateCmd>();
        return expectKeyword("update") && rect("rect area", u.area) &&
               field("update_id", u.updateId) && field("surface_id", u.surfaceId);
      }
      case CMD_MESSAGE:
        cmd.type = CommandType::Message;
        return binary("message", cmd.body.emplace<MessageCmd>().text);
      case CMD_SURFACE:
        cmd.type = CommandType::Surface;
        return surfaceCmd(cmd.body.emplace<SurfaceCmd>());
      case CMD_CURSOR:
        cmd.type = CommandType::Cursor;
        return cursorCmd(cmd.body.emplace<CursorCmd>());
    }
    return fail(RecordErrorKind::UnknownCommandType, "command type " + std::to_string(type));
  }

  bool ioEvent(WorkerMessage message, IoEvent& io) {
    io.message = message;
    if (message != WorkerMessage::CreatePrimarySurface &&
        message != WorkerMessage::CreatePrimarySurfaceAsync) {
      return true;
    }
    // spice-server writes the event line before validating the surface and
    // the payload only if it accepted it, so a bare event line is legal.
    bool end = atEnd();
    if (error) {
      return false;
    }
    bool bare = end || peekStartsWith("event ");
    if (error) {
      return false;
    }
    if (bare) {
      return true;
    }
    PrimarySurface& p = io.primary.emplace();
    Num n[4];
    uint64_t lineOffset = r.offset_;
    if (!expectNums("", n, 4)) {
      return false;
    }
    if (!narrow(n[0], p.width) || !narrow(n[1], p.height) || !narrow(n[2], p.stride) ||
        !narrow(n[3], p.format)) {
      error = RecordError{RecordErrorKind::BadNumber, lineOffset, eventIndex,
                          "\"" + line + "\": value out of range"};
      return false;
    }
    if (!fields<uint32_t>("", {&p.position, &p.mouseMode, &p.flags, &p.type})) {
      return false;
    }
    uint64_t absStride = p.stride < 0 ? uint64_t{0} - static_cast<uint64_t>(int64_t{p.stride})
                                      : static_cast<uint64_t>(p.stride);
    uint64_t size = uint64_t{p.height} * absStride;
    // The recorder writes 0 bytes when it had no mapping for the pixels.
    uint64_t headerOffset = r.offset_;
    if (!binary("data", p.data)) {
      return false;
    }
    if (!p.data.empty() && p.data.size() != size) {
      error = RecordError{RecordErrorKind::SizeMismatch, headerOffset, eventIndex,
                          "primary data is " + std::to_string(p.data.size()) +
                              " bytes, height*|stride| is " + std::to_string(size)};
      return false;
    }
    return true;
  }
};

std::optional<RecordError> RecordReader::readHeader() {
  Parser p(*this, -1);
  if (!p.readLine()) {
    if (p.error->kind == RecordErrorKind::Truncated ||
        p.error->kind == RecordErrorKind::LineTooLong) {
      p.error->kind = RecordErrorKind::BadHeader;
      p.error->detail = "no \"SPICE_REPLAY <version>\" line";
    }
    return p.error;
  }
  constexpr std::string_view MAGIC = "SPICE_REPLAY ";
  Num v;
  if (p.line.compare(0, MAGIC.size(), MAGIC) != 0 ||
      !parseNum(std::string_view(p.line).substr(MAGIC.size()), v) || v.negative) {
    return RecordError{RecordErrorKind::BadHeader, 0, -1,
                       "first line \"" + p.line.substr(0, 64) + "\" is not \"SPICE_REPLAY <n>\""};
  }
  if (v.magnitude != 1) {
    return RecordError{RecordErrorKind::UnsupportedVersion, 0, -1,
                       "version " + std::to_string(v.magnitude) + ", only 1 is known"};
  }
  version_ = 1;
  return std::nullopt;
}

std::variant<RecordEvent, EndOfRecording, RecordError> RecordReader::next() {
  if (sticky_) {
    return *sticky_;
  }
  Parser p(*this, nextIndex_);
  auto failed = [&]() -> std::variant<RecordEvent, EndOfRecording, RecordError> {
    sticky_ = p.error;
    return *sticky_;
  };
  bool end = p.atEnd();
  if (p.error) {
    return failed();
  }
  if (end) {
    return EndOfRecording{};
  }
  RecordEvent ev;
  ev.offset = offset_;
  if (!p.readLine()) {
    return failed();
  }
  auto tokens = splitSpaces(p.line);
  Num counter, what, type, ts;
  if (tokens.size() != 5 || tokens[0] != "event" || !parseNum(tokens[1], counter) ||
      !parseNum(tokens[2], what) || !parseNum(tokens[3], type) || !parseNum(tokens[4], ts) ||
      counter.negative || type.negative || ts.negative || counter.magnitude > UINT32_MAX ||
      type.magnitude > UINT32_MAX) {
    p.error =
        RecordError{RecordErrorKind::BadEventLine, ev.offset, nextIndex_,
                    "\"" + p.line.substr(0, 80) + "\" is not \"event <n> <what> <type> <ns>\""};
    return failed();
  }
  if (static_cast<int64_t>(counter.magnitude) != nextIndex_) {
    p.error = RecordError{RecordErrorKind::EventOutOfSequence, ev.offset, nextIndex_,
                          "event counter " + std::to_string(counter.magnitude) + ", expected " +
                              std::to_string(nextIndex_)};
    return failed();
  }
  ev.index = static_cast<uint32_t>(counter.magnitude);
  ev.timestampNs = ts.magnitude;
  if (what.negative || what.magnitude > 1) {
    p.error = RecordError{RecordErrorKind::UnknownWhat, ev.offset, nextIndex_,
                          "\"" + p.line + "\": kind must be 0 (command) or 1 (io)"};
    return failed();
  }
  if (what.magnitude == 1) {
    if (type.magnitude >= WORKER_MESSAGE_COUNT) {
      p.error = RecordError{RecordErrorKind::UnknownWorkerMessage, ev.offset, nextIndex_,
                            "worker message " + std::to_string(type.magnitude)};
      return failed();
    }
    if (!p.ioEvent(static_cast<WorkerMessage>(type.magnitude), ev.body.emplace<IoEvent>())) {
      return failed();
    }
  } else {
    if (!p.command(static_cast<uint32_t>(type.magnitude), ev.body.emplace<Command>())) {
      return failed();
    }
  }
  ++nextIndex_;
  return ev;
}

}  // namespace spicebox::guestsim
