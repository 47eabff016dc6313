// Snapshots of a log export (docs/snapshots.md): a named, read-only point in time.
//
//   exports/<name>/snapshots/<snapshot>   a small text record, written once (if absent):
//
//     # nbd-s3-backend snapshot
//     format=1
//     checkpoint=SEQ     the checkpoint the snapshot's map is rebuilt from (0: none)
//     seq=SEQ            the last segment of the snapshot: its map is the export's after it
//     size=BYTES         the export's size when the snapshot was taken
//     created=SECONDS    when, in seconds since 1970 (UTC)
//     base=NAME@SNAP     (a clone's snapshot only) the snapshot the clone reads through to
//
//   exports/<name>/clones/<clone>         "snapshot=SNAP": export <clone> was made from snapshot
//                                         SNAP, which is not deleted while <clone>'s metadata
//                                         still names it as its base (a marker left by a clone
//                                         deleted or flattened since is ignored, and removed)
//
// Opening a snapshot loads the checkpoint and applies the segments after it up to seq: its cost
// does not depend on the export's size, and neither does taking one (a flush and one record).
// The writer keeps what snapshots read: their checkpoints, every segment in (checkpoint, seq],
// and every segment live in the map as of seq (log_export.h).
#ifndef S3BLOCK_LOG_SNAPSHOT_H_
#define S3BLOCK_LOG_SNAPSHOT_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/object_transport.h"
#include "s3block/status.h"

namespace s3block::log {

struct SnapshotRecord {
  std::string name;
  uint64_t checkpoint = 0;
  uint64_t seq = 0;
  uint64_t size = 0;
  int64_t created = 0;
  std::string base;  // NAME@SNAP, if the export was a clone reading through to it
};

std::string ClonePrefix(std::string_view export_name);  // "exports/<name>/clones/"
std::string CloneKey(std::string_view export_name, std::string_view clone);
// A clone marker's content.
inline std::string EncodeCloneMarker(std::string_view snapshot) {
  return "snapshot=" + std::string(snapshot) + "\n";
}
// The clones made from export `name`'s snapshots, as their markers say: clone -> snapshot.
Status ListCloneMarkers(ObjectTransport& transport, std::string_view name,
                        std::map<std::string, std::string>* out);

std::string SnapshotPrefix(std::string_view export_name);  // "exports/<name>/snapshots/"
std::string SnapshotKey(std::string_view export_name, std::string_view snapshot);

// A snapshot's name: what an export's may be (ValidateExportName), without '@' (NAME@SNAP names
// a snapshot). Errors: EINVAL saying why.
Status ValidateSnapshotName(std::string_view name);

// Splits "NAME@SNAP" at its last '@': false if there is none, or either side is empty.
bool SplitSnapshotName(std::string_view full, std::string* export_name, std::string* snapshot);

// Whether snapshot r reads segment seq, whose last live block died at seq dead_at (0: none has):
// it replays the segments after its checkpoint up to its own seq, and reads those live in its
// map, which are the ones created at or before it that died after it.
inline bool SnapshotReads(const SnapshotRecord& r, uint64_t seq, uint64_t dead_at) {
  if (seq > r.checkpoint && seq <= r.seq) return true;
  return seq <= r.seq && (dead_at == 0 || dead_at > r.seq);
}

std::string EncodeSnapshotRecord(const SnapshotRecord& record);
// Errors: EIO naming `where` and what is wrong.
Status ParseSnapshotRecord(std::string_view text, const std::string& where, SnapshotRecord* out);

// Stores snapshot record r of export `name`, only if absent (AlreadyExists if the name is taken).
Status WriteSnapshot(ObjectTransport& transport, std::string_view name, const SnapshotRecord& r,
                     const WriteFence* fence);

// Reads snapshot `snapshot` of export `name`: NotFound if there is none.
Status ReadSnapshot(ObjectTransport& transport, std::string_view name, std::string_view snapshot,
                    SnapshotRecord* out);
// Every snapshot of export `name`, by name. A record that does not parse is an error.
Status ListSnapshots(ObjectTransport& transport, std::string_view name,
                     std::vector<SnapshotRecord>* out);

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_SNAPSHOT_H_
