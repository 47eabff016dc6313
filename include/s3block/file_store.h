// FileStore: the local leaf store, one file per block, in the specification's layout:
//
//   <root>/exports/<export_name>/blocks/<block_id>     one raw block, id in decimal
//   <root>/exports/<export_name>/metadata              the export's metadata document
//
// A missing block file reads as "not found" (zeros to the client). Writes go to a temporary file
// in the blocks directory (a name starting with '.', which is never a block id) and are renamed
// over the block, so a reader or a crash sees the old block or the new one, never a mix.
// Overwrite (raw blocks only: see BlockStore::Overwrite) instead writes into the block's file
// where it already holds a block of the same length and has no other link: no new file, no
// rename, and the old file's blocks are not freed and allocated again (on ext4, replacing a file
// by rename also writes the new file's data back at once); and it creates a missing block's file
// under its own name (one directory change instead of two). Readers are kept from seeing a file
// half written by a lock per block; a crash before the next flush may leave a mix of old and new
// pages (for a block that had no file, zeros and new pages, or an empty file, which reads as a
// block never written).
// Durability: Flush fsyncs every file written and every directory changed since the previous
// flush (or, when that is many files, syncfs() on the store's file system).
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_FILE_STORE_H_
#define S3BLOCK_FILE_STORE_H_

#include <array>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "s3block/block_store.h"

namespace s3block {

class FileStore : public BlockStore {
 public:
  // REQUIRES: root is an absolute path (nbdkit changes directory to '/').
  explicit FileStore(std::string root);
  ~FileStore() override;

  std::string Describe() const override { return "file:" + root_; }
  // Creates <root> and <root>/exports if missing; fails if root is not a writable directory.
  Status Check() override;

  Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) override;
  // Reads up to 32 blocks at a time with one io_uring submission, where the kernel allows
  // io_uring (else one by one, as Read).
  void ReadBatch(std::string_view export_name, std::span<BlockRead> reads) override;
  size_t ReadBatchSize() const override;
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  Status Overwrite(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) override;
  Status Flush(std::string_view export_name) override;
  Status ListBlocks(std::string_view export_name,
                    const std::function<void(uint64_t)>& fn) override;
  Status ListExports(std::vector<std::string>* names) override;
  Status ReadMeta(std::string_view export_name, std::string* text, bool* found) override;
  Status WriteMeta(std::string_view export_name, std::string_view text) override;
  Status DeleteMeta(std::string_view export_name) override;
  // A reflink where the file system has them, else a copy in the kernel (copy_file_range).
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;
  // An advisory lock (flock) on exports/<name>/lock, which also records the holder. The kernel
  // releases it when the process dies, however it dies, so force is never needed here.
  Status AcquireLease(std::string_view export_name, const std::string& holder, bool force,
                      std::unique_ptr<ExportLease>* out) override;
  Status QueryLease(std::string_view export_name, std::string* holder) override;

  const std::string& root() const { return root_; }
  // Path helpers (the layout above). REQUIRES: export_name passed ValidateExportName.
  std::string ExportDir(std::string_view export_name) const;
  std::string BlocksDir(std::string_view export_name) const;
  std::string BlockPath(std::string_view export_name, uint64_t id) const;

 private:
  // What must be made durable at the next flush of one export.
  struct Pending {
    std::unordered_set<uint64_t> files;  // blocks written since the last flush
    bool blocks_dir_changed = false;     // a rename or unlink happened in blocks/
  };

  // Creates exports/<name>/blocks (and parents) if missing, fsyncing each parent that changed.
  Status EnsureBlocksDir(std::string_view export_name);
  Pending& PendingFor(std::string_view export_name);  // REQUIRES: mu_ held
  // Writes data into the existing file of block id if it holds as many bytes and has one link;
  // *done is false otherwise (nothing was changed, or a write failed part way: either way the
  // caller replaces the file whole). *missing tells that the block has no file.
  Status OverwriteInPlace(std::string_view export_name, uint64_t id,
                          std::span<const uint8_t> data, bool fua, bool* done, bool* missing);
  // Creates the file of block id, which has none, and writes data into it: no temporary file and
  // no rename. *done is false if the file exists by now (nothing was changed); an error means the
  // block still has no file.
  Status CreateInPlace(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                       bool fua, bool* done);
  // Notes block id's file, new in the blocks directory dir, for the next Flush; with fua, makes
  // its directory entry durable now instead (the caller made the file's data durable).
  Status FileAdded(std::string_view export_name, const std::string& dir, uint64_t id, bool fua);
  // ReadBatch of at most 32 blocks.
  void ReadBatchPart(std::string_view export_name, std::span<BlockRead> reads);
  // The lock that a reader of block id shares and an in-place writer of it holds alone.
  std::shared_mutex& BlockLock(std::string_view export_name, uint64_t id);

  const std::string root_;
  std::mutex mu_;
  std::unordered_map<std::string, Pending> pending_;       // guarded by mu_
  std::unordered_set<std::string> dirs_ready_;             // guarded by mu_
  static constexpr size_t kBlockLocks = 64;
  std::array<std::shared_mutex, kBlockLocks> block_locks_;
};

// Writes `data` to `path` atomically and durably: a temporary file beside it, fsync, rename,
// fsync of the directory. Used for metadata and small control files.
Status WriteFileAtomically(const std::string& path, std::string_view data);

// Fsyncs a directory.
Status FsyncDir(const std::string& path);

}  // namespace s3block

#endif  // S3BLOCK_FILE_STORE_H_
