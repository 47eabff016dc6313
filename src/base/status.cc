#include "s3block/status.h"

#include <cstring>

namespace s3block {

Status Status::FromErrno(int err, const std::string& context) {
  return Status(err, context + ": " + std::strerror(err));
}

}  // namespace s3block
