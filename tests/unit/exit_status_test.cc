// The s3block command's exit status for each kind of failure (tools/exit_status.h).
#include "exit_status.h"

#include <gtest/gtest.h>

#include <set>

namespace s3block {
namespace {

using Kind = Status::Kind;

TEST(ExitStatusTest, EveryKindHasADocumentedCode) {
  // The codes of the manual's EXIT STATUS (docs/s3block.pod) that a failure can give; 3 (verify
  // found damage) is a result, not a failure.
  const std::set<int> documented = {kExitFail, kExitUsage, kExitBusy, kExitInterrupted};
  EXPECT_EQ(ExitStatusFor(Kind::kOk), kExitOk);
  for (int k = static_cast<int>(Kind::kOk) + 1; k <= static_cast<int>(Status::kLastKind); ++k) {
    const int code = ExitStatusFor(static_cast<Kind>(k));
    EXPECT_TRUE(documented.count(code) == 1) << "kind " << k << " exits " << code;
  }
}

// The codes the command's tests assert (tests/scripts/admin_cli_*.sh).
TEST(ExitStatusTest, CodesTheScriptsRelyOn) {
  EXPECT_EQ(ExitStatusFor(Kind::kInvalidArgument), 1);  // a hostile export name
  EXPECT_EQ(ExitStatusFor(Kind::kNotFound), 1);
  EXPECT_EQ(ExitStatusFor(Kind::kAlreadyExists), 1);
  EXPECT_EQ(ExitStatusFor(Kind::kIo), 1);               // an incomplete export
  EXPECT_EQ(ExitStatusFor(Kind::kUnconfirmed), 2);      // shrinking without --force
  EXPECT_EQ(ExitStatusFor(Kind::kBusy), 4);             // held by a server, device in use
  EXPECT_EQ(ExitStatusFor(Kind::kCancelled), 130);
}

}  // namespace
}  // namespace s3block
