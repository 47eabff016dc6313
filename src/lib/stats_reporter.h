// StatsReporter: the counters of every open export's caches, for people and scripts.
//
// About once a second it collects the block cache's counters (and the disk cache's, as
// "disk_<counter>") of every export open in the registry, writes them to the stats file (JSON,
// replaced atomically: a reader sees a whole document) and, every few seconds, logs the lines
// that changed.
//
// The stats file's directory must be the server's own (CheckStatsFile): a file replaced by rename
// in a directory that others can write could be swapped under the server.
//
// Thread safety: Start and Stop from one thread; the rest runs on the reporter's own thread.
#ifndef S3BLOCK_LIB_STATS_REPORTER_H_
#define S3BLOCK_LIB_STATS_REPORTER_H_

#include <condition_variable>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "lib/volume_registry.h"
#include "s3block/store_factory.h"
#include "util/mutex.h"

namespace s3block {

class StatsReporter {
 public:
  // Reports on the stack's cache and disk cache; `stats_file` may be empty (log only).
  StatsReporter(StoreStack stack, VolumeRegistry* registry, std::string stats_file,
                std::function<void(const std::string& line)> log);
  ~StatsReporter();  // Stop()
  StatsReporter(const StatsReporter&) = delete;
  StatsReporter& operator=(const StatsReporter&) = delete;

  // Checks, before serving, that stats_file can be written where it is: its directory is a real
  // directory of this user that nobody else may write, and a file can be made there.
  static Status CheckStatsFile(const std::string& stats_file);

  // Starts the reporting thread, if the stack has a cache to report on.
  void Start();
  // Reports once more and stops the thread.
  void Stop();

 private:
  void Loop() EXCLUDES(mu_);
  void WriteFile(const std::string& json);

  const StoreStack stack_;
  VolumeRegistry* const registry_;
  const std::string stats_file_;
  const std::function<void(const std::string&)> log_;
  Mutex mu_;
  std::condition_variable cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  bool write_failing_ = false;  // the reporting thread's own
  std::thread thread_;
};

}  // namespace s3block

#endif  // S3BLOCK_LIB_STATS_REPORTER_H_
