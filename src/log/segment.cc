#include "log/segment.h"

#include <cstring>

#include "log/little_endian.h"
#include "util/crc32c.h"

namespace s3block::log {
namespace {

constexpr char kMagic[8] = {'S', '3', 'B', 'L', 'S', 'E', 'G', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kCrcAt = 60;  // where the header's CRC is

std::string Hex16(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[i] = kDigits[v & 15];
  return s;
}

// The head's CRC: of its bytes with the CRC field taken as zero.
uint32_t HeadCrc(std::span<const uint8_t> head) {
  static const uint8_t kZero[4] = {0, 0, 0, 0};
  uint32_t crc = Crc32c(0, head.data(), kCrcAt);
  crc = Crc32c(crc, kZero, 4);
  return Crc32c(crc, head.data() + kCrcAt + 4, head.size() - kCrcAt - 4);
}

}  // namespace

std::string LogPrefix(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/log/";
}
std::string CheckpointPrefix(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/checkpoint/";
}
std::string SetAsidePrefix(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/damaged/";
}
std::string SegmentKey(std::string_view export_name, uint64_t seq) {
  return LogPrefix(export_name) + Hex16(seq);
}
std::string CheckpointKey(std::string_view export_name, uint64_t seq) {
  return CheckpointPrefix(export_name) + Hex16(seq);
}
std::string CheckpointPartKey(std::string_view export_name, uint64_t seq, uint32_t part) {
  return CheckpointKey(export_name, seq) + "." + Hex16(part).substr(12);
}

bool ParseSeqKey(std::string_view key, std::string_view prefix, uint64_t* seq) {
  if (key.size() != prefix.size() + 16 || key.substr(0, prefix.size()) != prefix) return false;
  uint64_t v = 0;
  for (char c : key.substr(prefix.size())) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *seq = v;
  return true;
}

uint32_t AppendFrame(std::span<const uint8_t> payload, std::vector<uint8_t>* out) {
  const uint32_t crc = Crc32c(0, payload.data(), payload.size());
  uint8_t head[kFrameHeaderBytes];
  StoreLe32(head, static_cast<uint32_t>(payload.size()));
  StoreLe32(head + 4, crc);
  // Appended, not resized and copied over: a segment's bytes are written once.
  out->insert(out->end(), head, head + kFrameHeaderBytes);
  out->insert(out->end(), payload.begin(), payload.end());
  out->resize(out->size() + (FrameBytes(payload.size()) - kFrameHeaderBytes - payload.size()), 0);
  return crc;
}

Status OpenFrame(std::span<const uint8_t> frame, uint32_t crc, const std::string& where,
                 std::span<const uint8_t>* payload) {
  if (frame.size() < kFrameHeaderBytes)
    return Status::IoError(where + ": the frame is cut short (" + std::to_string(frame.size()) +
                           " bytes)");
  const uint32_t len = LoadLe32(frame.data());
  const uint32_t stored_crc = LoadLe32(frame.data() + 4);
  if (len > kMaxPayloadBytes || kFrameHeaderBytes + len > frame.size())
    return Status::IoError(where + ": the frame's length (" + std::to_string(len) +
                           ") does not fit in it");
  const std::span<const uint8_t> p = frame.subspan(kFrameHeaderBytes, len);
  if (stored_crc != crc || Crc32c(0, p.data(), p.size()) != crc)
    return Status::IoError(where + ": the block's checksum does not match (corrupt)");
  *payload = p;
  return Status::Ok();
}

uint64_t SegmentDataOffset(size_t entries) {
  const uint64_t head = kSegmentHeaderBytes + kSegmentEntryBytes * entries;
  return (head + kFrameAlign - 1) & ~(uint64_t{kFrameAlign} - 1);
}

void EncodeSegmentHead(SegmentHeader* header, std::vector<uint8_t>* segment) {
  const uint64_t data_offset = SegmentDataOffset(header->entries.size());
  header->data_offset = data_offset;
  header->total_size = segment->size();
  uint8_t* p = segment->data();
  std::memset(p, 0, data_offset);
  std::memcpy(p, kMagic, 8);
  StoreLe32(p + 8, kVersion);
  StoreLe32(p + 12, static_cast<uint32_t>(header->entries.size()));
  StoreLe64(p + 16, header->seq);
  StoreLe64(p + 24, header->epoch);
  StoreLe64(p + 32, data_offset);
  StoreLe64(p + 40, header->total_size);
  StoreLe32(p + 48, header->flags);
  uint8_t* e = p + kSegmentHeaderBytes;
  for (const SegmentEntry& entry : header->entries) {
    StoreLe64(e, entry.id);
    StoreLe32(e + 8, entry.offset);
    StoreLe32(e + 12, entry.length);
    StoreLe32(e + 16, entry.crc);
    e += kSegmentEntryBytes;
  }
  StoreLe32(p + kCrcAt, HeadCrc(std::span<const uint8_t>(p, data_offset)));
}

Status ParseSegmentHead(std::span<const uint8_t> bytes, const std::string& where,
                        SegmentHeader* header, uint64_t* need) {
  *header = SegmentHeader();
  *need = 0;
  if (bytes.size() < kSegmentHeaderBytes) {
    *need = kSegmentHeaderBytes;
    return Status::Ok();
  }
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kMagic, 8) != 0)
    return Status::IoError(where + " is not a segment (bad magic)");
  if (LoadLe32(p + 8) != kVersion)
    return Status::IoError(where + " has segment format " + std::to_string(LoadLe32(p + 8)) +
                           ", which this version does not know");
  const uint32_t count = LoadLe32(p + 12);
  const uint64_t data_offset = LoadLe64(p + 32);
  const uint64_t total = LoadLe64(p + 40);
  if (count > kMaxSegmentBytes / kSegmentEntryBytes || data_offset != SegmentDataOffset(count) ||
      total < data_offset || total > kMaxSegmentBytes)
    return Status::IoError(where + " is corrupt: its header does not add up");
  const uint32_t flags = LoadLe32(p + 48);
  // A rollback mark's frame is part of what it says.
  const bool mark = (flags & kSegmentRollback) != 0 && count == 0 && total > data_offset;
  if (bytes.size() < (mark ? total : data_offset)) {
    *need = mark ? total : data_offset;
    return Status::Ok();
  }
  if (HeadCrc(bytes.subspan(0, data_offset)) != LoadLe32(p + kCrcAt))
    return Status::IoError(where + " is corrupt: its header's checksum does not match");
  header->seq = LoadLe64(p + 16);
  header->epoch = LoadLe64(p + 24);
  header->flags = flags;
  header->data_offset = data_offset;
  header->total_size = total;
  header->entries.resize(count);
  const uint8_t* e = p + kSegmentHeaderBytes;
  for (uint32_t i = 0; i < count; ++i, e += kSegmentEntryBytes) {
    SegmentEntry& entry = header->entries[i];
    entry.id = LoadLe64(e);
    entry.offset = LoadLe32(e + 8);
    entry.length = LoadLe32(e + 12);
    entry.crc = LoadLe32(e + 16);
    if (!entry.deleted() &&
        (entry.offset < data_offset || entry.offset % kFrameAlign != 0 ||
         entry.length < kFrameHeaderBytes || uint64_t{entry.offset} + entry.length > total))
      return Status::IoError(where + " is corrupt: entry " + std::to_string(i) +
                             " points outside the segment");
  }
  if (mark) {
    const std::span<const uint8_t> frame = bytes.subspan(data_offset, total - data_offset);
    std::span<const uint8_t> payload;
    S3B_RETURN_IF_ERROR(OpenFrame(frame, LoadLe32(frame.data() + 4), where + "'s rollback target",
                                  &payload));
    if (payload.size() != 16)
      return Status::IoError(where + " is corrupt: its rollback target does not add up");
    header->rollback = RollbackTarget{LoadLe64(payload.data()), LoadLe64(payload.data() + 8)};
    if (header->rollback->seq < header->rollback->checkpoint ||
        header->rollback->seq >= header->seq)
      return Status::IoError(where + " is corrupt: its rollback target does not add up");
  }
  return Status::Ok();
}

std::vector<uint8_t> EncodeRollbackMark(uint64_t seq, uint64_t epoch, RollbackTarget target) {
  SegmentHeader h;
  h.seq = seq;
  h.epoch = epoch;
  h.flags = kSegmentRollback;
  std::vector<uint8_t> bytes(SegmentDataOffset(0));
  uint8_t payload[16];
  StoreLe64(payload, target.checkpoint);
  StoreLe64(payload + 8, target.seq);
  AppendFrame(payload, &bytes);
  EncodeSegmentHead(&h, &bytes);
  return bytes;
}

}  // namespace s3block::log
