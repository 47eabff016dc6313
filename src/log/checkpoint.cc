#include "log/checkpoint.h"

#include <zstd.h>

#include <cstring>

#include "log/little_endian.h"
#include "log/segment.h"
#include "util/crc32c.h"

namespace s3block::log {
namespace {

constexpr char kMagic[8] = {'S', '3', 'B', 'L', 'C', 'K', 'P', '1'};
constexpr uint32_t kVersion = 1;
// With the segments kept for snapshots: written only when there are some, so that an export
// without snapshots stays readable by a version that knows only the first.
constexpr uint32_t kVersionKept = 2;
constexpr size_t kPartEntries = 1u << 20;
constexpr size_t kEntryBytes = 16;
// A root holds the segment table: 20 bytes a segment; more than this is not ours.
constexpr uint64_t kMaxRootBytes = 256ull << 20;

struct PartInfo {
  uint64_t stored = 0;
  uint64_t entries = 0;
  uint32_t crc = 0;
};

Status Compress(std::span<const uint8_t> raw, std::vector<uint8_t>* out) {
  out->resize(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compress(out->data(), out->size(), raw.data(), raw.size(), 1);
  if (ZSTD_isError(n)) return Status::IoError(std::string("zstd: ") + ZSTD_getErrorName(n));
  out->resize(n);
  return Status::Ok();
}

// Reads a whole object in ranges (an S3 GET of a whole object is bounded in size).
Status GetAll(ObjectTransport& t, const std::string& key, uint64_t limit, std::vector<uint8_t>* out) {
  // In ranges until one comes back short (no HEAD first: a root is one request): a checkpoint's
  // objects are never replaced, so the ranges are of one object.
  out->clear();
  constexpr uint64_t kChunk = 16ull << 20;
  std::vector<uint8_t> part;
  for (;;) {
    S3B_RETURN_IF_ERROR(t.GetRange(key, out->size(), kChunk, &part));
    out->insert(out->end(), part.begin(), part.end());
    if (out->size() > limit)
      return Status::IoError(t.Describe() + " " + key + " is too large to be a checkpoint (over " +
                             std::to_string(limit) + " bytes)");
    if (part.size() < kChunk) return Status::Ok();
  }
}

}  // namespace

Status WriteCheckpoint(ObjectTransport& transport, std::string_view name,
                       const CheckpointInfo& info, const BlockMap& map, const WriteFence* fence) {
  std::vector<PartInfo> parts;
  std::vector<uint8_t> raw, packed;
  raw.reserve(std::min<uint64_t>(map.size(), kPartEntries) * kEntryBytes);
  Status status;
  auto store_part = [&]() {
    if (!status.ok()) return;
    PartInfo p;
    p.entries = raw.size() / kEntryBytes;
    p.crc = Crc32c(0, raw.data(), raw.size());
    status = Compress(raw, &packed);
    if (!status.ok()) return;
    p.stored = packed.size();
    status = transport.Put(CheckpointPartKey(name, info.seq, static_cast<uint32_t>(parts.size())),
                           packed, PutOptions::Fenced(fence));
    parts.push_back(p);
    raw.clear();
  };
  map.ForEach([&](uint64_t id, const Loc& loc) {
    AppendLe64(&raw, id);
    AppendLe64(&raw, BlockMap::Pack(loc));
    if (raw.size() == kPartEntries * kEntryBytes) store_part();
  });
  if (!raw.empty()) store_part();
  S3B_RETURN_IF_ERROR(status);

  std::vector<uint8_t> root(kMagic, kMagic + 8);
  AppendLe32(&root, info.kept.empty() ? kVersion : kVersionKept);
  AppendLe32(&root, static_cast<uint32_t>(parts.size()));
  AppendLe64(&root, info.seq);
  AppendLe64(&root, info.epoch);
  AppendLe64(&root, map.size());
  AppendLe64(&root, info.slots.size());
  for (const CheckpointSlot& s : info.slots) {
    AppendLe32(&root, s.slot);
    AppendLe64(&root, s.seq);
    AppendLe64(&root, s.size);
  }
  for (const PartInfo& p : parts) {
    AppendLe64(&root, p.stored);
    AppendLe64(&root, p.entries);
    AppendLe32(&root, p.crc);
  }
  if (!info.kept.empty()) {
    AppendLe64(&root, info.kept.size());
    for (const KeptSegment& k : info.kept) {
      AppendLe64(&root, k.seq);
      AppendLe64(&root, k.size);
      AppendLe64(&root, k.dead_at);
    }
  }
  AppendLe32(&root, Crc32c(0, root.data(), root.size()));
  return transport.Put(CheckpointKey(name, info.seq), root, PutOptions::IfAbsent(fence));
}

Status ReadCheckpoint(ObjectTransport& transport, std::string_view name, uint64_t seq,
                      CheckpointInfo* info, BlockMap* map) {
  const std::string key = CheckpointKey(name, seq);
  const std::string where = "checkpoint " + key + " in " + transport.Describe();
  std::vector<uint8_t> root;
  S3B_RETURN_IF_ERROR(GetAll(transport, key, kMaxRootBytes, &root));
  auto corrupt = [&](const std::string& why) { return Status::IoError(where + " is corrupt: " + why); };
  if (root.size() < 52 || std::memcmp(root.data(), kMagic, 8) != 0) return corrupt("bad magic");
  if (Crc32c(0, root.data(), root.size() - 4) != LoadLe32(root.data() + root.size() - 4))
    return corrupt("its checksum does not match");
  const uint32_t version = LoadLe32(root.data() + 8);
  if (version != kVersion && version != kVersionKept)
    return Status::IoError(where + " has a format this version does not know");
  const uint32_t part_count = LoadLe32(root.data() + 12);
  info->seq = LoadLe64(root.data() + 16);
  info->epoch = LoadLe64(root.data() + 24);
  const uint64_t blocks = LoadLe64(root.data() + 32);
  const uint64_t slot_count = LoadLe64(root.data() + 40);
  if (info->seq != seq) return corrupt("it names segment " + std::to_string(info->seq));
  const uint64_t table_end = 48 + slot_count * 20 + uint64_t{part_count} * 20;
  if (slot_count > kMaxSlots || table_end + 4 > root.size())
    return corrupt("its length does not add up");
  info->kept.clear();
  if (version == kVersionKept) {
    if (table_end + 12 > root.size()) return corrupt("its length does not add up");
    const uint64_t kept = LoadLe64(root.data() + table_end);
    if (kept > kMaxSlots || table_end + 8 + kept * 24 + 4 != root.size())
      return corrupt("its length does not add up");
    info->kept.resize(kept);
    const uint8_t* k = root.data() + table_end + 8;
    for (KeptSegment& ks : info->kept) {
      ks.seq = LoadLe64(k);
      ks.size = LoadLe64(k + 8);
      ks.dead_at = LoadLe64(k + 16);
      k += 24;
    }
  } else if (table_end + 4 != root.size()) {
    return corrupt("its length does not add up");
  }
  const uint8_t* p = root.data() + 48;
  info->slots.resize(slot_count);
  for (CheckpointSlot& s : info->slots) {
    s.slot = LoadLe32(p);
    s.seq = LoadLe64(p + 4);
    s.size = LoadLe64(p + 12);
    if (s.slot >= kMaxSlots) return corrupt("a slot is out of range");
    p += 20;
  }
  if (map == nullptr) return Status::Ok();
  *map = BlockMap();
  std::vector<uint8_t> packed, raw;
  uint64_t total = 0;
  for (uint32_t i = 0; i < part_count; ++i, p += 20) {
    const uint64_t stored = LoadLe64(p), entries = LoadLe64(p + 8);
    const uint32_t crc = LoadLe32(p + 16);
    if (entries > kPartEntries) return corrupt("part " + std::to_string(i) + " is too large");
    const std::string part_key = CheckpointPartKey(name, seq, i);
    S3B_RETURN_IF_ERROR(GetAll(transport, part_key, stored, &packed).Annotate(where));
    if (packed.size() != stored) return corrupt("part " + std::to_string(i) + " has the wrong length");
    raw.resize(entries * kEntryBytes);
    const size_t n = ZSTD_decompress(raw.data(), raw.size(), packed.data(), packed.size());
    if (ZSTD_isError(n) || n != raw.size() || Crc32c(0, raw.data(), raw.size()) != crc)
      return corrupt("part " + std::to_string(i) + " does not decode to what its root says");
    for (uint64_t e = 0; e < entries; ++e) {
      const uint64_t id = LoadLe64(raw.data() + e * kEntryBytes);
      map->Set(id, BlockMap::Unpack(LoadLe64(raw.data() + e * kEntryBytes + 8)));
    }
    total += entries;
  }
  if (total != blocks || map->size() != blocks) return corrupt("it holds a block twice or too few");
  return Status::Ok();
}

Status ListCheckpoints(ObjectTransport& transport, std::string_view name,
                       std::vector<uint64_t>* roots, std::vector<std::string>* keys) {
  const std::string prefix = CheckpointPrefix(name);
  auto is_part = [&](const std::string& key) {
    uint64_t seq = 0, part = 0;
    return key.size() == prefix.size() + 21 && key[prefix.size() + 16] == '.' &&
           ParseSeqKey(key.substr(0, prefix.size() + 16), prefix, &seq) &&
           ParseSeqKey(prefix + "000000000000" + key.substr(prefix.size() + 17), prefix, &part);
  };
  // A key here that is neither a root nor a part may be the newest root's name damaged on the
  // way (nothing checks a listing over plain HTTP): opening from an older checkpoint would replay
  // segments the newer one let go, and the writer would delete the live ones after them as
  // dangling. The listing is fetched again; still odd, it is an error.
  std::string odd;
  for (int attempt = 0; attempt < 3; ++attempt) {
    roots->clear();
    if (keys) keys->clear();
    odd.clear();
    S3B_RETURN_IF_ERROR(transport.List(prefix, [&](const std::string& key, std::string_view) {
      uint64_t seq = 0;
      if (ParseSeqKey(key, prefix, &seq)) roots->push_back(seq);
      else if (odd.empty() && !is_part(key)) odd = key;
      if (keys) keys->push_back(key);
    }));
    if (odd.empty()) return Status::Ok();
  }
  return Status::IoError("the checkpoints of export '" + std::string(name) + "' in " +
                         transport.Describe() + " are listed with '" + odd +
                         "', which is no checkpoint's object");
}

}  // namespace s3block::log
