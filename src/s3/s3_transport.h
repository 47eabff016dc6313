// S3Transport: the object transport (base/object_transport.h) over an S3 bucket, through the S3
// client (s3/s3_client.h), which signs, retries and checks every request: keys are those of the
// bucket below an optional prefix. Put is a PUT (a conditional one with If-None-Match: * or
// If-Match: "<ETag>"), GetRange a Range GET, Head a HEAD, List a ListObjectsV2 over every page,
// Delete a DELETE for one key and DeleteObjects requests of at most 1000 keys for more. A
// version is an ETag.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_S3_S3_TRANSPORT_H_
#define S3BLOCK_S3_S3_TRANSPORT_H_

#include <string>

#include "base/object_transport.h"

namespace s3block {

class S3Client;

class S3Transport : public ObjectTransport {
 public:
  // Keys are stored as key_prefix + key. REQUIRES: client outlives this; key_prefix is "" or
  // ends in '/'.
  S3Transport(S3Client* client, std::string key_prefix);

  std::string Describe() const override;
  // A HEAD: a 404 is not found, whether the key or the bucket is missing.
  Status Head(const std::string& key, ObjectInfo* info) override;
  Status Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info = nullptr) override;
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override;
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options = {},
             std::string* version = nullptr) override;
  Status List(const std::string& prefix,
              const std::function<void(const std::string& key, std::string_view version)>& fn)
      override;
  Status Delete(std::span<const std::string> keys, const WriteFence* fence = nullptr) override;

 private:
  Status NotFound(const std::string& key) const;

  S3Client* const client_;
  const std::string key_prefix_;
};

}  // namespace s3block

#endif  // S3BLOCK_S3_S3_TRANSPORT_H_
