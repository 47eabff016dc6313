// What the serving process tells an NBD client: NbdErrno keeps to the errnos NBD carries.
#include <cerrno>

#include <gtest/gtest.h>

#include "lib/server.h"

namespace s3block {
namespace {

TEST(NbdErrno, KeepsWhatNbdCarriesAndMapsTheRest) {
  for (int err : {EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN, EDQUOT, EFBIG, EPERM})
    EXPECT_EQ(NbdErrno(err), err) << err;
  for (int err : {EROFS, EACCES}) EXPECT_EQ(NbdErrno(err), EPERM) << err;
  for (int err : {EMFILE, ENFILE, EAGAIN}) EXPECT_EQ(NbdErrno(err), ENOMEM) << err;
  for (int err : {EBUSY, ENOENT, ECANCELED, EUCLEAN}) EXPECT_EQ(NbdErrno(err), EIO) << err;
}

}  // namespace
}  // namespace s3block
