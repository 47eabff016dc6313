#include "s3/s3_transport.h"

#include "s3/s3_client.h"
#include "s3block/params.h"
#include "util/batches.h"

namespace s3block {

S3Transport::S3Transport(S3Client* client, std::string key_prefix)
    : client_(client), key_prefix_(std::move(key_prefix)) {}

std::string S3Transport::Describe() const {
  return key_prefix_.empty() ? client_->Where() : "prefix '" + key_prefix_ + "' of " + client_->Where();
}

Status S3Transport::NotFound(const std::string& key) const {
  return Status::NotFound("S3 object '" + QuoteForMessage(key_prefix_ + key) +
                                            "' in " + client_->Where() + " does not exist");
}

Status S3Transport::Put(const std::string& key, std::span<const uint8_t> data,
                        const PutOptions& options, std::string* version) {
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  if (options.if_absent && !options.if_version.empty())
    return Status::InvalidArgument("a Put is either if_absent or if_version, not both");
  if (!options.if_absent && options.if_version.empty())
    return client_->PutObject(key_prefix_ + key, data, options.fence, version);
  std::string etag;
  bool failed = false;
  S3B_RETURN_IF_ERROR(client_->PutObjectConditional(key_prefix_ + key, data, options.if_absent,
                                                    options.if_version, &etag, &failed,
                                                    options.fence));
  if (failed) {
    return Status::AlreadyExists(
        "S3 object '" + QuoteForMessage(key_prefix_ + key) + "' in " + client_->Where() +
        (options.if_absent ? " exists already" : " has another version"));
  }
  if (version != nullptr) *version = std::move(etag);
  return Status::Ok();
}

Status S3Transport::Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info) {
  data->clear();
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  bool found = false;
  std::string etag;
  S3B_RETURN_IF_ERROR(client_->GetObject(key_prefix_ + key, data, &found, &etag));
  if (!found) return NotFound(key);
  if (info != nullptr) {
    info->size = data->size();
    info->version = std::move(etag);
  }
  return Status::Ok();
}

Status S3Transport::GetRange(const std::string& key, uint64_t offset, uint64_t length,
                             std::vector<uint8_t>* data) {
  data->clear();
  if (length == 0) {
    ObjectInfo info;
    return Head(key, &info);
  }
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  bool found = false;
  S3B_RETURN_IF_ERROR(client_->GetObjectRange(key_prefix_ + key, offset, length, data, &found));
  return found ? Status::Ok() : NotFound(key);
}

Status S3Transport::Head(const std::string& key, ObjectInfo* info) {
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  bool found = false;
  S3B_RETURN_IF_ERROR(client_->HeadObject(key_prefix_ + key, &found, &info->size, &info->version));
  return found ? Status::Ok() : NotFound(key);
}

Status S3Transport::List(
    const std::string& prefix,
    const std::function<void(const std::string& key, std::string_view version)>& fn) {
  return client_->ListObjects(
      key_prefix_ + prefix, "",
      [&](const std::string& key, std::string_view etag) { fn(key.substr(key_prefix_.size()), etag); },
      nullptr);
}

Status S3Transport::Delete(std::span<const std::string> keys, const WriteFence* fence) {
  for (const std::string& key : keys) S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  if (keys.empty()) return Status::Ok();
  if (keys.size() == 1) return client_->DeleteObject(key_prefix_ + keys[0], fence);
  std::vector<std::string> batch;
  return ForEachBatch(keys, S3Client::kMaxDeleteKeys, [&](std::span<const std::string> part) {
    batch.clear();
    for (const std::string& key : part) batch.push_back(key_prefix_ + key);
    return client_->DeleteObjects(batch, fence);
  });
}

}  // namespace s3block
