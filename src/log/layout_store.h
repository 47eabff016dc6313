// LayoutStore: the leaf of the stack that gives each export the layout its metadata records.
//
// Below it are two ways of keeping blocks in one place (a directory or a bucket): `blocks`, the
// specification's layout (FileStore, S3Store), which also keeps every export's metadata and
// lease, and `transport`, the same place as objects, over which the log layout (LogExport)
// keeps the exports created with layout=log. Calls about an export whose metadata says
// layout=log go to its LogExport, opened on the first such call; every other call (metadata,
// leases, listing exports, exports of the default layout, and those with no metadata, which are
// the specification's first version's) goes to `blocks` unchanged.
//
// A name NAME@SNAP that is no export's is snapshot SNAP of log export NAME (snapshot.h): its
// metadata is NAME's with the snapshot's size, blocks-of=NAME and snapshot=SNAP, and its blocks
// are read from a view of NAME's segments; writing to it is refused. A new export's name may not
// contain '@'.
//
// A clone (metadata base=NAME@SNAP) is opened over a view of that snapshot, itself over its own
// base if it was taken of a clone: the chain ends at an export that is no clone.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_LOG_LAYOUT_STORE_H_
#define S3BLOCK_LOG_LAYOUT_STORE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "base/object_transport.h"
#include "log/log_export.h"
#include "s3block/block_store.h"
#include "s3block/export_meta.h"
#include "util/mutex.h"

namespace s3block::log {

class LayoutStore : public StoreDecorator {
 public:
  // make_transport is called once, when the first log export is opened (no I/O happens before
  // Check); fence_for(name) is the fence of changes to export `name` (empty: none).
  using TransportMaker = std::function<Status(std::shared_ptr<ObjectTransport>* out)>;
  LayoutStore(std::shared_ptr<BlockStore> blocks, TransportMaker make_transport,
              LogOptions options, std::function<WriteFence(std::string_view name)> fence_for);
  ~LayoutStore() override;

  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override;
  void ReadBatch(std::string_view e, std::span<BlockRead> reads) override;
  size_t ReadBatchSize(std::string_view e) const override;
  uint64_t ReadBatchBytes(std::string_view e) const override;
  bool BuffersWrites(std::string_view e) const override;
  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool fua) override;
  Status Overwrite(std::string_view e, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  // A log export appends the run with one call.
  Status OverwriteRun(std::string_view e, uint64_t first, std::span<const uint8_t> data,
                      uint32_t block_size, bool fua) override;
  Status Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) override;
  Status Flush(std::string_view e) override;
  Status ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) override;
  Status ListBlockDigests(std::string_view e,
                          const std::function<void(uint64_t, std::string_view)>& fn) override;
  Status ReadMeta(std::string_view e, std::string* text, bool* found) override;
  Status WriteMeta(std::string_view e, std::string_view text) override;
  // For a log export, removes its segments and checkpoints first.
  Status DeleteMeta(std::string_view e) override;
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;
  Status CloseExport(std::string_view e) override;

  // What the admin command and the stats file show of log exports. *is_log is false (and
  // nothing else is done) for an export of the default layout.
  Status LogStatsOf(std::string_view e, LogStats* stats, bool* is_log);
  Status CollectGarbage(std::string_view e, bool all, GcResult* result, bool* is_log);
  Status VerifyLog(std::string_view e, const std::function<void(const std::string&)>& report,
                   uint64_t* problems, bool* is_log);
  // Snapshots of log export e (snapshot.h); `size` is the export's size now. *is_log is false
  // (and nothing is done) for an export of the default layout. `known` (may be null) is e's
  // metadata as the caller read it under e's lease: not read again.
  Status CreateSnapshot(std::string_view e, const std::string& snapshot, uint64_t size,
                        SnapshotRecord* out, bool* is_log, const ExportMeta* known = nullptr);
  // Refused while a clone is based on the snapshot (its metadata is read to tell).
  Status DeleteSnapshot(std::string_view e, const std::string& snapshot, bool* is_log,
                        const ExportMeta* known = nullptr);
  Status AddClone(std::string_view e, const std::string& snapshot, const std::string& clone,
                  bool* is_log, const ExportMeta* known = nullptr);
  // The metadata snapshot `full` (NAME@SNAP) is served with (*found false if there is no such
  // snapshot), without first looking for an export of that very name as ReadMeta does: for the
  // commands that name a snapshot.
  Status ReadSnapshotMeta(std::string_view full, std::string* text, bool* found);
  // The blocks stored in the default layout's place for export e, which has no metadata (the
  // caller read it): not read again.
  Status ListBlocksWithoutMeta(std::string_view e, const std::function<void(uint64_t)>& fn);
  // LogExport::SetAsideDamaged of log export e.
  Status SetAsideDamaged(std::string_view e, uint64_t* first, uint64_t* moved, uint64_t* bytes,
                         bool* is_log);
  // Whether log export e (not a snapshot's view) is open here: its metadata was read.
  bool IsOpenLogExport(std::string_view e) const;
  // Of an export no process has open (Busy if this one has): LogExport::RollbackStored, which
  // sets *record to the snapshot's.
  Status Rollback(std::string_view e, const std::string& snapshot, bool* is_log,
                  const ExportMeta* known, SnapshotRecord* record);
  // A clone's blocks still read from its base, copied into its own segments (LogExport).
  Status CopyBaseBlocks(std::string_view e, const std::function<void(uint64_t, uint64_t)>& progress,
                        bool* is_log);
  Status ListSnapshots(std::string_view e, std::vector<SnapshotInfo>* out, bool* is_log);
  // The stats of every log export open in this process, by name.
  std::map<std::string, LogStats> OpenLogStats();

 private:
  struct Entry {
    Mutex mu;
    bool resolved GUARDED_BY(mu) = false;
    ExportLayout layout GUARDED_BY(mu) = ExportLayout::kBlocks;
    std::unique_ptr<LogExport> log GUARDED_BY(mu);
    Status error GUARDED_BY(mu);
    // A snapshot's view: the export whose it is, and its record.
    bool view GUARDED_BY(mu) = false;
    std::string of GUARDED_BY(mu);
    SnapshotRecord record GUARDED_BY(mu);
    // A clone's base (metadata base=), NAME@SNAP.
    std::string base GUARDED_BY(mu);
  };
  std::shared_ptr<Entry> EntryFor(std::string_view e) const EXCLUDES(mu_);
  // Runs fn on export e's LogExport if it is open here (a server's, or a view), under the
  // entry's lock so that it is not closed meanwhile; false, and nothing run, if it is not.
  bool WithOpenLog(std::string_view e, const std::function<void(LogExport&)>& fn);
  // The export's LogExport, opened if need be; null for an export of the default layout.
  Status Resolve(std::string_view e, LogExport** log);
  // True if export e's metadata is known (read already) to say layout=log.
  bool KnownLog(std::string_view e) const EXCLUDES(mu_);
  // Records the layout a metadata document gives (when it parses).
  void Learn(std::string_view e, std::string_view meta_text);
  // If e (which has no metadata) is NAME@SNAP of a log export NAME with snapshot SNAP: *found,
  // and the metadata it is served with, NAME and the snapshot's record.
  Status FindSnapshot(std::string_view e, std::string* meta_text, std::string* of,
                      SnapshotRecord* record, bool* found);
  // Export e's metadata (`known`, or read if null): *is_log if it is a log export (not a
  // snapshot's view).
  Status StoredLogExport(std::string_view e, const ExportMeta* known, ExportMeta* meta,
                         bool* is_log);
  // StoredLogExport, and for a log export the transport and the fence (may be empty) that
  // change it.
  Status StoredForChange(std::string_view e, const ExportMeta* known, ExportMeta* meta,
                         bool* is_log, std::shared_ptr<ObjectTransport>* transport,
                         WriteFence* fence);
  // The export's LogExport for an operation on its snapshots: the one open here (a server's),
  // else one opened for its snapshots only (LogExport::OpenForSnapshots, owned by *light),
  // without loading its map. *log is null for an export of the default layout.
  Status SnapshotsOf(std::string_view e, const ExportMeta* known,
                     std::unique_ptr<LogExport>* light, LogExport** log, bool* is_log);
  // Whether export `clone` is based on snapshot `full` (NAME@SNAP), as its metadata says
  // (metadata that does not parse counts as based on it: kept, to be safe).
  Status BasedOn(const std::string& clone, const std::string& full, bool* based);
  // Opens the view of snapshot `base` (NAME@SNAP) a clone reads through to, over its own base.
  Status OpenBase(const std::string& base, int depth, std::unique_ptr<LogExport>* out);

  Status Transport(std::shared_ptr<ObjectTransport>* out) EXCLUDES(mu_);

  const TransportMaker make_transport_;
  const LogOptions options_;
  const std::function<WriteFence(std::string_view)> fence_for_;
  mutable Mutex mu_;
  mutable std::map<std::string, std::shared_ptr<Entry>, std::less<>> entries_ GUARDED_BY(mu_);
  std::shared_ptr<ObjectTransport> transport_ GUARDED_BY(mu_);
};

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_LAYOUT_STORE_H_
