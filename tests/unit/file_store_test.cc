#include "file/file_store.h"

#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include "base/safe_file.h"
#include "s3block/params.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

Bytes Pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 31 + (i >> 8));
  return b;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(FileStore, KeepsTheSpecificationsLayout) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  Bytes block = Pattern(4096, 7);
  ASSERT_OK(store.Write("dev1", 42, block, false));
  const std::string path = dir.path() + "/exports/dev1/blocks/42";
  ASSERT_TRUE(fs::is_regular_file(path));
  EXPECT_EQ(fs::file_size(path), 4096u);
  std::string raw = ReadFile(path);
  EXPECT_EQ(0, std::memcmp(raw.data(), block.data(), block.size()));
  // Nothing else in the blocks directory: no temporary file survives a write.
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(dir.path() + "/exports/dev1/blocks")) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
  ASSERT_OK(store.Write("dev1", 1234567890123ull, block, true));
  EXPECT_TRUE(fs::exists(dir.path() + "/exports/dev1/blocks/1234567890123"));
}

TEST(FileStore, MissingBlockIsNotFoundNotAnError) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  Bytes data = {1, 2, 3};
  bool found = true;
  ASSERT_OK(store.Read("never", 5, &data, &found));
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());
}

TEST(FileStore, ReadsBackWhatWasWrittenAndDeletes) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  for (uint64_t id = 0; id < 20; ++id) ASSERT_OK(store.Write("e", id, Pattern(512, id), false));
  ASSERT_OK(store.Flush("e"));
  for (uint64_t id = 0; id < 20; ++id) {
    Bytes data;
    bool found = false;
    ASSERT_OK(store.Read("e", id, &data, &found));
    ASSERT_TRUE(found);
    EXPECT_EQ(data, Pattern(512, id));
  }
  std::vector<uint64_t> del = {3, 5, 7, 999};
  ASSERT_OK(store.Delete("e", del, false));
  std::vector<uint64_t> listed;
  ASSERT_OK(store.ListBlocks("e", [&](uint64_t id) { listed.push_back(id); }));
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(listed.size(), 17u);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), 5u), 0);
  EXPECT_EQ(std::count(listed.begin(), listed.end(), 6u), 1);
}

TEST(FileStore, ListBlocksIgnoresFilesThatAreNotBlockIds) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  ASSERT_OK(store.Write("e", 9, Pattern(512, 1), false));
  const std::string blocks = dir.path() + "/exports/e/blocks/";
  for (const char* junk : {".tmp.9.1.2", "007", "12a", "-1", "99999999999999999999999"})
    std::ofstream(blocks + junk) << "x";
  std::vector<uint64_t> listed;
  ASSERT_OK(store.ListBlocks("e", [&](uint64_t id) { listed.push_back(id); }));
  EXPECT_EQ(listed, std::vector<uint64_t>{9});
}

// Threads that read block 1 of export "e" until stopped, counting the reads that fail or that
// `whole` rejects as torn. With batch, they read it with ReadBatch, twice in each batch and
// beside its neighbours. The destructor stops them too, so a failed ASSERT in a test's writing
// loop ends that test instead of leaving its readers running.
class BlockReaders {
 public:
  BlockReaders(FileStore& store, int threads, std::function<bool(bool found, const Bytes&)> whole,
               bool batch = false) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, &store, whole, batch] {
        Bytes data[4];
        bool found;
        while (!stop_) {
          if (!batch) {
            if (!store.Read("e", 1, &data[0], &found).ok() || !whole(found, data[0])) ++torn_;
            if (found) ++seen_;
            ++reads_;
            continue;
          }
          BlockRead reads[4] = {{0, &data[0]}, {1, &data[1]}, {2, &data[2]}, {1, &data[3]}};
          store.ReadBatch("e", reads);
          for (int i : {1, 3}) {
            if (!reads[i].status.ok() || !whole(reads[i].found, data[i])) ++torn_;
            if (reads[i].found) ++seen_;
            ++reads_;
          }
        }
      });
    }
  }
  ~BlockReaders() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  int reads() const { return reads_; }
  int seen() const { return seen_; }  // reads that found the block
  int torn() const { return torn_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> torn_{0}, reads_{0}, seen_{0};
  std::vector<std::thread> threads_;
};

TEST(FileStore, ReplaceIsAtomicForConcurrentReaders) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const Bytes a(65536, 0xaa), b(65536, 0xbb);
  ASSERT_OK(store.Write("e", 1, a, false));
  BlockReaders readers(store, 1, [&](bool found, const Bytes& data) {
    return found && (data == a || data == b);
  });
  for (int i = 0; i < 300; ++i) ASSERT_OK(store.Write("e", 1, (i % 2) ? a : b, false));
  while (readers.reads() < 50) std::this_thread::yield();
  readers.Stop();
  EXPECT_EQ(readers.torn(), 0);
}

std::string AsText(const Bytes& b) { return std::string(b.begin(), b.end()); }

ino_t Inode(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

TEST(FileStore, OverwriteWritesABlockOfTheSameLengthInPlace) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const std::string path = store.BlockPath("e", 1);
  ASSERT_OK(store.Write("e", 1, Pattern(4096, 1), false));
  const ino_t first = Inode(path);
  ASSERT_OK(store.Overwrite("e", 1, Pattern(4096, 2), false));
  EXPECT_EQ(Inode(path), first);  // the same file: no new file, no rename
  Bytes data;
  bool found = false;
  ASSERT_OK(store.Read("e", 1, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(4096, 2));
  ASSERT_OK(store.Overwrite("e", 1, Pattern(4096, 3), true));  // with fua
  EXPECT_EQ(Inode(path), first);
  EXPECT_EQ(ReadFile(path), AsText(Pattern(4096, 3)));
  ASSERT_OK(store.Flush("e"));

  // A missing block is created as by Write.
  ASSERT_OK(store.Overwrite("e", 2, Pattern(512, 4), false));
  ASSERT_OK(store.Read("e", 2, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(512, 4));
  EXPECT_EQ(fs::file_size(store.BlockPath("e", 2)), 512u);
  // No temporary file is left behind by either path.
  for (const auto& entry : fs::directory_iterator(store.BlocksDir("e")))
    EXPECT_NE(entry.path().filename().string()[0], '.') << entry.path();
}

TEST(FileStore, OverwriteReplacesAFileOfAnotherLengthOrWithAnotherLink) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const std::string path = store.BlockPath("e", 1);
  ASSERT_OK(store.Write("e", 1, Pattern(4096, 1), false));
  ino_t before = Inode(path);
  // Another length: written whole into a new file, not into the old one's first bytes.
  ASSERT_OK(store.Overwrite("e", 1, Pattern(1024, 2), false));
  EXPECT_NE(Inode(path), before);
  EXPECT_EQ(fs::file_size(path), 1024u);
  // A hard link elsewhere (a copy made with cp -l) keeps the old content.
  const std::string other = dir.path() + "/saved";
  ASSERT_EQ(::link(path.c_str(), other.c_str()), 0);
  before = Inode(path);
  ASSERT_OK(store.Overwrite("e", 1, Pattern(1024, 3), false));
  EXPECT_NE(Inode(path), before);
  EXPECT_EQ(ReadFile(other), AsText(Pattern(1024, 2)));
  EXPECT_EQ(ReadFile(path), AsText(Pattern(1024, 3)));
}

TEST(FileStore, OverwriteInPlaceIsAtomicForConcurrentReaders) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const Bytes a(1 << 20, 0xaa), b(1 << 20, 0xbb);
  ASSERT_OK(store.Write("e", 1, a, false));
  const ino_t ino = Inode(store.BlockPath("e", 1));
  BlockReaders readers(store, 2, [&](bool found, const Bytes& data) {
    return found && (data == a || data == b);
  });
  // Until the readers have read many times while it was being written.
  for (int i = 0; i < 2000 || readers.reads() < 500; ++i)
    ASSERT_OK(store.Overwrite("e", 1, (i % 2) ? a : b, false));
  readers.Stop();
  EXPECT_EQ(readers.torn(), 0);
  EXPECT_EQ(Inode(store.BlockPath("e", 1)), ino);  // it was written in place throughout
}

TEST(FileStore, OverwriteCreatesAMissingBlockAtomicallyForConcurrentReaders) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const Bytes a(4 << 20, 0xaa);
  const uint64_t ids[] = {1};
  // Not there yet, or all of it: never a file of the right length still being filled.
  BlockReaders readers(store, 3, [&](bool found, const Bytes& data) { return !found || data == a; });
  for (int i = 0; i < 300 || readers.reads() < 1000 || readers.seen() < 100; ++i) {
    ASSERT_OK(store.Overwrite("e", 1, a, false));
    ASSERT_EQ(fs::file_size(store.BlockPath("e", 1)), a.size());
    ASSERT_OK(store.Delete("e", ids, false));
  }
  readers.Stop();
  EXPECT_EQ(readers.torn(), 0) << "of " << readers.reads() << " reads, " << readers.seen()
                               << " found the block";
  for (const auto& entry : fs::directory_iterator(store.BlocksDir("e")))
    ADD_FAILURE() << "left behind: " << entry.path();
}

// What a copy of the files, or a crash of the server, would find: a new block's name never
// shows a file that is not yet at its full length. The scanner stats the name the writer is
// creating, since that file is new only for the moment it is made.
TEST(FileStore, ANewBlocksNameNeverShowsAFileShorterThanTheBlock) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const Bytes a = Pattern(4096, 7);
  ASSERT_OK(store.Write("e", 0, a, false));
  const int blocks = ::open(store.BlocksDir("e").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(blocks, 0);
  std::atomic<uint64_t> creating{1};
  std::atomic<bool> stop{false};
  std::atomic<long> stats{0}, short_files{0};
  std::thread scanner([&] {
    while (!stop.load()) {
      struct stat st;
      const std::string name = std::to_string(creating.load());
      if (::fstatat(blocks, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      ++stats;
      if (st.st_size != static_cast<off_t>(a.size())) ++short_files;
    }
  });
  constexpr uint64_t kBlocks = 20000;
  for (uint64_t id = 1; id <= kBlocks; ++id) {
    creating = id;
    if (Status s = store.Overwrite("e", id, a, false); !s.ok()) {
      ADD_FAILURE() << s.message();
      break;
    }
  }
  stop = true;
  scanner.join();
  ::close(blocks);
  EXPECT_EQ(short_files.load(), 0) << "of " << stats.load() << " files seen by their name";
  Bytes data;
  bool found = false;
  ASSERT_OK(store.Read("e", kBlocks, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, a);
}

TEST(FileStore, BatchReadersNeverSeeABlockHalfWritten) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  const Bytes a(1 << 20, 0xaa), b(1 << 20, 0xbb);
  const uint64_t ids[] = {1};
  ASSERT_OK(store.Write("e", 0, Pattern(4096, 1), false));
  BlockReaders readers(store, 2, [&](bool found, const Bytes& data) {
    return !found || data == a || data == b;
  }, /*batch=*/true);
  // Created in place, written over in place, deleted: over and over.
  for (int i = 0; i < 200 || readers.reads() < 1000 || readers.seen() < 200; ++i) {
    ASSERT_OK(store.Overwrite("e", 1, a, false));
    ASSERT_OK(store.Overwrite("e", 1, b, false));
    if (i % 2) ASSERT_OK(store.Delete("e", ids, false));
  }
  readers.Stop();
  EXPECT_EQ(readers.torn(), 0) << "of " << readers.reads() << " reads, " << readers.seen()
                               << " found the block";
}

// Whether this kernel lets a process read files with io_uring, asked directly.
bool KernelHasIoUring() {
  io_uring ring;
  if (io_uring_queue_init(2, &ring, 0) != 0) return false;
  io_uring_queue_exit(&ring);
  return true;
}

TEST(FileStore, ReadBatchReadsEachBlockAsReadDoes) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  // More blocks than one io_uring submission takes, of every kind a block file can be.
  constexpr uint64_t kBlocks = 70;
  for (uint64_t id = 0; id < kBlocks; ++id) {
    switch (id % 5) {
      case 0: ASSERT_OK(store.Write("e", id, Pattern(4096, static_cast<uint8_t>(id)), false)); break;
      case 1: break;  // never written
      case 2: ASSERT_OK(store.Write("e", id, Pattern(8192, static_cast<uint8_t>(id)), false)); break;
      case 3: ASSERT_OK(store.Write("e", id, Pattern(100, static_cast<uint8_t>(id)), false)); break;
      case 4: std::ofstream(store.BlockPath("e", id)); break;  // empty: never written
    }
  }
  fs::create_directory(store.BlockPath("e", kBlocks));  // not a regular file: an error
  {
    std::ofstream huge(store.BlockPath("e", kBlocks + 1));  // far larger than any block
  }
  fs::resize_file(store.BlockPath("e", kBlocks + 1), 2ull * kMaxBlockSize + 1);
  std::vector<uint64_t> ids;
  for (uint64_t id = 0; id < kBlocks + 2; ++id) ids.push_back(id);
  ids.insert(ids.begin() + 10, {5, 5, 6});  // the same block twice in a batch, and out of order

  std::vector<Bytes> data(ids.size(), Bytes{9, 9});
  std::vector<BlockRead> reads(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    reads[i].id = ids[i];
    reads[i].data = &data[i];
  }
  store.ReadBatch("e", reads);
  int found = 0, errors = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    Bytes want;
    bool want_found = false;
    Status s = store.Read("e", ids[i], &want, &want_found);
    EXPECT_EQ(reads[i].status.err(), s.err()) << "block " << ids[i] << ": " << reads[i].status.ToString();
    EXPECT_EQ(reads[i].status.message(), s.message()) << "block " << ids[i];
    if (!s.ok()) {
      ++errors;
      continue;
    }
    EXPECT_EQ(reads[i].found, want_found) << "block " << ids[i];
    EXPECT_TRUE(data[i] == want) << "block " << ids[i] << ": " << data[i].size() << " bytes, not "
                                 << want.size();
    if (want_found) ++found;
  }
  EXPECT_EQ(found, 44);  // 14 of each of ids % 5 == 0, 2 and 3, and block 5 twice more
  EXPECT_EQ(errors, 2);

  // An export with no blocks at all.
  BlockRead none[2] = {{1, &data[0]}, {2, &data[1]}};
  store.ReadBatch("nothing-here", none);
  for (const BlockRead& r : none) {
    EXPECT_OK(r.status);
    EXPECT_FALSE(r.found);
    EXPECT_TRUE(r.data->empty());
  }
  // A batch costs less than as many reads only where the kernel allows io_uring.
  EXPECT_EQ(store.ReadBatchSize("e"), KernelHasIoUring() ? 32u : 1u);
}

TEST(FileStore, ACreateThatFailsPartWayLeavesTheBlockUnwritten) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  ASSERT_OK(store.Write("e", 1, Pattern(4096, 1), false));
  // Files may not grow past 1 KiB: creating a 4 KiB block fails after its file was made.
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  Status created = store.Overwrite("e", 2, Pattern(4096, 2), false);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(created.err(), EFBIG) << created.message();
  EXPECT_NE(created.message().find(store.BlockPath("e", 2)), std::string::npos) << created.message();
  Bytes data;
  bool found = true;
  ASSERT_OK(store.Read("e", 2, &data, &found));
  EXPECT_FALSE(found);
  EXPECT_FALSE(fs::exists(store.BlockPath("e", 2)));
  ASSERT_OK(store.Read("e", 1, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(4096, 1));
  for (const auto& entry : fs::directory_iterator(store.BlocksDir("e")))
    EXPECT_EQ(entry.path().filename(), "1");
  // With room again, the block is created.
  ASSERT_OK(store.Overwrite("e", 2, Pattern(4096, 2), true));
  ASSERT_OK(store.Read("e", 2, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(4096, 2));
}

TEST(FileStore, EmptyFileLeftByACrashReadsAsNeverWritten) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  ASSERT_OK(store.Write("e", 1, Pattern(512, 1), false));
  std::ofstream(dir.path() + "/exports/e/blocks/2");  // created, data never reached the disk
  Bytes data;
  bool found = true;
  ASSERT_OK(store.Read("e", 2, &data, &found));
  EXPECT_FALSE(found);
}

TEST(FileStore, MetadataRoundTripAndExportList) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  std::string text;
  bool found = true;
  ASSERT_OK(store.ReadMeta("a", &text, &found));
  EXPECT_FALSE(found);
  ASSERT_OK(store.WriteMeta("b", "format=1\n"));
  ASSERT_OK(store.WriteMeta("a", "format=1\nsize=1\n"));
  ASSERT_OK(store.ReadMeta("a", &text, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(text, "format=1\nsize=1\n");
  EXPECT_TRUE(fs::is_regular_file(dir.path() + "/exports/a/metadata"));
  std::vector<std::string> names;
  ASSERT_OK(store.ListExports(&names));
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b"}));
  ASSERT_OK(store.DeleteMeta("b"));
  ASSERT_OK(store.ListExports(&names));
  EXPECT_EQ(names, std::vector<std::string>{"a"});
}

// Another layout over the same directory (the log layout's segments and checkpoints, through
// DirTransport) leaves its directories empty once it has deleted its objects: the export's
// directory goes all the same. A directory still holding something is not emptied by force.
TEST(FileStore, DeleteMetaRemovesTheEmptyDirectoriesOfAnotherLayout) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  ASSERT_OK(store.WriteMeta("e", "format=1\n"));
  const std::string exp = dir.path() + "/exports/e";
  fs::create_directory(exp + "/log");
  std::ofstream(exp + "/log/.tmp.0000000000000003.x1y2") << "torn";  // a crashed Put's
  fs::create_directory(exp + "/checkpoint");
  ASSERT_OK(store.DeleteMeta("e"));
  EXPECT_FALSE(fs::exists(exp));

  ASSERT_OK(store.WriteMeta("f", "format=1\n"));
  const std::string other = dir.path() + "/exports/f";
  fs::create_directory(other + "/log");
  std::ofstream(other + "/log/0000000000000001") << "segment";
  Status s = store.DeleteMeta("f");
  EXPECT_EQ(s.err(), ENOTEMPTY) << s.message();
  EXPECT_NE(s.message().find(other + "/log"), std::string::npos) << s.message();
  EXPECT_TRUE(fs::exists(other + "/log/0000000000000001"));
}

TEST(FileStore, CheckRefusesAStorePathThatIsAFile) {
  TempDir dir;
  std::ofstream(dir.path() + "/file") << "x";
  FileStore store(dir.path() + "/file");
  Status s = store.Check();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("not a directory"), std::string::npos) << s.message();
  FileStore relative("relative/path");
  EXPECT_EQ(relative.Check().err(), EINVAL);
}

TEST(FileStore, FlushSyncsManyFilesAndKeepsWorkingAfterwards) {
  TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  // More than the per-file threshold: the syncfs path.
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(store.Write("e", id, Pattern(512, id), false));
  ASSERT_OK(store.Flush("e"));
  ASSERT_OK(store.Flush("e"));  // nothing pending
  ASSERT_OK(store.Write("e", 1000, Pattern(512, 3), false));
  ASSERT_OK(store.Flush("e"));
  Bytes data;
  bool found = false;
  ASSERT_OK(store.Read("e", 299, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(512, static_cast<uint8_t>(299)));
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST(FileStore, LeaseKeepsASecondWriterOutAndNamesTheHolder) {
  testing::TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  std::unique_ptr<ExportLease> first, second;
  ASSERT_OK(store.AcquireLease("e", "server one pid 1", false, &first));
  std::string holder;
  ASSERT_OK(store.QueryLease("e", &holder));
  EXPECT_EQ(holder, "server one pid 1");
  Status s = store.AcquireLease("e", "server two", false, &second);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("server one pid 1"), std::string::npos) << s.message();
  EXPECT_FALSE(second);
  // Another export is not affected.
  ASSERT_OK(store.AcquireLease("f", "server two", false, &second));
  second.reset();
  first.reset();
  ASSERT_OK(store.QueryLease("e", &holder));
  EXPECT_EQ(holder, "");
  ASSERT_OK(store.AcquireLease("e", "server two", false, &second));
}

TEST(FileStore, TheLeaseHolderSweepsTemporaryFilesOfADeadWriter) {
  testing::TempDir dir;
  FileStore store(dir.path());
  ASSERT_OK(store.Check());
  ASSERT_OK(store.Write("e", 1, Pattern(512, 1), false));
  const std::string blocks = dir.path() + "/exports/e/blocks/";
  std::ofstream(blocks + ".tmp.7.123.4") << "half a block";
  std::ofstream(dir.path() + "/exports/e/.tmp.metadata.123.5") << "format=";
  // The log layout's directories, and one reached through a link, which is not followed.
  const std::string log = dir.path() + "/exports/e/log/";
  fs::create_directory(log);
  std::ofstream(log + ".tmp.0000000000000003.x1y2") << "half a segment";
  std::ofstream(log + "0000000000000002") << "a segment";
  const std::string elsewhere = dir.path() + "/elsewhere/";
  fs::create_directory(elsewhere);
  std::ofstream(elsewhere + ".tmp.keep") << "not the export's";
  fs::create_directory_symlink(elsewhere, dir.path() + "/exports/e/linked");
  std::unique_ptr<ExportLease> lease;
  ASSERT_OK(store.AcquireLease("e", "me", false, &lease));
  EXPECT_FALSE(fs::exists(blocks + ".tmp.7.123.4"));
  EXPECT_FALSE(fs::exists(dir.path() + "/exports/e/.tmp.metadata.123.5"));
  EXPECT_FALSE(fs::exists(log + ".tmp.0000000000000003.x1y2"));
  EXPECT_TRUE(fs::exists(blocks + "1"));
  EXPECT_TRUE(fs::exists(log + "0000000000000002"));
  EXPECT_TRUE(fs::exists(elsewhere + ".tmp.keep"));
}

}  // namespace
}  // namespace s3block

// A store directory that someone else can write into: whatever they planted is refused with EIO
// naming the path and what is there, never followed, waited on, replaced or deleted through.
namespace s3block {
namespace {

// A call that hangs (a FIFO opened for reading waits for a writer) fails the test instead of
// blocking ctest: the process reports and exits when the alarm rings.
extern "C" void HostileTestHung(int) {
  static const char kMsg[] = "hostile store test: a call hung (alarm rang)\n";
  ssize_t ignored = ::write(2, kMsg, sizeof kMsg - 1);
  (void)ignored;
  ::_exit(3);
}

class HostileStore : public ::testing::Test {
 protected:
  void SetUp() override {
    ::signal(SIGALRM, HostileTestHung);
    ::alarm(20);
    ASSERT_OK(store_.Check());
    victim_ = dir_.path() + "/victim";
    std::ofstream(victim_) << std::string(kBs, 'V');
    blocks_ = dir_.path() + "/store/exports/e/blocks";
  }
  void TearDown() override { ::alarm(0); }
  // Blocks 1 and 2 written by an earlier server, then the export's file `rel` (below exports/e)
  // replaced by `make`.
  void Plant(const std::string& rel, const std::function<void(const std::string&)>& make) {
    FileStore earlier(dir_.path() + "/store");
    ASSERT_OK(earlier.Write("e", 1, Pattern(kBs, 1), true));
    ASSERT_OK(earlier.Write("e", 2, Pattern(kBs, 2), true));
    ASSERT_OK(earlier.WriteMeta("e", "format=raw\n"));
    const std::string path = dir_.path() + "/store/exports/e/" + rel;
    fs::remove_all(path);
    make(path);
  }
  void Symlink(const std::string& path) { fs::create_symlink(victim_, path); }
  static void Fifo(const std::string& path) { ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0); }
  // An EIO that names the path and what was found there.
  static void ExpectRefused(const Status& s, const std::string& path, const std::string& what) {
    EXPECT_EQ(s.err(), EIO) << s.ToString();
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
  }
  void ExpectVictimUntouched() { EXPECT_EQ(ReadFile(victim_), std::string(kBs, 'V')); }

  static constexpr size_t kBs = 4096;
  testing::TempDir dir_;
  FileStore store_{dir_.path() + "/store"};
  std::string victim_, blocks_;
};

TEST_F(HostileStore, ABlockThatIsASymlinkIsNeitherReadNorWrittenThrough) {
  Plant("blocks/1", [&](const std::string& p) { Symlink(p); });
  Bytes data;
  bool found = true;
  ExpectRefused(store_.Read("e", 1, &data, &found), blocks_ + "/1", "symbolic link");
  EXPECT_FALSE(found);
  BlockRead reads[2] = {{1, &data, false, {}}, {2, nullptr, false, {}}};
  Bytes two;
  reads[1].data = &two;
  store_.ReadBatch("e", reads);
  ExpectRefused(reads[0].status, blocks_ + "/1", "symbolic link");
  EXPECT_OK(reads[1].status);
  EXPECT_EQ(two, Pattern(kBs, 2));
  // In place (raw blocks), replaced (other stores), trimmed: each refused, the link left as is.
  ExpectRefused(store_.Overwrite("e", 1, Pattern(kBs, 9), false), blocks_ + "/1", "symbolic link");
  ExpectRefused(store_.Overwrite("e", 1, Pattern(kBs, 9), true), blocks_ + "/1", "symbolic link");
  ExpectRefused(store_.Write("e", 1, Pattern(kBs, 9), false), blocks_ + "/1", "symbolic link");
  const uint64_t ids[] = {1};
  ExpectRefused(store_.Delete("e", ids, true), blocks_ + "/1", "symbolic link");
  bool copied = true;
  ExpectRefused(store_.CopyBlock("e", "f", 1, &copied), blocks_ + "/1", "symbolic link");
  EXPECT_TRUE(fs::is_symlink(blocks_ + "/1"));
  ExpectVictimUntouched();
  EXPECT_OK(store_.Flush("e"));
}

TEST_F(HostileStore, ALockThatIsASymlinkIsNotTruncatedOrCreatedThrough) {
  Plant("lock", [&](const std::string& p) { Symlink(p); });
  std::unique_ptr<ExportLease> lease;
  ExpectRefused(store_.AcquireLease("e", "me", false, &lease),
                dir_.path() + "/store/exports/e/lock", "symbolic link");
  EXPECT_FALSE(lease);
  std::string holder;
  ExpectRefused(store_.QueryLease("e", &holder), dir_.path() + "/store/exports/e/lock",
                "symbolic link");
  ExpectVictimUntouched();
  // A dangling link: its target is not created.
  fs::remove(dir_.path() + "/store/exports/e/lock");
  fs::create_symlink(dir_.path() + "/made", dir_.path() + "/store/exports/e/lock");
  EXPECT_EQ(store_.AcquireLease("e", "me", false, &lease).err(), EIO);
  EXPECT_FALSE(fs::exists(dir_.path() + "/made"));
}

TEST_F(HostileStore, MetadataThatIsASymlinkIsNeitherReadNorReplaced) {
  Plant("metadata", [&](const std::string& p) { Symlink(p); });
  std::string text;
  bool found = true;
  const std::string path = dir_.path() + "/store/exports/e/metadata";
  ExpectRefused(store_.ReadMeta("e", &text, &found), path, "symbolic link");
  EXPECT_TRUE(text.empty());
  ExpectRefused(store_.WriteMeta("e", "format=raw\n"), path, "symbolic link");
  ExpectRefused(store_.DeleteMeta("e"), path, "symbolic link");
  EXPECT_TRUE(fs::is_symlink(path));
  ExpectVictimUntouched();
}

TEST_F(HostileStore, ABlocksDirectoryThatIsASymlinkIsNotUsed) {
  const std::string elsewhere = dir_.path() + "/elsewhere";
  fs::create_directory(elsewhere);
  for (const char* name : {"0", "1", ".tmp.keep"}) std::ofstream(elsewhere + "/" + name) << "keep";
  Plant("blocks", [&](const std::string& p) { fs::create_directory_symlink(elsewhere, p); });
  Bytes data;
  bool found = false;
  ExpectRefused(store_.Read("e", 1, &data, &found), blocks_, "symbolic link");
  ExpectRefused(store_.Write("e", 7, Pattern(kBs, 7), false), blocks_, "symbolic link");
  ExpectRefused(store_.Overwrite("e", 7, Pattern(kBs, 7), false), blocks_, "symbolic link");
  const uint64_t ids[] = {0, 1};
  ExpectRefused(store_.Delete("e", ids, true), blocks_, "symbolic link");
  std::unique_ptr<ExportLease> lease;
  ExpectRefused(store_.AcquireLease("e", "me", false, &lease), blocks_, "symbolic link");
  ExpectRefused(store_.ListBlocks("e", [](uint64_t) {}), blocks_, "symbolic link");
  size_t n = 0;
  for (const auto& entry : fs::directory_iterator(elsewhere)) {
    EXPECT_EQ(ReadFile(entry.path()), "keep") << entry.path();
    ++n;
  }
  EXPECT_EQ(n, 3u);  // nothing deleted, nothing created
}

TEST_F(HostileStore, AnExportDirectoryThatIsASymlinkIsNotUsed) {
  const std::string elsewhere = dir_.path() + "/elsewhere";
  fs::create_directories(elsewhere + "/blocks");
  std::ofstream(elsewhere + "/blocks/1") << std::string(kBs, 'V');
  std::ofstream(elsewhere + "/metadata") << "format=raw\n";
  fs::create_directories(dir_.path() + "/store/exports");
  fs::create_directory_symlink(elsewhere, dir_.path() + "/store/exports/e");
  const std::string path = dir_.path() + "/store/exports/e";
  Bytes data;
  bool found = false;
  ExpectRefused(store_.Read("e", 1, &data, &found), path, "symbolic link");
  std::string text;
  ExpectRefused(store_.ReadMeta("e", &text, &found), path, "symbolic link");
  ExpectRefused(store_.Write("e", 2, Pattern(kBs, 2), true), path, "symbolic link");
  ExpectRefused(store_.WriteMeta("e", "x"), path, "symbolic link");
  ExpectRefused(store_.DeleteMeta("e"), path, "symbolic link");
  EXPECT_EQ(ReadFile(elsewhere + "/blocks/1"), std::string(kBs, 'V'));
  EXPECT_FALSE(fs::exists(elsewhere + "/blocks/2"));
  EXPECT_EQ(ReadFile(elsewhere + "/metadata"), "format=raw\n");
}

TEST_F(HostileStore, AFifoAsABlockIsRefusedAtOnceForReadsWritesAndFlushes) {
  Plant("blocks/1", Fifo);
  Bytes data;
  bool found = false;
  ExpectRefused(store_.Read("e", 1, &data, &found), blocks_ + "/1", "FIFO");
  Bytes a, b;
  BlockRead reads[2] = {{2, &a, false, {}}, {1, &b, false, {}}};
  store_.ReadBatch("e", reads);
  EXPECT_OK(reads[0].status);
  ExpectRefused(reads[1].status, blocks_ + "/1", "FIFO");
  ExpectRefused(store_.Overwrite("e", 1, Pattern(kBs, 9), false), blocks_ + "/1", "FIFO");
  ExpectRefused(store_.Write("e", 1, Pattern(kBs, 9), false), blocks_ + "/1", "FIFO");
  // Written, then replaced by a FIFO before the flush: the flush fails, it does not wait.
  ASSERT_OK(store_.Overwrite("e", 2, Pattern(kBs, 5), false));
  fs::remove(blocks_ + "/2");
  Fifo(blocks_ + "/2");
  ExpectRefused(store_.Flush("e"), blocks_ + "/2", "FIFO");
  EXPECT_TRUE(fs::is_fifo(blocks_ + "/1"));
}

TEST_F(HostileStore, AFifoAsMetadataOrLockIsRefusedAtOnce) {
  Plant("metadata", Fifo);
  std::string text;
  bool found = false;
  ExpectRefused(store_.ReadMeta("e", &text, &found), dir_.path() + "/store/exports/e/metadata",
                "FIFO");
  fs::remove(dir_.path() + "/store/exports/e/lock");
  Fifo(dir_.path() + "/store/exports/e/lock");
  std::unique_ptr<ExportLease> lease;
  ExpectRefused(store_.AcquireLease("e", "me", false, &lease),
                dir_.path() + "/store/exports/e/lock", "FIFO");
  std::string holder;
  ExpectRefused(store_.QueryLease("e", &holder), dir_.path() + "/store/exports/e/lock", "FIFO");
}

TEST_F(HostileStore, ADirectoryWhereABlockBelongsIsRefusedForEveryRequest) {
  Plant("blocks/1", [](const std::string& p) { fs::create_directory(p); });
  Bytes data;
  bool found = false;
  ExpectRefused(store_.Read("e", 1, &data, &found), blocks_ + "/1", "directory");
  ExpectRefused(store_.Overwrite("e", 1, Pattern(kBs, 9), true), blocks_ + "/1", "directory");
  ExpectRefused(store_.Write("e", 1, Pattern(kBs, 9), true), blocks_ + "/1", "directory");
  const uint64_t ids[] = {1};
  ExpectRefused(store_.Delete("e", ids, false), blocks_ + "/1", "directory");
  EXPECT_TRUE(fs::is_directory(blocks_ + "/1"));
}

// A reader in another process holds a block file (an open-file-description lock, as a read-only
// server takes around its read): the writer does not write into it in place (the reader would
// see a mix) and does not wait for it either: it replaces the file.
TEST_F(HostileStore, AnOverwriteNeverWritesIntoAFileAnotherReaderHolds) {
  ASSERT_OK(store_.Write("e", 1, Pattern(kBs, 1), true));
  const std::string path = blocks_ + "/1";
  const ino_t before = Inode(path);
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  ASSERT_EQ(::fcntl(fd, F_OFD_SETLK, &fl), 0);
  ASSERT_OK(store_.Overwrite("e", 1, Pattern(kBs, 2), false));
  // The reader's file still holds the old block whole; the name has the new one.
  std::string held(kBs, '\0');
  ASSERT_EQ(::pread(fd, held.data(), kBs, 0), static_cast<ssize_t>(kBs));
  EXPECT_EQ(0, std::memcmp(held.data(), Pattern(kBs, 1).data(), kBs));
  EXPECT_NE(Inode(path), before);
  Bytes data;
  bool found = false;
  ASSERT_OK(store_.Read("e", 1, &data, &found));
  EXPECT_EQ(data, Pattern(kBs, 2));
  ::close(fd);
  // Unheld, it is written in place again.
  const ino_t now = Inode(path);
  ASSERT_OK(store_.Overwrite("e", 1, Pattern(kBs, 3), false));
  EXPECT_EQ(Inode(path), now);
}

// A writer in another process holds a block file for writing: a read waits for it, and reads
// the block it leaves.
TEST_F(HostileStore, AReadWaitsForAWriterInAnotherProcess) {
  ASSERT_OK(store_.Write("e", 1, Pattern(kBs, 1), true));
  const std::string path = blocks_ + "/1";
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  ASSERT_EQ(::fcntl(fd, F_OFD_SETLK, &fl), 0);
  ASSERT_EQ(::pwrite(fd, Pattern(kBs / 2, 2).data(), kBs / 2, 0), static_cast<ssize_t>(kBs / 2));
  std::atomic<bool> finished{false};
  Bytes data;
  std::thread reader([&] {
    bool found = false;
    EXPECT_OK(store_.Read("e", 1, &data, &found));
    finished = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const bool early = finished.load();
  ASSERT_EQ(::pwrite(fd, Pattern(kBs, 2).data() + kBs / 2, kBs / 2, kBs / 2),
            static_cast<ssize_t>(kBs / 2));
  ::close(fd);
  reader.join();
  EXPECT_FALSE(early) << "the read did not wait for the writer's lock";
  Bytes whole = Pattern(kBs / 2, 2);
  Bytes second = Pattern(kBs, 2);
  whole.insert(whole.end(), second.begin() + kBs / 2, second.end());
  EXPECT_EQ(data, whole);
}

TEST(SafeFile, ReplaceFileAtomicallyWritesANewFileAndNeverThroughALink) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/stats.json", victim = dir.path() + "/victim";
  ASSERT_OK(ReplaceFileAtomically(path, "one"));
  EXPECT_EQ(ReadFile(path), "one");
  const ino_t first = Inode(path);
  ASSERT_OK(ReplaceFileAtomically(path, "two"));
  EXPECT_EQ(ReadFile(path), "two");
  EXPECT_NE(Inode(path), first);  // a new file: a reader of the old one saw it whole
  // The temporary files of the old scheme's predictable name, planted as links: never used.
  std::ofstream(victim) << "victim";
  fs::create_symlink(victim, path + ".tmp");
  ASSERT_OK(ReplaceFileAtomically(path, "three"));
  EXPECT_EQ(ReadFile(victim), "victim");
  size_t n = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) (void)entry, ++n;
  EXPECT_EQ(n, 3u);  // stats.json, its .tmp link, the victim: no temporary file left
  // The target itself a link: refused, the link and its target left alone.
  fs::remove(path);
  fs::create_symlink(victim, path);
  Status s = ReplaceFileAtomically(path, "four");
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
  EXPECT_EQ(ReadFile(victim), "victim");
}

TEST(SafeFile, CheckPrivateDirectoryRefusesSharedOrForeignOrLinkedDirectories) {
  testing::TempDir dir;
  const std::string d = dir.path() + "/d";
  ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
  EXPECT_OK(CheckPrivateDirectory(d, "stats-file=x"));
  ASSERT_EQ(::chmod(d.c_str(), 0777), 0);
  Status s = CheckPrivateDirectory(d, "stats-file=x");
  EXPECT_EQ(s.err(), EACCES);
  EXPECT_NE(s.message().find("stats-file=x"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(d), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("writable"), std::string::npos) << s.message();
  ASSERT_EQ(::chmod(d.c_str(), 0720), 0);
  EXPECT_EQ(CheckPrivateDirectory(d, "w").err(), EACCES);
  ASSERT_EQ(::chmod(d.c_str(), 0755), 0);
  EXPECT_OK(CheckPrivateDirectory(d, "w"));
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(d.c_str(), 65534, 65534), 0);
    s = CheckPrivateDirectory(d, "w");
    EXPECT_EQ(s.err(), EACCES);
    EXPECT_NE(s.message().find("65534"), std::string::npos) << s.message();
  }
  fs::create_directory_symlink(dir.path(), dir.path() + "/link");
  s = CheckPrivateDirectory(dir.path() + "/link", "w");
  EXPECT_EQ(s.err(), EACCES);
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
  std::ofstream(dir.path() + "/file") << "x";
  EXPECT_EQ(CheckPrivateDirectory(dir.path() + "/file", "w").err(), EACCES);
  EXPECT_EQ(CheckPrivateDirectory(dir.path() + "/missing", "w").err(), ENOENT);
}

}  // namespace
}  // namespace s3block
