// S3Client: the S3 object calls the S3 store needs (GET, PUT, DELETE, DeleteObjects,
// ListObjectsV2, and a bucket check), signed with Signature V4 and retried when the failure is
// transient.
//
// Retries: a request that fails with a transient error (HTTP 5xx, 429, 400 RequestTimeout, a
// connection refused or reset, a timeout, a truncated or corrupted body) is sent again after an
// exponential backoff with jitter, until `retry_timeout` seconds have passed since the first
// attempt; then the last error is returned as EIO. Time spent waiting for one of the
// `connections` counts: a request still waiting when its retry-timeout is over fails with
// ETIMEDOUT, unsent, so that a request ends within retry-timeout + request-timeout however many
// are queued. Every other HTTP error (403, 404, other 4xx)
// is returned at once. Each attempt is signed afresh (the signature covers the time).
//
// Integrity: over plain HTTP every request is signed with the SHA-256 of its body
// (x-amz-content-sha256), which the server checks (AWS and Ceph RGW refuse a body that does not
// match with XAmzContentSHA256Mismatch). Over HTTPS, TLS guarantees the body arrives as sent, and
// requests say UNSIGNED-PAYLOAD instead: hashing every block written would cost more CPU than
// anything else on the way. A POST also carries Content-MD5, which S3 requires there. A PUT
// records the CRC-32C of the content with the object (x-amz-meta-s3block-crc32c). A GET body is
// checked against Content-Length and against that CRC-32C; an object without it against the MD5
// recorded by earlier versions (x-amz-meta-s3block-md5), or else against an ETag that is a plain
// MD5 (a single-part upload: objects written by other tools). The CRC-32C costs a fraction of
// the MD5 (the CPU's crc32 instruction): reading 1 MiB blocks, the MD5 of every body was half of
// the client's CPU time.
//
// Messages name the bucket, the key and the endpoint; never a secret.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_S3_S3_CLIENT_H_
#define S3BLOCK_S3_S3_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/object_transport.h"
#include "s3/http_client.h"
#include "s3/server_clock.h"
#include "s3/sigv4.h"
#include "s3block/status.h"

namespace s3block {

struct S3ClientOptions {
  std::string endpoint;  // "http[s]://host[:port]"; empty: AWS, https://s3.REGION.amazonaws.com
  std::string region = "us-east-1";
  std::string bucket;
  bool path_style = true;  // false: https://BUCKET.host/KEY
  double retry_timeout = 60;
  HttpClientOptions http;
};

// True if s is an MD5 in hex (32 hex digits): the ETag of an object written in one PUT, where a
// multipart upload's ETag ("...-N") is not.
bool IsHexMd5(std::string_view s);

// The header that carries the CRC-32C of the object's content (8 lower-case hex digits), as
// PutObject stores it.
inline constexpr char kCrc32cMetaHeader[] = "x-amz-meta-s3block-crc32c";
// The header that carried the MD5 of the content (base64) in objects of earlier versions; still
// checked where an object has no CRC-32C.
inline constexpr char kMd5MetaHeader[] = "x-amz-meta-s3block-md5";

// The value of kCrc32cMetaHeader for this content.
std::string Crc32cHex(std::span<const uint8_t> data);

// Every request that changes objects may carry a WriteFence (base/object_transport.h), asked
// before each attempt: the S3 store's fence keeps a server whose lease on the export has lapsed or
// was taken over from storing anything, and ends every request before the lease could be taken
// over.

class S3Client {
 public:
  // S3's limit for one DeleteObjects request.
  static constexpr size_t kMaxDeleteKeys = 1000;

  // REQUIRES: options.bucket is a valid bucket name. No I/O happens here.
  S3Client(S3ClientOptions options, AwsCredentials credentials);

  // Reads an object. A missing object (404 NoSuchKey) is *found = false, not an error; a missing
  // bucket is an error.
  Status GetObject(const std::string& key, std::string* body, bool* found);
  // The same, read straight into bytes (a block: no copy from a string). *data is empty unless
  // the object was found. *etag (when given) is its ETag, without quotes.
  Status GetObject(const std::string& key, std::vector<uint8_t>* data, bool* found,
                   std::string* etag = nullptr);
  // Reads `length` bytes (REQUIRES: > 0) from byte `offset` of an object (a Range GET): fewer
  // where it ends first, none if it ends at or before `offset`. The body is checked against its
  // Content-Length; the object's CRC-32C covers the whole object, so a part is checked only if
  // the server sends the whole object. *found as GetObject.
  Status GetObjectRange(const std::string& key, uint64_t offset, uint64_t length,
                        std::vector<uint8_t>* data, bool* found);
  // The size and ETag (without quotes) of an object (HEAD). A 404 is *found = false: a HEAD
  // answer has no body to tell a missing key from a missing bucket.
  Status HeadObject(const std::string& key, bool* found, uint64_t* size, std::string* etag);
  // Writes an object, with its CRC-32C as x-amz-meta-s3block-crc32c. *etag (when given) is the
  // new object's ETag, without quotes.
  Status PutObject(const std::string& key, std::span<const uint8_t> body,
                   const WriteFence* fence = nullptr, std::string* etag = nullptr);
  // Reads an object and its ETag (without quotes).
  Status GetObjectWithEtag(const std::string& key, std::string* body, bool* found,
                           std::string* etag);
  // Writes an object only if a precondition holds: with if_none_match_any, only if no object
  // has the key (If-None-Match: *); with a non-empty if_match, only if the object's ETag is
  // that (If-Match). A failed precondition (412, or 409 for a conflicting concurrent write) is
  // not an error: *precondition_failed = true. On success *etag is the new ETag (no quotes).
  // Servers differ in how they compare If-Match: AWS wants the ETag quoted, Ceph RGW 16 compares
  // it unquoted; the quoted form is sent first and the other once if that fails.
  Status PutObjectConditional(const std::string& key, std::span<const uint8_t> body,
                              bool if_none_match_any, const std::string& if_match,
                              std::string* etag, bool* precondition_failed,
                              const WriteFence* fence = nullptr);
  // Server-side copy of an object within the bucket (x-amz-copy-source). *found = false if the
  // source does not exist.
  Status CopyObject(const std::string& from_key, const std::string& to_key, bool* found,
                    const WriteFence* fence = nullptr);
  // Deletes one object; a missing object is not an error.
  Status DeleteObject(const std::string& key, const WriteFence* fence = nullptr);
  // Deletes up to kMaxDeleteKeys objects with one DeleteObjects request; an error if the server
  // reports any key it could not delete (missing keys count as deleted).
  Status DeleteObjects(const std::vector<std::string>& keys, const WriteFence* fence = nullptr);
  // ListObjectsV2 over every page: on_key(key, etag) for each object (the ETag without its
  // quotes), on_prefix(prefix) for each common prefix (with a delimiter). Either callback may be
  // null. A page is checked before it is used, and fetched again if it does not parse or names a
  // key outside `prefix`; also, a few times, if key_ok (when given) rejects one of its keys.
  Status ListObjects(const std::string& prefix, const std::string& delimiter,
                     const std::function<void(const std::string& key, std::string_view etag)>& on_key,
                     const std::function<void(const std::string&)>& on_prefix,
                     const std::function<bool(const std::string& key)>& key_ok = nullptr);
  // Checks that the bucket exists and the credentials are accepted: one ListObjectsV2 with
  // max-keys=1 under `prefix`, retried for at most `retry_timeout` seconds. The error is one
  // line naming the bucket and the endpoint: missing bucket, access denied, bad credentials,
  // wrong region, connection refused.
  Status CheckBucket(const std::string& prefix, double retry_timeout);

  // "http://127.0.0.1:9000, bucket b" (for messages).
  std::string Where() const;
  const S3ClientOptions& options() const { return options_; }
  // The server's time, from the Date header of every answer (the leases go by it).
  const ServerClock& server_clock() const { return server_clock_; }

  // Page size of ListObjects (default 1000, S3's maximum); tests set it small to exercise
  // pagination.
  void set_list_page_size_for_testing(int n) { list_page_size_ = n; }

 private:
  struct Request {
    std::string method;
    std::string key;  // empty: the bucket itself
    std::vector<std::pair<std::string, std::string>> query;
    std::vector<std::pair<std::string, std::string>> headers;
    std::span<const uint8_t> body;
    bool verify_body = false;  // check a 200 GET body's length and MD5
    const WriteFence* fence = nullptr;  // asked before every attempt
    // Ahead of other requests for a free connection (HttpRequest::urgent); GETs always are.
    bool urgent = false;
  };

  // A GET of an object into *r (whose `data`, if set, receives a 2xx body): *found and *etag
  // for 200, *found = false for 404 NoSuchKey, an error otherwise.
  Status Get(const std::string& key, HttpResponse* r, bool* found, std::string* etag);
  // Sends the request, retrying transient failures until `deadline` (the retry-timeout from the
  // start of the operation). Time spent waiting for a free connection counts: a request still
  // waiting at the deadline fails with ETIMEDOUT, unsent. Returns OK with *response for any
  // HTTP status that is not transient (the caller interprets 4xx); EIO when the retries are
  // exhausted or the failure is not transient.
  Status Execute(const Request& request, HttpResponse* response,
                 std::chrono::steady_clock::time_point deadline);
  // What became of one attempt, beyond its status.
  struct AttemptOutcome {
    bool transient = false;  // the error may go away: retry it
    bool bad_body = false;   // a 200 GET whose body failed its length or checksum check
    uint32_t body_crc = 0;   // then: the CRC-32C of the body received
  };
  // One attempt, of at most `timeout` seconds from now if that is above 0 (however long it waits
  // for a connection), waiting for a connection until `deadline` at most.
  Status Attempt(const Request& request, HttpResponse* response, AttemptOutcome* outcome,
                 double timeout, std::chrono::steady_clock::time_point deadline);
  // An EIO (or EACCES/ENOENT-flavoured EIO) error for an HTTP error response.
  Status ErrorFor(std::string_view op, const std::string& key, const HttpResponse& response) const;

  std::string Describe(std::string_view op, const std::string& key) const;

  const S3ClientOptions options_;
  const AwsCredentials credentials_;
  std::string scheme_;     // "http" or "https"
  std::string host_;       // the Host header: host[:port] (bucket. prefix when virtual-hosted)
  std::string base_path_;  // "/BUCKET" (path-style) or ""
  std::string endpoint_for_messages_;
  int list_page_size_ = 1000;
  std::unique_ptr<HttpClient> http_;
  ServerClock server_clock_;
};

// The S3 error code of an error response ("NoSuchKey"), or "" if the body has none.
std::string S3ErrorCode(const HttpResponse& response);

}  // namespace s3block

#endif  // S3BLOCK_S3_S3_CLIENT_H_
