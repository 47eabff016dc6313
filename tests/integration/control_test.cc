// The control socket (control=) of a real nbdkit: found from the lease of an export a client has
// open, answering `exports`, served after nbdkit forks into the background, and removed when the
// server stops. The refusals at start-up are in plugin_test.cc (StartupFailuresNameTheParameter).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "lib/control_channel.h"
#include "nbdkit_fixture.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"

namespace s3block::testing {
namespace {

std::string LeaseHolder(const std::string& store, const std::string& name) {
  Config config;
  config.store = store;
  EXPECT_TRUE(config.Finish().ok());
  StoreStack stack;
  Status s = MakeStoreStack(config, &stack);
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::string holder;
  if (s.ok()) {
    s = stack.store->QueryLease(name, &holder);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return holder;
}

// Whether pid is a process that has not exited (a zombie has: nobody may reap a daemon's child).
bool Running(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

TEST(ControlSocket, ARunningServerIsFoundFromTheLeaseAndListsItsExports) {
  ScratchDir dir;
  const std::string store = dir.path() + "/store", ctl = dir.path() + "/ctl";
  std::filesystem::create_directories(store);
  NbdkitServer server(dir.path());
  ASSERT_TRUE(server.Start({"store=" + store, "control=" + ctl, "size=64M"}));
  struct stat st;
  ASSERT_EQ(::stat(ctl.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  NbdClient client;
  ASSERT_TRUE(client.Connect(server.socket(), "vm1")) << client.error();
  const std::vector<uint8_t> data(4096, 0x5a);
  ASSERT_TRUE(client.Pwrite(data.data(), data.size(), 0)) << client.error();

  // What the admin command will do: the socket from the lease's holder, then a call.
  const std::string holder = LeaseHolder(store, "vm1");
  std::string path;
  ASSERT_TRUE(ControlSocketOfHolder(holder, &path)) << holder;
  EXPECT_EQ(path, ctl);
  std::string out;
  Status s = ControlCall(path, {"exports"}, &out, 10);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << server.Logs();
  EXPECT_EQ(out, "vm1\tread-write\tblock-size=4096\tsize=67108864\tconnections=1\n");
  s = ControlCall(path, {"no-such-command"}, &out, 10);
  EXPECT_EQ(s.kind(), Status::Kind::kInvalidArgument);
  EXPECT_EQ(s.message(), "unknown control command 'no-such-command'");

  ASSERT_TRUE(client.Shutdown()) << client.error();
  ASSERT_TRUE(server.Stop()) << server.Logs();
  EXPECT_NE(::access(ctl.c_str(), F_OK), 0) << "the socket is left after a clean stop";
}

// nbdkit without -f forks after get_ready: the socket made before the fork must be served by the
// child, and the parent's exit must not take it away.
TEST(ControlSocket, ServedAfterNbdkitForksIntoTheBackground) {
  ScratchDir dir;
  const std::string store = dir.path() + "/store", ctl = dir.path() + "/ctl";
  const std::string pidfile = dir.path() + "/bg.pid";
  std::filesystem::create_directories(store);
  ExitResult parent = RunNbdkit(dir.path(), {"-P", pidfile, "-U", dir.path() + "/bg.sock",
                                             S3BLOCK_PLUGIN_PATH, "store=" + store,
                                             "control=" + ctl});
  ASSERT_TRUE(parent.exited && parent.code == 0) << parent.stderr_text;
  pid_t pid = 0;
  for (int i = 0; i < 1000 && pid <= 0; ++i) {
    std::ifstream(pidfile) >> pid;
    if (pid <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(pid, 0) << "no pid file";
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      if (Running(pid)) ::kill(pid, SIGKILL);
    }
  } reaper{pid};

  std::string out;
  Status s = ControlCall(ctl, {"exports"}, &out, 10);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(out, "");

  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  for (int i = 0; i < 3000 && Running(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(Running(pid)) << "nbdkit did not stop on SIGTERM";
  EXPECT_NE(::access(ctl.c_str(), F_OK), 0) << "the socket is left after a clean stop";
}

}  // namespace
}  // namespace s3block::testing
