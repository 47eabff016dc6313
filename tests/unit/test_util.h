// Helpers shared by the unit tests.
#ifndef S3BLOCK_TESTS_UNIT_TEST_UTIL_H_
#define S3BLOCK_TESTS_UNIT_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

namespace s3block::testing {

// A fresh directory under $TMPDIR, removed with everything in it at the end of the scope.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "s3block-test-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    ::s3block::Status s3b_st_ = (expr);                  \
    ASSERT_TRUE(s3b_st_.ok()) << s3b_st_.ToString();     \
  } while (0)
#define EXPECT_OK(expr)                                  \
  do {                                                   \
    ::s3block::Status s3b_st_ = (expr);                  \
    EXPECT_TRUE(s3b_st_.ok()) << s3b_st_.ToString();     \
  } while (0)

}  // namespace s3block::testing

#endif  // S3BLOCK_TESTS_UNIT_TEST_UTIL_H_
