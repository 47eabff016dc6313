// Status: the result of an operation that can fail.
//
// Errors travel as values, never as exceptions across module edges. Each error carries the errno
// that an NBD client will see (EIO, EINVAL, ENOSPC, ...) and a message a person can act on.
#ifndef S3BLOCK_STATUS_H_
#define S3BLOCK_STATUS_H_

#include <cerrno>
#include <string>
#include <utility>

namespace s3block {

class [[nodiscard]] Status {
 public:
  // A default-constructed Status is success.
  Status() = default;

  static Status Ok() { return Status(); }
  // REQUIRES: err != 0.
  static Status Error(int err, std::string message) { return Status(err, std::move(message)); }
  static Status IoError(std::string message) { return Status(EIO, std::move(message)); }
  static Status InvalidArgument(std::string message) { return Status(EINVAL, std::move(message)); }
  static Status NotSupported(std::string message) { return Status(ENOTSUP, std::move(message)); }
  static Status NoSpace(std::string message) { return Status(ENOSPC, std::move(message)); }
  static Status PermissionDenied(std::string message) { return Status(EPERM, std::move(message)); }
  // An error from a failed system call: the message is "<context>: <strerror(err)>".
  static Status FromErrno(int err, const std::string& context);

  bool ok() const { return err_ == 0; }
  // The errno for the NBD client; 0 on success.
  int err() const { return err_; }
  const std::string& message() const { return message_; }
  // "OK", or the message.
  std::string ToString() const { return ok() ? "OK" : message_; }

  // Returns a copy whose message is "<context>: <message>" (success stays success).
  Status Annotate(const std::string& context) const {
    return ok() ? *this : Status(err_, context + ": " + message_);
  }

 private:
  Status(int err, std::string message) : err_(err == 0 ? EIO : err), message_(std::move(message)) {}

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
