#include "cache/export_cache.h"

#include <array>
#include <cstring>

#include "util/zero.h"

namespace s3block {

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

Status CacheStore::ExportCache::FetchLocked(uint64_t id, uint64_t token, bool readahead,
                                            std::shared_ptr<const Bytes>* result) {
  FetchItem item;
  item.id = id;
  item.token = token;
  FetchBatchLocked(std::span<FetchItem>(&item, 1), readahead);
  *result = std::move(item.content);
  return item.status;
}

void CacheStore::ExportCache::FetchBatchLocked(std::span<FetchItem> items, bool readahead) {
  const size_t n = items.size();
  stats_.fetches_in_flight += n;
  // A block's size is not known before it arrives: the last one seen is the best guess (all
  // blocks of an export but encoded ones have the same size).
  const uint64_t charge = (last_block_size_ + kEntryOverhead) * n;
  fetch_bytes_ += charge;
  if (readahead) readahead_bytes_ += charge;
  EvictLocked();
  mu_.Unlock();
  std::array<std::shared_ptr<Bytes>, kMaxFetchBatch> bufs;
  std::array<BlockRead, kMaxFetchBatch> reads;
  for (size_t i = 0; i < n; ++i) {
    bufs[i] = std::make_shared<Bytes>();
    reads[i].id = items[i].id;
    reads[i].data = bufs[i].get();
  }
  next_->ReadBatch(name_, std::span<BlockRead>(reads.data(), n));
  mu_.Lock();
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
  UniqueLock lk(&mu_);
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
        S3B_RETURN_IF_ERROR(ResolveLocked(e, /*for_upload=*/false, &got));
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
    BlockCv(id).wait(lk.native());
  }
  ++stats_.misses;
  CacheEntry* e = NewFetchLocked(id, /*prefetched=*/false);
  S3B_RETURN_IF_ERROR(FetchLocked(id, e->fetch_token, /*readahead=*/false, content));
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
      MutexLock lock(&mu_);
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

void CacheStore::ExportCache::DropPendingPrefetchesLocked() {
  // Entries whose read-ahead was never started would make readers wait for ever.
  for (auto [id, token] : prefetch_queue_) {
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second->fetch_token == token && it->second->fetching())
      entries_.erase(it);
  }
  prefetch_queue_.clear();
}

bool CacheStore::ExportCache::FetchStep(std::optional<Clock::time_point>* /*wake*/) {
  S3B_CACHE_CHECK_ON_RETURN();
  UniqueLock lk(&mu_);
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
  FetchBatchLocked(std::span<FetchItem>(batch.data(), n), /*readahead=*/true);
  --active_fetchers_;
  return true;
}

}  // namespace s3block
