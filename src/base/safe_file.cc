#include "base/safe_file.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "util/encoding.h"
#include "util/fd_io.h"

namespace s3block {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int UniqueFd::Close() {
  int r = fd_ >= 0 ? ::close(fd_) : 0;
  fd_ = -1;
  return r;
}

const char* FileTypeName(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symbolic link";
    case S_IFIFO: return "a FIFO";
    case S_IFSOCK: return "a socket";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    default: return "a file of unknown type";
  }
}

namespace {

Status Found(const std::string& path, mode_t mode, const char* wanted) {
  return Status::IoError(path + " is " + FileTypeName(mode) + ", not " + wanted +
                         " (refused: nothing there is followed, waited on or replaced)");
}

// A name that is not there: an ordinary answer (a block never written, an export not made), so
// its message is made without strerror, whose translation lookup takes glibc's locale lock on
// every call.
Status Missing(const std::string& path) {
  return Status::NotFound("open " + path + ": no such file or directory");
}

// After an open of name failed with err: EIO saying what is there if it is not what was wanted,
// else the errno as is.
Status OpenFailed(int dirfd, const std::string& name, int err, const std::string& path,
                  bool want_dir) {
  struct stat st;
  if (err != ENOENT && ::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)))
    return Found(path, st.st_mode, want_dir ? "a directory" : "a regular file");
  if (err == ENOENT) return Missing(path);
  return Status::FromErrno(err, "open " + path);
}

}  // namespace

Status OpenDirAt(int dirfd, const std::string& name, const std::string& path, bool follow,
                 UniqueFd* out) {
  out->Reset(::openat(dirfd, name.c_str(),
                      O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW)));
  if (!out->valid()) return OpenFailed(dirfd, name, errno, path, /*want_dir=*/true);
  return Status::Ok();
}

Status MakeDirAt(int dirfd, const std::string& name, mode_t mode, const std::string& path,
                 UniqueFd* out, bool* created) {
  *created = false;
  if (::mkdirat(dirfd, name.c_str(), mode) == 0)
    *created = true;
  else if (errno != EEXIST)
    return Status::FromErrno(errno, "mkdir " + path);
  return OpenDirAt(dirfd, name, path, /*follow=*/false, out);
}

namespace {

// Stats the open *out into *st and keeps it only if it is a regular file.
Status CheckRegular(UniqueFd* out, const std::string& path, struct stat* st) {
  if (::fstat(out->get(), st) != 0) {
    Status s = Status::FromErrno(errno, "stat " + path);
    out->Reset(-1);
    return s;
  }
  if (!S_ISREG(st->st_mode)) {
    out->Reset(-1);
    return Found(path, st->st_mode, "a regular file");
  }
  return Status::Ok();
}

}  // namespace

Status OpenFileAt(int dirfd, const std::string& name, int flags, mode_t mode,
                  const std::string& path, UniqueFd* out, struct stat* st) {
  out->Reset(::openat(dirfd, name.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode));
  if (!out->valid()) {
    const int err = errno;
    if (err == ENOENT) return Missing(path);
    return OpenFailed(dirfd, name, err, path, /*want_dir=*/false);
  }
  return CheckRegular(out, path, st);
}

Status OpenFileBeneath(int dirfd, const std::string& rel, const std::string& path, UniqueFd* out,
                       struct stat* st) {
  // openat2 resolves every component without following a link in one call; where the kernel or
  // a seccomp policy refuses it, each directory is opened on its own.
  static std::atomic<bool> no_openat2{false};
  if (!no_openat2.load(std::memory_order_relaxed)) {
    open_how how{};
    how.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    int fd = static_cast<int>(::syscall(SYS_openat2, dirfd, rel.c_str(), &how, sizeof how));
    if (fd >= 0) {
      out->Reset(fd);
      return CheckRegular(out, path, st);
    }
    if (errno == ENOENT) return Missing(path);
    if (errno == ENOSYS || errno == EPERM)
      no_openat2.store(true, std::memory_order_relaxed);
    // Anything else (ELOOP, ENOTDIR, EXDEV, ...) is told precisely by the walk below.
  }
  UniqueFd dir;
  int at = dirfd;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    if (slash == std::string::npos) break;
    UniqueFd next;
    S3B_RETURN_IF_ERROR(OpenDirAt(at, rel.substr(start, slash - start),
                                  path.substr(0, path.size() - (rel.size() - slash)),
                                  /*follow=*/false, &next));
    dir = std::move(next);
    at = dir.get();
    start = slash + 1;
  }
  return OpenFileAt(at, rel.substr(start), O_RDONLY, 0, path, out, st);
}

Status CheckRegularOrMissingAt(int dirfd, const std::string& name, const std::string& path,
                               bool* exists) {
  struct stat st;
  *exists = false;
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "stat " + path);
  }
  if (!S_ISREG(st.st_mode)) return Found(path, st.st_mode, "a regular file");
  *exists = true;
  return Status::Ok();
}

std::string RandomHex16() {
  // One getrandom() per 32 names: the names must not be guessable, and a system call per
  // temporary file would be a cost on the write path for nothing.
  thread_local uint8_t pool[256];
  thread_local size_t used = sizeof pool;
  if (used + 8 > sizeof pool) {
    size_t got = 0;
    while (got < sizeof pool) {
      ssize_t n = ::getrandom(pool + got, sizeof pool - got, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        // Not seen on Linux >= 3.17 with a seeded pool; names stay unique (O_EXCL retries).
        for (size_t i = got; i < sizeof pool; ++i)
          pool[i] = static_cast<uint8_t>(::getpid() * 131 + i * 7 + ::time(nullptr));
        break;
      }
      got += static_cast<size_t>(n);
    }
    used = 0;
  }
  std::string s = HexEncode(std::span<const uint8_t>(pool + used, 8));
  used += 8;
  return s;
}

Status CreateTempAt(int dirfd, const std::string& prefix, mode_t mode, const std::string& dir,
                    UniqueFd* out, std::string* name) {
  for (int attempt = 0;; ++attempt) {
    *name = prefix + RandomHex16();
    out->Reset(::openat(dirfd, name->c_str(),
                        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode));
    if (out->valid()) return Status::Ok();
    if (errno != EEXIST || attempt >= 8) return Status::FromErrno(errno, "create " + dir + "/" + *name);
  }
}

Status WriteAllFd(int fd, const void* data, size_t n, const std::string& path) {
  if (WriteFull(fd, data, n) < 0) return Status::FromErrno(errno, "write " + path);
  return Status::Ok();
}

Status WriteTempAt(int dirfd, const std::string& name, std::span<const uint8_t> data, bool sync,
                   const std::string& dir, std::string* tmp, struct stat* st,
                   const struct timespec* mtime) {
  UniqueFd fd;
  S3B_RETURN_IF_ERROR(CreateTempAt(dirfd, ".tmp." + name + ".", 0644, dir, &fd, tmp));
  const std::string path = dir + "/" + *tmp;
  Status s = WriteAllFd(fd.get(), data.data(), data.size(), path);
  if (s.ok() && mtime != nullptr) {
    const struct timespec times[2] = {{0, UTIME_OMIT}, *mtime};
    if (::futimens(fd.get(), times) != 0) s = Status::FromErrno(errno, "set the time of " + path);
  }
  // A time set is kept by fsync; fdatasync may leave it out.
  if (s.ok() && sync && (mtime != nullptr ? ::fsync(fd.get()) : ::fdatasync(fd.get())) != 0)
    s = Status::FromErrno(errno, (mtime != nullptr ? "fsync " : "fdatasync ") + path);
  if (s.ok() && st != nullptr && ::fstat(fd.get(), st) != 0) s = Status::FromErrno(errno, "stat " + path);
  if (fd.Close() != 0 && s.ok()) s = Status::FromErrno(errno, "close " + path);
  if (!s.ok()) ::unlinkat(dirfd, tmp->c_str(), 0);
  return s;
}

Status ReplaceFileAt(int dirfd, const std::string& name, std::span<const uint8_t> data, bool sync,
                     const std::string& dir, struct stat* written, const struct timespec* mtime) {
  const std::string path = dir + "/" + name;
  bool exists = false;
  // A rename would replace a link or a FIFO someone put there by a file: refused instead, so
  // that the oddity is seen.
  S3B_RETURN_IF_ERROR(CheckRegularOrMissingAt(dirfd, name, path, &exists));
  std::string tmp;
  S3B_RETURN_IF_ERROR(WriteTempAt(dirfd, name, data, sync, dir, &tmp, written, mtime));
  if (::renameat(dirfd, tmp.c_str(), dirfd, name.c_str()) == 0) return Status::Ok();
  Status s = Status::FromErrno(errno, "rename " + dir + "/" + tmp + " to " + path);
  ::unlinkat(dirfd, tmp.c_str(), 0);
  return s;
}

Status ReplaceFileAtomically(const std::string& path, std::string_view data) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..")
    return Status::InvalidArgument("'" + path + "' does not name a file");
  UniqueFd dfd;
  S3B_RETURN_IF_ERROR(OpenDirAt(AT_FDCWD, dir, dir, /*follow=*/true, &dfd));
  return ReplaceFileAt(
      dfd.get(), name,
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
      /*sync=*/false, dir);
}

Status CheckPrivateDirectory(const std::string& dir, const std::string& what) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return Status::FromErrno(errno, what + ": " + dir);
  std::string wrong;
  if (!S_ISDIR(st.st_mode))
    wrong = std::string("is ") + FileTypeName(st.st_mode) + ", not a directory";
  else if (st.st_uid != ::geteuid())
    wrong = "is owned by uid " + std::to_string(st.st_uid) + ", not by this server's uid " +
            std::to_string(::geteuid());
  else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
    wrong = "is writable by " +
            std::string((st.st_mode & S_IWGRP) && (st.st_mode & S_IWOTH) ? "group and others"
                        : (st.st_mode & S_IWGRP)                        ? "its group"
                                                                        : "others");
  if (wrong.empty()) return Status::Ok();
  return Status::Error(EACCES, what + ": directory " + dir + " " + wrong +
                                   "; another user could replace files in it (use a directory "
                                   "of this user's own, mode 0700)");
}

}  // namespace s3block
