// BlockMap: where each stored block of a log-structured export is: a segment (by its slot in
// the export's segment table), the offset of its frame there and the frame's length.
//
// Memory: one entry is 8 bytes (slot 25 bits, offset and length in 16-byte units, 22 and 17
// bits: frames of segments up to 64 MiB, blocks up to 1 MiB). Entries live in pages of 256
// blocks, allocated when a block of theirs is first stored and holding only the entries present
// (a bitmap says which): 8 bytes per stored block, plus about 80 bytes per page touched. A full
// page whose blocks lie one after the other in one segment (what a sequential write leaves, as
// segments are sorted by block id) is kept as its first entry alone: 80 bytes per 256 blocks.
//
// Copying a map is cheap: pages are shared, and copied only when one of the copies changes them
// (a checkpoint writes out a copy while the export goes on changing).
//
// Thread safety: none; the owner locks. A copy may be read by another thread while the original
// changes.
#ifndef S3BLOCK_LOG_BLOCK_MAP_H_
#define S3BLOCK_LOG_BLOCK_MAP_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace s3block::log {

// Where a block's frame is.
struct Loc {
  uint32_t slot = 0;    // the segment's slot
  uint32_t offset = 0;  // of the frame in the segment, a multiple of 16
  uint32_t length = 0;  // of the frame, a multiple of 16
  bool operator==(const Loc&) const = default;
};

inline constexpr uint32_t kMaxSlots = 1u << 25;
// A clone's deleted block (a trim of a block its base holds): in the map, so that the base's
// copy stays hidden, and in no segment.
inline constexpr uint32_t kTombstoneSlot = kMaxSlots - 1;
inline constexpr Loc kTombstone{kTombstoneSlot, 0, 0};
inline bool IsTombstone(const Loc& loc) { return loc.slot == kTombstoneSlot; }
inline constexpr uint64_t kMaxMappedSegmentBytes = 64ull << 20;
inline constexpr uint32_t kMaxFrameBytes = 2u << 20;

class BlockMap {
 public:
  static constexpr uint32_t kPageBits = 8;
  static constexpr uint32_t kPageEntries = 1u << kPageBits;

  // The packed form of a Loc. REQUIRES: slot < kMaxSlots, offset < 64 MiB and length < 2 MiB,
  // both multiples of 16.
  static uint64_t Pack(const Loc& loc);
  static Loc Unpack(uint64_t packed);

  bool Get(uint64_t id, Loc* loc) const;
  // Maps id to loc; returns whether it was mapped before, and then *old (if given) is where.
  bool Set(uint64_t id, const Loc& loc, Loc* old = nullptr);
  // Unmaps id; returns whether it was mapped, and then *old (if given) is where.
  bool Erase(uint64_t id, Loc* old = nullptr);

  // Blocks mapped.
  uint64_t size() const { return size_; }
  // Bytes the map takes (pages, their entries, the page table).
  uint64_t MemoryBytes() const;
  // Calls fn for each mapped block, in order of id.
  void ForEach(const std::function<void(uint64_t id, const Loc& loc)>& fn) const;

 private:
  struct Page {
    std::array<uint64_t, kPageEntries / 64> bits{};
    uint32_t count = 0;
    bool run = false;          // all kPageEntries present, values[0] the first, the rest after it
    std::vector<uint64_t> values;  // packed, in order of the present entries
    uint32_t Rank(uint32_t i) const;
    bool Has(uint32_t i) const { return (bits[i >> 6] >> (i & 63)) & 1; }
    uint64_t ValueAt(uint32_t i) const;  // REQUIRES: Has(i)
    void Expand();                       // a run back to one value per entry
    void TryCompact();                   // to a run, if it is one
  };
  // The page to change, made and unshared as needed.
  Page* MutablePage(uint64_t page_no);

  std::vector<std::shared_ptr<Page>> pages_;
  uint64_t size_ = 0;
};

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_BLOCK_MAP_H_
