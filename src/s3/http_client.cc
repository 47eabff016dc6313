#include "s3/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/crc32c.h"

namespace s3block {
namespace {

struct Transfer {
  HttpResponse* response;
  size_t max_bytes;
  bool too_large = false;
  long status = 0;  // of the response whose headers are being read
};

// Whether this response's body goes to response->data rather than response->body.
bool ToData(const Transfer* t) { return t->response->data && t->status >= 200 && t->status < 300; }

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  const size_t have = ToData(t) ? t->response->data->size() : t->response->body.size();
  if (have + len > t->max_bytes) {
    t->too_large = true;
    return 0;  // makes libcurl fail the transfer with CURLE_WRITE_ERROR
  }
  if (ToData(t)) {
    // As bytes: inserting chars into a vector of uint8_t converts them one at a time.
    const auto* bytes = reinterpret_cast<const uint8_t*>(data);
    t->response->data->insert(t->response->data->end(), bytes, bytes + len);
    // Only bytes (blocks) have a running CRC: error documents and listings never need one.
    if (t->response->running_crc32c) {
      t->response->received_crc32c = Crc32c(t->response->received_crc32c, data, len);
      t->response->received_bytes += len;
    }
  } else {
    t->response->body.append(data, len);
  }
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  std::string_view line(data, len);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  if (line.rfind("HTTP/", 0) == 0) {
    // A new status line (after a 100 Continue, say): forget the previous response's headers.
    t->response->headers.clear();
    size_t sp = line.find(' ');
    t->status = sp == std::string_view::npos ? 0 : std::strtol(std::string(line.substr(sp + 1, 3)).c_str(), nullptr, 10);
    return len;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return len;
  std::string name(line.substr(0, colon));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  if (name == "content-length") {
    // Room for the whole body at once: growing it as it arrives costs copies and, at its last
    // doubling, half as much again in memory. Never more than a response may hold.
    unsigned long long n = std::strtoull(std::string(value).c_str(), nullptr, 10);
    if (n > 0 && n <= t->max_bytes) {
      if (ToData(t)) {
        t->response->data->reserve(n);
      } else {
        t->response->body.reserve(n);
      }
    }
  }
  t->response->headers.emplace_back(std::move(name), std::string(value));
  return len;
}

bool IsTransient(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

}  // namespace

void EnsureCurlInitialized() {
  static const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
  (void)rc;
}

std::string HttpResponse::Header(std::string_view name) const {
  for (auto it = headers.rbegin(); it != headers.rend(); ++it)
    if (it->first == name) return it->second;
  return "";
}

bool HttpResponse::HasHeader(std::string_view name) const {
  return std::any_of(headers.begin(), headers.end(), [&](const auto& h) { return h.first == name; });
}

HttpClient::HttpClient(HttpClientOptions options) : options_(std::move(options)) {
  EnsureCurlInitialized();
}

HttpClient::~HttpClient() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* HttpClient::Borrow(std::chrono::steady_clock::time_point wait_until, bool urgent,
                         bool* timed_out) {
  *timed_out = false;
  UniqueLock lock(&mu_);
  const size_t max = std::max<size_t>(1, options_.max_connections);
  auto free = [&]() REQUIRES(mu_) { return !idle_.empty() || created_ < max; };
  // A reader or a lease renewal does not queue behind uploads: those wait while it does.
  auto ready = [&]() REQUIRES(mu_) { return free() && (urgent || urgent_waiting_ == 0); };
  if (!ready()) {
    if (urgent) ++urgent_waiting_;
    bool got = true;
    if (wait_until == std::chrono::steady_clock::time_point::max()) {
      cv_.wait(lock.native(), ready);
    } else {
      got = cv_.wait_until(lock.native(), wait_until, ready);
    }
    if (urgent) {
      --urgent_waiting_;
      // Requests held back for this one may go now (notify_one may have woken one of them).
      if (urgent_waiting_ == 0) cv_.notify_all();
    }
    if (!got) {
      *timed_out = true;
      return nullptr;
    }
  }
  if (!idle_.empty()) {
    void* h = idle_.back();
    idle_.pop_back();
    return h;
  }
  ++created_;
  lock.Unlock();
  CURL* h = curl_easy_init();
  if (h == nullptr) {
    MutexLock relock(&mu_);
    --created_;
    cv_.notify_all();
  }
  return h;
}

void HttpClient::Return(void* handle) {
  MutexLock lock(&mu_);
  idle_.push_back(handle);
  // With urgent requests waiting, a single wake-up could go to a request that must let them go
  // first; wake all, and the urgent ones take the handle.
  if (urgent_waiting_ > 0) {
    cv_.notify_all();
  } else {
    cv_.notify_one();
  }
}

std::span<const uint8_t> HttpResponse::Body() const {
  if (data != nullptr && status >= 200 && status < 300) return *data;
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size());
}

uint32_t HttpResponse::BodyCrc32c() const {
  const std::span<const uint8_t> b = Body();
  return received_bytes == b.size() ? received_crc32c : Crc32c(0, b.data(), b.size());
}

Status HttpClient::Perform(const HttpRequest& request, HttpResponse* response, bool* transient) {
  std::vector<uint8_t>* data = response->data;
  const bool running_crc32c = response->running_crc32c;
  *response = HttpResponse{};
  response->data = data;
  response->running_crc32c = running_crc32c;
  if (data != nullptr) data->clear();
  *transient = false;
  const auto asked = std::chrono::steady_clock::now();
  bool timed_out = false;
  CURL* h = static_cast<CURL*>(Borrow(request.wait_until, request.urgent, &timed_out));
  const auto got = std::chrono::steady_clock::now();
  auto waited = [&] {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", std::chrono::duration<double>(got - asked).count());
    return std::string(buf);
  };
  if (timed_out) {
    return Status::Error(ETIMEDOUT, "waited " + waited() + " s for a free connection (all " +
                                        std::to_string(std::max<size_t>(1, options_.max_connections)) +
                                        " of connections= busy) until the request's time was up; "
                                        "not sent");
  }
  if (h == nullptr) return Status::Error(ENOMEM, "cannot create an HTTP handle");
  double timeout = request.timeout > 0 ? std::min(request.timeout, options_.request_timeout)
                                       : options_.request_timeout;
  if (request.end_by != std::chrono::steady_clock::time_point::max()) {
    const double left = std::chrono::duration<double>(request.end_by - got).count();
    if (left < 0.001) {
      Return(h);
      *transient = true;
      return Status::Error(ETIMEDOUT, "waited " + waited() +
                                          " s for a free connection, past the time the request "
                                          "had to end by; not sent");
    }
    timeout = std::min(timeout, left);
  }
  // Reset options from the previous request; the handle keeps its open connections.
  curl_easy_reset(h);

  char errbuf[CURL_ERROR_SIZE] = "";
  Transfer transfer{response, options_.max_response_bytes};
  curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);  // keys are sent exactly as signed
  curl_easy_setopt(h, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, options_.ca_file.c_str());
  long timeout_ms = std::max(1L, static_cast<long>(timeout * 1000));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                   std::min(timeout_ms, static_cast<long>(options_.connect_timeout * 1000)));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &transfer);

  struct curl_slist* headers = nullptr;
  for (const auto& [k, v] : request.headers)
    headers = curl_slist_append(headers, (k + ": " + v).c_str());
  // Never wait for a "100 Continue" (libcurl asks for one before large POST bodies).
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

  static const char kEmpty[] = "";
  if (request.method == "GET") {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  } else if (request.method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (request.method == "PUT" || request.method == "POST") {
    // The body from memory with its length: no chunked encoding and no Expect.
    const void* data = request.body.empty() ? static_cast<const void*>(kEmpty) : request.body.data();
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, data);
    if (request.method == "PUT") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
  } else {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }

  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  Return(h);

  if (rc != CURLE_OK) {
    if (transfer.too_large)
      return Status::IoError("response body larger than " + std::to_string(options_.max_response_bytes) + " bytes");
    *transient = IsTransient(rc);
    std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    // OpenSSL's words for an answer that is not TLS at all: an https:// endpoint on a port that
    // speaks plain HTTP. Asking again will not change that.
    if (rc == CURLE_SSL_CONNECT_ERROR && detail.find("wrong version number") != std::string::npos) {
      *transient = false;
      detail += " (the server does not speak TLS on this port: if it serves plain HTTP, give the "
                "endpoint as http://)";
    }
    return Status::IoError(detail);
  }
  response->status = status;
  return Status::Ok();
}

}  // namespace s3block
