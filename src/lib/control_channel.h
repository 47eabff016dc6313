// The control channel: a unix socket (control=PATH) through which the admin command asks a
// running server to do what it cannot do itself while the server holds an export's lease.
//
// Protocol, one request and one reply per connection:
//   request  ARG0 TAB ARG1 ... LF        ARG0 names the command; no field holds a byte below
//                                        0x20 or 0x7f (export names cannot), so TAB and LF
//                                        are safe separators; at most kMaxControlRequest bytes
//   reply    "ok" LF OUTPUT              OUTPUT: the command's text, as it is
//            "error" TAB ERRNO TAB MESSAGE LF OUTPUT
// ERRNO is the errno's name ("EBUSY"), or its number when it has none, followed by "/KIND" when
// the Status's kind is not the one its errno implies (an Unconfirmed EINVAL); MESSAGE has '\'
// and control bytes escaped (\\, \xHH). ParseControlReply rebuilds the same Status.
//
// Only root and the server's own uid are served (SO_PEERCRED); the socket is mode 0600.
//
// Thread safety: ControlServer's Create, Start and Stop from one thread; the handler is called
// from the server's own threads, several at once.
#ifndef S3BLOCK_LIB_CONTROL_CHANNEL_H_
#define S3BLOCK_LIB_CONTROL_CHANNEL_H_

#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "s3block/status.h"
#include "util/mutex.h"

namespace s3block {

constexpr size_t kMaxControlRequest = 64 << 10;

// Runs one command: args[0] is its name. What it writes to *output follows the reply's first
// line, also after an error.
using ControlHandler =
    std::function<Status(const std::vector<std::string>& args, std::string* output)>;

struct ControlServerOptions {
  double request_timeout = 10;  // seconds a client has to send its whole request
  double reply_timeout = 10;    // seconds a client has to take the whole reply
  int max_connections = 8;      // served at once; more are refused with EBUSY
  std::function<void(const std::string&)> log;  // may be empty
};

class ControlServer {
 public:
  // Makes the socket at `path` and listens on it; starts no thread (nbdkit forks after this).
  // Refuses a path whose directory does not exist, something there that is not a socket, a
  // socket of another user, and a socket another process listens on (EBUSY); replaces a stale
  // socket nobody listens on.
  static Status Create(const std::string& path, ControlHandler handler,
                       ControlServerOptions options, std::unique_ptr<ControlServer>* out);
  // Stop().
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Starts accepting connections, each served on a thread of its own.
  Status Start();
  // Stops accepting, waits for the connections being served (a command already running
  // finishes) and removes the socket if this process served it and it is still this one.
  void Stop();

  const std::string& path() const { return path_; }

 private:
  struct Connection {
    std::thread thread;
    bool done = false;
  };

  ControlServer(std::string path, ControlHandler handler, ControlServerOptions options)
      : path_(std::move(path)), handler_(std::move(handler)), options_(std::move(options)) {}

  void AcceptLoop() EXCLUDES(mu_);
  // Accepts one connection and has a thread serve it, or tells it the server is busy.
  void Accept() EXCLUDES(mu_);
  void Serve(int fd) EXCLUDES(mu_);
  // The reply to the request on fd, or "" to close without one.
  std::string Answer(int fd);
  // Joins the connections that have finished.
  void ReapConnections() EXCLUDES(mu_);
  void Log(const std::string& m) const;

  const std::string path_;
  const ControlHandler handler_;
  const ControlServerOptions options_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // an eventfd of Start's, readable once Stop has begun: every poll wakes up
  dev_t dev_ = 0;     // the socket's inode, to remove it only while it is ours
  ino_t ino_ = 0;
  pid_t served_by_ = 0;  // the process that started serving (nbdkit's child after its fork)
  std::thread acceptor_;

  Mutex mu_;
  std::condition_variable changed_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::list<Connection> connections_ GUARDED_BY(mu_);
  int active_ GUARDED_BY(mu_) = 0;
};

// Asks the server listening on `path` to run the command `args` and waits at most
// `timeout_seconds` for the whole exchange. Returns the server's Status (kind, errno, message)
// with the command's output in *output; or its own error: NotFound "no server listens on
// control socket PATH", PermissionDenied, ETIMEDOUT, EINVAL for args the protocol cannot carry.
Status ControlCall(const std::string& path, const std::vector<std::string>& args,
                   std::string* output, double timeout_seconds);

// The protocol's pieces (see the top of this file), for the server, the client and tests.
Status FormatControlRequest(const std::vector<std::string>& args, std::string* line);
// `line` without its LF.
Status ParseControlRequest(std::string_view line, std::vector<std::string>* args);
std::string FormatControlReply(const Status& status, std::string_view output);
// The Status the reply carries (EIO if it is not a reply), the output in *output.
Status ParseControlReply(std::string_view reply, std::string* output);

// The lease holder of a server with a control socket: `holder` (DescribeThisProcess) followed by
// ", control socket PATH", from which ControlSocketOfHolder gets PATH back.
std::string HolderWithControlSocket(const std::string& holder, const std::string& path);
bool ControlSocketOfHolder(std::string_view holder, std::string* path);

}  // namespace s3block

#endif  // S3BLOCK_LIB_CONTROL_CHANNEL_H_
