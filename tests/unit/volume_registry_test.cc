// VolumeRegistry: exports shared by connections, closed when idle, bounded in number, and opened
// without one export's open waiting on another's.
#include "lib/volume_registry.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "file/file_store.h"
#include "s3block/cache_store.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
using namespace std::chrono_literals;

// Holds ReadMeta of one export until released: an open of that export that stalls in the store.
class StallingStore : public StoreDecorator {
 public:
  StallingStore(std::shared_ptr<BlockStore> next, std::string stalled)
      : StoreDecorator(std::move(next)), stalled_(std::move(stalled)) {}
  Status ReadMeta(std::string_view e, std::string* text, bool* found) override {
    if (e == stalled_) {
      std::unique_lock<std::mutex> lock(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
    }
    return StoreDecorator::ReadMeta(e, text, found);
  }
  void WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  const std::string stalled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, released_ = false;
};

// Counts CloseExport calls per export, to see that a closed export is given back to the store.
class CountingStore : public StoreDecorator {
 public:
  using StoreDecorator::StoreDecorator;
  Status CloseExport(std::string_view e) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++closed_[std::string(e)];
    return StoreDecorator::CloseExport(e);
  }
  int Closed(const std::string& e) {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_[e];
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> closed_;
};

VolumeRegistryOptions Options(uint32_t max_exports, double idle_timeout) {
  VolumeRegistryOptions o;
  o.max_exports = max_exports;
  o.idle_timeout = idle_timeout;
  o.volume.size = 1 << 20;
  return o;
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST(VolumeRegistryTest, ConnectionsShareOneVolumeAndAnIdleExportIsClosedWithItsDataStored) {
  TempDir dir;
  auto file = std::make_shared<FileStore>(dir.path());
  auto counting = std::make_shared<CountingStore>(file);
  auto cache = std::make_shared<CacheStore>(counting, CacheOptions());
  ASSERT_OK(cache->Start());
  VolumeRegistry registry(cache, Options(4, 0.2));
  registry.Start();

  std::shared_ptr<Volume> a, b;
  ASSERT_OK(registry.Acquire("e", false, &a));
  ASSERT_OK(registry.Acquire("e", false, &b));
  EXPECT_EQ(a.get(), b.get());
  std::vector<uint8_t> data(4096, 0x5a);
  ASSERT_OK(a->Write(data.data(), data.size(), 8192, false));
  bool last = true;
  ASSERT_OK(registry.Release("e", &last));
  EXPECT_FALSE(last);
  a.reset();
  // Still one connection: never closed, however long.
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(registry.OpenNames(), std::vector<std::string>{"e"});
  ASSERT_OK(registry.Release("e", &last));
  EXPECT_TRUE(last);
  b.reset();

  ASSERT_TRUE(WaitFor([&] { return registry.OpenNames().empty(); }));
  EXPECT_EQ(counting->Closed("e"), 1);
  // Closed means stored and the lease given up: another writer may take the export.
  std::string holder = "?";
  ASSERT_OK(file->QueryLease("e", &holder));
  EXPECT_EQ(holder, "");
  Bytes stored;
  bool found = false;
  ASSERT_OK(file->Read("e", 2, &stored, &found));
  ASSERT_TRUE(found);
  EXPECT_EQ(stored, Bytes(data.begin(), data.end()));

  // Opened again, it serves what was written.
  ASSERT_OK(registry.Acquire("e", false, &a));
  std::vector<uint8_t> back(4096);
  ASSERT_OK(a->Read(back.data(), back.size(), 8192));
  EXPECT_EQ(back, data);
  ASSERT_OK(registry.Release("e", &last));
}

TEST(VolumeRegistryTest, PastTheLimitAnIdleExportMakesRoomAndBusyOnesRefuseWithEbusy) {
  TempDir dir;
  auto file = std::make_shared<FileStore>(dir.path());
  // No closer thread: idle exports are closed only to make room.
  VolumeRegistry registry(file, Options(2, 3600));
  std::shared_ptr<Volume> a, b, c;
  ASSERT_OK(registry.Acquire("a", false, &a));
  ASSERT_OK(registry.Acquire("b", false, &b));
  Status s = registry.Acquire("c", false, &c);
  EXPECT_EQ(s.err(), EBUSY) << s.ToString();
  EXPECT_NE(s.message().find("max-exports=2"), std::string::npos) << s.message();
  EXPECT_EQ(c, nullptr);

  bool last = false;
  ASSERT_OK(registry.Release("a", &last));
  a.reset();
  ASSERT_OK(registry.Acquire("c", false, &c));
  EXPECT_EQ(registry.OpenNames(), (std::vector<std::string>{"b", "c"}));
  std::string holder = "?";
  ASSERT_OK(file->QueryLease("a", &holder));
  EXPECT_EQ(holder, "");
  ASSERT_OK(registry.Release("b", &last));
  ASSERT_OK(registry.Release("c", &last));
}

TEST(VolumeRegistryTest, AStalledOpenOfOneExportDoesNotHoldUpAnother) {
  TempDir dir;
  auto stalling = std::make_shared<StallingStore>(std::make_shared<FileStore>(dir.path()), "slow");
  VolumeRegistry registry(stalling, Options(8, 30));
  std::shared_ptr<Volume> fast;
  ASSERT_OK(registry.Acquire("fast", false, &fast));

  auto slow = std::async(std::launch::async, [&] {
    std::shared_ptr<Volume> v;
    Status s = registry.Acquire("slow", false, &v);
    bool last = false;
    if (s.ok()) s = registry.Release("slow", &last);
    return s;
  });
  stalling->WaitEntered();
  // While "slow" is stuck in the store: a second connection to "fast", a new export, and a
  // disconnect, each at once.
  auto others = std::async(std::launch::async, [&] {
    std::shared_ptr<Volume> again, other;
    S3B_RETURN_IF_ERROR(registry.Acquire("fast", false, &again));
    S3B_RETURN_IF_ERROR(registry.Acquire("other", false, &other));
    bool last = false;
    S3B_RETURN_IF_ERROR(registry.Release("other", &last));
    return registry.Release("fast", &last);
  });
  ASSERT_EQ(others.wait_for(5s), std::future_status::ready) << "held up by the stalled open";
  EXPECT_OK(others.get());
  EXPECT_EQ(slow.wait_for(100ms), std::future_status::timeout);
  stalling->Release();
  EXPECT_OK(slow.get());
  bool last = false;
  ASSERT_OK(registry.Release("fast", &last));
}

TEST(VolumeRegistryTest, AFailedOpenLeavesNothingOpenAndIsTriedAfresh) {
  TempDir dir;
  auto file = std::make_shared<FileStore>(dir.path());
  VolumeRegistryOptions o = Options(1, 30);
  o.volume.create = false;
  VolumeRegistry registry(file, o);
  std::shared_ptr<Volume> v;
  EXPECT_EQ(registry.Acquire("missing", false, &v).err(), ENOENT);
  EXPECT_TRUE(registry.OpenNames().empty());
  // The failed one took no room.
  VolumeRegistry creating(file, Options(1, 30));
  ASSERT_OK(creating.Acquire("missing", false, &v));
  bool last = false;
  ASSERT_OK(creating.Release("missing", &last));
  v.reset();
  ASSERT_OK(creating.CloseAll());
  ASSERT_OK(registry.Acquire("missing", false, &v));
  ASSERT_OK(registry.Release("missing", &last));
}

}  // namespace
}  // namespace s3block
