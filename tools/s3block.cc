// s3block: manage exports without an NBD client. Works on both stores, with the same parameters
// as the nbdkit plugin (--store, --endpoint, --region, credentials found as the plugin finds them).
//
// Exit codes: 0 success; 1 failure; 2 bad usage; 3 verify found damage; 4 the export is held by
// a running server; 130 interrupted (the store is left consistent).
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

#include "s3block/admin.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"
#include "util/json.h"

namespace s3block {
namespace {

constexpr int kExitOk = 0, kExitFail = 1, kExitUsage = 2, kExitDamage = 3, kExitBusy = 4,
              kExitInterrupted = 130;

std::atomic<bool> g_cancel{false};

void OnSignal(int) { g_cancel.store(true); }

const char kUsage[] =
    "Usage: s3block [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Manage the exports of an nbd-s3-backend store without an NBD client.\n"
    "\n"
    "Commands:\n"
    "  create NAME [--size SIZE] [--block-size SIZE]  create an empty export (default 1G, 4096)\n"
    "  list                          every export: size, block size, blocks stored, bytes allocated\n"
    "  info NAME                     one export, and the server holding it if it is served\n"
    "  resize NAME SIZE [--force]    grow (instant) or, with --force, shrink an export\n"
    "  delete NAME [--yes]           delete an export and all its blocks\n"
    "  copy SRC DST                  copy an export to a new one (server-side on S3)\n"
    "  import NAME FILE [--block-size SIZE]\n"
    "                                create an export from a raw disk image (sparse-aware)\n"
    "  export NAME FILE              write an export to a raw image file (sparse)\n"
    "  verify NAME                   read every stored block and check it\n"
    "  stats STATS-FILE              a running server's counters (the plugin's stats-file=)\n"
    "\n"
    "Options:\n"
    "  --store DIR|s3://BUCKET[/PREFIX]   the store (default: $S3BLOCK_STORE)\n"
    "  --endpoint URL, --region R, --path-style BOOL, --ca-file FILE, --access-key ID,\n"
    "  --session-token T, --profile P, --retry-timeout S, --request-timeout S, --connections N\n"
    "                                as the plugin's parameters of the same names; the secret key\n"
    "                                comes from AWS_SECRET_ACCESS_KEY or ~/.aws, never the command line\n"
    "  --compression none|zstd[:LEVEL], --encryption none|aes-256-gcm, --checksum none|crc32c\n"
    "                                the block encoding of exports that create and import make\n"
    "                                (others keep their own)\n"
    "  --key-file FILE               the encryption key (default: $S3BLOCK_KEY), needed to read,\n"
    "                                copy or import an encrypted export\n"
    "  --threads N                   blocks in flight at once (default 16)\n"
    "  --force                       act even if a server holds the export; shrink; delete\n"
    "  --yes                         do not ask before deleting\n"
    "  --json                        machine-readable output (list, info, verify, stats)\n"
    "  --help                        this text; 's3block COMMAND --help' for one command\n"
    "\n"
    "Exit status: 0 success, 1 failure, 2 bad usage, 3 verify found damage,\n"
    "4 the export is held by a running server, 130 interrupted.\n";

const std::map<std::string, std::string> kCommandHelp = {
    {"create", "s3block create NAME [--size SIZE] [--block-size SIZE]\n"
               "Creates an empty export of SIZE bytes (default 1G) with blocks of SIZE (default 4096).\n"},
    {"list", "s3block list [--json]\n"
             "Lists every export: name, size, block size, blocks stored, bytes allocated (blocks stored\n"
             "x block size, not the space they take in the store), state.\n"},
    {"info", "s3block info NAME [--json]\n"
             "Shows one export, and the server that holds it if it is being served.\n"},
    {"resize", "s3block resize NAME SIZE [--force]\n"
               "Grows an export at once. Shrinking deletes the blocks past the new end and needs --force.\n"},
    {"delete", "s3block delete NAME [--force | --yes]\n"
               "Deletes an export and all its blocks. Asks for the name on a terminal unless --yes;\n"
               "elsewhere needs --yes. An interrupted delete leaves the export marked as being deleted\n"
               "(it is not served); run the command again to finish.\n"},
    {"copy", "s3block copy SRC DST\n"
             "Copies export SRC to a new export DST: server-side copies on S3, reflinks or in-kernel\n"
             "copies locally, in parallel. An interrupted copy leaves DST marked incomplete.\n"},
    {"import", "s3block import NAME FILE [--block-size SIZE]\n"
               "Creates export NAME from the raw image FILE (its size is the export's size). Holes\n"
               "and runs of zeros are not stored. An interrupted import leaves NAME marked incomplete.\n"},
    {"export", "s3block export NAME FILE\n"
               "Writes export NAME to the raw image FILE; blocks that are not stored become holes\n"
               "(zeros on a block device). Refused while a server holds the export.\n"},
    {"verify", "s3block verify NAME [--json]\n"
               "Reads every stored block and checks it can be read and has the right length (and,\n"
               "on S3, that its content matches the checksum the server stored). Exit status 3 if\n"
               "anything is damaged. Refused while a server holds the export.\n"},
    {"stats", "s3block stats STATS-FILE [--json]\n"
              "Prints the counters a running server writes to the file given as its stats-file=.\n"},
};

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

struct Args {
  std::string command;
  std::vector<std::string> positional;
  Config config;
  bool store_given = false;
  bool json = false, force = false, yes = false, help = false;
  int threads = 16;
  std::string size, block_size;
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "s3block: %s\nTry 's3block --help'.\n", message.c_str());
  return kExitUsage;
}

int Report(const Status& s) {
  std::fprintf(stderr, "s3block: %s\n", s.message().c_str());
  if (s.err() == ECANCELED) return kExitInterrupted;
  if (s.err() == EBUSY) return kExitBusy;
  return kExitFail;
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
  static const char* kStoreKeys[] = {"store", "endpoint", "region", "path-style", "ca-file",
                                     "access-key", "session-token", "profile", "retry-timeout",
                                     "request-timeout", "connections", "compression",
                                     "encryption", "checksum", "key-file"};
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
    bool known = false;
    for (const char* k : kStoreKeys) known = known || key == k;
    if (!known) return Usage("unknown option --" + key);
    if (!take()) return Usage("--" + key + " needs a value");
    if (key == "store") {
      a->store_given = true;
      value = AbsoluteStore(value);
    }
    Status s = a->config.Set(key, value);
    if (!s.ok()) return Usage(s.message());
  }
  if (a->help) {
    auto it = kCommandHelp.find(a->command);
    std::fputs(it != kCommandHelp.end() ? it->second.c_str() : kUsage, stdout);
    return kExitOk;
  }
  if (a->command.empty()) return Usage("no command given");
  if (!kCommandHelp.count(a->command)) return Usage("unknown command '" + a->command + "'");
  if (a->command != "stats" && !a->store_given) {
    const char* env = ::getenv("S3BLOCK_STORE");
    if (env == nullptr || *env == '\0') return Usage("--store is required (or set S3BLOCK_STORE)");
    Status s = a->config.Set("store", AbsoluteStore(env));
    if (!s.ok()) return Usage(s.message());
  }
  return -1;
}

int NeedArgs(const Args& a, size_t n) {
  if (a.positional.size() != n)
    return Usage(a.command + " takes " + std::to_string(n) + " argument" + (n == 1 ? "" : "s") +
                 " (see 's3block " + a.command + " --help')");
  return -1;
}

void PrintInfo(const ExportInfo& e, bool json, bool first) {
  if (json) {
    std::printf("%s{\"name\": %s, \"size\": %" PRIu64 ", \"block_size\": %u, \"state\": %s, "
                "\"blocks_stored\": %" PRIu64 ", \"allocated_bytes\": %" PRIu64
                ", \"blocks_past_end\": %" PRIu64 ", \"has_metadata\": %s, \"metadata_error\": %s, "
                "\"lease_holder\": %s}",
                first ? "" : ",\n  ", JsonString(e.name).c_str(), e.has_meta ? e.meta.size : 0,
                e.has_meta ? e.meta.block_size : 0,
                JsonString(e.has_meta ? StateName(e.meta.state) : "unknown").c_str(),
                e.blocks_stored, e.allocated_bytes, e.blocks_past_end, e.has_meta ? "true" : "false",
                e.meta_error.empty() ? "null" : JsonString(e.meta_error).c_str(),
                e.lease_holder.empty() ? "null" : JsonString(e.lease_holder).c_str());
    return;
  }
  std::printf("%-24s %14s %10s %12" PRIu64 " %14s %s\n", QuoteForMessage(e.name).c_str(),
              e.has_meta ? std::to_string(e.meta.size).c_str() : "?",
              e.has_meta ? std::to_string(e.meta.block_size).c_str() : "?", e.blocks_stored,
              std::to_string(e.allocated_bytes).c_str(),
              !e.meta_error.empty() ? "damaged metadata"
              : !e.has_meta        ? "no metadata"
                                   : StateName(e.meta.state));
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

int Run(int argc, char** argv) {
  Args a;
  int rc = ParseArgs(argc, argv, &a);
  if (rc >= 0) return rc;
  if (a.command == "stats") {
    if ((rc = NeedArgs(a, 1)) >= 0) return rc;
    return RunStats(a);
  }
  Status s = a.config.Finish();
  if (!s.ok()) return Usage(s.message());
  uint32_t block_size = kDefaultBlockSize;
  if (!a.block_size.empty() && !(s = ParseBlockSize("--block-size", a.block_size, &block_size)).ok())
    return Usage(s.message());
  uint64_t size_arg = kDefaultExportSize;
  if (!a.size.empty() && !(s = ParseSize("--size", a.size, &size_arg)).ok()) return Usage(s.message());
  // The secret never comes from the command line: with --access-key, take it from the
  // environment as the plugin's credential chain would.
  if (!a.config.access_key.empty() && a.config.secret_key.empty()) {
    if (const char* env = ::getenv("AWS_SECRET_ACCESS_KEY")) a.config.secret_key = env;
  }
  std::shared_ptr<BlockStore> store;
  s = MakeCodedStore(a.config, &store);
  if (s.ok()) s = store->Check();
  if (!s.ok()) return Report(s);

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
  options.warn = [](const std::string& w) { std::fprintf(stderr, "s3block: warning: %s\n", w.c_str()); };
  auto with_progress = [&](const std::string& label, uint64_t bytes_per_item) {
    auto p = std::make_shared<Progress>(label, bytes_per_item);
    options.progress = [p](uint64_t done, uint64_t total) { p->Update(done, total); };
  };

  const std::string& cmd = a.command;
  if (cmd == "list") {
    if ((rc = NeedArgs(a, 0)) >= 0) return rc;
    std::vector<ExportInfo> all;
    s = ListExportInfo(*store, &all);
    if (!s.ok()) return Report(s);
    if (a.json) {
      std::printf("[");
      for (size_t i = 0; i < all.size(); ++i) PrintInfo(all[i], true, i == 0);
      std::printf("]\n");
    } else {
      std::printf("%-24s %14s %10s %12s %14s %s\n", "NAME", "SIZE", "BLOCK-SIZE", "BLOCKS",
                  "ALLOCATED", "STATE");
      for (const auto& e : all) PrintInfo(e, false, false);
    }
    return kExitOk;
  }
  if (cmd == "info") {
    if ((rc = NeedArgs(a, 1)) >= 0) return rc;
    ExportInfo e;
    s = GetExportInfo(*store, a.positional[0], &e);
    if (!s.ok()) return Report(s);
    if (a.json) {
      PrintInfo(e, true, true);
      std::printf("\n");
      return kExitOk;
    }
    std::printf("name:            %s\n", QuoteForMessage(e.name).c_str());
    std::printf("store:           %s\n", store->Describe().c_str());
    if (e.has_meta) {
      std::printf("size:            %s\n", HumanSize(e.meta.size).c_str());
      std::printf("block size:      %s\n", HumanSize(e.meta.block_size).c_str());
      std::printf("state:           %s\n", StateName(e.meta.state));
      std::printf("encoding:        %s\n", e.meta.encoding.Describe().c_str());
    } else {
      std::printf("metadata:        %s\n", e.meta_error.empty() ? "none (blocks only)" : e.meta_error.c_str());
    }
    std::printf("blocks stored:   %" PRIu64 "\n", e.blocks_stored);
    std::printf("allocated:       %s (blocks stored x block size)\n", HumanSize(e.allocated_bytes).c_str());
    if (e.blocks_past_end) std::printf("past the end:    %" PRIu64 " blocks\n", e.blocks_past_end);
    std::printf("served by:       %s\n", e.lease_holder.empty() ? "nobody" : e.lease_holder.c_str());
    if (!e.key_error.empty()) std::printf("key:             %s\n", e.key_error.c_str());
    return kExitOk;
  }
  if (cmd == "create") {
    if ((rc = NeedArgs(a, 1)) >= 0) return rc;
    const uint64_t size = size_arg;
    s = CreateExport(*store, a.positional[0], size, block_size, options);
    if (!s.ok()) return Report(s);
    std::printf("created export '%s': size %s, block size %s\n", QuoteForMessage(a.positional[0]).c_str(),
                HumanSize(size).c_str(), HumanSize(block_size).c_str());
    return kExitOk;
  }
  if (cmd == "resize") {
    if ((rc = NeedArgs(a, 2)) >= 0) return rc;
    uint64_t size = 0;
    if (!(s = ParseSize("SIZE", a.positional[1], &size)).ok()) return Usage(s.message());
    with_progress("resize", 0);
    s = ResizeExport(*store, a.positional[0], size, a.force, options);
    if (!s.ok()) return s.err() == EINVAL ? (Report(s), kExitUsage) : Report(s);
    std::printf("export '%s' is now %s\n", QuoteForMessage(a.positional[0]).c_str(), HumanSize(size).c_str());
    return kExitOk;
  }
  if (cmd == "delete") {
    if ((rc = NeedArgs(a, 1)) >= 0) return rc;
    const std::string& name = a.positional[0];
    if (!a.yes && !a.force) {
      if (::isatty(STDIN_FILENO) != 1)
        return Usage("delete needs --yes when not run on a terminal");
      std::fprintf(stderr, "This deletes export '%s' and all its blocks in %s.\nType its name to confirm: ",
                   QuoteForMessage(name).c_str(), store->Describe().c_str());
      std::string typed;
      if (!std::getline(std::cin, typed) || typed != name) {
        std::fprintf(stderr, "s3block: not confirmed; nothing deleted\n");
        return kExitFail;
      }
    }
    with_progress("delete", 0);
    s = DeleteExport(*store, name, options);
    if (!s.ok()) return Report(s);
    std::printf("deleted export '%s'\n", QuoteForMessage(name).c_str());
    return kExitOk;
  }
  if (cmd == "copy") {
    if ((rc = NeedArgs(a, 2)) >= 0) return rc;
    ExportInfo e;
    if (GetExportInfo(*store, a.positional[0], &e).ok() && e.has_meta)
      with_progress("copy", e.meta.block_size);
    s = CopyExport(*store, a.positional[0], a.positional[1], options);
    if (!s.ok()) return Report(s);
    std::printf("copied export '%s' to '%s'\n", QuoteForMessage(a.positional[0]).c_str(),
                QuoteForMessage(a.positional[1]).c_str());
    return kExitOk;
  }
  if (cmd == "import") {
    if ((rc = NeedArgs(a, 2)) >= 0) return rc;
    with_progress("import", block_size);
    s = ImportImage(*store, a.positional[0], a.positional[1], block_size, options);
    if (!s.ok()) return Report(s);
    std::printf("imported %s into export '%s'\n", a.positional[1].c_str(),
                QuoteForMessage(a.positional[0]).c_str());
    return kExitOk;
  }
  if (cmd == "export") {
    if ((rc = NeedArgs(a, 2)) >= 0) return rc;
    ExportInfo e;
    if (GetExportInfo(*store, a.positional[0], &e).ok() && e.has_meta)
      with_progress("export", e.meta.block_size);
    s = ExportImage(*store, a.positional[0], a.positional[1], options);
    if (!s.ok()) return Report(s);
    std::printf("exported '%s' to %s\n", QuoteForMessage(a.positional[0]).c_str(), a.positional[1].c_str());
    return kExitOk;
  }
  if (cmd == "verify") {
    if ((rc = NeedArgs(a, 1)) >= 0) return rc;
    ExportInfo e;
    if (GetExportInfo(*store, a.positional[0], &e).ok() && e.has_meta)
      with_progress("verify", e.meta.block_size);
    VerifyReport report;
    s = VerifyExport(*store, a.positional[0], options, &report);
    if (!s.ok()) return Report(s);
    if (a.json) {
      std::printf("{\"name\": %s, \"blocks_checked\": %" PRIu64 ", \"problems\": [",
                  JsonString(a.positional[0]).c_str(), report.blocks_checked);
      for (size_t i = 0; i < report.problems.size(); ++i)
        std::printf("%s%s", i ? ", " : "", JsonString(report.problems[i]).c_str());
      std::printf("]}\n");
    } else {
      for (const auto& p : report.problems) std::printf("DAMAGED: %s\n", p.c_str());
      std::printf("%" PRIu64 " block%s checked, %zu problem%s\n", report.blocks_checked,
                  report.blocks_checked == 1 ? "" : "s", report.problems.size(),
                  report.problems.size() == 1 ? "" : "s");
    }
    return report.problems.empty() ? kExitOk : kExitDamage;
  }
  return Usage("unknown command '" + cmd + "'");
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
