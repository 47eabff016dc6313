#include "cache/export_cache.h"

#include <cstring>

#include "util/zero.h"

namespace s3block {

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

Status CacheStore::ExportCache::MergeLocked(UniqueLock& lk, CacheEntry* e,
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
  mu_.Unlock();
  auto merged = std::make_shared<Bytes>(block_size, 0);
  if (old) std::memcpy(merged->data(), old->data(), block_size);
  std::memcpy(merged->data() + offset, data.data(), data.size());
  std::shared_ptr<const Bytes> buf;
  if (!(zero_range && IsAllZero(merged->data(), merged->size()))) buf = std::move(merged);
  mu_.Lock();
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

Status CacheStore::ExportCache::ResolveLocked(CacheEntry* e, bool for_upload,
                                              CacheEntry** out) {
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
    mu_.Unlock();
    s = next_->Read(name_, id, &base, &found);
    mu_.Lock();
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

Status CacheStore::ExportCache::WaitForRoomLocked(UniqueLock& lk, uint64_t id,
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
      state_cv_.wait(lk.native());
      --writers_waiting_;
      // Uploads are failing: report it rather than wait for a store that may never come back.
      if (failure_epoch_ != epoch) return last_failure_;
      continue;
    }
    // No background uploaders: make room in this thread.
    const uint64_t epoch = failure_epoch_;
    if (!UploadOneLocked(lk, true)) {
      if (retry_.empty()) {
        state_cv_.wait(lk.native());  // another thread's upload is in flight
      } else {
        RequeueRetriesLocked(true, Clock::now());
      }
    }
    if (failure_epoch_ != epoch) return last_failure_;
  }
}

void CacheStore::ExportCache::WaitNotBusyLocked(UniqueLock& lk, std::span<const uint64_t> ids) {
  bool waited = false;
  for (;;) {
    bool busy = false;
    for (uint64_t id : ids) {
      auto it = entries_.find(id);
      if (it != entries_.end() && it->second->busy()) busy = true;
    }
    if (!busy) return;
    if (!waited) ++stats_.ordered_waits;
    waited = true;
    state_cv_.wait(lk.native());
  }
}

Status CacheStore::ExportCache::StoreNowLocked(UniqueLock& lk, bool fua,
                                               std::span<const uint64_t> ids,
                                               std::shared_ptr<const Bytes> buf) {
  WaitNotBusyLocked(lk, ids);
  std::vector<std::pair<CacheEntry*, uint64_t>> taken;
  taken.reserve(ids.size());
  for (uint64_t id : ids) {
    CacheEntry* e = SetContentLocked(id, buf);
    if (e->busy()) continue;  // a duplicate id in ids
    Unlink(e);
    BeginSendLocked(e, buf, uploads_started_ + 1);
    taken.emplace_back(e, e->gen);
  }
  ++uploads_started_;
  stats_.uploads_in_flight += taken.size();
  return SendLocked(ids, buf, taken, fua);
}

Status CacheStore::ExportCache::Write(uint64_t id, std::span<const uint8_t> data, bool fua) {
  S3B_CACHE_CHECK_ON_RETURN();
  std::shared_ptr<const Bytes> buf;
  const bool zero = IsAllZero(data.data(), data.size());
  // Copied unlocked; mutable, so that a later partial write may change it in place.
  if (!zero) buf = std::make_shared<Bytes>(data.begin(), data.end());
  UniqueLock lk(&mu_);
  if (zero) ++stats_.zero_writes;
  if (fua || write_through_) {
    uint64_t ids[1] = {id};
    return StoreNowLocked(lk, fua, ids, std::move(buf));
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

Status CacheStore::ExportCache::WriteBlocks(uint64_t first, uint32_t count, uint32_t block_size,
                                            const uint8_t* data, bool fua) {
  auto block = [&](uint32_t i) {
    return std::span<const uint8_t>(data + static_cast<uint64_t>(i) * block_size, block_size);
  };
  bool zeros = false;  // a delete below: block by block
  for (uint32_t i = 0; i < count && !zeros; ++i) zeros = IsAllZero(block(i).data(), block_size);
  if (zeros || (fua && !write_through_)) {
    for (uint32_t i = 0; i < count; ++i) S3B_RETURN_IF_ERROR(Write(first + i, block(i), fua));
    return Status::Ok();
  }
  S3B_CACHE_CHECK_ON_RETURN();
  if (write_through_ && static_cast<uint64_t>(count) * block_size >= kPassRunBytes) {
    bool passed = false;
    Status s = PassRun(first, count, block_size, data, fua, &passed);
    if (passed) return s;
  }
  // Copied unlocked, as Write does.
  std::vector<std::shared_ptr<const Bytes>> bufs;
  bufs.reserve(count);
  for (uint32_t i = 0; i < count; ++i)
    bufs.push_back(std::make_shared<Bytes>(block(i).begin(), block(i).end()));
  UniqueLock lk(&mu_);
  if (!fua && !write_through_) {
    for (uint32_t i = 0; i < count; ++i) {
      S3B_RETURN_IF_ERROR(WaitForRoomLocked(lk, first + i, CostOf(bufs[i])));
      SetContentLocked(first + i, std::move(bufs[i]));
    }
    EvictLocked();
    WakeUploaderIfDueLocked();
    return Status::Ok();
  }
  // The store keeps the run itself until a flush: hand it over now, as one request.
  std::vector<uint64_t> ids(count);
  for (uint32_t i = 0; i < count; ++i) ids[i] = first + i;
  WaitNotBusyLocked(lk, ids);
  std::vector<std::pair<CacheEntry*, uint64_t>> taken;
  taken.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    CacheEntry* e = SetContentLocked(ids[i], bufs[i]);
    Unlink(e);
    BeginSendLocked(e, std::move(bufs[i]), uploads_started_ + 1);
    taken.emplace_back(e, e->gen);
  }
  ++uploads_started_;
  stats_.uploads_in_flight += count;
  mu_.Unlock();
  const uint64_t bytes = static_cast<uint64_t>(count) * block_size;
  Status s = next_->OverwriteRun(name_, first, std::span<const uint8_t>(data, bytes), block_size,
                                 fua);
  mu_.Lock();
  stats_.uploads_in_flight -= count;
  stats_.store_writes += count;
  stats_.store_write_bytes += bytes;
  RecordSentLocked(taken, s);
  return s;
}

Status CacheStore::ExportCache::PassRun(uint64_t first, uint32_t count, uint32_t block_size,
                                        const uint8_t* data, bool fua, bool* passed) {
  *passed = false;
  std::vector<uint64_t> ids(count), tokens(count);
  for (uint32_t i = 0; i < count; ++i) ids[i] = first + i;
  {
    UniqueLock lk(&mu_);
    WaitNotBusyLocked(lk, ids);  // an earlier store request of a block lands first
    for (uint64_t id : ids) {
      auto it = entries_.find(id);
      if (it != entries_.end() && it->second->dirty()) return Status::Ok();
    }
    // Each block becomes a pending fetch that nobody runs: a reader waits for it as for any
    // fetch, and a fetch already pending (which would bring older content) no longer counts.
    for (uint32_t i = 0; i < count; ++i) {
      auto it = entries_.find(ids[i]);
      if (it != entries_.end() && it->second->clean()) {
        CacheEntry* e = it->second.get();
        Unlink(e);
        cached_bytes_ -= e->cost;
        --cached_blocks_;
      }
      tokens[i] = NewFetchLocked(ids[i], /*prefetched=*/false)->fetch_token;
    }
  }
  const uint64_t bytes = static_cast<uint64_t>(count) * block_size;
  Status s = next_->OverwriteRun(name_, first, std::span<const uint8_t>(data, bytes), block_size,
                                 fua);
  MutexLock lock(&mu_);
  stats_.store_writes += count;
  stats_.store_write_bytes += bytes;
  // Readers waiting now read the blocks from the store. A failed run is the caller's error: the
  // store has each block as it was or as written.
  uint32_t cvs = 0;
  for (uint32_t i = 0; i < count; ++i) {
    auto it = entries_.find(ids[i]);
    if (it != entries_.end() && it->second->fetch_token == tokens[i] && it->second->fetching())
      entries_.erase(it);
    cvs |= 1u << (ids[i] % kBlockCvs);
  }
  for (size_t c = 0; c < kBlockCvs; ++c)
    if (cvs & (1u << c)) block_cv_[c].notify_all();
  *passed = true;
  return s;
}

Status CacheStore::ExportCache::WriteRange(uint64_t id, uint32_t block_size, uint32_t offset,
                                           std::span<const uint8_t> data, bool base_zero,
                                           bool fua) {
  S3B_CACHE_CHECK_ON_RETURN();
  if (!fua && BlockOverlay::Aligned(offset, data.size())) {
    UniqueLock lk(&mu_);
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
        BlockCv(id).wait(lk.native());  // a fetch is pending: look again when it is done
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
  UniqueLock lk(&mu_);
  if (fua) {
    // Batches of at most kDeleteBatch, one store request each (a loop rather than ForEachBatch:
    // the lock analysis cannot see that its callback runs with mu_ held).
    for (size_t i = 0; i < ids.size(); i += kDeleteBatch)
      S3B_RETURN_IF_ERROR(
          StoreNowLocked(lk, /*fua=*/true, ids.subspan(i, std::min(kDeleteBatch, ids.size() - i)),
                         nullptr));
    return Status::Ok();
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

}  // namespace s3block
