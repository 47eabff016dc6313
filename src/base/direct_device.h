// DirectDevice: the device of an export served without a cache (cache=false): every call goes to
// the store stack below at once, as whole blocks. A part of a block is written by reading the
// block, merging and writing it back (the Volume keeps other writers of the block away).
#ifndef S3BLOCK_BASE_DIRECT_DEVICE_H_
#define S3BLOCK_BASE_DIRECT_DEVICE_H_

#include <memory>
#include <string>

#include "s3block/block_device.h"
#include "s3block/block_store.h"

namespace s3block {

class DirectDevice : public BlockDevice {
 public:
  DirectDevice(std::shared_ptr<BlockStore> store, std::string export_name, uint32_t block_size)
      : store_(std::move(store)), name_(std::move(export_name)), block_size_(block_size) {}

  Status ReadRange(uint64_t id, uint32_t offset, std::span<uint8_t> out, ReadIntent intent,
                   bool* found) override;
  Status ReadBlocks(uint64_t first, uint32_t count, uint8_t* out) override;
  // Raw blocks: the store may replace a stored block in place (BlockStore::Overwrite).
  Status Write(uint64_t id, std::span<const uint8_t> data, bool fua) override;
  Status WriteBlocks(uint64_t first, uint32_t count, const uint8_t* data, bool fua) override;
  Status WriteRange(uint64_t id, uint32_t offset, std::span<const uint8_t> data, bool base_zero,
                    bool fua, bool* deleted) override;
  Status Delete(std::span<const uint64_t> ids, bool fua) override;
  Status Flush() override;
  // Nothing reads ahead here.
  void SetPresenceHint(std::function<bool(uint64_t)>) override {}

 private:
  const std::shared_ptr<BlockStore> store_;
  const std::string name_;
  const uint32_t block_size_;
};

}  // namespace s3block

#endif  // S3BLOCK_BASE_DIRECT_DEVICE_H_
