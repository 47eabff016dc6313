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
// half written by a lock per block: in this process a mutex, and across processes (a read-only
// server or the admin command beside the writing server) a POSIX open-file-description lock on
// the block's file: a reader holds a read lock (F_OFD_SETLK, F_RDLCK) from before it looks at
// the file's length to the end of its read, a writer in place a write lock while it writes. So
// a read through any process sees each block whole, old or new, never a mix. A writer never waits
// for a reader in another process: if one holds the block, it replaces the file instead (rename).
// A reader waits at most 10 seconds for a writer (EIO after, naming the file). A crash before the
// next flush may leave a mix of old and new pages (for a block that had no file, zeros and new
// pages, or an empty file, which reads as a block never written).
//
// Nothing under the root is trusted: every path below it (exports/, exports/<name>/, its
// metadata and lock, blocks/, each block, temporary files) is opened relative to a directory fd,
// never following a symlink (O_NOFOLLOW; the root itself may be a symlink, the administrator's
// choice), files without waiting (O_NONBLOCK) and checked to be regular files, directories to be
// directories. A symlink, FIFO, socket, device or directory where a file belongs (or anything
// but a directory where a directory belongs) is EIO naming the path and what is there; it is
// never followed, waited on, replaced, deleted or truncated through. Temporary files have
// random names and are created with O_EXCL|O_NOFOLLOW. The directory fds are kept per export
// named: two per export (exports/<name> and its blocks/), plus two for the store (root,
// exports/), plus the lease's lock file while it is held.
// Durability: Flush fsyncs every file written and every directory changed since the previous
// flush (or, when that is many files, syncfs() on the store's file system).
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_FILE_FILE_STORE_H_
#define S3BLOCK_FILE_FILE_STORE_H_

#include <array>
#include <functional>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "s3block/block_store.h"
#include "util/mutex.h"

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
  size_t ReadBatchSize(std::string_view export_name) const override;
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  Status Overwrite(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) override;
  Status Flush(std::string_view export_name) override;
  // Flushes, then closes the export's directory fds (the next use opens them again).
  Status CloseExport(std::string_view export_name) override;
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
  // The directories of one export, opened without following links. Shared: a DeleteMeta may
  // drop them from dirs_ while a request still uses them.
  struct Dirs {
    int exp = -1;     // exports/<name>
    int blocks = -1;  // exports/<name>/blocks
    ~Dirs();
  };
  // The store's exports/ directory fd (opened once, with the root).
  Status ExportsFd(int* fd) EXCLUDES(mu_);
  // The export's directories; with create, made if missing (each new entry made durable in its
  // parent), else *out is null if the export has no blocks directory.
  Status GetDirs(std::string_view export_name, bool create, std::shared_ptr<const Dirs>* out)
      EXCLUDES(mu_);
  // Forgets the export's directory fds (the next use opens them again).
  void DropDirs(std::string_view export_name) EXCLUDES(mu_);

  // What must be made durable at the next flush of one export.
  struct Pending {
    std::unordered_set<uint64_t> files;  // blocks written since the last flush
    bool blocks_dir_changed = false;     // a rename or unlink happened in blocks/
  };

  Pending& PendingFor(std::string_view export_name) REQUIRES(mu_);
  // Writes data into the existing file of block id if it holds as many bytes and has one link;
  // *done is false otherwise (nothing was changed, or a write failed part way: either way the
  // caller replaces the file whole). *missing tells that the block has no file.
  Status OverwriteInPlace(std::string_view export_name, uint64_t id,
                          std::span<const uint8_t> data, bool fua, bool* done, bool* missing);
  // Writes data into a new unnamed file and links it as block id's file, which has none: no
  // temporary name and no rename. *done is false if the file exists by now, or unnamed files
  // cannot be made or linked here (nothing was changed); an error means the block still has no
  // file.
  Status CreateInPlace(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                       bool fua, bool* done);
  // Notes block id's file, new in the blocks directory, for the next Flush; with fua, makes its
  // directory entry durable now instead (the caller made the file's data durable).
  Status FileAdded(std::string_view export_name, const Dirs& dirs, uint64_t id, bool fua);
  // ReadBatch of at most 32 blocks.
  void ReadBatchPart(std::string_view export_name, std::span<BlockRead> reads);
  // The lock that a reader of block id shares and an in-place writer of it holds alone.
  std::shared_mutex& BlockLock(std::string_view export_name, uint64_t id);

  const std::string root_;
  Mutex mu_;
  std::unordered_map<std::string, Pending> pending_ GUARDED_BY(mu_);
  std::unordered_map<std::string, std::shared_ptr<const Dirs>> dirs_ GUARDED_BY(mu_);
  int root_fd_ GUARDED_BY(mu_) = -1;      // kept once open
  int exports_fd_ GUARDED_BY(mu_) = -1;   // kept once open
  static constexpr size_t kBlockLocks = 64;
  std::array<std::shared_mutex, kBlockLocks> block_locks_;
};

}  // namespace s3block

#endif  // S3BLOCK_FILE_FILE_STORE_H_
