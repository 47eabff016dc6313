#include "file/dir_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "base/safe_file.h"

namespace s3block {
namespace {

// How long a reader waits for a writer in another process. A writer holds the lock while it
// writes one block, so this is reached only if something else holds it.
constexpr auto kReadLockWait = std::chrono::seconds(10);

}  // namespace

Status FsyncFd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return Status::FromErrno(errno, "fsync " + path);
  return Status::Ok();
}

Status FsyncDir(const std::string& path) {
  UniqueFd fd;
  S3B_RETURN_IF_ERROR(OpenDirAt(AT_FDCWD, path, path, /*follow=*/true, &fd));
  return FsyncFd(fd.get(), path);
}

Status WriteFileAtomically(const std::string& path, std::string_view data) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  UniqueFd dfd;
  S3B_RETURN_IF_ERROR(OpenDirAt(AT_FDCWD, dir, dir, /*follow=*/true, &dfd));
  S3B_RETURN_IF_ERROR(ReplaceFileAt(
      dfd.get(), path.substr(slash + 1),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()), true,
      dir));
  return FsyncFd(dfd.get(), dir);
}

bool TryOfdLock(int fd, short type, int* err) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  for (;;) {
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return true;
    if (errno != EINTR) break;
  }
  *err = errno;
  return false;
}

void OfdUnlock(int fd) {
  struct flock fl {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  ::fcntl(fd, F_OFD_SETLK, &fl);
}


Status ReadLock(int fd, const std::string& path) {
  int err = 0;
  if (TryOfdLock(fd, F_RDLCK, &err)) return Status::Ok();
  if (err != EAGAIN && err != EACCES) return Status::Ok();  // no locks here (ENOLCK, EINVAL)
  const auto deadline = std::chrono::steady_clock::now() + kReadLockWait;
  auto pause = std::chrono::microseconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(5));
    if (TryOfdLock(fd, F_RDLCK, &err)) return Status::Ok();
    if (err != EAGAIN && err != EACCES) return Status::Ok();
  }
  return Status::IoError(path + " stayed locked for writing by another process for " +
                         std::to_string(kReadLockWait.count()) + " seconds");
}

Status ForEachEntry(int dirfd, const std::string& path,
                    const std::function<void(int dfd, const char* name)>& fn) {
  int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    Status s = Status::FromErrno(errno, "opendir " + path);
    ::close(fd);
    return s;
  }
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    fn(::dirfd(d), e->d_name);
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno(err, "readdir " + path);
  return Status::Ok();
}

Status ListSubdirectories(int dirfd, const std::string& path, std::vector<std::string>* names) {
  return ForEachEntry(dirfd, path, [&](int dfd, const char* name) {
    struct stat st;
    if (std::strcmp(name, ".") != 0 && std::strcmp(name, "..") != 0 &&
        ::fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
      names->push_back(name);
  });
}

void RemoveTempFiles(int dirfd, const std::string& path) {
  (void)ForEachEntry(dirfd, path, [](int dfd, const char* name) {
    if (std::strncmp(name, ".tmp.", 5) == 0) ::unlinkat(dfd, name, 0);
  });
}

}  // namespace s3block
