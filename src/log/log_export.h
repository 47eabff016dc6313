// LogExport: one log-structured export (docs/log-layout.md): its blocks appended into segments,
// the map from block to frame, checkpoints of the map, recovery, and the garbage collector.
//
// A block write is appended, as a frame, to the open segment in memory. The open segment is
// sealed (its entries sorted by block id, its head written) when it is full (segment-size), on a
// flush or a write with FUA, and after two seconds without writes, and is stored as one object
// with a condition (if absent): a writer that lost the export cannot overwrite a successor's
// segment. Up to four sealed segments are stored at once; a segment stored is applied to the map
// only once every segment before it is, so the map always describes an unbroken run of stored
// segments, and a checkpoint of it is a state that recovery can reach. Reads look at the open
// segment, then the sealed ones not yet applied, then the map (a ranged read of one frame).
//
// Opening loads the newest checkpoint and applies the unbroken run of segments after it; a
// segment after a gap, or whose head fails its checksum, ends the run and is not applied. Each
// writer has an epoch, one above any it has seen: a segment of a lower epoch after one of a
// higher is a stale writer's, and is skipped. An export opened becomes a writer on its first
// change only (a read-only server never writes): it deletes what may lie after the run (segments
// of a writer that crashed, never acknowledged) and stores an empty segment with its epoch.
//
// The collector (a background thread, or CollectGarbage) rewrites the live blocks of segments
// less live than gc-threshold into new segments, each moved only if the map still points at the
// copy it read (a client's newer write wins), and deletes a segment only once a checkpoint that
// no longer references it is stored.
//
// Snapshots (snapshot.h) are kept alive by the writer: a checkpoint a snapshot is rebuilt from is
// never deleted, nor any segment it replays or whose blocks are live in its map (a segment
// created at seq i whose last live block died at seq j is read by snapshot s if i <= s < j).
// Such a segment, dead in the export's own map, waits on a list kept with each checkpoint until
// no snapshot reads it. A snapshot is opened as a view (OpenSnapshot) that only reads.
//
// A clone is an export made from a snapshot (its base): a block it has never written is read
// from the base, and a block it deletes that the base holds is kept in its map as a tombstone
// (block_map.h), so that the base's copy stays hidden.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_LOG_LOG_EXPORT_H_
#define S3BLOCK_LOG_LOG_EXPORT_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/object_transport.h"
#include "log/block_map.h"
#include "log/checkpoint.h"
#include "log/segment.h"
#include "log/snapshot.h"
#include "s3block/block_store.h"
#include "util/mutex.h"

namespace s3block::log {

struct LogOptions {
  uint64_t segment_size = 8ull << 20;  // 1M to 64M
  uint32_t gc_threshold = 50;          // percent live below which a segment is collected
  // Sealed segments stored at once: with the open one, 3 x segment_size in memory
  // (docs/log-layout.md: four were no faster in the benchmark, and cost memory).
  uint32_t upload_window = 2;
  double seal_idle_seconds = 2;        // an open segment is sealed after this long without writes
  double checkpoint_seconds = 30;      // most time between checkpoints while the export changes
  uint32_t checkpoint_segments = 64;   // most segments applied between checkpoints (at least)
  double gc_seconds = 10;              // between collector passes
  bool background = true;              // the housekeeping thread (tests drive it by hand)
};

// What `s3block info` and the stats file show of a log export.
struct LogStats {
  uint64_t segments = 0;        // stored and applied
  uint64_t segment_bytes = 0;   // their size
  uint64_t live_bytes = 0;      // of frames the map points at
  uint64_t blocks = 0;          // mapped
  uint64_t map_bytes = 0;       // memory of the map
  uint64_t pending_segments = 0;  // sealed, not yet applied
  uint64_t open_bytes = 0;      // in the open segment
  uint64_t last_seq = 0;        // the last segment applied
  uint64_t checkpoint_seq = 0;  // of the newest checkpoint stored (0: none)
  uint64_t epoch = 0;
  bool writer = false;
  uint64_t client_bytes = 0;    // frames written for clients since opened
  uint64_t gc_bytes = 0;        // frames the collector rewrote since opened
  uint64_t gc_segments_freed = 0;
  uint64_t gc_bytes_freed = 0;
  uint64_t checkpoints = 0;     // stored since opened
  uint64_t snapshots = 0;
  uint64_t kept_segments = 0;   // dead in the export's map, kept for snapshots
  uint64_t kept_bytes = 0;      // their size
};

// Calls fn(key, value) for each counter of `stats`, as the stats file names them.
template <typename Fn>
void ForEachLogStat(const LogStats& s, Fn fn) {
  fn("segments", s.segments);
  fn("segment_bytes", s.segment_bytes);
  fn("live_bytes", s.live_bytes);
  fn("blocks", s.blocks);
  fn("map_bytes", s.map_bytes);
  fn("pending_segments", s.pending_segments);
  fn("last_seq", s.last_seq);
  fn("checkpoint_seq", s.checkpoint_seq);
  fn("client_bytes", s.client_bytes);
  fn("gc_bytes", s.gc_bytes);
  fn("gc_segments_freed", s.gc_segments_freed);
  fn("gc_bytes_freed", s.gc_bytes_freed);
  fn("checkpoints", s.checkpoints);
  fn("snapshots", s.snapshots);
  fn("kept_segments", s.kept_segments);
  fn("kept_bytes", s.kept_bytes);
}

// A snapshot as the export's writer sees it.
struct SnapshotInfo {
  SnapshotRecord record;
  uint64_t unique_bytes = 0;  // of segments no other snapshot, nor the export, reads
  std::vector<std::string> clones;  // made from it, as their markers say (some may be gone)
};

struct GcResult {
  uint64_t segments_freed = 0;  // deleted
  uint64_t bytes_freed = 0;     // their size
  uint64_t bytes_copied = 0;    // live frames rewritten
};

class LogExport {
 public:
  // Loads the export's newest checkpoint and the segments after it. `fence` (may be empty) is
  // asked before every change stored. A clone's `base` is the view of the snapshot named
  // `base_name` (NAME@SNAP) it reads through to.
  static Status Open(std::shared_ptr<ObjectTransport> transport, std::string name,
                     const LogOptions& options, WriteFence fence, std::unique_ptr<LogExport>* out,
                     std::unique_ptr<LogExport> base = nullptr, std::string base_name = {});
  // Opens snapshot `record` of export `name`: a view, read only, of the export as of the
  // snapshot's last segment. Errors: EIO if a checkpoint or segment it needs is missing or
  // damaged.
  static Status OpenSnapshot(std::shared_ptr<ObjectTransport> transport, std::string name,
                             const SnapshotRecord& record, const LogOptions& options,
                             std::unique_ptr<LogExport>* out,
                             std::unique_ptr<LogExport> base = nullptr);
  ~LogExport();

  Status Read(uint64_t id, Bytes* data, bool* found);
  void ReadBatch(std::span<BlockRead> reads);
  // REQUIRES: data.size() <= kMaxPayloadBytes.
  Status Write(uint64_t id, std::span<const uint8_t> data, bool fua);
  // Write of blocks first, first + 1, ...: data holds them back to back, block_size bytes each,
  // appended under one lock (each block is still whole or absent to a reader).
  Status WriteRun(uint64_t first, std::span<const uint8_t> data, uint32_t block_size, bool fua);
  Status Delete(std::span<const uint64_t> ids, bool fua);
  Status Flush();
  void ListBlocks(const std::function<void(uint64_t id)>& fn);

  // Flushes, stores a checkpoint if the map changed since the last, and stops the background
  // thread. Errors are Flush's (the export may then be closed again).
  Status Close();

  // One collector pass now, whatever the timer: collects every segment below the threshold
  // (all of them with `all`: any with a dead byte), then stores a checkpoint and deletes what
  // it freed.
  Status CollectGarbage(bool all, GcResult* result);
  // Stores a checkpoint of the map now (if it changed), then deletes what it made unreferenced.
  Status Checkpoint();
  LogStats Stats();

  // Takes snapshot `snapshot` (a valid name: ValidateSnapshotName) of the export as it is
  // stored: every segment sealed before this call (every write a flush or FUA acknowledged, and
  // none made after the call), once stored. `size` is the export's size now. Stores the record
  // only if absent (AlreadyExists). Errors: the transport's; a view's is EROFS.
  Status CreateSnapshot(const std::string& snapshot, uint64_t size, SnapshotRecord* out);
  // Opens export `name` for DeleteSnapshot and Snapshots only, without its map: the root of its
  // newest checkpoint (what it keeps for snapshots), its snapshots and its clone markers.
  static Status OpenForSnapshots(std::shared_ptr<ObjectTransport> transport, std::string name,
                                 WriteFence fence, std::unique_ptr<LogExport>* out);
  // CreateSnapshot of an export no process has open, without loading its map: a listing of its
  // checkpoints and the heads of the segments after the newest, as opening it would read, then
  // the record. `base` is the export's (a clone's), or empty. REQUIRES: the export's lease.
  // A rollback mark after the checkpoint sets *rollback_pending and writes nothing: the
  // export must be opened (its rollback made permanent) for a snapshot.
  static Status CreateSnapshotOfStored(std::shared_ptr<ObjectTransport> transport,
                                       const std::string& name, const std::string& base,
                                       const std::string& snapshot, uint64_t size,
                                       const WriteFence* fence, SnapshotRecord* out,
                                       bool* rollback_pending);
  // Deletes a snapshot's record, then what only it kept (NotFound if there is none). Refused
  // (InvalidArgument, naming it) while a clone made from it is still based on it, as
  // based(clone) says; markers of clones no longer based on it are removed.
  Status DeleteSnapshot(const std::string& snapshot,
                        const std::function<Status(const std::string& clone, bool* based)>& based =
                            nullptr);
  // Makes the content of export `name`, which no process has open, snapshot `snapshot`'s again:
  // stores one rollback mark after the segments it has, without loading its map, so a few
  // requests whatever its size. Opening the export applies the mark; its writer's next
  // checkpoint makes it permanent, and frees what only the export held since (unless other
  // snapshots read it). REQUIRES: the export's lease. Errors: NotFound (no such snapshot), EIO
  // (a damaged segment ends its run: nothing is written), the transport's.
  // *record (when given) is set to the snapshot's.
  static Status RollbackStored(std::shared_ptr<ObjectTransport> transport, const std::string& name,
                               const std::string& snapshot, const WriteFence* fence,
                               SnapshotRecord* record = nullptr);
  // Whether a rollback is applied but no checkpoint made it permanent yet: for an export
  // opened by OpenForSnapshots (which reads only a checkpoint's root), whether a rollback
  // mark follows that checkpoint. Changes to its snapshots then need the export opened.
  Status RollbackPending(bool* pending);
  // Records that export `clone` is being made from snapshot `snapshot` (which must exist): the
  // snapshot is then not deleted while the clone is based on it.
  Status AddClone(const std::string& snapshot, const std::string& clone);
  // AddClone for an export no process has open: reads the snapshot's record, then stores the
  // marker. REQUIRES: the export's lease.
  static Status AddCloneOfStored(ObjectTransport& transport, const std::string& name,
                                 const std::string& snapshot, const std::string& clone,
                                 const WriteFence* fence);
  // A clone: copies every block it still reads from its base into its own segments (the stored
  // bytes as they are, still bound to the name they were written under), then flushes. After
  // it, nothing is read from the base. progress(done, total) may be empty.
  Status CopyBaseBlocks(const std::function<void(uint64_t, uint64_t)>& progress);
  // NAME@SNAP of a clone's base, or empty.
  const std::string& base_name() const { return base_name_; }
  // The snapshots, by name, with the bytes each alone keeps.
  std::vector<SnapshotInfo> Snapshots();

  // Reads every segment the map uses and checks every frame and head against its checksum,
  // and the map against the segments' entries; report() gets one line per problem. *problems
  // counts them.
  Status Verify(const std::function<void(const std::string&)>& report, uint64_t* problems);

  // An export whose run ends at a segment that is there but not valid (served read only, as
  // of the segment before it): moves that segment and every later one (which may hold writes a
  // flush acknowledged, but which cannot be applied) from log/ to damaged/ (SetAsidePrefix),
  // where nothing reads them, so that the export is written again from there. *first is the
  // damaged seq (0, and nothing done, if the run is sound); *moved and *bytes count what was
  // moved. REQUIRES: the export's lease; no writer here.
  Status SetAsideDamaged(uint64_t* first, uint64_t* moved, uint64_t* bytes);

  // Deletes every object of the layout (segments, checkpoints, snapshots, clone markers, what
  // repair set aside) of export `name`.
  static Status DeleteAll(ObjectTransport& transport, std::string_view name,
                          const WriteFence* fence);

 private:
  struct Frame;       // a block in the open segment
  struct Sealed;      // a sealed segment not yet applied
  struct Slot {
    uint64_t seq = 0;
    uint64_t size = 0;
    uint64_t live = 0;
    bool used = false;
    uint64_t dead_at = 0;  // the seq whose applying left it no live block (0: live)
  };

  LogExport(std::shared_ptr<ObjectTransport> transport, std::string name,
            const LogOptions& options, WriteFence fence);

  Status Load() NO_THREAD_SAFETY_ANALYSIS;  // before any other thread
  // Loads snapshot `record`'s map: its checkpoint and exactly the segments after it up to its
  // seq. REQUIRES: before any other thread.
  Status LoadSnapshot(const SnapshotRecord& record) NO_THREAD_SAFETY_ANALYSIS;
  // Loads checkpoint seq into the map and the segment table.
  Status LoadCheckpointLocked(uint64_t seq) REQUIRES(mu_);
  // The segment table a checkpoint of the map lists: the segments it uses.
  std::vector<CheckpointSlot> LiveSlotsLocked() const REQUIRES(mu_);
  // Whether a snapshot reads segment seq, which died (no live block left) at dead_at.
  bool PinnedLocked(uint64_t seq, uint64_t dead_at) const REQUIRES(mu_);
  // Segments dead at or below checkpoint `seq` that snapshots still read: what a checkpoint of
  // it lists to keep.
  std::vector<KeptSegment> KeptAfterLocked(uint64_t seq) const REQUIRES(mu_);
  // Deletes the kept segments no snapshot reads any more, and the checkpoints no snapshot
  // needs but the newest. REQUIRES: mu_ held; releases it meanwhile.
  void ReleaseUnpinnedLocked(std::vector<std::string> keys) REQUIRES(mu_);
  // Waits for, and takes, the right to checkpoint (also taken by snapshots).
  void BeginCheckpointingLocked(UniqueLock& lock) REQUIRES(mu_);
  void EndCheckpointingLocked() REQUIRES(mu_);
  // Reads the head of segment seq: NotFound if there is none. A head that is not a valid one
  // (torn, corrupt) sets *bad (when given), one that is another segment's sets *misnamed, with
  // the reason in the status.
  Status ReadHead(uint64_t seq, SegmentHeader* header, bool* bad = nullptr,
                  bool* misnamed = nullptr);
  // A read-only view whose segment was collected by the writer: loads the export again (a view
  // as of a later flush). REQUIRES: not the writer.
  Status Refresh();
  // Applies a segment's entries to the map, in a new slot. REQUIRES: mu_ held, or no thread yet.
  void ApplyEntries(const SegmentHeader& header) REQUIRES(mu_);
  // Reads the heads of the unbroken run of segments from `first` on, until one is missing or
  // is another segment's; a head that is there but invalid ends it too, and sets *damaged.
  Status ReadRun(uint64_t first, std::vector<SegmentHeader>* heads, Status* damaged);
  // The snapshots that the rollback marks of a run go back to, loaded (by the mark's seq).
  using RollbackViews = std::map<uint64_t, std::unique_ptr<LogExport>>;
  Status LoadRollbackViews(const std::vector<SegmentHeader>& heads, RollbackViews* views);
  // Applies a run read by ReadRun, skipping a stale writer's segments (of a lower epoch than
  // one before them); `views` are its rollback marks' (LoadRollbackViews).
  void ApplyRunLocked(const std::vector<SegmentHeader>& heads, const RollbackViews& views)
      REQUIRES(mu_);
  // Applies rollback mark `mark`: the map and segment table become `view`'s; what the export
  // used that the view does not dies at the mark (freed by the next checkpoint, or kept).
  void ApplyRollbackLocked(const SegmentHeader& mark, LogExport& view) REQUIRES(mu_);
  // A rollback applied and not yet checkpointed is made permanent first: a snapshot record
  // never names a checkpoint before a rollback mark, so that it never needs what the rollback
  // needed. REQUIRES: mu_ held; may release it.
  Status SettleRollbackLocked(UniqueLock& lock) REQUIRES(mu_);

  // Makes this process the export's writer (see above). REQUIRES: mu_ held; may release it.
  Status BecomeWriterLocked(UniqueLock& lock) REQUIRES(mu_);
  // Seals the open segment (if not empty), waiting for room in the upload window. Errors: a
  // segment's upload that fails while it waits (the open segment is then left open), lost_,
  // and EIO once the export is closing.
  Status SealLocked(UniqueLock& lock) REQUIRES(mu_);
  // Waits until every segment up to seq is applied, or one failed.
  Status WaitAppliedLocked(UniqueLock& lock, uint64_t seq) REQUIRES(mu_);
  // Appends one frame (or a deletion: payload null) to the open segment.
  Status AppendLocked(UniqueLock& lock, uint64_t id, const std::span<const uint8_t>* payload,
                      bool from_collector) REQUIRES(mu_);
  // Applies every stored segment that follows the run.
  void ApplyStoredLocked() REQUIRES(mu_);
  void Upload(std::shared_ptr<Sealed> s);
  // Stores segment `seq` only if its key is absent. Refused, the object there is read back: the
  // same first `head_bytes` are ours (an earlier attempt whose reply was lost): Ok. Another head
  // is another writer's: the refusal (IsPreconditionFailed). A failure to read it back is only
  // that, returned as it is, for the caller to try again.
  Status PutSegment(uint64_t seq, std::span<const uint8_t> bytes, size_t head_bytes);
  void Housekeeping();
  // Where block id is right now, if anywhere: *in_memory is set with its payload for a block
  // not yet in the map.
  enum class Where { kNone, kDeleted, kMemory, kStored };
  Where LocateLocked(uint64_t id, Bytes* memory, Loc* loc, uint64_t* seq) REQUIRES(mu_);
  // Whether block id is stored here or, for a clone, in its base (nothing is read).
  bool HoldsBlock(uint64_t id) EXCLUDES(mu_);
  Status ReadStored(uint64_t id, uint64_t seq, const Loc& loc, Bytes* data);
  // Fetches frames of one segment: each of `locs` (sorted by offset) gets its payload in outs,
  // and (*checks)[i] says whether its frame checked out. Errors: the transport's.
  Status ReadFrames(uint64_t seq, std::span<const Loc> locs, std::vector<Bytes*> outs,
                    std::vector<Status>* checks);
  // Deletes dead segments at or below the checkpoint, and older checkpoints (and `keys`).
  void DeleteUnreferencedLocked(uint64_t checkpoint_seq, std::vector<std::string> keys = {})
      REQUIRES(mu_);
  Status Sweep();
  // The segments a collector pass takes now, as (slot, seq).
  std::vector<std::pair<uint32_t, uint64_t>> GcCandidatesLocked(bool all) REQUIRES(mu_);
  // The fence of every change stored, or null.
  const WriteFence* fence() const { return fence_ ? &fence_ : nullptr; }
  // Segments whose upload failed are queued again (not once another writer has the export).
  void RetryFailedLocked() REQUIRES(mu_);
  // The entries of segment `header` (in slot `slot`) that `map` still points at.
  static std::vector<SegmentEntry> LiveEntries(const BlockMap& map, uint32_t slot,
                                               const SegmentHeader& header);
  // Reads the frames of `entries` of segment seq (in slot `slot`): data[i] for entries[i], and
  // checks[i] says whether its frame checked out. Errors: the transport's.
  Status ReadEntryFrames(uint64_t seq, uint32_t slot, const std::vector<SegmentEntry>& entries,
                         std::vector<Bytes>* data, std::vector<Status>* checks);
  uint32_t AllocSlotLocked() REQUIRES(mu_);

  const std::shared_ptr<ObjectTransport> transport_;
  const std::string name_;
  const LogOptions options_;
  const WriteFence fence_;

  Mutex mu_;
  std::condition_variable cv_;
  BlockMap map_ GUARDED_BY(mu_);
  std::vector<Slot> slots_ GUARDED_BY(mu_);
  std::vector<uint32_t> free_slots_ GUARDED_BY(mu_);
  // The open segment: frames back to back, and the newest of each block.
  std::vector<uint8_t> open_frames_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Frame> open_index_ GUARDED_BY(mu_);
  bool open_from_collector_ GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point last_write_ GUARDED_BY(mu_);
  // Sealed, not yet applied, by seq.
  std::map<uint64_t, std::shared_ptr<Sealed>> sealed_ GUARDED_BY(mu_);
  uint64_t next_seq_ GUARDED_BY(mu_) = 1;     // of the next segment sealed
  uint64_t applied_seq_ GUARDED_BY(mu_) = 0;  // every segment up to it is in the map
  uint64_t checkpoint_seq_ GUARDED_BY(mu_) = 0;
  uint64_t rollback_seq_ GUARDED_BY(mu_) = 0;  // the last rollback mark applied
  std::chrono::steady_clock::time_point checkpoint_time_ GUARDED_BY(mu_);
  uint64_t epoch_ GUARDED_BY(mu_) = 0;
  bool writer_ GUARDED_BY(mu_) = false;
  bool becoming_writer_ GUARDED_BY(mu_) = false;
  bool checkpointing_ GUARDED_BY(mu_) = false;
  bool collecting_ GUARDED_BY(mu_) = false;
  bool swept_ GUARDED_BY(mu_) = false;
  // Set once another writer is found to own the export: every change then fails with it.
  Status lost_ GUARDED_BY(mu_);
  // The snapshots, by name, and the segments dead in the map that they still read.
  std::map<std::string, SnapshotRecord> snapshots_ GUARDED_BY(mu_);
  std::vector<KeptSegment> kept_ GUARDED_BY(mu_);
  // Set for a snapshot's view: it only reads, and never reloads.
  bool view_ = false;
  // A clone's base (constant once opened), and NAME@SNAP naming it.
  std::unique_ptr<LogExport> base_;
  std::string base_name_;
  // Clones made from this export's snapshots: clone -> snapshot.
  std::map<std::string, std::string> clones_ GUARDED_BY(mu_);
  // Why the run ended at a segment that is there but not valid (OK if it ended at a missing one).
  Status damaged_ GUARDED_BY(mu_);
  // Segments skipped by recovery (a stale writer's), deleted by the sweep.
  std::vector<uint64_t> skipped_ GUARDED_BY(mu_);
  LogStats counters_ GUARDED_BY(mu_);

  bool stop_ GUARDED_BY(mu_) = false;
  std::thread housekeeper_;
  std::vector<std::thread> uploaders_;
  std::vector<std::shared_ptr<Sealed>> upload_queue_ GUARDED_BY(mu_);
  uint64_t upload_failures_ GUARDED_BY(mu_) = 0;  // segment uploads that failed, ever
  // Buffers of stored segments, kept for the next ones: a fresh one costs a page fault for every
  // page of it.
  std::vector<std::vector<uint8_t>> spare_buffers_ GUARDED_BY(mu_);
};

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_LOG_EXPORT_H_
