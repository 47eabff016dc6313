#include "s3block/volume.h"

#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <cstring>
#include <vector>

#include "util/host.h"
#include "util/zero.h"

namespace s3block {

std::string DescribeThisProcess(const std::string& program) {
  std::string host = HostName();
  if (host.empty()) host = "unknown-host";
  char when[32] = "";
  std::time_t now = std::time(nullptr);
  struct tm tm;
  ::gmtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return program + " pid " + std::to_string(::getpid()) + " on " + host + " since " + when;
}

Volume::Volume(const StoreStack& stack, std::string name, ExportMeta meta, bool readonly)
    : store_(stack.store),
      name_(std::move(name)),
      meta_(meta),
      readonly_(readonly),
      trust_presence_(!readonly),
      presence_(meta.block_count()),
      device_(stack.OpenDevice(name_, meta.block_size)) {}

Volume::~Volume() {
  if (trust_presence_) device_->SetPresenceHint(nullptr);
}

namespace {

// What Open makes of the export's metadata document (found or not): the metadata to serve, or
// the refusal. Called again once the lease is held, with what is read then.
Status DecideMeta(std::string_view name, const std::string& where, const VolumeOptions& options,
                  bool found, const std::string& text, ExportMeta* meta,
                  std::string* encoding_note) {
  *meta = ExportMeta();
  encoding_note->clear();
  if (found) {
    S3B_RETURN_IF_ERROR(ExportMeta::Parse(name, text, meta));
    if (meta->state == ExportMeta::State::kIncomplete) {
      return Status::Error(EBUSY, where + " is incomplete: an import or copy into it did not "
                                          "finish; run it again, or delete the export");
    }
    if (meta->state == ExportMeta::State::kDeleting) {
      return Status::Error(EBUSY, where + " is being deleted; run the delete again to finish it");
    }
    if (options.block_size_explicit && meta->block_size != options.block_size) {
      return Status::InvalidArgument(
          where + " has block size " + HumanSize(meta->block_size) + ", but block-size=" +
          HumanSize(options.block_size) + " was given; omit block-size or give " +
          std::to_string(meta->block_size));
    }
    if (options.encoding_explicit && !meta->encoding.SameChoices(options.encoding)) {
      *encoding_note = where + " keeps the block encoding it was created with (" +
                       meta->encoding.Describe() + "); the encoding given (" +
                       options.encoding.Describe() + ") applies only to new exports";
    }
    if (options.layout_explicit && meta->layout != options.layout) {
      if (!encoding_note->empty()) *encoding_note += "; ";
      *encoding_note += where + " keeps the layout it was created with (" +
                        LayoutName(meta->layout) + "); layout=" + LayoutName(options.layout) +
                        " applies only to new exports";
    }
    return Status::Ok();
  }
  if (!options.create) return Status::Error(ENOENT, where + " does not exist");
  if (options.size > kMaxExportSize)
    return Status::InvalidArgument("size " + HumanSize(options.size) + " is too large");
  meta->size = options.size;
  meta->block_size = options.block_size;
  meta->encoding = options.encoding;
  meta->layout = options.layout;
  return CheckLayoutBlockSize(meta->layout, meta->block_size);
}

}  // namespace

Status Volume::Open(const StoreStack& stack, std::string_view name,
                    const VolumeOptions& options, std::shared_ptr<Volume>* out) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  BlockStore* const store = stack.store.get();
  const std::string where = "export '" + QuoteForMessage(name) + "' in " + store->Describe();
  std::string text;
  bool found = false;
  ExportMeta meta;
  bool created = false;
  std::string encoding_note;
  // A first look refuses what can be refused without claiming the export (and without leaving
  // a lease behind for a name that does not exist).
  S3B_RETURN_IF_ERROR(store->ReadMeta(name, &text, &found).Annotate(where));
  S3B_RETURN_IF_ERROR(DecideMeta(name, where, options, found, text, &meta, &encoding_note));
  // Claim the export before writing anything or building the presence map: a second writer
  // would make both wrong.
  std::unique_ptr<ExportLease> lease;
  std::string lease_warning;
  if (!options.readonly && options.lock) {
    std::string holder =
        options.holder.empty() ? DescribeThisProcess("nbd-s3-backend") : options.holder;
    Status s = store->AcquireLease(name, holder, options.force, &lease);
    if (s.IsNotSupported()) {
      lease_warning = s.message() + "; make sure no other server writes to export '" +
                      QuoteForMessage(name) + "'";
    } else if (!s.ok()) {
      return s;
    }
  }
  if (lease) {
    // An admin command (create, import, delete) may have finished between the first look and
    // the claim: only what is read under the lease is the export as it stays while we serve it.
    text.clear();
    found = false;
    S3B_RETURN_IF_ERROR(store->ReadMeta(name, &text, &found).Annotate(where));
    Status d = DecideMeta(name, where, options, found, text, &meta, &encoding_note);
    if (!d.ok()) {
      if (!found) {
        // Deleted under us: the claim may have made the store's place for the export again (a
        // directory and its lock file); remove that, as the delete did, if nothing is in it.
        bool has_blocks = false;
        if (store->ListBlocks(name, [&](uint64_t) { has_blocks = true; }).ok() && !has_blocks)
          (void)store->DeleteMeta(name);
      }
      return d;
    }
  }
  if (meta.block_count() > kMaxExportBlocks) {
    return Status::InvalidArgument(where + ": size " + HumanSize(meta.size) + " at block size " +
                                   HumanSize(meta.block_size) +
                                   " is too many blocks; use a larger block size");
  }
  if (!found && !options.readonly) {
    // Blocks without metadata are served as they are: that is the layout the specification's
    // first version wrote. Recording the metadata now fixes the size and block size, and keeps
    // such blocks raw: recording another encoding would make them unreadable.
    if (!meta.encoding.raw() || meta.layout != ExportLayout::kBlocks) {
      bool has_blocks = false;
      S3B_RETURN_IF_ERROR(
          store->ListBlocks(name, [&](uint64_t) { has_blocks = true; }).Annotate(where));
      if (has_blocks) {
        encoding_note = where + " has blocks but no metadata (the first version's layout): its "
                                "blocks stay raw, one object each; the encoding (" +
                        meta.encoding.Describe() + ") and layout (" + LayoutName(meta.layout) +
                        ") given apply only to new exports";
        meta.encoding = BlockEncoding();
        meta.layout = ExportLayout::kBlocks;
      }
    }
    S3B_RETURN_IF_ERROR(store->WriteMeta(name, meta.Serialize()).Annotate(where));
    created = true;
  }
  std::shared_ptr<Volume> v(new Volume(stack, std::string(name), meta, options.readonly));
  v->created_ = created;
  v->lease_.store(std::shared_ptr<ExportLease>(std::move(lease)));
  v->lease_warning_ = std::move(lease_warning);
  v->encoding_note_ = std::move(encoding_note);
  S3B_RETURN_IF_ERROR(
      store->ListBlocks(name, [&](uint64_t id) { v->presence_.Set(id); }).Annotate(where));
  if (v->trust_presence_) {
    // A device that reads ahead (the cache's) skips blocks we know are not stored.
    std::weak_ptr<Volume> weak = v;
    v->device_->SetPresenceHint([weak](uint64_t id) {
      std::shared_ptr<Volume> live = weak.lock();
      return !live || live->presence_.Test(id);
    });
  }
  *out = std::move(v);
  return Status::Ok();
}

Status Volume::CheckRange(uint64_t count, uint64_t offset, bool write) const {
  if (write && readonly_)
    return Status::Error(EROFS, "export '" + QuoteForMessage(name_) + "' is read-only");
  if (write && closed_.load(std::memory_order_acquire))
    return Status::Error(ESHUTDOWN, "export '" + QuoteForMessage(name_) + "' has been closed");
  if (write) {
    if (auto lease = lease_.load()) S3B_RETURN_IF_ERROR(lease->Valid());
  }
  if (offset > meta_.size || count > meta_.size - offset) {
    return Status::Error(write ? ENOSPC : EINVAL,
                         "request at offset " + std::to_string(offset) + " length " +
                             std::to_string(count) + " is past the end of export '" +
                             QuoteForMessage(name_) + "' (size " + std::to_string(meta_.size) + ")");
  }
  return Status::Ok();
}

Status Volume::ReadRange(uint64_t id, uint32_t in, uint32_t n, uint8_t* out, ReadIntent intent) {
  if (KnownNotStored(id)) {
    std::memset(out, 0, n);
    return Status::Ok();
  }
  bool found = false;
  Status s = device_->ReadRange(id, in, std::span<uint8_t>(out, n), intent, &found);
  if (!s.ok()) {
    return s.Annotate("read block " + std::to_string(id) + " of export '" +
                      QuoteForMessage(name_) + "'");
  }
  if (!found) std::memset(out, 0, n);
  return Status::Ok();
}

Status Volume::ReadBlocks(uint64_t first, uint32_t count, uint8_t* out) {
  Status s = device_->ReadBlocks(first, count, out);
  if (!s.ok()) {
    return s.Annotate("read blocks " + std::to_string(first) + " to " +
                      std::to_string(first + count - 1) + " of export '" +
                      QuoteForMessage(name_) + "'");
  }
  return Status::Ok();
}

Status Volume::StoreBlockLocked(uint64_t id, const uint8_t* data, bool fua, bool keep_zero) {
  if (!keep_zero && IsAllZero(data, meta_.block_size)) {
    stats_.zero_blocks_elided.fetch_add(1, std::memory_order_relaxed);
    if (KnownNotStored(id)) return Status::Ok();
    uint64_t ids[1] = {id};
    S3B_RETURN_IF_ERROR(device_->Delete(ids, fua));
    presence_.Clear(id);
    return Status::Ok();
  }
  presence_.Set(id);  // before the write: a set bit only means "may be stored"
  return device_->Write(id, std::span<const uint8_t>(data, meta_.block_size), fua);
}

Status Volume::WritePartial(uint64_t id, uint32_t off, uint32_t len, const uint8_t* data,
                            bool fua) {
  return WritePartialImpl(id, off, len, data, fua, /*keep_zero=*/false);
}

Status Volume::WritePartialImpl(uint64_t id, uint32_t off, uint32_t len, const uint8_t* data,
                                bool fua, bool keep_zero) {
  std::lock_guard<std::mutex> lock(LockFor(id));
  if (!keep_zero) {
    thread_local Bytes zeros;
    if (data == nullptr) {
      zeros.assign(len, 0);
      data = zeros.data();
    }
    // Known under the block's lock, before the bit is set (a set bit means "may be stored").
    const bool base_zero = KnownNotStored(id);
    if (base_zero && IsAllZero(data, len))
      return Status::Ok();  // zeros into a block that reads as zeros anyway
    presence_.Set(id);
    bool deleted = false;
    Status s =
        device_->WriteRange(id, off, std::span<const uint8_t>(data, len), base_zero, fua, &deleted);
    if (!s.ok()) {
      return s.Annotate("write block " + std::to_string(id) + " of export '" +
                        QuoteForMessage(name_) + "'");
    }
    if (deleted) presence_.Clear(id);
    return Status::Ok();
  }
  thread_local Bytes buf;
  buf.resize(meta_.block_size);
  S3B_RETURN_IF_ERROR(ReadRange(id, 0, meta_.block_size, buf.data(), ReadIntent::kPartialWrite));
  if (data != nullptr)
    std::memcpy(buf.data() + off, data, len);
  else
    std::memset(buf.data() + off, 0, len);
  stats_.rmw_blocks.fetch_add(1, std::memory_order_relaxed);
  return StoreBlockLocked(id, buf.data(), fua, keep_zero);
}

Volume::Piece Volume::PieceAt(uint64_t pos, uint64_t end) const {
  const uint32_t bs = meta_.block_size;
  Piece p;
  p.id = pos / bs;
  p.in = static_cast<uint32_t>(pos % bs);
  uint64_t n = std::min<uint64_t>(bs - p.in, end - pos);
  p.n = static_cast<uint32_t>(n);
  // Bytes past the end of the export are never visible, so a piece from the start of the last
  // block to the end of the export counts as the whole block.
  p.full = p.in == 0 && (p.n == bs || pos + n == meta_.size);
  return p;
}

Status Volume::Read(uint8_t* buf, uint64_t count, uint64_t offset) {
  S3B_RETURN_IF_ERROR(CheckRange(count, offset, false));
  stats_.reads.fetch_add(1, std::memory_order_relaxed);
  const uint64_t end = offset + count;
  uint64_t pos = offset;
  const uint32_t bs = meta_.block_size;
  while (pos < end) {
    Piece p = PieceAt(pos, end);
    if (p.in == 0 && p.n == bs && !KnownNotStored(p.id)) {
      // A run of whole blocks that may be stored, read with one call (the cache takes its lock
      // once for many of them).
      uint32_t count = 1;
      while (count < (end - pos) / bs && !KnownNotStored(p.id + count))
        ++count;
      S3B_RETURN_IF_ERROR(ReadBlocks(p.id, count, buf));
      buf += static_cast<uint64_t>(count) * bs;
      pos += static_cast<uint64_t>(count) * bs;
      continue;
    }
    // Only the bytes asked for, straight into the caller's buffer: a 4 KiB read of a 1 MiB
    // cached block copies 4 KiB.
    S3B_RETURN_IF_ERROR(ReadRange(p.id, p.in, p.n, buf, ReadIntent::kRead));
    buf += p.n;
    pos += p.n;
  }
  stats_.bytes_read.fetch_add(count, std::memory_order_relaxed);
  return Status::Ok();
}

Status Volume::Write(const uint8_t* buf, uint64_t count, uint64_t offset, bool fua) {
  S3B_RETURN_IF_ERROR(CheckRange(count, offset, true));
  stats_.writes.fetch_add(1, std::memory_order_relaxed);
  const uint32_t bs = meta_.block_size;
  const uint64_t end = offset + count;
  // One block: ask the store for a durable write of just that block. Several: write them all,
  // then one flush, which costs less than a sync per block.
  const bool single = count > 0 && offset / bs == (end - 1) / bs;
  thread_local Bytes padded;
  const auto max_run = static_cast<uint32_t>(std::clamp<uint64_t>(kRunBytes / bs, 1, kRunBlocks));
  uint64_t pos = offset;
  while (pos < end) {
    Piece p = PieceAt(pos, end);
    if (p.full && p.n == bs && !IsAllZero(buf, bs)) {
      // A run of whole blocks with data: one call of the device.
      uint32_t n = 1;
      while (n < max_run && end - pos >= static_cast<uint64_t>(n + 1) * bs &&
             !IsAllZero(buf + static_cast<uint64_t>(n) * bs, bs))
        ++n;
      if (n > 1) {
        uint64_t ids[kRunBlocks];
        for (uint32_t i = 0; i < n; ++i) ids[i] = p.id + i;
        RunLock lock(this, std::span<const uint64_t>(ids, n));
        for (uint32_t i = 0; i < n; ++i) presence_.Set(ids[i]);  // before: "may be stored"
        Status s = device_->WriteBlocks(p.id, n, buf, false);
        if (!s.ok()) {
          return s.Annotate("write blocks " + std::to_string(p.id) + " to " +
                            std::to_string(p.id + n - 1) + " of export '" +
                            QuoteForMessage(name_) + "'");
        }
        buf += static_cast<uint64_t>(n) * bs;
        pos += static_cast<uint64_t>(n) * bs;
        continue;
      }
    }
    if (p.full) {
      const uint8_t* data = buf;
      if (p.n != bs) {  // the last block of an export whose size is not a multiple of it
        padded.assign(bs, 0);
        std::memcpy(padded.data(), buf, p.n);
        data = padded.data();
      }
      std::lock_guard<std::mutex> lock(LockFor(p.id));
      S3B_RETURN_IF_ERROR(StoreBlockLocked(p.id, data, fua && single, false));
    } else {
      S3B_RETURN_IF_ERROR(WritePartial(p.id, p.in, p.n, buf, fua && single));
    }
    buf += p.n;
    pos += p.n;
  }
  stats_.bytes_written.fetch_add(count, std::memory_order_relaxed);
  if (fua && !single && count > 0) return Flush();
  return Status::Ok();
}

Volume::RunLock::RunLock(Volume* v, std::span<const uint64_t> ids) : v_(v) {
  stripes_.reserve(ids.size());
  for (uint64_t id : ids) stripes_.push_back(id % v_->locks_.size());
  std::sort(stripes_.begin(), stripes_.end());
  stripes_.erase(std::unique(stripes_.begin(), stripes_.end()), stripes_.end());
  for (size_t s : stripes_) v_->locks_[s].lock();
}

Volume::RunLock::~RunLock() {
  for (auto it = stripes_.rbegin(); it != stripes_.rend(); ++it) v_->locks_[*it].unlock();
}

Status Volume::DeleteRange(uint64_t first, uint64_t last, bool fua) {
  std::vector<uint64_t> batch;
  batch.reserve(kDeleteBatch);
  auto flush_batch = [&]() -> Status {
    if (batch.empty()) return Status::Ok();
    Status st;
    {
      RunLock lock(this, batch);
      st = device_->Delete(batch, fua);
      if (st.ok())
        for (uint64_t id : batch) presence_.Clear(id);
    }
    batch.clear();
    return st;
  };
  uint64_t id = first;
  while (id < last) {
    if (trust_presence_) {
      id = presence_.FindNext(id, last, true);
      if (id >= last) break;
    }
    batch.push_back(id++);
    if (batch.size() == kDeleteBatch) S3B_RETURN_IF_ERROR(flush_batch());
  }
  return flush_batch();
}

Status Volume::ZeroRange(uint64_t count, uint64_t offset, bool deallocate, bool fua) {
  S3B_RETURN_IF_ERROR(CheckRange(count, offset, true));
  if (count == 0) return Status::Ok();
  const uint32_t bs = meta_.block_size;
  const uint64_t end = offset + count;
  uint64_t pos = offset;
  Piece head = PieceAt(pos, end);
  if (!head.full) {
    S3B_RETURN_IF_ERROR(WritePartialImpl(head.id, head.in, head.n, nullptr, false, !deallocate));
    pos += head.n;
  }
  if (pos < end) {
    const uint64_t first = pos / bs;
    const uint64_t tail_id = (end - 1) / bs;
    Piece tail = PieceAt(std::max(tail_id * bs, pos), end);
    uint64_t run_end = tail_id + 1;
    if (!tail.full) {
      S3B_RETURN_IF_ERROR(WritePartialImpl(tail.id, tail.in, tail.n, nullptr, false, !deallocate));
      run_end = tail_id;
    }
    if (first < run_end) {
      if (deallocate) {
        S3B_RETURN_IF_ERROR(DeleteRange(first, run_end, false));
      } else {
        Bytes zeros(bs, 0);
        for (uint64_t id = first; id < run_end; ++id) {
          std::lock_guard<std::mutex> lock(LockFor(id));
          S3B_RETURN_IF_ERROR(StoreBlockLocked(id, zeros.data(), false, true));
        }
      }
    }
  }
  if (fua) return Flush();
  return Status::Ok();
}

Status Volume::Trim(uint64_t count, uint64_t offset, bool fua) {
  stats_.trims.fetch_add(1, std::memory_order_relaxed);
  return ZeroRange(count, offset, /*deallocate=*/true, fua);
}

Status Volume::Zero(uint64_t count, uint64_t offset, bool may_trim, bool fast_zero, bool fua) {
  stats_.zeros.fetch_add(1, std::memory_order_relaxed);
  if (!may_trim && fast_zero) {
    S3B_RETURN_IF_ERROR(CheckRange(count, offset, true));
    return Status::NotSupported("zeroing without trimming is no faster than writing zeros");
  }
  return ZeroRange(count, offset, /*deallocate=*/may_trim, fua);
}

Status Volume::Flush() {
  stats_.flushes.fetch_add(1, std::memory_order_relaxed);
  if (readonly_) return Status::Ok();
  if (auto lease = lease_.load()) S3B_RETURN_IF_ERROR(lease->Valid());
  return device_->Flush().Annotate("flush export '" + QuoteForMessage(name_) + "'");
}

Status Volume::Close(std::shared_ptr<ExportLease>* lease) {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (closed_.load()) return Status::Ok();
  Status s = Flush();
  closed_.store(true, std::memory_order_release);
  // Writes already past their check may still be running; the store keeps them durable on its
  // own (a PUT that returned is stored) or they are lost with the process, as unflushed writes
  // may be. The lease goes only after the flush, so nobody else writes before ours are stored.
  std::shared_ptr<ExportLease> held = lease_.exchange(nullptr);
  if (lease) *lease = std::move(held);
  return s;
}

Status Volume::Extents(uint64_t count, uint64_t offset,
                       const std::function<bool(uint64_t, uint64_t, bool)>& fn) {
  S3B_RETURN_IF_ERROR(CheckRange(count, offset, false));
  const uint32_t bs = meta_.block_size;
  const uint64_t end = offset + count;
  if (!trust_presence_) {
    if (count > 0) fn(offset, count, false);
    return Status::Ok();
  }
  const uint64_t limit = (end + bs - 1) / bs;
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t id = pos / bs;
    const bool present = presence_.Test(id);
    const uint64_t next = presence_.FindNext(id + 1, limit, !present);
    const uint64_t run_end = std::min(next * bs, end);
    if (!fn(pos, run_end - pos, !present)) break;
    pos = run_end;
  }
  return Status::Ok();
}

VolumeStats Volume::Stats() const {
  VolumeStats s;
  s.reads = stats_.reads.load();
  s.writes = stats_.writes.load();
  s.trims = stats_.trims.load();
  s.zeros = stats_.zeros.load();
  s.flushes = stats_.flushes.load();
  s.bytes_read = stats_.bytes_read.load();
  s.bytes_written = stats_.bytes_written.load();
  s.rmw_blocks = stats_.rmw_blocks.load();
  s.zero_blocks_elided = stats_.zero_blocks_elided.load();
  return s;
}

}  // namespace s3block
