// BlockOverlay: the written sectors of a block kept apart from its rest, checked against a plain
// model of the block (an array of bytes and one flag per sector).
#include "cache/block_overlay.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace s3block {
namespace {

constexpr uint32_t kSector = BlockOverlay::kSector;
constexpr uint32_t kPage = BlockOverlay::kPage;

Bytes Pattern(uint32_t size, uint8_t seed) {
  Bytes b(size);
  for (uint32_t i = 0; i < size; ++i) b[i] = static_cast<uint8_t>(seed * 31 + i * 7 + (i >> 9));
  return b;
}

// What an overlay is expected to hold: the block's bytes as written over its base, and which
// sectors were written.
struct Model {
  Model(uint32_t block_size, const Bytes* base) : bytes(block_size, 0), written(block_size / kSector) {
    if (base != nullptr) bytes = *base;
  }
  void Apply(uint32_t offset, const Bytes& data) {
    std::copy(data.begin(), data.end(), bytes.begin() + offset);
    for (uint32_t s = offset / kSector; s < (offset + data.size()) / kSector; ++s) written[s] = true;
  }
  bool Covers(uint32_t offset, size_t len) const {
    if (offset % kSector != 0 || len % kSector != 0) return false;
    for (uint32_t s = offset / kSector; s < (offset + len) / kSector; ++s)
      if (!written[s]) return false;
    return true;
  }
  bool Full() const { return std::all_of(written.begin(), written.end(), [](bool w) { return w; }); }
  Bytes bytes;
  std::vector<bool> written;
};

// The bookkeeping an overlay of block_size with `pages` pages allocated is charged.
uint64_t ExpectedCost(uint32_t block_size, uint64_t pages) {
  const uint32_t page = std::min(kPage, block_size);
  return pages * page + uint64_t{block_size / page} * sizeof(std::unique_ptr<uint8_t[]>) +
         uint64_t{(block_size / kSector + 63) / 64} * sizeof(uint64_t);
}

TEST(BlockOverlayTest, AlignedMeansWholeSectors) {
  EXPECT_TRUE(BlockOverlay::Aligned(0, 0));
  EXPECT_TRUE(BlockOverlay::Aligned(0, 512));
  EXPECT_TRUE(BlockOverlay::Aligned(4096, 1024));
  EXPECT_FALSE(BlockOverlay::Aligned(1, 512));
  EXPECT_FALSE(BlockOverlay::Aligned(0, 511));
  EXPECT_FALSE(BlockOverlay::Aligned(512, 4095));
}

TEST(BlockOverlayTest, AnEmptyOverlayHoldsNothingAndCostsItsBookkeeping) {
  BlockOverlay o(8192, /*base_zero=*/false);
  EXPECT_FALSE(o.Full());
  EXPECT_FALSE(o.BaseKnown());
  EXPECT_FALSE(o.Covers(0, 512));
  EXPECT_TRUE(o.Covers(0, 0));
  EXPECT_EQ(o.Cost(), ExpectedCost(8192, 0));
  EXPECT_EQ(o.block_size(), 8192u);
}

TEST(BlockOverlayTest, CoversOnlyTheWrittenWholeSectors) {
  BlockOverlay o(8192, /*base_zero=*/true);
  o.Apply(1024, Pattern(1024, 1));
  EXPECT_TRUE(o.Covers(1024, 1024));
  EXPECT_TRUE(o.Covers(1536, 512));
  EXPECT_FALSE(o.Covers(512, 1024));   // a sector before
  EXPECT_FALSE(o.Covers(1024, 1536));  // a sector after
  EXPECT_FALSE(o.Covers(1025, 512));   // unaligned: never covered, even inside
  EXPECT_FALSE(o.Covers(1024, 100));
}

TEST(BlockOverlayTest, AWriteAcrossAPageEdgeAllocatesBothPages) {
  BlockOverlay o(16384, /*base_zero=*/true);
  EXPECT_EQ(BlockOverlay::NewCost(16384, kPage - kSector, 2 * kSector), ExpectedCost(16384, 2));
  EXPECT_EQ(o.CostAfter(kPage - kSector, 2 * kSector), ExpectedCost(16384, 2));
  o.Apply(kPage - kSector, Pattern(2 * kSector, 2));
  EXPECT_EQ(o.Cost(), ExpectedCost(16384, 2));
  // Inside pages it has: no more; one page further: one more.
  EXPECT_EQ(o.CostAfter(0, kPage), ExpectedCost(16384, 2));
  EXPECT_EQ(o.CostAfter(2 * kPage - kSector, 2 * kSector), ExpectedCost(16384, 3));
  EXPECT_TRUE(o.Covers(kPage - kSector, 2 * kSector));
}

TEST(BlockOverlayTest, WritingEverySectorMakesItFull) {
  BlockOverlay o(4096, /*base_zero=*/false);
  for (uint32_t s = 0; s < 8; ++s) {
    EXPECT_FALSE(o.Full());
    o.Apply(s * kSector, Pattern(kSector, static_cast<uint8_t>(s)));
  }
  EXPECT_TRUE(o.Full());
  // Written again, it stays full (sectors are counted once).
  o.Apply(0, Pattern(4096, 9));
  EXPECT_TRUE(o.Full());
  EXPECT_TRUE(o.Covers(0, 4096));
}

TEST(BlockOverlayTest, UnalignedCopiesMixTheWrittenSectorsWithTheBase) {
  const Bytes base = Pattern(8192, 7);
  BlockOverlay o(8192, /*base_zero=*/false);
  o.set_base(std::make_shared<const Bytes>(base));
  EXPECT_TRUE(o.BaseKnown());
  const Bytes part = Pattern(512, 3);
  o.Apply(4096, part);  // the first sector of the second page
  // From the middle of the sector before to the middle of the one after, across the page edge.
  Bytes out(1024);
  o.CopyOut(4096 - 256, out);
  for (uint32_t i = 0; i < 1024; ++i) {
    const uint32_t at = 4096 - 256 + i;
    const uint8_t want = at >= 4096 && at < 4608 ? part[at - 4096] : base[at];
    ASSERT_EQ(out[i], want) << "byte " << at;
  }
  // One byte, inside the written sector and just outside.
  uint8_t one = 0;
  o.CopyOut(4097, std::span<uint8_t>(&one, 1));
  EXPECT_EQ(one, part[1]);
  o.CopyOut(4608, std::span<uint8_t>(&one, 1));
  EXPECT_EQ(one, base[4608]);
  // Dropping the base: what is not written is no longer known, but the written part still is.
  o.set_base(nullptr);
  EXPECT_FALSE(o.BaseKnown());
  Bytes covered(512);
  o.CopyOut(4096, covered);
  EXPECT_EQ(covered, part);
}

TEST(BlockOverlayTest, ABlockNotStoredReadsAsZerosAroundItsParts) {
  BlockOverlay o(4096, /*base_zero=*/true);
  EXPECT_TRUE(o.BaseKnown());
  o.Apply(512, Pattern(512, 5));
  Bytes out(4096, 0xee);
  o.CopyOut(0, out);
  Model m(4096, nullptr);
  m.Apply(512, Pattern(512, 5));
  EXPECT_EQ(out, m.bytes);
}

TEST(BlockOverlayTest, AnEmptyCopyTouchesNothing) {
  BlockOverlay o(4096, /*base_zero=*/false);  // nothing known: only an empty copy is allowed
  o.CopyOut(100, {});
}

TEST(BlockOverlayTest, MergeIntoCopiesOnlyTheWrittenSectors) {
  BlockOverlay o(8192, /*base_zero=*/false);
  o.Apply(0, Pattern(512, 1));
  o.Apply(1024, Pattern(1536, 2));  // sectors 2..4
  o.Apply(8192 - 512, Pattern(512, 3));
  Bytes block = Pattern(8192, 9);
  Model m(8192, &block);
  m.Apply(0, Pattern(512, 1));
  m.Apply(1024, Pattern(1536, 2));
  m.Apply(8192 - 512, Pattern(512, 3));
  o.MergeInto(block.data());
  EXPECT_EQ(block, m.bytes);
}

// Random whole-sector writes and unaligned reads, at every block size the cache serves.
class BlockOverlaySizes : public testing::TestWithParam<uint32_t> {};

TEST_P(BlockOverlaySizes, AgreesWithAPlainModel) {
  const uint32_t bs = GetParam();
  const uint32_t sectors = bs / kSector;
  std::mt19937 rng(bs);
  for (int with_base = 0; with_base < 2; ++with_base) {
    const Bytes base = Pattern(bs, 11);
    BlockOverlay o(bs, /*base_zero=*/!with_base);
    if (with_base) o.set_base(std::make_shared<const Bytes>(base));
    Model m(bs, with_base ? &base : nullptr);
    std::vector<bool> page_used((bs + kPage - 1) / kPage);
    const uint32_t page = std::min(kPage, bs);
    for (int step = 0; step < 40 && !m.Full(); ++step) {
      const uint32_t first = rng() % sectors;
      const uint32_t count = 1 + rng() % std::min<uint32_t>(sectors - first, 20);
      const uint32_t offset = first * kSector, len = count * kSector;
      const Bytes data = Pattern(len, static_cast<uint8_t>(step));
      const uint64_t predicted = o.CostAfter(offset, len);
      o.Apply(offset, data);
      m.Apply(offset, data);
      for (uint32_t p = offset / page; p * uint64_t{page} < offset + len; ++p) page_used[p] = true;
      ASSERT_EQ(o.Cost(), predicted);
      ASSERT_EQ(o.Cost(), ExpectedCost(bs, std::count(page_used.begin(), page_used.end(), true)));
      ASSERT_EQ(o.Full(), m.Full());
      // Reads at any byte offset and length, within the block.
      for (int r = 0; r < 8; ++r) {
        const uint32_t at = rng() % bs;
        const uint32_t n = 1 + rng() % std::min<uint32_t>(bs - at, 3 * kSector);
        ASSERT_EQ(o.Covers(at, n), m.Covers(at, n)) << at << "+" << n;
        Bytes out(n, 0xee);
        o.CopyOut(at, out);
        ASSERT_TRUE(std::equal(out.begin(), out.end(), m.bytes.begin() + at)) << at << "+" << n;
      }
    }
    Bytes merged = with_base ? base : Bytes(bs, 0);
    o.MergeInto(merged.data());
    EXPECT_EQ(merged, m.bytes);
  }
}

TEST_P(BlockOverlaySizes, NewCostIsTheCostOfTheFirstWrite) {
  const uint32_t bs = GetParam();
  for (uint32_t offset : {0u, bs / 2, bs - kSector}) {
    for (uint32_t len : {kSector, std::min(bs - offset, 2 * kPage)}) {
      if (offset + len > bs) continue;
      BlockOverlay o(bs, /*base_zero=*/true);
      o.Apply(offset, Bytes(len, 1));
      EXPECT_EQ(BlockOverlay::NewCost(bs, offset, len), o.Cost()) << offset << "+" << len;
    }
  }
}

TEST_P(BlockOverlaySizes, WrittenWholeInOneGoItIsFull) {
  const uint32_t bs = GetParam();
  BlockOverlay o(bs, /*base_zero=*/false);
  const Bytes data = Pattern(bs, 4);
  o.Apply(0, data);
  EXPECT_TRUE(o.Full());
  EXPECT_TRUE(o.Covers(0, bs));
  EXPECT_EQ(o.Cost(), ExpectedCost(bs, (bs + kPage - 1) / kPage));
  Bytes out(bs);
  o.CopyOut(0, out);  // covered: no base needed
  EXPECT_EQ(out, data);
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, BlockOverlaySizes,
                         testing::Values(512u, 1024u, 4096u, 8192u, 65536u, 1u << 20));

}  // namespace
}  // namespace s3block
