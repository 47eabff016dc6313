// CodecStore: the layer that compresses, encrypts and checksums blocks, between the leaf store
// and the cache.
//
// Each export's encoding (BlockEncoding in export_meta.h) is chosen when the export is created and
// recorded in its metadata; this layer learns it from the metadata documents that pass through it
// (WriteMeta, ReadMeta) or, on the first block request for an export it has not seen, by reading
// the document itself, and keeps it per export. A raw export (the default, and every export
// without metadata) passes through untouched: one plain block per object.
//
// Every other export stores each block as one encoded object:
//
//   bytes 0-3   magic "S3BE"
//   byte  4     version (1)
//   byte  5     flags: 1 = payload is a zstd frame, 2 = AES-256-GCM, 4 = CRC-32C trailer
//   bytes 6-7   zero
//   with AES-256-GCM: a 12-byte nonce, the encrypted payload, the 16-byte tag
//   otherwise:        the payload
//   with CRC-32C:     4 bytes, little endian
//
// The payload is the block, or its zstd frame when that saves at least 1/32 of the block (an
// incompressible block is stored as it is, with the compression flag clear). Encryption uses a
// fresh random nonce for every write and authenticates the header, the block id and the export
// name as associated data; the CRC-32C covers the header, the payload, the block id and the export
// name. So an object that was changed, truncated, or copied to another block id or export fails
// to decode, and the read is an error (EIO), never wrong data. With encryption the tag does the
// checksum's job, so no CRC is added. An object whose flags do not match its export's encoding (a
// plain object where an encrypted one belongs) is refused the same way.
//
// Random 96-bit nonces keep the chance of a repeated nonce negligible up to about 2^32 writes
// under one key (16 TiB of 4K blocks); rotate keys (copy to an export under a new key) well
// before that.
//
// Keys: an encrypted export records a key check value (MakeKeyCheck) in its metadata. ReadMeta
// and WriteMeta of an encrypted export fail with EPERM and a message saying so when this layer
// has no key or a different one, so a server started with the wrong key refuses the export when
// it opens it (and the plugin checks the default export at start-up) instead of reading garbage.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_CODEC_STORE_H_
#define S3BLOCK_CODEC_STORE_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "s3block/block_store.h"
#include "s3block/export_meta.h"
#include "util/mutex.h"

namespace s3block {

class CodecStore : public StoreDecorator {
 public:
  // `key`: the 32-byte AES-256 key, or empty if none was given (encrypted exports are then
  // refused). REQUIRES: key is empty or kEncryptionKeySize bytes.
  CodecStore(std::shared_ptr<BlockStore> next, std::string key);
  // Wipes the key from memory.
  ~CodecStore() override;
  CodecStore(const CodecStore&) = delete;
  CodecStore& operator=(const CodecStore&) = delete;

  // Decodes the stored object. Errors: the store's; EIO for an object that fails to decode (see
  // the file comment); EPERM for an encrypted export without the right key.
  Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) override;
  // The store below reads the batch; an encoded export's blocks are then decoded one by one.
  void ReadBatch(std::string_view export_name, std::span<BlockRead> reads) override;
  // Encodes and stores. REQUIRES: for an encoded export, data is one block of the export's size.
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  // A raw export's blocks go to the store below as Overwrite; an encoded export's as Write.
  Status Overwrite(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                   bool fua) override;
  // A raw export's run goes to the store below as it is; an encoded export's blocks one by one.
  Status OverwriteRun(std::string_view export_name, uint64_t first, std::span<const uint8_t> data,
                      uint32_t block_size, bool fua) override;
  // Copies the stored object as it is (the store's server-side copy) when nothing in it is bound
  // to its export (same encoding and block size, no encryption, no checksum); otherwise reads it
  // here and writes it again, so that it is bound (and encrypted) for its new export.
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;
  // Forwards, then learns the export's encoding. EPERM for an encrypted export without the key;
  // *text and *found are set even then, for callers that only show the metadata (s3block info).
  Status ReadMeta(std::string_view export_name, std::string* text, bool* found) override;
  // Learns the export's encoding from the document, then forwards. EPERM if it records an
  // encryption key check that this layer's key does not match (blocks written now could not be
  // read with the export's key).
  Status WriteMeta(std::string_view export_name, std::string_view text) override;
  Status DeleteMeta(std::string_view export_name) override;

  // The export's encoding as this layer uses it (reading the metadata if it has not seen it yet;
  // an export without metadata is raw).
  Status EncodingOf(std::string_view export_name, BlockEncoding* out);

 private:
  struct ExportCodec {
    BlockEncoding encoding;
    uint32_t block_size = 0;  // 0 for an export without metadata (raw)
    std::string blocks_of;    // the name blocks are bound to, if not the export's (blocks-of=)
  };

  // The export's codec, from memory or from its metadata.
  Status Lookup(std::string_view export_name, std::shared_ptr<const ExportCodec>* out)
      EXCLUDES(mu_);
  // Parses a metadata document and checks that this layer can serve the encoding it records.
  // *parsed is false (and the Status ok) if the document does not parse: whoever reads it reports
  // that.
  Status Understand(std::string_view export_name, std::string_view text,
                    std::shared_ptr<const ExportCodec>* out, bool* parsed) const;
  void Remember(std::string_view export_name, std::shared_ptr<const ExportCodec> codec)
      EXCLUDES(mu_);

  Status Encode(std::string_view export_name, uint64_t id, const ExportCodec& codec,
                std::span<const uint8_t> block, Bytes* out) const;
  Status Decode(std::string_view export_name, uint64_t id, const ExportCodec& codec,
                std::span<const uint8_t> object, Bytes* block) const;

  std::string key_;
  mutable SharedMutex mu_;
  std::map<std::string, std::shared_ptr<const ExportCodec>, std::less<>> exports_ GUARDED_BY(mu_);
};

}  // namespace s3block

#endif  // S3BLOCK_CODEC_STORE_H_
