// Work in batches of a bounded size, such as deletes (S3's DeleteObjects takes 1000 keys).
#ifndef S3BLOCK_UTIL_BATCHES_H_
#define S3BLOCK_UTIL_BATCHES_H_

#include <algorithm>
#include <cstddef>
#include <span>

namespace s3block {

// Calls fn on consecutive parts of `all` of at most `most` items each (REQUIRES: most > 0), in
// order, and stops at the first result whose ok() is false. Returns that result, else a
// default-constructed one (which must mean success).
template <typename T, typename Fn>
auto ForEachBatch(std::span<T> all, size_t most, Fn&& fn) -> decltype(fn(all)) {
  for (size_t i = 0; i < all.size(); i += most) {
    auto result = fn(all.subspan(i, std::min(most, all.size() - i)));
    if (!result.ok()) return result;
  }
  return {};
}

}  // namespace s3block

#endif  // S3BLOCK_UTIL_BATCHES_H_
