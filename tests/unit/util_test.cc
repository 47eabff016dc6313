// Tests of src/util: each helper alone, in one thread (the mutexes' with a second one).
#include <fcntl.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <condition_variable>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "util/batches.h"
#include "util/block_id.h"
#include "util/crc32c.h"
#include "util/digest.h"
#include "util/encoding.h"
#include "util/fd_io.h"
#include "util/host.h"
#include "util/json.h"
#include "util/mutex.h"
#include "util/zero.h"

namespace s3block {
namespace {

// ---------------------------------------------------------------------------------------------
// CRC-32C

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 appendix B.4, and the check value of the CRC catalogue.
  const std::string digits = "123456789";
  uint8_t zeros[32] = {}, ones[32], up[32], down[32];
  for (int i = 0; i < 32; ++i) {
    ones[i] = 0xff;
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  using Fn = uint32_t (*)(uint32_t, const void*, size_t);
  std::vector<Fn> impls = {Crc32cTable, Crc32c};
  if (Crc32cHardwareAvailable()) impls.push_back(Crc32cHardware);
  for (Fn f : impls) {
    EXPECT_EQ(f(0, digits.data(), digits.size()), 0xE3069283u);
    EXPECT_EQ(f(0, zeros, 32), 0x8A9136AAu);
    EXPECT_EQ(f(0, ones, 32), 0x62A8AB43u);
    EXPECT_EQ(f(0, up, 32), 0x46DD794Eu);
    EXPECT_EQ(f(0, down, 32), 0x113FDB5Cu);
    EXPECT_EQ(f(0, nullptr, 0), 0u);
  }
}

TEST(Crc32cTest, ImplementationsAgreeAndExtendAcrossSplits) {
  std::mt19937_64 rng(7);
  // Lengths around the hardware version's strides of three lanes (4080 bytes), several strides
  // and a block of 1 MiB, each from three starts, and continued across a cut.
  const std::vector<size_t> lengths = {1,    7,    8,    9,     63,    4079,          4080,
                                       4081, 4096, 4999, 8160,  12247, (size_t{1} << 20) + 13};
  std::vector<uint8_t> data(lengths.back() + 3);  // the longest run from the furthest start (3)
  for (auto& c : data) c = static_cast<uint8_t>(rng());
  for (size_t n : lengths) {
    for (size_t start : {size_t{0}, size_t{1}, size_t{3}}) {
      const uint32_t whole = Crc32cTable(0, data.data() + start, n);
      if (Crc32cHardwareAvailable()) {
        EXPECT_EQ(Crc32cHardware(0, data.data() + start, n), whole);
      }
      const size_t cut = n / 3;
      uint32_t parts = Crc32c(0, data.data() + start, cut);
      parts = Crc32c(parts, data.data() + start + cut, n - cut);
      EXPECT_EQ(parts, whole) << "n=" << n << " start=" << start;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hex and base64

TEST(EncodingTest, HexEncodesLowerCaseTwoDigitsAByte) {
  const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
  EXPECT_EQ(HexEncode(bytes), "00017f80abff");
  EXPECT_EQ(HexEncode({}), "");
  EXPECT_EQ(HexUint32(0), "00000000");
  EXPECT_EQ(HexUint32(0xE3069283u), "e3069283");
  EXPECT_EQ(HexUint32(0x1u), "00000001");
}

TEST(EncodingTest, HexDecodesEitherCaseAndRefusesAnythingElse) {
  uint8_t two[2];
  ASSERT_TRUE(HexDecode("aBcD", two));
  EXPECT_EQ(two[0], 0xab);
  EXPECT_EQ(two[1], 0xcd);
  EXPECT_FALSE(HexDecode("abc", two));     // too short
  EXPECT_FALSE(HexDecode("abcdef", two));  // too long
  EXPECT_FALSE(HexDecode("abcg", two));
  EXPECT_FALSE(HexDecode(" abc", two));

  std::string out;
  ASSERT_TRUE(HexDecode("00ff41", &out));
  EXPECT_EQ(out, std::string("\0\xff" "A", 3));
  ASSERT_TRUE(HexDecode("", &out));
  EXPECT_EQ(out, "");
  EXPECT_FALSE(HexDecode("0", &out));
  EXPECT_FALSE(HexDecode("0x", &out));

  EXPECT_EQ(HexDigitValue('0'), 0);
  EXPECT_EQ(HexDigitValue('F'), 15);
  EXPECT_EQ(HexDigitValue('f'), 15);
  EXPECT_EQ(HexDigitValue('g'), -1);
}

TEST(EncodingTest, HexRoundTripsEveryByte) {
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> back(256);
  ASSERT_TRUE(HexDecode(HexEncode(all), back));
  EXPECT_EQ(back, all);
}

TEST(EncodingTest, Base64PadsAsTheStandardSays) {
  // RFC 4648 section 10.
  EXPECT_EQ(Base64Encode(AsBytes("")), "");
  EXPECT_EQ(Base64Encode(AsBytes("f")), "Zg==");
  EXPECT_EQ(Base64Encode(AsBytes("fo")), "Zm8=");
  EXPECT_EQ(Base64Encode(AsBytes("foo")), "Zm9v");
  EXPECT_EQ(Base64Encode(AsBytes("foobar")), "Zm9vYmFy");
}

// ---------------------------------------------------------------------------------------------
// Digests

TEST(DigestTest, KnownVectors) {
  // RFC 1321 A.5; FIPS 180-2 B.1; RFC 4231 test case 2.
  EXPECT_EQ(HexEncode(Md5(AsBytes(""))), "d41d8cd98f00b204e9800998ecf8427e");
  EXPECT_EQ(HexEncode(Md5(AsBytes("abc"))), "900150983cd24fb0d6963f7d28e17f72");
  EXPECT_EQ(Sha256Hex(std::string_view("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(AsBytes("abc")), Sha256Hex(std::string_view("abc")));
  EXPECT_EQ(HexEncode(HmacSha256(AsBytes("Jefe"), "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

// ---------------------------------------------------------------------------------------------
// fd loops

// A temporary file, removed at the end of the test.
struct TempFile {
  std::string path;
  int fd = -1;
  TempFile() {
    const char* dir = std::getenv("TMPDIR");
    path = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/util_test.XXXXXX";
    fd = ::mkstemp(path.data());
  }
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    ::unlink(path.c_str());
  }
};

TEST(FdIoTest, WholeWritesAndReadsShortOnlyAtTheEnd) {
  TempFile f;
  ASSERT_GE(f.fd, 0);
  std::vector<uint8_t> data(100000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  ASSERT_EQ(WriteFull(f.fd, data.data(), 60000), 60000);
  ASSERT_EQ(PwriteFull(f.fd, data.data() + 60000, 40000, 60000), 40000);

  std::vector<uint8_t> back(data.size() + 10, 0xee);
  EXPECT_EQ(PreadFull(f.fd, back.data(), back.size(), 0), static_cast<ssize_t>(data.size()));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), back.begin()));
  EXPECT_EQ(PreadFull(f.fd, back.data(), 10, 100000), 0);  // at the end

  ASSERT_EQ(::lseek(f.fd, 99990, SEEK_SET), 99990);
  EXPECT_EQ(ReadFull(f.fd, back.data(), 50), 10);
  EXPECT_EQ(ReadFull(f.fd, back.data(), 50), 0);
}

TEST(FdIoTest, ErrorsAreMinusOneWithErrno) {
  uint8_t b[4] = {};
  errno = 0;
  EXPECT_EQ(ReadFull(-1, b, sizeof b), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(PwriteFull(-1, b, sizeof b, 0), -1);
  EXPECT_EQ(errno, EBADF);
}

int g_pipe_writer = -1;

// Runs in the middle of a blocked read: gives the reader its data and its end of file.
void FeedPipe(int) {
  const char kData[] = "abcd";
  (void)!::write(g_pipe_writer, kData, 4);
  ::close(g_pipe_writer);
}

TEST(FdIoTest, ReadContinuesAfterASignalAndCollectsShortReads) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  g_pipe_writer = p[1];
  struct sigaction sa {}, old {};
  sa.sa_handler = FeedPipe;  // no SA_RESTART: the blocked read fails with EINTR
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(::sigaction(SIGALRM, &sa, &old), 0);
  itimerval t{};
  t.it_value.tv_usec = 20000;
  ASSERT_EQ(::setitimer(ITIMER_REAL, &t, nullptr), 0);
  char buf[8] = {};
  EXPECT_EQ(ReadFull(p[0], buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "abcd");
  ::sigaction(SIGALRM, &old, nullptr);
  ::close(p[0]);
}

// ---------------------------------------------------------------------------------------------
// Host name

TEST(HostTest, TheNameTheSystemGives) {
  char name[256] = "";
  ASSERT_EQ(::gethostname(name, sizeof name - 1), 0);
  EXPECT_EQ(HostName(), name);
}

// ---------------------------------------------------------------------------------------------
// JSON strings

TEST(JsonTest, StringsAreQuotedAndEscaped) {
  EXPECT_EQ(JsonString(""), "\"\"");
  EXPECT_EQ(JsonString("disk 1"), "\"disk 1\"");
  EXPECT_EQ(JsonString("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(JsonString("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
  EXPECT_EQ(JsonString(std::string("\x01\x1f", 2)), "\"\\u0001\\u001f\"");
  EXPECT_EQ(JsonString("\xc3\xa9"), "\"\xc3\xa9\"");  // UTF-8 passes as it is
}

TEST(JsonTest, LeavesOfNestedObjectsWithTheirKeys) {
  std::vector<std::string> got;
  auto collect = [&](const std::vector<std::string>& keys, std::string_view value) {
    std::string line;
    for (const auto& k : keys) line += k + "/";
    got.push_back(line + std::string(value));
  };
  const std::string doc = "{\"exports\": {\n  " + JsonString("a \"b\"") +
                          ": {\"reads\": 3, \"hits\": 0},\n  \"c\": {}}, \"up\": true}\n";
  ASSERT_TRUE(ForEachJsonLeaf(doc, collect));
  EXPECT_EQ(got, (std::vector<std::string>{"exports/a \"b\"/reads/3", "exports/a \"b\"/hits/0",
                                           "up/true"}));
  got.clear();
  EXPECT_TRUE(ForEachJsonLeaf("{}", collect));
  EXPECT_TRUE(got.empty());

  for (const char* bad : {"", "{", "{\"a\" 1}", "{\"a\": }", "{\"a\": 1 \"b\": 2}", "{a: 1}",
                          "{\"a\": 1", "{\"a"}) {
    EXPECT_FALSE(ForEachJsonLeaf(bad, collect)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// Zero tests

TEST(ZeroTest, EveryLengthAndEveryPlaceOfANonZeroByte) {
  std::vector<uint8_t> buf(80, 0);
  for (size_t n = 0; n <= buf.size(); ++n) {
    EXPECT_TRUE(IsAllZero(buf.data(), n)) << n;
    for (size_t i = 0; i < n; ++i) {
      buf[i] = 1;
      EXPECT_FALSE(IsAllZero(buf.data(), n)) << "n=" << n << " i=" << i;
      buf[i] = 0;
    }
  }
  EXPECT_TRUE(IsAllZero(nullptr, 0));
}

// ---------------------------------------------------------------------------------------------
// Block ids

TEST(BlockIdTest, OnlyTheOneDecimalSpellingOfAnId) {
  uint64_t id = 99;
  EXPECT_TRUE(ParseBlockId("0", &id));
  EXPECT_EQ(id, 0u);
  EXPECT_TRUE(ParseBlockId("4096", &id));
  EXPECT_EQ(id, 4096u);
  EXPECT_TRUE(ParseBlockId("18446744073709551615", &id));
  EXPECT_EQ(id, UINT64_MAX);
  for (const char* bad : {"", "00", "01", "-1", "+1", "1a", " 1", "1 ", "1.0", "0x10",
                          "18446744073709551616", "123456789012345678901"}) {
    EXPECT_FALSE(ParseBlockId(bad, &id)) << bad;
  }
  EXPECT_FALSE(ParseBlockId(std::string_view("12\0", 3), &id));
}

// ---------------------------------------------------------------------------------------------
// Batches

// What a batch of work returns: ok() unless it failed.
struct Result {
  bool failed = false;
  bool ok() const { return !failed; }
};

TEST(BatchesTest, PartsInOrderOfAtMostTheSizeGivenStoppingAtAFailure) {
  std::vector<int> items(10);
  for (int i = 0; i < 10; ++i) items[i] = i;
  std::vector<std::vector<int>> seen;
  auto record = [&](std::span<const int> part) {
    seen.emplace_back(part.begin(), part.end());
    return Result{};
  };
  EXPECT_TRUE(ForEachBatch(std::span<const int>(items), 4, record).ok());
  EXPECT_EQ(seen, (std::vector<std::vector<int>>{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));

  seen.clear();
  EXPECT_TRUE(ForEachBatch(std::span<const int>(items), 10, record).ok());
  EXPECT_EQ(seen.size(), 1u);
  seen.clear();
  EXPECT_TRUE(ForEachBatch(std::span<const int>(), 3, record).ok());
  EXPECT_TRUE(seen.empty());

  int calls = 0;
  Result r = ForEachBatch(std::span<const int>(items), 3, [&](std::span<const int>) {
    return Result{++calls == 2};
  });
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(calls, 2);
}

// ---------------------------------------------------------------------------------------------
// Mutex, MutexLock, UniqueLock, SharedMutex (their annotations are checked by the clang build,
// tests/scripts/thread_safety.sh)

// Whether another thread can take `mu` now (it lets go at once if it can).
template <typename M>
bool FreeForAnotherThread(M* mu) {
  bool got = false;
  std::thread([&] {
    if (mu->TryLock()) {
      got = true;
      mu->Unlock();
    }
  }).join();
  return got;
}

TEST(MutexTest, AScopedLockHoldsTheMutexUntilItsScopeEnds) {
  Mutex mu;
  {
    MutexLock lock(&mu);
    EXPECT_FALSE(FreeForAnotherThread(&mu));
  }
  EXPECT_TRUE(FreeForAnotherThread(&mu));
  mu.Lock();
  EXPECT_FALSE(FreeForAnotherThread(&mu));
  mu.Unlock();
  EXPECT_TRUE(FreeForAnotherThread(&mu));
}

TEST(MutexTest, AUniqueLockLetsGoAndTakesAgainAndEndsEitherWay) {
  Mutex mu;
  {
    UniqueLock lock(&mu);
    EXPECT_FALSE(FreeForAnotherThread(&mu));
    lock.Unlock();
    EXPECT_TRUE(FreeForAnotherThread(&mu));
    lock.Lock();
    EXPECT_FALSE(FreeForAnotherThread(&mu));
  }
  EXPECT_TRUE(FreeForAnotherThread(&mu));
  {
    UniqueLock lock(&mu);
    lock.Unlock();
  }
  EXPECT_TRUE(FreeForAnotherThread(&mu));
}

TEST(MutexTest, AConditionVariableWaitsOnAUniqueLockAndWakesWithItHeld) {
  Mutex mu;
  std::condition_variable cv;
  bool ready = false;  // guarded by mu
  std::thread setter([&] {
    MutexLock lock(&mu);
    ready = true;
    cv.notify_all();
  });
  {
    UniqueLock lock(&mu);
    cv.wait(lock.native(), [&] { return ready; });
    // Woken with the flag set and the mutex held again.
    EXPECT_TRUE(ready && lock.native().owns_lock() && !FreeForAnotherThread(&mu));
  }
  setter.join();
  EXPECT_TRUE(FreeForAnotherThread(&mu));
}

TEST(MutexTest, ReadersShareASharedMutexAndAWriterHasItAlone) {
  SharedMutex mu;
  {
    ReaderMutexLock reader(&mu);
    // Another reader gets in (this would hang if readers excluded each other); a writer does not.
    std::thread([&] { ReaderMutexLock other(&mu); }).join();
    EXPECT_FALSE(FreeForAnotherThread(&mu));
  }
  {
    WriterMutexLock writer(&mu);
    EXPECT_FALSE(FreeForAnotherThread(&mu));
  }
  EXPECT_TRUE(FreeForAnotherThread(&mu));
}

}  // namespace
}  // namespace s3block
