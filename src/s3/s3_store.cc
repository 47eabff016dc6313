#include "s3/s3_store.h"

#include <algorithm>
#include <charconv>
#include <set>

#include "s3/credentials.h"
#include "s3/s3_client.h"
#include "s3/s3_transport.h"
#include "s3block/params.h"
#include "util/block_id.h"

namespace s3block {
namespace {

// Check() waits at most this long for a server that is starting or briefly unreachable.
constexpr double kMaxCheckSeconds = 10;
// Metadata documents are tiny; anything larger is not ours.
constexpr size_t kMaxMetaBytes = 1 << 20;

// The fence of every request that changes an export: its lease, asked before each attempt.
WriteFence FenceOf(const S3Store& store, std::string_view export_name) {
  return [&store, export_name](double* left) { return store.CheckLease(export_name, left); };
}

}  // namespace

ObjectTransport* S3Store::transport() const { return transport_.get(); }

Status S3Store::Create(const S3StoreOptions& options, std::shared_ptr<S3Store>* out) {
  if (options.url.rfind("s3://", 0) != 0)
    return Status::InvalidArgument("store=" + options.url + " is not s3://BUCKET[/PREFIX]");
  std::string rest = options.url.substr(5);
  size_t slash = rest.find('/');
  std::string bucket = rest.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  while (!prefix.empty() && prefix.front() == '/') prefix.erase(prefix.begin());
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (bucket.size() < 3 || bucket.size() > 63)
    return Status::InvalidArgument("store=" + options.url + ": the bucket name must be 3 to 63 characters");
  for (char c : bucket) {
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) ||
          c == '-' || c == '.' || c == '_'))
      return Status::InvalidArgument("store=" + QuoteForMessage(options.url) +
                                     ": a bucket name has only a-z, 0-9, '-', '.' and '_'");
  }

  AwsCredentials credentials;
  std::string where;
  S3B_RETURN_IF_ERROR(ResolveCredentials(options.credentials, &credentials, &where).Annotate("store=" + options.url));

  S3ClientOptions o;
  o.endpoint = options.endpoint;
  o.region = options.region;
  o.bucket = bucket;
  o.path_style = options.path_style.value_or(!options.endpoint.empty());
  o.retry_timeout = options.retry_timeout;
  o.http.ca_file = options.ca_file;
  o.http.request_timeout = options.request_timeout;
  o.http.connect_timeout = std::min(10.0, options.request_timeout);
  o.http.max_connections = options.connections;
  o.http.max_response_bytes = 2 * static_cast<size_t>(kMaxBlockSize) + (1 << 20);
  auto client = std::make_unique<S3Client>(std::move(o), std::move(credentials));
  double check_timeout = std::min(options.retry_timeout, kMaxCheckSeconds);
  out->reset(new S3Store(bucket, prefix.empty() ? "" : prefix + "/", std::move(client), check_timeout, where));
  return Status::Ok();
}

S3Store::S3Store(std::string bucket, std::string key_prefix, std::unique_ptr<S3Client> client,
                 double check_timeout, std::string credentials_source)
    : bucket_(std::move(bucket)),
      key_prefix_(std::move(key_prefix)),
      client_(std::move(client)),
      transport_(std::make_unique<S3Transport>(client_.get(), key_prefix_)),
      check_timeout_(check_timeout),
      credentials_source_(std::move(credentials_source)) {}

S3Store::~S3Store() = default;

std::string S3Store::StoreUrl() const {
  std::string s = "s3://" + bucket_;
  if (!key_prefix_.empty()) s += "/" + key_prefix_.substr(0, key_prefix_.size() - 1);
  return s;
}

std::string S3Store::Describe() const {
  return StoreUrl() + " at " + (client_->options().endpoint.empty()
                           ? "https://s3." + client_->options().region + ".amazonaws.com"
                           : client_->options().endpoint);
}

void S3Store::set_list_page_size_for_testing(int n) { client_->set_list_page_size_for_testing(n); }

std::string S3Store::ExportPrefix(std::string_view export_name) const {
  return key_prefix_ + "exports/" + std::string(export_name) + "/";
}
std::string S3Store::BlockKey(std::string_view export_name, uint64_t id) const {
  return key_prefix_ + BlockName(export_name, id);
}
std::string S3Store::MetaKey(std::string_view export_name) const {
  return key_prefix_ + MetaName(export_name);
}
std::string S3Store::BlockName(std::string_view export_name, uint64_t id) {
  return "exports/" + std::string(export_name) + "/blocks/" + std::to_string(id);
}
std::string S3Store::MetaName(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/metadata";
}

Status S3Store::Check() {
  Status s = client_->CheckBucket(key_prefix_ + "exports/", check_timeout_);
  if (s.ok()) return s;
  return Status::Error(s.err(), "store=" + StoreUrl() + ": " + s.message() + " (keys from " +
                                    credentials_source_ + ")");
}

// Reads, writes and deletes of whole objects go through the transport (which adds only the
// key check to the client's requests); listings, copies and leases use what only S3 has.
Status S3Store::Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) {
  *found = false;
  Status s = transport_->Get(BlockName(export_name, id), data);
  if (s.IsNotFound()) return Status::Ok();
  *found = s.ok();
  return s;
}

Status S3Store::Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data, bool fua) {
  const WriteFence fence = FenceOf(*this, export_name);
  return transport_->Put(BlockName(export_name, id), data, PutOptions::Fenced(&fence));
}

Status S3Store::Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) {
  if (ids.empty()) return Status::Ok();
  const WriteFence fence = FenceOf(*this, export_name);
  std::vector<std::string> keys;
  keys.reserve(ids.size());
  for (uint64_t id : ids) keys.push_back(BlockName(export_name, id));
  return transport_->Delete(keys, &fence);
}

Status S3Store::Flush(std::string_view export_name) {
  // S3 answers a PUT or DELETE only once it is stored: what returned is durable, and nothing
  // is buffered here.
  return Status::Ok();
}

Status S3Store::ListBlocks(std::string_view export_name, const std::function<void(uint64_t)>& fn) {
  return ListBlockDigests(export_name, [&](uint64_t id, std::string_view) { fn(id); });
}

Status S3Store::ListBlockDigests(std::string_view export_name,
                                 const std::function<void(uint64_t, std::string_view)>& fn) {
  const std::string prefix = ExportPrefix(export_name) + "blocks/";
  auto block_id = [&](const std::string& key, uint64_t* id) {
    return key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0 &&
           ParseBlockId(std::string_view(key).substr(prefix.size()), id);
  };
  // A key that is not a block's is fetched again before it is skipped: it may be a block's
  // name damaged on the way, and skipping a stored block would serve it as zeros.
  return client_->ListObjects(
      prefix, "",
      [&](const std::string& key, std::string_view etag) {
        uint64_t id;
        if (block_id(key, &id)) fn(id, IsHexMd5(etag) ? etag : std::string_view());
      },
      nullptr, [&](const std::string& key) {
        uint64_t id;
        return block_id(key, &id);
      });
}

Status S3Store::ListExports(std::vector<std::string>* names) {
  names->clear();
  const std::string prefix = key_prefix_ + "exports/";
  std::set<std::string> found;
  S3B_RETURN_IF_ERROR(client_->ListObjects(
      prefix, "/", nullptr, [&](const std::string& p) {
        if (p.size() <= prefix.size() + 1 || p.compare(0, prefix.size(), prefix) != 0 || p.back() != '/')
          return;
        std::string name = p.substr(prefix.size(), p.size() - prefix.size() - 1);
        if (ValidateExportName(name).ok()) found.insert(name);
      }));
  names->assign(found.begin(), found.end());
  return Status::Ok();
}

Status S3Store::ReadMeta(std::string_view export_name, std::string* text, bool* found) {
  text->clear();
  *found = false;
  Bytes data;
  Status s = transport_->Get(MetaName(export_name), &data);
  if (s.IsNotFound()) return Status::Ok();
  S3B_RETURN_IF_ERROR(s);
  *found = true;
  text->assign(data.begin(), data.end());
  if (text->size() > kMaxMetaBytes)
    return Status::IoError("S3 object '" + QuoteForMessage(MetaKey(export_name)) + "' in " + Describe() +
                           " is too large to be metadata");
  return Status::Ok();
}

Status S3Store::WriteMeta(std::string_view export_name, std::string_view text) {
  const WriteFence fence = FenceOf(*this, export_name);
  return transport_->Put(MetaName(export_name), AsBytes(text), PutOptions::Fenced(&fence));
}

Status S3Store::DeleteMeta(std::string_view export_name) {
  const WriteFence fence = FenceOf(*this, export_name);
  const std::string key = MetaName(export_name);
  return transport_->Delete(std::span<const std::string>(&key, 1), &fence);
}

Status S3Store::CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) {
  const WriteFence fence = FenceOf(*this, to);
  return client_->CopyObject(BlockKey(from, id), BlockKey(to, id), found, &fence);
}

}  // namespace s3block
