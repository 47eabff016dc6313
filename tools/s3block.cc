// s3block: manage exports without an NBD client. Works on both stores, with the same parameters
// as the nbdkit plugin (--store, --endpoint, --region, credentials found as the plugin finds them).
//
// Exit codes: see exit_status.h.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <functional>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "base/config_params.h"
#include "lib/control_channel.h"
#include "log/snapshot.h"
#include "s3block/admin.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"
#include "exit_status.h"
#include "util/json.h"

namespace s3block {
namespace {

std::atomic<bool> g_cancel{false};

void OnSignal(int) { g_cancel.store(true); }

const char kUsageHead[] =
    "Usage: s3block [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Manage the exports of an nbd-s3-backend store without an NBD client.\n"
    "\n"
    "Commands:\n";

// After the parameters' options, which the parameter table lists (ParamListText).
const char kUsageTail[] =
    "  --threads N                   blocks in flight at once (default 16)\n"
    "  --force                       act even if a server holds the export; shrink; delete\n"
    "  --all                         gc: every segment with a dead byte, whatever its share\n"
    "  --yes                         do not ask before deleting\n"
    "  --json                        machine-readable output (list, info, verify, gc, stats)\n"
    "  --help                        this text; 's3block COMMAND --help' for one command\n"
    "\n"
    "--store may be left out when $S3BLOCK_STORE is set. The secret key comes from\n"
    "AWS_SECRET_ACCESS_KEY or ~/.aws, never the command line. The encoding options apply to the\n"
    "exports that create and import make (others keep their own); --key-file (default:\n"
    "$S3BLOCK_KEY) is needed to read, copy or import an encrypted export.\n"
    "\n"
    "Exit status:\n"
    "  0    success\n"
    "  1    failure (the message says why)\n"
    "  2    bad usage: unknown command or option, malformed value, shrinking without --force\n"
    "  3    verify found damage\n"
    "  4    the export is held by a running server (or the device to write to is in use)\n"
    "  130  interrupted (Ctrl-C or SIGTERM); the store is consistent\n";

const char* StateName(ExportMeta::State s) {
  switch (s) {
    case ExportMeta::State::kReady: return "ready";
    case ExportMeta::State::kIncomplete: return "incomplete";
    case ExportMeta::State::kDeleting: return "deleting";
  }
  return "?";
}

// Progress of a long operation on standard error: a bar with rate and time left on a terminal,
// a plain line every few seconds otherwise.
class Progress {
 public:
  Progress(std::string label, uint64_t bytes_per_item)
      : label_(std::move(label)), bytes_per_item_(bytes_per_item),
        tty_(::isatty(STDERR_FILENO) == 1), start_(Clock::now()), last_line_(start_) {}

  void Update(uint64_t done, uint64_t total) {
    std::lock_guard<std::mutex> lock(mu_);
    auto now = Clock::now();
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? done / secs : 0;
    double mib = rate * bytes_per_item_ / (1024.0 * 1024.0);
    double pct = total ? 100.0 * done / total : 100.0;
    if (tty_) {
      const int width = 30;
      int fill = static_cast<int>(pct / 100 * width);
      std::string bar(fill, '#');
      bar.resize(width, '.');
      char left[32] = "--:--";
      if (rate > 0 && done < total) {
        uint64_t s = static_cast<uint64_t>((total - done) / rate);
        std::snprintf(left, sizeof left, "%" PRIu64 ":%02" PRIu64, s / 60, s % 60);
      }
      std::fprintf(stderr, "\r%s [%s] %5.1f%% %" PRIu64 "/%" PRIu64 " blocks %.1f MiB/s %s left ",
                   label_.c_str(), bar.c_str(), pct, done, total, mib, left);
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    } else if (done == total || now - last_line_ >= std::chrono::seconds(5)) {
      last_line_ = now;
      std::fprintf(stderr, "%s: %" PRIu64 "/%" PRIu64 " blocks (%.0f%%), %.1f MiB/s\n",
                   label_.c_str(), done, total, pct, mib);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::mutex mu_;
  const std::string label_;
  const uint64_t bytes_per_item_;
  const bool tty_;
  const Clock::time_point start_;
  Clock::time_point last_line_;
};

// A command of the table at the end of this file (kCommands): its name, how many arguments it
// takes, whether it works on a store, its help, and the function that runs it.
struct Context;
struct Command {
  const char* name;
  size_t args;
  bool needs_store;
  const char* synopsis;  // "create NAME [--size SIZE] ...": for help and for the usage text
  const char* summary;   // one line, for the usage text
  const char* help;      // for 's3block COMMAND --help', after the synopsis
  int (*run)(Context& c);
};
const Command* FindCommand(const std::string& name);
void PrintUsage();

struct Args {
  std::string command;
  std::vector<std::string> positional;
  Config config;
  bool store_given = false;
  bool json = false, force = false, yes = false, help = false, all = false;
  int threads = 16;
  std::string size, block_size;
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "s3block: %s\nTry 's3block --help'.\n", message.c_str());
  return kExitUsage;
}

// Runs a control command in the server holding export `name`: the one its lease names, through
// the control socket the lease records (the plugin's control=).
Status AskServer(BlockStore& store, std::string_view name, const std::vector<std::string>& args,
                 std::string* output, bool* asked) {
  *asked = false;
  std::string holder, path;
  // No lease to read (a store that cannot lock), or none held: the command claims the export.
  if (!store.QueryLease(name, &holder).ok() || holder.empty()) return Status::Ok();
  *asked = true;
  if (!ControlSocketOfHolder(holder, &path))
    return Status::Busy("export '" + QuoteForMessage(name) + "' is in use by " + holder +
                        ", which has no control socket: start it with control=PATH, or stop it");
  // A snapshot waits for the segments already sealed to be stored: allow for a slow store.
  Status s = ControlCall(path, args, output, 120);
  // No server answers there (it died; its lease may have lapsed): the command claims the export,
  // which says who holds it if someone still does. (A server's own NotFound is found again so.)
  if (s.IsNotFound()) {
    *asked = false;
    return Status::Ok();
  }
  return s.Annotate("the server holding export '" + QuoteForMessage(name) + "'");
}

// An S3 store is checked only when a command fails (a check first would cost every command a
// request), so that an unreachable server, a missing bucket or refused keys are reported as such
// rather than as the request that met them. (A directory is checked first: that makes it.)
BlockStore* g_store = nullptr;

int Report(const Status& s) {
  Status why = s;
  if (g_store) {
    Status store = g_store->Check();
    if (!store.ok()) why = store;
  }
  std::fprintf(stderr, "s3block: %s\n", why.message().c_str());
  return ExitStatusFor(why.kind());
}

// Parses the command line; returns -1 to go on, or an exit code.
// A store directory as an absolute path (the lease and messages name it); s3:// as it is.
std::string AbsoluteStore(std::string value) {
  if (value.rfind("s3://", 0) == 0) return value;
  if (char* abs = ::realpath(value.c_str(), nullptr)) {
    value = abs;
    std::free(abs);
  } else if (value[0] != '/') {
    value = std::string(::getenv("PWD") ? ::getenv("PWD") : ".") + "/" + value;
  }
  return value;
}

int ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      if (a->command.empty()) a->command = arg;
      else a->positional.push_back(arg);
      continue;
    }
    std::string key = arg.substr(2), value;
    bool has_value = false;
    if (size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key.resize(eq);
      has_value = true;
    }
    auto take = [&]() -> bool {
      if (has_value) return true;
      if (i + 1 >= argc) return false;
      value = argv[++i];
      return true;
    };
    if (key == "help") { a->help = true; continue; }
    if (key == "json") { a->json = true; continue; }
    if (key == "force") { a->force = true; continue; }
    if (key == "yes") { a->yes = true; continue; }
    if (key == "all") { a->all = true; continue; }
    if (key == "threads") {
      if (!take()) return Usage("--threads needs a value");
      uint64_t n = 0;
      Status s = ParseCount("--threads", value, 1, 1024, &n);
      if (!s.ok()) return Usage(s.message());
      a->threads = static_cast<int>(n);
      continue;
    }
    if (key == "size") { if (!take()) return Usage("--size needs a value"); a->size = value; continue; }
    if (key == "block-size") { if (!take()) return Usage("--block-size needs a value"); a->block_size = value; continue; }
    if (key == "secret-key")
      return Usage("--secret-key is not accepted on the command line (it would show in ps); "
                   "set AWS_SECRET_ACCESS_KEY or use ~/.aws/credentials");
    const ConfigParam* param = FindConfigParam(key);
    if (param == nullptr || !param->admin || key != param->name)
      return Usage("unknown option --" + key);
    if (!take()) return Usage("--" + key + " needs a value");
    if (key == "store") {
      a->store_given = true;
      value = AbsoluteStore(value);
    }
    Status s = a->config.Set(key, value);
    if (!s.ok()) return Usage(s.message());
  }
  const Command* command = FindCommand(a->command);
  if (a->help) {
    if (command != nullptr)
      std::printf("s3block %s\n%s", command->synopsis, command->help);
    else
      PrintUsage();
    return kExitOk;
  }
  if (a->command.empty()) return Usage("no command given");
  if (command == nullptr) return Usage("unknown command '" + a->command + "'");
  if (command->needs_store && !a->store_given) {
    const char* env = ::getenv("S3BLOCK_STORE");
    if (env == nullptr || *env == '\0') return Usage("--store is required (or set S3BLOCK_STORE)");
    Status s = a->config.Set("store", AbsoluteStore(env));
    if (!s.ok()) return Usage(s.message());
  }
  return -1;
}

// The layout of an export as list and info show it: blocks without metadata are the first
// version's, which is the blocks layout; damaged metadata does not say.
const char* LayoutOf(const ExportInfo& e) {
  if (e.has_meta) return LayoutName(e.meta.layout);
  return e.meta_error.empty() ? LayoutName(ExportLayout::kBlocks) : nullptr;
}

// A log export's segments as a JSON object, or null.
std::string LogJson(const ExportInfo& e) {
  if (!e.has_log) return "null";
  const LogExportInfo& l = e.log;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"segments\": %" PRIu64 ", \"segment_bytes\": %" PRIu64 ", \"live_bytes\": %" PRIu64
                ", \"dead_bytes\": %" PRIu64 ", \"blocks\": %" PRIu64 ", \"last_seq\": %" PRIu64
                ", \"checkpoint_seq\": %" PRIu64 "}",
                l.segments, l.segment_bytes, l.live_bytes, l.dead_bytes, l.blocks, l.last_seq,
                l.checkpoint_seq);
  return buf;
}

std::string UtcTime(int64_t seconds) {
  const time_t t = static_cast<time_t>(seconds);
  struct tm tm;
  char buf[32];
  if (!gmtime_r(&t, &tm) || !std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm))
    return std::to_string(seconds);
  return buf;
}

std::string SnapshotsJson(const ExportInfo& e) {
  std::string out = "[";
  for (const SnapshotSummary& s : e.snapshots) {
    out += (out.size() > 1 ? ", " : "");
    out += "{\"name\": " + JsonString(s.name) + ", \"seq\": " + std::to_string(s.seq) +
           ", \"size\": " + std::to_string(s.size) + ", \"created\": " +
           std::to_string(s.created) + ", \"unique_bytes\": " + std::to_string(s.unique_bytes) +
           ", \"clones\": [";
    for (size_t i = 0; i < s.clones.size(); ++i) out += (i ? ", " : "") + JsonString(s.clones[i]);
    out += "]}";
  }
  return out + "]";
}

// One line a snapshot, under its export's.
void PrintSnapshotLines(const ExportInfo& e) {
  for (const SnapshotSummary& s : e.snapshots) {
    std::string clones;
    for (const std::string& c : s.clones)
      clones += (clones.empty() ? ", base of " : ", ") + QuoteForMessage(c);
    std::printf("  @%-21s %14s  taken %s, keeps %s alone%s\n", QuoteForMessage(s.name).c_str(),
                std::to_string(s.size).c_str(), UtcTime(s.created).c_str(),
                HumanSize(s.unique_bytes).c_str(), clones.c_str());
  }
}

void PrintInfo(const ExportInfo& e, bool json, bool first) {
  const char* layout = LayoutOf(e);
  if (json) {
    // New fields go at the end: scripts may match the beginning of an object.
    std::printf("%s{\"name\": %s, \"size\": %" PRIu64 ", \"block_size\": %u, \"state\": %s, "
                "\"blocks_stored\": %" PRIu64 ", \"allocated_bytes\": %" PRIu64
                ", \"blocks_past_end\": %" PRIu64 ", \"has_metadata\": %s, \"metadata_error\": %s, "
                "\"lease_holder\": %s, \"layout\": %s, \"log\": %s, \"log_error\": %s, "
                "\"snapshots\": %s, \"base\": %s}",
                first ? "" : ",\n  ", JsonString(e.name).c_str(), e.has_meta ? e.meta.size : 0,
                e.has_meta ? e.meta.block_size : 0,
                JsonString(e.has_meta ? StateName(e.meta.state) : "unknown").c_str(),
                e.blocks_stored, e.allocated_bytes, e.blocks_past_end, e.has_meta ? "true" : "false",
                e.meta_error.empty() ? "null" : JsonString(e.meta_error).c_str(),
                e.lease_holder.empty() ? "null" : JsonString(e.lease_holder).c_str(),
                layout ? JsonString(layout).c_str() : "null", LogJson(e).c_str(),
                e.log_error.empty() ? "null" : JsonString(e.log_error).c_str(),
                SnapshotsJson(e).c_str(),
                e.has_meta && !e.meta.base.empty() ? JsonString(e.meta.base).c_str() : "null");
    return;
  }
  std::printf("%-24s %14s %10s %12" PRIu64 " %14s %-6s %s\n", QuoteForMessage(e.name).c_str(),
              e.has_meta ? std::to_string(e.meta.size).c_str() : "?",
              e.has_meta ? std::to_string(e.meta.block_size).c_str() : "?", e.blocks_stored,
              std::to_string(e.allocated_bytes).c_str(), layout ? layout : "?",
              !e.meta_error.empty() ? "damaged metadata"
              : !e.has_meta        ? "no metadata"
              : !e.log_error.empty() ? "damaged log"
                                   : StateName(e.meta.state));
  PrintSnapshotLines(e);
}

int RunStats(const Args& a) {
  std::ifstream f(a.positional[0]);
  if (!f) {
    std::fprintf(stderr, "s3block: cannot read %s: %s (is the server running with stats-file=?)\n",
                 a.positional[0].c_str(), std::strerror(errno));
    return kExitFail;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  // The file is written as JSON by the plugin; plain output turns it into key: value lines.
  if (a.json) {
    std::fputs(text.c_str(), stdout);
    if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
    return kExitOk;
  }
  // Plain output: one "export key value" line per counter, from the document's nesting.
  auto print = [](const std::vector<std::string>& keys, std::string_view value) {
    std::string line;
    for (size_t k = 0; k < keys.size(); ++k) {
      if (k == 0 && keys[k] == "exports" && keys.size() > 1) continue;
      line += QuoteForMessage(keys[k]) + " ";
    }
    std::printf("%s%.*s\n", line.c_str(), static_cast<int>(value.size()), value.data());
  };
  if (!ForEachJsonLeaf(text, print)) {
    std::fprintf(stderr, "s3block: %s is not a stats document\n", a.positional[0].c_str());
    return kExitFail;
  }
  return kExitOk;
}

// What a command works with: the parsed command line and, for a command on a store, the store
// and the options of the library's admin operations.
struct Context {
  const Args& a;
  BlockStore* store = nullptr;
  AdminOptions* options = nullptr;  // options->layouts: the store's log exports' operations
  uint32_t block_size = kDefaultBlockSize;  // --block-size, or the default
  uint64_t size = kDefaultExportSize;       // --size, or the default
  const std::string& name(size_t i) const { return a.positional[i]; }
  // Progress of the operation on standard error, counting items of bytes_per_item bytes.
  void ShowProgress(const std::string& label, uint64_t bytes_per_item) {
    auto p = std::make_shared<Progress>(label, bytes_per_item);
    options->progress = [p](uint64_t done, uint64_t total) { p->Update(done, total); };
  }
  // The same for an operation over the blocks of export NAME, if its block size can be read.
  void ShowProgressOver(const std::string& label, const std::string& export_name) {
    ExportInfo e;
    if (GetExportInfo(*store, export_name, &e).ok() && e.has_meta)
      ShowProgress(label, e.meta.block_size);
  }
};

int CmdStats(Context& c) { return RunStats(c.a); }

int CmdList(Context& c) {
  std::vector<ExportInfo> all;
  Status s = ListExportInfo(*c.store, &all, c.options->layouts);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    std::printf("[");
    for (size_t i = 0; i < all.size(); ++i) PrintInfo(all[i], true, i == 0);
    std::printf("]\n");
  } else {
    std::printf("%-24s %14s %10s %12s %14s %-6s %s\n", "NAME", "SIZE", "BLOCK-SIZE", "BLOCKS",
                "ALLOCATED", "LAYOUT", "STATE");
    for (const auto& e : all) PrintInfo(e, false, false);
  }
  return kExitOk;
}

int CmdInfo(Context& c) {
  ExportInfo e;
  Status s = GetExportInfo(*c.store, c.name(0), &e, c.options->layouts);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    PrintInfo(e, true, true);
    std::printf("\n");
    return kExitOk;
  }
  std::printf("name:            %s\n", QuoteForMessage(e.name).c_str());
  std::printf("store:           %s\n", c.store->Describe().c_str());
  if (e.has_meta) {
    std::printf("size:            %s\n", HumanSize(e.meta.size).c_str());
    std::printf("block size:      %s\n", HumanSize(e.meta.block_size).c_str());
    std::printf("state:           %s\n", StateName(e.meta.state));
    std::printf("encoding:        %s\n", e.meta.encoding.Describe().c_str());
    std::printf("layout:          %s\n", LayoutName(e.meta.layout));
    if (!e.meta.base.empty())
      std::printf("clone of:        %s (reads what it has not written from there)\n",
                  QuoteForMessage(e.meta.base).c_str());
  } else {
    std::printf("metadata:        %s\n", e.meta_error.empty() ? "none (blocks only)" : e.meta_error.c_str());
  }
  std::printf("blocks stored:   %" PRIu64 "\n", e.blocks_stored);
  std::printf("allocated:       %s (blocks stored x block size)\n", HumanSize(e.allocated_bytes).c_str());
  if (e.blocks_past_end) std::printf("past the end:    %" PRIu64 " blocks\n", e.blocks_past_end);
  if (e.has_log) {
    // What the segments hold: dead bytes are what the collector (gc) can give back.
    const LogExportInfo& l = e.log;
    std::printf("segments:        %" PRIu64 "\n", l.segments);
    std::printf("segment bytes:   %s\n", HumanSize(l.segment_bytes).c_str());
    std::printf("live bytes:      %s\n", HumanSize(l.live_bytes).c_str());
    std::printf("dead bytes:      %s (segment bytes - live bytes)\n", HumanSize(l.dead_bytes).c_str());
    std::printf("blocks mapped:   %" PRIu64 "\n", l.blocks);
    std::printf("last seq:        %" PRIu64 "\n", l.last_seq);
    std::printf("checkpoint seq:  %" PRIu64 "%s\n", l.checkpoint_seq,
                l.checkpoint_seq == 0 ? " (none)" : "");
  }
  if (!e.log_error.empty()) std::printf("log:             %s\n", e.log_error.c_str());
  if (e.has_log) {
    std::printf("snapshots:       %zu\n", e.snapshots.size());
    PrintSnapshotLines(e);
  }
  std::printf("served by:       %s\n", e.lease_holder.empty() ? "nobody" : e.lease_holder.c_str());
  if (!e.key_error.empty()) std::printf("key:             %s\n", e.key_error.c_str());
  return kExitOk;
}

int CmdCreate(Context& c) {
  Status s = CreateExport(*c.store, c.name(0), c.size, c.block_size, *c.options);
  if (!s.ok()) return Report(s);
  std::printf("created export '%s': size %s, block size %s%s\n", QuoteForMessage(c.name(0)).c_str(),
              HumanSize(c.size).c_str(), HumanSize(c.block_size).c_str(),
              c.options->layout == ExportLayout::kLog ? ", layout log" : "");
  return kExitOk;
}

int CmdResize(Context& c) {
  uint64_t size = 0;
  Status s = ParseSize("SIZE", c.name(1), &size);
  if (s.ok()) s = ValidateExportSize("SIZE", size);  // out of range: a malformed value too
  if (!s.ok()) return Usage(s.message());
  c.ShowProgress("resize", 0);
  s = ResizeExport(*c.store, c.name(0), size, c.a.force, *c.options);
  if (!s.ok()) return Report(s);
  std::printf("export '%s' is now %s\n", QuoteForMessage(c.name(0)).c_str(), HumanSize(size).c_str());
  return kExitOk;
}

int CmdDelete(Context& c) {
  const std::string& name = c.name(0);
  std::string of, snapshot;
  const bool is_snapshot = IsSnapshot(*c.store, name, &of, &snapshot);
  if (!c.a.yes && !c.a.force) {
    if (::isatty(STDIN_FILENO) != 1) return Usage("delete needs --yes when not run on a terminal");
    if (is_snapshot)
      std::fprintf(stderr, "This deletes snapshot '%s' of export '%s' in %s.\nType its name (%s) "
                   "to confirm: ", QuoteForMessage(snapshot).c_str(), QuoteForMessage(of).c_str(),
                   c.store->Describe().c_str(), QuoteForMessage(name).c_str());
    else
      std::fprintf(stderr, "This deletes export '%s' and all its blocks in %s.\nType its name to confirm: ",
                   QuoteForMessage(name).c_str(), c.store->Describe().c_str());
    std::string typed;
    if (!std::getline(std::cin, typed) || typed != name) {
      std::fprintf(stderr, "s3block: not confirmed; nothing deleted\n");
      return kExitFail;
    }
  }
  if (is_snapshot) {
    Status s = DeleteSnapshot(*c.store, of, snapshot, *c.options);
    if (!s.ok()) return Report(s);
    std::printf("deleted snapshot '%s' of export '%s'\n", QuoteForMessage(snapshot).c_str(),
                QuoteForMessage(of).c_str());
    return kExitOk;
  }
  c.ShowProgress("delete", 0);
  Status s = DeleteExport(*c.store, name, *c.options);
  if (!s.ok()) return Report(s);
  std::printf("deleted export '%s'\n", QuoteForMessage(name).c_str());
  return kExitOk;
}

int CmdClone(Context& c) {
  std::string of, snapshot;
  // Split only: CloneExport reads the snapshot.
  if (!log::SplitSnapshotName(c.name(0), &of, &snapshot))
    return Report(Status::NotFound("no snapshot '" + QuoteForMessage(c.name(0)) + "' in " +
                                   c.store->Describe() + " (give NAME@SNAP)"));
  Status s = CloneExport(*c.store, of, snapshot, c.name(1), *c.options);
  if (!s.ok()) return Report(s);
  std::printf("made export '%s' from snapshot '%s' of '%s': it reads its base until written\n",
              QuoteForMessage(c.name(1)).c_str(), QuoteForMessage(snapshot).c_str(),
              QuoteForMessage(of).c_str());
  return kExitOk;
}

int CmdRollback(Context& c) {
  std::string of, snapshot;
  if (!log::SplitSnapshotName(c.name(0), &of, &snapshot))
    return Report(Status::NotFound("no snapshot '" + QuoteForMessage(c.name(0)) + "' in " +
                                   c.store->Describe() + " (give NAME@SNAP)"));
  Status s = RollbackExport(*c.store, of, snapshot, *c.options);
  if (!s.ok()) return Report(s);
  std::printf("export '%s' is snapshot '%s' again\n", QuoteForMessage(of).c_str(),
              QuoteForMessage(snapshot).c_str());
  return kExitOk;
}

int CmdFlatten(Context& c) {
  c.ShowProgress("flatten", 0);
  Status s = FlattenExport(*c.store, c.name(0), *c.options);
  if (!s.ok()) return Report(s);
  std::printf("export '%s' no longer reads from its base\n", QuoteForMessage(c.name(0)).c_str());
  return kExitOk;
}

int CmdSnapshot(Context& c) {
  SnapshotSummary r;
  Status s = SnapshotExport(*c.store, c.name(0), c.name(1), *c.options, &r);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    std::printf("{\"name\": %s, \"snapshot\": %s, \"seq\": %" PRIu64 ", \"size\": %" PRIu64
                ", \"created\": %" PRId64 "}\n", JsonString(c.name(0)).c_str(),
                JsonString(r.name).c_str(), r.seq, r.size, r.created);
    return kExitOk;
  }
  std::printf("took snapshot '%s' of export '%s': served read only as '%s@%s'\n",
              QuoteForMessage(r.name).c_str(), QuoteForMessage(c.name(0)).c_str(),
              QuoteForMessage(c.name(0)).c_str(), QuoteForMessage(r.name).c_str());
  return kExitOk;
}

int CmdCopy(Context& c) {
  c.ShowProgressOver("copy", c.name(0));
  Status s = CopyExport(*c.store, c.name(0), c.name(1), *c.options);
  if (!s.ok()) return Report(s);
  std::printf("copied export '%s' to '%s'\n", QuoteForMessage(c.name(0)).c_str(),
              QuoteForMessage(c.name(1)).c_str());
  return kExitOk;
}

int CmdImport(Context& c) {
  c.ShowProgress("import", c.block_size);
  Status s = ImportImage(*c.store, c.name(0), c.name(1), c.block_size, *c.options);
  if (!s.ok()) return Report(s);
  std::printf("imported %s into export '%s'\n", c.name(1).c_str(), QuoteForMessage(c.name(0)).c_str());
  return kExitOk;
}

int CmdExport(Context& c) {
  c.ShowProgressOver("export", c.name(0));
  Status s = ExportImage(*c.store, c.name(0), c.name(1), *c.options);
  if (!s.ok()) return Report(s);
  std::printf("exported '%s' to %s\n", QuoteForMessage(c.name(0)).c_str(), c.name(1).c_str());
  return kExitOk;
}

int CmdVerify(Context& c) {
  c.ShowProgressOver("verify", c.name(0));
  VerifyReport report;
  Status s = VerifyExport(*c.store, c.name(0), *c.options, &report);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    std::printf("{\"name\": %s, \"blocks_checked\": %" PRIu64 ", \"problems\": [",
                JsonString(c.name(0)).c_str(), report.blocks_checked);
    for (size_t i = 0; i < report.problems.size(); ++i)
      std::printf("%s%s", i ? ", " : "", JsonString(report.problems[i]).c_str());
    std::printf("], \"segments_checked\": %" PRIu64 "}\n", report.segments_checked);
  } else {
    for (const auto& p : report.problems) std::printf("DAMAGED: %s\n", p.c_str());
    std::string segments;
    if (report.segments_checked)
      segments = ", " + std::to_string(report.segments_checked) + " segment" +
                 (report.segments_checked == 1 ? "" : "s") + " checked";
    std::printf("%" PRIu64 " block%s checked%s, %zu problem%s\n", report.blocks_checked,
                report.blocks_checked == 1 ? "" : "s", segments.c_str(), report.problems.size(),
                report.problems.size() == 1 ? "" : "s");
  }
  return report.problems.empty() ? kExitOk : kExitDamage;
}

int CmdGc(Context& c) {
  GcReport r;
  Status s = CollectExportGarbage(*c.store, c.name(0), c.a.all, *c.options, &r);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    std::printf("{\"name\": %s, \"segments_freed\": %" PRIu64 ", \"bytes_freed\": %" PRIu64
                ", \"bytes_copied\": %" PRIu64 "}\n",
                JsonString(c.name(0)).c_str(), r.segments_freed, r.bytes_freed, r.bytes_copied);
    return kExitOk;
  }
  std::printf("collected export '%s': %" PRIu64 " segment%s freed (%s), %s of live blocks copied\n",
              QuoteForMessage(c.name(0)).c_str(), r.segments_freed,
              r.segments_freed == 1 ? "" : "s", HumanSize(r.bytes_freed).c_str(),
              HumanSize(r.bytes_copied).c_str());
  return kExitOk;
}

int CmdRepair(Context& c) {
  RepairReport r;
  Status s = RepairExport(*c.store, c.name(0), *c.options, &r);
  if (!s.ok()) return Report(s);
  if (c.a.json) {
    std::printf("{\"name\": %s, \"first_damaged\": %" PRIu64 ", \"segments\": %" PRIu64
                ", \"bytes\": %" PRIu64 "}\n",
                JsonString(c.name(0)).c_str(), r.first_damaged, r.segments, r.bytes);
    return kExitOk;
  }
  if (r.first_damaged == 0) {
    std::printf("export '%s' has no damaged segment: nothing to repair\n",
                QuoteForMessage(c.name(0)).c_str());
    return kExitOk;
  }
  std::printf("export '%s' is written again from segment %" PRIu64 ": segment %" PRIu64
              " (damaged) and %" PRIu64 " after it (%s) set aside under exports/%s/damaged/\n",
              QuoteForMessage(c.name(0)).c_str(), r.first_damaged - 1, r.first_damaged,
              r.segments > 0 ? r.segments - 1 : 0, HumanSize(r.bytes).c_str(),
              QuoteForMessage(c.name(0)).c_str());
  return kExitOk;
}

const Command kCommands[] = {
    {"create", 1, true, "create NAME [--size SIZE] [--block-size SIZE] [--layout blocks|log]",
     "create an empty export (default 1G, 4096)",
     "Creates an empty export of SIZE bytes (default 1G) with blocks of SIZE (default 4096).\n"
     "--layout log makes it log-structured (blocks appended to segments; at most 1M blocks).\n",
     CmdCreate},
    {"list", 0, true, "list [--json]",
     "every export: size, block size, blocks stored, bytes allocated",
     "Lists every export: name, size, block size, blocks stored, bytes allocated (blocks stored\n"
     "x block size, not the space they take in the store), layout, state.\n",
     CmdList},
    {"info", 1, true, "info NAME [--json]", "one export, and the server holding it if it is served",
     "Shows one export, and the server that holds it if it is being served. For a log export,\n"
     "also its segments: how many, their bytes, the live and dead bytes in them, the blocks\n"
     "mapped, the last segment's number and the newest checkpoint's.\n",
     CmdInfo},
    {"resize", 2, true, "resize NAME SIZE [--force]",
     "grow (instant) or, with --force, shrink an export",
     "Grows an export at once. Shrinking deletes the blocks past the new end and needs --force.\n",
     CmdResize},
    {"delete", 1, true, "delete NAME[@SNAP] [--force | --yes]",
     "delete an export and all its blocks, or a snapshot",
     "Deletes an export and all its blocks. Asks for the name on a terminal unless --yes;\n"
     "elsewhere needs --yes. An interrupted delete leaves the export marked as being deleted\n"
     "(it is not served); run the command again to finish. An export with snapshots is\n"
     "refused: NAME@SNAP deletes snapshot SNAP, and then what only it kept.\n",
     CmdDelete},
    {"copy", 2, true, "copy SRC DST [--layout blocks|log]",
     "copy an export to a new one (server-side on S3)",
     "Copies export SRC to a new export DST: server-side copies on S3, reflinks or in-kernel\n"
     "copies locally, in parallel. An interrupted copy leaves DST marked incomplete. DST has\n"
     "SRC's layout unless --layout says otherwise: a copy converts an export to the other.\n",
     CmdCopy},
    {"import", 2, true, "import NAME FILE [--block-size SIZE] [--layout blocks|log]",
     "create an export from a raw disk image (sparse-aware)",
     "Creates export NAME from the raw image FILE (its size is the export's size). Holes\n"
     "and runs of zeros are not stored. An interrupted import leaves NAME marked incomplete.\n",
     CmdImport},
    {"export", 2, true, "export NAME FILE", "write an export to a raw image file (sparse)",
     "Writes export NAME to the raw image FILE; blocks that are not stored become holes\n"
     "(zeros on a block device). Refused while a server holds the export.\n",
     CmdExport},
    {"verify", 1, true, "verify NAME [--json]", "read every stored block and check it",
     "Reads every stored block and checks it can be read and has the right length (and,\n"
     "on S3, that its content matches the checksum the server stored); for a log export also\n"
     "every segment's frames against their checksums and the map against the segments.\n"
     "Exit status 3 if anything is damaged. Refused while a server holds the export.\n",
     CmdVerify},
    {"gc", 1, true, "gc NAME [--all] [--json]", "collect a log export's garbage now",
     "Runs one pass of a log export's garbage collector: the live blocks of segments less\n"
     "live than --gc-threshold (default 50%; with --all, of every segment with a dead byte)\n"
     "are rewritten, and those segments deleted. Prints the segments freed, their bytes and\n"
     "the bytes copied. Refused while a server holds the export (whose collector runs anyway).\n",
     CmdGc},
    {"repair", 1, true, "repair NAME [--json]",
     "set aside a log export's damaged segment, and the later ones",
     "A log export whose run of segments ends at a damaged one (which 's3block verify' names)\n"
     "is served read only, as of the segment before it. repair moves that segment and every\n"
     "later one to exports/NAME/damaged/, where nothing reads them (they may hold acknowledged\n"
     "writes, kept for recovery by hand), and the export is written again from there. Refused\n"
     "while a server holds the export. Does nothing to a sound export.\n",
     CmdRepair},
    {"clone", 2, true, "clone NAME@SNAP NEW",
     "make a writable export from a snapshot, sharing its blocks",
     "Makes log export NEW from snapshot SNAP of export NAME: same size, content and encoding,\n"
     "nothing copied. NEW reads every block it has not written from the snapshot, which cannot\n"
     "be deleted while NEW is based on it ('s3block flatten NEW' ends that).\n",
     CmdClone},
    {"rollback", 1, true, "rollback NAME@SNAP",
     "make a log export's content a snapshot's again (server stopped)",
     "Makes export NAME's content (and size) snapshot SNAP's again, at the cost of a few\n"
     "requests; what NAME held since is freed by the collector unless other snapshots keep\n"
     "it. The snapshot stays. Refused while a server holds NAME: stop it first.\n",
     CmdRollback},
    {"flatten", 1, true, "flatten NAME",
     "copy what a clone still reads from its snapshot into the clone",
     "Copies the blocks clone NAME still reads from its base snapshot into its own segments,\n"
     "then drops the base: the snapshot may then be deleted. Refused while a server holds\n"
     "NAME, and while NAME has snapshots taken before (delete them first).\n",
     CmdFlatten},
    {"snapshot", 2, true, "snapshot NAME SNAP [--json]",
     "take a snapshot of a log export, served read only as NAME@SNAP",
     "Takes snapshot SNAP of log export NAME: the export as stored now (every write a flush\n"
     "acknowledged, none made later), kept whatever is written or collected afterwards, and\n"
     "served read only as NAME@SNAP. Costs a few requests, whatever the export's size.\n"
     "Delete it with 's3block delete NAME@SNAP'.\n",
     CmdSnapshot},
    {"stats", 1, false, "stats STATS-FILE [--json]",
     "a running server's counters (the plugin's stats-file=)",
     "Prints the counters a running server writes to the file given as its stats-file=.\n",
     CmdStats},
};

const Command* FindCommand(const std::string& name) {
  for (const Command& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

void PrintUsage() {
  std::fputs(kUsageHead, stdout);
  for (const Command& c : kCommands) {
    // The synopsis without its output options, and the summary beside it or below it.
    std::string synopsis = c.synopsis;
    if (size_t json = synopsis.find(" [--json]"); json != std::string::npos) synopsis.erase(json);
    if (synopsis.size() <= 28)
      std::printf("  %-28s  %s\n", synopsis.c_str(), c.summary);
    else
      std::printf("  %s\n  %-28s  %s\n", synopsis.c_str(), "", c.summary);
  }
  std::printf("\nOptions:\n%s", ParamListText(ParamSyntax::kAdmin, "  ", 32).c_str());
  std::fputs(kUsageTail, stdout);
}

int Run(int argc, char** argv) {
  Args a;
  int rc = ParseArgs(argc, argv, &a);
  if (rc >= 0) return rc;
  const Command& command = *FindCommand(a.command);  // ParseArgs refused any other
  if (a.positional.size() != command.args)
    return Usage(a.command + " takes " + std::to_string(command.args) + " argument" +
                 (command.args == 1 ? "" : "s") + " (see 's3block " + a.command + " --help')");
  Context c{a};
  if (!command.needs_store) return command.run(c);

  Status s = a.config.Finish();
  if (!s.ok()) return Usage(s.message());
  if (!a.block_size.empty() && !(s = ParseBlockSize("--block-size", a.block_size, &c.block_size)).ok())
    return Usage(s.message());
  if (!a.size.empty() && !(s = ParseSize("--size", a.size, &c.size)).ok()) return Usage(s.message());
  // The secret never comes from the command line: with --access-key, take it from the
  // environment as the plugin's credential chain would.
  if (!a.config.access_key.empty() && a.config.secret_key.empty()) {
    if (const char* env = ::getenv("AWS_SECRET_ACCESS_KEY")) a.config.secret_key = env;
  }
  std::shared_ptr<BlockStore> store;
  std::shared_ptr<log::LayoutStore> layouts;
  s = MakeCodedStore(a.config, &store, &layouts);
  if (s.ok() && !(a.config.is_s3() && a.config.disk_cache_dir.empty())) s = store->Check();
  if (!s.ok()) return Report(s);
  if (a.config.is_s3()) g_store = store.get();

  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  AdminOptions options;
  options.threads = a.threads;
  options.force = a.force;
  options.cancel = &g_cancel;
  options.holder = "s3block " + a.command;
  options.encoding = a.config.encoding;
  options.layout = a.config.layout;
  options.layout_given = a.config.layout_given;
  options.layouts = layouts.get();
  options.warn = [](const std::string& w) { std::fprintf(stderr, "s3block: warning: %s\n", w.c_str()); };
  BlockStore* store_for_server = store.get();
  options.ask_server = [store_for_server](std::string_view name, const std::vector<std::string>& args,
                                          std::string* output, bool* asked) {
    return AskServer(*store_for_server, name, args, output, asked);
  };
  c.store = store.get();
  c.options = &options;
  return command.run(c);
}

}  // namespace
}  // namespace s3block

int main(int argc, char** argv) {
  try {
    return s3block::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "s3block: internal error: %s\n", e.what());
    return 1;
  }
}
