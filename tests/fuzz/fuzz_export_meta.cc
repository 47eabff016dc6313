// libFuzzer target: ExportMeta::Parse, the reader of an export's metadata document (a file or an
// object anyone with access to the store can write).
//
// Properties checked besides "no crash, no sanitizer report": a document that parses describes an
// export the rest of the code can serve (a block size that is a power of two from 512 to 16M, a
// size within the limit, a format this version understands), and what Serialize makes of it
// parses back to the same metadata.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "s3block/export_meta.h"
#include "s3block/params.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_export_meta: property violated: %s\n", what);
    std::abort();
  }
}

bool Same(const s3block::ExportMeta& a, const s3block::ExportMeta& b) {
  return a.format == b.format && a.state == b.state && a.size == b.size &&
         a.block_size == b.block_size && a.encoding.SameChoices(b.encoding) &&
         a.encoding.key_check == b.encoding.key_check;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace s3block;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  ExportMeta meta;
  Status s = ExportMeta::Parse("fuzz", text, &meta);
  if (!s.ok()) {
    Require(!s.message().empty(), "an error without a message");
    return 0;
  }
  Require(meta.format >= 1 && meta.format <= kMetaFormatVersion, "format out of range accepted");
  Require(meta.block_size >= kMinBlockSize && meta.block_size <= kMaxBlockSize &&
              (meta.block_size & (meta.block_size - 1)) == 0,
          "a block size that is not a power of two from 512 to 16M accepted");
  Require(meta.size <= kMaxExportSize, "a size above the limit accepted");
  Require(meta.block_count() <= kMaxExportSize / kMinBlockSize + 1, "block count out of range");
  ExportMeta again;
  Status s2 = ExportMeta::Parse("fuzz", meta.Serialize(), &again);
  Require(s2.ok(), "Serialize wrote a document Parse refuses");
  Require(Same(meta, again), "Serialize then Parse changed the metadata");
  return 0;
}
