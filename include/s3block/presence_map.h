// PresenceMap: one bit per block of an export, set when the block may be stored.
//
// Built at open by listing the store, then kept up to date by the Volume: set before a block is
// written, cleared after it is deleted. While this process is the export's only writer, a clear
// bit means the block is certainly not stored, so reads of it cost no store request and extents
// report it as a hole without asking the store.
//
// Memory: bits are kept in 64 KiB pages allocated on first set, so a sparse export of any size
// costs little. Thread safety: all methods are safe for concurrent use (atomic words).
#ifndef S3BLOCK_PRESENCE_MAP_H_
#define S3BLOCK_PRESENCE_MAP_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace s3block {

class PresenceMap {
 public:
  explicit PresenceMap(uint64_t blocks);
  ~PresenceMap();
  PresenceMap(const PresenceMap&) = delete;
  PresenceMap& operator=(const PresenceMap&) = delete;

  uint64_t blocks() const { return blocks_; }
  // REQUIRES: id < blocks() (ids past the end are ignored by Set/Clear and absent for Test).
  bool Test(uint64_t id) const;
  void Set(uint64_t id);
  void Clear(uint64_t id);
  // Number of set bits.
  uint64_t Count() const;
  // Returns the first id >= from whose bit equals `value`, or `limit` if none below limit.
  uint64_t FindNext(uint64_t from, uint64_t limit, bool value) const;

 private:
  static constexpr uint64_t kWordsPerPage = 8192;  // 64 KiB
  static constexpr uint64_t kBitsPerPage = kWordsPerPage * 64;

  std::atomic<uint64_t>* Page(uint64_t page) const {
    return pages_[page].load(std::memory_order_acquire);
  }
  std::atomic<uint64_t>* PageForWrite(uint64_t page);

  const uint64_t blocks_;
  std::unique_ptr<std::atomic<std::atomic<uint64_t>*>[]> pages_;
  uint64_t page_count_;
  std::mutex alloc_mu_;
};

}  // namespace s3block

#endif  // S3BLOCK_PRESENCE_MAP_H_
