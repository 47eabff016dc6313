// The control channel: its protocol (requests, replies that carry a Status whole, the lease
// holder that names the socket), the socket's server (creation refusals, stale sockets, its mode,
// the peer check, bounds on slow and oversized clients), the client's errors, and the server's
// command table through control=.
#include "lib/control_channel.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "base/config_params.h"
#include "base/safe_file.h"
#include "lib/server.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A connected unix socket to path, or -1.
int ConnectTo(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends `bytes` as they are (not through the client) and reads the reply to its end.
std::string RawExchange(const std::string& path, const std::string& bytes) {
  UniqueFd fd(ConnectTo(path));
  if (!fd.valid()) return "(cannot connect)";
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd.get(), bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may refuse and close before taking it all
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0) reply.append(buf, static_cast<size_t>(n));
  return reply;
}

// A handler that echoes its arguments one per line and counts its calls; "fail" returns an
// Unconfirmed error with some output, "sleep" takes a second.
struct EchoHandler {
  std::atomic<int> calls{0};
  ControlHandler Get() {
    return [this](const std::vector<std::string>& args, std::string* out) {
      ++calls;
      if (args[0] == "fail") {
        *out = "partial\n";
        return Status::Unconfirmed("shrinking 'vm1' needs --force\tand\nmore \\x41");
      }
      for (const std::string& a : args) *out += "[" + a + "]\n";
      return Status::Ok();
    };
  }
};

Status MakeServer(const std::string& path, EchoHandler* h, std::unique_ptr<ControlServer>* out,
                  ControlServerOptions options = {}) {
  return ControlServer::Create(path, h->Get(), std::move(options), out);
}

// A server of an EchoHandler on a socket in a directory of its own.
class ControlServerTest : public ::testing::Test {
 protected:
  Status Serve(ControlServerOptions options = {}) {
    S3B_RETURN_IF_ERROR(MakeServer(path, &h, &server, std::move(options)));
    return server->Start();
  }
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  EchoHandler h;
  std::unique_ptr<ControlServer> server;
};

// --- The protocol ---

TEST(ControlProtocol, RequestsRoundTripAndRefuseControlBytes) {
  std::string line;
  ASSERT_OK(FormatControlRequest({"snapshot", "vm 1", "", "snäp"}, &line));
  EXPECT_EQ(line, "snapshot\tvm 1\t\tsnäp\n");
  std::vector<std::string> args;
  ASSERT_OK(ParseControlRequest(std::string_view(line).substr(0, line.size() - 1), &args));
  EXPECT_EQ(args, (std::vector<std::string>{"snapshot", "vm 1", "", "snäp"}));

  for (const char* bad : {"a\nb", "a\tb", "a\rb", "a\x7f", "\x01"}) {
    Status s = FormatControlRequest({"exports", bad}, &line);
    EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("control character"), std::string::npos) << s.message();
  }
  EXPECT_EQ(FormatControlRequest({}, &line).kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(FormatControlRequest({std::string(kMaxControlRequest, 'x')}, &line).kind(),
            Status::Kind::kInvalidArgument);
  EXPECT_OK(FormatControlRequest({std::string(kMaxControlRequest - 1, 'x')}, &line));

  EXPECT_EQ(ParseControlRequest("", &args).kind(), Status::Kind::kInvalidArgument);
  Status s = ParseControlRequest("exports\tvm\x01", &args);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument);
  EXPECT_NE(s.message().find("field 1"), std::string::npos) << s.message();
  EXPECT_TRUE(args.empty());
  EXPECT_EQ(ParseControlRequest("exports\r", &args).kind(), Status::Kind::kInvalidArgument);
}

TEST(ControlProtocol, RepliesCarryTheStatusKindErrnoAndMessageWhole) {
  const std::string m = "export 'vm1'\tis busy\nsee \\x41 \\ and \x01 end";
  const std::vector<Status> statuses = {
      Status::InvalidArgument(m), Status::NotFound(m),       Status::AlreadyExists(m),
      Status::Busy(m),            Status::Unconfirmed(m),    Status::NotSupported(m),
      Status::NoSpace(m),         Status::PermissionDenied(m), Status::Cancelled(m),
      Status::IoError(m),         Status::Error(ETIMEDOUT, m), Status::Error(EDQUOT, m),
      Status::Error(EACCES, m),   Status::Error(ESHUTDOWN, m), Status::Error(4000, m),
  };
  for (const Status& want : statuses) {
    const std::string reply = FormatControlReply(want, "line 1\nline\t2\n");
    EXPECT_EQ(std::count(reply.begin(), reply.begin() + reply.find("line 1"), '\n'), 1) << reply;
    std::string output;
    Status got = ParseControlReply(reply, &output);
    EXPECT_EQ(got.kind(), want.kind()) << reply;
    EXPECT_EQ(got.err(), want.err()) << reply;
    EXPECT_EQ(got.message(), want.message()) << reply;
    EXPECT_EQ(output, "line 1\nline\t2\n");
  }
  EXPECT_EQ(FormatControlReply(Status::Busy("x"), ""), "error\tEBUSY\tx\n");
  EXPECT_EQ(FormatControlReply(Status::Unconfirmed("x"), ""), "error\tEINVAL/unconfirmed\tx\n");
  EXPECT_EQ(FormatControlReply(Status::Ok(), "a\n"), "ok\na\n");
  std::string output;
  EXPECT_OK(ParseControlReply("ok\n", &output));
  EXPECT_EQ(output, "");
  // Numbers are errnos too.
  EXPECT_EQ(ParseControlReply("error\t16\tbusy\n", &output).kind(), Status::Kind::kBusy);
}

TEST(ControlProtocol, WhatIsNotAReplyIsAnIoError) {
  std::string output;
  for (const char* bad : {"", "ok", "yes\n", "error\n", "error\tEBUSY\n", "error\tENOSUCH\tm\n",
                          "error\tEINVAL/whatever\tm\n", "error\t0\tm\n", "error\t\tm\n"}) {
    Status s = ParseControlReply(bad, &output);
    EXPECT_TRUE(s.IsIoError()) << bad << ": " << s.ToString();
  }
}

TEST(ControlProtocol, TheLeaseHolderNamesTheSocket) {
  const std::string plain = DescribeThisProcess("nbdkit");
  std::string path = "unchanged";
  EXPECT_FALSE(ControlSocketOfHolder(plain, &path));
  EXPECT_EQ(path, "unchanged");
  const std::string holder = HolderWithControlSocket(plain, "/run/s3b, control socket x.sock");
  EXPECT_EQ(holder.rfind(plain, 0), 0u) << holder;
  ASSERT_TRUE(ControlSocketOfHolder(holder, &path));
  EXPECT_EQ(path, "/run/s3b, control socket x.sock");
  EXPECT_FALSE(ControlSocketOfHolder("another server", &path));
  EXPECT_FALSE(ControlSocketOfHolder("nbdkit pid 1 on h since t, control socket ", &path));
  EXPECT_FALSE(ControlSocketOfHolder("nbdkit pid 1 on h since t, control socket rel", &path));
}

TEST(ControlParam, ControlIsAnAbsoluteSocketPath) {
  Config c;
  ASSERT_OK(c.Set("control", "/run/s3block.sock"));
  EXPECT_EQ(c.control, "/run/s3block.sock");
  EXPECT_EQ(c.Set("control", "s3block.sock").kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(c.Set("control", "").kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(c.Set("control", "/run/a\nb").kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(c.Set("control", "/" + std::string(107, 'x')).kind(), Status::Kind::kInvalidArgument);
  EXPECT_OK(c.Set("control", "/" + std::string(106, 'x')));
  EXPECT_EQ(c.control, "/" + std::string(106, 'x'));
  const ConfigParam* p = FindConfigParam("control");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->PathLength("rel.sock"), 8u);
  EXPECT_FALSE(p->admin);
  EXPECT_TRUE(Config().control.empty());
}

// --- The server and the client ---

TEST_F(ControlServerTest, ACallRoundTrips) {
  ASSERT_OK(Serve());
  std::string out;
  ASSERT_OK(ControlCall(path, {"echo", "vm 1", "", "snäp"}, &out, 5));
  EXPECT_EQ(out, "[echo]\n[vm 1]\n[]\n[snäp]\n");
  ASSERT_OK(ControlCall(path, {"echo"}, &out, 5));
  EXPECT_EQ(out, "[echo]\n");
  EXPECT_EQ(h.calls, 2);
}

TEST_F(ControlServerTest, ErrorsRoundTripWithKindErrnoMessageAndOutput) {
  ASSERT_OK(Serve());
  std::string out;
  Status s = ControlCall(path, {"fail"}, &out, 5);
  EXPECT_EQ(s.kind(), Status::Kind::kUnconfirmed);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_EQ(s.message(), "shrinking 'vm1' needs --force\tand\nmore \\x41");
  EXPECT_EQ(out, "partial\n");
}

TEST(ControlServer, RefusesAPathThatIsNotASocketOrWhoseDirectoryIsMissing) {
  TempDir dir;
  EchoHandler h;
  std::unique_ptr<ControlServer> server;
  const std::string file = dir.path() + "/file";
  { std::ofstream(file) << "keep"; }
  Status s = MakeServer(file, &h, &server);
  EXPECT_EQ(s.kind(), Status::Kind::kAlreadyExists) << s.ToString();
  EXPECT_NE(s.message().find("not a socket"), std::string::npos) << s.message();
  std::ifstream in(file);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "keep");

  ASSERT_EQ(::mkdir((dir.path() + "/sub").c_str(), 0700), 0);
  s = MakeServer(dir.path() + "/sub", &h, &server);
  EXPECT_EQ(s.kind(), Status::Kind::kAlreadyExists) << s.ToString();

  s = MakeServer(dir.path() + "/missing/ctl", &h, &server);
  EXPECT_EQ(s.kind(), Status::Kind::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find("does not exist"), std::string::npos) << s.message();
  EXPECT_EQ(server, nullptr);
  // Nothing left behind in the directory: no temporary directory of the socket.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) (void)e, ++entries;
  EXPECT_EQ(entries, 2);
}

TEST(ControlServer, RefusesASocketAnotherServerListensOn) {
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  EchoHandler h1, h2;
  std::unique_ptr<ControlServer> first, second;
  // Listening from Create on, before it serves: nbdkit forks between the two.
  ASSERT_OK(MakeServer(path, &h1, &first));
  Status s = MakeServer(path, &h2, &second);
  EXPECT_EQ(s.kind(), Status::Kind::kBusy) << s.ToString();
  EXPECT_EQ(s.message(), "another server uses control socket " + path);
  ASSERT_OK(first->Start());
  std::string out;
  ASSERT_OK(ControlCall(path, {"one"}, &out, 5));
  EXPECT_EQ(h1.calls, 1);
  EXPECT_EQ(h2.calls, 0);
}

TEST(ControlServer, ReplacesAStaleSocket) {
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  {
    // The socket of a server that died: the file is there, nobody listens.
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(fd.get(), 1), 0);
  }
  struct stat before;
  ASSERT_EQ(::lstat(path.c_str(), &before), 0);
  std::string out;
  Status s = ControlCall(path, {"x"}, &out, 5);
  EXPECT_EQ(s.kind(), Status::Kind::kNotFound) << s.ToString();
  EXPECT_EQ(s.message(), "no server listens on control socket " + path);

  EchoHandler h;
  std::unique_ptr<ControlServer> server;
  ASSERT_OK(MakeServer(path, &h, &server));
  ASSERT_OK(server->Start());
  struct stat after;
  ASSERT_EQ(::lstat(path.c_str(), &after), 0);
  EXPECT_NE(after.st_ino, before.st_ino);
  ASSERT_OK(ControlCall(path, {"x"}, &out, 5));
  EXPECT_EQ(out, "[x]\n");
}

TEST(ControlServer, TheSocketIsMode0600WhateverTheUmask) {
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  EchoHandler h;
  std::unique_ptr<ControlServer> server;
  const mode_t old = ::umask(0);
  Status s = MakeServer(path, &h, &server);
  ::umask(old);
  ASSERT_OK(s);
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST_F(ControlServerTest, RemovesItsSocketAtStopOnlyIfServedAndStillItsOwn) {
  ASSERT_OK(Serve());
  server->Stop();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
  std::string out;
  EXPECT_TRUE(ControlCall(path, {"x"}, &out, 5).IsNotFound());
  server.reset();

  // Made but never served, as in nbdkit's parent process, which exits after its fork while the
  // child serves the same socket: left in place.
  ASSERT_OK(MakeServer(path, &h, &server));
  server.reset();
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);

  // Replaced by someone else meanwhile: theirs is left alone.
  ASSERT_OK(MakeServer(path, &h, &server));  // the one left above is stale now
  ASSERT_OK(server->Start());
  ASSERT_EQ(::unlink(path.c_str()), 0);
  { std::ofstream(path) << "theirs"; }
  server.reset();
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);
}

// As nbdkit does without -f: made in the parent, which forks and exits (destroying its copy);
// served by the child.
TEST(ControlServer, MadeBeforeAForkItIsServedByTheChildWhateverTheParentDoes) {
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  EchoHandler h;
  std::unique_ptr<ControlServer> server;
  ASSERT_OK(MakeServer(path, &h, &server));
  const pid_t child = ::fork();
  if (child == 0) {
    if (!server->Start().ok()) ::_exit(1);
    for (;;) ::pause();  // served until killed
  }
  ASSERT_GT(child, 0);
  server.reset();  // the parent's exit
  std::string out;
  Status s = ControlCall(path, {"from", "the parent"}, &out, 10);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_OK(s);
  EXPECT_EQ(out, "[from]\n[the parent]\n");
}

TEST_F(ControlServerTest, AnOversizedRequestIsRefused) {
  ASSERT_OK(Serve());
  std::string out;
  Status s =
      ParseControlReply(RawExchange(path, std::string(kMaxControlRequest + 4096, 'x')), &out);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("longer than 65536 bytes"), std::string::npos) << s.message();
  // A whole line of that length too.
  s = ParseControlReply(RawExchange(path, std::string(kMaxControlRequest, 'x') + "\n"), &out);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument) << s.ToString();
  EXPECT_EQ(h.calls, 0);
  // The largest request is served.
  s = ParseControlReply(RawExchange(path, std::string(kMaxControlRequest - 1, 'x') + "\n"), &out);
  EXPECT_OK(s);
  EXPECT_EQ(h.calls, 1);
}

TEST_F(ControlServerTest, ControlBytesInARequestAreRefused) {
  ASSERT_OK(Serve());
  std::string out;
  for (const char* bad : {"exports\tvm\x01\n", "exports\r\n", "\x1b[2J\n", "\n"}) {
    Status s = ParseControlReply(RawExchange(path, bad), &out);
    EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument) << s.ToString();
  }
  // The client refuses them before sending.
  EXPECT_EQ(ControlCall(path, {"exports", "a\nb"}, &out, 5).kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(h.calls, 0);
}

TEST_F(ControlServerTest, AStalledClientDoesNotHoldUpAnother) {
  ControlServerOptions options;
  options.request_timeout = 60;
  ASSERT_OK(Serve(options));
  UniqueFd silent(ConnectTo(path));  // connects, sends nothing
  ASSERT_TRUE(silent.valid());
  UniqueFd partial(ConnectTo(path));  // sends half a request
  ASSERT_TRUE(partial.valid());
  ASSERT_EQ(::send(partial.get(), "exp", 3, MSG_NOSIGNAL), 3);
  const auto t0 = Clock::now();
  std::string out;
  ASSERT_OK(ControlCall(path, {"second"}, &out, 10));
  EXPECT_EQ(out, "[second]\n");
  EXPECT_LT(SecondsSince(t0), 5);
  // Stopping does not wait for them either.
  const auto t1 = Clock::now();
  server->Stop();
  EXPECT_LT(SecondsSince(t1), 5);
}

TEST_F(ControlServerTest, ASilentClientIsAnsweredWithATimeout) {
  ControlServerOptions options;
  options.request_timeout = 0.3;
  ASSERT_OK(Serve(options));
  std::string out;
  Status s = ParseControlReply(RawExchange(path, "exports"), &out);  // no end of line, no EOF
  EXPECT_EQ(s.err(), ETIMEDOUT) << s.ToString();
  EXPECT_EQ(h.calls, 0);
}

TEST_F(ControlServerTest, ConnectionsPastTheLimitAreToldItIsBusy) {
  ControlServerOptions options;
  options.max_connections = 2;
  ASSERT_OK(Serve(options));
  UniqueFd a(ConnectTo(path)), b(ConnectTo(path));
  ASSERT_TRUE(a.valid() && b.valid());
  // Both are being served once a third is refused; retry while they are still being accepted.
  Status s;
  std::string out;
  for (int i = 0; i < 100; ++i) {
    s = ControlCall(path, {"third"}, &out, 5);
    if (s.IsBusy()) break;
    ::usleep(20000);
  }
  EXPECT_TRUE(s.IsBusy()) << s.ToString();
  a.Reset(-1);
  b.Reset(-1);
  for (int i = 0; i < 100; ++i) {
    s = ControlCall(path, {"fourth"}, &out, 5);
    if (s.ok()) break;
    ::usleep(20000);
  }
  EXPECT_OK(s);
}

TEST(ControlCall, SaysWhenNoServerListensOrItDoesNotAnswer) {
  TempDir dir;
  std::string out;
  Status s = ControlCall(dir.path() + "/none", {"exports"}, &out, 5);
  EXPECT_TRUE(s.IsNotFound()) << s.ToString();
  EXPECT_EQ(s.message(), "no server listens on control socket " + dir.path() + "/none");

  // A listener that never accepts: the call gives up at its timeout.
  const std::string path = dir.path() + "/mute";
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd.get(), 1), 0);
  const auto t0 = Clock::now();
  s = ControlCall(path, {"exports"}, &out, 0.5);
  EXPECT_EQ(s.err(), ETIMEDOUT) << s.ToString();
  EXPECT_NE(s.message().find("no reply within 0.5 seconds"), std::string::npos) << s.message();
  EXPECT_LT(SecondsSince(t0), 3);
}

// Runs f in a child process as user nobody; its exit status is f's result.
int AsNobody(const std::function<int()>& f) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(99);
    ::_exit(f());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 98;
}

TEST(ControlCall, OtherUsersAreKeptOutByTheModeAndThePeerCheck) {
  TempDir dir;
  const std::string path = dir.path() + "/ctl";
  EchoHandler h;
  std::unique_ptr<ControlServer> server;
  ASSERT_OK(MakeServer(path, &h, &server));
  ASSERT_OK(server->Start());
  if (::geteuid() != 0) {
    // Without another user to be, the mode alone: no write permission, no connection.
    ASSERT_EQ(::chmod(path.c_str(), 0), 0);
    std::string out;
    Status s = ControlCall(path, {"x"}, &out, 5);
    EXPECT_TRUE(s.IsPermissionDenied()) << s.ToString();
    GTEST_SKIP() << "the peer check needs root, to be another user";
  }
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  auto call = [&](Status::Kind want, const char* text) {
    return AsNobody([&] {
      std::string out;
      Status s = ControlCall(path, {"x"}, &out, 5);
      return s.kind() == want && s.message().find(text) != std::string::npos ? 0 : 1;
    });
  };
  // The socket's mode keeps nobody out...
  EXPECT_EQ(call(Status::Kind::kPermission, "permission denied"), 0);
  // ... and with the mode opened up, the peer check still does.
  ASSERT_EQ(::chmod(path.c_str(), 0666), 0);
  EXPECT_EQ(call(Status::Kind::kPermission, "serves only root and uid 0"), 0);
  EXPECT_EQ(h.calls, 0);
  std::string out;
  EXPECT_OK(ControlCall(path, {"x"}, &out, 5));  // root is served
}

// --- The server's commands, through control= ---

class ControlServerCommands : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir((dir_.path() + "/store").c_str(), 0700), 0);
    config_.store = dir_.path() + "/store";
    config_.control = dir_.path() + "/ctl";
    config_.idle_timeout = 3600;
    ASSERT_OK(config_.Finish());
  }
  Status Make(std::unique_ptr<Server>* out) {
    return Server::Create(config_, "nbdkit", [](const std::string&) {}, out);
  }
  TempDir dir_;
  Config config_;
};

TEST_F(ControlServerCommands, ExportsListsWhatTheServerHoldsOpen) {
  std::unique_ptr<Server> server;
  ASSERT_OK(Make(&server));
  ASSERT_OK(server->Start());
  std::string out;
  ASSERT_OK(ControlCall(config_.control, {"exports"}, &out, 5));
  EXPECT_EQ(out, "");

  std::shared_ptr<Volume> a1, a2, b;
  ASSERT_OK(server->Open("vm1", false, &a1));
  ASSERT_OK(server->Open("vm1", false, &a2));
  ASSERT_OK(server->Open("vm2", false, &b));
  ASSERT_OK(server->Close(b));  // idle, still open
  ASSERT_OK(ControlCall(config_.control, {"exports"}, &out, 5));
  EXPECT_EQ(out,
            "vm1\tread-write\tblock-size=4096\tsize=1073741824\tconnections=2\n"
            "vm2\tread-write\tblock-size=4096\tsize=1073741824\tconnections=0\n");

  Status s = ControlCall(config_.control, {"frobnicate", "vm1"}, &out, 5);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(s.message(), "unknown control command 'frobnicate'");
  s = ControlCall(config_.control, {"exports", "vm1"}, &out, 5);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(s.message(), "control command 'exports' takes no arguments, not 1");
  ASSERT_OK(server->Close(a1));
  ASSERT_OK(server->Close(a2));
}

TEST_F(ControlServerCommands, ReadOnlyExportsAreSaidToBe) {
  std::unique_ptr<Server> server;
  ASSERT_OK(Make(&server));
  ASSERT_OK(server->Start());
  std::shared_ptr<Volume> w, r;
  ASSERT_OK(server->Open("vm1", false, &w));
  ASSERT_OK(server->Close(w));
  ASSERT_OK(server->CloseAll());
  server.reset();
  ASSERT_OK(Make(&server));
  ASSERT_OK(server->Start());
  ASSERT_OK(server->Open("vm1", true, &r));
  std::string out;
  ASSERT_OK(server->Control({"exports"}, &out));
  EXPECT_EQ(out, "vm1\tread-only\tblock-size=4096\tsize=1073741824\tconnections=1\n");
  ASSERT_OK(server->Close(r));
}

TEST_F(ControlServerCommands, TheLeaseNamesTheSocketAndItGoesAtCloseAll) {
  std::unique_ptr<Server> server;
  ASSERT_OK(Make(&server));
  // A second server with the same control= is refused before it serves anything.
  std::unique_ptr<Server> second;
  Status s = Make(&second);
  EXPECT_TRUE(s.IsBusy()) << s.ToString();
  ASSERT_OK(server->Start());
  std::shared_ptr<Volume> v;
  ASSERT_OK(server->Open("vm1", false, &v));

  StoreStack other;
  ASSERT_OK(MakeStoreStack(config_, &other));
  std::string holder, path;
  ASSERT_OK(other.store->QueryLease("vm1", &holder));
  ASSERT_TRUE(ControlSocketOfHolder(holder, &path)) << holder;
  EXPECT_EQ(path, config_.control);
  EXPECT_EQ(holder.rfind("nbdkit pid ", 0), 0u) << holder;
  std::string out;
  ASSERT_OK(ControlCall(path, {"exports"}, &out, 5));
  EXPECT_EQ(out.rfind("vm1\tread-write\t", 0), 0u) << out;

  ASSERT_OK(server->Close(v));
  ASSERT_OK(server->CloseAll());
  EXPECT_NE(::access(config_.control.c_str(), F_OK), 0);
  EXPECT_TRUE(ControlCall(path, {"exports"}, &out, 5).IsNotFound());
}

TEST_F(ControlServerCommands, WithoutControlTheHolderIsAsBefore) {
  config_.control.clear();
  std::unique_ptr<Server> server;
  ASSERT_OK(Make(&server));
  ASSERT_OK(server->Start());
  std::shared_ptr<Volume> v;
  ASSERT_OK(server->Open("vm1", false, &v));
  StoreStack other;
  ASSERT_OK(MakeStoreStack(config_, &other));
  std::string holder, path;
  ASSERT_OK(other.store->QueryLease("vm1", &holder));
  EXPECT_EQ(holder.find("control"), std::string::npos) << holder;
  EXPECT_FALSE(ControlSocketOfHolder(holder, &path));
  EXPECT_EQ(::access((dir_.path() + "/ctl").c_str(), F_OK), -1);
  ASSERT_OK(server->Close(v));
}

}  // namespace
}  // namespace s3block
