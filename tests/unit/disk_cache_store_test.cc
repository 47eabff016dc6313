// DiskCacheStore: copies of blocks on local disk that survive a restart, are checked against the
// store's digests before use, and never serve a block older than the store's.
#include "cache/disk_cache_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "s3/sigv4.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

Bytes Block(uint32_t size, uint8_t seed) {
  Bytes b(size);
  for (uint32_t i = 0; i < size; ++i) b[i] = static_cast<uint8_t>(seed * 31 + i * 7 + (i >> 8));
  return b;
}

// A store in memory that reports MD5 digests in its listings as S3 does (or none, with
// digests = false), counts reads, and can hold one read at a gate.
class MemStore : public BlockStore {
 public:
  explicit MemStore(bool digests = true) : digests_(digests) {}
  std::string Describe() const override { return "mem"; }

  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    std::unique_lock<std::mutex> lk(mu_);
    ++reads;
    auto it = blocks_.find({std::string(e), id});
    *found = it != blocks_.end();
    *data = *found ? it->second : Bytes();
    Pass(kReads, lk);  // with its data: it returns once the test opens the gate
    if (fail_reads) return Status::IoError("injected read failure");
    return Status::Ok();
  }
  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool) override {
    std::unique_lock<std::mutex> lk(mu_);
    Pass(kWrites, lk);  // not yet applied
    if (fail_writes) return Status::IoError("injected write failure");
    ++writes;
    blocks_[{std::string(e), id}] = Bytes(data.begin(), data.end());
    // A write whose answer was lost: applied, yet reported as failed.
    if (fail_after_applying) return Status::IoError("injected failure after the write landed");
    return Status::Ok();
  }
  Status Delete(std::string_view e, std::span<const uint64_t> ids, bool) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (uint64_t id : ids) blocks_.erase({std::string(e), id});
    return Status::Ok();
  }
  Status Flush(std::string_view) override { return Status::Ok(); }
  Status ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) override {
    return ListBlockDigests(e, [&](uint64_t id, std::string_view) { fn(id); });
  }
  Status ListBlockDigests(std::string_view e,
                          const std::function<void(uint64_t, std::string_view)>& fn) override {
    std::vector<std::pair<uint64_t, std::string>> all;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (const auto& [k, v] : blocks_)
        if (k.first == e) all.emplace_back(k.second, digests_ ? HexEncode(Md5(v)) : "");
    }
    for (const auto& [id, md5] : all) fn(id, md5);
    return Status::Ok();
  }
  Status ListExports(std::vector<std::string>*) override { return Status::Ok(); }
  Status ReadMeta(std::string_view, std::string*, bool* found) override {
    *found = false;
    return Status::Ok();
  }
  Status WriteMeta(std::string_view, std::string_view) override { return Status::Ok(); }
  Status DeleteMeta(std::string_view) override { return Status::Ok(); }

  // Another writer changing the store behind the cache's back.
  void Put(const std::string& e, uint64_t id, Bytes data) {
    std::lock_guard<std::mutex> lk(mu_);
    blocks_[{e, id}] = std::move(data);
  }
  void Remove(const std::string& e, uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    blocks_.erase({e, id});
  }
  // Gates: once closed, every read (or write) waits at its gate until the test opens it.
  enum GateOf { kReads, kWrites };
  void Close(GateOf g) {
    std::lock_guard<std::mutex> lk(mu_);
    gates_[g].closed = true;
  }
  // Until n requests have come to the gate.
  void WaitHeld(GateOf g, int n) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return gates_[g].held >= n; });
  }
  void Open(GateOf g) {
    std::lock_guard<std::mutex> lk(mu_);
    gates_[g].closed = false;
    cv_.notify_all();
  }

  std::atomic<int> reads{0}, writes{0};
  std::atomic<bool> fail_reads{false}, fail_writes{false}, fail_after_applying{false};

 private:
  const bool digests_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct Gate {
    bool closed = false;
    int held = 0;
  } gates_[2];
  void Pass(GateOf g, std::unique_lock<std::mutex>& lk) {
    if (!gates_[g].closed) return;
    ++gates_[g].held;
    cv_.notify_all();
    cv_.wait(lk, [&] { return !gates_[g].closed; });
  }
  std::map<std::pair<std::string, uint64_t>, Bytes> blocks_;
};

constexpr uint32_t kBs = 4096;

Bytes MustRead(BlockStore& s, uint64_t id, bool expect_found = true) {
  Bytes data;
  bool found = false;
  Status st = s.Read("vol", id, &data, &found);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(found, expect_found) << "block " << id;
  return data;
}

// Every copy file of the export "vol", by path.
std::vector<fs::path> CopyFiles(const DiskCacheStore& cache) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(cache.store_dir()) / "exports" / "vol";
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "lock") out.push_back(e.path());
  return out;
}

TEST(DiskCacheStoreTest, ReadThroughThenFromDisk) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  mem->Put("vol", 3, Block(kBs, 3));
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Check());
  EXPECT_EQ(MustRead(cache, 3), Block(kBs, 3));
  EXPECT_EQ(MustRead(cache, 3), Block(kBs, 3));
  EXPECT_EQ(mem->reads, 1);
  MustRead(cache, 4, false);  // not stored: nothing to keep
  DiskCacheStats s = cache.Stats("vol");
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.fills, 1u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.bytes, kBs);
}

TEST(DiskCacheStoreTest, LayoutOneFileANamedByIdAndMd5) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Check());
  ASSERT_OK(cache.Write("vol", 5000, Block(kBs, 9), false));
  auto files = CopyFiles(cache);
  ASSERT_EQ(files.size(), 1u);
  // Shard 5000 / 4096 = 1; the name is the id and the MD5 of the content.
  EXPECT_EQ(files[0].parent_path().filename(), "1");
  EXPECT_EQ(files[0].filename(), "5000." + HexEncode(Md5(Block(kBs, 9))));
  EXPECT_EQ(fs::file_size(files[0]), kBs);
  // The store's description is kept beside the copies, and the id names the store.
  std::ifstream f(cache.store_dir() + "/store");
  std::string line;
  std::getline(f, line);
  EXPECT_EQ(line, "mem");
  EXPECT_EQ(fs::path(cache.store_dir()).filename().string(), Sha256Hex(std::string_view("mem")).substr(0, 16));
}

TEST(DiskCacheStoreTest, WritesGoToStoreAndDisk) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 2), false));
  EXPECT_EQ(mem->writes, 2);
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 2));
  EXPECT_EQ(mem->reads, 0);
  EXPECT_EQ(CopyFiles(cache).size(), 1u);  // the older copy is gone
  EXPECT_EQ(cache.Stats("vol").writes, 2u);
}

TEST(DiskCacheStoreTest, FailedStoreWriteLeavesNoCopy) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  mem->fail_writes = true;
  EXPECT_FALSE(cache.Write("vol", 1, Block(kBs, 2), false).ok());
  mem->fail_writes = false;
  EXPECT_EQ(CopyFiles(cache).size(), 0u);
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));  // the store's, which still holds version 1
  EXPECT_EQ(mem->reads, 1);
}

TEST(DiskCacheStoreTest, SurvivesRestartOnceListedAsCurrent) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  {
    DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
    for (uint64_t id = 0; id < 10; ++id) ASSERT_OK(cache.Write("vol", id, Block(kBs, id), false));
  }
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  // Before a listing has checked them, the copies are not used.
  EXPECT_EQ(MustRead(cache, 0), Block(kBs, 0));
  EXPECT_EQ(mem->reads, 1);
  std::vector<uint64_t> listed;
  ASSERT_OK(cache.ListBlocks("vol", [&](uint64_t id) { listed.push_back(id); }));
  EXPECT_EQ(listed.size(), 10u);
  for (uint64_t id = 0; id < 10; ++id) EXPECT_EQ(MustRead(cache, id), Block(kBs, id));
  EXPECT_EQ(mem->reads, 1);  // every other block came from the disk
  DiskCacheStats s = cache.Stats("vol");
  EXPECT_EQ(s.reused, 9u);  // block 0 was read from the store (and copied again) first
  EXPECT_EQ(s.stale, 0u);
  EXPECT_EQ(s.hits, 10u);
}

TEST(DiskCacheStoreTest, StaleCopiesAreDiscardedAtStartUp) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  {
    DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
    for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(cache.Write("vol", id, Block(kBs, id), false));
  }
  // Another writer, while this server was stopped: block 1 rewritten, block 2 deleted.
  mem->Put("vol", 1, Block(kBs, 101));
  mem->Remove("vol", 2);
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  DiskCacheStats s = cache.Stats("vol");
  EXPECT_EQ(s.reused, 2u);
  EXPECT_EQ(s.stale, 2u);
  EXPECT_EQ(s.blocks, 2u);
  EXPECT_EQ(CopyFiles(cache).size(), 2u);  // the stale files are deleted too
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 101));
  MustRead(cache, 2, false);
  EXPECT_EQ(MustRead(cache, 0), Block(kBs, 0));
  EXPECT_EQ(MustRead(cache, 3), Block(kBs, 3));
  EXPECT_EQ(mem->reads, 2);
}

TEST(DiskCacheStoreTest, StoreWithoutDigestsReusesNothing) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>(/*digests=*/false);
  {
    DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
    ASSERT_OK(cache.Write("vol", 7, Block(kBs, 7), false));
  }
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  EXPECT_EQ(cache.Stats("vol").stale, 1u);
  EXPECT_EQ(cache.Stats("vol").blocks, 0u);
  EXPECT_EQ(MustRead(cache, 7), Block(kBs, 7));
  EXPECT_EQ(mem->reads, 1);
}

TEST(DiskCacheStoreTest, DamagedCopyIsDroppedAndTheStoreRead) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  ASSERT_OK(cache.Write("vol", 2, Block(kBs, 2), false));
  auto files = CopyFiles(cache);
  ASSERT_EQ(files.size(), 2u);
  for (const auto& f : files) {
    if (f.filename().string().rfind("1.", 0) == 0) {
      std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
      io.seekp(100);
      io.put('\x5a');  // a flipped byte, as a crash of the machine might leave
    } else {
      fs::resize_file(f, kBs / 2);  // a torn file
    }
  }
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));
  EXPECT_EQ(MustRead(cache, 2), Block(kBs, 2));
  EXPECT_EQ(mem->reads, 2);
  EXPECT_EQ(cache.Stats("vol").errors, 2u);
  // Read again: good copies were made from the store's blocks.
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));
  EXPECT_EQ(MustRead(cache, 2), Block(kBs, 2));
  EXPECT_EQ(mem->reads, 2);
}

TEST(DiskCacheStoreTest, EvictsLeastRecentlyUsedWithinSize) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 3 * kBs);
  for (uint64_t id = 0; id < 3; ++id) ASSERT_OK(cache.Write("vol", id, Block(kBs, id), false));
  MustRead(cache, 0);  // 0 is now the most recently used; 1 the least
  ASSERT_OK(cache.Write("vol", 3, Block(kBs, 3), false));
  DiskCacheStats s = cache.Stats("vol");
  EXPECT_EQ(s.blocks, 3u);
  EXPECT_EQ(s.bytes, 3u * kBs);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(CopyFiles(cache).size(), 3u);
  const int before = mem->reads;
  MustRead(cache, 0);
  MustRead(cache, 2);
  MustRead(cache, 3);
  EXPECT_EQ(mem->reads, before);
  MustRead(cache, 1);
  EXPECT_EQ(mem->reads, before + 1);
}

TEST(DiskCacheStoreTest, DeleteDropsTheCopy) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  const uint64_t ids[] = {1};
  ASSERT_OK(cache.Delete("vol", ids, false));
  MustRead(cache, 1, false);
  EXPECT_EQ(CopyFiles(cache).size(), 0u);
}

TEST(DiskCacheStoreTest, ExportsAreSeparate) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  Bytes data;
  bool found = true;
  ASSERT_OK(cache.Read("other", 1, &data, &found));
  EXPECT_FALSE(found);
}

TEST(DiskCacheStoreTest, SecondProcessOnOneExportPassesThrough) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore first(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(first.Write("vol", 1, Block(kBs, 1), false));
  // flock is per open file description: a second store in this process is a second holder.
  DiskCacheStore second(mem, dir.path() + "/dc", 1 << 20);
  EXPECT_EQ(MustRead(second, 1), Block(kBs, 1));
  ASSERT_OK(second.Write("vol", 1, Block(kBs, 2), false));
  DiskCacheStats s = second.Stats("vol");
  EXPECT_EQ(s.locked_out, 1u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(mem->reads, 1);
}

TEST(DiskCacheStoreTest, AClosedExportGivesBackItsLockAndFdsAndItsCopiesServeItAgain) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  auto fds = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator());
  };
  DiskCacheStore first(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(first.Check());
  const auto before = fds();
  for (uint64_t id = 0; id < 10; ++id) ASSERT_OK(first.Write("vol", id, Block(kBs, id), false));
  EXPECT_GT(fds(), before);  // the export's lock and directory
  ASSERT_OK(first.CloseExport("vol"));
  EXPECT_EQ(fds(), before);
  EXPECT_EQ(first.Stats("vol").blocks, 0u);

  // Its lock is free: another process (here a second store) takes the copies and reads them.
  {
    DiskCacheStore second(mem, dir.path() + "/dc", 1 << 20);
    ASSERT_OK(second.ListBlocks("vol", [](uint64_t) {}));
    for (uint64_t id = 0; id < 10; ++id) EXPECT_EQ(MustRead(second, id), Block(kBs, id));
    EXPECT_EQ(second.Stats("vol").locked_out, 0u);
    EXPECT_EQ(second.Stats("vol").reused, 10u);
    EXPECT_EQ(mem->reads, 0);
  }
  // Named again, the export finds its copies, checked against the listing first.
  ASSERT_OK(first.ListBlocks("vol", [](uint64_t) {}));
  for (uint64_t id = 0; id < 10; ++id) EXPECT_EQ(MustRead(first, id), Block(kBs, id));
  EXPECT_EQ(first.Stats("vol").reused, 10u);
  EXPECT_EQ(mem->reads, 0);
}

TEST(DiskCacheStoreTest, ReadRacingAWriteLeavesNoOlderCopy) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  mem->Put("vol", 1, Block(kBs, 1));
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  mem->Close(MemStore::kReads);
  Bytes old_data;
  std::thread reader([&] {
    bool found = false;
    EXPECT_OK(cache.Read("vol", 1, &old_data, &found));
  });
  mem->WaitHeld(MemStore::kReads, 1);  // the reader holds version 1 from the store
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 2), false));
  mem->Open(MemStore::kReads);
  reader.join();
  EXPECT_EQ(old_data, Block(kBs, 1));
  // The reader's older copy must not have replaced the write's.
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 2));
  auto files = CopyFiles(cache);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "1." + HexEncode(Md5(Block(kBs, 2))));
}

TEST(DiskCacheStoreTest, ReadDuringAWriteThatFailsLeavesNoCopy) {
  // A read that starts while a write is in the store, and ends before it, reads the old
  // content. If the write then fails with its outcome unknown (applied, its answer lost), a copy
  // of that old content would be served from the disk while the store holds the new one, until
  // the copy is evicted or found stale: the block would change back without a write.
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  mem->Put("vol", 1, Block(kBs, 1));
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  mem->Close(MemStore::kWrites);
  mem->fail_after_applying = true;
  std::thread writer([&] { EXPECT_FALSE(cache.Write("vol", 1, Block(kBs, 2), false).ok()); });
  mem->WaitHeld(MemStore::kWrites, 1);
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));  // the write has not landed yet
  mem->Open(MemStore::kWrites);
  writer.join();
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 2));  // what the store holds
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 2));
  for (const auto& f : CopyFiles(cache))
    EXPECT_NE(f.filename(), "1." + HexEncode(Md5(Block(kBs, 1)))) << "a copy of the old content is kept";
}

TEST(DiskCacheStoreTest, ReadRacingADeleteLeavesNoCopy) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  mem->Put("vol", 1, Block(kBs, 1));
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  mem->Close(MemStore::kReads);
  std::thread reader([&] { MustRead(cache, 1); });
  mem->WaitHeld(MemStore::kReads, 1);
  const uint64_t ids[] = {1};
  ASSERT_OK(cache.Delete("vol", ids, false));
  mem->Open(MemStore::kReads);
  reader.join();
  MustRead(cache, 1, false);
  EXPECT_EQ(CopyFiles(cache).size(), 0u);
}

TEST(DiskCacheStoreTest, LeftoverTemporaryFilesAreRemoved) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  std::string shard;
  {
    DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
    ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
    shard = CopyFiles(cache)[0].parent_path().string();
  }
  std::ofstream(shard + "/1.0123.tmp7") << "half";
  DiskCacheStore cache(mem, dir.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  EXPECT_FALSE(fs::exists(shard + "/1.0123.tmp7"));
  EXPECT_EQ(CopyFiles(cache).size(), 1u);
}

TEST(DiskCacheStoreTest, UnwritableDirectoryIsAClearError) {
  TempDir dir;
  auto mem = std::make_shared<MemStore>();
  DiskCacheStore cache(mem, dir.path() + "/missing/parent/dc", 1 << 20);
  Status s = cache.Check();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("disk-cache="), std::string::npos) << s.message();
  // Without its directory the cache passes requests through: nothing fails because of it.
  ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));
}

}  // namespace
}  // namespace s3block

// DIR shared with other users, or things planted in it: refused at start-up, or never followed
// or waited on.
namespace s3block {
namespace {

extern "C" void HostileCacheTestHung(int) {
  static const char kMsg[] = "hostile disk cache test: a call hung (alarm rang)\n";
  ssize_t ignored = ::write(2, kMsg, sizeof kMsg - 1);
  (void)ignored;
  ::_exit(3);
}

class HostileDiskCache : public ::testing::Test {
 protected:
  void SetUp() override {
    ::signal(SIGALRM, HostileCacheTestHung);
    ::alarm(20);
    victim_ = dir_.path() + "/victim";
    std::ofstream(victim_) << "IMPORTANT DATA\n";
  }
  void TearDown() override { ::alarm(0); }
  std::string Slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  testing::TempDir dir_;
  std::shared_ptr<MemStore> mem_ = std::make_shared<MemStore>();
  std::string victim_;
};

TEST_F(HostileDiskCache, CheckRefusesADirectoryOthersCanWriteOrOwn) {
  const std::string dc = dir_.path() + "/dc";
  ASSERT_EQ(::mkdir(dc.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(dc.c_str(), 0777), 0);
  {
    DiskCacheStore cache(mem_, dc, 1 << 20);
    Status s = cache.Check();
    EXPECT_EQ(s.err(), EACCES) << s.ToString();
    EXPECT_NE(s.message().find("disk-cache=" + dc), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("writable"), std::string::npos) << s.message();
  }
  ASSERT_EQ(::chmod(dc.c_str(), 0700), 0);
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(dc.c_str(), 65534, 65534), 0);
    DiskCacheStore cache(mem_, dc, 1 << 20);
    Status s = cache.Check();
    EXPECT_EQ(s.err(), EACCES) << s.ToString();
    EXPECT_NE(s.message().find("uid 65534"), std::string::npos) << s.message();
    ASSERT_EQ(::chown(dc.c_str(), 0, 0), 0);
  }
  {
    // Its <store-id> directory is checked too.
    DiskCacheStore cache(mem_, dc, 1 << 20);
    ASSERT_OK(cache.Check());
    ASSERT_EQ(::chmod(cache.store_dir().c_str(), 0757), 0);
    DiskCacheStore again(mem_, dc, 1 << 20);
    Status s = again.Check();
    EXPECT_EQ(s.err(), EACCES) << s.ToString();
    EXPECT_NE(s.message().find(cache.store_dir()), std::string::npos) << s.message();
  }
  // A symlink as DIR: refused, not followed.
  fs::create_directory_symlink(dir_.path(), dir_.path() + "/link");
  DiskCacheStore linked(mem_, dir_.path() + "/link", 1 << 20);
  Status s = linked.Check();
  EXPECT_EQ(s.err(), EACCES) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
}

TEST_F(HostileDiskCache, NewDirectoriesArePrivate) {
  DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
  ::umask(0);
  Status s = cache.Check();
  ::umask(022);
  ASSERT_OK(s);
  for (const std::string& d : {dir_.path() + "/dc", cache.store_dir()}) {
    struct stat st;
    ASSERT_EQ(::lstat(d.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u) << d;
  }
}

TEST_F(HostileDiskCache, APlantedStoreTmpLinkIsNotWrittenThrough) {
  DiskCacheStore probe(mem_, dir_.path() + "/dc", 1 << 20);
  fs::create_directories(probe.store_dir());
  ::chmod((dir_.path() + "/dc").c_str(), 0700);
  ::chmod(probe.store_dir().c_str(), 0700);
  fs::create_symlink(victim_, probe.store_dir() + "/store.tmp");
  for (int i = 0; i < 8; ++i)  // the copies' old temporary names, too
    fs::create_symlink(victim_, probe.store_dir() + "/store.tmp" + std::to_string(i));
  ASSERT_OK(probe.Check());
  EXPECT_EQ(Slurp(victim_), "IMPORTANT DATA\n");
  EXPECT_EQ(Slurp(probe.store_dir() + "/store"), "mem\n");
  // "store" itself a link: refused, the target left alone.
  fs::remove(probe.store_dir() + "/store");
  fs::create_symlink(victim_, probe.store_dir() + "/store");
  DiskCacheStore again(mem_, dir_.path() + "/dc", 1 << 20);
  Status s = again.Check();
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("symbolic link"), std::string::npos) << s.message();
  EXPECT_EQ(Slurp(victim_), "IMPORTANT DATA\n");
}

TEST_F(HostileDiskCache, ACopyReplacedByAFifoIsDroppedNotWaitedOn) {
  mem_->Put("vol", 1, Block(kBs, 1));
  DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Check());
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));  // now a copy
  auto files = CopyFiles(cache);
  ASSERT_EQ(files.size(), 1u);
  fs::remove(files[0]);
  ASSERT_EQ(::mkfifo(files[0].c_str(), 0600), 0);
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));  // from the store
  EXPECT_EQ(cache.Stats("vol").hits, 0u);
  EXPECT_EQ(cache.Stats("vol").errors, 1u);
}

TEST_F(HostileDiskCache, ACopyThatIsASymlinkIsNeverRead) {
  mem_->Put("vol", 1, Block(kBs, 1));
  std::string copy;
  {
    DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
    ASSERT_OK(cache.Check());
    MustRead(cache, 1);
    auto files = CopyFiles(cache);
    ASSERT_EQ(files.size(), 1u);
    copy = files[0];
  }
  // Another user's file with the block's content, linked in under the copy's name.
  const std::string theirs = dir_.path() + "/theirs";
  fs::rename(copy, theirs);
  fs::create_symlink(theirs, copy);
  DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Check());
  ASSERT_OK(cache.ListBlocks("vol", [](uint64_t) {}));
  EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));
  EXPECT_EQ(cache.Stats("vol").hits, 0u);  // read from the store, not through the link
  EXPECT_EQ(cache.Stats("vol").reused, 0u);
  EXPECT_TRUE(fs::exists(theirs));
}

TEST_F(HostileDiskCache, ALinkedShardOrLockIsNotUsed) {
  DiskCacheStore probe(mem_, dir_.path() + "/dc", 1 << 20);
  ASSERT_OK(probe.Check());
  const std::string exp = probe.store_dir() + "/exports/vol";
  fs::create_directories(exp);
  const std::string elsewhere = dir_.path() + "/elsewhere";
  fs::create_directory(elsewhere);
  fs::create_directory_symlink(elsewhere, exp + "/0");
  {
    DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
    ASSERT_OK(cache.Check());
    ASSERT_OK(cache.Write("vol", 1, Block(kBs, 1), false));
    EXPECT_EQ(MustRead(cache, 1), Block(kBs, 1));
    EXPECT_TRUE(fs::is_empty(elsewhere));  // no copy written through the link
    EXPECT_EQ(cache.Stats("vol").hits, 0u);
  }
  // The lock a dangling link: its target is not created; the export goes without a disk cache.
  fs::remove(exp + "/lock");
  fs::create_symlink(dir_.path() + "/made", exp + "/lock");
  DiskCacheStore cache(mem_, dir_.path() + "/dc", 1 << 20);
  ASSERT_OK(cache.Check());
  ASSERT_OK(cache.Write("vol", 2, Block(kBs, 2), false));
  EXPECT_EQ(MustRead(cache, 2), Block(kBs, 2));
  EXPECT_FALSE(fs::exists(dir_.path() + "/made"));
  EXPECT_TRUE(fs::is_symlink(exp + "/lock"));
}

}  // namespace
}  // namespace s3block
