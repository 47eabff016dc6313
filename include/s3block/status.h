// Status: the result of an operation that can fail.
//
// Errors travel as values, never as exceptions across module edges. Each error carries the errno
// that an NBD client will see (EIO, EINVAL, ENOSPC, ...), a message a person can act on, and a
// kind: what went wrong, for the code that decides what to do about it. Code tests the kind,
// never the errno, which is only what a client is told.
#ifndef S3BLOCK_STATUS_H_
#define S3BLOCK_STATUS_H_

#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>

namespace s3block {

class [[nodiscard]] Status {
 public:
  // What went wrong. The errno each kind's factory sets is given; Error and FromErrno take the
  // kind from the errno (a failed system call's errno is what went wrong).
  enum class Kind : uint8_t {
    kOk,
    kInvalidArgument,  // EINVAL: a name, value or request that is wrong
    kNotFound,         // ENOENT: no such export, file or directory
    kAlreadyExists,    // EEXIST
    kBusy,             // EBUSY: held by someone else (a server's lease, a device in use, a limit)
    kUnconfirmed,      // EINVAL: it would destroy data the caller did not allow it to (a shrink)
    kNotSupported,     // ENOTSUP: this store or server cannot do it; the caller may do without
    kNoSpace,          // ENOSPC (from a system call, also EDQUOT)
    kPermission,       // EPERM (from a system call, also EACCES, EROFS): e.g. no or the wrong key
    kCancelled,        // ECANCELED: stopped on request; what was done is consistent
    kIo,               // EIO, and any failure of no other kind
  };
  static constexpr Kind kLastKind = Kind::kIo;

  // A default-constructed Status is success.
  Status() = default;

  static Status Ok() { return Status(); }
  // REQUIRES: err != 0. The kind is the errno's (KindOf).
  static Status Error(int err, std::string message) {
    return Status(KindOf(err), err, std::move(message));
  }
  // An error of the kind named, with that kind's errno (above).
  static Status IoError(std::string m) { return Status(Kind::kIo, EIO, std::move(m)); }
  static Status InvalidArgument(std::string m) { return Status(Kind::kInvalidArgument, EINVAL, std::move(m)); }
  static Status NotSupported(std::string m) { return Status(Kind::kNotSupported, ENOTSUP, std::move(m)); }
  static Status NoSpace(std::string m) { return Status(Kind::kNoSpace, ENOSPC, std::move(m)); }
  static Status PermissionDenied(std::string m) { return Status(Kind::kPermission, EPERM, std::move(m)); }
  // The kinds a caller decides by.
  static Status NotFound(std::string m) { return Status(Kind::kNotFound, ENOENT, std::move(m)); }
  static Status AlreadyExists(std::string m) { return Status(Kind::kAlreadyExists, EEXIST, std::move(m)); }
  static Status Busy(std::string m) { return Status(Kind::kBusy, EBUSY, std::move(m)); }
  static Status Unconfirmed(std::string m) { return Status(Kind::kUnconfirmed, EINVAL, std::move(m)); }
  static Status Cancelled(std::string m) { return Status(Kind::kCancelled, ECANCELED, std::move(m)); }
  // An error from a failed system call: the message is "<context>: <strerror(err)>".
  static Status FromErrno(int err, const std::string& context);

  // The kind of an error with this errno: kIo for any errno of no other kind; kOk for 0.
  static Kind KindOf(int err);

  bool ok() const { return kind_ == Kind::kOk; }
  Kind kind() const { return kind_; }
  bool IsNotFound() const { return kind_ == Kind::kNotFound; }
  bool IsBusy() const { return kind_ == Kind::kBusy; }
  bool IsNotSupported() const { return kind_ == Kind::kNotSupported; }
  bool IsPermissionDenied() const { return kind_ == Kind::kPermission; }
  bool IsIoError() const { return kind_ == Kind::kIo; }
  // The errno for the NBD client; 0 on success.
  int err() const { return err_; }
  const std::string& message() const { return message_; }
  // "OK", or the message.
  std::string ToString() const { return ok() ? "OK" : message_; }

  // Returns a copy whose message is "<context>: <message>" (success stays success; the kind and
  // the errno stay as they are).
  Status Annotate(const std::string& context) const {
    return ok() ? *this : Status(kind_, err_, context + ": " + message_);
  }

 private:
  // An error is never kOk nor errno 0: either becomes an I/O error.
  Status(Kind kind, int err, std::string message)
      : kind_(kind == Kind::kOk ? Kind::kIo : kind),
        err_(err == 0 ? EIO : err),
        message_(std::move(message)) {}

  Kind kind_ = Kind::kOk;
  int err_ = 0;
  std::string message_;
};

}  // namespace s3block

// Returns from the current function if `expr` yields a failed Status.
#define S3B_RETURN_IF_ERROR(expr)               \
  do {                                          \
    ::s3block::Status s3b_status_ = (expr);     \
    if (!s3b_status_.ok()) return s3b_status_;  \
  } while (0)

#endif  // S3BLOCK_STATUS_H_
