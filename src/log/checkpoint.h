// A checkpoint of a log export's map: what opening the export loads instead of every segment.
//
//   exports/<name>/checkpoint/<seq>.<part>   the map's entries, zstd-compressed: (block id u64,
//                                            location u64) pairs in order of id, up to 1 Mi a part
//   exports/<name>/checkpoint/<seq>          the root, written last, with a condition (if
//                                            absent): magic "S3BLCKP1", version, seq (the last
//                                            segment the map holds), writer epoch, the segment
//                                            table (slot, seq, size), each part's length and
//                                            CRC-32C, the segments kept for snapshots (version
//                                            2 only: version 1 when there are none), and a
//                                            CRC-32C of the root
//
// A checkpoint exists once its root does: parts without a root are a checkpoint that was never
// finished, and are removed by the next one.
#ifndef S3BLOCK_LOG_CHECKPOINT_H_
#define S3BLOCK_LOG_CHECKPOINT_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "base/object_transport.h"
#include "log/block_map.h"
#include "s3block/status.h"

namespace s3block::log {

struct CheckpointSlot {
  uint32_t slot = 0;
  uint64_t seq = 0;
  uint64_t size = 0;
};

// A segment that no block of the map is in but that a snapshot still reads (log_export.h).
struct KeptSegment {
  uint64_t seq = 0;
  uint64_t size = 0;
  uint64_t dead_at = 0;  // the seq whose applying left it no live block
  bool operator==(const KeptSegment&) const = default;
};

struct CheckpointInfo {
  uint64_t seq = 0;
  uint64_t epoch = 0;
  std::vector<CheckpointSlot> slots;
  std::vector<KeptSegment> kept;
};

// Stores the checkpoint: its parts, then its root (if absent: AlreadyExists if one has the seq).
Status WriteCheckpoint(ObjectTransport& transport, std::string_view name,
                       const CheckpointInfo& info, const BlockMap& map, const WriteFence* fence);

// Reads checkpoint `seq` into *info and *map (with a null map: its root alone, into *info).
// Errors: EIO naming what is wrong with it (*map may then hold some of its blocks).
Status ReadCheckpoint(ObjectTransport& transport, std::string_view name, uint64_t seq,
                      CheckpointInfo* info, BlockMap* map);

// The seqs of the roots under the export's checkpoint prefix, ascending, and every key there.
// A key there that is neither a root's nor a part's is an error (EIO) after two more listings.
Status ListCheckpoints(ObjectTransport& transport, std::string_view name,
                       std::vector<uint64_t>* roots, std::vector<std::string>* keys);

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_CHECKPOINT_H_
