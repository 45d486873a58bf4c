// Runs in: guestsim tools and tests (unsandboxed, developer machine).
// Input: a spice-server QXL recording ("SPICE_REPLAY 1", written when
// SPICE_WORKER_RECORD_FILENAME is set), plain or xz-compressed. The file is
// hostile: every count, length and enum value is checked here, and a bad file
// yields a RecordError naming the fault, the byte offset and the event number.
// Nothing in this module asserts on file content.
//
// Format summary (learned from spice-server's red-record-qxl.cpp and
// red-replay-qxl.cpp; see docs in the .cpp for the exact grammar):
//   "SPICE_REPLAY 1\n", then events. Each event starts with
//   "event <counter> <what> <type> <timestamp_ns>\n"; what=0 is a QXL command
//   (type = QXL_CMD_*) followed by its text/binary body, what=1 is a worker
//   dispatcher message (type = RED_WORKER_MESSAGE_*), which has a body only
//   for CREATE_PRIMARY_SURFACE(_ASYNC).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "renderer/qxl-command.h"

namespace spicebox::guestsim {

// ---------------------------------------------------------------- limits
// Each cap bounds what one hostile event can make us allocate or loop over.

// Longest text line we accept. The longest line spice-server writes is
// "rect surfaces_rects" with four 11-char ints (~70 bytes).
inline constexpr size_t MAX_LINE_LENGTH = 256;
// One binary block. The largest legitimate block is a primary surface or a
// KEEP_DATA surface: 8192x4096 at 4 bytes/pixel is 128 MiB. Memory is only
// grown as bytes actually arrive, so a truncated file claiming this much
// costs no more than the file holds.
inline constexpr uint64_t MAX_BINARY_BYTES = 128ull << 20;
// Sum of all binary blocks in one event (a pattern brush + mask + source
// image can each carry a bitmap).
inline constexpr uint64_t MAX_EVENT_BINARY_BYTES = 256ull << 20;
// Extra QXLDataChunks after the first in one chunked object. Guest drivers
// split large bitmaps into at most a few dozen chunks; each chunk costs a
// text header, so this also bounds per-event parsing work.
inline constexpr uint32_t MAX_DATA_CHUNKS = 4096;
// Palettes serve 1/4/8-bit bitmaps only: 2^8 entries at most.
inline constexpr uint32_t MAX_PALETTE_ENTRIES = 256;
// Clip rectangles per drawable. Windows guests send a few hundred at most;
// 65536 rects are 1 MiB, well under MAX_BINARY_BYTES.
inline constexpr uint32_t MAX_CLIP_RECTS = 65536;
// Points in one stroke path (all segments). 1M points = 8 MiB.
inline constexpr uint32_t MAX_PATH_POINTS = 1u << 20;
// Decompressor memory for .xz input: xz -9 needs 64 MiB; a hostile header
// may ask for up to 4 GiB dictionaries.
inline constexpr uint64_t XZ_MEMORY_LIMIT = 256ull << 20;

// ---------------------------------------------------------------- errors

enum class RecordErrorKind {
  Io,                           // open/read failed (errno in message)
  XzError,                      // liblzma reported corrupt or unsupported data
  BadHeader,                    // first line is not "SPICE_REPLAY <n>"
  UnsupportedVersion,           // version other than 1
  Truncated,                    // end of file inside an event
  LineTooLong,                  // text line longer than MAX_LINE_LENGTH
  BadEventLine,                 // "event ..." line malformed
  EventOutOfSequence,           // event counter not previous + 1
  UnexpectedLine,               // a different key than the grammar requires here
  BadNumber,                    // not a decimal integer / out of the field's range
  UnknownWhat,                  // event kind other than 0 (command) or 1 (io)
  UnknownWorkerMessage,         // io event type beyond RED_WORKER_MESSAGE_COUNT
  UnknownCommandType,           // QXL_CMD_* not known
  UnknownDrawType,              // QXL_DRAW_* not known
  UnknownImageType,             // image type the recorder cannot write
  BadBinaryHeader,              // "binary <z> <prefix> <size>:" malformed
  CompressedBinaryUnsupported,  // zlib-compressed block (recorder's WITH_ZLIB)
  BinaryTooLarge,               // block size above MAX_BINARY_BYTES / event budget
  MissingBinaryTerminator,      // no '\n' after the block's bytes
  CountTooLarge,                // a count above its named cap
  SizeMismatch,                 // a declared size disagrees with the bytes present
  PathSegmentBeyondData,        // path segment point count runs past the path data
};

std::string_view recordErrorKindName(RecordErrorKind kind);

struct RecordError {
  RecordErrorKind kind;
  uint64_t offset = 0;      // byte offset in the uncompressed stream
  int64_t eventIndex = -1;  // event being read; -1 before the first
  std::string detail;       // what was expected / found

  std::string toString() const;
};

// ---------------------------------------------------------------- QXL tree

// The command tree (renderer/qxl-command.h) under the names this module always used.
using namespace qxlcmd;

// spice-server's RED_WORKER_MESSAGE_* values, which the recorder stores as
// numbers. Upstream only appends to this enum, so the values are stable.
enum class WorkerMessage : uint32_t {
  Nop = 0,
  Update = 1,
  Wakeup = 2,
  Oom = 3,
  Ready = 4,
  DisplayConnectDeprecated = 5,
  DisplayDisconnectDeprecated = 6,
  DisplayMigrateDeprecated = 7,
  Start = 8,
  Stop = 9,
  CursorConnectDeprecated = 10,
  CursorDisconnectDeprecated = 11,
  CursorMigrateDeprecated = 12,
  SetCompression = 13,
  SetStreamingVideo = 14,
  SetMouseMode = 15,
  AddMemslot = 16,
  DelMemslot = 17,
  ResetMemslots = 18,
  DestroySurfaces = 19,
  CreatePrimarySurface = 20,
  DestroyPrimarySurface = 21,
  ResetCursor = 22,
  ResetImageCache = 23,
  DestroySurfaceWait = 24,
  LoadvmCommands = 25,
  UpdateAsync = 26,
  AddMemslotAsync = 27,
  DestroySurfacesAsync = 28,
  CreatePrimarySurfaceAsync = 29,
  DestroyPrimarySurfaceAsync = 30,
  DestroySurfaceWaitAsync = 31,
  FlushSurfacesAsync = 32,
  DisplayChannelCreate = 33,
  CursorChannelCreate = 34,
  MonitorsConfigAsync = 35,
  DriverUnload = 36,
  GlScanout = 37,
  GlDrawAsync = 38,
  SetVideoCodecs = 39,
  CloseWorker = 40,
};
inline constexpr uint32_t WORKER_MESSAGE_COUNT = 41;

// Upper-case name without the RED_WORKER_MESSAGE_ prefix ("ADD_MEMSLOT").
std::string_view workerMessageName(WorkerMessage message);

// The QXLDevSurfaceCreate fields the recorder writes. group_id and mem are
// not recorded (the recorder writes the pixels instead).
struct PrimarySurface {
  uint32_t width = 0, height = 0;
  int32_t stride = 0;
  uint32_t format = 0;
  uint32_t position = 0, mouseMode = 0, flags = 0, type = 0;
  std::vector<uint8_t> data;  // height * |stride| bytes, or empty
  bool operator==(const PrimarySurface&) const = default;
};

struct IoEvent {
  WorkerMessage message = WorkerMessage::Nop;
  // CREATE_PRIMARY_SURFACE(_ASYNC) only, and only when spice-server accepted
  // the request: it writes the event line before validating the surface.
  std::optional<PrimarySurface> primary;
  bool operator==(const IoEvent&) const = default;
};

struct RecordEvent {
  uint32_t index = 0;        // the recorder's event counter
  uint64_t timestampNs = 0;  // monotonic clock of the recording host
  uint64_t offset = 0;       // byte offset of the "event" line
  std::variant<Command, IoEvent> body;
  bool operator==(const RecordEvent&) const = default;
};

struct EndOfRecording {};

// ---------------------------------------------------------------- reader

class ByteSource;

// Streams events out of a recording; holds one event in memory at a time.
class RecordReader {
 public:
  // Opens a file; xz input is recognised by its magic bytes and decoded while
  // reading. Reads and checks the header line.
  static std::variant<std::unique_ptr<RecordReader>, RecordError> open(const std::string& path);
  // Same, over bytes already in memory (tests, fuzzing).
  static std::variant<std::unique_ptr<RecordReader>, RecordError> fromBytes(std::string bytes);

  ~RecordReader();
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  // The next event, EndOfRecording at a clean end between events, or an
  // error. After an error every later call returns the same error.
  std::variant<RecordEvent, EndOfRecording, RecordError> next();

  uint32_t version() const { return version_; }
  uint64_t offset() const { return offset_; }

 private:
  explicit RecordReader(std::unique_ptr<ByteSource> source);
  struct Parser;
  friend struct Parser;

  std::optional<RecordError> readHeader();
  std::optional<RecordError> fill(size_t want);

  std::unique_ptr<ByteSource> source_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0, end_ = 0;
  bool sourceDone_ = false;
  uint64_t offset_ = 0;  // stream offset of buf_[pos_]
  uint32_t version_ = 0;
  int64_t nextIndex_ = 0;
  std::optional<RecordError> sticky_;
};

}  // namespace spicebox::guestsim
