// DiskCacheStore: a persistent cache of blocks on local disk (disk-cache=DIR,SIZE) over an S3
// store, so that a restarted server does not fetch its working set from S3 again.
//
// It keeps blocks as the store below holds them (a compressed or encrypted export's blocks stay
// compressed or encrypted on the local disk, and the codec layer above checks them as it checks
// S3's), one file each:
//
//   DIR/<store-id>/store                                      the store this directory caches
//   DIR/<store-id>/exports/<export_name>/lock                 flock: one process per export
//   DIR/<store-id>/exports/<export_name>/<shard>/<id>.<md5>   a block; shard = id / 4096
//
// <store-id> is the first 16 hex digits of the SHA-256 of the store's description (bucket,
// prefix and endpoint), so one DIR can cache several stores. <md5> is the MD5 of the file's
// content in hex: the same digest S3 reports as the ETag of the object.
//
// Never older than the store: a copy left by an earlier run is used only once a listing of the
// store (ListBlocks, which the Volume runs when it opens an export) has shown the same MD5 for its
// block; copies of blocks that were rewritten, deleted or are missing are deleted then, and until
// a listing has succeeded such copies are not read. A store that tells no MD5 (ListBlockDigests
// gives "") gets none of its copies reused. While this process serves an export it holds the
// export's lease, so only its own writes change blocks: a write or delete drops the block's copy
// before the store request and writes the new copy after it succeeds, and a read that raced with
// a write or delete of its block does not leave its (possibly older) copy behind.
//
// Never wrong: every read checks the file's length and MD5 against its name (a file torn by a
// crash of the machine is dropped and the store read instead). Never an error: a failure of the
// local disk (full, unreadable) drops the copy and the request goes to the store. Nothing here
// needs to be durable (no fsync): the store is the durable copy.
//
// Eviction: least recently used, across all exports, keeping the bytes of block data at most
// SIZE. Memory: about 150 bytes per cached block for the index.
//
// An export whose cache directory another process holds (its lock) is served without the disk
// cache; Stats() says so.
//
// Nothing in DIR is trusted beyond what Check() verifies: DIR and DIR/<store-id> must be real
// directories (not symlinks) owned by this process's uid and not writable by group or others
// (else Check() refuses, naming the directory and what is wrong); missing ones are made 0700.
// Below them every file and directory is opened relative to a directory fd without following a
// symlink, files without waiting (a FIFO is refused, never waited on) and checked to be regular
// files; temporary files have random names and are created with O_EXCL|O_NOFOLLOW. Fds kept:
// three for the store (DIR, DIR/<store-id>, its exports/), two per export (its directory, its
// lock).
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_CACHE_DISK_CACHE_STORE_H_
#define S3BLOCK_CACHE_DISK_CACHE_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "s3block/block_store.h"
#include "util/mutex.h"

namespace s3block {

// Counters of one export's disk cache. Counts are monotonic since the process started; "bytes"
// and "blocks" are the state at the time of the call.
struct DiskCacheStats {
  uint64_t hits = 0;      // reads answered from the local disk
  uint64_t misses = 0;    // reads that went to the store
  uint64_t fills = 0;     // copies written after a read from the store
  uint64_t writes = 0;    // copies written after a write to the store
  uint64_t reused = 0;    // copies from an earlier run that a listing showed current
  uint64_t stale = 0;     // copies from an earlier run dropped: their block changed or is gone
  uint64_t evictions = 0;
  uint64_t errors = 0;    // local disk errors and damaged copies (each dropped, never served)
  uint64_t locked_out = 0;  // 1 if another process holds this export's cache directory
  uint64_t bytes = 0;
  uint64_t blocks = 0;
};

// Calls fn(key, value) for every counter, in the order declared above.
void ForEachDiskCacheStat(const DiskCacheStats& stats,
                          const std::function<void(const char* key, uint64_t value)>& fn);

class DiskCacheStore : public StoreDecorator {
 public:
  // Caches `next` in directory `dir` (absolute; created if missing, its parent must exist), at
  // most `size` bytes of block data. No I/O happens here: Check() creates the directories, and an
  // export's copies are loaded on the first call that names it.
  DiskCacheStore(std::shared_ptr<BlockStore> next, std::string dir, uint64_t size);
  ~DiskCacheStore() override;
  DiskCacheStore(const DiskCacheStore&) = delete;
  DiskCacheStore& operator=(const DiskCacheStore&) = delete;

  // "<next's description>, disk cache DIR".
  std::string Describe() const override;
  // Checks the store below, then creates DIR/<store-id> and checks that it is writable and
  // private (see above). Errors: the store's, or EINVAL/EACCES/EIO naming disk-cache= and the
  // directory.
  Status Check() override;

  Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) override;
  // Each block as Read: a copy on disk answers it, or the store below does.
  void ReadBatch(std::string_view export_name, std::span<BlockRead> reads) override;
  size_t ReadBatchSize(std::string_view) const override { return 1; }
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  // As Write: the copy on disk must follow every write.
  Status Overwrite(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) override;
  // Lists the store, and checks the export's copies against the listing (see the file comment).
  Status ListBlocks(std::string_view export_name,
                    const std::function<void(uint64_t)>& fn) override;
  Status ListBlockDigests(std::string_view export_name,
                          const std::function<void(uint64_t, std::string_view)>& fn) override;
  // Forwards, and drops the copy of the target block first.
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;
  // Forwards, then drops every copy of the export.
  Status DeleteMeta(std::string_view export_name) override;
  // Forgets the export, as if it had not been named yet in this process: its index, its lock
  // (another process may then use the copies) and its fds go; the copies stay on disk and are
  // checked again against the listing when the export is next used. Then forwards. An export
  // with a request in flight is left as it is.
  Status CloseExport(std::string_view export_name) override;

  // The counters of one export (zeros if the export was never named).
  DiskCacheStats Stats(std::string_view export_name) const;
  // The directory of this store's copies: DIR/<store-id>.
  const std::string& store_dir() const { return store_dir_; }

 private:
  struct Export;
  struct Entry {
    std::array<uint8_t, 16> md5;
    uint32_t size = 0;  // a block is at most 16 MiB, and a stored one only a header more
    // False for a copy left by an earlier run until a listing shows it current.
    bool checked = false;
    uint64_t born = 0;    // insertion sequence number (0: loaded from disk)
    uint64_t listed = 0;  // the last listing that showed it current
    std::list<std::pair<Export*, uint64_t>>::iterator lru;
  };
  // Requests in flight on one block: a read's copy is kept only if no write or delete of the
  // block was in the store at any moment of the read's: none started or ended meanwhile, and
  // none was under way when it began (a write under way may have landed, or may land, whatever
  // it answers).
  struct Pending {
    uint64_t gen = 0;
    int users = 0;
    int changes = 0;  // writes and deletes under way
  };
  struct Export {
    std::string name;
    std::string dir;  // DIR/<store-id>/exports/<name>
    int dir_fd = -1;  // dir, opened without following links; written before `loaded`
    Mutex load_mu;  // held by Load
    // Set (release) once Load has run; usable and lock_fd are written before it and not after.
    std::atomic<bool> loaded{false};
    bool usable = false;  // the lock is taken: copies are read and written
    int lock_fd = -1;
    // Guarded by the store's mu_: not checked, the analysis cannot name mu_ from here.
    uint64_t listings = 0;
    std::unordered_map<uint64_t, Entry> entries;
    std::unordered_map<uint64_t, Pending> pending;
    DiskCacheStats stats;  // bytes, blocks derived
    uint64_t bytes = 0;
  };

  // A copy's file to remove: its path below an export's directory fd ("<shard>/<id>.<md5>").
  struct Doomed {
    int dir_fd = -1;
    std::string rel;
  };
  // Opens (making them if missing) DIR, DIR/<store-id> and its exports/, checking the first two
  // are private; *exports_fd is the last. `what` names the parameter in errors.
  Status OpenDirs(const std::string& what, int* exports_fd) EXCLUDES(dirs_mu_);
  // Removes each file, never following a link.
  static void UnlinkAll(const std::vector<Doomed>& doomed);
  // The copy's path below its export's directory.
  static std::string RelPathOf(uint64_t id, const std::array<uint8_t, 16>& md5);

  // The export's state, loaded from its directory on first use.
  Export* For(std::string_view export_name) EXCLUDES(mu_);
  void Load(Export* e) EXCLUDES(mu_);
  std::string PathOf(const Export* e, uint64_t id, const std::array<uint8_t, 16>& md5) const;
  // Writes a copy of data under its final name; false on a local disk error.
  bool WriteCopy(Export* e, uint64_t id, std::span<const uint8_t> data,
                 const std::array<uint8_t, 16>& md5);
  // Removes the entry (if any) and returns its file to unlink (after mu_ is released), or an
  // empty Doomed.
  Doomed DropLocked(Export* e, uint64_t id) REQUIRES(mu_);
  // Adds (or replaces) an entry and evicts down to the size; paths to unlink go to *unlink.
  // `checked` is false for a copy loaded from disk.
  void InsertLocked(Export* e, uint64_t id, const std::array<uint8_t, 16>& md5, uint32_t size,
                    bool checked, std::vector<Doomed>* unlink) REQUIRES(mu_);
  // True if the entry of `id` is the copy with this MD5 (same file).
  bool HoldsLocked(const Export* e, uint64_t id, const std::array<uint8_t, 16>& md5) const
      REQUIRES(mu_);
  // Starts / ends a request on a block (see Pending).
  uint64_t BeginLocked(Export* e, uint64_t id, bool changes) REQUIRES(mu_);
  // Returns true if no write or delete of the block was in the store during the read that
  // BeginLocked(changes=false) gave `gen` (see Pending); for a write, if no other change began,
  // ended or is under way.
  bool EndLocked(Export* e, uint64_t id, uint64_t gen, bool changes) REQUIRES(mu_);
  // Drops the copies of `ids` and begins a change (write, delete) of each; returns their
  // generations for EndLocked or EndChanges.
  std::vector<uint64_t> BeginChanges(Export* e, std::span<const uint64_t> ids) EXCLUDES(mu_);
  void EndChanges(Export* e, std::span<const uint64_t> ids, const std::vector<uint64_t>& gens)
      EXCLUDES(mu_);

  const std::string dir_;
  const uint64_t size_;
  const std::string store_dir_;

  mutable Mutex mu_;
  std::map<std::string, std::unique_ptr<Export>, std::less<>> exports_ GUARDED_BY(mu_);
  // Most recently used first.
  std::list<std::pair<Export*, uint64_t>> lru_ GUARDED_BY(mu_);
  uint64_t total_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t seq_ GUARDED_BY(mu_) = 0;
  Mutex dirs_mu_;
  // Kept once open.
  int dir_fd_ GUARDED_BY(dirs_mu_) = -1;
  int store_fd_ GUARDED_BY(dirs_mu_) = -1;
  int exports_fd_ GUARDED_BY(dirs_mu_) = -1;
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_DISK_CACHE_STORE_H_
