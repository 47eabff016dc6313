// ExportMeta: what is recorded about an export when it is first created.
//
// Stored as a small text document beside the blocks (exports/<name>/metadata):
//
//   # nbd-s3-backend export metadata
//   format=1
//   size=1073741824
//   block-size=4096
//   state=incomplete        (only while an import or copy fills it, or a delete empties it)
//   compression=zstd:3      (only for an export whose blocks are encoded; see BlockEncoding)
//   encryption=aes-256-gcm
//   key-check=SALT:MAC
//   checksum=crc32c
//   layout=log              (only for a log-structured export; see ExportLayout)
//   base=NAME@SNAP          (only for a clone: the snapshot its unwritten blocks are read from)
//   blocks-of=NAME          (only where blocks are bound to another export's name: a snapshot's
//                           view, a clone)
//   snapshot=SNAP           (only in what a snapshot's view, NAME@SNAP, is served with; read only)
//
// Unknown keys are refused (they would come from a newer version that relies on them), and so is
// a format number above the one this version understands. An export with the raw encoding (the
// default) has none of the encoding keys, so its document is the same as before they existed; an
// older version refuses an encoded export's document (unknown key) rather than serve its blocks as
// they are.
#ifndef S3BLOCK_EXPORT_META_H_
#define S3BLOCK_EXPORT_META_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "s3block/status.h"

namespace s3block {

inline constexpr uint32_t kMetaFormatVersion = 1;

// How an export's blocks are stored, chosen when the export is created and fixed for its life.
// All off (the default) is the specification's raw layout: each object is exactly one plain block.
// Anything else stores each block as an encoded object with a small header (codec_store.h).
struct BlockEncoding {
  enum class Compression { kNone, kZstd };
  enum class Encryption { kNone, kAes256Gcm };

  static constexpr int kDefaultZstdLevel = 3;

  Compression compression = Compression::kNone;
  int level = kDefaultZstdLevel;  // zstd level, 1 to 22; meaningful with kZstd only
  Encryption encryption = Encryption::kNone;
  // With encryption: "SALT:MAC" in hex (MakeKeyCheck below), which tells whether a key
  // is the export's key without revealing anything about it. Empty without encryption.
  std::string key_check;
  // A CRC-32C in each stored object (with encryption, the cipher's tag does this job instead).
  bool checksum = false;

  bool raw() const {
    return compression == Compression::kNone && encryption == Encryption::kNone && !checksum;
  }
  // "raw", or the choices joined by '+': "zstd:3+aes-256-gcm+crc32c".
  std::string Describe() const;
  // True if both make the same choices (the key check is not compared: its salt is random).
  bool SameChoices(const BlockEncoding& other) const;
  // Every member equal, the key check too.
  bool operator==(const BlockEncoding&) const = default;

  // Parse the value of compression= ("none", "zstd" or "zstd:LEVEL"), encryption= ("none" or
  // "aes-256-gcm") and checksum= ("none" or "crc32c") into *this. Errors: EINVAL, naming the
  // parameter and what it accepts.
  Status SetCompression(std::string_view value);
  Status SetEncryption(std::string_view value);
  Status SetChecksum(std::string_view value);
};

// Where an export's blocks are, chosen when the export is created and fixed for its life.
//   kBlocks  the specification's layout (the default): one object per block,
//            exports/<name>/blocks/<decimal id>; its metadata document has no layout= line.
//   kLog     log-structured (docs/log-layout.md): blocks appended to large immutable segment
//            objects under exports/<name>/log/, found through a map checkpointed beside them.
enum class ExportLayout { kBlocks, kLog };

// "blocks" or "log".
const char* LayoutName(ExportLayout layout);
// Parses the value of layout= ("blocks" or "log"). Errors: EINVAL naming what it accepts.
Status ParseLayout(std::string_view value, ExportLayout* out);

// The largest block of a log export (a frame of a segment holds one block).
inline constexpr uint32_t kMaxLogBlockSize = 1u << 20;

// InvalidArgument if `layout` cannot hold blocks of block_size bytes.
Status CheckLayoutBlockSize(ExportLayout layout, uint32_t block_size);

struct ExportMeta {
  // An export being filled by an import or copy, or being deleted, is not served: its blocks are
  // not yet (or no longer) a consistent disk. Recorded as "state=..." when not ready.
  enum class State { kReady, kIncomplete, kDeleting };

  uint32_t format = kMetaFormatVersion;
  State state = State::kReady;
  uint64_t size = 0;        // bytes; a multiple of nothing in particular
  uint32_t block_size = 0;  // a power of two from 512 to 16M
  BlockEncoding encoding;   // raw unless the export was created with compression, encryption...
  ExportLayout layout = ExportLayout::kBlocks;
  // The export whose blocks these are, if not this one's: encoded blocks are bound to that
  // export's name (codec_store.h). A snapshot's view (NAME@SNAP) reads NAME's blocks.
  std::string blocks_of;
  // A clone's base: the snapshot (NAME@SNAP) its blocks are read from until it writes them.
  std::string base;
  // Non-empty in the metadata a snapshot's view is served with (never stored): the snapshot's
  // name. Such an export is read only.
  std::string snapshot;

  // Serialises the metadata as the document above.
  std::string Serialize() const;

  // Parses a document. Errors name the export (for the message) and the offending line.
  static Status Parse(std::string_view export_name, std::string_view text, ExportMeta* out);

  // Number of blocks that hold the export (the last one may be partly past the end).
  uint64_t block_count() const { return block_size ? (size + block_size - 1) / block_size : 0; }
};

// The key of encrypted exports, and the key check value an export records (encoding.key_check).
inline constexpr size_t kEncryptionKeySize = 32;

// Parses key material: exactly 32 bytes (raw), or 64 hex digits (white space around them is
// ignored). `source` names where it came from for messages ("key-file=/etc/k", "S3BLOCK_KEY");
// the key itself never appears in a message. Errors: EINVAL.
Status ParseEncryptionKey(std::string_view source, std::string_view text, std::string* key);

// A new key check value for `key` (32 bytes): "SALT:MAC" in hex, a random salt and an HMAC of it
// under the key. Errors: EIO if no random bytes could be had.
Status MakeKeyCheck(std::string_view key, std::string* check);

// True if `check` (as made by MakeKeyCheck) was made with `key`.
bool KeyMatchesCheck(std::string_view key, std::string_view check);

}  // namespace s3block

#endif  // S3BLOCK_EXPORT_META_H_
