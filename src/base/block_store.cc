#include "s3block/block_store.h"

#include <cstring>

#include "s3block/params.h"

namespace s3block {

Status WrongBlockLength(const BlockStore& store, std::string_view export_name, uint64_t id,
                        size_t stored, uint32_t block_size) {
  return Status::IoError("block " + std::to_string(id) + " of export '" +
                         QuoteForMessage(export_name) + "' in " + store.Describe() + " has " +
                         std::to_string(stored) + " bytes; the export's block size is " +
                         std::to_string(block_size));
}

void BlockStore::ReadBatch(std::string_view export_name, std::span<BlockRead> reads) {
  for (BlockRead& r : reads) r.status = Read(export_name, r.id, r.data, &r.found);
}

Status BlockStore::ReadRange(std::string_view export_name, uint64_t id, uint32_t block_size,
                             uint32_t offset, std::span<uint8_t> out, ReadIntent intent,
                             bool* found) {
  // Kept per thread so that a read costs no allocation; at most one block per thread that reads
  // through a store without a cache.
  thread_local Bytes data;
  S3B_RETURN_IF_ERROR(Read(export_name, id, &data, found));
  if (!*found) return Status::Ok();
  if (data.size() != block_size)
    return WrongBlockLength(*this, export_name, id, data.size(), block_size);
  std::memcpy(out.data(), data.data() + offset, out.size());
  return Status::Ok();
}

Status BlockStore::ReadBlocks(std::string_view export_name, uint64_t first, uint32_t count,
                              uint32_t block_size, uint8_t* out) {
  for (uint32_t i = 0; i < count; ++i, out += block_size) {
    bool found = false;
    S3B_RETURN_IF_ERROR(ReadRange(export_name, first + i, block_size, 0,
                                  std::span<uint8_t>(out, block_size), ReadIntent::kRead, &found));
    if (!found) std::memset(out, 0, block_size);
  }
  return Status::Ok();
}

}  // namespace s3block
