#include "s3block/cache_store.h"

#include <string>
#include <utility>
#include <vector>

#include "cache/cache_pool.h"
#include "cache/export_cache.h"
#include "s3block/params.h"

namespace s3block {

CacheStore::Ref::Ref(const CacheStore* store, ExportCache* cache) : store_(store), cache_(cache) {
  cache_->users_.fetch_add(1);
}

void CacheStore::Ref::reset() {
  if (cache_ == nullptr) return;
  ExportCache* c = std::exchange(cache_, nullptr);
  // The cache may be freed as soon as the count falls: only the store is used after.
  if (c->users_.fetch_sub(1) == ExportCache::kClosing + 1) {
    MutexLock lock(&store_->mu_);
    store_->close_cv_.notify_all();
  }
}

// ---------------------------------------------------------------------------------------------
// CacheStore

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
  MutexLock lock(&mu_);
  started_ = true;
  upload_pool_->Start();
  fetch_pool_->Start();
  for (auto& [name, cache] : exports_) cache->StartWork();
  return Status::Ok();
}

Status CacheStore::Shutdown() {
  std::vector<Ref> caches;
  {
    MutexLock lock(&mu_);
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
  MutexLock lock(&mu_);
  auto it = exports_.find(export_name);
  return it == exports_.end() ? Ref() : Ref(this, it->second.get());
}

CacheStore::Ref CacheStore::For(std::string_view export_name) {
  UniqueLock lk(&mu_);
  for (;;) {
    auto it = exports_.find(export_name);
    if (it == exports_.end()) break;
    if (!it->second->closing_) return Ref(this, it->second.get());
    close_cv_.wait(lk.native());
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
    UniqueLock lk(&mu_);
    for (;;) {
      auto it = exports_.find(export_name);
      if (it == exports_.end()) break;
      if (!it->second->closing_) {
        c = it->second.get();
        break;
      }
      close_cv_.wait(lk.native());  // closed by another call meanwhile: look again when that ends
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
      MutexLock lock(&mu_);
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
      UniqueLock lk(&mu_);
      c->users_.fetch_or(ExportCache::kClosing);
      close_cv_.wait(lk.native(), [&] { return c->users_.load() == ExportCache::kClosing; });
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
      MutexLock lock(&mu_);
      auto it = exports_.find(export_name);
      gone = std::move(it->second);
      exports_.erase(it);
      close_cv_.notify_all();
    }
  }
  return next_->CloseExport(export_name);
}

// One export's device: each call finds the export's cache (For), as a call of the store does.
class CacheStore::Device : public BlockDevice {
 public:
  Device(CacheStore* store, std::string_view name, uint32_t block_size)
      : store_(store), name_(name), block_size_(block_size) {}

  Status ReadRange(uint64_t id, uint32_t offset, std::span<uint8_t> out, ReadIntent intent,
                   bool* found) override {
    return store_->For(name_)->ReadRange(id, block_size_, offset, out, intent, found);
  }
  Status ReadBlocks(uint64_t first, uint32_t count, uint8_t* out) override {
    return store_->For(name_)->ReadBlocks(first, count, block_size_, out);
  }
  Status Write(uint64_t id, std::span<const uint8_t> data, bool fua) override {
    return store_->For(name_)->Write(id, data, fua);
  }
  Status WriteBlocks(uint64_t first, uint32_t count, const uint8_t* data, bool fua) override {
    return store_->For(name_)->WriteBlocks(first, count, block_size_, data, fua);
  }
  // Parts kept apart may turn out all zeros only when the block is stored: *deleted stays false.
  Status WriteRange(uint64_t id, uint32_t offset, std::span<const uint8_t> data, bool base_zero,
                    bool fua, bool* deleted) override {
    *deleted = false;
    return store_->For(name_)->WriteRange(id, block_size_, offset, data, base_zero, fua);
  }
  Status Delete(std::span<const uint64_t> ids, bool fua) override {
    return store_->For(name_)->Delete(ids, fua);
  }
  Status Flush() override { return store_->For(name_)->Flush(); }
  void SetPresenceHint(std::function<bool(uint64_t)> may_be_stored) override {
    if (may_be_stored) {
      store_->For(name_)->SetPresenceHint(std::move(may_be_stored));
    } else if (Ref c = store_->Find(name_)) {
      c->SetPresenceHint(nullptr);
    }
  }

 private:
  CacheStore* const store_;
  const std::string name_;
  const uint32_t block_size_;
};

std::unique_ptr<BlockDevice> CacheStore::OpenDevice(std::string_view export_name,
                                                    uint32_t block_size) {
  return std::make_unique<Device>(this, export_name, block_size);
}

Status CacheStore::Read(std::string_view e, uint64_t id, Bytes* data, bool* found) {
  return For(e)->Read(id, data, found);
}

void CacheStore::ReadBatch(std::string_view e, std::span<BlockRead> reads) {
  BlockStore::ReadBatch(e, reads);  // each through Read
}

Status CacheStore::Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool fua) {
  return For(e)->Write(id, data, fua);
}

Status CacheStore::Overwrite(std::string_view e, uint64_t id, std::span<const uint8_t> data,
                             bool fua) {
  return BlockStore::Overwrite(e, id, data, fua);  // Write
}

Status CacheStore::Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) {
  return For(e)->Delete(ids, fua);
}

Status CacheStore::Flush(std::string_view e) { return For(e)->Flush(); }

Status CacheStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id,
                             bool* found) {
  return BlockStore::CopyBlock(from, to, id, found);  // Read, then Write
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
    MutexLock lock(&mu_);
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
