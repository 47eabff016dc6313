#include "s3block/codec_store.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>

#include "cache/disk_cache_store.h"
#include "file/file_store.h"
#include "s3block/admin.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Metadata

TEST(EncodingMetaTest, RawDocumentIsUnchanged) {
  ExportMeta m;
  m.size = 1 << 20;
  m.block_size = 4096;
  EXPECT_EQ(m.Serialize(),
            "# nbd-s3-backend export metadata\nformat=1\nsize=1048576\nblock-size=4096\n");
}

TEST(EncodingMetaTest, RoundTripsEveryKey) {
  ExportMeta m;
  m.size = 12345;
  m.block_size = 65536;
  ASSERT_OK(m.encoding.SetCompression("zstd:7"));
  ASSERT_OK(m.encoding.SetEncryption("aes-256-gcm"));
  ASSERT_OK(m.encoding.SetChecksum("crc32c"));
  ASSERT_OK(MakeKeyCheck(std::string(32, 'k'), &m.encoding.key_check));
  m.state = ExportMeta::State::kIncomplete;
  const std::string text = m.Serialize();
  EXPECT_NE(text.find("compression=zstd:7\n"), std::string::npos);
  EXPECT_NE(text.find("encryption=aes-256-gcm\n"), std::string::npos);
  EXPECT_NE(text.find("checksum=crc32c\n"), std::string::npos);
  ExportMeta back;
  ASSERT_OK(ExportMeta::Parse("e", text, &back));
  EXPECT_EQ(back.size, m.size);
  EXPECT_EQ(back.block_size, m.block_size);
  EXPECT_EQ(back.state, m.state);
  EXPECT_TRUE(back.encoding.SameChoices(m.encoding));
  EXPECT_EQ(back.encoding.level, 7);
  EXPECT_EQ(back.encoding.key_check, m.encoding.key_check);
  EXPECT_EQ(back.Serialize(), text);
  EXPECT_EQ(back.encoding.Describe(), "zstd:7+aes-256-gcm+crc32c");
}

TEST(EncodingMetaTest, RefusesBadEncodingKeys) {
  const std::string head = "format=1\nsize=4096\nblock-size=4096\n";
  ExportMeta m;
  const std::string check = "00112233445566778899aabbccddeeff:00112233445566778899aabbccddeeff";
  EXPECT_OK(ExportMeta::Parse("e", head + "encryption=aes-256-gcm\nkey-check=" + check + "\n", &m));
  EXPECT_EQ(ExportMeta::Parse("e", head + "compression=zstd:0\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "compression=zstd:23\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "compression=lz4\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "encryption=rot13\nkey-check=" + check + "\n", &m).err(),
            EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "encryption=aes-256-gcm\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "key-check=" + check + "\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "encryption=aes-256-gcm\nkey-check=zz\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "checksum=md5\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", head + "dedup=on\n", &m).err(), EIO);  // unknown key
}

TEST(KeyTest, ParsesHexAndRawAndRefusesTheRest) {
  std::string key;
  ASSERT_OK(ParseEncryptionKey("t", std::string(64, 'a') + "\n", &key));
  EXPECT_EQ(key, std::string(32, '\xaa'));
  ASSERT_OK(ParseEncryptionKey("t", std::string(32, '\n'), &key));  // raw bytes, taken as they are
  EXPECT_EQ(key, std::string(32, '\n'));
  EXPECT_EQ(ParseEncryptionKey("t", std::string(63, 'a'), &key).err(), EINVAL);
  EXPECT_EQ(ParseEncryptionKey("t", std::string(64, 'g'), &key).err(), EINVAL);
  Status s = ParseEncryptionKey("key-file=/k", "secretsecret", &key);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_EQ(s.message().find("secretsecret"), std::string::npos);
}

TEST(KeyTest, KeyCheckTellsKeysApart) {
  const std::string a(32, 'a'), b(32, 'b');
  std::string check1, check2;
  ASSERT_OK(MakeKeyCheck(a, &check1));
  ASSERT_OK(MakeKeyCheck(a, &check2));
  EXPECT_NE(check1, check2);  // a fresh salt each time
  EXPECT_TRUE(KeyMatchesCheck(a, check1));
  EXPECT_TRUE(KeyMatchesCheck(a, check2));
  EXPECT_FALSE(KeyMatchesCheck(b, check1));
  std::string bent = check1;
  bent[40] = bent[40] == '0' ? '1' : '0';
  EXPECT_FALSE(KeyMatchesCheck(a, bent));
}

// ---------------------------------------------------------------------------------------------
// The layer over the file store (and over S3 when a server is configured).

const std::string kKeyA(32, 'A');
const std::string kKeyB(32, 'B');

// Incompressible, and never all zeros (which the volume would not store).
Bytes RandomBlock(size_t n, std::mt19937_64& rng) {
  Bytes b(n);
  for (auto& c : b) c = static_cast<uint8_t>(rng());
  b[0] |= 1;
  return b;
}

// Text-like: compresses well, but no two blocks are the same.
Bytes CompressibleBlock(size_t n, std::mt19937_64& rng) {
  static const std::string words[] = {"block ", "store ", "export ", "object ", "zstd ", "cache "};
  Bytes b;
  b.reserve(n);
  std::string line = std::to_string(rng()) + ": ";
  while (b.size() < n) {
    for (char c : line) b.push_back(static_cast<uint8_t>(c));
    line = words[rng() % 6];
  }
  b.resize(n);
  return b;
}

Bytes Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

void Spit(const std::string& path, const Bytes& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

struct Combo {
  const char* compression;
  const char* encryption;
  const char* checksum;
};

std::string ComboName(const ::testing::TestParamInfo<Combo>& info) {
  std::string n = std::string(info.param.compression) + "_" + info.param.encryption + "_" +
                  info.param.checksum;
  for (auto& c : n)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
}

BlockEncoding EncodingOf(const Combo& c, const std::string& key) {
  BlockEncoding e;
  EXPECT_OK(e.SetCompression(c.compression));
  EXPECT_OK(e.SetEncryption(c.encryption));
  EXPECT_OK(e.SetChecksum(c.checksum));
  if (e.encryption != BlockEncoding::Encryption::kNone) EXPECT_OK(MakeKeyCheck(key, &e.key_check));
  return e;
}

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

std::atomic<int> g_counter{0};

// Where the blocks go: a directory, S3, or S3 under the disk cache (disk-cache=).
enum Backend { kFile, kS3, kS3DiskCache };

// Each test runs over a fresh store: a directory, or a fresh prefix of the S3 test bucket.
class CodecRoundTripTest : public ::testing::TestWithParam<std::tuple<Combo, Backend>> {
 protected:
  void SetUp() override {
    s3_ = std::get<1>(GetParam()) != kFile;
    config_.store = dir_.path() + "/store";
    if (s3_) {
      if (Getenv("S3BLOCK_TEST_S3_ENDPOINT").empty()) {
        if (Getenv("S3BLOCK_TEST_REQUIRE_S3") == "1")
          FAIL() << "S3BLOCK_TEST_REQUIRE_S3=1 but S3BLOCK_TEST_S3_ENDPOINT is not set";
        GTEST_SKIP() << "no S3 server configured (S3BLOCK_TEST_S3_ENDPOINT unset)";
      }
      config_.store = "s3://" + Getenv("S3BLOCK_TEST_S3_BUCKET") + "/codec-" +
                      std::to_string(::getpid()) + "-" + std::to_string(g_counter++);
      ASSERT_OK(config_.Set("endpoint", Getenv("S3BLOCK_TEST_S3_ENDPOINT")));
      config_.access_key = Getenv("S3BLOCK_TEST_S3_ACCESS_KEY");
      config_.secret_key = Getenv("S3BLOCK_TEST_S3_SECRET_KEY");
      if (!Getenv("S3BLOCK_TEST_S3_REGION").empty())
        config_.region = Getenv("S3BLOCK_TEST_S3_REGION");
      config_.retry_timeout = 10;
    }
    ASSERT_OK(MakeLeafStore(config_, &leaf_));
    // The disk cache sits where the store stack puts it: between the leaf and the codec layer.
    if (std::get<1>(GetParam()) == kS3DiskCache)
      leaf_ = std::make_shared<DiskCacheStore>(leaf_, dir_.path() + "/disk-cache", 64 << 20);
    ASSERT_OK(leaf_->Check());
  }
  void TearDown() override {
    if (!leaf_ || !s3_) return;
    // A store of its own: the test's store stores nothing in an export once it released its
    // lease there.
    std::shared_ptr<BlockStore> store;
    ASSERT_OK(MakeLeafStore(config_, &store));
    std::vector<std::string> names;
    EXPECT_OK(store->ListExports(&names));
    for (const auto& n : names) {
      std::vector<uint64_t> ids;
      EXPECT_OK(store->ListBlocks(n, [&](uint64_t id) { ids.push_back(id); }));
      EXPECT_OK(store->Delete(n, ids, true));
      EXPECT_OK(store->DeleteMeta(n));
    }
  }
  std::shared_ptr<Volume> Open(const StoreStack& store, const std::string& name,
                               const BlockEncoding& enc, bool create = true) {
    VolumeOptions o;
    o.size = kBs * kBlocks;
    o.block_size = kBs;
    o.encoding = enc;
    o.create = create;
    o.lock = false;
    std::shared_ptr<Volume> v;
    Status s = Volume::Open(store, name, o, &v);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return v;
  }

  static constexpr uint32_t kBs = 4096;
  static constexpr uint64_t kBlocks = 16;
  TempDir dir_;
  Config config_;
  bool s3_ = false;
  std::shared_ptr<BlockStore> leaf_;
};

TEST_P(CodecRoundTripTest, WritesReadBackThroughAFreshLayer) {
  const Combo& combo = std::get<0>(GetParam());
  const BlockEncoding enc = EncodingOf(combo, kKeyA);
  std::mt19937_64 rng(11);
  Bytes model(kBs * kBlocks, 0);
  {
    auto store = std::make_shared<CodecStore>(leaf_, kKeyA);
    auto v = Open(store, "disk", enc);
    ASSERT_TRUE(v);
    EXPECT_TRUE(v->created());
    // Even blocks compress, odd ones do not; one write straddles blocks (read-modify-write).
    for (uint64_t id = 0; id < kBlocks; id += 1) {
      Bytes b = id % 2 ? RandomBlock(kBs, rng) : CompressibleBlock(kBs, rng);
      std::copy(b.begin(), b.end(), model.begin() + id * kBs);
      ASSERT_OK(v->Write(b.data(), b.size(), id * kBs, false));
    }
    Bytes odd = RandomBlock(1000, rng);
    std::copy(odd.begin(), odd.end(), model.begin() + 3 * kBs - 300);
    ASSERT_OK(v->Write(odd.data(), odd.size(), 3 * kBs - 300, false));
    ASSERT_OK(v->Flush());
    Bytes back(model.size());
    ASSERT_OK(v->Read(back.data(), back.size(), 0));
    EXPECT_TRUE(back == model);
  }
  // A new layer knows nothing: it learns the encoding from the metadata.
  auto store = std::make_shared<CodecStore>(leaf_, kKeyA);
  BlockEncoding learned;
  ASSERT_OK(store->EncodingOf("disk", &learned));
  EXPECT_TRUE(learned.SameChoices(enc)) << learned.Describe() << " vs " << enc.Describe();
  auto v = Open(store, "disk", BlockEncoding(), /*create=*/false);
  ASSERT_TRUE(v);
  Bytes back(model.size());
  ASSERT_OK(v->Read(back.data(), back.size(), 0));
  EXPECT_TRUE(back == model);
  // A batch read through the layer is decoded as Read is; a block never written is not found.
  std::vector<Bytes> blocks(kBlocks + 1, Bytes{1, 2, 3});
  std::vector<BlockRead> reads(kBlocks + 1);
  for (uint64_t id = 0; id <= kBlocks; ++id) {
    reads[id].id = id;
    reads[id].data = &blocks[id];
  }
  store->ReadBatch("disk", reads);
  for (uint64_t id = 0; id <= kBlocks; ++id) {
    ASSERT_OK(reads[id].status);
    EXPECT_EQ(reads[id].found, id < kBlocks) << "block " << id;
    if (id == kBlocks) {
      EXPECT_TRUE(blocks[id].empty());
      continue;
    }
    EXPECT_TRUE(std::equal(blocks[id].begin(), blocks[id].end(), model.begin() + id * kBs) &&
                blocks[id].size() == kBs) << "block " << id;
  }

  // What the leaf holds: raw blocks as they are; anything else never the plain block.
  for (uint64_t id = 0; id < kBlocks; ++id) {
    Bytes object;
    bool found = false;
    ASSERT_OK(leaf_->Read("disk", id, &object, &found));
    ASSERT_TRUE(found);
    Bytes plain(model.begin() + id * kBs, model.begin() + (id + 1) * kBs);
    if (enc.raw()) {
      EXPECT_TRUE(object == plain) << "block " << id;
      continue;
    }
    EXPECT_EQ(std::string(object.begin(), object.begin() + 4), "S3BE");
    const bool compressible = id % 2 == 0;  // block 2's random tail still leaves it compressible
    if (enc.compression != BlockEncoding::Compression::kNone && compressible)
      EXPECT_LT(object.size(), kBs / 2) << "block " << id;
    else
      EXPECT_GT(object.size(), kBs) << "block " << id;
    if (enc.encryption != BlockEncoding::Encryption::kNone) {
      // No 16-byte run of the block appears in the object.
      std::string hay(object.begin(), object.end());
      EXPECT_EQ(hay.find(std::string(plain.begin() + 100, plain.begin() + 116)), std::string::npos);
    }
  }
}

TEST_P(CodecRoundTripTest, CopiedExportReadsBackAndIsBoundToItsName) {
  const Combo& combo = std::get<0>(GetParam());
  const BlockEncoding enc = EncodingOf(combo, kKeyA);
  auto store = std::make_shared<CodecStore>(leaf_, kKeyA);
  std::mt19937_64 rng(5);
  Bytes model(kBs * kBlocks, 0);
  {
    auto v = Open(store, "src", enc);
    ASSERT_TRUE(v);
    for (uint64_t id : {0, 5, 9}) {
      Bytes b = CompressibleBlock(kBs, rng);
      std::copy(b.begin(), b.end(), model.begin() + id * kBs);
      ASSERT_OK(v->Write(b.data(), b.size(), id * kBs, false));
    }
    ASSERT_OK(v->Flush());
  }
  AdminOptions ao;
  ao.threads = 2;
  ASSERT_OK(CopyExport(*store, "src", "dst", ao));
  auto fresh = std::make_shared<CodecStore>(leaf_, kKeyA);
  auto v = Open(fresh, "dst", BlockEncoding(), false);
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->encoding().SameChoices(enc));
  Bytes back(model.size());
  ASSERT_OK(v->Read(back.data(), back.size(), 0));
  EXPECT_TRUE(back == model);
  Bytes a, b;
  bool found = false;
  ASSERT_OK(leaf_->Read("src", 5, &a, &found));
  ASSERT_OK(leaf_->Read("dst", 5, &b, &found));
  // Encrypted and checksummed objects are bound to their export, so the copy was written anew;
  // others are copied as they are.
  const bool bound = enc.encryption != BlockEncoding::Encryption::kNone || enc.checksum;
  EXPECT_EQ(a == b, !bound);
}

const Combo kCombos[] = {
    {"none", "none", "none"},          {"none", "none", "crc32c"},
    {"zstd", "none", "none"},          {"zstd:19", "none", "crc32c"},
    {"none", "aes-256-gcm", "none"},   {"none", "aes-256-gcm", "crc32c"},
    {"zstd:1", "aes-256-gcm", "none"}, {"zstd", "aes-256-gcm", "crc32c"},
};

INSTANTIATE_TEST_SUITE_P(File, CodecRoundTripTest,
                         ::testing::Combine(::testing::ValuesIn(kCombos), ::testing::Values(kFile)),
                         [](const auto& info) {
                           return ComboName({std::get<0>(info.param), info.index});
                         });
INSTANTIATE_TEST_SUITE_P(S3, CodecRoundTripTest,
                         ::testing::Combine(::testing::ValuesIn(kCombos), ::testing::Values(kS3)),
                         [](const auto& info) {
                           return ComboName({std::get<0>(info.param), info.index});
                         });
INSTANTIATE_TEST_SUITE_P(S3DiskCache, CodecRoundTripTest,
                         ::testing::Combine(::testing::ValuesIn(kCombos),
                                            ::testing::Values(kS3DiskCache)),
                         [](const auto& info) {
                           return ComboName({std::get<0>(info.param), info.index});
                         });

// ---------------------------------------------------------------------------------------------
// Tampering: every damaged, misplaced or foreign object is an error, never data.

class CodecTamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::make_shared<FileStore>(dir_.path());
    ASSERT_OK(file_->Check());
  }
  // Creates export `name` with `enc`, blocks 0-3 of random data, flushed.
  void Make(const std::string& name, const BlockEncoding& enc, const std::string& key) {
    auto store = std::make_shared<CodecStore>(file_, key);
    VolumeOptions o;
    o.size = 4 * kBs;
    o.block_size = kBs;
    o.encoding = enc;
    o.lock = false;
    std::shared_ptr<Volume> v;
    ASSERT_OK(Volume::Open(store, name, o, &v));
    std::mt19937_64 rng(name.size());
    for (uint64_t id = 0; id < 4; ++id) {
      Bytes b = id == 3 ? CompressibleBlock(kBs, rng) : RandomBlock(kBs, rng);
      ASSERT_OK(v->Write(b.data(), b.size(), id * kBs, false));
    }
    ASSERT_OK(v->Flush());
  }
  // Reads block `id` through a fresh layer holding `key`.
  Status ReadBlock(const std::string& name, uint64_t id, const std::string& key = kKeyA) {
    CodecStore store(file_, key);
    Bytes data;
    bool found = false;
    Status s = store.Read(name, id, &data, &found);
    if (s.ok() && (!found || data.size() != kBs))
      return Status::Error(ENODATA, "read returned no block");
    return s;
  }
  std::string Path(const std::string& name, uint64_t id) { return file_->BlockPath(name, id); }

  static constexpr uint32_t kBs = 4096;
  TempDir dir_;
  std::shared_ptr<FileStore> file_;
};

// The encodings whose objects are authenticated: checksums, encryption, both with compression.
std::vector<BlockEncoding> CheckedEncodings() {
  std::vector<BlockEncoding> out;
  for (Combo c : {Combo{"none", "none", "crc32c"}, Combo{"zstd", "none", "crc32c"},
                  Combo{"none", "aes-256-gcm", "none"}, Combo{"zstd", "aes-256-gcm", "none"}})
    out.push_back(EncodingOf(c, kKeyA));
  return out;
}

TEST_F(CodecTamperTest, UntouchedObjectsRead) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    for (uint64_t id = 0; id < 4; ++id) EXPECT_OK(ReadBlock("e", id));
    ASSERT_OK(DeleteExport(*std::make_shared<CodecStore>(file_, kKeyA), "e", AdminOptions()));
  }
}

TEST_F(CodecTamperTest, SwappedBetweenIdsIsAnError) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    Bytes b0 = Slurp(Path("e", 0)), b1 = Slurp(Path("e", 1));
    Spit(Path("e", 0), b1);
    Spit(Path("e", 1), b0);
    EXPECT_EQ(ReadBlock("e", 0).err(), EIO);
    EXPECT_EQ(ReadBlock("e", 1).err(), EIO);
    EXPECT_OK(ReadBlock("e", 2));
    ASSERT_OK(DeleteExport(*std::make_shared<CodecStore>(file_, kKeyA), "e", AdminOptions()));
  }
}

TEST_F(CodecTamperTest, CopiedToAnotherExportIsAnError) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    Make("f", enc, kKeyA);
    Spit(Path("f", 2), Slurp(Path("e", 2)));
    EXPECT_EQ(ReadBlock("f", 2).err(), EIO);
    EXPECT_OK(ReadBlock("e", 2));
    auto store = std::make_shared<CodecStore>(file_, kKeyA);
    ASSERT_OK(DeleteExport(*store, "e", AdminOptions()));
    ASSERT_OK(DeleteExport(*store, "f", AdminOptions()));
  }
}

TEST_F(CodecTamperTest, EveryFlippedBitIsAnError) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    for (uint64_t id : {0, 3}) {  // incompressible and compressible
      const Bytes good = Slurp(Path("e", id));
      // Every bit of the header and nonce; a stride through the rest (a prime, so that it
      // visits every bit position of a byte); every third bit of the tag or CRC at the end.
      std::vector<size_t> bits;
      for (size_t bit = 0; bit < 8 * 20; ++bit) bits.push_back(bit);
      for (size_t bit = 8 * 20; bit < 8 * good.size(); bit += 401) bits.push_back(bit);
      for (size_t bit = 8 * good.size() - 8 * 16; bit < 8 * good.size(); bit += 3) bits.push_back(bit);
      for (size_t bit : bits) {
        Bytes bad = good;
        bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
        Spit(Path("e", id), bad);
        ASSERT_EQ(ReadBlock("e", id).err(), EIO) << "block " << id << " bit " << bit;
      }
      Spit(Path("e", id), good);
      EXPECT_OK(ReadBlock("e", id));
    }
    ASSERT_OK(DeleteExport(*std::make_shared<CodecStore>(file_, kKeyA), "e", AdminOptions()));
  }
}

TEST_F(CodecTamperTest, TruncatedObjectsAreAnError) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    const Bytes good = Slurp(Path("e", 1));
    // (Not 0 bytes: the file store reads an empty file as a block never written, by design.)
    for (size_t keep : {size_t{1}, size_t{3}, size_t{8}, size_t{20}, good.size() / 2,
                        good.size() - 17, good.size() - 4, good.size() - 1}) {
      Spit(Path("e", 1), Bytes(good.begin(), good.begin() + keep));
      EXPECT_EQ(ReadBlock("e", 1).err(), EIO) << "kept " << keep << " bytes";
    }
    Bytes longer = good;
    longer.push_back(0);
    Spit(Path("e", 1), longer);
    EXPECT_EQ(ReadBlock("e", 1).err(), EIO) << "one byte appended";
    ASSERT_OK(DeleteExport(*std::make_shared<CodecStore>(file_, kKeyA), "e", AdminOptions()));
  }
}

TEST_F(CodecTamperTest, PlainOrDowngradedObjectIsAnError) {
  for (const auto& enc : CheckedEncodings()) {
    SCOPED_TRACE(enc.Describe());
    Make("e", enc, kKeyA);
    // A plain block where an encoded one belongs.
    std::mt19937_64 rng(1);
    Spit(Path("e", 0), RandomBlock(kBs, rng));
    EXPECT_EQ(ReadBlock("e", 0).err(), EIO);
    // An object of a weaker encoding (header only, no checksum, no encryption), planted in place.
    BlockEncoding only_zstd;
    ASSERT_OK(only_zstd.SetCompression("zstd"));
    Make("z", only_zstd, kKeyA);
    Spit(Path("e", 3), Slurp(Path("z", 3)));
    EXPECT_EQ(ReadBlock("e", 3).err(), EIO);
    auto store = std::make_shared<CodecStore>(file_, kKeyA);
    for (const char* n : {"e", "z"}) ASSERT_OK(DeleteExport(*store, n, AdminOptions()));
  }
}

TEST_F(CodecTamperTest, CompressedOnlyObjectsRefuseTruncation) {
  BlockEncoding enc;
  ASSERT_OK(enc.SetCompression("zstd"));
  Make("e", enc, kKeyA);
  const Bytes good = Slurp(Path("e", 3));
  ASSERT_LT(good.size(), kBs / 2);
  Spit(Path("e", 3), Bytes(good.begin(), good.end() - 1));
  EXPECT_EQ(ReadBlock("e", 3).err(), EIO);
  Spit(Path("e", 3), Bytes(good.begin(), good.begin() + 4));
  EXPECT_EQ(ReadBlock("e", 3).err(), EIO);
}

TEST_F(CodecTamperTest, WrongOrMissingKeyIsRefusedAtOpen) {
  BlockEncoding enc = EncodingOf({"zstd", "aes-256-gcm", "none"}, kKeyA);
  Make("e", enc, kKeyA);
  for (const std::string& key : {kKeyB, std::string()}) {
    auto store = std::make_shared<CodecStore>(file_, key);
    VolumeOptions o;
    o.lock = false;
    std::shared_ptr<Volume> v;
    Status s = Volume::Open(store, "e", o, &v);
    EXPECT_EQ(s.err(), EPERM) << s.ToString();
    EXPECT_NE(s.message().find(key.empty() ? "no key was given" : "different key"),
              std::string::npos)
        << s.message();
    EXPECT_EQ(ReadBlock("e", 0, key).err(), EPERM);
    // Nor can it write: blocks written under another key could never be read.
    Bytes block(kBs, 1);
    EXPECT_EQ(store->Write("e", 0, block, false).err(), EPERM);
  }
  EXPECT_OK(ReadBlock("e", 0, kKeyA));
}

TEST_F(CodecTamperTest, CopyingAnEncryptedExportNeedsTheKey) {
  BlockEncoding enc = EncodingOf({"none", "aes-256-gcm", "none"}, kKeyA);
  Make("e", enc, kKeyA);
  auto keyless = std::make_shared<CodecStore>(file_, "");
  AdminOptions ao;
  EXPECT_EQ(CopyExport(*keyless, "e", "f", ao).err(), EPERM);
  // Its information can be shown without the key: the metadata is sound, only the key is missing.
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*keyless, "e", &info));
  EXPECT_TRUE(info.has_meta);
  EXPECT_TRUE(info.meta_error.empty()) << info.meta_error;
  EXPECT_EQ(info.meta.size, 4u * kBs);
  EXPECT_NE(info.key_error.find("no key was given"), std::string::npos) << info.key_error;
  ASSERT_OK(GetExportInfo(*std::make_shared<CodecStore>(file_, kKeyA), "e", &info));
  EXPECT_TRUE(info.key_error.empty());
  // Deleting does not: a lost key must not leave an export that cannot be removed.
  EXPECT_OK(DeleteExport(*keyless, "e", ao));
  EXPECT_FALSE(fs::exists(file_->ExportDir("e") + "/metadata"));
}

// ---------------------------------------------------------------------------------------------
// Configuration, the factory, and what the metadata decides.

class CodecConfigTest : public ::testing::Test {
 protected:
  Config Base() {
    Config c;
    c.store = dir_.path() + "/store";
    c.cache = false;
    return c;
  }
  TempDir dir_;
};

TEST_F(CodecConfigTest, DefaultStoreKeepsTheRawLayout) {
  ::unsetenv("S3BLOCK_KEY");
  Config c = Base();
  ASSERT_OK(c.Finish());
  StoreStack stack;
  ASSERT_OK(MakeStoreStack(c, &stack));
  ASSERT_OK(stack.store->Check());
  VolumeOptions o = VolumeOptionsFor(c, false);
  o.size = 8192;
  o.block_size = 4096;
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(stack, "plain", o, &v));
  Bytes b(4096);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_OK(v->Write(b.data(), b.size(), 4096, false));
  ASSERT_OK(v->Flush());
  FileStore file(c.store);
  EXPECT_TRUE(Slurp(file.BlockPath("plain", 1)) == b);
  Bytes meta = Slurp(file.ExportDir("plain") + "/metadata");
  EXPECT_EQ(std::string(meta.begin(), meta.end()),
            "# nbd-s3-backend export metadata\nformat=1\nsize=8192\nblock-size=4096\n");
}

TEST_F(CodecConfigTest, ParametersAndKeySources) {
  ::unsetenv("S3BLOCK_KEY");
  Config c = Base();
  ASSERT_OK(c.Set("compression", "zstd:5"));
  ASSERT_OK(c.Set("checksum", "crc32c"));
  EXPECT_EQ(c.Set("compression", "gzip").err(), EINVAL);
  EXPECT_EQ(c.Set("encryption", "aes-128").err(), EINVAL);
  ASSERT_OK(c.Set("encryption", "aes-256-gcm"));
  Status s = c.Finish();
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("needs a key"), std::string::npos) << s.message();
  EXPECT_EQ(c.Set("key-file", dir_.path() + "/missing").err(), EINVAL);
  const std::string key_path = dir_.path() + "/key";
  std::ofstream(key_path) << std::string(64, 'c') << "\n";
  ASSERT_OK(c.Set("key-file", key_path));
  ASSERT_OK(c.Finish());
  EXPECT_EQ(c.encryption_key, std::string(32, '\xcc'));
  EXPECT_TRUE(KeyMatchesCheck(c.encryption_key, c.encoding.key_check));
  EXPECT_EQ(c.encoding.Describe(), "zstd:5+aes-256-gcm+crc32c");
  VolumeOptions o = VolumeOptionsFor(c, false);
  EXPECT_TRUE(o.encoding_explicit);
  EXPECT_TRUE(o.encoding.SameChoices(c.encoding));

  // The environment variable, when no key-file= is given.
  ::setenv("S3BLOCK_KEY", std::string(64, 'd').c_str(), 1);
  Config e = Base();
  ASSERT_OK(e.Set("encryption", "aes-256-gcm"));
  ASSERT_OK(e.Finish());
  EXPECT_EQ(e.encryption_key, std::string(32, '\xdd'));
  ::setenv("S3BLOCK_KEY", "short", 1);
  Config bad = Base();
  EXPECT_EQ(bad.Finish().err(), EINVAL);
  ::unsetenv("S3BLOCK_KEY");
}

TEST_F(CodecConfigTest, RecordedEncodingWinsOverAnotherGivenLater) {
  ::unsetenv("S3BLOCK_KEY");
  Config c = Base();
  ASSERT_OK(c.Set("compression", "zstd"));
  ASSERT_OK(c.Finish());
  StoreStack stack;
  ASSERT_OK(MakeStoreStack(c, &stack));
  ASSERT_OK(stack.store->Check());
  VolumeOptions o = VolumeOptionsFor(c, false);
  o.size = 4096 * 4;
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(stack, "z", o, &v));
  EXPECT_TRUE(v->encoding_note().empty());
  v.reset();

  Config later = Base();
  ASSERT_OK(later.Set("compression", "none"));
  ASSERT_OK(later.Finish());
  ASSERT_OK(MakeStoreStack(later, &stack));
  ASSERT_OK(Volume::Open(stack, "z", VolumeOptionsFor(later, false), &v));
  EXPECT_NE(v->encoding_note().find("keeps the block encoding it was created with (zstd:3)"),
            std::string::npos)
      << v->encoding_note();
  EXPECT_EQ(v->encoding().Describe(), "zstd:3");
  Bytes zeros_then_text(4096, 0);
  for (size_t i = 2000; i < 4096; ++i) zeros_then_text[i] = 'x';
  ASSERT_OK(v->Write(zeros_then_text.data(), 4096, 0, true));
  FileStore file(c.store);
  Bytes object = Slurp(file.BlockPath("z", 0));
  EXPECT_EQ(std::string(object.begin(), object.begin() + 4), "S3BE");
  EXPECT_LT(object.size(), 200u);
  // Without an explicit choice there is nothing to say.
  v.reset();
  Config quiet = Base();
  ASSERT_OK(quiet.Finish());
  ASSERT_OK(MakeStoreStack(quiet, &stack));
  ASSERT_OK(Volume::Open(stack, "z", VolumeOptionsFor(quiet, false), &v));
  EXPECT_TRUE(v->encoding_note().empty());
}

TEST_F(CodecConfigTest, BlocksWithoutMetadataStayRaw) {
  ::unsetenv("S3BLOCK_KEY");
  // The first version's layout: block files, no metadata.
  FileStore file(dir_.path() + "/store");
  ASSERT_OK(file.Check());
  Bytes old(4096, 'o');
  ASSERT_OK(file.Write("legacy", 2, old, true));
  Config c = Base();
  ASSERT_OK(c.Set("compression", "zstd"));
  ASSERT_OK(c.Set("checksum", "crc32c"));
  ASSERT_OK(c.Finish());
  StoreStack stack;
  ASSERT_OK(MakeStoreStack(c, &stack));
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(stack, "legacy", VolumeOptionsFor(c, false), &v));
  EXPECT_TRUE(v->encoding().raw());
  EXPECT_NE(v->encoding_note().find("has blocks but no metadata"), std::string::npos)
      << v->encoding_note();
  Bytes back(4096);
  ASSERT_OK(v->Read(back.data(), back.size(), 2 * 4096));
  EXPECT_TRUE(back == old);
  // A new export of the same server gets the encoding.
  ASSERT_OK(Volume::Open(stack, "fresh", VolumeOptionsFor(c, false), &v));
  EXPECT_EQ(v->encoding().Describe(), "zstd:3+crc32c");
  EXPECT_TRUE(v->encoding_note().empty());
}

TEST_F(CodecConfigTest, AdminCreateAndImportRecordTheEncoding) {
  ::unsetenv("S3BLOCK_KEY");
  Config c = Base();
  const std::string key_path = dir_.path() + "/key";
  std::ofstream(key_path) << kKeyA;
  ASSERT_OK(c.Set("key-file", key_path));
  ASSERT_OK(c.Set("encryption", "aes-256-gcm"));
  ASSERT_OK(c.Set("compression", "zstd:2"));
  ASSERT_OK(c.Finish());
  std::shared_ptr<BlockStore> store;
  ASSERT_OK(MakeCodedStore(c, &store));
  ASSERT_OK(store->Check());
  AdminOptions ao;
  ao.threads = 2;
  ao.encoding = c.encoding;
  ASSERT_OK(CreateExport(*store, "made", 1 << 20, 4096, ao));
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*store, "made", &info));
  EXPECT_EQ(info.meta.encoding.Describe(), "zstd:2+aes-256-gcm");

  // An image imported and exported again, byte for byte, with encoded objects in between.
  const std::string image = dir_.path() + "/image", out = dir_.path() + "/out";
  std::mt19937_64 rng(9);
  Bytes data = CompressibleBlock(3 * 4096 + 100, rng);
  Spit(image, data);
  ASSERT_OK(ImportImage(*store, "imported", image, 4096, ao));
  FileStore file(c.store);
  Bytes object = Slurp(file.BlockPath("imported", 1));
  EXPECT_EQ(std::string(object.begin(), object.begin() + 4), "S3BE");
  EXPECT_LT(object.size(), 4096u);
  ASSERT_OK(ExportImage(*store, "imported", out, ao));
  EXPECT_TRUE(Slurp(out) == data);
  VerifyReport report;
  ASSERT_OK(VerifyExport(*store, "imported", ao, &report));
  EXPECT_EQ(report.blocks_checked, 4u);
  EXPECT_TRUE(report.problems.empty());
  // Verify reports a damaged block through the layer.
  object[object.size() / 2] ^= 1;
  Spit(file.BlockPath("imported", 1), object);
  ASSERT_OK(VerifyExport(*store, "imported", ao, &report));
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("block 1"), std::string::npos) << report.problems[0];
}

// A block rewritten through the whole stack (the cache, the codec, the file store, with and
// without the cache) is written into its file in place when the export is raw, and replaced by
// a new file when it is encoded: a torn write of an encoded object would make it undecodable,
// while a raw block torn at a crash holds old and new pages, as a disk would.
// Export "e" of `blocks` blocks of 4 KiB with checksum `checksum`, on a file store at `store`,
// through the cache or not.
void OpenOnFileStore(const std::string& store, bool cache, const char* checksum, uint64_t blocks,
                     StoreStack* stack, std::shared_ptr<Volume>* v) {
  Config c;
  c.store = store;
  c.cache = cache;
  ASSERT_OK(MakeStoreStack(c, stack));
  ASSERT_OK(stack->store->Check());
  ASSERT_OK(stack->store->Start());
  VolumeOptions o;
  o.size = blocks * 4096;
  o.block_size = 4096;
  ASSERT_OK(o.encoding.SetChecksum(checksum));
  o.lock = false;
  ASSERT_OK(Volume::Open(*stack, "e", o, v));
}

TEST(CodecOverwriteTest, RawBlocksAreRewrittenInPlaceAndEncodedOnesReplaced) {
  for (bool cache : {true, false}) {
    for (const char* checksum : {"none", "crc32c"}) {
      SCOPED_TRACE(std::string(cache ? "cache" : "no cache") + ", checksum " + checksum);
      TempDir dir;
      const std::string store = dir.path() + "/store";
      StoreStack stack;
      std::shared_ptr<Volume> v;
      ASSERT_NO_FATAL_FAILURE(OpenOnFileStore(store, cache, checksum, 4, &stack, &v));
      std::mt19937_64 rng(5);
      const Bytes first = RandomBlock(4096, rng), second = RandomBlock(4096, rng);
      ASSERT_OK(v->Write(first.data(), first.size(), 4096, false));
      ASSERT_OK(v->Flush());
      FileStore file(store);
      const std::string path = file.BlockPath("e", 1);
      struct stat before, after;
      ASSERT_EQ(::stat(path.c_str(), &before), 0);
      ASSERT_OK(v->Write(second.data(), second.size(), 4096, false));
      ASSERT_OK(v->Flush());
      ASSERT_EQ(::stat(path.c_str(), &after), 0);
      if (std::string(checksum) == "none") {
        EXPECT_EQ(after.st_ino, before.st_ino);
        EXPECT_TRUE(Slurp(path) == second);
      } else {
        EXPECT_NE(after.st_ino, before.st_ino);
        EXPECT_EQ(Slurp(path).size(), 4096u + 12);  // header and CRC: the object, not the block
      }
      Bytes back(4096);
      ASSERT_OK(v->Read(back.data(), back.size(), 4096));
      EXPECT_TRUE(back == second);
      v.reset();
      stack = StoreStack();
    }
  }
}

// A write of several whole blocks reaches the codec as one run: each block is still encoded
// (and bound to its id) on its own.
TEST(CodecOverwriteTest, ARunOfBlocksIsEncodedBlockByBlock) {
  for (bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "cache" : "no cache");
    TempDir dir;
    const std::string store = dir.path() + "/store";
    StoreStack stack;
    std::shared_ptr<Volume> v;
    ASSERT_NO_FATAL_FAILURE(OpenOnFileStore(store, cache, "crc32c", 8, &stack, &v));
    std::mt19937_64 rng(9);
    Bytes run;
    for (int i = 0; i < 5; ++i) {
      const Bytes b = RandomBlock(4096, rng);
      run.insert(run.end(), b.begin(), b.end());
    }
    ASSERT_OK(v->Write(run.data(), run.size(), 4096, false));
    ASSERT_OK(v->Flush());
    FileStore file(store);
    for (uint64_t id = 1; id <= 5; ++id)
      EXPECT_EQ(Slurp(file.BlockPath("e", id)).size(), 4096u + 12) << "block " << id;
    Bytes back(run.size());
    ASSERT_OK(v->Read(back.data(), back.size(), 4096));
    EXPECT_TRUE(back == run);
    v.reset();
    stack = StoreStack();
  }
}

}  // namespace
}  // namespace s3block
