#include "lib/control_channel.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iterator>
#include <new>
#include <system_error>

#include "base/safe_file.h"
#include "s3block/params.h"

namespace s3block {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kHolderMark = ", control socket ";
// A reply longer than this is not one of ours.
constexpr size_t kMaxControlReply = 64 << 20;

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

Clock::time_point DeadlineIn(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(seconds));
}

bool IsControlByte(unsigned char c) { return c < 0x20 || c == 0x7f; }

bool SetAddress(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) return false;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

enum class Wait { kReady, kTimeout, kStopped, kError };

// Waits until fd has `events`, the deadline passes, or wake_fd (if >= 0) becomes readable.
Wait WaitFor(int fd, short events, int wake_fd, Clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Wait::kTimeout;
    pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int ms = static_cast<int>(std::min<long long>(left, 60000));
    const int r = ::poll(p, wake_fd >= 0 ? 2 : 1, ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Wait::kError;
    }
    if (wake_fd >= 0 && (p[1].revents & POLLIN) != 0) return Wait::kStopped;
    if (p[0].revents != 0) return Wait::kReady;
  }
}

// Sends all of data before the deadline: 0, or an errno (ETIMEDOUT, ESHUTDOWN when woken).
int SendAll(int fd, std::string_view data, int wake_fd, Clock::time_point deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
    switch (WaitFor(fd, POLLOUT, wake_fd, deadline)) {
      case Wait::kReady: break;
      case Wait::kTimeout: return ETIMEDOUT;
      case Wait::kStopped: return ESHUTDOWN;
      case Wait::kError: return errno;
    }
  }
  return 0;
}

std::string ErrnoName(int err) {
  const char* name = ::strerrorname_np(err);
  return name != nullptr ? name : std::to_string(err);
}

// The errno a name or a decimal number stands for; 0 if none.
int ErrnoFromName(std::string_view s) {
  if (s.empty()) return 0;
  if (s.find_first_not_of("0123456789") == std::string_view::npos) {
    if (s.size() > 9) return 0;
    return std::stoi(std::string(s));
  }
  for (int e = 1; e < 4096; ++e) {
    const char* name = ::strerrorname_np(e);
    if (name != nullptr && s == name) return e;
  }
  return 0;
}

constexpr struct {
  Status::Kind kind;
  const char* name;
} kKindNames[] = {
    {Status::Kind::kInvalidArgument, "invalid-argument"},
    {Status::Kind::kNotFound, "not-found"},
    {Status::Kind::kAlreadyExists, "already-exists"},
    {Status::Kind::kBusy, "busy"},
    {Status::Kind::kUnconfirmed, "unconfirmed"},
    {Status::Kind::kNotSupported, "not-supported"},
    {Status::Kind::kNoSpace, "no-space"},
    {Status::Kind::kPermission, "permission"},
    {Status::Kind::kCancelled, "cancelled"},
    {Status::Kind::kIo, "io"},
};

const char* KindName(Status::Kind kind) {
  for (const auto& k : kKindNames)
    if (k.kind == kind) return k.name;
  return "io";
}

bool KindFromName(std::string_view s, Status::Kind* kind) {
  for (const auto& k : kKindNames)
    if (s == k.name) {
      *kind = k.kind;
      return true;
    }
  return false;
}

// An error of `kind` with errno `err`: Status makes the kind from the errno, except through the
// factory of a kind whose errno belongs to another kind (Unconfirmed's EINVAL).
Status MakeStatus(Status::Kind kind, int err, std::string m) {
  if (kind == Status::KindOf(err)) return Status::Error(err, std::move(m));
  Status s;
  switch (kind) {
    case Status::Kind::kOk: return Status::Error(err, std::move(m));
    case Status::Kind::kInvalidArgument: s = Status::InvalidArgument(m); break;
    case Status::Kind::kNotFound: s = Status::NotFound(m); break;
    case Status::Kind::kAlreadyExists: s = Status::AlreadyExists(m); break;
    case Status::Kind::kBusy: s = Status::Busy(m); break;
    case Status::Kind::kUnconfirmed: s = Status::Unconfirmed(m); break;
    case Status::Kind::kNotSupported: s = Status::NotSupported(m); break;
    case Status::Kind::kNoSpace: s = Status::NoSpace(m); break;
    case Status::Kind::kPermission: s = Status::PermissionDenied(m); break;
    case Status::Kind::kCancelled: s = Status::Cancelled(m); break;
    case Status::Kind::kIo: s = Status::IoError(m); break;
  }
  return s.err() == err ? s : Status::Error(err, std::move(m));
}

// The message on one line: '\' and control bytes as \\ and \xHH.
std::string EscapeMessage(std::string_view m) {
  std::string out;
  for (char c : m) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (IsControlByte(u)) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string UnescapeMessage(std::string_view m) {
  std::string out;
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\\' && i + 1 < m.size() && m[i + 1] == '\\') {
      out.push_back('\\');
      ++i;
    } else if (m[i] == '\\' && i + 3 < m.size() && m[i + 1] == 'x' && HexDigit(m[i + 2]) >= 0 &&
               HexDigit(m[i + 3]) >= 0) {
      out.push_back(static_cast<char>(HexDigit(m[i + 2]) * 16 + HexDigit(m[i + 3])));
      i += 3;
    } else {
      out.push_back(m[i]);
    }
  }
  return out;
}

// Whether someone accepts connections on the socket at path: 0 (yes), or connect's errno
// (ECONNREFUSED: a socket nobody listens on).
int ProbeListener(const std::string& path) {
  sockaddr_un addr;
  if (!SetAddress(path, &addr)) return ENAMETOOLONG;
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return errno;
  int r;
  do {
    r = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  } while (r != 0 && errno == EINTR);
  if (r == 0 || errno == EAGAIN) return 0;  // EAGAIN: its backlog is full, so it listens
  return errno;
}

}  // namespace

// --- The protocol ---

Status FormatControlRequest(const std::vector<std::string>& args, std::string* line) {
  line->clear();
  if (args.empty()) return Status::InvalidArgument("no control command given");
  for (size_t i = 0; i < args.size(); ++i) {
    for (char c : args[i])
      if (IsControlByte(static_cast<unsigned char>(c)))
        return Status::InvalidArgument("argument " + std::to_string(i) + " of control command '" +
                                       QuoteForMessage(args[0]) +
                                       "' holds a control character: " +
                                       "'" + QuoteForMessage(args[i]) + "'");
    if (i > 0) line->push_back('\t');
    *line += args[i];
  }
  line->push_back('\n');
  if (line->size() > kMaxControlRequest) {
    const size_t n = line->size();
    line->clear();
    return Status::InvalidArgument("control request of " + std::to_string(n) +
                                   " bytes; at most " + std::to_string(kMaxControlRequest));
  }
  return Status::Ok();
}

Status ParseControlRequest(std::string_view line, std::vector<std::string>* args) {
  args->clear();
  if (line.empty()) return Status::InvalidArgument("empty control request");
  size_t start = 0;
  for (;;) {
    const size_t tab = line.find('\t', start);
    const std::string_view field =
        line.substr(start, tab == std::string_view::npos ? line.npos : tab - start);
    for (char c : field)
      if (IsControlByte(static_cast<unsigned char>(c))) {
        const size_t index = args->size();
        args->clear();
        return Status::InvalidArgument("field " + std::to_string(index) +
                                       " of the control request holds a control character");
      }
    args->emplace_back(field);
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  return Status::Ok();
}

std::string FormatControlReply(const Status& status, std::string_view output) {
  std::string reply;
  if (status.ok()) {
    reply = "ok\n";
  } else {
    reply = "error\t" + ErrnoName(status.err());
    if (status.kind() != Status::KindOf(status.err()))
      reply += std::string("/") + KindName(status.kind());
    reply += "\t" + EscapeMessage(status.message()) + "\n";
  }
  reply += output;
  return reply;
}

Status ParseControlReply(std::string_view reply, std::string* output) {
  output->clear();
  const size_t nl = reply.find('\n');
  const std::string_view first = reply.substr(0, nl);
  auto malformed = [&] {
    return Status::IoError("not a control reply: '" + QuoteForMessage(first) + "'");
  };
  if (nl == std::string_view::npos) return malformed();
  if (first == "ok") {
    *output = std::string(reply.substr(nl + 1));
    return Status::Ok();
  }
  constexpr std::string_view kError = "error\t";
  if (first.substr(0, kError.size()) != kError) return malformed();
  const std::string_view rest = first.substr(kError.size());
  const size_t tab = rest.find('\t');
  if (tab == std::string_view::npos) return malformed();
  std::string_view code = rest.substr(0, tab);
  const std::string message = UnescapeMessage(rest.substr(tab + 1));
  const size_t slash = code.find('/');
  const int err = ErrnoFromName(code.substr(0, slash));
  if (err <= 0) return malformed();
  Status::Kind kind = Status::KindOf(err);
  if (slash != std::string_view::npos && !KindFromName(code.substr(slash + 1), &kind))
    return malformed();
  *output = std::string(reply.substr(nl + 1));
  return MakeStatus(kind, err, message);
}

std::string HolderWithControlSocket(const std::string& holder, const std::string& path) {
  return holder + std::string(kHolderMark) + path;
}

bool ControlSocketOfHolder(std::string_view holder, std::string* path) {
  // The first mark: what DescribeThisProcess makes before it has none, and a path may.
  const size_t at = holder.find(kHolderMark);
  if (at == std::string_view::npos) return false;
  const std::string_view p = holder.substr(at + kHolderMark.size());
  if (p.empty() || p[0] != '/') return false;
  *path = std::string(p);
  return true;
}

// --- The server ---

Status ControlServer::Create(const std::string& path, ControlHandler handler,
                             ControlServerOptions options, std::unique_ptr<ControlServer>* out) {
  const std::string where = "control=" + path;
  sockaddr_un addr;
  if (!SetAddress(path, &addr))
    return Status::InvalidArgument(where + ": a unix socket's path is 1 to " +
                                   std::to_string(sizeof addr.sun_path - 1) + " bytes long");
  const size_t slash = path.rfind('/');
  if (slash == path.size() - 1) return Status::InvalidArgument(where + ": names a directory");
  const std::string dir =
      slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return Status::NotFound(where + ": directory " + dir + " does not exist");
    return Status::FromErrno(errno, where + ": " + dir);
  }
  if (!S_ISDIR(st.st_mode)) return Status::NotFound(where + ": " + dir + " is not a directory");

  bool stale = false;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Status::AlreadyExists(where + ": " + path + " exists and is " +
                                   FileTypeName(st.st_mode) + ", not a socket");
    if (st.st_uid != ::geteuid())
      return Status::PermissionDenied(where + ": the socket there belongs to uid " +
                                      std::to_string(st.st_uid) + "; remove it or choose another");
    const int probe = ProbeListener(path);
    if (probe == 0) return Status::Busy("another server uses control socket " + path);
    if (probe != ECONNREFUSED)
      return Status::FromErrno(probe, where + ": cannot tell whether a server uses it");
    stale = true;
  } else if (errno != ENOENT) {
    return Status::FromErrno(errno, where);
  }

  // The socket is bound in a directory of its own, mode 0700, made to 0600 there, and only then
  // put in place: bound at `path` it would be reachable with the umask's mode until the chmod, and
  // setting the umask instead would change it for every thread of the process.
  std::string tmp = dir + "/.cXXXXXX";
  sockaddr_un tmp_addr;
  if (!SetAddress(tmp + "/s", &tmp_addr))
    return Status::InvalidArgument(where + ": the directory's path is too long for a unix socket");
  if (::mkdtemp(tmp.data()) == nullptr)
    return Status::FromErrno(errno, where + ": mkdtemp in " + dir);
  const std::string bound = tmp + "/s";
  SetAddress(bound, &tmp_addr);
  struct Cleanup {
    const std::string& bound;
    const std::string& tmp;
    ~Cleanup() {
      ::unlink(bound.c_str());
      ::rmdir(tmp.c_str());
    }
  } cleanup{bound, tmp};

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Status::FromErrno(errno, where + ": socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&tmp_addr), sizeof tmp_addr) != 0)
    return Status::FromErrno(errno, where + ": bind");
  if (::chmod(bound.c_str(), 0600) != 0) return Status::FromErrno(errno, where + ": chmod");
  if (::listen(fd.get(), 16) != 0) return Status::FromErrno(errno, where + ": listen");
  if (::lstat(bound.c_str(), &st) != 0) return Status::FromErrno(errno, where + ": stat");
  // A stale socket is replaced by rename; where there was none, link() refuses to replace one
  // that another server has put there since the probe.
  int placed;
  if (stale) {
    placed = ::rename(bound.c_str(), path.c_str());
  } else {
    placed = ::link(bound.c_str(), path.c_str());
    if (placed != 0 && errno == EEXIST)
      return Status::Busy("another server uses control socket " + path);
    if (placed != 0) placed = ::rename(bound.c_str(), path.c_str());  // no hard links there
  }
  if (placed != 0) return Status::FromErrno(errno, where + ": cannot put the socket in place");

  std::unique_ptr<ControlServer> server(
      new ControlServer(path, std::move(handler), std::move(options)));
  server->listen_fd_ = fd.Release();
  server->dev_ = st.st_dev;
  server->ino_ = st.st_ino;
  *out = std::move(server);
  return Status::Ok();
}

ControlServer::~ControlServer() { Stop(); }

Status ControlServer::Start() {
  {
    MutexLock lock(&mu_);
    if (stopping_) return Status::Error(ESHUTDOWN, "control socket " + path_ + ": stopped");
  }
  if (acceptor_.joinable()) return Status::Ok();
  // Made here, after nbdkit's fork: an eventfd made before it would be shared with the parent,
  // whose exit (Stop) would wake this process's threads to stop.
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Status::FromErrno(errno, "control socket " + path_ + ": eventfd");
  try {
    acceptor_ = std::thread([this] { AcceptLoop(); });
  } catch (const std::system_error& e) {
    return Status::Error(e.code().value() != 0 ? e.code().value() : EAGAIN,
                         "control socket " + path_ + ": cannot start its thread");
  }
  served_by_ = ::getpid();
  Log("control socket " + path_ + ": listening");
  return Status::Ok();
}

void ControlServer::Stop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  if (acceptor_.joinable()) acceptor_.join();
  std::list<Connection> rest;
  {
    MutexLock lock(&mu_);
    rest.swap(connections_);
  }
  for (Connection& c : rest)
    if (c.thread.joinable()) c.thread.join();
  // nbdkit's parent process exits after its fork, destroying the server it made: only the
  // process that served removes the socket, and only while the path still leads to it.
  struct stat st;
  if (served_by_ == ::getpid() && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ &&
      st.st_ino == ino_)
    ::unlink(path_.c_str());
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
}

void ControlServer::Log(const std::string& m) const {
  if (options_.log) options_.log(m);
}

void ControlServer::ReapConnections() {
  std::list<Connection> done;
  {
    MutexLock lock(&mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (it->done) done.splice(done.end(), connections_, it);
      it = next;
    }
  }
  for (Connection& c : done)
    if (c.thread.joinable()) c.thread.join();
}

void ControlServer::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) {
      Log("control socket " + path_ + ": poll: " + std::strerror(errno) + "; no longer served");
      return;
    }
    if ((p[1].revents & POLLIN) != 0) return;
    if ((p[0].revents & (POLLERR | POLLNVAL)) != 0) {
      Log("control socket " + path_ + ": the listening socket failed; no longer served");
      return;
    }
    if ((p[0].revents & POLLIN) == 0) continue;
    try {
      ReapConnections();
      Accept();
    } catch (...) {
      // Out of memory or threads: the connection, if accepted, is closed; the next is tried.
    }
  }
}

void ControlServer::Accept() {
  UniqueFd conn(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!conn.valid()) {
    const int err = errno;
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
      Log("control socket " + path_ + ": accept: " + std::strerror(err));
      pollfd w = {wake_fd_, POLLIN, 0};
      ::poll(&w, 1, 200);  // the connection stays queued: try again later, not at once
    }
    return;
  }
  MutexLock lock(&mu_);
  if (active_ >= options_.max_connections) {
    const std::string busy = FormatControlReply(
        Status::Busy("control socket " + path_ + ": " + std::to_string(options_.max_connections) +
                     " requests are being served; try again"),
        "");
    (void)!::send(conn.get(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    return;
  }
  connections_.emplace_back();
  auto it = std::prev(connections_.end());
  try {
    it->thread = std::thread([this, fd = conn.get(), it] {
      try {
        Serve(fd);
      } catch (...) {
        // Serve has closed fd; nothing is left to answer.
      }
      MutexLock done_lock(&mu_);
      it->done = true;
      --active_;
    });
  } catch (...) {
    connections_.erase(it);
    throw;
  }
  // The thread owns the fd now; had it not been made, conn would have closed it.
  (void)conn.Release();
  ++active_;
}

void ControlServer::Serve(int fd) {
  UniqueFd conn(fd);
  std::string reply;
  try {
    reply = Answer(fd);
  } catch (const std::bad_alloc&) {
    reply = FormatControlReply(Status::Error(ENOMEM, "control command: out of memory"), "");
  } catch (const std::exception& e) {
    reply = FormatControlReply(
        Status::IoError(std::string("control command: internal error: ") + e.what()), "");
  } catch (...) {
    reply = FormatControlReply(Status::IoError("control command: internal error"), "");
  }
  if (reply.empty()) return;
  const int err = SendAll(fd, reply, wake_fd_, DeadlineIn(options_.reply_timeout));
  if (err != 0 && err != EPIPE && err != ECONNRESET)
    Log("control socket " + path_ + ": reply not sent: " + std::strerror(err));
}

std::string ControlServer::Answer(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return FormatControlReply(Status::FromErrno(errno, "control socket: SO_PEERCRED"), "");
  if (cred.uid != 0 && cred.uid != ::geteuid()) {
    Log("control socket " + path_ + ": refused pid " + std::to_string(cred.pid) + " of uid " +
        std::to_string(cred.uid));
    return FormatControlReply(
        Status::PermissionDenied("control socket " + path_ + " serves only root and uid " +
                                 std::to_string(::geteuid())),
        "");
  }

  const auto deadline = DeadlineIn(options_.request_timeout);
  std::string request;
  size_t nl;
  while ((nl = request.find('\n')) == std::string::npos) {
    if (request.size() >= kMaxControlRequest)
      return FormatControlReply(
          Status::InvalidArgument("control request longer than " +
                                  std::to_string(kMaxControlRequest) + " bytes"),
          "");
    char buf[4096];
    const size_t want = std::min(sizeof buf, kMaxControlRequest - request.size());
    const ssize_t n = ::recv(fd, buf, want, 0);
    if (n > 0) {
      request.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0)
      return FormatControlReply(
          Status::InvalidArgument("control request without its end of line"), "");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return "";
    switch (WaitFor(fd, POLLIN, wake_fd_, deadline)) {
      case Wait::kReady: break;
      case Wait::kTimeout:
        return FormatControlReply(
            Status::Error(ETIMEDOUT, "no whole control request within " +
                                         Seconds(options_.request_timeout) + " seconds"),
            "");
      case Wait::kStopped:
        return FormatControlReply(Status::Error(ESHUTDOWN, "the server is stopping"), "");
      case Wait::kError: return "";
    }
  }
  std::vector<std::string> args;
  Status s = ParseControlRequest(std::string_view(request).substr(0, nl), &args);
  std::string output;
  if (s.ok()) s = handler_(args, &output);
  const std::string command =
      args.empty() ? std::string("(refused)") : "'" + QuoteForMessage(args[0]) + "'";
  Log("control: " + command + ": " + s.ToString());
  return FormatControlReply(s, output);
}

// --- The client ---

Status ControlCall(const std::string& path, const std::vector<std::string>& args,
                   std::string* output, double timeout_seconds) {
  output->clear();
  std::string request;
  S3B_RETURN_IF_ERROR(FormatControlRequest(args, &request));
  const std::string where = "control socket " + path;
  sockaddr_un addr;
  if (!SetAddress(path, &addr))
    return Status::InvalidArgument(where + ": a unix socket's path is 1 to " +
                                   std::to_string(sizeof addr.sun_path - 1) + " bytes long");
  const auto deadline = DeadlineIn(timeout_seconds);
  const Status timed_out = Status::Error(
      ETIMEDOUT, where + ": no reply within " + Seconds(timeout_seconds) + " seconds");
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return Status::FromErrno(errno, where + ": socket");
  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN) {  // its backlog is full: it is busy, not gone
      if (Clock::now() >= deadline) return timed_out;
      ::usleep(10000);
      continue;
    }
    if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR)
      return Status::NotFound("no server listens on " + where);
    if (err == EACCES || err == EPERM)
      return Status::PermissionDenied(where + ": permission denied (only root and the user of the "
                                      "server may use it)");
    return Status::FromErrno(err, where + ": connect");
  }
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return Status::FromErrno(errno, where + ": SO_PEERCRED");
  // Not a server of this user (or root): whoever put it there is not the one to ask.
  if (::geteuid() != 0 && cred.uid != 0 && cred.uid != ::geteuid())
    return Status::PermissionDenied(where + " is served by uid " + std::to_string(cred.uid) +
                                    ", neither this user nor root");

  int err = SendAll(fd.get(), request, -1, deadline);
  if (err == ETIMEDOUT) return timed_out;
  // EPIPE: the server answered early (a refusal) and closed; its reply is still to be read.
  if (err != 0 && err != EPIPE && err != ECONNRESET)
    return Status::FromErrno(err, where + ": sending the request");
  std::string reply;
  for (;;) {
    char buf[8192];
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n > 0) {
      reply.append(buf, static_cast<size_t>(n));
      if (reply.size() > kMaxControlReply)
        return Status::IoError(where + ": a reply longer than " + std::to_string(kMaxControlReply) +
                               " bytes");
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      if (errno == ECONNRESET && !reply.empty()) break;
      return Status::FromErrno(errno, where + ": reading the reply");
    }
    switch (WaitFor(fd.get(), POLLIN, -1, deadline)) {
      case Wait::kReady: break;
      case Wait::kTimeout: return timed_out;
      case Wait::kStopped:
      case Wait::kError: return Status::FromErrno(errno, where + ": poll");
    }
  }
  if (reply.empty())
    return Status::IoError(where + ": the server closed the connection without a reply");
  Status s = ParseControlReply(reply, output);
  if (s.IsIoError() && reply.find('\n') == std::string::npos)
    return Status::IoError(where + ": the reply ended early");
  return s;
}

}  // namespace s3block
