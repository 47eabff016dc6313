// ObjectTransport: whole objects under string keys, as a storage layout needs them, whatever
// holds them. A layout (the one-object-per-block stores, or one that packs many blocks into
// large objects and reads ranges of them) is written against this interface only, and the
// factory gives it an S3 bucket (s3/s3_transport.h) or a local directory (file/dir_transport.h).
//
// What every transport offers:
//   Put      a whole object, durable when the call returns; optionally only if no object has
//            the key (if_absent), or only if the object still has a given version (if_version)
//   Get      a whole object, or a byte range of it (GetRange)
//   Head     an object's size and version
//   List     the keys under a prefix, in byte order (paging is the transport's business)
//   Delete   any number of keys (batching is the transport's business); missing keys are fine
// A reader sees an object whole, old or new, never a mix: every Put replaces it in one step.
//
// Keys (checked by every call, alike on every transport, so that a layout runs unchanged on
// any of them; see ValidateObjectKey): relative paths, "a/b/c", of at most 1024 bytes.
//
// Errors: a key with no object is NotFound (Status::IsNotFound), a conditional Put whose
// condition does not hold is AlreadyExists (IsPreconditionFailed); everything else is the
// transport's error (EIO with a message naming the key and where it is stored, EINVAL for a
// refused key, ...).
//
// Thread safety: implementations are safe for concurrent use.
#ifndef S3BLOCK_BASE_OBJECT_TRANSPORT_H_
#define S3BLOCK_BASE_OBJECT_TRANSPORT_H_

#include <cerrno>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "s3block/status.h"

namespace s3block {

// Asked before every attempt of a request that changes stored objects (and so before every
// retry): an error stops the request at once, unsent and not retried; OK with *seconds_left > 0
// limits the attempt to that many seconds, and with 0 leaves the request timeout as it is. A
// lease uses it to keep a writer whose lease lapsed or was taken over from storing anything.
using WriteFence = std::function<Status(double* seconds_left)>;

// A key with no object is Status::NotFound (s.IsNotFound()); a conditional Put whose condition
// did not hold is Status::AlreadyExists (IsPreconditionFailed).
inline bool IsPreconditionFailed(const Status& s) {
  return s.kind() == Status::Kind::kAlreadyExists;
}

// The longest key (S3's limit).
inline constexpr size_t kMaxObjectKeyBytes = 1024;

// Refuses (EINVAL naming the key) a key that is empty, longer than kMaxObjectKeyBytes, begins
// with '/', has an empty, "." or ".." component or a control character (NUL included), or whose
// last component begins with ".tmp." (the local directory's temporary files: never objects).
Status ValidateObjectKey(std::string_view key);

// What Head, and Get, tell of an object.
struct ObjectInfo {
  uint64_t size = 0;
  // Changes whenever the object is written (S3: the ETag; a directory: the file's identity and
  // time of writing). What if_version compares.
  std::string version;
};

struct PutOptions {
  // Only if no object has the key (S3: If-None-Match: *).
  bool if_absent = false;
  // Non-empty: only if the object exists and still has this version (S3: If-Match).
  // REQUIRES: not together with if_absent.
  std::string if_version;
  // Asked before each attempt (may be null).
  const WriteFence* fence = nullptr;

  static PutOptions IfAbsent(const WriteFence* fence = nullptr) {
    PutOptions o;
    o.if_absent = true;
    o.fence = fence;
    return o;
  }
  static PutOptions IfVersion(std::string version, const WriteFence* fence = nullptr) {
    PutOptions o;
    o.if_version = std::move(version);
    o.fence = fence;
    return o;
  }
  static PutOptions Fenced(const WriteFence* fence) {
    PutOptions o;
    o.fence = fence;
    return o;
  }
};

class ObjectTransport {
 public:
  virtual ~ObjectTransport() = default;

  // Where the objects are, for messages: "s3://bucket/prefix at http://host:port", "dir:/path".
  virtual std::string Describe() const = 0;

  // Stores `data` as the object `key`, replacing any, durably. With a condition that does not
  // hold, nothing is stored and the result is IsPreconditionFailed. *version (when given) is the
  // new object's version.
  virtual Status Put(const std::string& key, std::span<const uint8_t> data,
                     const PutOptions& options = {}, std::string* version = nullptr) = 0;

  // Reads the whole object into *data (emptied on error); *info (when given) says its size and
  // version.
  virtual Status Get(const std::string& key, std::vector<uint8_t>* data,
                     ObjectInfo* info = nullptr) = 0;

  // Reads `length` bytes from byte `offset` of the object into *data: fewer where the object
  // ends first, none if it ends at or before `offset` (still OK: the object exists). The bytes
  // are those of one version of the object. Over S3 without TLS, a range is not checked against
  // the object's checksum (that covers the whole object): a layout reading ranges checks its own.
  virtual Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                          std::vector<uint8_t>* data) = 0;

  virtual Status Head(const std::string& key, ObjectInfo* info) = 0;

  // Calls fn(key, version) for every object whose key begins with `prefix` ("" for all), in
  // byte order of the keys. `prefix` need not end at a '/'.
  virtual Status List(const std::string& prefix,
                      const std::function<void(const std::string& key, std::string_view version)>&
                          fn) = 0;

  // Deletes the objects; keys without one are not an error. Durable when it returns. On an
  // error some of the keys may be deleted.
  virtual Status Delete(std::span<const std::string> keys, const WriteFence* fence = nullptr) = 0;
};

}  // namespace s3block

#endif  // S3BLOCK_BASE_OBJECT_TRANSPORT_H_
