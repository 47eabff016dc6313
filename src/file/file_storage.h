// FileStorage: the specification's example API, in C++.
//
//   FileStorage storage("/tmp/blockstore");
//   storage.write_block("dev1", 42, data);
//   std::vector<uint8_t> block = storage.read_block("dev1", 42, 4096);
//
// Blocks live at <root>/exports/<export>/blocks/<block_id>, exactly as the plugin keeps them, so
// a block written here is served by the plugin and the other way round. Unlike the rest of the
// library, this convenience API reports errors by throwing StorageError.
#ifndef S3BLOCK_FILE_FILE_STORAGE_H_
#define S3BLOCK_FILE_FILE_STORAGE_H_

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "file/file_store.h"

namespace s3block {

class StorageError : public std::runtime_error {
 public:
  StorageError(int err, const std::string& message) : std::runtime_error(message), err_(err) {}
  int err() const { return err_; }

 private:
  int err_;
};

class FileStorage {
 public:
  // `root` may be relative; it is made absolute now.
  explicit FileStorage(const std::string& root);

  // Stores `data` as block `block_id` of `export_name`, durably (it survives a crash once this
  // returns). Throws StorageError for a bad export name or an I/O error.
  void write_block(std::string_view export_name, uint64_t block_id, std::span<const uint8_t> data);
  void write_block(std::string_view export_name, uint64_t block_id, std::string_view data);

  // Returns block `block_id` of `export_name` as `size` bytes: zeros if it was never written,
  // and zero-padded if fewer bytes were stored. Throws StorageError if more than `size` bytes are
  // stored, for a bad export name, or on an I/O error.
  std::vector<uint8_t> read_block(std::string_view export_name, uint64_t block_id, size_t size);

  FileStore& store() { return store_; }

 private:
  FileStore store_;
};

}  // namespace s3block

#endif  // S3BLOCK_FILE_FILE_STORAGE_H_
