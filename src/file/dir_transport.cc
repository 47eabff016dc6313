#include "file/dir_transport.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <map>

#include "file/dir_io.h"
#include "util/fd_io.h"

namespace s3block {
namespace {

std::string VersionOf(const struct stat& st) {
  char buf[64];
  const uint64_t mtime_ns = static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000u +
                            static_cast<uint64_t>(st.st_mtim.tv_nsec);
  std::snprintf(buf, sizeof buf, "%" PRIx64 "-%" PRIx64 "-%" PRIx64,
                static_cast<uint64_t>(st.st_ino), mtime_ns, static_cast<uint64_t>(st.st_size));
  return buf;
}

// The modification time of a new object's file: this second, and random nanoseconds (see the
// header: versions).
struct timespec NewMtime() {
  struct timespec t {};
  ::clock_gettime(CLOCK_REALTIME, &t);
  t.tv_nsec = static_cast<long>(std::stoull(RandomHex16().substr(0, 8), nullptr, 16) % 1000000000u);
  return t;
}

// "a/b" for the key "a/b/c", "" for "c".
std::string ParentOf(const std::string& key) {
  const size_t slash = key.rfind('/');
  return slash == std::string::npos ? "" : key.substr(0, slash);
}

Status AskFence(const WriteFence* fence) {
  if (fence == nullptr) return Status::Ok();
  double left = 0;
  return (*fence)(&left);
}

}  // namespace

DirTransport::DirTransport(std::string root, UniqueFd root_fd)
    : root_(std::move(root)), root_fd_(std::move(root_fd)) {}

Status DirTransport::Open(const std::string& root, bool create, std::unique_ptr<DirTransport>* out) {
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  if (r.empty()) return Status::InvalidArgument("no directory named for the objects");
  if (create && ::mkdir(r.c_str(), 0755) != 0 && errno != EEXIST)
    return Status::FromErrno(errno, "mkdir " + r);
  UniqueFd fd;
  S3B_RETURN_IF_ERROR(OpenDirAt(AT_FDCWD, r, r, /*follow=*/true, &fd));
  out->reset(new DirTransport(std::move(r), std::move(fd)));
  return Status::Ok();
}

std::string DirTransport::Path(std::string_view rel) const {
  return rel.empty() ? root_ : root_ + "/" + std::string(rel);
}

Status DirTransport::OpenDir(const std::string& rel, bool create, UniqueFd* dir) const {
  UniqueFd cur(::fcntl(root_fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!cur.valid()) return Status::FromErrno(errno, "dup the descriptor of " + root_);
  size_t start = 0;
  while (start < rel.size()) {
    const size_t slash = std::min(rel.find('/', start), rel.size());
    const std::string part = rel.substr(start, slash - start);
    const std::string path = Path(std::string_view(rel).substr(0, slash));
    UniqueFd next;
    if (create) {
      bool created = false;
      S3B_RETURN_IF_ERROR(MakeDirAt(cur.get(), part, 0755, path, &next, &created));
      if (created)
        S3B_RETURN_IF_ERROR(FsyncFd(cur.get(), Path(std::string_view(rel).substr(0, start == 0 ? 0 : start - 1))));
    } else {
      S3B_RETURN_IF_ERROR(OpenDirAt(cur.get(), part, path, /*follow=*/false, &next));
    }
    cur = std::move(next);
    start = slash + 1;
  }
  *dir = std::move(cur);
  return Status::Ok();
}

Status DirTransport::OpenParent(const std::string& key, bool create, UniqueFd* dir,
                                std::string* name) const {
  const size_t slash = key.rfind('/');
  *name = slash == std::string::npos ? key : key.substr(slash + 1);
  return OpenDir(ParentOf(key), create, dir);
}

Status DirTransport::OpenObject(const std::string& key, UniqueFd* fd, struct stat* st) const {
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  return OpenFileBeneath(root_fd_.get(), key, Path(key), fd, st);
}

Status DirTransport::PreconditionFailed(const std::string& key, const char* why) const {
  return Status::AlreadyExists(Path(key) + " " + why);
}

Status DirTransport::Put(const std::string& key, std::span<const uint8_t> data,
                         const PutOptions& options, std::string* version) {
  S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  if (options.if_absent && !options.if_version.empty())
    return Status::InvalidArgument("a Put is either if_absent or if_version, not both");
  S3B_RETURN_IF_ERROR(AskFence(options.fence));
  UniqueFd dir;
  std::string name;
  struct stat written {};
  if (!options.if_version.empty()) {
    Status s = OpenParent(key, /*create=*/false, &dir, &name);
    if (s.IsNotFound()) return PreconditionFailed(key, "does not exist");
    S3B_RETURN_IF_ERROR(s);
    S3B_RETURN_IF_ERROR(PutIfVersion(dir.get(), key, name, data, options.if_version, &written));
  } else {
    S3B_RETURN_IF_ERROR(OpenParent(key, /*create=*/true, &dir, &name));
    if (options.if_absent) {
      S3B_RETURN_IF_ERROR(PutIfAbsent(dir.get(), key, name, data, &written));
    } else {
      const struct timespec mtime = NewMtime();
      S3B_RETURN_IF_ERROR(ReplaceFileAt(dir.get(), name, data, /*sync=*/true, Path(ParentOf(key)),
                                        &written, &mtime));
    }
  }
  S3B_RETURN_IF_ERROR(FsyncFd(dir.get(), Path(ParentOf(key))));
  if (version != nullptr) *version = VersionOf(written);
  return Status::Ok();
}

Status DirTransport::PutIfAbsent(int dir, const std::string& key, const std::string& name,
                                 std::span<const uint8_t> data, struct stat* written) {
  bool exists = false;
  S3B_RETURN_IF_ERROR(CheckRegularOrMissingAt(dir, name, Path(key), &exists));
  if (exists) return PreconditionFailed(key, "exists already");
  const struct timespec mtime = NewMtime();
  std::string tmp;
  const std::string dir_path = Path(ParentOf(key));
  S3B_RETURN_IF_ERROR(WriteTempAt(dir, name, data, /*sync=*/true, dir_path, &tmp, written, &mtime));
  // link(), unlike rename(), fails if the name exists: of two writers, one makes the object.
  const int linked = ::linkat(dir, tmp.c_str(), dir, name.c_str(), 0);
  const int err = errno;
  ::unlinkat(dir, tmp.c_str(), 0);
  if (linked == 0) return Status::Ok();
  if (err != EEXIST) return Status::FromErrno(err, "link " + dir_path + "/" + tmp + " to " + Path(key));
  S3B_RETURN_IF_ERROR(CheckRegularOrMissingAt(dir, name, Path(key), &exists));
  return PreconditionFailed(key, "exists already");
}

Status DirTransport::PutIfVersion(int dir, const std::string& key, const std::string& name,
                                  std::span<const uint8_t> data, const std::string& if_version,
                                  struct stat* written) {
  UniqueFd fd;
  struct stat st;
  Status s = OpenFileAt(dir, name, O_RDONLY, 0, Path(key), &fd, &st);
  if (s.IsNotFound()) return PreconditionFailed(key, "does not exist");
  S3B_RETURN_IF_ERROR(s);
  // Writers of a version take turns on the file; the one after finds the name leading to
  // another file.
  while (::flock(fd.get(), LOCK_EX) != 0)
    if (errno != EINTR) return Status::FromErrno(errno, "flock " + Path(key));
  struct stat now;
  if (::fstatat(dir, name.c_str(), &now, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return PreconditionFailed(key, "does not exist");
    return Status::FromErrno(errno, "stat " + Path(key));
  }
  if (now.st_ino != st.st_ino || now.st_dev != st.st_dev || VersionOf(st) != if_version)
    return PreconditionFailed(key, "has another version");
  const struct timespec mtime = NewMtime();
  return ReplaceFileAt(dir, name, data, /*sync=*/true, Path(ParentOf(key)),
                       written, &mtime);
}

Status DirTransport::Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info) {
  data->clear();
  UniqueFd fd;
  struct stat st;
  S3B_RETURN_IF_ERROR(OpenObject(key, &fd, &st));
  // A file is never changed once it has its name (Put replaces it): its size stays.
  data->resize(static_cast<size_t>(st.st_size));
  const ssize_t n = PreadFull(fd.get(), data->data(), data->size(), 0);
  if (n < 0) {
    data->clear();
    return Status::FromErrno(errno, "read " + Path(key));
  }
  data->resize(static_cast<size_t>(n));
  if (info != nullptr) {
    info->size = data->size();
    info->version = VersionOf(st);
  }
  return Status::Ok();
}

Status DirTransport::GetRange(const std::string& key, uint64_t offset, uint64_t length,
                              std::vector<uint8_t>* data) {
  data->clear();
  UniqueFd fd;
  struct stat st;
  S3B_RETURN_IF_ERROR(OpenObject(key, &fd, &st));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset >= size || length == 0) return Status::Ok();
  data->resize(static_cast<size_t>(std::min(length, size - offset)));
  const ssize_t n = PreadFull(fd.get(), data->data(), data->size(), static_cast<off_t>(offset));
  if (n < 0) {
    data->clear();
    return Status::FromErrno(errno, "read " + Path(key));
  }
  data->resize(static_cast<size_t>(n));
  return Status::Ok();
}

Status DirTransport::Head(const std::string& key, ObjectInfo* info) {
  UniqueFd fd;
  struct stat st;
  S3B_RETURN_IF_ERROR(OpenObject(key, &fd, &st));
  info->size = static_cast<uint64_t>(st.st_size);
  info->version = VersionOf(st);
  return Status::Ok();
}

Status DirTransport::Walk(int dirfd, const std::string& rel, const std::string& prefix,
                          std::vector<std::pair<std::string, std::string>>* found) const {
  std::vector<std::string> subdirs;
  S3B_RETURN_IF_ERROR(ForEachEntry(dirfd, Path(rel), [&](int dfd, const char* name) {
    const std::string n = name;
    if (n == "." || n == "..") return;
    const std::string key = rel + n;
    struct stat st;
    if (::fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;  // gone meanwhile
    if (S_ISDIR(st.st_mode)) {
      const std::string sub = key + "/";
      if (sub.starts_with(prefix) || prefix.starts_with(sub)) subdirs.push_back(n);
    } else if (S_ISREG(st.st_mode) && key.starts_with(prefix) && !n.starts_with(".tmp.")) {
      found->emplace_back(key, VersionOf(st));
    }
  }));
  for (const std::string& n : subdirs) {
    UniqueFd sub;
    Status s = OpenDirAt(dirfd, n, Path(rel + n), /*follow=*/false, &sub);
    if (s.IsNotFound()) continue;  // removed meanwhile
    S3B_RETURN_IF_ERROR(s);
    S3B_RETURN_IF_ERROR(Walk(sub.get(), rel + n + "/", prefix, found));
  }
  return Status::Ok();
}

Status DirTransport::List(
    const std::string& prefix,
    const std::function<void(const std::string& key, std::string_view version)>& fn) {
  // The directory the prefix names whole; a prefix no key can have lists nothing.
  const size_t slash = prefix.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : prefix.substr(0, slash);
  if (!dir.empty() && !ValidateObjectKey(dir + "/x").ok()) return Status::Ok();
  UniqueFd fd;
  Status s = OpenDir(dir, /*create=*/false, &fd);
  if (s.IsNotFound()) return Status::Ok();
  S3B_RETURN_IF_ERROR(s);
  std::vector<std::pair<std::string, std::string>> found;
  S3B_RETURN_IF_ERROR(Walk(fd.get(), dir.empty() ? "" : dir + "/", prefix, &found));
  std::sort(found.begin(), found.end());
  for (const auto& [key, version] : found) fn(key, version);
  return Status::Ok();
}

Status DirTransport::Delete(std::span<const std::string> keys, const WriteFence* fence) {
  for (const std::string& key : keys) S3B_RETURN_IF_ERROR(ValidateObjectKey(key));
  if (keys.empty()) return Status::Ok();
  S3B_RETURN_IF_ERROR(AskFence(fence));
  // The directories of the keys, each opened once; those changed are synced at the end.
  struct Dir {
    UniqueFd fd;
    bool changed = false;
  };
  std::map<std::string, Dir> dirs;
  Status s;
  for (const std::string& key : keys) {
    const std::string rel = ParentOf(key);
    const std::string name = key.substr(rel.empty() ? 0 : rel.size() + 1);
    auto [it, inserted] = dirs.try_emplace(rel);
    if (inserted) {
      s = OpenDir(rel, /*create=*/false, &it->second.fd);
      if (s.IsNotFound()) s = Status::Ok();
      if (!s.ok()) break;
    }
    if (!it->second.fd.valid()) continue;  // no directory: no object
    bool exists = false;
    s = CheckRegularOrMissingAt(it->second.fd.get(), name, Path(key), &exists);
    if (!s.ok()) break;
    if (!exists) continue;
    if (::unlinkat(it->second.fd.get(), name.c_str(), 0) == 0) {
      it->second.changed = true;
    } else if (errno != ENOENT) {
      s = Status::FromErrno(errno, "unlink " + Path(key));
      break;
    }
  }
  for (auto& [rel, dir] : dirs) {
    if (!dir.changed) continue;
    Status synced = FsyncFd(dir.fd.get(), Path(rel));
    if (s.ok()) s = synced;
  }
  return s;
}

}  // namespace s3block
