// Assembles the store stack from the configuration: the one place that decides which layers
// run and in what order (leaf store at the bottom, then the disk cache if disk-cache= is given,
// then the codec layer, then the cache).
// The codec layer is always there, even without compression=, encryption= or checksum=: an
// export's encoding comes from its metadata, and a raw export passes through it untouched.
#ifndef S3BLOCK_STORE_FACTORY_H_
#define S3BLOCK_STORE_FACTORY_H_

#include <concepts>
#include <memory>
#include <string_view>

#include "s3block/block_device.h"
#include "s3block/block_store.h"
#include "s3block/cache_store.h"
#include "s3block/config.h"
#include "s3block/volume_options.h"

namespace s3block {

struct S3StoreOptions;
namespace log {
class LayoutStore;
}

// The options of the cache, of the S3 store and of an export's Volume (read-only or not) that
// the configuration asks for.
CacheOptions CacheOptionsFor(const Config& config);
S3StoreOptions S3StoreOptionsFor(const Config& config);
VolumeOptions VolumeOptionsFor(const Config& config, bool readonly);

// Builds the leaf of the stack for config.store (a directory or s3://...): the layout router
// (log/layout_store.h) over the store of one object per block there. No I/O happens here; call
// Check() on the result to verify that it is usable. *layout (when given) is the router, through
// which the log exports' own operations (statistics, collection, verification) go.
Status MakeLeafStore(const Config& config, std::shared_ptr<BlockStore>* out,
                     std::shared_ptr<log::LayoutStore>* layout = nullptr);

// The leaf store with the codec layer (codec_store.h) above it, holding config.encryption_key: every
// export's blocks in their recorded encoding. What the admin command works on (no cache).
Status MakeCodedStore(const Config& config, std::shared_ptr<BlockStore>* out,
                      std::shared_ptr<log::LayoutStore>* layout = nullptr);

class DiskCacheStore;

// The store stack of a serving process: its top, through which exports' metadata, leases and
// listings go, and the layers that give each export its device and report statistics.
struct StoreStack {
  StoreStack() = default;
  // A stack given by its top (as tests build one); a CacheStore on top is also its cache.
  template <typename T>
    requires std::derived_from<T, BlockStore>
  StoreStack(std::shared_ptr<T> top) : store(top) {  // NOLINT: implicit by design
    if constexpr (std::derived_from<T, CacheStore>) cache = top;
  }

  // The device export `name` is read and written through, at its block size: the cache's, or
  // without a cache a DirectDevice over the top.
  std::unique_ptr<BlockDevice> OpenDevice(std::string_view name, uint32_t block_size) const;

  std::shared_ptr<BlockStore> store;
  std::shared_ptr<CacheStore> cache;            // the top, unless cache=false
  std::shared_ptr<DiskCacheStore> disk_cache;   // with disk-cache=
  std::shared_ptr<log::LayoutStore> layout;     // the leaf, which serves log exports
};

// Builds the whole stack: the leaf store and, above it, the layers the configuration asks for.
Status MakeStoreStack(const Config& config, StoreStack* out);

}  // namespace s3block

#endif  // S3BLOCK_STORE_FACTORY_H_
