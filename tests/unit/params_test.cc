#include "s3block/params.h"

#include <gtest/gtest.h>

#include "s3block/config.h"
#include "s3block/export_meta.h"
#include "test_util.h"

namespace s3block {
namespace {

TEST(ParseSize, AcceptsPlainNumbersAndSuffixes) {
  uint64_t v = 0;
  ASSERT_OK(ParseSize("size", "4096", &v));
  EXPECT_EQ(v, 4096u);
  ASSERT_OK(ParseSize("size", "4K", &v));
  EXPECT_EQ(v, 4096u);
  ASSERT_OK(ParseSize("size", "1g", &v));
  EXPECT_EQ(v, 1ull << 30);
  ASSERT_OK(ParseSize("size", "2TiB", &v));
  EXPECT_EQ(v, 2ull << 40);
  ASSERT_OK(ParseSize("size", "16MB", &v));
  EXPECT_EQ(v, 16ull << 20);
}

TEST(ParseSize, RefusesGarbageWithAClearMessage) {
  uint64_t v = 7;
  for (const char* bad : {"", "G", "1X", "-1", "1.5G", "1GG", "99999999999999999999", "20E",
                          " 1", "1 "}) {
    Status s = ParseSize("size", bad, &v);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.err(), EINVAL) << bad;
    EXPECT_NE(s.message().find("size="), std::string::npos) << s.message();
  }
  EXPECT_EQ(v, 7u);
}

TEST(ParseBlockSize, PowersOfTwoFrom512To16M) {
  uint32_t v = 0;
  ASSERT_OK(ParseBlockSize("block-size", "512", &v));
  EXPECT_EQ(v, 512u);
  ASSERT_OK(ParseBlockSize("block-size", "16M", &v));
  EXPECT_EQ(v, 16u << 20);
  for (const char* bad : {"256", "32M", "4095", "3000", "0", "1k5"}) {
    Status s = ParseBlockSize("block-size", bad, &v);
    EXPECT_EQ(s.err(), EINVAL) << bad;
  }
}

TEST(ParseBool, Forms) {
  bool b = false;
  ASSERT_OK(ParseBool("x", "Yes", &b));
  EXPECT_TRUE(b);
  ASSERT_OK(ParseBool("x", "off", &b));
  EXPECT_FALSE(b);
  EXPECT_FALSE(ParseBool("x", "maybe", &b).ok());
}

TEST(ValidateExportName, AcceptsOrdinaryNames) {
  for (const char* ok : {"test_device", "dev1", "a", "my disk", "disk.img", "a..b", "%2F",
                         "\xc3\xa9t\xc3\xa9", "UPPER-lower_0123"}) {
    EXPECT_OK(ValidateExportName(ok));
  }
  EXPECT_OK(ValidateExportName(std::string(255, 'x')));
}

TEST(ValidateExportName, RefusesNamesThatEscapeOrBreakKeys) {
  std::vector<std::string> bad = {"",      " ",      "\t\n",   ".",         "..",  "../x",
                                  "a/b",   "/",      "a\nb",   "a\rb",      "\x7f", " lead",
                                  "trail ", "a\\b",  "\xff",   "\xc0\xaf",  std::string(256, 'x'),
                                  std::string(4096, 'y'), std::string("a\0b", 3)};
  for (const auto& name : bad) {
    Status s = ValidateExportName(name);
    EXPECT_EQ(s.err(), EINVAL) << QuoteForMessage(name);
    EXPECT_NE(s.message().find("export name"), std::string::npos);
  }
}

TEST(QuoteForMessage, ShowsPrintableTextAndEscapesTheRest) {
  EXPECT_EQ(QuoteForMessage("test_device"), "test_device");
  EXPECT_EQ(QuoteForMessage("ok-name-\xc3\xbc"), "ok-name-\xc3\xbc");        // ü as it is
  EXPECT_EQ(QuoteForMessage("\xe6\x97\xa5\xf0\x9f\x92\xbe"), "\xe6\x97\xa5\xf0\x9f\x92\xbe");  // 3 and 4 bytes
  EXPECT_EQ(QuoteForMessage("a'b\\c"), "a\\x27b\\x5cc");
  EXPECT_EQ(QuoteForMessage(std::string("a\nb\0c", 5)), "a\\x0ab\\x00c");
  EXPECT_EQ(QuoteForMessage("\xff\xc0\xaf"), "\\xff\\xc0\\xaf");                  // not UTF-8, overlong
  EXPECT_EQ(QuoteForMessage("x\xc3"), "x\\xc3");                                // cut short
  EXPECT_EQ(QuoteForMessage("\xed\xa0\x80"), "\\xed\\xa0\\x80");                  // a surrogate
  EXPECT_EQ(QuoteForMessage("\xc2\x85"), "\\xc2\\x85");                          // C1 control
  EXPECT_EQ(QuoteForMessage("ab\xe2\x80\xae" "cd"), "ab\\xe2\\x80\\xaecd");          // right-to-left override
  EXPECT_EQ(QuoteForMessage("a\xe2\x80\x8b" "b"), "a\\xe2\\x80\\x8bb");              // zero-width space
  EXPECT_EQ(QuoteForMessage("\xef\xbb\xbf"), "\\xef\\xbb\\xbf");                  // BOM
  EXPECT_EQ(QuoteForMessage("\xd8\x9c"), "\\xd8\\x9c");                          // Arabic letter mark
  // Cut at 64 bytes, never inside a character: 21 three-byte characters are 63 bytes, and the
  // 22nd would end past the limit.
  std::string cjk;
  for (int i = 0; i < 30; ++i) cjk += "\xe6\x97\xa5";
  EXPECT_EQ(QuoteForMessage(cjk), cjk.substr(0, 63) + "...(90 bytes)");
  EXPECT_EQ(QuoteForMessage(std::string(70, 'x')), std::string(64, 'x') + "...(70 bytes)");
  EXPECT_EQ(QuoteForMessage(std::string(64, 'x')), std::string(64, 'x'));
}

TEST(ExportMeta, RoundTrip) {
  ExportMeta m;
  m.size = 10ull << 30;
  m.block_size = 1 << 20;
  ExportMeta back;
  ASSERT_OK(ExportMeta::Parse("e", m.Serialize(), &back));
  EXPECT_EQ(back.size, m.size);
  EXPECT_EQ(back.block_size, m.block_size);
  EXPECT_EQ(back.format, kMetaFormatVersion);
}

TEST(ExportMeta, RefusesCorruptAndFutureDocuments) {
  ExportMeta m;
  EXPECT_EQ(ExportMeta::Parse("e", "", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", "garbage", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", "format=1\nsize=10\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", "format=1\nsize=10\nblock-size=1000\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", "format=1\nsize=x\nblock-size=4096\n", &m).err(), EIO);
  EXPECT_EQ(ExportMeta::Parse("e", "format=1\nsize=10\nblock-size=4096\ncolour=red\n", &m).err(), EIO);
  Status future = ExportMeta::Parse("e", "format=2\nsize=10\nblock-size=4096\nnew-thing=1\n", &m);
  EXPECT_EQ(future.err(), ENOTSUP);
  EXPECT_NE(future.message().find("newer"), std::string::npos) << future.message();
}

TEST(Config, UnknownAndMalformedParameters) {
  Config c;
  EXPECT_EQ(c.Set("sise", "1G").err(), EINVAL);
  EXPECT_EQ(c.Set("size", "0").err(), EINVAL);
  EXPECT_EQ(c.Set("block-size", "1000").err(), EINVAL);
  EXPECT_EQ(c.Set("default-export", "../x").err(), EINVAL);
  EXPECT_EQ(c.Finish().err(), EINVAL);  // no store
  ASSERT_OK(c.Set("store", "/tmp/x"));
  ASSERT_OK(c.Finish());
  Config rel;
  ASSERT_OK(rel.Set("store", "relative/dir"));
  EXPECT_EQ(rel.Finish().err(), EINVAL);
}

TEST(Config, DiskCacheTakesAnAbsoluteDirectoryAndASizeForAnS3Store) {
  Config c;
  ASSERT_OK(c.Set("disk-cache", "/var/cache/s3,block,10G"));  // the size follows the last comma
  EXPECT_EQ(c.disk_cache_dir, "/var/cache/s3,block");
  EXPECT_EQ(c.disk_cache_size, 10ull << 30);
  for (const char* bad : {"/var/cache", "/var/cache,", "/var/cache,0", "/var/cache,lots", "relative,1G", ",1G"}) {
    Config d;
    Status s = d.Set("disk-cache", bad);
    EXPECT_EQ(s.err(), EINVAL) << bad;
    EXPECT_NE(s.message().find("disk-cache"), std::string::npos) << s.message();
    EXPECT_TRUE(d.disk_cache_dir.empty()) << bad;
  }
  ASSERT_OK(c.Set("store", "/tmp/x"));
  Status local = c.Finish();
  EXPECT_EQ(local.err(), EINVAL);
  EXPECT_NE(local.message().find("S3"), std::string::npos) << local.message();
  ASSERT_OK(c.Set("store", "s3://bucket/prefix"));
  ASSERT_OK(c.Finish());
  // Smaller than two blocks would keep nothing.
  ASSERT_OK(c.Set("disk-cache", "/var/cache,4K"));
  Status tiny = c.Finish();
  EXPECT_EQ(tiny.err(), EINVAL);
  EXPECT_NE(tiny.message().find("smaller than two blocks"), std::string::npos) << tiny.message();
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST(ExportMeta, StateRoundTripsAndReadyIsNotWritten) {
  ExportMeta m;
  m.size = 4096;
  m.block_size = 4096;
  EXPECT_EQ(m.Serialize().find("state"), std::string::npos);
  m.state = ExportMeta::State::kDeleting;
  ExportMeta back;
  ASSERT_OK(ExportMeta::Parse("e", m.Serialize(), &back));
  EXPECT_EQ(back.state, ExportMeta::State::kDeleting);
  EXPECT_EQ(ExportMeta::Parse("e", "format=1\nsize=1\nblock-size=512\nstate=odd\n", &back).err(), EIO);
}

}  // namespace
}  // namespace s3block
