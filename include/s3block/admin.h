// Export administration: what the s3block command does, as a library over any BlockStore.
//
// Every operation that changes an export first claims the export's lease, so it never races a
// running server (unless forced). Long operations run their blocks in parallel, report progress
// through a callback, and stop between blocks when `cancel` becomes true, leaving the store
// consistent: an interrupted import or copy leaves its export marked incomplete (not served), an
// interrupted delete leaves it marked deleting (not served), until the operation is run again.
#ifndef S3BLOCK_ADMIN_H_
#define S3BLOCK_ADMIN_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "s3block/block_store.h"
#include "s3block/export_meta.h"

namespace s3block {

struct ExportInfo {
  std::string name;
  bool has_meta = false;     // false: blocks without metadata (the first version's layout)
  ExportMeta meta;           // valid if has_meta
  std::string meta_error;    // non-empty if the metadata could not be read or parsed
  uint64_t blocks_stored = 0;
  // The bytes of the export that are allocated (not holes): blocks_stored * block size. Not the
  // space the blocks take in the store, which the stores do not tell (an encoded block may be
  // shorter or longer than a block).
  uint64_t allocated_bytes = 0;
  uint64_t blocks_past_end = 0;  // stored blocks beyond the export's size (left by a crash)
  std::string lease_holder;      // non-empty while a server holds the export
  std::string key_error;         // non-empty if the export is encrypted and the key given is not its
};

// Progress of a long operation: called from worker threads, at most a few times a second.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

struct AdminOptions {
  int threads = 16;                            // blocks in flight at once
  bool force = false;                          // ignore another holder's lease
  const std::atomic<bool>* cancel = nullptr;   // set (e.g. by SIGINT) to stop between blocks
  ProgressFn progress;                         // may be empty
  std::string holder = "s3block";              // recorded in the lease while we work
  BlockEncoding encoding;                      // of the exports that create and import make
  std::function<void(const std::string&)> warn;  // a warning for the user; may be empty
};

// Information about one export (errors: the store's; a missing export is kNotFound).
Status GetExportInfo(BlockStore& store, std::string_view name, ExportInfo* info);

// All exports of the store, sorted by name; an export whose metadata is damaged is listed with
// meta_error set rather than failing the whole list.
Status ListExportInfo(BlockStore& store, std::vector<ExportInfo>* out);

// Creates an empty export. kAlreadyExists if it exists.
Status CreateExport(BlockStore& store, std::string_view name, uint64_t size, uint32_t block_size,
                    const AdminOptions& options);

// Changes the size. Growing is instant; shrinking deletes the blocks past the new end and needs
// allow_shrink (else kUnconfirmed, errno EINVAL).
Status ResizeExport(BlockStore& store, std::string_view name, uint64_t new_size, bool allow_shrink,
                    const AdminOptions& options);

// Deletes every block and then the metadata.
Status DeleteExport(BlockStore& store, std::string_view name, const AdminOptions& options);

// Copies export `from` to a new export `to` in the same store, block by block with the store's
// CopyBlock (a server-side copy on S3, a reflink or in-kernel copy locally).
Status CopyExport(BlockStore& store, std::string_view from, std::string_view to,
                  const AdminOptions& options);

// Creates export `name` from a raw disk image: its size is the file's size. Runs of zeros and
// holes in the file are not stored.
Status ImportImage(BlockStore& store, std::string_view name, const std::string& path,
                   uint32_t block_size, const AdminOptions& options);

// Writes export `name` to a raw image file (created or truncated to the export's size); blocks
// that are not stored are left as holes in the file.
Status ExportImage(BlockStore& store, std::string_view name, const std::string& path,
                   const AdminOptions& options);

struct VerifyReport {
  uint64_t blocks_checked = 0;
  std::vector<std::string> problems;  // one line per damaged block or inconsistency
};

// Reads every stored block and checks that it can be read and is exactly one block long
// (a store with integrity checks also verifies each block's checksum as it reads it).
// Damage is reported in *report, not as an error; errors are for failures to check at all.
Status VerifyExport(BlockStore& store, std::string_view name, const AdminOptions& options,
                    VerifyReport* report);

}  // namespace s3block

#endif  // S3BLOCK_ADMIN_H_
