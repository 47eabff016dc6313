#ifndef S3BLOCK_CACHE_BLOCK_OVERLAY_H_
#define S3BLOCK_CACHE_BLOCK_OVERLAY_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "s3block/block_store.h"

namespace s3block {

// The newest bytes of parts of a block, kept apart from the rest of it: a block written in part
// that was not in memory, or was clean in memory (then the stored content stays beside it, as a
// base that may be dropped to make room). Kept in pages allocated as they are written, with one
// bit per 512-byte sector that holds new bytes. Only whole sectors are kept (other writes merge
// with the block).
//
// Not thread-safe: the cache guards each overlay with its lock.
class BlockOverlay {
 public:
  static constexpr uint32_t kSector = 512;
  static constexpr uint32_t kPage = 4096;

  // REQUIRES: block_size is a multiple of kSector, and of kPage if larger than kPage.
  BlockOverlay(uint32_t block_size, bool base_zero)
      : block_size_(block_size),
        page_size_(std::min(kPage, block_size)),
        base_zero_(base_zero),
        pages_(block_size / page_size_),
        bits_((block_size / kSector + 63) / 64, 0) {}

  static bool Aligned(uint32_t offset, size_t len) {
    return offset % kSector == 0 && len % kSector == 0;
  }
  uint32_t block_size() const { return block_size_; }
  // The block is known not to be stored: what is not in the overlay is zeros.
  bool base_zero() const { return base_zero_; }
  // The stored content, if kept (null: not kept, or base_zero).
  const std::shared_ptr<const Bytes>& base() const { return base_; }
  void set_base(std::shared_ptr<const Bytes> base) { base_ = std::move(base); }
  // Whether the rest of the block is known without reading the store.
  bool BaseKnown() const { return base_zero_ || base_ != nullptr; }
  // Bytes of memory it holds (pages and bookkeeping).
  uint64_t Cost() const { return CostWith(0); }
  // Bytes a new overlay of a block of block_size would hold after Apply(offset, len).
  static uint64_t NewCost(uint32_t block_size, uint32_t offset, size_t len);
  // Bytes it would hold after Apply(offset, len).
  uint64_t CostAfter(uint32_t offset, size_t len) const;
  // Every sector of the block holds new bytes.
  bool Full() const { return present_ == block_size_ / kSector; }
  // Bytes [offset, offset + len) are all in whole sectors that hold new bytes.
  bool Covers(uint32_t offset, size_t len) const {
    if (!Aligned(offset, len)) return false;
    for (uint32_t sec = offset / kSector; sec < (offset + len) / kSector; ++sec)
      if (!Test(sec)) return false;
    return true;
  }
  // REQUIRES: Aligned(offset, data.size()), offset + data.size() <= block_size.
  void Apply(uint32_t offset, std::span<const uint8_t> data);
  // Copies bytes [offset, offset + out.size()) of the block as it is now to out.
  // REQUIRES: Covers(offset, out.size()) or BaseKnown().
  void CopyOut(uint32_t offset, std::span<uint8_t> out) const;
  // Copies every sector it holds over `block` (block_size bytes).
  void MergeInto(uint8_t* block) const;

 private:
  bool Test(uint32_t sec) const { return (bits_[sec / 64] >> (sec % 64)) & 1; }
  uint64_t CostWith(uint64_t more_pages) const {
    return Bookkeeping(block_size_, pages_used_ + more_pages, page_size_);
  }
  // Pages of page bytes, the page table and the sector bits of a block of block_size.
  static uint64_t Bookkeeping(uint32_t block_size, uint64_t pages, uint32_t page) {
    return pages * page + uint64_t{block_size / page} * sizeof(std::unique_ptr<uint8_t[]>) +
           uint64_t{(block_size / kSector + 63) / 64} * sizeof(uint64_t);
  }

  const uint32_t block_size_;
  const uint32_t page_size_;
  const bool base_zero_;
  std::shared_ptr<const Bytes> base_;
  std::vector<std::unique_ptr<uint8_t[]>> pages_;
  std::vector<uint64_t> bits_;
  uint32_t present_ = 0;     // sectors set
  uint32_t pages_used_ = 0;  // pages allocated
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_BLOCK_OVERLAY_H_
