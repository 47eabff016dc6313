// FileStorage: the specification's example API, and that it shares the plugin's layout.
#include "file/file_storage.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;

constexpr size_t kBlockSize = 4096;

std::vector<uint8_t> FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(FileStorage, TheSpecificationsExample) {
  TempDir dir;
  const std::string root = dir.path() + "/blockstore";
  FileStorage storage(root);

  std::string hello = "hello";
  hello.resize(kBlockSize, '\0');  // b"hello".ljust(BLOCK_SIZE, b"\x00")
  storage.write_block("dev1", 42, hello);
  std::vector<uint8_t> data = storage.read_block("dev1", 42, kBlockSize);

  ASSERT_EQ(data.size(), kBlockSize);
  EXPECT_EQ(std::string(data.begin(), data.begin() + 10), std::string("hello\0\0\0\0\0", 10));
  EXPECT_EQ(std::string(data.begin(), data.end()), hello);
  // Exactly where the specification keeps it, as the raw block.
  const std::string path = root + "/exports/dev1/blocks/42";
  ASSERT_TRUE(std::filesystem::is_regular_file(path));
  EXPECT_EQ(FileBytes(path), std::vector<uint8_t>(hello.begin(), hello.end()));
}

TEST(FileStorage, MissingBlocksReadAsZerosAndShortOnesArePadded) {
  TempDir dir;
  FileStorage storage(dir.path());
  EXPECT_EQ(storage.read_block("dev1", 7, kBlockSize), std::vector<uint8_t>(kBlockSize, 0));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/exports/dev1/blocks/7"));

  storage.write_block("dev1", 3, std::string("abc"));
  std::vector<uint8_t> want(kBlockSize, 0);
  want[0] = 'a';
  want[1] = 'b';
  want[2] = 'c';
  EXPECT_EQ(storage.read_block("dev1", 3, kBlockSize), want);
}

TEST(FileStorage, OverwriteReplacesTheWholeBlock) {
  TempDir dir;
  FileStorage storage(dir.path());
  storage.write_block("dev1", 0, std::string(kBlockSize, 'x'));
  storage.write_block("dev1", 0, std::string(kBlockSize, 'y'));
  EXPECT_EQ(storage.read_block("dev1", 0, kBlockSize), std::vector<uint8_t>(kBlockSize, 'y'));
  // No temporary file is left beside the block.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/exports/dev1/blocks"))
    names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"0"});
}

TEST(FileStorage, ExportsAreSeparateNamespaces) {
  TempDir dir;
  FileStorage storage(dir.path());
  storage.write_block("dev1", 5, std::string(kBlockSize, '1'));
  storage.write_block("dev2", 5, std::string(kBlockSize, '2'));
  EXPECT_EQ(storage.read_block("dev1", 5, kBlockSize), std::vector<uint8_t>(kBlockSize, '1'));
  EXPECT_EQ(storage.read_block("dev2", 5, kBlockSize), std::vector<uint8_t>(kBlockSize, '2'));
  EXPECT_EQ(storage.read_block("dev3", 5, kBlockSize), std::vector<uint8_t>(kBlockSize, 0));
}

TEST(FileStorage, BadNamesAndOversizedBlocksThrow) {
  TempDir dir;
  FileStorage storage(dir.path());
  for (const char* bad : {"..", "a/b", "", "  ", "x\ny"}) {
    try {
      storage.write_block(bad, 1, std::string("data"));
      ADD_FAILURE() << "write_block accepted export name '" << bad << "'";
    } catch (const StorageError& e) {
      EXPECT_EQ(e.err(), EINVAL) << e.what();
    }
    EXPECT_THROW(storage.read_block(bad, 1, kBlockSize), StorageError) << bad;
  }
  // Nothing was created for the refused names.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path() + "/exports"))
    names.push_back(e.path().filename().string());
  EXPECT_TRUE(names.empty());

  storage.write_block("dev1", 9, std::string(kBlockSize, 'z'));
  try {
    storage.read_block("dev1", 9, 512);
    ADD_FAILURE() << "a 4096-byte block was returned as 512 bytes";
  } catch (const StorageError& e) {
    EXPECT_EQ(e.err(), EIO) << e.what();
  }
}

TEST(FileStorage, ARelativeRootIsMadeAbsolute) {
  TempDir dir;
  std::filesystem::path before = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  {
    FileStorage storage("relstore");
    std::filesystem::current_path("/");  // as nbdkit does after starting
    storage.write_block("dev1", 1, std::string(kBlockSize, 'r'));
    EXPECT_EQ(storage.read_block("dev1", 1, kBlockSize), std::vector<uint8_t>(kBlockSize, 'r'));
  }
  std::filesystem::current_path(before);
  EXPECT_TRUE(std::filesystem::is_regular_file(dir.path() + "/relstore/exports/dev1/blocks/1"));
}

}  // namespace
}  // namespace s3block
