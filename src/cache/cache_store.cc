#include "s3block/cache_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "cache/block_overlay.h"
#include "cache/readahead.h"
#include "s3block/params.h"
#include "util/batches.h"
#include "util/zero.h"

namespace s3block {
namespace {

using Clock = std::chrono::steady_clock;

// The protected segment holds at most this share of the budget; the rest is probationary.
constexpr uint64_t kProtectedPercent = 80;
// Most blocks a fetcher reads ahead with one ReadBatch of the store below.
constexpr size_t kMaxFetchBatch = 32;
// A batch is at most this many bytes: for larger blocks, one block per fetch (reading many
// 1 MiB files in one io_uring submission was slower than reading them from many threads).
constexpr uint64_t kFetchBatchBytes = 128 << 10;
// While batches are read (small blocks of a store that reads batches: the file store), a
// quarter of CacheOptions::read_threads fetch at a time, and the read-ahead window is four
// times CacheOptions::readahead_max: the blocks in flight are then many batches, not many
// threads. Measured on the local store at 4 KiB blocks (2 cores, a cold sequential read): 32
// fetchers of batches spent most of their time handing the cache's lock to each other (150-220
// MB/s); 8 fetchers with a 128-block window read at 280-350 MB/s; 4 or 16 fetchers, or a window
// of 256 or 512 blocks, were no faster.
constexpr uint32_t kBatchFetchersDivisor = 4;
constexpr uint32_t kBatchWindowFactor = 4;
// Back-off after failed uploads: doubles per consecutive failure, from the first to the last.
constexpr auto kRetryFirst = std::chrono::milliseconds(100);
constexpr auto kRetryLast = std::chrono::seconds(30);

uint64_t CostOf(const std::shared_ptr<const Bytes>& data) {
  return (data ? data->size() : 0) + CacheStore::kEntryOverhead;
}

}  // namespace

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
  Clock::time_point ready_since;  // when it joined a ready list
  Clock::time_point retry_at;     // when a failed upload may be tried again
};

// The cache of one export. All state is guarded by mu_; store requests are made without it.
class CacheStore::ExportCache {
 public:
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
        fetch_batch_(std::clamp<size_t>(next->ReadBatchSize(), 1, kMaxFetchBatch)) {}

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
    std::lock_guard<std::mutex> lock(mu_);
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
  Status WriteRange(uint64_t id, uint32_t block_size, uint32_t offset,
                    std::span<const uint8_t> data, bool base_zero, bool fua);
  Status Delete(std::span<const uint64_t> ids, bool fua);
  Status Flush();
  Status ListBlocks(const std::function<void(uint64_t)>& fn);
  CacheStats Stats() const;
  void SetPresenceHint(std::function<bool(uint64_t)> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    presence_hint_ = std::move(fn);
  }

 private:
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
  // REQUIRES: mu_ held.
  void CheckInvariantsLocked() const;
  // Runs CheckInvariantsLocked when the function that holds it returns (after its locks are
  // released: it takes mu_ itself).
  class InvariantCheck;

  // --- lists (REQUIRES: mu_ held for all of these) ---
  std::list<CacheEntry*>* ListOf(CacheEntry::List l);
  void Unlink(CacheEntry* e);
  void LinkFront(CacheEntry* e, CacheEntry::List l);
  // Puts a clean, valid, idle entry on its LRU segment (most recently used end).
  void InsertLru(CacheEntry* e);
  // Puts a dirty, idle entry on the ready list for its kind.
  void PushReady(CacheEntry* e);
  // Records a use of a valid entry (segment promotion).
  void Touch(CacheEntry* e);
  // Evicts clean entries until the cache is within budget.
  void EvictLocked();
  // Moves protected entries beyond the protected share back to probation.
  void DemoteLocked();

  // Charges or discharges e->sending to held_bytes_ after e's content may have changed. Only
  // SetContentLocked changes a busy entry's content (overlay entries are never busy, and only
  // idle entries become overlays), so it is the one caller.
  void RecountSendingLocked(CacheEntry* e);
  // Called when e's overlay is replaced: a read of its rest in flight must not complete another.
  void SupersedeResolveLocked(CacheEntry* e);
  // Stops charging (and keeping) overlay entry e's base.
  void DropBaseLocked(CacheEntry* e);
  // Turns clean, valid, idle entry e into an overlay entry (dirty) whose base is its content.
  void MakeOverlayLocked(CacheEntry* e, uint32_t block_size);
  // Charges entry e (valid or overlay) `cost` bytes from now on.
  void RechargeLocked(CacheEntry* e, uint64_t cost);
  // Makes overlay entry e valid: its overlay merged onto base (the stored block, or zeros).
  void CompleteOverlayLocked(CacheEntry* e, Bytes base);
  // Writes `data` at `offset` into valid entry e (a block of block_size bytes), in place when
  // nobody else holds its buffer. REQUIRES: lk holds mu_ (maybe released meanwhile).
  // Sets *done to false if e changed while the lock was released (the caller looks again).
  Status MergeLocked(std::unique_lock<std::mutex>& lk, CacheEntry* e, uint32_t block_size,
                     uint32_t offset, std::span<const uint8_t> data, bool* done);
  // Makes overlay entry e whole: merges its parts onto its base, read from the store unless it
  // is known (zeros, or kept).
  // For an uploader (for_upload): on success *out is the entry, idle and dirty, unlinked for the
  // caller to store (null if someone else stores it); on failure the failure is recorded as an
  // upload's. For a reader: *out is the entry if it is valid now.
  // REQUIRES: lk holds mu_ (released during the read), e->state == kOverlay.
  Status ResolveLocked(std::unique_lock<std::mutex>& lk, CacheEntry* e, bool for_upload,
                       CacheEntry** out);
  // Makes `buf` (null: absent) the content of block id and marks it dirty.
  // REQUIRES: mu_ held. Returns the entry (which may be busy; it is then uploaded again after).
  CacheEntry* SetContentLocked(uint64_t id, std::shared_ptr<const Bytes> buf);
  // Waits until block id, newly charged `need` bytes, fits in the dirty limit.
  Status WaitForRoomLocked(std::unique_lock<std::mutex>& lk, uint64_t id, uint64_t need);
  // Sends one store request for the entries in `taken`, already marked busy and counted in
  // uploads_in_flight: a write of buf to ids[0], or (buf null) a delete of ids; then records the
  // outcome. REQUIRES: lk holds mu_ (released during the request).
  Status SendLocked(std::unique_lock<std::mutex>& lk, std::span<const uint64_t> ids,
                    const std::shared_ptr<const Bytes>& buf,
                    const std::vector<std::pair<CacheEntry*, uint64_t>>& taken, bool fua);
  // Stores blocks `ids` below now, with fua, after setting their content to buf (null: delete).
  Status StoreNowLocked(std::unique_lock<std::mutex>& lk, std::span<const uint64_t> ids,
                        std::shared_ptr<const Bytes> buf);
  // Dirty bytes that no upload has taken yet.
  uint64_t PendingBytesLocked() const { return dirty_bytes_ - inflight_bytes_; }
  // Asks n pool threads to look at this cache's uploads (or read-ahead); nothing without threads.
  void SignalUploadsLocked(uint32_t n);
  void SignalFetchesLocked(uint32_t n);
  // Wakes an uploader if what waits for one has passed the upload threshold.
  void WakeUploaderIfDueLocked() {
    if (PendingBytesLocked() > upload_threshold_) SignalUploadsLocked(1);
  }
  // Whether uploads in flight leave room for one of entry e.
  bool RoomToUploadLocked(const CacheEntry* e) const;
  // Whether a background uploader may start on entry e now.
  bool EligibleLocked(const CacheEntry* e, Clock::time_point now) const;
  // Starts one upload (one block, or a batch of deletes) from the ready lists and waits for it.
  // With force, ignores the thresholds. Returns false if there was nothing to start.
  // REQUIRES: lk holds mu_ (released during the store request).
  bool UploadOneLocked(std::unique_lock<std::mutex>& lk, bool force);
  // Records the outcome of a store write or delete of e, which started at generation gen.
  void CompleteUploadLocked(CacheEntry* e, uint64_t gen, const Status& s);
  // Records a failed store request for idle, dirty entry e: every flush that needed it fails,
  // and it is tried again after a back-off.
  void FailUploadLocked(CacheEntry* e, const Status& s);
  // Moves failed entries due for a retry (all of them with all) back to the ready lists.
  void RequeueRetriesLocked(bool all, Clock::time_point now);

  // Creates a pending-fetch entry for block id. REQUIRES: mu_ held, id not cached.
  CacheEntry* NewFetchLocked(uint64_t id, bool prefetched);
  // Fetches block id for the entry created with `token`, and fills it. The block is charged to
  // the budget while it is in flight, so that the cache makes room for it first.
  // REQUIRES: lk holds mu_ (released during the fetch). On success, *result is the fetched
  // content (null: absent).
  Status FetchLocked(std::unique_lock<std::mutex>& lk, uint64_t id, uint64_t token,
                     bool readahead, std::shared_ptr<const Bytes>* result);
  // One block of FetchBatchLocked.
  struct FetchItem {
    uint64_t id = 0;
    uint64_t token = 0;                    // of the entry created for the fetch
    Status status;                         // out: the store's answer
    std::shared_ptr<const Bytes> content;  // out: the block (null: not stored, or an error)
  };
  // As FetchLocked, for up to kMaxFetchBatch blocks read with one ReadBatch of the store.
  void FetchBatchLocked(std::unique_lock<std::mutex>& lk, std::span<FetchItem> items,
                        bool readahead);
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
  bool NoteReadLocked(uint64_t id, uint32_t len, uint32_t block_size);
  void DropPendingPrefetchesLocked();

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
  // kMaxFetchBatch.
  const size_t fetch_batch_;
  // Blocks one fetcher reads with one ReadBatch now: more than one only if the store reads
  // batches and the blocks are small (kFetchBatchBytes). REQUIRES: mu_ held.
  size_t BatchBlocksLocked() const {
    if (fetch_batch_ == 1) return 1;
    return static_cast<size_t>(std::clamp<uint64_t>(
        kFetchBatchBytes / std::max<uint64_t>(last_block_size_, 1), 1, fetch_batch_));
  }
  // Fetchers that may read at once, and most blocks read ahead of one sequential reader: fewer
  // and longer while batches are read (kBatchFetchersDivisor). REQUIRES: mu_ held.
  uint32_t FetcherLimitLocked() const {
    return BatchBlocksLocked() > 1 ? std::max<uint32_t>(1, options_.read_threads / kBatchFetchersDivisor)
                                   : options_.read_threads;
  }
  uint64_t ReadaheadWindowLocked() const {
    return BatchBlocksLocked() > 1 ? uint64_t{options_.readahead_max} * kBatchWindowFactor
                                   : options_.readahead_max;
  }

  mutable std::mutex mu_;
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
  void NotifyAllLocked() {
    state_cv_.notify_all();
    for (auto& cv : block_cv_) cv.notify_all();
  }
  // Everything below is guarded by mu_.
  std::unordered_map<uint64_t, std::unique_ptr<CacheEntry>> entries_;
  std::list<CacheEntry*> probation_, protected_;     // clean entries, most recent first
  std::list<CacheEntry*> ready_data_, ready_delete_;  // dirty, idle entries, oldest last
  std::list<CacheEntry*> retry_;                      // dirty entries whose upload failed
  std::map<uint64_t, CacheEntry*> dirty_;             // every dirty entry, by dirty_seq
  uint64_t seq_ = 0;
  uint64_t uploads_started_ = 0;  // store requests begun to store blocks (see upload_no)
  uint64_t next_token_ = 0;
  uint64_t cached_bytes_ = 0;     // cost of valid entries
  uint64_t protected_bytes_ = 0;  // cost of entries on protected_
  uint64_t cached_blocks_ = 0;    // valid entries
  uint64_t dirty_bytes_ = 0;      // cost of dirty entries
  uint64_t inflight_bytes_ = 0;   // cost of entries being uploaded
  uint64_t fetch_bytes_ = 0;      // expected cost of the fetches in flight
  uint64_t readahead_bytes_ = 0;  // the part of fetch_bytes_ that is read-ahead
  uint64_t bases_ = 0;            // overlay entries that keep their base (on ready_data_ or not)
  uint64_t resolve_bytes_ = 0;    // the part of fetch_bytes_ that is the rest of blocks written in part
  uint64_t held_bytes_ = 0;       // content written over while a store write of it is in flight
  bool readahead_held_ = false;   // a fetcher waits for readahead_bytes_ to fall
  uint32_t active_fetchers_ = 0;  // fetchers reading ahead now
  uint64_t last_block_size_ = kDefaultBlockSize;
  std::list<FlushWaiter*> flushes_;
  int writers_waiting_ = 0;
  uint64_t failure_epoch_ = 0;  // incremented by every failed upload
  Status last_failure_;
  uint32_t consecutive_failures_ = 0;
  std::deque<std::pair<uint64_t, uint64_t>> prefetch_queue_;  // (id, token)
  SequentialStreams streams_;
  // From the Volume above: false for blocks certainly not stored. Guarded by mu_.
  std::function<bool(uint64_t)> presence_hint_;
  bool running_ = false;  // the pools work for this cache
  CacheStats stats_;  // the monotonic counters
};

// ---------------------------------------------------------------------------------------------
// Invariants

class CacheStore::ExportCache::InvariantCheck {
 public:
  explicit InvariantCheck(const ExportCache* cache) : cache_(cache) {}
  ~InvariantCheck() {
    std::lock_guard<std::mutex> lock(cache_->mu_);
    cache_->CheckInvariantsLocked();
  }

 private:
  const ExportCache* const cache_;
};

namespace {

[[noreturn]] void InvariantFailed(const char* what, uint64_t id) {
  std::fprintf(stderr, "cache invariant failed: %s (block %llu)\n", what,
               static_cast<unsigned long long>(id));
  std::abort();
}

}  // namespace

#define S3B_CACHE_INVARIANT(cond, id) \
  do {                                \
    if (!(cond)) InvariantFailed(#cond, (id)); \
  } while (0)

void CacheStore::ExportCache::CheckInvariantsLocked() const {
  using State = CacheEntry::State;
  using List = CacheEntry::List;
  uint64_t cached = 0, dirty = 0, inflight = 0, blocks = 0, bases = 0, dirty_blocks = 0;
  uint64_t held = 0, listed = 0;
  for (const auto& [id, slot] : entries_) {
    const CacheEntry* e = slot.get();
    S3B_CACHE_INVARIANT(e->id == id, id);
    const State st = e->state;
    const bool overlay = st == State::kOverlay || st == State::kResolving;
    S3B_CACHE_INVARIANT(overlay == (e->overlay != nullptr), id);
    S3B_CACHE_INVARIANT(!overlay || !e->data, id);
    // The lists each state may be on. Idle dirty entries are off them only while the thread
    // that took one holds the lock.
    switch (st) {
      case State::kFetching:
      case State::kResolving:
      case State::kUploading:
      case State::kRewritten:
        S3B_CACHE_INVARIANT(e->list == List::kNone, id);
        break;
      case State::kClean:
        S3B_CACHE_INVARIANT(e->list == (e->hot ? List::kProtected : List::kProbation), id);
        break;
      case State::kDirty:
        S3B_CACHE_INVARIANT(e->list == List::kRetry ||
                                e->list == (e->data ? List::kReadyData : List::kReadyDelete),
                            id);
        break;
      case State::kOverlay:
        S3B_CACHE_INVARIANT(e->list == List::kReadyData || e->list == List::kRetry, id);
        break;
    }
    if (e->list != List::kNone) {
      S3B_CACHE_INVARIANT(*e->pos == e, id);
      ++listed;
    }
    // What is being stored: only while busy; apart from data only once written over since.
    S3B_CACHE_INVARIANT(e->busy() || (!e->sending && !e->sending_apart), id);
    S3B_CACHE_INVARIANT(e->sending_apart == (e->sending && e->sending != e->data), id);
    S3B_CACHE_INVARIANT(st != State::kUploading || (e->sending == e->data && e->redirty_seq == 0),
                        id);
    S3B_CACHE_INVARIANT((st == State::kRewritten) == (e->redirty_seq != 0), id);
    if (e->sending_apart) held += e->sending->size();
    // The bytes it is charged.
    S3B_CACHE_INVARIANT(e->base_cost == (overlay && e->overlay->base() ? e->overlay->base()->size() : 0),
                        id);
    if (overlay) {
      S3B_CACHE_INVARIANT(e->cost == e->overlay->Cost() + kEntryOverhead, id);
    } else if (e->valid()) {
      S3B_CACHE_INVARIANT(e->cost == CostOf(e->data), id);
    } else {
      S3B_CACHE_INVARIANT(!e->data && e->cost == 0, id);
    }
    if (!e->fetching()) {
      ++blocks;
      cached += e->cost + e->base_cost;
    }
    if (e->base_cost != 0) ++bases;
    if (e->dirty()) {
      ++dirty_blocks;
      dirty += e->cost;
      auto it = dirty_.find(e->dirty_seq);
      S3B_CACHE_INVARIANT(it != dirty_.end() && it->second == e, id);
    } else {
      S3B_CACHE_INVARIANT(e->dirty_seq == 0, id);
    }
    if (e->busy()) inflight += e->cost;
  }
  uint64_t protected_bytes = 0;
  for (const CacheEntry* e : protected_) protected_bytes += e->cost;
  const uint64_t on_lists =
      probation_.size() + protected_.size() + ready_data_.size() + ready_delete_.size() + retry_.size();
  S3B_CACHE_INVARIANT(on_lists == listed, 0);
  S3B_CACHE_INVARIANT(cached == cached_bytes_, 0);
  S3B_CACHE_INVARIANT(blocks == cached_blocks_, 0);
  S3B_CACHE_INVARIANT(dirty == dirty_bytes_, 0);
  S3B_CACHE_INVARIANT(dirty_blocks == dirty_.size(), 0);
  S3B_CACHE_INVARIANT(inflight == inflight_bytes_, 0);
  S3B_CACHE_INVARIANT(protected_bytes == protected_bytes_, 0);
  S3B_CACHE_INVARIANT(bases == bases_, 0);
  S3B_CACHE_INVARIANT(held == held_bytes_, 0);
}

#undef S3B_CACHE_INVARIANT

// ---------------------------------------------------------------------------------------------
// Lists and eviction

std::list<CacheEntry*>* CacheStore::ExportCache::ListOf(CacheEntry::List l) {
  switch (l) {
    case CacheEntry::List::kProbation: return &probation_;
    case CacheEntry::List::kProtected: return &protected_;
    case CacheEntry::List::kReadyData: return &ready_data_;
    case CacheEntry::List::kReadyDelete: return &ready_delete_;
    case CacheEntry::List::kRetry: return &retry_;
    case CacheEntry::List::kNone: break;
  }
  return nullptr;
}

void CacheStore::ExportCache::Unlink(CacheEntry* e) {
  if (e->list == CacheEntry::List::kNone) return;
  if (e->list == CacheEntry::List::kProtected) protected_bytes_ -= e->cost;
  ListOf(e->list)->erase(e->pos);
  e->list = CacheEntry::List::kNone;
}

void CacheStore::ExportCache::LinkFront(CacheEntry* e, CacheEntry::List l) {
  Unlink(e);
  auto* list = ListOf(l);
  list->push_front(e);
  e->pos = list->begin();
  e->list = l;
  if (l == CacheEntry::List::kProtected) protected_bytes_ += e->cost;
}

void CacheStore::ExportCache::InsertLru(CacheEntry* e) {
  LinkFront(e, e->hot ? CacheEntry::List::kProtected : CacheEntry::List::kProbation);
  if (e->hot) DemoteLocked();
}

void CacheStore::ExportCache::PushReady(CacheEntry* e) {
  const auto list = e->data || e->overlay ? CacheEntry::List::kReadyData
                                           : CacheEntry::List::kReadyDelete;
  const bool was_empty = ListOf(list)->empty();
  LinkFront(e, list);
  e->ready_since = Clock::now();
  // Idle uploaders sleep without a deadline when there is nothing to age: one must wake to
  // learn the new one.
  if (was_empty) SignalUploadsLocked(1);
}

void CacheStore::ExportCache::Touch(CacheEntry* e) {
  if (e->prefetched) {
    // The first use of a read-ahead block is its first use, not a second one: a streaming reader
    // must not promote what it streams past.
    e->prefetched = false;
    ++stats_.readahead_hits;
    if (e->list == CacheEntry::List::kProbation) LinkFront(e, CacheEntry::List::kProbation);
    return;
  }
  e->hot = true;
  if (e->list == CacheEntry::List::kProbation || e->list == CacheEntry::List::kProtected) {
    LinkFront(e, CacheEntry::List::kProtected);
    DemoteLocked();
  }
}

void CacheStore::ExportCache::DemoteLocked() {
  const uint64_t cap = budget_ / 100 * kProtectedPercent;
  while (protected_bytes_ > cap && protected_.size() > 1) {
    CacheEntry* e = protected_.back();
    e->hot = false;
    LinkFront(e, CacheEntry::List::kProbation);
  }
}

void CacheStore::ExportCache::EvictLocked() {
  // Blocks on their way in count too, and content written over while a store write still holds
  // it: what the process holds is the cache, its fetches and those.
  while (cached_bytes_ + fetch_bytes_ + held_bytes_ > budget_) {
    std::list<CacheEntry*>* from = !probation_.empty() ? &probation_ : &protected_;
    if (from->empty()) {
      // Everything left is dirty or busy, and stays until stored; but the stored content kept
      // beside a block's written parts can go (it is read again when the block is stored).
      if (bases_ == 0) return;
      bool dropped = false;
      for (auto it = ready_data_.rbegin(); it != ready_data_.rend() && !dropped; ++it) {
        if ((*it)->base_cost == 0) continue;
        DropBaseLocked(*it);
        dropped = true;
      }
      if (!dropped) return;
      continue;
    }
    CacheEntry* e = from->back();
    Unlink(e);
    cached_bytes_ -= e->cost;
    --cached_blocks_;
    ++stats_.evictions;
    entries_.erase(e->id);
  }
}

// ---------------------------------------------------------------------------------------------
// Threads

// A pool of threads that work for many caches: a queue of the caches that were signalled (each
// at most once on it, with the number of threads asked to look at it), taken in turn, and a timer
// per cache for when a cache with nothing to do now will have something (a dirty block comes of
// age, a failed upload is due again).
class CacheStore::Pool {
 public:
  using Step = bool (ExportCache::*)(std::optional<Clock::time_point>* wake);
  using Slot = ExportCache::PoolSlot ExportCache::*;

  Pool(const CacheStore* store, Step step, Slot slot, uint32_t threads)
      : store_(store), step_(step), slot_(slot), threads_wanted_(threads) {}
  ~Pool() { Stop(); }

  // Starts the threads, if there are any to start and they are not running.
  void Start() {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_ || threads_wanted_ == 0) return;
    running_ = true;
    stop_ = false;
    for (uint32_t i = 0; i < threads_wanted_; ++i) threads_.emplace_back([this] { Run(); });
  }

  // Stops the threads once their steps end, and forgets every queued cache and timer.
  void Stop() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!running_) return;
      stop_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (auto& t : threads) t.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (ExportCache* c : queue_) {
      (c->*slot_).queued = false;
      (c->*slot_).want = 0;
    }
    for (auto& [when, c] : timers_) (c->*slot_).timed = false;
    queue_.clear();
    timers_.clear();
    running_ = false;
  }

  // Asks n threads (at most all of them) to take a step for cache c. REQUIRES: c is not freed
  // meanwhile (the caller holds a Ref, or c's lock).
  void Signal(ExportCache* c, uint32_t n) {
    uint32_t wake = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!running_ || n == 0) return;
      wake = EnqueueLocked(c, n);
    }
    if (wake >= threads_wanted_) {
      cv_.notify_all();
    } else {
      for (uint32_t i = 0; i < wake; ++i) cv_.notify_one();
    }
  }

  // Forgets c: it leaves the queue and the timers, and is never queued again (until Attach). A
  // thread inside a step for it holds a Ref.
  void Detach(ExportCache* c) {
    std::lock_guard<std::mutex> lock(mu_);
    ExportCache::PoolSlot& slot = c->*slot_;
    if (slot.queued) queue_.erase(std::find(queue_.begin(), queue_.end(), c));
    if (slot.timed) timers_.erase(slot.timer);
    slot.queued = false;
    slot.timed = false;
    slot.want = 0;
    slot.detached = true;
  }
  void Attach(ExportCache* c) {
    std::lock_guard<std::mutex> lock(mu_);
    (c->*slot_).detached = false;
  }

 private:
  // Queues c (if it is not) for n more steps; returns how many threads to wake.
  uint32_t EnqueueLocked(ExportCache* c, uint32_t n) {
    ExportCache::PoolSlot& slot = c->*slot_;
    if (slot.detached) return 0;
    slot.want = std::min(slot.want + n, threads_wanted_);
    if (!slot.queued) {
      slot.queued = true;
      queue_.push_back(c);
    }
    return n;
  }

  void Run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      const auto now = Clock::now();
      while (!timers_.empty() && timers_.begin()->first <= now) {
        ExportCache* c = timers_.begin()->second;
        timers_.erase(timers_.begin());
        (c->*slot_).timed = false;
        EnqueueLocked(c, 1);
        cv_.notify_one();  // this thread takes one; others may take the rest
      }
      if (queue_.empty()) {
        if (timers_.empty()) {
          cv_.wait(lk);
        } else {
          // A copy: wait_until reads it again after waking, and the timer may be gone by then.
          const Clock::time_point next = timers_.begin()->first;
          cv_.wait_until(lk, next);
        }
        continue;
      }
      // Round robin: a cache that wants more steps goes to the back of the queue.
      ExportCache* c = queue_.front();
      queue_.pop_front();
      ExportCache::PoolSlot& slot = c->*slot_;
      if (--slot.want > 0)
        queue_.push_back(c);
      else
        slot.queued = false;
      Ref ref(store_, c);
      lk.unlock();
      std::optional<Clock::time_point> wake;
      const bool more = (c->*step_)(&wake);
      lk.lock();
      if (more) {
        EnqueueLocked(c, 1);
      } else if (wake && !slot.detached && (!slot.timed || *wake < slot.timer->first)) {
        if (slot.timed) timers_.erase(slot.timer);
        slot.timer = timers_.emplace(*wake, c);
        slot.timed = true;
      }
      // Dropped without the pool's lock: dropping the last Ref of a cache being closed takes the
      // store's lock.
      lk.unlock();
      ref.reset();
      lk.lock();
    }
  }

  const CacheStore* const store_;
  const Step step_;
  const Slot slot_;
  const uint32_t threads_wanted_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;  // guarded by mu_, as everything below
  bool stop_ = false;
  std::deque<ExportCache*> queue_;
  std::multimap<Clock::time_point, ExportCache*> timers_;
  std::vector<std::thread> threads_;
};

CacheStore::Ref::Ref(const CacheStore* store, ExportCache* cache) : store_(store), cache_(cache) {
  cache_->users_.fetch_add(1);
}

void CacheStore::Ref::reset() {
  if (cache_ == nullptr) return;
  ExportCache* c = std::exchange(cache_, nullptr);
  // The cache may be freed as soon as the count falls: only the store is used after.
  if (c->users_.fetch_sub(1) == ExportCache::kClosing + 1) {
    std::lock_guard<std::mutex> lock(store_->mu_);
    store_->close_cv_.notify_all();
  }
}

void CacheStore::ExportCache::SignalUploadsLocked(uint32_t n) {
  if (running_) uploads_->Signal(this, n);
}

void CacheStore::ExportCache::SignalFetchesLocked(uint32_t n) {
  if (running_) fetches_->Signal(this, n);
}

void CacheStore::ExportCache::StartWork() {
  S3B_CACHE_CHECK_ON_RETURN();
  std::lock_guard<std::mutex> lock(mu_);
  if (running_) return;
  running_ = true;
  // Dirty blocks may be waiting already.
  SignalUploadsLocked(1);
}

void CacheStore::ExportCache::StopWork() {
  S3B_CACHE_CHECK_ON_RETURN();
  std::lock_guard<std::mutex> lock(mu_);
  if (!running_) return;
  running_ = false;
  DropPendingPrefetchesLocked();
  // Writers waiting for uploaders make room themselves now.
  NotifyAllLocked();
}

void CacheStore::ExportCache::DropPendingPrefetchesLocked() {
  // Entries whose read-ahead was never started would make readers wait for ever.
  for (auto [id, token] : prefetch_queue_) {
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second->fetch_token == token && it->second->fetching())
      entries_.erase(it);
  }
  prefetch_queue_.clear();
}

bool CacheStore::ExportCache::UploadStep(std::optional<Clock::time_point>* wake) {
  S3B_CACHE_CHECK_ON_RETURN();
  std::unique_lock<std::mutex> lk(mu_);
  if (!running_) return false;
  RequeueRetriesLocked(false, Clock::now());
  if (UploadOneLocked(lk, false)) return true;
  // Nothing to start now: look again when the oldest dirty block comes of age, a failed upload
  // is due again, or someone signals work.
  auto consider = [&](Clock::time_point t) { if (!*wake || t < **wake) *wake = t; };
  const auto age = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.max_dirty_age));
  if (!ready_data_.empty()) consider(ready_data_.back()->ready_since + age);
  if (!ready_delete_.empty()) consider(ready_delete_.back()->ready_since + age);
  if (!retry_.empty()) consider(retry_.back()->retry_at);
  return false;
}

bool CacheStore::ExportCache::FetchStep(std::optional<Clock::time_point>* /*wake*/) {
  S3B_CACHE_CHECK_ON_RETURN();
  std::unique_lock<std::mutex> lk(mu_);
  if (!running_) return false;
  // Read-ahead in flight is held to an eighth of the budget (one block at least): at 1 MiB
  // blocks, 32 fetchers would otherwise hold half of a 64 MiB budget in buffers on their way
  // in, and evict as much to make room for them.
  const uint64_t charge = last_block_size_ + kEntryOverhead;
  if (prefetch_queue_.empty()) return false;
  if (readahead_bytes_ > 0 && readahead_bytes_ + charge > budget_ / 8) {
    readahead_held_ = true;  // the fetch that completes next signals the pool
    return false;
  }
  // A fetcher that finishes goes on with the queue itself.
  if (active_fetchers_ >= FetcherLimitLocked()) return false;
  // As many queued blocks as the store reads at once (a store that gains nothing from
  // batches: one), within the same bound.
  std::array<FetchItem, kMaxFetchBatch> batch;
  const size_t most = BatchBlocksLocked();
  size_t n = 0;
  while (n < most && !prefetch_queue_.empty() &&
         (n == 0 || readahead_bytes_ + (n + 1) * charge <= budget_ / 8)) {
    auto [id, token] = prefetch_queue_.front();
    prefetch_queue_.pop_front();
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second->fetch_token != token || !it->second->fetching())
      continue;  // written meanwhile: nothing to fetch
    batch[n].id = id;
    batch[n].token = token;
    ++n;
  }
  if (n == 0) return true;
  stats_.readahead_blocks += n;
  ++active_fetchers_;
  // A reader waiting for one of these blocks fetches it again and sees the error.
  FetchBatchLocked(lk, std::span<FetchItem>(batch.data(), n), /*readahead=*/true);
  --active_fetchers_;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Reads

CacheEntry* CacheStore::ExportCache::NewFetchLocked(uint64_t id, bool prefetched) {
  auto& slot = entries_[id];
  slot = std::make_unique<CacheEntry>();
  CacheEntry* e = slot.get();
  e->id = id;
  e->state = CacheEntry::State::kFetching;
  e->prefetched = prefetched;
  e->fetch_token = ++next_token_;
  return e;
}

Status CacheStore::ExportCache::FetchLocked(std::unique_lock<std::mutex>& lk, uint64_t id,
                                            uint64_t token, bool readahead,
                                            std::shared_ptr<const Bytes>* result) {
  FetchItem item;
  item.id = id;
  item.token = token;
  FetchBatchLocked(lk, std::span<FetchItem>(&item, 1), readahead);
  *result = std::move(item.content);
  return item.status;
}

void CacheStore::ExportCache::FetchBatchLocked(std::unique_lock<std::mutex>& lk,
                                               std::span<FetchItem> items, bool readahead) {
  const size_t n = items.size();
  stats_.fetches_in_flight += n;
  // A block's size is not known before it arrives: the last one seen is the best guess (all
  // blocks of an export but encoded ones have the same size).
  const uint64_t charge = (last_block_size_ + kEntryOverhead) * n;
  fetch_bytes_ += charge;
  if (readahead) readahead_bytes_ += charge;
  EvictLocked();
  lk.unlock();
  std::array<std::shared_ptr<Bytes>, kMaxFetchBatch> bufs;
  std::array<BlockRead, kMaxFetchBatch> reads;
  for (size_t i = 0; i < n; ++i) {
    bufs[i] = std::make_shared<Bytes>();
    reads[i].id = items[i].id;
    reads[i].data = bufs[i].get();
  }
  next_->ReadBatch(name_, std::span<BlockRead>(reads.data(), n));
  lk.lock();
  stats_.fetches_in_flight -= n;
  fetch_bytes_ -= charge;
  if (readahead) {
    readahead_bytes_ -= charge;
    // Only when a fetcher waits for room: waking one for every completed fetch costs a context
    // switch per block (about 15% of a sequential read's throughput at 4K blocks).
    if (readahead_held_) {
      readahead_held_ = false;
      SignalFetchesLocked(1);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    FetchItem& item = items[i];
    const Status& s = reads[i].status;
    ++stats_.store_reads;
    stats_.store_read_bytes += bufs[i]->size();
    item.status = s;
    if (s.ok() && reads[i].found) {
      last_block_size_ = bufs[i]->size();
      item.content = std::move(bufs[i]);
    } else {
      item.content.reset();
    }
    auto it = entries_.find(item.id);
    // The entry may have been written meanwhile (the write ended kFetching and wins: the
    // fetched content is older), or written, stored, evicted and fetched again (another token).
    if (it != entries_.end() && it->second->fetch_token == item.token && it->second->fetching()) {
      CacheEntry* e = it->second.get();
      if (s.ok()) {
        e->state = CacheEntry::State::kClean;
        e->data = item.content;
        e->cost = CostOf(e->data);
        cached_bytes_ += e->cost;
        ++cached_blocks_;
        InsertLru(e);
      } else {
        entries_.erase(it);  // waiting readers fetch it themselves
      }
    }
  }
  // The waiters for these blocks: each condition variable once.
  uint32_t cvs = 0;
  for (const FetchItem& item : items) cvs |= 1u << (item.id % kBlockCvs);
  for (size_t c = 0; c < kBlockCvs; ++c)
    if (cvs & (1u << c)) block_cv_[c].notify_all();
  state_cv_.notify_all();
  EvictLocked();
}

bool CacheStore::ExportCache::NoteReadLocked(uint64_t id, uint32_t len, uint32_t block_size) {
  if (!running_ || options_.readahead_max == 0) return false;
  const SequentialStreams::Decision d = streams_.Note(id, len, block_size);
  if (!d.sequential) return d.same_use;
  const SequentialStreams::Range ahead = streams_.Window(
      d.stream, {ReadaheadWindowLocked(), budget_, last_block_size_ + kEntryOverhead});
  const uint64_t end = ahead.end;
  size_t queued = 0;
  uint64_t x = ahead.first;
  for (; x < end; ++x) {
    if (prefetch_queue_.size() >= SequentialStreams::kStreams * ReadaheadWindowLocked()) break;
    if (entries_.count(x)) continue;
    if (presence_hint_ && !presence_hint_(x)) continue;  // nothing to fetch: a hole or past the end
    // The entry exists from now on, so that a reader arriving before the fetch starts waits for
    // it instead of fetching the block a second time.
    CacheEntry* e = NewFetchLocked(x, /*prefetched=*/true);
    prefetch_queue_.emplace_back(x, e->fetch_token);
    ++queued;
  }
  streams_.Queued(d.stream, x);
  // As many fetchers as the new blocks make batches: waking every fetcher for a few blocks had
  // most of them find nothing to do, and contend for the lock on their way back to sleep.
  const size_t batch = BatchBlocksLocked();
  const uint32_t limit = FetcherLimitLocked();
  const size_t idle = active_fetchers_ < limit ? limit - active_fetchers_ : 0;
  const size_t wake = std::min((queued + batch - 1) / batch, idle);
  SignalFetchesLocked(static_cast<uint32_t>(wake));
  return false;
}

Status CacheStore::ExportCache::Lookup(uint64_t id, uint32_t len, uint32_t block_size,
                                       std::shared_ptr<const Bytes>* content, uint32_t offset,
                                       std::span<uint8_t> out, bool* copied) {
  content->reset();
  if (copied != nullptr) *copied = false;
  std::unique_lock<std::mutex> lk(mu_);
  // A reader going through a large block in small requests uses it once, not many times: it
  // must not promote every block it streams through (and evict what was read ahead for it).
  const bool same_use = len > 0 && NoteReadLocked(id, len, block_size);
  bool waited = false;
  for (;;) {
    auto it = entries_.find(id);
    if (it == entries_.end()) break;
    CacheEntry* e = it->second.get();
    if (e->valid()) {
      ++stats_.hits;
      if (!same_use) Touch(e);
      *content = e->data;
      return Status::Ok();
    }
    if (e->overlay) {
      if (copied != nullptr && !out.empty() &&
          (e->overlay->BaseKnown() || e->overlay->Covers(offset, out.size()))) {
        ++stats_.hits;  // the parts written and the rest of the block are in memory
        e->overlay->CopyOut(offset, out);
        *copied = true;
        return Status::Ok();
      }
      if (!e->resolving()) {
        // A store read, unless the rest of the block is known.
        if (e->overlay->BaseKnown()) ++stats_.hits; else ++stats_.misses;
        CacheEntry* got = nullptr;
        S3B_RETURN_IF_ERROR(ResolveLocked(lk, e, /*for_upload=*/false, &got));
        if (got != nullptr) {
          *content = got->data;
          return Status::Ok();
        }
        continue;
      }
    }
    // A fetch of this block (or of the rest of a block written in part) is pending: share it
    // rather than asking the store twice.
    if (!waited) ++stats_.coalesced;
    waited = true;
    BlockCv(id).wait(lk);
  }
  ++stats_.misses;
  CacheEntry* e = NewFetchLocked(id, /*prefetched=*/false);
  S3B_RETURN_IF_ERROR(FetchLocked(lk, id, e->fetch_token, /*readahead=*/false, content));
  // A write that landed during the fetch is newer than what was fetched.
  auto it = entries_.find(id);
  if (it != entries_.end() && it->second->valid()) *content = it->second->data;
  return Status::Ok();
}

Status CacheStore::ExportCache::Read(uint64_t id, Bytes* data, bool* found) {
  S3B_CACHE_CHECK_ON_RETURN();
  data->clear();
  *found = false;
  std::shared_ptr<const Bytes> content;
  // A whole block, whatever its size.
  S3B_RETURN_IF_ERROR(Lookup(id, 1, 1, &content));
  // The buffer is immutable and our reference keeps it alive: copy it without the lock.
  if (content) {
    data->assign(content->begin(), content->end());
    *found = true;
  }
  return Status::Ok();
}

Status CacheStore::ExportCache::ReadRange(uint64_t id, uint32_t block_size, uint32_t offset,
                                          std::span<uint8_t> out, ReadIntent intent,
                                          bool* found) {
  S3B_CACHE_CHECK_ON_RETURN();
  *found = false;
  std::shared_ptr<const Bytes> content;
  const uint32_t noted = intent == ReadIntent::kRead ? static_cast<uint32_t>(out.size()) : 0;
  bool copied = false;
  S3B_RETURN_IF_ERROR(Lookup(id, noted, block_size, &content, offset, out, &copied));
  if (copied) {
    *found = true;
    return Status::Ok();
  }
  return CopyOut(id, content.get(), block_size, offset, out, found);
}

Status CacheStore::ExportCache::CopyOut(uint64_t id, const Bytes* content, uint32_t block_size,
                                        uint32_t offset, std::span<uint8_t> out,
                                        bool* found) const {
  *found = false;
  if (content == nullptr) return Status::Ok();
  if (content->size() != block_size)
    return WrongBlockLength(*next_, name_, id, content->size(), block_size);
  std::memcpy(out.data(), content->data() + offset, out.size());
  *found = true;
  return Status::Ok();
}

Status CacheStore::ExportCache::ReadBlocks(uint64_t first, uint32_t count, uint32_t block_size,
                                           uint8_t* out) {
  S3B_CACHE_CHECK_ON_RETURN();
  // At 4 KiB blocks a 1 MiB request is 256 blocks: taking the lock for each, its readers' threads
  // spent more time handing it to each other than copying.
  constexpr uint32_t kRun = 64;
  std::array<std::shared_ptr<const Bytes>, kRun> run;
  uint32_t i = 0;
  while (i < count) {
    uint32_t n = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (; n < kRun && i + n < count; ++n) {
        const uint64_t id = first + i + n;
        auto it = entries_.find(id);
        if (it == entries_.end() || !it->second->valid()) break;
        CacheEntry* e = it->second.get();
        ++stats_.hits;
        if (!NoteReadLocked(id, block_size, block_size)) Touch(e);
        run[n] = e->data;
      }
    }
    for (uint32_t k = 0; k < n; ++k, ++i) {
      uint8_t* dst = out + static_cast<size_t>(i) * block_size;
      const std::shared_ptr<const Bytes> content = std::move(run[k]);
      bool found = false;
      S3B_RETURN_IF_ERROR(CopyOut(first + i, content.get(), block_size, 0,
                                  std::span<uint8_t>(dst, block_size), &found));
      if (!found) std::memset(dst, 0, block_size);
    }
    if (n == kRun || i == count) continue;
    // Block i is not held (or is being fetched, or was written in part): the one-block path
    // waits for it, or fetches it.
    uint8_t* dst = out + static_cast<size_t>(i) * block_size;
    bool found = false;
    S3B_RETURN_IF_ERROR(ReadRange(first + i, block_size, 0, std::span<uint8_t>(dst, block_size),
                                  ReadIntent::kRead, &found));
    if (!found) std::memset(dst, 0, block_size);
    ++i;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Writes, deletes and uploads

CacheEntry* CacheStore::ExportCache::SetContentLocked(uint64_t id,
                                                      std::shared_ptr<const Bytes> buf) {
  auto& slot = entries_[id];
  const bool fresh = !slot;
  if (fresh) {
    slot = std::make_unique<CacheEntry>();
    slot->id = id;
  }
  CacheEntry* e = slot.get();
  DropBaseLocked(e);
  const bool was_valid = e->valid();
  const bool charged = was_valid || e->overlay;
  const uint64_t old_cost = charged ? e->cost : 0;
  Unlink(e);
  if (was_valid && !e->prefetched) e->hot = true;  // a second use
  // A pending fetch would return older content: this write supersedes it. Readers waiting for
  // that fetch can use this content now (a read-ahead not yet started never finishes to wake them).
  if (!fresh && e->fetching()) BlockCv(id).notify_all();
  e->prefetched = false;
  e->overlay.reset();   // so are the parts written before, and the rest being read for them
  SupersedeResolveLocked(e);
  if (!charged) ++cached_blocks_;
  const bool was_dirty = e->dirty(), busy = e->busy();
  e->state = busy ? CacheEntry::State::kRewritten : CacheEntry::State::kDirty;
  e->data = std::move(buf);
  if (e->data) last_block_size_ = e->data->size();
  ++e->gen;
  e->cost = CostOf(e->data);
  cached_bytes_ += e->cost;
  cached_bytes_ -= old_cost;
  if (!was_dirty) {
    e->dirty_seq = ++seq_;
    dirty_.emplace(e->dirty_seq, e);
    dirty_bytes_ += e->cost;
  } else {
    dirty_bytes_ += e->cost;
    dirty_bytes_ -= old_cost;
    if (busy) {
      inflight_bytes_ += e->cost;
      inflight_bytes_ -= old_cost;
      if (e->redirty_seq == 0) e->redirty_seq = ++seq_;
    }
  }
  RecountSendingLocked(e);
  if (!busy) PushReady(e);
  return e;
}

void CacheStore::ExportCache::SupersedeResolveLocked(CacheEntry* e) {
  if (!e->resolving()) return;
  // The overlay whose rest is being read is gone: what the read returns is older than the
  // block now, and must not complete an overlay made after it (from content stored meanwhile).
  // A new token tells the reader so; waiters look at the entry again.
  e->state = CacheEntry::State::kOverlay;
  e->fetch_token = ++next_token_;
  BlockCv(e->id).notify_all();
}

void CacheStore::ExportCache::RecountSendingLocked(CacheEntry* e) {
  if (!e->sending) return;
  const bool apart = e->sending != e->data;
  if (apart == e->sending_apart) return;
  if (apart)
    held_bytes_ += e->sending->size();
  else
    held_bytes_ -= e->sending->size();
  e->sending_apart = apart;
}

void CacheStore::ExportCache::DropBaseLocked(CacheEntry* e) {
  if (e->base_cost == 0) return;
  cached_bytes_ -= e->base_cost;
  e->base_cost = 0;
  --bases_;
  if (e->overlay) e->overlay->set_base(nullptr);
}

void CacheStore::ExportCache::MakeOverlayLocked(CacheEntry* e, uint32_t block_size) {
  Unlink(e);
  if (!e->prefetched) e->hot = true;  // a second use
  e->prefetched = false;
  auto overlay = std::make_unique<BlockOverlay>(block_size, /*base_zero=*/e->data == nullptr);
  const uint64_t old_cost = e->cost;
  if (e->data) {
    e->base_cost = e->data->size();
    ++bases_;
    overlay->set_base(std::move(e->data));
  }
  e->data.reset();
  e->state = CacheEntry::State::kOverlay;
  e->overlay = std::move(overlay);
  e->cost = e->overlay->Cost() + kEntryOverhead;
  cached_bytes_ = cached_bytes_ + e->cost + e->base_cost - old_cost;
  e->dirty_seq = ++seq_;
  dirty_.emplace(e->dirty_seq, e);
  dirty_bytes_ += e->cost;
}

void CacheStore::ExportCache::RechargeLocked(CacheEntry* e, uint64_t cost) {
  cached_bytes_ = cached_bytes_ + cost - e->cost;
  if (e->dirty()) dirty_bytes_ = dirty_bytes_ + cost - e->cost;
  if (e->busy()) inflight_bytes_ = inflight_bytes_ + cost - e->cost;
  if (e->list == CacheEntry::List::kProtected) protected_bytes_ = protected_bytes_ + cost - e->cost;
  e->cost = cost;
}

void CacheStore::ExportCache::CompleteOverlayLocked(CacheEntry* e, Bytes base) {
  e->overlay->MergeInto(base.data());
  DropBaseLocked(e);
  e->overlay.reset();
  e->state = CacheEntry::State::kDirty;
  if (IsAllZero(base.data(), base.size())) {
    e->data.reset();
  } else {
    last_block_size_ = base.size();
    e->data = std::make_shared<Bytes>(std::move(base));
  }
  RechargeLocked(e, CostOf(e->data));
}

Status CacheStore::ExportCache::MergeLocked(std::unique_lock<std::mutex>& lk, CacheEntry* e,
                                            uint32_t block_size, uint32_t offset,
                                            std::span<const uint8_t> data, bool* done) {
  *done = true;
  const uint64_t id = e->id;
  if (e->data && e->data->size() != block_size)
    return WrongBlockLength(*next_, name_, id, e->data->size(), block_size);
  const bool zero_range = IsAllZero(data.data(), data.size());
  if (e->data && e->data.use_count() == 1 && !e->busy()) {
    // Nobody else holds the buffer (readers and uploads take a reference while they use it, and
    // only under the lock): write into it rather than copy the whole block.
    S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, id, e->cost));
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.get() != e || !e->valid() || !e->data ||
        e->data.use_count() != 1 || e->busy()) {
      *done = false;  // changed while waiting for room
      return Status::Ok();
    }
    auto* block = const_cast<Bytes*>(e->data.get());  // created mutable; see the comment above
    std::memcpy(block->data() + offset, data.data(), data.size());
    std::shared_ptr<const Bytes> buf = e->data;
    if (zero_range && IsAllZero(block->data(), block->size())) buf.reset();
    SetContentLocked(id, std::move(buf));
    return Status::Ok();
  }
  // Copy without the lock; the caller (the Volume) keeps other writers of the block away, so
  // the content only changes if the entry is evicted and fetched again meanwhile.
  std::shared_ptr<const Bytes> old = e->data;
  lk.unlock();
  auto merged = std::make_shared<Bytes>(block_size, 0);
  if (old) std::memcpy(merged->data(), old->data(), block_size);
  std::memcpy(merged->data() + offset, data.data(), data.size());
  std::shared_ptr<const Bytes> buf;
  if (!(zero_range && IsAllZero(merged->data(), merged->size()))) buf = std::move(merged);
  lk.lock();
  auto it = entries_.find(id);
  if (it == entries_.end() || !it->second->valid() || it->second->data != old) {
    *done = false;
    return Status::Ok();
  }
  S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, id, CostOf(buf)));
  it = entries_.find(id);
  if (it == entries_.end() || !it->second->valid() || it->second->data != old) {
    *done = false;
    return Status::Ok();
  }
  SetContentLocked(id, std::move(buf));
  return Status::Ok();
}

Status CacheStore::ExportCache::ResolveLocked(std::unique_lock<std::mutex>& lk, CacheEntry* e,
                                              bool for_upload, CacheEntry** out) {
  *out = nullptr;
  const uint64_t id = e->id;
  const uint32_t block_size = e->overlay->block_size();
  Unlink(e);  // off the ready lists: nobody else starts on it meanwhile
  Bytes base;
  bool found = false;
  Status s;
  if (const auto& known = e->overlay->base()) {
    base.assign(known->begin(), known->end());
    found = true;
  } else if (!e->overlay->base_zero()) {
    e->state = CacheEntry::State::kResolving;
    const uint64_t token = e->fetch_token = ++next_token_;
    // Charged like a fetch, so that the cache makes room for the whole block first.
    const uint64_t charge = block_size + kEntryOverhead;
    fetch_bytes_ += charge;
    resolve_bytes_ += charge;
    ++stats_.fetches_in_flight;
    ++stats_.partial_reads;
    EvictLocked();
    lk.unlock();
    s = next_->Read(name_, id, &base, &found);
    lk.lock();
    fetch_bytes_ -= charge;
    resolve_bytes_ -= charge;
    --stats_.fetches_in_flight;
    ++stats_.store_reads;
    stats_.store_read_bytes += base.size();
    state_cv_.notify_all();
    BlockCv(id).notify_all();
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second->fetch_token != token) {
      // Superseded: written whole or filled meanwhile (the entry may since have been stored,
      // evicted or written in part again). What was read is older than the block: unused.
      EvictLocked();
      return Status::Ok();
    }
    e = it->second.get();
    e->state = CacheEntry::State::kOverlay;
    if (s.ok() && found && base.size() != block_size)
      s = WrongBlockLength(*next_, name_, id, base.size(), block_size);
  }
  // Written whole or deleted meanwhile, the overlay is gone and what was read is older.
  if (s.ok() && e->overlay) {
    if (!found) base.assign(block_size, 0);
    CompleteOverlayLocked(e, std::move(base));
  }
  if (!e->busy() && e->dirty() && e->list == CacheEntry::List::kNone) {
    if (!s.ok() && for_upload) {
      FailUploadLocked(e, s);
    } else if (!s.ok() || !for_upload) {
      PushReady(e);
    }
  }
  if (s.ok() && (for_upload ? !e->busy() && e->dirty() && e->list == CacheEntry::List::kNone
                            : e->valid()))
    *out = e;
  EvictLocked();
  return s;
}

Status CacheStore::ExportCache::WaitForRoomLocked(std::unique_lock<std::mutex>& lk, uint64_t id,
                                                  uint64_t need) {
  bool counted = false;
  for (;;) {
    auto it = entries_.find(id);
    // The limit is on dirty data that no upload has taken yet: uploads in flight are bounded
    // apart (inflight_limit_), so writers go on while they run.
    const uint64_t pending = PendingBytesLocked();
    const uint64_t already = it != entries_.end() && it->second->dirty() && !it->second->busy()
                                 ? it->second->cost
                                 : 0;
    // Fits, or replaces dirty data at no extra cost, or nothing else waits (a block larger
    // than the whole limit must still be writable).
    if (need <= already || pending - already + need <= dirty_limit_ || pending == already)
      return Status::Ok();
    if (!counted) ++stats_.writer_waits;
    counted = true;
    if (running_) {
      const uint64_t epoch = failure_epoch_;
      ++writers_waiting_;
      SignalUploadsLocked(options_.upload_threads);
      state_cv_.wait(lk);
      --writers_waiting_;
      // Uploads are failing: report it rather than wait for a store that may never come back.
      if (failure_epoch_ != epoch) return last_failure_;
      continue;
    }
    // No background uploaders: make room in this thread.
    const uint64_t epoch = failure_epoch_;
    if (!UploadOneLocked(lk, true)) {
      if (retry_.empty()) {
        state_cv_.wait(lk);  // another thread's upload is in flight
      } else {
        RequeueRetriesLocked(true, Clock::now());
      }
    }
    if (failure_epoch_ != epoch) return last_failure_;
  }
}

Status CacheStore::ExportCache::StoreNowLocked(std::unique_lock<std::mutex>& lk,
                                               std::span<const uint64_t> ids,
                                               std::shared_ptr<const Bytes> buf) {
  // Wait for uploads of these blocks already in flight, so that this one lands last.
  bool waited = false;
  for (;;) {
    bool busy = false;
    for (uint64_t id : ids) {
      auto it = entries_.find(id);
      if (it != entries_.end() && it->second->busy()) busy = true;
    }
    if (!busy) break;
    if (!waited) ++stats_.ordered_waits;
    waited = true;
    state_cv_.wait(lk);
  }
  std::vector<std::pair<CacheEntry*, uint64_t>> taken;
  taken.reserve(ids.size());
  for (uint64_t id : ids) {
    CacheEntry* e = SetContentLocked(id, buf);
    if (e->busy()) continue;  // a duplicate id in ids
    Unlink(e);
    e->state = CacheEntry::State::kUploading;
    e->sending = buf;
    e->upload_no = uploads_started_ + 1;
    inflight_bytes_ += e->cost;
    taken.emplace_back(e, e->gen);
  }
  ++uploads_started_;
  stats_.uploads_in_flight += taken.size();
  return SendLocked(lk, ids, buf, taken, /*fua=*/true);
}

Status CacheStore::ExportCache::Write(uint64_t id, std::span<const uint8_t> data, bool fua) {
  S3B_CACHE_CHECK_ON_RETURN();
  std::shared_ptr<const Bytes> buf;
  const bool zero = IsAllZero(data.data(), data.size());
  // Copied unlocked; mutable, so that a later partial write may change it in place.
  if (!zero) buf = std::make_shared<Bytes>(data.begin(), data.end());
  std::unique_lock<std::mutex> lk(mu_);
  if (zero) ++stats_.zero_writes;
  if (fua) {
    uint64_t ids[1] = {id};
    return StoreNowLocked(lk, ids, std::move(buf));
  }
  if (zero) {
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second->clean() && !it->second->data) {
      Touch(it->second.get());
      return Status::Ok();  // known not stored: nothing to delete
    }
  }
  S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, id, CostOf(buf)));
  SetContentLocked(id, std::move(buf));
  EvictLocked();
  WakeUploaderIfDueLocked();
  return Status::Ok();
}

Status CacheStore::ExportCache::WriteRange(uint64_t id, uint32_t block_size, uint32_t offset,
                                           std::span<const uint8_t> data, bool base_zero,
                                           bool fua) {
  S3B_CACHE_CHECK_ON_RETURN();
  if (!fua && BlockOverlay::Aligned(offset, data.size())) {
    std::unique_lock<std::mutex> lk(mu_);
    // A clean block in memory (of the right length) keeps its content as the base of an overlay:
    // only the bytes written count as dirty, and storing it reads nothing.
    auto clean = [&](const CacheEntry* e) {
      return e->clean() && (!e->data || e->data->size() == block_size);
    };
    for (;;) {
      auto it = entries_.find(id);
      CacheEntry* e = it == entries_.end() ? nullptr : it->second.get();
      if (e != nullptr && e->valid() && !clean(e)) {
        // Dirty in memory already (or being stored): merge now.
        bool done = false;
        S3B_RETURN_IF_ERROR(MergeLocked(lk, e, block_size, offset, data, &done));
        if (!done) continue;
        EvictLocked();
        WakeUploaderIfDueLocked();
        return Status::Ok();
      }
      if (e != nullptr && !e->valid() && !e->overlay) {
        BlockCv(id).wait(lk);  // a fetch is pending: look again when it is done
        continue;
      }
      // Keep just these bytes; the rest is read when the block is stored (not at all if writes
      // fill the block first, or it is known).
      const uint64_t need =
          kEntryOverhead + (e != nullptr && e->overlay
                                ? e->overlay->CostAfter(offset, data.size())
                                : BlockOverlay::NewCost(block_size, offset, data.size()));
      S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, id, need));
      it = entries_.find(id);
      CacheEntry* now = it == entries_.end() ? nullptr : it->second.get();
      if (now != e || (e != nullptr && !e->overlay && !clean(e)))
        continue;  // changed while waiting for room: look again
      if (e == nullptr) {
        auto& slot = entries_[id];
        slot = std::make_unique<CacheEntry>();
        e = slot.get();
        e->id = id;
        e->overlay = std::make_unique<BlockOverlay>(block_size, base_zero);
        e->state = CacheEntry::State::kOverlay;
        e->dirty_seq = ++seq_;
        dirty_.emplace(e->dirty_seq, e);
        ++cached_blocks_;
      } else if (!e->overlay) {
        MakeOverlayLocked(e, block_size);
      }
      e->overlay->Apply(offset, data);
      ++e->gen;
      ++stats_.partial_writes;
      RechargeLocked(e, e->overlay->Cost() + kEntryOverhead);
      if (e->overlay->Full()) {
        SupersedeResolveLocked(e);
        CompleteOverlayLocked(e, Bytes(block_size, 0));
      }
      if (!e->busy() && !e->resolving()) PushReady(e);
      EvictLocked();
      WakeUploaderIfDueLocked();
      return Status::Ok();
    }
  }
  // With fua, or not in whole sectors: read, merge and write the whole block. The caller keeps
  // other writers of the block away meanwhile.
  std::shared_ptr<const Bytes> content;
  S3B_RETURN_IF_ERROR(Lookup(id, 0, block_size, &content));
  if (content && content->size() != block_size)
    return WrongBlockLength(*next_, name_, id, content->size(), block_size);
  Bytes merged(block_size, 0);
  if (content) std::memcpy(merged.data(), content->data(), block_size);
  content.reset();
  std::memcpy(merged.data() + offset, data.data(), data.size());
  return Write(id, merged, fua);
}

Status CacheStore::ExportCache::Delete(std::span<const uint64_t> ids, bool fua) {
  S3B_CACHE_CHECK_ON_RETURN();
  std::unique_lock<std::mutex> lk(mu_);
  if (fua) {
    return ForEachBatch(ids, kDeleteBatch, [&](std::span<const uint64_t> part) {
      return StoreNowLocked(lk, part, nullptr);
    });
  }
  for (uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second->clean() && !it->second->data)
      continue;  // known not stored
    S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, id, CostOf(nullptr)));
    SetContentLocked(id, nullptr);
  }
  EvictLocked();
  WakeUploaderIfDueLocked();
  return Status::Ok();
}

bool CacheStore::ExportCache::EligibleLocked(const CacheEntry* e, Clock::time_point now) const {
  if (!flushes_.empty() || writers_waiting_ > 0) return true;
  if (PendingBytesLocked() > upload_threshold_) return true;
  return now - e->ready_since >= std::chrono::duration<double>(options_.max_dirty_age);
}

bool CacheStore::ExportCache::RoomToUploadLocked(const CacheEntry* e) const {
  const uint64_t busy = inflight_bytes_ + resolve_bytes_;
  // A block written in part is uploaded whole, once its rest has been read.
  const uint64_t cost = e->overlay ? e->overlay->block_size() + kEntryOverhead : e->cost;
  return busy == 0 || busy + cost <= inflight_limit_;
}

bool CacheStore::ExportCache::UploadOneLocked(std::unique_lock<std::mutex>& lk, bool force) {
  const auto now = Clock::now();
  std::vector<std::pair<CacheEntry*, uint64_t>> taken;
  std::vector<uint64_t> ids;
  std::shared_ptr<const Bytes> buf;
  // Deletes first: they are cheap, batched, and free the most room per request.
  if (!ready_delete_.empty() && (force || EligibleLocked(ready_delete_.back(), now))) {
    while (!ready_delete_.empty() && ids.size() < kDeleteBatch) {
      CacheEntry* e = ready_delete_.back();
      ids.push_back(e->id);
      taken.emplace_back(e, e->gen);
      Unlink(e);
    }
  } else if (!ready_data_.empty() && (force || EligibleLocked(ready_data_.back(), now)) &&
             RoomToUploadLocked(ready_data_.back())) {
    CacheEntry* e = ready_data_.back();
    if (e->overlay) {
      // Written in part: read the rest first (this thread stores it right after).
      e->upload_no = ++uploads_started_;
      CacheEntry* got = nullptr;
      (void)ResolveLocked(lk, e, /*for_upload=*/true, &got);
      if (got == nullptr) return true;
      e = got;
      if (!e->data) {  // all zeros: a delete
        PushReady(e);
        return true;
      }
    }
    ids.push_back(e->id);
    buf = e->data;
    taken.emplace_back(e, e->gen);
    Unlink(e);
  } else {
    return false;
  }
  ++uploads_started_;
  for (auto [e, gen] : taken) {
    e->state = CacheEntry::State::kUploading;
    e->sending = buf;  // null for deletes
    e->upload_no = uploads_started_;
    inflight_bytes_ += e->cost;
  }
  stats_.uploads_in_flight += taken.size();
  // What is in flight no longer counts against the dirty limit: waiting writers may go on.
  if (writers_waiting_ > 0) state_cv_.notify_all();
  // Pass the baton: if work remains, an idle uploader must look at it (it may be asleep with
  // no deadline, or a later one) while this thread is busy.
  if (!ready_data_.empty() || !ready_delete_.empty()) SignalUploadsLocked(1);
  (void)SendLocked(lk, ids, buf, taken, /*fua=*/false);
  return true;
}

Status CacheStore::ExportCache::SendLocked(std::unique_lock<std::mutex>& lk,
                                           std::span<const uint64_t> ids,
                                           const std::shared_ptr<const Bytes>& buf,
                                           const std::vector<std::pair<CacheEntry*, uint64_t>>& taken,
                                           bool fua) {
  lk.unlock();
  Status s = buf ? next_->Overwrite(name_, ids[0], *buf, fua) : next_->Delete(name_, ids, fua);
  lk.lock();
  stats_.uploads_in_flight -= taken.size();
  if (buf) {
    ++stats_.store_writes;
    stats_.store_write_bytes += buf->size();
  } else {
    ++stats_.store_deletes;
    stats_.store_deleted_blocks += ids.size();
  }
  // Busy entries are never evicted, so the pointers are still good.
  for (auto [e, gen] : taken) CompleteUploadLocked(e, gen, s);
  NotifyAllLocked();
  EvictLocked();
  return s;
}

void CacheStore::ExportCache::CompleteUploadLocked(CacheEntry* e, uint64_t gen, const Status& s) {
  e->state = CacheEntry::State::kDirty;  // idle again
  if (e->sending_apart) held_bytes_ -= e->sending->size();
  e->sending_apart = false;
  e->sending.reset();
  inflight_bytes_ -= e->cost;
  if (s.ok()) {
    consecutive_failures_ = 0;
    dirty_.erase(e->dirty_seq);
    if (e->gen == gen) {
      e->state = CacheEntry::State::kClean;
      e->dirty_seq = 0;
      dirty_bytes_ -= e->cost;
      InsertLru(e);
    } else {
      // Written again while the upload was in flight: the newer content is still to be stored,
      // and it is as old as the first write after the upload began.
      e->dirty_seq = e->redirty_seq;
      dirty_.emplace(e->dirty_seq, e);
      PushReady(e);
    }
    e->redirty_seq = 0;
    return;
  }
  FailUploadLocked(e, s);
}

void CacheStore::ExportCache::FailUploadLocked(CacheEntry* e, const Status& s) {
  // The block stays dirty, with the sequence number of its oldest unstored write, and is tried
  // again after a back-off. Every flush that needed it fails, but one that began while this
  // request was in flight first tries the block again itself: the store may have recovered
  // since the request failed.
  ++stats_.upload_failures;
  const Status err = s.Annotate("storing block " + std::to_string(e->id) + " of export '" +
                                QuoteForMessage(name_) + "'");
  for (FlushWaiter* w : flushes_) {
    if (e->dirty_seq > w->seq || !w->error.ok()) continue;
    if (e->upload_no <= w->uploads_before)
      w->again = true;
    else
      w->error = err;
  }
  ++failure_epoch_;
  last_failure_ = err;
  e->redirty_seq = 0;
  auto delay = kRetryFirst * (1u << std::min<uint32_t>(consecutive_failures_, 16));
  if (delay > kRetryLast) delay = std::chrono::duration_cast<decltype(delay)>(kRetryLast);
  ++consecutive_failures_;
  e->retry_at = Clock::now() + delay;
  LinkFront(e, CacheEntry::List::kRetry);
}

void CacheStore::ExportCache::RequeueRetriesLocked(bool all, Clock::time_point now) {
  while (!retry_.empty() && (all || retry_.back()->retry_at <= now)) {
    CacheEntry* e = retry_.back();
    ++stats_.upload_retries;
    PushReady(e);
  }
}

Status CacheStore::ExportCache::Flush() {
  S3B_CACHE_CHECK_ON_RETURN();
  std::unique_lock<std::mutex> lk(mu_);
  FlushWaiter w;
  w.seq = seq_;
  flushes_.push_back(&w);
  w.uploads_before = uploads_started_;
  // Blocks that failed before are tried again now: this flush needs them.
  RequeueRetriesLocked(true, Clock::now());
  SignalUploadsLocked(options_.upload_threads);
  Status s;
  for (;;) {
    if (!w.error.ok()) {
      s = w.error;
      break;
    }
    if (w.again) {
      w.again = false;
      RequeueRetriesLocked(true, Clock::now());
    }
    if (dirty_.empty() || dirty_.begin()->first > w.seq) break;
    // Upload in this thread too; the background uploaders work in parallel.
    if (UploadOneLocked(lk, true)) continue;
    // What remains is in flight.
    state_cv_.wait(lk);
  }
  flushes_.remove(&w);
  lk.unlock();
  if (!s.ok()) return s;
  s = next_->Flush(name_);
  lk.lock();
  ++stats_.store_flushes;
  return s;
}

Status CacheStore::ExportCache::ListBlocks(const std::function<void(uint64_t)>& fn) {
  std::unordered_set<uint64_t> written, deleted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [seq, e] : dirty_) (e->data || e->overlay ? written : deleted).insert(e->id);
  }
  S3B_RETURN_IF_ERROR(next_->ListBlocks(name_, [&](uint64_t id) {
    if (!written.count(id) && !deleted.count(id)) fn(id);
  }));
  for (uint64_t id : written) fn(id);
  return Status::Ok();
}

CacheStats CacheStore::ExportCache::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  CacheStats s = stats_;
  s.flushes_in_progress = flushes_.size();
  s.dirty_bytes = dirty_bytes_;
  s.dirty_blocks = dirty_.size();
  s.cached_bytes = cached_bytes_;
  s.cached_blocks = cached_blocks_;
  return s;
}

// ---------------------------------------------------------------------------------------------
// CacheStore

CacheOptions CacheOptions::FromConfig(const Config& config) {
  CacheOptions o;
  o.cache_size = config.cache_size;
  o.dirty_size = config.dirty_size;
  o.upload_threads = static_cast<uint32_t>(config.upload_threads);
  o.read_threads = static_cast<uint32_t>(config.read_threads);
  return o;
}

CacheStore::CacheStore(std::shared_ptr<BlockStore> next, CacheOptions options)
    : StoreDecorator(std::move(next)),
      options_(options),
      upload_pool_(std::make_unique<Pool>(this, &ExportCache::UploadStep,
                                          &ExportCache::upload_slot_, options_.upload_threads)),
      fetch_pool_(std::make_unique<Pool>(this, &ExportCache::FetchStep,
                                         &ExportCache::fetch_slot_,
                                         options_.readahead_max > 0 ? options_.read_threads : 0)) {}

CacheStore::~CacheStore() { (void)Shutdown(); }

Status CacheStore::Start() {
  S3B_RETURN_IF_ERROR(next_->Start());
  std::lock_guard<std::mutex> lock(mu_);
  started_ = true;
  upload_pool_->Start();
  fetch_pool_->Start();
  for (auto& [name, cache] : exports_) cache->StartWork();
  return Status::Ok();
}

Status CacheStore::Shutdown() {
  std::vector<Ref> caches;
  {
    std::lock_guard<std::mutex> lock(mu_);
    started_ = false;
    for (auto& [name, cache] : exports_) caches.emplace_back(this, cache.get());
  }
  Status first;
  for (Ref& c : caches) {
    Status s = c->Flush();
    if (first.ok() && !s.ok()) first = s;
  }
  upload_pool_->Stop();
  fetch_pool_->Stop();
  for (Ref& c : caches) c->StopWork();
  return first;
}

CacheStore::Ref CacheStore::Find(std::string_view export_name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exports_.find(export_name);
  return it == exports_.end() ? Ref() : Ref(this, it->second.get());
}

CacheStore::Ref CacheStore::For(std::string_view export_name) {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    auto it = exports_.find(export_name);
    if (it == exports_.end()) break;
    if (!it->second->closing_) return Ref(this, it->second.get());
    close_cv_.wait(lk);
  }
  auto cache = std::make_unique<ExportCache>(next_.get(), options_, std::string(export_name),
                                             upload_pool_.get(), fetch_pool_.get());
  if (started_) cache->StartWork();
  return Ref(this,
             exports_.emplace(std::string(export_name), std::move(cache)).first->second.get());
}

Status CacheStore::CloseExport(std::string_view export_name) {
  ExportCache* c = nullptr;
  {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      auto it = exports_.find(export_name);
      if (it == exports_.end()) break;
      if (!it->second->closing_) {
        c = it->second.get();
        break;
      }
      close_cv_.wait(lk);  // closed by another call meanwhile: look again when that ends
    }
    // From here on no new call starts on the cache: For() waits, and only this call erases it.
    if (c != nullptr) c->closing_ = true;
  }
  if (c != nullptr) {
    // Undoes the close after a failure: the cache goes on as before.
    auto reopen = [&](bool detached) {
      if (detached) {
        upload_pool_->Attach(c);
        fetch_pool_->Attach(c);
      }
      std::lock_guard<std::mutex> lock(mu_);
      c->users_.fetch_and(~ExportCache::kClosing);
      c->closing_ = false;
      if (detached && started_) c->StartWork();
      close_cv_.notify_all();
    };
    Status s = c->Flush();
    if (!s.ok()) {
      reopen(false);
      return s;
    }
    upload_pool_->Detach(c);
    fetch_pool_->Detach(c);
    c->StopWork();
    {
      // Calls that were inside when the close began, and pool threads in a step for it.
      std::unique_lock<std::mutex> lk(mu_);
      c->users_.fetch_or(ExportCache::kClosing);
      close_cv_.wait(lk, [&] { return c->users_.load() == ExportCache::kClosing; });
    }
    // Such a call may have written after the flush.
    if (c->HasDirty()) {
      s = c->Flush();
      if (!s.ok()) {
        reopen(true);
        return s;
      }
    }
    std::unique_ptr<ExportCache> gone;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = exports_.find(export_name);
      gone = std::move(it->second);
      exports_.erase(it);
      close_cv_.notify_all();
    }
  }
  return next_->CloseExport(export_name);
}

Status CacheStore::Read(std::string_view e, uint64_t id, Bytes* data, bool* found) {
  return For(e)->Read(id, data, found);
}

Status CacheStore::ReadRange(std::string_view e, uint64_t id, uint32_t block_size,
                             uint32_t offset, std::span<uint8_t> out, ReadIntent intent,
                             bool* found) {
  return For(e)->ReadRange(id, block_size, offset, out, intent, found);
}

Status CacheStore::ReadBlocks(std::string_view e, uint64_t first, uint32_t count,
                              uint32_t block_size, uint8_t* out) {
  return For(e)->ReadBlocks(first, count, block_size, out);
}

Status CacheStore::Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool fua) {
  return For(e)->Write(id, data, fua);
}

Status CacheStore::WriteRange(std::string_view e, uint64_t id, uint32_t block_size,
                              uint32_t offset, std::span<const uint8_t> data, bool base_zero,
                              bool fua) {
  return For(e)->WriteRange(id, block_size, offset, data, base_zero, fua);
}

Status CacheStore::Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) {
  return For(e)->Delete(ids, fua);
}

Status CacheStore::Flush(std::string_view e) { return For(e)->Flush(); }

void CacheStore::SetPresenceHint(std::string_view export_name,
                                 std::function<bool(uint64_t)> may_be_stored) {
  if (may_be_stored) {
    For(export_name)->SetPresenceHint(may_be_stored);
  } else if (Ref c = Find(export_name)) {
    c->SetPresenceHint(nullptr);
  }
  next_->SetPresenceHint(export_name, std::move(may_be_stored));
}

Status CacheStore::ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) {
  Ref c = Find(e);
  return c ? c->ListBlocks(fn) : next_->ListBlocks(e, fn);
}

Status CacheStore::DeleteMeta(std::string_view e) {
  if (Ref c = Find(e)) S3B_RETURN_IF_ERROR(c->Flush());
  return next_->DeleteMeta(e);
}

bool CacheStore::GetStats(std::string_view export_name, CacheStats* out) const {
  Ref c = Find(export_name);
  if (!c) return false;
  *out = c->Stats();
  return true;
}

std::vector<std::pair<std::string, CacheStats>> CacheStore::AllStats() const {
  std::vector<std::pair<std::string, Ref>> caches;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, cache] : exports_) caches.emplace_back(name, Ref(this, cache.get()));
  }
  std::vector<std::pair<std::string, CacheStats>> out;
  for (auto& [name, c] : caches) out.emplace_back(name, c->Stats());
  return out;
}

void ForEachCacheStat(const CacheStats& s,
                      const std::function<void(const char* key, uint64_t value)>& fn) {
  fn("hits", s.hits);
  fn("misses", s.misses);
  fn("coalesced", s.coalesced);
  fn("readahead_blocks", s.readahead_blocks);
  fn("readahead_hits", s.readahead_hits);
  fn("store_reads", s.store_reads);
  fn("store_read_bytes", s.store_read_bytes);
  fn("store_writes", s.store_writes);
  fn("store_write_bytes", s.store_write_bytes);
  fn("store_deletes", s.store_deletes);
  fn("store_deleted_blocks", s.store_deleted_blocks);
  fn("store_flushes", s.store_flushes);
  fn("zero_writes", s.zero_writes);
  fn("upload_failures", s.upload_failures);
  fn("upload_retries", s.upload_retries);
  fn("evictions", s.evictions);
  fn("writer_waits", s.writer_waits);
  fn("ordered_waits", s.ordered_waits);
  fn("uploads_in_flight", s.uploads_in_flight);
  fn("fetches_in_flight", s.fetches_in_flight);
  fn("flushes_in_progress", s.flushes_in_progress);
  fn("dirty_bytes", s.dirty_bytes);
  fn("dirty_blocks", s.dirty_blocks);
  fn("cached_bytes", s.cached_bytes);
  fn("cached_blocks", s.cached_blocks);
  fn("partial_writes", s.partial_writes);
  fn("partial_reads", s.partial_reads);
}

std::string CacheStatsToString(const CacheStats& stats) {
  std::string out;
  ForEachCacheStat(stats, [&](const char* key, uint64_t value) {
    if (!out.empty()) out += ' ';
    out += key;
    out += '=';
    out += std::to_string(value);
  });
  return out;
}

}  // namespace s3block
