// Assembles the store stack from the configuration: the one place that decides which layers
// run and in what order (leaf store at the bottom, then the disk cache if disk-cache= is given,
// then the codec layer, then the cache).
// The codec layer is always there, even without compression=, encryption= or checksum=: an
// export's encoding comes from its metadata, and a raw export passes through it untouched.
#ifndef S3BLOCK_STORE_FACTORY_H_
#define S3BLOCK_STORE_FACTORY_H_

#include <memory>

#include "s3block/block_store.h"
#include "s3block/config.h"

namespace s3block {

// Builds the leaf store named by config.store (a directory or s3://...). No I/O happens here;
// call Check() on the result to verify that it is usable.
Status MakeLeafStore(const Config& config, std::shared_ptr<BlockStore>* out);

// The leaf store with the codec layer (codec_store.h) above it, holding config.encryption_key: every
// export's blocks in their recorded encoding. What the admin command works on (no cache).
Status MakeCodedStore(const Config& config, std::shared_ptr<BlockStore>* out);

// Builds the whole stack: the leaf store and, above it, the layers the configuration asks for.
Status MakeStoreStack(const Config& config, std::shared_ptr<BlockStore>* out);

}  // namespace s3block

#endif  // S3BLOCK_STORE_FACTORY_H_
