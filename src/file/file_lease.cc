// FileStore's leases: an advisory lock (flock) on exports/<name>/lock, which also records the
// holder (file_store.h).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "base/safe_file.h"
#include "file/dir_io.h"
#include "file/file_store.h"
#include "s3block/params.h"

namespace s3block {
namespace {

using Fd = UniqueFd;

class FileLease : public ExportLease {
 public:
  explicit FileLease(int fd) : fd_(fd) {}
  ~FileLease() override {
    // Clear the holder before the lock goes, so nobody reads a stale name as a live holder. The
    // fd is the regular file opened at AcquireLease, never a link's target.
    if (::ftruncate(fd_, 0) != 0) { /* the lock is released by close either way */ }
    ::close(fd_);
  }

 private:
  int fd_;
};

std::string ReadHolder(int fd) {
  char buf[512];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return "another process";
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s.empty() ? "another process" : s;
}

}  // namespace

Status FileStore::AcquireLease(std::string_view export_name, const std::string& holder, bool force,
                               std::unique_ptr<ExportLease>* out) {
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/true, &dirs));
  std::string path = ExportDir(export_name) + "/lock";
  Fd fd;
  struct stat st;
  S3B_RETURN_IF_ERROR(OpenFileAt(dirs->exp, "lock", O_RDWR | O_CREAT, 0644, path, &fd, &st));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    std::string who = ReadHolder(fd.get());
    if (err == EWOULDBLOCK) {
      return Status::Busy("export '" + QuoteForMessage(export_name) + "' in " +
                                      Describe() + " is in use by " + who +
                                      "; stop that server first (or serve read-only with -r)");
    }
    return Status::FromErrno(err, "flock " + path);
  }
  // We are the export's only writer now: temporary files in its directory and the ones below it
  // (blocks/, and log/ and checkpoint/ of the log layout) were left by a writer that died
  // mid-write (they were never renamed into place, so they are not data).
  RemoveTempFiles(dirs->exp, ExportDir(export_name));
  std::vector<std::string> subdirs;
  (void)ListSubdirectories(dirs->exp, ExportDir(export_name), &subdirs);
  for (const std::string& name : subdirs) {
    const std::string path = ExportDir(export_name) + "/" + name;
    Fd sub;
    if (OpenDirAt(dirs->exp, name, path, /*follow=*/false, &sub).ok())
      RemoveTempFiles(sub.get(), path);
  }
  std::string text = holder + "\n";
  if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), text.data(), text.size(), 0) < 0)
    return Status::FromErrno(errno, "write " + path);
  *out = std::make_unique<FileLease>(fd.Release());
  return Status::Ok();
}

Status FileStore::QueryLease(std::string_view export_name, std::string* holder) {
  holder->clear();
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  if (dirs == nullptr) return Status::Ok();
  std::string path = ExportDir(export_name) + "/lock";
  Fd fd;
  struct stat st;
  Status s = OpenFileAt(dirs->exp, "lock", O_RDONLY, 0, path, &fd, &st);
  if (s.IsNotFound()) return Status::Ok();
  S3B_RETURN_IF_ERROR(s);
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) != 0) {
    int err = errno;
    if (err != EWOULDBLOCK) return Status::FromErrno(err, "flock " + path);
    *holder = ReadHolder(fd.get());
  }
  return Status::Ok();
}

}  // namespace s3block

