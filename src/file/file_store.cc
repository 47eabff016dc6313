#include "file/file_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <liburing.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "base/safe_file.h"
#include "file/dir_io.h"
#include "s3block/params.h"
#include "util/block_id.h"
#include "util/fd_io.h"

namespace s3block {
namespace {

// Above this many files to sync, one syncfs() is cheaper than a fdatasync() per file.
constexpr size_t kSyncfsThreshold = 128;

using Fd = UniqueFd;

Status WriteAll(int fd, const uint8_t* p, size_t n, const std::string& path) {
  return WriteAllFd(fd, p, n, path);
}

// Opens the file of block `name` in the blocks directory for reading, checks it and takes its
// read lock. *size is its length, or 0 if there is no file or an empty one: both read as a block
// never written. (A new block's file takes its name at its full length, but one stored by a
// temporary file and a rename, where unnamed files cannot be made, may be left empty by a crash
// of the machine before its data reached the disk: the block it was to replace did not exist,
// since a replaced block keeps its old data until the rename is durable.) The length is taken
// before the lock: in-place writers keep it.
Status OpenBlockFile(int blocks_fd, const std::string& name, const std::string& path, Fd* fd,
                     size_t* size) {
  *size = 0;
  struct stat st;
  Status s = OpenFileAt(blocks_fd, name, O_RDONLY, 0, path, fd, &st);
  if (!s.ok()) return s.IsNotFound() ? Status::Ok() : s;
  if (st.st_size > static_cast<off_t>(kMaxBlockSize) * 2)
    return Status::IoError(path + " is " + std::to_string(st.st_size) + " bytes, far larger than any block");
  if (st.st_size == 0) return Status::Ok();
  S3B_RETURN_IF_ERROR(ReadLock(fd->get(), path));
  *size = static_cast<size_t>(st.st_size);
  return Status::Ok();
}

// Reads the file from byte `done` into the rest of *data, which is cut short where the file ends.
Status ReadRest(int fd, Bytes* data, size_t done, const std::string& path) {
  ssize_t r = PreadFull(fd, data->data() + done, data->size() - done, static_cast<off_t>(done));
  if (r < 0) return Status::FromErrno(errno, "read " + path);
  data->resize(done + static_cast<size_t>(r));
  return Status::Ok();
}

// The blocks of one ReadBatch call that are read with one io_uring submission.
constexpr unsigned kRingEntries = 32;

// Whether this kernel lets us read files with io_uring (it may be too old, or a seccomp policy,
// such as a container runtime's, may refuse it).
bool IoUringReads() {
  static const bool available = [] {
    io_uring ring;
    if (io_uring_queue_init(2, &ring, 0) != 0) return false;
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    const bool ok = probe != nullptr && io_uring_opcode_supported(probe, IORING_OP_READ);
    if (probe != nullptr) io_uring_free_probe(probe);
    io_uring_queue_exit(&ring);
    return ok;
  }();
  return available;
}

// The calling thread's ring for ReadBatch, made on first use (the threads that read batches are
// few and long-lived: the cache's fetchers).
class ThreadRing {
 public:
  ~ThreadRing() { Drop(); }
  // nullptr if io_uring is not available (or failed on this thread): read one block at a time.
  io_uring* Get() {
    if (!ready_ && !broken_ && IoUringReads()) {
      if (io_uring_queue_init(kRingEntries, &ring_, 0) == 0)
        ready_ = true;
      else
        broken_ = true;
    }
    return ready_ ? &ring_ : nullptr;
  }
  // Gives the ring up for good. Requests not yet submitted are discarded with it.
  void Drop() {
    if (ready_) io_uring_queue_exit(&ring_);
    ready_ = false;
    broken_ = true;
  }

 private:
  io_uring ring_{};
  bool ready_ = false;
  bool broken_ = false;
};

thread_local ThreadRing t_ring;

}  // namespace

namespace {
std::string StripTrailingSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}
}  // namespace

FileStore::FileStore(std::string root) : root_(StripTrailingSlashes(std::move(root))) {}

FileStore::~FileStore() {
  if (exports_fd_ >= 0) ::close(exports_fd_);
  if (root_fd_ >= 0) ::close(root_fd_);
}

FileStore::Dirs::~Dirs() {
  if (blocks >= 0) ::close(blocks);
  if (exp >= 0) ::close(exp);
}

std::string FileStore::ExportDir(std::string_view export_name) const {
  return root_ + "/exports/" + std::string(export_name);
}
std::string FileStore::BlocksDir(std::string_view export_name) const {
  return ExportDir(export_name) + "/blocks";
}
std::string FileStore::BlockPath(std::string_view export_name, uint64_t id) const {
  return BlocksDir(export_name) + "/" + std::to_string(id);
}

Status FileStore::ExportsFd(int* fd) {
  MutexLock lock(&mu_);
  if (exports_fd_ < 0) {
    if (root_.empty() || root_[0] != '/')
      return Status::InvalidArgument("store directory '" + root_ + "' is not an absolute path");
    // The root is the administrator's choice: it may be a symlink. Below it nothing is followed.
    Fd root, exports;
    bool created = false;
    S3B_RETURN_IF_ERROR(
        OpenDirAt(AT_FDCWD, root_, root_, /*follow=*/true, &root).Annotate("store directory"));
    S3B_RETURN_IF_ERROR(MakeDirAt(root.get(), "exports", 0755, root_ + "/exports", &exports, &created)
                            .Annotate("store directory"));
    if (created) S3B_RETURN_IF_ERROR(FsyncFd(root.get(), root_));
    root_fd_ = root.Release();
    exports_fd_ = exports.Release();
  }
  *fd = exports_fd_;
  return Status::Ok();
}

Status FileStore::Check() {
  if (root_.empty() || root_[0] != '/')
    return Status::InvalidArgument("store directory '" + root_ + "' is not an absolute path");
  if (::mkdir(root_.c_str(), 0755) != 0 && errno != EEXIST)
    return Status::FromErrno(errno, "store directory: mkdir " + root_);
  int exports = -1;
  S3B_RETURN_IF_ERROR(ExportsFd(&exports));
  if (::access(root_.c_str(), W_OK | X_OK) != 0 ||
      ::faccessat(exports, ".", W_OK | X_OK, 0) != 0)
    return Status::FromErrno(errno, "store directory " + root_ + " is not writable");
  return Status::Ok();
}

FileStore::Pending& FileStore::PendingFor(std::string_view export_name) {
  auto it = pending_.find(std::string(export_name));
  if (it == pending_.end()) it = pending_.emplace(std::string(export_name), Pending{}).first;
  return it->second;
}

Status FileStore::GetDirs(std::string_view export_name, bool create,
                          std::shared_ptr<const Dirs>* out) {
  const std::string name(export_name);
  {
    MutexLock lock(&mu_);
    auto it = dirs_.find(name);
    if (it != dirs_.end()) {
      *out = it->second;
      return Status::Ok();
    }
  }
  out->reset();
  int exports = -1;
  S3B_RETURN_IF_ERROR(ExportsFd(&exports));
  const std::string exp_path = ExportDir(export_name), blocks_path = BlocksDir(export_name);
  Fd exp, blocks;
  if (create) {
    // Each new entry is made durable in its parent at once, since a block renamed into a
    // directory whose own entry is lost would be lost too.
    bool c1 = false, c2 = false;
    S3B_RETURN_IF_ERROR(MakeDirAt(exports, name, 0755, exp_path, &exp, &c1));
    S3B_RETURN_IF_ERROR(MakeDirAt(exp.get(), "blocks", 0755, blocks_path, &blocks, &c2));
    if (c1) S3B_RETURN_IF_ERROR(FsyncFd(exports, root_ + "/exports"));
    if (c2) S3B_RETURN_IF_ERROR(FsyncFd(exp.get(), exp_path));
  } else {
    Status s = OpenDirAt(exports, name, exp_path, /*follow=*/false, &exp);
    if (s.ok()) s = OpenDirAt(exp.get(), "blocks", blocks_path, /*follow=*/false, &blocks);
    if (s.IsNotFound()) return Status::Ok();
    S3B_RETURN_IF_ERROR(s);
  }
  auto dirs = std::make_shared<Dirs>();
  dirs->exp = exp.Release();
  dirs->blocks = blocks.Release();
  MutexLock lock(&mu_);
  auto [it, inserted] = dirs_.emplace(name, std::move(dirs));
  *out = it->second;  // another thread's, if it was first: the same directories
  return Status::Ok();
}

Status FileStore::CloseExport(std::string_view export_name) {
  S3B_RETURN_IF_ERROR(Flush(export_name));
  DropDirs(export_name);
  return Status::Ok();
}

void FileStore::DropDirs(std::string_view export_name) {
  std::shared_ptr<const Dirs> old;
  MutexLock lock(&mu_);
  auto it = dirs_.find(std::string(export_name));
  if (it == dirs_.end()) return;
  old = std::move(it->second);
  dirs_.erase(it);
}

std::shared_mutex& FileStore::BlockLock(std::string_view export_name, uint64_t id) {
  const size_t h = std::hash<std::string_view>{}(export_name) ^ (id * 0x9E3779B97F4A7C15ull);
  return block_locks_[(h ^ (h >> 29)) % kBlockLocks];
}

Status FileStore::Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) {
  data->clear();
  *found = false;
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  if (dirs == nullptr) return Status::Ok();
  std::string path = BlockPath(export_name, id);
  std::shared_lock<std::shared_mutex> block_lock(BlockLock(export_name, id));
  Fd fd;
  size_t size = 0;
  S3B_RETURN_IF_ERROR(OpenBlockFile(dirs->blocks, std::to_string(id), path, &fd, &size));
  if (size == 0) return Status::Ok();
  data->resize(size);
  S3B_RETURN_IF_ERROR(ReadRest(fd.get(), data, 0, path));
  *found = true;
  return Status::Ok();
}

size_t FileStore::ReadBatchSize(std::string_view) const { return IoUringReads() ? kRingEntries : 1; }

void FileStore::ReadBatch(std::string_view export_name, std::span<BlockRead> reads) {
  while (!reads.empty()) {
    const size_t n = std::min<size_t>(reads.size(), kRingEntries);
    ReadBatchPart(export_name, reads.first(n));
    reads = reads.subspan(n);
  }
}

void FileStore::ReadBatchPart(std::string_view export_name, std::span<BlockRead> reads) {
  io_uring* ring = reads.size() > 1 ? t_ring.Get() : nullptr;
  if (ring == nullptr) {
    BlockStore::ReadBatch(export_name, reads);
    return;
  }
  // Every block's lock, shared, for the whole batch; each lock once (a shared_mutex must not be
  // locked twice by one thread), in address order. Writers take one block lock at a time, so
  // readers of batches cannot deadlock with them or with each other.
  std::array<std::shared_mutex*, kRingEntries> locks;
  size_t nlocks = 0;
  for (const BlockRead& r : reads) locks[nlocks++] = &BlockLock(export_name, r.id);
  std::sort(locks.begin(), locks.begin() + nlocks);
  nlocks = static_cast<size_t>(std::unique(locks.begin(), locks.begin() + nlocks) - locks.begin());
  for (size_t i = 0; i < nlocks; ++i) locks[i]->lock_shared();
  struct Unlock {
    std::span<std::shared_mutex*> held;
    ~Unlock() {
      for (std::shared_mutex* m : held) m->unlock_shared();
    }
  } unlock{std::span<std::shared_mutex*>(locks.data(), nlocks)};

  std::shared_ptr<const Dirs> dirs;
  if (Status s = GetDirs(export_name, /*create=*/false, &dirs); !s.ok()) {
    for (BlockRead& r : reads) {
      r.data->clear();
      r.found = false;
      r.status = s;
    }
    return;
  }
  struct File {
    Fd fd;
    std::string path;
    size_t done = 0;  // bytes read so far
  };
  std::array<File, kRingEntries> files;
  unsigned queued = 0;
  for (size_t i = 0; i < reads.size(); ++i) {
    BlockRead& r = reads[i];
    r.data->clear();
    r.found = false;
    files[i].path = BlockPath(export_name, r.id);
    size_t size = 0;
    r.status = dirs == nullptr ? Status::Ok()
                               : OpenBlockFile(dirs->blocks, std::to_string(r.id), files[i].path,
                                               &files[i].fd, &size);
    if (!r.status.ok() || size == 0) {
      files[i].fd.Reset(-1);
      continue;
    }
    r.data->resize(size);
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (sqe == nullptr) continue;  // not seen (the ring is empty, and as large as a batch): read below
    io_uring_prep_read(sqe, files[i].fd.get(), r.data->data(), static_cast<unsigned>(size), 0);
    io_uring_sqe_set_data64(sqe, i);
    ++queued;
  }
  int submitted = queued > 0 ? io_uring_submit(ring) : 0;
  bool give_up = submitted < static_cast<int>(queued);
  if (submitted < 0) submitted = 0;
  for (int got = 0; got < submitted;) {
    io_uring_cqe* cqe = nullptr;
    int w = io_uring_wait_cqe(ring, &cqe);
    if (w == -EINTR || w == -EAGAIN) continue;
    if (w < 0) {
      // Not seen in practice (the completion queue is twice the largest batch, so it cannot
      // overflow). The reads still in flight are given up with the ring, and read below.
      give_up = true;
      break;
    }
    const size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    ++got;
    if (res >= 0)
      files[i].done = static_cast<size_t>(res);
    else if (res != -EINTR && res != -EAGAIN && res != -ECANCELED)
      reads[i].status = Status::FromErrno(-res, "read " + files[i].path);
  }
  if (give_up) t_ring.Drop();  // from now on this thread reads one block at a time
  // What the ring did not read (a short read, a read it gave up, or one never submitted) is
  // read here.
  for (size_t i = 0; i < reads.size(); ++i) {
    BlockRead& r = reads[i];
    if (files[i].fd.get() < 0 || !r.status.ok()) continue;
    r.status = ReadRest(files[i].fd.get(), r.data, files[i].done, files[i].path);
    r.found = r.status.ok();
  }
}


Status FileStore::Write(std::string_view export_name, uint64_t id, std::span<const uint8_t> data,
                        bool fua) {
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/true, &dirs));
  S3B_RETURN_IF_ERROR(ReplaceFileAt(dirs->blocks, std::to_string(id), data, fua, BlocksDir(export_name)));
  return FileAdded(export_name, *dirs, id, fua);
}

Status FileStore::FileAdded(std::string_view export_name, const Dirs& dirs, uint64_t id, bool fua) {
  if (fua) return FsyncFd(dirs.blocks, BlocksDir(export_name));
  MutexLock lock(&mu_);
  Pending& p = PendingFor(export_name);
  p.files.insert(id);
  p.blocks_dir_changed = true;
  return Status::Ok();
}

Status FileStore::Overwrite(std::string_view export_name, uint64_t id,
                            std::span<const uint8_t> data, bool fua) {
  bool done = false, missing = false;
  S3B_RETURN_IF_ERROR(OverwriteInPlace(export_name, id, data, fua, &done, &missing));
  if (!done && missing) S3B_RETURN_IF_ERROR(CreateInPlace(export_name, id, data, fua, &done));
  return done ? Status::Ok() : Write(export_name, id, data, fua);
}

Status FileStore::CreateInPlace(std::string_view export_name, uint64_t id,
                                std::span<const uint8_t> data, bool fua, bool* done) {
  *done = false;
  if (data.empty()) return Status::Ok();
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/true, &dirs));
  const std::string name = std::to_string(id);
  const std::string path = BlockPath(export_name, id);
  // The file has no name until it is whole, so no reader and no kill of the server finds it
  // half made, and one that fails goes with its descriptor.
  Fd fd(::openat(dirs->blocks, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC, 0644));
  // Where it cannot be made, Write stores the block by a temporary file and a rename, or says
  // why: that is also the way on a file system without unnamed files (EOPNOTSUPP, EISDIR, EINVAL).
  if (fd.get() < 0) return Status::Ok();
  // The full length before any data, and so before the link: a crash of the machine before the
  // data is on disk leaves no file or a whole block whose unwritten pages read as zeros (what the
  // block held), never a short file, which would read as damaged.
  Status s;
  if (::ftruncate(fd.get(), static_cast<off_t>(data.size())) != 0)
    s = Status::FromErrno(errno, "truncate " + path);
  if (s.ok()) s = WriteAll(fd.get(), data.data(), data.size(), path);
  if (s.ok() && fua && ::fdatasync(fd.get()) != 0)
    s = Status::FromErrno(errno, "fdatasync " + path);
  if (!s.ok()) return s;  // the block still has no file
  // Linked through /proc rather than with AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH.
  const std::string self = "/proc/self/fd/" + std::to_string(fd.get());
  if (::linkat(AT_FDCWD, self.c_str(), dirs->blocks, name.c_str(), AT_SYMLINK_FOLLOW) != 0)
    return Status::Ok();  // made meanwhile (EEXIST): Write replaces it; no /proc (ENOENT) or
                          // another error: Write stores it or says why
  if (fd.Close() != 0) {
    s = Status::FromErrno(errno, "close " + path);
    // The block did not exist before: removing the file leaves it so.
    ::unlinkat(dirs->blocks, name.c_str(), 0);
    return s;
  }
  *done = true;
  return FileAdded(export_name, *dirs, id, fua);
}

Status FileStore::OverwriteInPlace(std::string_view export_name, uint64_t id,
                                   std::span<const uint8_t> data, bool fua, bool* done,
                                   bool* missing) {
  *done = false;
  *missing = false;
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  if (dirs == nullptr) {
    *missing = true;
    return Status::Ok();
  }
  const std::string path = BlockPath(export_name, id);
  Fd fd;
  struct stat st;
  Status opened = OpenFileAt(dirs->blocks, std::to_string(id), O_WRONLY, 0, path, &fd, &st);
  if (!opened.ok()) {
    *missing = opened.IsNotFound();
    // Something that is not a regular file is refused; a file not writable is Write's to report.
    return opened.IsIoError() ? opened : Status::Ok();
  }
  // Another link (a copy made with cp -l) would see the change; a file of another length is a
  // block stored by something else (or cut short by a crash): both are replaced whole.
  if (st.st_nlink != 1 || st.st_size != static_cast<off_t>(data.size()) || data.empty())
    return Status::Ok();
  {
    // The file was just opened, so it is written from its first byte. If a write fails part way,
    // the caller replaces the file whole instead (Write), and reports its error if that fails too.
    // A reader in another process holding the file: the caller replaces it (never waits).
    std::unique_lock<std::shared_mutex> block_lock(BlockLock(export_name, id));
    int lock_err = 0;
    if (!TryOfdLock(fd.get(), F_WRLCK, &lock_err) && (lock_err == EAGAIN || lock_err == EACCES))
      return Status::Ok();
    if (!WriteAll(fd.get(), data.data(), data.size(), path).ok()) return Status::Ok();
    // Unlocked before the unique lock goes, so that this process's readers do not find it held.
    if (fua)
      OfdUnlock(fd.get());
    else if (fd.Close() != 0)
      return Status::Ok();  // nothing is known of the data: replaced whole
  }
  *done = true;
  if (fua) {
    if (::fdatasync(fd.get()) != 0) return Status::FromErrno(errno, "fdatasync " + path);
    return Status::Ok();
  }
  MutexLock lock(&mu_);
  PendingFor(export_name).files.insert(id);
  return Status::Ok();
}

Status FileStore::Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) {
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  if (dirs == nullptr) return Status::Ok();
  bool changed = false;
  Status s;
  for (uint64_t id : ids) {
    const std::string name = std::to_string(id);
    bool exists = false;
    s = CheckRegularOrMissingAt(dirs->blocks, name, BlockPath(export_name, id), &exists);
    if (!s.ok()) break;
    if (!exists) continue;
    if (::unlinkat(dirs->blocks, name.c_str(), 0) == 0) {
      changed = true;
    } else if (errno != ENOENT) {
      s = Status::FromErrno(errno, "unlink " + BlockPath(export_name, id));
      break;
    }
  }
  if (!changed) return s;
  if (s.ok() && fua) return FsyncFd(dirs->blocks, BlocksDir(export_name));
  MutexLock lock(&mu_);
  PendingFor(export_name).blocks_dir_changed = true;
  return s;
}

Status FileStore::Flush(std::string_view export_name) {
  Pending work;
  {
    MutexLock lock(&mu_);
    auto it = pending_.find(std::string(export_name));
    if (it == pending_.end()) return Status::Ok();
    work = std::move(it->second);
    it->second = Pending{};
  }
  const std::string dir = BlocksDir(export_name);
  std::shared_ptr<const Dirs> dirs;
  Status s = GetDirs(export_name, /*create=*/false, &dirs);
  if (s.ok() && dirs == nullptr) s = Status::IoError(dir + " disappeared before the flush");
  if (!s.ok()) {
  } else if (work.files.size() >= kSyncfsThreshold) {
    if (::syncfs(dirs->blocks) != 0) s = Status::FromErrno(errno, "syncfs " + dir);
  } else {
    for (uint64_t id : work.files) {
      Fd fd;
      struct stat st;
      s = OpenFileAt(dirs->blocks, std::to_string(id), O_RDONLY, 0, dir + "/" + std::to_string(id),
                     &fd, &st);
      if (s.IsNotFound()) {  // deleted since; the directory sync covers it
        s = Status::Ok();
        continue;
      }
      if (!s.ok()) break;
      if (::fdatasync(fd.get()) != 0) {
        s = Status::FromErrno(errno, "fdatasync " + dir + "/" + std::to_string(id));
        break;
      }
    }
  }
  if (s.ok() && work.blocks_dir_changed) s = FsyncFd(dirs->blocks, dir);
  if (!s.ok()) {
    // Keep the work for the next flush: nothing is known to be durable.
    MutexLock lock(&mu_);
    Pending& p = PendingFor(export_name);
    p.files.insert(work.files.begin(), work.files.end());
    p.blocks_dir_changed = p.blocks_dir_changed || work.blocks_dir_changed;
  }
  return s;
}

Status FileStore::ListBlocks(std::string_view export_name, const std::function<void(uint64_t)>& fn) {
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  if (dirs == nullptr) return Status::Ok();
  return ForEachEntry(dirs->blocks, BlocksDir(export_name), [&](int, const char* name) {
    uint64_t id;
    if (ParseBlockId(name, &id)) fn(id);
  });
}

Status FileStore::ListExports(std::vector<std::string>* names) {
  names->clear();
  int exports = -1;
  S3B_RETURN_IF_ERROR(ExportsFd(&exports));
  S3B_RETURN_IF_ERROR(ForEachEntry(exports, root_ + "/exports", [&](int dfd, const char* name) {
    if (!ValidateExportName(name).ok()) return;
    struct stat st;
    if (::fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
      names->push_back(name);
  }));
  std::sort(names->begin(), names->end());
  return Status::Ok();
}

Status FileStore::ReadMeta(std::string_view export_name, std::string* text, bool* found) {
  text->clear();
  *found = false;
  // An export is opened by reading its metadata: its directories are looked up again then, in
  // case another process deleted and made the export again since this one last used it.
  DropDirs(export_name);
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/false, &dirs));
  std::string path = ExportDir(export_name) + "/metadata";
  Fd fd;
  struct stat st;
  if (dirs == nullptr) {
    // No blocks directory: the metadata may still be there (a store made by hand).
    int exports = -1;
    S3B_RETURN_IF_ERROR(ExportsFd(&exports));
    Fd exp;
    Status s = OpenDirAt(exports, std::string(export_name), ExportDir(export_name), false, &exp);
    if (s.IsNotFound()) return Status::Ok();
    S3B_RETURN_IF_ERROR(s);
    s = OpenFileAt(exp.get(), "metadata", O_RDONLY, 0, path, &fd, &st);
    if (s.IsNotFound()) return Status::Ok();
    S3B_RETURN_IF_ERROR(s);
  } else {
    Status s = OpenFileAt(dirs->exp, "metadata", O_RDONLY, 0, path, &fd, &st);
    if (s.IsNotFound()) return Status::Ok();
    S3B_RETURN_IF_ERROR(s);
  }
  char buf[4096];
  for (;;) {
    ssize_t r = ReadFull(fd.get(), buf, sizeof buf);
    if (r < 0) return Status::FromErrno(errno, "read " + path);
    if (r == 0) break;
    text->append(buf, static_cast<size_t>(r));
    if (text->size() > 1 << 20) return Status::IoError(path + " is too large to be metadata");
  }
  *found = true;
  return Status::Ok();
}

Status FileStore::WriteMeta(std::string_view export_name, std::string_view text) {
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(export_name, /*create=*/true, &dirs));
  const std::string exp = ExportDir(export_name);
  S3B_RETURN_IF_ERROR(ReplaceFileAt(
      dirs->exp, "metadata",
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
      /*sync=*/true, exp));
  return FsyncFd(dirs->exp, exp);
}

Status FileStore::DeleteMeta(std::string_view export_name) {
  int exports = -1;
  S3B_RETURN_IF_ERROR(ExportsFd(&exports));
  const std::string exp_path = ExportDir(export_name), blocks_path = BlocksDir(export_name);
  Fd exp;
  Status s = OpenDirAt(exports, std::string(export_name), exp_path, /*follow=*/false, &exp);
  if (s.IsNotFound()) {
    DropDirs(export_name);
    return Status::Ok();
  }
  S3B_RETURN_IF_ERROR(s);
  for (const char* name : {"metadata", "lock"}) {
    bool exists = false;
    S3B_RETURN_IF_ERROR(CheckRegularOrMissingAt(exp.get(), name, exp_path + "/" + name, &exists));
    if (exists && ::unlinkat(exp.get(), name, 0) != 0 && errno != ENOENT)
      return Status::FromErrno(errno, "unlink " + exp_path + "/" + name);
  }
  // Remove leftover temporary files, then the directories if they are empty.
  Fd blocks;
  s = OpenDirAt(exp.get(), "blocks", blocks_path, /*follow=*/false, &blocks);
  if (s.ok()) {
    RemoveTempFiles(blocks.get(), blocks_path);
    if (::unlinkat(exp.get(), "blocks", AT_REMOVEDIR) != 0 && errno != ENOENT)
      return Status::FromErrno(errno, "rmdir " + blocks_path);
  } else if (!s.IsNotFound()) {
    return s;
  }
  // The directories another layout keeps over the same directory (the log layout's log/ and
  // checkpoint/, which its transport leaves when their objects are deleted): removed as blocks/
  // is. A symlink is not a directory here, and one that is not empty stays (and says so).
  std::vector<std::string> subdirs;
  S3B_RETURN_IF_ERROR(ListSubdirectories(exp.get(), exp_path, &subdirs));
  for (const std::string& name : subdirs) {
    const std::string path = exp_path + "/" + name;
    Fd sub;
    s = OpenDirAt(exp.get(), name, path, /*follow=*/false, &sub);
    if (s.IsNotFound()) continue;
    S3B_RETURN_IF_ERROR(s);
    RemoveTempFiles(sub.get(), path);
    if (::unlinkat(exp.get(), name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
      return Status::FromErrno(errno, "rmdir " + path);
  }
  if (::unlinkat(exports, std::string(export_name).c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
    return Status::FromErrno(errno, "rmdir " + exp_path);
  DropDirs(export_name);
  {
    MutexLock lock(&mu_);
    pending_.erase(std::string(export_name));
  }
  return FsyncFd(exports, root_ + "/exports");
}

Status FileStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) {
  *found = false;
  std::shared_ptr<const Dirs> src_dirs;
  S3B_RETURN_IF_ERROR(GetDirs(from, /*create=*/false, &src_dirs));
  if (src_dirs == nullptr) return Status::Ok();
  const std::string name = std::to_string(id);
  const std::string src = BlockPath(from, id);
  Fd in;
  struct stat st;
  Status s = OpenFileAt(src_dirs->blocks, name, O_RDONLY, 0, src, &in, &st);
  if (s.IsNotFound()) return Status::Ok();
  S3B_RETURN_IF_ERROR(s);
  if (st.st_size == 0) return Status::Ok();  // see Read: an empty file is a block never written
  S3B_RETURN_IF_ERROR(ReadLock(in.get(), src));
  std::shared_ptr<const Dirs> dirs;
  S3B_RETURN_IF_ERROR(GetDirs(to, /*create=*/true, &dirs));
  const std::string dir = BlocksDir(to);
  const std::string dst = dir + "/" + name;
  bool exists = false;
  S3B_RETURN_IF_ERROR(CheckRegularOrMissingAt(dirs->blocks, name, dst, &exists));
  Fd out;
  std::string tmp;
  S3B_RETURN_IF_ERROR(CreateTempAt(dirs->blocks, ".tmp." + name + ".", 0644, dir, &out, &tmp));
  if (::ioctl(out.get(), FICLONE, in.get()) != 0) {
    off_t left = st.st_size;
    while (left > 0) {
      ssize_t n = ::copy_file_range(in.get(), nullptr, out.get(), nullptr, static_cast<size_t>(left), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        s = n < 0 ? Status::FromErrno(errno, "copy " + src + " to " + dir + "/" + tmp)
                  : Status::IoError("copy " + src + ": file shrank while copying");
        break;
      }
      left -= n;
    }
  }
  in.Reset(-1);
  if (out.Close() != 0 && s.ok()) s = Status::FromErrno(errno, "close " + dir + "/" + tmp);
  if (s.ok() && ::renameat(dirs->blocks, tmp.c_str(), dirs->blocks, name.c_str()) != 0)
    s = Status::FromErrno(errno, "rename " + dir + "/" + tmp + " to " + dst);
  if (!s.ok()) {
    ::unlinkat(dirs->blocks, tmp.c_str(), 0);
    return s;
  }
  *found = true;
  return FileAdded(to, *dirs, id, /*fua=*/false);
}

}  // namespace s3block
