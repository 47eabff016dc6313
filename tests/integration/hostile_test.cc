// Hostile input through a real nbdkit: export names no libnbd call can send (a NUL byte, 4096
// bytes), sent by a hand-written NBD handshake; names that look like paths once decoded; a store
// path that is a file; metadata that is corrupt or from a future format; block files of the wrong
// length. Each must give a clear error and change nothing stored.
//
// (Names with "..", "/", newlines and 256 bytes are in plugin_test.cc; a non-XML S3 error body is
// produced by the fault proxy in tests/scripts/faults.sh.)
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "nbdkit_fixture.h"

namespace s3block::testing {
namespace {

namespace fs = std::filesystem;

// The outcome of NBD_OPT_GO for one export name, sent over a raw fixed-newstyle handshake.
enum class GoResult { kAccepted, kRefused, kProtocolError };

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}
bool ReadAll(int fd, void* buf, size_t count) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < count) {
    ssize_t n = ::read(fd, p + done, count - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}
void Put32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void Put64(std::string* s, uint64_t v) {
  for (int i = 7; i >= 0; --i) s->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t Get(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | p[i];
  return v;
}

constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;
constexpr uint64_t kReplyMagic = 0x3e889045565a9ull;
constexpr uint32_t kOptAbort = 2, kOptGo = 7, kRepAck = 1;

// Connects to the unix socket, negotiates fixed newstyle and asks NBD_OPT_GO for `name` (any
// bytes). Reads replies until an ACK (accepted) or an error reply (refused).
GoResult RawGo(const std::string& socket_path, const std::string& name, std::string* detail) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return GoResult::kProtocolError;
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  GoResult result = GoResult::kProtocolError;
  uint8_t hello[18];
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ReadAll(fd, hello, sizeof hello) && std::memcmp(hello, "NBDMAGIC", 8) == 0 &&
      Get(hello + 8, 8) == kIHaveOpt) {
    std::string out;
    Put32(&out, 3);  // fixed newstyle, no zeroes
    Put64(&out, kIHaveOpt);
    Put32(&out, kOptGo);
    Put32(&out, static_cast<uint32_t>(4 + name.size() + 2));
    Put32(&out, static_cast<uint32_t>(name.size()));
    out += name;
    out += std::string(2, '\0');  // no information requests
    if (WriteAll(fd, out)) {
      for (;;) {
        uint8_t head[20];
        if (!ReadAll(fd, head, sizeof head) || Get(head, 8) != kReplyMagic) break;
        uint32_t type = static_cast<uint32_t>(Get(head + 12, 4));
        std::string data(Get(head + 16, 4), '\0');
        if (!data.empty() && !ReadAll(fd, data.data(), data.size())) break;
        if (type == kRepAck) {
          result = GoResult::kAccepted;
          break;
        }
        if (type & 0x80000000u) {
          *detail = "error reply " + std::to_string(type & 0x7fffffffu) + ": " + data;
          result = GoResult::kRefused;
          // Leave politely; the server may already be closing the option phase.
          std::string abort;
          Put64(&abort, kIHaveOpt);
          Put32(&abort, kOptAbort);
          Put32(&abort, 0);
          WriteAll(fd, abort);
          break;
        }
      }
    }
  }
  ::close(fd);
  return result;
}

// Every file under `dir` with its content: to show that nothing changed.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    std::string rel = fs::relative(e.path(), dir).string();
    if (e.is_directory()) {
      out[rel + "/"] = "";
    } else {
      std::ifstream in(e.path(), std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      out[rel] = ss.str();
    }
  }
  return out;
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

using HostileTest = NbdkitTest;

TEST_P(HostileTest, NamesWithNulOr4096BytesAreRefusedByTheRawProtocol) {
  ASSERT_TRUE(StartServer());
  // A good name through the same raw handshake is accepted: the client itself is right.
  std::string detail;
  ASSERT_EQ(RawGo(server_->socket(), "raw-good", &detail), GoResult::kAccepted) << server_->LastLog();
  const std::vector<std::string> names = {
      std::string("nul\0inside", 10), std::string("trailing-nul\0", 13), std::string(1, '\0'),
      std::string(4096, 'n'), std::string(4095, 'n') + '\0', "a\x7f" "b", "bad-utf8-\xc3\x28",
      "over\xf4\x90\x80\x80" "long"};
  for (const auto& name : names) {
    detail.clear();
    GoResult r = RawGo(server_->socket(), name, &detail);
    EXPECT_EQ(r, GoResult::kRefused) << "name of " << name.size() << " bytes: " << detail;
  }
  // The server still works and holds only the good export.
  auto c = Connect("after");
  ASSERT_TRUE(c);
  std::vector<uint8_t> data = Pattern(5, 0, 4096);
  ASSERT_TRUE(c->Pwrite(data.data(), data.size(), 0)) << c->error();
  ASSERT_TRUE(c->Flush()) << c->error();
  auto store = LeafStore();
  ASSERT_TRUE(store);
  std::vector<std::string> exports;
  ASSERT_TRUE(store->ListExports(&exports).ok());
  std::sort(exports.begin(), exports.end());
  EXPECT_EQ(exports, (std::vector<std::string>{"after", "raw-good"}));
}

TEST_P(HostileTest, PercentEncodedSlashIsAPlainNameNeverAPath) {
  ASSERT_TRUE(StartServer());
  // In a URI, %2F decodes to '/': libnbd sends "a/b", which is refused.
  NbdClient decoded;
  EXPECT_FALSE(decoded.Connect(server_->socket(), "a/b"));
  nbd_handle* h = nbd_create();
  ASSERT_NE(h, nullptr);
  std::string uri = "nbd+unix:///..%2F..%2Fescape?socket=" + server_->socket();
  EXPECT_EQ(nbd_connect_uri(h, uri.c_str()), -1) << "a URI naming ../../escape was served";
  nbd_close(h);
  // Sent as it is (no decoding), "a%2Fb" is an ordinary name of five bytes.
  auto c = Connect("a%2Fb");
  ASSERT_TRUE(c);
  std::vector<uint8_t> data = Pattern(6, 0, 4096);
  ASSERT_TRUE(c->Pwrite(data.data(), data.size(), 0)) << c->error();
  ASSERT_TRUE(c->Flush()) << c->error();
  auto store = LeafStore();
  ASSERT_TRUE(store);
  std::vector<std::string> exports;
  ASSERT_TRUE(store->ListExports(&exports).ok());
  EXPECT_EQ(exports, std::vector<std::string>{"a%2Fb"});
  if (is_local()) {
    EXPECT_TRUE(LocallyStored("a%2Fb", 0, data));
    EXPECT_FALSE(fs::exists(local_root() + "/exports/a"));
    EXPECT_FALSE(fs::exists(fs::path(local_root()).parent_path() / "escape"));
  }
}

TEST_P(HostileTest, AStorePathThatIsAFileStopsNbdkitAndIsLeftAlone) {
  if (!is_local()) GTEST_SKIP() << "a local store path";
  const std::string file = scratch_->path() + "/not-a-dir";
  WriteFile(file, "precious\n");
  ExitResult r = RunNbdkitToExit(scratch_->path(), {"store=" + file});
  EXPECT_TRUE(r.exited) << r.stderr_text;
  EXPECT_NE(r.code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("not-a-dir"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("directory"), std::string::npos) << r.stderr_text;
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "precious\n");
  // A path under a file is refused the same way.
  ExitResult under = RunNbdkitToExit(scratch_->path(), {"store=" + file + "/sub"});
  EXPECT_TRUE(under.exited && under.code != 0) << under.stderr_text;
}

TEST_P(HostileTest, CorruptOrFutureMetadataIsRefusedWithAClearErrorAndLeftAsItIs) {
  if (!is_local()) GTEST_SKIP() << "metadata laid out by hand in a local store";
  struct Case {
    std::string name, metadata, words;
  };
  const std::vector<Case> cases = {
      {"future", "# nbd-s3-backend export metadata\nformat=2\nsize=1048576\nblock-size=4096\n"
                 "snapshots=7\n", "newer"},
      {"garbage", "\x7f" "ELF\x01\x02\x03 binary junk\n", "corrupt"},
      {"badsize", "format=1\nsize=-5\nblock-size=4096\n", "corrupt"},
      {"zerosize", "format=1\nsize=0\nblock-size=4096\n", "corrupt"},
      {"badbs", "format=1\nsize=1048576\nblock-size=3000\n", "corrupt"},
      {"unknownkey", "format=1\nsize=1048576\nblock-size=4096\nowner=eve\n", "corrupt"},
      {"empty", "", "corrupt"},
  };
  for (const auto& c : cases) {
    WriteFile(local_root() + "/exports/" + c.name + "/metadata", c.metadata);
    WriteFile(local_root() + "/exports/" + c.name + "/blocks/0", std::string(4096, 'k'));
  }
  ASSERT_TRUE(StartServer());
  const auto before = Snapshot(local_root());
  for (const auto& c : cases) {
    NbdClient client;
    EXPECT_FALSE(client.Connect(server_->socket(), c.name)) << c.name << " was served";
    EXPECT_NE(server_->LastLog().find(c.words), std::string::npos)
        << c.name << ": no '" << c.words << "' in the log:\n" << server_->LastLog();
  }
  // The log names each export whose metadata was refused.
  for (const auto& c : cases)
    EXPECT_NE(server_->LastLog().find("'" + c.name + "'"), std::string::npos) << c.name;
  auto after = Snapshot(local_root());
  after.erase("lock");
  for (auto it = after.begin(); it != after.end();) {
    // Lease files the server keeps beside an export are its own, not the export's data.
    if (it->first.size() >= 5 && it->first.compare(it->first.size() - 5, 5, "/lock") == 0)
      it = after.erase(it);
    else
      ++it;
  }
  auto expected = before;
  for (auto it = expected.begin(); it != expected.end();) {
    if (it->first.size() >= 5 && it->first.compare(it->first.size() - 5, 5, "/lock") == 0)
      it = expected.erase(it);
    else
      ++it;
  }
  EXPECT_EQ(after, expected) << "the store changed";
}

TEST_P(HostileTest, BlockFilesOfTheWrongLengthAreErrorsNotDataAndAreLeftAsTheyAre) {
  if (!is_local()) GTEST_SKIP() << "block files laid out by hand (S3: s3_store_test.cc)";
  if (is_log()) GTEST_SKIP() << "a log export has no block files (ASegmentCutShort... below)";
  ASSERT_TRUE(StartServer({"cache=false"}));
  {
    auto c = Connect("len");
    ASSERT_TRUE(c);
    std::vector<uint8_t> data = Pattern(7, 0, 3 * 4096);
    ASSERT_TRUE(c->Pwrite(data.data(), data.size(), 0)) << c->error();
    ASSERT_TRUE(c->Flush()) << c->error();
    ASSERT_TRUE(c->Shutdown()) << c->error();
  }
  ASSERT_TRUE(server_->Stop());
  const std::string blocks = local_root() + "/exports/len/blocks/";
  WriteFile(blocks + "0", std::string(100, 's'));            // short
  WriteFile(blocks + "1", std::string(4097, 'l'));           // long
  WriteFile(blocks + "5", "");                               // empty: as a crash leaves it
  ASSERT_TRUE(server_->Restart());
  auto c = Connect("len");
  ASSERT_TRUE(c);
  std::vector<uint8_t> buf(4096);
  EXPECT_FALSE(c->Pread(buf.data(), 4096, 0)) << "a 100-byte block file was read as data";
  EXPECT_FALSE(c->Pread(buf.data(), 4096, 4096)) << "a 4097-byte block file was read as data";
  std::vector<uint8_t> across(2 * 4096);
  EXPECT_FALSE(c->Pread(across.data(), across.size(), 4096 - 10)) << "a read across a bad block succeeded";
  // The good block beside them reads back as written; the empty one reads as never written.
  std::vector<uint8_t> good(4096);
  ASSERT_TRUE(c->Pread(good.data(), 4096, 2 * 4096)) << c->error();
  EXPECT_TRUE(SameBytes(good, Pattern(7, 2 * 4096, 4096), 2 * 4096));
  std::vector<uint8_t> empty(4096, 1);
  ASSERT_TRUE(c->Pread(empty.data(), 4096, 5 * 4096)) << c->error();
  EXPECT_TRUE(AllZero(empty, 5 * 4096));
  EXPECT_NE(server_->LastLog().find("100 bytes"), std::string::npos) << server_->LastLog();
  ASSERT_TRUE(c->Shutdown());
  auto size_of = [&](const char* id) { return fs::file_size(blocks + id); };
  EXPECT_EQ(size_of("0"), 100u);
  EXPECT_EQ(size_of("1"), 4097u);
}

// The log layout's counterpart of the test above: a segment file cut short behind the server's
// back. The blocks whose frames it still holds read back; the one cut off is an error, never
// zeros or another block's bytes; the file is left as it is.
TEST_P(HostileTest, ASegmentCutShortIsAnErrorNotDataAndIsLeftAsItIs) {
  if (!is_local() || !is_log()) GTEST_SKIP() << "a segment file of a local log export";
  ASSERT_TRUE(StartServer({"cache=false"}));
  const std::vector<uint8_t> data = Pattern(8, 0, 3 * 4096);
  {
    auto c = Connect("cut");
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->Pwrite(data.data(), data.size(), 0)) << c->error();
    ASSERT_TRUE(c->Flush()) << c->error();
    ASSERT_TRUE(c->Shutdown()) << c->error();
  }
  ASSERT_TRUE(server_->Stop());
  // The largest segment holds the three blocks, their frames in the order of their ids: the
  // last 100 bytes cut are block 2's.
  std::string victim;
  uintmax_t victim_size = 0;
  for (const std::string& n : LocalSegments("cut")) {
    const std::string path = local_root() + "/exports/cut/log/" + n;
    if (fs::file_size(path) > victim_size) victim = path, victim_size = fs::file_size(path);
  }
  ASSERT_GT(victim_size, 3u * 4096) << "no segment holds the three blocks";
  fs::resize_file(victim, victim_size - 100);
  ASSERT_TRUE(server_->Restart());
  auto c = Connect("cut");
  ASSERT_TRUE(c);
  std::vector<uint8_t> two(2 * 4096);
  ASSERT_TRUE(c->Pread(two.data(), two.size(), 0)) << c->error();
  EXPECT_TRUE(SameBytes(two, std::vector<uint8_t>(data.begin(), data.begin() + 2 * 4096)));
  std::vector<uint8_t> buf(4096);
  EXPECT_FALSE(c->Pread(buf.data(), 4096, 2 * 4096)) << "a frame cut short was read as data";
  EXPECT_EQ(c->err(), EIO) << c->error();
  std::vector<uint8_t> across(2 * 4096);
  EXPECT_FALSE(c->Pread(across.data(), across.size(), 4096 + 10)) << "a read across the cut block succeeded";
  EXPECT_NE(server_->LastLog().find(fs::path(victim).filename().string()), std::string::npos)
      << server_->LastLog();
  ASSERT_TRUE(c->Shutdown());
  EXPECT_EQ(fs::file_size(victim), victim_size - 100);
}

TEST_P(HostileTest, StoreErrorsReachTheClientAsIoErrorsNotAsInvalidRequests) {
  if (!is_local()) GTEST_SKIP() << "a directory planted in a local store";
  // A directory where block 3's file belongs: the store cannot read or replace it. NBD carries
  // only a few errnos and nbdkit turns every other into EINVAL ("your request was wrong"); the
  // client must be told EIO, and the log must say what happened.
  WriteFile(local_root() + "/exports/planted/metadata",
            "# nbd-s3-backend export metadata\nformat=1\nsize=1048576\nblock-size=4096\n");
  fs::create_directories(local_root() + "/exports/planted/blocks/3/sub");
  ASSERT_TRUE(StartServer({"cache=false"}));
  auto c = Connect("planted");
  ASSERT_TRUE(c);
  std::vector<uint8_t> buf(4096, 0x33);
  EXPECT_FALSE(c->Pread(buf.data(), buf.size(), 3 * 4096)) << "a directory was read as a block";
  EXPECT_EQ(c->err(), EIO) << c->error();
  EXPECT_FALSE(c->Pwrite(buf.data(), buf.size(), 3 * 4096, /*fua=*/true)) << "written over a directory";
  EXPECT_EQ(c->err(), EIO) << c->error();
  EXPECT_NE(server_->LastLog().find("planted/blocks/3"), std::string::npos) << server_->LastLog();
  EXPECT_TRUE(fs::is_directory(local_root() + "/exports/planted/blocks/3/sub"));
  ASSERT_TRUE(c->Shutdown());
}

TEST_P(HostileTest, TheStatsFileIsNeverWrittenThroughALink) {
  if (!is_local()) GTEST_SKIP() << "the stats file is local whatever the store";
  // (A directory others may write is refused at start-up: StartupFailuresNameTheParameter.)
  // In the server's own directory, a link planted where a temporary file was once made (the
  // file's name plus ".tmp") is never opened: its target keeps its content.
  const std::string own = scratch_->path() + "/own";
  fs::create_directories(own);
  fs::permissions(own, fs::perms::owner_all);
  const std::string victim = scratch_->path() + "/victim";
  WriteFile(victim, "precious\n");
  fs::create_symlink(victim, own + "/stats.json.tmp");
  ASSERT_TRUE(StartServer({"stats-file=" + own + "/stats.json"}));
  auto c = Connect("stats");
  ASSERT_TRUE(c);
  std::vector<uint8_t> buf(4096, 0x77);
  ASSERT_TRUE(c->Pwrite(buf.data(), buf.size(), 0)) << c->error();
  ASSERT_TRUE(c->Flush()) << c->error();
  // The file is rewritten about once a second (with the cache's counters, when there is a
  // cache): give it two of its rewrites.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_TRUE(fs::is_regular_file(own + "/stats.json"));
  std::ifstream stats(own + "/stats.json");
  std::string text((std::istreambuf_iterator<char>(stats)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.rfind("{\"exports\": {", 0), 0u) << text;
  ASSERT_TRUE(c->Shutdown());
  std::ifstream in(victim);
  std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, "precious\n");
  EXPECT_TRUE(fs::is_symlink(own + "/stats.json.tmp"));
}

INSTANTIATE_TEST_SUITE_P(Stores, HostileTest, ::testing::ValuesIn(AllSuiteParams()),
                         SuiteParamName);

}  // namespace
}  // namespace s3block::testing
