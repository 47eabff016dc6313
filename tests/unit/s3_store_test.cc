// S3Store against a real S3 server (Ceph RGW started by tests/scripts/s3_server.sh), found
// through the environment:
//   S3BLOCK_TEST_S3_ENDPOINT, S3BLOCK_TEST_S3_BUCKET, S3BLOCK_TEST_S3_ACCESS_KEY,
//   S3BLOCK_TEST_S3_SECRET_KEY [, S3BLOCK_TEST_S3_REGION]
// Without them the tests are skipped, unless S3BLOCK_TEST_REQUIRE_S3=1, when they fail.
// Each test works under its own key prefix and deletes what it wrote.
#include "s3/s3_store.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <set>
#include <thread>

#include "fake_http_server.h"
#include "open_race.h"
#include "s3_test_env.h"
#include "s3/s3_client.h"
#include "s3/sigv4.h"
#include "s3/xml.h"
#include "s3block/export_meta.h"
#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::Getenv;
using testing::LoadS3Env;
using testing::S3Env;

std::atomic<int> g_prefix_counter{0};

class S3StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!LoadS3Env(&env_)) {
      if (HasFailure()) return;
      GTEST_SKIP() << "no S3 server configured (S3BLOCK_TEST_S3_ENDPOINT unset)";
    }
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = "unit-" + std::to_string(::getpid()) + "-" + std::to_string(g_prefix_counter++) + "-" +
              info->name();
    ASSERT_OK(MakeStore(&store_));
  }

  void TearDown() override {
    if (!store_) return;
    // Remove everything under the test's prefix.
    S3ClientOptions o;
    o.endpoint = env_.endpoint;
    o.region = env_.region;
    o.bucket = env_.bucket;
    o.retry_timeout = 10;
    S3Client client(o, AwsCredentials{env_.access_key, env_.secret_key, ""});
    std::vector<std::string> keys;
    Status s = client.ListObjects(prefix_ + "/", "", [&](const std::string& k, std::string_view) { keys.push_back(k); }, nullptr);
    EXPECT_OK(s);
    for (size_t i = 0; i < keys.size(); i += 1000) {
      std::vector<std::string> batch(keys.begin() + i, keys.begin() + std::min(keys.size(), i + 1000));
      EXPECT_OK(client.DeleteObjects(batch));
    }
  }

  Config BaseConfig() const {
    Config c;
    c.store = "s3://" + env_.bucket + "/" + prefix_;
    c.endpoint = env_.endpoint;
    c.region = env_.region;
    c.access_key = env_.access_key;
    c.secret_key = env_.secret_key;
    c.retry_timeout = 10;
    c.request_timeout = 10;
    c.connections = 16;
    return c;
  }

  Status MakeStore(std::shared_ptr<S3Store>* out, Config c) {
    S3B_RETURN_IF_ERROR(S3Store::Create(S3StoreOptionsFor(c), out));
    return (*out)->Check();
  }
  Status MakeStore(std::shared_ptr<S3Store>* out) { return MakeStore(out, BaseConfig()); }

  // GET/PUT/list with curl's own SigV4 signer, independent of ours. Returns the body.
  std::string Curl(const std::string& args_after_url, const std::string& url_path,
                   const std::string& extra = "") {
    std::string cmd = "curl -s --max-time 20 --aws-sigv4 'aws:amz:" + env_.region + ":s3' --user '" +
                      env_.access_key + ":" + env_.secret_key + "' " + extra + " '" + env_.endpoint +
                      url_path + "' " + args_after_url;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return "";
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int rc = ::pclose(p);
    EXPECT_EQ(rc, 0) << cmd;
    return out;
  }

  // PUT an object with curl, with x-amz-content-sha256 (RGW needs it) and optional headers.
  void CurlPut(const std::string& key, const std::string& body, const std::string& headers = "") {
    testing::TempDir dir;
    std::string file = dir.path() + "/body";
    FILE* f = fopen(file.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fwrite(body.data(), 1, body.size(), f);
    fclose(f);
    std::string out = Curl("-w '%{http_code}' -o /dev/null", "/" + env_.bucket + "/" + UriEncodePath(key),
                           "-X PUT --data-binary @" + file + " -H 'Content-Type: application/octet-stream' "
                           "-H 'x-amz-content-sha256: " + Sha256Hex(std::string_view(body)) + "' " + headers);
    ASSERT_EQ(out, "200") << key;
  }

  S3Env env_;
  std::string prefix_;
  std::shared_ptr<S3Store> store_;
};

Bytes Pattern(size_t n, uint64_t seed) {
  Bytes b(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b[i] = static_cast<uint8_t>(x);
  }
  return b;
}

TEST_F(S3StoreTest, BlocksRoundTripAndMissingBlocksAreNotFound) {
  const std::string e = "disk";
  const std::vector<uint64_t> ids = {0, 1, 7, 4096, (1ull << 40) + 3};
  for (uint64_t id : ids) ASSERT_OK(store_->Write(e, id, Pattern(4096, id), false));
  ASSERT_OK(store_->Flush(e));
  for (uint64_t id : ids) {
    Bytes data;
    bool found = false;
    ASSERT_OK(store_->Read(e, id, &data, &found));
    EXPECT_TRUE(found) << id;
    EXPECT_EQ(data, Pattern(4096, id)) << id;
  }
  // Overwrite, a large block, and an empty object.
  ASSERT_OK(store_->Write(e, 7, Pattern(4096, 99), true));
  ASSERT_OK(store_->Write(e, 8, Pattern(4u << 20, 8), false));
  ASSERT_OK(store_->Write(e, 9, Bytes{}, false));
  Bytes data;
  bool found = false;
  ASSERT_OK(store_->Read(e, 7, &data, &found));
  EXPECT_EQ(data, Pattern(4096, 99));
  ASSERT_OK(store_->Read(e, 8, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Pattern(4u << 20, 8));
  ASSERT_OK(store_->Read(e, 9, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_TRUE(data.empty());

  for (uint64_t missing : {2ull, 5000ull, ~0ull}) {
    data = Bytes{1, 2, 3};
    found = true;
    ASSERT_OK(store_->Read(e, missing, &data, &found));
    EXPECT_FALSE(found) << missing;
    EXPECT_TRUE(data.empty());
  }
  // Another export does not see these blocks.
  ASSERT_OK(store_->Read("other", 0, &data, &found));
  EXPECT_FALSE(found);
}

TEST_F(S3StoreTest, DeleteMoreThanOneBatchOfKeys) {
  const std::string e = "trim me";
  const uint64_t kCount = 1205;  // two DeleteObjects requests
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t id = t; id < kCount; id += 16)
        if (!store_->Write(e, id, Pattern(64, id), false).ok()) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  std::set<uint64_t> listed;
  ASSERT_OK(store_->ListBlocks(e, [&](uint64_t id) { listed.insert(id); }));
  ASSERT_EQ(listed.size(), kCount);

  // Delete all but block 1000, plus ids that were never written.
  std::vector<uint64_t> ids;
  for (uint64_t id = 0; id < kCount + 10; ++id)
    if (id != 1000) ids.push_back(id);
  ASSERT_OK(store_->Delete(e, ids, false));
  listed.clear();
  ASSERT_OK(store_->ListBlocks(e, [&](uint64_t id) { listed.insert(id); }));
  EXPECT_EQ(listed, (std::set<uint64_t>{1000}));

  // One key: a single DELETE; deleting it twice is not an error.
  const uint64_t one[] = {1000};
  ASSERT_OK(store_->Delete(e, one, true));
  ASSERT_OK(store_->Delete(e, one, true));
  Bytes data;
  bool found = true;
  ASSERT_OK(store_->Read(e, 1000, &data, &found));
  EXPECT_FALSE(found);
}

TEST_F(S3StoreTest, ListBlocksAndExportsAcrossPages) {
  store_->set_list_page_size_for_testing(7);
  const std::string odd = "my disk %41 \xC3\xA9t\xC3\xA9 \xE1\x88\xB4 & <x>";
  std::set<uint64_t> want;
  for (uint64_t id = 0; id < 40; ++id) {
    uint64_t block = id * id * 1001;
    want.insert(block);
    ASSERT_OK(store_->Write(odd, block, Pattern(32, block), false));
  }
  ASSERT_OK(store_->WriteMeta(odd, "format=1\n"));
  ASSERT_OK(store_->WriteMeta("b-meta-only", "format=1\n"));
  ASSERT_OK(store_->Write("a-blocks-only", 3, Pattern(32, 3), false));
  // Objects under blocks/ that are not block ids are not listed as blocks.
  CurlPut(store_->ExportPrefix(odd) + "blocks/007", "x");
  CurlPut(store_->ExportPrefix(odd) + "blocks/.tmp", "x");

  std::set<uint64_t> got;
  int calls = 0;
  ASSERT_OK(store_->ListBlocks(odd, [&](uint64_t id) {
    got.insert(id);
    ++calls;
  }));
  EXPECT_EQ(got, want);
  EXPECT_EQ(calls, 40);

  std::vector<std::string> names;
  ASSERT_OK(store_->ListExports(&names));
  EXPECT_EQ(names, (std::vector<std::string>{"a-blocks-only", "b-meta-only", odd}));

  // An empty export lists nothing.
  calls = 0;
  ASSERT_OK(store_->ListBlocks("nothing-here", [&](uint64_t) { ++calls; }));
  EXPECT_EQ(calls, 0);
}

TEST_F(S3StoreTest, ListBlockDigestsGivesEachBlocksMd5) {
  // What the disk cache checks its copies against: the ETag of each block, the MD5 of its bytes.
  const std::string e = "digests";
  std::map<uint64_t, std::string> want;
  for (uint64_t id : {0, 5, 4097}) {
    Bytes data = Pattern(4096, id);
    ASSERT_OK(store_->Write(e, id, data, false));
    want[id] = HexEncode(Md5(data));
  }
  std::map<uint64_t, std::string> got;
  ASSERT_OK(store_->ListBlockDigests(e, [&](uint64_t id, std::string_view md5) { got[id] = std::string(md5); }));
  EXPECT_EQ(got, want);
}

TEST_F(S3StoreTest, MetadataRoundTrip) {
  ExportMeta meta;
  meta.size = 10ull << 30;
  meta.block_size = 65536;
  std::string text;
  bool found = true;
  ASSERT_OK(store_->ReadMeta("vol", &text, &found));
  EXPECT_FALSE(found);
  ASSERT_OK(store_->WriteMeta("vol", meta.Serialize()));
  ASSERT_OK(store_->ReadMeta("vol", &text, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(text, meta.Serialize());
  ExportMeta parsed;
  ASSERT_OK(ExportMeta::Parse("vol", text, &parsed));
  EXPECT_EQ(parsed.size, meta.size);
  EXPECT_EQ(parsed.block_size, meta.block_size);
  ASSERT_OK(store_->DeleteMeta("vol"));
  ASSERT_OK(store_->ReadMeta("vol", &text, &found));
  EXPECT_FALSE(found);
  ASSERT_OK(store_->DeleteMeta("vol"));  // already gone: not an error
}

TEST_F(S3StoreTest, KeyLayoutSeenByAnIndependentClient) {
  const std::string e = "lay out %\xC3\xA9";
  Bytes block = Pattern(4096, 42);
  ASSERT_OK(store_->Write(e, 42, block, false));
  ASSERT_OK(store_->WriteMeta(e, "format=1\nsize=4096\nblock-size=4096\n"));

  // List the bucket under the prefix with curl's signer (query already sorted and encoded, and
  // x-amz-content-sha256 given: curl does neither by itself).
  const std::string empty_sha = Sha256Hex(std::string_view(""));
  std::string xml = Curl("", "/" + env_.bucket + "?list-type=2&prefix=" + UriEncode(prefix_ + "/", false),
                         "-H 'x-amz-content-sha256: " + empty_sha + "'");
  XmlNode root;
  ASSERT_OK(ParseXml(xml, &root));
  std::set<std::string> keys;
  for (const XmlNode* c : root.Children("Contents")) keys.insert(c->ChildText("Key"));
  EXPECT_EQ(keys, (std::set<std::string>{prefix_ + "/exports/" + e + "/blocks/42",
                                         prefix_ + "/exports/" + e + "/metadata"}));

  // The block object holds exactly the raw block.
  std::string body = Curl("", "/" + env_.bucket + "/" + UriEncodePath(prefix_ + "/exports/" + e + "/blocks/42"),
                          "-H 'x-amz-content-sha256: " + empty_sha + "'");
  EXPECT_EQ(Bytes(body.begin(), body.end()), block);

  // And what curl writes at a block key, the store reads (an object without our MD5 header is
  // checked against its ETag).
  CurlPut(prefix_ + "/exports/" + e + "/blocks/43", "written by curl");
  Bytes data;
  bool found = false;
  ASSERT_OK(store_->Read(e, 43, &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(std::string(data.begin(), data.end()), "written by curl");
}

TEST_F(S3StoreTest, CorruptedObjectIsAnErrorNotData) {
  Config c = BaseConfig();
  c.retry_timeout = 0.5;
  std::shared_ptr<S3Store> store;
  ASSERT_OK(MakeStore(&store, c));
  // An object whose content does not match the MD5 recorded with it.
  std::string recorded = Base64Encode(Md5(AsBytes("the original content")));
  CurlPut(store->BlockKey("disk", 5), "damaged content", std::string("-H '") + kMd5MetaHeader + ": " + recorded + "'");
  Bytes data;
  bool found = true;
  Status s = store->Read("disk", 5, &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());
  EXPECT_NE(s.message().find("MD5"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(env_.bucket), std::string::npos) << s.message();
}

// Against the real server: a block carries the CRC-32C of its content, the server keeps it and
// gives it back, and a body that does not match it is an error, not data.
TEST_F(S3StoreTest, BlocksCarryTheirCrc32cAndAMismatchIsAnError) {
  const std::string e = "crc";
  Bytes block = Pattern(4096, 9);
  ASSERT_OK(store_->Write(e, 3, block, false));
  std::string empty_sha = Sha256Hex(std::string_view());
  std::string head = Curl("-D - -o /dev/null", "/" + env_.bucket + "/" + UriEncodePath(store_->BlockKey(e, 3)),
                          "-H 'x-amz-content-sha256: " + empty_sha + "'");
  for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  EXPECT_NE(head.find(std::string(kCrc32cMetaHeader) + ": " + Crc32cHex(block)), std::string::npos) << head;

  Config c = BaseConfig();
  c.retry_timeout = 0.5;
  std::shared_ptr<S3Store> store;
  ASSERT_OK(MakeStore(&store, c));
  CurlPut(store->BlockKey(e, 4), "damaged content",
          std::string("-H '") + kCrc32cMetaHeader + ": " + Crc32cHex(AsBytes("the original content")) + "'");
  Bytes data;
  bool found = true;
  Status s = store->Read(e, 4, &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());
  EXPECT_NE(s.message().find("CRC-32C"), std::string::npos) << s.message();
}

TEST_F(S3StoreTest, WrongLengthBlockIsAnIoErrorThroughTheVolume) {
  VolumeOptions vo;
  vo.size = 1 << 20;
  vo.block_size = 4096;
  vo.lock = false;
  std::shared_ptr<Volume> volume;
  ASSERT_OK(Volume::Open(store_, "short", vo, &volume));
  std::vector<uint8_t> buf(8192, 0xab);
  ASSERT_OK(volume->Write(buf.data(), buf.size(), 0, true));
  std::vector<uint8_t> back(8192);
  ASSERT_OK(volume->Read(back.data(), back.size(), 0));
  EXPECT_EQ(back, buf);
  // Replace block 1 behind the store's back with 100 bytes.
  CurlPut(store_->BlockKey("short", 1), std::string(100, 'z'));
  Status s = volume->Read(back.data(), back.size(), 0);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("100"), std::string::npos) << s.message();
}

TEST_F(S3StoreTest, BadCredentialsGiveOneClearMessage) {
  Config c = BaseConfig();
  c.secret_key = "definitely-the-wrong-secret";
  std::shared_ptr<S3Store> store;
  ASSERT_OK(S3Store::Create(S3StoreOptionsFor(c), &store));
  Status s = store->Check();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("secret key is wrong"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("bucket '" + env_.bucket + "' at " + env_.endpoint), std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find("definitely-the-wrong-secret"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find(env_.secret_key), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();

  c = BaseConfig();
  c.access_key = "NOSUCHKEY";
  ASSERT_OK(S3Store::Create(S3StoreOptionsFor(c), &store));
  s = store->Check();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("does not know the access key 'NOSUCHKEY'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(env_.endpoint), std::string::npos) << s.message();

  // Block I/O with bad keys fails (is not retried into a hang, and is never zeros).
  Bytes data;
  bool found = true;
  s = store->Read("disk", 0, &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
}

TEST_F(S3StoreTest, MissingBucketGivesOneClearMessage) {
  Config c = BaseConfig();
  c.store = "s3://no-such-bucket-" + std::to_string(::getpid()) + "/x";
  std::shared_ptr<S3Store> store;
  ASSERT_OK(S3Store::Create(S3StoreOptionsFor(c), &store));
  Status s = store->Check();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("bucket 'no-such-bucket-" + std::to_string(::getpid()) + "' at " + env_.endpoint),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("does not exist"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
}

TEST_F(S3StoreTest, VolumeRoundTripAtUnalignedOffsets) {
  VolumeOptions vo;
  vo.size = 1 << 20;
  vo.block_size = 4096;
  vo.lock = false;
  std::shared_ptr<Volume> volume;
  ASSERT_OK(Volume::Open(store_, "vol", vo, &volume));
  Bytes pattern = Pattern(10000, 1);
  ASSERT_OK(volume->Write(pattern.data(), pattern.size(), 1234, false));
  ASSERT_OK(volume->Flush());
  // A second store object (a restarted server) sees the same data.
  std::shared_ptr<S3Store> again;
  ASSERT_OK(MakeStore(&again));
  std::shared_ptr<Volume> v2;
  vo.readonly = true;
  ASSERT_OK(Volume::Open(again, "vol", vo, &v2));
  Bytes back(12000);
  ASSERT_OK(v2->Read(back.data(), back.size(), 1000));
  EXPECT_TRUE(std::all_of(back.begin(), back.begin() + 234, [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::equal(pattern.begin(), pattern.end(), back.begin() + 234));
  EXPECT_TRUE(std::all_of(back.begin() + 234 + 10000, back.end(), [](uint8_t b) { return b == 0; }));
}

}  // namespace
}  // namespace s3block

// The export lease on S3: conditional writes against the real server.
namespace s3block {
namespace {

// A lease is only as good as If-None-Match: against a server that ignores it (a fake one, in
// memory), the first lease a process takes is PUT a second time, that PUT is not refused, and
// the lease is given up with an error (its object deleted); against one that honours it, that
// second PUT is the only extra request, made once per process.
TEST(S3StoreLeaseTest, AServerThatIgnoresIfNoneMatchIsToldApartByTheFirstLease) {
  for (bool honours : {false, true}) {
    std::mutex mu;
    std::map<std::string, std::string> objects;
    std::vector<std::string> log;
    int etag = 0;
    testing::FakeHttpServer server([&](const testing::FakeRequest& r) {
      std::lock_guard<std::mutex> l(mu);
      const std::string key = r.target.substr(0, r.target.find('?'));
      log.push_back(r.method + " " + key);
      testing::FakeResponse out;
      if (r.method == "PUT") {
        auto it = r.headers.find("if-none-match");
        if (honours && it != r.headers.end() && objects.count(key)) {
          out.status = 412;
          out.body = "<Error><Code>PreconditionFailed</Code></Error>";
          return out;
        }
        objects[key] = r.body;
        out.headers.push_back({"ETag", "\"e" + std::to_string(++etag) + "\""});
      } else if (r.method == "DELETE") {
        objects.erase(key);
        out.status = 204;
      } else if (r.method == "GET" && objects.count(key)) {
        out.body = objects[key];
        out.headers.push_back({"ETag", "\"e" + std::to_string(etag) + "\""});
      } else {
        out.status = 404;
        out.body = "<Error><Code>NoSuchKey</Code></Error>";
      }
      return out;
    });
    Config c;
    c.store = "s3://bucket/p";
    c.endpoint = server.endpoint();
    c.access_key = "key";
    c.secret_key = "secret";
    c.retry_timeout = 2;
    ASSERT_OK(c.Finish());
    std::shared_ptr<S3Store> store;
    ASSERT_OK(S3Store::Create(S3StoreOptionsFor(c), &store));
    std::unique_ptr<ExportLease> lease;
    Status s = store->AcquireLease("e", "test", false, &lease);
    std::vector<std::string> seen;
    {
      std::lock_guard<std::mutex> l(mu);
      seen = log;
      log.clear();
    }
    const std::string key = "/bucket/p/exports/e/lease";
    if (!honours) {
      EXPECT_TRUE(s.IsNotSupported()) << s.ToString();
      EXPECT_NE(s.message().find("If-None-Match"), std::string::npos) << s.ToString();
      EXPECT_EQ(seen, (std::vector<std::string>{"PUT " + key, "PUT " + key, "DELETE " + key}));
      std::lock_guard<std::mutex> l(mu);
      EXPECT_EQ(objects.count(key), 0u);
      continue;
    }
    ASSERT_OK(s);
    EXPECT_EQ(seen, (std::vector<std::string>{"PUT " + key, "PUT " + key}));
    lease.reset();
    std::unique_ptr<ExportLease> again;
    ASSERT_OK(store->AcquireLease("f", "test", false, &again));
    std::lock_guard<std::mutex> l(mu);
    // The first lease deleted without a read (it had its whole span left); the next one taken
    // with one PUT.
    EXPECT_EQ(log, (std::vector<std::string>{"DELETE " + key, "PUT /bucket/p/exports/f/lease"}));
  }
}

TEST_F(S3StoreTest, LeaseKeepsASecondWriterOutAndIsReleased) {
  std::unique_ptr<ExportLease> first, second;
  ASSERT_OK(store_->AcquireLease("e", "server one", false, &first));
  ASSERT_OK(first->Valid());
  std::string holder;
  ASSERT_OK(store_->QueryLease("e", &holder));
  EXPECT_EQ(holder, "server one");
  // A second store object stands for a second server.
  std::shared_ptr<S3Store> other;
  ASSERT_OK(MakeStore(&other));
  Status s = other->AcquireLease("e", "server two", false, &second);
  EXPECT_EQ(s.err(), EBUSY) << s.ToString();
  EXPECT_NE(s.message().find("server one"), std::string::npos) << s.message();
  ASSERT_OK(other->AcquireLease("f", "server two", false, &second));  // other exports are free
  second.reset();
  first.reset();  // released: the lease object is deleted
  ASSERT_OK(store_->QueryLease("e", &holder));
  EXPECT_EQ(holder, "");
  ASSERT_OK(other->AcquireLease("e", "server two", false, &second));
}

TEST_F(S3StoreTest, ForcedTakeOverMakesTheOldHolderStopWriting) {
  Config c = BaseConfig();
  std::shared_ptr<S3Store> a, b;
  ASSERT_OK(MakeStore(&a, c));
  ASSERT_OK(MakeStore(&b, c));
  a->set_lease_timeout(3);  // renewed every 0.75 s
  std::unique_ptr<ExportLease> la, lb;
  ASSERT_OK(a->AcquireLease("e", "server a", false, &la));
  ASSERT_OK(b->AcquireLease("e", "server b", true, &lb));  // force
  // a finds out at its next renewal (about a second); wait for that, bounded.
  Status valid;
  for (int i = 0; i < 300 && (valid = la->Valid()).ok(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(valid.err(), EIO);
  EXPECT_NE(valid.message().find("taken over"), std::string::npos) << valid.message();
  ASSERT_OK(lb->Valid());
  std::string holder;
  ASSERT_OK(b->QueryLease("e", &holder));
  EXPECT_EQ(holder, "server b");
  la.reset();  // must not delete b's lease object
  ASSERT_OK(b->QueryLease("e", &holder));
  EXPECT_EQ(holder, "server b");
}

// A server whose lease was taken over stores nothing more in the export: not blocks its cache
// still had to upload, not deletes, not metadata. The new holder's data stays.
TEST_F(S3StoreTest, AServerThatLostTheLeaseStoresNothingMore) {
  std::shared_ptr<S3Store> a, b;
  ASSERT_OK(MakeStore(&a));
  ASSERT_OK(MakeStore(&b));
  a->set_lease_timeout(3);  // renewed every 0.75 s
  std::unique_ptr<ExportLease> la, lb;
  ASSERT_OK(a->AcquireLease("e", "server a", false, &la));
  const std::vector<uint8_t> mine(4096, 'A'), theirs(4096, 'B');
  ASSERT_OK(a->Write("e", 0, mine, false));  // while a holds it
  double left = 0;
  ASSERT_OK(a->CheckLease("e", &left));
  EXPECT_GT(left, 0.5);
  EXPECT_LE(left, 3.0);
  ASSERT_OK(b->AcquireLease("e", "server b", true, &lb));  // force
  ASSERT_OK(b->Write("e", 0, theirs, false));
  Status valid;
  for (int i = 0; i < 300 && (valid = la->Valid()).ok(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(valid.err(), EIO);
  Status s = a->Write("e", 0, mine, false);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("taken over"), std::string::npos) << s.message();
  const uint64_t ids[] = {0, 1};
  EXPECT_EQ(a->Delete("e", std::span<const uint64_t>(ids, 1), false).err(), EIO);
  EXPECT_EQ(a->Delete("e", ids, false).err(), EIO);
  EXPECT_EQ(a->WriteMeta("e", "size=1\n").err(), EIO);
  bool found = false;
  EXPECT_EQ(a->CopyBlock("x", "e", 0, &found).err(), EIO);
  Bytes back;
  ASSERT_OK(b->Read("e", 0, &back, &found));
  ASSERT_TRUE(found);
  EXPECT_EQ(back, theirs);
  // Other exports, and a store without the lease, are not fenced.
  ASSERT_OK(a->Write("other", 0, mine, false));
  ASSERT_OK(b->CheckLease("e", &left));
  EXPECT_GT(left, 1.0);
}

TEST_F(S3StoreTest, ExpiredLeaseIsTakenOverWithoutForce) {
  std::shared_ptr<S3Store> a, b;
  ASSERT_OK(MakeStore(&a));
  ASSERT_OK(MakeStore(&b));
  // A lease written by a server that died: expired, never renewed.
  std::string key = a->LeaseKey("e");
  std::string dead = "holder=a dead server\ntoken=0123\nexpires=1000\n";
  CurlPut(key, dead);
  std::unique_ptr<ExportLease> lb;
  ASSERT_OK(b->AcquireLease("e", "server b", false, &lb));
  std::string holder;
  ASSERT_OK(b->QueryLease("e", &holder));
  EXPECT_EQ(holder, "server b");
}

TEST_F(S3StoreTest, CopyBlockIsAServerSideCopy) {
  std::vector<uint8_t> block(4096, 0x3c);
  ASSERT_OK(store_->Write("a", 5, block, false));
  bool found = false;
  ASSERT_OK(store_->CopyBlock("a", "b", 5, &found));
  EXPECT_TRUE(found);
  ASSERT_OK(store_->CopyBlock("a", "b", 6, &found));
  EXPECT_FALSE(found);
  Bytes back;
  ASSERT_OK(store_->Read("b", 5, &back, &found));
  ASSERT_TRUE(found);
  EXPECT_EQ(back, block);
}

// An admin command that completes between Open's first look at the metadata and its claim of
// the lease (open_race.h): Open decides from what it reads under the lease.
TEST_F(S3StoreTest, ImportBetweenLookAndClaimIsServedAsImported) {
  testing::TempDir tmp;
  testing::CheckImportBeforeClaim(store_, tmp.path());
}

TEST_F(S3StoreTest, CreateBetweenLookAndClaimIsServedAsCreated) {
  testing::CheckCreateBeforeClaim(store_);
}

TEST_F(S3StoreTest, DeleteBetweenLookAndClaimIsRefusedWithoutCreate) {
  testing::CheckDeleteBeforeClaimRefused(store_);
}

TEST_F(S3StoreTest, DeleteBetweenLookAndClaimCreatesTheExportAnew) {
  testing::CheckDeleteBeforeClaimRecreates(store_);
}

TEST_F(S3StoreTest, IncompleteOrOtherBlockSizeBetweenLookAndClaimIsRefused) {
  testing::TempDir tmp;
  testing::CheckIncompleteAndMismatchBeforeClaimRefused(store_, tmp.path());
}

}  // namespace
}  // namespace s3block
