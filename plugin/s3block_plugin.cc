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

#include "lib/server.h"
#include "s3block/config.h"
#include "s3block/volume.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#ifndef S3BLOCK_VERSION
#define S3BLOCK_VERSION "0.1.0"
#endif

namespace s3block {
namespace {

Config g_config;
// Built in get_ready, started after the fork.
std::unique_ptr<Server> g_server;

struct Handle {
  std::shared_ptr<Volume> volume;
};

// The errno an NBD client can be told for err. NBD carries only EPERM, EIO, ENOMEM, EINVAL,
// ENOSPC, EOVERFLOW, ENOTSUP and ESHUTDOWN, and nbdkit sends EINVAL for any other, which would
// tell the client its request was wrong: resources that ran out are ENOMEM, the rest EIO.
int NbdErrno(int err) {
  switch (err) {
    case EPERM: case EROFS: case EACCES: return EPERM;
    case EIO: case ENOMEM: case EINVAL: case ENOSPC: case EOVERFLOW: case ENOTSUP: case ESHUTDOWN:
    case EDQUOT: case EFBIG:
      return err;
    case EMFILE: case ENFILE: case EAGAIN: return ENOMEM;
    default: return EIO;
  }
}

int Fail(const Status& s) {
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

Volume* V(void* handle) { return static_cast<Handle*>(handle)->volume.get(); }

int Config(const char* key, const char* value) {
  return Guard("config", [&] {
    std::string k = key, v = value;
    if (k == "store" && v.rfind("s3://", 0) != 0) {
      char* abs = nbdkit_absolute_path(value);
      if (abs == nullptr) return -1;
      v = abs;
      std::free(abs);
    } else if (k == "disk-cache" && v.rfind(',') != std::string::npos && v.rfind(',') > 0) {
      // DIR,SIZE: only DIR is a path (nbdkit changes directory to '/'); Set refuses the rest.
      const size_t comma = v.rfind(',');
      char* abs = nbdkit_absolute_path(v.substr(0, comma).c_str());
      if (abs == nullptr) return -1;
      v = abs + v.substr(comma);
      std::free(abs);
    } else if (k == "stats-file") {
      char* abs = nbdkit_absolute_path(value);  // nbdkit changes directory to '/'
      if (abs == nullptr) return -1;
      v = abs;
      std::free(abs);
    } else if (k == "secret-key") {
      // -, +FILE and -FD read the secret without it showing in ps (nbdkit_read_password).
      char* secret = nullptr;
      if (nbdkit_read_password(value, &secret) == -1) {
        // Only the -, +FILE and -FD forms can fail, and they hold no secret: name them.
        nbdkit_error("secret-key=%s: cannot read the secret key (above: why)", value);
        return -1;
      }
      v = secret;
      std::memset(secret, 0, std::strlen(secret));
      std::free(secret);
    }
    Status s = g_config.Set(k, v);
    return s.ok() ? 0 : Fail(s);
  });
}

int ConfigComplete() {
  return Guard("config_complete", [] {
    Status s = g_config.Finish();
    return s.ok() ? 0 : Fail(s);
  });
}

void Debug(const std::string& m) { nbdkit_debug("s3block: %s", m.c_str()); }

int GetReady() {
  return Guard("get_ready", [] {
    Status s = Server::Create(g_config, "nbdkit", Debug, &g_server);
    if (!s.ok()) return Fail(s);
    Debug("serving " + g_server->Describe());
    return 0;
  });
}

int AfterFork() {
  return Guard("after_fork", [] {
    Status s = g_server->Start();
    return s.ok() ? 0 : Fail(s);
  });
}

// nbdkit is shutting down cleanly: make what every export holds durable while the store's
// threads still run (unload comes after them). Close, not just flush: a connection may still hold
// a Volume, and its lease must go now so that a server started next can serve the export.
void Cleanup() {
  Guard("cleanup", [] {
    Status s = g_server->CloseAll();
    if (!s.ok()) nbdkit_error("flush at shutdown: %s", s.message().c_str());
    return 0;
  });
}

// Everything acknowledged has been made durable by flushes or by the last close; this only
// releases memory when nbdkit does run it.
void Unload() { g_server.reset(); }

void DumpPlugin() {
  std::printf("s3block_version=%s\n", S3BLOCK_VERSION);
  std::printf("s3block_default_block_size=%u\n", kDefaultBlockSize);
  std::printf("s3block_stores=file,s3\n");
}

int ListExports(int readonly, int is_tls, struct nbdkit_exports* exports) {
  return Guard("list_exports", [&] {
    std::vector<std::string> names;
    Status s = g_server->ListExports(&names);
    if (!s.ok()) return Fail(s);
    for (const auto& n : names)
      if (nbdkit_add_export(exports, n.c_str(), nullptr) == -1) return -1;
    return 0;
  });
}

const char* DefaultExport(int readonly, int is_tls) {
  return nbdkit_strdup_intern(g_config.default_export.c_str());
}

void* Open(int readonly) {
  Handle* result = nullptr;
  Guard("open", [&] {
    const char* requested = nbdkit_export_name();
    std::shared_ptr<Volume> v;
    Status s = g_server->Open(requested ? requested : "", readonly != 0, &v);
    if (!s.ok()) return Fail(s);
    result = new Handle{std::move(v)};
    return 0;
  });
  return result;
}

void Close(void* handle) {
  Guard("close", [&] {
    std::unique_ptr<Handle> h(static_cast<Handle*>(handle));
    // The last client of the export is gone: the server makes everything it wrote durable.
    Status s = g_server->Close(h->volume);
    if (!s.ok()) nbdkit_error("flush on close: %s", s.message().c_str());
    return 0;
  });
}

int64_t GetSize(void* handle) { return static_cast<int64_t>(V(handle)->size()); }

int BlockSize(void* handle, uint32_t* minimum, uint32_t* preferred, uint32_t* maximum) {
  *minimum = 1;
  *preferred = V(handle)->block_size();
  *maximum = 0xffffffff;
  return 0;
}

int CanWrite(void* handle) { return V(handle)->readonly() ? 0 : 1; }
int CanFlush(void*) { return 1; }
int IsRotational(void*) { return 0; }
int CanTrim(void*) { return 1; }
int CanZero(void*) { return 1; }
int CanFastZero(void*) { return 1; }
int CanFua(void*) { return NBDKIT_FUA_NATIVE; }
int CanMultiConn(void*) { return 1; }  // one shared Volume per export; flush covers all
int CanExtents(void*) { return 1; }

int Pread(void* handle, void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  return Guard("pread", [&] {
    Status s = V(handle)->Read(static_cast<uint8_t*>(buf), count, offset);
    return s.ok() ? 0 : Fail(s);
  });
}

int Pwrite(void* handle, const void* buf, uint32_t count, uint64_t offset, uint32_t flags) {
  return Guard("pwrite", [&] {
    Status s = V(handle)->Write(static_cast<const uint8_t*>(buf), count, offset,
                                (flags & NBDKIT_FLAG_FUA) != 0);
    return s.ok() ? 0 : Fail(s);
  });
}

int Flush(void* handle, uint32_t flags) {
  return Guard("flush", [&] {
    Status s = V(handle)->Flush();
    return s.ok() ? 0 : Fail(s);
  });
}

int Trim(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return Guard("trim", [&] {
    Status s = V(handle)->Trim(count, offset, (flags & NBDKIT_FLAG_FUA) != 0);
    return s.ok() ? 0 : Fail(s);
  });
}

int Zero(void* handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return Guard("zero", [&] {
    Status s = V(handle)->Zero(count, offset, (flags & NBDKIT_FLAG_MAY_TRIM) != 0,
                               (flags & NBDKIT_FLAG_FAST_ZERO) != 0,
                               (flags & NBDKIT_FLAG_FUA) != 0);
    if (s.ok()) return 0;
    if (s.err() == ENOTSUP) {  // expected for fast zero: no message in the log
      nbdkit_set_error(ENOTSUP);
      return -1;
    }
    return Fail(s);
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
    if (failed) return -1;
    return s.ok() ? 0 : Fail(s);
  });
}

struct nbdkit_plugin MakePlugin() {
  struct nbdkit_plugin p;
  std::memset(&p, 0, sizeof p);
  p.name = "s3block";
  p.longname = "nbd-s3-backend: a block device whose blocks live in S3 or a local directory";
  p.version = S3BLOCK_VERSION;
  p.description = "Serves exports whose blocks are files or S3 objects, one per block.";
  p.unload = Unload;
  p.cleanup = Cleanup;
  p.config = Config;
  p.config_complete = ConfigComplete;
  p.config_help = Config::Help();
  p.magic_config_key = "store";
  p.get_ready = GetReady;
  p.after_fork = AfterFork;
  p.dump_plugin = DumpPlugin;
  p.list_exports = ListExports;
  p.default_export = DefaultExport;
  p.open = Open;
  p.close = Close;
  p.get_size = GetSize;
  p.block_size = BlockSize;
  p.can_write = CanWrite;
  p.can_flush = CanFlush;
  p.is_rotational = IsRotational;
  p.can_trim = CanTrim;
  p.can_zero = CanZero;
  p.can_fast_zero = CanFastZero;
  p.can_fua = CanFua;
  p.can_multi_conn = CanMultiConn;
  p.can_extents = CanExtents;
  p.pread = Pread;
  p.pwrite = Pwrite;
  p.flush = Flush;
  p.trim = Trim;
  p.zero = Zero;
  p.extents = Extents;
  p.errno_is_preserved = 0;
  return p;
}

}  // namespace
}  // namespace s3block

static struct nbdkit_plugin plugin = s3block::MakePlugin();
NBDKIT_REGISTER_PLUGIN(plugin)
