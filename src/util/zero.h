// Zero tests: an all-zero block is not stored (it reads as a block never written).
#ifndef S3BLOCK_UTIL_ZERO_H_
#define S3BLOCK_UTIL_ZERO_H_

#include <cstddef>
#include <cstdint>

namespace s3block {

// True if the n bytes at p are all zero (n may be 0).
bool IsAllZero(const uint8_t* p, size_t n);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_ZERO_H_
