#include "util/zero.h"

#include <cstring>

namespace s3block {

bool IsAllZero(const uint8_t* p, size_t n) {
  // Check the first bytes one at a time, then compare the buffer with itself shifted by 16 bytes:
  // if the first 16 are zero and every byte equals the one 16 before it, all are zero.
  size_t head = n < 16 ? n : 16;
  for (size_t i = 0; i < head; ++i)
    if (p[i] != 0) return false;
  return n <= 16 || std::memcmp(p, p + 16, n - 16) == 0;
}

}  // namespace s3block
