#include "cache/export_cache.h"

#include "s3block/params.h"

namespace s3block {

// ---------------------------------------------------------------------------------------------
// Uploads and flushes

bool CacheStore::ExportCache::UploadStep(std::optional<Clock::time_point>* wake) {
  S3B_CACHE_CHECK_ON_RETURN();
  UniqueLock lk(&mu_);
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

bool CacheStore::ExportCache::UploadOneLocked(UniqueLock& lk, bool force) {
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
      (void)ResolveLocked(e, /*for_upload=*/true, &got);
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
  for (auto [e, gen] : taken) BeginSendLocked(e, buf, uploads_started_);
  stats_.uploads_in_flight += taken.size();
  // What is in flight no longer counts against the dirty limit: waiting writers may go on.
  if (writers_waiting_ > 0) state_cv_.notify_all();
  // Pass the baton: if work remains, an idle uploader must look at it (it may be asleep with
  // no deadline, or a later one) while this thread is busy.
  if (!ready_data_.empty() || !ready_delete_.empty()) SignalUploadsLocked(1);
  (void)SendLocked(ids, buf, taken, /*fua=*/false);
  return true;
}

Status CacheStore::ExportCache::SendLocked(std::span<const uint64_t> ids,
                                           const std::shared_ptr<const Bytes>& buf,
                                           const std::vector<std::pair<CacheEntry*, uint64_t>>& taken,
                                           bool fua) {
  mu_.Unlock();
  Status s = buf ? next_->Overwrite(name_, ids[0], *buf, fua) : next_->Delete(name_, ids, fua);
  mu_.Lock();
  stats_.uploads_in_flight -= taken.size();
  if (buf) {
    ++stats_.store_writes;
    stats_.store_write_bytes += buf->size();
  } else {
    ++stats_.store_deletes;
    stats_.store_deleted_blocks += ids.size();
  }
  RecordSentLocked(taken, s);
  return s;
}

void CacheStore::ExportCache::RecordSentLocked(
    const std::vector<std::pair<CacheEntry*, uint64_t>>& taken, const Status& s) {
  // Busy entries are never evicted, so the pointers are still good.
  for (auto [e, gen] : taken) CompleteUploadLocked(e, gen, s);
  NotifyAllLocked();
  EvictLocked();
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
  UniqueLock lk(&mu_);
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
    state_cv_.wait(lk.native());
  }
  flushes_.remove(&w);
  lk.Unlock();
  if (!s.ok()) return s;
  s = next_->Flush(name_);
  lk.Lock();
  ++stats_.store_flushes;
  return s;
}

}  // namespace s3block
