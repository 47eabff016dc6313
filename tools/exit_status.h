// The exit status of the s3block command, the one place where a failure's kind becomes a code.
// The codes are documented in the manual (docs/s3block.pod, EXIT STATUS) and in --help.
#ifndef S3BLOCK_TOOLS_EXIT_STATUS_H_
#define S3BLOCK_TOOLS_EXIT_STATUS_H_

#include "s3block/status.h"

namespace s3block {

constexpr int kExitOk = 0, kExitFail = 1, kExitUsage = 2, kExitDamage = 3, kExitBusy = 4,
              kExitInterrupted = 130;

// The exit status for a Status of this kind. No default case: the compiler names a kind that is
// added without a code here (-Wswitch).
constexpr int ExitStatusFor(Status::Kind kind) {
  using K = Status::Kind;
  switch (kind) {
    case K::kOk: return kExitOk;
    case K::kUnconfirmed: return kExitUsage;  // the command line lacks --force
    case K::kBusy: return kExitBusy;          // a server holds the export: wait, or --force
    case K::kCancelled: return kExitInterrupted;
    case K::kInvalidArgument:
    case K::kNotFound:
    case K::kAlreadyExists:
    case K::kNotSupported:
    case K::kNoSpace:
    case K::kPermission:
    case K::kIo:
      return kExitFail;
  }
  return kExitFail;  // not a kind: a value cast from elsewhere
}

}  // namespace s3block

#endif  // S3BLOCK_TOOLS_EXIT_STATUS_H_
