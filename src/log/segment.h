// The objects of a log-structured export (docs/log-layout.md has the whole format):
//
//   exports/<name>/log/<seq: 16 hex digits>          a segment: blocks appended by one writer
//   exports/<name>/checkpoint/<seq>                  the map as of segment seq: its root
//   exports/<name>/checkpoint/<seq>.<part: 4 hex>    ... and its parts
//
// A segment is written once and never changed:
//
//   header (64 bytes, little-endian)
//     magic "S3BLSEG1", version u32 (1), entry count u32, seq u64, writer epoch u64,
//     data offset u64 (where frames begin), total size u64, flags u32, 8 reserved bytes,
//     header CRC-32C u32 (of the header and the entries, this field taken as 0)
//   entries (24 bytes each, sorted by block id, one per block)
//     block id u64, frame offset u32 (0: the block was deleted), frame length u32,
//     frame CRC-32C u32, reserved u32
//   frames, each at a multiple of 16 bytes
//     payload length u32, payload CRC-32C u32, payload (the block as the layers above stored
//     it: raw, or compressed/encrypted by the codec), zero padding to 16 bytes
//
// The entries are what recovery reads (a ranged read of the segment's head); a frame is what a
// block read reads (one ranged read, checked by its own CRC, never the segment's).
//
// A rollback mark (flag kSegmentRollback) has no entries and one frame, read with its head: the
// snapshot it goes back to, as checkpoint seq u64 and last seq u64. Applying it makes the map
// the snapshot's.
#ifndef S3BLOCK_LOG_SEGMENT_H_
#define S3BLOCK_LOG_SEGMENT_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "s3block/status.h"

namespace s3block::log {

inline constexpr size_t kSegmentHeaderBytes = 64;
inline constexpr size_t kSegmentEntryBytes = 24;
inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr size_t kFrameAlign = 16;
// The largest payload a frame holds (a block of at most 1 MiB, with the codec's few bytes).
inline constexpr uint32_t kMaxPayloadBytes = (1u << 20) + 4096;
// The largest segment (segment-size= is at most 64M; one more block may top it up).
inline constexpr uint64_t kMaxSegmentBytes = (64ull << 20) + (2u << 20);

// Flags of a segment.
inline constexpr uint32_t kSegmentFromCollector = 1;  // holds blocks the collector moved
inline constexpr uint32_t kSegmentEpochMark = 2;      // a new writer's first (empty) segment
inline constexpr uint32_t kSegmentRollback = 4;       // a rollback mark: the map is a snapshot's

std::string SegmentKey(std::string_view export_name, uint64_t seq);
std::string LogPrefix(std::string_view export_name);         // "exports/<name>/log/"
std::string CheckpointPrefix(std::string_view export_name);  // "exports/<name>/checkpoint/"
// Where `s3block repair` sets aside a damaged segment and the ones after it.
std::string SetAsidePrefix(std::string_view export_name);    // "exports/<name>/damaged/"
std::string CheckpointKey(std::string_view export_name, uint64_t seq);
std::string CheckpointPartKey(std::string_view export_name, uint64_t seq, uint32_t part);
// Parses the 16 hex digits at the end of a segment's or a checkpoint root's key; false for any
// other key (a checkpoint's part, a stray file).
bool ParseSeqKey(std::string_view key, std::string_view prefix, uint64_t* seq);

// One entry of a segment: a block's frame, or its deletion (offset 0, length 0).
struct SegmentEntry {
  uint64_t id = 0;
  uint32_t offset = 0;
  uint32_t length = 0;  // of the frame, header and padding included
  uint32_t crc = 0;     // of the frame's payload
  bool deleted() const { return offset == 0; }
};

// A rollback mark's snapshot: the map as of segment `seq`, which is checkpoint `checkpoint`
// and the segments after it up to `seq`.
struct RollbackTarget {
  uint64_t checkpoint = 0;
  uint64_t seq = 0;
};

struct SegmentHeader {
  uint64_t seq = 0;
  uint64_t epoch = 0;
  uint32_t flags = 0;
  uint64_t data_offset = 0;
  uint64_t total_size = 0;
  std::vector<SegmentEntry> entries;
  std::optional<RollbackTarget> rollback;  // set for a rollback mark
};

// Frames: how many bytes a payload takes, and the frame of a payload written into `out`.
inline uint32_t FrameBytes(size_t payload) {
  return static_cast<uint32_t>((kFrameHeaderBytes + payload + kFrameAlign - 1) & ~(kFrameAlign - 1));
}
// Appends a frame holding `payload` to *out; returns the payload's CRC.
uint32_t AppendFrame(std::span<const uint8_t> payload, std::vector<uint8_t>* out);
// Checks a frame read back (`frame`: at least the frame's bytes) against the CRC its entry
// records and returns its payload. Errors: EIO naming `where` (a corrupt or torn frame is never
// served).
Status OpenFrame(std::span<const uint8_t> frame, uint32_t crc, const std::string& where,
                 std::span<const uint8_t>* payload);

// Bytes from the start of a segment up to its frames, for `entries` entries.
uint64_t SegmentDataOffset(size_t entries);

// Writes the header and entries of a segment into the first SegmentDataOffset(entries.size())
// bytes of *segment, which holds its frames after them (header.entries' offsets point at them);
// sets header.data_offset and header.total_size.
void EncodeSegmentHead(SegmentHeader* header, std::vector<uint8_t>* segment);

// The bytes of a rollback mark: segment `seq` of writer `epoch`, after which the map is `target`'s.
std::vector<uint8_t> EncodeRollbackMark(uint64_t seq, uint64_t epoch, RollbackTarget target);

// Parses a segment's head from its first bytes (a rollback mark's: all of it). With fewer bytes
// than the head needs, sets *need to how many it needs and returns OK with header->entries
// empty; *need = 0 once parsed.
// Errors: EIO naming `where` for a bad magic, version, CRC or an entry that points outside.
Status ParseSegmentHead(std::span<const uint8_t> bytes, const std::string& where,
                        SegmentHeader* header, uint64_t* need);

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_SEGMENT_H_
