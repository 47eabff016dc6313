#include "log/log_export.h"

#include <algorithm>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include "log/checkpoint.h"
#include "log/little_endian.h"
#include "util/crc32c.h"

namespace s3block::log {
namespace {

using Clock = std::chrono::steady_clock;

// How many bytes of a segment's head one read takes first: the heads of segments of 4K blocks
// up to about 10 MiB fit.
constexpr uint64_t kHeadProbe = 64 << 10;
// Frames closer than this in one segment are read with one request (the gap read and dropped).
constexpr uint64_t kCoalesceGap = 64 << 10;
constexpr uint64_t kMaxRangeRead = 8ull << 20;
// After a crash, what lies after the run may be a crashed writer's: this many seqs are deleted.
constexpr uint64_t kDanglingSeqs = 64;
// A collector pass rewrites at most this much.
constexpr uint64_t kGcBudgetBytes = 256ull << 20;
// Reads of a range, or of a segment's head, before what fails its checks is called damaged.
constexpr int kFrameReads = 8;

// The payload of the frame at [offset, offset + length) of a segment in memory, into *out.
void CopyPayload(std::span<const uint8_t> segment, uint32_t offset, uint32_t length, Bytes* out) {
  const std::span<const uint8_t> frame = segment.subspan(offset, length);
  const uint32_t size = LoadLe32(frame.data());
  out->assign(frame.begin() + kFrameHeaderBytes, frame.begin() + kFrameHeaderBytes + size);
}

}  // namespace

struct LogExport::Frame {
  uint32_t offset = 0;  // in open_frames_
  uint32_t length = 0;  // of the frame; 0: a deletion
  uint32_t crc = 0;
};

struct LogExport::Sealed {
  uint64_t seq = 0;
  SegmentHeader header;
  std::vector<uint8_t> bytes;
  std::unordered_map<uint64_t, uint32_t> index;  // block id -> entry
  enum class State { kQueued, kStored, kFailed } state = State::kQueued;
  Status error;
};

LogExport::LogExport(std::shared_ptr<ObjectTransport> transport, std::string name,
                     const LogOptions& options, WriteFence fence)
    : transport_(std::move(transport)), name_(std::move(name)), options_(options),
      fence_(std::move(fence)) {}

LogExport::~LogExport() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (housekeeper_.joinable()) housekeeper_.join();
  for (std::thread& t : uploaders_) t.join();
}

Status LogExport::Open(std::shared_ptr<ObjectTransport> transport, std::string name,
                       const LogOptions& options, WriteFence fence,
                       std::unique_ptr<LogExport>* out, std::unique_ptr<LogExport> base,
                       std::string base_name) {
  std::unique_ptr<LogExport> e(
      new LogExport(std::move(transport), std::move(name), options, std::move(fence)));
  e->base_ = std::move(base);
  e->base_name_ = std::move(base_name);
  S3B_RETURN_IF_ERROR(e->Load());
  *out = std::move(e);
  return Status::Ok();
}

Status LogExport::OpenSnapshot(std::shared_ptr<ObjectTransport> transport, std::string name,
                               const SnapshotRecord& record, const LogOptions& options,
                               std::unique_ptr<LogExport>* out, std::unique_ptr<LogExport> base) {
  std::unique_ptr<LogExport> e(new LogExport(std::move(transport), std::move(name), options, {}));
  e->view_ = true;
  e->base_ = std::move(base);
  e->base_name_ = record.base;
  S3B_RETURN_IF_ERROR(e->LoadSnapshot(record));
  *out = std::move(e);
  return Status::Ok();
}

Status LogExport::ReadHead(uint64_t seq, SegmentHeader* header, bool* bad, bool* misnamed) {
  const std::string key = SegmentKey(name_, seq);
  const std::string where = "segment " + key + " in " + transport_->Describe();
  if (bad) *bad = false;
  if (misnamed) *misnamed = false;
  auto invalid = [&](Status why) {
    if (bad) *bad = true;
    return why;
  };
  // A head that does not check out may have been damaged on the way (S3 checks only whole
  // objects): read again before calling the stored one invalid.
  Status s;
  for (int attempt = 0; attempt < kFrameReads; ++attempt) {
    std::vector<uint8_t> bytes;
    S3B_RETURN_IF_ERROR(transport_->GetRange(key, 0, kHeadProbe, &bytes));
    uint64_t need = 0;
    s = ParseSegmentHead(bytes, where, header, &need);
    if (s.ok() && need > bytes.size()) {
      S3B_RETURN_IF_ERROR(transport_->GetRange(key, 0, need, &bytes));
      s = ParseSegmentHead(bytes, where, header, &need);
      if (s.ok() && need) s = Status::IoError(where + " is cut short");
    }
    if (s.ok() && header->seq != seq) {
      // Another segment's copy under this key (never one of ours: a writer's segment always
      // names its own seq, and is stored only if the key is free): the run ends before it, and
      // it is no acknowledged data, so a writer may remove it.
      if (misnamed) *misnamed = true;
      return Status::IoError(where + " is not that segment: it says it is segment " +
                             std::to_string(header->seq));
    }
    if (s.ok()) return s;
  }
  return invalid(s);
}

uint32_t LogExport::AllocSlotLocked() {
  if (!free_slots_.empty()) {
    const uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  slots_.emplace_back();
  return static_cast<uint32_t>(slots_.size() - 1);
}

void LogExport::ApplyEntries(const SegmentHeader& header) {
  const uint32_t slot = AllocSlotLocked();
  Slot& s = slots_[slot];
  s = Slot{header.seq, header.total_size, 0, true};
  for (const SegmentEntry& e : header.entries) {
    Loc old;
    bool had = false;
    if (e.deleted()) {
      // A clone's deletion hides its base's block too.
      had = base_name_.empty() ? map_.Erase(e.id, &old) : map_.Set(e.id, kTombstone, &old);
    } else {
      had = map_.Set(e.id, Loc{slot, e.offset, e.length}, &old);
      slots_[slot].live += e.length;
    }
    if (had && !IsTombstone(old)) {
      Slot& o = slots_[old.slot];
      o.live -= old.length;
      if (o.live == 0) o.dead_at = header.seq;
    }
  }
  if (slots_[slot].live == 0) slots_[slot].dead_at = header.seq;
  applied_seq_ = header.seq;
  epoch_ = std::max(epoch_, header.epoch);
}

Status LogExport::LoadCheckpointLocked(uint64_t seq) {
  CheckpointInfo info;
  S3B_RETURN_IF_ERROR(ReadCheckpoint(*transport_, name_, seq, &info, &map_));
  {
    for (const CheckpointSlot& cs : info.slots) {
      if (cs.slot >= slots_.size()) slots_.resize(cs.slot + 1);
      slots_[cs.slot] = Slot{cs.seq, cs.size, 0, true};
    }
    Status bad;
    // Before any other thread, as all of Load.
    map_.ForEach([&](uint64_t id, const Loc& loc) NO_THREAD_SAFETY_ANALYSIS {
      if (IsTombstone(loc)) return;
      if (loc.slot >= slots_.size() || !slots_[loc.slot].used) {
        if (bad.ok())
          bad = Status::IoError("checkpoint " + CheckpointKey(name_, info.seq) + " in " +
                                transport_->Describe() + " is corrupt: block " +
                                std::to_string(id) + " is in no segment it lists");
        return;
      }
      slots_[loc.slot].live += loc.length;
    });
    S3B_RETURN_IF_ERROR(bad);
    for (uint32_t i = 0; i < slots_.size(); ++i)
      if (!slots_[i].used) free_slots_.push_back(i);
    std::reverse(free_slots_.begin(), free_slots_.end());
    applied_seq_ = checkpoint_seq_ = info.seq;
    epoch_ = info.epoch;
    kept_ = std::move(info.kept);
  }
  return Status::Ok();
}

Status LogExport::Load() {
  std::vector<uint64_t> roots;
  S3B_RETURN_IF_ERROR(ListCheckpoints(*transport_, name_, &roots, nullptr));
  if (!roots.empty()) S3B_RETURN_IF_ERROR(LoadCheckpointLocked(roots.back()));
  std::vector<SnapshotRecord> snapshots;
  S3B_RETURN_IF_ERROR(ListSnapshots(*transport_, name_, &snapshots).Annotate("export '" + name_ + "'"));
  for (SnapshotRecord& r : snapshots) snapshots_.emplace(r.name, std::move(r));
  S3B_RETURN_IF_ERROR(ListCloneMarkers(*transport_, name_, &clones_).Annotate("export '" + name_ + "'"));
  // The unbroken run after the checkpoint. A damaged segment ends it: neither it nor anything
  // after it is applied, nor ever written over (see BecomeWriterLocked).
  std::vector<SegmentHeader> run;
  S3B_RETURN_IF_ERROR(ReadRun(applied_seq_ + 1, &run, &damaged_).Annotate("export '" + name_ + "'"));
  RollbackViews views;
  S3B_RETURN_IF_ERROR(LoadRollbackViews(run, &views).Annotate("export '" + name_ + "'"));
  ApplyRunLocked(run, views);
  next_seq_ = applied_seq_ + 1;
  checkpoint_time_ = Clock::now();
  return Status::Ok();
}

Status LogExport::LoadSnapshot(const SnapshotRecord& record) {
  const std::string what = "snapshot '" + record.name + "' of export '" + name_ + "' in " +
                           transport_->Describe();
  if (record.checkpoint > 0) {
    Status s = LoadCheckpointLocked(record.checkpoint);
    if (s.IsNotFound()) return Status::IoError(what + " is damaged: its checkpoint is missing");
    S3B_RETURN_IF_ERROR(s.Annotate(what));
  }
  // Exactly the segments up to the snapshot's last: each of them is kept for it, so one missing
  // or invalid is damage, not the end of a run.
  std::vector<SegmentHeader> run;
  for (uint64_t seq = record.checkpoint + 1; seq <= record.seq; ++seq) {
    SegmentHeader h;
    Status s = ReadHead(seq, &h);
    if (s.IsNotFound())
      return Status::IoError(what + " is damaged: segment " + std::to_string(seq) + " is missing");
    S3B_RETURN_IF_ERROR(s.Annotate(what));
    run.push_back(std::move(h));
  }
  RollbackViews views;
  S3B_RETURN_IF_ERROR(LoadRollbackViews(run, &views).Annotate(what));
  ApplyRunLocked(run, views);
  next_seq_ = applied_seq_ + 1;
  return Status::Ok();
}

Status LogExport::ReadRun(uint64_t first, std::vector<SegmentHeader>* heads, Status* damaged) {
  for (uint64_t seq = first;; ++seq) {
    SegmentHeader h;
    bool bad = false, misnamed = false;
    Status s = ReadHead(seq, &h, &bad, &misnamed);
    if (s.IsNotFound() || misnamed) return Status::Ok();  // the end of the run
    if (bad) {
      *damaged = s;
      return Status::Ok();
    }
    S3B_RETURN_IF_ERROR(s);
    heads->push_back(std::move(h));
  }
}

Status LogExport::LoadRollbackViews(const std::vector<SegmentHeader>& heads, RollbackViews* views) {
  for (const SegmentHeader& h : heads) {
    if (!h.rollback) continue;
    SnapshotRecord r;
    r.name = "of rollback mark " + std::to_string(h.seq);
    r.checkpoint = h.rollback->checkpoint;
    r.seq = h.rollback->seq;
    r.base = base_name_;
    std::unique_ptr<LogExport> view;
    S3B_RETURN_IF_ERROR(OpenSnapshot(transport_, name_, r, options_, &view));
    (*views)[h.seq] = std::move(view);
  }
  return Status::Ok();
}

void LogExport::ApplyRunLocked(const std::vector<SegmentHeader>& heads,
                               const RollbackViews& views) {
  for (const SegmentHeader& h : heads) {
    if (h.epoch < epoch_) {
      // A stale writer's, after a newer writer's first segment: never applied.
      skipped_.push_back(h.seq);
      applied_seq_ = h.seq;
    } else if (auto v = views.find(h.seq); v != views.end()) {
      ApplyRollbackLocked(h, *v->second);
    } else {
      ApplyEntries(h);
    }
  }
}

void LogExport::ApplyRollbackLocked(const SegmentHeader& mark, LogExport& view) {
  std::vector<Slot> old = std::move(slots_);
  {
    MutexLock v(&view.mu_);
    map_ = view.map_;
    slots_ = std::move(view.slots_);
  }
  // The view's dead segments are this export's already: kept for a snapshot, or deleted.
  free_slots_.clear();
  std::unordered_set<uint64_t> used;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].used && slots_[i].live == 0) slots_[i] = Slot();
    if (slots_[i].used) used.insert(slots_[i].seq);
    else free_slots_.push_back(i);
  }
  std::reverse(free_slots_.begin(), free_slots_.end());
  // What the snapshot reads is live again, no longer kept for it.
  std::erase_if(kept_, [&](const KeptSegment& k) { return used.count(k.seq) != 0; });
  for (const Slot& o : old) {
    if (!o.used || used.count(o.seq)) continue;
    const uint32_t i = AllocSlotLocked();
    slots_[i] = Slot{o.seq, o.size, 0, true, o.live > 0 ? mark.seq : o.dead_at};
  }
  ApplyEntries(mark);  // its own slot, dead at once
  rollback_seq_ = mark.seq;
}

Status LogExport::SettleRollbackLocked(UniqueLock& lock) {
  if (rollback_seq_ <= checkpoint_seq_) return Status::Ok();
  if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
  mu_.Unlock();
  Status s = Checkpoint();
  mu_.Lock();
  return s;
}

Status LogExport::BecomeWriterLocked(UniqueLock& lock) {
  while (becoming_writer_) cv_.wait(lock.native());
  if (writer_) return lost_;
  becoming_writer_ = true;
  mu_.Unlock();
  // Another writer may have added to the run since we loaded it (a server that had the export
  // before us, whose uploads were still landing): apply that first.
  mu_.Lock();
  uint64_t seq = applied_seq_ + 1;
  mu_.Unlock();
  uint64_t epoch = 0;
  std::vector<SegmentHeader> more;
  Status damaged;
  RollbackViews views;
  Status status = ReadRun(seq, &more, &damaged);
  if (status.ok()) status = LoadRollbackViews(more, &views);
  mu_.Lock();
  if (!damaged.ok()) damaged_ = damaged;
  // The run ends at a segment that is there but not valid: what follows it may be acknowledged
  // data, so nothing after it is deleted or written over; the export is served as it is, read
  // only, until an operator looks (s3block verify names the segment, s3block repair sets it
  // aside).
  if (status.ok() && !damaged_.ok())
    status = Status::IoError(damaged_.message() + "; the blocks of later segments are not served, "
                             "and nothing is written to the export (until 's3block repair')");
  mu_.Unlock();
  if (status.ok()) {
    mu_.Lock();
    ApplyRunLocked(more, views);
    next_seq_ = applied_seq_ + 1;
    seq = next_seq_;
    epoch = epoch_ + 1;
    mu_.Unlock();
    // What follows the run was never acknowledged (a crashed writer's uploads that landed past
    // a gap): removed, so that it can never join the run once the gap is filled.
    std::vector<std::string> keys;
    for (uint64_t i = 0; i < kDanglingSeqs; ++i) keys.push_back(SegmentKey(name_, seq + i));
    status = transport_->Delete(keys, fence());
  }
  SegmentHeader mark;
  if (status.ok()) {
    // The first segment of the new epoch, empty.
    mark.seq = seq;
    mark.epoch = epoch;
    mark.flags = kSegmentEpochMark;
    std::vector<uint8_t> bytes(SegmentDataOffset(0));
    EncodeSegmentHead(&mark, &bytes);
    status = PutSegment(seq, bytes, bytes.size());
    if (IsPreconditionFailed(status))
      status = Status::Busy("export '" + name_ + "' in " + transport_->Describe() +
                            ": another writer stored segment " + std::to_string(seq) +
                            " while this one took the export over; not writing");
  }
  mu_.Lock();
  becoming_writer_ = false;
  cv_.notify_all();
  if (!status.ok()) return status.Annotate("export '" + name_ + "'");
  ApplyEntries(mark);
  next_seq_ = seq + 1;
  epoch_ = epoch;
  writer_ = true;
  last_write_ = Clock::now();
  for (uint32_t i = 0; i < options_.upload_window; ++i)
    uploaders_.emplace_back([this] {
      MutexLock l(&mu_);
      for (;;) {
        while (!stop_ && upload_queue_.empty()) {
          std::unique_lock<std::mutex> native(mu_.native(), std::adopt_lock);
          cv_.wait(native);
          native.release();
        }
        if (upload_queue_.empty()) return;
        std::shared_ptr<Sealed> s = upload_queue_.front();
        upload_queue_.erase(upload_queue_.begin());
        mu_.Unlock();
        Upload(s);
        mu_.Lock();
      }
    });
  if (options_.background) housekeeper_ = std::thread([this] { Housekeeping(); });
  return Status::Ok();
}

Status LogExport::PutSegment(uint64_t seq, std::span<const uint8_t> bytes, size_t head_bytes) {
  const std::string key = SegmentKey(name_, seq);
  Status status = transport_->Put(key, bytes, PutOptions::IfAbsent(fence()));
  if (!IsPreconditionFailed(status)) return status;
  std::vector<uint8_t> head;
  S3B_RETURN_IF_ERROR(transport_->GetRange(key, 0, head_bytes, &head));
  if (head.size() == head_bytes && std::memcmp(head.data(), bytes.data(), head_bytes) == 0)
    return Status::Ok();
  return status;
}

void LogExport::Upload(std::shared_ptr<Sealed> s) {
  Status status = PutSegment(s->seq, s->bytes, s->header.data_offset);
  if (IsPreconditionFailed(status)) {
    status = Status::Busy("export '" + name_ + "' in " + transport_->Describe() +
                          ": another writer stored segment " + std::to_string(s->seq) +
                          "; this server no longer owns the export");
    MutexLock l(&mu_);
    if (lost_.ok()) lost_ = status;
    cv_.notify_all();
  }
  MutexLock l(&mu_);
  if (status.ok()) {
    s->state = Sealed::State::kStored;
    ApplyStoredLocked();
  } else {
    s->state = Sealed::State::kFailed;
    s->error = status.Annotate("storing segment " + std::to_string(s->seq));
    ++upload_failures_;
  }
  cv_.notify_all();
}

void LogExport::ApplyStoredLocked() {
  while (!sealed_.empty()) {
    auto it = sealed_.begin();
    if (it->first != applied_seq_ + 1 || it->second->state != Sealed::State::kStored) return;
    std::shared_ptr<Sealed> s = it->second;
    ApplyEntries(s->header);
    // Every buffer goes back for the next seals to reuse: at most the window's are ever made.
    // (Freed and made again, they left the allocator's per-thread arenas holding ever more.)
    if (spare_buffers_.size() < options_.upload_window) {
      spare_buffers_.push_back(std::move(s->bytes));
      s->bytes.clear();
    }
    sealed_.erase(it);
  }
}

Status LogExport::SealLocked(UniqueLock& lock) {
  // Room in the window first: what is not yet stored stays bounded. A window of failed segments
  // is tried again from here too, every half second: nothing else may be left to (the
  // background thread may be waiting here itself). A store that keeps failing fails the caller
  // at the next failure rather than hold it for as long as the store is down (a full or lost
  // store would hold every writer for ever); what is open stays open, for a later call.
  const uint64_t failures = upload_failures_;
  while (!open_index_.empty() && sealed_.size() >= options_.upload_window && !stop_ &&
         lost_.ok()) {
    if (cv_.wait_for(lock.native(), std::chrono::milliseconds(500)) == std::cv_status::timeout)
      RetryFailedLocked();
    if (upload_failures_ != failures) {
      for (auto& [seq, sealed] : sealed_)
        if (sealed->state == Sealed::State::kFailed) return sealed->error;
    }
  }
  S3B_RETURN_IF_ERROR(lost_);
  if (open_index_.empty()) return Status::Ok();
  if (sealed_.size() >= options_.upload_window)  // stopped waiting: closing
    return Status::IoError("export '" + name_ + "' is closing");
  auto s = std::make_shared<Sealed>();
  s->seq = next_seq_++;
  s->header.seq = s->seq;
  s->header.epoch = epoch_;
  s->header.flags = open_from_collector_ ? kSegmentFromCollector : 0;
  std::vector<uint64_t> ids;
  ids.reserve(open_index_.size());
  uint64_t frame_bytes = 0;
  for (const auto& [id, f] : open_index_) {
    ids.push_back(id);
    frame_bytes += f.length;
  }
  std::sort(ids.begin(), ids.end());
  const uint64_t data_offset = SegmentDataOffset(ids.size());
  if (!spare_buffers_.empty()) {
    s->bytes = std::move(spare_buffers_.back());
    spare_buffers_.pop_back();
  }
  s->bytes.clear();
  s->bytes.reserve(std::max<uint64_t>(options_.segment_size, data_offset + frame_bytes));
  s->bytes.resize(data_offset);
  s->header.entries.resize(ids.size());
  uint64_t at = data_offset;
  for (size_t i = 0; i < ids.size(); ++i) {
    const Frame& f = open_index_[ids[i]];
    SegmentEntry& e = s->header.entries[i];
    e.id = ids[i];
    if (f.length) {
      const uint8_t* frame = open_frames_.data() + f.offset;
      s->bytes.insert(s->bytes.end(), frame, frame + f.length);
      e.offset = static_cast<uint32_t>(at);
      e.length = f.length;
      e.crc = f.crc;
      at += f.length;
    }
    s->index.emplace(ids[i], static_cast<uint32_t>(i));
  }
  EncodeSegmentHead(&s->header, &s->bytes);
  open_index_.clear();
  open_frames_.clear();
  open_from_collector_ = false;
  sealed_.emplace(s->seq, s);
  upload_queue_.push_back(s);
  cv_.notify_all();
  return Status::Ok();
}

void LogExport::RetryFailedLocked() {
  if (!lost_.ok()) return;
  for (auto& [seq, s] : sealed_) {
    if (s->state == Sealed::State::kFailed) {
      s->state = Sealed::State::kQueued;
      s->error = Status::Ok();
      upload_queue_.push_back(s);
    }
  }
  cv_.notify_all();
}

Status LogExport::WaitAppliedLocked(UniqueLock& lock, uint64_t seq) {
  for (;;) {
    if (applied_seq_ >= seq) return Status::Ok();
    for (auto& [sq, s] : sealed_) {
      if (sq > seq) break;
      if (s->state == Sealed::State::kFailed) return s->error;
    }
    if (stop_) return Status::IoError("export '" + name_ + "' is closing");
    cv_.wait(lock.native());
  }
}

Status LogExport::AppendLocked(UniqueLock& lock, uint64_t id,
                               const std::span<const uint8_t>* payload, bool from_collector) {
  const uint64_t frame = payload ? FrameBytes(payload->size()) : 0;
  const uint64_t head_now = SegmentDataOffset(open_index_.size() + 1);
  if (!open_index_.empty() &&
      head_now + open_frames_.size() + frame > options_.segment_size)
    S3B_RETURN_IF_ERROR(SealLocked(lock));
  S3B_RETURN_IF_ERROR(lost_);
  Frame f;
  if (payload) {
    // At its full size at once: growing it by doubling held the old and the new copy.
    if (open_frames_.capacity() < options_.segment_size) open_frames_.reserve(options_.segment_size);
    f.offset = static_cast<uint32_t>(open_frames_.size());
    f.crc = AppendFrame(*payload, &open_frames_);
    f.length = static_cast<uint32_t>(frame);
    (from_collector ? counters_.gc_bytes : counters_.client_bytes) += frame;
  }
  open_index_[id] = f;
  open_from_collector_ |= from_collector;
  last_write_ = Clock::now();
  return Status::Ok();
}

Status LogExport::Write(uint64_t id, std::span<const uint8_t> data, bool fua) {
  if (data.size() > kMaxPayloadBytes)
    return Status::InvalidArgument("a block of " + std::to_string(data.size()) +
                                   " bytes is larger than a log export's frames take");
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  UniqueLock lock(&mu_);
  if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
  S3B_RETURN_IF_ERROR(AppendLocked(lock, id, &data, false));
  if (!fua) return Status::Ok();
  S3B_RETURN_IF_ERROR(SealLocked(lock));
  return WaitAppliedLocked(lock, next_seq_ - 1);
}

Status LogExport::WriteRun(uint64_t first, std::span<const uint8_t> data, uint32_t block_size,
                           bool fua) {
  if (block_size == 0) return Status::InvalidArgument("a run of blocks of 0 bytes");
  if (block_size > kMaxPayloadBytes)
    return Status::InvalidArgument("a block of " + std::to_string(block_size) +
                                   " bytes is larger than a log export's frames take");
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  UniqueLock lock(&mu_);
  if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
  for (size_t at = 0; at + block_size <= data.size(); at += block_size, ++first) {
    const std::span<const uint8_t> block = data.subspan(at, block_size);
    S3B_RETURN_IF_ERROR(AppendLocked(lock, first, &block, false));
  }
  if (!fua) return Status::Ok();
  S3B_RETURN_IF_ERROR(SealLocked(lock));
  return WaitAppliedLocked(lock, next_seq_ - 1);
}

Status LogExport::Delete(std::span<const uint64_t> ids, bool fua) {
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  UniqueLock lock(&mu_);
  for (uint64_t id : ids) {
    Loc loc;
    uint64_t seq = 0;
    const Where w = LocateLocked(id, nullptr, &loc, &seq);
    // A block stored nowhere needs no record: no segment the map can reach holds it (nor, for a
    // clone, its base).
    if (w == Where::kDeleted) continue;
    if (w == Where::kNone) {
      if (!base_) continue;
      mu_.Unlock();
      const bool in_base = base_->HoldsBlock(id);
      mu_.Lock();
      if (!in_base) continue;
    }
    if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
    S3B_RETURN_IF_ERROR(AppendLocked(lock, id, nullptr, false));
  }
  // With fua, what is already recorded for these blocks (a deletion waiting in memory) must be
  // durable too, whether or not this call added to it.
  if (!fua || !writer_) return Status::Ok();
  S3B_RETURN_IF_ERROR(SealLocked(lock));
  return WaitAppliedLocked(lock, next_seq_ - 1);
}

Status LogExport::Flush() {
  UniqueLock lock(&mu_);
  if (!writer_) return Status::Ok();  // nothing was ever written through this process
  S3B_RETURN_IF_ERROR(lost_);
  RetryFailedLocked();  // by every flush
  S3B_RETURN_IF_ERROR(SealLocked(lock));
  return WaitAppliedLocked(lock, next_seq_ - 1);
}

LogExport::Where LogExport::LocateLocked(uint64_t id, Bytes* memory, Loc* loc, uint64_t* seq) {
  auto o = open_index_.find(id);
  if (o != open_index_.end()) {
    if (!o->second.length) return Where::kDeleted;
    if (memory) CopyPayload(open_frames_, o->second.offset, o->second.length, memory);
    return Where::kMemory;
  }
  for (auto it = sealed_.rbegin(); it != sealed_.rend(); ++it) {
    const Sealed& s = *it->second;
    auto e = s.index.find(id);
    if (e == s.index.end()) continue;
    const SegmentEntry& entry = s.header.entries[e->second];
    if (entry.deleted()) return Where::kDeleted;
    if (memory) CopyPayload(s.bytes, entry.offset, entry.length, memory);
    return Where::kMemory;
  }
  if (!map_.Get(id, loc)) return Where::kNone;
  if (IsTombstone(*loc)) return Where::kDeleted;
  *seq = slots_[loc->slot].seq;
  return Where::kStored;
}

Status LogExport::ReadFrames(uint64_t seq, std::span<const Loc> locs, std::vector<Bytes*> outs,
                             std::vector<Status>* checks) {
  const std::string key = SegmentKey(name_, seq);
  const std::string where = "segment " + key + " in " + transport_->Describe();
  checks->assign(locs.size(), Status::Ok());
  std::vector<uint8_t> range;
  size_t i = 0;
  while (i < locs.size()) {
    size_t j = i + 1;
    uint64_t end = uint64_t{locs[i].offset} + locs[i].length;
    while (j < locs.size() && locs[j].offset <= end + kCoalesceGap &&
           uint64_t{locs[j].offset} + locs[j].length - locs[i].offset <= kMaxRangeRead) {
      end = std::max<uint64_t>(end, uint64_t{locs[j].offset} + locs[j].length);
      ++j;
    }
    // A range whose frames do not check out may have been damaged on the way (S3 checks only
    // whole objects): read again before calling a stored frame corrupt. Each frame is judged
    // alone: one bad frame fails only its own block.
    for (size_t k = i; k < j; ++k) (*checks)[k] = Status::IoError("unread");
    for (int attempt = 0; attempt < kFrameReads; ++attempt) {
      S3B_RETURN_IF_ERROR(transport_->GetRange(key, locs[i].offset, end - locs[i].offset, &range));
      bool all = true;
      for (size_t k = i; k < j; ++k) {
        if ((*checks)[k].ok()) continue;
        const uint64_t at = locs[k].offset - locs[i].offset;
        if (at + locs[k].length > range.size()) {
          (*checks)[k] = Status::IoError(where + " ends before block frame at " +
                                         std::to_string(locs[k].offset));
          all = false;
          continue;
        }
        // The frame's own CRC: the map does not keep the entry's (the head has it, and the
        // frame repeats it).
        std::span<const uint8_t> frame(range.data() + at, locs[k].length);
        const uint32_t crc = LoadLe32(frame.data() + 4);
        std::span<const uint8_t> payload;
        (*checks)[k] = OpenFrame(frame, crc, where + " at " + std::to_string(locs[k].offset), &payload);
        if ((*checks)[k].ok()) outs[k]->assign(payload.begin(), payload.end());
        else all = false;
      }
      if (all) break;
    }
    i = j;
  }
  return Status::Ok();
}

std::vector<SegmentEntry> LogExport::LiveEntries(const BlockMap& map, uint32_t slot,
                                                 const SegmentHeader& header) {
  std::vector<SegmentEntry> live;
  for (const SegmentEntry& e : header.entries) {
    Loc loc;
    if (!e.deleted() && map.Get(e.id, &loc) && loc == Loc{slot, e.offset, e.length})
      live.push_back(e);
  }
  return live;
}

Status LogExport::ReadEntryFrames(uint64_t seq, uint32_t slot,
                                  const std::vector<SegmentEntry>& entries,
                                  std::vector<Bytes>* data, std::vector<Status>* checks) {
  std::vector<Loc> locs;
  for (const SegmentEntry& e : entries) locs.push_back(Loc{slot, e.offset, e.length});
  data->assign(entries.size(), Bytes());
  std::vector<Bytes*> outs;
  for (Bytes& d : *data) outs.push_back(&d);
  return ReadFrames(seq, locs, outs, checks);
}

Status LogExport::Read(uint64_t id, Bytes* data, bool* found) {
  BlockRead r;
  r.id = id;
  r.data = data;
  ReadBatch(std::span<BlockRead>(&r, 1));
  *found = r.found;
  return r.status;
}

Status LogExport::Refresh() {
  std::unique_ptr<LogExport> fresh;
  // Without a base of its own (this one keeps reading through its own), but knowing there is
  // one: a clone's deletions are tombstones.
  S3B_RETURN_IF_ERROR(Open(transport_, name_, options_, fence_, &fresh, nullptr, base_name_));
  MutexLock l(&mu_);
  MutexLock f(&fresh->mu_);
  if (writer_ || becoming_writer_) return Status::Ok();  // a writer's own map is never stale
  map_ = std::move(fresh->map_);
  slots_ = std::move(fresh->slots_);
  free_slots_ = std::move(fresh->free_slots_);
  applied_seq_ = fresh->applied_seq_;
  next_seq_ = fresh->next_seq_;
  checkpoint_seq_ = fresh->checkpoint_seq_;
  epoch_ = fresh->epoch_;
  skipped_ = std::move(fresh->skipped_);
  snapshots_ = std::move(fresh->snapshots_);
  clones_ = std::move(fresh->clones_);
  kept_ = std::move(fresh->kept_);
  damaged_ = fresh->damaged_;
  return Status::Ok();
}

void LogExport::ReadBatch(std::span<BlockRead> reads) {
  // A segment read may find the segment gone (collected since its place was looked up): look
  // again, a few times.
  std::vector<size_t> todo(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) todo[i] = i;
  std::vector<size_t> from_base;  // a clone's blocks it never wrote
  for (int attempt = 0; attempt < 4 && !todo.empty(); ++attempt) {
    struct Want {
      uint64_t seq;
      Loc loc;
      size_t index;
    };
    std::vector<Want> wants;
    bool reader = false;
    {
      MutexLock l(&mu_);
      reader = !writer_;
      for (size_t i : todo) {
        BlockRead& r = reads[i];
        r.data->clear();
        r.found = false;
        r.status = Status::Ok();
        Loc loc;
        uint64_t seq = 0;
        switch (LocateLocked(r.id, r.data, &loc, &seq)) {
          case Where::kNone:
            if (base_) from_base.push_back(i);
            break;
          case Where::kDeleted: break;
          case Where::kMemory: r.found = true; break;
          case Where::kStored: wants.push_back({seq, loc, i}); break;
        }
      }
    }
    todo.clear();
    std::sort(wants.begin(), wants.end(), [](const Want& a, const Want& b) {
      return a.seq != b.seq ? a.seq < b.seq : a.loc.offset < b.loc.offset;
    });
    for (size_t i = 0; i < wants.size();) {
      size_t j = i;
      std::vector<Loc> locs;
      std::vector<Bytes*> outs;
      while (j < wants.size() && wants[j].seq == wants[i].seq) {
        locs.push_back(wants[j].loc);
        outs.push_back(reads[wants[j].index].data);
        ++j;
      }
      std::vector<Status> checks;
      Status s = ReadFrames(wants[i].seq, locs, outs, &checks);
      for (size_t k = i; k < j; ++k) {
        BlockRead& r = reads[wants[k].index];
        const Status& st = s.ok() ? checks[k - i] : s;  // each frame judged alone
        if (st.IsNotFound() && attempt < 3) {
          todo.push_back(wants[k].index);
        } else if (st.IsNotFound()) {
          r.status = Status::IoError("export '" + name_ + "': block " + std::to_string(r.id) +
                                     " is in segment " + std::to_string(wants[i].seq) +
                                     ", which is missing from " + transport_->Describe());
        } else {
          r.status = st;
          r.found = st.ok();
        }
      }
      i = j;
    }
    // A view that only reads, whose segments the export's writer has since collected: the
    // export as of a later flush. (Never a snapshot's: what it reads is kept for it.)
    if (reader && !todo.empty()) {
      Status refreshed = view_ ? Status::IoError("a segment is missing") : Refresh();
      if (!refreshed.ok()) {
        for (size_t i : todo)
          reads[i].status = Status::IoError("export '" + name_ + "': block " +
                                            std::to_string(reads[i].id) +
                                            " could not be read: " + refreshed.message());
        break;
      }
    }
  }
  if (from_base.empty()) return;
  std::vector<BlockRead> base_reads(from_base.size());
  for (size_t k = 0; k < from_base.size(); ++k) {
    base_reads[k].id = reads[from_base[k]].id;
    base_reads[k].data = reads[from_base[k]].data;
  }
  base_->ReadBatch(base_reads);
  for (size_t k = 0; k < from_base.size(); ++k) {
    reads[from_base[k]].found = base_reads[k].found;
    reads[from_base[k]].status = base_reads[k].status;
  }
}

bool LogExport::HoldsBlock(uint64_t id) {
  {
    MutexLock l(&mu_);
    Loc loc;
    uint64_t seq = 0;
    switch (LocateLocked(id, nullptr, &loc, &seq)) {
      case Where::kMemory:
      case Where::kStored: return true;
      case Where::kDeleted: return false;
      case Where::kNone: break;
    }
  }
  return base_ && base_->HoldsBlock(id);
}

void LogExport::ListBlocks(const std::function<void(uint64_t id)>& fn) {
  MutexLock l(&mu_);
  std::unordered_map<uint64_t, bool> newer;  // id -> stored (else deleted)
  for (auto& [seq, s] : sealed_)
    for (const SegmentEntry& e : s->header.entries) newer[e.id] = !e.deleted();
  for (auto& [id, f] : open_index_) newer[id] = f.length != 0;
  map_.ForEach([&](uint64_t id, const Loc& loc) {
    if (!newer.count(id) && !IsTombstone(loc)) fn(id);
  });
  for (auto& [id, stored] : newer)
    if (stored) fn(id);
  // A clone's base's blocks that it neither wrote nor deleted.
  if (base_) {
    base_->ListBlocks([&](uint64_t id) NO_THREAD_SAFETY_ANALYSIS {
      Loc loc;
      if (!newer.count(id) && !map_.Get(id, &loc)) fn(id);
    });
  }
}

Status LogExport::Checkpoint() {
  CheckpointInfo info;
  BlockMap copy;
  {
    UniqueLock lock(&mu_);
    while (checkpointing_) cv_.wait(lock.native());
    if (!writer_ || applied_seq_ == checkpoint_seq_) return Status::Ok();
    checkpointing_ = true;
    info.seq = applied_seq_;
    info.epoch = epoch_;
    info.kept = KeptAfterLocked(info.seq);
    info.slots = LiveSlotsLocked();
    copy = map_;
  }
  Status s = WriteCheckpoint(*transport_, name_, info, copy, fence());
  copy = BlockMap();
  if (IsPreconditionFailed(s)) {
    // One with this seq exists: ours, from an attempt whose reply was lost, or a checkpoint
    // of the same run by the writer before us (the same map, which a root describes alone).
    CheckpointInfo theirs;
    BlockMap ignored;
    Status r = ReadCheckpoint(*transport_, name_, info.seq, &theirs, &ignored);
    // Not read back: only that (tried again at the next checkpoint), not another writer.
    if (!r.ok()) s = r;
    else if (theirs.epoch <= info.epoch) s = Status::Ok();
    else s = Status::Busy("export '" + name_ + "': another writer stored checkpoint " +
                          std::to_string(info.seq));
  }
  UniqueLock lock(&mu_);
  if (!s.ok()) {
    EndCheckpointingLocked();
    return s.Annotate("export '" + name_ + "': storing a checkpoint");
  }
  checkpoint_seq_ = info.seq;
  checkpoint_time_ = Clock::now();
  ++counters_.checkpoints;
  // Still this thread's: another checkpoint written meanwhile would have its objects listed,
  // and deleted, by this one's deletions of the older ones.
  DeleteUnreferencedLocked(info.seq);
  EndCheckpointingLocked();
  return Status::Ok();
}

void LogExport::DeleteUnreferencedLocked(uint64_t checkpoint_seq, std::vector<std::string> keys) {
  std::vector<uint32_t> freed;
  uint64_t bytes = 0, deleted = 0;
  // What a snapshot reads is kept (the checkpoint just stored lists it: KeptAfterLocked).
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.used && s.live == 0 && s.seq <= checkpoint_seq) {
      if (PinnedLocked(s.seq, s.dead_at)) {
        kept_.push_back({s.seq, s.size, s.dead_at});
      } else {
        keys.push_back(SegmentKey(name_, s.seq));
        bytes += s.size;
        ++deleted;
      }
      freed.push_back(i);
    }
  }
  for (uint64_t seq : skipped_) {
    if (seq > checkpoint_seq) continue;
    if (PinnedLocked(seq, seq)) kept_.push_back({seq, 0, seq});
    else keys.push_back(SegmentKey(name_, seq));
  }
  std::erase_if(skipped_, [&](uint64_t seq) { return seq <= checkpoint_seq; });
  for (uint32_t i : freed) {
    slots_[i] = Slot();
    free_slots_.push_back(i);
  }
  counters_.gc_segments_freed += deleted;
  counters_.gc_bytes_freed += bytes;
  ReleaseUnpinnedLocked(std::move(keys));
}

std::vector<CheckpointSlot> LogExport::LiveSlotsLocked() const {
  // A segment nothing in the map uses is not listed: it is deleted once the checkpoint is stored.
  std::vector<CheckpointSlot> live;
  for (uint32_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].used && slots_[i].live > 0) live.push_back({i, slots_[i].seq, slots_[i].size});
  return live;
}

bool LogExport::PinnedLocked(uint64_t seq, uint64_t dead_at) const {
  for (const auto& [name, r] : snapshots_)
    if (SnapshotReads(r, seq, dead_at)) return true;
  return false;
}

std::vector<KeptSegment> LogExport::KeptAfterLocked(uint64_t seq) const {
  std::vector<KeptSegment> kept = kept_;
  for (const Slot& s : slots_)
    if (s.used && s.live == 0 && s.seq <= seq && PinnedLocked(s.seq, s.dead_at))
      kept.push_back({s.seq, s.size, s.dead_at});
  for (uint64_t sk : skipped_)
    if (sk <= seq && PinnedLocked(sk, sk)) kept.push_back({sk, 0, sk});
  return kept;
}

void LogExport::ReleaseUnpinnedLocked(std::vector<std::string> keys) {
  std::erase_if(kept_, [&](const KeptSegment& k) NO_THREAD_SAFETY_ANALYSIS {  // mu_ is held
    if (PinnedLocked(k.seq, k.dead_at)) return false;
    keys.push_back(SegmentKey(name_, k.seq));
    counters_.gc_segments_freed += 1;
    counters_.gc_bytes_freed += k.size;
    return true;
  });
  std::vector<std::string> keep = {CheckpointKey(name_, checkpoint_seq_)};
  for (const auto& [name, r] : snapshots_)
    if (r.checkpoint > 0) keep.push_back(CheckpointKey(name_, r.checkpoint));
  const uint64_t newest = checkpoint_seq_;
  mu_.Unlock();
  std::vector<uint64_t> roots;
  std::vector<std::string> ckpt_keys;
  if (ListCheckpoints(*transport_, name_, &roots, &ckpt_keys).ok()) {
    const std::string prefix = CheckpointPrefix(name_);
    for (const std::string& k : ckpt_keys) {
      const bool kept = std::any_of(keep.begin(), keep.end(), [&](const std::string& p) {
        return k.compare(0, p.size(), p) == 0;
      });
      // Only what is older than the newest checkpoint: a newer one may be being written.
      uint64_t seq = 0;
      const bool older = ParseSeqKey(k.substr(0, prefix.size() + 16), prefix, &seq) && seq < newest;
      if (!kept && older) keys.push_back(k);
    }
  }
  // A delete that failed leaves objects no checkpoint names: the sweep of a later writer finds
  // them. Counted as freed all the same (they are no longer part of the export).
  (void)transport_->Delete(keys, fence());
  mu_.Lock();
}

void LogExport::BeginCheckpointingLocked(UniqueLock& lock) {
  while (checkpointing_) cv_.wait(lock.native());
  checkpointing_ = true;
}

void LogExport::EndCheckpointingLocked() {
  checkpointing_ = false;
  cv_.notify_all();
}

Status LogExport::Sweep() {
  // Segments at or below the checkpoint that it does not list (a crash between a checkpoint and
  // its deletions, or a stale writer's): removed. One listing, once per writer, in background.
  uint64_t ckpt;
  std::unordered_set<uint64_t> listed;
  {
    MutexLock l(&mu_);
    ckpt = checkpoint_seq_;
    for (const Slot& s : slots_)
      if (s.used) listed.insert(s.seq);
    for (const KeptSegment& k : kept_) listed.insert(k.seq);
  }
  if (ckpt == 0) return Status::Ok();
  std::vector<std::string> keys;
  const std::string prefix = LogPrefix(name_);
  S3B_RETURN_IF_ERROR(transport_->List(prefix, [&](const std::string& key, std::string_view) {
    uint64_t seq = 0;
    if (ParseSeqKey(key, prefix, &seq) && seq <= ckpt && !listed.count(seq)) keys.push_back(key);
  }));
  return transport_->Delete(keys, fence());
}

std::vector<std::pair<uint32_t, uint64_t>> LogExport::GcCandidatesLocked(bool all) {
  // Segments less live than the threshold (all: every one, whose head at least is not live),
  // least live first; and small ones (frequent flushes leave them), packed together once there
  // are enough of them that packing makes fewer: a lone small segment, or the collector's own
  // small output, is left alone.
  const double threshold = all ? 1.0 : options_.gc_threshold / 100.0;
  std::vector<std::pair<double, std::pair<uint32_t, uint64_t>>> big, small;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (!s.used || s.live == 0) continue;  // dead: deleted by the next checkpoint
    const double share = static_cast<double>(s.live) / static_cast<double>(std::max<uint64_t>(s.size, 1));
    if (s.size < options_.segment_size / 8) small.push_back({share, {i, s.seq}});
    else if (share < threshold) big.push_back({share, {i, s.seq}});
  }
  if (small.size() >= (all ? 2u : 8u)) big.insert(big.end(), small.begin(), small.end());
  std::sort(big.begin(), big.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::pair<uint32_t, uint64_t>> out;
  uint64_t budget = 0;
  for (const auto& [share, v] : big) {
    if (budget > kGcBudgetBytes) break;
    budget += slots_[v.first].live;
    out.push_back(v);
  }
  return out;
}

Status LogExport::CollectGarbage(bool all, GcResult* result) {
  *result = GcResult();
  struct Victim {
    uint32_t slot;
    uint64_t seq;
  };
  std::vector<Victim> victims;
  uint64_t freed_before = 0, bytes_freed_before = 0, copied_before = 0;
  {
    UniqueLock lock(&mu_);
    // Nothing to move and nothing dead: nothing is written (not even a writer's first segment).
    bool dead = false;
    for (const Slot& s : slots_) dead |= s.used && s.live == 0;
    if (!writer_ && GcCandidatesLocked(all).empty() && !dead) return Status::Ok();
    if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
    while (collecting_) cv_.wait(lock.native());
    collecting_ = true;
    freed_before = counters_.gc_segments_freed;
    bytes_freed_before = counters_.gc_bytes_freed;
    copied_before = counters_.gc_bytes;
    for (const auto& [slot, seq] : GcCandidatesLocked(all)) victims.push_back({slot, seq});
  }
  Status status;
  for (const Victim& v : victims) {
    SegmentHeader h;
    status = ReadHead(v.seq, &h);
    if (!status.ok()) break;
    std::vector<SegmentEntry> live;
    {
      MutexLock l(&mu_);
      live = LiveEntries(map_, v.slot, h);
    }
    std::vector<Bytes> data;
    std::vector<Status> checks;
    status = ReadEntryFrames(v.seq, v.slot, live, &data, &checks);
    for (const Status& c : checks)
      if (status.ok()) status = c;  // a damaged frame is not moved, nor its segment deleted
    if (!status.ok()) break;
    UniqueLock lock(&mu_);
    for (size_t i = 0; i < live.size(); ++i) {
      // Moved only if nothing newer was written meanwhile: the map still points at this copy
      // and no unapplied segment or the open one has the block.
      Loc now;
      if (!map_.Get(live[i].id, &now) || !(now == Loc{v.slot, live[i].offset, live[i].length}) ||
          open_index_.count(live[i].id))
        continue;
      bool newer = false;
      for (auto& [seq, s] : sealed_) newer |= s->index.count(live[i].id) > 0;
      if (newer) continue;
      const std::span<const uint8_t> payload(data[i]);
      status = AppendLocked(lock, live[i].id, &payload, true);
      if (!status.ok()) break;
    }
    if (!status.ok()) break;
  }
  {
    UniqueLock lock(&mu_);
    if (status.ok() && !victims.empty()) {
      status = SealLocked(lock);
      if (status.ok()) status = WaitAppliedLocked(lock, next_seq_ - 1);
    }
    collecting_ = false;
    cv_.notify_all();
  }
  if (status.ok()) status = Checkpoint();
  MutexLock l(&mu_);
  result->segments_freed = counters_.gc_segments_freed - freed_before;
  result->bytes_freed = counters_.gc_bytes_freed - bytes_freed_before;
  result->bytes_copied = counters_.gc_bytes - copied_before;
  return status.Annotate("export '" + name_ + "': collecting garbage");
}

void LogExport::Housekeeping() {
  auto last_gc = Clock::now();
  bool swept = false;
  for (;;) {
    bool checkpoint = false, gc = false;
    {
      UniqueLock lock(&mu_);
      cv_.wait_for(lock.native(), std::chrono::milliseconds(500));
      if (stop_) return;
      const auto now = Clock::now();
      // A failed segment is retried here too, so that data is stored without a client's flush.
      RetryFailedLocked();
      // An idle segment is sealed only if there is room for it: this thread does not wait.
      if (!open_index_.empty() && sealed_.size() < options_.upload_window &&
          now - last_write_ > std::chrono::duration<double>(options_.seal_idle_seconds))
        (void)SealLocked(lock);  // with room, it does not wait, nor fail but for a lost export
      const uint64_t since = applied_seq_ - checkpoint_seq_;
      // A large map costs more to write out: written less often, about once per MiB of it
      // per segment applied.
      const uint64_t every = std::max<uint64_t>(options_.checkpoint_segments, map_.MemoryBytes() >> 20);
      // Also soon after writes stop: a server stopped then opens quickly next time.
      const bool quiet = open_index_.empty() && sealed_.empty() &&
                         now - last_write_ > std::chrono::duration<double>(2 * options_.seal_idle_seconds);
      // A rollback is made permanent at once (until then, opening applies it again).
      checkpoint = since >= every || (since > 0 && rollback_seq_ > checkpoint_seq_) ||
                   (since > 0 && (quiet || now - checkpoint_time_ > std::chrono::duration<double>(
                                                                   options_.checkpoint_seconds)));
      if (now - last_gc > std::chrono::duration<double>(options_.gc_seconds)) {
        last_gc = now;
        gc = !GcCandidatesLocked(false).empty();
      }
    }
    if (checkpoint) (void)Checkpoint();
    if (gc) {
      GcResult r;
      (void)CollectGarbage(false, &r);
    }
    if (!swept) swept = Sweep().ok();
  }
}

Status LogExport::Close() {
  S3B_RETURN_IF_ERROR(Flush());
  // Only to open faster next time: a checkpoint refused (a lease already given up) loses nothing.
  (void)Checkpoint();
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (housekeeper_.joinable()) housekeeper_.join();
  for (std::thread& t : uploaders_) t.join();
  uploaders_.clear();
  return Status::Ok();
}

LogStats LogExport::Stats() {
  MutexLock l(&mu_);
  LogStats s = counters_;
  for (const Slot& slot : slots_) {
    if (!slot.used) continue;
    ++s.segments;
    s.segment_bytes += slot.size;
    s.live_bytes += slot.live;
  }
  s.blocks = map_.size();
  s.map_bytes = map_.MemoryBytes();
  s.pending_segments = sealed_.size();
  s.open_bytes = open_frames_.size();
  s.last_seq = applied_seq_;
  s.checkpoint_seq = checkpoint_seq_;
  s.epoch = epoch_;
  s.writer = writer_;
  s.snapshots = snapshots_.size();
  s.kept_segments = kept_.size();
  for (const KeptSegment& k : kept_) s.kept_bytes += k.size;
  return s;
}

Status LogExport::CreateSnapshot(const std::string& snapshot, uint64_t size, SnapshotRecord* out) {
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  S3B_RETURN_IF_ERROR(ValidateSnapshotName(snapshot));
  UniqueLock lock(&mu_);
  if (snapshots_.count(snapshot))
    return Status::AlreadyExists("export '" + name_ + "' has a snapshot '" + snapshot + "'");
  S3B_RETURN_IF_ERROR(SettleRollbackLocked(lock).Annotate("export '" + name_ + "': snapshot '" +
                                                           snapshot + "'"));
  // No checkpoint is stored or deleted meanwhile: the one named stays the newest until the
  // snapshot is known, and kept from then on.
  BeginCheckpointingLocked(lock);
  // Every segment sealed so far, stored: what a crash now would keep.
  const uint64_t seq = next_seq_ - 1;
  Status stored = WaitAppliedLocked(lock, seq);
  if (!stored.ok()) {
    checkpointing_ = false;
    cv_.notify_all();
    return stored.Annotate("export '" + name_ + "': snapshot '" + snapshot + "'");
  }
  SnapshotRecord r;
  r.name = snapshot;
  r.checkpoint = checkpoint_seq_;
  r.seq = seq;
  r.size = size;
  r.created = static_cast<int64_t>(std::time(nullptr));
  r.base = base_name_;
  mu_.Unlock();
  Status s = WriteSnapshot(*transport_, name_, r, fence());
  mu_.Lock();
  if (s.ok()) snapshots_.emplace(snapshot, r);
  checkpointing_ = false;
  cv_.notify_all();
  S3B_RETURN_IF_ERROR(s.Annotate("export '" + name_ + "' in " + transport_->Describe()));
  *out = std::move(r);
  return Status::Ok();
}

Status LogExport::OpenForSnapshots(std::shared_ptr<ObjectTransport> transport, std::string name,
                                   WriteFence fence, std::unique_ptr<LogExport>* out) {
  std::unique_ptr<LogExport> e(
      new LogExport(std::move(transport), std::move(name), LogOptions(), std::move(fence)));
  std::vector<uint64_t> roots;
  S3B_RETURN_IF_ERROR(ListCheckpoints(*e->transport_, e->name_, &roots, nullptr));
  MutexLock l(&e->mu_);
  if (!roots.empty()) {
    CheckpointInfo info;
    S3B_RETURN_IF_ERROR(ReadCheckpoint(*e->transport_, e->name_, roots.back(), &info, nullptr));
    e->checkpoint_seq_ = info.seq;
    e->kept_ = std::move(info.kept);
  }
  std::vector<SnapshotRecord> snapshots;
  S3B_RETURN_IF_ERROR(ListSnapshots(*e->transport_, e->name_, &snapshots));
  for (SnapshotRecord& r : snapshots) e->snapshots_.emplace(r.name, std::move(r));
  S3B_RETURN_IF_ERROR(ListCloneMarkers(*e->transport_, e->name_, &e->clones_));
  *out = std::move(e);
  return Status::Ok();
}

Status LogExport::CreateSnapshotOfStored(std::shared_ptr<ObjectTransport> transport,
                                         const std::string& name, const std::string& base,
                                         const std::string& snapshot, uint64_t size,
                                         const WriteFence* fence, SnapshotRecord* out,
                                         bool* rollback_pending) {
  *rollback_pending = false;
  S3B_RETURN_IF_ERROR(ValidateSnapshotName(snapshot));
  const std::string what = "export '" + name + "' in " + transport->Describe();
  std::vector<uint64_t> roots;
  S3B_RETURN_IF_ERROR(ListCheckpoints(*transport, name, &roots, nullptr).Annotate(what));
  SnapshotRecord r;
  r.name = snapshot;
  r.checkpoint = roots.empty() ? 0 : roots.back();
  // The run opening the export would apply: the snapshot ends where it does.
  LogExport reader(transport, name, LogOptions(), {});
  std::vector<SegmentHeader> run;
  Status damaged;
  S3B_RETURN_IF_ERROR(reader.ReadRun(r.checkpoint + 1, &run, &damaged).Annotate(what));
  for (const SegmentHeader& h : run) *rollback_pending |= h.rollback.has_value();
  if (*rollback_pending) return Status::Ok();
  r.seq = run.empty() ? r.checkpoint : run.back().seq;
  r.size = size;
  r.created = static_cast<int64_t>(std::time(nullptr));
  r.base = base;
  Status s = WriteSnapshot(*transport, name, r, fence);
  if (s.kind() == Status::Kind::kAlreadyExists) return s;
  S3B_RETURN_IF_ERROR(s.Annotate(what));
  *out = std::move(r);
  return Status::Ok();
}

Status LogExport::DeleteSnapshot(
    const std::string& snapshot,
    const std::function<Status(const std::string& clone, bool* based)>& based) {
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  UniqueLock lock(&mu_);
  if (!snapshots_.count(snapshot))
    return Status::NotFound("export '" + name_ + "' has no snapshot '" + snapshot + "'");
  // A rollback to it may still need what it keeps.
  S3B_RETURN_IF_ERROR(SettleRollbackLocked(lock).Annotate(
      "export '" + name_ + "': deleting snapshot '" + snapshot + "'"));
  // No clone is added meanwhile (AddClone waits for this too).
  BeginCheckpointingLocked(lock);
  std::vector<std::string> clones;
  for (const auto& [clone, snap] : clones_)
    if (snap == snapshot) clones.push_back(clone);
  mu_.Unlock();
  Status s;
  std::vector<std::string> stale;
  for (const std::string& clone : clones) {
    bool is_based = true;  // unless asked and told otherwise
    if (based) s = based(clone, &is_based);
    if (!s.ok()) break;
    if (is_based) {
      s = Status::InvalidArgument("snapshot '" + snapshot + "' of export '" + name_ +
                                  "' is the base of clone '" + clone + "': flatten the clone " +
                                  "(s3block flatten " + clone + ") or delete it first");
      break;
    }
    stale.push_back(CloneKey(name_, clone));
  }
  if (s.ok() && !stale.empty()) s = transport_->Delete(stale, fence());
  const std::string key = SnapshotKey(name_, snapshot);
  if (s.ok()) s = transport_->Delete(std::span<const std::string>(&key, 1), fence());
  mu_.Lock();
  if (s.ok())
    for (const std::string& k : stale) clones_.erase(k.substr(ClonePrefix(name_).size()));
  if (s.ok()) {
    snapshots_.erase(snapshot);
    ReleaseUnpinnedLocked({});
  }
  checkpointing_ = false;
  cv_.notify_all();
  return s.Annotate("export '" + name_ + "': deleting snapshot '" + snapshot + "'");
}

Status LogExport::RollbackStored(std::shared_ptr<ObjectTransport> transport,
                                 const std::string& name, const std::string& snapshot,
                                 const WriteFence* fence, SnapshotRecord* out) {
  const std::string what = "export '" + name + "' in " + transport->Describe() +
                           ": rolling back to snapshot '" + snapshot + "'";
  SnapshotRecord record;
  Status s = ReadSnapshot(*transport, name, snapshot, &record);
  if (s.IsNotFound())
    return Status::NotFound("export '" + name + "' has no snapshot '" + snapshot + "'");
  S3B_RETURN_IF_ERROR(s.Annotate(what));
  // Where the run ends, as a writer taking the export over finds it (BecomeWriterLocked).
  std::vector<uint64_t> roots;
  S3B_RETURN_IF_ERROR(ListCheckpoints(*transport, name, &roots, nullptr).Annotate(what));
  LogExport w(transport, name, LogOptions(), fence ? *fence : WriteFence());
  uint64_t last = 0, epoch = 0;
  if (!roots.empty()) {
    CheckpointInfo info;
    S3B_RETURN_IF_ERROR(
        ReadCheckpoint(*transport, name, roots.back(), &info, nullptr).Annotate(what));
    last = info.seq;
    epoch = info.epoch;
  }
  std::vector<SegmentHeader> run;
  Status damaged;
  S3B_RETURN_IF_ERROR(w.ReadRun(last + 1, &run, &damaged).Annotate(what));
  if (!damaged.ok())
    return Status::IoError(what + ": " + damaged.message() + "; nothing is written to the export");
  for (const SegmentHeader& h : run) epoch = std::max(epoch, h.epoch);
  if (!run.empty()) last = run.back().seq;
  if (record.seq > last)
    return Status::IoError(what + ": the snapshot ends at segment " + std::to_string(record.seq) +
                           ", after the export's last (" + std::to_string(last) + ")");
  // The mark is a new writer's first segment: a writer from before it is stale, and so is what a
  // crashed one left past the run (never acknowledged), which the mark now joins to the run:
  // never applied, and deleted by the next writer.
  const uint64_t seq = last + 1;
  const std::vector<uint8_t> bytes =
      EncodeRollbackMark(seq, epoch + 1, RollbackTarget{record.checkpoint, record.seq});
  s = w.PutSegment(seq, bytes, bytes.size());
  if (IsPreconditionFailed(s))
    s = Status::Busy("another writer stored segment " + std::to_string(seq) + " meanwhile");
  if (s.ok() && out) *out = record;
  return s.Annotate(what);
}

Status LogExport::RollbackPending(bool* pending) {
  uint64_t seq;
  {
    MutexLock l(&mu_);
    seq = checkpoint_seq_;
  }
  std::vector<SegmentHeader> run;
  Status damaged;
  S3B_RETURN_IF_ERROR(ReadRun(seq + 1, &run, &damaged).Annotate("export '" + name_ + "'"));
  *pending = std::any_of(run.begin(), run.end(),
                         [](const SegmentHeader& h) { return h.rollback.has_value(); });
  return Status::Ok();
}

Status LogExport::AddClone(const std::string& snapshot, const std::string& clone) {
  if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
  UniqueLock lock(&mu_);
  if (!snapshots_.count(snapshot))
    return Status::NotFound("export '" + name_ + "' has no snapshot '" + snapshot + "'");
  BeginCheckpointingLocked(lock);
  mu_.Unlock();
  const std::string text = EncodeCloneMarker(snapshot);
  Status s = transport_->Put(CloneKey(name_, clone),
                             std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                             PutOptions::Fenced(fence()));
  mu_.Lock();
  if (s.ok()) clones_[clone] = snapshot;
  checkpointing_ = false;
  cv_.notify_all();
  return s.Annotate("export '" + name_ + "': recording clone '" + clone + "'");
}

Status LogExport::AddCloneOfStored(ObjectTransport& transport, const std::string& name,
                                   const std::string& snapshot, const std::string& clone,
                                   const WriteFence* fence) {
  const std::string what = "export '" + name + "': recording clone '" + clone + "'";
  SnapshotRecord r;
  Status s = ReadSnapshot(transport, name, snapshot, &r);
  if (s.IsNotFound())
    return Status::NotFound("export '" + name + "' has no snapshot '" + snapshot + "'");
  S3B_RETURN_IF_ERROR(s.Annotate(what));
  const std::string text = EncodeCloneMarker(snapshot);
  return transport
      .Put(CloneKey(name, clone),
           std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
           PutOptions::Fenced(fence))
      .Annotate(what);
}

Status LogExport::CopyBaseBlocks(const std::function<void(uint64_t, uint64_t)>& progress) {
  if (!base_) return Status::Ok();
  std::vector<uint64_t> ids;
  ListBlocks([&](uint64_t id) { ids.push_back(id); });
  {
    // Only what is read from the base: the clone's own blocks (and deletions) stay.
    MutexLock l(&mu_);
    std::erase_if(ids, [&](uint64_t id) NO_THREAD_SAFETY_ANALYSIS {
      Loc loc;
      uint64_t seq = 0;
      return LocateLocked(id, nullptr, &loc, &seq) != Where::kNone;
    });
  }
  std::sort(ids.begin(), ids.end());
  constexpr size_t kBatch = 256;
  for (size_t i = 0; i < ids.size(); i += kBatch) {
    const size_t n = std::min(kBatch, ids.size() - i);
    std::vector<Bytes> data(n);
    std::vector<BlockRead> reads(n);
    for (size_t k = 0; k < n; ++k) {
      reads[k].id = ids[i + k];
      reads[k].data = &data[k];
    }
    base_->ReadBatch(reads);
    UniqueLock lock(&mu_);
    for (size_t k = 0; k < n; ++k) {
      S3B_RETURN_IF_ERROR(reads[k].status);
      Loc loc;
      uint64_t seq = 0;
      // Written meanwhile by a client: theirs stays.
      if (!reads[k].found || LocateLocked(reads[k].id, nullptr, &loc, &seq) != Where::kNone)
        continue;
      if (!writer_) S3B_RETURN_IF_ERROR(BecomeWriterLocked(lock));
      const std::span<const uint8_t> payload(data[k]);
      S3B_RETURN_IF_ERROR(AppendLocked(lock, reads[k].id, &payload, false));
    }
    lock.Unlock();
    if (progress) progress(i + n, ids.size());
  }
  return Flush();
}

std::vector<SnapshotInfo> LogExport::Snapshots() {
  MutexLock l(&mu_);
  std::vector<SnapshotInfo> out;
  std::map<std::string, uint64_t> unique;
  for (const KeptSegment& k : kept_) {
    const std::string* only = nullptr;
    int readers = 0;
    for (const auto& [name, r] : snapshots_) {
      if (SnapshotReads(r, k.seq, k.dead_at)) {
        ++readers;
        only = &name;
      }
    }
    if (readers == 1) unique[*only] += k.size;
  }
  for (const auto& [name, r] : snapshots_) out.push_back({r, unique[name], {}});
  for (SnapshotInfo& info : out)
    for (const auto& [clone, snap] : clones_)
      if (snap == info.record.name) info.clones.push_back(clone);
  return out;
}

Status LogExport::Verify(const std::function<void(const std::string&)>& report, uint64_t* problems) {
  *problems = 0;
  std::vector<Slot> slots;
  BlockMap map;
  {
    MutexLock l(&mu_);
    slots = slots_;
    map = map_;
    if (!damaged_.ok()) {
      report(damaged_.message() + ": the export is read only as of segment " +
             std::to_string(applied_seq_) + ", and that segment and the later ones are not "
             "applied ('s3block repair' sets them aside)");
      ++*problems;
    }
  }
  // Each segment's entries, as the map should see them.
  for (uint32_t i = 0; i < slots.size(); ++i) {
    if (!slots[i].used) continue;
    const std::string key = SegmentKey(name_, slots[i].seq);
    SegmentHeader h;
    Status s = ReadHead(slots[i].seq, &h);
    if (!s.ok()) {
      report(s.message());
      ++*problems;
      continue;
    }
    if (h.total_size != slots[i].size) {
      report(key + ": " + std::to_string(h.total_size) + " bytes, the map says " +
             std::to_string(slots[i].size));
      ++*problems;
    }
    const std::vector<SegmentEntry> entries = LiveEntries(map, i, h);
    std::vector<Bytes> data;
    std::vector<Status> checks;
    Status read = ReadEntryFrames(slots[i].seq, i, entries, &data, &checks);
    for (size_t k = 0; k < entries.size(); ++k) {
      const Status& r = read.ok() ? checks[k] : read;
      if (!r.ok()) {
        report("block " + std::to_string(entries[k].id) + ": " + r.message());
        ++*problems;
      } else if (Crc32c(0, data[k].data(), data[k].size()) != entries[k].crc) {
        report("block " + std::to_string(entries[k].id) + " in " + key +
               ": its checksum differs from the segment's entry");
        ++*problems;
      }
    }
  }
  map.ForEach([&](uint64_t id, const Loc& loc) {
    if (IsTombstone(loc)) return;
    if (loc.slot >= slots.size() || !slots[loc.slot].used) {
      report("block " + std::to_string(id) + " is mapped to no segment");
      ++*problems;
    }
  });
  return Status::Ok();
}

Status LogExport::SetAsideDamaged(uint64_t* first, uint64_t* moved, uint64_t* bytes) {
  *first = *moved = *bytes = 0;
  uint64_t from;
  {
    MutexLock l(&mu_);
    if (view_) return Status::Error(EROFS, "export '" + name_ + "': a snapshot is read only");
    if (writer_) return Status::Busy("export '" + name_ + "' is being written here");
    if (damaged_.ok()) return Status::Ok();
    from = applied_seq_ + 1;
  }
  const std::string what = "export '" + name_ + "' in " + transport_->Describe() +
                           ": setting aside segment " + std::to_string(from) + " and later ones";
  const std::string prefix = LogPrefix(name_);
  std::vector<uint64_t> seqs;
  S3B_RETURN_IF_ERROR(transport_->List(prefix, [&](const std::string& key, std::string_view) {
    uint64_t seq = 0;
    if (ParseSeqKey(key, prefix, &seq) && seq >= from) seqs.push_back(seq);
  }).Annotate(what));
  std::sort(seqs.begin(), seqs.end());
  // In order, each copied before it is deleted: stopped midway, what is left past the run is
  // still damaged at its start (or a gap), and this is run again.
  for (uint64_t seq : seqs) {
    const std::string key = SegmentKey(name_, seq);
    std::vector<uint8_t> bytes_of;
    Status s = transport_->Get(key, &bytes_of);
    if (s.IsNotFound()) continue;
    S3B_RETURN_IF_ERROR(s.Annotate(what));
    const std::string aside = SetAsidePrefix(name_) + key.substr(prefix.size());
    S3B_RETURN_IF_ERROR(
        transport_->Put(aside, bytes_of, PutOptions::Fenced(fence())).Annotate(what));
    S3B_RETURN_IF_ERROR(
        transport_->Delete(std::span<const std::string>(&key, 1), fence()).Annotate(what));
    ++*moved;
    *bytes += bytes_of.size();
  }
  MutexLock l(&mu_);
  *first = from;
  damaged_ = Status::Ok();
  return Status::Ok();
}

Status LogExport::DeleteAll(ObjectTransport& transport, std::string_view name,
                            const WriteFence* fence) {
  // Checkpoints first: an export half deleted then has no checkpoint naming missing segments.
  std::vector<std::string> keys;
  const auto add = [&](const std::string& k, std::string_view) { keys.push_back(k); };
  S3B_RETURN_IF_ERROR(transport.List(CheckpointPrefix(name), add));
  S3B_RETURN_IF_ERROR(transport.List(LogPrefix(name), add));
  S3B_RETURN_IF_ERROR(transport.List(SnapshotPrefix(name), add));
  S3B_RETURN_IF_ERROR(transport.List(ClonePrefix(name), add));
  S3B_RETURN_IF_ERROR(transport.List(SetAsidePrefix(name), add));
  return transport.Delete(keys, fence);
}

}  // namespace s3block::log
