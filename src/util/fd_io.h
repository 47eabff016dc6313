// Whole reads and writes on a file descriptor: the loops around read(2) and write(2) that retry
// after EINTR and continue after a short transfer.
//
// Each returns the bytes transferred, or -1 with errno set. A read returns fewer than asked only
// where the file ends; a write returns all or -1.
#ifndef S3BLOCK_UTIL_FD_IO_H_
#define S3BLOCK_UTIL_FD_IO_H_

#include <sys/types.h>

#include <cstddef>

namespace s3block {

ssize_t ReadFull(int fd, void* buf, size_t n);
ssize_t PreadFull(int fd, void* buf, size_t n, off_t offset);
ssize_t WriteFull(int fd, const void* buf, size_t n);
ssize_t PwriteFull(int fd, const void* buf, size_t n, off_t offset);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_FD_IO_H_
