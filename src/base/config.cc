#include "s3block/config.h"

#include <cstdlib>
#include <fstream>
#include <iterator>

namespace s3block {
namespace {

// Reads a key file. The message names the file, never its content.
Status ReadKeyFile(std::string_view path, std::string* key) {
  const std::string where = "key-file=" + std::string(path);
  std::ifstream f{std::string(path), std::ios::binary};
  if (!f) return Status::InvalidArgument(where + ": cannot open it");
  std::string text;
  text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) return Status::InvalidArgument(where + ": cannot read it");
  Status s = ParseEncryptionKey(where, text, key);
  std::fill(text.begin(), text.end(), '\0');
  return s;
}

}  // namespace

Status Config::Set(std::string_view key, std::string_view value) {
  std::string k(key);
  if (k == "store") {
    if (value.empty()) return Status::InvalidArgument("store= is empty: give a directory or s3://BUCKET[/PREFIX]");
    store = std::string(value);
    return Status::Ok();
  }
  if (k == "size") {
    // Parsed aside: a refused value leaves the previous one in place.
    uint64_t v = 0;
    S3B_RETURN_IF_ERROR(ParseSize(key, value, &v));
    S3B_RETURN_IF_ERROR(ValidateExportSize("size=" + QuoteForMessage(value), v));
    size = v;
    size_given = true;
    return Status::Ok();
  }
  if (k == "block-size" || k == "blocksize") {
    S3B_RETURN_IF_ERROR(ParseBlockSize(key, value, &block_size));
    block_size_given = true;
    return Status::Ok();
  }
  if (k == "default-export") {
    S3B_RETURN_IF_ERROR(ValidateExportName(value).Annotate("default-export"));
    default_export = std::string(value);
    return Status::Ok();
  }
  if (k == "create") return ParseBool(key, value, &create);
  if (k == "force") return ParseBool(key, value, &force);
  if (k == "max-exports") return ParseCount(key, value, 1, 4096, &max_exports);
  if (k == "idle-timeout") return ParseSeconds(key, value, &idle_timeout);
  if (k == "compression") {
    encoding_given = true;
    return encoding.SetCompression(value);
  }
  if (k == "encryption") {
    encoding_given = true;
    return encoding.SetEncryption(value);
  }
  if (k == "checksum") {
    encoding_given = true;
    return encoding.SetChecksum(value);
  }
  if (k == "key-file") return ReadKeyFile(value, &encryption_key);
  if (k == "endpoint") {
    if (value.rfind("http://", 0) != 0 && value.rfind("https://", 0) != 0)
      return Status::InvalidArgument("endpoint=" + QuoteForMessage(value) +
                                     ": expected http://HOST[:PORT] or https://HOST[:PORT]");
    endpoint = std::string(value);
    while (endpoint.size() > 8 && endpoint.back() == '/') endpoint.pop_back();
    return Status::Ok();
  }
  if (k == "region") {
    if (value.empty()) return Status::InvalidArgument("region= is empty");
    region = std::string(value);
    return Status::Ok();
  }
  if (k == "path-style") {
    bool b = false;
    S3B_RETURN_IF_ERROR(ParseBool(key, value, &b));
    path_style = b;
    return Status::Ok();
  }
  if (k == "ca-file") { ca_file = std::string(value); return Status::Ok(); }
  if (k == "access-key") { access_key = std::string(value); return Status::Ok(); }
  if (k == "secret-key") { secret_key = std::string(value); return Status::Ok(); }
  if (k == "session-token") { session_token = std::string(value); return Status::Ok(); }
  if (k == "profile") { profile = std::string(value); return Status::Ok(); }
  if (k == "retry-timeout") return ParseSeconds(key, value, &retry_timeout);
  if (k == "request-timeout") {
    double v = 0;
    S3B_RETURN_IF_ERROR(ParseSeconds(key, value, &v));
    if (v < 0.1) return Status::InvalidArgument("request-timeout must be at least 100ms");
    request_timeout = v;
    return Status::Ok();
  }
  if (k == "lease-timeout") {
    double v = 0;
    S3B_RETURN_IF_ERROR(ParseSeconds(key, value, &v));
    if (v < 3) return Status::InvalidArgument("lease-timeout must be at least 3 seconds");
    lease_timeout = v;
    return Status::Ok();
  }
  if (k == "connections") return ParseCount(key, value, 1, 1024, &connections);
  if (k == "cache") return ParseBool(key, value, &cache);
  if (k == "cache-size") return ParseSize(key, value, &cache_size);
  if (k == "dirty-size") return ParseSize(key, value, &dirty_size);
  if (k == "upload-threads") return ParseCount(key, value, 1, 256, &upload_threads);
  if (k == "read-threads") return ParseCount(key, value, 1, 1024, &read_threads);
  if (k == "disk-cache") {
    // DIR,SIZE: the size follows the last comma, so DIR may hold commas.
    const size_t comma = value.rfind(',');
    const std::string where = "disk-cache=" + QuoteForMessage(value);
    if (comma == std::string_view::npos || comma == 0)
      return Status::InvalidArgument(where + ": expected DIR,SIZE (for example /var/cache/s3block,10G)");
    const std::string_view dir = value.substr(0, comma);
    if (dir[0] != '/') return Status::InvalidArgument(where + ": the directory must be an absolute path");
    uint64_t v = 0;
    S3B_RETURN_IF_ERROR(ParseSize("disk-cache SIZE", value.substr(comma + 1), &v));
    if (v == 0) return Status::InvalidArgument(where + ": the size must be more than 0");
    disk_cache_dir = std::string(dir);
    disk_cache_size = v;
    return Status::Ok();
  }
  if (k == "stats-file") {
    if (value.empty()) return Status::InvalidArgument("stats-file= is empty: give a file name");
    stats_file = std::string(value);
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown parameter '" + QuoteForMessage(key) +
                                 "' (see --help for the list)");
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

VolumeOptions Config::volume_options(bool readonly) const {
  VolumeOptions o;
  o.size = size;
  o.block_size = block_size;
  o.block_size_explicit = block_size_given;
  o.readonly = readonly;
  o.create = create;
  o.force = force;
  o.encoding = encoding;
  o.encoding_explicit = encoding_given;
  return o;
}

const char* Config::Help() {
  return
      "store=DIR|s3://BUCKET[/PREFIX]  (required) where blocks live; DIR may be given alone\n"
      "size=SIZE                 size of a new export (default 1G; K, M, G, T, P, E suffixes)\n"
      "block-size=SIZE           block size of a new export: a power of two from 512 to 16M\n"
      "                          (default 4096; an existing export keeps its own)\n"
      "default-export=NAME       export served to clients that ask for \"\" (default test_device)\n"
      "create=BOOL               create exports that clients name but that do not exist (default true)\n"
      "max-exports=N             most exports open at once, 1 to 4096 (default 16); a client\n"
      "                          naming one more is refused while every open one has a client\n"
      "idle-timeout=SECONDS      close an export this long after its last client left: its data\n"
      "                          stored, its lease, memory and fds given back (default 30)\n"
      "force=BOOL                take an S3 export's lease from another server (default false); a local\n"
      "                          export's lock goes by itself when its holder dies\n"
      "compression=none|zstd[:LEVEL]  compress the blocks of a new export (default none; level 1-22,\n"
      "                          default 3); an existing export keeps what it was created with\n"
      "encryption=none|aes-256-gcm  encrypt the blocks of a new export (default none)\n"
      "key-file=FILE             the encryption key: 32 bytes or 64 hex digits (default: the\n"
      "                          environment variable S3BLOCK_KEY)\n"
      "checksum=none|crc32c      a CRC-32C in each block of a new export (default none)\n"
      "endpoint=URL              S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS)\n"
      "region=REGION             S3 region for signing (default us-east-1)\n"
      "path-style=BOOL           path-style URLs (default: true with endpoint=, false for AWS)\n"
      "ca-file=FILE              CA certificates to verify the endpoint's HTTPS certificate\n"
      "access-key=ID             S3 access key id (default: AWS_ACCESS_KEY_ID, then ~/.aws)\n"
      "secret-key=SECRET         S3 secret key; -, +FILE or -FD to read it (never printed)\n"
      "session-token=TOKEN       S3 session token (default: AWS_SESSION_TOKEN, then ~/.aws)\n"
      "profile=NAME              profile in ~/.aws/credentials and config (default: AWS_PROFILE)\n"
      "retry-timeout=SECONDS     how long to retry transient S3 failures (default 60)\n"
      "request-timeout=SECONDS   time limit of one S3 request (default 30)\n"
      "connections=N             most S3 requests in flight at once (default 64)\n"
      "lease-timeout=SECONDS     an S3 export's lease lasts this long unless renewed (default 60)\n"
      "cache=BOOL                shared read/write-back block cache (default true)\n"
      "cache-size=SIZE           cache budget per open export (default 256M): the server's cache\n"
      "                          holds at most max-exports x cache-size\n"
      "dirty-size=SIZE           most unstored data in the cache (default cache-size/4)\n"
      "upload-threads=N          background uploaders, shared by all exports (default 32)\n"
      "read-threads=N            background read-ahead fetchers, shared by all exports (default 32)\n"
      "disk-cache=DIR,SIZE       keep up to SIZE of S3 blocks in DIR, reused after a restart once\n"
      "                          checked against the store (default: none)\n"
      "stats-file=FILE           rewrite FILE about once a second with the cache's counters (JSON)";
}

}  // namespace s3block
