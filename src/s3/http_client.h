// HttpClient: blocking HTTP requests over a pool of libcurl easy handles.
//
// Each Perform borrows a handle from the pool (waiting if `max_connections` are busy), so at most
// that many requests are in flight, and returns it afterwards. A request with a deadline
// (wait_until) waits no longer than that, and an urgent request (one a client or a lease waits
// for) gets the next free handle before the others (background uploads). A handle keeps its connection open
// between requests, so a steady load reuses a set of kept-alive connections instead of opening
// one per request. Bodies are sent from memory as a fixed-length body (never
// "Expect: 100-continue"); responses are read into memory.
//
// HTTPS always verifies the server's certificate and host name (ca_file adds a private CA);
// there is no switch to turn that off. Redirects are not followed (S3 answers a wrong region
// with a 301 the caller must see).
//
// Thread safety: safe for concurrent use; each request uses its own handle.
#ifndef S3BLOCK_S3_HTTP_CLIENT_H_
#define S3BLOCK_S3_HTTP_CLIENT_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "s3block/status.h"
#include "util/mutex.h"

namespace s3block {

struct HttpClientOptions {
  std::string ca_file;            // empty: the system's CA certificates
  double request_timeout = 30;    // seconds for a whole request
  double connect_timeout = 10;    // seconds to connect (capped by request_timeout)
  size_t max_connections = 64;    // requests in flight at once (handles in the pool)
  size_t max_response_bytes = 64u << 20;  // a longer body fails the request
};

struct HttpRequest {
  std::string method;  // GET, HEAD, PUT, POST, DELETE
  std::string url;     // already encoded
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const uint8_t> body;  // sent for PUT and POST; must outlive Perform
  // Seconds this request may take at most, if fewer than the client's request_timeout (0: that),
  // counted from when it has a connection.
  double timeout = 0;
  // The request fails with ETIMEDOUT, unsent, if it has had to wait for a free connection until
  // this time (a retry deadline: time spent queueing for a connection counts against it).
  std::chrono::steady_clock::time_point wait_until = std::chrono::steady_clock::time_point::max();
  // The request must be over by this time, however long it waited for a connection (a lease's
  // end): its timeout is cut to what is left then, and if nothing is left it is not sent.
  std::chrono::steady_clock::time_point end_by = std::chrono::steady_clock::time_point::max();
  // Gets a free connection before requests that are not urgent.
  bool urgent = false;
};

struct HttpResponse {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  // When set before Perform: the body of a 2xx response is read into *data instead of `body`
  // (sized from Content-Length before it arrives), so that a block needs no copy from a string
  // into bytes; other responses' bodies (S3 error documents) still go to `body`. Perform keeps
  // the pointer (and running_crc32c) and empties *data first.
  std::vector<uint8_t>* data = nullptr;

  // The body received: *data if it was read there, else `body`.
  std::span<const uint8_t> Body() const;

  // The CRC-32C of a body read into *data, computed piece by piece as it arrives (while it is
  // still in the CPU's cache), and how many bytes it covers; bodies read into `body` have none.
  // BodyCrc32c is that CRC when it covers exactly Body(), and otherwise computes it.
  // Set false before Perform when the body's CRC will not be asked for (a part of an object:
  // the object's CRC does not cover it), or only rarely: BodyCrc32c then computes it.
  bool running_crc32c = true;
  uint32_t received_crc32c = 0;
  size_t received_bytes = 0;
  uint32_t BodyCrc32c() const;

  // The value of the last header with this (lower-case) name, or "".
  std::string Header(std::string_view name) const;
  bool HasHeader(std::string_view name) const;
};

// Initialises libcurl for the process; called by the HttpClient constructor. The first call
// must happen before any other thread uses libcurl (it is not thread-safe in old libcurls).
void EnsureCurlInitialized();

class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends one request and reads the whole response. Returns OK whenever an HTTP response arrived,
  // whatever its status. Otherwise returns EIO with libcurl's reason and sets *transient: true
  // for failures a retry may cure (connection refused or reset, timeout, truncated response),
  // false for those it cannot (bad certificate, unknown host, malformed URL, body too large).
  // A request whose wait_until passed while it waited for a connection returns ETIMEDOUT
  // (*transient false: its time is up); one whose end_by passed then, ETIMEDOUT with *transient
  // true (the caller decides whether it has time for another attempt).
  Status Perform(const HttpRequest& request, HttpResponse* response, bool* transient);

  const HttpClientOptions& options() const { return options_; }

 private:
  // A handle, or nullptr: *timed_out if wait_until passed first, else libcurl had no memory.
  void* Borrow(std::chrono::steady_clock::time_point wait_until, bool urgent, bool* timed_out)
      EXCLUDES(mu_);
  void Return(void* handle) EXCLUDES(mu_);

  const HttpClientOptions options_;
  Mutex mu_;
  std::condition_variable cv_;
  std::vector<void*> idle_ GUARDED_BY(mu_);  // CURL* handles with their open connections
  size_t created_ GUARDED_BY(mu_) = 0;
  size_t urgent_waiting_ GUARDED_BY(mu_) = 0;  // urgent requests waiting for a handle
};

}  // namespace s3block

#endif  // S3BLOCK_S3_HTTP_CLIENT_H_
