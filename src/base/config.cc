#include "s3block/config.h"

#include <cstdlib>

#include "base/config_params.h"

namespace s3block {

Status Config::Set(std::string_view key, std::string_view value) {
  const ConfigParam* param = FindConfigParam(key);
  if (param == nullptr)
    return Status::InvalidArgument("unknown parameter '" + QuoteForMessage(key) +
                                   "' (see --help for the list)");
  return param->set(this, key, value);
}

Status Config::Finish() {
  if (store.empty())
    return Status::InvalidArgument("store= is required: a directory, or s3://BUCKET[/PREFIX]");
  if (is_s3()) {
    std::string rest = store.substr(5);
    std::string bucket = rest.substr(0, rest.find('/'));
    if (bucket.size() < 3 || bucket.size() > 63)
      return Status::InvalidArgument("store=" + store + ": the bucket name must be 3 to 63 characters");
  } else if (store[0] != '/') {
    return Status::InvalidArgument("store=" + store + ": the directory must be an absolute path");
  }
  if (size / block_size + (size % block_size != 0) > kMaxExportBlocks)
    return Status::InvalidArgument("size=" + HumanSize(size) + " at block-size=" + HumanSize(block_size) +
                                   " is more than " + std::to_string(kMaxExportBlocks) +
                                   " blocks, which no export can have; give a smaller size or a "
                                   "larger block-size");
  if (encryption_key.empty()) {
    const char* env = std::getenv("S3BLOCK_KEY");
    if (env != nullptr && *env != '\0') S3B_RETURN_IF_ERROR(ParseEncryptionKey("S3BLOCK_KEY", env, &encryption_key));
  }
  encoding.key_check.clear();
  if (encoding.encryption != BlockEncoding::Encryption::kNone) {
    if (encryption_key.empty())
      return Status::InvalidArgument(
          "encryption=aes-256-gcm needs a key: give key-file=FILE (32 bytes, or 64 hex digits) or "
          "set S3BLOCK_KEY");
    S3B_RETURN_IF_ERROR(MakeKeyCheck(encryption_key, &encoding.key_check));
  }
  if (!disk_cache_dir.empty() && !is_s3())
    return Status::InvalidArgument("disk-cache=" + disk_cache_dir + ": caches an S3 store (store=s3://...); store=" +
                                   store + " is on local disk already");
  if (!disk_cache_dir.empty() && disk_cache_size < 2ull * block_size)
    return Status::InvalidArgument("disk-cache=" + disk_cache_dir + "," + HumanSize(disk_cache_size) +
                                   ": the size is smaller than two blocks of " + HumanSize(block_size));
  if (cache) {
    uint64_t dirty = dirty_size ? dirty_size : cache_size / 4;
    if (cache_size < 2ull * block_size)
      return Status::InvalidArgument("cache-size=" + HumanSize(cache_size) +
                                     " is smaller than two blocks of " + HumanSize(block_size));
    if (dirty > cache_size)
      return Status::InvalidArgument("dirty-size=" + HumanSize(dirty) + " is larger than cache-size=" +
                                     HumanSize(cache_size));
  }
  return Status::Ok();
}

const char* Config::Help() {
  static const std::string text = [] {
    std::string t = ParamListText(ParamSyntax::kPlugin, "", 26);
    t.pop_back();  // nbdkit ends the text itself
    return t;
  }();
  return text.c_str();
}

}  // namespace s3block
