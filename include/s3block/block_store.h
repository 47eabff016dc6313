// BlockStore: the whole-block interface every store and every layer implements.
//
// A store holds many exports; each export is its own namespace of numbered blocks and one small
// metadata document. Leaf stores (FileStore, S3Store) keep blocks somewhere durable; decorators
// (the disk cache, the codec, the cache) hold the next store below them, forward every call, and
// override what their one concern changes. The stack is assembled in one place (store_factory.h)
// from the configuration.
//
// Blocks are opaque byte strings at this level: a leaf store returns exactly what was stored, and
// a decorator may store something longer or shorter than a block (a compressed or encrypted
// block). Parts of blocks, at an export's block size, are the business of the device above the
// stack (block_device.h), which insists that what comes out is exactly one block.
//
// Thread safety: every method of every implementation is safe for concurrent use, including
// concurrent calls for the same block (the last write to complete wins; Volume serialises writes
// to one block with its per-block locks).
#ifndef S3BLOCK_BLOCK_STORE_H_
#define S3BLOCK_BLOCK_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "s3block/status.h"

namespace s3block {

using Bytes = std::vector<uint8_t>;

// The most ids the layers above a store give one Delete call: as many as one S3 DeleteObjects
// request takes, so that a batch costs the S3 store one request.
inline constexpr size_t kDeleteBatch = 1000;

// A claim on an export that keeps every other server from writing to it; released when
// destroyed. Held by the Volume of a read-write server for as long as it serves the export.
class ExportLease {
 public:
  virtual ~ExportLease() = default;
  // An error if the claim has been lost (a lease that could not be renewed in time): the holder
  // must stop writing.
  virtual Status Valid() const { return Status::Ok(); }
};

// One block of a ReadBatch: the block to read, and what Read would have given for it.
struct BlockRead {
  uint64_t id = 0;
  Bytes* data = nullptr;  // REQUIRES: not null
  bool found = false;
  Status status;
};

class BlockStore {
 public:
  virtual ~BlockStore() = default;

  // A short description for messages, without secrets: "file:/data", "s3://bucket/prefix".
  virtual std::string Describe() const = 0;

  // Checks that the store is usable (the directory exists and is writable, the bucket exists and
  // the credentials work) and creates what a new store needs. Called once, before serving.
  virtual Status Check() { return Status::Ok(); }

  // Starts background threads, if the implementation has any. nbdkit calls this after it has
  // forked into the background (threads started before the fork would be lost).
  virtual Status Start() { return Status::Ok(); }

  // Reads block `id` of `export_name` into *data (resized to what is stored) and sets *found.
  // A block that was never written, or was deleted, is not an error: *found = false and *data is
  // left empty. Every other failure (I/O error, access denied, timeout) is an error, never zeros.
  virtual Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) = 0;

  // Reads several blocks of one export, each as Read would: reads[i].data, .found and .status
  // are what Read(export_name, reads[i].id, ...) would have set and returned, and a failure of
  // one block does not stop the others. A store that can overlap the reads of many blocks (the
  // file store, with io_uring) reads them in one go; this default calls Read for each in turn.
  virtual void ReadBatch(std::string_view export_name, std::span<BlockRead> reads);

  // How many blocks one ReadBatch reads at less cost than as many calls of Read. 1 (this
  // default) means no gain: a caller with several blocks to read spreads them over threads.
  virtual size_t ReadBatchSize(std::string_view /*export_name*/) const { return 1; }

  // The most bytes one ReadBatch should cover, when ReadBatchSize is more than 1. This default,
  // 128 KiB, is the file store's: reading many large files in one io_uring submission was slower
  // than reading them from many threads. A store whose batch is one request (a ranged GET of a
  // log segment) gains from larger ones.
  virtual uint64_t ReadBatchBytes(std::string_view /*export_name*/) const { return 128 << 10; }

  // True if the store keeps the export's unflushed writes itself, in memory, until a Flush (the
  // log layout's open segment): a Write then costs a copy, and a cache above hands writes to it
  // at once instead of writing them back later. This default: false.
  virtual bool BuffersWrites(std::string_view /*export_name*/) const { return false; }

  // Replaces block `id` atomically: a reader sees the old content or the new, never a mix.
  // With fua, the block is durable when this returns; otherwise it is durable after the next
  // Flush(export_name) returns.
  virtual Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                       bool fua) = 0;

  // As Write, for a caller whose blocks are raw bytes (every byte stands for itself): a store
  // may then replace the stored block in place when that is cheaper. A reader still sees the old
  // content or the new, never a mix, and durability is as for Write; but a crash (of the machine,
  // not of the process) before the block is durable may leave it with some 4 KiB pages old and
  // the others new, as a disk may after a write it has not yet acknowledged as flushed. A layer
  // that transforms blocks (the codec) stores the blocks it encodes with its own Write, which a
  // mix would corrupt. This default calls Write.
  virtual Status Overwrite(std::string_view export_name, uint64_t id,
                           std::span<const uint8_t> data, bool fua) {
    return Write(export_name, id, data, fua);
  }
  // Overwrite of the blocks first, first + 1, ...: data holds them back to back, block_size
  // bytes each (REQUIRES: a whole number of them). A store that appends writes (a log export)
  // takes the run at the cost of one call; this default calls Overwrite for each block and
  // returns at the first error (the blocks before it are written).
  virtual Status OverwriteRun(std::string_view export_name, uint64_t first,
                              std::span<const uint8_t> data, uint32_t block_size, bool fua);
  // Deletes the given blocks; deleting a missing block is not an error. Durability as for Write.
  virtual Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) = 0;

  // Makes every Write and Delete of this export that returned before the call durable.
  // An error means some of them may not be durable; a later Flush tries again.
  virtual Status Flush(std::string_view export_name) = 0;

  // Calls fn(id) for every block of the export that is stored, in no particular order.
  virtual Status ListBlocks(std::string_view export_name,
                            const std::function<void(uint64_t id)>& fn) = 0;

  // As ListBlocks, with what the store knows of each block's content: the MD5 of the stored
  // bytes as 32 hex digits, or "" where the store cannot tell (this default, and an S3
  // object whose ETag is not a plain MD5). A layer that keeps copies of blocks (the disk cache)
  // checks them against it.
  virtual Status ListBlockDigests(
      std::string_view export_name,
      const std::function<void(uint64_t id, std::string_view md5_hex)>& fn) {
    return ListBlocks(export_name, [&](uint64_t id) { fn(id, {}); });
  }

  // The names of the exports in the store (those with metadata or blocks), sorted.
  virtual Status ListExports(std::vector<std::string>* names) = 0;

  // Reads the export's metadata document. A missing document is not an error: *found = false.
  virtual Status ReadMeta(std::string_view export_name, std::string* text, bool* found) = 0;

  // Writes the export's metadata document durably (it is durable when this returns).
  virtual Status WriteMeta(std::string_view export_name, std::string_view text) = 0;

  // Deletes the export's metadata document (and, for a file store, its empty directories).
  // Blocks must have been deleted first.
  virtual Status DeleteMeta(std::string_view export_name) = 0;

  // Copies block `id` of export `from` to the same id of export `to` in this store; *found is
  // false (and nothing is written) if the source block is not stored. This default reads and
  // writes through this layer, which is right for layers that transform blocks; leaf stores that
  // can copy without moving data (S3 CopyObject, a reflink) override it.
  virtual Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) {
    Bytes data;
    S3B_RETURN_IF_ERROR(Read(from, id, &data, found));
    if (!*found) return Status::Ok();
    return Write(to, id, data, false);
  }

  // The export is no longer served by this process: make what it holds durable (as Flush), then
  // release what this layer keeps for it (memory, threads' work, fds). A later call naming the export
  // starts afresh. Errors are Flush's; on error nothing is released and the call may be repeated.
  virtual Status CloseExport(std::string_view export_name) { return Status::Ok(); }

  // Claims the export for writing by this process. `holder` describes this process (host, pid,
  // time) and is what other processes are shown. If another process holds the export, fails
  // with EBUSY and a message naming that holder, unless `force` (for an operator who knows the
  // holder is dead). Stores that cannot lock fail with ENOTSUP: the caller says so rather than
  // pretend.
  virtual Status AcquireLease(std::string_view export_name, const std::string& holder, bool force,
                              std::unique_ptr<ExportLease>* out) {
    return Status::NotSupported(Describe() + " cannot lock an export against a second writer");
  }

  // Tells whether another process holds the export's lease, and who (*holder is empty if none).
  virtual Status QueryLease(std::string_view export_name, std::string* holder) {
    return Status::NotSupported(Describe() + " cannot lock an export against a second writer");
  }
};

// The error a device returns for a stored block whose length is not the export's block size.
Status WrongBlockLength(const BlockStore& store, std::string_view export_name, uint64_t id,
                        size_t stored, uint32_t block_size);

// A decorator: forwards every call to the store below. Layers derive from it and override what
// they change: a layer that changes blocks overrides every call that reads or writes them.
class StoreDecorator : public BlockStore {
 public:
  explicit StoreDecorator(std::shared_ptr<BlockStore> next) : next_(std::move(next)) {}

  std::string Describe() const override { return next_->Describe(); }
  Status Check() override { return next_->Check(); }
  Status Start() override { return next_->Start(); }
  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    return next_->Read(e, id, data, found);
  }
  void ReadBatch(std::string_view e, std::span<BlockRead> reads) override {
    next_->ReadBatch(e, reads);
  }
  size_t ReadBatchSize(std::string_view e) const override { return next_->ReadBatchSize(e); }
  uint64_t ReadBatchBytes(std::string_view e) const override { return next_->ReadBatchBytes(e); }
  bool BuffersWrites(std::string_view e) const override { return next_->BuffersWrites(e); }
  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool fua) override {
    return next_->Write(e, id, data, fua);
  }
  Status Overwrite(std::string_view e, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override {
    return next_->Overwrite(e, id, data, fua);
  }
  // OverwriteRun is not forwarded: BlockStore's runs it through this layer's Overwrite, which
  // is right for a layer that changes blocks. A layer that passes runs through unchanged
  // overrides it.
  Status Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) override {
    return next_->Delete(e, ids, fua);
  }
  Status Flush(std::string_view e) override { return next_->Flush(e); }
  Status ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) override {
    return next_->ListBlocks(e, fn);
  }
  Status ListBlockDigests(std::string_view e,
                          const std::function<void(uint64_t, std::string_view)>& fn) override {
    return next_->ListBlockDigests(e, fn);
  }
  Status ListExports(std::vector<std::string>* names) override { return next_->ListExports(names); }
  Status ReadMeta(std::string_view e, std::string* text, bool* found) override {
    return next_->ReadMeta(e, text, found);
  }
  Status WriteMeta(std::string_view e, std::string_view text) override {
    return next_->WriteMeta(e, text);
  }
  Status DeleteMeta(std::string_view e) override { return next_->DeleteMeta(e); }
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override {
    return next_->CopyBlock(from, to, id, found);
  }
  // A layer that keeps something for an export overrides this: its own part, then this.
  Status CloseExport(std::string_view e) override { return next_->CloseExport(e); }
  Status AcquireLease(std::string_view e, const std::string& holder, bool force,
                      std::unique_ptr<ExportLease>* out) override {
    return next_->AcquireLease(e, holder, force, out);
  }
  Status QueryLease(std::string_view e, std::string* holder) override {
    return next_->QueryLease(e, holder);
  }

  BlockStore* next() const { return next_.get(); }

 protected:
  std::shared_ptr<BlockStore> next_;
};

}  // namespace s3block

#endif  // S3BLOCK_BLOCK_STORE_H_
