// The cache of one export, CacheStore::ExportCache, and its entries: private to the cache layer.
// Its definitions are in cache_lists.cc (invariants, lists, eviction, pool work), cache_reads.cc
// (reads, fetches, read-ahead), cache_writes.cc (writes, overlays) and cache_uploads.cc (uploads,
// retries, flushes).
#ifndef S3BLOCK_CACHE_EXPORT_CACHE_H_
#define S3BLOCK_CACHE_EXPORT_CACHE_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/block_overlay.h"
#include "cache/readahead.h"
#include "s3block/cache_store.h"
#include "s3block/params.h"
#include "util/mutex.h"

namespace s3block {

// Builds with S3BLOCK_CACHE_INVARIANTS (the sanitizer builds) check the cache's bookkeeping when
// each public call and pool step returns; others compile nothing for it.
#if S3BLOCK_CACHE_INVARIANTS
#define S3B_CACHE_CHECK_ON_RETURN() InvariantCheck invariant_check(this)
#else
#define S3B_CACHE_CHECK_ON_RETURN() \
  do {                              \
  } while (0)
#endif

// One cached block.
struct CacheEntry {
  // Which list the entry is on; an entry is on at most one.
  enum class List : uint8_t { kNone, kProbation, kProtected, kReadyData, kReadyDelete, kRetry };

  // Where the block is in its life in the cache. An entry is made kFetching (by a reader or
  // read-ahead), kDirty (written whole) or kOverlay (written in part), and is erased kClean
  // (evicted) or kFetching (its fetch failed, or its read-ahead was dropped). What each state
  // requires of the other members, and of the lists, is in CheckInvariantsLocked.
  enum class State : uint8_t {
    kFetching,   // a fetch (fetch_token) is pending: no content yet
    kClean,      // data is the stored content; on an LRU segment
    kDirty,      // data is newer than the store's, and no store request of it is in flight
    kOverlay,    // written in part: the parts are in overlay; dirty
    kResolving,  // an overlay whose rest is being read from the store (fetch_token)
    kUploading,  // a store write or delete of data (sending) is in flight
    kRewritten,  // kUploading, and written again since: data is stored again after
  };

  // The state as the rest of the cache asks about it.
  bool fetching() const { return state == State::kFetching; }
  bool resolving() const { return state == State::kResolving; }
  bool clean() const { return state == State::kClean; }
  // data is the block's content (else a fetch is pending, or overlay).
  bool valid() const {
    return state == State::kClean || state == State::kDirty || busy();
  }
  // The content differs from the store's.
  bool dirty() const { return state != State::kFetching && state != State::kClean; }
  // A store write or delete of this block is in flight.
  bool busy() const { return state == State::kUploading || state == State::kRewritten; }

  uint64_t id = 0;
  State state = State::kFetching;
  // When valid: the content; null means absent (not stored, deleted, or all zeros).
  std::shared_ptr<const Bytes> data;
  // When kOverlay or kResolving: the block was written in part, and its parts are kept apart
  // from the rest (which is in memory only if the overlay keeps a base). Such an entry is never
  // busy: it is made whole (resolved) before it is stored.
  std::unique_ptr<BlockOverlay> overlay;
  bool prefetched = false;  // fetched by read-ahead and not yet read by anyone
  bool hot = false;         // used more than once: belongs to the protected segment
  List list = List::kNone;
  std::list<CacheEntry*>::iterator pos;  // position in `list`
  uint64_t gen = 0;          // incremented by every write and delete
  uint64_t fetch_token = 0;  // identifies the pending fetch
  uint64_t dirty_seq = 0;    // sequence number of the oldest write not yet stored (when dirty)
  uint64_t upload_no = 0;    // the number of the last store request begun to store it
  uint64_t redirty_seq = 0;  // the first write while busy (it becomes dirty_seq on success)
  uint64_t cost = 0;         // bytes charged to the cache (when valid or overlay)
  uint64_t base_cost = 0;    // bytes charged for the overlay's base (clean: not dirty)
  // The content a store write in flight is storing (while busy with a write). Written over
  // meanwhile, it is no longer data, yet held until the write ends: then sending_apart is set and
  // its bytes are charged to held_bytes_.
  std::shared_ptr<const Bytes> sending;
  bool sending_apart = false;
  std::chrono::steady_clock::time_point ready_since;  // when it joined a ready list
  std::chrono::steady_clock::time_point retry_at;     // when a failed upload may be tried again
};

// The cache of one export. All state is guarded by mu_; store requests are made without it.
class CacheStore::ExportCache {
 public:
  using Clock = std::chrono::steady_clock;

  ExportCache(BlockStore* next, const CacheOptions& options, std::string name, Pool* uploads,
              Pool* fetches)
      : next_(next),
        options_(options),
        uploads_(uploads),
        fetches_(fetches),
        name_(std::move(name)),
        budget_(options.cache_size),
        dirty_limit_(options.dirty_size ? options.dirty_size : options.cache_size / 4),
        upload_threshold_(dirty_limit_ / 2),
        inflight_limit_(std::max(dirty_limit_, budget_ / 2)),
        fetch_batch_(std::clamp<size_t>(next->ReadBatchSize(name_), 1, kMaxFetchBatch)),
        fetch_batch_bytes_(next->ReadBatchBytes(name_)),
        write_through_(next->BuffersWrites(name_)) {}

  // From now on the pools work for this cache (if they are not already).
  void StartWork();
  // From now on they do not (dirty blocks stay dirty; Flush first to store them). The pools
  // must have stopped, or have forgotten this cache (Pool::Detach); a pool thread still inside
  // it finishes its step.
  void StopWork();
  // One step of a pool thread: starts one upload (or one read-ahead fetch) and waits for it.
  // Returns true if it did, and there may be more to do; false if there was nothing to start,
  // with *wake set to when there will be (unset: when signalled).
  bool UploadStep(std::optional<Clock::time_point>* wake);
  bool FetchStep(std::optional<Clock::time_point>* wake);
  bool HasDirty() const {
    MutexLock lock(&mu_);
    return !dirty_.empty();
  }

  // A cache's place in each pool's queue and timers. Guarded by that pool's mutex.
  struct PoolSlot {
    uint32_t want = 0;  // pool threads asked to take a step (while queued)
    bool queued = false;
    bool detached = false;  // never queued again
    bool timed = false;     // has a timer at timer->first
    std::multimap<Clock::time_point, ExportCache*>::iterator timer;
  };
  PoolSlot upload_slot_, fetch_slot_;
  // Refs held to this cache, plus kClosing while CloseExport waits for them to go.
  static constexpr uint32_t kClosing = 1u << 31;
  std::atomic<uint32_t> users_{0};
  bool closing_ = false;  // guarded by CacheStore::mu_: For() waits

  Status Read(uint64_t id, Bytes* data, bool* found);
  Status ReadRange(uint64_t id, uint32_t block_size, uint32_t offset, std::span<uint8_t> out,
                   ReadIntent intent, bool* found);
  Status ReadBlocks(uint64_t first, uint32_t count, uint32_t block_size, uint8_t* out);
  // Copies bytes [offset, offset + out.size()) of a block's content to out and sets *found;
  // null content (not stored) copies nothing. A block of another length than block_size is an
  // error, never data.
  Status CopyOut(uint64_t id, const Bytes* content, uint32_t block_size, uint32_t offset,
                 std::span<uint8_t> out, bool* found) const;
  Status Write(uint64_t id, std::span<const uint8_t> data, bool fua);
  // Write of `count` blocks from `first` on, with one lock for the run (a run with a block of
  // zeros, and a run with fua over a store that does not buffer writes, block by block). To a
  // store that buffers writes, a run of at least kPassRunBytes is passed on without a copy
  // kept here (PassRun).
  Status WriteBlocks(uint64_t first, uint32_t count, uint32_t block_size, const uint8_t* data,
                     bool fua);
  Status WriteRange(uint64_t id, uint32_t block_size, uint32_t offset,
                    std::span<const uint8_t> data, bool base_zero, bool fua);
  Status Delete(std::span<const uint64_t> ids, bool fua);
  Status Flush();
  Status ListBlocks(const std::function<void(uint64_t)>& fn);
  CacheStats Stats() const;
  void SetPresenceHint(std::function<bool(uint64_t)> fn) {
    MutexLock lock(&mu_);
    presence_hint_ = std::move(fn);
  }

 private:
  // The protected segment holds at most this share of the budget; the rest is probationary.
  static constexpr uint64_t kProtectedPercent = 80;
  // Most blocks a fetcher reads ahead with one ReadBatch of the store below (a batch is also at
  // most the store's ReadBatchBytes).
  static constexpr size_t kMaxFetchBatch = 256;
  // While batches are read (small blocks of a store that reads batches: the file store), a
  // quarter of CacheOptions::read_threads fetch at a time, and the read-ahead window is four
  // times CacheOptions::readahead_max: the blocks in flight are then many batches, not many
  // threads. Measured on the local store at 4 KiB blocks (2 cores, a cold sequential read): 32
  // fetchers of batches spent most of their time handing the cache's lock to each other (150-220
  // MB/s); 8 fetchers with a 128-block window read at 280-350 MB/s; 4 or 16 fetchers, or a window
  // of 256 or 512 blocks, were no faster.
  static constexpr uint32_t kBatchFetchersDivisor = 4;
  static constexpr uint32_t kBatchWindowFactor = 4;
  // Back-off after failed uploads: doubles per consecutive failure, from the first to the last.
  static constexpr auto kRetryFirst = std::chrono::milliseconds(100);
  static constexpr auto kRetryLast = std::chrono::seconds(30);

  static uint64_t CostOf(const std::shared_ptr<const Bytes>& data) {
    return (data ? data->size() : 0) + kEntryOverhead;
  }

  // A flush in progress: it needs every write with a sequence number <= seq stored.
  struct FlushWaiter {
    uint64_t seq = 0;
    uint64_t uploads_before = 0;  // store requests begun before it (upload_no up to this)
    Status error;  // the first failed upload it needed, other than one of those
    // An upload it needed that was in flight when it began has failed: its block is tried again
    // now (the failure may be one the store has recovered from).
    bool again = false;
  };

  // Verifies that every entry's state agrees with the list it is on and with its other members,
  // and that the byte and block counters are the sums over the entries; aborts if not. O(entries):
  // called after every public call and pool step only in builds with S3BLOCK_CACHE_INVARIANTS.
  void CheckInvariantsLocked() const REQUIRES(mu_);
  // Runs CheckInvariantsLocked when the function that holds it returns (after its locks are
  // released: it takes mu_ itself).
  class InvariantCheck;

  // --- lists ---
  std::list<CacheEntry*>* ListOf(CacheEntry::List l) REQUIRES(mu_);
  void Unlink(CacheEntry* e) REQUIRES(mu_);
  void LinkFront(CacheEntry* e, CacheEntry::List l) REQUIRES(mu_);
  // Puts a clean, valid, idle entry on its LRU segment (most recently used end).
  void InsertLru(CacheEntry* e) REQUIRES(mu_);
  // Puts a dirty, idle entry on the ready list for its kind.
  void PushReady(CacheEntry* e) REQUIRES(mu_);
  // Records a use of a valid entry (segment promotion).
  void Touch(CacheEntry* e) REQUIRES(mu_);
  // Evicts clean entries until the cache is within budget.
  void EvictLocked() REQUIRES(mu_);
  // Moves protected entries beyond the protected share back to probation.
  void DemoteLocked() REQUIRES(mu_);

  // Charges or discharges e->sending to held_bytes_ after e's content may have changed. Only
  // SetContentLocked changes a busy entry's content (overlay entries are never busy, and only
  // idle entries become overlays), so it is the one caller.
  void RecountSendingLocked(CacheEntry* e) REQUIRES(mu_);
  // Called when e's overlay is replaced: a read of its rest in flight must not complete another.
  void SupersedeResolveLocked(CacheEntry* e) REQUIRES(mu_);
  // Stops charging (and keeping) overlay entry e's base.
  void DropBaseLocked(CacheEntry* e) REQUIRES(mu_);
  // Turns clean, valid, idle entry e into an overlay entry (dirty) whose base is its content.
  void MakeOverlayLocked(CacheEntry* e, uint32_t block_size) REQUIRES(mu_);
  // Charges entry e (valid or overlay) `cost` bytes from now on.
  void RechargeLocked(CacheEntry* e, uint64_t cost) REQUIRES(mu_);
  // Makes overlay entry e valid: its overlay merged onto base (the stored block, or zeros).
  void CompleteOverlayLocked(CacheEntry* e, Bytes base) REQUIRES(mu_);
  // Writes `data` at `offset` into valid entry e (a block of block_size bytes), in place when
  // nobody else holds its buffer. lk holds mu_, which may be released meanwhile: then *done is
  // false if e changed (the caller looks again).
  Status MergeLocked(UniqueLock& lk, CacheEntry* e, uint32_t block_size, uint32_t offset,
                     std::span<const uint8_t> data, bool* done) REQUIRES(mu_);
  // Makes overlay entry e whole: merges its parts onto its base, read from the store unless it
  // is known (zeros, or kept).
  // For an uploader (for_upload): on success *out is the entry, idle and dirty, unlinked for the
  // caller to store (null if someone else stores it); on failure the failure is recorded as an
  // upload's. For a reader: *out is the entry if it is valid now.
  // mu_ is released during the read. REQUIRES: e->state == kOverlay.
  Status ResolveLocked(CacheEntry* e, bool for_upload, CacheEntry** out) REQUIRES(mu_);
  // Makes `buf` (null: absent) the content of block id and marks it dirty.
  // Returns the entry (which may be busy; it is then uploaded again after).
  CacheEntry* SetContentLocked(uint64_t id, std::shared_ptr<const Bytes> buf) REQUIRES(mu_);
  // Waits until block id, newly charged `need` bytes, fits in the dirty limit.
  Status WaitForRoomLocked(UniqueLock& lk, uint64_t id, uint64_t need) REQUIRES(mu_);
  // Sends one store request for the entries in `taken`, already marked busy and counted in
  // uploads_in_flight: a write of buf to ids[0], or (buf null) a delete of ids; then records the
  // outcome. mu_ is released during the request.
  Status SendLocked(std::span<const uint64_t> ids, const std::shared_ptr<const Bytes>& buf,
                    const std::vector<std::pair<CacheEntry*, uint64_t>>& taken, bool fua)
      REQUIRES(mu_);
  // The shortest run that PassRun takes: a streaming writer's, not a few blocks of metadata
  // that are likely to be read again soon.
  static constexpr uint64_t kPassRunBytes = 64 << 10;
  // Hands a run to a store that buffers writes (it serves the blocks from there) without
  // keeping a copy: the run's blocks are dropped from the cache, and readers of them wait for
  // the run, then read them from the store. Without a copy, the cache's work per block (an
  // allocation and a copy, an entry, a place in the LRU, an eviction) was half of a sequential
  // writer's time on a log export. Sets *passed = false, and does nothing, if one of the blocks
  // has content here that is not stored yet (written in part): the caller then copies.
  Status PassRun(uint64_t first, uint32_t count, uint32_t block_size, const uint8_t* data,
                 bool fua, bool* passed);
  // Marks idle entry e (off every list) as stored now with `buf` (null: deleted) by store
  // request number upload_no.
  void BeginSendLocked(CacheEntry* e, std::shared_ptr<const Bytes> buf, uint64_t upload_no)
      REQUIRES(mu_) {
    e->state = CacheEntry::State::kUploading;
    e->sending = std::move(buf);
    e->upload_no = upload_no;
    inflight_bytes_ += e->cost;
  }
  // Records the end of a store request for the entries in `taken` (see SendLocked).
  void RecordSentLocked(const std::vector<std::pair<CacheEntry*, uint64_t>>& taken,
                        const Status& s) REQUIRES(mu_);
  // Waits until no upload of blocks `ids` is in flight, so that the next one lands last.
  void WaitNotBusyLocked(UniqueLock& lk, std::span<const uint64_t> ids) REQUIRES(mu_);
  // Stores blocks `ids` below now (with fua: durably), after setting their content to buf (null:
  // delete).
  Status StoreNowLocked(UniqueLock& lk, bool fua, std::span<const uint64_t> ids,
                        std::shared_ptr<const Bytes> buf) REQUIRES(mu_);
  // Dirty bytes that no upload has taken yet.
  uint64_t PendingBytesLocked() const REQUIRES(mu_) { return dirty_bytes_ - inflight_bytes_; }
  // Asks n pool threads to look at this cache's uploads (or read-ahead); nothing without threads.
  void SignalUploadsLocked(uint32_t n) REQUIRES(mu_);
  void SignalFetchesLocked(uint32_t n) REQUIRES(mu_);
  // Wakes an uploader if what waits for one has passed the upload threshold.
  void WakeUploaderIfDueLocked() REQUIRES(mu_) {
    if (PendingBytesLocked() > upload_threshold_) SignalUploadsLocked(1);
  }
  // Whether uploads in flight leave room for one of entry e.
  bool RoomToUploadLocked(const CacheEntry* e) const REQUIRES(mu_);
  // Whether a background uploader may start on entry e now.
  bool EligibleLocked(const CacheEntry* e, Clock::time_point now) const REQUIRES(mu_);
  // Starts one upload (one block, or a batch of deletes) from the ready lists and waits for it.
  // With force, ignores the thresholds. Returns false if there was nothing to start.
  // lk holds mu_, released during the store request.
  bool UploadOneLocked(UniqueLock& lk, bool force) REQUIRES(mu_);
  // Records the outcome of a store write or delete of e, which started at generation gen.
  void CompleteUploadLocked(CacheEntry* e, uint64_t gen, const Status& s) REQUIRES(mu_);
  // Records a failed store request for idle, dirty entry e: every flush that needed it fails,
  // and it is tried again after a back-off.
  void FailUploadLocked(CacheEntry* e, const Status& s) REQUIRES(mu_);
  // Moves failed entries due for a retry (all of them with all) back to the ready lists.
  void RequeueRetriesLocked(bool all, Clock::time_point now) REQUIRES(mu_);

  // Creates a pending-fetch entry for block id. REQUIRES: id not cached.
  CacheEntry* NewFetchLocked(uint64_t id, bool prefetched) REQUIRES(mu_);
  // Fetches block id for the entry created with `token`, and fills it. The block is charged to
  // the budget while it is in flight, so that the cache makes room for it first.
  // mu_ is released during the fetch. On success, *result is the fetched content (null: absent).
  Status FetchLocked(uint64_t id, uint64_t token, bool readahead,
                     std::shared_ptr<const Bytes>* result) REQUIRES(mu_);
  // One block of FetchBatchLocked.
  struct FetchItem {
    uint64_t id = 0;
    uint64_t token = 0;                    // of the entry created for the fetch
    Status status;                         // out: the store's answer
    std::shared_ptr<const Bytes> content;  // out: the block (null: not stored, or an error)
  };
  // As FetchLocked, for up to kMaxFetchBatch blocks read with one ReadBatch of the store.
  void FetchBatchLocked(std::span<FetchItem> items, bool readahead) REQUIRES(mu_);
  // Finds block id in the cache, or fetches it, and sets *content to a reference to its
  // immutable buffer (null: not stored). The reference keeps the buffer alive after eviction,
  // so callers copy from it without the lock.
  // A reader's read of `len` bytes of the block (of block_size bytes) is noted for read-ahead;
  // with len 0, nothing is noted (the read of a read-modify-write).
  // With `copied`: if the block was written in part and those parts hold all of `out` (bytes
  // from `offset`), or the rest of the block is known, the bytes are copied to out instead, and
  // *copied is set.
  Status Lookup(uint64_t id, uint32_t len, uint32_t block_size,
                std::shared_ptr<const Bytes>* content, uint32_t offset = 0,
                std::span<uint8_t> out = {}, bool* copied = nullptr);
  // Notes a reader's read of `len` bytes of block id (of block_size bytes) and schedules
  // read-ahead for a sequential reader. Returns true if the read goes on reading a block that
  // a stream has just read from (not a second use of the block, for the LRU).
  bool NoteReadLocked(uint64_t id, uint32_t len, uint32_t block_size) REQUIRES(mu_);
  void DropPendingPrefetchesLocked() REQUIRES(mu_);

  BlockStore* const next_;
  const CacheOptions& options_;
  Pool* const uploads_;
  Pool* const fetches_;
  const std::string name_;
  const uint64_t budget_;
  const uint64_t dirty_limit_;
  const uint64_t upload_threshold_;
  // Most bytes of uploads in flight (unless only one is): with the dirty limit on what waits to
  // be uploaded, this bounds the memory that written data holds.
  const uint64_t inflight_limit_;
  // Blocks a fetcher reads with one ReadBatch of the store: the store's ReadBatchSize, at most
  // kMaxFetchBatch; and the bytes, the store's ReadBatchBytes.
  const size_t fetch_batch_;
  const uint64_t fetch_batch_bytes_;
  // The store keeps unflushed writes itself (BlockStore::BuffersWrites): whole blocks are
  // handed to it in the writer's thread, and kept here clean, instead of written back later.
  const bool write_through_;
  // Blocks one fetcher reads with one ReadBatch now: more than one only if the store reads
  // batches and the blocks are small (fetch_batch_bytes_).
  size_t BatchBlocksLocked() const REQUIRES(mu_) {
    if (fetch_batch_ == 1) return 1;
    return static_cast<size_t>(std::clamp<uint64_t>(
        fetch_batch_bytes_ / std::max<uint64_t>(last_block_size_, 1), 1, fetch_batch_));
  }
  // Fetchers that may read at once, and most blocks read ahead of one sequential reader: fewer
  // and longer while batches are read (kBatchFetchersDivisor).
  uint32_t FetcherLimitLocked() const REQUIRES(mu_) {
    return BatchBlocksLocked() > 1 ? std::max<uint32_t>(1, options_.read_threads / kBatchFetchersDivisor)
                                   : options_.read_threads;
  }
  uint64_t ReadaheadWindowLocked() const REQUIRES(mu_) {
    const size_t batch = BatchBlocksLocked();
    if (batch == 1) return options_.readahead_max;
    // At least a batch for every fetcher: a store whose batches are large (a log segment's 1 MiB
    // ranges) would otherwise keep only a few of them busy.
    return std::max<uint64_t>(uint64_t{options_.readahead_max} * kBatchWindowFactor,
                              uint64_t{FetcherLimitLocked()} * batch);
  }

  mutable Mutex mu_;
  // Signalled when an entry's fetch or upload finishes (or the rest of a block written in part
  // has been read), when an upload fails, and when an upload starts with writers waiting.
  std::condition_variable state_cv_;
  // Readers and writers waiting for the fetch of one block (or the read of the rest of a block
  // written in part) wait on the one of these its id picks, so that a finished fetch wakes the
  // threads waiting for that block (and few others), not every thread waiting for any block: at
  // 4 KiB blocks, a sequential reader's parallel requests each wait for their next block, and
  // waking all of them for every block was a context switch each. A finished fetch or read of
  // the rest signals its block's, so does a write that supersedes a pending fetch; the end of an
  // upload and Stop signal all of them.
  static constexpr size_t kBlockCvs = 16;
  std::condition_variable block_cv_[kBlockCvs];
  std::condition_variable& BlockCv(uint64_t id) { return block_cv_[id % kBlockCvs]; }
  void NotifyAllLocked() REQUIRES(mu_) {
    state_cv_.notify_all();
    for (auto& cv : block_cv_) cv.notify_all();
  }
  // What mu_ guards.
  std::unordered_map<uint64_t, std::unique_ptr<CacheEntry>> entries_ GUARDED_BY(mu_);
  // Clean entries, most recent first.
  std::list<CacheEntry*> probation_ GUARDED_BY(mu_);
  std::list<CacheEntry*> protected_ GUARDED_BY(mu_);
  // Dirty, idle entries, oldest last.
  std::list<CacheEntry*> ready_data_ GUARDED_BY(mu_);
  std::list<CacheEntry*> ready_delete_ GUARDED_BY(mu_);
  std::list<CacheEntry*> retry_ GUARDED_BY(mu_);           // dirty entries whose upload failed
  std::map<uint64_t, CacheEntry*> dirty_ GUARDED_BY(mu_);  // every dirty entry, by dirty_seq
  uint64_t seq_ GUARDED_BY(mu_) = 0;
  // Store requests begun to store blocks (see upload_no).
  uint64_t uploads_started_ GUARDED_BY(mu_) = 0;
  uint64_t next_token_ GUARDED_BY(mu_) = 0;
  uint64_t cached_bytes_ GUARDED_BY(mu_) = 0;     // cost of valid entries
  uint64_t protected_bytes_ GUARDED_BY(mu_) = 0;  // cost of entries on protected_
  uint64_t cached_blocks_ GUARDED_BY(mu_) = 0;    // valid entries
  uint64_t dirty_bytes_ GUARDED_BY(mu_) = 0;      // cost of dirty entries
  uint64_t inflight_bytes_ GUARDED_BY(mu_) = 0;   // cost of entries being uploaded
  uint64_t fetch_bytes_ GUARDED_BY(mu_) = 0;      // expected cost of the fetches in flight
  uint64_t readahead_bytes_ GUARDED_BY(mu_) = 0;  // the part of fetch_bytes_ that is read-ahead
  // Overlay entries that keep their base (on ready_data_ or not).
  uint64_t bases_ GUARDED_BY(mu_) = 0;
  // The part of fetch_bytes_ that is the rest of blocks written in part.
  uint64_t resolve_bytes_ GUARDED_BY(mu_) = 0;
  // Content written over while a store write of it is in flight.
  uint64_t held_bytes_ GUARDED_BY(mu_) = 0;
  bool readahead_held_ GUARDED_BY(mu_) = false;   // a fetcher waits for readahead_bytes_ to fall
  uint32_t active_fetchers_ GUARDED_BY(mu_) = 0;  // fetchers reading ahead now
  uint64_t last_block_size_ GUARDED_BY(mu_) = kDefaultBlockSize;
  std::list<FlushWaiter*> flushes_ GUARDED_BY(mu_);
  int writers_waiting_ GUARDED_BY(mu_) = 0;
  uint64_t failure_epoch_ GUARDED_BY(mu_) = 0;  // incremented by every failed upload
  Status last_failure_ GUARDED_BY(mu_);
  uint32_t consecutive_failures_ GUARDED_BY(mu_) = 0;
  std::deque<std::pair<uint64_t, uint64_t>> prefetch_queue_ GUARDED_BY(mu_);  // (id, token)
  SequentialStreams streams_ GUARDED_BY(mu_);
  // From the Volume above: false for blocks certainly not stored.
  std::function<bool(uint64_t)> presence_hint_ GUARDED_BY(mu_);
  bool running_ GUARDED_BY(mu_) = false;  // the pools work for this cache
  CacheStats stats_ GUARDED_BY(mu_);      // the monotonic counters
};

class CacheStore::ExportCache::InvariantCheck {
 public:
  explicit InvariantCheck(const ExportCache* cache) : cache_(cache) {}
  ~InvariantCheck() {
    MutexLock lock(&cache_->mu_);
    cache_->CheckInvariantsLocked();
  }

 private:
  const ExportCache* const cache_;
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_EXPORT_CACHE_H_
