// BlockDevice: one export's blocks, at the export's block size, as the Volume reads and writes
// them: parts of blocks, runs of blocks, whole blocks.
//
// Below it is the store stack (block_store.h), which knows whole blocks of any export. A device is
// opened for one export once its block size is known (Volume::Open), and keeps that size: every
// call is about blocks of exactly that many bytes, and a stored block of another length is an
// error (EIO, naming the block and both lengths). Two devices implement it: the cache's
// (cache_store.h), which keeps parts of blocks, reads ahead and writes back, and DirectDevice
// (direct_device.h), which sends every call to the store stack at once (cache=false).
//
// Durability: a write or delete with fua is durable when it returns; any other is durable once
// a later Flush returns. Every block reads as its newest content; a block that is not stored
// (never written, deleted, or all zeros) is "not found", and the Volume reads it as zeros.
//
// Thread safety: safe for concurrent use; the caller (the Volume) serialises the writers of one
// block.
#ifndef S3BLOCK_BLOCK_DEVICE_H_
#define S3BLOCK_BLOCK_DEVICE_H_

#include <cstdint>
#include <functional>
#include <span>

#include "s3block/status.h"

namespace s3block {

// Why a part of a block is read, for a device that reads ahead of sequential readers.
enum class ReadIntent : uint8_t {
  kRead,          // bytes a reader asked for: a run of these may be a sequential reader
  kPartialWrite,  // the read of a read-modify-write: never taken for a reader's progress
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Reads bytes [offset, offset + out.size()) of block `id` into out and sets *found; a block
  // that is not stored is not an error: *found = false and out is left as it was.
  // REQUIRES: offset + out.size() <= block size.
  virtual Status ReadRange(uint64_t id, uint32_t offset, std::span<uint8_t> out,
                           ReadIntent intent, bool* found) = 0;

  // Reads `count` whole blocks from block `first` on into out (count * block size bytes), for a
  // reader; a block that is not stored reads as zeros.
  virtual Status ReadBlocks(uint64_t first, uint32_t count, uint8_t* out) = 0;

  // Replaces block `id` (block size bytes of raw data: every byte stands for itself).
  virtual Status Write(uint64_t id, std::span<const uint8_t> data, bool fua) = 0;

  // Write of `count` blocks from block `first` on (data holds them back to back), at less cost
  // than block by block: the cache takes its lock once, a log export appends the run at once.
  virtual Status WriteBlocks(uint64_t first, uint32_t count, const uint8_t* data, bool fua) = 0;

  // Replaces bytes [offset, offset + data.size()) of block `id` and keeps the rest, as a
  // read-modify-write would; a block that is not stored reads as zeros around the range. With
  // base_zero the caller knows the block is not stored (nothing needs reading to merge). Sets
  // *deleted if the block is now known not to be stored (the result was all zeros), else clears
  // it.
  virtual Status WriteRange(uint64_t id, uint32_t offset, std::span<const uint8_t> data,
                            bool base_zero, bool fua, bool* deleted) = 0;

  // Deletes the given blocks; deleting a block that is not stored is not an error.
  virtual Status Delete(std::span<const uint64_t> ids, bool fua) = 0;

  // Makes every write and delete that returned before the call durable.
  virtual Status Flush() = 0;

  // A hint from the Volume: may_be_stored(id) is false only for blocks that are certainly not
  // stored (never written, deleted, or past the end of the export). A device that reads ahead
  // skips them. The function must be cheap and safe to call from any thread; nullptr removes it.
  virtual void SetPresenceHint(std::function<bool(uint64_t id)> may_be_stored) = 0;
};

}  // namespace s3block

#endif  // S3BLOCK_BLOCK_DEVICE_H_
