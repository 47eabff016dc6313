#include "s3block/file_store.h"

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
#include <cstring>
#include <functional>

#include "s3block/params.h"

namespace s3block {
namespace {

// Above this many files to sync, one syncfs() is cheaper than a fdatasync() per file.
constexpr size_t kSyncfsThreshold = 128;

std::atomic<uint64_t> g_temp_counter{0};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { if (fd_ >= 0) ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes, reporting the error (close can report a delayed write error on some file systems).
  int Close() { int r = ::close(fd_); fd_ = -1; return r; }
 private:
  int fd_;
};

Status WriteAll(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

// Opens the block file at path for reading and checks it. *size is its length, or 0 if there is
// no file or an empty one: both read as a block never written. (A file that is empty after a
// crash was created but its data never reached the disk: the block it was to replace did not
// exist, since a replaced block keeps its old data until the rename is durable.)
Status OpenBlockFile(const std::string& path, Fd* fd, size_t* size) {
  *size = 0;
  fd->Reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd->get() < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "open " + path);
  }
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::IoError(path + " is not a regular file");
  if (st.st_size > static_cast<off_t>(kMaxBlockSize) * 2)
    return Status::IoError(path + " is " + std::to_string(st.st_size) + " bytes, far larger than any block");
  *size = static_cast<size_t>(st.st_size);
  return Status::Ok();
}

// Reads the file from byte `done` into the rest of *data, which is cut short where the file ends.
Status ReadRest(int fd, Bytes* data, size_t done, const std::string& path) {
  while (done < data->size()) {
    ssize_t r = ::pread(fd, data->data() + done, data->size() - done, static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  data->resize(done);
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

Status MkdirIfMissing(const std::string& path, bool* created) {
  if (::mkdir(path.c_str(), 0755) == 0) {
    *created = true;
    return Status::Ok();
  }
  *created = false;
  if (errno == EEXIST) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Status::Ok();
    return Status::IoError(path + " exists and is not a directory");
  }
  return Status::FromErrno(errno, "mkdir " + path);
}

// Parses a block file name: decimal digits only, no leading zeros (except "0").
bool ParseBlockName(const char* name, uint64_t* id) {
  size_t len = std::strlen(name);
  if (len == 0 || len > 20 || (len > 1 && name[0] == '0')) return false;
  for (size_t i = 0; i < len; ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  auto [p, ec] = std::from_chars(name, name + len, *id);
  return ec == std::errc() && p == name + len;
}

std::string TempName(const std::string& dir, std::string_view base) {
  return dir + "/.tmp." + std::string(base) + "." + std::to_string(::getpid()) + "." +
         std::to_string(g_temp_counter.fetch_add(1, std::memory_order_relaxed));
}

}  // namespace

Status FsyncDir(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Status::FromErrno(errno, "open " + path);
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync " + path);
  return Status::Ok();
}

// Writes data to a temporary file in dir and renames it to path: readers see the old file or the
// new one, never a mix. With sync, the data is on disk before the rename.
static Status ReplaceFile(const std::string& dir, const std::string& path, std::string_view base,
                   std::span<const uint8_t> data, bool sync) {
  std::string tmp = TempName(dir, base);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Status::FromErrno(errno, "create " + tmp);
  Status s = WriteAll(fd.get(), data.data(), data.size(), tmp);
  if (s.ok() && sync && ::fdatasync(fd.get()) != 0) s = Status::FromErrno(errno, "fdatasync " + tmp);
  if (fd.Close() != 0 && s.ok()) s = Status::FromErrno(errno, "close " + tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = Status::FromErrno(errno, "rename " + tmp + " to " + path);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

Status WriteFileAtomically(const std::string& path, std::string_view data) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  S3B_RETURN_IF_ERROR(ReplaceFile(
      dir, path, path.substr(slash + 1),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()), true));
  return FsyncDir(dir);
}

namespace {
std::string StripTrailingSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}
}  // namespace

FileStore::FileStore(std::string root) : root_(StripTrailingSlashes(std::move(root))) {}

FileStore::~FileStore() = default;

std::string FileStore::ExportDir(std::string_view export_name) const {
  return root_ + "/exports/" + std::string(export_name);
}
std::string FileStore::BlocksDir(std::string_view export_name) const {
  return ExportDir(export_name) + "/blocks";
}
std::string FileStore::BlockPath(std::string_view export_name, uint64_t id) const {
  return BlocksDir(export_name) + "/" + std::to_string(id);
}

Status FileStore::Check() {
  if (root_.empty() || root_[0] != '/')
    return Status::InvalidArgument("store directory '" + root_ + "' is not an absolute path");
  bool created_root = false, created_exports = false;
  S3B_RETURN_IF_ERROR(MkdirIfMissing(root_, &created_root).Annotate("store directory"));
  S3B_RETURN_IF_ERROR(MkdirIfMissing(root_ + "/exports", &created_exports).Annotate("store directory"));
  if (::access(root_.c_str(), W_OK | X_OK) != 0 ||
      ::access((root_ + "/exports").c_str(), W_OK | X_OK) != 0)
    return Status::FromErrno(errno, "store directory " + root_ + " is not writable");
  if (created_exports) S3B_RETURN_IF_ERROR(FsyncDir(root_));
  return Status::Ok();
}

FileStore::Pending& FileStore::PendingFor(std::string_view export_name) {
  auto it = pending_.find(std::string(export_name));
  if (it == pending_.end()) it = pending_.emplace(std::string(export_name), Pending{}).first;
  return it->second;
}

Status FileStore::EnsureBlocksDir(std::string_view export_name) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (dirs_ready_.count(std::string(export_name))) return Status::Ok();
  }
  // Create each level; make each new entry durable in its parent at once, since a block renamed
  // into a directory whose own entry is lost would be lost too.
  std::string exports = root_ + "/exports";
  std::string exp = ExportDir(export_name);
  std::string blocks = BlocksDir(export_name);
  bool c1 = false, c2 = false, c3 = false;
  S3B_RETURN_IF_ERROR(MkdirIfMissing(exports, &c1));
  S3B_RETURN_IF_ERROR(MkdirIfMissing(exp, &c2));
  S3B_RETURN_IF_ERROR(MkdirIfMissing(blocks, &c3));
  if (c1) S3B_RETURN_IF_ERROR(FsyncDir(root_));
  if (c2) S3B_RETURN_IF_ERROR(FsyncDir(exports));
  if (c3) S3B_RETURN_IF_ERROR(FsyncDir(exp));
  std::lock_guard<std::mutex> lock(mu_);
  dirs_ready_.insert(std::string(export_name));
  return Status::Ok();
}

std::shared_mutex& FileStore::BlockLock(std::string_view export_name, uint64_t id) {
  const size_t h = std::hash<std::string_view>{}(export_name) ^ (id * 0x9E3779B97F4A7C15ull);
  return block_locks_[(h ^ (h >> 29)) % kBlockLocks];
}

Status FileStore::Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) {
  data->clear();
  *found = false;
  std::string path = BlockPath(export_name, id);
  std::shared_lock<std::shared_mutex> block_lock(BlockLock(export_name, id));
  Fd fd;
  size_t size = 0;
  S3B_RETURN_IF_ERROR(OpenBlockFile(path, &fd, &size));
  if (size == 0) return Status::Ok();
  data->resize(size);
  S3B_RETURN_IF_ERROR(ReadRest(fd.get(), data, 0, path));
  *found = true;
  return Status::Ok();
}

size_t FileStore::ReadBatchSize() const { return IoUringReads() ? kRingEntries : 1; }

void FileStore::ReadBatch(std::string_view export_name, std::span<BlockRead> reads) {
  while (!reads.empty()) {
    const size_t n = std::min<size_t>(reads.size(), kRingEntries);
    ReadBatchPart(export_name, reads.first(n));
    reads = reads.subspan(n);
  }
}

// The files are opened one by one (io_uring would hand each open to a kernel worker thread, which
// costs more); their reads go to the kernel in one submission, under one block plug, so that the
// reads of files that lie next to each other on the disk are merged into one disk request.
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
    r.status = OpenBlockFile(files[i].path, &files[i].fd, &size);
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
  S3B_RETURN_IF_ERROR(EnsureBlocksDir(export_name));
  std::string dir = BlocksDir(export_name);
  const std::string base = std::to_string(id);
  S3B_RETURN_IF_ERROR(ReplaceFile(dir, dir + "/" + base, base, data, fua));
  return FileAdded(export_name, dir, id, fua);
}

Status FileStore::FileAdded(std::string_view export_name, const std::string& dir, uint64_t id,
                            bool fua) {
  if (fua) return FsyncDir(dir);
  std::lock_guard<std::mutex> lock(mu_);
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
  S3B_RETURN_IF_ERROR(EnsureBlocksDir(export_name));
  const std::string dir = BlocksDir(export_name);
  const std::string path = dir + "/" + std::to_string(id);
  // Held until the data is in, so that no reader opens the file half written.
  std::unique_lock<std::shared_mutex> block_lock(BlockLock(export_name, id));
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Status::Ok();  // made meanwhile, or cannot be: Write replaces or says why
  // The file takes its full length before any data, so a crash before the data is on disk leaves
  // it empty (read as never written) or a whole block whose unwritten pages read as zeros (the
  // block was all zeros before): never a short file, which would read as damaged.
  Status s;
  if (::ftruncate(fd.get(), static_cast<off_t>(data.size())) != 0)
    s = Status::FromErrno(errno, "truncate " + path);
  if (s.ok()) s = WriteAll(fd.get(), data.data(), data.size(), path);
  if (s.ok() && fua && ::fdatasync(fd.get()) != 0) s = Status::FromErrno(errno, "fdatasync " + path);
  if (fd.Close() != 0 && s.ok()) s = Status::FromErrno(errno, "close " + path);
  if (!s.ok()) {
    // The block did not exist before: removing the file leaves it so.
    ::unlink(path.c_str());
    return s;
  }
  block_lock.unlock();
  *done = true;
  return FileAdded(export_name, dir, id, fua);
}

Status FileStore::OverwriteInPlace(std::string_view export_name, uint64_t id,
                                   std::span<const uint8_t> data, bool fua, bool* done,
                                   bool* missing) {
  *done = false;
  *missing = false;
  const std::string path = BlockPath(export_name, id);
  Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.get() < 0) {  // not there (or not writable: Write says why)
    *missing = errno == ENOENT;
    return Status::Ok();
  }
  struct stat st;
  // Another link (a copy made with cp -l) would see the change; a file of another length is a
  // block stored by something else (or cut short by a crash): both are replaced whole.
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
      st.st_size != static_cast<off_t>(data.size()) || data.empty())
    return Status::Ok();
  {
    // The file was just opened, so it is written from its first byte. If a write fails part way,
    // the caller replaces the file whole instead (Write), and reports its error if that fails too.
    std::unique_lock<std::shared_mutex> block_lock(BlockLock(export_name, id));
    if (!WriteAll(fd.get(), data.data(), data.size(), path).ok()) return Status::Ok();
  }
  *done = true;
  if (fua) {
    if (::fdatasync(fd.get()) != 0) return Status::FromErrno(errno, "fdatasync " + path);
    return Status::Ok();
  }
  std::lock_guard<std::mutex> lock(mu_);
  PendingFor(export_name).files.insert(id);
  return Status::Ok();
}

Status FileStore::Delete(std::string_view export_name, std::span<const uint64_t> ids, bool fua) {
  bool changed = false;
  for (uint64_t id : ids) {
    std::string path = BlockPath(export_name, id);
    if (::unlink(path.c_str()) == 0) {
      changed = true;
    } else if (errno != ENOENT) {
      Status s = Status::FromErrno(errno, "unlink " + path);
      if (changed) {
        std::lock_guard<std::mutex> lock(mu_);
        PendingFor(export_name).blocks_dir_changed = true;
      }
      return s;
    }
  }
  if (!changed) return Status::Ok();
  if (fua) return FsyncDir(BlocksDir(export_name));
  std::lock_guard<std::mutex> lock(mu_);
  PendingFor(export_name).blocks_dir_changed = true;
  return Status::Ok();
}

Status FileStore::Flush(std::string_view export_name) {
  Pending work;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(std::string(export_name));
    if (it == pending_.end()) return Status::Ok();
    work = std::move(it->second);
    it->second = Pending{};
  }
  std::string dir = BlocksDir(export_name);
  Status s;
  if (work.files.size() >= kSyncfsThreshold) {
    Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) s = Status::FromErrno(errno, "open " + dir);
    else if (::syncfs(fd.get()) != 0) s = Status::FromErrno(errno, "syncfs " + dir);
  } else {
    for (uint64_t id : work.files) {
      std::string path = dir + "/" + std::to_string(id);
      Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.get() < 0) {
        if (errno == ENOENT) continue;  // deleted since; the directory sync covers it
        s = Status::FromErrno(errno, "open " + path);
        break;
      }
      if (::fdatasync(fd.get()) != 0) {
        s = Status::FromErrno(errno, "fdatasync " + path);
        break;
      }
    }
  }
  if (s.ok() && work.blocks_dir_changed) s = FsyncDir(dir);
  if (!s.ok()) {
    // Keep the work for the next flush: nothing is known to be durable.
    std::lock_guard<std::mutex> lock(mu_);
    Pending& p = PendingFor(export_name);
    p.files.insert(work.files.begin(), work.files.end());
    p.blocks_dir_changed = p.blocks_dir_changed || work.blocks_dir_changed;
  }
  return s;
}

Status FileStore::ListBlocks(std::string_view export_name, const std::function<void(uint64_t)>& fn) {
  std::string dir = BlocksDir(export_name);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "opendir " + dir);
  }
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    uint64_t id;
    if (ParseBlockName(e->d_name, &id)) fn(id);
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno(err, "readdir " + dir);
  return Status::Ok();
}

Status FileStore::ListExports(std::vector<std::string>* names) {
  names->clear();
  std::string dir = root_ + "/exports";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "opendir " + dir);
  }
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (!ValidateExportName(name).ok()) continue;
    struct stat st;
    if (::stat((dir + "/" + name).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) names->push_back(name);
  }
  ::closedir(d);
  std::sort(names->begin(), names->end());
  return Status::Ok();
}

Status FileStore::ReadMeta(std::string_view export_name, std::string* text, bool* found) {
  text->clear();
  *found = false;
  std::string path = ExportDir(export_name) + "/metadata";
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "open " + path);
  }
  char buf[4096];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (r == 0) break;
    text->append(buf, static_cast<size_t>(r));
    if (text->size() > 1 << 20) return Status::IoError(path + " is too large to be metadata");
  }
  *found = true;
  return Status::Ok();
}

Status FileStore::WriteMeta(std::string_view export_name, std::string_view text) {
  S3B_RETURN_IF_ERROR(EnsureBlocksDir(export_name));
  return WriteFileAtomically(ExportDir(export_name) + "/metadata", text);
}

Status FileStore::DeleteMeta(std::string_view export_name) {
  std::string exp = ExportDir(export_name);
  if (::unlink((exp + "/metadata").c_str()) != 0 && errno != ENOENT)
    return Status::FromErrno(errno, "unlink " + exp + "/metadata");
  if (::unlink((exp + "/lock").c_str()) != 0 && errno != ENOENT)
    return Status::FromErrno(errno, "unlink " + exp + "/lock");
  // Remove leftover temporary files, then the directories if they are empty.
  std::string blocks = BlocksDir(export_name);
  if (DIR* d = ::opendir(blocks.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      if (std::strncmp(e->d_name, ".tmp.", 5) == 0) ::unlinkat(dirfd(d), e->d_name, 0);
    }
    ::closedir(d);
  }
  if (::rmdir(blocks.c_str()) != 0 && errno != ENOENT)
    return Status::FromErrno(errno, "rmdir " + blocks);
  if (::rmdir(exp.c_str()) != 0 && errno != ENOENT) return Status::FromErrno(errno, "rmdir " + exp);
  {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_ready_.erase(std::string(export_name));
    pending_.erase(std::string(export_name));
  }
  return FsyncDir(root_ + "/exports");
}

}  // namespace s3block

namespace s3block {
namespace {

class FileLease : public ExportLease {
 public:
  explicit FileLease(int fd) : fd_(fd) {}
  ~FileLease() override {
    // Clear the holder before the lock goes, so nobody reads a stale name as a live holder.
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
  S3B_RETURN_IF_ERROR(EnsureBlocksDir(export_name));
  std::string path = ExportDir(export_name) + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    std::string who = ReadHolder(fd);
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return Status::Error(EBUSY, "export '" + QuoteForMessage(export_name) + "' in " +
                                      Describe() + " is in use by " + who +
                                      "; stop that server first (or serve read-only with -r)");
    }
    return Status::FromErrno(err, "flock " + path);
  }
  // We are the export's only writer now: temporary files in its directories were left by a
  // writer that died mid-write (they were never renamed into place, so they are not data).
  for (const std::string& dir : {ExportDir(export_name), BlocksDir(export_name)}) {
    if (DIR* d = ::opendir(dir.c_str())) {
      while (struct dirent* e = ::readdir(d)) {
        if (std::strncmp(e->d_name, ".tmp.", 5) == 0) ::unlinkat(::dirfd(d), e->d_name, 0);
      }
      ::closedir(d);
    }
  }
  std::string text = holder + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0) {
    Status s = Status::FromErrno(errno, "write " + path);
    ::close(fd);
    return s;
  }
  *out = std::make_unique<FileLease>(fd);
  return Status::Ok();
}

Status FileStore::QueryLease(std::string_view export_name, std::string* holder) {
  holder->clear();
  std::string path = ExportDir(export_name) + "/lock";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "open " + path);
  }
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) *holder = ReadHolder(fd);
    ::close(fd);
    if (err != EWOULDBLOCK) return Status::FromErrno(err, "flock " + path);
    return Status::Ok();
  }
  ::close(fd);
  return Status::Ok();
}

}  // namespace s3block

namespace s3block {

Status FileStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id, bool* found) {
  *found = false;
  std::string src = BlockPath(from, id);
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "open " + src);
  }
  struct stat st;
  if (::fstat(in, &st) != 0) {
    Status s = Status::FromErrno(errno, "stat " + src);
    ::close(in);
    return s;
  }
  if (st.st_size == 0) {  // see Read: an empty file is a block that was never written
    ::close(in);
    return Status::Ok();
  }
  Status s = EnsureBlocksDir(to);
  if (!s.ok()) {
    ::close(in);
    return s;
  }
  std::string dir = BlocksDir(to);
  std::string dst = dir + "/" + std::to_string(id);
  std::string tmp = TempName(dir, std::to_string(id));
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    s = Status::FromErrno(errno, "create " + tmp);
    ::close(in);
    return s;
  }
  if (::ioctl(out, FICLONE, in) != 0) {
    off_t left = st.st_size;
    while (left > 0) {
      ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, static_cast<size_t>(left), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        s = n < 0 ? Status::FromErrno(errno, "copy " + src + " to " + tmp)
                  : Status::IoError("copy " + src + ": file shrank while copying");
        break;
      }
      left -= n;
    }
  }
  ::close(in);
  if (::close(out) != 0 && s.ok()) s = Status::FromErrno(errno, "close " + tmp);
  if (s.ok() && ::rename(tmp.c_str(), dst.c_str()) != 0)
    s = Status::FromErrno(errno, "rename " + tmp + " to " + dst);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  *found = true;
  return FileAdded(to, dir, id, /*fua=*/false);
}

}  // namespace s3block
