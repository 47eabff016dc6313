// libFuzzer target: Config::Set, which receives every key=value the plugin and the admin command
// are given. The input is a list of "key=value" lines, each set in turn on one Config, as nbdkit
// does with its command line.
//
// key-file= is left out: it reads the file it names. Properties checked besides "no crash, no
// sanitizer report": a refusal has a message, and whatever was accepted leaves the Config within
// the ranges the rest of the code relies on.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "s3block/config.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_config: property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace s3block;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Config c;
  size_t pos = 0;
  while (pos < in.size()) {
    size_t nl = in.find('\n', pos);
    std::string_view line = in.substr(pos, nl == std::string_view::npos ? in.npos : nl - pos);
    pos = nl == std::string_view::npos ? in.size() : nl + 1;
    size_t eq = line.find('=');
    std::string_view key = line.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : line.substr(eq + 1);
    if (key == "key-file") continue;
    Status s = c.Set(key, value);
    if (!s.ok()) Require(!s.message().empty(), "a refusal without a message");
  }
  Require(c.size >= 1 && c.size <= kMaxExportSize, "size out of range");
  Require(c.block_size >= kMinBlockSize && c.block_size <= kMaxBlockSize &&
              (c.block_size & (c.block_size - 1)) == 0,
          "block size out of range");
  Require(ValidateExportName(c.default_export).ok(), "a default export name that is refused");
  Require(c.connections >= 1 && c.connections <= 1024, "connections out of range");
  Require(c.upload_threads >= 1 && c.upload_threads <= 256, "upload-threads out of range");
  Require(c.request_timeout >= 0.1, "request-timeout below 100ms");
  Require(c.retry_timeout >= 0, "negative retry-timeout");
  Require(c.lease_timeout >= 3, "lease-timeout below 3 seconds");
  Require(c.endpoint.empty() || c.endpoint.rfind("http://", 0) == 0 ||
              c.endpoint.rfind("https://", 0) == 0,
          "an endpoint that is not http:// or https://");
  Require(c.encoding.level >= 1 && c.encoding.level <= 22, "zstd level out of range");
  return 0;
}
