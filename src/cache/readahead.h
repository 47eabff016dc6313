#ifndef S3BLOCK_CACHE_READAHEAD_H_
#define S3BLOCK_CACHE_READAHEAD_H_

#include <cstddef>
#include <cstdint>

namespace s3block {

// Finds sequential readers among the reads of one export, and says how far ahead of each to
// read: a table of the last few streams, each the block it expects next and a read-ahead window
// that doubles while its reader keeps going. It only decides (the cache queues the fetches), and
// is not thread-safe (the cache calls it under its lock).
class SequentialStreams {
 public:
  // What bounds the window now: at most `window` blocks, and a quarter of what the cache holds
  // (`budget` bytes, a block charged `block_charge`), at least one block.
  struct Limits {
    uint64_t window = 0;
    uint64_t budget = 0;
    uint64_t block_charge = 1;
  };
  struct Decision {
    // The read goes on reading a block that a stream has just read from: not a second use of
    // the block (for the LRU).
    bool same_use = false;
    // The read continues a sequential reader, `stream`: the caller reads ahead what
    // Window(stream, ...) returns.
    bool sequential = false;
    size_t stream = 0;
  };
  // Blocks [first, end) to read ahead (none if first >= end).
  struct Range {
    uint64_t first = 0;
    uint64_t end = 0;
  };

  // Streams tracked per export (several connections may stream at once).
  static constexpr size_t kStreams = 8;
  // A reader is sequential after this many consecutive blocks, each but the last read whole;
  // read-ahead starts then.
  static constexpr uint32_t kMinSequentialRun = 2;
  // The first read-ahead window, in blocks; it doubles with each sequential read.
  static constexpr uint32_t kFirstWindow = 4;
  // A read this close to where a sequential stream is expected still continues it: parallel
  // requests of one reader arrive slightly out of order.
  static constexpr uint64_t kStreamSlack = 8;

  // Notes a reader's read of `len` bytes of block id, a block of block_size bytes.
  Decision Note(uint64_t id, uint32_t len, uint32_t block_size);
  // For a Decision that is sequential: grows the stream's window within `limits` and returns
  // what to read ahead of the block just read. The caller then tells Queued how far it got.
  Range Window(size_t stream, const Limits& limits);
  // Read-ahead of `stream` has been queued up to block `ahead` (exclusive): the blocks from
  // there on are left for its next reads.
  void Queued(size_t stream, uint64_t ahead) { streams_[stream].ahead = ahead; }
  // The window of a stream, in blocks (for tests).
  uint32_t window(size_t stream) const { return streams_[stream].window; }

 private:
  struct Stream {
    uint64_t next = 0;     // the block it is expected to read next
    uint64_t ahead = 0;    // read-ahead has been scheduled up to here (exclusive)
    uint64_t covered = 0;  // bytes read in block next - 1, until the stream is sequential
    uint32_t run = 0;      // consecutive blocks read
    uint32_t window = 0;
    uint64_t last_used = 0;
  };

  Stream streams_[kStreams];
  uint64_t clock_ = 0;
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_READAHEAD_H_
