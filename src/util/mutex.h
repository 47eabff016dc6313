// Mutexes whose lock rules clang checks at compile time (-Wthread-safety).
//
// A member written `T x_ GUARDED_BY(mu_);` may be touched only with mu_ held; a function declared
// `void FooLocked() REQUIRES(mu_);` may be called only with it held, and one declared
// `EXCLUDES(mu_)` only without. clang checks this in every function but constructors and
// destructors; GCC ignores the annotations (the macros are empty there). std::mutex carries no
// annotations in libstdc++, so locks go through the thin wrappers below, which cost nothing:
//
//   Mutex        a std::mutex the analysis knows (Lock/Unlock; native() for waiting)
//   MutexLock    holds a Mutex for a scope, as std::lock_guard
//   UniqueLock   holds a Mutex for a scope, may let go of it and take it again in between, and
//                is what a std::condition_variable waits on (native())
//   SharedMutex  the same over std::shared_mutex, held for a scope by WriterMutexLock
//                (exclusively) or ReaderMutexLock (shared with other readers)
//
// A condition variable's wait lets go of the mutex and takes it again before it returns, so to
// the analysis the mutex stays held across it. A predicate passed to the wait runs with the
// mutex held but is a function of its own: declare it `[&]() REQUIRES(mu_) { ... }`. A
// REQUIRES(mu_) function that lets go of the mutex for a while calls mu_.Unlock() and
// mu_.Lock(): the analysis cannot tell which mutex a UniqueLock passed by reference holds.
#ifndef S3BLOCK_UTIL_MUTEX_H_
#define S3BLOCK_UTIL_MUTEX_H_

#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define S3B_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define S3B_THREAD_ANNOTATION(x)
#endif

// On a class: its objects are locks (of the kind named, for messages).
#define CAPABILITY(name) S3B_THREAD_ANNOTATION(capability(name))
// On a class: an object that holds a lock from its constructor to its destructor.
#define SCOPED_CAPABILITY S3B_THREAD_ANNOTATION(scoped_lockable)
// On a member: read or written only with the lock held (shared for reads, exclusive for writes).
#define GUARDED_BY(x) S3B_THREAD_ANNOTATION(guarded_by(x))
// On a pointer member: what it points to is read or written only with the lock held.
#define PT_GUARDED_BY(x) S3B_THREAD_ANNOTATION(pt_guarded_by(x))
// On a function: the caller holds the lock(s) (exclusively, or at least shared).
#define REQUIRES(...) S3B_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) S3B_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
// On a function: the caller does not hold the lock(s): the function takes them itself.
#define EXCLUDES(...) S3B_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// On a function: it takes (or gives up) the lock(s), or `this` if none is named.
#define ACQUIRE(...) S3B_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) S3B_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) S3B_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) S3B_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
// On a function: it takes the lock when it returns `result`.
#define TRY_ACQUIRE(...) S3B_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
// On a function: it checks (at run time, if at all) that the lock is held; the analysis trusts it.
#define ASSERT_CAPABILITY(x) S3B_THREAD_ANNOTATION(assert_capability(x))
// On a function: it returns a reference to the lock named.
#define RETURN_CAPABILITY(x) S3B_THREAD_ANNOTATION(lock_returned(x))
// On a function: not checked. Each use says why the analysis cannot follow it.
#define NO_THREAD_SAFETY_ANALYSIS S3B_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace s3block {

// A std::mutex (Mutex) or a std::shared_mutex (SharedMutex) that the analysis knows.
template <typename Native>
class CAPABILITY("mutex") BasicMutex {
 public:
  BasicMutex() = default;
  BasicMutex(const BasicMutex&) = delete;
  BasicMutex& operator=(const BasicMutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  bool TryLock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // SharedMutex only: held with other readers.
  void LockShared() ACQUIRE_SHARED() { mu_.lock_shared(); }
  void UnlockShared() RELEASE_SHARED() { mu_.unlock_shared(); }
  // Tells the analysis the mutex is held where it cannot see it taken. Checks nothing.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

  // The std::mutex itself, for UniqueLock and ReaderMutexLock. Locking it directly escapes the
  // analysis.
  Native& native() { return mu_; }

 private:
  Native mu_;
};
using Mutex = BasicMutex<std::mutex>;
using SharedMutex = BasicMutex<std::shared_mutex>;

// Holds a mutex (exclusively) for a scope, as std::lock_guard.
template <typename M>
class SCOPED_CAPABILITY ScopedLock {
 public:
  explicit ScopedLock(M* mu) ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~ScopedLock() RELEASE() { mu_->Unlock(); }
  ScopedLock(const ScopedLock&) = delete;
  ScopedLock& operator=(const ScopedLock&) = delete;

 private:
  M* const mu_;
};
using MutexLock = ScopedLock<Mutex>;
using WriterMutexLock = ScopedLock<SharedMutex>;

// Holds a SharedMutex shared (with other readers) for a scope, as std::shared_lock.
class SCOPED_CAPABILITY ReaderMutexLock {
 public:
  explicit ReaderMutexLock(SharedMutex* mu) ACQUIRE_SHARED(mu) : lock_(mu->native()) {}
  ~ReaderMutexLock() RELEASE() {}

 private:
  std::shared_lock<std::shared_mutex> lock_;  // not copyable, so neither is this
};

class SCOPED_CAPABILITY UniqueLock {
 public:
  explicit UniqueLock(Mutex* mu) ACQUIRE(mu) : lock_(mu->native()) {}
  // Lets go of the mutex if it is still held.
  ~UniqueLock() RELEASE() {}
  UniqueLock(const UniqueLock&) = delete;
  UniqueLock& operator=(const UniqueLock&) = delete;

  // Let go of the mutex for a while, and take it again. REQUIRES: held / not held.
  void Unlock() RELEASE() { lock_.unlock(); }
  void Lock() ACQUIRE() { lock_.lock(); }

  // What std::condition_variable's wait, wait_for and wait_until take.
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace s3block

#endif  // S3BLOCK_UTIL_MUTEX_H_
