// SequentialStreams: which reads are a sequential reader's, and how far ahead of it the cache
// reads. Everything here is the decision alone, without a cache or threads.
#include "cache/readahead.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace s3block {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint32_t kMiB = 1 << 20;
// Room for any window: only `window` bounds it.
constexpr SequentialStreams::Limits kRoomy{64, uint64_t{1} << 40, kBs + 128};

struct Result {
  bool same_use = false;
  bool ahead = false;  // the reader is sequential
  uint64_t first = 0, end = 0;
  uint32_t window = 0;
};

// A read as the cache makes it: when the decision is to read ahead, it queues the whole range.
Result Read(SequentialStreams& s, uint64_t id, uint32_t len = kBs, uint32_t block_size = kBs,
            const SequentialStreams::Limits& limits = kRoomy) {
  const SequentialStreams::Decision d = s.Note(id, len, block_size);
  Result r;
  r.same_use = d.same_use;
  r.ahead = d.sequential;
  if (d.sequential) {
    const SequentialStreams::Range range = s.Window(d.stream, limits);
    r.first = range.first;
    r.end = range.end;
    r.window = s.window(d.stream);
    s.Queued(d.stream, std::max(range.first, range.end));
  }
  return r;
}

TEST(SequentialStreamsTest, ReadAheadStartsAtTheSecondBlockOfARun) {
  SequentialStreams s;
  Result r = Read(s, 10);
  EXPECT_FALSE(r.ahead);
  EXPECT_FALSE(r.same_use);
  r = Read(s, 11);
  ASSERT_TRUE(r.ahead);
  EXPECT_EQ(r.first, 12u);
  EXPECT_EQ(r.end, 12u + SequentialStreams::kFirstWindow);
  EXPECT_FALSE(r.same_use);
}

TEST(SequentialStreamsTest, TheWindowDoublesUpToItsCapAndStaysThere) {
  SequentialStreams s;
  Read(s, 0);
  uint64_t queued_to = 1;
  std::vector<uint32_t> windows;
  for (uint64_t id = 1; id < 12; ++id) {
    const Result r = Read(s, id);
    ASSERT_TRUE(r.ahead) << id;
    // It goes on where the last read-ahead stopped, never fetching a block twice.
    EXPECT_EQ(r.first, std::max(queued_to, id + 1)) << id;
    EXPECT_EQ(r.end, id + 1 + r.window) << id;
    queued_to = std::max(r.first, r.end);
    windows.push_back(r.window);
  }
  EXPECT_EQ(windows, (std::vector<uint32_t>{4, 8, 16, 32, 64, 64, 64, 64, 64, 64, 64}));
}

TEST(SequentialStreamsTest, TheWindowIsAtMostAQuarterOfTheBudget) {
  SequentialStreams s;
  // 100 blocks fit: at most 25 are read ahead.
  const SequentialStreams::Limits limits{1000, 100 * uint64_t{kBs + 128}, kBs + 128};
  uint32_t last = 0;
  for (uint64_t id = 0; id < 10; ++id) last = Read(s, id, kBs, kBs, limits).window;
  EXPECT_EQ(last, 25u);
  // A budget of fewer than four blocks still reads one ahead.
  SequentialStreams tiny;
  const SequentialStreams::Limits small{1000, 2 * uint64_t{kBs + 128}, kBs + 128};
  Read(tiny, 0, kBs, kBs, small);
  const Result r = Read(tiny, 1, kBs, kBs, small);
  EXPECT_EQ(r.window, 1u);
  EXPECT_EQ(r.end, 3u);
}

TEST(SequentialStreamsTest, TwoInterleavedReadersAreTwoStreams) {
  SequentialStreams s;
  EXPECT_FALSE(Read(s, 0).ahead);
  EXPECT_FALSE(Read(s, 5000).ahead);
  Result a = Read(s, 1), b = Read(s, 5001);
  ASSERT_TRUE(a.ahead);
  ASSERT_TRUE(b.ahead);
  EXPECT_EQ(a.first, 2u);
  EXPECT_EQ(b.first, 5002u);
  EXPECT_EQ(a.window, 4u);
  EXPECT_EQ(b.window, 4u);
  a = Read(s, 2);
  b = Read(s, 5002);
  EXPECT_EQ(a.window, 8u);
  EXPECT_EQ(b.window, 8u);
  EXPECT_EQ(a.first, 6u);
  EXPECT_EQ(b.first, 5006u);
}

TEST(SequentialStreamsTest, MoreReadersThanStreamsForgetTheOldest) {
  SequentialStreams s;
  const uint64_t n = SequentialStreams::kStreams + 1;
  for (uint64_t r = 0; r < n; ++r) Read(s, r * 1000);
  // The first reader's stream was taken by the last: its next block starts again.
  EXPECT_FALSE(Read(s, 1).ahead);
  EXPECT_TRUE(Read(s, (n - 1) * 1000 + 1).ahead);
}

TEST(SequentialStreamsTest, RandomReadsNeverReadAhead) {
  SequentialStreams s;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const Result r = Read(s, rng() % 1000000000);
    ASSERT_FALSE(r.ahead) << i;
    ASSERT_FALSE(r.same_use) << i;
  }
}

TEST(SequentialStreamsTest, RandomSmallReadsInAFewLargeBlocksNeverReadAhead) {
  // They land in the same or the next block often, but never cover one before moving on.
  SequentialStreams s;
  std::mt19937 rng(3);
  for (int i = 0; i < 100; ++i) {
    const Result r = Read(s, rng() % 4, 4096, kMiB);
    ASSERT_FALSE(r.ahead) << i;
  }
}

TEST(SequentialStreamsTest, AReaderOfPartsOfLargeBlocksIsOneUsePerBlock) {
  SequentialStreams s;
  constexpr uint32_t kPart = 64 << 10;
  // The first part of block 0 starts a stream; the rest go on reading the same block.
  EXPECT_FALSE(Read(s, 0, kPart, kMiB).same_use);
  for (uint32_t at = kPart; at < kMiB; at += kPart) {
    const Result r = Read(s, 0, kPart, kMiB);
    EXPECT_TRUE(r.same_use) << at;
    EXPECT_FALSE(r.ahead) << at;
  }
  // Block 0 read whole, the next one continues the stream: sequential now.
  Result r = Read(s, 1, kPart, kMiB);
  ASSERT_TRUE(r.ahead);
  EXPECT_FALSE(r.same_use);
  EXPECT_EQ(r.first, 2u);
  EXPECT_EQ(r.end, 2u + SequentialStreams::kFirstWindow);
  r = Read(s, 1, kPart, kMiB);
  EXPECT_TRUE(r.same_use);
  EXPECT_FALSE(r.ahead);
  // Going back to the block before is a new use of it.
  EXPECT_FALSE(Read(s, 0, kPart, kMiB).same_use);
}

TEST(SequentialStreamsTest, SkippingThroughLargeBlocksIsNotSequential) {
  // One part of each block: the next block does not continue a block not read whole.
  SequentialStreams s;
  for (uint64_t id = 0; id < 50; ++id) {
    const Result r = Read(s, id, 4096, kMiB);
    ASSERT_FALSE(r.ahead) << id;
    ASSERT_FALSE(r.same_use) << id;
  }
}

TEST(SequentialStreamsTest, ASequentialReadersRequestsMayArriveOutOfOrder) {
  SequentialStreams s;
  Read(s, 0);
  Read(s, 1);  // sequential: read ahead to 6
  // A request a few blocks on continues the stream (within the slack)...
  Result r = Read(s, 4);
  EXPECT_TRUE(r.ahead);
  EXPECT_EQ(r.first, 6u);
  // ...and the late ones before it are neither new streams nor new read-ahead.
  r = Read(s, 2);
  EXPECT_FALSE(r.ahead);
  EXPECT_FALSE(r.same_use);
  r = Read(s, 4);  // a repeat of the last block: the same use
  EXPECT_TRUE(r.same_use);
  // Far beyond the slack: another stream.
  EXPECT_FALSE(Read(s, 100).ahead);
}

}  // namespace
}  // namespace s3block
