#include "log/checkpoint.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "log/little_endian.h"
#include "log/segment.h"
#include "s3block/params.h"
#include "util/crc32c.h"

namespace s3block::log {
namespace {

constexpr char kMagic[8] = {'S', '3', 'B', 'L', 'C', 'K', 'P', '1'};
constexpr uint32_t kVersion = 1;
// With the segments kept for snapshots: written only when there are some, so that an export
// without snapshots stays readable by a version that knows only the first.
constexpr uint32_t kVersionKept = 2;
// The most entries a part may hold (a reader refuses more), and how many a writer puts in one:
// its compressed form is held whole while it is stored, beside the cache and the map.
constexpr size_t kPartEntries = 1u << 20;
constexpr size_t kWritePartEntries = 1u << 18;
constexpr size_t kEntryBytes = 16;
// A root holds the segment table: 20 bytes a segment; more than this is not ours.
constexpr uint64_t kMaxRootBytes = 256ull << 20;

struct PartInfo {
  uint64_t stored = 0;
  uint64_t entries = 0;
  uint32_t crc = 0;
};

// The map's entries are packed and compressed a chunk at a time (and read back so): a part of
// kPartEntries whole and a buffer of zstd's bound for it would be 33 MiB beside the map and the
// cache.
constexpr size_t kChunkEntries = 1u << 15;

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

Status ZstdError(size_t n) { return Status::IoError(std::string("zstd: ") + ZSTD_getErrorName(n)); }

// One part as one zstd frame (of a known size, so that a reader sees it in the frame), compressed
// as its entries come.
class PartWriter {
 public:
  Status Begin(uint64_t entries) {
    if (!cctx_) cctx_.reset(ZSTD_createCCtx());
    if (!cctx_) return Status::IoError("zstd: out of memory");
    ZSTD_CCtx_reset(cctx_.get(), ZSTD_reset_session_only);
    size_t n = ZSTD_CCtx_setParameter(cctx_.get(), ZSTD_c_compressionLevel, 1);
    if (!ZSTD_isError(n)) n = ZSTD_CCtx_setPledgedSrcSize(cctx_.get(), entries * kEntryBytes);
    if (ZSTD_isError(n)) return ZstdError(n);
    packed_.clear();
    crc_ = 0;
    return Status::Ok();
  }
  Status Add(std::span<const uint8_t> raw) {
    crc_ = Crc32c(crc_, raw.data(), raw.size());
    return Run(raw, ZSTD_e_continue);
  }
  Status End() { return Run({}, ZSTD_e_end); }
  const std::vector<uint8_t>& packed() const { return packed_; }
  uint32_t crc() const { return crc_; }

 private:
  Status Run(std::span<const uint8_t> raw, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{raw.data(), raw.size(), 0};
    for (;;) {
      const size_t used = packed_.size();
      packed_.resize(used + ZSTD_CStreamOutSize());
      ZSTD_outBuffer out{packed_.data() + used, packed_.size() - used, 0};
      const size_t left = ZSTD_compressStream2(cctx_.get(), &out, &in, mode);
      packed_.resize(used + out.pos);
      if (ZSTD_isError(left)) return ZstdError(left);
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return Status::Ok();
    }
  }

  std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx_;
  std::vector<uint8_t> packed_;
  uint32_t crc_ = 0;
};

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
  std::vector<uint8_t> raw;
  raw.reserve(kChunkEntries * kEntryBytes);
  PartWriter writer;
  uint64_t left = map.size(), in_part = 0;
  Status status;
  map.ForEach([&](uint64_t id, const Loc& loc) {
    if (!status.ok()) return;
    if (in_part == 0) {
      in_part = std::min<uint64_t>(left, kWritePartEntries);
      status = writer.Begin(in_part);
      parts.push_back(PartInfo{0, in_part, 0});
    }
    AppendLe64(&raw, id);
    AppendLe64(&raw, BlockMap::Pack(loc));
    --left;
    const bool part_done = --in_part == 0;
    if (status.ok() && (part_done || raw.size() == kChunkEntries * kEntryBytes)) {
      status = writer.Add(raw);
      raw.clear();
    }
    if (status.ok() && part_done) {
      status = writer.End();
      if (!status.ok()) return;
      PartInfo& p = parts.back();
      p.crc = writer.crc();
      p.stored = writer.packed().size();
      const auto index = static_cast<uint32_t>(parts.size() - 1);
      status = transport.Put(CheckpointPartKey(name, info.seq, index), writer.packed(),
                             PutOptions::Fenced(fence));
    }
  });
  S3B_RETURN_IF_ERROR(status);
  if (left != 0 || in_part != 0)
    return Status::IoError("checkpoint of export '" + std::string(name) +
                           "': the map changed while it was written out");

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
  std::vector<uint8_t> packed, raw(kChunkEntries * kEntryBytes);
  std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx(ZSTD_createDCtx());
  if (!dctx) return Status::IoError("zstd: out of memory");
  uint64_t total = 0, next_id = 0;
  for (uint32_t i = 0; i < part_count; ++i, p += 20) {
    const uint64_t stored = LoadLe64(p), entries = LoadLe64(p + 8);
    const uint32_t crc = LoadLe32(p + 16);
    const std::string part_name = "part " + std::to_string(i);
    if (entries > kPartEntries) return corrupt(part_name + " is too large");
    const std::string part_key = CheckpointPartKey(name, seq, i);
    S3B_RETURN_IF_ERROR(GetAll(transport, part_key, stored, &packed).Annotate(where));
    if (packed.size() != stored) return corrupt(part_name + " has the wrong length");
    // Decoded a chunk at a time, twice: first checked whole (its length and CRC), then into the
    // map, so that a damaged part changes nothing (an id decoded from garbage may be anything).
    // Entries come in order of id, each below the most blocks an export may have.
    for (const bool apply : {false, true}) {
      ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
      ZSTD_inBuffer in{packed.data(), packed.size(), 0};
      const uint64_t want = entries * kEntryBytes;
      uint64_t got = 0;
      uint32_t got_crc = 0;
      size_t held = 0;  // bytes of an entry cut at the end of the last chunk
      size_t more = 1;
      while (more != 0) {
        ZSTD_outBuffer out{raw.data(), raw.size(), held};
        more = ZSTD_decompressStream(dctx.get(), &out, &in);
        if (ZSTD_isError(more))
          return corrupt(part_name + " does not decode: " + ZSTD_getErrorName(more));
        const size_t fresh = out.pos - held;
        if (got + fresh > want) return corrupt(part_name + " decodes to more than its root says");
        got_crc = Crc32c(got_crc, raw.data() + held, fresh);
        got += fresh;
        const size_t whole = out.pos / kEntryBytes * kEntryBytes;
        for (size_t at = 0; apply && at < whole; at += kEntryBytes) {
          const uint64_t id = LoadLe64(raw.data() + at);
          if (id < next_id || id >= kMaxExportBlocks)
            return corrupt(part_name + " has block " + std::to_string(id) + " out of order");
          next_id = id + 1;
          map->Set(id, BlockMap::Unpack(LoadLe64(raw.data() + at + 8)));
        }
        held = out.pos - whole;
        std::memmove(raw.data(), raw.data() + whole, held);
        if (more != 0 && in.pos == in.size && out.pos < out.size)
          return corrupt(part_name + " ends in the middle of its data");
      }
      if (got != want || held != 0 || in.pos != in.size || got_crc != crc)
        return corrupt(part_name + " does not decode to what its root says");
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
