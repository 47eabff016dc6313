#include "s3block/status.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace s3block {
namespace {

using Kind = Status::Kind;

TEST(StatusTest, SuccessHasKindOkAndErrnoZero) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.kind(), Kind::kOk);
  EXPECT_EQ(s.err(), 0);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(s.Annotate("context").ok());
}

TEST(StatusTest, EachFactorySetsItsKindAndErrno) {
  struct Case {
    std::function<Status(std::string)> make;
    Kind kind;
    int err;
  };
  const std::vector<Case> cases = {
      {Status::IoError, Kind::kIo, EIO},
      {Status::InvalidArgument, Kind::kInvalidArgument, EINVAL},
      {Status::NotFound, Kind::kNotFound, ENOENT},
      {Status::AlreadyExists, Kind::kAlreadyExists, EEXIST},
      {Status::Busy, Kind::kBusy, EBUSY},
      {Status::Unconfirmed, Kind::kUnconfirmed, EINVAL},
      {Status::NotSupported, Kind::kNotSupported, ENOTSUP},
      {Status::NoSpace, Kind::kNoSpace, ENOSPC},
      {Status::PermissionDenied, Kind::kPermission, EPERM},
      {Status::Cancelled, Kind::kCancelled, ECANCELED},
  };
  for (const Case& c : cases) {
    Status s = c.make("what went wrong");
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.kind(), c.kind) << s.message();
    EXPECT_EQ(s.err(), c.err) << s.message();
    EXPECT_EQ(s.message(), "what went wrong");
  }
}

TEST(StatusTest, ErrorAndFromErrnoTakeTheKindOfTheErrno) {
  EXPECT_EQ(Status::Error(ENOENT, "x").kind(), Kind::kNotFound);
  EXPECT_EQ(Status::Error(EBUSY, "x").kind(), Kind::kBusy);
  EXPECT_EQ(Status::Error(EACCES, "x").kind(), Kind::kPermission);
  EXPECT_EQ(Status::Error(EACCES, "x").err(), EACCES);  // the errno stays as given
  EXPECT_EQ(Status::Error(EROFS, "x").kind(), Kind::kPermission);
  EXPECT_EQ(Status::Error(EDQUOT, "x").kind(), Kind::kNoSpace);
  EXPECT_EQ(Status::Error(ENOMEM, "x").kind(), Kind::kIo);  // no kind of its own
  EXPECT_EQ(Status::Error(ENOMEM, "x").err(), ENOMEM);

  Status f = Status::FromErrno(EEXIST, "mkdir /d");
  EXPECT_EQ(f.kind(), Kind::kAlreadyExists);
  EXPECT_EQ(f.err(), EEXIST);
  EXPECT_EQ(f.message().rfind("mkdir /d: ", 0), 0u) << f.message();
}

TEST(StatusTest, AnErrorWithErrnoZeroIsAnIoError) {
  Status s = Status::Error(0, "no errno");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.kind(), Kind::kIo);
  EXPECT_EQ(s.err(), EIO);
}

TEST(StatusTest, AnnotateKeepsTheKindAndTheErrno) {
  // kUnconfirmed carries EINVAL, whose own kind differs: the kind must not be derived again.
  Status s = Status::Unconfirmed("needs --force").Annotate("resize").Annotate("s3block");
  EXPECT_EQ(s.kind(), Kind::kUnconfirmed);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_EQ(s.message(), "s3block: resize: needs --force");

  Status a = Status::Error(EACCES, "open f").Annotate("store");
  EXPECT_EQ(a.kind(), Kind::kPermission);
  EXPECT_EQ(a.err(), EACCES);
}

TEST(StatusTest, PredicatesTestTheKind) {
  EXPECT_TRUE(Status::NotFound("x").IsNotFound());
  EXPECT_TRUE(Status::Busy("x").IsBusy());
  EXPECT_TRUE(Status::NotSupported("x").IsNotSupported());
  EXPECT_TRUE(Status::PermissionDenied("x").IsPermissionDenied());
  EXPECT_TRUE(Status::IoError("x").IsIoError());
  EXPECT_FALSE(Status::IoError("x").IsNotFound());
  EXPECT_FALSE(Status::Ok().IsIoError());
}

}  // namespace
}  // namespace s3block
