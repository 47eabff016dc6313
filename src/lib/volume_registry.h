// VolumeRegistry: the exports a server has open, shared by its connections, within a bound.
//
// Every connection to an export shares one Volume (and so one cache, one lease): that is what
// makes a flush from one connection cover the writes of all of them. The registry opens an export
// for its first connection and keeps it open while connections use it; once the last one has
// gone, the export stays open for `idle_timeout` seconds (a client that reconnects finds its
// cache warm), then a background thread closes it: its writes are made durable, its lease is
// given up and every layer of the store gives back what it held for it (memory, fds, work queued
// for the shared threads).
//
// At most `max_exports` exports are open at once, counting those being opened or closed. An open
// past that limit first has idle exports closed to make room (the oldest first) and waits for
// that; if every open export has a client, it is refused with EBUSY and a message that says so.
//
// No lock is held across I/O: opening or closing one export waits on nothing of another, except
// that an open at the limit waits for the close it needs to make room.
//
// Thread safety: safe for concurrent use.
#ifndef S3BLOCK_LIB_VOLUME_REGISTRY_H_
#define S3BLOCK_LIB_VOLUME_REGISTRY_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "util/mutex.h"

namespace s3block {

struct VolumeRegistryOptions {
  // Most exports open at once.
  uint32_t max_exports = 16;
  // Seconds an export stays open after its last connection has gone; 0 closes it at once.
  double idle_timeout = 30;
  // How exports are opened (readonly is set per open).
  VolumeOptions volume;
  // Told what the registry does that a person may want to know (exports opened, closed, a close
  // that failed and is tried again later). May be empty.
  std::function<void(const std::string& message)> log;
};

class VolumeRegistry {
 public:
  VolumeRegistry(StoreStack stack, VolumeRegistryOptions options);
  // Stops the closing thread; does not close the exports (CloseAll does).
  ~VolumeRegistry();
  VolumeRegistry(const VolumeRegistry&) = delete;
  VolumeRegistry& operator=(const VolumeRegistry&) = delete;

  // Starts the thread that closes idle exports. Without it, idle exports are closed only to make
  // room for another and by CloseAll.
  void Start();

  // Opens export `name` for one connection (or finds it open) and counts the connection.
  // A read-write open of an export open read-only opens it again read-write; connections that
  // have the read-only Volume keep it. Errors: Volume::Open's, and EBUSY at the limit.
  Status Acquire(const std::string& name, bool readonly, std::shared_ptr<Volume>* out);

  // The connection that Acquire counted has gone. If it was the export's last (*last), the
  // export is flushed, as on a clean shutdown, before its idle time starts; the flush's error is
  // returned (the data stays in the cache, and the close tries again).
  Status Release(const std::string& name, bool* last);

  // Closes every open export (best effort): for a clean shutdown, while connections may still
  // hold Volumes (their writes then fail with ESHUTDOWN). Returns the first error.
  Status CloseAll();

  // The names of the exports that hold resources now (open, or being opened or closed), sorted.
  std::vector<std::string> OpenNames() const;

  enum class State { kOpening, kOpen, kClosing };
  // One export as Exports() tells it.
  struct ExportState {
    std::string name;
    State state = State::kOpening;
    // Only when kOpen: its Volume's mode and sizes, and the connections that use it.
    bool readonly = false;
    uint32_t block_size = 0;
    uint64_t size = 0;
    int connections = 0;
  };
  // The exports that hold resources now, sorted by name, as OpenNames, with what each is.
  std::vector<ExportState> Exports() const;

 private:
  using Clock = std::chrono::steady_clock;
  // Its fields are guarded by mu_: not checked, the analysis cannot name mu_ from here.
  struct Entry {
    State state = State::kOpening;
    std::shared_ptr<Volume> volume;
    int connections = 0;
    // Flushes of the last connection's writes in progress: the closer leaves the export alone.
    int flushing = 0;
    // When the last connection went (moved on after a failed close, to try again later).
    Clock::time_point idle_since;
  };

  // Makes the export durable, gives up its lease and has the store release it; on success the
  // entry is gone. Lets go of mu_ meanwhile, and holds it again when it returns (a UniqueLock
  // of the caller's stays valid). REQUIRES: e is kOpen and idle.
  void CloseIdleLocked(const std::string& name, std::shared_ptr<Entry> e) REQUIRES(mu_);
  // The idle export that has been idle longest, or null.
  std::map<std::string, std::shared_ptr<Entry>>::iterator OldestIdleLocked() REQUIRES(mu_);
  void CloserThread() EXCLUDES(mu_);

  const StoreStack stack_;
  const VolumeRegistryOptions options_;

  mutable Mutex mu_;
  // Signalled whenever an entry changes state or goes, and when the registry stops.
  std::condition_variable changed_;
  std::map<std::string, std::shared_ptr<Entry>> entries_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread closer_;
};

}  // namespace s3block

#endif  // S3BLOCK_LIB_VOLUME_REGISTRY_H_
