// This machine's name, for leases and for the holder names other servers are shown.
#ifndef S3BLOCK_UTIL_HOST_H_
#define S3BLOCK_UTIL_HOST_H_

#include <string>

namespace s3block {

// gethostname(2), or "" if it fails.
std::string HostName();

}  // namespace s3block

#endif  // S3BLOCK_UTIL_HOST_H_
