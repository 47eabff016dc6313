// Server: what one serving process holds, whatever speaks NBD for it. The store stack built from
// the configuration, the registry of open exports (each shared by every connection to it) and
// the statistics reporter. The nbdkit plugin keeps one and only translates its callbacks.
//
// With control=PATH it also serves the control socket (lib/control_channel.h): made in Create,
// served from Start, gone at CloseAll; its commands are Control's table (server.cc).
//
// Life cycle: Create (before nbdkit forks: every check whose failure should reach the terminal)
// -> Start (after the fork: threads) -> Open/Close per connection -> CloseAll at a clean
// shutdown. Durability never depends on CloseAll: flushes and the last close make writes durable.
//
// Thread safety: Open, Close, ListExports and Control are safe for concurrent use once Start has
// returned; Create, Start and CloseAll are called once each, from one thread.
#ifndef S3BLOCK_LIB_SERVER_H_
#define S3BLOCK_LIB_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lib/control_channel.h"
#include "lib/stats_reporter.h"
#include "lib/volume_registry.h"
#include "s3block/config.h"
#include "s3block/volume.h"

namespace s3block {

class Server {
 public:
  using Log = std::function<void(const std::string&)>;

  // Builds the store stack and checks the store, the default export's metadata (and so the key
  // of an encrypted one) and the stats file, and makes the control socket. `program` names this
  // process in the leases it holds; `debug` receives the server's log lines, the first of them
  // "serving STORE".
  static Status Create(const Config& config, const std::string& program, Log debug,
                       std::unique_ptr<Server>* out);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Starts the store's, the registry's, the reporter's and the control socket's threads.
  Status Start();

  // The export a client asked for by name (empty: default-export=), shared with every other
  // connection to it.
  Status Open(const std::string& requested, bool readonly, std::shared_ptr<Volume>* out);
  // A connection to `volume` is gone; the last one's close makes the export's writes durable.
  Status Close(const std::shared_ptr<Volume>& volume);
  // Stops the control socket, then makes every open export durable and gives up its lease.
  Status CloseAll();

  // The exports a client may list: those in the store, and the default one if it would be
  // created on open.
  Status ListExports(std::vector<std::string>* names);

  // Runs the control command args[0] with the rest as its arguments (the control socket's
  // handler). Unknown commands and wrong argument counts are EINVAL.
  Status Control(const std::vector<std::string>& args, std::string* output);

  const Config& config() const { return config_; }
  std::string Describe() const { return stack_.store->Describe(); }

 private:
  Server(const Config& config, Log debug) : config_(config), debug_(std::move(debug)) {}

  // Control commands: args are those after the command's name.
  // exports: one line per export this server holds (VolumeRegistry::Exports).
  Status ControlExports(const std::vector<std::string>& args, std::string* output);
  // snapshot NAME SNAP, delete-snapshot NAME SNAP, add-clone NAME SNAP CLONE: what the admin
  // command does to a log export (admin.h) when this server holds it.
  Status ControlSnapshot(const std::vector<std::string>& args, std::string* output);
  Status ControlDeleteSnapshot(const std::vector<std::string>& args, std::string* output);
  Status ControlAddClone(const std::vector<std::string>& args, std::string* output);
  // Runs fn on log export `name`, held (opened if need be) for the time it runs.
  Status WithLogExport(const std::string& name,
                       const std::function<Status(const std::shared_ptr<Volume>&)>& fn);

  const Config config_;
  const Log debug_;
  StoreStack stack_;
  std::unique_ptr<VolumeRegistry> volumes_;
  std::unique_ptr<StatsReporter> stats_;
  std::unique_ptr<ControlServer> control_;  // null without control=
};

// The errno an NBD client can be told for err. NBD carries only EPERM, EIO, ENOMEM, EINVAL,
// ENOSPC, EOVERFLOW, ENOTSUP and ESHUTDOWN, and nbdkit sends EINVAL for any other, which would
// tell the client its request was wrong: resources that ran out are ENOMEM, the rest EIO.
int NbdErrno(int err);

// Sets glibc's malloc up for a process whose memory is mostly block buffers of up to a few MiB
// passed between threads (see server.cc for what was measured). Called by Server::Create.
void TuneMallocForBlockBuffers();

}  // namespace s3block

#endif  // S3BLOCK_LIB_SERVER_H_
