// What every object transport promises (base/object_transport.h), checked on each: the local
// directory always, and S3 when a server is configured (s3_test_env.h), under a prefix of its
// own that is emptied at the end.
#include "base/object_transport.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "file/dir_transport.h"
#include "s3/s3_client.h"
#include "s3/s3_transport.h"
#include "s3_test_env.h"
#include "test_util.h"

namespace s3block {
namespace {

std::vector<uint8_t> Data(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::atomic<int> g_counter{0};

PutOptions BothConditions(const std::string& version) {
  PutOptions o = PutOptions::IfVersion(version);
  o.if_absent = true;
  return o;
}

class ObjectTransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "dir") {
      dir_ = std::make_unique<testing::TempDir>();
      std::unique_ptr<DirTransport> t;
      ASSERT_OK(DirTransport::Open(dir_->path() + "/objects", /*create=*/true, &t));
      transport_ = std::move(t);
      return;
    }
    testing::S3Env env;
    if (!testing::LoadS3Env(&env)) {
      if (HasFailure()) return;
      GTEST_SKIP() << "no S3 server configured (S3BLOCK_TEST_S3_ENDPOINT unset)";
    }
    client_ = testing::MakeTestS3Client(env);
    // Small pages: listing many keys crosses several.
    client_->set_list_page_size_for_testing(100);
    prefix_ = "transport-" + std::to_string(::getpid()) + "-" + std::to_string(g_counter++) + "/";
    transport_ = std::make_unique<S3Transport>(client_.get(), prefix_);
  }

  void TearDown() override {
    if (client_ == nullptr) return;
    std::vector<std::string> keys;
    EXPECT_OK(transport_->List("", [&](const std::string& k, std::string_view) { keys.push_back(k); }));
    EXPECT_OK(transport_->Delete(keys));
  }

  std::vector<std::string> Keys(const std::string& prefix) {
    std::vector<std::string> keys;
    EXPECT_OK(transport_->List(prefix, [&](const std::string& k, std::string_view) { keys.push_back(k); }));
    return keys;
  }

  // Puts many small objects from several threads.
  void PutMany(const std::vector<std::string>& keys) {
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (size_t i; (i = next++) < keys.size();) EXPECT_OK(transport_->Put(keys[i], Data(keys[i])));
      });
    }
    for (auto& t : threads) t.join();
  }

  std::unique_ptr<testing::TempDir> dir_;
  std::unique_ptr<S3Client> client_;
  std::string prefix_;
  std::unique_ptr<ObjectTransport> transport_;
};

TEST_P(ObjectTransportTest, PutGetHeadRoundTrip) {
  std::string version;
  ASSERT_OK(transport_->Put("a/b/c", Data("hello, objects"), {}, &version));
  EXPECT_FALSE(version.empty());
  std::vector<uint8_t> got;
  ObjectInfo info;
  ASSERT_OK(transport_->Get("a/b/c", &got, &info));
  EXPECT_EQ(got, Data("hello, objects"));
  EXPECT_EQ(info.size, 14u);
  EXPECT_EQ(info.version, version);
  ObjectInfo head;
  ASSERT_OK(transport_->Head("a/b/c", &head));
  EXPECT_EQ(head.size, 14u);
  EXPECT_EQ(head.version, version);
  // Replaced whole; an empty object is an object.
  ASSERT_OK(transport_->Put("a/b/c", Data("")));
  ASSERT_OK(transport_->Get("a/b/c", &got, &info));
  EXPECT_TRUE(got.empty());
  EXPECT_NE(info.version, version);
}

TEST_P(ObjectTransportTest, MissingObjectsAreNotFound) {
  std::vector<uint8_t> got{1, 2};
  ObjectInfo info;
  EXPECT_TRUE(transport_->Get("no/such/key", &got).IsNotFound()) << transport_->Describe();
  EXPECT_TRUE(got.empty());
  EXPECT_TRUE(transport_->GetRange("no/such/key", 0, 10, &got).IsNotFound());
  EXPECT_TRUE(transport_->GetRange("no/such/key", 0, 0, &got).IsNotFound());
  EXPECT_TRUE(transport_->Head("no/such/key", &info).IsNotFound());
  ASSERT_OK(transport_->Put("no/other", Data("x")));
  EXPECT_TRUE(transport_->Head("no/such", &info).IsNotFound());
}

TEST_P(ObjectTransportTest, RangeReads) {
  std::vector<uint8_t> all(100000);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint8_t>(i * 7 + i / 251);
  ASSERT_OK(transport_->Put("segment", all));
  auto part = [&](size_t from, size_t n) {
    const size_t end = std::min(all.size(), from + n);
    return from >= all.size() ? std::vector<uint8_t>()
                              : std::vector<uint8_t>(all.begin() + from, all.begin() + end);
  };
  const std::pair<uint64_t, uint64_t> ranges[] = {
      {0, 1}, {0, 4096}, {4096, 4096}, {12345, 678}, {99999, 1}, {99000, 5000}, {0, 100000},
      {0, 1 << 20}};
  for (const auto& [offset, length] : ranges) {
    std::vector<uint8_t> got;
    ASSERT_OK(transport_->GetRange("segment", offset, length, &got));
    EXPECT_EQ(got, part(offset, length)) << offset << "+" << length;
  }
  // At or past the end, or no bytes: none, and the object exists.
  for (const auto& [offset, length] :
       {std::pair<uint64_t, uint64_t>{100000, 10}, {200000, 1}, {50, 0}}) {
    std::vector<uint8_t> got{9};
    ASSERT_OK(transport_->GetRange("segment", offset, length, &got));
    EXPECT_TRUE(got.empty()) << offset << "+" << length;
  }
  ASSERT_OK(transport_->Put("empty", {}));
  std::vector<uint8_t> got;
  ASSERT_OK(transport_->GetRange("empty", 0, 10, &got));
  EXPECT_TRUE(got.empty());
}

TEST_P(ObjectTransportTest, PutIfAbsentHasOneWinnerPerKey) {
  ASSERT_OK(transport_->Put("slot/0", Data("first"), PutOptions::IfAbsent()));
  Status again = transport_->Put("slot/0", Data("second"), PutOptions::IfAbsent());
  EXPECT_TRUE(IsPreconditionFailed(again)) << again.ToString();
  // Two writers race for the same 40 slots: each slot has exactly one winner, whose data it holds.
  constexpr int kSlots = 40;
  std::atomic<int> wins[2] = {0, 0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 1; i <= kSlots; ++i) {
        const std::string key = "slot/" + std::to_string(i);
        Status s = transport_->Put(key, Data("writer " + std::to_string(w)), PutOptions::IfAbsent());
        if (s.ok())
          ++wins[w];
        else
          EXPECT_TRUE(IsPreconditionFailed(s)) << s.ToString();
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(wins[0] + wins[1], kSlots);
  std::vector<uint8_t> got;
  ASSERT_OK(transport_->Get("slot/0", &got));
  EXPECT_EQ(got, Data("first"));
  int held[2] = {0, 0};
  for (int i = 1; i <= kSlots; ++i) {
    ASSERT_OK(transport_->Get("slot/" + std::to_string(i), &got));
    const std::string text(got.begin(), got.end());
    ASSERT_TRUE(text == "writer 0" || text == "writer 1") << text;
    ++held[text == "writer 1"];
  }
  EXPECT_EQ(held[0], wins[0].load());
  EXPECT_EQ(held[1], wins[1].load());
}

TEST_P(ObjectTransportTest, PutIfVersionIsCompareAndSwap) {
  std::string v1, v2;
  ASSERT_OK(transport_->Put("manifest", Data("0"), {}, &v1));
  ASSERT_OK(transport_->Put("manifest", Data("1"), PutOptions::IfVersion(v1), &v2));
  EXPECT_NE(v1, v2);
  EXPECT_TRUE(IsPreconditionFailed(transport_->Put("manifest", Data("x"), PutOptions::IfVersion(v1))));
  EXPECT_TRUE(IsPreconditionFailed(transport_->Put("absent", Data("x"), PutOptions::IfVersion(v1))));
  EXPECT_EQ(transport_->Put("manifest", Data("x"), BothConditions(v2)).err(), EINVAL);
  // Two writers each add 10 to a counter by read, compare-and-swap, retry: no increment is lost.
  constexpr int kEach = 10;
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&] {
      for (int done = 0; done < kEach;) {
        std::vector<uint8_t> got;
        ObjectInfo info;
        ASSERT_OK(transport_->Get("manifest", &got, &info));
        const int n = std::stoi(std::string(got.begin(), got.end()));
        Status s = transport_->Put("manifest", Data(std::to_string(n + 1)), PutOptions::IfVersion(info.version));
        if (s.ok())
          ++done;
        else
          ASSERT_TRUE(IsPreconditionFailed(s)) << s.ToString();
      }
    });
  }
  for (auto& t : writers) t.join();
  std::vector<uint8_t> got;
  ASSERT_OK(transport_->Get("manifest", &got));
  EXPECT_EQ(std::string(got.begin(), got.end()), std::to_string(1 + 2 * kEach));
}

TEST_P(ObjectTransportTest, ListByPrefixAndDeleteInBatches) {
  // More keys than one DeleteObjects request takes, over several listing pages.
  std::vector<std::string> keys;
  for (int i = 0; i < 1100; ++i) keys.push_back("seg/" + std::to_string(i % 7) + "/" + std::to_string(i));
  keys.push_back("segment");
  keys.push_back("other/1");
  PutMany(keys);
  std::vector<std::string> sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(Keys(""), sorted);
  std::vector<std::string> seg3;
  for (const auto& k : sorted)
    if (k.starts_with("seg/3/")) seg3.push_back(k);
  EXPECT_EQ(Keys("seg/3/"), seg3);
  // A prefix need not end at a '/'.
  std::vector<std::string> seg1x;
  for (const auto& k : sorted)
    if (k.starts_with("seg/1/1")) seg1x.push_back(k);
  EXPECT_EQ(Keys("seg/1/1"), seg1x);
  EXPECT_EQ(Keys("segm"), std::vector<std::string>{"segment"});
  EXPECT_TRUE(Keys("nothing/").empty());
  // Versions listed are those Head tells.
  std::map<std::string, std::string> versions;
  ASSERT_OK(transport_->List("other/", [&](const std::string& k, std::string_view v) { versions[k] = v; }));
  ObjectInfo info;
  ASSERT_OK(transport_->Head("other/1", &info));
  EXPECT_EQ(versions["other/1"], info.version);

  std::vector<std::string> doomed(keys.begin(), keys.begin() + 1050);
  doomed.push_back("never/written");
  ASSERT_OK(transport_->Delete(doomed));
  std::vector<std::string> left(keys.begin() + 1050, keys.end());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(Keys(""), left);
  ASSERT_OK(transport_->Delete(std::vector<std::string>{"segment"}));
  EXPECT_TRUE(transport_->Head("segment", &info).IsNotFound());
}

TEST_P(ObjectTransportTest, RefusesKeysThatAreNotPlainRelativePaths) {
  const std::string refused[] = {"", "/abs", "a/../b", "..", ".", "a/./b", "a//b", "a/", "x/.tmp.y",
                                std::string("nul\0in", 6), "tab\there", std::string(1025, 'k')};
  for (const std::string& key : refused) {
    std::vector<uint8_t> got;
    ObjectInfo info;
    EXPECT_EQ(transport_->Put(key, Data("x")).err(), EINVAL) << key;
    EXPECT_EQ(transport_->Get(key, &got).err(), EINVAL) << key;
    EXPECT_EQ(transport_->GetRange(key, 0, 1, &got).err(), EINVAL) << key;
    EXPECT_EQ(transport_->Head(key, &info).err(), EINVAL) << key;
    EXPECT_EQ(transport_->Delete(std::vector<std::string>{"fine", key}).err(), EINVAL) << key;
  }
  // Names a layout may use.
  for (const std::string key : {"..a", "a..", ".hidden/x", "a/.tmp", "dir/.tmp.x/y", "sp ace", "\xc3\xbc"})
    EXPECT_OK(transport_->Put(key, Data("x")));
}

TEST_P(ObjectTransportTest, AFailingFenceStopsWrites) {
  ASSERT_OK(transport_->Put("kept", Data("old")));
  const WriteFence fence = [](double*) { return Status::Error(ESTALE, "lease lost"); };
  EXPECT_EQ(transport_->Put("kept", Data("new"), PutOptions::Fenced(&fence)).err(), ESTALE);
  EXPECT_EQ(transport_->Put("new", Data("new"), PutOptions::IfAbsent(&fence)).err(), ESTALE);
  EXPECT_EQ(transport_->Delete(std::vector<std::string>{"kept"}, &fence).err(), ESTALE);
  std::vector<uint8_t> got;
  ASSERT_OK(transport_->Get("kept", &got));
  EXPECT_EQ(got, Data("old"));
  ObjectInfo info;
  EXPECT_TRUE(transport_->Head("new", &info).IsNotFound());
}

INSTANTIATE_TEST_SUITE_P(Transports, ObjectTransportTest, ::testing::Values("dir", "s3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace s3block
