// Opening files in directories that other users may write into, without trusting what is there.
//
// Everything below a directory fd is opened with O_NOFOLLOW (a symlink is never followed), files
// with O_NONBLOCK (a FIFO is never waited on) and then checked with fstat: a symlink, FIFO,
// socket, device or directory where a regular file belongs, or anything but a directory where a
// directory belongs, is an I/O error (EIO) naming the path and what was found there. Temporary
// files are created with O_EXCL|O_NOFOLLOW under names with a random part.
#ifndef S3BLOCK_BASE_SAFE_FILE_H_
#define S3BLOCK_BASE_SAFE_FILE_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <span>
#include <string>
#include <string_view>

#include "s3block/status.h"

namespace s3block {

// Replaces the file at `path` with `data`: written to a new file with an unpredictable name in the same
// directory (O_EXCL|O_NOFOLLOW), then renamed over `path`. A reader sees the old or the new file.
Status ReplaceFileAtomically(const std::string& path, std::string_view data);

// Refuses (EACCES-like Status with a message naming `what` and `dir`) a directory that is not a real
// directory, is owned by another uid than geteuid(), or is writable by group or others.
Status CheckPrivateDirectory(const std::string& dir, const std::string& what);

// An owned file descriptor.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() { Reset(-1); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    Reset(o.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset(int fd);
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes, returning close()'s result (a delayed write error shows there on some file systems).
  int Close();

 private:
  int fd_;
};

// "a symbolic link", "a FIFO", "a directory", ... for a stat mode.
const char* FileTypeName(mode_t mode);

// Opens the directory `name` in dirfd (dirfd may be AT_FDCWD and name a path, for a directory
// the administrator named, which may be a symlink: follow=true). Without follow, a symlink or
// any non-directory at `name` is EIO naming `path`. A missing directory is ENOENT (as is).
Status OpenDirAt(int dirfd, const std::string& name, const std::string& path, bool follow,
                 UniqueFd* out);
// As OpenDirAt, but first creates the directory with `mode` if it is missing; *created tells.
Status MakeDirAt(int dirfd, const std::string& name, mode_t mode, const std::string& path,
                 UniqueFd* out, bool* created);

// Opens the regular file `name` in dirfd with `flags` (O_RDONLY, O_WRONLY, O_RDWR, O_CREAT ...;
// O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC are added) and fstats it into *st. A missing file is ENOENT
// (kNotFound) with *out invalid (callers that accept it test IsNotFound()); anything but a regular
// file is EIO (kIo) naming `path` and what is there.
Status OpenFileAt(int dirfd, const std::string& name, int flags, mode_t mode,
                  const std::string& path, UniqueFd* out, struct stat* st);

// Opens `rel` ("a/b/c", no "..") below dirfd for reading, never following a symlink in any
// component, and checks it is a regular file, as OpenFileAt.
Status OpenFileBeneath(int dirfd, const std::string& rel, const std::string& path, UniqueFd* out,
                       struct stat* st);

// Checks that `name` in dirfd is a regular file or missing (*exists says which), without
// following a symlink: whatever else is there is EIO naming `path`.
Status CheckRegularOrMissingAt(int dirfd, const std::string& name, const std::string& path,
                               bool* exists);

// Creates a new file "<prefix><16 random hex digits>" in dirfd (O_WRONLY|O_CREAT|O_EXCL|
// O_NOFOLLOW), trying other names if one exists. *name is the name made; `dir` names dirfd in
// messages.
Status CreateTempAt(int dirfd, const std::string& prefix, mode_t mode, const std::string& dir,
                    UniqueFd* out, std::string* name);

// 16 hex digits from the kernel's random source (buffered per thread).
std::string RandomHex16();

// Writes all of data to fd; `path` names it in the error.
Status WriteAllFd(int fd, const void* data, size_t n, const std::string& path);

// Writes `data` to a new temporary file ".tmp.<name>.<random>" in dirfd and closes it; with
// sync, its data is on disk first; with mtime, that is its modification time. *tmp is its name,
// *st (when given) what fstat said of it when written. On an error nothing is left.
Status WriteTempAt(int dirfd, const std::string& name, std::span<const uint8_t> data, bool sync,
                   const std::string& dir, std::string* tmp, struct stat* st = nullptr,
                   const struct timespec* mtime = nullptr);

// Writes `data` to a temporary file in dirfd (WriteTempAt) and renames it to `name`, which must
// be a regular file or missing (else EIO, and nothing is changed). With sync, the data is on
// disk before the rename (the directory entry is the caller's to sync). *written, *mtime: as
// *st and mtime of WriteTempAt.
Status ReplaceFileAt(int dirfd, const std::string& name, std::span<const uint8_t> data, bool sync,
                     const std::string& dir, struct stat* written = nullptr,
                     const struct timespec* mtime = nullptr);

}  // namespace s3block

#endif  // S3BLOCK_BASE_SAFE_FILE_H_
