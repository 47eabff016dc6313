#include "util/fd_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace s3block {
namespace {

// Runs op(pointer, left, offset) until n bytes are done, op returns 0 (end of file) or an error
// other than EINTR.
template <typename Ptr, typename Op>
ssize_t Loop(Ptr buf, size_t n, off_t offset, Op op) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = op(buf + done, n - done, offset + static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

}  // namespace

ssize_t ReadFull(int fd, void* buf, size_t n) {
  return Loop(static_cast<uint8_t*>(buf), n, 0,
              [fd](uint8_t* p, size_t left, off_t) { return ::read(fd, p, left); });
}

ssize_t PreadFull(int fd, void* buf, size_t n, off_t offset) {
  return Loop(static_cast<uint8_t*>(buf), n, offset,
              [fd](uint8_t* p, size_t left, off_t at) { return ::pread(fd, p, left, at); });
}

ssize_t WriteFull(int fd, const void* buf, size_t n) {
  return Loop(static_cast<const uint8_t*>(buf), n, 0,
              [fd](const uint8_t* p, size_t left, off_t) { return ::write(fd, p, left); });
}

ssize_t PwriteFull(int fd, const void* buf, size_t n, off_t offset) {
  return Loop(static_cast<const uint8_t*>(buf), n, offset,
              [fd](const uint8_t* p, size_t left, off_t at) { return ::pwrite(fd, p, left, at); });
}

}  // namespace s3block
