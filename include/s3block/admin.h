// Export administration: what the s3block command does, as a library over any BlockStore.
//
// Every operation that changes an export first claims the export's lease, so it never races a
// running server (unless forced). Long operations run their blocks in parallel, report progress
// through a callback, and stop between blocks when `cancel` becomes true, leaving the store
// consistent: an interrupted import or copy leaves its export marked incomplete (not served), an
// interrupted delete leaves it marked deleting (not served), until the operation is run again.
#ifndef S3BLOCK_ADMIN_H_
#define S3BLOCK_ADMIN_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "s3block/block_store.h"
#include "s3block/export_meta.h"

namespace s3block {

namespace log {
class LayoutStore;
}

// What a log-structured export (layout=log) holds, as its checkpoint and the segments after it
// say.
struct LogExportInfo {
  uint64_t segments = 0;        // stored
  uint64_t segment_bytes = 0;   // their size
  uint64_t live_bytes = 0;      // of the frames the map points at
  uint64_t dead_bytes = 0;      // segment_bytes - live_bytes: heads, and what the collector frees
  uint64_t blocks = 0;          // mapped
  uint64_t last_seq = 0;        // the last segment applied
  uint64_t checkpoint_seq = 0;  // of the newest checkpoint stored (0: none)
};

// A snapshot of a log export (NAME@SNAP; docs/snapshots.md).
struct SnapshotSummary {
  std::string name;
  uint64_t seq = 0;           // the export's last segment it holds
  uint64_t size = 0;          // the export's size then
  int64_t created = 0;        // seconds since 1970, UTC
  uint64_t unique_bytes = 0;  // of segments it alone keeps (dead in the export and every other)
  std::vector<std::string> clones;  // the exports based on it
};

struct ExportInfo {
  std::string name;
  bool has_meta = false;     // false: blocks without metadata (the first version's layout)
  ExportMeta meta;           // valid if has_meta
  std::string meta_error;    // non-empty if the metadata could not be read or parsed
  uint64_t blocks_stored = 0;
  // The bytes of the export that are allocated (not holes): blocks_stored * block size. Not the
  // space the blocks take in the store, which the stores do not tell (an encoded block may be
  // shorter or longer than a block).
  uint64_t allocated_bytes = 0;
  uint64_t blocks_past_end = 0;  // stored blocks beyond the export's size (left by a crash)
  std::string lease_holder;      // non-empty while a server holds the export
  std::string key_error;         // non-empty if the export is encrypted and the key given is not its
  // A log export's segments, when asked for (GetExportInfo's `layouts`) and they could be read.
  bool has_log = false;
  LogExportInfo log;
  std::string log_error;  // non-empty if the log export's checkpoint or segments could not be read
  std::vector<SnapshotSummary> snapshots;  // a log export's, by name (with `layouts`)
};

// Progress of a long operation: called from worker threads, at most a few times a second.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

struct AdminOptions {
  int threads = 16;                            // blocks in flight at once
  bool force = false;                          // ignore another holder's lease
  const std::atomic<bool>* cancel = nullptr;   // set (e.g. by SIGINT) to stop between blocks
  ProgressFn progress;                         // may be empty
  std::string holder = "s3block";              // recorded in the lease while we work
  BlockEncoding encoding;                      // of the exports that create and import make
  ExportLayout layout = ExportLayout::kBlocks;  // of the exports that create and import make
  bool layout_given = false;  // copy: the destination's layout is `layout`, not the source's
  // The store's layout router (MakeCodedStore's *layout): the log exports' own operations (their
  // segments in info, gc, verify) go through it. May be null: a store of the blocks layout only.
  log::LayoutStore* layouts = nullptr;
  std::function<void(const std::string&)> warn;  // a warning for the user; may be empty
  // Runs a control command (server.h: snapshot, delete-snapshot, add-clone) in the server that
  // holds export `name`, found from its lease: what the snapshot commands do before claiming
  // the export themselves. *asked is false if no server could be asked (none holds the export,
  // or none answers on the socket its lease names): the command then claims the export. May be
  // empty (a held export is refused, kBusy).
  std::function<Status(std::string_view name, const std::vector<std::string>& args,
                       std::string* output, bool* asked)>
      ask_server;
};

// Information about one export (errors: the store's; a missing export is kNotFound). With
// `layouts`, a log export's segments too (info->log). Reading a log export writes nothing.
Status GetExportInfo(BlockStore& store, std::string_view name, ExportInfo* info,
                     log::LayoutStore* layouts = nullptr);

// All exports of the store, sorted by name; an export whose metadata is damaged is listed with
// meta_error set rather than failing the whole list, and so is a log export whose segments cannot
// be read (log_error). Each log export is closed once listed (its map is not kept in memory).
Status ListExportInfo(BlockStore& store, std::vector<ExportInfo>* out,
                      log::LayoutStore* layouts = nullptr);

// Every command below that writes to an export closes it (BlockStore::CloseExport) before it
// lets go of the lease: a log export then stores what it holds and a checkpoint of its map.

// Creates an empty export in options.layout. kAlreadyExists if it exists; kInvalidArgument if the
// layout cannot hold blocks of that size (a log export's are at most 1M).
Status CreateExport(BlockStore& store, std::string_view name, uint64_t size, uint32_t block_size,
                    const AdminOptions& options);

// Changes the size. Growing is instant; shrinking deletes the blocks past the new end and needs
// allow_shrink (else kUnconfirmed, errno EINVAL).
Status ResizeExport(BlockStore& store, std::string_view name, uint64_t new_size, bool allow_shrink,
                    const AdminOptions& options);

// Deletes every block and then the metadata. A log export's blocks are not deleted one by one:
// its metadata marked as being deleted, its segments and checkpoints go with the metadata.
Status DeleteExport(BlockStore& store, std::string_view name, const AdminOptions& options);

// Copies export `from` to a new export `to` in the same store, block by block with the store's
// CopyBlock (a server-side copy on S3, a reflink or in-kernel copy locally; a read and a write
// where either is a log export). `to` gets options.layout if options.layout_given, else the
// source's layout: a copy converts an export from one layout to the other.
Status CopyExport(BlockStore& store, std::string_view from, std::string_view to,
                  const AdminOptions& options);

// Creates export `name` from a raw disk image: its size is the file's size. Runs of zeros and
// holes in the file are not stored. The layout is options.layout (a re-run over an incomplete
// import keeps the layout that import recorded unless options.layout_given).
Status ImportImage(BlockStore& store, std::string_view name, const std::string& path,
                   uint32_t block_size, const AdminOptions& options);

// Takes snapshot `snapshot` of log export `name`, under the export's lease (kBusy while a server
// holds it: that server takes it instead, asked through its control socket). The snapshot holds
// what the export holds now; it is served read only as NAME@SNAP.
Status SnapshotExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options, SnapshotSummary* out);

// Deletes snapshot `snapshot` of log export `name`, under the export's lease, and what only it
// kept. kNotFound if there is none.
Status DeleteSnapshot(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options);

// Makes export `clone` from snapshot `name`@`snapshot` of a log export: a log export of the
// snapshot's size, content and encoding, that reads every block it has not written from the
// snapshot (metadata base=NAME@SNAP; nothing is copied). The snapshot is not deleted while the
// clone is based on it.
Status CloneExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                   std::string_view clone, const AdminOptions& options);

// Makes log export `name`'s content snapshot `snapshot`'s again (and its size the snapshot's),
// under the export's lease: refused while a server holds it. What the export held since is
// freed by the collector unless other snapshots keep it; the snapshot stays.
Status RollbackExport(BlockStore& store, std::string_view name, const std::string& snapshot,
                      const AdminOptions& options);

// Makes a clone independent of its base: copies the blocks it still reads from it into its own
// segments, then drops the base from its metadata. Refused while the clone has snapshots taken
// before (they read through the base too).
Status FlattenExport(BlockStore& store, std::string_view name, const AdminOptions& options);

// If `full` names a snapshot (NAME@SNAP of a log export NAME that has snapshot SNAP, and no
// export is called `full`): true, with the two parts.
bool IsSnapshot(BlockStore& store, std::string_view full, std::string* name, std::string* snapshot);

// Writes export `name` to a raw image file (created or truncated to the export's size); blocks
// that are not stored are left as holes in the file.
Status ExportImage(BlockStore& store, std::string_view name, const std::string& path,
                   const AdminOptions& options);

struct VerifyReport {
  uint64_t blocks_checked = 0;
  uint64_t segments_checked = 0;      // of a log export
  std::vector<std::string> problems;  // one line per damaged block or inconsistency
};

// Reads every stored block and checks that it can be read and is exactly one block long
// (a store with integrity checks also verifies each block's checksum as it reads it). For a
// log export, with options.layouts, also every segment the map uses: each frame against its
// checksum, and the map against the segments' entries.
// Damage is reported in *report, not as an error; errors are for failures to check at all.
Status VerifyExport(BlockStore& store, std::string_view name, const AdminOptions& options,
                    VerifyReport* report);

struct GcReport {
  uint64_t segments_freed = 0;  // deleted
  uint64_t bytes_freed = 0;     // their size
  uint64_t bytes_copied = 0;    // live blocks rewritten into new segments
};

// One pass of a log export's garbage collector now (options.layouts'), under the export's lease:
// the segments less live than gc-threshold (with `all`, every segment with a dead byte) have
// their live blocks rewritten and are deleted once a checkpoint no longer needs them.
// kInvalidArgument for an export of the blocks layout, which has no segments.
Status CollectExportGarbage(BlockStore& store, std::string_view name, bool all,
                            const AdminOptions& options, GcReport* report);

struct RepairReport {
  uint64_t first_damaged = 0;  // the segment the export's run ended at (0: none, nothing done)
  uint64_t segments = 0;       // set aside: it and every later one
  uint64_t bytes = 0;          // their size
};

// A log export whose run of segments ends at one that is there but not valid (s3block verify
// names it; the export is served read only, as of the segment before): under its lease, that
// segment and every later one are moved to exports/NAME/damaged/, where nothing reads them (they
// may hold writes a flush acknowledged: kept for whoever recovers them by hand), and the export
// is written again from the last valid one. Nothing is done to a sound export.
Status RepairExport(BlockStore& store, std::string_view name, const AdminOptions& options,
                    RepairReport* report);

}  // namespace s3block

#endif  // S3BLOCK_ADMIN_H_
