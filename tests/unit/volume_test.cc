#include "s3block/volume.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "file/file_store.h"
#include "open_race.h"
#include "test_util.h"
#include "util/zero.h"

namespace s3block {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

class VolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::make_shared<FileStore>(dir_.path());
    ASSERT_OK(store_->Check());
  }
  std::shared_ptr<Volume> Open(const std::string& name, uint64_t size, uint32_t bs,
                               bool explicit_bs = true) {
    VolumeOptions o;
    o.size = size;
    o.block_size = bs;
    o.block_size_explicit = explicit_bs;
    std::shared_ptr<Volume> v;
    Status s = Volume::Open(store_, name, o, &v);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return v;
  }
  // Export `name` of `size` bytes at 4 KiB blocks: through `cache` if it is given, else
  // straight on the file store.
  std::shared_ptr<Volume> OpenOn(const std::shared_ptr<CacheStore>& cache, const std::string& name,
                                 uint64_t size, bool create = true) {
    VolumeOptions o;
    o.size = size;
    o.block_size = 4096;
    o.create = create;
    std::shared_ptr<Volume> v;
    Status s = Volume::Open(cache ? StoreStack(cache) : StoreStack(store_), name, o, &v);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return v;
  }
  std::shared_ptr<CacheStore> StartedCache(uint64_t bytes) {
    CacheOptions co;
    co.cache_size = bytes;
    auto cache = std::make_shared<CacheStore>(store_, co);
    EXPECT_OK(cache->Start());
    return cache;
  }
  Bytes ReadAll(Volume& v) {
    Bytes b(v.size());
    Status s = v.Read(b.data(), b.size(), 0);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return b;
  }

  TempDir dir_;
  std::shared_ptr<FileStore> store_;
};

Bytes Random(size_t n, std::mt19937_64& rng) {
  Bytes b(n);
  for (auto& c : b) c = static_cast<uint8_t>(rng() | 1);  // never 0: elision must not hide bugs
  return b;
}

TEST_F(VolumeTest, ReadModifyWriteAtEveryAlignment) {
  constexpr uint32_t kBs = 512;
  const uint64_t size = kBs * 6 + 100;  // the last block is partial
  auto v = Open("rmw", size, kBs);
  ASSERT_TRUE(v);
  Bytes model(size, 0);
  std::mt19937_64 rng(42);
  const uint64_t offsets[] = {0, 1, 255, 511, 512, 513, 1023, 1024, 1500, size - 100, size - 1};
  const uint64_t lengths[] = {1, 2, 255, 511, 512, 513, 1024, 1025, 2048, 3000};
  int cases = 0;
  for (uint64_t off : offsets) {
    for (uint64_t len : lengths) {
      if (off + len > size) len = size - off;
      Bytes data = Random(len, rng);
      ASSERT_OK(v->Write(data.data(), len, off, false));
      std::copy(data.begin(), data.end(), model.begin() + off);
      ASSERT_EQ(ReadAll(*v), model) << "after write at " << off << " length " << len;
      // Read back exactly the range, unaligned.
      Bytes back(len);
      ASSERT_OK(v->Read(back.data(), len, off));
      ASSERT_EQ(back, data);
      ++cases;
    }
  }
  EXPECT_GT(cases, 100);
  // And the store holds exactly one raw block per file, the last one padded with zeros.
  ASSERT_OK(v->Flush());
  for (uint64_t id = 0; id < 7; ++id) {
    Bytes raw;
    bool found = false;
    ASSERT_OK(store_->Read("rmw", id, &raw, &found));
    ASSERT_TRUE(found);
    ASSERT_EQ(raw.size(), kBs);
    uint64_t n = std::min<uint64_t>(kBs, size - id * kBs);
    EXPECT_TRUE(std::equal(raw.begin(), raw.begin() + n, model.begin() + id * kBs));
    EXPECT_TRUE(IsAllZero(raw.data() + n, kBs - n));
  }
}

TEST_F(VolumeTest, TrimAndZeroAtEveryAlignmentKeepNeighbours) {
  constexpr uint32_t kBs = 512;
  const uint64_t size = kBs * 8;
  auto v = Open("tz", size, kBs);
  std::mt19937_64 rng(7);
  const std::pair<uint64_t, uint64_t> ranges[] = {{0, 512},   {1, 10},     {500, 30},  {512, 1024},
                                                  {700, 1000}, {0, size},  {3000, 1096}, {1, size - 2}};
  for (auto [off, len] : ranges) {
    for (int op = 0; op < 3; ++op) {
      Bytes model = Random(size, rng);
      ASSERT_OK(v->Write(model.data(), size, 0, false));
      if (op == 0) ASSERT_OK(v->Trim(len, off, false));
      if (op == 1) ASSERT_OK(v->Zero(len, off, true, false, false));
      if (op == 2) ASSERT_OK(v->Zero(len, off, false, false, false));
      std::fill(model.begin() + off, model.begin() + off + len, 0);
      ASSERT_EQ(ReadAll(*v), model) << "op " << op << " at " << off << " length " << len;
    }
  }
}

TEST_F(VolumeTest, WholeBlocksTrimmedBecomeHolesAndZeroWithoutTrimStaysAllocated) {
  constexpr uint32_t kBs = 4096;
  auto v = Open("holes", 64 * kBs, kBs);
  Bytes data(16 * kBs, 0x5a);
  ASSERT_OK(v->Write(data.data(), data.size(), 0, false));
  EXPECT_EQ(v->StoredBlocks(), 16u);
  ASSERT_OK(v->Trim(4 * kBs, 2 * kBs, false));
  EXPECT_EQ(v->StoredBlocks(), 12u);
  EXPECT_FALSE(fs::exists(dir_.path() + "/exports/holes/blocks/3"));
  ASSERT_OK(v->Zero(2 * kBs, 8 * kBs, /*may_trim=*/false, false, false));
  EXPECT_TRUE(fs::exists(dir_.path() + "/exports/holes/blocks/8"));
  EXPECT_EQ(v->StoredBlocks(), 12u);
  // Fast zero without trimming is refused, and changes nothing.
  EXPECT_EQ(v->Zero(kBs, 0, false, true, false).err(), ENOTSUP);
  EXPECT_EQ(v->StoredBlocks(), 12u);
  std::vector<std::tuple<uint64_t, uint64_t, bool>> ext;
  ASSERT_OK(v->Extents(v->size(), 0, [&](uint64_t o, uint64_t l, bool hole) {
    ext.emplace_back(o, l, hole);
    return true;
  }));
  std::vector<std::tuple<uint64_t, uint64_t, bool>> want = {
      {0, 2 * kBs, false}, {2 * kBs, 4 * kBs, true}, {6 * kBs, 10 * kBs, false},
      {16 * kBs, 48 * kBs, true}};
  EXPECT_EQ(ext, want);
}

TEST_F(VolumeTest, AllZeroWritesAreNotStored) {
  auto v = Open("z", 1 << 20, 4096);
  Bytes zeros(8192, 0), ones(4096, 1);
  ASSERT_OK(v->Write(zeros.data(), zeros.size(), 0, false));
  EXPECT_EQ(v->StoredBlocks(), 0u);
  EXPECT_FALSE(fs::exists(dir_.path() + "/exports/z/blocks/0"));
  ASSERT_OK(v->Write(ones.data(), ones.size(), 0, false));
  EXPECT_TRUE(fs::exists(dir_.path() + "/exports/z/blocks/0"));
  ASSERT_OK(v->Write(zeros.data(), 4096, 0, false));  // overwrite with zeros deletes it
  EXPECT_FALSE(fs::exists(dir_.path() + "/exports/z/blocks/0"));
  EXPECT_EQ(v->Stats().zero_blocks_elided, 3u);
}

// A write of many whole blocks goes down in runs (Volume::kRunBlocks at most): blocks of zeros
// between them are deleted, not stored, and the short last block of the export is padded.
TEST_F(VolumeTest, RunsOfWholeBlocksAroundBlocksOfZerosLandAsWritten) {
  constexpr uint32_t kBs = 4096;
  constexpr uint64_t kBlocks = Volume::kRunBlocks * 2 + 40;
  const uint64_t size = kBlocks * kBs - 1000;
  auto cache = StartedCache(4 << 20);
  for (bool cached : {false, true}) {
    SCOPED_TRACE(cached ? "through the cache" : "on the file store");
    const std::string name = cached ? "runs-cached" : "runs";
    std::shared_ptr<Volume> v = OpenOn(cached ? cache : nullptr, name, size);
    ASSERT_TRUE(v);
    std::mt19937_64 rng(7);
    Bytes b = Random(size, rng);
    const uint64_t zeroed[] = {0, 3, Volume::kRunBlocks, Volume::kRunBlocks + 1, kBlocks - 2};
    for (uint64_t id : zeroed) std::fill_n(b.begin() + id * kBs, kBs, 0);
    // Stored before, so that the zeros must delete them.
    Bytes ones(size, 1);
    ASSERT_OK(v->Write(ones.data(), size, 0, false));
    ASSERT_OK(v->Write(b.data(), size, 0, false));
    ASSERT_OK(v->Flush());
    for (uint64_t id : zeroed)
      EXPECT_FALSE(fs::exists(dir_.path() + "/exports/" + name + "/blocks/" + std::to_string(id)))
          << "block " << id;
    EXPECT_EQ(v->StoredBlocks(), kBlocks - std::size(zeroed));
    Bytes back(size, 0xee);
    ASSERT_OK(v->Read(back.data(), size, 0));
    EXPECT_TRUE(back == b);
    std::ifstream last(dir_.path() + "/exports/" + name + "/blocks/" + std::to_string(kBlocks - 1),
                       std::ios::binary);
    Bytes stored((std::istreambuf_iterator<char>(last)), std::istreambuf_iterator<char>());
    ASSERT_EQ(stored.size(), kBs);
    EXPECT_TRUE(std::equal(stored.begin(), stored.begin() + kBs - 1000,
                           b.begin() + (kBlocks - 1) * kBs));
    EXPECT_TRUE(std::all_of(stored.end() - 1000, stored.end(), [](uint8_t c) { return c == 0; }));
  }
  ASSERT_OK(cache->Shutdown());
}

TEST_F(VolumeTest, HugeTrimOnASparseExportTouchesOnlyStoredBlocks) {
  auto v = Open("big", 1ull << 40, 4096);  // 1 TiB, 2^28 blocks
  Bytes data(4096, 9);
  ASSERT_OK(v->Write(data.data(), 4096, (1ull << 39) + 4096 * 5, false));
  ASSERT_OK(v->Trim(0xffffffffu, 1ull << 39, false));  // a 4 GiB trim
  ASSERT_OK(v->Zero(0xffffffffu, 1ull << 38, true, true, false));
  EXPECT_EQ(v->StoredBlocks(), 0u);
}

TEST_F(VolumeTest, RequestsPastTheEndAreRefusedAndChangeNothing) {
  auto v = Open("end", 10000, 4096);
  Bytes buf(4096, 3);
  EXPECT_EQ(v->Write(buf.data(), 4096, 8000, false).err(), ENOSPC);
  EXPECT_EQ(v->Read(buf.data(), 4096, 8000).err(), EINVAL);
  EXPECT_EQ(v->Trim(1, 10000, false).err(), ENOSPC);
  EXPECT_EQ(v->Zero(UINT64_MAX, 1, true, false, false).err(), ENOSPC);
  EXPECT_EQ(v->Read(buf.data(), 1, UINT64_MAX).err(), EINVAL);
  EXPECT_EQ(v->StoredBlocks(), 0u);
  EXPECT_FALSE(fs::exists(dir_.path() + "/exports/end/blocks/1"));
  ASSERT_OK(v->Write(buf.data(), 10000 - 8192, 8192, false));  // up to the end is fine
}

TEST_F(VolumeTest, ExistingExportKeepsItsSizeAndBlockSize) {
  { auto v = Open("keep", 1 << 20, 1024); }
  VolumeOptions o;
  o.size = 5 << 20;
  o.block_size = 4096;
  o.block_size_explicit = true;
  std::shared_ptr<Volume> v;
  Status s = Volume::Open(store_, "keep", o, &v);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("1024"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("4096"), std::string::npos) << s.message();
  o.block_size_explicit = false;  // the default block size adopts the stored one
  ASSERT_OK(Volume::Open(store_, "keep", o, &v));
  EXPECT_EQ(v->block_size(), 1024u);
  EXPECT_EQ(v->size(), 1u << 20);  // the stored size wins over size=
}

TEST_F(VolumeTest, HostileNamesCreateNothing) {
  VolumeOptions o;
  for (const std::string& name : std::vector<std::string>{"..", "a/b", "../../etc", std::string(256, 'n'), std::string("x\ny"), std::string("  ")}) {
    std::shared_ptr<Volume> v;
    EXPECT_EQ(Volume::Open(store_, name, o, &v).err(), EINVAL) << QuoteForMessage(name);
  }
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(dir_.path() + "/exports")) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 0u);
}

TEST_F(VolumeTest, MissingExportWithoutCreateAndCorruptMetadata) {
  VolumeOptions o;
  o.create = false;
  std::shared_ptr<Volume> v;
  EXPECT_EQ(Volume::Open(store_, "nope", o, &v).err(), ENOENT);
  ASSERT_OK(store_->WriteMeta("bad", "format=1\nsize=banana\nblock-size=4096\n"));
  o.create = true;
  Status s = Volume::Open(store_, "bad", o, &v);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("corrupt"), std::string::npos);
  std::string text;
  bool found;
  ASSERT_OK(store_->ReadMeta("bad", &text, &found));
  EXPECT_NE(text.find("banana"), std::string::npos);  // left as it was
}

TEST_F(VolumeTest, BlockOfTheWrongLengthIsAnErrorNotData) {
  auto v = Open("len", 1 << 20, 4096);
  Bytes data(4096, 1);
  ASSERT_OK(v->Write(data.data(), 4096, 0, false));
  Bytes short_block(100, 2);
  ASSERT_OK(store_->Write("len", 0, short_block, false));
  Bytes buf(4096);
  Status s = v->Read(buf.data(), 4096, 0);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("100 bytes"), std::string::npos) << s.message();
}

TEST_F(VolumeTest, BlocksWrittenWithoutMetadataAreServedAsTheyAre) {
  // The layout written by the specification's first version: raw blocks, no metadata.
  Bytes raw(4096, 0x61);
  ASSERT_OK(store_->Write("legacy", 3, raw, false));
  auto v = Open("legacy", 1 << 30, 4096, false);
  ASSERT_TRUE(v);
  Bytes buf(4096);
  ASSERT_OK(v->Read(buf.data(), 4096, 3 * 4096));
  EXPECT_EQ(buf, raw);
  EXPECT_TRUE(fs::exists(dir_.path() + "/exports/legacy/metadata"));
}

TEST_F(VolumeTest, ConcurrentWritersOfDifferentHalvesOfOneBlockBothLand) {
  constexpr uint32_t kBs = 4096;
  constexpr int kBlocks = 64, kThreads = 8;
  auto v = Open("halves", kBlocks * kBs, kBs);
  // Thread t writes byte range [t*512, (t+1)*512) of every block, many times over.
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Bytes piece(kBs / kThreads, static_cast<uint8_t>(t + 1));
      for (int round = 0; round < 3; ++round)
        for (int b = 0; b < kBlocks; ++b)
          ASSERT_OK(v->Write(piece.data(), piece.size(), uint64_t(b) * kBs + t * piece.size(), false));
    });
  }
  for (auto& t : threads) t.join();
  Bytes all = ReadAll(*v);
  for (int b = 0; b < kBlocks; ++b)
    for (int t = 0; t < kThreads; ++t)
      for (size_t i = 0; i < kBs / kThreads; ++i)
        ASSERT_EQ(all[b * kBs + t * (kBs / kThreads) + i], t + 1) << "block " << b << " thread " << t;
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST_F(VolumeTest, SecondReadWriteOpenIsRefusedReadOnlyIsAllowed) {
  auto v = Open("shared", 1 << 20, 4096);
  ASSERT_TRUE(v);
  VolumeOptions o;
  o.holder = "the second server";
  std::shared_ptr<Volume> w;
  Status s = Volume::Open(store_, "shared", o, &w);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("nbd-s3-backend pid"), std::string::npos) << s.message();
  o.readonly = true;
  ASSERT_OK(Volume::Open(store_, "shared", o, &w));
  Bytes buf(4096, 1);
  EXPECT_EQ(w->Write(buf.data(), 4096, 0, false).err(), EROFS);
  v.reset();  // the first server goes away
  o.readonly = false;
  ASSERT_OK(Volume::Open(store_, "shared", o, &w));
}

}  // namespace
}  // namespace s3block

#include "s3block/cache_store.h"

namespace s3block {
namespace {

// Counts the block reads that reach the store below the cache.
class CountingStore : public StoreDecorator {
 public:
  using StoreDecorator::StoreDecorator;
  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    reads_.fetch_add(1);
    if (id >= max_id_seen_.load()) max_id_seen_.store(id);
    return next_->Read(e, id, data, found);
  }
  void ReadBatch(std::string_view e, std::span<BlockRead> reads) override {
    BlockStore::ReadBatch(e, reads);  // each through Read, to count it
  }
  std::atomic<uint64_t> reads_{0}, max_id_seen_{0};
};

// Reads of every shape (inside a block, across runs of whole blocks, holes and a short last
// block) return what was written, straight on the file store and through the cache.
TEST_F(VolumeTest, ReadsOfEveryShapeAcrossHolesMatchTheWrites) {
  constexpr uint32_t kBs = 4096;
  const uint64_t size = 48 * kBs + 1000;  // the last block is short
  auto cache = StartedCache(1 << 20);
  for (bool cached : {false, true}) {
    SCOPED_TRACE(cached ? "through the cache" : "on the file store");
    const std::string name = cached ? "shapes-cached" : "shapes";
    std::shared_ptr<Volume> v = OpenOn(cached ? cache : nullptr, name, size);
    ASSERT_TRUE(v);
    std::mt19937_64 rng(cached ? 21 : 12);
    Bytes model(size, 0);
    for (int i = 0; i < 40; ++i) {  // writes of up to 6 blocks, and trims that make holes
      const uint64_t off = rng() % size;
      const uint64_t len = std::min<uint64_t>(1 + rng() % (6 * kBs), size - off);
      if (i % 4 == 3) {
        ASSERT_OK(v->Trim(len, off, false));
        std::fill(model.begin() + off, model.begin() + off + len, 0);
      } else {
        Bytes b = Random(len, rng);
        ASSERT_OK(v->Write(b.data(), len, off, false));
        std::copy(b.begin(), b.end(), model.begin() + off);
      }
    }
    if (cached) {  // a cache that holds nothing yet: its reads wait for fetches mid-request
      ASSERT_OK(v->Flush());
      v.reset();
      ASSERT_OK(cache->Shutdown());
      cache = StartedCache(1 << 20);
      v = OpenOn(cache, name, size, /*create=*/false);
      ASSERT_TRUE(v);
    }
    for (int i = 0; i < 400; ++i) {
      const uint64_t off = i == 0 ? 0 : rng() % size;
      const uint64_t len = i == 0 ? size : std::min<uint64_t>(1 + rng() % (20 * kBs), size - off);
      Bytes back(len, 0xee);
      ASSERT_OK(v->Read(back.data(), len, off));
      ASSERT_TRUE(std::equal(back.begin(), back.end(), model.begin() + off))
          << "read of " << len << " bytes at " << off;
    }
  }
  ASSERT_OK(cache->Shutdown());
}

TEST_F(VolumeTest, ReadAheadSkipsHolesAndNeverReadsPastTheEnd) {
  auto counting = std::make_shared<CountingStore>(store_);
  CacheOptions co;
  co.cache_size = 64 << 20;
  auto cache = std::make_shared<CacheStore>(counting, co);
  ASSERT_OK(cache->Start());
  VolumeOptions o;
  o.size = 64 * 4096;
  o.block_size = 4096;
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(cache, "ra", o, &v));
  Bytes data(8 * 4096, 7);
  ASSERT_OK(v->Write(data.data(), data.size(), 0, false));  // blocks 0-7; 8-63 are holes
  ASSERT_OK(v->Flush());
  ASSERT_OK(cache->Shutdown());  // drop what the cache holds: reads must go below
  cache = std::make_shared<CacheStore>(counting, co);
  ASSERT_OK(cache->Start());
  v.reset();
  ASSERT_OK(Volume::Open(cache, "ra", o, &v));
  counting->reads_ = 0;
  Bytes buf(4096);
  for (uint64_t id = 0; id < 64; ++id) {  // a sequential reader over the whole export
    ASSERT_OK(v->Read(buf.data(), 4096, id * 4096));
    ASSERT_EQ(buf[0], id < 8 ? 7 : 0);
  }
  ASSERT_OK(cache->Shutdown());  // waits for read-ahead still in flight
  EXPECT_LE(counting->reads_.load(), 8u);  // only the stored blocks were ever fetched
  EXPECT_LT(counting->max_id_seen_.load(), 8u);
}

// An admin command that completes between Open's first look at the metadata and its claim of
// the lease (open_race.h): Open decides from what it reads under the lease.
TEST_F(VolumeTest, ImportBetweenLookAndClaimIsServedAsImported) {
  testing::TempDir tmp;
  testing::CheckImportBeforeClaim(store_, tmp.path());
}

TEST_F(VolumeTest, CreateBetweenLookAndClaimIsServedAsCreated) {
  testing::CheckCreateBeforeClaim(store_);
}

TEST_F(VolumeTest, DeleteBetweenLookAndClaimIsRefusedWithoutCreate) {
  testing::CheckDeleteBeforeClaimRefused(store_);
}

TEST_F(VolumeTest, DeleteBetweenLookAndClaimCreatesTheExportAnew) {
  testing::CheckDeleteBeforeClaimRecreates(store_);
}

TEST_F(VolumeTest, IncompleteOrOtherBlockSizeBetweenLookAndClaimIsRefused) {
  testing::TempDir tmp;
  testing::CheckIncompleteAndMismatchBeforeClaimRefused(store_, tmp.path());
}

}  // namespace
}  // namespace s3block
