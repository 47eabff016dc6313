// The plugin through a real nbdkit and real libnbd clients, on every backend and parameter set.
//
// Each test checks real data byte for byte against a model of what was written. Nothing here
// measures time: a test that is slow is slow, never failed for it.
#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "lib/control_channel.h"
#include "nbdkit_fixture.h"

namespace s3block::testing {
namespace {

constexpr uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

// What the export should hold: every write and zeroing applied in order.
class Model {
 public:
  explicit Model(uint64_t size) : bytes_(size, 0) {}
  void Write(uint64_t offset, const std::vector<uint8_t>& data) {
    std::copy(data.begin(), data.end(), bytes_.begin() + offset);
  }
  void Zero(uint64_t offset, uint64_t count) {
    std::fill(bytes_.begin() + offset, bytes_.begin() + offset + count, 0);
  }
  std::vector<uint8_t> Range(uint64_t offset, uint64_t count) const {
    return std::vector<uint8_t>(bytes_.begin() + offset, bytes_.begin() + offset + count);
  }
  uint64_t size() const { return bytes_.size(); }

 private:
  std::vector<uint8_t> bytes_;
};

// One run of base:allocation: [offset, offset + length) is a hole or data.
struct ExtentRun {
  uint64_t offset, length;
  bool hole;
};

class PluginTest : public NbdkitTest {
 protected:
  // Writes `data` at `offset`, failing the test on an error, and records it in the model.
  void WriteAt(NbdClient& c, Model* m, uint64_t offset, const std::vector<uint8_t>& data,
               bool fua = false) {
    ASSERT_TRUE(c.Pwrite(data.data(), data.size(), offset, fua))
        << "write of " << data.size() << " bytes at " << offset << ": " << c.error();
    if (m) m->Write(offset, data);
  }

  void ExpectModel(NbdClient& c, const Model& m) {
    for (uint64_t off = 0; off < m.size(); off += MiB) {
      uint64_t n = std::min<uint64_t>(MiB, m.size() - off);
      EXPECT_TRUE(SameBytes(ReadBack(c, off, n), m.Range(off, n), off));
    }
  }

  // The block status of [offset, offset + count), asking again where the server stopped short.
  std::vector<ExtentRun> Map(NbdClient& c, uint64_t offset, uint64_t count) {
    std::vector<ExtentRun> runs;
    const uint64_t end = offset + count;
    uint64_t pos = offset;
    while (pos < end) {
      std::vector<NbdClient::Extent> ext;
      uint64_t n = std::min<uint64_t>(end - pos, 1 * GiB);
      if (!c.BlockStatus(n, pos, &ext)) {
        ADD_FAILURE() << "block status at " << pos << ": " << c.error();
        return runs;
      }
      if (ext.empty()) {
        ADD_FAILURE() << "block status at " << pos << " returned nothing";
        return runs;
      }
      for (const auto& e : ext) {
        if (e.offset >= end) break;
        uint64_t len = std::min<uint64_t>(e.length, end - e.offset);
        bool hole = (e.flags & LIBNBD_STATE_HOLE) != 0;
        if (!runs.empty() && runs.back().hole == hole &&
            runs.back().offset + runs.back().length == e.offset)
          runs.back().length += len;
        else
          runs.push_back({e.offset, len, hole});
        pos = e.offset + len;
      }
    }
    return runs;
  }

  // Checks that every byte of [offset, offset + count) is reported as a hole (want_hole) or as
  // data (!want_hole).
  ::testing::AssertionResult Reported(NbdClient& c, uint64_t offset, uint64_t count,
                                      bool want_hole) {
    std::vector<ExtentRun> runs = Map(c, offset, count);
    uint64_t covered = 0;
    for (const auto& r : runs) {
      if (r.hole != want_hole)
        return ::testing::AssertionFailure()
               << "[" << r.offset << ", " << r.offset + r.length << ") is reported as "
               << (r.hole ? "a hole" : "data") << "; expected all of [" << offset << ", "
               << offset + count << ") to be " << (want_hole ? "holes" : "data");
      covered += r.length;
    }
    if (covered != count)
      return ::testing::AssertionFailure() << "block status covered " << covered << " of "
                                           << count << " bytes at " << offset;
    return ::testing::AssertionSuccess();
  }

  // The block ids the leaf store holds for an export (what a flush has left there).
  std::set<uint64_t> StoredBlocks(const std::string& export_name) {
    std::set<uint64_t> ids;
    auto store = LeafStore();
    if (!store) return ids;
    Status s = store->ListBlocks(export_name, [&](uint64_t id) { ids.insert(id); });
    EXPECT_TRUE(s.ok()) << s.ToString();
    return ids;
  }

  // Writes pieces at unaligned offsets across block boundaries of a `bs` export and reads them
  // back: whole, in unaligned sub-ranges, and after a restart.
  void UnalignedPatterns(uint32_t bs) {
    const uint64_t size = std::max<uint64_t>(4 * MiB, 40ull * bs);
    ASSERT_TRUE(StartServer({"size=" + std::to_string(size), "block-size=" + std::to_string(bs)}));
    auto c = Connect();
    ASSERT_TRUE(c);
    ASSERT_EQ(c->Size(), static_cast<int64_t>(size));
    Model m(size);
    struct Piece {
      uint64_t offset, count;
    };
    const std::vector<Piece> pieces = {
        {1, 1},                      // one byte inside the first block
        {bs - 3, 7},                 // across the first boundary
        {2ull * bs, bs},             // exactly one block
        {3ull * bs + 17, 3ull * bs + 101},  // many blocks, both ends partial
        {7ull * bs - 1, 2},          // the last byte of one block and the first of the next
        {9ull * bs + bs / 2, bs},    // one block's worth, straddling
        {12ull * bs, 5ull * bs},     // aligned run
        {13ull * bs + 5, 11},        // overwrite inside the aligned run
        {3ull * bs + 50, 2ull * bs}, // overwrite part of an earlier piece
        {20ull * bs + 1, 10ull * bs - 2},  // long unaligned run
        {size - 5, 5},               // the very end of the export
        {size - bs - 3, 4},          // across the last boundary
    };
    uint64_t seed = 1;
    for (const auto& p : pieces) {
      SCOPED_TRACE("piece at " + std::to_string(p.offset) + " length " + std::to_string(p.count));
      ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, p.offset, Pattern(bs * 100 + seed++, p.offset, p.count)));
    }
    ExpectModel(*c, m);
    // Unaligned reads that start and end inside blocks.
    for (const auto& p : pieces) {
      uint64_t off = p.offset > 3 ? p.offset - 3 : 0;
      uint64_t n = std::min<uint64_t>(p.count + 9, size - off);
      EXPECT_TRUE(SameBytes(ReadBack(*c, off, n), m.Range(off, n), off));
    }
    ASSERT_TRUE(c->Shutdown()) << c->error();
    c.reset();
    ASSERT_TRUE(server_->Stop());
    ASSERT_TRUE(server_->Restart());
    c = Connect();
    ASSERT_TRUE(c);
    ExpectModel(*c, m);
  }
};

TEST_P(PluginTest, UnalignedPatternsAcrossBlockBoundaries) { UnalignedPatterns(4096); }
TEST_P(PluginTest, UnalignedPatternsAtBlockSize512) { UnalignedPatterns(512); }
TEST_P(PluginTest, UnalignedPatternsAtBlockSize64K) { UnalignedPatterns(64 * 1024); }

TEST_P(PluginTest, UnwrittenSpaceReadsAsZeros) {
  ASSERT_TRUE(StartServer({"size=1G"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(GiB));
  for (uint64_t off : std::vector<uint64_t>{0, 4095, 123456789, GiB - MiB, GiB - 7}) {
    uint64_t n = std::min<uint64_t>(MiB, GiB - off);
    EXPECT_TRUE(AllZero(ReadBack(*c, off, n), off));
  }
  // Around one written block, everything else is still zero.
  const uint64_t at = 512 * MiB + 4096 * 3;
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, at, Pattern(7, at, 4096)));
  EXPECT_TRUE(AllZero(ReadBack(*c, at - 3 * 4096, 3 * 4096), at - 3 * 4096));
  EXPECT_TRUE(SameBytes(ReadBack(*c, at, 4096), Pattern(7, at, 4096), at));
  EXPECT_TRUE(AllZero(ReadBack(*c, at + 4096, 5 * 4096), at + 4096));
}

TEST_P(PluginTest, TrimMakesHolesAndZeroesPartialBlocks) {
  const uint64_t bs = 4096, size = 4 * MiB;
  ASSERT_TRUE(StartServer({"size=4M"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  Model m(size);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, 0, Pattern(11, 0, 2 * MiB)));
  // Blocks 3 and 10 are cut; 4..9 are covered whole.
  const uint64_t off = 3 * bs + 100, end = 10 * bs + 200;
  ASSERT_TRUE(c->Trim(end - off, off)) << c->error();
  m.Zero(off, end - off);
  ExpectModel(*c, m);
  EXPECT_TRUE(Reported(*c, 0, 4 * bs, false));
  EXPECT_TRUE(Reported(*c, 4 * bs, 6 * bs, true));
  EXPECT_TRUE(Reported(*c, 10 * bs, 2 * MiB - 10 * bs, false));
  EXPECT_TRUE(Reported(*c, 2 * MiB, 2 * MiB, true));
  ASSERT_TRUE(c->Flush()) << c->error();
  std::set<uint64_t> stored = StoredBlocks("test_device");
  for (uint64_t id = 4; id < 10; ++id) EXPECT_EQ(stored.count(id), 0u) << "block " << id;
  for (uint64_t id : std::vector<uint64_t>{0, 3, 10, 11, 511}) EXPECT_EQ(stored.count(id), 1u) << "block " << id;
  // Trimming inside one block zeroes just that part.
  ASSERT_TRUE(c->Trim(10, 20 * bs + 5)) << c->error();
  m.Zero(20 * bs + 5, 10);
  ExpectModel(*c, m);
}

TEST_P(PluginTest, ZeroWithAndWithoutTrimming) {
  const uint64_t bs = 4096, size = 4 * MiB;
  ASSERT_TRUE(StartServer({"size=4M"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  Model m(size);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, 0, Pattern(12, 0, size)));
  // May trim: whole blocks become holes, the partial ones are zeroed, neighbours stay.
  ASSERT_TRUE(c->Zero(8 * bs - 1, 2 * bs + 1, /*may_trim=*/true)) << c->error();
  m.Zero(2 * bs + 1, 8 * bs - 1);
  ExpectModel(*c, m);
  EXPECT_TRUE(Reported(*c, 3 * bs, 7 * bs, true));
  EXPECT_TRUE(Reported(*c, 2 * bs, bs, false));
  EXPECT_TRUE(Reported(*c, 10 * bs, bs, false));
  // No hole wanted: reads as zeros all the same.
  ASSERT_TRUE(c->Zero(5 * bs + 10, 40 * bs + 7, /*may_trim=*/false)) << c->error();
  m.Zero(40 * bs + 7, 5 * bs + 10);
  ExpectModel(*c, m);
  // A fast zero either zeroes or says it would not be fast (ENOTSUP) and changes nothing.
  const uint64_t fz = 100 * bs + 3, fzn = 3 * bs;
  if (c->Zero(fzn, fz, /*may_trim=*/false, /*fast_zero=*/true)) {
    m.Zero(fz, fzn);
  } else {
    EXPECT_EQ(c->err(), ENOTSUP) << c->error();
  }
  ExpectModel(*c, m);
  // Fast zero that may trim is always cheap here.
  ASSERT_TRUE(c->Zero(4 * bs, 200 * bs, /*may_trim=*/true, /*fast_zero=*/true)) << c->error();
  m.Zero(200 * bs, 4 * bs);
  ExpectModel(*c, m);
  EXPECT_TRUE(Reported(*c, 200 * bs, 4 * bs, true));
}

TEST_P(PluginTest, TrimAndZeroOfGigabytesOnASparseExport) {
  const uint64_t bs = 4096;
  ASSERT_TRUE(StartServer({"size=16G"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(16 * GiB));
  const std::vector<uint64_t> spots = {0,       bs + 5,      GiB,         3 * GiB + 77,
                                       4 * GiB, 5 * GiB + 1, 8 * GiB - 3, 12 * GiB};
  for (uint64_t s : spots) ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, s, Pattern(s, s, 2 * bs)));
  // Trim [2 blocks, 4G - 1 block): covers the writes at 1G and 3G; the one at bs + 5 is cut.
  const uint64_t t0 = 2 * bs, t1 = 4 * GiB - bs;
  ASSERT_TRUE(c->Trim(t1 - t0, t0)) << c->error();
  // Zero [4G + 1 block, 8G - 2 blocks) with trimming allowed: covers the write at 5G.
  const uint64_t z0 = 4 * GiB + bs, z1 = 8 * GiB - 2 * bs;
  ASSERT_TRUE(c->Zero(z1 - z0, z0, /*may_trim=*/true)) << c->error();
  ASSERT_TRUE(c->Flush()) << c->error();

  EXPECT_TRUE(SameBytes(ReadBack(*c, 0, bs), Pattern(0, 0, bs)));
  std::vector<uint8_t> cut = Pattern(bs + 5, bs + 5, bs - 5);  // [bs + 5, 2 bs) survives
  EXPECT_TRUE(SameBytes(ReadBack(*c, bs + 5, bs - 5), cut, bs + 5));
  EXPECT_TRUE(AllZero(ReadBack(*c, 2 * bs, 2 * bs), 2 * bs));
  EXPECT_TRUE(AllZero(ReadBack(*c, GiB, 2 * bs), GiB));
  EXPECT_TRUE(AllZero(ReadBack(*c, 3 * GiB + 77, 2 * bs), 3 * GiB + 77));
  EXPECT_TRUE(SameBytes(ReadBack(*c, 4 * GiB, bs), Pattern(4 * GiB, 4 * GiB, bs), 4 * GiB));
  EXPECT_TRUE(AllZero(ReadBack(*c, 4 * GiB + bs, bs), 4 * GiB + bs));
  EXPECT_TRUE(AllZero(ReadBack(*c, 5 * GiB + 1, 2 * bs), 5 * GiB + 1));
  EXPECT_TRUE(SameBytes(ReadBack(*c, 8 * GiB - 3, 2 * bs), Pattern(8 * GiB - 3, 8 * GiB - 3, 2 * bs),
                        8 * GiB - 3));
  EXPECT_TRUE(SameBytes(ReadBack(*c, 12 * GiB, 2 * bs), Pattern(12 * GiB, 12 * GiB, 2 * bs),
                        12 * GiB));
  EXPECT_TRUE(Reported(*c, t0, t1 - t0, true));
  EXPECT_TRUE(Reported(*c, z0, z1 - z0, true));
  std::set<uint64_t> stored = StoredBlocks("test_device");
  for (uint64_t s : std::vector<uint64_t>{GiB, 3 * GiB + 77, 5 * GiB + 1})
    EXPECT_EQ(stored.count(s / bs), 0u) << "block at " << s << " is still stored";
  EXPECT_EQ(stored.count(12 * GiB / bs), 1u);
}

TEST_P(PluginTest, FlushFromAnyConnectionMakesWritesDurable) {
  ASSERT_TRUE(StartServer({"size=8M"}));
  auto a = Connect();
  auto b = Connect();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Flush()) << a->error();  // a flush with nothing to do
  Model m(8 * MiB);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*a, &m, 4096 * 3 + 11, Pattern(21, 4096 * 3 + 11, 300 * KiB)));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*b, &m, 5 * MiB + 1, Pattern(22, 5 * MiB + 1, 77)));
  ASSERT_TRUE(b->Trim(8192, 4096 * 10)) << b->error();
  m.Zero(4096 * 10, 8192);
  // With multi-conn, a flush on one connection covers the writes completed on every other.
  NbdClient& flusher = b->CanMultiConn() ? *b : *a;
  ASSERT_TRUE(flusher.Flush()) << flusher.error();
  if (&flusher == a.get()) {
    ASSERT_TRUE(b->Flush()) << b->error();
  }
  server_->Kill();
  a.reset();
  b.reset();
  ASSERT_TRUE(server_->Restart());
  auto c = Connect();
  ASSERT_TRUE(c);
  ExpectModel(*c, m);
}

TEST_P(PluginTest, FuaWritesSurviveAKillWithoutFlush) {
  ASSERT_TRUE(StartServer({"size=4M"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_TRUE(nbd_can_fua(c->handle()) == 1) << "the plugin must advertise FUA";
  Model m(4 * MiB);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, 4096 * 5, Pattern(31, 4096 * 5, 4096), /*fua=*/true));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, 4096 * 9 + 100, Pattern(32, 4096 * 9 + 100, 50), true));
  ASSERT_NO_FATAL_FAILURE(
      WriteAt(*c, &m, MiB - 1000, Pattern(33, MiB - 1000, 5 * 4096 + 3), true));
  ASSERT_TRUE(c->Trim(4096, 4096 * 5, /*fua=*/true)) << c->error();
  m.Zero(4096 * 5, 4096);
  server_->Kill();
  c.reset();
  ASSERT_TRUE(server_->Restart());
  c = Connect();
  ASSERT_TRUE(c);
  ExpectModel(*c, m);
}

TEST_P(PluginTest, EveryFlushedByteSurvivesKill9) {
  const uint64_t size = 16 * MiB;
  ASSERT_TRUE(StartServer({"size=16M"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  Model m(size);
  std::mt19937_64 rng(41);
  for (int i = 0; i < 200; ++i) {
    uint64_t n = 1 + rng() % (64 * KiB);
    uint64_t off = rng() % (size - n);
    ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, off, Pattern(1000 + i, off, n)));
    if (i % 25 == 24) {
      uint64_t tn = rng() % (256 * KiB), toff = rng() % (size - tn);
      ASSERT_TRUE(c->Trim(tn, toff)) << c->error();
      m.Zero(toff, tn);
    }
  }
  ASSERT_TRUE(c->Flush()) << c->error();
  server_->Kill();
  c.reset();
  ASSERT_TRUE(server_->Restart());
  c = Connect();
  ASSERT_TRUE(c);
  ExpectModel(*c, m);
}

TEST_P(PluginTest, TwoExportsNeverSeeEachOthersData) {
  ASSERT_TRUE(StartServer({"size=2M"}));
  auto a = Connect("alpha");
  auto b = Connect("beta");
  ASSERT_TRUE(a && b);
  Model ma(2 * MiB), mb(2 * MiB);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*a, &ma, 0, Pattern(51, 0, MiB + 5)));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*b, &mb, 4096 + 7, Pattern(52, 4096 + 7, 20000)));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*b, &mb, MiB + 3, Pattern(53, MiB + 3, 9000)));
  ASSERT_TRUE(a->Trim(8192, 4096 * 2)) << a->error();
  ma.Zero(8192, 8192);
  ExpectModel(*a, ma);
  ExpectModel(*b, mb);
  EXPECT_TRUE(Reported(*b, 6 * 4096, MiB - 6 * 4096, true));  // b wrote blocks 1..5 only
  // And the same after a restart, from fresh connections.
  ASSERT_TRUE(a->Shutdown() && b->Shutdown());
  a.reset();
  b.reset();
  ASSERT_TRUE(server_->Stop());
  ASSERT_TRUE(server_->Restart());
  a = Connect("alpha");
  b = Connect("beta");
  ASSERT_TRUE(a && b);
  ExpectModel(*a, ma);
  ExpectModel(*b, mb);
}

TEST_P(PluginTest, EightConnectionsWriteInterleavedPartsOfTheSameBlocks) {
  // Each block is cut into eight slices, one per connection; the slices are shifted by 1000
  // bytes so that some straddle two blocks. All eight write their slices of every block at the
  // same time, several rounds over, each round with new data: every write is a partial-block
  // read-modify-write racing seven others on the same blocks.
  constexpr int kConnections = 8, kRounds = 4, kBlocks = 64;
  constexpr uint64_t bs = 4096, slice = bs / kConnections, base = 1000;
  const uint64_t size = 2 * MiB;
  ASSERT_TRUE(StartServer({"size=2M"}));
  std::vector<std::unique_ptr<NbdClient>> clients;
  for (int t = 0; t < kConnections; ++t) {
    clients.push_back(Connect());
    ASSERT_TRUE(clients.back());
  }
  auto seed = [](int round, int t) { return 7000ull + 100ull * round + t; };
  std::vector<std::string> errors(kConnections);
  std::vector<std::thread> threads;
  for (int t = 0; t < kConnections; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<int> order(kBlocks);
      for (int b = 0; b < kBlocks; ++b) order[b] = b;
      for (int r = 0; r < kRounds; ++r) {
        std::shuffle(order.begin(), order.end(), rng);
        for (int b : order) {
          uint64_t off = base + b * bs + t * slice;
          std::vector<uint8_t> data = Pattern(seed(r, t), off, slice);
          if (!clients[t]->Pwrite(data.data(), data.size(), off)) {
            errors[t] = "write at " + std::to_string(off) + ": " + clients[t]->error();
            return;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kConnections; ++t) ASSERT_EQ(errors[t], "") << "connection " << t;
  Model m(size);
  for (int t = 0; t < kConnections; ++t)
    for (int b = 0; b < kBlocks; ++b) {
      uint64_t off = base + b * bs + t * slice;
      m.Write(off, Pattern(seed(kRounds - 1, t), off, slice));
    }
  ASSERT_TRUE(clients[3]->Flush()) << clients[3]->error();
  for (auto& c : clients) ExpectModel(*c, m);
  for (auto& c : clients) ASSERT_TRUE(c->Shutdown()) << c->error();
  clients.clear();
  server_->Kill();
  ASSERT_TRUE(server_->Restart());
  auto c = Connect();
  ASSERT_TRUE(c);
  ExpectModel(*c, m);
}

TEST_P(PluginTest, ExtentsShowHolesForBlocksNeverWritten) {
  const uint64_t bs = 4096;
  ASSERT_TRUE(StartServer({"size=1M"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  EXPECT_TRUE(Reported(*c, 0, MiB, true));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 2 * bs, Pattern(61, 2 * bs, bs)));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 5 * bs + 9, Pattern(62, 5 * bs + 9, 3 * bs - 18)));
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 20 * bs + 100, Pattern(63, 20 * bs + 100, 10)));
  // A block written with zeros holds nothing either.
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 30 * bs, std::vector<uint8_t>(bs, 0)));
  auto check = [&] {
    EXPECT_TRUE(Reported(*c, 0, 2 * bs, true));
    EXPECT_TRUE(Reported(*c, 2 * bs, bs, false));
    EXPECT_TRUE(Reported(*c, 3 * bs, 2 * bs, true));
    EXPECT_TRUE(Reported(*c, 5 * bs, 3 * bs, false));
    EXPECT_TRUE(Reported(*c, 8 * bs, 12 * bs, true));
    EXPECT_TRUE(Reported(*c, 20 * bs, bs, false));
    EXPECT_TRUE(Reported(*c, 21 * bs, MiB - 21 * bs, true));
    // An unaligned query inside a hole and one inside data.
    EXPECT_TRUE(Reported(*c, 9 * bs + 1, 100, true));
    EXPECT_TRUE(Reported(*c, 6 * bs + 1, 100, false));
  };
  check();
  ASSERT_TRUE(c->Shutdown()) << c->error();
  c.reset();
  ASSERT_TRUE(server_->Stop());
  ASSERT_TRUE(server_->Restart());
  c = Connect();
  ASSERT_TRUE(c);
  check();
}

TEST_P(PluginTest, RequestsPastTheEndAreRefusedAndChangeNothing) {
  // A size that is not a multiple of the block size: the last block is partly outside.
  const uint64_t size = MiB + 100;
  ASSERT_TRUE(StartServer({"size=" + std::to_string(size)}));
  auto c = Connect("test_device", /*strict_bounds=*/false);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(size));
  Model m(size);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, size - 300, Pattern(71, size - 300, 300)));
  std::vector<uint8_t> buf(200, 0xab);
  EXPECT_FALSE(c->Pread(buf.data(), 200, size - 100));
  EXPECT_EQ(c->err(), EINVAL) << c->error();
  EXPECT_FALSE(c->Pread(buf.data(), 1, size));
  EXPECT_EQ(c->err(), EINVAL) << c->error();
  EXPECT_FALSE(c->Pwrite(buf.data(), 200, size - 100));
  EXPECT_EQ(c->err(), ENOSPC) << c->error();
  EXPECT_FALSE(c->Pwrite(buf.data(), 1, size + 4096));
  EXPECT_EQ(c->err(), ENOSPC) << c->error();
  EXPECT_FALSE(c->Trim(8192, size - 4096));
  EXPECT_FALSE(c->Zero(8192, size - 4096));
  // The connection still works and nothing changed.
  ExpectModel(*c, m);
  ASSERT_TRUE(c->Flush()) << c->error();
  ASSERT_TRUE(c->Shutdown()) << c->error();
  c.reset();
  ASSERT_TRUE(server_->Stop());
  ASSERT_TRUE(server_->Restart());
  c = Connect();
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(size));
  ExpectModel(*c, m);
}

TEST_P(PluginTest, EverythingIsStillThereAfterStopAndStart) {
  ASSERT_TRUE(StartServer({"size=8M"}));
  Model m(8 * MiB);
  {
    auto c = Connect();
    ASSERT_TRUE(c);
    std::mt19937_64 rng(81);
    for (int i = 0; i < 60; ++i) {
      uint64_t n = 1 + rng() % (100 * KiB), off = rng() % (8 * MiB - n);
      ASSERT_NO_FATAL_FAILURE(WriteAt(*c, &m, off, Pattern(8100 + i, off, n)));
    }
    // No flush: the clean stop is what must keep it.
    ASSERT_TRUE(c->Shutdown()) << c->error();
  }
  ASSERT_TRUE(server_->Stop());
  // Started with a different size: the stored size still holds.
  ASSERT_TRUE(StartServer({"size=1G"}));
  auto c = Connect();
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(8 * MiB));
  ExpectModel(*c, m);
}

TEST_P(PluginTest, HostileExportNamesAreRefusedAndCreateNothing) {
  ASSERT_TRUE(StartServer());
  const std::vector<std::string> names = {"..", ".", "a/b", "../escape", "/abs", std::string(256, 'x'),
                                          "line\nbreak", "tab\there", "  ", " lead", "trail "};
  for (const auto& name : names) {
    NbdClient c;
    EXPECT_FALSE(c.Connect(server_->socket(), name)) << "export name of " << name.size() << " bytes";
  }
  // The refusals came from the plugin, each with its reason.
  std::string log = server_->LastLog();
  size_t refusals = 0;
  for (size_t at = log.find("refused"); at != std::string::npos; at = log.find("refused", at + 1))
    ++refusals;
  EXPECT_GE(refusals, names.size()) << log;
  // A good name still works, and it is the only export in the store.
  auto ok = Connect("good");
  ASSERT_TRUE(ok);
  ASSERT_NO_FATAL_FAILURE(WriteAt(*ok, nullptr, 0, Pattern(91, 0, 4096)));
  ASSERT_TRUE(ok->Flush()) << ok->error();
  auto store = LeafStore();
  ASSERT_TRUE(store);
  std::vector<std::string> exports;
  ASSERT_TRUE(store->ListExports(&exports).ok());
  EXPECT_EQ(exports, std::vector<std::string>{"good"});
  if (is_local()) {
    // Nothing outside exports/, and nothing in it but the good export.
    auto names_in = [](const std::string& dir) {
      std::vector<std::string> out;
      for (const auto& e : std::filesystem::directory_iterator(dir))
        out.push_back(e.path().filename().string());
      std::sort(out.begin(), out.end());
      return out;
    };
    EXPECT_EQ(names_in(local_root()), std::vector<std::string>{"exports"});
    EXPECT_EQ(names_in(local_root() + "/exports"), std::vector<std::string>{"good"});
    EXPECT_TRUE(LocallyStored("good", 0, Pattern(91, 0, 4096)));
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(local_root()).parent_path() / "escape"));
  }
}

TEST_P(PluginTest, ADifferentExplicitBlockSizeIsRefusedNamingBothSizes) {
  ASSERT_TRUE(StartServer({"size=1M", "block-size=4096"}));
  {
    auto c = Connect();
    ASSERT_TRUE(c);
    ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 100, Pattern(101, 100, 5000)));
    ASSERT_TRUE(c->Shutdown()) << c->error();
  }
  ASSERT_TRUE(server_->Stop());
  ASSERT_TRUE(StartServer({"block-size=512"}));
  NbdClient refused;
  EXPECT_FALSE(refused.Connect(server_->socket(), "test_device"));
  std::string log = server_->LastLog();
  EXPECT_NE(log.find("4096"), std::string::npos) << log;
  EXPECT_NE(log.find("512"), std::string::npos) << log;
  EXPECT_NE(log.find("block size"), std::string::npos) << log;
  ASSERT_TRUE(server_->Stop());
  // Without block-size= the export opens with its own, data intact.
  ASSERT_TRUE(StartServer());
  auto c = Connect();
  ASSERT_TRUE(c);
  EXPECT_EQ(nbd_get_block_size(c->handle(), LIBNBD_SIZE_PREFERRED), 4096);
  EXPECT_TRUE(SameBytes(ReadBack(*c, 100, 5000), Pattern(101, 100, 5000), 100));
}

TEST_P(PluginTest, TheStoredSizeWinsOverANewSize) {
  ASSERT_TRUE(StartServer({"size=3M"}));
  {
    auto c = Connect("sized");
    ASSERT_TRUE(c);
    ASSERT_EQ(c->Size(), static_cast<int64_t>(3 * MiB));
    ASSERT_TRUE(c->Shutdown()) << c->error();
  }
  ASSERT_TRUE(server_->Stop());
  ASSERT_TRUE(StartServer({"size=5M"}));
  auto old_one = Connect("sized");
  auto new_one = Connect("fresh");
  ASSERT_TRUE(old_one && new_one);
  EXPECT_EQ(old_one->Size(), static_cast<int64_t>(3 * MiB));
  EXPECT_EQ(new_one->Size(), static_cast<int64_t>(5 * MiB));
}

TEST_P(PluginTest, ListExportsShowsCreatedExports) {
  ASSERT_TRUE(StartServer({"size=1M"}));
  for (const char* name : {"disk-b", "disk-a", "third one"}) {
    auto c = Connect(name);
    ASSERT_TRUE(c);
    ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 0, Pattern(111, 0, 10)));
  }
  NbdClient lister;
  std::vector<std::string> names;
  ASSERT_TRUE(lister.ListExports(server_->socket(), &names)) << lister.error();
  std::sort(names.begin(), names.end());
  // test_device is listed as the default even before a client creates it.
  EXPECT_EQ(names, (std::vector<std::string>{"disk-a", "disk-b", "test_device", "third one"}));
}

TEST_P(PluginTest, MalformedParametersStopNbdkitWithAClearMessage) {
  struct Bad {
    std::string param;
    std::vector<std::string> words;  // what the message must mention
  };
  const std::vector<Bad> bad = {
      {"size=abc", {"size", "abc"}},
      {"block-size=1000", {"block-size", "1000"}},
      {"block-size=256", {"block-size", "256"}},
      {"no-such-key=1", {"no-such-key"}},
      {"size=0", {"size"}},
  };
  for (const auto& b : bad) {
    std::vector<std::string> args = StoreArgs();
    args.push_back(b.param);
    ExitResult r = RunNbdkitToExit(scratch_->path(), args);
    EXPECT_TRUE(r.exited) << b.param << ": " << r.stderr_text;
    EXPECT_NE(r.code, 0) << b.param;
    for (const auto& w : b.words)
      EXPECT_NE(r.stderr_text.find(w), std::string::npos) << b.param << ": " << r.stderr_text;
  }
  // And nothing at all: store= is required.
  ExitResult r = RunNbdkitToExit(scratch_->path(), {});
  EXPECT_TRUE(r.exited && r.code != 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("store"), std::string::npos) << r.stderr_text;
}

// Apart from the test above: the sanitizer run leaves it out (scripts/sanitizers.sh), as these
// failures leave nbdkit deadlocked at exit under the preloaded ASan runtime, in libp11-kit's
// finalizer, outside any code of ours.
TEST_P(PluginTest, StartupFailuresNameTheParameter) {
  // A directory anyone may write: someone could swap the stats file under the server.
  const std::string shared = scratch_->path() + "/shared";
  std::filesystem::create_directories(shared);
  std::filesystem::permissions(shared, std::filesystem::perms::all);
  const std::string file = scratch_->path() + "/a-file";
  std::ofstream(file) << "not a socket";
  // A socket someone listens on, as another server's control socket.
  const std::string live = scratch_->path() + "/live.sock";
  std::unique_ptr<ControlServer> other;
  ASSERT_TRUE(ControlServer::Create(live, nullptr, {}, &other).ok());
  const std::vector<std::pair<std::string, std::string>> bad = {
      // Checked before the server forks, where the background writer would fail unseen.
      {"stats-file=/nonexistent-dir/stats.json", "stats-file=/nonexistent-dir/stats.json"},
      // The forms that read the secret from elsewhere hold none, so the message names them.
      {"secret-key=+/nonexistent-dir/secret", "secret-key=+/nonexistent-dir/secret"},
      // A size no export can have at the block size: refused now, not at every client's open.
      {"size=4E", "size=4611686018427387904 (4E) at block-size=4096 (4K)"},
      {"max-exports=0", "max-exports="},
      {"stats-file=" + shared + "/stats.json", "is writable by"},
      // The control socket is made before the fork too.
      {"control=/nonexistent-dir/ctl",
       "control=/nonexistent-dir/ctl: directory /nonexistent-dir does not exist"},
      {"control=" + file, "control=" + file + ": " + file + " exists and is a regular file"},
      {"control=" + live, "another server uses control socket " + live},
  };
  for (const auto& [param, words] : bad) {
    std::vector<std::string> args = StoreArgs();
    args.push_back(param);
    ExitResult r = RunNbdkitToExit(scratch_->path(), args);
    EXPECT_TRUE(r.exited) << param << ": " << r.stderr_text;
    EXPECT_NE(r.code, 0) << param;
    EXPECT_NE(r.stderr_text.find(words), std::string::npos) << param << ": " << r.stderr_text;
  }
}

TEST_P(PluginTest, ServesTheLayoutOfTheSpecificationsPythonVersion) {
  // The first version wrote raw 4096-byte blocks at exports/<name>/blocks/<id> and no metadata.
  const uint64_t bs = 4096;
  const std::vector<uint64_t> ids = {0, 1, 42, 1000, 262143};
  if (is_local()) {
    std::string dir = local_root() + "/exports/legacy/blocks";
    std::filesystem::create_directories(dir);
    for (uint64_t id : ids) {
      std::vector<uint8_t> data = Pattern(121, id * bs, bs);
      std::ofstream out(dir + "/" + std::to_string(id), std::ios::binary);
      out.write(reinterpret_cast<const char*>(data.data()), data.size());
      ASSERT_TRUE(out.good());
    }
  } else {
    auto store = LeafStore();
    ASSERT_TRUE(store);
    for (uint64_t id : ids) {
      std::vector<uint8_t> data = Pattern(121, id * bs, bs);
      Status s = store->Write("legacy", id, data, /*fua=*/true);
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
  }
  ASSERT_TRUE(StartServer());
  auto c = Connect("legacy");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->Size(), static_cast<int64_t>(GiB));
  for (uint64_t id : ids)
    EXPECT_TRUE(SameBytes(ReadBack(*c, id * bs, bs), Pattern(121, id * bs, bs), id * bs));
  EXPECT_TRUE(AllZero(ReadBack(*c, 2 * bs, 40 * bs), 2 * bs));
  EXPECT_TRUE(Reported(*c, 42 * bs, bs, false));
  EXPECT_TRUE(Reported(*c, 43 * bs, 957 * bs, true));
  // Unaligned across two of the old blocks.
  std::vector<uint8_t> want = Pattern(121, bs - 10, 20);
  EXPECT_TRUE(SameBytes(ReadBack(*c, bs - 10, 20), want, bs - 10));
  // And written through the plugin, it stays in the same layout.
  ASSERT_NO_FATAL_FAILURE(WriteAt(*c, nullptr, 7 * bs, Pattern(122, 7 * bs, bs)));
  ASSERT_TRUE(c->Flush()) << c->error();
  if (is_local()) {
    std::ifstream in(local_root() + "/exports/legacy/blocks/7", std::ios::binary);
    std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_TRUE(SameBytes(raw, Pattern(122, 7 * bs, bs), 7 * bs));
  }
}

TEST(PluginHelp, ListsEveryParameterAndDumpsItsVersion) {
  ScratchDir dir;
  ExitResult help = RunNbdkit(dir.path(), {S3BLOCK_PLUGIN_PATH, "--help"});
  ASSERT_TRUE(help.exited && help.code == 0) << help.stderr_text;
  for (const char* key : {"store=", "size=", "block-size=", "default-export=", "create=",
                          "endpoint=", "access-key=", "secret-key=", "cache=", "cache-size="})
    EXPECT_NE(help.stderr_text.find(key), std::string::npos) << key << " is not in --help:\n"
                                                             << help.stderr_text;
  ExitResult dump = RunNbdkit(dir.path(), {S3BLOCK_PLUGIN_PATH, "--dump-plugin"});
  ASSERT_TRUE(dump.exited && dump.code == 0) << dump.stderr_text;
  EXPECT_NE(dump.stderr_text.find("thread_model=parallel"), std::string::npos) << dump.stderr_text;
  EXPECT_NE(dump.stderr_text.find("s3block_version="), std::string::npos) << dump.stderr_text;
}

INSTANTIATE_TEST_SUITE_P(Stores, PluginTest, ::testing::ValuesIn(AllSuiteParams()),
                         SuiteParamName);

}  // namespace
}  // namespace s3block::testing
