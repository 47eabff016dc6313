// Volume: one export as a flat array of bytes, mapped onto the blocks of its device.
//
// The layer between NBD requests and blocks: any offset and length inside the export, aligned or
// not; whole blocks are written as they are, parts of blocks through the device's WriteRange
// under a per-block lock (so two connections writing different halves of one block at once both
// land). A block whose new content is all zeros is deleted instead of stored. Trim and zero
// delete whole blocks in batches, so a 4 GiB trim costs one listing of the presence map and no
// reads. The export's metadata, lease and listing come from the top of the store stack; its
// blocks go through the device (block_device.h) opened for it at its block size.
//
// One Volume serves every connection to its export (the plugin shares it), which is what makes a
// flush from one connection cover the writes of all of them.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_VOLUME_H_
#define S3BLOCK_VOLUME_H_

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "s3block/block_device.h"
#include "s3block/block_store.h"
#include "s3block/export_meta.h"
#include "s3block/params.h"
#include "s3block/presence_map.h"
#include "s3block/store_factory.h"
#include "s3block/volume_options.h"

namespace s3block {

// "<program> pid <pid> on <host> since <UTC time>".
std::string DescribeThisProcess(const std::string& program);

// Counters, for statistics. Monotonic since open.
struct VolumeStats {
  uint64_t reads = 0, writes = 0, trims = 0, zeros = 0, flushes = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t rmw_blocks = 0;        // partial-block writes done by read-modify-write
  uint64_t zero_blocks_elided = 0;  // full-block writes of zeros turned into deletes
};

class Volume {
 public:
  // Opens (and with options.create, creates) export `name` in `stack`. A read-write open decides
  // from the metadata as read once it holds the export's lease, so an s3block create, import or
  // delete that completed just before is seen (a deleted export is refused, or with create made
  // anew).
  // Errors: EINVAL for a bad name or a block-size mismatch (the message names both sizes),
  // ENOENT if the export does not exist and !create, the store's error otherwise.
  static Status Open(const StoreStack& stack, std::string_view name,
                     const VolumeOptions& options, std::shared_ptr<Volume>* out);

  ~Volume();
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  const std::string& name() const { return name_; }
  uint64_t size() const { return meta_.size; }
  uint32_t block_size() const { return meta_.block_size; }
  bool readonly() const { return readonly_; }
  // True if a created export's metadata was written by this Open.
  bool created() const { return created_; }
  // Non-empty if the export is served read-write without a lease, saying why (the store cannot
  // lock): the caller shows it to the user.
  const std::string& lease_warning() const { return lease_warning_; }
  // Non-empty if an encoding was given explicitly that differs from the export's recorded one,
  // saying which one is used (the recorded one): the caller shows it to the user.
  const std::string& encoding_note() const { return encoding_note_; }
  const BlockEncoding& encoding() const { return meta_.encoding; }

  // Each of these requires offset + count <= size() (else EINVAL for reads, ENOSPC for writes,
  // nothing changed) and, for writes, a read-write volume (else EROFS).
  Status Read(uint8_t* buf, uint64_t count, uint64_t offset);
  Status Write(const uint8_t* buf, uint64_t count, uint64_t offset, bool fua);
  // Whole blocks in the range are deleted; the parts of partial blocks are zeroed.
  Status Trim(uint64_t count, uint64_t offset, bool fua);
  // Makes the range read as zeros. With may_trim, whole blocks are deleted (cheap at any size);
  // without it they are stored as zero blocks (allocated, as the client asked), and with
  // fast_zero that is refused with ENOTSUP, since it is no faster than writing zeros.
  Status Zero(uint64_t count, uint64_t offset, bool may_trim, bool fast_zero, bool fua);
  // Makes every earlier acknowledged write durable.
  Status Flush();

  // Flushes, then gives up the export's lease so that another server may take it; writes after
  // this fail with ESHUTDOWN. For a clean shutdown, when connections may still hold the Volume.
  // With `lease`, the lease is handed to the caller instead, to give up once the store has closed
  // the export too: what the store writes then (a log export's last checkpoint) is fenced by it.
  Status Close(std::shared_ptr<ExportLease>* lease = nullptr);

  // Calls fn(offset, length, hole) for consecutive runs covering [offset, offset + count), as far
  // as fn returns true. A hole is a range of blocks that are not stored (they read as zeros).
  Status Extents(uint64_t count, uint64_t offset,
                 const std::function<bool(uint64_t offset, uint64_t length, bool hole)>& fn);

  // Number of blocks stored, as far as the presence map knows.
  uint64_t StoredBlocks() const { return presence_.Count(); }
  // The most blocks, and bytes, one run of whole blocks is written with (one device call). The
  // run holds the locks of all its blocks at once: ThreadSanitizer's deadlock detector follows
  // at most 64 locks held by one thread, and 32 blocks of 4 KiB already cost one call per
  // 128 KiB instead of 32.
  static constexpr uint32_t kRunBlocks = 32;
  static constexpr uint64_t kRunBytes = 128 << 10;
  VolumeStats Stats() const;

 private:
  Volume(const StoreStack& stack, std::string name, ExportMeta meta, bool readonly);

  Status CheckRange(uint64_t count, uint64_t offset, bool write) const;
  std::mutex& LockFor(uint64_t id) { return locks_[id % locks_.size()]; }
  // Holds the locks of several blocks, taken in ascending order so that two holders cannot
  // deadlock.
  class RunLock {
   public:
    RunLock(Volume* v, std::span<const uint64_t> ids);
    ~RunLock();
    RunLock(const RunLock&) = delete;
    RunLock& operator=(const RunLock&) = delete;

   private:
    Volume* const v_;
    std::vector<size_t> stripes_;
  };
  // Reads bytes [in, in + n) of block `id` into out; a block that is not stored reads as zeros.
  // REQUIRES: id < block count, in + n <= block_size().
  Status ReadRange(uint64_t id, uint32_t in, uint32_t n, uint8_t* out, ReadIntent intent);
  // True only for a block this server knows is not stored (never written, trimmed, or all
  // zeros): it reads as zeros without asking the store.
  bool KnownNotStored(uint64_t id) const { return trust_presence_ && !presence_.Test(id); }
  // Reads `count` whole blocks from block `first` on into out (a block not stored: zeros).
  Status ReadBlocks(uint64_t first, uint32_t count, uint8_t* out);
  // Stores a full block (deleting it if all zeros, unless keep_zero). REQUIRES: LockFor(id) held.
  Status StoreBlockLocked(uint64_t id, const uint8_t* data, bool fua, bool keep_zero);
  // Writes `len` bytes at `off` inside block `id`, or zeros if data is null, under the block's
  // lock: through the device's WriteRange (the cache keeps the bytes and reads the rest of the
  // block later, if at all). keep_zero stores an all-zero result instead of deleting it (by
  // read-modify-write here).
  Status WritePartial(uint64_t id, uint32_t off, uint32_t len, const uint8_t* data, bool fua);
  Status WritePartialImpl(uint64_t id, uint32_t off, uint32_t len, const uint8_t* data, bool fua,
                          bool keep_zero);
  // The part of a request [pos, end) that falls in one block.
  struct Piece {
    uint64_t id;
    uint32_t in;  // offset inside the block
    uint32_t n;   // bytes
    bool full;    // covers the whole block (or all of it that lies inside the export)
  };
  Piece PieceAt(uint64_t pos, uint64_t end) const;
  // Deletes the stored blocks among [first, last).
  Status DeleteRange(uint64_t first, uint64_t last, bool fua);
  // Applies op (trim or zero) to [offset, offset + count).
  Status ZeroRange(uint64_t count, uint64_t offset, bool deallocate, bool fua);

  // The top of the stack (it keeps the layers below, and the device's cache, alive).
  const std::shared_ptr<BlockStore> store_;
  const std::string name_;
  const ExportMeta meta_;
  const bool readonly_;
  bool created_ = false;
  // Atomic: Close() drops it while writers may be checking it.
  std::atomic<std::shared_ptr<ExportLease>> lease_;
  std::string lease_warning_;
  std::atomic<bool> closed_{false};
  std::mutex close_mu_;
  std::string encoding_note_;
  // While we are the only writer, a clear bit means "not stored" and saves a store request.
  const bool trust_presence_;
  PresenceMap presence_;
  std::array<std::mutex, 1024> locks_;
  const std::unique_ptr<BlockDevice> device_;

  struct AtomicStats {
    std::atomic<uint64_t> reads{0}, writes{0}, trims{0}, zeros{0}, flushes{0};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, rmw_blocks{0}, zero_blocks_elided{0};
  } stats_;
};

}  // namespace s3block

#endif  // S3BLOCK_VOLUME_H_
