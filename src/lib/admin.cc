#include "s3block/admin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/safe_file.h"
#include "log/layout_store.h"
#include "log/snapshot.h"
#include "s3block/params.h"
#include "s3block/volume.h"
#include "util/fd_io.h"
#include "util/zero.h"

namespace s3block {
namespace {

using Clock = std::chrono::steady_clock;

std::string Q(std::string_view name) { return "'" + QuoteForMessage(name) + "'"; }

// The error of every command that names an export the store does not hold.
Status NotFound(BlockStore& store, std::string_view name) {
  return Status::NotFound("export " + Q(name) + " does not exist in " + store.Describe());
}

Status Cancelled(const std::string& what) {
  return Status::Cancelled(what + " interrupted");
}

// Runs fn(i) for i in [0, n) on up to `threads` threads. Stops at the first error (returned)
// or when options.cancel becomes true (kCancelled); reports progress a few times a second.
Status ParallelFor(uint64_t n, const AdminOptions& options, const std::string& what,
                   const std::function<Status(uint64_t)>& fn) {
  std::atomic<uint64_t> next{0}, done{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  Status first_error;
  std::atomic<int64_t> last_report{0};
  auto report = [&](bool force) {
    if (!options.progress || n == 0) return;
    int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                      Clock::now().time_since_epoch()).count();
    int64_t last = last_report.load();
    if (!force && (now - last < 200 || !last_report.compare_exchange_strong(last, now))) return;
    std::lock_guard<std::mutex> lock(mu);
    options.progress(done.load(), n);
  };
  auto worker = [&] {
    for (;;) {
      if (stop.load()) return;
      if (options.cancel && options.cancel->load()) {
        stop = true;
        return;
      }
      uint64_t i = next.fetch_add(1);
      if (i >= n) return;
      Status s = fn(i);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.ok()) first_error = s;
        stop = true;
        return;
      }
      done.fetch_add(1);
      report(false);
    }
  };
  int threads = static_cast<int>(std::min<uint64_t>(std::max(options.threads, 1), std::max<uint64_t>(n, 1)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  report(true);
  if (!first_error.ok()) return first_error;
  if (done.load() < n) return Cancelled(what);
  return Status::Ok();
}

Status ReadMetaOf(BlockStore& store, std::string_view name, ExportMeta* meta, bool* found) {
  std::string text;
  S3B_RETURN_IF_ERROR(store.ReadMeta(name, &text, found));
  if (!*found) return Status::Ok();
  return ExportMeta::Parse(name, text, meta);
}

Status RequireReady(BlockStore& store, std::string_view name, ExportMeta* meta) {
  bool found = false;
  S3B_RETURN_IF_ERROR(ReadMetaOf(store, name, meta, &found));
  if (!found) return NotFound(store, name);
  // Not kBusy, which tells the command's caller that a server holds the export (exit 4): this
  // one waits for no one, but for the import, copy or delete to be run again.
  if (meta->state != ExportMeta::State::kReady)
    return Status::Error(EUCLEAN, "export " + Q(name) + " is " +
                                    (meta->state == ExportMeta::State::kDeleting ? "being deleted"
                                                                                 : "incomplete"));
  return Status::Ok();
}

// kNotFound unless the export has metadata or blocks: checked before claiming it, since claiming
// creates the export's directory in a file store.
Status RequireExists(BlockStore& store, std::string_view name) {
  std::string text;
  bool found = false;
  // Metadata that cannot be read (damaged, or encrypted without the key) still exists: the
  // operation itself says what is wrong with it.
  if (!store.ReadMeta(name, &text, &found).ok() || found) return Status::Ok();
  bool any = false;
  S3B_RETURN_IF_ERROR(store.ListBlocks(name, [&](uint64_t) { any = true; }));
  if (any) return Status::Ok();
  return NotFound(store, name);
}

// Takes the export's lease, as a serving nbdkit does: to change the export, or to read all of it
// (export, verify) while nothing else changes it. `refusing` heads the message when a server
// holds it.
Status Claim(BlockStore& store, std::string_view name, const AdminOptions& options,
             std::unique_ptr<ExportLease>* lease, const char* refusing = "refusing to change it") {
  Status s = store.AcquireLease(name, DescribeThisProcess(options.holder), options.force, lease);
  if (s.IsNotSupported()) return Status::Ok();  // the store cannot lock; nothing to claim
  if (s.IsBusy()) return s.Annotate(refusing);
  return s;
}

// Claim for export and verify, which only read. Where the lease cannot be taken for another
// reason than a holder (read-only credentials: S3 refuses the lease's PUT), they read without it
// as long as no server holds the export, and say so.
Status ClaimToRead(BlockStore& store, std::string_view name, const AdminOptions& options,
                   std::unique_ptr<ExportLease>* lease, const char* refusing) {
  // A snapshot never changes, and has no lease of its own.
  std::string of, snapshot;
  if (IsSnapshot(store, name, &of, &snapshot)) return Status::Ok();
  Status s = Claim(store, name, options, lease, refusing);
  if (s.ok() || s.IsBusy()) return s;
  std::string holder;
  if (!store.QueryLease(name, &holder).ok()) return s;
  if (!holder.empty())
    return Status::Busy(std::string(refusing) + ": export " + Q(name) + " is in use by " + holder);
  if (options.warn)
    options.warn("could not take the lease of export " + Q(name) + " (" + s.message() +
                 "); reading it without: a server that starts meanwhile could change it");
  return Status::Ok();
}

// After reading all of an export under its lease: an error if the lease was lost meanwhile (it
// could not be renewed, and another server may have changed the export as it was read).
Status StillHeld(const std::unique_ptr<ExportLease>& lease, std::string_view name, const char* what) {
  if (!lease) return Status::Ok();
  Status v = lease->Valid();
  if (v.ok()) return v;
  return Status::IoError(std::string(what) + " of export " + Q(name) +
                         " may mix old and new blocks: " + v.message());
}

// Writes `len` zero bytes at `off` of the block device fd: with one request to the device
// (fallocate's ZERO_RANGE, the kernel's BLKZEROOUT) where it can, else by writing zeros.
Status ZeroDeviceRange(int fd, uint64_t off, uint64_t len, const std::string& path) {
  if (::fallocate(fd, FALLOC_FL_ZERO_RANGE, static_cast<off_t>(off), static_cast<off_t>(len)) == 0)
    return Status::Ok();
  static const std::vector<uint8_t> zeros(1 << 20, 0);
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, zeros.size()));
    if (PwriteFull(fd, zeros.data(), n, static_cast<off_t>(off)) < 0)
      return Status::FromErrno(errno, "write " + path);
    off += n;
    len -= n;
  }
  return Status::Ok();
}

Status ListIds(BlockStore& store, std::string_view name, std::vector<uint64_t>* ids) {
  ids->clear();
  S3B_RETURN_IF_ERROR(store.ListBlocks(name, [&](uint64_t id) { ids->push_back(id); }));
  std::sort(ids->begin(), ids->end());
  return Status::Ok();
}

AdminOptions Quiet(const AdminOptions& options) {
  AdminOptions q = options;
  q.progress = nullptr;
  return q;
}

// Deletes `ids` in batches, in parallel.
Status DeleteIds(BlockStore& store, std::string_view name, const std::vector<uint64_t>& ids,
                 const AdminOptions& options) {
  uint64_t batches = (ids.size() + kDeleteBatch - 1) / kDeleteBatch;
  // Progress in blocks, not in batches: every batch but the last holds kDeleteBatch of them.
  AdminOptions o = options;
  if (options.progress) {
    o.progress = [&](uint64_t done, uint64_t total) {
      const uint64_t blocks = std::min<uint64_t>(done * kDeleteBatch, ids.size());
      options.progress(done == total ? ids.size() : blocks, ids.size());
    };
  }
  return ParallelFor(batches, o, "delete", [&](uint64_t b) {
    size_t first = b * kDeleteBatch, n = std::min<size_t>(kDeleteBatch, ids.size() - first);
    return store.Delete(name, std::span<const uint64_t>(ids.data() + first, n), false);
  });
}

bool IsLog(const ExportMeta& meta) { return meta.layout == ExportLayout::kLog; }

// Reads the blocks `ids` (ascending) of export `name`, in parallel, and calls fn(read) for each
// (its status is the read's: fn decides what a failed one means). A log export's blocks are read
// in batches of the store's ReadBatchSize, a run of them being one ranged read of a segment
// rather than one request each; the blocks layout's one by one, as they always were. Progress
// counts blocks.
Status ForEachBlockRead(BlockStore& store, std::string_view name, bool log,
                        const std::vector<uint64_t>& ids, const AdminOptions& options,
                        const std::string& what, const std::function<Status(BlockRead&)>& fn) {
  const size_t batch = log ? std::max<size_t>(store.ReadBatchSize(name), 1) : 1;
  if (batch == 1) {
    return ParallelFor(ids.size(), options, what, [&](uint64_t i) {
      Bytes data;
      BlockRead r;
      r.id = ids[i];
      r.data = &data;
      r.status = store.Read(name, r.id, &data, &r.found);
      return fn(r);
    });
  }
  AdminOptions o = options;
  if (options.progress) {
    o.progress = [&](uint64_t done, uint64_t total) {
      options.progress(done == total ? ids.size() : std::min<uint64_t>(done * batch, ids.size()),
                       ids.size());
    };
  }
  return ParallelFor((ids.size() + batch - 1) / batch, o, what, [&](uint64_t b) {
    const size_t first = b * batch, n = std::min<size_t>(batch, ids.size() - first);
    std::vector<Bytes> data(n);
    std::vector<BlockRead> reads(n);
    for (size_t k = 0; k < n; ++k) {
      reads[k].id = ids[first + k];
      reads[k].data = &data[k];
    }
    store.ReadBatch(name, reads);  // each block's status its own: a bad one fails alone
    for (BlockRead& r : reads) S3B_RETURN_IF_ERROR(fn(r));
    return Status::Ok();
  });
}

// Closes an export when it goes out of scope unless Close() was called: declared after the
// lease, it runs before the lease is let go. Closing a log export stores what it holds and a
// checkpoint of its map (the next open reads that rather than every segment since the last);
// on an error path that is all it can do, and its own error is not the one to report.
class ExportCloser {
 public:
  ExportCloser(BlockStore& store, std::string_view name) : store_(store), name_(name) {}
  ~ExportCloser() {
    if (!closed_) (void)store_.CloseExport(name_);
  }
  ExportCloser(const ExportCloser&) = delete;
  ExportCloser& operator=(const ExportCloser&) = delete;
  Status Close() {
    closed_ = true;
    return store_.CloseExport(name_);
  }

 private:
  BlockStore& store_;
  const std::string name_;
  bool closed_ = false;
};

// An import or copy run again over the incomplete export the last attempt left (`found`) goes on
// in the layout it recorded: in the other, the blocks stored so far would stay where nothing
// reads or deletes them.
Status SameLayoutAsBefore(BlockStore& store, std::string_view name, bool found,
                          const ExportMeta& old, const ExportMeta& next) {
  if (!found || old.layout == next.layout) return Status::Ok();
  return Status::AlreadyExists("export " + Q(name) + " in " + store.Describe() +
                               " is an incomplete export of the " + LayoutName(old.layout) +
                               " layout; run the command again with --layout " +
                               LayoutName(old.layout) + ", or delete it first");
}

LogExportInfo LogInfoOf(const log::LogStats& s) {
  LogExportInfo i;
  i.segments = s.segments;
  i.segment_bytes = s.segment_bytes;
  i.live_bytes = s.live_bytes;
  i.dead_bytes = s.segment_bytes > s.live_bytes ? s.segment_bytes - s.live_bytes : 0;
  i.blocks = s.blocks;
  i.last_seq = s.last_seq;
  i.checkpoint_seq = s.checkpoint_seq;
  return i;
}

}  // namespace

Status GetExportInfo(BlockStore& store, std::string_view name, ExportInfo* info,
                     log::LayoutStore* layouts) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  *info = ExportInfo();
  info->name = std::string(name);
  bool found = false;
  std::string text;
  Status s = store.ReadMeta(name, &text, &found);
  if (s.IsPermissionDenied() && found) {
    // The document is there and sound; this process lacks the key its encryption needs (the codec
    // layer refuses such an export), which is no reason to hide its size or call it damaged.
    info->key_error = s.message();
    s = Status::Ok();
  }
  if (s.ok() && found) s = ExportMeta::Parse(name, text, &info->meta);
  if (!s.ok()) info->meta_error = s.message();
  info->has_meta = found && s.ok();
  std::vector<uint64_t> ids;
  Status ls = ListIds(store, name, &ids);
  if (!ls.ok() && info->has_meta && IsLog(info->meta) && info->key_error.empty()) {
    // Listing a log export reads its checkpoint and segments: damage there is shown, as damaged
    // metadata is, rather than hiding the rest.
    info->log_error = ls.message();
    ls = Status::Ok();
  }
  S3B_RETURN_IF_ERROR(ls);
  if (!found && ids.empty() && s.ok())
    return NotFound(store, name);
  if (layouts && info->has_meta && IsLog(info->meta) && info->log_error.empty()) {
    log::LogStats stats;
    bool is_log = false;
    Status st = layouts->LogStatsOf(name, &stats, &is_log);
    if (!st.ok()) info->log_error = st.message();
    else if (is_log) {
      info->has_log = true;
      info->log = LogInfoOf(stats);
    }
    std::vector<log::SnapshotInfo> snaps;
    if (st.ok() && is_log && layouts->ListSnapshots(name, &snaps, &is_log).ok()) {
      for (const log::SnapshotInfo& sn : snaps)
        info->snapshots.push_back({sn.record.name, sn.record.seq, sn.record.size,
                                   sn.record.created, sn.unique_bytes, sn.clones});
    }
  }
  info->blocks_stored = ids.size();
  uint32_t bs = info->has_meta ? info->meta.block_size : kDefaultBlockSize;
  info->allocated_bytes = info->blocks_stored * bs;
  if (info->has_meta) {
    uint64_t count = info->meta.block_count();
    info->blocks_past_end = static_cast<uint64_t>(
        ids.end() - std::lower_bound(ids.begin(), ids.end(), count));
  }
  Status q = store.QueryLease(name, &info->lease_holder);
  if (!q.ok() && !q.IsNotSupported()) return q;
  return Status::Ok();
}

Status ListExportInfo(BlockStore& store, std::vector<ExportInfo>* out,
                      log::LayoutStore* layouts) {
  out->clear();
  std::vector<std::string> names;
  S3B_RETURN_IF_ERROR(store.ListExports(&names));
  for (const auto& n : names) {
    ExportInfo info;
    Status s = GetExportInfo(store, n, &info, layouts);
    // A log export's map is in memory while it is open: one at a time, however many there are.
    if (info.has_meta && IsLog(info.meta)) (void)store.CloseExport(n);
    if (s.IsNotFound()) continue;  // an empty directory
    S3B_RETURN_IF_ERROR(s);
    out->push_back(std::move(info));
  }
  return Status::Ok();
}

Status CreateExport(BlockStore& store, std::string_view name, uint64_t size, uint32_t block_size,
                    const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  S3B_RETURN_IF_ERROR(ValidateExportSize("size", size));
  // Checked before the export is claimed, which makes its directory in a file store.
  S3B_RETURN_IF_ERROR(CheckLayoutBlockSize(options.layout, block_size));
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease));
  ExportMeta meta;
  bool found = false;
  Status s = ReadMetaOf(store, name, &meta, &found);
  std::vector<uint64_t> ids;
  S3B_RETURN_IF_ERROR(ListIds(store, name, &ids));
  if (found || !s.ok() || !ids.empty())
    return Status::AlreadyExists("export " + Q(name) + " already exists in " + store.Describe());
  meta = ExportMeta();
  meta.size = size;
  meta.block_size = block_size;
  meta.encoding = options.encoding;
  meta.layout = options.layout;
  return store.WriteMeta(name, meta.Serialize());
}

Status ResizeExport(BlockStore& store, std::string_view name, uint64_t new_size, bool allow_shrink,
                    const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  S3B_RETURN_IF_ERROR(ValidateExportSize("size", new_size));
  S3B_RETURN_IF_ERROR(RequireExists(store, name));
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease));
  ExportCloser closing(store, name);
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(RequireReady(store, name, &meta));
  const uint64_t old_size = meta.size;
  if (new_size < old_size && !allow_shrink) {
    return Status::Unconfirmed("shrinking export " + Q(name) + " from " + HumanSize(old_size) +
                               " to " + HumanSize(new_size) +
                               " deletes the data past the new end; add --force to do it");
  }
  std::vector<uint64_t> ids;
  S3B_RETURN_IF_ERROR(ListIds(store, name, &ids));
  ExportMeta next = meta;
  next.size = new_size;
  const uint64_t keep = std::min(meta.block_count(), next.block_count());
  // Shrinking: record the new size first, so that an interruption leaves only blocks past the
  // end, which nothing reads. Growing: first remove blocks past the old end (left by an earlier
  // interrupted shrink), which would otherwise reappear as data.
  if (new_size < old_size) S3B_RETURN_IF_ERROR(store.WriteMeta(name, next.Serialize()));
  std::vector<uint64_t> doomed(std::lower_bound(ids.begin(), ids.end(), keep), ids.end());
  S3B_RETURN_IF_ERROR(DeleteIds(store, name, doomed, options));
  // The bytes of the last kept block past the smaller size must read as zeros if it grows again.
  const uint64_t small = std::min(old_size, new_size);
  if (small % meta.block_size != 0) {
    uint64_t id = small / meta.block_size;
    Bytes data;
    bool found = false;
    S3B_RETURN_IF_ERROR(store.Read(name, id, &data, &found));
    if (found && data.size() == meta.block_size) {
      size_t cut = small % meta.block_size;
      if (!IsAllZero(data.data() + cut, data.size() - cut)) {
        std::memset(data.data() + cut, 0, data.size() - cut);
        S3B_RETURN_IF_ERROR(store.Write(name, id, data, false));
      }
    }
  }
  S3B_RETURN_IF_ERROR(store.Flush(name));
  if (new_size >= old_size) S3B_RETURN_IF_ERROR(store.WriteMeta(name, next.Serialize()));
  return closing.Close();
}

bool IsSnapshot(BlockStore& store, std::string_view full, std::string* name,
                std::string* snapshot) {
  if (full.find('@') == std::string_view::npos) return false;
  ExportMeta meta;
  bool found = false;
  if (!ReadMetaOf(store, full, &meta, &found).ok() || !found || meta.snapshot.empty())
    return false;
  return log::SplitSnapshotName(full, name, snapshot);
}

namespace {

// The common part of the commands of log exports only (snapshots, gc, repair): export `name`
// is a log export, ready, claimed, and opened through options.layouts; fn runs on it, and it is
// closed. Of an export of the blocks layout (metadata that says so, or blocks without any),
// the error is "export NAME has the blocks layout" and `not_log`.
// With options.ask_server, the server holding the export (if one does) runs control command
// `server_args` instead (and *output is its output): asked first, which costs a read of the
// lease rather than a claim that fails.
Status WithLogExportClaimed(BlockStore& store, std::string_view name, const AdminOptions& options,
                            std::string_view not_log, const char* refusing,
                            const std::vector<std::string>& server_args, std::string* output,
                            const std::function<Status(const ExportMeta&)>& fn) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  // (Not with force, which takes the export over from whoever holds it.)
  if (options.ask_server && !server_args.empty() && !options.force) {
    bool asked = false;
    Status s = options.ask_server(name, server_args, output, &asked);
    if (asked) return s;
  }
  ExportMeta meta;
  bool found = false;
  // Checked before claiming it, which makes its directory in a file store.
  S3B_RETURN_IF_ERROR(ReadMetaOf(store, name, &meta, &found));
  if (!found) S3B_RETURN_IF_ERROR(RequireExists(store, name));  // blocks without metadata
  if (!found || !IsLog(meta))
    return Status::InvalidArgument("export " + Q(name) + " has the blocks layout" +
                                   std::string(not_log));
  if (options.layouts == nullptr)
    return Status::NotSupported("this store has no log layout for export " + Q(name));
  if (!meta.snapshot.empty())
    return Status::InvalidArgument(Q(name) + " is a snapshot, not an export");
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease, refusing));
  ExportCloser closing(store, name);
  S3B_RETURN_IF_ERROR(RequireReady(store, name, &meta));
  S3B_RETURN_IF_ERROR(fn(meta));
  return closing.Close();
}

std::string NotLogForSnapshots(std::string_view name) {
  return ": snapshots are of log exports (layout=log) only; 's3block copy " + std::string(name) +
         " NEW --layout log' makes one";
}

}  // namespace

Status SnapshotExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options, SnapshotSummary* out) {
  S3B_RETURN_IF_ERROR(log::ValidateSnapshotName(snapshot));
  std::string text;
  bool by_server = true;
  Status s = WithLogExportClaimed(
      store, name, options, NotLogForSnapshots(name), "refusing to take its snapshot here",
      {"snapshot", std::string(name), snapshot}, &text, [&](const ExportMeta& meta) {
        by_server = false;
        log::SnapshotRecord r;
        bool is_log = false;
        S3B_RETURN_IF_ERROR(
            options.layouts->CreateSnapshot(name, snapshot, meta.size, &r, &is_log, &meta));
        *out = {r.name, r.seq, r.size, r.created, 0, {}};
        return Status::Ok();
      });
  if (!s.ok() || !by_server) return s;
  // The server's reply is the snapshot's record.
  log::SnapshotRecord r;
  S3B_RETURN_IF_ERROR(log::ParseSnapshotRecord(text, "from the server", &r));
  *out = {snapshot, r.seq, r.size, r.created, 0, {}};
  return Status::Ok();
}

Status DeleteSnapshot(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options) {
  std::string ignored;
  return WithLogExportClaimed(store, name, options, NotLogForSnapshots(name),
                              "refusing to delete its snapshot here",
                              {"delete-snapshot", std::string(name), snapshot}, &ignored,
                              [&](const ExportMeta& meta) {
    bool is_log = false;
    return options.layouts->DeleteSnapshot(name, snapshot, &is_log, &meta);
  });
}

Status CloneExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                   std::string_view clone, const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(clone));
  if (clone.find('@') != std::string_view::npos)
    return Status::InvalidArgument("export name " + Q(clone) +
                                   " refused: a name with '@' is a snapshot's (NAME@SNAP)");
  const std::string full = std::string(name) + "@" + snapshot;
  if (options.layouts == nullptr)
    return Status::NotSupported("this store has no log layout for export " + Q(name));
  ExportMeta view;
  bool found = false;
  std::string text;
  S3B_RETURN_IF_ERROR(options.layouts->ReadSnapshotMeta(full, &text, &found));
  if (found) S3B_RETURN_IF_ERROR(ExportMeta::Parse(full, text, &view));
  if (!found || view.snapshot.empty())
    return Status::NotFound("export " + Q(name) + " has no snapshot " + Q(snapshot) + " in " +
                            store.Describe());
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, clone, options, &lease));
  ExportMeta old;
  Status ms = ReadMetaOf(store, clone, &old, &found);
  bool any = found || !ms.ok();
  // Blocks without metadata are an export too (the specification's first version's).
  if (!any)
    S3B_RETURN_IF_ERROR(
        options.layouts->ListBlocksWithoutMeta(clone, [&](uint64_t) { any = true; }));
  if (any)
    return Status::AlreadyExists("export " + Q(clone) + " already exists in " + store.Describe());
  // The snapshot first learns it has a clone: a crash before the clone's metadata leaves only
  // a marker of no export, which is ignored.
  std::string ignored;
  S3B_RETURN_IF_ERROR(WithLogExportClaimed(store, name, options, NotLogForSnapshots(name),
                                           "refusing to record the clone",
                                           {"add-clone", std::string(name), snapshot,
                                            std::string(clone)},
                                           &ignored, [&](const ExportMeta& meta) {
    bool is_log = false;
    return options.layouts->AddClone(name, snapshot, std::string(clone), &is_log, &meta);
  }));
  ExportMeta meta = view;  // the snapshot's size and encoding; its blocks bound to blocks_of
  meta.snapshot.clear();
  meta.base = full;
  meta.state = ExportMeta::State::kReady;
  S3B_RETURN_IF_ERROR(store.WriteMeta(clone, meta.Serialize()));
  return store.CloseExport(clone);
}

Status RollbackExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(log::ValidateSnapshotName(snapshot));
  std::string ignored;
  // No server: the clients of one would see their disk change under them.
  AdminOptions no_server = options;
  no_server.ask_server = nullptr;
  return WithLogExportClaimed(store, name, no_server, NotLogForSnapshots(name),
                              "refusing to roll it back (stop it first)",
                              {}, &ignored, [&](const ExportMeta& meta) {
    bool is_log = false;
    log::SnapshotRecord r;
    Status s = options.layouts->Rollback(name, snapshot, &is_log, &meta, &r);
    if (s.IsNotFound())
      return Status::NotFound("export " + Q(name) + " has no snapshot " + Q(snapshot) + " in " +
                              store.Describe());
    S3B_RETURN_IF_ERROR(s);
    // Its size too.
    if (meta.size == r.size) return Status::Ok();
    ExportMeta next = meta;
    next.size = r.size;
    return store.WriteMeta(name, next.Serialize());
  });
}

Status FlattenExport(BlockStore& store, std::string_view name, const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  S3B_RETURN_IF_ERROR(RequireExists(store, name));
  ExportMeta meta;
  bool found = false;
  S3B_RETURN_IF_ERROR(ReadMetaOf(store, name, &meta, &found));
  if (!found || meta.base.empty())
    return Status::InvalidArgument("export " + Q(name) + " is no clone: nothing to flatten");
  if (options.layouts == nullptr)
    return Status::NotSupported("this store has no log layout for export " + Q(name));
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease, "refusing to flatten it"));
  ExportCloser closing(store, name);
  S3B_RETURN_IF_ERROR(RequireReady(store, name, &meta));
  std::vector<log::SnapshotInfo> snaps;
  bool is_log = false;
  S3B_RETURN_IF_ERROR(options.layouts->ListSnapshots(name, &snaps, &is_log));
  std::string names;
  for (const log::SnapshotInfo& sn : snaps)
    if (!sn.record.base.empty())
      names += (names.empty() ? "" : ", ") + Q(std::string(name) + "@" + sn.record.name);
  if (!names.empty())
    return Status::InvalidArgument("clone " + Q(name) + " has snapshots that read through its "
                                   "base: " + names + "; delete them first");
  S3B_RETURN_IF_ERROR(options.layouts->CopyBaseBlocks(name, options.progress, &is_log));
  // Its blocks stay bound to the name they were written under (blocks-of).
  meta.base.clear();
  S3B_RETURN_IF_ERROR(store.WriteMeta(name, meta.Serialize()));
  return closing.Close();
}

Status DeleteExport(BlockStore& store, std::string_view name, const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  std::string of, snapshot;
  if (IsSnapshot(store, name, &of, &snapshot)) return DeleteSnapshot(store, of, snapshot, options);
  S3B_RETURN_IF_ERROR(RequireExists(store, name));
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease));
  ExportMeta meta;
  bool found = false;
  Status ms = ReadMetaOf(store, name, &meta, &found);
  // A log export's blocks are not deleted one by one (each a record appended to a new segment,
  // only for all of them to be deleted next): its segments and checkpoints go with its metadata.
  // Nor listed, which reads its checkpoint, and fails if that is what is damaged.
  const bool log = ms.ok() && found && IsLog(meta);
  if (log && options.layouts) {
    // A snapshot is a point in time someone chose to keep: deleted one by one, by name.
    std::vector<log::SnapshotInfo> snaps;
    bool is_log = false;
    S3B_RETURN_IF_ERROR(options.layouts->ListSnapshots(name, &snaps, &is_log));
    if (!snaps.empty()) {
      std::string names;
      for (const log::SnapshotInfo& sn : snaps) {
        names += (names.empty() ? "" : ", ") + Q(std::string(name) + "@" + sn.record.name);
        for (const std::string& clone : sn.clones) names += " (the base of clone " + Q(clone) + ")";
      }
      return Status::InvalidArgument("export " + Q(name) + " has snapshots: " + names +
                                     "; delete them first (s3block delete NAME@SNAP)");
    }
  }
  std::vector<uint64_t> ids;
  if (ms.ok() && !log) S3B_RETURN_IF_ERROR(ListIds(store, name, &ids));
  if (!found && ids.empty() && ms.ok())
    return NotFound(store, name);
  // Mark it first: an interrupted delete leaves an export that is not served, rather than a
  // disk with holes punched in it.
  if (!ms.ok()) meta = ExportMeta();  // damaged metadata: replace it with a marker
  if (meta.block_size == 0) meta.block_size = kDefaultBlockSize;
  if (meta.size == 0) meta.size = meta.block_size;  // a marker's size means nothing, but parses
  meta.state = ExportMeta::State::kDeleting;
  S3B_RETURN_IF_ERROR(store.WriteMeta(name, meta.Serialize()));
  // Damaged metadata named no layout the store could read: the blocks are listed under the
  // marker (the store deletes the log layout's objects of an export marked so with it).
  if (!ms.ok()) S3B_RETURN_IF_ERROR(ListIds(store, name, &ids));
  if (!log) {
    S3B_RETURN_IF_ERROR(DeleteIds(store, name, ids, options));
    S3B_RETURN_IF_ERROR(store.Flush(name));
  }
  // The last change, while the lease is still held; releasing it then removes what is left.
  S3B_RETURN_IF_ERROR(store.DeleteMeta(name));
  lease.reset();
  return Status::Ok();
}

Status CopyExport(BlockStore& store, std::string_view from, std::string_view to,
                  const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(from));
  S3B_RETURN_IF_ERROR(ValidateExportName(to));
  if (from == to) return Status::InvalidArgument("source and destination are the same export");
  S3B_RETURN_IF_ERROR(RequireExists(store, from));
  std::unique_ptr<ExportLease> src_lease, dst_lease;
  std::string of, snapshot;
  // A snapshot never changes, and has no lease of its own.
  if (!IsSnapshot(store, from, &of, &snapshot))
    S3B_RETURN_IF_ERROR(Claim(store, from, options, &src_lease));
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(RequireReady(store, from, &meta));
  ExportMeta next = meta;
  // A copy is an export of its own, whatever it was copied from (a snapshot, a clone).
  next.snapshot.clear();
  next.base.clear();
  next.blocks_of.clear();
  next.layout = options.layout_given ? options.layout : meta.layout;
  S3B_RETURN_IF_ERROR(CheckLayoutBlockSize(next.layout, next.block_size).Annotate("copying export " + Q(from)));
  S3B_RETURN_IF_ERROR(Claim(store, to, options, &dst_lease));
  bool dst_found = false;
  ExportMeta dst_meta;
  Status ds = ReadMetaOf(store, to, &dst_meta, &dst_found);
  std::vector<uint64_t> dst_ids;
  S3B_RETURN_IF_ERROR(ListIds(store, to, &dst_ids));
  if ((dst_found && dst_meta.state != ExportMeta::State::kIncomplete) || !ds.ok() ||
      (!dst_found && !dst_ids.empty()))
    return Status::AlreadyExists("export " + Q(to) + " already exists in " + store.Describe());
  next.state = ExportMeta::State::kIncomplete;
  S3B_RETURN_IF_ERROR(SameLayoutAsBefore(store, to, dst_found, dst_meta, next));
  ExportCloser closing(store, to);
  S3B_RETURN_IF_ERROR(store.WriteMeta(to, next.Serialize()));
  // A re-run after an interruption starts clean: remove what the last attempt copied.
  S3B_RETURN_IF_ERROR(DeleteIds(store, to, dst_ids, Quiet(options)));
  std::vector<uint64_t> ids;
  S3B_RETURN_IF_ERROR(ListIds(store, from, &ids));
  ids.erase(std::lower_bound(ids.begin(), ids.end(), meta.block_count()), ids.end());
  if (IsLog(meta) || IsLog(next)) {
    // No store copies a block into or out of a segment: read in runs, written one by one.
    S3B_RETURN_IF_ERROR(ForEachBlockRead(store, from, IsLog(meta), ids, options, "copy", [&](BlockRead& r) {
      S3B_RETURN_IF_ERROR(r.status);
      return r.found ? store.Write(to, r.id, *r.data, false) : Status::Ok();
    }));
  } else {
    S3B_RETURN_IF_ERROR(ParallelFor(ids.size(), options, "copy", [&](uint64_t i) {
      bool found = false;
      return store.CopyBlock(from, to, ids[i], &found);
    }));
  }
  S3B_RETURN_IF_ERROR(StillHeld(src_lease, from, "the copy"));
  S3B_RETURN_IF_ERROR(store.Flush(to));
  S3B_RETURN_IF_ERROR(closing.Close());
  next.state = ExportMeta::State::kReady;
  return store.WriteMeta(to, next.Serialize());
}

Status ImportImage(BlockStore& store, std::string_view name, const std::string& path,
                   uint32_t block_size, const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  UniqueFd closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) return Status::FromErrno(errno, "seek " + path);
    size = static_cast<uint64_t>(end);
  } else if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(path + " is not a regular file or a block device");
  }
  if (size == 0) return Status::InvalidArgument(path + " is empty");
  // Checked before the export is claimed, which makes its directory in a file store.
  S3B_RETURN_IF_ERROR(CheckLayoutBlockSize(options.layout, block_size));
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(Claim(store, name, options, &lease));
  ExportMeta meta;
  bool found = false;
  Status ms = ReadMetaOf(store, name, &meta, &found);
  std::vector<uint64_t> old_ids;
  S3B_RETURN_IF_ERROR(ListIds(store, name, &old_ids));
  if ((found && meta.state != ExportMeta::State::kIncomplete) || !ms.ok() ||
      (!found && !old_ids.empty()))
    return Status::AlreadyExists("export " + Q(name) + " already exists in " + store.Describe() +
                                 "; delete it first");
  const ExportMeta old = meta;
  meta = ExportMeta();
  meta.size = size;
  meta.block_size = block_size;
  meta.encoding = options.encoding;
  meta.state = ExportMeta::State::kIncomplete;
  meta.layout = found && !options.layout_given ? old.layout : options.layout;
  S3B_RETURN_IF_ERROR(CheckLayoutBlockSize(meta.layout, meta.block_size));
  S3B_RETURN_IF_ERROR(SameLayoutAsBefore(store, name, found, old, meta));
  ExportCloser closing(store, name);
  S3B_RETURN_IF_ERROR(store.WriteMeta(name, meta.Serialize()));
  S3B_RETURN_IF_ERROR(DeleteIds(store, name, old_ids, Quiet(options)));
  // Only blocks that overlap data in the file are read at all: holes are skipped by SEEK_DATA.
  std::vector<uint64_t> ids;
  const uint64_t count = meta.block_count();
  uint64_t pos = 0;
  while (pos < size) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data past pos
      data = static_cast<off_t>(pos);  // SEEK_DATA unsupported: treat everything as data
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = static_cast<off_t>(size);
    uint64_t first = static_cast<uint64_t>(data) / block_size;
    uint64_t last = std::min<uint64_t>((static_cast<uint64_t>(hole) + block_size - 1) / block_size, count);
    for (uint64_t id = std::max(first, ids.empty() ? 0 : ids.back() + 1); id < last; ++id) ids.push_back(id);
    pos = static_cast<uint64_t>(hole);
  }
  S3B_RETURN_IF_ERROR(ParallelFor(ids.size(), options, "import", [&](uint64_t i) {
    const uint64_t id = ids[i];
    thread_local Bytes buf;
    buf.assign(block_size, 0);
    const uint64_t off = id * block_size;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(block_size, size - off));
    ssize_t got = PreadFull(fd, buf.data(), want, static_cast<off_t>(off));
    if (got < 0) return Status::FromErrno(errno, "read " + path);
    if (static_cast<size_t>(got) < want)
      return Status::IoError(path + " shrank while it was being imported");
    if (IsAllZero(buf.data(), buf.size())) return Status::Ok();
    return store.Write(name, id, buf, false);
  }));
  S3B_RETURN_IF_ERROR(store.Flush(name));
  S3B_RETURN_IF_ERROR(closing.Close());
  meta.state = ExportMeta::State::kReady;
  return store.WriteMeta(name, meta.Serialize());
}

Status ExportImage(BlockStore& store, std::string_view name, const std::string& path,
                   const AdminOptions& options) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  S3B_RETURN_IF_ERROR(RequireExists(store, name));
  // The image is of one moment: no server may write the export meanwhile.
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(ClaimToRead(store, name, options, &lease, "refusing to export it while it changes"));
  ExportMeta meta;
  S3B_RETURN_IF_ERROR(RequireReady(store, name, &meta));
  std::vector<uint64_t> ids;
  S3B_RETURN_IF_ERROR(ListIds(store, name, &ids));
  ids.erase(std::lower_bound(ids.begin(), ids.end(), meta.block_count()), ids.end());
  // A block device is opened exclusively, as mkfs does: one that is mounted is refused.
  struct stat before;
  const bool device = ::stat(path.c_str(), &before) == 0 && S_ISBLK(before.st_mode);
  // (O_EXCL without O_CREAT: exclusive use of the device; with it, the path must not exist.)
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | (device ? O_EXCL : O_CREAT), 0644);
  if (fd < 0) {
    if (device && errno == EBUSY) return Status::Busy(path + " is in use (mounted?)");
    return Status::FromErrno(errno, "open " + path);
  }
  UniqueFd closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  const bool regular = S_ISREG(st.st_mode);
  if (regular) {
    // Truncate to nothing, then to the size: every block not written below is a hole.
    if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(meta.size)) != 0)
      return Status::FromErrno(errno, "truncate " + path);
  } else if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) return Status::FromErrno(errno, "seek " + path);
    if (static_cast<uint64_t>(end) < meta.size)
      return Status::InvalidArgument(path + " holds " + std::to_string(end) + " bytes, less than export " +
                                     Q(name) + "'s " + std::to_string(meta.size));
    // A device keeps what it held: the blocks not stored are written as zeros, run by run.
    uint64_t next = 0;
    auto zero_until = [&](uint64_t id) -> Status {
      const uint64_t from = next * meta.block_size;
      const uint64_t to = std::min<uint64_t>(id * meta.block_size, meta.size);
      if (to > from) S3B_RETURN_IF_ERROR(ZeroDeviceRange(fd, from, to - from, path));
      next = id + 1;
      return Status::Ok();
    };
    for (uint64_t id : ids) S3B_RETURN_IF_ERROR(zero_until(id));
    S3B_RETURN_IF_ERROR(zero_until(meta.block_count()));
  } else if (!S_ISCHR(st.st_mode)) {
    return Status::InvalidArgument(path + " is not a regular file or a device");
  }
  // (A character device, such as /dev/null, gets the stored blocks at their offsets.)
  S3B_RETURN_IF_ERROR(ForEachBlockRead(store, name, IsLog(meta), ids, options, "export", [&](BlockRead& r) {
    const uint64_t id = r.id;
    const Bytes& data = *r.data;
    S3B_RETURN_IF_ERROR(r.status);
    if (!r.found) return Status::Ok();
    if (data.size() != meta.block_size)
      return Status::IoError("block " + std::to_string(id) + " of export " + Q(name) + " has " +
                             std::to_string(data.size()) + " bytes, not " + std::to_string(meta.block_size));
    if (IsAllZero(data.data(), data.size()) && regular) return Status::Ok();
    const uint64_t off = id * meta.block_size;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(meta.block_size, meta.size - off));
    if (PwriteFull(fd, data.data(), n, static_cast<off_t>(off)) < 0)
      return Status::FromErrno(errno, "write " + path);
    return Status::Ok();
  }));
  if (::fsync(fd) != 0 && !S_ISCHR(st.st_mode)) return Status::FromErrno(errno, "fsync " + path);
  return StillHeld(lease, name, "the image");
}

Status VerifyExport(BlockStore& store, std::string_view name, const AdminOptions& options,
                    VerifyReport* report) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  *report = VerifyReport();
  S3B_RETURN_IF_ERROR(RequireExists(store, name));
  // A block a server trims or rewrites while it is read would look damaged.
  std::unique_ptr<ExportLease> lease;
  S3B_RETURN_IF_ERROR(ClaimToRead(store, name, options, &lease, "refusing to verify it while it changes"));
  ExportMeta meta;
  bool found = false;
  Status ms = ReadMetaOf(store, name, &meta, &found);
  std::vector<uint64_t> ids;
  Status ls = ListIds(store, name, &ids);
  if (!ls.ok() && ms.ok() && found && IsLog(meta)) {
    // A log export is listed from its checkpoint and the segments after it: what cannot be read
    // there is a problem found, as a block that cannot be read is.
    report->problems.push_back(ls.message());
    return Status::Ok();
  }
  S3B_RETURN_IF_ERROR(ls);
  if (!ms.ok()) {
    report->problems.push_back(ms.message());
    return Status::Ok();
  }
  if (!found) {
    if (ids.empty()) return NotFound(store, name);
    report->problems.push_back("export " + Q(name) + " has blocks but no metadata");
    meta.block_size = kDefaultBlockSize;
    meta.size = kMaxExportSize;
  }
  if (meta.state != ExportMeta::State::kReady)
    report->problems.push_back("export " + Q(name) + " is marked " +
                               (meta.state == ExportMeta::State::kDeleting ? "deleting" : "incomplete"));
  std::mutex mu;
  std::atomic<uint64_t> checked{0};
  // Blocks past the end are named without being read; ids is in order.
  const auto end = std::lower_bound(ids.begin(), ids.end(), meta.block_count());
  for (auto it = end; it != ids.end(); ++it) {
    report->problems.push_back("block " + std::to_string(*it) + " is stored past the end of the export");
    checked.fetch_add(1);
  }
  ids.erase(end, ids.end());
  Status s = ForEachBlockRead(store, name, found && IsLog(meta), ids, options, "verify", [&](BlockRead& r) {
    const uint64_t id = r.id;
    std::string problem;
    if (!r.status.ok()) {
      problem = "block " + std::to_string(id) + ": " + r.status.message();
    } else if (!r.found) {
      problem = "block " + std::to_string(id) + " was listed but cannot be found";
    } else if (r.data->size() != meta.block_size) {
      problem = "block " + std::to_string(id) + " has " + std::to_string(r.data->size()) +
                " bytes; the block size is " + std::to_string(meta.block_size);
    }
    checked.fetch_add(1);
    if (!problem.empty()) {
      std::lock_guard<std::mutex> lock(mu);
      report->problems.push_back(problem);
    }
    return Status::Ok();
  });
  report->blocks_checked = checked.load();
  if (s.ok() && options.layouts && found && IsLog(meta)) {
    // The segments themselves: every frame the map uses against its checksum, and the map
    // against the segments' entries.
    log::LogStats stats;
    bool is_log = false;
    s = options.layouts->LogStatsOf(name, &stats, &is_log);
    uint64_t problems = 0;
    if (s.ok() && is_log) {
      report->segments_checked = stats.segments;
      s = options.layouts->VerifyLog(
          name, [&](const std::string& p) { report->problems.push_back(p); }, &problems, &is_log);
    }
  }
  std::sort(report->problems.begin(), report->problems.end());
  // A damaged frame is found twice, by the block's read and by the segment's check, in the same
  // words: one line for it.
  report->problems.erase(std::unique(report->problems.begin(), report->problems.end()),
                         report->problems.end());
  S3B_RETURN_IF_ERROR(s);
  return StillHeld(lease, name, "the verification");
}

Status RepairExport(BlockStore& store, std::string_view name, const AdminOptions& options,
                    RepairReport* report) {
  *report = RepairReport();
  return WithLogExportClaimed(
      store, name, options,
      ": repair applies to log exports (layout=log) only; 's3block verify' names a damaged "
      "block of it",
      "refusing to repair it (stop it first)", {}, nullptr, [&](const ExportMeta&) {
        bool is_log = false;
        return options.layouts->SetAsideDamaged(name, &report->first_damaged, &report->segments,
                                                &report->bytes, &is_log);
      });
}

Status CollectExportGarbage(BlockStore& store, std::string_view name, bool all,
                            const AdminOptions& options, GcReport* report) {
  *report = GcReport();
  const char* not_log =
      " (one object per block, deleted as it is trimmed): gc applies to log exports "
      "(layout=log) only";
  return WithLogExportClaimed(
      store, name, options, not_log, "refusing to collect its garbage", {}, nullptr,
      [&](const ExportMeta&) {
        log::GcResult result;
        bool is_log = false;
        S3B_RETURN_IF_ERROR(options.layouts->CollectGarbage(name, all, &result, &is_log));
        if (!is_log) {
          return Status::InvalidArgument("export " + Q(name) + " has the blocks layout" +
                                         not_log);
        }
        report->segments_freed = result.segments_freed;
        report->bytes_freed = result.bytes_freed;
        report->bytes_copied = result.bytes_copied;
        return Status::Ok();
      });
}

}  // namespace s3block
