#include "log/layout_store.h"

#include "s3block/params.h"

namespace s3block::log {

LayoutStore::LayoutStore(std::shared_ptr<BlockStore> blocks, TransportMaker make_transport,
                         LogOptions options, std::function<WriteFence(std::string_view)> fence_for)
    : StoreDecorator(std::move(blocks)), make_transport_(std::move(make_transport)),
      options_(options), fence_for_(std::move(fence_for)) {}

Status LayoutStore::Transport(std::shared_ptr<ObjectTransport>* out) {
  MutexLock l(&mu_);
  if (!transport_) S3B_RETURN_IF_ERROR(make_transport_(&transport_));
  *out = transport_;
  return Status::Ok();
}

LayoutStore::~LayoutStore() = default;

std::shared_ptr<LayoutStore::Entry> LayoutStore::EntryFor(std::string_view e) const {
  MutexLock l(&mu_);
  auto it = entries_.find(e);
  if (it == entries_.end()) it = entries_.emplace(std::string(e), std::make_shared<Entry>()).first;
  return it->second;
}

Status LayoutStore::FindSnapshot(std::string_view e, std::string* meta_text, std::string* of,
                                 SnapshotRecord* record, bool* found) {
  *found = false;
  std::string name, snapshot;
  if (!SplitSnapshotName(e, &name, &snapshot) || !ValidateSnapshotName(snapshot).ok())
    return Status::Ok();
  std::string text;
  bool has_meta = false;
  S3B_RETURN_IF_ERROR(next_->ReadMeta(name, &text, &has_meta));
  ExportMeta meta;
  if (!has_meta || !ExportMeta::Parse(name, text, &meta).ok() || meta.layout != ExportLayout::kLog)
    return Status::Ok();
  std::shared_ptr<ObjectTransport> transport;
  S3B_RETURN_IF_ERROR(Transport(&transport));
  Status s = ReadSnapshot(*transport, name, snapshot, record);
  if (s.IsNotFound()) return Status::Ok();
  S3B_RETURN_IF_ERROR(s);
  meta.size = record->size;
  if (meta.blocks_of.empty()) meta.blocks_of = name;
  meta.snapshot = snapshot;
  meta.base.clear();  // the view's own base is the record's
  *meta_text = meta.Serialize();
  *of = name;
  *found = true;
  return Status::Ok();
}

void LayoutStore::Learn(std::string_view e, std::string_view meta_text) {
  ExportMeta meta;
  if (!ExportMeta::Parse(e, meta_text, &meta).ok()) return;
  if (!meta.snapshot.empty()) return;  // a view's, which is learnt where it is found
  std::shared_ptr<Entry> entry = EntryFor(e);
  MutexLock l(&entry->mu);
  if (entry->resolved && entry->layout == meta.layout) return;
  if (entry->log) return;  // open: what it serves stays what it is until it is closed
  entry->resolved = true;
  entry->layout = meta.layout;
  entry->base = meta.base;
  entry->error = Status::Ok();
}

Status LayoutStore::OpenBase(const std::string& base, int depth, std::unique_ptr<LogExport>* out) {
  // A chain longer than this is a loop (metadata edited by hand), not clones of clones.
  constexpr int kMaxDepth = 64;
  std::string name, snapshot;
  if (depth > kMaxDepth || !SplitSnapshotName(base, &name, &snapshot))
    return Status::IoError("the base '" + QuoteForMessage(base) + "' of a clone is not valid");
  std::string text;
  bool found = false;
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(next_->ReadMeta(name, &text, &found));
  if (found) S3B_RETURN_IF_ERROR(ExportMeta::Parse(name, text, &meta));
  if (!found || meta.layout != ExportLayout::kLog)
    return Status::IoError("the base '" + QuoteForMessage(base) + "' of a clone: export '" +
                           QuoteForMessage(name) + "' is missing, or no log export");
  std::shared_ptr<ObjectTransport> transport;
  S3B_RETURN_IF_ERROR(Transport(&transport));
  SnapshotRecord record;
  Status s = ReadSnapshot(*transport, name, snapshot, &record);
  if (s.IsNotFound())
    return Status::IoError("the base '" + QuoteForMessage(base) + "' of a clone is missing");
  S3B_RETURN_IF_ERROR(s);
  std::unique_ptr<LogExport> below;
  if (!record.base.empty()) S3B_RETURN_IF_ERROR(OpenBase(record.base, depth + 1, &below));
  return LogExport::OpenSnapshot(std::move(transport), name, record, options_, out,
                                 std::move(below));
}

Status LayoutStore::Resolve(std::string_view e, LogExport** log) {
  *log = nullptr;
  std::shared_ptr<Entry> entry = EntryFor(e);
  MutexLock l(&entry->mu);
  if (!entry->resolved) {
    std::string text;
    bool found = false;
    S3B_RETURN_IF_ERROR(next_->ReadMeta(e, &text, &found));
    ExportMeta meta;
    // No metadata: the specification's first version's layout. Unreadable metadata is the
    // Volume's to report; blocks are not looked for elsewhere on account of it.
    if (found) S3B_RETURN_IF_ERROR(ExportMeta::Parse(e, text, &meta));
    entry->base = meta.base;
    if (!found) {
      bool view = false;
      S3B_RETURN_IF_ERROR(FindSnapshot(e, &text, &entry->of, &entry->record, &view));
      entry->view = view;
      if (view) meta.layout = ExportLayout::kLog;
    }
    entry->layout = meta.layout;
    entry->resolved = true;
  }
  if (entry->layout != ExportLayout::kLog) return Status::Ok();
  if (!entry->log) {
    WriteFence fence = fence_for_ ? fence_for_(e) : WriteFence();
    std::shared_ptr<ObjectTransport> transport;
    S3B_RETURN_IF_ERROR(Transport(&transport));
    const std::string& base = entry->view ? entry->record.base : entry->base;
    std::unique_ptr<LogExport> below;
    if (!base.empty())
      S3B_RETURN_IF_ERROR(OpenBase(base, 0, &below).Annotate("export '" + QuoteForMessage(e) + "'"));
    if (entry->view)
      S3B_RETURN_IF_ERROR(LogExport::OpenSnapshot(std::move(transport), entry->of, entry->record,
                                                  options_, &entry->log, std::move(below)));
    else
      S3B_RETURN_IF_ERROR(LogExport::Open(std::move(transport), std::string(e), options_,
                                          std::move(fence), &entry->log, std::move(below), base));
  }
  *log = entry->log.get();
  return Status::Ok();
}

Status LayoutStore::Read(std::string_view e, uint64_t id, Bytes* data, bool* found) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->Read(id, data, found) : next_->Read(e, id, data, found);
}

void LayoutStore::ReadBatch(std::string_view e, std::span<BlockRead> reads) {
  LogExport* log;
  Status s = Resolve(e, &log);
  if (!s.ok()) {
    for (BlockRead& r : reads) r.status = s;
    return;
  }
  if (log) log->ReadBatch(reads);
  else next_->ReadBatch(e, reads);
}

bool LayoutStore::KnownLog(std::string_view e) const {
  std::shared_ptr<Entry> entry = EntryFor(e);
  MutexLock l(&entry->mu);
  return entry->resolved && entry->layout == ExportLayout::kLog;
}

Status LayoutStore::SetAsideDamaged(std::string_view e, uint64_t* first, uint64_t* moved,
                                    uint64_t* bytes, bool* is_log) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  *is_log = log != nullptr;
  return log ? log->SetAsideDamaged(first, moved, bytes) : Status::Ok();
}

Status LayoutStore::ReadSnapshotMeta(std::string_view full, std::string* text, bool* found) {
  std::string of;
  SnapshotRecord record;
  return FindSnapshot(full, text, &of, &record, found);
}

Status LayoutStore::ListBlocksWithoutMeta(std::string_view e,
                                          const std::function<void(uint64_t)>& fn) {
  return next_->ListBlocks(e, fn);
}

bool LayoutStore::WithOpenLog(std::string_view e, const std::function<void(LogExport&)>& fn) {
  std::shared_ptr<Entry> entry = EntryFor(e);
  MutexLock l(&entry->mu);
  if (!entry->log) return false;
  fn(*entry->log);
  return true;
}

bool LayoutStore::IsOpenLogExport(std::string_view e) const {
  std::shared_ptr<Entry> entry = EntryFor(e);
  MutexLock l(&entry->mu);
  return entry->log != nullptr && !entry->view;
}

size_t LayoutStore::ReadBatchSize(std::string_view e) const {
  // A run of blocks is one ranged read of a segment.
  return KnownLog(e) ? 256 : next_->ReadBatchSize(e);
}
uint64_t LayoutStore::ReadBatchBytes(std::string_view e) const {
  // A ranged GET of 1 MiB costs the S3 server about as much as one of 4 KiB.
  return KnownLog(e) ? uint64_t{1} << 20 : next_->ReadBatchBytes(e);
}

bool LayoutStore::BuffersWrites(std::string_view e) const {
  return KnownLog(e);  // the open segment
}

Status LayoutStore::Write(std::string_view e, uint64_t id, std::span<const uint8_t> data,
                          bool fua) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->Write(id, data, fua) : next_->Write(e, id, data, fua);
}

Status LayoutStore::Overwrite(std::string_view e, uint64_t id, std::span<const uint8_t> data,
                              bool fua) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->Write(id, data, fua) : next_->Overwrite(e, id, data, fua);
}

Status LayoutStore::OverwriteRun(std::string_view e, uint64_t first,
                                 std::span<const uint8_t> data, uint32_t block_size, bool fua) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->WriteRun(first, data, block_size, fua)
             : next_->OverwriteRun(e, first, data, block_size, fua);
}

Status LayoutStore::Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->Delete(ids, fua) : next_->Delete(e, ids, fua);
}

Status LayoutStore::Flush(std::string_view e) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log ? log->Flush() : next_->Flush(e);
}

Status LayoutStore::ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  if (!log) return next_->ListBlocks(e, fn);
  log->ListBlocks(fn);
  return Status::Ok();
}

Status LayoutStore::ListBlockDigests(std::string_view e,
                                     const std::function<void(uint64_t, std::string_view)>& fn) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  if (!log) return next_->ListBlockDigests(e, fn);
  log->ListBlocks([&](uint64_t id) { fn(id, {}); });
  return Status::Ok();
}

Status LayoutStore::ReadMeta(std::string_view e, std::string* text, bool* found) {
  S3B_RETURN_IF_ERROR(next_->ReadMeta(e, text, found));
  if (*found) {
    Learn(e, *text);
    return Status::Ok();
  }
  std::string of;
  SnapshotRecord record;
  S3B_RETURN_IF_ERROR(FindSnapshot(e, text, &of, &record, found));
  if (*found) {
    std::shared_ptr<Entry> entry = EntryFor(e);
    MutexLock l(&entry->mu);
    if (!entry->log) {
      entry->resolved = true;
      entry->layout = ExportLayout::kLog;
      entry->view = true;
      entry->of = std::move(of);
      entry->record = std::move(record);
    }
  }
  return Status::Ok();
}

Status LayoutStore::WriteMeta(std::string_view e, std::string_view text) {
  if (e.find('@') != std::string_view::npos) {
    // Only an export that already has this name keeps it: NAME@SNAP names a snapshot.
    std::string old;
    bool found = false;
    S3B_RETURN_IF_ERROR(next_->ReadMeta(e, &old, &found));
    if (!found)
      return Status::InvalidArgument("export name '" + QuoteForMessage(e) +
                                     "' refused: a name with '@' is a snapshot's (NAME@SNAP)");
  }
  S3B_RETURN_IF_ERROR(next_->WriteMeta(e, text));
  Learn(e, text);
  return Status::Ok();
}

Status LayoutStore::DeleteMeta(std::string_view e) {
  {
    std::shared_ptr<Entry> entry = EntryFor(e);
    MutexLock l(&entry->mu);
    if (entry->view)
      return Status::InvalidArgument("'" + QuoteForMessage(e) + "' is a snapshot, not an export");
  }
  LogExport* log = nullptr;
  Status s = Resolve(e, &log);
  bool is_log = log != nullptr;
  if (!s.ok()) {
    // An export whose checkpoint is unreadable can still be deleted.
    is_log = KnownLog(e);
    if (!is_log) return s;
  }
  if (!is_log) {
    // An export marked for deletion loses this layout's objects whatever its metadata says: the
    // mark may have replaced damaged metadata that named this layout. (Two listings of nothing
    // for an export that never had any.)
    std::string text;
    bool found = false;
    ExportMeta meta;
    is_log = next_->ReadMeta(e, &text, &found).ok() && found &&
             ExportMeta::Parse(e, text, &meta).ok() && meta.state == ExportMeta::State::kDeleting;
  }
  if (is_log) {
    {
      std::shared_ptr<Entry> entry = EntryFor(e);
      MutexLock l(&entry->mu);
      entry->log.reset();
    }
    const WriteFence fence = fence_for_ ? fence_for_(e) : WriteFence();
    std::shared_ptr<ObjectTransport> transport;
    S3B_RETURN_IF_ERROR(Transport(&transport));
    S3B_RETURN_IF_ERROR(LogExport::DeleteAll(*transport, e, fence ? &fence : nullptr));
  }
  S3B_RETURN_IF_ERROR(next_->DeleteMeta(e));
  MutexLock l(&mu_);
  entries_.erase(std::string(e));
  return Status::Ok();
}

Status LayoutStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id,
                              bool* found) {
  LogExport *a, *b;
  S3B_RETURN_IF_ERROR(Resolve(from, &a));
  S3B_RETURN_IF_ERROR(Resolve(to, &b));
  if (!a && !b) return next_->CopyBlock(from, to, id, found);
  return BlockStore::CopyBlock(from, to, id, found);  // through this layer: read, then write
}

Status LayoutStore::CloseExport(std::string_view e) {
  std::shared_ptr<Entry> entry;
  {
    MutexLock l(&mu_);
    auto it = entries_.find(e);
    if (it != entries_.end()) entry = it->second;
  }
  Status closed;
  if (entry) {
    MutexLock l(&entry->mu);
    if (entry->log) {
      // What is not stored yet keeps it open. Once everything is, it goes even if its last
      // checkpoint cannot be stored (its lease given up first, say): its map is the export as
      // this process last saw it, and an export opened again must be read again from the store,
      // where another server may have written since.
      S3B_RETURN_IF_ERROR(entry->log->Flush());
      closed = entry->log->Close();
      entry->log.reset();
    }
    MutexLock m(&mu_);
    entries_.erase(std::string(e));
  }
  Status next = next_->CloseExport(e);
  return closed.ok() ? next : closed;
}

Status LayoutStore::LogStatsOf(std::string_view e, LogStats* stats, bool* is_log) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  *is_log = log != nullptr;
  if (log) *stats = log->Stats();
  return Status::Ok();
}

Status LayoutStore::CollectGarbage(std::string_view e, bool all, GcResult* result,
                                   bool* is_log) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  *is_log = log != nullptr;
  return log ? log->CollectGarbage(all, result) : Status::Ok();
}

Status LayoutStore::VerifyLog(std::string_view e,
                              const std::function<void(const std::string&)>& report,
                              uint64_t* problems, bool* is_log) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  *is_log = log != nullptr;
  return log ? log->Verify(report, problems) : Status::Ok();
}

Status LayoutStore::CreateSnapshot(std::string_view e, const std::string& snapshot,
                                   uint64_t size, SnapshotRecord* out, bool* is_log,
                                   const ExportMeta* known) {
  // Open here (a server's): its writer knows what is sealed and not yet stored.
  Status s;
  if (WithOpenLog(e, [&](LogExport& log) { s = log.CreateSnapshot(snapshot, size, out); })) {
    *is_log = true;
    return s;
  }
  // Not open: its map need not be loaded for a snapshot (a few requests, whatever its size).
  ExportMeta meta;
  std::shared_ptr<ObjectTransport> transport;
  WriteFence fence;
  S3B_RETURN_IF_ERROR(StoredForChange(e, known, &meta, is_log, &transport, &fence));
  if (!*is_log) return Status::Ok();
  bool pending = false;
  S3B_RETURN_IF_ERROR(LogExport::CreateSnapshotOfStored(std::move(transport), std::string(e),
                                                        meta.base, snapshot, size,
                                                        fence ? &fence : nullptr, out, &pending));
  if (!pending) return Status::Ok();
  // After a rollback not yet made permanent: opened, which makes it so.
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  return log->CreateSnapshot(snapshot, size, out);
}

Status LayoutStore::StoredLogExport(std::string_view e, const ExportMeta* known, ExportMeta* meta,
                                    bool* is_log) {
  bool found = true;
  if (known) {
    *meta = *known;
  } else {
    std::string text;
    S3B_RETURN_IF_ERROR(next_->ReadMeta(e, &text, &found));
    if (found) S3B_RETURN_IF_ERROR(ExportMeta::Parse(e, text, meta));
  }
  *is_log = found && meta->layout == ExportLayout::kLog && meta->snapshot.empty();
  return Status::Ok();
}

Status LayoutStore::StoredForChange(std::string_view e, const ExportMeta* known, ExportMeta* meta,
                                    bool* is_log, std::shared_ptr<ObjectTransport>* transport,
                                    WriteFence* fence) {
  S3B_RETURN_IF_ERROR(StoredLogExport(e, known, meta, is_log));
  if (!*is_log) return Status::Ok();
  S3B_RETURN_IF_ERROR(Transport(transport));
  if (fence_for_) *fence = fence_for_(e);
  return Status::Ok();
}

Status LayoutStore::SnapshotsOf(std::string_view e, const ExportMeta* known,
                                std::unique_ptr<LogExport>* light,
                                LogExport** log, bool* is_log) {
  *log = nullptr;
  *is_log = false;
  if (WithOpenLog(e, [&](LogExport& open) { *log = &open; })) {
    *is_log = true;
    return Status::Ok();
  }
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(StoredLogExport(e, known, &meta, is_log));
  if (!*is_log) return Status::Ok();
  std::shared_ptr<ObjectTransport> transport;
  S3B_RETURN_IF_ERROR(Transport(&transport));
  S3B_RETURN_IF_ERROR(LogExport::OpenForSnapshots(std::move(transport), std::string(e),
                                                  fence_for_ ? fence_for_(e) : WriteFence(),
                                                  light));
  *log = light->get();
  return Status::Ok();
}

Status LayoutStore::DeleteSnapshot(std::string_view e, const std::string& snapshot,
                                   bool* is_log, const ExportMeta* known) {
  std::unique_ptr<LogExport> light;
  LogExport* log;
  S3B_RETURN_IF_ERROR(SnapshotsOf(e, known, &light, &log, is_log));
  if (!log) return Status::Ok();
  if (light) {
    // A rollback not yet made permanent may still need what the snapshot keeps: opened, which
    // makes it so (the root alone does not know what the rollback revived).
    bool pending = false;
    S3B_RETURN_IF_ERROR(light->RollbackPending(&pending));
    if (pending) {
      light.reset();
      S3B_RETURN_IF_ERROR(Resolve(e, &log));
    }
  }
  // A view of it still served reads what is no longer kept: errors, never other data.
  const std::string full = std::string(e) + "@" + snapshot;
  return log->DeleteSnapshot(snapshot, [&](const std::string& clone, bool* based) {
    return BasedOn(clone, full, based);
  });
}

Status LayoutStore::BasedOn(const std::string& clone, const std::string& full, bool* based) {
  std::string text;
  bool found = false;
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(next_->ReadMeta(clone, &text, &found));
  *based = found && (!ExportMeta::Parse(clone, text, &meta).ok() || meta.base == full);
  return Status::Ok();
}

Status LayoutStore::Rollback(std::string_view e, const std::string& snapshot, bool* is_log,
                             const ExportMeta* known, SnapshotRecord* record) {
  if (WithOpenLog(e, [](LogExport&) {}))
    return Status::Busy("export '" + std::string(e) + "' is open here: it is rolled back only "
                        "when no process has it open");
  ExportMeta meta;
  std::shared_ptr<ObjectTransport> transport;
  WriteFence fence;
  S3B_RETURN_IF_ERROR(StoredForChange(e, known, &meta, is_log, &transport, &fence));
  if (!*is_log) return Status::Ok();
  return LogExport::RollbackStored(std::move(transport), std::string(e), snapshot,
                                   fence ? &fence : nullptr, record);
}

Status LayoutStore::AddClone(std::string_view e, const std::string& snapshot,
                             const std::string& clone, bool* is_log, const ExportMeta* known) {
  Status s;
  if (WithOpenLog(e, [&](LogExport& log) { s = log.AddClone(snapshot, clone); })) {
    *is_log = true;
    return s;
  }
  // Not open: the marker alone, whatever else the export has (the lease keeps a deletion of
  // the snapshot from running meanwhile).
  ExportMeta meta;
  std::shared_ptr<ObjectTransport> transport;
  WriteFence fence;
  S3B_RETURN_IF_ERROR(StoredForChange(e, known, &meta, is_log, &transport, &fence));
  if (!*is_log) return Status::Ok();
  return LogExport::AddCloneOfStored(*transport, std::string(e), snapshot, clone,
                                     fence ? &fence : nullptr);
}

Status LayoutStore::CopyBaseBlocks(std::string_view e,
                                   const std::function<void(uint64_t, uint64_t)>& progress,
                                   bool* is_log) {
  LogExport* log;
  S3B_RETURN_IF_ERROR(Resolve(e, &log));
  *is_log = log != nullptr;
  return log ? log->CopyBaseBlocks(progress) : Status::Ok();
}

Status LayoutStore::ListSnapshots(std::string_view e, std::vector<SnapshotInfo>* out,
                                  bool* is_log) {
  out->clear();
  std::unique_ptr<LogExport> light;
  LogExport* log = nullptr;
  Status s = SnapshotsOf(e, nullptr, &light, &log, is_log);
  if (!s.ok() && *is_log) {
    // An export whose checkpoint cannot be read still has its snapshots' records.
    std::shared_ptr<ObjectTransport> transport;
    S3B_RETURN_IF_ERROR(Transport(&transport));
    std::vector<SnapshotRecord> records;
    S3B_RETURN_IF_ERROR(log::ListSnapshots(*transport, e, &records));
    for (SnapshotRecord& r : records) out->push_back({std::move(r), 0, {}});
    return Status::Ok();
  }
  S3B_RETURN_IF_ERROR(s);
  if (log) *out = log->Snapshots();
  // Only the clones still based on each (a marker may outlive its clone).
  for (SnapshotInfo& info : *out) {
    const std::string full = std::string(e) + "@" + info.record.name;
    std::vector<std::string> based;
    for (const std::string& clone : info.clones) {
      bool is = false;
      S3B_RETURN_IF_ERROR(BasedOn(clone, full, &is));
      if (is) based.push_back(clone);
    }
    info.clones = std::move(based);
  }
  return Status::Ok();
}

std::map<std::string, LogStats> LayoutStore::OpenLogStats() {
  std::map<std::string, std::shared_ptr<Entry>, std::less<>> entries;
  {
    MutexLock l(&mu_);
    entries = entries_;
  }
  std::map<std::string, LogStats> out;
  for (auto& [name, entry] : entries) {
    MutexLock l(&entry->mu);
    if (entry->log) out[name] = entry->log->Stats();
  }
  return out;
}

}  // namespace s3block::log
