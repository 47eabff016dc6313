// The integration fixture: a real nbdkit running the plugin on a unix socket, and real libnbd
// clients talking to it.
//
// Every test is parameterised over a SuiteParam: which store the blocks live in ("local": a fresh
// directory; "s3": a fresh prefix in the bucket named by S3BLOCK_TEST_S3_*) and which extra plugin
// parameters are given on every start (cache off, cache on and small, ...). A new combination is
// one line in kParameterSets (nbdkit_fixture.cc).
//
// The S3 variants need S3BLOCK_TEST_S3_BUCKET, S3BLOCK_TEST_S3_ENDPOINT,
// S3BLOCK_TEST_S3_ACCESS_KEY and S3BLOCK_TEST_S3_SECRET_KEY (tests/scripts/s3_server.sh prints
// them). Without them those variants are skipped, unless S3BLOCK_TEST_REQUIRE_S3=1, when they fail.
//
// Nothing here is thread-safe except NbdClient, of which each thread must own its own.
#ifndef S3BLOCK_TESTS_INTEGRATION_NBDKIT_FIXTURE_H_
#define S3BLOCK_TESTS_INTEGRATION_NBDKIT_FIXTURE_H_

#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "s3block/block_store.h"

namespace s3block::testing {

// One combination the whole suite runs under.
struct SuiteParam {
  std::string backend;             // "local" or "s3"
  std::vector<std::string> extra;  // plugin parameters added to every start, e.g. "cache=false"
  std::string label;               // suffix of the test name, e.g. "local_nocache"
};
void PrintTo(const SuiteParam& p, std::ostream* os);

// Every combination to run (the local ones always; the s3 ones skip without a server).
const std::vector<SuiteParam>& AllSuiteParams();
std::string SuiteParamName(const ::testing::TestParamInfo<SuiteParam>& info);

// A fresh directory, removed with its contents at the end of the scope.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// What a finished nbdkit run left behind.
struct ExitResult {
  bool exited = false;  // false: killed by a signal (or still running when given up on)
  int code = -1;        // exit code when exited
  std::string stderr_text;  // stdout and stderr together
};

// Runs `nbdkit nbdkit_args...` until it exits, output to a log in `dir`. Gives up (and kills it)
// after `limit_seconds`.
ExitResult RunNbdkit(const std::string& dir, const std::vector<std::string>& nbdkit_args,
                     int limit_seconds = 60);

// Runs nbdkit with the plugin and `args` in the foreground until it exits, as a user would when
// checking parameters. Gives up (and kills it) after `limit_seconds`, so a hang fails the test
// instead of blocking the run.
ExitResult RunNbdkitToExit(const std::string& dir, const std::vector<std::string>& args,
                           int limit_seconds = 60);

// One nbdkit process serving the plugin on a unix socket in `dir`. Its stderr goes to a log file
// in `dir` (one per start), kept for the failure message.
class NbdkitServer {
 public:
  explicit NbdkitServer(std::string dir);
  ~NbdkitServer();  // kills a server still running
  NbdkitServer(const NbdkitServer&) = delete;
  NbdkitServer& operator=(const NbdkitServer&) = delete;

  // Starts `nbdkit -f -U SOCKET -P PIDFILE --exit-with-parent PLUGIN args...` and waits until it
  // accepts connections (nbdkit writes the pid file then). Fails if it exits first.
  ::testing::AssertionResult Start(const std::vector<std::string>& args);
  // Stops it the way an administrator does (SIGTERM) and waits; fails unless it exits with 0.
  ::testing::AssertionResult Stop();
  // Kills it with SIGKILL, as a crash would, and waits.
  void Kill();
  // Start again with the arguments of the last Start.
  ::testing::AssertionResult Restart() { return Start(args_); }

  bool running() const { return pid_ > 0; }
  const std::string& socket() const { return socket_; }
  // The stderr of every start so far, each headed by its command line.
  std::string Logs() const;
  // The stderr of the current (or last) start.
  std::string LastLog() const;

 private:
  std::string dir_;
  std::string socket_;
  std::string pidfile_;
  std::vector<std::string> args_;
  std::vector<std::string> logs_;  // paths, one per start
  pid_t pid_ = -1;
};

// One libnbd connection. Failing calls return false with the errno in err() and libnbd's
// message in error(); nothing here asserts, so the tests can check refusals too.
class NbdClient {
 public:
  NbdClient();
  ~NbdClient();
  NbdClient(const NbdClient&) = delete;
  NbdClient& operator=(const NbdClient&) = delete;

  // Connects to `export_name` on the unix socket, asking for base:allocation. With
  // strict_bounds false, libnbd sends requests past the end instead of refusing them itself, so
  // the server's answer is what the test sees.
  bool Connect(const std::string& socket, const std::string& export_name,
               bool strict_bounds = true);
  // The export names the server lists (NBD_OPT_LIST), without connecting to one.
  bool ListExports(const std::string& socket, std::vector<std::string>* names);

  int64_t Size();
  bool Pread(void* buf, size_t count, uint64_t offset);
  bool Pwrite(const void* buf, size_t count, uint64_t offset, bool fua = false);
  bool Flush();
  bool Trim(uint64_t count, uint64_t offset, bool fua = false);
  bool Zero(uint64_t count, uint64_t offset, bool may_trim = true, bool fast_zero = false);
  bool CanMultiConn();
  // base:allocation runs for [offset, offset + count): each (offset, length, flags).
  struct Extent {
    uint64_t offset, length;
    uint32_t flags;  // LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO
  };
  bool BlockStatus(uint64_t count, uint64_t offset, std::vector<Extent>* out);
  // Sends NBD_CMD_DISC and waits for the server to finish what is in flight.
  bool Shutdown();

  int err() const { return err_; }
  const std::string& error() const { return error_; }
  nbd_handle* handle() const { return h_; }

 private:
  bool Check(int r);
  nbd_handle* h_;
  int err_ = 0;
  std::string error_;
};

// Deterministic test data: the byte at absolute `offset` of a pattern with `seed`. Different
// seeds and different offsets give different bytes, so data that lands in the wrong place or in
// the wrong export is caught.
uint8_t PatternByte(uint64_t seed, uint64_t offset);
std::vector<uint8_t> Pattern(uint64_t seed, uint64_t offset, size_t count);

// Compares two byte ranges; on a mismatch says where the first differing byte is (as an export
// offset, given where `actual` starts) and how many differ, instead of dumping the buffers.
::testing::AssertionResult SameBytes(const std::vector<uint8_t>& actual,
                                     const std::vector<uint8_t>& expected, uint64_t base = 0);
::testing::AssertionResult AllZero(const std::vector<uint8_t>& actual, uint64_t base = 0);

// The suite's fixture: a scratch directory, the store for this parameter, and one server.
class NbdkitTest : public ::testing::TestWithParam<SuiteParam> {
 protected:
  void SetUp() override;
  void TearDown() override;

  bool is_local() const { return GetParam().backend == "local"; }
  // Whether the exports this parameter set creates are log-structured (layout=log): their
  // blocks are then in segments (exports/<name>/log/), not one object each.
  bool is_log() const;
  // The store= and connection parameters for this backend, then the parameter set's extras.
  std::vector<std::string> StoreArgs() const;
  // Starts the server with StoreArgs() and `more`.
  ::testing::AssertionResult StartServer(const std::vector<std::string>& more = {});
  // A connected client, or null (and a test failure) if it cannot connect.
  std::unique_ptr<NbdClient> Connect(const std::string& export_name = "test_device",
                                     bool strict_bounds = true);
  // The leaf store below the plugin, opened by the library for this backend, to look at what the
  // plugin left in it (or to lay out data as another program would have).
  std::shared_ptr<BlockStore> LeafStore();
  // The store directory of the local backend.
  const std::string& local_root() const { return local_root_; }
  // Whether the local store holds block `id` of `export_name` as `data`, where this parameter
  // set's layout keeps it: for a log export, in a segment file of exports/<name>/log/ (read
  // through the leaf store), and no file in exports/<name>/blocks/; else the block's own file,
  // exports/<name>/blocks/<id>.
  ::testing::AssertionResult LocallyStored(const std::string& export_name, uint64_t id,
                                           const std::vector<uint8_t>& data);
  // The names of the segment files of a local log export (16 hex digits each), sorted.
  std::vector<std::string> LocalSegments(const std::string& export_name) const;

  // Reads `count` bytes at `offset` and returns them (failing the test on an error).
  std::vector<uint8_t> ReadBack(NbdClient& c, uint64_t offset, size_t count);

  std::unique_ptr<ScratchDir> scratch_;
  std::unique_ptr<NbdkitServer> server_;

 private:
  std::string local_root_;
  std::string s3_store_;     // s3://bucket/unique-prefix
  std::string secret_file_;  // the S3 secret key, for secret-key=+FILE
};

}  // namespace s3block::testing

#endif  // S3BLOCK_TESTS_INTEGRATION_NBDKIT_FIXTURE_H_
