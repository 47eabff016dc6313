#include "cache/export_cache.h"

#include <cstdio>
#include <cstdlib>
#include <unordered_set>

#include "cache/cache_pool.h"

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

// ---------------------------------------------------------------------------------------------
// Pool work

void CacheStore::ExportCache::SignalUploadsLocked(uint32_t n) {
  if (running_) uploads_->Signal(this, n);
}

void CacheStore::ExportCache::SignalFetchesLocked(uint32_t n) {
  if (running_) fetches_->Signal(this, n);
}

void CacheStore::ExportCache::StartWork() {
  S3B_CACHE_CHECK_ON_RETURN();
  MutexLock lock(&mu_);
  if (running_) return;
  running_ = true;
  // Dirty blocks may be waiting already.
  SignalUploadsLocked(1);
}

void CacheStore::ExportCache::StopWork() {
  S3B_CACHE_CHECK_ON_RETURN();
  MutexLock lock(&mu_);
  if (!running_) return;
  running_ = false;
  DropPendingPrefetchesLocked();
  // Writers waiting for uploaders make room themselves now.
  NotifyAllLocked();
}

Status CacheStore::ExportCache::ListBlocks(const std::function<void(uint64_t)>& fn) {
  std::unordered_set<uint64_t> written, deleted;
  {
    MutexLock lock(&mu_);
    for (const auto& [seq, e] : dirty_) (e->data || e->overlay ? written : deleted).insert(e->id);
  }
  S3B_RETURN_IF_ERROR(next_->ListBlocks(name_, [&](uint64_t id) {
    if (!written.count(id) && !deleted.count(id)) fn(id);
  }));
  for (uint64_t id : written) fn(id);
  return Status::Ok();
}

CacheStats CacheStore::ExportCache::Stats() const {
  MutexLock lock(&mu_);
  CacheStats s = stats_;
  s.flushes_in_progress = flushes_.size();
  s.dirty_bytes = dirty_bytes_;
  s.dirty_blocks = dirty_.size();
  s.cached_bytes = cached_bytes_;
  s.cached_blocks = cached_blocks_;
  return s;
}

}  // namespace s3block
