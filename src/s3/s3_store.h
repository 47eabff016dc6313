// S3Store: the leaf store in an S3 bucket (AWS S3 or any S3-compatible service), one object per
// block, in the specification's layout under an optional prefix:
//
//   [<prefix>/]exports/<export_name>/blocks/<block_id>   one raw block, id in decimal
//   [<prefix>/]exports/<export_name>/metadata            the export's metadata document
//
// A missing block object (404 NoSuchKey) reads as "not found"; every other failure is an error.
// A PUT that returned is durable (S3 acknowledges only stored objects), so Flush has nothing to
// wait for. Trim deletes block objects, many at once with DeleteObjects. Listing uses
// ListObjectsV2 with a delimiter, following continuation tokens.
//
// Configuration (see Config): endpoint=, region=, path-style=, ca-file=, the credentials chain
// (s3/credentials.h), retry-timeout=, request-timeout=, connections=.
//
// Thread safety: safe for concurrent use; up to `connections` requests run at once.
#ifndef S3BLOCK_S3_S3_STORE_H_
#define S3BLOCK_S3_S3_STORE_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "base/object_transport.h"
#include "s3/credentials.h"
#include "s3block/block_store.h"
#include "util/mutex.h"

namespace s3block {

class S3Client;
class S3Transport;

// What an S3 store is made of (store_factory.cc maps the configuration onto it).
struct S3StoreOptions {
  std::string url;                  // s3://BUCKET[/PREFIX], as store= gives it
  CredentialSource credentials;     // what the parameters give; the chain finds the rest
  std::string endpoint;             // empty: AWS (https://s3.REGION.amazonaws.com)
  std::string region = "us-east-1";
  std::optional<bool> path_style;   // unset: true for a custom endpoint, false for AWS
  std::string ca_file;
  double retry_timeout = 60;        // seconds of retrying a transient failure
  double request_timeout = 30;      // seconds for one HTTP request
  uint64_t connections = 64;        // most HTTP requests in flight at once
};

class S3Store : public BlockStore, public std::enable_shared_from_this<S3Store> {
 public:
  // Builds a store for options.url = s3://BUCKET[/PREFIX]. Resolves the credentials (no I/O
  // beyond reading ~/.aws files). Errors: EINVAL for a bad store= or missing credentials.
  static Status Create(const S3StoreOptions& options, std::shared_ptr<S3Store>* out);
  ~S3Store() override;

  // "s3://bucket/prefix at http://127.0.0.1:9000".
  std::string Describe() const override;
  // Verifies that the bucket exists and the credentials work (one ListObjectsV2), retrying
  // transient failures for at most min(retry-timeout, 10 s). One clear message naming the bucket
  // and the endpoint on failure.
  Status Check() override;

  Status Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) override;
  Status Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
               bool fua) override;
  Status Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) override;
  // Nothing to do: every Write and Delete that returned is already durable in S3.
  Status Flush(std::string_view export_name) override;
  Status ListBlocks(std::string_view export_name,
                    const std::function<void(uint64_t)>& fn) override;
  // The digest of a block is its object's ETag where that is a plain MD5 (every object this
  // store writes: one PUT each).
  Status ListBlockDigests(std::string_view export_name,
                          const std::function<void(uint64_t, std::string_view)>& fn) override;
  Status ListExports(std::vector<std::string>* names) override;
  Status ReadMeta(std::string_view export_name, std::string* text, bool* found) override;
  Status WriteMeta(std::string_view export_name, std::string_view text) override;
  Status DeleteMeta(std::string_view export_name) override;

  // A lease object at exports/<name>/lease, written with a conditional PUT (If-None-Match: *),
  // renewed by a thread with If-Match on its ETag every lease_timeout/4 seconds, deleted when
  // released, and taken over after it has expired (or with force). If the server ignores
  // conditional writes (checked once with a probe object), fails with ENOTSUP saying so.
  //
  // While this store holds an export's lease, every request that changes the export (block and
  // metadata PUTs and DELETEs, copies into it), and every retry of one, first asks the lease: if
  // it was taken over or released, or has less than half a second of validity left (its
  // renewals failed), the request is not sent; otherwise it is given at most the time the lease
  // has left, so that no request of ours is still running when another server can take the
  // export over. Uploads queued in the cache then fail and stay dirty, and flushes say why. An
  // export this store never leased (read-only, or a server without conditional writes) is not
  // fenced.
  Status AcquireLease(std::string_view export_name, const std::string& holder, bool force,
                      std::unique_ptr<ExportLease>* out) override;
  Status QueryLease(std::string_view export_name, std::string* holder) override;
  // A server-side copy (CopyObject): the data does not pass through this process.
  Status CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) override;

  // Seconds a lease stays valid without renewal (lease-timeout=, default 60).
  void set_lease_timeout(double seconds) { lease_timeout_ = seconds; }
  std::string LeaseKey(std::string_view export_name) const;

  const std::string& bucket() const { return bucket_; }
  // The bucket (below the prefix) as objects, for layouts other than one object per block.
  ObjectTransport* transport() const;
  // "s3://bucket/prefix", as given in store= (without the endpoint).
  std::string StoreUrl() const;
  // The key prefix ending in '/', or "" (no prefix).
  const std::string& key_prefix() const { return key_prefix_; }
  // Key helpers (the layout above). REQUIRES: export_name passed ValidateExportName.
  std::string ExportPrefix(std::string_view export_name) const;
  std::string BlockKey(std::string_view export_name, uint64_t id) const;
  std::string MetaKey(std::string_view export_name) const;

  // Page size of listings (S3's default 1000); tests set it small to exercise pagination.
  void set_list_page_size_for_testing(int n);

 private:
  S3Store(std::string bucket, std::string key_prefix, std::unique_ptr<S3Client> client,
          double check_timeout, std::string credentials_source);

  // The keys of the layout below the prefix, as the transport takes them.
  static std::string BlockName(std::string_view export_name, uint64_t id);
  static std::string MetaName(std::string_view export_name);

  const std::string bucket_;
  const std::string key_prefix_;
  std::unique_ptr<S3Client> client_;
  std::unique_ptr<S3Transport> transport_;  // over client_
  const double check_timeout_;
  const std::string credentials_source_;
  double lease_timeout_ = 60;
  // Whether the server honours If-None-Match on PUT: 0 unknown, 1 yes, -1 no (learnt from the
  // first lease taken: a second PUT of it must be refused).
  std::atomic<int> conditional_writes_{0};
  Status IgnoresConditions() const;

 public:
  // How long the lease of each export held by this store is valid (see s3_lease.cc).
  struct LeaseState;
  // The fence (S3Client's WriteFence) of requests that change `export_name`. Public for tests.
  Status CheckLease(std::string_view export_name, double* seconds_left) const;

 private:
  void RegisterLease(std::string_view export_name, std::shared_ptr<LeaseState> state)
      EXCLUDES(leases_mu_);
  mutable Mutex leases_mu_;
  // The state of the last lease this store took on each export (kept after its release).
  std::map<std::string, std::shared_ptr<LeaseState>, std::less<>> leases_ GUARDED_BY(leases_mu_);
};

}  // namespace s3block

#endif  // S3BLOCK_S3_S3_STORE_H_
