#include "s3block/status.h"

#include <cstring>

namespace s3block {

Status Status::FromErrno(int err, const std::string& context) {
  return Status(KindOf(err), err, context + ": " + std::strerror(err));
}

Status::Kind Status::KindOf(int err) {
  switch (err) {
    case 0: return Kind::kOk;
    case EINVAL: return Kind::kInvalidArgument;
    case ENOENT: return Kind::kNotFound;
    case EEXIST: return Kind::kAlreadyExists;
    case EBUSY: return Kind::kBusy;
    case ENOTSUP: return Kind::kNotSupported;  // also EOPNOTSUPP, the same number on Linux
    case ENOSPC: case EDQUOT: return Kind::kNoSpace;
    case EPERM: case EACCES: case EROFS: return Kind::kPermission;
    case ECANCELED: return Kind::kCancelled;
    default: return Kind::kIo;
  }
}

}  // namespace s3block
