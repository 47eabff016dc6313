#include "s3block/block_store.h"

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

Status BlockStore::OverwriteRun(std::string_view export_name, uint64_t first,
                                std::span<const uint8_t> data, uint32_t block_size, bool fua) {
  for (size_t at = 0; at < data.size(); at += block_size, ++first)
    S3B_RETURN_IF_ERROR(Overwrite(export_name, first, data.subspan(at, block_size), fua));
  return Status::Ok();
}

}  // namespace s3block
