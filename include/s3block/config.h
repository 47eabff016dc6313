// Config: every parameter of the plugin and of the admin command, parsed and validated in one
// place, so that both accept the same names and values and give the same errors. The parameters
// themselves (names, values, defaults, help) are listed once, in src/base/config_params.cc.
//
// Parameters are key=value pairs (nbdkit: `store=./data size=10G`; admin command: `--store ./data
// --size 10G`). Set() checks each value as it arrives; Finish() checks the combination.
#ifndef S3BLOCK_CONFIG_H_
#define S3BLOCK_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "s3block/params.h"
#include "s3block/status.h"
#include "s3block/export_meta.h"

namespace s3block {

struct Config {
  // --- Where the blocks live ---
  // A directory (must already be absolute when Set: the plugin makes it so with
  // nbdkit_absolute_path), or s3://BUCKET[/PREFIX].
  std::string store;

  // --- New exports ---
  uint64_t size = kDefaultExportSize;
  bool size_given = false;
  uint32_t block_size = kDefaultBlockSize;
  bool block_size_given = false;
  std::string default_export = kDefaultExportName;
  // Create an export that a client names but that does not exist yet.
  bool create = true;
  // Take an export's lease even if another server holds it.
  bool force = false;

  // --- Bounds of the server ---
  // Most exports open at once; each costs up to cache-size of memory, a lock (and on S3 a lease
  // renewer) while open.
  uint64_t max_exports = 16;
  // Seconds an export stays open after its last client has gone.
  double idle_timeout = 30;

  // --- Block encoding of new exports (compression=, encryption=, checksum=) ---
  // Recorded in a new export's metadata; an existing export keeps the encoding it was created
  // with. With encryption, Finish() fills in the key check value.
  BlockEncoding encoding;
  bool encoding_given = false;
  // The 32-byte encryption key, from key-file= or else the environment variable S3BLOCK_KEY
  // (never a parameter value, which would show in ps). Never printed.
  std::string encryption_key;

  // --- Layout of new exports (layout=), and of log-structured exports' segments ---
  // Recorded in a new export's metadata; an existing export keeps the layout it was created with.
  ExportLayout layout = ExportLayout::kBlocks;
  bool layout_given = false;
  uint64_t segment_size = 8ull << 20;  // a log export's segments are sealed at this size
  uint64_t gc_threshold = 50;          // percent: segments less live than this are collected

  // --- S3 ---
  std::string endpoint;        // empty: AWS (https://s3.REGION.amazonaws.com)
  std::string region = "us-east-1";
  std::optional<bool> path_style;  // unset: true for a custom endpoint, false for AWS
  std::string ca_file;
  std::string access_key;      // unset: environment, then ~/.aws files
  std::string secret_key;      // never printed
  std::string session_token;   // never printed
  std::string profile;         // ~/.aws profile (default: AWS_PROFILE, then "default")
  double retry_timeout = 60;   // seconds of retrying a transient failure before reporting it
  double request_timeout = 30; // seconds for one HTTP request
  uint64_t connections = 64;   // most HTTP requests in flight at once
  double lease_timeout = 60;   // seconds an S3 export lease lasts without renewal

  // --- Cache ---
  bool cache = true;
  uint64_t cache_size = 256ull << 20;
  uint64_t dirty_size = 0;     // 0: a quarter of cache_size
  uint64_t upload_threads = 32;
  uint64_t read_threads = 32;  // read-ahead fetchers, shared by all exports as the uploaders are
  // A file the plugin rewrites about once a second with the cache's counters (JSON); empty: none.
  std::string stats_file;
  // The control socket (control=): absolute (the plugin makes it so with nbdkit_absolute_path), a
  // unix socket through which the admin command asks the running server; empty: none.
  std::string control;

  // --- Disk cache (disk-cache=DIR,SIZE): a persistent local copy of S3 blocks ---
  // Absolute (the plugin makes it so with nbdkit_absolute_path); empty: no disk cache.
  std::string disk_cache_dir;
  uint64_t disk_cache_size = 0;

  // Sets one parameter. Errors: EINVAL, naming the parameter and what it accepts.
  Status Set(std::string_view key, std::string_view value);
  // Checks the combination (store given, sizes consistent), reads S3BLOCK_KEY if no key-file=
  // was given, and with encryption makes the key check value for new exports. Call once after
  // the last Set.
  Status Finish();

  bool is_s3() const { return store.rfind("s3://", 0) == 0; }

  // Every member equal (the unit tests compare a Config with the defaults).
  bool operator==(const Config&) const = default;

  // The parameter list for --help, one "key=VALUE  description" line each, made from the
  // parameter table (src/base/config_params.h).
  static const char* Help();
};

}  // namespace s3block

#endif  // S3BLOCK_CONFIG_H_
