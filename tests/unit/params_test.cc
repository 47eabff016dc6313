#include "s3block/params.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "base/config_params.h"
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

// The parameter table (src/base/config_params.h) and what is made from it.
namespace s3block {
namespace {

std::string ReadSourceFile(const std::string& path) {
  std::ifstream in(std::string(S3BLOCK_SOURCE_DIR) + "/" + path);
  EXPECT_TRUE(in) << path;
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Every NAME of "NAME=" that `pattern`'s first group catches in text.
std::set<std::string> NamesIn(const std::string& text, const std::string& pattern) {
  std::set<std::string> names;
  const std::regex re(pattern);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    names.insert((*it)[1].str());
  return names;
}

std::set<std::string> TableNames() {
  std::set<std::string> names;
  for (const ConfigParam& p : ConfigParams()) names.insert(p.name);
  return names;
}

// The part of text from the line `from` to the next line starting with `to`.
std::string Section(const std::string& text, const std::string& from, const std::string& to) {
  const size_t begin = text.find(from);
  EXPECT_NE(begin, std::string::npos) << from;
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find("\n" + to, begin + from.size()) - begin);
}

TEST(ConfigParams, NamesAreUniqueAndFoundByNameOrAlias) {
  std::set<std::string> seen;
  for (const ConfigParam& p : ConfigParams()) {
    EXPECT_TRUE(seen.insert(p.name).second) << p.name;
    if (p.alias != nullptr) EXPECT_TRUE(seen.insert(p.alias).second) << p.alias;
    EXPECT_EQ(FindConfigParam(p.name), &p);
  }
  EXPECT_EQ(FindConfigParam("blocksize"), FindConfigParam("block-size"));
  EXPECT_EQ(FindConfigParam("sise"), nullptr);
  Config c;
  EXPECT_EQ(c.Set("sise", "1G").message(), "unknown parameter 'sise' (see --help for the list)");
}

TEST(ConfigParams, EachDefaultIsWhatAFreshConfigHolds) {
  for (const ConfigParam& p : ConfigParams()) {
    if (p.default_value == nullptr) continue;
    Config c;
    ASSERT_OK(c.Set(p.name, p.default_value));
    // Giving a value is recorded apart from the value itself.
    c.size_given = c.block_size_given = c.encoding_given = c.layout_given = false;
    EXPECT_TRUE(c == Config{}) << p.name << "=" << p.default_value << " is not the default";
  }
}

TEST(ConfigParams, HelpIsOneShortLineForEach) {
  for (const ConfigParam& p : ConfigParams()) {
    EXPECT_EQ(std::string_view(p.help).find('\n'), std::string_view::npos) << p.name;
    EXPECT_LE(std::string_view(p.help).size(), 72u) << p.name;
  }
  // As the plugin's and the admin command's help show them.
  std::istringstream lines(ParamListText(ParamSyntax::kPlugin, "", 26) +
                           ParamListText(ParamSyntax::kAdmin, "  ", 32));
  for (std::string line; std::getline(lines, line);) EXPECT_LE(line.size(), 100u) << line;
}

TEST(ConfigParams, PluginHelpListsEveryParameterAndTheAdminCommandItsOwn) {
  const std::string help = std::string("\n") + Config::Help();
  const std::string admin = "\n" + ParamListText(ParamSyntax::kAdmin, "", 32);
  for (const ConfigParam& p : ConfigParams()) {
    EXPECT_NE(help.find("\n" + std::string(p.name) + "=" + p.value), std::string::npos) << p.name;
    EXPECT_EQ(admin.find("\n--" + std::string(p.name) + " " + p.value) != std::string::npos, p.admin)
        << p.name;
  }
  EXPECT_NE(help.find("size=SIZE                 size of a new export"), std::string::npos) << help;
  EXPECT_NE(help.find("(default 1G)"), std::string::npos) << help;
  EXPECT_EQ(help.back(), ')');  // nbdkit ends the text itself
  // The secret never goes on the admin command's line, where ps would show it.
  EXPECT_FALSE(FindConfigParam("secret-key")->admin);
  EXPECT_TRUE(FindConfigParam("secret-key")->password);
}

TEST(ConfigParams, PathsThatAServerInAnotherDirectoryMakesAbsolute) {
  const auto npos = std::string_view::npos;
  EXPECT_EQ(FindConfigParam("store")->PathLength("data"), 4u);
  EXPECT_EQ(FindConfigParam("store")->PathLength("s3://bucket/p"), npos);
  EXPECT_EQ(FindConfigParam("disk-cache")->PathLength("cache,dir,10G"), 9u);
  EXPECT_EQ(FindConfigParam("disk-cache")->PathLength("10G"), npos);
  EXPECT_EQ(FindConfigParam("disk-cache")->PathLength(",10G"), npos);
  EXPECT_EQ(FindConfigParam("stats-file")->PathLength("stats.json"), 10u);
  EXPECT_EQ(FindConfigParam("key-file")->PathLength("key"), npos);
}

TEST(ConfigParams, TheManualDescribesExactlyTheParametersOfTheTable) {
  const std::string pod = ReadSourceFile("docs/nbdkit-s3block-plugin.pod");
  const std::string parameters = Section(pod, "=head1 PARAMETERS", "=head1");
  EXPECT_EQ(NamesIn(parameters, R"(\n=item \[?B<([a-z-]+)=)"), TableNames());
  // The build puts the list made from the table where the marker is.
  EXPECT_NE(parameters.find("\n=for comment s3block parameter list\n"), std::string::npos);
  const std::set<std::string> synopsis = NamesIn(Section(pod, "=head1 SYNOPSIS", "=head1"),
                                                 R"([[ ]([a-z-]+)=)");
  EXPECT_FALSE(synopsis.empty());
  for (const std::string& name : synopsis) EXPECT_EQ(TableNames().count(name), 1u) << name;
}

TEST(ConfigParams, TheReadmeNamesOnlyParametersOfTheTable) {
  const std::string readme = ReadSourceFile("README.md");
  const std::string table = Section(readme, "| parameter | default | meaning |", "The rest");
  const std::set<std::string> named = NamesIn(table, "`([a-z-]+)=");
  EXPECT_GE(named.size(), 10u);
  for (const std::string& name : named) EXPECT_EQ(TableNames().count(name), 1u) << name;
}

}  // namespace
}  // namespace s3block
