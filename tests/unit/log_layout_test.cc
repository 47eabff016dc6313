// The log layout (src/log): the map, the segment format, recovery and the collector, on a real
// local directory, and on S3 when a server is configured (s3_test_env.h), under a prefix of its
// own that is emptied at the end.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "file/dir_transport.h"
#include "s3/s3_client.h"
#include "s3/s3_transport.h"
#include "s3_test_env.h"
#include "log/block_map.h"
#include "log/checkpoint.h"
#include "log/log_export.h"
#include "log/segment.h"
#include "log/snapshot.h"
#include "test_util.h"

namespace s3block::log {
namespace {

using ::s3block::testing::TempDir;

// ---------------------------------------------------------------- the map

TEST(BlockMap, KeepsWhatIsSetAndForgetsWhatIsErased) {
  BlockMap map;
  std::map<uint64_t, Loc> model;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const uint64_t id = rng() % 5000;
    if (rng() % 4 == 0) {
      Loc old;
      const bool had = map.Erase(id, &old);
      ASSERT_EQ(had, model.count(id) > 0);
      if (had) {
        ASSERT_EQ(old, model[id]);
      }
      model.erase(id);
    } else {
      const Loc loc{static_cast<uint32_t>(rng() % kMaxSlots), static_cast<uint32_t>(rng() % (1 << 22)) * 16,
                    static_cast<uint32_t>(rng() % (1 << 17)) * 16};
      Loc old;
      const bool had = map.Set(id, loc, &old);
      ASSERT_EQ(had, model.count(id) > 0);
      if (had) {
        ASSERT_EQ(old, model[id]);
      }
      model[id] = loc;
    }
  }
  EXPECT_EQ(map.size(), model.size());
  auto it = model.begin();
  map.ForEach([&](uint64_t id, const Loc& loc) {
    ASSERT_NE(it, model.end());
    EXPECT_EQ(id, it->first);
    EXPECT_EQ(loc, it->second);
    ++it;
  });
  EXPECT_EQ(it, model.end());
}

TEST(BlockMap, RandomBlocksCostEightBytesEachAndARunAlmostNothing) {
  // Random 4K writes over a large export: 8 bytes a block, plus each page's own few bytes.
  BlockMap random;
  std::mt19937_64 rng(1);
  const uint64_t blocks = 1 << 20;
  uint64_t stored = 0;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t id = rng() % (1ull << 24);
    if (!random.Set(id, Loc{static_cast<uint32_t>(i % 1000), 4112 * static_cast<uint32_t>(i % 2000), 4112}))
      ++stored;
  }
  // Pages of 256 with at most a few entries each: the page's own bytes dominate here; a dense
  // random export (the budget's worst case) is measured below.
  BlockMap dense;
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t id = (i * 2654435761u) % blocks;  // every block once, in a scattered order
    dense.Set(id, Loc{static_cast<uint32_t>(i % 1000), 4112 * static_cast<uint32_t>(i % 2000), 4112});
  }
  EXPECT_EQ(dense.size(), blocks);
  // 8 bytes a block, and each page's own (bitmap, header, pointer: at most 128 bytes).
  EXPECT_LE(dense.MemoryBytes(), blocks * 8 + blocks / 256 * 128 + (1 << 16))
      << dense.MemoryBytes() / double(blocks) << " bytes a block";
  // Sparse: the pages' own bytes, bounded by the export's size (a page per 256 blocks of it).
  EXPECT_LE(random.MemoryBytes(), stored * 8 + ((1ull << 24) / 256) * 128 + (1 << 20));
  // Written in order into segments of 2048 blocks: a page per 256 blocks, each a single entry.
  BlockMap run;
  for (uint64_t id = 0; id < blocks; ++id)
    run.Set(id, Loc{static_cast<uint32_t>(id / 2048), static_cast<uint32_t>(64 + 4112 * (id % 2048)), 4112});
  EXPECT_EQ(run.size(), blocks);
  EXPECT_LE(run.MemoryBytes(), blocks / 256 * 160 + (1 << 16)) << run.MemoryBytes();
  Loc loc;
  ASSERT_TRUE(run.Get(123457, &loc));
  EXPECT_EQ(loc, (Loc{123457 / 2048, static_cast<uint32_t>(64 + 4112 * (123457 % 2048)), 4112}));
  // Overwriting a run in place expands it and packs it again once the page is rewritten.
  for (uint64_t id = 0; id < 256; ++id)
    run.Set(id, Loc{9, static_cast<uint32_t>(64 + 4112 * id), 4112});
  EXPECT_LE(run.MemoryBytes(), blocks / 256 * 160 + (1 << 16)) << run.MemoryBytes();
}

TEST(BlockMap, ACopyKeepsItsContentWhileTheOriginalChanges) {
  BlockMap map;
  for (uint64_t id = 0; id < 1000; ++id) map.Set(id, Loc{1, static_cast<uint32_t>(id * 16), 16});
  BlockMap copy = map;
  for (uint64_t id = 0; id < 1000; id += 3) map.Set(id, Loc{2, 0, 32});
  for (uint64_t id = 1; id < 1000; id += 7) map.Erase(id);
  for (uint64_t id = 0; id < 1000; ++id) {
    Loc loc;
    ASSERT_TRUE(copy.Get(id, &loc)) << id;
    EXPECT_EQ(loc, (Loc{1, static_cast<uint32_t>(id * 16), 16}));
  }
  EXPECT_EQ(copy.size(), 1000u);
}

// ---------------------------------------------------------------- the segment format

std::vector<uint8_t> MakeSegment(uint64_t seq, const std::map<uint64_t, std::string>& blocks,
                                 SegmentHeader* header) {
  std::vector<uint8_t> frames;
  header->seq = seq;
  header->epoch = 3;
  const uint64_t data = SegmentDataOffset(blocks.size());
  for (auto& [id, text] : blocks) {
    SegmentEntry e;
    e.id = id;
    if (!text.empty()) {
      e.offset = static_cast<uint32_t>(data + frames.size());
      e.crc = AppendFrame(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()), &frames);
      e.length = static_cast<uint32_t>(data + frames.size() - e.offset);
    }
    header->entries.push_back(e);
  }
  std::vector<uint8_t> bytes(data);
  bytes.insert(bytes.end(), frames.begin(), frames.end());
  EncodeSegmentHead(header, &bytes);
  return bytes;
}

TEST(SegmentFormat, AHeadAndItsFramesReadBackAndCorruptionIsCaught) {
  SegmentHeader h;
  std::vector<uint8_t> bytes = MakeSegment(9, {{1, "one"}, {5, ""}, {7, std::string(5000, 'x')}}, &h);
  SegmentHeader back;
  uint64_t need = 0;
  ASSERT_OK(ParseSegmentHead(std::span<const uint8_t>(bytes).subspan(0, 10), "s", &back, &need));
  EXPECT_EQ(need, kSegmentHeaderBytes);
  ASSERT_OK(ParseSegmentHead(bytes, "s", &back, &need));
  EXPECT_EQ(need, 0u);
  EXPECT_EQ(back.seq, 9u);
  EXPECT_EQ(back.epoch, 3u);
  ASSERT_EQ(back.entries.size(), 3u);
  EXPECT_TRUE(back.entries[1].deleted());
  std::span<const uint8_t> payload;
  const SegmentEntry e = back.entries[2];  // a copy: back is parsed into again below
  ASSERT_OK(OpenFrame(std::span<const uint8_t>(bytes).subspan(e.offset, e.length), e.crc, "f", &payload));
  EXPECT_EQ(std::string(payload.begin(), payload.end()), std::string(5000, 'x'));

  // A flipped bit in the head, or in a frame, is refused, never served.
  for (size_t at : {size_t{20}, size_t{kSegmentHeaderBytes + 3}}) {
    std::vector<uint8_t> bad = bytes;
    bad[at] ^= 1;
    EXPECT_FALSE(ParseSegmentHead(bad, "s", &back, &need).ok()) << at;
  }
  std::vector<uint8_t> bad = bytes;
  bad[e.offset + 100] ^= 0x40;
  Status s = OpenFrame(std::span<const uint8_t>(bad).subspan(e.offset, e.length), e.crc, "frame", &payload);
  EXPECT_TRUE(s.IsIoError()) << s.ToString();
  EXPECT_NE(s.message().find("checksum"), std::string::npos);
}

TEST(CheckpointFormat, AMapOfSeveralPartsReadsBackWholeAndADamagedPartIsRefused) {
  // More blocks than a part may hold (2^20), at random places: several parts, the last partly
  // full.
  TempDir dir;
  std::unique_ptr<DirTransport> t;
  ASSERT_OK(DirTransport::Open(dir.path(), true, &t));
  BlockMap map;
  std::mt19937_64 rng(11);
  const uint64_t blocks = (1u << 20) + 70000;
  for (uint64_t id = 0; id < blocks; ++id) {
    const uint64_t at = id * 3 + rng() % 3;  // in this order whatever the compiler: same data
    const auto slot = static_cast<uint32_t>(rng() % 5000);
    map.Set(at, Loc{slot, static_cast<uint32_t>(rng() % (1 << 22)) * 16, 4112});
  }
  ASSERT_EQ(map.size(), blocks);
  CheckpointInfo info;
  info.seq = 42;
  info.epoch = 3;
  info.slots = {{7, 40, 1 << 20}};
  ASSERT_OK(WriteCheckpoint(*t, "e", info, map, nullptr));
  CheckpointInfo back;
  BlockMap loaded;
  ASSERT_OK(ReadCheckpoint(*t, "e", 42, &back, &loaded));
  EXPECT_EQ(back.epoch, 3u);
  ASSERT_EQ(back.slots.size(), 1u);
  EXPECT_EQ(back.slots[0].seq, 40u);
  ASSERT_EQ(loaded.size(), blocks);
  std::vector<std::pair<uint64_t, Loc>> want, got;
  map.ForEach([&](uint64_t id, const Loc& loc) { want.emplace_back(id, loc); });
  loaded.ForEach([&](uint64_t id, const Loc& loc) { got.emplace_back(id, loc); });
  EXPECT_TRUE(want == got);

  // A part cut short, or with one byte changed (in many places: most changes still decode, to
  // other entries, whose ids may be anything): each refused, and named, and nothing thrown.
  const std::string part = CheckpointPartKey("e", 42, 1);
  std::vector<uint8_t> good;
  ASSERT_OK(t->Get(part, &good));
  ASSERT_GT(good.size(), 1000u);
  std::vector<std::vector<uint8_t>> damaged{{good.begin(), good.end() - 1}, good};
  damaged.back()[good.size() / 2] ^= 0x10;
  for (size_t k = 1; k <= 16; ++k) {
    damaged.push_back(good);
    damaged.back()[good.size() * k / 17] ^= 0x10;
  }
  for (const std::vector<uint8_t>& bad : damaged) {
    ASSERT_OK(t->Delete(std::vector<std::string>{part}, nullptr));
    ASSERT_OK(t->Put(part, bad, PutOptions{}));
    BlockMap partial;
    Status s;
    EXPECT_NO_THROW(s = ReadCheckpoint(*t, "e", 42, &back, &partial));
    EXPECT_TRUE(s.IsIoError()) << s.ToString();
    EXPECT_NE(s.message().find("part 1"), std::string::npos) << s.ToString();
  }
}

// ---------------------------------------------------------------- an export

std::atomic<int> g_counter{0};

class LogExportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    options_.background = false;  // the tests drive checkpoints and the collector
    options_.segment_size = 1 << 20;
    if (GetParam() == "dir") {
      std::unique_ptr<DirTransport> t;
      ASSERT_OK(DirTransport::Open(dir_.path(), true, &t));
      transport_ = std::move(t);
      return;
    }
    ::s3block::testing::S3Env env;
    if (!::s3block::testing::LoadS3Env(&env)) {
      if (HasFailure()) return;
      GTEST_SKIP() << "no S3 server configured (S3BLOCK_TEST_S3_ENDPOINT unset)";
    }
    // Whole segments come back in one GET here (the layout itself reads ranges).
    client_ = ::s3block::testing::MakeTestS3Client(
        env, 16, [](S3ClientOptions* o) { o->http.max_response_bytes = 64 << 20; });
    transport_ = std::make_shared<S3Transport>(
        client_.get(), "logtest-" + std::to_string(::getpid()) + "-" + std::to_string(g_counter++) + "/");
  }
  void TearDown() override {
    if (!transport_ || GetParam() == "dir") return;
    std::vector<std::string> keys;
    (void)transport_->List("", [&](const std::string& k, std::string_view) { keys.push_back(k); });
    if (!keys.empty()) (void)transport_->Delete(keys);
  }

  std::unique_ptr<LogExport> Open() {
    std::unique_ptr<LogExport> e;
    Status s = LogExport::Open(transport_, "e", options_, nullptr, &e);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return e;
  }
  static Bytes Block(uint64_t id, uint32_t version) {
    Bytes b(4096);
    for (size_t i = 0; i < b.size(); i += 8) {
      const uint64_t v = id * 1000003 + version * 7 + i;
      std::memcpy(&b[i], &v, 8);
    }
    return b;
  }
  static void ExpectBlock(LogExport& e, uint64_t id, std::optional<uint32_t> version) {
    Bytes data;
    bool found = false;
    ASSERT_OK(e.Read(id, &data, &found));
    if (!version) {
      EXPECT_FALSE(found) << "block " << id;
      return;
    }
    ASSERT_TRUE(found) << "block " << id;
    EXPECT_TRUE(data == Block(id, *version)) << "block " << id << " is not version " << *version;
  }
  std::vector<uint64_t> Segments() {
    std::vector<uint64_t> seqs;
    (void)transport_->List(LogPrefix("e"), [&](const std::string& key, std::string_view) {
      uint64_t seq;
      if (ParseSeqKey(key, LogPrefix("e"), &seq)) seqs.push_back(seq);
    });
    return seqs;
  }
  void RemoveSegment(uint64_t seq) {
    const std::string key = SegmentKey("e", seq);
    ASSERT_OK(transport_->Delete(std::span<const std::string>(&key, 1)));
  }
  // Flips bits of one byte of a segment (at `at`, or from the end if negative).
  void CorruptSegment(uint64_t seq, int64_t at) {
    std::vector<uint8_t> bytes;
    ASSERT_OK(transport_->Get(SegmentKey("e", seq), &bytes));
    bytes[at >= 0 ? at : static_cast<int64_t>(bytes.size()) + at] ^= 0x41;
    ASSERT_OK(transport_->Put(SegmentKey("e", seq), bytes));
  }
  uint64_t StoredBytes() {
    uint64_t total = 0;
    std::vector<std::string> keys;
    EXPECT_OK(transport_->List("", [&](const std::string& k, std::string_view) { keys.push_back(k); }));
    for (const std::string& k : keys) {
      ObjectInfo info;
      if (transport_->Head(k, &info).ok()) total += info.size;
    }
    return total;
  }

  TempDir dir_;
  std::unique_ptr<S3Client> client_;
  std::shared_ptr<ObjectTransport> transport_;
  LogOptions options_;
};

INSTANTIATE_TEST_SUITE_P(Transports, LogExportTest, ::testing::Values("dir", "s3"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

TEST_P(LogExportTest, WhatAFlushCoveredIsThereAfterReopeningAndTrimsStayTrimmed) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 600; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
    const uint64_t gone[] = {3, 4, 5, 599};
    ASSERT_OK(e->Delete(gone, false));
    ASSERT_OK(e->Write(10, Block(10, 2), false));
    ASSERT_OK(e->Flush());
    // Written after the last flush and never flushed: may or may not be there, never torn.
    ASSERT_OK(e->Write(11, Block(11, 2), false));
  }
  auto e = Open();
  for (uint64_t id = 0; id < 600; ++id) {
    if (id == 11) continue;
    ExpectBlock(*e, id, (id >= 3 && id <= 5) || id == 599 ? std::nullopt
                        : std::optional<uint32_t>(id == 10 ? 2 : 1));
  }
  Bytes data;
  bool found;
  ASSERT_OK(e->Read(11, &data, &found));
  EXPECT_TRUE(!found || data == Block(11, 1));
  uint64_t listed = 0;
  e->ListBlocks([&](uint64_t) { ++listed; });
  EXPECT_EQ(listed, 596u);
}

TEST_P(LogExportTest, ARunOfBlocksIsWrittenAcrossSegmentsAndReadsBackAfterReopening) {
  // 600 blocks of 4 KiB do not fit one segment of 1 MiB: the run seals segments on its way.
  constexpr uint64_t kFirst = 100, kCount = 600;
  Bytes run;
  for (uint64_t id = kFirst; id < kFirst + kCount; ++id) {
    const Bytes b = Block(id, 3);
    run.insert(run.end(), b.begin(), b.end());
  }
  {
    auto e = Open();
    ASSERT_OK(e->Write(kFirst + 5, Block(kFirst + 5, 1), false));  // written over by the run
    ASSERT_OK(e->WriteRun(kFirst, run, 4096, false));
    ExpectBlock(*e, kFirst, 3);  // from memory, before any flush
    ASSERT_OK(e->Flush());
    EXPECT_GE(Segments().size(), 3u);
    EXPECT_FALSE(e->WriteRun(0, run, 0, false).ok());  // a block size of 0 is refused
  }
  auto e = Open();
  for (uint64_t id = kFirst; id < kFirst + kCount; ++id) ExpectBlock(*e, id, 3);
  ExpectBlock(*e, kFirst - 1, std::nullopt);
  ExpectBlock(*e, kFirst + kCount, std::nullopt);
  // With fua, the run is stored when the call returns: a reader opened now sees it.
  ASSERT_OK(e->WriteRun(kFirst, std::span<const uint8_t>(run).first(2 * 4096), 4096, true));
  std::unique_ptr<LogExport> reader;
  ASSERT_OK(LogExport::Open(transport_, "e", options_, nullptr, &reader));
  ExpectBlock(*reader, kFirst, 3);
}

TEST_P(LogExportTest, ADeleteWithFuaOfBlocksStoredNowhereReturns) {
  auto e = Open();
  const uint64_t nowhere[] = {7, 8};
  ASSERT_OK(e->Delete(nowhere, true));  // not even a writer yet: nothing to make durable
  ASSERT_OK(e->Write(1, Block(1, 1), false));
  const uint64_t one[] = {1};
  ASSERT_OK(e->Delete(one, false));
  // Block 1's deletion waits in memory: a FUA delete that adds nothing still makes it durable.
  ASSERT_OK(e->Delete(one, true));
  ASSERT_OK(e->Delete(nowhere, true));
  e.reset();
  auto again = Open();
  ExpectBlock(*again, 1, std::nullopt);
}

TEST_P(LogExportTest, OpeningLoadsTheCheckpointAndReplaysOnlyWhatFollowsIt) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 1000; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
    ASSERT_OK(e->Checkpoint());
    const LogStats s = e->Stats();
    EXPECT_EQ(s.checkpoint_seq, s.last_seq);
    for (uint64_t id = 0; id < 1000; id += 2) ASSERT_OK(e->Write(id, Block(id, 2), false));
    const uint64_t gone[] = {1};
    ASSERT_OK(e->Delete(gone, false));
    ASSERT_OK(e->Flush());
  }
  // Segments at or below the checkpoint are never read again: removing one the checkpoint does
  // not need... and replaying still gives every block.
  auto e = Open();
  for (uint64_t id = 0; id < 1000; ++id)
    ExpectBlock(*e, id, id == 1 ? std::nullopt : std::optional<uint32_t>(id % 2 ? 1 : 2));
  EXPECT_GT(e->Stats().checkpoint_seq, 0u);
}

TEST_P(LogExportTest, ASegmentAfterAGapOrWithACorruptHeadIsNotApplied) {
  uint64_t first_seq = 0;
  {
    auto e = Open();
    ASSERT_OK(e->Write(1, Block(1, 1), false));
    ASSERT_OK(e->Flush());
    first_seq = e->Stats().last_seq;
    ASSERT_OK(e->Write(2, Block(2, 1), false));
    ASSERT_OK(e->Flush());
    ASSERT_OK(e->Write(3, Block(3, 1), false));
    ASSERT_OK(e->Flush());
  }
  // The segment holding block 2 lost (as if its upload never landed while a later one did).
  RemoveSegment(first_seq + 1);
  {
    auto e = Open();
    ExpectBlock(*e, 1, 1);
    ExpectBlock(*e, 2, std::nullopt);
    ExpectBlock(*e, 3, std::nullopt);  // after the gap: never applied
    // A new writer removes what lay after the gap, so it never joins the run later.
    ASSERT_OK(e->Write(4, Block(4, 1), false));
    ASSERT_OK(e->Flush());
  }
  {
    auto e = Open();
    ExpectBlock(*e, 3, std::nullopt);
    ExpectBlock(*e, 4, 1);
  }
  // A corrupt head ends the run the same way.
  const uint64_t damaged = Segments().back();
  CorruptSegment(damaged, 30);
  auto e = Open();
  ExpectBlock(*e, 1, 1);
  ExpectBlock(*e, 4, std::nullopt);
  // What follows a damaged segment may be acknowledged data: nothing is written over it.
  Status s = e->Write(9, Block(9, 1), false);
  EXPECT_TRUE(s.IsIoError()) << s.ToString();
  EXPECT_NE(s.message().find("nothing is written"), std::string::npos) << s.ToString();
  EXPECT_EQ(Segments().back(), damaged);
}

TEST_P(LogExportTest, AnObjectAtTheNextKeyNamingAnotherSegmentEndsTheRun) {
  uint64_t old_seq = 0;
  {
    auto e = Open();
    ASSERT_OK(e->Write(1, Block(1, 1), false));
    ASSERT_OK(e->Flush());
    old_seq = e->Stats().last_seq;
    ASSERT_OK(e->Write(1, Block(1, 2), false));
    ASSERT_OK(e->Flush());
  }
  // A copy of the older segment put where the next one goes: sound, but it says it is another.
  const uint64_t next = Segments().back() + 1;
  std::vector<uint8_t> copy;
  ASSERT_OK(transport_->Get(SegmentKey("e", old_seq), &copy));
  ASSERT_OK(transport_->Put(SegmentKey("e", next), copy));
  {
    auto e = Open();
    ExpectBlock(*e, 1, 2);
    // The next writer removes it and takes its place.
    ASSERT_OK(e->Write(2, Block(2, 1), false));
    ASSERT_OK(e->Flush());
  }
  auto e = Open();
  ExpectBlock(*e, 1, 2);
  ExpectBlock(*e, 2, 1);
}

// A transport that passes every call to `next`; the faulty ones below override what they change.
class ForwardingTransport : public ObjectTransport {
 public:
  explicit ForwardingTransport(std::shared_ptr<ObjectTransport> next) : next_(std::move(next)) {}
  std::string Describe() const override { return next_->Describe(); }
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options,
             std::string* version) override {
    return next_->Put(key, data, options, version);
  }
  Status Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info) override {
    return next_->Get(key, data, info);
  }
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override {
    return next_->GetRange(key, offset, length, data);
  }
  Status Head(const std::string& key, ObjectInfo* info) override { return next_->Head(key, info); }
  Status List(const std::string& prefix,
              const std::function<void(const std::string&, std::string_view)>& fn) override {
    return next_->List(prefix, fn);
  }
  Status Delete(std::span<const std::string> keys, const WriteFence* fence) override {
    return next_->Delete(keys, fence);
  }

 protected:
  std::shared_ptr<ObjectTransport> next_;
};

// A transport that damages what comes back as a byte flipped on the way would: its first
// `listings` listings of checkpoints show every root's last digit turned into a letter, its
// first `heads` ranged reads of segments from their start have a byte of the header flipped, and
// its first `frames` ranged reads of segments' frames a byte in their middle.
class DamagingTransport : public ForwardingTransport {
 public:
  DamagingTransport(std::shared_ptr<ObjectTransport> next, int listings, int heads, int frames = 0)
      : ForwardingTransport(std::move(next)), listings_(listings), heads_(heads), frames_(frames) {}
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override {
    S3B_RETURN_IF_ERROR(next_->GetRange(key, offset, length, data));
    uint64_t seq;
    if (offset == 0 && data->size() > 30 && heads_ > 0 &&
        ParseSeqKey(key, LogPrefix("e"), &seq)) {
      --heads_;
      (*data)[30] ^= 0x5a;  // in the writer's epoch: the header's checksum fails
    } else if (offset > 0 && !data->empty() && frames_ > 0 && ParseSeqKey(key, LogPrefix("e"), &seq)) {
      --frames_;
      (*data)[data->size() / 2] ^= 0x5a;
    }
    return Status::Ok();
  }
  Status List(const std::string& prefix,
              const std::function<void(const std::string&, std::string_view)>& fn) override {
    const bool damage = prefix == CheckpointPrefix("e") && listings_ > 0 && listings_--;
    return next_->List(prefix, [&](const std::string& key, std::string_view version) {
      uint64_t seq;
      fn(damage && ParseSeqKey(key, prefix, &seq) ? key.substr(0, key.size() - 1) + "j" : key, version);
    });
  }

 private:
  int listings_, heads_, frames_;
};

// A transport whose next `lose` segment PUTs store the segment and answer as a request sent
// again after a lost reply would (the key is taken), and whose next `fail_reads` reads of a
// segment so refused fail, as a reset of the connection would make them.
class LosingTransport : public ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  void Arm(int lose, int fail_reads) {
    lose_ = lose;
    fail_reads_ = fail_reads;
  }
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options,
             std::string* version) override {
    Status s = next_->Put(key, data, options, version);
    uint64_t seq;
    if (s.ok() && lose_ > 0 && ParseSeqKey(key, LogPrefix("e"), &seq)) {
      --lose_;
      refused_ = key;
      return Status::AlreadyExists("the key is taken (the request's first attempt stored it)");
    }
    return s;
  }
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override {
    if (key == refused_ && fail_reads_ > 0) {
      --fail_reads_;
      return Status::IoError("connection reset reading " + key);
    }
    return next_->GetRange(key, offset, length, data);
  }

 private:
  int lose_ = 0, fail_reads_ = 0;
  std::string refused_;
};

// A segment stored by a request whose reply was lost is refused when the request is sent again;
// reading it back to see whose it is may fail too. That is a failure to try again, never another
// writer's segment: the export stays this server's, and what it flushed is there.
// A transport whose segment PUTs fail while `down` is set, as a full or unreachable store's do.
class DownTransport : public ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options,
             std::string* version) override {
    uint64_t seq;
    if (down && ParseSeqKey(key, LogPrefix("e"), &seq))
      return Status::IoError("injected: the store is full");
    return next_->Put(key, data, options, version);
  }
  std::atomic<bool> down{false};
};

TEST_P(LogExportTest, AWriterAtAFullWindowOfFailingUploadsGetsTheErrorAndNothingIsLost) {
  options_.upload_window = 1;
  auto down = std::make_shared<DownTransport>(transport_);
  std::unique_ptr<LogExport> e;
  ASSERT_OK(LogExport::Open(down, "e", options_, nullptr, &e));
  ASSERT_OK(e->Write(0, Block(0, 1), false));
  ASSERT_OK(e->Flush());
  down->down = true;
  // Segments of 1 MiB, one stored at a time: the third segment's first write has to wait for
  // the first, which fails; it gets the failure instead of waiting for as long as the store is
  // down.
  uint64_t acknowledged = 0;
  Status s;
  for (uint64_t id = 1; id < 1000 && s.ok(); ++id) {
    s = e->Write(id, Block(id, 1), false);
    if (s.ok()) acknowledged = id;
  }
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.ToString().find("the store is full"), std::string::npos) << s.ToString();
  EXPECT_GT(acknowledged, 200u);
  EXPECT_FALSE(e->Flush().ok());
  down->down = false;
  ASSERT_OK(e->Flush());  // stored again under the same seqs
  ASSERT_OK(e->Close());
  e.reset();
  auto again = Open();
  for (uint64_t id = 0; id <= acknowledged; ++id) ExpectBlock(*again, id, 1);
}

TEST_P(LogExportTest, ASegmentStoredWhoseReplyWasLostIsOursEvenIfReadingItBackFails) {
  auto lossy = std::make_shared<LosingTransport>(transport_);
  {
    std::unique_ptr<LogExport> e;
    ASSERT_OK(LogExport::Open(lossy, "e", options_, nullptr, &e));
    // The epoch mark of the first write: refused, then not read back.
    lossy->Arm(1, 1);
    Status s = e->Write(1, Block(1, 1), false);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.message().find("another writer"), std::string::npos) << s.ToString();
    ASSERT_OK(e->Write(1, Block(1, 1), false));
    ASSERT_OK(e->Flush());
    // A segment: refused, then not read back; the flush fails, and the next one finds it ours.
    lossy->Arm(1, 1);
    for (uint64_t id = 2; id < 40; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    s = e->Flush();
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.message().find("another writer"), std::string::npos) << s.ToString();
    ASSERT_OK(e->Flush());
    // Refused and read back at once: ours.
    lossy->Arm(1, 0);
    ASSERT_OK(e->Write(40, Block(40, 1), false));
    ASSERT_OK(e->Flush());
    ASSERT_OK(e->Write(41, Block(41, 1), false));
    ASSERT_OK(e->Flush());
  }
  auto e = Open();
  for (uint64_t id = 1; id < 42; ++id) ExpectBlock(*e, id, 1);
}

TEST_P(LogExportTest, AHeadDamagedOnTheWayIsReadAgainNotTakenForTorn) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 8; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
    for (uint64_t id = 4; id < 12; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
    ASSERT_OK(e->Flush());
  }
  {
    // Two reads of the first head damaged: the third is sound, and the run goes on.
    std::unique_ptr<LogExport> e;
    ASSERT_OK(LogExport::Open(std::make_shared<DamagingTransport>(transport_, 0, 2), "e", options_,
                              nullptr, &e));
    for (uint64_t id = 0; id < 12; ++id) ExpectBlock(*e, id, id < 4 ? 1 : 2);
    // A writer now deletes only what truly follows the run.
    ASSERT_OK(e->Write(20, Block(20, 1), false));
    ASSERT_OK(e->Flush());
  }
  auto e = Open();
  for (uint64_t id = 0; id < 12; ++id) ExpectBlock(*e, id, id < 4 ? 1 : 2);
  ExpectBlock(*e, 20, 1);
}

TEST_P(LogExportTest, AFrameDamagedOnTheWayIsReadAgainAndOneDamagedForGoodIsAnError) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 8; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
  }
  {
    std::unique_ptr<LogExport> e;
    ASSERT_OK(LogExport::Open(std::make_shared<DamagingTransport>(transport_, 0, 0, 3), "e",
                              options_, nullptr, &e));
    for (uint64_t id = 0; id < 8; ++id) ExpectBlock(*e, id, 1);
  }
  std::unique_ptr<LogExport> e;
  ASSERT_OK(LogExport::Open(std::make_shared<DamagingTransport>(transport_, 0, 0, 1000), "e",
                            options_, nullptr, &e));
  Bytes data;
  bool found = false;
  Status s = e->Read(3, &data, &found);
  EXPECT_TRUE(s.IsIoError()) << s.ToString();
  // Read as one run, the damage (a byte in the middle of the range) is in one frame: that block
  // alone fails, and its neighbours in the same range read back.
  std::vector<Bytes> bufs(8);
  std::vector<BlockRead> reads(8);
  for (uint64_t id = 0; id < 8; ++id) {
    reads[id].id = id;
    reads[id].data = &bufs[id];
  }
  e->ReadBatch(reads);
  int failed = 0;
  for (uint64_t id = 0; id < 8; ++id) {
    if (!reads[id].status.ok()) {
      ++failed;
      continue;
    }
    EXPECT_TRUE(reads[id].found && bufs[id] == Block(id, 1)) << "block " << id;
  }
  EXPECT_EQ(failed, 1);
}

TEST_P(LogExportTest, ADamagedListingOfCheckpointsIsListedAgainNeverOpenedFromAnOlderOne) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 8; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
    for (uint64_t id = 0; id < 8; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
    ASSERT_OK(e->Flush());
    GcResult gc;
    ASSERT_OK(e->CollectGarbage(true, &gc));  // the dead segments go, the checkpoint stays
    ASSERT_GT(gc.segments_freed, 0u);
  }
  const auto damaged_open = [&](int damaged, std::unique_ptr<LogExport>* out) {
    return LogExport::Open(std::make_shared<DamagingTransport>(transport_, damaged, 0), "e",
                           options_, nullptr, out);
  };
  {
    // Once: the listing is fetched again, and the export is what the checkpoint says.
    std::unique_ptr<LogExport> e;
    ASSERT_OK(damaged_open(1, &e));
    for (uint64_t id = 0; id < 8; ++id) ExpectBlock(*e, id, 2);
    ASSERT_OK(e->Write(9, Block(9, 1), false));
    ASSERT_OK(e->Flush());
  }
  {
    // Every time: an error, not an export opened from before the checkpoint.
    std::unique_ptr<LogExport> e;
    Status s = damaged_open(100, &e);
    EXPECT_TRUE(s.IsIoError()) << s.ToString();
  }
  auto e = Open();
  for (uint64_t id = 0; id < 8; ++id) ExpectBlock(*e, id, 2);
  ExpectBlock(*e, 9, 1);
}

TEST_P(LogExportTest, ACorruptFrameIsAnErrorNotData) {
  {
    auto e = Open();
    ASSERT_OK(e->Write(5, Block(5, 1), false));
    ASSERT_OK(e->Flush());
  }
  CorruptSegment(Segments().back(), -100);
  auto e = Open();
  Bytes data;
  bool found = false;
  Status s = e->Read(5, &data, &found);
  EXPECT_TRUE(s.IsIoError()) << s.ToString();
  uint64_t problems = 0;
  std::vector<std::string> lines;
  ASSERT_OK(e->Verify([&](const std::string& l) { lines.push_back(l); }, &problems));
  EXPECT_EQ(problems, 1u);
}

TEST_P(LogExportTest, AStaleWritersSegmentIsRefusedAndNeverServed) {
  auto old_writer = Open();
  ASSERT_OK(old_writer->Write(1, Block(1, 1), false));
  ASSERT_OK(old_writer->Flush());
  // A successor takes the export over (its lease expired, say) and writes.
  auto successor = Open();
  ASSERT_OK(successor->Write(2, Block(2, 1), false));
  ASSERT_OK(successor->Flush());
  // The old writer still thinks it owns the export: its next segment's key is taken.
  ASSERT_OK(old_writer->Write(1, Block(1, 9), false));
  Status s = old_writer->Flush();
  EXPECT_TRUE(s.IsBusy()) << s.ToString();
  EXPECT_TRUE(old_writer->Write(3, Block(3, 9), false).IsBusy());
  auto reader = Open();
  ExpectBlock(*reader, 1, 1);
  ExpectBlock(*reader, 2, 1);
  ExpectBlock(*reader, 3, std::nullopt);
}

TEST_P(LogExportTest, AReaderSeesTheExportAsOfOneFlush) {
  auto writer = Open();
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(writer->Write(id, Block(id, 1), false));
  ASSERT_OK(writer->Flush());
  auto reader = Open();
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(writer->Write(id, Block(id, 2), false));
  ASSERT_OK(writer->Flush());
  for (uint64_t id = 0; id < 300; ++id) ExpectBlock(*reader, id, 1);
  EXPECT_FALSE(reader->Stats().writer);
}

TEST_P(LogExportTest, AReaderWhoseSegmentsWereCollectedMovesToALaterFlush) {
  auto writer = Open();
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(writer->Write(id, Block(id, 1), false));
  ASSERT_OK(writer->Flush());
  auto reader = Open();
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(writer->Write(id, Block(id, 2), false));
  ASSERT_OK(writer->Flush());
  ASSERT_OK(writer->Checkpoint());  // the segments of version 1 are dead: deleted
  // Not an error, and never a mix: every block as of the later flush.
  for (uint64_t id = 0; id < 300; ++id) ExpectBlock(*reader, id, 2);
}

TEST_P(LogExportTest, TheCollectorFreesDeadSegmentsAndKeepsEveryBlock) {
  auto e = Open();
  const uint64_t blocks = 1024;  // 4 MiB: four segments of 1 MiB
  for (uint64_t id = 0; id < blocks; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  // Overwrite 3 blocks in 4, scattered: every old segment is a quarter live.
  for (uint64_t id = 0; id < blocks; ++id)
    if (id % 4) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  const uint64_t before = StoredBytes();
  GcResult r;
  ASSERT_OK(e->CollectGarbage(false, &r));
  EXPECT_GE(r.segments_freed, 4u);
  EXPECT_GT(r.bytes_copied, 0u);
  EXPECT_LT(StoredBytes(), before);
  const LogStats s = e->Stats();
  EXPECT_LE(s.segment_bytes, 2 * s.live_bytes);
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*e, id, id % 4 ? 2 : 1);
  e.reset();
  auto again = Open();
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*again, id, id % 4 ? 2 : 1);
}

TEST_P(LogExportTest, SmallSegmentsArePackedTogetherAndThenLeftAlone) {
  auto e = Open();
  // Ten flushes of a few blocks: ten small segments.
  for (uint64_t round = 0; round < 10; ++round) {
    for (uint64_t id = round * 3; id < round * 3 + 3; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
  }
  GcResult r;
  ASSERT_OK(e->CollectGarbage(false, &r));
  EXPECT_GE(r.segments_freed, 10u);
  EXPECT_EQ(r.bytes_copied, 30u * FrameBytes(4096));
  // What is left is one small segment: not worth rewriting, pass after pass.
  ASSERT_OK(e->CollectGarbage(false, &r));
  EXPECT_EQ(r.bytes_copied, 0u);
  for (uint64_t id = 0; id < 30; ++id) ExpectBlock(*e, id, 1);
}

TEST_P(LogExportTest, AClientWriteRacingTheCollectorKeepsTheClientsVersion) {
  auto e = Open();
  const uint64_t blocks = 512;
  std::vector<std::atomic<uint32_t>> version(blocks);
  for (uint64_t id = 0; id < blocks; ++id) {
    ASSERT_OK(e->Write(id, Block(id, 0), false));
    version[id] = 0;
  }
  ASSERT_OK(e->Flush());
  std::atomic<bool> done{false};
  std::thread collector([&] {
    while (!done) {
      GcResult r;
      Status s = e->CollectGarbage(true, &r);
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
  });
  std::mt19937_64 rng(3);
  for (int round = 1; round <= 40; ++round) {
    for (int i = 0; i < 100; ++i) {
      const uint64_t id = rng() % blocks;
      ASSERT_OK(e->Write(id, Block(id, round), false));
      version[id] = round;
    }
    if (round % 5 == 0) ASSERT_OK(e->Flush());
  }
  ASSERT_OK(e->Flush());
  done = true;
  collector.join();
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*e, id, version[id].load());
  e.reset();
  auto again = Open();
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*again, id, version[id].load());
}


// ---------------------------------------------------------------- snapshots

TEST(SnapshotRecordFormat, ReadsBackWhatItWritesAndRefusesTheRest) {
  SnapshotRecord r;
  r.name = "s";
  r.checkpoint = 64;
  r.seq = 70;
  r.size = 1 << 30;
  r.created = 1700000000;
  SnapshotRecord back;
  ASSERT_OK(ParseSnapshotRecord(EncodeSnapshotRecord(r), "here", &back));
  EXPECT_EQ(back.checkpoint, 64u);
  EXPECT_EQ(back.seq, 70u);
  EXPECT_EQ(back.size, 1u << 30);
  EXPECT_EQ(back.created, 1700000000);
  const std::string good = EncodeSnapshotRecord(r);
  for (const std::string& bad : std::vector<std::string>{std::string(), good.substr(0, good.size() - 1), good + "extra=1\n",
        "# nbd-s3-backend snapshot\nformat=2\ncheckpoint=0\nseq=1\nsize=1\ncreated=0\n",
        "# nbd-s3-backend snapshot\nformat=1\ncheckpoint=5\nseq=4\nsize=1\ncreated=0\n",
        "# nbd-s3-backend snapshot\nformat=1\ncheckpoint=0\nseq=1\ncreated=0\n",
        "# something else\nformat=1\ncheckpoint=0\nseq=1\nsize=1\ncreated=0\n"}) {
    SnapshotRecord out;
    EXPECT_FALSE(ParseSnapshotRecord(bad, "here", &out).ok()) << bad;
  }
  EXPECT_FALSE(ValidateSnapshotName("a@b").ok());
  EXPECT_FALSE(ValidateSnapshotName("a/b").ok());
  EXPECT_FALSE(ValidateSnapshotName("").ok());
  EXPECT_OK(ValidateSnapshotName("before-upgrade 2026"));
  std::string name, snap;
  ASSERT_TRUE(SplitSnapshotName("vm@disk@monday", &name, &snap));
  EXPECT_EQ(name, "vm@disk");
  EXPECT_EQ(snap, "monday");
  EXPECT_FALSE(SplitSnapshotName("vm", &name, &snap));
  EXPECT_FALSE(SplitSnapshotName("vm@", &name, &snap));
}

TEST(SnapshotRecordFormat, ASnapshotReadsWhatItReplaysAndWhatWasLiveAtItsSeq) {
  SnapshotRecord r;
  r.checkpoint = 10;
  r.seq = 20;
  EXPECT_TRUE(SnapshotReads(r, 15, 16));   // replayed, even though dead before the snapshot
  EXPECT_TRUE(SnapshotReads(r, 20, 21));
  EXPECT_TRUE(SnapshotReads(r, 5, 21));    // in the checkpoint, live at seq 20
  EXPECT_TRUE(SnapshotReads(r, 5, 0));     // still live
  EXPECT_FALSE(SnapshotReads(r, 5, 20));   // its last block died with segment 20
  EXPECT_FALSE(SnapshotReads(r, 5, 12));
  EXPECT_FALSE(SnapshotReads(r, 21, 0));   // written after
}

TEST_P(LogExportTest, ASnapshotHoldsWhatWasStoredWhenTakenThroughOverwritesAndCollection) {
  auto e = Open();
  const uint64_t blocks = 600;  // about 2.4 MiB: three segments of 1 MiB
  for (uint64_t id = 0; id < blocks; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());
  // After the checkpoint, so that the snapshot replays segments too.
  for (uint64_t id = 0; id < 50; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  const uint64_t gone[] = {60, 61};
  ASSERT_OK(e->Delete(gone, false));
  ASSERT_OK(e->Flush());
  // Written, not flushed: still in the open segment, not part of the snapshot.
  ASSERT_OK(e->Write(100, Block(100, 9), false));
  SnapshotRecord rec;
  ASSERT_OK(e->CreateSnapshot("one", uint64_t{blocks} * 4096, &rec));
  EXPECT_GT(rec.seq, rec.checkpoint);
  EXPECT_TRUE(e->CreateSnapshot("one", 1, &rec).kind() == Status::Kind::kAlreadyExists);
  EXPECT_FALSE(e->CreateSnapshot("a@b", 1, &rec).ok());
  auto expect_snapshot = [&](LogExport& view) {
    for (uint64_t id = 0; id < blocks; ++id)
      ExpectBlock(view, id, id == 60 || id == 61 ? std::nullopt
                                : std::optional<uint32_t>(id < 50 ? 2 : 1));
  };
  // Every block overwritten twice, trimmed blocks written, and all garbage collected.
  for (uint32_t v = 3; v <= 4; ++v) {
    for (uint64_t id = 0; id < blocks; ++id) ASSERT_OK(e->Write(id, Block(id, v), false));
    ASSERT_OK(e->Flush());
    GcResult r;
    ASSERT_OK(e->CollectGarbage(true, &r));
  }
  std::unique_ptr<LogExport> view;
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &view));
  expect_snapshot(*view);
  EXPECT_EQ(view->Write(1, Block(1, 5), false).err(), EROFS);
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*e, id, 4);
  const LogStats kept = e->Stats();
  EXPECT_GT(kept.kept_segments, 0u);
  EXPECT_EQ(kept.snapshots, 1u);
  // The list of what is kept is stored with the checkpoint: a writer opened again keeps it.
  e.reset();
  e = Open();
  ASSERT_EQ(e->Snapshots().size(), 1u);
  EXPECT_GT(e->Snapshots()[0].unique_bytes, 0u);
  for (uint64_t id = 0; id < blocks; ++id) ASSERT_OK(e->Write(id, Block(id, 6), false));
  ASSERT_OK(e->Flush());
  GcResult r;
  ASSERT_OK(e->CollectGarbage(true, &r));
  view.reset();
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &view));
  expect_snapshot(*view);
  // Deleted, the snapshot's segments go; the export's blocks stay.
  const uint64_t with = StoredBytes();
  ASSERT_OK(e->DeleteSnapshot("one"));
  EXPECT_TRUE(e->DeleteSnapshot("one").IsNotFound());
  EXPECT_EQ(e->Stats().kept_segments, 0u);
  EXPECT_LT(StoredBytes() * 2, with);
  EXPECT_LE(StoredBytes(), 2 * e->Stats().live_bytes);
  for (uint64_t id = 0; id < blocks; ++id) ExpectBlock(*e, id, 6);
  view.reset();
  EXPECT_FALSE(LogExport::OpenSnapshot(transport_, "e", rec, options_, &view).ok());
}

TEST_P(LogExportTest, ASnapshotOfAnExportNobodyWritesIsWhatOpeningItLoaded) {
  {
    auto e = Open();
    for (uint64_t id = 0; id < 20; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
  }
  SnapshotRecord rec, stored;
  {
    auto e = Open();  // not a writer
    ASSERT_OK(e->CreateSnapshot("idle", 20 * 4096, &rec));
  }
  // The admin command's case, with no server running: the same point, without the map.
  bool pending = true;
  ASSERT_OK(LogExport::CreateSnapshotOfStored(transport_, "e", "", "stored", 20 * 4096, nullptr,
                                              &stored, &pending));
  EXPECT_FALSE(pending);
  EXPECT_EQ(stored.seq, rec.seq);
  EXPECT_EQ(stored.checkpoint, rec.checkpoint);
  EXPECT_EQ(LogExport::CreateSnapshotOfStored(transport_, "e", "", "stored", 1, nullptr, &stored,
                                              &pending).kind(),
            Status::Kind::kAlreadyExists);
  auto e = Open();
  ASSERT_EQ(e->Snapshots().size(), 2u);
  EXPECT_EQ(e->Snapshots()[0].record.seq, rec.seq);
  for (uint64_t id = 0; id < 20; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());
  GcResult r;
  ASSERT_OK(e->CollectGarbage(true, &r));
  std::unique_ptr<LogExport> view;
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &view));
  for (uint64_t id = 0; id < 20; ++id) ExpectBlock(*view, id, 1);
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", stored, options_, &view));
  for (uint64_t id = 0; id < 20; ++id) ExpectBlock(*view, id, 1);
}

TEST_P(LogExportTest, ASnapshotMissingASegmentItNeedsIsDamagedNotShorter) {
  auto e = Open();
  for (uint64_t id = 0; id < 20; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  for (uint64_t id = 0; id < 20; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  SnapshotRecord rec;
  ASSERT_OK(e->CreateSnapshot("s", 20 * 4096, &rec));
  RemoveSegment(rec.seq);
  std::unique_ptr<LogExport> view;
  Status s = LogExport::OpenSnapshot(transport_, "e", rec, options_, &view);
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("is missing"), std::string::npos) << s.ToString();
}


TEST_P(LogExportTest, ACloneReadsItsBaseUntilItWritesAndItsTrimsHideTheBase) {
  auto e = Open();
  for (uint64_t id = 0; id < 100; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  SnapshotRecord rec;
  ASSERT_OK(e->CreateSnapshot("s", 100 * 4096, &rec));
  ASSERT_OK(e->AddClone("s", "c"));
  for (uint64_t id = 0; id < 100; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  auto open_clone = [&](bool with_base) {
    std::unique_ptr<LogExport> base, clone;
    if (with_base) EXPECT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &base));
    Status s = LogExport::Open(transport_, "c", options_, nullptr, &clone, std::move(base),
                               with_base ? "e@s" : "");
    EXPECT_TRUE(s.ok()) << s.ToString();
    return clone;
  };
  auto expect_clone = [&](LogExport& c) {
    for (uint64_t id = 0; id < 100; ++id)
      ExpectBlock(c, id, id < 10    ? std::optional<uint32_t>(3)
                         : id < 20 ? std::nullopt
                                   : std::optional<uint32_t>(1));
    uint64_t listed = 0;
    c.ListBlocks([&](uint64_t) { ++listed; });
    EXPECT_EQ(listed, 90u);
  };
  {
    auto c = open_clone(true);
    for (uint64_t id = 0; id < 100; ++id) ExpectBlock(*c, id, 1);
    for (uint64_t id = 0; id < 10; ++id) ASSERT_OK(c->Write(id, Block(id, 3), false));
    std::vector<uint64_t> trims;
    for (uint64_t id = 10; id < 20; ++id) trims.push_back(id);
    ASSERT_OK(c->Delete(trims, false));
    ASSERT_OK(c->Flush());
    expect_clone(*c);
    // A snapshot of the clone reads through the same base.
    SnapshotRecord crec;
    ASSERT_OK(c->CreateSnapshot("cs", 100 * 4096, &crec));
    EXPECT_EQ(crec.base, "e@s");
    ASSERT_OK(c->Checkpoint());
  }
  // The parent's blocks move and die; the snapshot keeps what the clone reads.
  GcResult r;
  ASSERT_OK(e->CollectGarbage(true, &r));
  auto c = open_clone(true);
  expect_clone(*c);
  for (uint64_t id = 0; id < 100; ++id) ExpectBlock(*e, id, 2);
  auto still_based = [](const std::string& clone, bool* based) {
    EXPECT_EQ(clone, "c");
    *based = true;
    return Status::Ok();
  };
  Status refused = e->DeleteSnapshot("s", still_based);
  EXPECT_EQ(refused.err(), EINVAL) << refused.ToString();
  EXPECT_NE(refused.message().find("clone 'c'"), std::string::npos) << refused.ToString();
  // Flattened, the clone reads nothing from the base, which may then go.
  ASSERT_OK(c->CopyBaseBlocks(nullptr));
  c.reset();
  c = open_clone(false);
  expect_clone(*c);
  const uint64_t before = StoredBytes();
  ASSERT_OK(e->DeleteSnapshot("s", [](const std::string&, bool* based) {
    *based = false;
    return Status::Ok();
  }));
  EXPECT_LT(StoredBytes(), before);
  expect_clone(*c);
  ObjectInfo marker;
  EXPECT_TRUE(transport_->Head(CloneKey("e", "c"), &marker).IsNotFound());  // stale: removed
}


// A clone rolled back to a snapshot of its own: its writes and trims since are undone, the
// ones before stay, and what it never wrote still reads from its base.
TEST_P(LogExportTest, ARolledBackCloneReadsAsItsSnapshotThroughItsBase) {
  auto e = Open();
  for (uint64_t id = 0; id < 50; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  SnapshotRecord rec;
  ASSERT_OK(e->CreateSnapshot("s", 50 * 4096, &rec));
  auto open_clone = [&] {
    std::unique_ptr<LogExport> base, clone;
    EXPECT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &base));
    EXPECT_OK(LogExport::Open(transport_, "c", options_, nullptr, &clone, std::move(base), "e@s"));
    return clone;
  };
  auto expect = [&](LogExport& c) {
    for (uint64_t id = 0; id < 50; ++id)
      ExpectBlock(c, id, id < 5 ? std::optional<uint32_t>(2)
                         : id < 10 ? std::nullopt
                                   : std::optional<uint32_t>(1));
  };
  {
    auto c = open_clone();
    for (uint64_t id = 0; id < 5; ++id) ASSERT_OK(c->Write(id, Block(id, 2), false));
    std::vector<uint64_t> trims = {5, 6, 7, 8, 9};
    ASSERT_OK(c->Delete(trims, false));
    ASSERT_OK(c->Flush());
    SnapshotRecord crec;
    ASSERT_OK(c->CreateSnapshot("cs", 50 * 4096, &crec));
    // After it: overwrites, trims of base blocks and of its own, all undone below.
    for (uint64_t id = 0; id < 50; id += 2) ASSERT_OK(c->Write(id, Block(id, 3), false));
    std::vector<uint64_t> more = {1, 3, 11, 13};
    ASSERT_OK(c->Delete(more, false));
    ASSERT_OK(c->Flush());
    ASSERT_OK(c->Checkpoint());
  }
  ASSERT_OK(LogExport::RollbackStored(transport_, "c", "cs", nullptr));
  {
    auto c = open_clone();
    expect(*c);
    GcResult r;
    ASSERT_OK(c->CollectGarbage(false, &r));  // made permanent
  }
  auto c = open_clone();
  expect(*c);
}

// A crashed writer's segment past a gap is joined to the run by a rollback mark placed in the
// gap: being of an older writer, it is never applied, and the next writer writes past it.
TEST_P(LogExportTest, ARollbackMarkInAGapDoesNotApplyTheSegmentsAfterIt) {
  uint64_t gap = 0;
  {
    auto e = Open();
    for (uint64_t id = 0; id < 10; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
    ASSERT_OK(e->Flush());
    SnapshotRecord rec;
    ASSERT_OK(e->CreateSnapshot("s", 10 * 4096, &rec));
    ASSERT_OK(e->Write(1, Block(1, 2), false));
    ASSERT_OK(e->Flush());
    gap = e->Stats().last_seq;
    ASSERT_OK(e->Write(2, Block(2, 2), false));
    ASSERT_OK(e->Flush());
  }
  RemoveSegment(gap);
  ASSERT_OK(LogExport::RollbackStored(transport_, "e", "s", nullptr));
  {
    auto e = Open();
    for (uint64_t id = 0; id < 10; ++id) ExpectBlock(*e, id, 1);
    ASSERT_OK(e->Write(3, Block(3, 3), false));
    ASSERT_OK(e->Flush());
  }
  auto e = Open();
  for (uint64_t id = 0; id < 10; ++id) ExpectBlock(*e, id, id == 3 ? 3 : 1);
}

// A damaged head ends the run: verify says so, and repair sets that segment and the later ones
// aside (kept, read by nothing), after which the export is written again from the one before.
TEST_P(LogExportTest, RepairSetsADamagedSegmentAndTheLaterOnesAsideAndTheExportIsWrittenAgain) {
  uint64_t damaged = 0;
  {
    auto e = Open();
    ASSERT_OK(e->Write(1, Block(1, 1), false));
    ASSERT_OK(e->Flush());
    ASSERT_OK(e->Write(2, Block(2, 1), false));
    ASSERT_OK(e->Flush());
    damaged = e->Stats().last_seq;
    ASSERT_OK(e->Write(3, Block(3, 1), false));
    ASSERT_OK(e->Flush());
  }
  CorruptSegment(damaged, 30);
  {
    auto e = Open();
    std::vector<std::string> lines;
    uint64_t problems = 0;
    ASSERT_OK(e->Verify([&](const std::string& l) { lines.push_back(l); }, &problems));
    ASSERT_EQ(problems, 1u);
    EXPECT_NE(lines[0].find("repair"), std::string::npos) << lines[0];
    EXPECT_FALSE(e->Write(9, Block(9, 1), false).ok());
  }
  {
    auto e = Open();
    uint64_t first = 0, moved = 0, bytes = 0;
    ASSERT_OK(e->SetAsideDamaged(&first, &moved, &bytes));
    EXPECT_EQ(first, damaged);
    EXPECT_EQ(moved, 2u);  // it and the one holding block 3
    EXPECT_GT(bytes, 0u);
    ASSERT_OK(e->SetAsideDamaged(&first, &moved, &bytes));
    EXPECT_EQ(first, 0u);  // sound now: nothing more
    ExpectBlock(*e, 1, 1);
    ExpectBlock(*e, 2, std::nullopt);
    ASSERT_OK(e->Write(4, Block(4, 1), false));
    ASSERT_OK(e->Flush());
  }
  auto e = Open();
  ExpectBlock(*e, 1, 1);
  ExpectBlock(*e, 3, std::nullopt);
  ExpectBlock(*e, 4, 1);
  uint64_t problems = 0;
  ASSERT_OK(e->Verify([](const std::string&) {}, &problems));
  EXPECT_EQ(problems, 0u);
  std::vector<std::string> aside;
  ASSERT_OK(transport_->List(SetAsidePrefix("e"), [&](const std::string& k, std::string_view) {
    aside.push_back(k);
  }));
  EXPECT_EQ(aside.size(), 2u);
  e.reset();
  ASSERT_OK(LogExport::DeleteAll(*transport_, "e", nullptr));
  aside.clear();
  ASSERT_OK(
      transport_->List("", [&](const std::string& k, std::string_view) { aside.push_back(k); }));
  EXPECT_TRUE(aside.empty()) << aside.size() << " objects left, the first " << aside[0];
}

// Deleting older checkpoints never touches a newer one's objects, which a checkpoint being
// written at the same time would have stored before its root.
TEST_P(LogExportTest, CheckpointsNewerThanTheOneJustStoredAreNotDeletedWithTheOlderOnes) {
  auto e = Open();
  ASSERT_OK(e->Write(1, Block(1, 1), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());
  const uint64_t first = e->Stats().checkpoint_seq;
  // A part of checkpoint first + 100, as if being written.
  const std::string part = CheckpointPartKey("e", first + 100, 0);
  const std::vector<uint8_t> bytes(16, 7);
  ASSERT_OK(transport_->Put(part, bytes));
  ASSERT_OK(e->Write(2, Block(2, 1), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());  // deletes checkpoint `first`
  std::vector<std::string> keys;
  ASSERT_OK(transport_->List(CheckpointPrefix("e"), [&](const std::string& k, std::string_view) {
    keys.push_back(k);
  }));
  EXPECT_NE(std::find(keys.begin(), keys.end(), part), keys.end());
  EXPECT_EQ(std::find(keys.begin(), keys.end(), CheckpointKey("e", first)), keys.end());
  ASSERT_OK(transport_->Delete(std::span<const std::string>(&part, 1)));
}

// Counts the requests made through it.
class CountingTransport : public ObjectTransport {
 public:
  explicit CountingTransport(std::shared_ptr<ObjectTransport> next) : next_(std::move(next)) {}
  std::string Describe() const override { return next_->Describe(); }
  Status Put(const std::string& key, std::span<const uint8_t> data, const PutOptions& options,
             std::string* version) override {
    ++requests;
    return next_->Put(key, data, options, version);
  }
  Status Get(const std::string& key, std::vector<uint8_t>* data, ObjectInfo* info) override {
    ++requests;
    return next_->Get(key, data, info);
  }
  Status GetRange(const std::string& key, uint64_t offset, uint64_t length,
                  std::vector<uint8_t>* data) override {
    ++requests;
    return next_->GetRange(key, offset, length, data);
  }
  Status Head(const std::string& key, ObjectInfo* info) override {
    ++requests;
    return next_->Head(key, info);
  }
  Status List(const std::string& prefix,
              const std::function<void(const std::string&, std::string_view)>& fn) override {
    ++requests;
    return next_->List(prefix, fn);
  }
  Status Delete(std::span<const std::string> keys, const WriteFence* fence) override {
    ++requests;
    return next_->Delete(keys, fence);
  }
  std::atomic<int> requests{0};

 private:
  std::shared_ptr<ObjectTransport> next_;
};

TEST_P(LogExportTest, ARollbackMakesTheExportTheSnapshotAgainAndFreesWhatCameAfter) {
  auto e = Open();
  for (uint64_t id = 0; id < 300; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());
  const uint64_t gone[] = {7};
  ASSERT_OK(e->Delete(gone, false));
  ASSERT_OK(e->Flush());
  SnapshotRecord rec;
  ASSERT_OK(e->CreateSnapshot("s", 300 * 4096, &rec));
  auto expect_snapshot = [&](LogExport& x) {
    for (uint64_t id = 0; id < 400; ++id)
      ExpectBlock(x, id, id == 7 || id >= 300 ? std::nullopt : std::optional<uint32_t>(1));
  };
  // After it: overwrites, the trimmed block written again, new blocks, trims; collected.
  for (uint32_t v = 2; v <= 3; ++v) {
    for (uint64_t id = 0; id < 400; ++id) ASSERT_OK(e->Write(id, Block(id, v), false));
    ASSERT_OK(e->Flush());
  }
  const uint64_t trims[] = {0, 1, 2};
  ASSERT_OK(e->Delete(trims, false));
  ASSERT_OK(e->Flush());
  GcResult r;
  ASSERT_OK(e->CollectGarbage(true, &r));
  e.reset();
  const uint64_t before = StoredBytes();
  ASSERT_OK(LogExport::RollbackStored(transport_, "e", "s", nullptr));
  EXPECT_TRUE(LogExport::RollbackStored(transport_, "e", "nosuch", nullptr).IsNotFound());
  e = Open();
  expect_snapshot(*e);
  // Made permanent by the writer's next checkpoint, which frees what came after: 400 blocks of
  // version 3.
  ASSERT_OK(e->CollectGarbage(false, &r));
  EXPECT_LT(StoredBytes() + 400 * FrameBytes(4096), before + (64u << 10));
  e.reset();
  e = Open();
  expect_snapshot(*e);
  // Still a snapshot, and the export goes on from there.
  std::unique_ptr<LogExport> view;
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", rec, options_, &view));
  expect_snapshot(*view);
  for (uint64_t id = 0; id < 10; ++id) ASSERT_OK(e->Write(id, Block(id, 4), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->CollectGarbage(true, &r));
  e.reset();
  e = Open();
  for (uint64_t id = 0; id < 10; ++id) ExpectBlock(*e, id, 4);
  for (uint64_t id = 10; id < 300; ++id) ExpectBlock(*e, id, 1);
  ExpectBlock(*view, 3, 1);
}

// A rollback is one mark: opening applies it until a checkpoint makes it permanent. Meanwhile
// the snapshot it goes back to (and what only it keeps) stays as long as the mark needs it,
// whatever is done with the snapshots.
TEST_P(LogExportTest, ARollbackNotYetCheckpointedSurvivesSnapshotsTakenAndDeleted) {
  auto e = Open();
  for (uint64_t id = 0; id < 100; ++id) ASSERT_OK(e->Write(id, Block(id, 1), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->Checkpoint());  // which only the snapshot keeps, later
  SnapshotRecord one, two;
  ASSERT_OK(e->CreateSnapshot("one", 100 * 4096, &one));
  for (uint64_t id = 0; id < 100; ++id) ASSERT_OK(e->Write(id, Block(id, 2), false));
  ASSERT_OK(e->Flush());
  ASSERT_OK(e->CreateSnapshot("two", 100 * 4096, &two));
  for (uint64_t id = 0; id < 100; ++id) ASSERT_OK(e->Write(id, Block(id, 3), false));
  ASSERT_OK(e->Flush());
  GcResult r;
  ASSERT_OK(e->CollectGarbage(true, &r));  // a checkpoint after both snapshots
  e.reset();
  auto expect = [&](LogExport& x, uint32_t v) {
    for (uint64_t id = 0; id < 100; ++id) ExpectBlock(x, id, v);
  };
  // Two rollbacks in a row, neither checkpointed: the last one counts.
  ASSERT_OK(LogExport::RollbackStored(transport_, "e", "two", nullptr));
  ASSERT_OK(LogExport::RollbackStored(transport_, "e", "one", nullptr));
  {
    std::unique_ptr<LogExport> light;
    ASSERT_OK(LogExport::OpenForSnapshots(transport_, "e", nullptr, &light));
    bool pending = false;
    ASSERT_OK(light->RollbackPending(&pending));
    EXPECT_TRUE(pending);
    SnapshotRecord ignored;
    ASSERT_OK(LogExport::CreateSnapshotOfStored(transport_, "e", "", "x", 1, nullptr, &ignored,
                                                &pending));
    EXPECT_TRUE(pending);  // and nothing written
  }
  {
    // Opened by a reader only (no checkpoint), then both snapshots deleted by it: each
    // deletion first makes the rollback permanent.
    auto x = Open();
    expect(*x, 1);
    ASSERT_OK(x->DeleteSnapshot("one"));
    ASSERT_OK(x->DeleteSnapshot("two"));
    EXPECT_TRUE(x->Snapshots().empty());
    expect(*x, 1);
  }
  e = Open();
  expect(*e, 1);
  std::unique_ptr<LogExport> light;
  ASSERT_OK(LogExport::OpenForSnapshots(transport_, "e", nullptr, &light));
  bool pending = true;
  ASSERT_OK(light->RollbackPending(&pending));
  EXPECT_FALSE(pending);
  // A snapshot taken after it reads what the rollback made, with no mark to replay.
  SnapshotRecord three;
  ASSERT_OK(e->CreateSnapshot("three", 100 * 4096, &three));
  EXPECT_GE(three.checkpoint, two.seq + 1);
  std::unique_ptr<LogExport> view;
  ASSERT_OK(LogExport::OpenSnapshot(transport_, "e", three, options_, &view));
  expect(*view, 1);
}

// Whatever the export's size, a rollback, and a snapshot and its deletion without a server,
// cost the same few requests: none of them reads or writes the map.
TEST_P(LogExportTest, RollbackAndSnapshotsOfAStoredExportCostRequestsIndependentOfItsSize) {
  auto counting = std::make_shared<CountingTransport>(transport_);
  std::vector<int> costs;
  for (uint64_t blocks : {64u, 8192u}) {
    const std::string name = "n" + std::to_string(blocks);
    {
      std::unique_ptr<LogExport> e;
      ASSERT_OK(LogExport::Open(transport_, name, options_, nullptr, &e));
      // At random, so that the map is as large as it gets.
      for (uint64_t i = 0; i < blocks; ++i)
        ASSERT_OK(e->Write((i * 7919) % (blocks * 4), Block(i, 1), false));
      ASSERT_OK(e->Flush());
      ASSERT_OK(e->Checkpoint());
      SnapshotRecord rec;
      ASSERT_OK(e->CreateSnapshot("s", 1, &rec));
      ASSERT_OK(e->Close());
    }
    counting->requests = 0;
    SnapshotRecord rec;
    bool pending = false;
    ASSERT_OK(
        LogExport::CreateSnapshotOfStored(counting, name, "", "t", 1, nullptr, &rec, &pending));
    const int snapshot = counting->requests.exchange(0);
    {
      std::unique_ptr<LogExport> light;
      ASSERT_OK(LogExport::OpenForSnapshots(counting, name, nullptr, &light));
      ASSERT_OK(light->DeleteSnapshot("t"));
    }
    const int deletion = counting->requests.exchange(0);
    ASSERT_OK(LogExport::RollbackStored(counting, name, "s", nullptr));
    const int rollback = counting->requests.exchange(0);
    costs.insert(costs.end(), {snapshot, deletion, rollback});
    EXPECT_LE(rollback, 6) << blocks << " blocks";
  }
  EXPECT_EQ(costs[0], costs[3]) << "snapshot";
  EXPECT_EQ(costs[1], costs[4]) << "deletion";
  EXPECT_EQ(costs[2], costs[5]) << "rollback";
}

}  // namespace
}  // namespace s3block::log
