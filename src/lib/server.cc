#include "lib/server.h"

#include <malloc.h>

#include <algorithm>
#include <cerrno>

#include "log/layout_store.h"
#include "s3block/cache_store.h"
#include "s3block/store_factory.h"

namespace s3block {

void TuneMallocForBlockBuffers() {
  // One malloc arena for the process. By default glibc gives threads arenas of their own (up
  // to 8 per core) and serves block buffers of 1 MiB from them once the first such buffer has
  // been freed; each arena keeps what is freed in it, so with dozens of threads (nbdkit's,
  // the uploaders, the fetchers) the blocks that pass through the cache left about 100 MiB
  // more resident than the cache's budget. One arena reuses those buffers; small allocations
  // still go through glibc's per-thread caches without its lock. (Mapping each large buffer
  // on its own, M_MMAP_THRESHOLD, bounded memory as well but halved random I/O at 1 MiB
  // blocks with the page faults of every new buffer.)
  mallopt(M_ARENA_MAX, 1);
  // And that arena keeps what it frees. glibc's defaults give back any free memory above 2 MiB
  // at the top of the heap (once a 1 MiB buffer has raised its thresholds), so the cache's
  // churn of block buffers had the kernel zero fresh pages for about two thirds of the blocks
  // passing through: 41,000 page faults per 256 MiB written at 1M blocks. Setting the trim
  // threshold alone would turn off the raised mmap threshold (every buffer mapped on its own,
  // as above), so both are set: buffers under 32 MiB come from the heap, and the heap keeps up
  // to 64 MiB free at its top. Measured apart against one RGW at 1M blocks: 25,000 faults,
  // less of the plugin's CPU (writing 256 MiB 0.59-0.63 s instead of 0.61-0.70; reading it
  // cold 0.35-0.42 instead of 0.39-0.48), random 4K writes and peak RSS the same.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

int NbdErrno(int err) {
  switch (err) {
    case EPERM: case EROFS: case EACCES: return EPERM;
    case EIO: case ENOMEM: case EINVAL: case ENOSPC: case EOVERFLOW: case ENOTSUP: case ESHUTDOWN:
    case EDQUOT: case EFBIG:
      return err;
    case EMFILE: case ENFILE: case EAGAIN: return ENOMEM;
    default: return EIO;
  }
}

Status Server::Create(const Config& config, const std::string& program, Log debug,
                      std::unique_ptr<Server>* out) {
  TuneMallocForBlockBuffers();
  std::unique_ptr<Server> server(new Server(config, std::move(debug)));
  S3B_RETURN_IF_ERROR(MakeStoreStack(config, &server->stack_));
  S3B_RETURN_IF_ERROR(server->stack_.store->Check());
  // Reading the default export's metadata makes the codec layer check the key of an encrypted
  // export now, while a refusal still reaches the terminal, not at the first client.
  std::string text;
  bool found = false;
  S3B_RETURN_IF_ERROR(server->stack_.store->ReadMeta(config.default_export, &text, &found));
  // The file is written in the background, where a failure would go unseen: check it now.
  if (!config.stats_file.empty()) S3B_RETURN_IF_ERROR(StatsReporter::CheckStatsFile(config.stats_file));

  VolumeRegistryOptions ro;
  ro.max_exports = static_cast<uint32_t>(config.max_exports);
  ro.idle_timeout = config.idle_timeout;
  ro.volume = VolumeOptionsFor(config, false);
  ro.volume.holder = DescribeThisProcess(program);
  // The lease names the control socket, so the admin command finds the server holding an export.
  if (!config.control.empty())
    ro.volume.holder = HolderWithControlSocket(ro.volume.holder, config.control);
  ro.log = server->debug_;
  server->volumes_ = std::make_unique<VolumeRegistry>(server->stack_, std::move(ro));
  server->stats_ = std::make_unique<StatsReporter>(server->stack_, server->volumes_.get(),
                                                   config.stats_file, server->debug_);
  // Last: nothing may fail after the socket is made, which would leave it behind.
  if (!config.control.empty()) {
    ControlServerOptions co;
    co.log = server->debug_;
    Server* self = server.get();
    S3B_RETURN_IF_ERROR(ControlServer::Create(
        config.control,
        [self](const std::vector<std::string>& args, std::string* output) {
          return self->Control(args, output);
        },
        std::move(co), &server->control_));
  }
  server->debug_("serving " + server->Describe());
  *out = std::move(server);
  return Status::Ok();
}

Server::~Server() {
  // Control commands use the registry; the reporter reads it; it holds the volumes over the
  // store: in that order.
  control_.reset();
  stats_.reset();
  volumes_.reset();
  stack_ = StoreStack();
}

Status Server::Start() {
  S3B_RETURN_IF_ERROR(stack_.store->Start());
  volumes_->Start();
  stats_->Start();
  if (control_) S3B_RETURN_IF_ERROR(control_->Start());
  return Status::Ok();
}

Status Server::Open(const std::string& requested, bool readonly, std::shared_ptr<Volume>* out) {
  const std::string& name = requested.empty() ? config_.default_export : requested;
  if (name.find('@') != std::string::npos) {
    // A snapshot (NAME@SNAP) is served read only, and takes no lease. Such a name that is
    // neither a snapshot nor an existing export cannot be created.
    std::string text;
    bool found = false;
    ExportMeta meta;
    S3B_RETURN_IF_ERROR(stack_.store->ReadMeta(name, &text, &found));
    std::vector<std::string> names;
    // An export of the first version has no metadata, only blocks: it is listed.
    if (!found && stack_.store->ListExports(&names).ok() &&
        std::find(names.begin(), names.end(), name) != names.end())
      found = true;
    if (!found)
      return Status::NotFound("no export or snapshot named '" + QuoteForMessage(name) + "' in " +
                              Describe());
    if (ExportMeta::Parse(name, text, &meta).ok() && !meta.snapshot.empty()) readonly = true;
  }
  return volumes_->Acquire(name, readonly, out);
}

Status Server::Close(const std::shared_ptr<Volume>& volume) {
  bool last = false;
  Status s = volumes_->Release(volume->name(), &last);
  CacheStats stats;
  if (last && stack_.cache && stack_.cache->GetStats(volume->name(), &stats))
    debug_("cache of export '" + QuoteForMessage(volume->name()) + "' at last close: " +
           CacheStatsToString(stats));
  return s;
}

Status Server::CloseAll() {
  // No command may start on an export being closed, and a client finds no socket of a server
  // that is going.
  if (control_) control_->Stop();
  return volumes_->CloseAll();
}

Status Server::ListExports(std::vector<std::string>* names) {
  S3B_RETURN_IF_ERROR(stack_.store->ListExports(names));
  if (config_.create &&
      std::find(names->begin(), names->end(), config_.default_export) == names->end())
    names->push_back(config_.default_export);
  return Status::Ok();
}

Status Server::Control(const std::vector<std::string>& args, std::string* output) {
  output->clear();
  // A new command is a line here and a member that runs it.
  struct Command {
    const char* name;
    size_t min_args, max_args;  // after the name
    const char* usage;          // its arguments, for the message of a wrong count
    Status (Server::*run)(const std::vector<std::string>& args, std::string* output);
  };
  static const Command kCommands[] = {
      {"exports", 0, 0, "", &Server::ControlExports},
      {"snapshot", 2, 2, "NAME SNAP", &Server::ControlSnapshot},
      {"delete-snapshot", 2, 2, "NAME SNAP", &Server::ControlDeleteSnapshot},
      {"add-clone", 3, 3, "NAME SNAP CLONE", &Server::ControlAddClone},
  };
  if (args.empty()) return Status::InvalidArgument("no control command given");
  for (const Command& c : kCommands) {
    if (args[0] != c.name) continue;
    const size_t n = args.size() - 1;
    if (n < c.min_args || n > c.max_args)
      return Status::InvalidArgument("control command '" + args[0] + "' takes " +
                                     (c.max_args == 0 ? std::string("no arguments")
                                                      : std::string("the arguments ") + c.usage) +
                                     ", not " + std::to_string(n));
    return (this->*c.run)(std::vector<std::string>(args.begin() + 1, args.end()), output);
  }
  return Status::InvalidArgument("unknown control command '" + QuoteForMessage(args[0]) + "'");
}

Status Server::WithLogExport(const std::string& name,
                             const std::function<Status(const std::shared_ptr<Volume>&)>& fn) {
  S3B_RETURN_IF_ERROR(ValidateExportName(name));
  // Only an export that exists, and is a log export: Open would create a missing one. One open
  // here is known to be.
  bool open = false;
  if (stack_.layout && stack_.layout->IsOpenLogExport(name))
    for (const VolumeRegistry::ExportState& e : volumes_->Exports())
      open |= e.name == name && e.state == VolumeRegistry::State::kOpen;
  if (!open) {
    std::string text;
    bool found = false;
    ExportMeta meta;
    S3B_RETURN_IF_ERROR(stack_.store->ReadMeta(name, &text, &found));
    if (!found)
      return Status::NotFound("export '" + QuoteForMessage(name) + "' does not exist in " +
                              Describe());
    S3B_RETURN_IF_ERROR(ExportMeta::Parse(name, text, &meta));
    if (meta.layout != ExportLayout::kLog || !stack_.layout)
      return Status::InvalidArgument("export '" + QuoteForMessage(name) +
                                     "' has the blocks layout: snapshots are of log exports only");
    if (!meta.snapshot.empty())
      return Status::InvalidArgument("'" + QuoteForMessage(name) +
                                     "' is a snapshot, not an export");
  }
  std::shared_ptr<Volume> volume;
  S3B_RETURN_IF_ERROR(volumes_->Acquire(name, false, &volume));
  Status s = fn(volume);
  bool last = false;
  Status r = volumes_->Release(name, &last);
  return s.ok() ? r : s;
}

Status Server::ControlSnapshot(const std::vector<std::string>& args, std::string* output) {
  return WithLogExport(args[0], [&](const std::shared_ptr<Volume>& volume) {
    log::SnapshotRecord r;
    bool is_log = false;
    S3B_RETURN_IF_ERROR(stack_.layout->CreateSnapshot(args[0], args[1], volume->size(), &r, &is_log));
    *output = log::EncodeSnapshotRecord(r);
    debug_("took snapshot '" + QuoteForMessage(args[1]) + "' of export '" +
           QuoteForMessage(args[0]) + "' (segment " + std::to_string(r.seq) + ")");
    return Status::Ok();
  });
}

Status Server::ControlDeleteSnapshot(const std::vector<std::string>& args, std::string*) {
  return WithLogExport(args[0], [&](const std::shared_ptr<Volume>&) {
    bool is_log = false;
    return stack_.layout->DeleteSnapshot(args[0], args[1], &is_log);
  });
}

Status Server::ControlAddClone(const std::vector<std::string>& args, std::string*) {
  return WithLogExport(args[0], [&](const std::shared_ptr<Volume>&) {
    bool is_log = false;
    return stack_.layout->AddClone(args[0], args[1], args[2], &is_log);
  });
}

Status Server::ControlExports(const std::vector<std::string>&, std::string* output) {
  // NAME TAB read-only|read-write TAB block-size=N TAB size=N TAB connections=N, or NAME TAB
  // opening|closing: an export name holds no TAB.
  for (const VolumeRegistry::ExportState& e : volumes_->Exports()) {
    *output += e.name + "\t";
    switch (e.state) {
      case VolumeRegistry::State::kOpening: *output += "opening\n"; continue;
      case VolumeRegistry::State::kClosing: *output += "closing\n"; continue;
      case VolumeRegistry::State::kOpen: break;
    }
    *output += std::string(e.readonly ? "read-only" : "read-write") +
               "\tblock-size=" + std::to_string(e.block_size) + "\tsize=" + std::to_string(e.size) +
               "\tconnections=" + std::to_string(e.connections) + "\n";
  }
  return Status::Ok();
}

}  // namespace s3block
