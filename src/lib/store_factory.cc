#include "s3block/store_factory.h"

#include "base/direct_device.h"
#include "cache/disk_cache_store.h"
#include "file/dir_transport.h"
#include "file/file_store.h"
#include "log/layout_store.h"
#include "s3/s3_store.h"
#include "s3block/cache_store.h"
#include "s3block/codec_store.h"

namespace s3block {

// Each layer is built from its own options; the configuration is mapped onto them here only.

CacheOptions CacheOptionsFor(const Config& config) {
  CacheOptions o;
  o.cache_size = config.cache_size;
  o.dirty_size = config.dirty_size;
  o.upload_threads = static_cast<uint32_t>(config.upload_threads);
  o.read_threads = static_cast<uint32_t>(config.read_threads);
  return o;
}

S3StoreOptions S3StoreOptionsFor(const Config& config) {
  S3StoreOptions o;
  o.url = config.store;
  o.credentials = {config.access_key, config.secret_key, config.session_token, config.profile};
  o.endpoint = config.endpoint;
  o.region = config.region;
  o.path_style = config.path_style;
  o.ca_file = config.ca_file;
  o.retry_timeout = config.retry_timeout;
  o.request_timeout = config.request_timeout;
  o.connections = config.connections;
  return o;
}

VolumeOptions VolumeOptionsFor(const Config& config, bool readonly) {
  VolumeOptions o;
  o.size = config.size;
  o.block_size = config.block_size;
  o.block_size_explicit = config.block_size_given;
  o.readonly = readonly;
  o.create = config.create;
  o.force = config.force;
  o.encoding = config.encoding;
  o.encoding_explicit = config.encoding_given;
  o.layout = config.layout;
  o.layout_explicit = config.layout_given;
  return o;
}

log::LogOptions LogOptionsFor(const Config& config) {
  log::LogOptions o;
  o.segment_size = config.segment_size;
  o.gc_threshold = static_cast<uint32_t>(config.gc_threshold);
  return o;
}

Status MakeLeafStore(const Config& config, std::shared_ptr<BlockStore>* out,
                     std::shared_ptr<log::LayoutStore>* layout) {
  std::shared_ptr<log::LayoutStore> router;
  // Each export's blocks in the layout its metadata records: one object per block (the store
  // below), or log-structured over the same place as objects.
  if (config.is_s3()) {
    std::shared_ptr<S3Store> s3;
    S3B_RETURN_IF_ERROR(S3Store::Create(S3StoreOptionsFor(config), &s3));
    s3->set_lease_timeout(config.lease_timeout);
    auto transport = [s3](std::shared_ptr<ObjectTransport>* t) {
      *t = std::shared_ptr<ObjectTransport>(s3, s3->transport());
      return Status::Ok();
    };
    S3Store* raw = s3.get();
    auto fence_for = [raw](std::string_view name) -> WriteFence {
      return [raw, name = std::string(name)](double* left) { return raw->CheckLease(name, left); };
    };
    router = std::make_shared<log::LayoutStore>(std::move(s3), transport, LogOptionsFor(config),
                                                fence_for);
  } else {
    const std::string root = config.store;
    auto transport = [root](std::shared_ptr<ObjectTransport>* t) {
      std::unique_ptr<DirTransport> dir;
      S3B_RETURN_IF_ERROR(DirTransport::Open(root, true, &dir));
      *t = std::move(dir);
      return Status::Ok();
    };
    router = std::make_shared<log::LayoutStore>(std::make_shared<FileStore>(config.store),
                                                transport, LogOptionsFor(config), nullptr);
  }
  if (layout) *layout = router;
  *out = std::move(router);
  return Status::Ok();
}

Status MakeCodedStore(const Config& config, std::shared_ptr<BlockStore>* out,
                      std::shared_ptr<log::LayoutStore>* layout) {
  std::shared_ptr<BlockStore> leaf;
  S3B_RETURN_IF_ERROR(MakeLeafStore(config, &leaf, layout));
  *out = std::make_shared<CodecStore>(std::move(leaf), config.encryption_key);
  return Status::Ok();
}

std::unique_ptr<BlockDevice> StoreStack::OpenDevice(std::string_view name,
                                                    uint32_t block_size) const {
  if (cache) return cache->OpenDevice(name, block_size);
  return std::make_unique<DirectDevice>(store, std::string(name), block_size);
}

Status MakeStoreStack(const Config& config, StoreStack* out) {
  *out = StoreStack();
  std::shared_ptr<BlockStore> store;
  S3B_RETURN_IF_ERROR(MakeLeafStore(config, &store, &out->layout));
  // Under the codec layer, so that the local copies are what the store holds: compressed and
  // encrypted blocks stay so on the local disk, and are checked by the codec as S3's are.
  if (!config.disk_cache_dir.empty()) {
    out->disk_cache = std::make_shared<DiskCacheStore>(std::move(store), config.disk_cache_dir,
                                                       config.disk_cache_size);
    store = out->disk_cache;
  }
  store = std::make_shared<CodecStore>(std::move(store), config.encryption_key);
  if (config.cache) {
    out->cache = std::make_shared<CacheStore>(std::move(store), CacheOptionsFor(config));
    store = out->cache;
  }
  out->store = std::move(store);
  return Status::Ok();
}

}  // namespace s3block
