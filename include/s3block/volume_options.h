// VolumeOptions: how a Volume opens its export. Apart from volume.h so that the parameters
// (config.h) can name them without depending on the Volume.
#ifndef S3BLOCK_VOLUME_OPTIONS_H_
#define S3BLOCK_VOLUME_OPTIONS_H_

#include <cstdint>
#include <string>

#include "s3block/export_meta.h"
#include "s3block/params.h"

namespace s3block {

struct VolumeOptions {
  // Size of a new export. An existing export keeps its recorded size.
  uint64_t size = kDefaultExportSize;
  // Block size of a new export. An existing export keeps its recorded block size; if the block
  // size was given explicitly (block_size_explicit) and differs, Open refuses.
  uint32_t block_size = kDefaultBlockSize;
  bool block_size_explicit = false;
  // Open read-only: never write metadata or blocks.
  bool readonly = false;
  // Create the export (write its metadata) if it has none.
  bool create = true;
  // A read-write volume claims the export's lease so that no second server writes to it.
  bool lock = true;
  // Take the lease even from another holder (an operator who knows the holder is dead).
  bool force = false;
  // Who we are, for other servers' messages; empty: "PROGRAM pid N on HOST since TIME".
  std::string holder;
  // Block encoding of a new export. An existing export keeps its recorded encoding; if one was
  // given explicitly (encoding_explicit) and differs, Open says so in encoding_note().
  BlockEncoding encoding;
  bool encoding_explicit = false;
  // Layout of a new export; an existing export keeps its own (a note says so when one was given
  // explicitly and differs).
  ExportLayout layout = ExportLayout::kBlocks;
  bool layout_explicit = false;
};

}  // namespace s3block

#endif  // S3BLOCK_VOLUME_OPTIONS_H_
