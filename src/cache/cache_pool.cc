#include "cache/cache_pool.h"

#include <algorithm>

namespace s3block {

void CacheStore::Pool::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_ || threads_wanted_ == 0) return;
  running_ = true;
  stop_ = false;
  for (uint32_t i = 0; i < threads_wanted_; ++i) threads_.emplace_back([this] { Run(); });
}

void CacheStore::Pool::Stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!running_) return;
    stop_ = true;
    threads.swap(threads_);
  }
  cv_.notify_all();
  for (auto& t : threads) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (ExportCache* c : queue_) {
    (c->*slot_).queued = false;
    (c->*slot_).want = 0;
  }
  for (auto& [when, c] : timers_) (c->*slot_).timed = false;
  queue_.clear();
  timers_.clear();
  running_ = false;
}

void CacheStore::Pool::Signal(ExportCache* c, uint32_t n) {
  uint32_t wake = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!running_ || n == 0) return;
    wake = EnqueueLocked(c, n);
  }
  if (wake >= threads_wanted_) {
    cv_.notify_all();
  } else {
    for (uint32_t i = 0; i < wake; ++i) cv_.notify_one();
  }
}

void CacheStore::Pool::Detach(ExportCache* c) {
  std::lock_guard<std::mutex> lock(mu_);
  ExportCache::PoolSlot& slot = c->*slot_;
  if (slot.queued) queue_.erase(std::find(queue_.begin(), queue_.end(), c));
  if (slot.timed) timers_.erase(slot.timer);
  slot.queued = false;
  slot.timed = false;
  slot.want = 0;
  slot.detached = true;
}

void CacheStore::Pool::Attach(ExportCache* c) {
  std::lock_guard<std::mutex> lock(mu_);
  (c->*slot_).detached = false;
}

uint32_t CacheStore::Pool::EnqueueLocked(ExportCache* c, uint32_t n) {
  ExportCache::PoolSlot& slot = c->*slot_;
  if (slot.detached) return 0;
  slot.want = std::min(slot.want + n, threads_wanted_);
  if (!slot.queued) {
    slot.queued = true;
    queue_.push_back(c);
  }
  return n;
}

void CacheStore::Pool::Run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    const auto now = Clock::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      ExportCache* c = timers_.begin()->second;
      timers_.erase(timers_.begin());
      (c->*slot_).timed = false;
      EnqueueLocked(c, 1);
      cv_.notify_one();  // this thread takes one; others may take the rest
    }
    if (queue_.empty()) {
      if (timers_.empty()) {
        cv_.wait(lk);
      } else {
        // A copy: wait_until reads it again after waking, and the timer may be gone by then.
        const Clock::time_point next = timers_.begin()->first;
        cv_.wait_until(lk, next);
      }
      continue;
    }
    // Round robin: a cache that wants more steps goes to the back of the queue.
    ExportCache* c = queue_.front();
    queue_.pop_front();
    ExportCache::PoolSlot& slot = c->*slot_;
    if (--slot.want > 0)
      queue_.push_back(c);
    else
      slot.queued = false;
    Ref ref(store_, c);
    lk.unlock();
    std::optional<Clock::time_point> wake;
    const bool more = (c->*step_)(&wake);
    lk.lock();
    if (more) {
      EnqueueLocked(c, 1);
    } else if (wake && !slot.detached && (!slot.timed || *wake < slot.timer->first)) {
      if (slot.timed) timers_.erase(slot.timer);
      slot.timer = timers_.emplace(*wake, c);
      slot.timed = true;
    }
    // Dropped without the pool's lock: dropping the last Ref of a cache being closed takes the
    // store's lock.
    lk.unlock();
    ref.reset();
    lk.lock();
  }
}

}  // namespace s3block
