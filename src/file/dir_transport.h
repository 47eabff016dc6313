// DirTransport: the object transport (base/object_transport.h) over a local directory. A key
// "a/b/c" is the file <root>/a/b/c; its directories are made as needed (and left when empty:
// removing one could pull it away from a Put under way).
//
// Nothing below the root is trusted, as in the file store (file_store.h): every path is resolved
// relative to a directory fd without following a symlink, files are opened without waiting
// (a FIFO is never waited on) and checked to be regular files, directories to be directories.
// A symlink, FIFO, socket, device or directory where an object's file belongs (or anything but
// a directory where one belongs) is EIO naming the path and what is there; it is never followed,
// waited on, replaced or deleted through. Listings skip whatever is not a regular file or a
// directory.
//
// Put writes a temporary file ".tmp.<name>.<random>" beside the object's (O_EXCL|O_NOFOLLOW),
// syncs it and renames it over the object's name, then syncs the directory: a reader sees the
// old file or the new one, and the object is durable when Put returns. if_absent links the
// temporary file to the name instead (link fails if the name exists: of two writers racing, one
// wins); if_version holds an exclusive flock on the object's file, checks that the name still
// leads to it and that it has the version, then renames. A version is the file's inode number,
// modification time and size; each Put gives its file a modification time of the current second
// and random nanoseconds, so that a file that reuses an inode number does not take over its
// version. Temporary files left by a crash are never listed; their names are no key's
// (ValidateObjectKey).
//
// Unlike S3, a key cannot be both an object and a prefix of others followed by '/' ("a" and
// "a/b"): the Put that would make the second fails with EIO, and reading "a/b" where "a" is an
// object is EIO.
//
// Thread safety: safe for concurrent use, and by several processes on one directory.
#ifndef S3BLOCK_FILE_DIR_TRANSPORT_H_
#define S3BLOCK_FILE_DIR_TRANSPORT_H_

#include <memory>
#include <string>

#include "base/object_transport.h"
#include "base/safe_file.h"

namespace s3block {

class DirTransport : public ObjectTransport {
 public:
  // Opens the directory `root` (which may be a symlink: the administrator's choice); with
  // create, makes it first if it is missing.
  static Status Open(const std::string& root, bool create, std::unique_ptr<DirTransport>* out);

  // "dir:<root>".
  std::string Describe() const override { return "dir:" + root_; }
  // The fence is asked once, before anything is written.
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options = {},
             std::string* version = nullptr) override;
  // A file is never changed once it has its name: what is read is one version.
  Status Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info = nullptr) override;
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override;
  Status Head(const std::string& key, ObjectInfo* info) override;
  // Walks only the directories that keys with the prefix can be in; the keys are sorted before
  // fn sees them.
  Status List(const std::string& prefix,
              const std::function<void(const std::string& key, std::string_view version)>& fn)
      override;
  // The fence is asked once; each directory changed is synced once, at the end.
  Status Delete(std::span<const std::string> keys, const WriteFence* fence = nullptr) override;

 private:
  DirTransport(std::string root, UniqueFd root_fd);

  // Opens the directory `rel` ("" for the root, else "a/b") below the root; with create, makes
  // the missing ones (each new one durable in its parent).
  Status OpenDir(const std::string& rel, bool create, UniqueFd* dir) const;
  // Opens the directory of `key`'s file; *name is the file's name in it.
  Status OpenParent(const std::string& key, bool create, UniqueFd* dir, std::string* name) const;
  // Opens the object's file for reading, checked to be a regular file.
  Status OpenObject(const std::string& key, UniqueFd* fd, struct stat* st) const;
  Status PutIfAbsent(int dir, const std::string& key, const std::string& name,
                     std::span<const uint8_t> data, struct stat* written);
  Status PutIfVersion(int dir, const std::string& key, const std::string& name,
                      std::span<const uint8_t> data, const std::string& if_version,
                      struct stat* written);
  // Appends the regular files below dirfd ("rel" from the root, "" or ending in '/') whose keys
  // begin with `prefix`.
  Status Walk(int dirfd, const std::string& rel, const std::string& prefix,
              std::vector<std::pair<std::string, std::string>>* found) const;
  Status PreconditionFailed(const std::string& key, const char* why) const;
  std::string Path(std::string_view rel) const;

  const std::string root_;
  const UniqueFd root_fd_;
};

}  // namespace s3block

#endif  // S3BLOCK_FILE_DIR_TRANSPORT_H_
