#include "nbdkit_fixture.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "s3block/config.h"
#include "s3block/store_factory.h"

namespace s3block::testing {
namespace {

// The plugin parameter sets the suite runs under, each with the label that ends the test names.
// Add a set here, one line, and every test runs with it on every backend.
struct ParameterSet {
  const char* label;
  std::vector<std::string> params;
};
const std::vector<ParameterSet> kParameterSets = {
    {"nocache", {"cache=false"}},
    // The cache, smaller than any test's working set, so that eviction and write-back run.
    {"smallcache", {"cache=true", "cache-size=256K", "dirty-size=64K"}},
    // Exports created log-structured: with the default cache, and with none, so that every
    // request reaches the log as the client sent it.
    {"log", {"layout=log"}},
    {"log_nocache", {"layout=log", "cache=false"}},
};

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

bool RequireS3() {
  const char* v = Env("S3BLOCK_TEST_REQUIRE_S3");
  return v && std::string(v) != "0";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A prefix in the bucket no other test run uses: the time, this process and a counter.
std::string UniquePrefix() {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? info->name() : "test";
  std::string clean;
  for (char c : name) clean += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  return "it-" + std::to_string(::time(nullptr)) + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter++) + "-" + clean;
}

// Forks and execs nbdkit with the plugin, stdout and stderr to `log`.
pid_t SpawnNbdkit(const std::vector<std::string>& nbdkit_args, const std::string& log) {
  std::vector<std::string> argv_s = {"nbdkit"};
  argv_s.insert(argv_s.end(), nbdkit_args.begin(), nbdkit_args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execvp("nbdkit", argv.data());
    ::_exit(127);
  }
  ::close(fd);
  return pid;
}

std::string CommandLine(const std::vector<std::string>& args) {
  std::string out = "nbdkit";
  for (const auto& a : args) out += " " + a;
  return out;
}

}  // namespace

void PrintTo(const SuiteParam& p, std::ostream* os) { *os << p.label; }

const std::vector<SuiteParam>& AllSuiteParams() {
  static const std::vector<SuiteParam> params = [] {
    std::vector<SuiteParam> out;
    for (const char* backend : {"local", "s3"})
      for (const auto& set : kParameterSets)
        out.push_back({backend, set.params, std::string(backend) + "_" + set.label});
    return out;
  }();
  return params;
}

std::string SuiteParamName(const ::testing::TestParamInfo<SuiteParam>& info) {
  return info.param.label;
}

// --- ScratchDir ---

ScratchDir::ScratchDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "s3block-it-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

// --- nbdkit processes ---

ExitResult RunNbdkitToExit(const std::string& dir, const std::vector<std::string>& args,
                           int limit_seconds) {
  std::vector<std::string> full = {"-f", "-U", dir + "/refused.sock", "--exit-with-parent",
                                   S3BLOCK_PLUGIN_PATH};
  full.insert(full.end(), args.begin(), args.end());
  return RunNbdkit(dir, full, limit_seconds);
}

ExitResult RunNbdkit(const std::string& dir, const std::vector<std::string>& nbdkit_args,
                     int limit_seconds) {
  ExitResult r;
  std::string log = dir + "/run-to-exit.log";
  pid_t pid = SpawnNbdkit(nbdkit_args, log);
  if (pid < 0) {
    r.stderr_text = "cannot start nbdkit";
    return r;
  }
  int status = 0;
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(limit_seconds);
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > give_up) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.stderr_text = ReadFile(log) + "\n[still running after " + std::to_string(limit_seconds) +
                      "s: killed]";
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r.exited = WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -1;
  r.stderr_text = ReadFile(log);
  return r;
}

NbdkitServer::NbdkitServer(std::string dir)
    : dir_(std::move(dir)), socket_(dir_ + "/nbd.sock"), pidfile_(dir_ + "/nbdkit.pid") {}

NbdkitServer::~NbdkitServer() {
  if (pid_ > 0) Kill();
}

::testing::AssertionResult NbdkitServer::Start(const std::vector<std::string>& args) {
  if (pid_ > 0) return ::testing::AssertionFailure() << "nbdkit is already running";
  args_ = args;
  // A server killed with SIGKILL leaves its socket and pid file behind.
  ::unlink(socket_.c_str());
  ::unlink(pidfile_.c_str());
  std::vector<std::string> full = {"-f", "-U", socket_, "-P", pidfile_, "--exit-with-parent",
                                   S3BLOCK_PLUGIN_PATH};
  full.insert(full.end(), args.begin(), args.end());
  std::string log = dir_ + "/nbdkit-" + std::to_string(logs_.size()) + ".log";
  logs_.push_back(log);
  {
    std::ofstream head(log + ".cmd");
    head << CommandLine(full) << "\n";
  }
  pid_ = SpawnNbdkit(full, log);
  if (pid_ < 0) return ::testing::AssertionFailure() << "cannot start nbdkit: " << std::strerror(errno);
  // nbdkit writes the pid file once it listens. A start that takes minutes is a hang, not a
  // slow machine: give up then so that the run ends.
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (;;) {
    struct stat st;
    if (::stat(pidfile_.c_str(), &st) == 0 && st.st_size > 0) return ::testing::AssertionSuccess();
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ::testing::AssertionFailure()
             << CommandLine(full) << " exited before serving (status " << status << "):\n"
             << ReadFile(log);
    }
    if (std::chrono::steady_clock::now() > give_up) {
      Kill();
      return ::testing::AssertionFailure() << CommandLine(full) << " never started serving:\n"
                                           << ReadFile(log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

::testing::AssertionResult NbdkitServer::Stop() {
  if (pid_ <= 0) return ::testing::AssertionFailure() << "nbdkit is not running";
  ::kill(pid_, SIGTERM);
  int status = 0;
  pid_t w;
  do {
    w = ::waitpid(pid_, &status, 0);
  } while (w < 0 && errno == EINTR);
  pid_ = -1;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "nbdkit did not exit cleanly on SIGTERM (status "
                                       << status << "):\n"
                                       << LastLog();
}

void NbdkitServer::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

std::string NbdkitServer::Logs() const {
  std::string out;
  for (const auto& l : logs_) out += "$ " + ReadFile(l + ".cmd") + ReadFile(l);
  return out;
}

std::string NbdkitServer::LastLog() const { return logs_.empty() ? "" : ReadFile(logs_.back()); }

// --- NbdClient ---

NbdClient::NbdClient() : h_(nbd_create()) {
  if (h_ == nullptr) throw std::runtime_error(std::string("nbd_create: ") + nbd_get_error());
}

NbdClient::~NbdClient() { nbd_close(h_); }

bool NbdClient::Check(int r) {
  if (r != -1) return true;
  err_ = nbd_get_errno();
  const char* msg = nbd_get_error();
  error_ = msg ? msg : "(no message)";
  return false;
}

bool NbdClient::Connect(const std::string& socket, const std::string& export_name,
                        bool strict_bounds) {
  if (!Check(nbd_set_export_name(h_, export_name.c_str()))) return false;
  if (!Check(nbd_add_meta_context(h_, LIBNBD_CONTEXT_BASE_ALLOCATION))) return false;
  if (!Check(nbd_set_request_structured_replies(h_, true))) return false;
  if (!strict_bounds &&
      !Check(nbd_set_strict_mode(h_, nbd_get_strict_mode(h_) & ~LIBNBD_STRICT_BOUNDS)))
    return false;
  return Check(nbd_connect_unix(h_, socket.c_str()));
}

bool NbdClient::ListExports(const std::string& socket, std::vector<std::string>* names) {
  names->clear();
  if (!Check(nbd_set_opt_mode(h_, true))) return false;
  if (!Check(nbd_connect_unix(h_, socket.c_str()))) return false;
  nbd_list_callback cb;
  cb.callback = [](void* user, const char* name, const char*) {
    static_cast<std::vector<std::string>*>(user)->push_back(name);
    return 0;
  };
  cb.user_data = names;
  cb.free = nullptr;
  bool ok = Check(nbd_opt_list(h_, cb));
  nbd_opt_abort(h_);
  return ok;
}

int64_t NbdClient::Size() {
  int64_t s = nbd_get_size(h_);
  Check(static_cast<int>(s < 0 ? -1 : 0));
  return s;
}

bool NbdClient::Pread(void* buf, size_t count, uint64_t offset) {
  return Check(nbd_pread(h_, buf, count, offset, 0));
}

bool NbdClient::Pwrite(const void* buf, size_t count, uint64_t offset, bool fua) {
  return Check(nbd_pwrite(h_, buf, count, offset, fua ? LIBNBD_CMD_FLAG_FUA : 0));
}

bool NbdClient::Flush() { return Check(nbd_flush(h_, 0)); }

bool NbdClient::Trim(uint64_t count, uint64_t offset, bool fua) {
  return Check(nbd_trim(h_, count, offset, fua ? LIBNBD_CMD_FLAG_FUA : 0));
}

bool NbdClient::Zero(uint64_t count, uint64_t offset, bool may_trim, bool fast_zero) {
  uint32_t flags = (may_trim ? 0 : LIBNBD_CMD_FLAG_NO_HOLE) |
                   (fast_zero ? LIBNBD_CMD_FLAG_FAST_ZERO : 0);
  return Check(nbd_zero(h_, count, offset, flags));
}

bool NbdClient::CanMultiConn() { return nbd_can_multi_conn(h_) == 1; }

bool NbdClient::BlockStatus(uint64_t count, uint64_t offset, std::vector<Extent>* out) {
  out->clear();
  struct Ctx {
    std::vector<Extent>* out;
  } ctx{out};
  nbd_extent_callback cb;
  cb.callback = [](void* user, const char* metacontext, uint64_t off, uint32_t* entries,
                   size_t nr, int* error) {
    auto* c = static_cast<Ctx*>(user);
    if (std::strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
    for (size_t i = 0; i + 1 < nr; i += 2) {
      c->out->push_back({off, entries[i], entries[i + 1]});
      off += entries[i];
    }
    return 0;
  };
  cb.user_data = &ctx;
  cb.free = nullptr;
  return Check(nbd_block_status(h_, count, offset, cb, 0));
}

bool NbdClient::Shutdown() { return Check(nbd_shutdown(h_, 0)); }

// --- Data ---

uint8_t PatternByte(uint64_t seed, uint64_t offset) {
  // splitmix64 of (seed, offset / 8), one byte of it per offset.
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + (offset >> 3) + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<uint8_t>(z >> (8 * (offset & 7)));
}

std::vector<uint8_t> Pattern(uint64_t seed, uint64_t offset, size_t count) {
  std::vector<uint8_t> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = PatternByte(seed, offset + i);
  return out;
}

::testing::AssertionResult SameBytes(const std::vector<uint8_t>& actual,
                                     const std::vector<uint8_t>& expected, uint64_t base) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure() << "sizes differ: " << actual.size() << " bytes read, "
                                         << expected.size() << " expected";
  size_t first = actual.size(), diffs = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (actual[i] != expected[i]) {
      if (diffs++ == 0) first = i;
    }
  }
  if (diffs == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << diffs << " of " << actual.size() << " bytes differ; the first at export offset "
         << base + first << ": read " << int(actual[first]) << ", expected "
         << int(expected[first]);
}

::testing::AssertionResult AllZero(const std::vector<uint8_t>& actual, uint64_t base) {
  return SameBytes(actual, std::vector<uint8_t>(actual.size(), 0), base);
}

// --- The fixture ---

void NbdkitTest::SetUp() {
  scratch_ = std::make_unique<ScratchDir>();
  server_ = std::make_unique<NbdkitServer>(scratch_->path());
  if (GetParam().backend == "local") {
    local_root_ = scratch_->path() + "/store";
    return;
  }
  const char* needed[] = {"S3BLOCK_TEST_S3_BUCKET", "S3BLOCK_TEST_S3_ENDPOINT",
                          "S3BLOCK_TEST_S3_ACCESS_KEY", "S3BLOCK_TEST_S3_SECRET_KEY"};
  std::string missing;
  for (const char* n : needed)
    if (!Env(n)) missing += std::string(missing.empty() ? "" : ", ") + n;
  if (!missing.empty()) {
    if (RequireS3()) FAIL() << "S3BLOCK_TEST_REQUIRE_S3 is set but these are not: " << missing;
    GTEST_SKIP() << "no S3 server for this run (" << missing << " not set)";
  }
  s3_store_ = "s3://" + std::string(Env("S3BLOCK_TEST_S3_BUCKET")) + "/" + UniquePrefix();
  secret_file_ = scratch_->path() + "/s3-secret";
  std::ofstream secret(secret_file_, std::ios::binary);
  secret << Env("S3BLOCK_TEST_S3_SECRET_KEY");
  ASSERT_TRUE(secret.good()) << "cannot write " << secret_file_;
  ::chmod(secret_file_.c_str(), 0600);
}

void NbdkitTest::TearDown() {
  if (HasFailure() && server_) {
    std::cerr << "---- nbdkit logs of this test ----\n" << server_->Logs() << "---- end ----\n";
  }
  server_.reset();
  scratch_.reset();
}

bool NbdkitTest::is_log() const {
  const auto& extra = GetParam().extra;
  return std::find(extra.begin(), extra.end(), "layout=log") != extra.end();
}

std::vector<std::string> NbdkitTest::StoreArgs() const {
  std::vector<std::string> args;
  if (is_local()) {
    args.push_back("store=" + local_root_);
  } else {
    args.push_back("store=" + s3_store_);
    args.push_back("endpoint=" + std::string(Env("S3BLOCK_TEST_S3_ENDPOINT")));
    args.push_back("access-key=" + std::string(Env("S3BLOCK_TEST_S3_ACCESS_KEY")));
    // From a file, as a careful user gives it: the secret stays out of ps and of the logs.
    args.push_back("secret-key=+" + secret_file_);
    if (const char* region = Env("S3BLOCK_TEST_S3_REGION")) args.push_back("region=" + std::string(region));
  }
  args.insert(args.end(), GetParam().extra.begin(), GetParam().extra.end());
  return args;
}

::testing::AssertionResult NbdkitTest::StartServer(const std::vector<std::string>& more) {
  std::vector<std::string> args = StoreArgs();
  args.insert(args.end(), more.begin(), more.end());
  return server_->Start(args);
}

std::unique_ptr<NbdClient> NbdkitTest::Connect(const std::string& export_name, bool strict_bounds) {
  auto c = std::make_unique<NbdClient>();
  if (!c->Connect(server_->socket(), export_name, strict_bounds)) {
    ADD_FAILURE() << "cannot connect to export '" << export_name << "': " << c->error();
    return nullptr;
  }
  return c;
}

std::shared_ptr<BlockStore> NbdkitTest::LeafStore() {
  Config config;
  std::vector<std::string> args = StoreArgs();
  args.push_back("cache=false");
  for (const auto& a : args) {
    size_t eq = a.find('=');
    std::string key = a.substr(0, eq), value = a.substr(eq + 1);
    if (key == "secret-key") value = Env("S3BLOCK_TEST_S3_SECRET_KEY");  // not the +FILE form
    if (key == "cache" || key == "store" || key == "endpoint" || key == "access-key" ||
        key == "secret-key" || key == "region") {
      Status s = config.Set(key, value);
      if (!s.ok()) {
        ADD_FAILURE() << a << ": " << s.ToString();
        return nullptr;
      }
    }
  }
  std::shared_ptr<BlockStore> store;
  Status s = config.Finish();
  if (s.ok()) s = MakeLeafStore(config, &store);
  if (!s.ok()) {
    ADD_FAILURE() << "cannot open the leaf store: " << s.ToString();
    return nullptr;
  }
  return store;
}

std::vector<std::string> NbdkitTest::LocalSegments(const std::string& export_name) const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(local_root_ + "/exports/" + export_name + "/log", ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() == 16 && std::all_of(n.begin(), n.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
      names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

::testing::AssertionResult NbdkitTest::LocallyStored(const std::string& export_name, uint64_t id,
                                                     const std::vector<uint8_t>& data) {
  const std::string dir = local_root_ + "/exports/" + export_name;
  if (!is_log()) {
    if (std::filesystem::exists(dir + "/blocks/" + std::to_string(id))) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "no " << dir << "/blocks/" << id;
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/blocks", ec))
    return ::testing::AssertionFailure() << "a log export has a block file: " << e.path();
  if (LocalSegments(export_name).empty())
    return ::testing::AssertionFailure() << "no segment file in " << dir << "/log";
  auto store = LeafStore();
  if (!store) return ::testing::AssertionFailure() << "cannot open the leaf store";
  Bytes got;
  bool found = false;
  Status s = store->Read(export_name, id, &got, &found);
  if (!s.ok()) return ::testing::AssertionFailure() << "reading block " << id << ": " << s.ToString();
  if (!found) return ::testing::AssertionFailure() << "block " << id << " is in no segment of " << dir;
  return SameBytes(std::vector<uint8_t>(got.begin(), got.end()), data, 0);
}

std::vector<uint8_t> NbdkitTest::ReadBack(NbdClient& c, uint64_t offset, size_t count) {
  std::vector<uint8_t> buf(count, 0xee);
  EXPECT_TRUE(c.Pread(buf.data(), count, offset))
      << "read of " << count << " bytes at " << offset << ": " << c.error();
  return buf;
}

}  // namespace s3block::testing
