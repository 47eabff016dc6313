#include "base/direct_device.h"

#include <cstring>

#include "util/zero.h"

namespace s3block {

Status DirectDevice::ReadRange(uint64_t id, uint32_t offset, std::span<uint8_t> out,
                               ReadIntent /*intent*/, bool* found) {
  // Kept per thread so that a read costs no allocation; at most one block per thread.
  thread_local Bytes data;
  S3B_RETURN_IF_ERROR(store_->Read(name_, id, &data, found));
  if (!*found) return Status::Ok();
  if (data.size() != block_size_)
    return WrongBlockLength(*store_, name_, id, data.size(), block_size_);
  std::memcpy(out.data(), data.data() + offset, out.size());
  return Status::Ok();
}

Status DirectDevice::ReadBlocks(uint64_t first, uint32_t count, uint8_t* out) {
  for (uint32_t i = 0; i < count; ++i, out += block_size_) {
    bool found = false;
    S3B_RETURN_IF_ERROR(ReadRange(first + i, 0, std::span<uint8_t>(out, block_size_),
                                  ReadIntent::kRead, &found));
    if (!found) std::memset(out, 0, block_size_);
  }
  return Status::Ok();
}

Status DirectDevice::Write(uint64_t id, std::span<const uint8_t> data, bool fua) {
  return store_->Overwrite(name_, id, data, fua);
}

Status DirectDevice::WriteBlocks(uint64_t first, uint32_t count, const uint8_t* data, bool fua) {
  const std::span<const uint8_t> run(data, static_cast<uint64_t>(count) * block_size_);
  return store_->OverwriteRun(name_, first, run, block_size_, fua);
}

Status DirectDevice::WriteRange(uint64_t id, uint32_t offset, std::span<const uint8_t> data,
                                bool base_zero, bool fua, bool* deleted) {
  *deleted = false;
  thread_local Bytes block;
  block.assign(block_size_, 0);
  if (!base_zero) {
    bool found = false;
    S3B_RETURN_IF_ERROR(ReadRange(id, 0, block, ReadIntent::kPartialWrite, &found));
  }
  std::memcpy(block.data() + offset, data.data(), data.size());
  if (IsAllZero(block.data(), block.size())) {
    uint64_t ids[1] = {id};
    S3B_RETURN_IF_ERROR(store_->Delete(name_, ids, fua));
    *deleted = true;
    return Status::Ok();
  }
  return Write(id, block, fua);
}

Status DirectDevice::Delete(std::span<const uint64_t> ids, bool fua) {
  return store_->Delete(name_, ids, fua);
}

Status DirectDevice::Flush() { return store_->Flush(name_); }

}  // namespace s3block
