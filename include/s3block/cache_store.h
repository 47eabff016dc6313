// CacheStore: the shared block cache, a read-through, write-back layer over any store.
//
// One CacheStore serves every export and every connection of the process; it keeps one cache per
// export (created on the first call that names it), each with its own byte budget, dirty limit
// and locks, until CloseExport gives it back. The background threads are two pools of the
// CacheStore, shared by every export: CacheOptions::upload_threads uploaders and
// CacheOptions::read_threads read-ahead fetchers, so the process's threads do not grow with its
// exports. An export with work is queued for its pool; the pool's threads take the queued exports
// in turn (round robin), one step (one upload, or one fetch) at a time, and several of them may
// work on one export at once.
//
// Reads: a cached block costs no store request. A miss fetches the block from the store below and
// caches it; concurrent misses of one block share one fetch. Sequential readers are detected and
// the blocks ahead of them fetched in the background by read-ahead threads (a window that grows to
// CacheOptions::readahead_max blocks), so a streaming read keeps many store reads in flight.
// A reader counts as sequential once it has read the whole of one block and gone on to the next:
// random reads that land in the same or a neighbouring large block, and the reads of
// read-modify-writes, never start read-ahead (each would be a store request nobody asked for).
//
// Writes of part of a block that is not in memory keep just the bytes written (in 4 KiB pages): the
// rest of the block is read from the store only when the block is stored, or when a reader asks
// for bytes those parts do not hold; never if writes fill the block first, or if the caller knows
// it is not stored. Many small writes into one large block thus cost one read and one upload,
// and a cache full of such blocks holds only what was written.
//
// Writes are acknowledged once the block is in the cache (dirty). Background upload threads store
// dirty blocks in parallel once dirty data passes half the dirty limit or a block has been dirty
// for max_dirty_age seconds; at the dirty limit writers wait for uploads (memory stays bounded).
// Repeated writes to a dirty block cost one upload. A write with fua is stored below with fua
// before it returns. A block whose new content is all zeros, and a deleted block, become a dirty
// "absent" entry that is deleted below (never uploaded); deletes are batched.
//
// Ordering: at most one store write or delete of a block is in flight at a time, and it always
// carries the newest content when it starts, so an upload that was in flight when the block was
// deleted (or rewritten) is followed by the delete (or the newer upload), never overtaken by it.
//
// Flush(export) is the durability point: when it returns success, every Write and Delete of the
// export that returned before Flush began is stored below and the store's Flush has returned. An
// upload that fails keeps its block dirty (it is retried later, with back-off); the flush that
// needed it fails with the store's error. No acknowledged write is dropped while the process lives.
//
// Eviction: a segmented LRU. New blocks (misses, read-ahead, writes) enter a probationary segment;
// a block used again moves to a protected segment of at most 80% of the budget. Eviction takes the
// least recently used probationary block first, so a scan, which uses each block once, cannot
// flush the hot set. Only clean blocks are evicted; dirty blocks and blocks with a store request in
// flight stay until stored.
//
// Threads: none run until Start() (nbdkit forks after Check, and threads started before a fork
// are lost). Without threads the cache still works: flushes and writers at the dirty limit upload
// in the calling thread, and there is no read-ahead. Shutdown() (also run by the destructor)
// flushes every export, best effort, and stops the threads.
//
// A flush also waits for uploads that were already in flight when it began; one of those that
// fails may have failed for a reason that has passed (the store has recovered since), so the flush
// tries that block again itself, at once, and fails only if that fails too. Any other failed
// upload the flush needs fails it as soon as it is known.
//
// Memory accounting: each cached block is charged its size plus kEntryOverhead bytes; an absent
// (known not stored, or deleted) block is charged kEntryOverhead; a block written in part, its
// pages and their bookkeeping plus kEntryOverhead. A block being fetched (or the rest of a block
// written in part) is charged from when its fetch starts (at the size of the last block seen), so
// that the cache evicts to make room for it before it arrives; read-ahead in flight is held to an
// eighth of the budget. Content written over while an upload of it is in flight stays in memory
// until that upload ends, and is charged until then too.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_CACHE_STORE_H_
#define S3BLOCK_CACHE_STORE_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "s3block/block_device.h"
#include "s3block/block_store.h"
#include "util/mutex.h"

namespace s3block {

struct CacheOptions {
  // Byte budget of each export's cache.
  uint64_t cache_size = 256ull << 20;
  // Most dirty (not yet stored) bytes per export; 0 means cache_size / 4.
  uint64_t dirty_size = 0;
  // Background uploaders, one pool shared by every export.
  uint32_t upload_threads = 32;
  // Background fetchers for read-ahead, one pool shared by every export.
  uint32_t read_threads = 32;
  // Most blocks read ahead of one sequential reader; 0 turns read-ahead off.
  uint32_t readahead_max = 32;
  // A block dirty for this long is uploaded even below the upload threshold.
  double max_dirty_age = 2.0;
};

// Counters of one export's cache. Counts are monotonic since the cache was created; the
// "in flight", "bytes" and "blocks" values are the state at the time of the call.
struct CacheStats {
  uint64_t hits = 0;              // reads answered from memory (including read-ahead blocks)
  uint64_t misses = 0;            // reads that had to fetch the block from the store
  uint64_t coalesced = 0;         // reads that waited for a fetch already in flight
  uint64_t readahead_blocks = 0;  // blocks fetched ahead of a sequential reader
  uint64_t readahead_hits = 0;    // read-ahead blocks that a reader then used
  uint64_t store_reads = 0;       // read requests to the store
  uint64_t store_read_bytes = 0;
  uint64_t store_writes = 0;      // write requests (uploads) to the store
  uint64_t store_write_bytes = 0;
  uint64_t store_deletes = 0;     // delete requests to the store
  uint64_t store_deleted_blocks = 0;
  uint64_t store_flushes = 0;
  uint64_t zero_writes = 0;       // writes of all-zero blocks, kept as deletes
  uint64_t upload_failures = 0;   // failed store writes and deletes (the blocks stay dirty)
  uint64_t upload_retries = 0;    // blocks queued again after a failure
  uint64_t evictions = 0;
  uint64_t writer_waits = 0;      // writes that waited at the dirty limit
  uint64_t ordered_waits = 0;     // fua writes and deletes that waited for an earlier store
                                  // request of the same block to finish
  uint64_t uploads_in_flight = 0;
  uint64_t fetches_in_flight = 0;
  uint64_t flushes_in_progress = 0;
  uint64_t dirty_bytes = 0;
  uint64_t dirty_blocks = 0;
  uint64_t cached_bytes = 0;
  uint64_t cached_blocks = 0;
  uint64_t partial_writes = 0;    // writes of part of a block kept without reading the block
  uint64_t partial_reads = 0;     // store reads of the rest of a block written in part
};

// Renders stats as one line of "key=value" pairs separated by spaces, in the order declared above.
std::string CacheStatsToString(const CacheStats& stats);
// Calls fn(key, value) for every counter, in the order declared above.
void ForEachCacheStat(const CacheStats& stats,
                      const std::function<void(const char* key, uint64_t value)>& fn);

class CacheStore : public StoreDecorator {
 public:
  // Bytes charged per cached block in addition to its data: the bookkeeping it costs.
  static constexpr uint64_t kEntryOverhead = 128;

  CacheStore(std::shared_ptr<BlockStore> next, CacheOptions options);
  // Runs Shutdown().
  ~CacheStore() override;
  CacheStore(const CacheStore&) = delete;
  CacheStore& operator=(const CacheStore&) = delete;

  // Starts the store below, then the upload and read-ahead pools, which serve every export (and
  // every export created later). Calling it again is harmless.
  Status Start() override;

  // The device through which the Volume reads and writes the export, at its block size: reads
  // copy only the bytes asked for from the cached block (fetching it on a miss); runs of blocks
  // it holds are copied with one lock for up to 64 of them; a write of part of a block keeps the
  // bytes written without reading the block, when the block is not in memory and the range is in
  // whole 512-byte sectors (see the file comment), and otherwise reads (or finds), merges and
  // writes the block. Reads with ReadIntent::kPartialWrite are never taken for a sequential
  // reader. The device holds no reference to the export's cache between calls: CloseExport may
  // free it, and the next call starts a new one.
  std::unique_ptr<BlockDevice> OpenDevice(std::string_view export_name, uint32_t block_size);

  // As BlockStore, through the export's cache; see the file comment for what the cache adds.
  // Errors are the store's.
  Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) override;
  // Each block as Read (a block the cache holds costs no store request).
  void ReadBatch(std::string_view export_name, std::span<BlockRead> reads) override;
  size_t ReadBatchSize(std::string_view) const override { return 1; }
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  // As Write: the cache uploads every block with the store's Overwrite.
  Status Overwrite(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) override;
  Status Flush(std::string_view export_name) override;
  // Reads through the cache and writes into it.
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;
  // Lists what the store holds as the cache sees it: blocks written but not yet uploaded are
  // listed, blocks deleted but not yet deleted below are not.
  Status ListBlocks(std::string_view export_name,
                    const std::function<void(uint64_t)>& fn) override;
  // Flushes the export first, so that its deletes reach the store, then forwards.
  Status DeleteMeta(std::string_view export_name) override;
  // Flushes the export, waits until no call and no pool thread is inside its cache (calls that
  // name it meanwhile wait for the close to end, and then find a new, empty cache), takes it off
  // the pools' queues and frees it; then forwards. On a failed flush the cache stays as it was.
  Status CloseExport(std::string_view export_name) override;
  // Flushes every export (best effort: the first error is returned) and stops all threads.
  // The cache keeps working afterwards, without threads.
  Status Shutdown();

  // The counters of one export's cache; false if the export has no cache (yet, or since
  // CloseExport).
  bool GetStats(std::string_view export_name, CacheStats* out) const;
  // The counters of every export's cache, by export name.
  std::vector<std::pair<std::string, CacheStats>> AllStats() const;

  const CacheOptions& options() const { return options_; }

 private:
  class ExportCache;
  class Pool;
  class Device;

  // A held reference to an export's cache (one atomic increment, and a decrement when dropped):
  // CloseExport does not free a cache while one is held.
  class Ref {
   public:
    Ref() = default;
    // REQUIRES: the cache cannot be freed meanwhile (the caller holds mu_, or a pool's lock
    // while the cache is on its queue).
    Ref(const CacheStore* store, ExportCache* cache);
    Ref(Ref&& other) noexcept
        : store_(other.store_), cache_(std::exchange(other.cache_, nullptr)) {}
    Ref& operator=(Ref&&) = delete;
    ~Ref() { reset(); }
    void reset();
    ExportCache* get() const { return cache_; }
    ExportCache* operator->() const { return cache_; }
    explicit operator bool() const { return cache_ != nullptr; }

   private:
    const CacheStore* store_ = nullptr;
    ExportCache* cache_ = nullptr;
  };

  // The export's cache, created on first use (served by the pools, if Start has run). Waits
  // while the export is being closed.
  Ref For(std::string_view export_name);
  // The export's cache, if it has one (even one being closed).
  Ref Find(std::string_view export_name) const;

  const CacheOptions options_;
  // Declared before exports_: every cache refers to them.
  std::unique_ptr<Pool> upload_pool_;
  std::unique_ptr<Pool> fetch_pool_;
  mutable Mutex mu_;
  // Signalled when a cache being closed is no longer held, and when a close ends.
  mutable std::condition_variable close_cv_;
  bool started_ GUARDED_BY(mu_) = false;
  // Erased only by CloseExport, once no Ref to the cache is held.
  std::map<std::string, std::unique_ptr<ExportCache>, std::less<>> exports_ GUARDED_BY(mu_);
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_STORE_H_
