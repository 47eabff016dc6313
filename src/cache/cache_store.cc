#include "s3block/cache_store.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "cache/cache_pool.h"
#include "cache/export_cache.h"
#include "s3block/params.h"
#include "util/batches.h"
#include "util/zero.h"

namespace s3block {

// ---------------------------------------------------------------------------------------------
// Invariants

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
