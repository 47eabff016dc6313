#include "base/config_params.h"

#include <sys/un.h>

#include <fstream>
#include <iterator>

#include "s3block/params.h"

namespace s3block {
namespace {

using Sv = std::string_view;

// The path and its NUL must fit in a unix socket's address.
constexpr size_t kMaxUnixSocketPath = sizeof(sockaddr_un{}.sun_path) - 1;

// Setters for the common kinds of value, parsed straight into a member of Config.
template <uint64_t Config::*F>
Status SetSize(Config* c, Sv key, Sv value) { return ParseSize(key, value, &(c->*F)); }
template <bool Config::*F>
Status SetBool(Config* c, Sv key, Sv value) { return ParseBool(key, value, &(c->*F)); }
template <double Config::*F>
Status SetSeconds(Config* c, Sv key, Sv value) { return ParseSeconds(key, value, &(c->*F)); }
template <uint64_t Config::*F, uint64_t kMin, uint64_t kMax>
Status SetCount(Config* c, Sv key, Sv value) { return ParseCount(key, value, kMin, kMax, &(c->*F)); }
template <std::string Config::*F>
Status SetText(Config* c, Sv, Sv value) {
  c->*F = std::string(value);
  return Status::Ok();
}

// A value that may not be empty; `why` ends the message that says it is.
Status SetNonEmpty(std::string* out, Sv key, Sv value, const char* why) {
  if (value.empty()) return Status::InvalidArgument(std::string(key) + "= is empty" + why);
  *out = std::string(value);
  return Status::Ok();
}

// A duration of at least `min` seconds; the value is parsed aside so that a refused one leaves
// the previous in place.
Status SetSecondsAtLeast(double* out, Sv key, Sv value, double min, const char* at_least) {
  double v = 0;
  S3B_RETURN_IF_ERROR(ParseSeconds(key, value, &v));
  if (v < min) return Status::InvalidArgument(std::string(key) + " must be at least " + at_least);
  *out = v;
  return Status::Ok();
}

Status SetStore(Config* c, Sv key, Sv value) {
  return SetNonEmpty(&c->store, key, value, ": give a directory or s3://BUCKET[/PREFIX]");
}

Status SetExportSize(Config* c, Sv key, Sv value) {
  uint64_t v = 0;
  S3B_RETURN_IF_ERROR(ParseSize(key, value, &v));
  S3B_RETURN_IF_ERROR(ValidateExportSize("size=" + QuoteForMessage(value), v));
  c->size = v;
  c->size_given = true;
  return Status::Ok();
}

Status SetBlockSize(Config* c, Sv key, Sv value) {
  S3B_RETURN_IF_ERROR(ParseBlockSize(key, value, &c->block_size));
  c->block_size_given = true;
  return Status::Ok();
}

Status SetDefaultExport(Config* c, Sv, Sv value) {
  S3B_RETURN_IF_ERROR(ValidateExportName(value).Annotate("default-export"));
  c->default_export = std::string(value);
  return Status::Ok();
}

template <Status (BlockEncoding::*F)(std::string_view)>
Status SetEncoding(Config* c, Sv, Sv value) {
  c->encoding_given = true;
  return (c->encoding.*F)(value);
}

// Reads a key file. The message names the file, never its content.
Status SetKeyFile(Config* c, Sv, Sv path) {
  const std::string where = "key-file=" + std::string(path);
  std::ifstream f{std::string(path), std::ios::binary};
  if (!f) return Status::InvalidArgument(where + ": cannot open it");
  std::string text;
  text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (f.bad()) return Status::InvalidArgument(where + ": cannot read it");
  Status s = ParseEncryptionKey(where, text, &c->encryption_key);
  std::fill(text.begin(), text.end(), '\0');
  return s;
}

Status SetEndpoint(Config* c, Sv, Sv value) {
  if (value.rfind("http://", 0) != 0 && value.rfind("https://", 0) != 0)
    return Status::InvalidArgument("endpoint=" + QuoteForMessage(value) +
                                   ": expected http://HOST[:PORT] or https://HOST[:PORT]");
  c->endpoint = std::string(value);
  while (c->endpoint.size() > 8 && c->endpoint.back() == '/') c->endpoint.pop_back();
  return Status::Ok();
}

Status SetRegion(Config* c, Sv key, Sv value) { return SetNonEmpty(&c->region, key, value, ""); }

Status SetPathStyle(Config* c, Sv key, Sv value) {
  bool b = false;
  S3B_RETURN_IF_ERROR(ParseBool(key, value, &b));
  c->path_style = b;
  return Status::Ok();
}

Status SetRequestTimeout(Config* c, Sv key, Sv value) {
  return SetSecondsAtLeast(&c->request_timeout, key, value, 0.1, "100ms");
}

Status SetLeaseTimeout(Config* c, Sv key, Sv value) {
  return SetSecondsAtLeast(&c->lease_timeout, key, value, 3, "3 seconds");
}

Status SetDiskCache(Config* c, Sv, Sv value) {
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
  c->disk_cache_dir = std::string(dir);
  c->disk_cache_size = v;
  return Status::Ok();
}

Status SetLayout(Config* c, Sv, Sv value) {
  S3B_RETURN_IF_ERROR(ParseLayout(value, &c->layout));
  c->layout_given = true;
  return Status::Ok();
}

Status SetSegmentSize(Config* c, Sv key, Sv value) {
  uint64_t v = 0;
  S3B_RETURN_IF_ERROR(ParseSize(key, value, &v));
  if (v < (1u << 20) || v > (64u << 20))
    return Status::InvalidArgument(std::string(key) + "=" + QuoteForMessage(value) +
                                   ": a segment is 1M to 64M");
  c->segment_size = v;
  return Status::Ok();
}

Status SetStatsFile(Config* c, Sv key, Sv value) {
  return SetNonEmpty(&c->stats_file, key, value, ": give a file name");
}

Status SetControl(Config* c, Sv key, Sv value) {
  const std::string where = std::string(key) + "=" + QuoteForMessage(value);
  if (value.empty() || value[0] != '/')
    return Status::InvalidArgument(where + ": the socket's path must be absolute");
  // It is told to clients in the lease's holder and in the control protocol, both lines of text.
  for (char ch : value)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
      return Status::InvalidArgument(where + ": the path holds a control character");
  if (value.size() > kMaxUnixSocketPath)
    return Status::InvalidArgument(where + ": " + std::to_string(value.size()) +
                                   " bytes long; a unix socket's path has at most " +
                                   std::to_string(kMaxUnixSocketPath));
  c->control = std::string(value);
  return Status::Ok();
}

using P = ConfigParam::Path;

// name, value, default (a value Set accepts, or nullptr), help, admin command, setter, ...
const ConfigParam kParams[] = {
    {"store", "DIR|s3://BUCKET[/PREFIX]", nullptr,
     "(required) where the blocks live", true, SetStore, P::kUnlessS3},
    {"size", "SIZE", "1G", "size of a new export (K, M, G, T, P, E suffixes)", true,
     SetExportSize},
    {"block-size", "SIZE", "4096",
     "block size of a new export: 512 to 16M, a power of 2", true, SetBlockSize,
     P::kNone, false, "blocksize"},
    {"default-export", "NAME", kDefaultExportName, "export served to clients that ask for \"\"",
     false, SetDefaultExport},
    {"create", "BOOL", "true", "create exports that clients name but that do not exist", false,
     SetBool<&Config::create>},
    {"max-exports", "N", "16", "most exports open at once, 1 to 4096", false,
     SetCount<&Config::max_exports, 1, 4096>},
    {"idle-timeout", "SECONDS", "30", "close an export this long after its last client left",
     false, SetSeconds<&Config::idle_timeout>},
    {"force", "BOOL", "false", "take an export's lease from another server", false,
     SetBool<&Config::force>},
    {"compression", "none|zstd[:LEVEL]", "none",
     "compress new exports' blocks (zstd LEVEL 1-22, or 3)", true,
     SetEncoding<&BlockEncoding::SetCompression>},
    {"encryption", "none|aes-256-gcm", "none", "encrypt the blocks of a new export", true,
     SetEncoding<&BlockEncoding::SetEncryption>},
    {"key-file", "FILE", nullptr,
     "encryption key, 32 bytes or 64 hex digits (default: $S3BLOCK_KEY)", true, SetKeyFile},
    {"checksum", "none|crc32c", "none", "a CRC-32C in each block of a new export", true,
     SetEncoding<&BlockEncoding::SetChecksum>},
    {"layout", "blocks|log", "blocks",
     "new exports: an object per block, or log-structured", true,
     SetLayout},
    {"segment-size", "SIZE", "8M", "size of a log export's segments, 1M to 64M",
     true, SetSegmentSize},
    {"gc-threshold", "PERCENT", "50",
     "collect log segments less live than this, 1 to 99", true,
     SetCount<&Config::gc_threshold, 1, 99>},
    {"endpoint", "URL", nullptr, "S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS)", true,
     SetEndpoint},
    {"region", "REGION", "us-east-1", "S3 region for signing", true, SetRegion},
    {"path-style", "BOOL", nullptr,
     "path-style URLs (default: true with endpoint=, false for AWS)", true, SetPathStyle},
    {"ca-file", "FILE", nullptr, "CA certificates to verify the endpoint's HTTPS certificate",
     true, SetText<&Config::ca_file>},
    {"access-key", "ID", nullptr, "S3 access key id (default: AWS_ACCESS_KEY_ID, then ~/.aws)",
     true, SetText<&Config::access_key>},
    {"secret-key", "SECRET", nullptr, "S3 secret key; -, +FILE or -FD to read it (never printed)",
     false, SetText<&Config::secret_key>, P::kNone, true},
    {"session-token", "TOKEN", nullptr,
     "S3 session token (default: AWS_SESSION_TOKEN, then ~/.aws)", true,
     SetText<&Config::session_token>},
    {"profile", "NAME", nullptr, "profile in ~/.aws/credentials and config (default: AWS_PROFILE)",
     true, SetText<&Config::profile>},
    {"retry-timeout", "SECONDS", "60", "how long to retry transient S3 failures", true,
     SetSeconds<&Config::retry_timeout>},
    {"request-timeout", "SECONDS", "30", "time limit of one S3 request", true, SetRequestTimeout},
    {"connections", "N", "64", "most S3 requests in flight at once, 1 to 1024", true,
     SetCount<&Config::connections, 1, 1024>},
    {"lease-timeout", "SECONDS", "60", "an S3 export's lease lasts this long unless renewed",
     false, SetLeaseTimeout},
    {"cache", "BOOL", "true", "shared read/write-back block cache", false,
     SetBool<&Config::cache>},
    {"cache-size", "SIZE", "256M", "cache budget per open export", false,
     SetSize<&Config::cache_size>},
    {"dirty-size", "SIZE", nullptr, "most unstored data in the cache (default: cache-size/4)",
     false, SetSize<&Config::dirty_size>},
    {"upload-threads", "N", "32", "background uploaders, shared by all exports, 1 to 256", false,
     SetCount<&Config::upload_threads, 1, 256>},
    {"read-threads", "N", "32", "read-ahead fetchers, shared by all exports, 1 to 1024", false,
     SetCount<&Config::read_threads, 1, 1024>},
    {"disk-cache", "DIR,SIZE", nullptr, "keep up to SIZE of S3 blocks in DIR (default: none)",
     false, SetDiskCache, P::kBeforeComma},
    {"stats-file", "FILE", nullptr, "rewrite FILE about once a second with counters (JSON)",
     false, SetStatsFile, P::kWhole},
    {"control", "PATH", nullptr, "unix socket where s3block reaches this server (default: none)",
     false, SetControl, P::kWhole},
};

}  // namespace

size_t ConfigParam::PathLength(std::string_view value) const {
  switch (path) {
    case Path::kNone: return std::string_view::npos;
    case Path::kWhole: return value.size();
    case Path::kUnlessS3: return value.rfind("s3://", 0) == 0 ? std::string_view::npos : value.size();
    case Path::kBeforeComma: {
      const size_t comma = value.rfind(',');
      return comma == 0 ? std::string_view::npos : comma;
    }
  }
  return std::string_view::npos;
}

std::span<const ConfigParam> ConfigParams() { return kParams; }

const ConfigParam* FindConfigParam(std::string_view name) {
  for (const ConfigParam& p : kParams)
    if (name == p.name || (p.alias != nullptr && name == p.alias)) return &p;
  return nullptr;
}

std::string ParamListText(ParamSyntax syntax, std::string_view indent, size_t column) {
  std::string out;
  for (const ConfigParam& p : kParams) {
    if (syntax == ParamSyntax::kAdmin && !p.admin) continue;
    std::string line(indent);
    line += syntax == ParamSyntax::kAdmin ? "--" + std::string(p.name) + " " : p.name + std::string("=");
    line += p.value;
    line += line.size() + 2 <= column ? std::string(column - line.size(), ' ')
                                      : "\n" + std::string(column, ' ');
    line += p.help;
    if (p.default_value != nullptr) line += std::string(" (default ") + p.default_value + ")";
    out += line + "\n";
  }
  return out;
}

}  // namespace s3block
