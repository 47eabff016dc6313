#ifndef S3BLOCK_CACHE_CACHE_POOL_H_
#define S3BLOCK_CACHE_CACHE_POOL_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "cache/export_cache.h"
#include "s3block/cache_store.h"

namespace s3block {

// A pool of threads that work for many caches: a queue of the caches that were signalled (each
// at most once on it, with the number of threads asked to look at it), taken in turn, and a timer
// per cache for when a cache with nothing to do now will have something (a dirty block comes of
// age, a failed upload is due again).
class CacheStore::Pool {
 public:
  using Clock = std::chrono::steady_clock;
  using Step = bool (ExportCache::*)(std::optional<Clock::time_point>* wake);
  using Slot = ExportCache::PoolSlot ExportCache::*;

  Pool(const CacheStore* store, Step step, Slot slot, uint32_t threads)
      : store_(store), step_(step), slot_(slot), threads_wanted_(threads) {}
  ~Pool() { Stop(); }

  // Starts the threads, if there are any to start and they are not running.
  void Start();

  // Stops the threads once their steps end, and forgets every queued cache and timer.
  void Stop();

  // Asks n threads (at most all of them) to take a step for cache c. REQUIRES: c is not freed
  // meanwhile (the caller holds a Ref, or c's lock).
  void Signal(ExportCache* c, uint32_t n);

  // Forgets c: it leaves the queue and the timers, and is never queued again (until Attach). A
  // thread inside a step for it holds a Ref.
  void Detach(ExportCache* c);
  void Attach(ExportCache* c);

 private:
  // Queues c (if it is not) for n more steps; returns how many threads to wake.
  uint32_t EnqueueLocked(ExportCache* c, uint32_t n);

  void Run();

  const CacheStore* const store_;
  const Step step_;
  const Slot slot_;
  const uint32_t threads_wanted_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;  // guarded by mu_, as everything below
  bool stop_ = false;
  std::deque<ExportCache*> queue_;
  std::multimap<Clock::time_point, ExportCache*> timers_;
  std::vector<std::thread> threads_;
};

}  // namespace s3block

#endif  // S3BLOCK_CACHE_CACHE_POOL_H_
