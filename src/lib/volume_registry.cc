#include "lib/volume_registry.h"

#include <algorithm>
#include <cerrno>
#include <optional>
#include <utility>

#include "s3block/params.h"

namespace s3block {
namespace {

// After a failed close (the store refused the flush), how long before the closer tries again.
constexpr std::chrono::seconds kCloseRetry{5};

std::string Quoted(const std::string& name) { return "'" + QuoteForMessage(name) + "'"; }

}  // namespace

VolumeRegistry::VolumeRegistry(StoreStack stack, VolumeRegistryOptions options)
    : stack_(std::move(stack)), options_(std::move(options)) {}

VolumeRegistry::~VolumeRegistry() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (closer_.joinable()) closer_.join();
}

void VolumeRegistry::Start() {
  MutexLock lock(&mu_);
  if (closer_.joinable() || stopping_) return;
  closer_ = std::thread([this] { CloserThread(); });
}

Status VolumeRegistry::Acquire(const std::string& name, bool readonly,
                               std::shared_ptr<Volume>* out) {
  VolumeOptions vo = options_.volume;
  vo.readonly = readonly;
  UniqueLock lk(&mu_);
  for (;;) {
    if (stopping_)
      return Status::Error(ESHUTDOWN, "export " + Quoted(name) + ": the server is shutting down");
    auto it = entries_.find(name);
    if (it != entries_.end()) {
      std::shared_ptr<Entry> e = it->second;
      if (e->state != State::kOpen) {  // being opened or closed by another thread
        changed_.wait(lk.native());
        continue;
      }
      if (!readonly && e->volume->readonly()) {
        // Open it again read-write; the read-only connections keep the Volume they have.
        e->state = State::kOpening;
        lk.Unlock();
        std::shared_ptr<Volume> v;
        Status s = Volume::Open(stack_, name, vo, &v);
        lk.Lock();
        e->state = State::kOpen;
        changed_.notify_all();
        if (!s.ok()) return s;
        e->volume = std::move(v);
      }
      ++e->connections;
      *out = e->volume;
      return Status::Ok();
    }
    if (entries_.size() >= options_.max_exports) {
      auto idle = OldestIdleLocked();
      if (idle != entries_.end()) {
        const std::string victim = idle->first;
        CloseIdleLocked(victim, idle->second);
        if (entries_.count(victim) != 0) {
          return Status::Error(
              EBUSY, "cannot open export " + Quoted(name) + ": max-exports=" +
                         std::to_string(options_.max_exports) + " exports are open, and idle export " +
                         Quoted(victim) + " could not be closed to make room (see the log)");
        }
        continue;
      }
      const bool settling = std::any_of(entries_.begin(), entries_.end(), [](const auto& kv) {
        return kv.second->state != State::kOpen;
      });
      if (settling) {  // an export being closed (or opened) may leave room
        changed_.wait(lk.native());
        continue;
      }
      return Status::Error(EBUSY, "cannot open export " + Quoted(name) + ": max-exports=" +
                                      std::to_string(options_.max_exports) +
                                      " exports are open and each has a client; raise "
                                      "max-exports= or disconnect from one of them");
    }
    auto e = std::make_shared<Entry>();
    entries_[name] = e;
    lk.Unlock();
    std::shared_ptr<Volume> v;
    Status s = Volume::Open(stack_, name, vo, &v);
    if (!s.ok()) {
      // The layers may have begun to keep things for the export (the cache, once it listed the
      // blocks): give them back before the name can be opened again.
      lk.Lock();
      e->state = State::kClosing;
      lk.Unlock();
      Status released = stack_.store->CloseExport(name);
      if (!released.ok() && options_.log)
        options_.log("export " + Quoted(name) + " was not opened; the store kept some of its state: " +
                     released.message());
      lk.Lock();
      entries_.erase(name);
      changed_.notify_all();
      return s;
    }
    if (options_.log) {
      if (!v->lease_warning().empty()) options_.log("warning: " + v->lease_warning());
      if (!v->encoding_note().empty()) options_.log(v->encoding_note());
      if (v->created())
        options_.log("created export " + Quoted(name) + ": size " + std::to_string(v->size()) +
                     ", block size " + std::to_string(v->block_size()) + ", encoding " +
                     v->encoding().Describe());
    }
    lk.Lock();
    e->volume = std::move(v);
    e->state = State::kOpen;
    e->connections = 1;
    *out = e->volume;
    changed_.notify_all();
    return Status::Ok();
  }
}

Status VolumeRegistry::Release(const std::string& name, bool* last) {
  *last = false;
  UniqueLock lk(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end() || it->second->connections <= 0) return Status::Ok();
  std::shared_ptr<Entry> e = it->second;
  if (--e->connections > 0) return Status::Ok();
  *last = true;
  Status s;
  if (e->volume && !e->volume->readonly()) {  // none once CloseAll has closed it
    ++e->flushing;
    std::shared_ptr<Volume> v = e->volume;
    lk.Unlock();
    s = v->Flush();
    lk.Lock();
    --e->flushing;
  }
  e->idle_since = Clock::now();
  changed_.notify_all();  // the closer's next deadline may be this one
  return s;
}

std::map<std::string, std::shared_ptr<VolumeRegistry::Entry>>::iterator
VolumeRegistry::OldestIdleLocked() {
  auto best = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    const Entry& e = *it->second;
    if (e.state != State::kOpen || e.connections > 0 || e.flushing > 0) continue;
    if (best == entries_.end() || e.idle_since < best->second->idle_since) best = it;
  }
  return best;
}

void VolumeRegistry::CloseIdleLocked(const std::string& name, std::shared_ptr<Entry> e) {
  e->state = State::kClosing;
  std::shared_ptr<Volume> v = e->volume;
  mu_.Unlock();
  // Flush first and keep the export open if that fails: its writes stay in the cache, to be
  // stored by a later flush, and the lease stays held so that nobody else writes meanwhile.
  Status s = v->Flush();
  // Held until the store has closed the export below: its last writes are made under it.
  std::shared_ptr<ExportLease> lease;
  if (s.ok()) {
    // Nothing was written since (no connection): Close only hands over the lease now.
    Status closed = v->Close(&lease);
    if (!closed.ok() && options_.log)
      options_.log("closing idle export " + Quoted(name) + ": " + closed.message());
  }
  mu_.Lock();
  if (!s.ok()) {
    e->state = State::kOpen;
    e->idle_since = Clock::now() + kCloseRetry -
                    std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(options_.idle_timeout));
    changed_.notify_all();
    mu_.Unlock();
    if (options_.log)
      options_.log("cannot close idle export " + Quoted(name) + " (tried again later): " +
                   s.message());
    mu_.Lock();
    return;
  }
  // The name stays taken (kClosing) until every layer has let go of the export, so that an open
  // of it now waits and then starts afresh.
  std::shared_ptr<Volume> last = std::move(e->volume);
  mu_.Unlock();
  v.reset();
  last.reset();  // the Volume goes before the store forgets the export (it clears its hint)
  Status released = stack_.store->CloseExport(name);
  lease.reset();
  if (options_.log) {
    options_.log(released.ok() ? "closed idle export " + Quoted(name)
                               : "closed idle export " + Quoted(name) +
                                     "; the store kept some of its state: " + released.message());
  }
  mu_.Lock();
  entries_.erase(name);
  changed_.notify_all();
}

void VolumeRegistry::CloserThread() {
  const auto idle = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.idle_timeout));
  UniqueLock lk(&mu_);
  while (!stopping_) {
    const auto now = Clock::now();
    auto due = entries_.end();
    std::optional<Clock::time_point> wake;
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      const Entry& e = *it->second;
      if (e.state != State::kOpen || e.connections > 0 || e.flushing > 0) continue;
      const auto at = e.idle_since + idle;
      if (at <= now) {
        if (due == entries_.end() || e.idle_since < due->second->idle_since) due = it;
      } else if (!wake || at < *wake) {
        wake = at;
      }
    }
    if (due != entries_.end()) {
      const std::string name = due->first;
      CloseIdleLocked(name, due->second);
      continue;
    }
    if (wake)
      changed_.wait_until(lk.native(), *wake);
    else
      changed_.wait(lk.native());
  }
}

Status VolumeRegistry::CloseAll() {
  std::vector<std::pair<std::string, std::shared_ptr<Volume>>> volumes;
  {
    UniqueLock lk(&mu_);
    stopping_ = true;
    changed_.notify_all();
    // An export being opened or closed finishes first: a close in progress makes it durable.
    changed_.wait(lk.native(), [&]() REQUIRES(mu_) {
      return std::all_of(entries_.begin(), entries_.end(),
                         [](const auto& kv) { return kv.second->state == State::kOpen; });
    });
    for (auto& [name, e] : entries_) {
      if (!e->volume) continue;
      volumes.emplace_back(name, std::move(e->volume));
      e->state = State::kClosing;
    }
  }
  // Each export as an idle one is closed: the Volume, then the store's part of it (a log export
  // stores its last checkpoint), then the lease. A connection that still holds the Volume is
  // refused writes from now on; its reads start afresh in the store.
  Status first;
  for (auto& [name, v] : volumes) {
    std::shared_ptr<ExportLease> lease;
    Status s = v->readonly() ? Status::Ok() : v->Close(&lease);
    v.reset();
    Status released = stack_.store->CloseExport(name);
    if (s.ok()) s = released;
    lease.reset();
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

std::vector<std::string> VolumeRegistry::OpenNames() const {
  MutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [name, e] : entries_) names.push_back(name);
  return names;
}

std::vector<VolumeRegistry::ExportState> VolumeRegistry::Exports() const {
  MutexLock lock(&mu_);
  std::vector<ExportState> out;
  for (const auto& [name, e] : entries_) {
    ExportState x;
    x.name = name;
    x.state = e->state;
    if (e->state == State::kOpen && e->volume) {
      x.readonly = e->volume->readonly();
      x.block_size = e->volume->block_size();
      x.size = e->volume->size();
      x.connections = e->connections;
    }
    out.push_back(std::move(x));
  }
  return out;
}

}  // namespace s3block
