// Runs in: guestsim tools and tests (unsandboxed, developer machine).
// Input: a RecordEvent tree built by our own code (the guest simulator) or
// read by RecordReader. The tree is trusted not to be hostile, but it is
// checked for shapes the recorder could never have written (a payload that
// disagrees with its type tag, data of the wrong size, ...): such a tree
// yields a WriteError naming the fault instead of a file the reader or
// libspice-server would reject.
//
// Output: spice-server's QXL record format "SPICE_REPLAY 1", byte for byte as
// spice-server's red-record-qxl.cpp prints it (see the grammar at the top of
// spice-record.cpp): reading a recording and writing its events back
// reproduces the original file exactly.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "base/fd.h"
#include "tools/guestsim/spice-record.h"

namespace spicebox::guestsim {

// xz preset used for compressed output: `xz`'s own default, which is what
// the shared recordings were made with. Level 6 needs ~94 MiB to encode and
// 9 MiB to decode, inside the reader's XZ_MEMORY_LIMIT.
inline constexpr uint32_t XZ_WRITE_PRESET = 6;
// Serialised bytes gathered before one write to the sink: large enough that
// a 57 MB recording costs a few hundred syscalls, small enough not to matter.
inline constexpr size_t WRITE_BUFFER_BYTES = 1 << 20;

enum class WriteErrorKind {
  Io,                  // open/write/flush failed (errno in message)
  XzError,             // liblzma refused to initialise or encode
  EventOutOfSequence,  // write(RecordEvent) with index other than the next counter
  InconsistentTree,    // a shape the recorder cannot produce (detail says which)
  WriterFailed,        // an earlier call failed; the output is incomplete
};

std::string_view writeErrorKindName(WriteErrorKind kind);

struct WriteError {
  WriteErrorKind kind;
  int64_t eventIndex = -1;  // event being written; -1 outside an event
  std::string detail;

  std::string toString() const;
};

enum class Compression { None, Xz };

class ByteSink;

// Writes events in order. Numbers events itself, like the recorder's counter.
// Nothing reaches the sink until an event has been serialised completely, so
// an InconsistentTree error leaves the output ending at an event boundary.
class RecordWriter {
 public:
  // Creates (truncates) `path`, mode 0644. Compresses with xz when the path
  // ends in ".xz". Writes the header line.
  static std::variant<std::unique_ptr<RecordWriter>, WriteError> open(const std::string& path);
  // Writes to an owned descriptor (closed by the writer's destructor).
  static std::variant<std::unique_ptr<RecordWriter>, WriteError> toFd(base::Fd fd,
                                                                      Compression compression);
  // Writes to a stream the caller keeps owning; finish() flushes it but does
  // not close it.
  static std::variant<std::unique_ptr<RecordWriter>, WriteError> toFile(FILE* file,
                                                                        Compression compression);

  ~RecordWriter();
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  // Writes an event read from a recording; its index must equal
  // nextIndex(). `offset` is ignored.
  std::optional<WriteError> write(const RecordEvent& event);
  // Write the next event with the writer's own counter.
  std::optional<WriteError> writeCommand(const Command& command, uint64_t timestampNs);
  std::optional<WriteError> writeIo(const IoEvent& io, uint64_t timestampNs);

  // Flushes everything (and ends the xz stream). The file is complete only
  // after finish() returned no error; later writes fail with WriterFailed.
  std::optional<WriteError> finish();

  uint32_t nextIndex() const { return nextIndex_; }
  // Uncompressed bytes written so far, header included.
  uint64_t bytesWritten() const { return bytesWritten_; }

 private:
  explicit RecordWriter(std::unique_ptr<ByteSink> sink);
  static std::variant<std::unique_ptr<RecordWriter>, WriteError> start(
      std::unique_ptr<ByteSink> sink, Compression compression);

  // Exactly one of cmd / io is set.
  std::optional<WriteError> writeBody(const Command* cmd, const IoEvent* io, uint64_t timestampNs);
  std::optional<WriteError> flushBuffer();
  std::optional<WriteError> failed(WriteError error);

  std::unique_ptr<ByteSink> sink_;
  std::string buf_;
  uint32_t nextIndex_ = 0;
  uint64_t bytesWritten_ = 0;
  bool finished_ = false;
  std::optional<WriteError> sticky_;
};

// Serialises one event (the "event ..." line and its body) onto `out`,
// exactly as the recorder would. On error `out` is left unchanged.
std::optional<WriteError> serializeEvent(uint32_t index, uint64_t timestampNs,
                                         const std::variant<Command, IoEvent>& body,
                                         std::string& out);

}  // namespace spicebox::guestsim
