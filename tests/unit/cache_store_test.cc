#include "s3block/cache_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "file/file_store.h"
#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "test_util.h"
#include "util/zero.h"

namespace s3block {
namespace {

constexpr uint32_t kBs = 4096;
constexpr uint64_t kCost = kBs + CacheStore::kEntryOverhead;  // what one cached block is charged
constexpr const char* kExport = "dev";

// A block whose content names its id and version; never all zeros.
Bytes MakeBlock(uint64_t id, uint64_t version) {
  Bytes b(kBs, static_cast<uint8_t>((id * 31 + version * 7) % 251 + 1));
  std::memcpy(b.data(), &id, 8);
  std::memcpy(b.data() + 8, &version, 8);
  return b;
}

// A store in memory that a test controls: its writes and deletes (uploads), and separately its
// reads, can be held at a gate; it can be told to fail; it counts and logs what it is asked.
// It models durability: `durable` is what survives a crash (updated by Flush and fua requests).
class TestStore : public BlockStore {
 public:
  struct Op {
    char kind;  // 'W' write, 'D' delete, 'R' read, 'F' flush
    uint64_t id;
    bool fua;
  };

  std::string Describe() const override { return "test"; }

  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    std::unique_lock<std::mutex> lk(mu_);
    log_.push_back({'R', id, false});
    ++reads_;
    Pass(lk, reads_gated_, blocked_reads_);
    data->clear();
    *found = false;
    if (fail_reads_) return Status::IoError("injected read failure");
    auto it = current_.find(KeyOf(e, id));
    if (it != current_.end()) {
      *data = it->second;
      *found = true;
    }
    // A slow reply: the content is what was stored when the read arrived.
    Pass(lk, replies_gated_, blocked_reads_);
    return Status::Ok();
  }

  // Reads as Read would, one block after another, and logs the batch's size.
  void ReadBatch(std::string_view e, std::span<BlockRead> reads) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      batches_.push_back(reads.size());
    }
    BlockStore::ReadBatch(e, reads);
  }
  // As a store that reads batches says; set before the export is first used.
  size_t ReadBatchSize(std::string_view) const override { return batch_size_; }
  uint64_t ReadBatchBytes(std::string_view e) const override {
    return batch_bytes_ ? batch_bytes_ : BlockStore::ReadBatchBytes(e);
  }
  bool BuffersWrites(std::string_view) const override { return buffers_writes_; }

  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool fua) override {
    std::unique_lock<std::mutex> lk(mu_);
    if (fail_ids_.count(id)) return Status::IoError("injected write failure");
    ++in_flight_;
    Pass(lk, writes_gated_, blocked_writes_);
    --in_flight_;
    if (fail_writes_) return Status::IoError("injected write failure");
    if (fail_next_writes_ > 0) {
      --fail_next_writes_;
      return Status::IoError("injected write failure");
    }
    log_.push_back({'W', id, fua});
    history_[id].emplace_back(data.begin(), data.end());
    ++writes_;
    if (fua) ++fua_writes_;
    if (IsAllZero(data.data(), data.size())) ++zero_writes_;
    current_[KeyOf(e, id)] = Bytes(data.begin(), data.end());
    if (fua) durable_[KeyOf(e, id)] = Bytes(data.begin(), data.end());
    return Status::Ok();
  }

  // Counts the runs, then writes each block as Write would.
  Status OverwriteRun(std::string_view e, uint64_t first, std::span<const uint8_t> data,
                      uint32_t block_size, bool fua) override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      runs_.push_back(data.size() / block_size);
    }
    return BlockStore::OverwriteRun(e, first, data, block_size, fua);
  }

  Status Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) override {
    std::unique_lock<std::mutex> lk(mu_);
    ++in_flight_;
    Pass(lk, writes_gated_, blocked_writes_);
    --in_flight_;
    if (fail_writes_) return Status::IoError("injected delete failure");
    ++deletes_;
    for (uint64_t id : ids) {
      log_.push_back({'D', id, fua});
      current_.erase(KeyOf(e, id));
      if (fua) durable_.erase(KeyOf(e, id));
    }
    return Status::Ok();
  }

  Status Flush(std::string_view e) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (fail_flush_) return Status::IoError("injected flush failure");
    log_.push_back({'F', 0, false});
    ++flushes_;
    uploads_in_flight_at_flush_.push_back(in_flight_);
    durable_ = current_;
    return Status::Ok();
  }

  Status ListBlocks(std::string_view e, const std::function<void(uint64_t)>& fn) override {
    std::vector<uint64_t> ids;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (const auto& [k, v] : current_)
        if (k.first == e) ids.push_back(k.second);
    }
    for (uint64_t id : ids) fn(id);
    return Status::Ok();
  }
  Status ListExports(std::vector<std::string>* names) override { return Status::Ok(); }
  Status ReadMeta(std::string_view e, std::string* text, bool* found) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = meta_.find(std::string(e));
    *found = it != meta_.end();
    if (*found) *text = it->second;
    return Status::Ok();
  }
  Status WriteMeta(std::string_view e, std::string_view text) override {
    std::lock_guard<std::mutex> lk(mu_);
    meta_[std::string(e)] = std::string(text);
    return Status::Ok();
  }
  Status DeleteMeta(std::string_view e) override { return Status::Ok(); }

  // --- control ---
  void Put(uint64_t id, const Bytes& b) {
    std::lock_guard<std::mutex> lk(mu_);
    current_[KeyOf(kExport, id)] = b;
    durable_[KeyOf(kExport, id)] = b;
  }
  void GateWrites(bool closed) { SetGate(writes_gated_, closed); }
  void GateReads(bool closed) { SetGate(reads_gated_, closed); }
  // Reads take the content stored now, then wait at this gate before they return it.
  void GateReadReplies(bool closed) { SetGate(replies_gated_, closed); }
  void FailWrites(bool fail) { std::lock_guard<std::mutex> lk(mu_); fail_writes_ = fail; }
  void FailReads(bool fail) { std::lock_guard<std::mutex> lk(mu_); fail_reads_ = fail; }
  // The next n writes to pass the gate fail (an outage that ends by itself).
  void FailNextWrites(int n) { std::lock_guard<std::mutex> lk(mu_); fail_next_writes_ = n; }
  // Writes of block id fail at once, without waiting at the gate (until cleared).
  void FailWritesOf(std::optional<uint64_t> id) {
    std::lock_guard<std::mutex> lk(mu_);
    fail_ids_.clear();
    if (id) fail_ids_.insert(*id);
  }
  // Stores a block of export e behind the cache's back.
  void PutIn(std::string_view e, uint64_t id, const Bytes& b) {
    std::lock_guard<std::mutex> lk(mu_);
    current_[KeyOf(e, id)] = b;
    durable_[KeyOf(e, id)] = b;
  }
  std::optional<Bytes> DurableIn(std::string_view e, uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = durable_.find(KeyOf(e, id));
    if (it == durable_.end()) return std::nullopt;
    return it->second;
  }
  // Waits until at least n writes/deletes (or reads) are held at the gate.
  void WaitBlockedWrites(int n) { WaitFor([&] { return blocked_writes_ >= n; }); }
  void WaitBlockedReads(int n) { WaitFor([&] { return blocked_reads_ >= n; }); }
  int blocked_writes() { std::lock_guard<std::mutex> lk(mu_); return blocked_writes_; }

  // The content of a block now and after a crash; nullopt if not stored.
  std::optional<Bytes> Current(uint64_t id) { return Get(current_, id); }
  std::optional<Bytes> Durable(uint64_t id) { return Get(durable_, id); }
  std::set<uint64_t> CurrentIds() {
    std::lock_guard<std::mutex> lk(mu_);
    std::set<uint64_t> out;
    for (const auto& [k, v] : current_) out.insert(k.second);
    return out;
  }
  std::vector<Op> Log() { std::lock_guard<std::mutex> lk(mu_); return log_; }
  // Every content stored for block id, in order (as the store received it).
  std::vector<Bytes> WritesOf(uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    return history_[id];
  }
  int reads() { std::lock_guard<std::mutex> lk(mu_); return reads_; }
  void SetBatchSize(size_t n) { batch_size_ = n; }
  void SetBatchBytes(uint64_t n) { batch_bytes_ = n; }
  void SetBuffersWrites(bool b) { buffers_writes_ = b; }
  // The size of every ReadBatch asked for, in order.
  std::vector<size_t> Batches() { std::lock_guard<std::mutex> lk(mu_); return batches_; }
  std::vector<size_t> Runs() { std::lock_guard<std::mutex> lk(mu_); return runs_; }
  int writes() { std::lock_guard<std::mutex> lk(mu_); return writes_; }
  int fua_writes() { std::lock_guard<std::mutex> lk(mu_); return fua_writes_; }
  int zero_writes() { std::lock_guard<std::mutex> lk(mu_); return zero_writes_; }
  int deletes() { std::lock_guard<std::mutex> lk(mu_); return deletes_; }
  int flushes() { std::lock_guard<std::mutex> lk(mu_); return flushes_; }
  std::vector<int> uploads_in_flight_at_flush() {
    std::lock_guard<std::mutex> lk(mu_);
    return uploads_in_flight_at_flush_;
  }

 private:
  using BlockKey = std::pair<std::string, uint64_t>;
  static BlockKey KeyOf(std::string_view e, uint64_t id) { return {std::string(e), id}; }

  // Waits while `gate` is closed, counting this call as blocked meanwhile.
  void Pass(std::unique_lock<std::mutex>& lk, const bool& gate, int& blocked) {
    if (!gate) return;
    ++blocked;
    cv_.notify_all();
    cv_.wait(lk, [&] { return !gate; });
    --blocked;
  }
  void SetGate(bool& gate, bool closed) {
    std::lock_guard<std::mutex> lk(mu_);
    gate = closed;
    cv_.notify_all();
  }
  template <typename P>
  void WaitFor(P pred) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, pred);
  }
  std::optional<Bytes> Get(const std::map<std::pair<std::string, uint64_t>, Bytes>& m,
                           uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = m.find(KeyOf(kExport, id));
    if (it == m.end()) return std::nullopt;
    return it->second;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<std::string, uint64_t>, Bytes> current_, durable_;
  std::map<std::string, std::string> meta_;
  bool writes_gated_ = false, reads_gated_ = false, replies_gated_ = false;
  bool fail_writes_ = false, fail_reads_ = false, fail_flush_ = false;
  int fail_next_writes_ = 0;
  std::set<uint64_t> fail_ids_;
  int blocked_writes_ = 0, blocked_reads_ = 0, in_flight_ = 0;
  int reads_ = 0, writes_ = 0, fua_writes_ = 0, zero_writes_ = 0, deletes_ = 0, flushes_ = 0;
  std::vector<int> uploads_in_flight_at_flush_;
  std::vector<size_t> batches_;
  std::vector<size_t> runs_;
  size_t batch_size_ = 1;
  uint64_t batch_bytes_ = 0;  // 0: BlockStore's default
  bool buffers_writes_ = false;
  std::vector<Op> log_;
  std::map<uint64_t, std::vector<Bytes>> history_;
};

// Waits until pred() holds, polling the cache's counters (state, not time: the only bound is a
// guard against hanging the whole test run).
template <typename P>
void WaitUntil(P pred) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!pred()) {
    ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "condition never became true";
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

CacheOptions Options(uint64_t blocks, uint64_t dirty_blocks = 0) {
  CacheOptions o;
  o.cache_size = blocks * kCost;
  o.dirty_size = dirty_blocks * kCost;
  o.upload_threads = 4;
  o.read_threads = 4;
  o.max_dirty_age = 3600;  // uploads start from the threshold or a flush unless a test says so
  return o;
}

class CacheTest : public ::testing::Test {
 protected:
  void Make(const CacheOptions& o, bool start) {
    devices_.clear();
    store_ = std::make_shared<TestStore>();
    cache_ = std::make_shared<CacheStore>(store_, o);
    if (start) ASSERT_OK(cache_->Start());
  }
  CacheStats Stats() {
    CacheStats s;
    EXPECT_TRUE(cache_->GetStats(kExport, &s));
    return s;
  }
  // Reads block id through the cache: the content, or nullopt if not stored.
  std::optional<Bytes> Get(uint64_t id) {
    Bytes b;
    bool found = false;
    Status s = cache_->Read(kExport, id, &b, &found);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!found) return std::nullopt;
    return b;
  }
  Status Put(uint64_t id, const Bytes& b, bool fua = false) {
    return cache_->Write(kExport, id, b, fua);
  }
  Status Del(uint64_t id, bool fua = false) {
    uint64_t ids[1] = {id};
    return cache_->Delete(kExport, ids, fua);
  }
  // The export's device at block size bs (one per size, kept for the test).
  BlockDevice* Dev(uint32_t bs) {
    std::lock_guard<std::mutex> lock(devices_mu_);
    auto& d = devices_[bs];
    if (!d) d = cache_->OpenDevice(kExport, bs);
    return d.get();
  }
  Status WriteRangeOf(uint32_t bs, uint64_t id, uint32_t off, std::span<const uint8_t> data,
                      bool base_zero, bool fua) {
    bool deleted = false;
    return Dev(bs)->WriteRange(id, off, data, base_zero, fua, &deleted);
  }
  std::set<uint64_t> List() {
    std::set<uint64_t> ids;
    EXPECT_OK(cache_->ListBlocks(kExport, [&](uint64_t id) { EXPECT_TRUE(ids.insert(id).second); }));
    return ids;
  }

  std::shared_ptr<TestStore> store_;
  std::shared_ptr<CacheStore> cache_;
  std::mutex devices_mu_;
  std::map<uint32_t, std::unique_ptr<BlockDevice>> devices_;
};

TEST_F(CacheTest, AStoreThatBuffersWritesGetsThemAtOnceAndTheCacheKeepsThemClean) {
  // Without threads: no uploader could store the blocks, only the writer's own call.
  Make(Options(16), false);
  store_->SetBuffersWrites(true);
  ASSERT_OK(Put(1, MakeBlock(1, 1)));
  ASSERT_OK(Put(2, MakeBlock(2, 1)));
  EXPECT_EQ(store_->writes(), 2);
  EXPECT_EQ(store_->fua_writes(), 0);  // the store's own flush makes them durable
  EXPECT_EQ(Stats().dirty_blocks, 0u);
  EXPECT_EQ(Get(1), MakeBlock(1, 1));
  EXPECT_EQ(store_->reads(), 0);  // kept, clean
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->flushes(), 1);
  EXPECT_EQ(store_->Durable(1), MakeBlock(1, 1));
  EXPECT_EQ(store_->Durable(2), MakeBlock(2, 1));
}

// Blocks first.. of version v, back to back, with block `zero` (if any) all zeros.
static Bytes RunOf(uint64_t first, uint32_t count, uint32_t v, std::optional<uint64_t> zero = {}) {
  Bytes run;
  for (uint64_t id = first; id < first + count; ++id) {
    const Bytes b = id == zero ? Bytes(MakeBlock(id, v).size(), 0) : MakeBlock(id, v);
    run.insert(run.end(), b.begin(), b.end());
  }
  return run;
}

TEST_F(CacheTest, ARunOfBlocksGoesToAStoreThatBuffersWritesInOneCall) {
  Make(Options(64), false);
  store_->SetBuffersWrites(true);
  const uint32_t bs = static_cast<uint32_t>(MakeBlock(0, 1).size());
  const Bytes run = RunOf(10, 8, 1);
  ASSERT_OK(Dev(bs)->WriteBlocks(10, 8, run.data(), false));
  EXPECT_EQ(store_->Runs(), std::vector<size_t>{8});
  EXPECT_EQ(store_->writes(), 8);
  EXPECT_EQ(Stats().dirty_blocks, 0u);
  for (uint64_t id = 10; id < 18; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 1));
  EXPECT_EQ(store_->reads(), 0);  // kept, clean
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 10; id < 18; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
  // A block of zeros in a run is a delete below, as Write makes it: block by block.
  const Bytes zeroed = RunOf(10, 8, 2, 13);
  ASSERT_OK(Dev(bs)->WriteBlocks(10, 8, zeroed.data(), false));
  EXPECT_EQ(store_->Runs().size(), 1u);
  EXPECT_EQ(Get(13), std::nullopt);
  EXPECT_EQ(Get(14), MakeBlock(14, 2));
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(13), std::nullopt);
  EXPECT_EQ(store_->Durable(12), MakeBlock(12, 2));
}

TEST_F(CacheTest, ARunOfBlocksWaitsForAnUploadOfOneOfThemInFlight) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->SetBuffersWrites(true);
  const uint32_t bs = static_cast<uint32_t>(MakeBlock(0, 1).size());
  store_->GateWrites(true);
  std::thread single([&] { EXPECT_OK(Put(3, MakeBlock(3, 1))); });
  store_->WaitBlockedWrites(1);
  const Bytes run = RunOf(0, 8, 2);
  std::thread runner([&] { EXPECT_OK(Dev(bs)->WriteBlocks(0, 8, run.data(), false)); });
  WaitUntil([&] { return Stats().ordered_waits == 1; });
  EXPECT_TRUE(store_->Runs().empty());  // not sent while block 3's upload is in flight
  store_->GateWrites(false);
  single.join();
  runner.join();
  EXPECT_EQ(store_->Current(3), MakeBlock(3, 2));  // the run landed last
  EXPECT_EQ(Get(3), MakeBlock(3, 2));
}

TEST_F(CacheTest, ALongRunToAStoreThatBuffersWritesIsNotCopiedAndReadersReadItThere) {
  Make(Options(256), false);  // no read-ahead: every store read is a reader's
  store_->SetBuffersWrites(true);
  const uint32_t bs = static_cast<uint32_t>(MakeBlock(0, 1).size());
  const uint32_t n = static_cast<uint32_t>((64 << 10) / bs) + 4;  // past the shortest passed
  for (uint64_t id = 0; id < n; ++id) store_->Put(id, MakeBlock(id, 1));
  EXPECT_EQ(Get(2), MakeBlock(2, 1));  // cached clean: dropped by the run
  const int reads_before = store_->reads();
  const Bytes run = RunOf(0, n, 2);
  ASSERT_OK(Dev(bs)->WriteBlocks(0, n, run.data(), false));
  EXPECT_EQ(store_->Runs(), std::vector<size_t>{n});
  EXPECT_EQ(Stats().cached_blocks, 0u);
  for (uint64_t id = 0; id < n; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 2));
  EXPECT_EQ(store_->reads(), reads_before + static_cast<int>(n));  // from the store, once each
  EXPECT_EQ(Stats().cached_blocks, n);

  // A reader of a block of a run in flight waits for the run, then reads what it wrote.
  store_->GateWrites(true);
  const Bytes run3 = RunOf(0, n, 3);
  std::thread runner([&] { EXPECT_OK(Dev(bs)->WriteBlocks(0, n, run3.data(), false)); });
  store_->WaitBlockedWrites(1);
  std::optional<Bytes> seen;
  std::thread reader([&] { seen = Get(n - 1); });
  WaitUntil([&] { return Stats().coalesced == 1; });
  EXPECT_EQ(store_->reads(), reads_before + static_cast<int>(n));
  store_->GateWrites(false);
  runner.join();
  reader.join();
  EXPECT_EQ(seen, MakeBlock(n - 1, 3));

  // A block written in part and not yet stored: the run is copied as shorter ones are.
  const Bytes part(512, 0x5a);
  ASSERT_OK(WriteRangeOf(bs, 1, 0, part, false, false));
  const Bytes run4 = RunOf(0, n, 4);
  ASSERT_OK(Dev(bs)->WriteBlocks(0, n, run4.data(), false));
  EXPECT_EQ(store_->Runs().size(), 3u);
  EXPECT_EQ(Stats().cached_blocks, n);  // kept, clean
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < n; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 4));
}

TEST_F(CacheTest, ARunOfBlocksIsWrittenBackLikeItsBlocks) {
  Make(Options(64), false);
  const uint32_t bs = static_cast<uint32_t>(MakeBlock(0, 1).size());
  ASSERT_OK(Put(5, MakeBlock(5, 1)));
  const Bytes run = RunOf(0, 8, 2, 6);
  ASSERT_OK(Dev(bs)->WriteBlocks(0, 8, run.data(), false));
  EXPECT_EQ(store_->writes(), 0);  // write-back: nothing is stored before a flush
  EXPECT_EQ(Get(5), MakeBlock(5, 2));
  EXPECT_EQ(Get(6), std::nullopt);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->writes(), 7);  // block 5 once, with its newer content; block 6 deleted
  for (uint64_t id = 0; id < 8; ++id)
    EXPECT_EQ(store_->Durable(id), id == 6 ? std::nullopt : std::optional<Bytes>(MakeBlock(id, 2)));
  // With fua, each block is stored before the call returns.
  const Bytes again = RunOf(0, 2, 3);
  ASSERT_OK(Dev(bs)->WriteBlocks(0, 2, again.data(), true));
  EXPECT_EQ(store_->Durable(1), MakeBlock(1, 3));
}

TEST_F(CacheTest, HitCostsNoStoreRequest) {
  Make(Options(16), false);
  store_->Put(1, MakeBlock(1, 1));
  EXPECT_EQ(Get(1), MakeBlock(1, 1));
  EXPECT_EQ(store_->reads(), 1);
  EXPECT_EQ(Get(1), MakeBlock(1, 1));
  EXPECT_EQ(Get(2), std::nullopt);
  EXPECT_EQ(Get(2), std::nullopt);  // "not stored" is cached too
  EXPECT_EQ(store_->reads(), 2);
  CacheStats s = Stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.store_reads, 2u);
}

TEST_F(CacheTest, ReadRangeCopiesThePartAskedForAndChecksTheBlockLength) {
  Make(Options(16), false);
  store_->Put(1, MakeBlock(1, 1));
  store_->Put(2, Bytes(100, 9));  // not a whole block
  const Bytes whole = MakeBlock(1, 1);
  Bytes out(300, 0xee);
  bool found = false;
  ASSERT_OK(Dev(kBs)->ReadRange(1, 1000, std::span<uint8_t>(out).subspan(0, 200),
                              ReadIntent::kRead, &found));
  EXPECT_TRUE(found);
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + 200, whole.begin() + 1000));
  EXPECT_EQ(out[200], 0xee);  // nothing past the range
  ASSERT_OK(Dev(kBs)->ReadRange(1, kBs - 8, std::span<uint8_t>(out).subspan(0, 8),
                              ReadIntent::kRead, &found));  // a hit this time
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + 8, whole.end() - 8));
  // Not stored: not found, and the buffer is left as it was.
  std::fill(out.begin(), out.end(), 0xee);
  ASSERT_OK(Dev(kBs)->ReadRange(3, 0, out, ReadIntent::kRead, &found));
  EXPECT_FALSE(found);
  EXPECT_EQ(out, Bytes(300, 0xee));
  // A block of another length is an error, never data.
  Status s = Dev(kBs)->ReadRange(2, 0, out, ReadIntent::kRead, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("has 100 bytes"), std::string::npos) << s.ToString();
  EXPECT_EQ(store_->reads(), 3);
  CacheStats st = Stats();
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 3u);
}

// ReadBlocks gives, block by block, what ReadRange gives for the whole block, whatever state
// each block is in; its errors are ReadRange's.
TEST_F(CacheTest, ReadBlocksReadsWhatReadRangeReads) {
  Make(Options(64), true);
  for (uint64_t id : {0, 1, 2, 3, 7, 10, 500}) store_->Put(id, MakeBlock(id, 0));
  store_->Put(11, Bytes(100, 9));  // not a whole block
  std::vector<std::optional<Bytes>> want(11);
  for (uint64_t id : {0, 1, 2, 3}) want[id] = MakeBlock(id, 0);  // only in the store
  for (uint64_t id : {4, 5}) {                                    // written, not yet stored
    ASSERT_OK(Put(id, MakeBlock(id, 1)));
    want[id] = MakeBlock(id, 1);
  }
  ASSERT_OK(Put(6, MakeBlock(6, 1)));  // written, then deleted
  ASSERT_OK(Del(6));
  const Bytes part(300, 0x5a);  // written in part: over a stored block and over none
  ASSERT_OK(WriteRangeOf(kBs, 7, 100, part, false, false));
  want[7] = MakeBlock(7, 0);
  std::copy(part.begin(), part.end(), want[7]->begin() + 100);
  ASSERT_OK(WriteRangeOf(kBs, 8, kBs - 300, part, true, false));
  want[8] = Bytes(kBs, 0);
  std::copy(part.begin(), part.end(), want[8]->end() - 300);
  ASSERT_TRUE(Get(10));  // 9 never stored; 10 held clean
  want[10] = MakeBlock(10, 0);

  Bytes out(11 * kBs, 0xee);
  ASSERT_OK(Dev(kBs)->ReadBlocks(0, 11, out.data()));
  for (uint64_t id = 0; id < 11; ++id) {
    Bytes one(kBs, 0xee);
    bool found = false;
    ASSERT_OK(Dev(kBs)->ReadRange(id, 0, one, ReadIntent::kRead, &found));
    if (!found) one.assign(kBs, 0);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), out.begin() + id * kBs)) << "block " << id;
    EXPECT_EQ(one, want[id] ? *want[id] : Bytes(kBs, 0)) << "block " << id;
  }
  // A stored block of another length, or a store that fails, is an error, never zeros.
  Status s = Dev(kBs)->ReadBlocks(9, 3, out.data());
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("block 11 "), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("has 100 bytes"), std::string::npos) << s.ToString();
  store_->FailReads(true);
  s = Dev(kBs)->ReadBlocks(499, 2, out.data());  // far from what was read ahead
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("injected read failure"), std::string::npos) << s.ToString();
}

// A store that reads many blocks at once is read ahead in batches of at most its size; every
// block comes back right, each fetched once.
TEST_F(CacheTest, AStoreThatReadsBatchesIsReadAheadInBatches) {
  Make(Options(1024), true);
  store_->SetBatchSize(8);
  constexpr uint64_t kBlocks = 400;
  for (uint64_t id = 0; id < kBlocks; ++id) store_->Put(id, MakeBlock(id, 0));
  Bytes out(16 * kBs);
  for (uint64_t first = 0; first < kBlocks; first += 16) {  // a reader of 64 KiB requests
    ASSERT_OK(Dev(kBs)->ReadBlocks(first, 16, out.data()));
    for (uint64_t i = 0; i < 16; ++i) {
      const Bytes want = MakeBlock(first + i, 0);
      ASSERT_TRUE(std::equal(want.begin(), want.end(), out.begin() + i * kBs)) << first + i;
    }
  }
  ASSERT_OK(cache_->Shutdown());  // waits for read-ahead still in flight
  const std::vector<size_t> batches = store_->Batches();
  size_t largest = 0, blocks = 0;
  for (size_t n : batches) {
    largest = std::max(largest, n);
    blocks += n;
  }
  EXPECT_EQ(largest, 8u);
  EXPECT_LT(batches.size(), blocks / 2) << "most blocks should come in batches";
  CacheStats st = Stats();
  EXPECT_LE(st.misses, 2u);
  EXPECT_EQ(st.store_reads, static_cast<uint64_t>(store_->reads()));
  EXPECT_EQ(blocks, st.store_reads);  // every fetch is a ReadBatch: a reader's miss, one block
  // Past the last block read-ahead asks for blocks that are not stored, a window at most.
  EXPECT_LE(st.store_reads, kBlocks + 4 * 32);
}

// A store whose batches may be large (a log segment's ranged reads: 256 blocks, 1 MiB) is read
// ahead in batches larger than the default 128 KiB, never larger than it says.
TEST_F(CacheTest, AStoreWithLargeBatchesIsReadAheadInLargeBatches) {
  Make(Options(8192), true);
  store_->SetBatchSize(256);
  store_->SetBatchBytes(1 << 20);
  constexpr uint64_t kBlocks = 3000;
  for (uint64_t id = 0; id < kBlocks; ++id) store_->Put(id, MakeBlock(id, 0));
  Bytes out(256 * kBs);
  for (uint64_t first = 0; first + 256 <= kBlocks; first += 256) {  // a reader of 1 MiB requests
    ASSERT_OK(Dev(kBs)->ReadBlocks(first, 256, out.data()));
    for (uint64_t i = 0; i < 256; ++i) {
      const Bytes want = MakeBlock(first + i, 0);
      ASSERT_TRUE(std::equal(want.begin(), want.end(), out.begin() + i * kBs)) << first + i;
    }
  }
  ASSERT_OK(cache_->Shutdown());
  size_t largest = 0;
  for (size_t n : store_->Batches()) largest = std::max(largest, n);
  EXPECT_GT(largest, 32u) << "batches stay at the default's 128 KiB";
  EXPECT_LE(largest, 256u);
  // A store whose batches are at most 64 KiB: 16 blocks.
  Make(Options(8192), true);
  store_->SetBatchSize(256);
  store_->SetBatchBytes(64 << 10);
  for (uint64_t id = 0; id < kBlocks; ++id) store_->Put(id, MakeBlock(id, 0));
  for (uint64_t first = 0; first + 256 <= kBlocks; first += 256)
    ASSERT_OK(Dev(kBs)->ReadBlocks(first, 256, out.data()));
  ASSERT_OK(cache_->Shutdown());
  for (size_t n : store_->Batches()) EXPECT_LE(n, 16u);
}

// A store that gains nothing from batches is read one block per request, from many threads.
TEST_F(CacheTest, AStoreThatDoesNotReadBatchesIsReadABlockAtATime) {
  Make(Options(1024), true);
  for (uint64_t id = 0; id < 200; ++id) store_->Put(id, MakeBlock(id, 0));
  Bytes out(16 * kBs);
  for (uint64_t first = 0; first < 192; first += 16)
    ASSERT_OK(Dev(kBs)->ReadBlocks(first, 16, out.data()));
  ASSERT_OK(cache_->Shutdown());
  const std::vector<size_t> batches = store_->Batches();
  EXPECT_GE(batches.size(), 150u);
  for (size_t n : batches) ASSERT_EQ(n, 1u);
}

TEST_F(CacheTest, EvictsLeastRecentlyUsedFirst) {
  Make(Options(4), false);
  for (uint64_t id = 0; id < 5; ++id) store_->Put(id, MakeBlock(id, 0));
  for (uint64_t id = 0; id < 5; ++id) Get(id);  // block 4 pushes out block 0, the oldest
  EXPECT_EQ(store_->reads(), 5);
  EXPECT_EQ(Stats().evictions, 1u);
  for (uint64_t id = 1; id < 5; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 0));
  EXPECT_EQ(store_->reads(), 5);
  EXPECT_EQ(Get(0), MakeBlock(0, 0));
  EXPECT_EQ(store_->reads(), 6);
}

TEST_F(CacheTest, ScanDoesNotFlushTheHotSet) {
  Make(Options(8), false);
  for (uint64_t id = 0; id < 300; ++id) store_->Put(id, MakeBlock(id, 0));
  for (int round = 0; round < 2; ++round)
    for (uint64_t id = 0; id < 4; ++id) Get(id);  // used twice: hot
  EXPECT_EQ(store_->reads(), 4);
  for (uint64_t id = 100; id < 200; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 0));  // a scan
  EXPECT_EQ(store_->reads(), 104);
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 0));
  EXPECT_EQ(store_->reads(), 104) << "the scan evicted hot blocks";
  EXPECT_EQ(Get(199), MakeBlock(199, 0));  // the most recent scanned block is still there
  EXPECT_EQ(store_->reads(), 104);
  EXPECT_EQ(Get(100), MakeBlock(100, 0));  // the oldest is not
  EXPECT_EQ(store_->reads(), 105);
  CacheStats s = Stats();
  EXPECT_LE(s.cached_bytes, 8 * kCost);
  EXPECT_EQ(s.evictions, 104u + 1 - 8);
}

TEST_F(CacheTest, DirtyBlocksAreNeverEvictedBeforeTheyAreStored) {
  Make(Options(4, 4), false);
  for (uint64_t id = 10; id < 20; ++id) store_->Put(id, MakeBlock(id, 0));
  for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  for (uint64_t id = 10; id < 20; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 0));
  EXPECT_EQ(store_->writes(), 0);
  EXPECT_EQ(Stats().dirty_blocks, 4u);
  const int reads = store_->reads();
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 1));
  EXPECT_EQ(store_->reads(), reads);  // served from memory: still cached
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
  EXPECT_EQ(store_->writes(), 4);
  EXPECT_EQ(Stats().dirty_blocks, 0u);
}

TEST_F(CacheTest, RepeatedWritesCostOneUpload) {
  Make(Options(16), false);
  for (uint64_t v = 1; v <= 10; ++v) ASSERT_OK(Put(3, MakeBlock(3, v)));
  EXPECT_EQ(store_->writes(), 0);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->writes(), 1);
  EXPECT_EQ(store_->Durable(3), MakeBlock(3, 10));
}

TEST_F(CacheTest, FlushWithoutThreadsStoresEverything) {
  Make(Options(256), false);
  for (uint64_t id = 0; id < 50; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 50; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
  EXPECT_EQ(store_->flushes(), 1);
}

TEST_F(CacheTest, FlushWaitsForEveryEarlierWriteAndForUploadsInFlight) {
  CacheOptions o = Options(256);
  o.max_dirty_age = 0;  // upload at once
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(1, MakeBlock(1, 1)));
  store_->WaitBlockedWrites(1);  // block 1's upload is in flight, held at the gate
  for (uint64_t id = 2; id < 40; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  std::atomic<bool> done{false};
  Status flush_status;
  std::thread flusher([&] {
    flush_status = cache_->Flush(kExport);
    done = true;
  });
  WaitUntil([&] { return Stats().flushes_in_progress == 1 || done; });  // the flush has begun
  // It cannot finish while an upload it needs is held.
  EXPECT_FALSE(done.load());
  EXPECT_EQ(store_->flushes(), 0);
  store_->GateWrites(false);
  flusher.join();
  ASSERT_OK(flush_status);
  EXPECT_EQ(store_->flushes(), 1);
  EXPECT_EQ(store_->uploads_in_flight_at_flush(), std::vector<int>{0});
  for (uint64_t id = 1; id < 40; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1)) << id;
}

TEST_F(CacheTest, FlushWaitsForUploadsThatWereInFlightWhenItBegan) {
  CacheOptions o = Options(256);
  o.max_dirty_age = 0;
  o.upload_threads = 4;
  Make(o, true);
  store_->GateWrites(true);
  for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  store_->WaitBlockedWrites(4);  // every dirty block is being uploaded: nothing left to start
  std::atomic<bool> done{false};
  Status flush_status;
  std::thread flusher([&] {
    flush_status = cache_->Flush(kExport);
    done = true;
  });
  WaitUntil([&] { return Stats().flushes_in_progress == 1 || done; });
  EXPECT_FALSE(done.load());
  EXPECT_EQ(store_->flushes(), 0);
  store_->GateWrites(false);
  flusher.join();
  ASSERT_OK(flush_status);
  EXPECT_EQ(store_->uploads_in_flight_at_flush(), std::vector<int>{0});
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
}

TEST_F(CacheTest, FlushUploadsInParallel) {
  CacheOptions o = Options(256);
  o.upload_threads = 8;
  Make(o, true);
  store_->GateWrites(true);
  for (uint64_t id = 0; id < 32; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  std::thread flusher([&] { EXPECT_OK(cache_->Flush(kExport)); });
  // The eight uploaders and the flushing thread each hold one upload at the gate at once.
  store_->WaitBlockedWrites(9);
  store_->GateWrites(false);
  flusher.join();
  for (uint64_t id = 0; id < 32; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
}

TEST_F(CacheTest, FuaWriteIsStoredBeforeItReturns) {
  Make(Options(16), false);
  ASSERT_OK(Put(1, MakeBlock(1, 1), /*fua=*/true));
  EXPECT_EQ(store_->Durable(1), MakeBlock(1, 1));
  EXPECT_EQ(store_->fua_writes(), 1);
  ASSERT_OK(Put(2, MakeBlock(2, 1)));
  EXPECT_EQ(store_->Current(2), std::nullopt);  // not fua: still only in the cache
  ASSERT_OK(Del(1, /*fua=*/true));
  EXPECT_EQ(store_->Durable(1), std::nullopt);
  // A dirty block written again with fua: the fua content is what lands.
  ASSERT_OK(Put(2, MakeBlock(2, 2), /*fua=*/true));
  EXPECT_EQ(store_->Durable(2), MakeBlock(2, 2));
  EXPECT_EQ(Stats().dirty_blocks, 0u);
}

TEST_F(CacheTest, FuaWriteWaitsForAnUploadOfTheSameBlockInFlight) {
  CacheOptions o = Options(16);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(5, MakeBlock(5, 1)));
  store_->WaitBlockedWrites(1);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    EXPECT_OK(Put(5, MakeBlock(5, 2), /*fua=*/true));
    done = true;
  });
  // It must not overtake the older upload: it waits in the cache (the older upload is held)
  // rather than reach the store beside it.
  WaitUntil([&] { return Stats().ordered_waits == 1 || store_->blocked_writes() > 1 || done; });
  EXPECT_EQ(store_->blocked_writes(), 1);
  EXPECT_FALSE(done.load());
  store_->GateWrites(false);
  writer.join();
  EXPECT_EQ(store_->Durable(5), MakeBlock(5, 2));
  EXPECT_EQ(store_->Current(5), MakeBlock(5, 2));
  std::vector<TestStore::Op> writes;
  for (auto op : store_->Log())
    if (op.kind == 'W') writes.push_back(op);
  ASSERT_EQ(writes.size(), 2u);
  EXPECT_FALSE(writes[0].fua);
  EXPECT_TRUE(writes[1].fua);
}

TEST_F(CacheTest, ZeroBlocksAreDeletedNotUploaded) {
  Make(Options(16), false);
  ASSERT_OK(Put(5, MakeBlock(5, 1)));
  ASSERT_OK(cache_->Flush(kExport));
  ASSERT_EQ(store_->Durable(5), MakeBlock(5, 1));
  const Bytes zeros(kBs, 0);
  ASSERT_OK(Put(5, zeros));
  EXPECT_EQ(Get(5), std::nullopt);  // reads as not stored: zeros
  EXPECT_EQ(List(), std::set<uint64_t>{});
  ASSERT_OK(Put(6, zeros));  // never stored
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(5), std::nullopt);
  EXPECT_EQ(store_->Durable(6), std::nullopt);
  EXPECT_EQ(store_->zero_writes(), 0);
  EXPECT_EQ(store_->writes(), 1);
  const int deletes = store_->deletes();
  EXPECT_GE(deletes, 1);
  ASSERT_OK(Put(5, zeros));  // known not stored now: costs nothing
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->deletes(), deletes);
  EXPECT_EQ(Stats().zero_writes, 3u);
}

TEST_F(CacheTest, WriterBlocksAtTheDirtyLimitUntilUploadsComplete) {
  // Dirty data that no upload has taken is held to 2 blocks, uploads in flight to half the
  // budget of 8 blocks: a writer waits once 6 blocks are dirty and no upload can complete.
  Make(Options(8, 2), true);
  store_->GateWrites(true);
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (uint64_t id = 0; id < 10; ++id) {
      EXPECT_OK(Put(id, MakeBlock(id, 1)));
      ++written;
    }
  });
  store_->WaitBlockedWrites(4);  // as many uploads in flight as the limit allows, held
  // Six writes return, and the seventh waits: the writer's count of six can be seen before it
  // has begun the seventh, so wait for the wait itself.
  WaitUntil([&] { return written.load() >= 6 && Stats().writer_waits > 0; });
  CacheStats s = Stats();
  EXPECT_EQ(written.load(), 6);  // no upload can complete, so there is no room for a 7th
  EXPECT_EQ(s.dirty_blocks, 6u);
  EXPECT_EQ(s.uploads_in_flight, 4u);
  EXPECT_GT(s.writer_waits, 0u);
  EXPECT_EQ(store_->blocked_writes(), 4);
  store_->GateWrites(false);
  writer.join();
  EXPECT_EQ(written.load(), 10);
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 10; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
}

TEST_F(CacheTest, WriterWithoutThreadsMakesRoomItself) {
  Make(Options(64, 2), false);
  for (uint64_t id = 0; id < 10; ++id) {
    ASSERT_OK(Put(id, MakeBlock(id, 1)));
    EXPECT_LE(Stats().dirty_bytes, 2 * kCost);
  }
  EXPECT_GE(store_->writes(), 8);
}

TEST_F(CacheTest, FailedUploadsKeepBlocksDirtyAndFlushReportsThem) {
  Make(Options(64), false);
  for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  store_->FailWrites(true);
  Status s = cache_->Flush(kExport);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("injected write failure"), std::string::npos) << s.message();
  EXPECT_EQ(store_->flushes(), 0);
  CacheStats st = Stats();
  EXPECT_GE(st.upload_failures, 1u);
  EXPECT_EQ(st.dirty_blocks, 4u);
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 1));  // nothing lost
  EXPECT_FALSE(cache_->Flush(kExport).ok());  // still failing
  store_->FailWrites(false);
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
  EXPECT_EQ(Stats().dirty_blocks, 0u);
  EXPECT_GE(Stats().upload_retries, 1u);
}

TEST_F(CacheTest, FailedBackgroundUploadsAreRetriedAndFlushFailsUntilTheStoreRecovers) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->FailWrites(true);
  for (uint64_t id = 0; id < 8; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  ASSERT_OK(Del(100));
  WaitUntil([&] { return Stats().upload_failures >= 2; });  // the uploaders met the failure
  Status s = cache_->Flush(kExport);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_EQ(Stats().dirty_blocks, 9u);
  for (uint64_t id = 0; id < 8; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 1));
  store_->FailWrites(false);
  // An upload that was already in flight may still fail, and a flush that began meanwhile would
  // rightly report it; every upload that starts from now on succeeds.
  WaitUntil([&] { return Stats().uploads_in_flight == 0; });
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 8; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
  EXPECT_EQ(Stats().dirty_blocks, 0u);
}

TEST_F(CacheTest, WaitingWriterGetsTheUploadError) {
  Make(Options(64, 2), true);
  store_->FailWrites(true);
  // Writers go on while uploads take what they wrote; once failed uploads have filled the
  // dirty limit, a writer that waits for room gets their error rather than wait for ever.
  Status s;
  uint64_t id = 0;
  for (; id < 16 && s.ok(); ++id) s = Put(id, MakeBlock(id, 1));
  ASSERT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("injected"), std::string::npos) << s.message();
  const uint64_t refused = id - 1;
  EXPECT_GE(refused, 2u);
  store_->FailWrites(false);
  WaitUntil([&] { return Stats().uploads_in_flight == 0; });  // as above
  ASSERT_OK(Put(refused, MakeBlock(refused, 1)));
  ASSERT_OK(cache_->Flush(kExport));
  // Nothing acknowledged was lost.
  for (uint64_t i = 0; i <= refused; ++i) EXPECT_EQ(store_->Durable(i), MakeBlock(i, 1)) << i;
}

TEST_F(CacheTest, DeleteIsNotOvertakenByAnUploadInFlight) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(7, MakeBlock(7, 1)));
  store_->WaitBlockedWrites(1);  // its upload is in flight
  ASSERT_OK(Del(7));
  EXPECT_EQ(Get(7), std::nullopt);
  EXPECT_EQ(List(), std::set<uint64_t>{});
  store_->GateWrites(false);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Current(7), std::nullopt);
  EXPECT_EQ(store_->Durable(7), std::nullopt);
  std::vector<char> kinds;
  for (auto op : store_->Log())
    if (op.id == 7 && op.kind != 'R') kinds.push_back(op.kind);
  EXPECT_EQ(kinds, (std::vector<char>{'W', 'D'}));
  EXPECT_EQ(Get(7), std::nullopt);
}

TEST_F(CacheTest, FuaDeleteWaitsForAnUploadInFlight) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(8, MakeBlock(8, 1)));
  store_->WaitBlockedWrites(1);
  std::atomic<bool> done{false};
  std::thread deleter([&] {
    EXPECT_OK(Del(8, /*fua=*/true));
    done = true;
  });
  WaitUntil([&] { return Stats().ordered_waits == 1 || store_->blocked_writes() > 1 || done; });
  EXPECT_EQ(store_->blocked_writes(), 1);
  EXPECT_FALSE(done.load());
  store_->GateWrites(false);
  deleter.join();
  EXPECT_EQ(store_->Current(8), std::nullopt);
  EXPECT_EQ(store_->Durable(8), std::nullopt);
}

TEST_F(CacheTest, RewriteDuringUploadStoresTheNewerContent) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(9, MakeBlock(9, 1)));
  store_->WaitBlockedWrites(1);
  ASSERT_OK(Put(9, MakeBlock(9, 2)));
  std::thread flusher([&] { EXPECT_OK(cache_->Flush(kExport)); });
  WaitUntil([&] { return Stats().flushes_in_progress == 1; });
  store_->GateWrites(false);
  flusher.join();
  EXPECT_EQ(store_->Durable(9), MakeBlock(9, 2));
  EXPECT_EQ(Get(9), MakeBlock(9, 2));
}

TEST_F(CacheTest, ContentWrittenOverDuringItsUploadIsChargedUntilTheUploadEnds) {
  CacheOptions o = Options(4);
  o.max_dirty_age = 0;
  Make(o, true);
  for (uint64_t id : {0, 4, 8}) {  // apart: no read-ahead
    store_->Put(id, MakeBlock(id, 0));
    Get(id);
  }
  store_->GateWrites(true);
  ASSERT_OK(Put(12, MakeBlock(12, 1)));  // the cache is full: three clean blocks and this one
  store_->WaitBlockedWrites(1);
  EXPECT_EQ(Stats().evictions, 0u);
  // The upload still holds version 1 while version 2 replaces it in the cache: both are in
  // memory, so a clean block makes room for the one held.
  ASSERT_OK(Put(12, MakeBlock(12, 2)));
  CacheStats s = Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.cached_bytes, 3 * kCost);
  store_->GateWrites(false);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(12), MakeBlock(12, 2));
  // Once the upload has let version 1 go, the cache has its whole budget again.
  store_->Put(20, MakeBlock(20, 0));
  EXPECT_EQ(Get(20), MakeBlock(20, 0));
  s = Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.cached_bytes, 4 * kCost);
}

TEST_F(CacheTest, ConcurrentMissesShareOneFetch) {
  Make(Options(16), false);
  store_->Put(3, MakeBlock(3, 0));
  store_->GateReads(true);
  std::optional<Bytes> a, b;
  std::thread ta([&] { a = Get(3); });
  store_->WaitBlockedReads(1);
  std::thread tb([&] { b = Get(3); });
  WaitUntil([&] { return Stats().coalesced == 1; });
  store_->GateReads(false);
  ta.join();
  tb.join();
  EXPECT_EQ(a, MakeBlock(3, 0));
  EXPECT_EQ(b, MakeBlock(3, 0));
  EXPECT_EQ(store_->reads(), 1);
}

TEST_F(CacheTest, BlockBeingFetchedIsChargedToTheBudgetBeforeItArrives) {
  Make(Options(4), false);
  for (uint64_t id = 0; id < 5; ++id) store_->Put(id, MakeBlock(id, 0));
  for (uint64_t id = 0; id < 4; ++id) Get(id);  // the cache is full
  EXPECT_EQ(Stats().evictions, 0u);
  store_->GateReads(true);
  std::thread reader([&] { EXPECT_EQ(Get(4), MakeBlock(4, 0)); });
  store_->WaitBlockedReads(1);
  // While block 4 is on its way, room has been made for it: memory stays within the budget.
  CacheStats s = Stats();
  EXPECT_EQ(s.fetches_in_flight, 1u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.cached_bytes, 3 * kCost);
  store_->GateReads(false);
  reader.join();
  s = Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.cached_bytes, 4 * kCost);
  EXPECT_EQ(Get(0), MakeBlock(0, 0));  // block 0, the oldest, was the one evicted
  EXPECT_EQ(store_->reads(), 6);
}

TEST_F(CacheTest, FailedFetchIsAnErrorNotZeros) {
  Make(Options(16), false);
  store_->Put(3, MakeBlock(3, 0));
  store_->FailReads(true);
  Bytes b;
  bool found = true;
  Status s = cache_->Read(kExport, 3, &b, &found);
  EXPECT_EQ(s.err(), EIO);
  store_->FailReads(false);
  EXPECT_EQ(Get(3), MakeBlock(3, 0));
}

TEST_F(CacheTest, SequentialReadsAreReadAhead) {
  CacheOptions o = Options(1024);
  o.readahead_max = 32;
  Make(o, true);
  for (uint64_t id = 0; id < 200; ++id) store_->Put(id, MakeBlock(id, 0));
  for (uint64_t id = 0; id < 200; ++id) ASSERT_EQ(Get(id), MakeBlock(id, 0)) << id;
  CacheStats s = Stats();
  // The first two reads miss; from then on the reader finds each block fetched or on its way.
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.hits, 198u);
  EXPECT_GE(s.readahead_blocks, 198u);
  EXPECT_EQ(s.readahead_hits, 198u);
  EXPECT_LE(s.store_reads, 200u + o.readahead_max);
}

// A reader waiting for a block that read-ahead has queued but not yet fetched goes on as soon as
// a write supersedes that fetch: with the only fetcher held and uploads held, nothing else would
// ever wake it.
TEST_F(CacheTest, WriteOverAQueuedReadAheadWakesItsReader) {
  CacheOptions o = Options(64);
  o.read_threads = 1;
  o.readahead_max = 8;
  Make(o, true);
  for (uint64_t id = 0; id < 16; ++id) store_->Put(id, MakeBlock(id, 0));
  ASSERT_EQ(Get(0), MakeBlock(0, 0));
  store_->GateReads(true);
  store_->GateWrites(true);
  // The second read of a run queues read-ahead of the next blocks; the one fetcher takes the
  // first of them and is held, with the reader's own fetch of block 1.
  auto first = std::async(std::launch::async, [&] { return Get(1); });
  store_->WaitBlockedReads(2);
  auto reader = std::async(std::launch::async, [&] { return Get(4); });
  while (Stats().coalesced == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_OK(Put(4, MakeBlock(4, 7)));
  const bool woke = reader.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  EXPECT_TRUE(woke) << "the reader still waits for a fetch that will never run";
  store_->GateReads(false);
  store_->GateWrites(false);
  ASSERT_OK(cache_->Flush(kExport));  // an upload's end wakes every waiter: the test ends either way
  EXPECT_EQ(reader.get(), MakeBlock(4, 7));
  EXPECT_EQ(first.get(), MakeBlock(1, 0));
}

TEST_F(CacheTest, ListBlocksSeesDirtyData) {
  Make(Options(16), false);
  store_->Put(1, MakeBlock(1, 0));
  store_->Put(2, MakeBlock(2, 0));
  ASSERT_OK(Put(3, MakeBlock(3, 1)));
  ASSERT_OK(Put(1, MakeBlock(1, 1)));
  ASSERT_OK(Del(2));
  EXPECT_EQ(List(), (std::set<uint64_t>{1, 3}));
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(List(), (std::set<uint64_t>{1, 3}));
  EXPECT_EQ(store_->CurrentIds(), (std::set<uint64_t>{1, 3}));
}

TEST_F(CacheTest, ShutdownStoresDirtyData) {
  Make(Options(16), true);
  ASSERT_OK(Put(1, MakeBlock(1, 1)));
  ASSERT_OK(Del(2));
  store_->Put(2, MakeBlock(2, 0));  // (stored behind the cache's back before the delete lands)
  cache_.reset();  // the destructor flushes
  EXPECT_EQ(store_->Durable(1), MakeBlock(1, 1));
  EXPECT_EQ(store_->Durable(2), std::nullopt);
}

TEST_F(CacheTest, ExportsHaveSeparateCaches) {
  Make(Options(16), true);
  ASSERT_OK(cache_->Write("a", 1, MakeBlock(1, 1), false));
  ASSERT_OK(cache_->Write("b", 1, MakeBlock(1, 2), false));
  Bytes d;
  bool found = false;
  ASSERT_OK(cache_->Read("a", 1, &d, &found));
  EXPECT_EQ(d, MakeBlock(1, 1));
  ASSERT_OK(cache_->Read("b", 1, &d, &found));
  EXPECT_EQ(d, MakeBlock(1, 2));
  ASSERT_OK(cache_->Flush("a"));
  auto all = cache_->AllStats();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, "a");
  EXPECT_EQ(all[0].second.dirty_blocks, 0u);
  EXPECT_EQ(all[1].second.dirty_blocks, 1u);
  EXPECT_NE(CacheStatsToString(all[1].second).find("dirty_blocks=1"), std::string::npos);
}

// Eight threads read, write, zero, delete and flush blocks while the cache is small enough to
// evict and upload all the time. Each thread owns a range of blocks and keeps a model of them;
// every read of its own blocks must match its model, every read of another's must be a block
// that was written, and at the end the store must hold exactly the model.
// --- Writes of part of a block ---

// `n` bytes of `fill` at `off` of block `b`.
Bytes Patched(Bytes b, uint32_t off, uint32_t n, uint8_t fill) {
  std::fill(b.begin() + off, b.begin() + off + n, fill);
  return b;
}

class PartialWriteTest : public CacheTest {
 protected:
  Status PutPart(uint64_t id, uint32_t off, uint32_t n, uint8_t fill, bool base_zero = false,
                 bool fua = false) {
    Bytes part(n, fill);
    return WriteRangeOf(kBs, id, off, part, base_zero, fua);
  }
  // Bytes [off, off + n) of block id through ReadRange; nullopt if not found.
  std::optional<Bytes> GetPart(uint64_t id, uint32_t off, uint32_t n) {
    Bytes out(n, 0xee);
    bool found = false;
    Status s = Dev(kBs)->ReadRange(id, off, out, ReadIntent::kRead, &found);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!found) return std::nullopt;
    return out;
  }
};

TEST_F(PartialWriteTest, KeepsTheBytesWrittenAndReadsTheRestOnlyToStoreTheBlock) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  ASSERT_OK(PutPart(5, 512, 1024, 0xab));
  ASSERT_OK(PutPart(5, 3072, 512, 0xcd));
  EXPECT_EQ(store_->reads(), 0);
  // Bytes that were all written are read from memory.
  EXPECT_EQ(GetPart(5, 1024, 512), Bytes(512, 0xab));
  EXPECT_EQ(store_->reads(), 0);
  EXPECT_EQ(List(), (std::set<uint64_t>{5}));
  CacheStats s = Stats();
  EXPECT_EQ(s.partial_writes, 2u);
  EXPECT_EQ(s.dirty_blocks, 1u);
  // Storing it reads the block once and merges.
  ASSERT_OK(cache_->Flush(kExport));
  const Bytes want = Patched(Patched(MakeBlock(5, 1), 512, 1024, 0xab), 3072, 512, 0xcd);
  EXPECT_EQ(store_->Durable(5), want);
  EXPECT_EQ(store_->reads(), 1);
  EXPECT_EQ(Stats().partial_reads, 1u);
  EXPECT_EQ(Get(5), want);  // now a whole block in memory
  EXPECT_EQ(store_->reads(), 1);
}

TEST_F(PartialWriteTest, AReadOfTheRestThatAWriteOvertookDoesNotCompleteALaterOverlay) {
  Make(Options(16), false);
  ASSERT_OK(PutPart(5, 0, 512, 0xab));  // block 5 is not stored: the rest is unknown
  // A reader needs the rest of the block; the store's reply (nothing stored) is slow.
  store_->GateReadReplies(true);
  std::thread reader([&] { (void)GetPart(5, 100, 1000); });
  store_->WaitBlockedReads(1);
  // Meanwhile the block is written whole and stored, then written in part again: the new parts
  // lie over the content stored, which the cache holds.
  ASSERT_OK(Put(5, MakeBlock(5, 1), /*fua=*/true));
  ASSERT_OK(PutPart(5, 1024, 512, 0xcd));
  store_->GateReadReplies(false);
  reader.join();
  const Bytes want = Patched(MakeBlock(5, 1), 1024, 512, 0xcd);
  EXPECT_EQ(GetPart(5, 0, kBs), want);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(5), want);
}

TEST_F(PartialWriteTest, OnlyThePagesWrittenAreCharged) {
  Make(Options(64), false);
  constexpr uint32_t kLarge = 64 << 10;
  Bytes part(512, 0x5a);
  ASSERT_OK(WriteRangeOf(kLarge, 1, 0, part, true, false));
  ASSERT_OK(WriteRangeOf(kLarge, 1, 32768, part, true, false));
  CacheStats s = Stats();
  // Two 4 KiB pages and their bookkeeping, not 64 KiB.
  EXPECT_GE(s.dirty_bytes, 2 * 4096 + CacheStore::kEntryOverhead);
  EXPECT_LT(s.dirty_bytes, 3 * 4096u);
  EXPECT_EQ(s.cached_bytes, s.dirty_bytes);
  ASSERT_OK(cache_->Flush(kExport));
  Bytes want(kLarge, 0);
  std::fill(want.begin(), want.begin() + 512, 0x5a);
  std::fill(want.begin() + 32768, want.begin() + 32768 + 512, 0x5a);
  EXPECT_EQ(store_->Durable(1), want);
  // Stored and clean, it is a whole block in memory, charged as one.
  EXPECT_EQ(Stats().cached_bytes, kLarge + CacheStore::kEntryOverhead);
  // Written in part again, it keeps its content beside the new bytes: only they are dirty,
  // and storing it reads nothing.
  ASSERT_OK(WriteRangeOf(kLarge, 1, 4096, part, false, false));
  s = Stats();
  EXPECT_LT(s.dirty_bytes, 2 * 4096u);
  EXPECT_GE(s.cached_bytes, kLarge + s.dirty_bytes);
  Bytes out(kLarge);
  bool found = false;
  ASSERT_OK(Dev(kLarge)->ReadRange(1, 0, out, ReadIntent::kRead, &found));
  std::fill(want.begin() + 4096, want.begin() + 4096 + 512, 0x5a);
  EXPECT_EQ(out, want);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(1), want);
  EXPECT_EQ(store_->reads(), 0);
}

TEST_F(PartialWriteTest, TheContentKeptBesideWrittenPartsMakesRoomWhenNeeded) {
  constexpr uint32_t kBig = 16 << 10;
  constexpr uint64_t kBigCost = kBig + CacheStore::kEntryOverhead;
  CacheOptions o = Options(0);
  o.cache_size = 8 * kBigCost;
  o.dirty_size = 8 * kBigCost;
  Make(o, false);
  auto big = [](uint64_t id) {
    Bytes b(kBig, static_cast<uint8_t>(id + 1));
    std::memcpy(b.data(), &id, 8);
    return b;
  };
  for (uint64_t id = 0; id < 16; ++id) store_->Put(id, big(id));
  Bytes part(512, 0xab);
  Bytes out(kBig);
  bool found = false;
  // Eight clean blocks in memory, each then written in part: dirty, with their content beside.
  for (uint64_t id = 0; id < 8; ++id) {
    ASSERT_OK(Dev(kBig)->ReadRange(id, 0, out, ReadIntent::kRead, &found));
    ASSERT_OK(WriteRangeOf(kBig, id, 0, part, false, false));
  }
  EXPECT_EQ(store_->reads(), 8);
  EXPECT_EQ(Stats().dirty_blocks, 8u);
  // Reading eight more blocks needs the room: the kept contents go, not the written parts.
  for (uint64_t id = 8; id < 16; ++id) {
    ASSERT_OK(Dev(kBig)->ReadRange(id, 0, out, ReadIntent::kRead, &found));
    ASSERT_EQ(out, big(id));
  }
  CacheStats s = Stats();
  EXPECT_LE(s.cached_bytes, 8 * kBigCost);
  EXPECT_EQ(s.dirty_blocks, 8u);
  // What is stored is right, whether a block's content was kept or read again.
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 8; ++id) {
    Bytes want = big(id);
    std::fill(want.begin(), want.begin() + 512, 0xab);
    EXPECT_EQ(store_->Durable(id), want) << id;
  }
  EXPECT_GT(store_->reads(), 16);
  EXPECT_EQ(static_cast<uint64_t>(store_->reads()), 16 + Stats().partial_reads);
}

TEST_F(PartialWriteTest, AReaderOfBytesNotWrittenReadsTheRestOnce) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  ASSERT_OK(PutPart(5, 0, 512, 0xab));
  const Bytes want = Patched(MakeBlock(5, 1), 0, 512, 0xab);
  EXPECT_EQ(GetPart(5, 256, 1024), Bytes(want.begin() + 256, want.begin() + 1280));
  EXPECT_EQ(GetPart(5, 0, kBs), want);
  EXPECT_EQ(store_->reads(), 1);
  EXPECT_EQ(store_->writes(), 0);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(5), want);
  EXPECT_EQ(store_->reads(), 1);
}

TEST_F(PartialWriteTest, ABlockFilledByPartsIsNeverRead) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  // In an order that leaves holes until the last write.
  for (uint32_t off : {1024u, 0u, 3584u, 512u, 2048u, 1536u, 3072u, 2560u})
    ASSERT_OK(PutPart(5, off, 512, static_cast<uint8_t>(off / 512 + 1)));
  ASSERT_OK(cache_->Flush(kExport));
  Bytes want(kBs);
  for (uint32_t i = 0; i < kBs; ++i) want[i] = static_cast<uint8_t>(i / 512 + 1);
  EXPECT_EQ(store_->Durable(5), want);
  EXPECT_EQ(store_->reads(), 0);
  EXPECT_EQ(Stats().partial_reads, 0u);
}

TEST_F(PartialWriteTest, ABlockKnownNotStoredIsNeverRead) {
  Make(Options(16), false);
  ASSERT_OK(PutPart(7, 1024, 512, 0x11, /*base_zero=*/true));
  ASSERT_OK(PutPart(8, 1024, 512, 0, /*base_zero=*/true));  // zeros on zeros: nothing to store
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(7), Patched(Bytes(kBs, 0), 1024, 512, 0x11));
  EXPECT_EQ(store_->Current(8), std::nullopt);
  EXPECT_EQ(store_->reads(), 0);
  EXPECT_EQ(store_->writes(), 1);
}

TEST_F(PartialWriteTest, ABlockThatIsNotStoredReadsAsZerosAroundTheParts) {
  Make(Options(16), false);
  ASSERT_OK(PutPart(7, 1024, 512, 0x11));  // the cache is not told: it reads and finds nothing
  EXPECT_EQ(GetPart(7, 0, kBs), Patched(Bytes(kBs, 0), 1024, 512, 0x11));
  EXPECT_EQ(store_->reads(), 1);
  // A whole block becoming zeros is deleted, not uploaded.
  ASSERT_OK(PutPart(7, 1024, 512, 0));
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Current(7), std::nullopt);
  EXPECT_EQ(store_->writes(), 0);
}

TEST_F(PartialWriteTest, WritesIntoACachedBlockMergeInMemory) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  ASSERT_EQ(Get(5), MakeBlock(5, 1));
  ASSERT_OK(PutPart(5, 512, 512, 0xab));
  ASSERT_OK(PutPart(5, 100, 7, 0xcd));  // not in whole sectors: also merged in memory
  const Bytes want = Patched(Patched(MakeBlock(5, 1), 512, 512, 0xab), 100, 7, 0xcd);
  EXPECT_EQ(Get(5), want);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(5), want);
  EXPECT_EQ(store_->reads(), 1);
  EXPECT_EQ(Stats().partial_reads, 0u);
}

TEST_F(PartialWriteTest, AWriteIntoABlockBeingUploadedNeverChangesWhatIsSent) {
  CacheOptions o = Options(16);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->GateWrites(true);
  ASSERT_OK(Put(5, MakeBlock(5, 1)));
  store_->WaitBlockedWrites(1);  // the upload of version 1 is in flight with its buffer
  ASSERT_OK(PutPart(5, 512, 512, 0xab));
  store_->GateWrites(false);
  ASSERT_OK(cache_->Flush(kExport));
  const Bytes want = Patched(MakeBlock(5, 1), 512, 512, 0xab);
  EXPECT_EQ(store_->WritesOf(5), (std::vector<Bytes>{MakeBlock(5, 1), want}));
  EXPECT_EQ(store_->Durable(5), want);
}

TEST_F(PartialWriteTest, WritesWithFuaOrNotInWholeSectorsReadMergeAndWrite) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  store_->Put(6, MakeBlock(6, 1));
  ASSERT_OK(PutPart(5, 512, 512, 0xab, false, /*fua=*/true));
  EXPECT_EQ(store_->Durable(5), Patched(MakeBlock(5, 1), 512, 512, 0xab));
  EXPECT_EQ(store_->fua_writes(), 1);
  ASSERT_OK(PutPart(6, 100, 7, 0xcd));
  EXPECT_EQ(store_->reads(), 2);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(6), Patched(MakeBlock(6, 1), 100, 7, 0xcd));
  EXPECT_EQ(Stats().partial_writes, 0u);
}

TEST_F(PartialWriteTest, AWholeWriteOrDeleteWhileTheRestIsReadWins) {
  for (bool del : {false, true}) {
    SCOPED_TRACE(del ? "delete" : "write");
    Make(Options(16), true);
    store_->Put(5, MakeBlock(5, 1));
    ASSERT_OK(PutPart(5, 0, 512, 0xab));
    store_->GateReads(true);
    Status flushed;
    std::thread flusher([&] { flushed = cache_->Flush(kExport); });
    store_->WaitBlockedReads(1);  // the flush reads the rest of block 5
    if (del) {
      ASSERT_OK(Del(5));
    } else {
      ASSERT_OK(Put(5, MakeBlock(5, 2)));
    }
    store_->GateReads(false);
    flusher.join();
    ASSERT_OK(flushed);
    ASSERT_OK(cache_->Flush(kExport));
    EXPECT_EQ(store_->Durable(5), del ? std::nullopt : std::optional<Bytes>(MakeBlock(5, 2)));
    EXPECT_EQ(Get(5), del ? std::nullopt : std::optional<Bytes>(MakeBlock(5, 2)));
    EXPECT_EQ(Stats().dirty_blocks, 0u);
  }
}

TEST_F(PartialWriteTest, MorePartsWhileTheRestIsReadAreKept) {
  Make(Options(16), true);
  store_->Put(5, MakeBlock(5, 1));
  ASSERT_OK(PutPart(5, 0, 512, 0xab));
  store_->GateReads(true);
  Status flushed;
  std::thread flusher([&] { flushed = cache_->Flush(kExport); });
  store_->WaitBlockedReads(1);
  ASSERT_OK(PutPart(5, 2048, 512, 0xcd));
  store_->GateReads(false);
  flusher.join();
  ASSERT_OK(flushed);
  ASSERT_OK(cache_->Flush(kExport));
  const Bytes want = Patched(Patched(MakeBlock(5, 1), 0, 512, 0xab), 2048, 512, 0xcd);
  EXPECT_EQ(store_->Durable(5), want);
  EXPECT_EQ(Get(5), want);
  EXPECT_EQ(store_->reads(), 1);
}

TEST_F(PartialWriteTest, AFailedReadOfTheRestFailsTheFlushAndLosesNothing) {
  Make(Options(16), false);
  store_->Put(5, MakeBlock(5, 1));
  ASSERT_OK(PutPart(5, 512, 512, 0xab));
  store_->FailReads(true);
  Status s = cache_->Flush(kExport);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("injected read failure"), std::string::npos) << s.ToString();
  EXPECT_EQ(Stats().dirty_blocks, 1u);
  // A reader of the rest sees the error too, never zeros.
  Bytes out(kBs);
  bool found = false;
  EXPECT_EQ(Dev(kBs)->ReadRange(5, 0, out, ReadIntent::kRead, &found).err(), EIO);
  store_->FailReads(false);
  ASSERT_OK(cache_->Flush(kExport));
  EXPECT_EQ(store_->Durable(5), Patched(MakeBlock(5, 1), 512, 512, 0xab));
}

TEST_F(PartialWriteTest, WritersWaitAtTheDirtyLimitAndUploadersResolve) {
  // Without threads the writer makes room itself: resolving and storing the oldest parts.
  CacheOptions o = Options(8, 2);
  Make(o, false);
  for (uint64_t id = 0; id < 32; ++id) store_->Put(id, MakeBlock(id, 1));
  for (uint64_t id = 0; id < 32; ++id)
    for (uint32_t off = 0; off < 2048; off += 512)
      ASSERT_OK(PutPart(id, off, 512, static_cast<uint8_t>(id + 1)));
  CacheStats s = Stats();
  EXPECT_LE(s.dirty_bytes, 2 * kCost);
  EXPECT_LE(s.cached_bytes, 8 * kCost);
  EXPECT_GT(s.writer_waits, 0u);
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id = 0; id < 32; ++id)
    EXPECT_EQ(store_->Durable(id), Patched(MakeBlock(id, 1), 0, 2048, static_cast<uint8_t>(id + 1)));
  EXPECT_EQ(store_->reads(), 32);
}

TEST_F(PartialWriteTest, ConcurrentPartialWritersAndReadersMatchAModel) {
  CacheOptions o = Options(12, 4);
  o.max_dirty_age = 0.001;
  o.readahead_max = 8;
  Make(o, true);
  constexpr int kThreads = 6;
  constexpr uint64_t kPerThread = 8;
  for (uint64_t id = 0; id < kThreads * kPerThread; id += 2) store_->Put(id, MakeBlock(id, 0));
  std::vector<std::map<uint64_t, Bytes>> models(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  // What went wrong first, so that a failure says which operation disagreed with the model.
  std::mutex first_mu;
  std::string first;
  auto fail = [&](const std::string& what) {
    std::lock_guard<std::mutex> lock(first_mu);
    if (failures++ == 0) first = what;
  };
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(99 + t);
      auto& model = models[t];
      const uint64_t base = t * kPerThread;
      for (uint64_t id = base; id < base + kPerThread; ++id)
        model[id] = id % 2 == 0 ? MakeBlock(id, 0) : Bytes(kBs, 0);
      for (int i = 0; i < 1500; ++i) {
        const uint64_t id = base + rng() % kPerThread;
        const int op = static_cast<int>(rng() % 100);
        Bytes& m = model[id];
        if (op < 45) {  // a part: sectors, or any bytes
          const bool sectors = rng() % 4 != 0;
          const uint32_t unit = sectors ? 512 : 1;
          const uint32_t off = static_cast<uint32_t>(rng() % (kBs / unit)) * unit;
          const uint32_t n = std::max<uint32_t>(
              unit, static_cast<uint32_t>(rng() % ((kBs - off) / unit + 1)) * unit);
          Bytes part(n);
          for (auto& b : part) b = static_cast<uint8_t>(rng());
          std::memcpy(m.data() + off, part.data(), n);
          Status s = WriteRangeOf(kBs, id, off, part, false, rng() % 30 == 0);
          if (!s.ok()) fail("write of part of block " + std::to_string(id) + ": " + s.message());
        } else if (op < 55) {
          m = MakeBlock(id, 100 + i);
          if (Status s = Put(id, m); !s.ok()) fail("write of block " + std::to_string(id) + ": " + s.message());
        } else if (op < 60) {
          m.assign(kBs, 0);
          if (Status s = Del(id); !s.ok()) fail("delete of block " + std::to_string(id) + ": " + s.message());
        } else if (op < 97) {
          const uint32_t off = static_cast<uint32_t>(rng() % kBs);
          const uint32_t n = 1 + static_cast<uint32_t>(rng() % (kBs - off));
          Bytes out(n);
          bool found = false;
          Status s = Dev(kBs)->ReadRange(id, off, out, ReadIntent::kRead, &found);
          if (!s.ok()) fail("read of block " + std::to_string(id) + ": " + s.message());
          if (!found) std::fill(out.begin(), out.end(), 0);
          if (!std::equal(out.begin(), out.end(), m.begin() + off))
            fail("read of block " + std::to_string(id) + " bytes " + std::to_string(off) + "+" +
                 std::to_string(n) + (found ? "" : " (not found)") + ": not what was written");
        } else {
          if (Status s = cache_->Flush(kExport); !s.ok()) fail("flush: " + s.message());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0) << "the first: " << first;
  ASSERT_OK(cache_->Flush(kExport));
  for (int t = 0; t < kThreads; ++t) {
    for (const auto& [id, m] : models[t]) {
      const bool zero = IsAllZero(m.data(), m.size());
      EXPECT_EQ(store_->Durable(id), zero ? std::nullopt : std::optional<Bytes>(m)) << id;
    }
  }
  CacheStats s = Stats();
  EXPECT_EQ(s.dirty_blocks, 0u);
  EXPECT_GT(s.partial_writes, 0u);
  EXPECT_GT(s.partial_reads, 0u);
  EXPECT_LE(s.cached_bytes, 12 * kCost);
}

TEST_F(CacheTest, ConcurrentReadersAndWritersMatchAModel) {
  CacheOptions o = Options(24, 8);
  o.max_dirty_age = 0.001;
  o.readahead_max = 8;
  Make(o, true);
  constexpr int kThreads = 8;
  constexpr uint64_t kPerThread = 12;
  constexpr int kOps = 1500;
  std::vector<std::map<uint64_t, uint64_t>> models(kThreads);  // id -> version (absent: none)
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      auto& model = models[t];
      const uint64_t base = t * kPerThread;
      uint64_t version = 0;
      for (int i = 0; i < kOps; ++i) {
        const uint64_t id = base + rng() % kPerThread;
        const int op = static_cast<int>(rng() % 100);
        Bytes b;
        bool found = false;
        if (op < 35) {
          model[id] = ++version;
          if (!Put(id, MakeBlock(id, version), rng() % 20 == 0).ok()) ++failures;
        } else if (op < 40) {
          model.erase(id);
          if (!Put(id, Bytes(kBs, 0)).ok()) ++failures;
        } else if (op < 45) {
          model.erase(id);
          if (!Del(id, rng() % 10 == 0).ok()) ++failures;
        } else if (op < 75) {
          if (!cache_->Read(kExport, id, &b, &found).ok()) ++failures;
          auto it = model.find(id);
          if (it == model.end() ? found : (!found || b != MakeBlock(id, it->second))) ++failures;
        } else if (op < 85) {  // a sequential run over own blocks
          for (uint64_t x = base; x < base + kPerThread; ++x) {
            if (!cache_->Read(kExport, x, &b, &found).ok()) ++failures;
            auto it = model.find(x);
            if (it == model.end() ? found : (!found || b != MakeBlock(x, it->second))) ++failures;
          }
        } else if (op < 98) {  // someone else's block: any version, but well formed
          const uint64_t other = rng() % (kThreads * kPerThread);
          if (!cache_->Read(kExport, other, &b, &found).ok()) ++failures;
          if (found) {
            uint64_t got;
            std::memcpy(&got, b.data(), 8);
            uint64_t v;
            std::memcpy(&v, b.data() + 8, 8);
            if (got != other || b != MakeBlock(other, v)) ++failures;
          }
        } else {
          if (!cache_->Flush(kExport).ok()) ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_OK(cache_->Flush(kExport));
  std::set<uint64_t> expected;
  for (int t = 0; t < kThreads; ++t) {
    for (auto [id, v] : models[t]) {
      expected.insert(id);
      EXPECT_EQ(store_->Durable(id), MakeBlock(id, v)) << id;
    }
  }
  EXPECT_EQ(store_->CurrentIds(), expected);
  EXPECT_EQ(List(), expected);
  CacheStats s = Stats();
  EXPECT_EQ(s.dirty_blocks, 0u);
  EXPECT_GT(s.evictions, 0u);
  EXPECT_LE(s.cached_bytes, 24 * kCost);
}

// Random 4 KiB requests into large blocks, as a file system or a database does, through a Volume
// over the cache: 64 blocks of 256 KiB stored, a cache of 16 of them.
class RandomRequestsTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kBig = 256 << 10;
  static constexpr uint64_t kBlocks = 64;

  void SetUp() override {
    store_ = std::make_shared<TestStore>();
    // Every block stored, and recorded in the metadata, before the cache sees anything.
    std::shared_ptr<Volume> plain;
    VolumeOptions vo;
    vo.size = kBlocks * kBig;
    vo.block_size = kBig;
    vo.lock = false;
    ASSERT_OK(Volume::Open(store_, kExport, vo, &plain));
    Bytes block(kBig);
    for (uint64_t id = 0; id < kBlocks; ++id) {
      for (size_t i = 0; i < kBig; ++i) block[i] = static_cast<uint8_t>(id * 7 + i % 251 + 1);
      ASSERT_OK(plain->Write(block.data(), kBig, id * kBig, false));
    }
    CacheOptions o;
    o.cache_size = 16 * (kBig + CacheStore::kEntryOverhead);
    o.upload_threads = 4;
    o.read_threads = 4;
    o.readahead_max = 32;
    o.max_dirty_age = 3600;
    cache_ = std::make_shared<CacheStore>(store_, o);
    ASSERT_OK(cache_->Start());
    vo.lock = true;
    ASSERT_OK(Volume::Open(cache_, kExport, vo, &volume_));
    reads_before_ = store_->reads();
    writes_before_ = store_->writes();
  }
  void TearDown() override {
    volume_.reset();
    if (cache_) EXPECT_OK(cache_->Shutdown());
  }
  CacheStats Stats() {
    CacheStats s;
    EXPECT_TRUE(cache_->GetStats(kExport, &s));
    return s;
  }
  // A 4 KiB-aligned offset anywhere in the export.
  static uint64_t RandomOffset(std::mt19937_64& rng) {
    return (rng() % (kBlocks * kBig / 4096)) * 4096;
  }

  std::shared_ptr<TestStore> store_;
  std::shared_ptr<CacheStore> cache_;
  std::shared_ptr<Volume> volume_;
  int reads_before_ = 0, writes_before_ = 0;
};

TEST_F(RandomRequestsTest, RandomReadCostsAtMostOneStoreReadOfAnUncachedBlock) {
  std::mt19937_64 rng(42);
  Bytes buf(4096);
  for (int i = 0; i < 3000; ++i) {
    const uint64_t off = RandomOffset(rng);
    ASSERT_OK(volume_->Read(buf.data(), buf.size(), off));
    ASSERT_EQ(buf[0], static_cast<uint8_t>((off / kBig) * 7 + (off % kBig) % 251 + 1)) << off;
  }
  ASSERT_OK(cache_->Shutdown());  // waits for read-ahead still in flight
  CacheStats s = Stats();
  // Nothing was read ahead: random reads landing in the same or a neighbouring block are not
  // a sequential reader, and each store read is the fetch of a block a read missed.
  EXPECT_EQ(s.readahead_blocks, 0u);
  EXPECT_EQ(static_cast<uint64_t>(store_->reads() - reads_before_), s.misses);
  EXPECT_EQ(s.hits + s.misses, 3000u);
}

TEST_F(RandomRequestsTest, SequentialReaderIn4KiBRequestsIsStillReadAhead) {
  Bytes buf(4096);
  for (uint64_t off = 0; off < 32 * kBig; off += buf.size()) {
    ASSERT_OK(volume_->Read(buf.data(), buf.size(), off));
    ASSERT_EQ(buf[0], static_cast<uint8_t>((off / kBig) * 7 + (off % kBig) % 251 + 1)) << off;
  }
  ASSERT_OK(cache_->Shutdown());
  CacheStats s = Stats();
  // Block 0 is read whole, then the reader enters block 1: from there on every block it reaches
  // has been fetched ahead of it, or is on its way.
  EXPECT_EQ(s.misses, 2u);
  EXPECT_GE(s.readahead_blocks, 30u);
  EXPECT_EQ(s.readahead_hits, 30u);
  EXPECT_EQ(static_cast<uint64_t>(store_->reads() - reads_before_),
            s.misses + s.readahead_blocks);
}

TEST_F(RandomRequestsTest, RandomWriteCostsAtMostOneStoreReadAndOneUploadPerBlockTouched) {
  std::mt19937_64 rng(7);
  Bytes buf(4096, 0x5a);
  for (int i = 0; i < 3000; ++i) {
    ASSERT_OK(volume_->Write(buf.data(), buf.size(), RandomOffset(rng), false));
    if (i % 500 == 499) ASSERT_OK(volume_->Flush());
  }
  ASSERT_OK(volume_->Flush());
  ASSERT_OK(cache_->Shutdown());
  CacheStats s = Stats();
  // Writes into blocks not in memory keep just their bytes: nothing is read ahead, no write
  // reads its block, and a block is read only to store it, once per upload at most.
  EXPECT_EQ(s.readahead_blocks, 0u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_GT(s.partial_writes, 0u);
  EXPECT_EQ(static_cast<uint64_t>(store_->reads() - reads_before_), s.partial_reads);
  EXPECT_LE(s.partial_reads, s.store_writes);
  // Every upload stores a block that writes made dirty since its last upload.
  EXPECT_LE(static_cast<uint64_t>(store_->writes() - writes_before_), 3000u);
  EXPECT_EQ(s.store_writes, static_cast<uint64_t>(store_->writes() - writes_before_));
  // And what was written is what the store holds.
  std::mt19937_64 again(7);
  std::set<uint64_t> written;
  for (int i = 0; i < 3000; ++i) written.insert(RandomOffset(again));
  Bytes back(4096);
  for (uint64_t off : written) {
    ASSERT_OK(volume_->Read(back.data(), back.size(), off));
    ASSERT_EQ(back, buf) << off;
  }
}

// The whole path: a Volume over the cache over a FileStore, then the same directory without the
// cache sees what was flushed.
TEST(CacheVolume, RoundTripThroughAFileStore) {
  testing::TempDir dir;
  const uint64_t size = 64 * kBs;
  Bytes pattern(size);
  for (size_t i = 0; i < size; ++i) pattern[i] = static_cast<uint8_t>(i * 13 + 5);
  {
    auto file = std::make_shared<FileStore>(dir.path());
    ASSERT_OK(file->Check());
    auto cache = std::make_shared<CacheStore>(file, Options(16, 4));
    ASSERT_OK(cache->Start());
    VolumeOptions vo;
    vo.size = size;
    std::shared_ptr<Volume> v;
    ASSERT_OK(Volume::Open(cache, "vol", vo, &v));
    ASSERT_OK(v->Write(pattern.data(), size, 0, false));
    ASSERT_OK(v->Write(pattern.data(), 100, 5000, false));  // a partial, unaligned write
    std::memcpy(pattern.data() + 5000, pattern.data(), 100);
    ASSERT_OK(v->Trim(8 * kBs, 16 * kBs, false));
    std::memset(pattern.data() + 16 * kBs, 0, 8 * kBs);
    Bytes back(size);
    ASSERT_OK(v->Read(back.data(), size, 0));
    EXPECT_EQ(back, pattern);
    ASSERT_OK(v->Flush());
  }
  auto file = std::make_shared<FileStore>(dir.path());
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(file, "vol", VolumeOptions{}, &v));
  Bytes back(size);
  ASSERT_OK(v->Read(back.data(), size, 0));
  EXPECT_EQ(back, pattern);
  EXPECT_EQ(v->StoredBlocks(), 64u - 8u);
}

// --- Shared pools, failed uploads and closing an export ---

// Threads of this process now.
int ProcessThreads() {
  int n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    ++n;
  return n;
}

TEST(CacheOptionsTest, ReadThreadsComeFromTheConfiguration) {
  Config c;
  ASSERT_OK(c.Set("read-threads", "7"));
  EXPECT_EQ(CacheOptionsFor(c).read_threads, 7u);
  ASSERT_OK(c.Set("read-threads", "1024"));
  EXPECT_EQ(CacheOptionsFor(c).read_threads, 1024u);
  EXPECT_EQ(c.Set("read-threads", "0").err(), EINVAL);
  EXPECT_EQ(c.Set("read-threads", "1025").err(), EINVAL);
  EXPECT_EQ(CacheOptionsFor(Config{}).read_threads, 32u);
}

TEST_F(CacheTest, ThreadsDoNotGrowWithExports) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  const int before = ProcessThreads();
  Make(o, true);
  for (int i = 0; i < 200; ++i) {
    const std::string name = "e" + std::to_string(i);
    for (uint64_t id = 0; id < 4; ++id) store_->PutIn(name, 100 + id, MakeBlock(100 + id, i));
    // Every export both uploads and reads ahead.
    for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(cache_->Write(name, id, MakeBlock(id, i), false));
    for (uint64_t id = 100; id < 104; ++id) {
      Bytes d;
      bool found = false;
      ASSERT_OK(cache_->Read(name, id, &d, &found));
      ASSERT_EQ(d, MakeBlock(id, i));
    }
    ASSERT_OK(cache_->Flush(name));
  }
  uint64_t readahead = 0;
  for (const auto& [name, st] : cache_->AllStats()) readahead += st.readahead_blocks;
  EXPECT_GT(readahead, 0u);
  // The two pools, and at most a couple of threads of the test framework's own.
  EXPECT_LE(ProcessThreads() - before, int(o.upload_threads + o.read_threads) + 2);
  for (int i = 0; i < 200; ++i)
    for (uint64_t id = 0; id < 4; ++id)
      ASSERT_EQ(store_->DurableIn("e" + std::to_string(i), id), MakeBlock(id, i));
}

TEST_F(CacheTest, AFlushAfterTheStoreRecoversTriesAgainAnUploadThatFailedInFlight) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  Make(o, true);
  store_->FailNextWrites(1);  // the upload in flight meets the outage
  store_->GateWrites(true);
  ASSERT_OK(Put(1, MakeBlock(1, 1)));
  store_->WaitBlockedWrites(1);
  Status flush_status;
  std::thread flusher([&] { flush_status = cache_->Flush(kExport); });
  WaitUntil([&] { return Stats().flushes_in_progress == 1; });
  store_->GateWrites(false);  // that upload fails; the store is back for the next request
  flusher.join();
  ASSERT_OK(flush_status);
  EXPECT_EQ(store_->Durable(1), MakeBlock(1, 1));
  EXPECT_EQ(Stats().upload_failures, 1u);
  EXPECT_EQ(Stats().dirty_blocks, 0u);
}

TEST_F(CacheTest, AFlushFailsAtTheFirstFailedUploadWithoutWaitingForTheOthers) {
  CacheOptions o = Options(64);
  o.max_dirty_age = 0;
  o.upload_threads = 4;
  Make(o, true);
  store_->GateWrites(true);
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  store_->WaitBlockedWrites(3);  // these uploads hang (a stalled store)
  store_->FailWritesOf(9);       // and this one fails
  ASSERT_OK(Put(9, MakeBlock(9, 1)));
  WaitUntil([&] { return Stats().upload_failures >= 1; });
  auto flush = std::async(std::launch::async, [&] { return cache_->Flush(kExport); });
  WaitUntil([&] {
    return flush.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
  EXPECT_EQ(store_->blocked_writes(), 3);  // returned while the other uploads were still held
  store_->FailWritesOf(std::nullopt);
  store_->GateWrites(false);
  Status s = flush.get();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("block 9"), std::string::npos) << s.message();
  ASSERT_OK(cache_->Flush(kExport));
  for (uint64_t id : {1, 2, 3, 9}) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1)) << id;
}

TEST_F(CacheTest, CloseExportWithUploadsAndReadAheadInFlightLosesNothing) {
  CacheOptions o = Options(256);
  o.max_dirty_age = 0;  // upload at once
  Make(o, true);
  for (uint64_t id = 100; id < 140; ++id) store_->PutIn("x", id, MakeBlock(id, 0));
  auto read = [&](std::string_view e, uint64_t id) -> std::optional<Bytes> {
    Bytes d;
    bool found = false;
    Status s = cache_->Read(e, id, &d, &found);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!found) return std::nullopt;
    return d;
  };
  ASSERT_EQ(read("x", 100), MakeBlock(100, 0));
  store_->GateWrites(true);
  store_->GateReads(true);
  for (uint64_t id = 0; id < 16; ++id) ASSERT_OK(cache_->Write("x", id, MakeBlock(id, 1), false));
  ASSERT_OK(cache_->Write("x", 101, MakeBlock(101, 1), false));
  ASSERT_EQ(read("x", 101), MakeBlock(101, 1));  // sequential after 100: blocks 102.. read ahead
  store_->WaitBlockedWrites(4);
  store_->WaitBlockedReads(1);
  // Another export is used all along, from memory (its uploads wait behind x's at the gate).
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0}, wrong{0};
  std::thread other([&] {
    for (uint64_t v = 1; !stop; ++v) {
      const uint64_t id = v % 8;
      if (!cache_->Write("y", id, MakeBlock(id, v), false).ok() || read("y", id) != MakeBlock(id, v))
        ++wrong;
      ++rounds;
    }
  });
  std::atomic<bool> closed{false};
  Status close_status;
  std::thread closer([&] {
    close_status = cache_->CloseExport("x");
    closed = true;
  });
  WaitUntil([&] {
    CacheStats st;
    return (cache_->GetStats("x", &st) && st.flushes_in_progress == 1) || closed;
  });
  EXPECT_FALSE(closed.load());  // it waits for the uploads
  const int rounds_then = rounds;
  WaitUntil([&] { return rounds > rounds_then + 100; });  // y goes on meanwhile
  store_->GateWrites(false);
  store_->GateReads(false);
  closer.join();
  ASSERT_OK(close_status);
  stop = true;
  other.join();
  EXPECT_EQ(wrong, 0);
  CacheStats st;
  EXPECT_FALSE(cache_->GetStats("x", &st));
  auto all = cache_->AllStats();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].first, "y");
  for (uint64_t id = 0; id < 16; ++id) EXPECT_EQ(store_->DurableIn("x", id), MakeBlock(id, 1));
  EXPECT_EQ(store_->DurableIn("x", 101), MakeBlock(101, 1));
  // Opened again: a new, empty cache that reads what was stored.
  for (uint64_t id = 0; id < 16; ++id) EXPECT_EQ(read("x", id), MakeBlock(id, 1)) << id;
  for (uint64_t id = 100; id < 140; ++id)
    EXPECT_EQ(read("x", id), MakeBlock(id, id == 101 ? 1 : 0)) << id;
  ASSERT_TRUE(cache_->GetStats("x", &st));
  EXPECT_EQ(st.hits + st.misses, 16u + 40u);
  EXPECT_EQ(st.store_writes, 0u);
  ASSERT_OK(cache_->Flush("y"));
  // A second close of a closed export, and of one never used, do nothing.
  ASSERT_OK(cache_->CloseExport("x"));
  ASSERT_OK(cache_->CloseExport("x"));
  ASSERT_OK(cache_->CloseExport("never"));
  EXPECT_EQ(cache_->AllStats().size(), 1u);
}

TEST_F(CacheTest, CloseExportThatCannotFlushKeepsEverything) {
  Make(Options(64), true);
  for (uint64_t id = 0; id < 4; ++id) ASSERT_OK(Put(id, MakeBlock(id, 1)));
  store_->FailWrites(true);
  EXPECT_EQ(cache_->CloseExport(kExport).err(), EIO);
  EXPECT_EQ(Stats().dirty_blocks, 4u);
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(Get(id), MakeBlock(id, 1));
  store_->FailWrites(false);
  WaitUntil([&] { return Stats().uploads_in_flight == 0; });
  ASSERT_OK(cache_->CloseExport(kExport));
  CacheStats st;
  EXPECT_FALSE(cache_->GetStats(kExport, &st));
  for (uint64_t id = 0; id < 4; ++id) EXPECT_EQ(store_->Durable(id), MakeBlock(id, 1));
}

// Keeps nothing but what it was sent: bytes per export and a sum of them.
class SinkStore : public BlockStore {
 public:
  std::string Describe() const override { return "sink"; }
  Status Read(std::string_view, uint64_t, Bytes* data, bool* found) override {
    data->clear();
    *found = false;
    return Status::Ok();
  }
  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool) override {
    std::lock_guard<std::mutex> lk(mu_);
    uint64_t sum = 0;
    for (uint8_t b : data) sum += b;
    auto& [bytes, total] = written_[std::string(e)];
    bytes += data.size();
    total += sum;
    return Status::Ok();
  }
  Status Delete(std::string_view, std::span<const uint64_t>, bool) override { return Status::Ok(); }
  Status Flush(std::string_view) override { return Status::Ok(); }
  Status ListBlocks(std::string_view, const std::function<void(uint64_t)>&) override {
    return Status::Ok();
  }
  Status ListExports(std::vector<std::string>*) override { return Status::Ok(); }
  Status ReadMeta(std::string_view, std::string*, bool* found) override {
    *found = false;
    return Status::Ok();
  }
  Status WriteMeta(std::string_view, std::string_view) override { return Status::Ok(); }
  Status DeleteMeta(std::string_view) override { return Status::Ok(); }
  std::pair<uint64_t, uint64_t> Written(const std::string& e) {
    std::lock_guard<std::mutex> lk(mu_);
    return written_[e];
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::pair<uint64_t, uint64_t>> written_;
};

TEST(CacheCloseExport, ClosedExportsGiveTheirMemoryBack) {
  constexpr uint32_t kBlock = 64 << 10;
  constexpr uint64_t kPerExport = 32 << 20;
  constexpr int kExports = 20;
  auto sink = std::make_shared<SinkStore>();
  CacheOptions o;
  o.cache_size = 4 << 20;
  o.upload_threads = 4;
  o.read_threads = 4;
  CacheStore cache(sink, o);
  ASSERT_OK(cache.Start());
  Bytes block(kBlock);
  uint64_t sum = 0;
  for (uint32_t i = 0; i < kBlock; ++i) {
    block[i] = static_cast<uint8_t>(i % 251 + 1);
    sum += block[i];
  }
  for (int e = 0; e < kExports; ++e) {
    const std::string name = "m" + std::to_string(e);
    for (uint64_t id = 0; id < kPerExport / kBlock; ++id)
      ASSERT_OK(cache.Write(name, id, block, false));
  }
  auto all = cache.AllStats();
  ASSERT_EQ(all.size(), size_t{kExports});
  for (const auto& [name, st] : all) {
    EXPECT_GT(st.cached_bytes, 0u) << name;
    EXPECT_LE(st.cached_bytes, o.cache_size) << name;
  }
  for (int e = 0; e < kExports; ++e) {
    const std::string name = "m" + std::to_string(e);
    ASSERT_OK(cache.CloseExport(name));
    EXPECT_EQ(cache.AllStats().size(), size_t(kExports - e - 1));
    // Everything written was stored before the cache went.
    const auto [bytes, total] = sink->Written(name);
    EXPECT_EQ(bytes, kPerExport) << name;
    EXPECT_EQ(total, sum * (kPerExport / kBlock)) << name;
  }
  EXPECT_TRUE(cache.AllStats().empty());
}

}  // namespace
}  // namespace s3block
