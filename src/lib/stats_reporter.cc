#include "lib/stats_reporter.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <utility>
#include <vector>

#include "base/safe_file.h"
#include "cache/disk_cache_store.h"
#include "log/layout_store.h"
#include "s3block/cache_store.h"
#include "s3block/params.h"
#include "util/json.h"

namespace s3block {
namespace {

constexpr int kLogEverySeconds = 5;

using Counters = std::vector<std::pair<std::string, uint64_t>>;
using ExportCounters = std::vector<std::pair<std::string, Counters>>;

std::string ToJson(const ExportCounters& all) {
  std::string text = "{\"exports\": {";
  for (size_t i = 0; i < all.size(); ++i) {
    text += (i ? ",\n  " : "\n  ") + JsonString(all[i].first) + ": {";
    bool first = true;
    for (const auto& [key, value] : all[i].second) {
      text += (first ? "\"" : ", \"") + key + "\": " + std::to_string(value);
      first = false;
    }
    text += "}";
  }
  return text + "\n}}\n";
}

std::string ToLine(const Counters& counters) {
  std::string line;
  for (const auto& [key, value] : counters)
    line += (line.empty() ? "" : " ") + key + "=" + std::to_string(value);
  return line;
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

StatsReporter::StatsReporter(StoreStack stack, VolumeRegistry* registry, std::string stats_file,
                             std::function<void(const std::string&)> log)
    : stack_(std::move(stack)),
      registry_(registry),
      stats_file_(std::move(stats_file)),
      log_(std::move(log)) {}

StatsReporter::~StatsReporter() { Stop(); }

Status StatsReporter::CheckStatsFile(const std::string& stats_file) {
  const std::string where = "stats-file=" + stats_file;
  S3B_RETURN_IF_ERROR(CheckPrivateDirectory(DirOf(stats_file), where).Annotate(where));
  // The file is written in the background, where a failure would go unseen: write it now.
  return ReplaceFileAtomically(stats_file, "{\"exports\": {}}\n").Annotate(where);
}

void StatsReporter::Start() {
  if (thread_.joinable() || (!stack_.cache && !stack_.disk_cache && !stack_.layout)) return;
  thread_ = std::thread([this] { Loop(); });
}

void StatsReporter::Stop() {
  if (!thread_.joinable()) return;
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StatsReporter::WriteFile(const std::string& json) {
  Status s = ReplaceFileAtomically(stats_file_, json);
  // Once a second: say so only when it starts failing, not every time.
  if (!s.ok() && !write_failing_ && log_) log_("cannot write the stats file: " + s.message());
  write_failing_ = !s.ok();
}

void StatsReporter::Loop() {
  std::map<std::string, std::string> logged;
  int seconds = 0;
  UniqueLock lock(&mu_);
  while (!stop_) {
    cv_.wait_for(lock.native(), std::chrono::seconds(1));
    const bool stopping = stop_;
    lock.Unlock();
    ExportCounters all;
    auto add = [&](const std::string& name) -> Counters& {
      for (auto& [n, counters] : all)
        if (n == name) return counters;
      return all.emplace_back(name, Counters()).second;
    };
    if (stack_.cache) {
      for (const auto& [name, stats] : stack_.cache->AllStats()) {
        auto& counters = add(name);
        ForEachCacheStat(stats, [&](const char* key, uint64_t value) { counters.emplace_back(key, value); });
      }
    }
    if (stack_.disk_cache) {
      for (const auto& name : registry_->OpenNames()) {
        auto& counters = add(name);
        ForEachDiskCacheStat(stack_.disk_cache->Stats(name), [&](const char* key, uint64_t value) {
          counters.emplace_back(std::string("disk_") + key, value);
        });
      }
    }
    if (stack_.layout) {
      for (const auto& [name, st] : stack_.layout->OpenLogStats()) {
        auto& counters = add(name);
        ForEachLogStat(st, [&](const char* key, uint64_t value) {
          counters.emplace_back(std::string("log_") + key, value);
        });
      }
    }
    if (!stats_file_.empty()) WriteFile(ToJson(all));
    if (log_ && (++seconds % kLogEverySeconds == 0 || stopping)) {
      for (const auto& [name, counters] : all) {
        std::string line = ToLine(counters);
        if (logged[name] == line) continue;
        log_("counters of export '" + QuoteForMessage(name) + "': " + line);
        logged[name] = std::move(line);
      }
    }
    lock.Lock();
  }
}

}  // namespace s3block
