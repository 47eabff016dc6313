// nbdkit-s3block-plugin: the nbdkit glue. Each callback translates its arguments into a call on the
// export's shared Volume and a failed Status into nbdkit_error + errno. Nothing else lives here.
//
// Life cycle (see nbdkit-plugin(3)): config -> config_complete -> get_ready (build and check the
// store: errors still reach the terminal) -> [fork] -> after_fork (start threads) -> open/close
// per connection -> cleanup/unload (may never run: durability never depends on them).
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include "base/config_params.h"
#include "lib/server.h"
#include "s3block/config.h"
#include "s3block/volume.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace s3block {
namespace {

Config g_config;
// Built in get_ready, started after the fork.
std::unique_ptr<Server> g_server;

// 0 for success; else -1, with the message and the errno that nbdkit passes on.
int Result(const Status& s) {
  if (s.ok()) return 0;
  nbdkit_error("%s", s.message().c_str());
  nbdkit_set_error(NbdErrno(s.err()));
  return -1;
}

// Runs f, turning any exception into an error: none may cross into nbdkit's C code.
template <typename F>
int Guard(const char* what, F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    nbdkit_error("%s: out of memory", what);
    nbdkit_set_error(ENOMEM);
  } catch (const std::exception& e) {
    nbdkit_error("%s: internal error: %s", what, e.what());
    nbdkit_set_error(EIO);
  } catch (...) {
    nbdkit_error("%s: internal error", what);
    nbdkit_set_error(EIO);
  }
  return -1;
}

// Guard for a call that returns a Status.
template <typename F>
int Call(const char* what, F&& f) {
  return Guard(what, [&] { return Result(f()); });
}

// A connection's handle: its export's Volume, shared with the other connections to it.
using Handle = std::shared_ptr<Volume>;
Volume* V(void* handle) { return static_cast<Handle*>(handle)->get(); }

int Config(const char* key, const char* value) {
  return Guard("config", [&] {
    std::string v = value;
    const ConfigParam* param = FindConfigParam(key);
    if (param != nullptr && param->password) {
      // -, +FILE and -FD read the secret without it showing in ps; only these forms can fail,
      // and they hold no secret: the message names them.
      char* secret = nullptr;
      if (nbdkit_read_password(value, &secret) == -1) {
        nbdkit_error("%s=%s: cannot read the secret key (above: why)", key, value);
        return -1;
      }
      v = secret;
      std::memset(secret, 0, std::strlen(secret));
      std::free(secret);
    } else if (size_t n = param ? param->PathLength(v) : v.npos; n != v.npos) {
      char* abs = nbdkit_absolute_path(v.substr(0, n).c_str());  // nbdkit changes directory to '/'
      if (abs == nullptr) return -1;
      v = abs + v.substr(n);
      std::free(abs);
    }
    return Result(g_config.Set(key, v));
  });
}

int ConfigComplete() { return Call("config_complete", [] { return g_config.Finish(); }); }

void Debug(const std::string& m) { nbdkit_debug("s3block: %s", m.c_str()); }

int GetReady() {
  return Call("get_ready", [] { return Server::Create(g_config, "nbdkit", Debug, &g_server); });
}

int AfterFork() { return Call("after_fork", [] { return g_server->Start(); }); }

// nbdkit is shutting down cleanly: make what every export holds durable while the store's
// threads still run (unload comes after them). Close, not just flush: a connection may still hold
// a Volume, and its lease must go now so that a server started next can serve the export.
void Cleanup() {
  Call("cleanup", [] { return g_server->CloseAll().Annotate("flush at shutdown"); });
}

// Everything acknowledged has been made durable by flushes or by the last close; this only
// releases memory when nbdkit does run it.
void Unload() { g_server.reset(); }

void DumpPlugin() {
  std::printf("s3block_version=%s\ns3block_default_block_size=%u\ns3block_stores=file,s3\n",
              S3BLOCK_VERSION, kDefaultBlockSize);
}

int ListExports(int readonly, int is_tls, struct nbdkit_exports* exports) {
  return Guard("list_exports", [&] {
    std::vector<std::string> names;
    if (Result(g_server->ListExports(&names)) == -1) return -1;
    for (const auto& n : names)
      if (nbdkit_add_export(exports, n.c_str(), nullptr) == -1) return -1;
    return 0;
  });
}

const char* DefaultExport(int readonly, int is_tls) {
  return nbdkit_strdup_intern(g_config.default_export.c_str());
}

void* Open(int readonly) {
  std::unique_ptr<Handle> h;
  const int rc = Call("open", [&] {
    const char* requested = nbdkit_export_name();
    h = std::make_unique<Handle>();
    return g_server->Open(requested ? requested : "", readonly != 0, h.get());
  });
  return rc == 0 ? h.release() : nullptr;
}

// After the last client of the export has gone, the server makes everything it wrote durable.
void Close(void* handle) {
  std::unique_ptr<Handle> h(static_cast<Handle*>(handle));
  Call("close", [&] { return g_server->Close(*h).Annotate("flush on close"); });
}

int64_t GetSize(void* handle) { return static_cast<int64_t>(V(handle)->size()); }

int BlockSize(void* handle, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 1;
  *preferred = V(handle)->block_size();
  *maximum = 0xffffffff;
  return 0;
}

int CanWrite(void* handle) { return V(handle)->readonly() ? 0 : 1; }
int Yes(void*) { return 1; }  // for the can_* callbacks that do not depend on the export
int No(void*) { return 0; }
int CanFua(void*) { return NBDKIT_FUA_NATIVE; }

int Pread(void* handle, void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  return Call("pread", [&] { return V(handle)->Read(static_cast<uint8_t*>(buf), count, offset); });
}

int Pwrite(void* handle, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  return Call("pwrite", [&] {
    return V(handle)->Write(static_cast<const uint8_t*>(buf), count, offset,
                            (flags & NBDKIT_FLAG_FUA) != 0);
  });
}

int Flush(void* handle, uint32_t flags) { return Call("flush", [&] { return V(handle)->Flush(); }); }

int Trim(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return Call("trim", [&] { return V(handle)->Trim(count, offset, (flags & NBDKIT_FLAG_FUA) != 0); });
}

int Zero(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return Guard("zero", [&] {
    Status s = V(handle)->Zero(count, offset, (flags & NBDKIT_FLAG_MAY_TRIM) != 0,
                               (flags & NBDKIT_FLAG_FAST_ZERO) != 0,
                               (flags & NBDKIT_FLAG_FUA) != 0);
    if (s.IsNotSupported()) {  // expected for fast zero: no message in the log
      nbdkit_set_error(ENOTSUP);
      return -1;
    }
    return Result(s);
  });
}

int Extents(void* handle, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents* extents) {
  return Guard("extents", [&] {
    const bool req_one = (flags & NBDKIT_FLAG_REQ_ONE) != 0;
    bool failed = false;
    Status s = V(handle)->Extents(count, offset, [&](uint64_t off, uint64_t len, bool hole) {
      uint32_t type = hole ? (NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO) : 0;
      if (nbdkit_add_extent(extents, off, len, type) == -1) {
        failed = true;
        return false;
      }
      return !req_one;
    });
    return failed ? -1 : Result(s);
  });
}

// In the order of struct nbdkit_plugin's fields, as C++ designated initializers must be.
struct nbdkit_plugin plugin = {
    .name = "s3block",
    .longname = "nbd-s3-backend: a block device whose blocks live in S3 or a local directory",
    .version = S3BLOCK_VERSION,
    .description = "Serves exports whose blocks are files or S3 objects, one per block.",
    .unload = Unload,
    .config = Config,
    .config_complete = ConfigComplete,
    .config_help = Config::Help(),
    .open = Open,
    .close = Close,
    .get_size = GetSize,
    .can_write = CanWrite,
    .can_flush = Yes,
    .is_rotational = No,
    .can_trim = Yes,
    .dump_plugin = DumpPlugin,
    .can_zero = Yes,
    .can_fua = CanFua,
    .pread = Pread,
    .pwrite = Pwrite,
    .flush = Flush,
    .trim = Trim,
    .zero = Zero,
    .magic_config_key = "store",
    .can_multi_conn = Yes,  // one shared Volume per export; a flush covers all
    .can_extents = Yes,
    .extents = Extents,
    .can_fast_zero = Yes,
    .get_ready = GetReady,
    .after_fork = AfterFork,
    .list_exports = ListExports,
    .default_export = DefaultExport,
    .cleanup = Cleanup,
    .block_size = BlockSize,
};
}  // namespace
}  // namespace s3block

NBDKIT_REGISTER_PLUGIN(s3block::plugin)
