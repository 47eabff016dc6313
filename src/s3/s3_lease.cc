// The S3 store's export lease: one writer per export across machines, with conditional writes.
//
// The lease object (exports/<name>/lease) holds "holder=", "token=" and "expires=" lines. It is
// created with If-None-Match: * (so exactly one of two racing servers gets it), renewed with
// If-Match on the ETag of our own last write (so a server that has lost it finds out instead of
// overwriting the new holder's), and deleted on release. A lease whose expiry time has passed is
// taken over with If-Match on the ETag read, so two servers taking over at once cannot both win.
// The expiry is a time of the S3 server's clock, as its Date headers tell it (ServerClock): the
// holder writes one that it is sure comes after its lease stops being valid here, and another
// server takes over only once it is sure that the server's time has passed it. The machines'
// own clocks need not agree (S3 itself accepts clocks up to 15 minutes off); only a server that
// sends no Date header leaves each machine to go by its own wall clock.
// A lease left by a crashed process of this same machine (same host name and boot, and its pid
// no longer runs with the recorded start time) is taken over at once.
#include <openssl/rand.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <cstring>
#include <condition_variable>
#include <thread>

#include "s3/s3_client.h"
#include "s3/s3_store.h"
#include "s3block/params.h"
#include "util/encoding.h"
#include "util/host.h"
#include "util/mutex.h"

namespace s3block {

// Shared by an export's lease and the store's fence (S3Store::CheckLease): until when the lease
// is valid, on the steady clock, whether another server has taken it over, and whether it was
// released. The store keeps it after the lease is gone: once this store has held an export's
// lease, it changes the export only while it holds it again.
struct S3Store::LeaseState {
  std::atomic<std::chrono::steady_clock::rep> valid_until_ticks{0};
  std::atomic<bool> lost{false};
  std::atomic<bool> released{false};
};

namespace {

// A request that changes an export starts only with at least this much of its lease left.
constexpr double kLeaseMinLeft = 0.5;

// Until when a lease sent at `now` is valid here: a second short of its span, to spare.
std::chrono::steady_clock::time_point ValidUntil(std::chrono::steady_clock::time_point now,
                                                 double timeout) {
  return now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                   std::chrono::duration<double>(timeout - 1.0));
}

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// The S3 server's time at steady time `now` (seconds since the epoch), as bounds: from the Date
// headers of its answers, or, if none carried one, this machine's wall clock for both.
void ServerTime(const S3Client& client, Clock::time_point now, double* earliest, double* latest) {
  if (client.server_clock().Bounds(Seconds(now), earliest, latest)) return;
  *earliest = *latest =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The expiry to write in a lease sent at steady time `sent`: a whole second of the server's
// clock that comes, for sure, after the moment the lease stops being valid here
// (ValidUntil(sent, timeout)), drift included.
int64_t ExpiryFor(const S3Client& client, Clock::time_point sent, double timeout) {
  double earliest = 0, latest = 0;
  ServerTime(client, sent, &earliest, &latest);
  return static_cast<int64_t>(std::ceil(latest + (timeout - 1.0) * (1 + ServerClock::kMaxDrift)));
}

// Seconds until the server's time is for sure past `expires`: a lease may be taken over once
// this is 0 or less.
double SecondsLeft(const S3Client& client, int64_t expires) {
  double earliest = 0, latest = 0;
  ServerTime(client, Clock::now(), &earliest, &latest);
  return static_cast<double>(expires) - earliest;
}

struct LeaseDoc {
  std::string holder, token;
  int64_t expires = 0;
  // Identity of the holding process, so that a server restarted on the same machine after a
  // crash (kill -9) can tell that the holder is dead without waiting for the lease to expire.
  std::string host, boot_id, start_time;
  int64_t pid = 0;
};

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s, '\0');
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot. A pid that is
// reused by another process has another start time.
std::string ProcessStartTime(int64_t pid) {
  std::string stat = ReadSmallFile("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return "";
  std::istringstream in(stat.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 22 && (in >> field); ++i) {
    if (i == 22) return field;
  }
  return "";
}

void FillIdentity(LeaseDoc* d) {
  d->host = HostName();
  d->boot_id = ReadSmallFile("/proc/sys/kernel/random/boot_id");
  d->pid = ::getpid();
  d->start_time = ProcessStartTime(d->pid);
}

// True if the lease was written by a process of this machine, since its last boot, that no
// longer runs.
bool HolderIsDeadHere(const LeaseDoc& d) {
  if (d.host.empty() || d.boot_id.empty() || d.pid <= 0 || d.start_time.empty()) return false;
  if (d.host != HostName() || d.boot_id != ReadSmallFile("/proc/sys/kernel/random/boot_id"))
    return false;
  return ProcessStartTime(d.pid) != d.start_time;
}

std::string RandomToken() {
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof raw) != 1) {
    // Fall back on time and address: the token only has to differ between servers.
    uint64_t t = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
    std::memcpy(raw, &t, 8);
    uint64_t p = reinterpret_cast<uintptr_t>(&t);
    std::memcpy(raw + 8, &p, 8);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : raw) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 15]);
  }
  return s;
}

std::string Serialize(const LeaseDoc& d) {
  std::string holder = d.holder;
  for (char& c : holder)
    if (c == '\n' || c == '\r') c = ' ';
  return "holder=" + holder + "\ntoken=" + d.token + "\nexpires=" + std::to_string(d.expires) +
         "\nhost=" + d.host + "\nboot-id=" + d.boot_id + "\npid=" + std::to_string(d.pid) +
         "\nstart-time=" + d.start_time + "\n";
}

LeaseDoc Parse(const std::string& text) {
  LeaseDoc d;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "holder") d.holder = v;
    else if (k == "token") d.token = v;
    else if (k == "expires") d.expires = std::strtoll(v.c_str(), nullptr, 10);
    else if (k == "host") d.host = v;
    else if (k == "boot-id") d.boot_id = v;
    else if (k == "pid") d.pid = std::strtoll(v.c_str(), nullptr, 10);
    else if (k == "start-time") d.start_time = v;
  }
  if (d.holder.empty()) d.holder = "another server";
  return d;
}

class S3Lease : public ExportLease {
 public:
  S3Lease(std::shared_ptr<const void> keep_alive, S3Client* client, std::string key, std::string export_name, LeaseDoc doc,
          std::string etag, double timeout, Clock::time_point valid_until,
          std::shared_ptr<S3Store::LeaseState> state)
      : keep_alive_(std::move(keep_alive)), client_(client), key_(std::move(key)), export_name_(std::move(export_name)),
        doc_(std::move(doc)), etag_(std::move(etag)), timeout_(timeout), valid_until_(valid_until),
        state_(std::move(state)) {
    state_->valid_until_ticks.store(valid_until_.time_since_epoch().count());
    renewer_ = std::thread([this] { RenewLoop(); });
  }

  ~S3Lease() override {
    // Nothing more is stored under this lease, from now on: what a cache still holds would land
    // after the lease is gone, when another server may hold it.
    state_->released.store(true, std::memory_order_release);
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    cv_.notify_all();
    renewer_.join();
    // Release: delete the lease object if it is still ours. (The renewer is gone: lost_ needs
    // no lock now, and the analysis does not check destructors.)
    if (lost_) return;
    // Still valid for a good while: no one else can hold it, nor take it before the DELETE
    // lands (any more than between a GET and a DELETE).
    if (Clock::now() + std::chrono::duration<double>(timeout_ / 2) < valid_until_) {
      (void)client_->DeleteObject(key_);
      return;
    }
    std::string body, etag;
    bool found = false;
    if (client_->GetObjectWithEtag(key_, &body, &found, &etag).ok() && found &&
        Parse(body).token == doc_.token) {
      (void)client_->DeleteObject(key_);
    }
  }

  Status Valid() const override {
    // Every write and flush asks: the answer "valid" comes from two atomics, without the mutex
    // the renewer holds around its bookkeeping. The message of a lost lease is built under it.
    if (!state_->lost.load(std::memory_order_acquire) &&
        Clock::now().time_since_epoch().count() <= state_->valid_until_ticks.load(std::memory_order_acquire))
      return Status::Ok();
    MutexLock lock(&mu_);
    if (lost_) return Status::IoError(lost_reason_);
    if (Clock::now() > valid_until_) {
      return Status::IoError("the lease of export '" + QuoteForMessage(export_name_) +
                             "' could not be renewed in time; refusing to write while another "
                             "server may have taken it over");
    }
    return Status::Ok();
  }

 private:
  void RenewLoop() EXCLUDES(mu_) {
    UniqueLock lock(&mu_);
    // Renewed four times a lease's span: a renewal that fails is tried again every second, and
    // the lease keeps at least a second to spare meanwhile at lease-timeout=3.
    auto interval = std::chrono::duration<double>(timeout_ / 4);
    while (!stop_ && !lost_) {
      cv_.wait_for(lock.native(), interval, [this]() REQUIRES(mu_) { return stop_; });
      if (stop_) return;
      const auto started = Clock::now();
      LeaseDoc next = doc_;
      next.expires = ExpiryFor(*client_, started, timeout_);
      std::string etag = etag_;
      lock.Unlock();
      std::string new_etag;
      bool failed = false;
      Status s = client_->PutObjectConditional(key_, AsBytes(Serialize(next)), false, etag,
                                               &new_etag, &failed);
      bool landed_before = false;
      if (s.ok() && failed) {
        // Our own earlier renewal may have landed with its answer lost: check the token. Its
        // expiry, not this one's, is stored, so the validity stays as it is and the lease is
        // renewed again at once, on the stored ETag.
        std::string body, cur;
        bool found = false;
        if (client_->GetObjectWithEtag(key_, &body, &found, &cur).ok() && found &&
            Parse(body).token == next.token) {  // doc_ with a new expiry: its token
          landed_before = true;
          new_etag = cur;
        }
      }
      lock.Lock();
      if (landed_before) {
        etag_ = new_etag;
        interval = std::chrono::duration<double>(0);
      } else if (s.ok() && !failed) {
        etag_ = new_etag;
        doc_ = next;
        // Count validity from when the renewal was sent: the server may have applied it at once.
        valid_until_ = ValidUntil(started, timeout_);
        state_->valid_until_ticks.store(valid_until_.time_since_epoch().count(),
                                        std::memory_order_release);
        interval = std::chrono::duration<double>(timeout_ / 4);
      } else if (s.ok() && failed) {
        lost_ = true;
        lost_reason_ = "the lease of export '" + QuoteForMessage(export_name_) +
                       "' was taken over by another server; refusing to write";
        state_->lost.store(true, std::memory_order_release);
      } else {
        interval = std::chrono::duration<double>(1.0);  // try again soon
      }
    }
  }

  const std::shared_ptr<const void> keep_alive_;  // the store, which owns client_
  S3Client* const client_;
  const std::string key_, export_name_;
  mutable Mutex mu_;
  std::condition_variable cv_;
  LeaseDoc doc_ GUARDED_BY(mu_);
  std::string etag_ GUARDED_BY(mu_);
  const double timeout_;
  Clock::time_point valid_until_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  bool lost_ GUARDED_BY(mu_) = false;
  // Copies of valid_until_ (in clock ticks) and lost_, stored under mu_ when they change and read
  // without it by Valid() and by the store's fence.
  const std::shared_ptr<S3Store::LeaseState> state_;
  std::string lost_reason_ GUARDED_BY(mu_);
  std::thread renewer_;
};

}  // namespace

std::string S3Store::LeaseKey(std::string_view export_name) const {
  return ExportPrefix(export_name) + "lease";
}

Status S3Store::AcquireLease(std::string_view export_name, const std::string& holder, bool force,
                             std::unique_ptr<ExportLease>* out) {
  if (conditional_writes_.load() < 0) return IgnoresConditions();
  const std::string key = LeaseKey(export_name);
  LeaseDoc doc;
  doc.holder = holder;
  doc.token = RandomToken();
  FillIdentity(&doc);
  // Before each request that may take the lease: it expires (for other servers, on the wall
  // clock) and stops being valid here (on the steady clock) lease_timeout from now, before the
  // server can have applied it.
  Clock::time_point valid_until;
  auto sending = [&] {
    const auto now = Clock::now();
    doc.expires = ExpiryFor(*client_, now, lease_timeout_);
    valid_until = ValidUntil(now, lease_timeout_);
  };
  auto make = [&](const std::string& etag) {
    auto state = std::make_shared<LeaseState>();
    auto lease = std::make_unique<S3Lease>(shared_from_this(), client_.get(), key,
                                           std::string(export_name), doc, etag, lease_timeout_,
                                           valid_until, state);
    RegisterLease(export_name, std::move(state));
    return lease;
  };
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::string etag;
    bool failed = false;
    sending();
    S3B_RETURN_IF_ERROR(client_->PutObjectConditional(key, AsBytes(Serialize(doc)), true, "", &etag, &failed));
    if (failed) conditional_writes_.store(1);
    if (!failed && conditional_writes_.load() == 0) {
      // The first lease of this process: the same PUT again must be refused, or the server
      // ignores If-None-Match and would let two servers hold one lease.
      std::string again;
      bool refused = false;
      Status s =
          client_->PutObjectConditional(key, AsBytes(Serialize(doc)), true, "", &again, &refused);
      if (s.ok()) conditional_writes_.store(refused ? 1 : -1);
      if (!s.ok() || !refused) {
        (void)client_->DeleteObject(key);  // ours alone, just made
        return s.ok() ? IgnoresConditions() : s;
      }
    }
    if (!failed) {
      *out = make(etag);
      return Status::Ok();
    }
    std::string body, cur_etag;
    bool found = false;
    S3B_RETURN_IF_ERROR(client_->GetObjectWithEtag(key, &body, &found, &cur_etag));
    if (!found) continue;  // released between our two requests: try again
    LeaseDoc cur = Parse(body);
    // Our own token: a PUT of an earlier round landed and its answer was lost. What is stored is
    // that round's expiry, earlier than this round's validity: it is replaced like another's.
    const bool ours = cur.token == doc.token;
    const double left = SecondsLeft(*client_, cur.expires);
    if (!ours && left > 0 && !force && !HolderIsDeadHere(cur)) {
      return Status::Busy("export '" + QuoteForMessage(export_name) + "' in " + Describe() +
                          " is in use by " + cur.holder + " (its lease expires in " +
                          std::to_string(static_cast<int64_t>(std::ceil(left))) +
                          " s unless renewed); stop that "
                          "server first, or if it is dead give force=true (s3block: --force)");
    }
    sending();
    S3B_RETURN_IF_ERROR(
        client_->PutObjectConditional(key, AsBytes(Serialize(doc)), false, cur_etag, &etag, &failed));
    if (!failed) {
      *out = make(etag);
      return Status::Ok();
    }
  }
  return Status::Busy("export '" + QuoteForMessage(export_name) + "' in " + Describe() +
                      ": another server is taking its lease at the same time");
}

Status S3Store::IgnoresConditions() const {
  return Status::NotSupported("the S3 server at " + client_->Where() +
                              " ignores conditional writes (If-None-Match), so a second server "
                              "on the same export cannot be detected");
}

void S3Store::RegisterLease(std::string_view export_name, std::shared_ptr<LeaseState> state) {
  MutexLock lock(&leases_mu_);
  leases_[std::string(export_name)] = state;
}

Status S3Store::CheckLease(std::string_view export_name, double* seconds_left) const {
  *seconds_left = 0;
  std::shared_ptr<LeaseState> state;
  {
    MutexLock lock(&leases_mu_);
    auto it = leases_.find(export_name);
    if (it != leases_.end()) state = it->second;
  }
  if (!state) return Status::Ok();  // never leased here (read-only, or no conditional writes)
  if (state->released.load(std::memory_order_acquire)) {
    return Status::IoError("this server released the lease of export '" +
                           QuoteForMessage(export_name) + "'; storing nothing more in it");
  }
  if (state->lost.load(std::memory_order_acquire)) {
    return Status::IoError("the lease of export '" + QuoteForMessage(export_name) +
                           "' was taken over by another server; storing nothing more in it");
  }
  const Clock::duration left(state->valid_until_ticks.load(std::memory_order_acquire) -
                             Clock::now().time_since_epoch().count());
  const double secs = std::chrono::duration<double>(left).count();
  if (secs < kLeaseMinLeft) {
    return Status::IoError("the lease of export '" + QuoteForMessage(export_name) +
                           "' could not be renewed in time; storing nothing in it while another "
                           "server may take it over");
  }
  *seconds_left = secs;
  return Status::Ok();
}

Status S3Store::QueryLease(std::string_view export_name, std::string* holder) {
  holder->clear();
  std::string body, etag;
  bool found = false;
  S3B_RETURN_IF_ERROR(client_->GetObjectWithEtag(LeaseKey(export_name), &body, &found, &etag));
  if (!found) return Status::Ok();
  LeaseDoc d = Parse(body);
  if (SecondsLeft(*client_, d.expires) > 0) *holder = d.holder;
  return Status::Ok();
}

}  // namespace s3block
