#include "s3block/disk_cache_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "s3/sigv4.h"
#include "s3block/params.h"

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

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// 32 hex digits (our file names, and the digests ListBlockDigests gives).
bool ParseHexMd5(std::string_view hex, Digest* out) {
  if (hex.size() != 32) return false;
  for (size_t i = 0; i < out->size(); ++i) {
    int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

// A copy's file name: "<id>.<md5>", id in decimal without leading zeros.
bool ParseCopyName(std::string_view name, uint64_t* id, Digest* md5) {
  size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 20) return false;
  std::string_view digits = name.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return false;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    if (v > (UINT64_MAX - 9) / 10) return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  // Written by HexEncode, lower-case: any other spelling is not a file of ours.
  std::string_view hex = name.substr(dot + 1);
  if (hex.find_first_of("ABCDEF") != std::string_view::npos || !ParseHexMd5(hex, md5)) return false;
  *id = v;
  return true;
}

Status MakeDir(const std::string& path, const std::string& what) {
  if (::mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return Status::Ok();
  return Status::FromErrno(errno, what + ": cannot create directory " + path);
}

bool WriteAllFd(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads a file that must hold exactly `size` bytes.
bool ReadCopy(const std::string& path, uint32_t size, Bytes* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out->resize(size);
  size_t got = 0;
  bool ok = true;
  while (got < size) {
    ssize_t r = ::read(fd, out->data() + got, size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ok = false;
      break;
    }
    got += static_cast<size_t>(r);
  }
  uint8_t extra;
  if (ok && ::read(fd, &extra, 1) != 0) ok = false;  // longer than recorded: not our copy
  ::close(fd);
  return ok;
}

void UnlinkAll(const std::vector<std::string>& paths) {
  for (const std::string& p : paths)
    if (!p.empty()) ::unlink(p.c_str());
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
  for (auto& [name, e] : exports_)
    if (e->lock_fd >= 0) ::close(e->lock_fd);
}

std::string DiskCacheStore::Describe() const {
  return next_->Describe() + ", disk cache " + dir_;
}

Status DiskCacheStore::Check() {
  S3B_RETURN_IF_ERROR(next_->Check());
  const std::string what = "disk-cache=" + dir_;
  S3B_RETURN_IF_ERROR(MakeDir(dir_, what));
  S3B_RETURN_IF_ERROR(MakeDir(store_dir_, what));
  S3B_RETURN_IF_ERROR(MakeDir(store_dir_ + "/exports", what));
  // Says which store the directory caches, for a person looking at it; also proves it writable.
  const std::string path = store_dir_ + "/store", tmp = path + ".tmp";
  const std::string text = next_->Describe() + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, what + ": cannot write in " + store_dir_);
  bool ok = WriteAllFd(fd, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  int err = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    if (ok) err = errno;
    ::unlink(tmp.c_str());
    return Status::FromErrno(err, what + ": cannot write in " + store_dir_);
  }
  return Status::Ok();
}

DiskCacheStore::Export* DiskCacheStore::For(std::string_view export_name) {
  Export* e;
  {
    std::lock_guard<std::mutex> lock(mu_);
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

void DiskCacheStore::Load(Export* e) {
  std::lock_guard<std::mutex> load_lock(e->load_mu);
  if (e->loaded.load(std::memory_order_acquire)) return;
  struct Found {
    uint64_t id;
    Digest md5;
    uint32_t size;
  };
  std::vector<Found> found;
  std::vector<std::string> junk;
  bool usable = false, locked_out = false;
  int fd = -1;
  // Check() made the parent directories; a test or a later removal may not have: make them.
  if (MakeDir(dir_, "").ok() && MakeDir(store_dir_, "").ok() &&
      MakeDir(store_dir_ + "/exports", "").ok() && MakeDir(e->dir, "").ok()) {
    fd = ::open((e->dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      locked_out = errno == EWOULDBLOCK;
      ::close(fd);
      fd = -1;
    }
  }
  if (fd >= 0) {
    usable = true;
    if (DIR* top = ::opendir(e->dir.c_str())) {
      while (struct dirent* d = ::readdir(top)) {
        std::string_view shard = d->d_name;
        if (shard.empty() || shard.find_first_not_of("0123456789") != std::string_view::npos)
          continue;
        const std::string shard_dir = e->dir + "/" + std::string(shard);
        DIR* sd = ::opendir(shard_dir.c_str());
        if (sd == nullptr) continue;
        while (struct dirent* f = ::readdir(sd)) {
          std::string_view name = f->d_name;
          if (name == "." || name == "..") continue;
          uint64_t id;
          Digest md5;
          struct stat st;
          // Anything else here is a temporary file of a process that died, or not ours.
          if (!ParseCopyName(name, &id, &md5) || ::fstatat(::dirfd(sd), f->d_name, &st, 0) != 0 ||
              !S_ISREG(st.st_mode) || st.st_size > static_cast<off_t>(UINT32_MAX) ||
              std::to_string(id / kShardBlocks) != shard) {
            junk.push_back(shard_dir + "/" + std::string(name));
            continue;
          }
          found.push_back({id, md5, static_cast<uint32_t>(st.st_size)});
        }
        ::closedir(sd);
      }
      ::closedir(top);
    }
  }
  std::vector<std::string> unlink;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e->lock_fd = fd;
    e->usable = usable;
    e->stats.locked_out = locked_out ? 1 : 0;
    for (const Found& f : found) InsertLocked(e, f.id, f.md5, f.size, false, &unlink);
    e->loaded.store(true, std::memory_order_release);
  }
  UnlinkAll(junk);
  UnlinkAll(unlink);
}

std::string DiskCacheStore::PathOf(const Export* e, uint64_t id, const Digest& md5) const {
  return e->dir + "/" + std::to_string(id / kShardBlocks) + "/" + std::to_string(id) + "." +
         HexEncode(md5);
}

bool DiskCacheStore::WriteCopy(Export* e, uint64_t id, std::span<const uint8_t> data,
                               const Digest& md5) {
  const std::string path = PathOf(e, id, md5);
  uint64_t n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    n = ++tmp_counter_;
  }
  const std::string tmp = path + ".tmp" + std::to_string(n);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 && errno == ENOENT) {
    ::mkdir((e->dir + "/" + std::to_string(id / kShardBlocks)).c_str(), 0700);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  }
  if (fd < 0) return false;
  bool ok = WriteAllFd(fd, data.data(), data.size());
  ok = ::close(fd) == 0 && ok;
  if (ok && ::rename(tmp.c_str(), path.c_str()) == 0) return true;
  ::unlink(tmp.c_str());
  return false;
}

std::string DiskCacheStore::DropLocked(Export* e, uint64_t id) {
  auto it = e->entries.find(id);
  if (it == e->entries.end()) return "";
  std::string path = PathOf(e, id, it->second.md5);
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
                                  bool checked, std::vector<std::string>* unlink) {
  auto it = e->entries.find(id);
  if (it != e->entries.end()) {
    // The same content is the same file (written again under the same name): keep it.
    if (it->second.md5 != md5) unlink->push_back(PathOf(e, id, it->second.md5));
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
    std::lock_guard<std::mutex> lock(mu_);
    auto it = e->entries.find(id);
    if (it != e->entries.end() && it->second.checked) {
      md5 = it->second.md5;
      size = it->second.size;
      have = true;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    }
  }
  if (have) {
    if (ReadCopy(PathOf(e, id, md5), size, data) && Md5Of(*data) == md5) {
      std::lock_guard<std::mutex> lock(mu_);
      ++e->stats.hits;
      *found = true;
      return Status::Ok();
    }
    std::string path;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++e->stats.errors;
      if (HoldsLocked(e, id, md5)) path = DropLocked(e, id);
    }
    UnlinkAll({path});
  }
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(mu_);
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
  std::vector<std::string> unlink;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool current = EndLocked(e, id, gen, false);
    if (written && current) {
      InsertLocked(e, id, fresh, static_cast<uint32_t>(data->size()), true, &unlink);
      ++e->stats.fills;
    } else if (written && !HoldsLocked(e, id, fresh)) {
      unlink.push_back(PathOf(e, id, fresh));
    } else if (keep && !written) {
      ++e->stats.errors;
    }
  }
  UnlinkAll(unlink);
  return s;
}

std::vector<uint64_t> DiskCacheStore::BeginChanges(Export* e, std::span<const uint64_t> ids) {
  std::vector<std::string> unlink;
  std::vector<uint64_t> gens;
  gens.reserve(ids.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) EndLocked(e, ids[i], gens[i], true);
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
  std::vector<std::string> unlink;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool current = EndLocked(e, id, gen, true);
    if (written && current) {
      InsertLocked(e, id, md5, static_cast<uint32_t>(data.size()), true, &unlink);
      ++e->stats.writes;
    } else if (written && !HoldsLocked(e, id, md5)) {
      unlink.push_back(PathOf(e, id, md5));
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
  std::vector<std::string> unlink;
  {
    std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
    listing = ++e->listings;
    start = seq_;
  }
  std::vector<std::string> unlink;
  Status s = next_->ListBlockDigests(export_name, [&](uint64_t id, std::string_view md5_hex) {
    {
      std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exports_.find(export_name);
  if (it == exports_.end()) return DiskCacheStats();
  DiskCacheStats s = it->second->stats;
  s.bytes = it->second->bytes;
  s.blocks = it->second->entries.size();
  return s;
}

}  // namespace s3block
