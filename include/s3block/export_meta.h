// ExportMeta: what is recorded about an export when it is first created.
//
// Stored as a small text document beside the blocks (exports/<name>/metadata):
//
//   # nbd-s3-backend export metadata
//   format=1
//   size=1073741824
//   block-size=4096
//   state=incomplete        (only while an import or copy fills it, or a delete empties it)
//
// Unknown keys are refused (they would come from a newer version that relies on them), and so is
// a format number above the one this version understands.
#ifndef S3BLOCK_EXPORT_META_H_
#define S3BLOCK_EXPORT_META_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "s3block/status.h"

namespace s3block {

inline constexpr uint32_t kMetaFormatVersion = 1;

struct ExportMeta {
  // An export being filled by an import or copy, or being deleted, is not served: its blocks are
  // not yet (or no longer) a consistent disk. Recorded as "state=..." when not ready.
  enum class State { kReady, kIncomplete, kDeleting };

  uint32_t format = kMetaFormatVersion;
  State state = State::kReady;
  uint64_t size = 0;        // bytes; a multiple of nothing in particular
  uint32_t block_size = 0;  // a power of two from 512 to 16M

  // Serialises the metadata as the document above.
  std::string Serialize() const;

  // Parses a document. Errors name the export (for the message) and the offending line.
  static Status Parse(std::string_view export_name, std::string_view text, ExportMeta* out);

  // Number of blocks that hold the export (the last one may be partly past the end).
  uint64_t block_count() const { return block_size ? (size + block_size - 1) / block_size : 0; }
};

}  // namespace s3block

#endif  // S3BLOCK_EXPORT_META_H_
