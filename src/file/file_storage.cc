#include "file/file_storage.h"

#include <filesystem>

#include "s3block/params.h"

namespace s3block {
namespace {

void ThrowIfError(const Status& s) {
  if (!s.ok()) throw StorageError(s.err(), s.message());
}

std::string Absolute(const std::string& root) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(root, ec);
  if (ec) throw StorageError(ec.value(), "cannot make '" + root + "' absolute: " + ec.message());
  return p.lexically_normal().string();
}

}  // namespace

FileStorage::FileStorage(const std::string& root) : store_(Absolute(root)) {
  ThrowIfError(store_.Check());
}

void FileStorage::write_block(std::string_view export_name, uint64_t block_id,
                              std::span<const uint8_t> data) {
  ThrowIfError(ValidateExportName(export_name));
  ThrowIfError(store_.Write(export_name, block_id, data, /*fua=*/true));
}

void FileStorage::write_block(std::string_view export_name, uint64_t block_id,
                              std::string_view data) {
  write_block(export_name, block_id,
              std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

std::vector<uint8_t> FileStorage::read_block(std::string_view export_name, uint64_t block_id,
                                             size_t size) {
  ThrowIfError(ValidateExportName(export_name));
  Bytes data;
  bool found = false;
  ThrowIfError(store_.Read(export_name, block_id, &data, &found));
  if (data.size() > size) {
    throw StorageError(EIO, "block " + std::to_string(block_id) + " of export '" +
                                QuoteForMessage(export_name) + "' has " +
                                std::to_string(data.size()) + " bytes, more than " +
                                std::to_string(size));
  }
  data.resize(size, 0);
  return data;
}

}  // namespace s3block
