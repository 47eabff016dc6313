// The local directory's transport against what other users of the directory may put there:
// symlinks in place of directories or objects, FIFOs, directories where objects belong, files
// left by a writer that died.
#include "file/dir_transport.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace s3block {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> Data(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

class DirTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path() + "/root";
    outside_ = tmp_.path() + "/outside";
    fs::create_directories(outside_);
    std::ofstream(outside_ + "/secret") << "secret";
    ASSERT_OK(DirTransport::Open(root_, /*create=*/true, &t_));
  }

  testing::TempDir tmp_;
  std::string root_, outside_;
  std::unique_ptr<DirTransport> t_;
};

TEST_F(DirTransportTest, KeysAreFilesBelowTheRoot) {
  ASSERT_OK(t_->Put("exports/e/segments/00/1", Data("seg")));
  EXPECT_EQ(ReadFile(root_ + "/exports/e/segments/00/1"), "seg");
  EXPECT_EQ(t_->Describe(), "dir:" + root_);
  // No temporary file is left beside it.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root_ + "/exports/e/segments/00")) entries += !e.path().empty();
  EXPECT_EQ(entries, 1);
}

TEST_F(DirTransportTest, NeverFollowsASymlinkedDirectory) {
  fs::create_directory_symlink(outside_, root_ + "/link");
  std::vector<uint8_t> got;
  ObjectInfo info;
  Status s = t_->Get("link/secret", &got);
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
  EXPECT_EQ(t_->GetRange("link/secret", 0, 3, &got).err(), EIO);
  EXPECT_EQ(t_->Head("link/secret", &info).err(), EIO);
  EXPECT_EQ(t_->Put("link/new", Data("x")).err(), EIO);
  EXPECT_EQ(t_->Put("link/new", Data("x"), PutOptions::IfAbsent()).err(), EIO);
  EXPECT_EQ(t_->Put("link/secret", Data("x"), PutOptions::IfVersion("1-2-3")).err(), EIO);
  EXPECT_EQ(t_->Delete(std::vector<std::string>{"link/secret"}).err(), EIO);
  EXPECT_FALSE(fs::exists(outside_ + "/new"));
  EXPECT_EQ(ReadFile(outside_ + "/secret"), "secret");
  // A listing does not go through it either.
  std::vector<std::string> keys;
  ASSERT_OK(t_->List("", [&](const std::string& k, std::string_view) { keys.push_back(k); }));
  EXPECT_TRUE(keys.empty());
}

TEST_F(DirTransportTest, NeverFollowsASymlinkedObject) {
  fs::create_directories(root_ + "/d");
  fs::create_symlink(outside_ + "/secret", root_ + "/d/obj");
  std::vector<uint8_t> got;
  EXPECT_EQ(t_->Get("d/obj", &got).err(), EIO);
  EXPECT_EQ(t_->Put("d/obj", Data("x")).err(), EIO);
  EXPECT_EQ(t_->Put("d/obj", Data("x"), PutOptions::IfAbsent()).err(), EIO);
  EXPECT_EQ(t_->Delete(std::vector<std::string>{"d/obj"}).err(), EIO);
  EXPECT_EQ(ReadFile(outside_ + "/secret"), "secret");
  EXPECT_TRUE(fs::is_symlink(root_ + "/d/obj"));
}

TEST_F(DirTransportTest, NeverWaitsOnAFifo) {
  fs::create_directories(root_ + "/d");
  ASSERT_EQ(::mkfifo((root_ + "/d/fifo").c_str(), 0644), 0);
  const auto start = std::chrono::steady_clock::now();
  std::vector<uint8_t> got;
  ObjectInfo info;
  Status s = t_->Get("d/fifo", &got);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("FIFO"), std::string::npos) << s.message();
  EXPECT_EQ(t_->GetRange("d/fifo", 0, 1, &got).err(), EIO);
  EXPECT_EQ(t_->Head("d/fifo", &info).err(), EIO);
  EXPECT_EQ(t_->Put("d/fifo", Data("x")).err(), EIO);
  EXPECT_EQ(t_->Put("d/fifo", Data("x"), PutOptions::IfAbsent()).err(), EIO);
  EXPECT_EQ(t_->Delete(std::vector<std::string>{"d/fifo"}).err(), EIO);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_TRUE(fs::is_fifo(root_ + "/d/fifo"));
  // A listing skips it, and lists the objects beside it.
  ASSERT_OK(t_->Put("d/real", Data("x")));
  std::vector<std::string> keys;
  ASSERT_OK(t_->List("d/", [&](const std::string& k, std::string_view) { keys.push_back(k); }));
  EXPECT_EQ(keys, std::vector<std::string>{"d/real"});
}

TEST_F(DirTransportTest, ADirectoryIsNoObject) {
  fs::create_directories(root_ + "/d/sub");
  std::vector<uint8_t> got;
  EXPECT_EQ(t_->Get("d/sub", &got).err(), EIO);
  EXPECT_EQ(t_->Put("d/sub", Data("x")).err(), EIO);
  EXPECT_EQ(t_->Delete(std::vector<std::string>{"d/sub"}).err(), EIO);
  EXPECT_TRUE(fs::is_directory(root_ + "/d/sub"));
}

TEST_F(DirTransportTest, TemporaryFilesAreNeverListed) {
  ASSERT_OK(t_->Put("d/obj", Data("x")));
  std::ofstream(root_ + "/d/.tmp.obj.0123456789abcdef") << "half written";
  std::vector<std::string> keys;
  ASSERT_OK(t_->List("", [&](const std::string& k, std::string_view) { keys.push_back(k); }));
  EXPECT_EQ(keys, std::vector<std::string>{"d/obj"});
}

TEST_F(DirTransportTest, TwoTransportsOnOneDirectoryRaceForASlot) {
  // As two processes would: each its own transport on the same root.
  std::unique_ptr<DirTransport> other;
  ASSERT_OK(DirTransport::Open(root_, /*create=*/false, &other));
  for (int i = 0; i < 50; ++i) {
    const std::string key = "seq/" + std::to_string(i);
    Status a, b;
    std::thread ta([&] { a = t_->Put(key, Data("a"), PutOptions::IfAbsent()); });
    std::thread tb([&] { b = other->Put(key, Data("b"), PutOptions::IfAbsent()); });
    ta.join();
    tb.join();
    ASSERT_NE(a.ok(), b.ok()) << a.ToString() << " / " << b.ToString();
    EXPECT_TRUE(IsPreconditionFailed(a.ok() ? b : a));
    EXPECT_EQ(ReadFile(root_ + "/" + key), a.ok() ? "a" : "b");
  }
}

TEST_F(DirTransportTest, ARootThatIsMissingIsMadeOnlyWhenAsked) {
  std::unique_ptr<DirTransport> t;
  EXPECT_EQ(DirTransport::Open(tmp_.path() + "/missing", /*create=*/false, &t).err(), ENOENT);
  ASSERT_OK(DirTransport::Open(tmp_.path() + "/missing", /*create=*/true, &t));
  EXPECT_TRUE(fs::is_directory(tmp_.path() + "/missing"));
}

}  // namespace
}  // namespace s3block
