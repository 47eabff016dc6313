#include "s3block/codec_store.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <zstd.h>

#include <cstring>

#include "util/crc32c.h"
#include "s3block/params.h"

namespace s3block {
namespace {

constexpr uint8_t kMagic[4] = {'S', '3', 'B', 'E'};
constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagZstd = 1;
constexpr uint8_t kFlagAesGcm = 2;
constexpr uint8_t kFlagCrc32c = 4;
constexpr size_t kHeaderSize = 8;
constexpr size_t kNonceSize = 12;
constexpr size_t kTagSize = 16;
constexpr size_t kCrcSize = 4;

void PutLe64(uint64_t v, uint8_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// What binds an object to its place: the block id (little endian) and the export name.
struct Binding {
  uint8_t id[8];
  std::string_view name;
  Binding(uint64_t block_id, std::string_view export_name) : name(export_name) {
    PutLe64(block_id, id);
  }
};

uint32_t ObjectCrc(std::span<const uint8_t> covered, const Binding& b) {
  uint32_t crc = Crc32c(0, covered.data(), covered.size());
  crc = Crc32c(crc, b.id, sizeof b.id);
  return Crc32c(crc, b.name.data(), b.name.size());
}

// Per-thread contexts: creating them costs more than using them.
struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};
struct ZstdCtx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~ZstdCtx() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

uint8_t ExpectedFlags(const BlockEncoding& e) {
  if (e.encryption == BlockEncoding::Encryption::kAes256Gcm) return kFlagAesGcm;
  return e.checksum ? kFlagCrc32c : 0;
}

std::string Where(std::string_view export_name, uint64_t id) {
  return "block " + std::to_string(id) + " of export '" + QuoteForMessage(export_name) + "'";
}

}  // namespace

CodecStore::CodecStore(std::shared_ptr<BlockStore> next, std::string key)
    : StoreDecorator(std::move(next)), key_(std::move(key)) {}

CodecStore::~CodecStore() { OPENSSL_cleanse(key_.data(), key_.size()); }

Status CodecStore::Understand(std::string_view export_name, std::string_view text,
                              std::shared_ptr<const ExportCodec>* out, bool* parsed) const {
  ExportMeta meta;
  *parsed = ExportMeta::Parse(export_name, text, &meta).ok();
  if (!*parsed) return Status::Ok();
  if (meta.encoding.encryption != BlockEncoding::Encryption::kNone) {
    const std::string where = "export '" + QuoteForMessage(export_name) + "' in " + Describe();
    if (key_.empty()) {
      return Status::PermissionDenied(
          where + " is encrypted (aes-256-gcm) and no key was given: give key-file=FILE or set "
                  "S3BLOCK_KEY to the key it was created with");
    }
    if (!KeyMatchesCheck(key_, meta.encoding.key_check)) {
      return Status::PermissionDenied(
          where + " is encrypted with a different key than the one given (its metadata's "
                  "key-check does not match): give the key the export was created with");
    }
  }
  auto codec = std::make_shared<ExportCodec>();
  codec->encoding = meta.encoding;
  codec->block_size = meta.block_size;
  codec->blocks_of = meta.blocks_of;
  *out = std::move(codec);
  return Status::Ok();
}

void CodecStore::Remember(std::string_view export_name, std::shared_ptr<const ExportCodec> codec) {
  WriterMutexLock lock(&mu_);
  auto it = exports_.find(export_name);
  if (it == exports_.end()) {
    if (codec) exports_.emplace(std::string(export_name), std::move(codec));
  } else if (codec) {
    it->second = std::move(codec);
  } else {
    exports_.erase(it);
  }
}

Status CodecStore::Lookup(std::string_view export_name, std::shared_ptr<const ExportCodec>* out) {
  {
    ReaderMutexLock lock(&mu_);
    auto it = exports_.find(export_name);
    if (it != exports_.end()) {
      *out = it->second;
      return Status::Ok();
    }
  }
  std::string text;
  bool found = false;
  S3B_RETURN_IF_ERROR(next_->ReadMeta(export_name, &text, &found));
  std::shared_ptr<const ExportCodec> codec;
  if (found) {
    bool parsed = false;
    S3B_RETURN_IF_ERROR(Understand(export_name, text, &codec, &parsed));
    if (!parsed) {
      // Never guess an encoding: raw reads of encoded blocks would be garbage.
      return Status::IoError("metadata of export '" + QuoteForMessage(export_name) + "' in " +
                             Describe() + " cannot be parsed, so its block encoding is unknown");
    }
  } else {
    // Blocks without metadata are the specification's first layout: raw.
    codec = std::make_shared<ExportCodec>();
  }
  Remember(export_name, codec);
  *out = std::move(codec);
  return Status::Ok();
}

Status CodecStore::EncodingOf(std::string_view export_name, BlockEncoding* out) {
  std::shared_ptr<const ExportCodec> codec;
  S3B_RETURN_IF_ERROR(Lookup(export_name, &codec));
  *out = codec->encoding;
  return Status::Ok();
}

Status CodecStore::ReadMeta(std::string_view export_name, std::string* text, bool* found) {
  S3B_RETURN_IF_ERROR(next_->ReadMeta(export_name, text, found));
  if (!*found) return Status::Ok();
  std::shared_ptr<const ExportCodec> codec;
  bool parsed = false;
  S3B_RETURN_IF_ERROR(Understand(export_name, *text, &codec, &parsed));
  if (parsed) Remember(export_name, std::move(codec));
  return Status::Ok();
}

Status CodecStore::WriteMeta(std::string_view export_name, std::string_view text) {
  std::shared_ptr<const ExportCodec> codec;
  bool parsed = false;
  S3B_RETURN_IF_ERROR(Understand(export_name, text, &codec, &parsed));
  Status s = next_->WriteMeta(export_name, text);
  // Unparsable: forget, and read it again (and refuse it) on the next block request.
  Remember(export_name, s.ok() && parsed ? std::move(codec) : nullptr);
  return s;
}

Status CodecStore::DeleteMeta(std::string_view export_name) {
  Status s = next_->DeleteMeta(export_name);
  Remember(export_name, nullptr);
  return s;
}

Status CodecStore::Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) {
  std::shared_ptr<const ExportCodec> codec;
  S3B_RETURN_IF_ERROR(Lookup(export_name, &codec));
  if (codec->encoding.raw()) return next_->Read(export_name, id, data, found);
  thread_local Bytes object;
  S3B_RETURN_IF_ERROR(next_->Read(export_name, id, &object, found));
  if (!*found) {
    data->clear();
    return Status::Ok();
  }
  return Decode(export_name, id, *codec, object, data);
}

void CodecStore::ReadBatch(std::string_view export_name, std::span<BlockRead> reads) {
  std::shared_ptr<const ExportCodec> codec;
  Status s = Lookup(export_name, &codec);
  if (!s.ok()) {
    for (BlockRead& r : reads) r.status = s;
    return;
  }
  next_->ReadBatch(export_name, reads);
  if (codec->encoding.raw()) return;
  thread_local Bytes block;
  for (BlockRead& r : reads) {
    if (!r.status.ok() || !r.found) continue;
    r.status = Decode(export_name, r.id, *codec, *r.data, &block);
    if (r.status.ok()) r.data->swap(block);
  }
}

Status CodecStore::Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                         bool fua) {
  std::shared_ptr<const ExportCodec> codec;
  S3B_RETURN_IF_ERROR(Lookup(export_name, &codec));
  if (codec->encoding.raw()) return next_->Write(export_name, id, data, fua);
  thread_local Bytes object;
  S3B_RETURN_IF_ERROR(Encode(export_name, id, *codec, data, &object));
  return next_->Write(export_name, id, object, fua);
}

Status CodecStore::Overwrite(std::string_view export_name, uint64_t id,
                             std::span<const uint8_t> data, bool fua) {
  std::shared_ptr<const ExportCodec> codec;
  S3B_RETURN_IF_ERROR(Lookup(export_name, &codec));
  if (codec->encoding.raw()) return next_->Overwrite(export_name, id, data, fua);
  return Write(export_name, id, data, fua);
}

Status CodecStore::OverwriteRun(std::string_view export_name, uint64_t first,
                                std::span<const uint8_t> data, uint32_t block_size, bool fua) {
  std::shared_ptr<const ExportCodec> codec;
  S3B_RETURN_IF_ERROR(Lookup(export_name, &codec));
  if (codec->encoding.raw()) return next_->OverwriteRun(export_name, first, data, block_size, fua);
  return BlockStore::OverwriteRun(export_name, first, data, block_size, fua);  // each encoded
}

Status CodecStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id,
                             bool* found) {
  std::shared_ptr<const ExportCodec> a, b;
  S3B_RETURN_IF_ERROR(Lookup(from, &a));
  S3B_RETURN_IF_ERROR(Lookup(to, &b));
  const bool unbound = a->encoding.encryption == BlockEncoding::Encryption::kNone &&
                       !a->encoding.checksum;
  if (unbound && a->encoding.SameChoices(b->encoding) &&
      (a->encoding.raw() || a->block_size == b->block_size))
    return next_->CopyBlock(from, to, id, found);
  return BlockStore::CopyBlock(from, to, id, found);
}

Status CodecStore::Encode(std::string_view export_name, uint64_t id, const ExportCodec& codec,
                          std::span<const uint8_t> block, Bytes* out) const {
  const BlockEncoding& e = codec.encoding;
  if (block.size() != codec.block_size) {
    return Status::InvalidArgument(Where(export_name, id) + ": a write of " +
                                   std::to_string(block.size()) + " bytes; the block size is " +
                                   std::to_string(codec.block_size));
  }
  uint8_t flags = ExpectedFlags(e);
  std::span<const uint8_t> payload = block;
  thread_local Bytes compressed;
  if (e.compression == BlockEncoding::Compression::kZstd) {
    thread_local ZstdCtx zstd;
    if (zstd.c == nullptr) return Status::Error(ENOMEM, "cannot create a zstd context");
    // Worth it only if it saves at least 1/32 of the block; a frame that does not fit in that
    // is an error from zstd, which is the cheap way to find out.
    const size_t limit = block.size() - block.size() / 32;
    compressed.resize(limit);
    size_t n = ZSTD_compressCCtx(zstd.c, compressed.data(), limit, block.data(), block.size(),
                                 e.level);
    if (!ZSTD_isError(n)) {
      flags |= kFlagZstd;
      payload = std::span<const uint8_t>(compressed.data(), n);
    }
  }
  const bool encrypt = (flags & kFlagAesGcm) != 0;
  out->resize(kHeaderSize + (encrypt ? kNonceSize + payload.size() + kTagSize
                                     : payload.size() + ((flags & kFlagCrc32c) ? kCrcSize : 0)));
  uint8_t* p = out->data();
  std::memcpy(p, kMagic, 4);
  p[4] = kVersion;
  p[5] = flags;
  p[6] = p[7] = 0;
  const Binding binding(id, codec.blocks_of.empty() ? export_name : codec.blocks_of);
  if (encrypt) {
    uint8_t* nonce = p + kHeaderSize;
    uint8_t* cipher = nonce + kNonceSize;
    uint8_t* tag = cipher + payload.size();
    if (RAND_bytes(nonce, kNonceSize) != 1)
      return Status::IoError(Where(export_name, id) + ": cannot get random bytes for a nonce");
    thread_local CipherCtx cc;
    EVP_CIPHER_CTX* ctx = cc.ctx;
    int len = 0;
    bool ok = ctx != nullptr &&
              EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr,
                                 reinterpret_cast<const uint8_t*>(key_.data()), nonce) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &len, p, kHeaderSize) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &len, binding.id, sizeof binding.id) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &len,
                                reinterpret_cast<const uint8_t*>(binding.name.data()),
                                static_cast<int>(binding.name.size())) == 1 &&
              EVP_EncryptUpdate(ctx, cipher, &len, payload.data(),
                                static_cast<int>(payload.size())) == 1 &&
              EVP_EncryptFinal_ex(ctx, cipher + len, &len) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagSize, tag) == 1;
    if (!ok) return Status::IoError(Where(export_name, id) + ": encryption failed");
    return Status::Ok();
  }
  std::memcpy(p + kHeaderSize, payload.data(), payload.size());
  if (flags & kFlagCrc32c) {
    const size_t covered = kHeaderSize + payload.size();
    uint32_t crc = ObjectCrc(std::span<const uint8_t>(p, covered), binding);
    for (int i = 0; i < 4; ++i) p[covered + i] = static_cast<uint8_t>(crc >> (8 * i));
  }
  return Status::Ok();
}

Status CodecStore::Decode(std::string_view export_name, uint64_t id, const ExportCodec& codec,
                          std::span<const uint8_t> object, Bytes* block) const {
  const BlockEncoding& e = codec.encoding;
  auto damaged = [&](const std::string& why) {
    return Status::IoError(Where(export_name, id) + " in " + Describe() + " is damaged (" + why +
                           "); the export's encoding is " + e.Describe());
  };
  if (object.size() < kHeaderSize || std::memcmp(object.data(), kMagic, 4) != 0)
    return damaged("no encoded-block header");
  if (object[4] != kVersion)
    return damaged("encoding version " + std::to_string(object[4]) + " is not known");
  const uint8_t flags = object[5];
  const uint8_t expected = ExpectedFlags(e);
  const bool may_compress = e.compression != BlockEncoding::Compression::kNone;
  if ((flags & ~kFlagZstd) != expected || ((flags & kFlagZstd) && !may_compress) || object[6] ||
      object[7])
    return damaged("its header does not match the export's encoding");
  const Binding binding(id, codec.blocks_of.empty() ? export_name : codec.blocks_of);
  std::span<const uint8_t> payload;
  thread_local Bytes plain;
  if (flags & kFlagAesGcm) {
    if (object.size() < kHeaderSize + kNonceSize + kTagSize) return damaged("truncated");
    const uint8_t* nonce = object.data() + kHeaderSize;
    const uint8_t* cipher = nonce + kNonceSize;
    const size_t n = object.size() - kHeaderSize - kNonceSize - kTagSize;
    uint8_t tag[kTagSize];
    std::memcpy(tag, cipher + n, kTagSize);
    plain.resize(n);
    thread_local CipherCtx cc;
    EVP_CIPHER_CTX* ctx = cc.ctx;
    int len = 0;
    bool setup = ctx != nullptr &&
                 EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr,
                                    reinterpret_cast<const uint8_t*>(key_.data()), nonce) == 1 &&
                 EVP_DecryptUpdate(ctx, nullptr, &len, object.data(), kHeaderSize) == 1 &&
                 EVP_DecryptUpdate(ctx, nullptr, &len, binding.id, sizeof binding.id) == 1 &&
                 EVP_DecryptUpdate(ctx, nullptr, &len,
                                   reinterpret_cast<const uint8_t*>(binding.name.data()),
                                   static_cast<int>(binding.name.size())) == 1 &&
                 EVP_DecryptUpdate(ctx, plain.data(), &len, cipher, static_cast<int>(n)) == 1 &&
                 EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTagSize, tag) == 1;
    if (!setup) return Status::IoError(Where(export_name, id) + ": decryption failed");
    // The tag check: fails for any change to the object, or for an object of another block id or
    // export (different associated data).
    if (EVP_DecryptFinal_ex(ctx, plain.data() + len, &len) != 1)
      return damaged("it fails authentication: changed, truncated, or not this block's object");
    payload = plain;
  } else if (flags & kFlagCrc32c) {
    if (object.size() < kHeaderSize + kCrcSize) return damaged("truncated");
    const size_t covered = object.size() - kCrcSize;
    uint32_t stored = 0;
    for (int i = 0; i < 4; ++i) stored |= static_cast<uint32_t>(object[covered + i]) << (8 * i);
    if (ObjectCrc(object.first(covered), binding) != stored)
      return damaged("CRC-32C mismatch: changed, truncated, or not this block's object");
    payload = object.subspan(kHeaderSize, covered - kHeaderSize);
  } else {
    payload = object.subspan(kHeaderSize);
  }
  if (flags & kFlagZstd) {
    thread_local ZstdCtx zstd;
    if (zstd.d == nullptr) return Status::Error(ENOMEM, "cannot create a zstd context");
    // Decompressing into exactly one block bounds the work a hostile frame can ask for.
    block->resize(codec.block_size);
    size_t n = ZSTD_decompressDCtx(zstd.d, block->data(), block->size(), payload.data(),
                                   payload.size());
    if (ZSTD_isError(n)) return damaged(std::string("zstd: ") + ZSTD_getErrorName(n));
    if (n != codec.block_size)
      return damaged("it decompresses to " + std::to_string(n) + " bytes, not one block");
    return Status::Ok();
  }
  if (payload.size() != codec.block_size)
    return damaged("it holds " + std::to_string(payload.size()) + " bytes, not one block");
  block->assign(payload.begin(), payload.end());
  return Status::Ok();
}

}  // namespace s3block
