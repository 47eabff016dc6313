#include "cache/disk_cache_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/safe_file.h"
#include "s3block/params.h"
#include "util/block_id.h"
#include "util/digest.h"
#include "util/encoding.h"
#include "util/fd_io.h"

namespace s3block {
namespace {

// Copies per subdirectory: keeps directories small enough to list and look up quickly.
constexpr uint64_t kShardBlocks = 4096;

using Digest = std::array<uint8_t, 16>;

Digest Md5Of(std::span<const uint8_t> data) {
  std::vector<uint8_t> d = Md5(data);
  Digest out{};
  std::memcpy(out.data(), d.data(), out.size());
  return out;
}

// 32 hex digits (our file names, and the digests ListBlockDigests gives).
bool ParseHexMd5(std::string_view hex, Digest* out) { return HexDecode(hex, *out); }

// A copy's file name: "<id>.<md5>", id in decimal without leading zeros.
bool ParseCopyName(std::string_view name, uint64_t* id, Digest* md5) {
  size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 20) return false;
  uint64_t v = 0;
  if (!ParseBlockId(name.substr(0, dot), &v)) return false;
  // Written by HexEncode, lower-case: any other spelling is not a file of ours.
  std::string_view hex = name.substr(dot + 1);
  if (hex.find_first_of("ABCDEF") != std::string_view::npos || !ParseHexMd5(hex, md5)) return false;
  *id = v;
  return true;
}

// Refuses a directory (open as fd) that is not private to this uid; see CheckPrivateDirectory.
Status CheckPrivateFd(int fd, const std::string& path, const std::string& what) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, what + ": stat " + path);
  if (st.st_uid != ::geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
    return CheckPrivateDirectory(path, what);  // says what is wrong (or it changed: then fine)
  return Status::Ok();
}

// Opens the directory `name` in dirfd, making it (0700) if missing, and checks it is private.
Status OpenPrivateDirAt(int dirfd, const std::string& name, const std::string& path,
                        const std::string& what, UniqueFd* out) {
  if (::mkdirat(dirfd, name.c_str(), 0700) != 0 && errno != EEXIST)
    return Status::FromErrno(errno, what + ": cannot create directory " + path);
  // Checked by path first for the message (a symlink is named as one), then on the fd opened.
  S3B_RETURN_IF_ERROR(CheckPrivateDirectory(path, what));
  S3B_RETURN_IF_ERROR(OpenDirAt(dirfd, name, path, /*follow=*/false, out).Annotate(what));
  return CheckPrivateFd(out->get(), path, what);
}

// Reads a copy that must hold exactly `size` bytes.
bool ReadCopy(int dir_fd, const std::string& rel, const std::string& path, uint32_t size,
              Bytes* out) {
  UniqueFd fd;
  struct stat st;
  if (!OpenFileBeneath(dir_fd, rel, path, &fd, &st).ok()) return false;
  if (st.st_size != static_cast<off_t>(size)) return false;  // not our copy
  out->resize(size);
  return PreadFull(fd.get(), out->data(), size, 0) == static_cast<ssize_t>(size);
}

}  // namespace

void ForEachDiskCacheStat(const DiskCacheStats& s,
                          const std::function<void(const char*, uint64_t)>& fn) {
  fn("hits", s.hits);
  fn("misses", s.misses);
  fn("fills", s.fills);
  fn("writes", s.writes);
  fn("reused", s.reused);
  fn("stale", s.stale);
  fn("evictions", s.evictions);
  fn("errors", s.errors);
  fn("locked_out", s.locked_out);
  fn("bytes", s.bytes);
  fn("blocks", s.blocks);
}

DiskCacheStore::DiskCacheStore(std::shared_ptr<BlockStore> next, std::string dir, uint64_t size)
    : StoreDecorator(std::move(next)),
      dir_(std::move(dir)),
      size_(size),
      store_dir_(dir_ + "/" + Sha256Hex(next_->Describe()).substr(0, 16)) {}

DiskCacheStore::~DiskCacheStore() {
  for (auto& [name, e] : exports_) {
    if (e->lock_fd >= 0) ::close(e->lock_fd);
    if (e->dir_fd >= 0) ::close(e->dir_fd);
  }
  for (int fd : {exports_fd_, store_fd_, dir_fd_})
    if (fd >= 0) ::close(fd);
}

std::string DiskCacheStore::Describe() const {
  return next_->Describe() + ", disk cache " + dir_;
}

Status DiskCacheStore::OpenDirs(const std::string& what, int* exports_fd) {
  MutexLock lock(&dirs_mu_);
  if (exports_fd_ < 0) {
    if (dir_.empty() || dir_[0] != '/')
      return Status::InvalidArgument(what + ": '" + dir_ + "' is not an absolute path");
    UniqueFd dir, store, exports;
    S3B_RETURN_IF_ERROR(OpenPrivateDirAt(AT_FDCWD, dir_, dir_, what, &dir));
    const std::string id = store_dir_.substr(store_dir_.rfind('/') + 1);
    S3B_RETURN_IF_ERROR(OpenPrivateDirAt(dir.get(), id, store_dir_, what, &store));
    bool created = false;
    S3B_RETURN_IF_ERROR(
        MakeDirAt(store.get(), "exports", 0700, store_dir_ + "/exports", &exports, &created)
            .Annotate(what));
    dir_fd_ = dir.Release();
    store_fd_ = store.Release();
    exports_fd_ = exports.Release();
  }
  *exports_fd = exports_fd_;
  return Status::Ok();
}

Status DiskCacheStore::Check() {
  S3B_RETURN_IF_ERROR(next_->Check());
  const std::string what = "disk-cache=" + dir_;
  int exports_fd = -1;
  S3B_RETURN_IF_ERROR(OpenDirs(what, &exports_fd));
  // Says which store the directory caches, for a person looking at it; also proves it writable.
  const std::string text = next_->Describe() + "\n";
  int store_fd;
  {
    MutexLock lock(&dirs_mu_);
    store_fd = store_fd_;
  }
  Status s = ReplaceFileAt(
      store_fd, "store",
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
      /*sync=*/false, store_dir_);
  if (!s.ok()) return s.Annotate(what + ": cannot write in " + store_dir_);
  return Status::Ok();
}

DiskCacheStore::Export* DiskCacheStore::For(std::string_view export_name) {
  Export* e;
  {
    MutexLock lock(&mu_);
    auto it = exports_.find(export_name);
    if (it == exports_.end()) {
      auto fresh = std::make_unique<Export>();
      fresh->name = std::string(export_name);
      fresh->dir = store_dir_ + "/exports/" + fresh->name;
      e = fresh.get();
      exports_.emplace(fresh->name, std::move(fresh));
    } else {
      e = it->second.get();
    }
  }
  if (!e->loaded.load(std::memory_order_acquire)) Load(e);
  return e;
}

void DiskCacheStore::UnlinkAll(const std::vector<Doomed>& doomed) {
  for (const Doomed& d : doomed) {
    if (d.rel.empty()) continue;
    const size_t slash = d.rel.find('/');
    UniqueFd shard;
    if (!OpenDirAt(d.dir_fd, d.rel.substr(0, slash), d.rel, /*follow=*/false, &shard).ok()) continue;
    ::unlinkat(shard.get(), d.rel.c_str() + slash + 1, 0);
  }
}

std::string DiskCacheStore::RelPathOf(uint64_t id, const Digest& md5) {
  return std::to_string(id / kShardBlocks) + "/" + std::to_string(id) + "." + HexEncode(md5);
}

void DiskCacheStore::Load(Export* e) {
  MutexLock load_lock(&e->load_mu);
  if (e->loaded.load(std::memory_order_acquire)) return;
  struct Found {
    uint64_t id;
    Digest md5;
    uint32_t size;
  };
  std::vector<Found> found;
  std::vector<Doomed> junk;
  bool usable = false, locked_out = false, failed = false;
  int fd = -1, dir_fd = -1;
  // Check() made the parent directories; a test or a later removal may not have: make them.
  int exports_fd = -1;
  UniqueFd dir, lock;
  bool created = false;
  struct stat st;
  if (OpenDirs("disk-cache=" + dir_, &exports_fd).ok() &&
      MakeDirAt(exports_fd, e->name, 0700, e->dir, &dir, &created).ok()) {
    Status s = OpenFileAt(dir.get(), "lock", O_RDWR | O_CREAT, 0600, e->dir + "/lock", &lock, &st);
    if (!s.ok()) {
      failed = true;
    } else if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      locked_out = errno == EWOULDBLOCK;
      failed = !locked_out;
    } else {
      fd = lock.Release();
    }
  } else {
    failed = true;
  }
  if (fd >= 0) {
    usable = true;
    dir_fd = dir.Release();
    UniqueFd top_fd(::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    DIR* top = top_fd.valid() ? ::fdopendir(top_fd.get()) : nullptr;
    if (top != nullptr) {
      top_fd.Release();
      while (struct dirent* d = ::readdir(top)) {
        std::string_view shard = d->d_name;
        if (shard.empty() || shard.find_first_not_of("0123456789") != std::string_view::npos)
          continue;
        UniqueFd shard_fd;
        if (!OpenDirAt(dir_fd, std::string(shard), e->dir + "/" + std::string(shard), false,
                       &shard_fd)
                 .ok())
          continue;  // not a directory of ours: left alone
        DIR* sd = ::fdopendir(shard_fd.get());
        if (sd == nullptr) continue;
        shard_fd.Release();
        while (struct dirent* f = ::readdir(sd)) {
          std::string_view name = f->d_name;
          if (name == "." || name == "..") continue;
          uint64_t id;
          Digest md5;
          struct stat fst;
          // Anything else here is a temporary file of a process that died, or not ours.
          if (!ParseCopyName(name, &id, &md5) ||
              ::fstatat(::dirfd(sd), f->d_name, &fst, AT_SYMLINK_NOFOLLOW) != 0 ||
              !S_ISREG(fst.st_mode) || fst.st_size > static_cast<off_t>(UINT32_MAX) ||
              std::to_string(id / kShardBlocks) != shard) {
            junk.push_back({dir_fd, std::string(shard) + "/" + std::string(name)});
            continue;
          }
          found.push_back({id, md5, static_cast<uint32_t>(fst.st_size)});
        }
        ::closedir(sd);
      }
      ::closedir(top);
    }
  }
  std::vector<Doomed> unlink;
  {
    MutexLock lock_mu(&mu_);
    e->lock_fd = fd;
    e->dir_fd = dir_fd;
    e->usable = usable;
    e->stats.locked_out = locked_out ? 1 : 0;
    if (failed) ++e->stats.errors;
    for (const Found& f : found) InsertLocked(e, f.id, f.md5, f.size, false, &unlink);
    e->loaded.store(true, std::memory_order_release);
  }
  UnlinkAll(junk);
  UnlinkAll(unlink);
}

Status DiskCacheStore::CloseExport(std::string_view export_name) {
  std::unique_ptr<Export> gone;
  {
    MutexLock lock(&mu_);
    auto it = exports_.find(export_name);
    if (it != exports_.end() && it->second->loaded.load(std::memory_order_acquire)) {
      Export* e = it->second.get();
      bool busy = false;
      for (const auto& [id, p] : e->pending) busy = busy || p.users > 0 || p.changes > 0;
      if (!busy) {
        for (auto& [id, entry] : e->entries) {
          lru_.erase(entry.lru);
          total_bytes_ -= entry.size;
        }
        gone = std::move(it->second);
        exports_.erase(it);
      }
    }
  }
  if (gone) {
    if (gone->lock_fd >= 0) ::close(gone->lock_fd);
    if (gone->dir_fd >= 0) ::close(gone->dir_fd);
  }
  return StoreDecorator::CloseExport(export_name);
}

std::string DiskCacheStore::PathOf(const Export* e, uint64_t id, const Digest& md5) const {
  return e->dir + "/" + std::to_string(id / kShardBlocks) + "/" + std::to_string(id) + "." +
         HexEncode(md5);
}

bool DiskCacheStore::WriteCopy(Export* e, uint64_t id, std::span<const uint8_t> data,
                               const Digest& md5) {
  const std::string shard = std::to_string(id / kShardBlocks);
  const std::string shard_path = e->dir + "/" + shard;
  UniqueFd shard_fd;
  Status s = OpenDirAt(e->dir_fd, shard, shard_path, /*follow=*/false, &shard_fd);
  if (s.IsNotFound()) {
    bool created = false;
    s = MakeDirAt(e->dir_fd, shard, 0700, shard_path, &shard_fd, &created);
  }
  if (!s.ok()) return false;
  return ReplaceFileAt(shard_fd.get(), std::to_string(id) + "." + HexEncode(md5), data,
                       /*sync=*/false, shard_path)
      .ok();
}

DiskCacheStore::Doomed DiskCacheStore::DropLocked(Export* e, uint64_t id) {
  auto it = e->entries.find(id);
  if (it == e->entries.end()) return {};
  Doomed path{e->dir_fd, RelPathOf(id, it->second.md5)};
  lru_.erase(it->second.lru);
  e->bytes -= it->second.size;
  total_bytes_ -= it->second.size;
  e->entries.erase(it);
  return path;
}

bool DiskCacheStore::HoldsLocked(const Export* e, uint64_t id, const Digest& md5) const {
  auto it = e->entries.find(id);
  return it != e->entries.end() && it->second.md5 == md5;
}

void DiskCacheStore::InsertLocked(Export* e, uint64_t id, const Digest& md5, uint32_t size,
                                  bool checked, std::vector<Doomed>* unlink) {
  auto it = e->entries.find(id);
  if (it != e->entries.end()) {
    // The same content is the same file (written again under the same name): keep it.
    if (it->second.md5 != md5) unlink->push_back({e->dir_fd, RelPathOf(id, it->second.md5)});
    lru_.erase(it->second.lru);
    e->bytes -= it->second.size;
    total_bytes_ -= it->second.size;
    e->entries.erase(it);
  }
  Entry entry;
  entry.md5 = md5;
  entry.size = size;
  entry.checked = checked;
  entry.born = checked ? ++seq_ : 0;
  lru_.emplace_front(e, id);
  entry.lru = lru_.begin();
  e->entries.emplace(id, entry);
  e->bytes += size;
  total_bytes_ += size;
  while (total_bytes_ > size_ && !lru_.empty()) {
    auto [victim, vid] = lru_.back();
    unlink->push_back(DropLocked(victim, vid));
    ++victim->stats.evictions;
  }
}

// The generation a read gets when a write or delete of its block is under way: its copy is not
// kept. Generations count changes from 0 and never reach it.
constexpr uint64_t kReadDuringChange = ~uint64_t{0};

uint64_t DiskCacheStore::BeginLocked(Export* e, uint64_t id, bool changes) {
  Pending& p = e->pending[id];
  ++p.users;
  if (changes) {
    ++p.changes;
    return ++p.gen;
  }
  return p.changes > 0 ? kReadDuringChange : p.gen;
}

bool DiskCacheStore::EndLocked(Export* e, uint64_t id, uint64_t gen, bool changes) {
  auto it = e->pending.find(id);
  Pending& p = it->second;
  if (changes) {
    --p.changes;
    ++p.gen;
  }
  // A read: no write or delete was under way when it began, and none began or ended meanwhile.
  // A write: its end is the only change since its beginning, and no other is under way.
  const bool current =
      changes ? p.gen == gen + 1 && p.changes == 0 : gen != kReadDuringChange && p.gen == gen;
  if (--p.users == 0) e->pending.erase(it);
  return current;
}

Status DiskCacheStore::Read(std::string_view export_name, uint64_t id, Bytes* data, bool* found) {
  Export* e = For(export_name);
  if (!e->usable) return next_->Read(export_name, id, data, found);
  Digest md5;
  uint32_t size = 0;
  bool have = false;
  {
    MutexLock lock(&mu_);
    auto it = e->entries.find(id);
    if (it != e->entries.end() && it->second.checked) {
      md5 = it->second.md5;
      size = it->second.size;
      have = true;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    }
  }
  if (have) {
    if (ReadCopy(e->dir_fd, RelPathOf(id, md5), PathOf(e, id, md5), size, data) &&
        Md5Of(*data) == md5) {
      MutexLock lock(&mu_);
      ++e->stats.hits;
      *found = true;
      return Status::Ok();
    }
    Doomed path;
    {
      MutexLock lock(&mu_);
      ++e->stats.errors;
      if (HoldsLocked(e, id, md5)) path = DropLocked(e, id);
    }
    UnlinkAll({path});
  }
  uint64_t gen;
  {
    MutexLock lock(&mu_);
    ++e->stats.misses;
    gen = BeginLocked(e, id, false);
  }
  Status s = next_->Read(export_name, id, data, found);
  const bool keep = s.ok() && *found;
  Digest fresh{};
  bool written = false;
  if (keep) {
    fresh = Md5Of(*data);
    written = WriteCopy(e, id, *data, fresh);
  }
  std::vector<Doomed> unlink;
  {
    MutexLock lock(&mu_);
    const bool current = EndLocked(e, id, gen, false);
    if (written && current) {
      InsertLocked(e, id, fresh, static_cast<uint32_t>(data->size()), true, &unlink);
      ++e->stats.fills;
    } else if (written && !HoldsLocked(e, id, fresh)) {
      unlink.push_back({e->dir_fd, RelPathOf(id, fresh)});
    } else if (keep && !written) {
      ++e->stats.errors;
    }
  }
  UnlinkAll(unlink);
  return s;
}

std::vector<uint64_t> DiskCacheStore::BeginChanges(Export* e, std::span<const uint64_t> ids) {
  std::vector<Doomed> unlink;
  std::vector<uint64_t> gens;
  gens.reserve(ids.size());
  {
    MutexLock lock(&mu_);
    for (uint64_t id : ids) {
      unlink.push_back(DropLocked(e, id));
      gens.push_back(BeginLocked(e, id, true));
    }
  }
  UnlinkAll(unlink);
  return gens;
}

void DiskCacheStore::EndChanges(Export* e, std::span<const uint64_t> ids,
                                const std::vector<uint64_t>& gens) {
  MutexLock lock(&mu_);
  for (size_t i = 0; i < ids.size(); ++i) EndLocked(e, ids[i], gens[i], true);
}

void DiskCacheStore::ReadBatch(std::string_view export_name, std::span<BlockRead> reads) {
  BlockStore::ReadBatch(export_name, reads);  // each through Read
}

Status DiskCacheStore::Overwrite(std::string_view export_name, uint64_t id,
                                 std::span<const uint8_t> data, bool fua) {
  return BlockStore::Overwrite(export_name, id, data, fua);  // Write
}

Status DiskCacheStore::Write(std::string_view export_name, uint64_t id,
                             std::span<const uint8_t> data, bool fua) {
  Export* e = For(export_name);
  if (!e->usable) return next_->Write(export_name, id, data, fua);
  const uint64_t gen = BeginChanges(e, {&id, 1})[0];
  Status s = next_->Write(export_name, id, data, fua);
  Digest md5{};
  bool written = false;
  if (s.ok()) {
    md5 = Md5Of(data);
    written = WriteCopy(e, id, data, md5);
  }
  std::vector<Doomed> unlink;
  {
    MutexLock lock(&mu_);
    const bool current = EndLocked(e, id, gen, true);
    if (written && current) {
      InsertLocked(e, id, md5, static_cast<uint32_t>(data.size()), true, &unlink);
      ++e->stats.writes;
    } else if (written && !HoldsLocked(e, id, md5)) {
      unlink.push_back({e->dir_fd, RelPathOf(id, md5)});
    } else if (s.ok() && !written) {
      ++e->stats.errors;
    }
  }
  UnlinkAll(unlink);
  return s;
}

Status DiskCacheStore::Delete(std::string_view export_name, std::span<const uint64_t> ids,
                              bool fua) {
  Export* e = For(export_name);
  if (!e->usable) return next_->Delete(export_name, ids, fua);
  const std::vector<uint64_t> gens = BeginChanges(e, ids);
  Status s = next_->Delete(export_name, ids, fua);
  EndChanges(e, ids, gens);
  return s;
}

Status DiskCacheStore::CopyBlock(std::string_view from, std::string_view to, uint64_t id,
                                 bool* found) {
  Export* e = For(to);
  if (!e->usable) return next_->CopyBlock(from, to, id, found);
  const std::vector<uint64_t> gens = BeginChanges(e, {&id, 1});
  Status s = next_->CopyBlock(from, to, id, found);
  EndChanges(e, {&id, 1}, gens);
  return s;
}

Status DiskCacheStore::DeleteMeta(std::string_view export_name) {
  Export* e = For(export_name);
  S3B_RETURN_IF_ERROR(next_->DeleteMeta(export_name));
  std::vector<Doomed> unlink;
  {
    MutexLock lock(&mu_);
    std::vector<uint64_t> ids;
    ids.reserve(e->entries.size());
    for (const auto& [id, entry] : e->entries) ids.push_back(id);
    for (uint64_t id : ids) unlink.push_back(DropLocked(e, id));
  }
  UnlinkAll(unlink);
  return Status::Ok();
}

Status DiskCacheStore::ListBlocks(std::string_view export_name,
                                  const std::function<void(uint64_t)>& fn) {
  return ListBlockDigests(export_name, [&](uint64_t id, std::string_view) { fn(id); });
}

Status DiskCacheStore::ListBlockDigests(
    std::string_view export_name, const std::function<void(uint64_t, std::string_view)>& fn) {
  Export* e = For(export_name);
  if (!e->usable) return next_->ListBlockDigests(export_name, fn);
  uint64_t listing, start;
  {
    MutexLock lock(&mu_);
    listing = ++e->listings;
    start = seq_;
  }
  std::vector<Doomed> unlink;
  Status s = next_->ListBlockDigests(export_name, [&](uint64_t id, std::string_view md5_hex) {
    {
      MutexLock lock(&mu_);
      auto it = e->entries.find(id);
      if (it != e->entries.end()) {
        Digest md5;
        if (ParseHexMd5(md5_hex, &md5) && md5 == it->second.md5) {
          if (!it->second.checked) ++e->stats.reused;
          it->second.checked = true;
          it->second.listed = listing;
        } else {
          // Rewritten since the copy was made (or the store cannot tell): never serve it.
          if (!it->second.checked) ++e->stats.stale;
          unlink.push_back(DropLocked(e, id));
        }
      }
    }
    fn(id, md5_hex);
  });
  if (s.ok()) {
    // What the listing did not show is not stored (any more), unless it was written after the
    // listing began.
    MutexLock lock(&mu_);
    std::vector<uint64_t> gone;
    for (const auto& [id, entry] : e->entries)
      if (entry.listed != listing && entry.born <= start) gone.push_back(id);
    for (uint64_t id : gone) {
      if (!e->entries.at(id).checked) ++e->stats.stale;
      unlink.push_back(DropLocked(e, id));
    }
  }
  UnlinkAll(unlink);
  return s;
}

DiskCacheStats DiskCacheStore::Stats(std::string_view export_name) const {
  MutexLock lock(&mu_);
  auto it = exports_.find(export_name);
  if (it == exports_.end()) return DiskCacheStats();
  DiskCacheStats s = it->second->stats;
  s.bytes = it->second->bytes;
  s.blocks = it->second->entries.size();
  return s;
}

}  // namespace s3block
