#include "s3/s3_client.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "s3/xml.h"
#include "s3block/params.h"
#include "util/crc32c.h"
#include "util/encoding.h"

namespace s3block {
std::string Crc32cHex(std::span<const uint8_t> data) {
  return HexUint32(Crc32c(0, data.data(), data.size()));
}

bool IsHexMd5(std::string_view s) {
  uint8_t md5[16];
  return HexDecode(s, md5);
}

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kFirstBackoff = 0.05;  // seconds
constexpr double kMaxBackoff = 2.0;     // seconds
// A GET body that fails its check with the same content for this long is taken as damaged where
// it is stored (seconds; about seven attempts).
constexpr double kDamagedAfter = 5.0;
// A listing page naming a key its caller does not expect is fetched this many times in all
// before the key is taken as an object of that name.
constexpr int kListAttemptsForUnexpectedKeys = 3;

struct Endpoint {
  std::string scheme, authority, path;
};

Endpoint SplitEndpoint(const std::string& url) {
  Endpoint e;
  size_t p = url.find("://");
  e.scheme = url.substr(0, p);
  std::string rest = url.substr(p + 3);
  size_t slash = rest.find('/');
  e.authority = rest.substr(0, slash);
  if (slash != std::string::npos) e.path = rest.substr(slash);
  while (!e.path.empty() && e.path.back() == '/') e.path.pop_back();
  // The Host header leaves out the scheme's default port.
  const std::string default_port = e.scheme == "https" ? ":443" : ":80";
  if (e.authority.size() > default_port.size() &&
      e.authority.compare(e.authority.size() - default_port.size(), default_port.size(),
                          default_port) == 0)
    e.authority.resize(e.authority.size() - default_port.size());
  return e;
}

double Jitter() {
  thread_local std::mt19937 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.5, 1.0)(rng);
}

// The time `seconds` from now.
Clock::time_point DeadlineAfter(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::max(0.0, seconds)));
}

// Seconds to wait after the attempt-th attempt failed: doubling from kFirstBackoff up to
// kMaxBackoff, with jitter.
double Backoff(int attempt) {
  return std::min(kMaxBackoff, kFirstBackoff * std::ldexp(1.0, std::min(attempt - 1, 20))) * Jitter();
}


std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Unquote(std::string etag) {
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return etag;
}

// Checks a 200 GET body against Content-Length and the checksum recorded with the object (its
// CRC-32C, or the MD5 of earlier versions, or else a plain-MD5 ETag). Mismatches are reported as
// errors to retry: they come from the wire or a faulty server, not from the request.
Status VerifyBody(const HttpResponse& r, bool check_content) {
  const std::span<const uint8_t> body = r.Body();
  std::string length = r.Header("content-length");
  if (!length.empty() && length != std::to_string(body.size()))
    return Status::IoError("received " + std::to_string(body.size()) + " bytes but Content-Length is " + length);
  if (!check_content) return Status::Ok();
  std::string crc = r.Header(kCrc32cMetaHeader);
  if (!crc.empty()) {
    // Computed as the body arrived: the whole body is not read again.
    if (Lower(crc) != HexUint32(r.BodyCrc32c()))
      return Status::IoError("content does not match the CRC-32C recorded with the object (" + crc +
                             "): corrupted object or transfer");
    return Status::Ok();
  }
  // Only objects without a CRC-32C cost an MD5, and only those with a digest to compare it to.
  std::string meta = r.Header(kMd5MetaHeader);
  if (!meta.empty()) {
    if (Base64Encode(Md5(body)) != meta)
      return Status::IoError("content does not match the MD5 recorded with the object (" + meta +
                             "): corrupted object or transfer");
    return Status::Ok();
  }
  std::string etag = Unquote(r.Header("etag"));
  if (IsHexMd5(etag) && Lower(etag) != HexEncode(Md5(body)))
    return Status::IoError("content does not match its ETag " + etag + ": corrupted object or transfer");
  return Status::Ok();
}

}  // namespace

std::string S3ErrorCode(const HttpResponse& response) {
  XmlNode root;
  if (!ParseXml(response.body, &root).ok()) return "";
  return root.name == "Error" ? root.ChildText("Code") : "";
}

S3Client::S3Client(S3ClientOptions options, AwsCredentials credentials)
    : options_(std::move(options)), credentials_(std::move(credentials)) {
  std::string endpoint = options_.endpoint.empty()
                             ? "https://s3." + options_.region + ".amazonaws.com"
                             : options_.endpoint;
  endpoint_for_messages_ = endpoint;
  Endpoint e = SplitEndpoint(endpoint);
  scheme_ = e.scheme;
  if (options_.path_style) {
    host_ = e.authority;
    base_path_ = e.path + "/" + options_.bucket;
  } else {
    host_ = options_.bucket + "." + e.authority;
    base_path_ = e.path;
  }
  http_ = std::make_unique<HttpClient>(options_.http);
}

std::string S3Client::Where() const {
  return "bucket '" + options_.bucket + "' at " + endpoint_for_messages_;
}

std::string S3Client::Describe(std::string_view op, const std::string& key) const {
  return "S3 " + std::string(op) + " " + (key.empty() ? "(bucket)" : "'" + QuoteForMessage(key) + "'") +
         " in " + Where();
}

Status S3Client::ErrorFor(std::string_view op, const std::string& key, const HttpResponse& r) const {
  std::string msg = Describe(op, key) + ": HTTP " + std::to_string(r.status);
  XmlNode root;
  Status parsed = r.body.empty() ? Status::IoError("no body") : ParseXml(r.body, &root);
  if (parsed.ok() && root.name == "Error") {
    std::string code = root.ChildText("Code"), message = root.ChildText("Message");
    if (!code.empty()) msg += " " + QuoteForMessage(code);
    if (!message.empty()) msg += ": " + QuoteForMessage(message);
  } else if (!r.body.empty()) {
    msg += " (the error body is not an S3 error document: \"" +
           QuoteForMessage(std::string_view(r.body).substr(0, 64)) + "\")";
  }
  return Status::IoError(msg);
}

Status S3Client::Attempt(const Request& req, HttpResponse* response, AttemptOutcome* outcome,
                         double timeout, Clock::time_point deadline) {
  *outcome = AttemptOutcome();
  // A fenced request's time is counted from now: waiting for a connection must not carry it
  // past the end of the lease.
  const Clock::time_point end_by = timeout > 0 ? DeadlineAfter(timeout) : Clock::time_point::max();
  bool* transient = &outcome->transient;
  std::string path = base_path_;
  if (!req.key.empty()) path += "/" + req.key;
  if (path.empty()) path = "/";

  SigV4Request sreq;
  sreq.method = req.method;
  sreq.path = path;
  sreq.query = req.query;
  // Over HTTPS the body is not hashed into the signature: TLS already guarantees that what the
  // server receives is what was sent, and a SHA-256 of every block written costs more CPU than
  // anything else on the way (about 0.7 s per GiB on one core). Over plain HTTP the signature
  // is all that protects the body from being changed on the way, so it covers it.
  sreq.payload_hash = scheme_ == "https" ? std::string(kUnsignedPayload) : Sha256Hex(req.body);
  sreq.headers.emplace_back("host", host_);
  sreq.headers.emplace_back("x-amz-content-sha256", sreq.payload_hash);
  for (const auto& h : req.headers) sreq.headers.push_back(h);
  SigV4Result signature =
      SignV4(sreq, credentials_, options_.region, "s3", AmzDate(std::time(nullptr)));

  HttpRequest hreq;
  hreq.method = req.method;
  hreq.url = scheme_ + "://" + host_ + UriEncodePath(path);
  if (!req.query.empty()) hreq.url += "?" + CanonicalQueryString(req.query);
  hreq.headers = sreq.headers;
  for (const auto& h : signature.added_headers) hreq.headers.push_back(h);
  hreq.headers.emplace_back("Authorization", signature.authorization);
  hreq.body = req.body;
  hreq.wait_until = deadline;
  hreq.end_by = end_by;
  // Someone waits for a read (a client, or an export being opened), while uploads run in the
  // background: reads go first when every connection is busy.
  hreq.urgent = req.urgent || req.method == "GET" || req.method == "HEAD";

  const double sent = ServerClock::SteadyNow();
  Status s = http_->Perform(hreq, response, transient);
  if (!s.ok()) return s.Annotate(Describe(req.method, req.key));
  // The server's time, from its own answers: a 5xx may come from a proxy with another clock.
  if (response->status < 500) server_clock_.Observe(response->Header("date"), sent, ServerClock::SteadyNow());
  long st = response->status;
  if (st >= 500 || st == 429 || (st == 400 && S3ErrorCode(*response) == "RequestTimeout")) {
    *transient = true;
    return ErrorFor(req.method, req.key, *response);
  }
  // A part of an object (206) is checked against its length only: the object's checksum covers
  // the whole of it.
  if ((st == 200 || st == 206) && req.method == "GET") {
    Status v = VerifyBody(*response, req.verify_body && st == 200);
    if (!v.ok()) {
      *transient = true;
      outcome->bad_body = true;
      outcome->body_crc = response->BodyCrc32c();
      return Status::IoError(Describe(req.method, req.key) + ": " + v.message());
    }
  }
  return Status::Ok();
}

Status S3Client::Execute(const Request& req, HttpResponse* response, Clock::time_point deadline) {
  const auto start = Clock::now();
  // The attempts in a row, and since when, whose body failed its check with the same content.
  int same_bad = 0;
  uint32_t bad_crc = 0;
  Clock::time_point bad_since;
  for (int attempt = 1;; ++attempt) {
    double timeout = 0;
    if (req.fence) {
      Status f = (*req.fence)(&timeout);
      if (!f.ok()) return f.Annotate(Describe(req.method, req.key));
    }
    AttemptOutcome outcome;
    Status s = Attempt(req, response, &outcome, timeout, deadline);
    if (s.ok() || !outcome.transient) return s;
    // A body changed on the way differs from attempt to attempt (or, now and then, arrives
    // intact), and is retried. One that fails its check with the very same content every time
    // for kDamagedAfter is the object's own damage, stored or served so: that is reported then,
    // not retried for the whole retry-timeout.
    if (!outcome.bad_body) {
      same_bad = 0;
    } else if (same_bad > 0 && outcome.body_crc == bad_crc) {
      ++same_bad;
      const double bad_for = std::chrono::duration<double>(Clock::now() - bad_since).count();
      if (bad_for >= kDamagedAfter) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", bad_for);
        return Status::IoError(s.message() + " (the same content in " + std::to_string(same_bad) +
                               " attempts over " + buf +
                               " s: the object is stored damaged, or the server damages it)");
      }
    } else {
      same_bad = 1;
      bad_crc = outcome.body_crc;
      bad_since = Clock::now();
    }
    auto now = Clock::now();
    if (now >= deadline) {
      double spent = std::chrono::duration<double>(now - start).count();
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f", spent);
      return Status::IoError(s.message() + " (gave up after " + std::to_string(attempt) +
                             (attempt == 1 ? " attempt" : " attempts") + " in " + buf + " s)");
    }
    auto delay = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(Backoff(attempt)));
    std::this_thread::sleep_for(std::min(delay, deadline - now));
  }
}

Status S3Client::GetObject(const std::string& key, std::string* body, bool* found) {
  std::string etag;
  return GetObjectWithEtag(key, body, found, &etag);
}

Status S3Client::PutObject(const std::string& key, std::span<const uint8_t> body,
                           const WriteFence* fence, std::string* etag) {
  const auto deadline = DeadlineAfter(options_.retry_timeout);
  Request req{"PUT", key, {},
              {{"Content-Type", "application/octet-stream"}, {kCrc32cMetaHeader, Crc32cHex(body)}},
              body, false, fence};
  HttpResponse r;
  S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
  if (r.status != 200) return ErrorFor("PUT", key, r);
  if (etag != nullptr) *etag = Unquote(r.Header("etag"));
  return Status::Ok();
}


Status S3Client::GetObjectWithEtag(const std::string& key, std::string* body, bool* found,
                                   std::string* etag) {
  body->clear();
  HttpResponse r;
  S3B_RETURN_IF_ERROR(Get(key, &r, found, etag));
  if (*found) *body = std::move(r.body);
  return Status::Ok();
}

Status S3Client::GetObject(const std::string& key, std::vector<uint8_t>* data, bool* found,
                           std::string* etag) {
  HttpResponse r;
  r.data = data;
  std::string got_etag;
  Status s = Get(key, &r, found, etag != nullptr ? etag : &got_etag);
  if (!s.ok() || !*found) data->clear();
  return s;
}

Status S3Client::GetObjectRange(const std::string& key, uint64_t offset, uint64_t length,
                                std::vector<uint8_t>* data, bool* found) {
  *found = false;
  data->clear();
  if (length == 0) return Status::InvalidArgument("a range GET of no bytes");
  const uint64_t last = offset + std::min(length, UINT64_MAX - offset) - 1;
  Request req{"GET", key, {}, {{"Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(last)}},
              {}, true};
  HttpResponse r;
  r.data = data;
  // A part's bytes are checked by their reader (a log segment's frames have CRCs of their own);
  // a server that ignores the Range sends the whole object, whose CRC is then computed whole.
  r.running_crc32c = false;
  S3B_RETURN_IF_ERROR(Execute(req, &r, DeadlineAfter(options_.retry_timeout)));
  if (r.status == 206) {
    // The part asked for, or the part of it the object has: it must begin at `offset`.
    const std::string range = r.Header("content-range");
    const std::string from = "bytes " + std::to_string(offset) + "-";
    if (range.compare(0, from.size(), from) != 0 || data->size() > length) {
      data->clear();
      return Status::IoError(Describe("GET range", key) + ": the server sent the part '" +
                             QuoteForMessage(range) + "' for bytes " + std::to_string(offset) +
                             "-" + std::to_string(last));
    }
    *found = true;
    return Status::Ok();
  }
  if (r.status == 200) {
    // The server ignored the Range: the whole object came, checked whole; the part is cut out.
    const size_t begin = static_cast<size_t>(std::min<uint64_t>(offset, data->size()));
    const size_t end = static_cast<size_t>(std::min<uint64_t>(last + 1, data->size()));
    data->erase(data->begin() + static_cast<ptrdiff_t>(end), data->end());
    data->erase(data->begin(), data->begin() + static_cast<ptrdiff_t>(begin));
    *found = true;
    return Status::Ok();
  }
  data->clear();
  // The object ends at or before `offset` (or is empty).
  if (r.status == 416) {
    *found = true;
    return Status::Ok();
  }
  if (r.status == 404 && S3ErrorCode(r) == "NoSuchKey") return Status::Ok();
  return ErrorFor("GET range", key, r);
}

Status S3Client::HeadObject(const std::string& key, bool* found, uint64_t* size,
                            std::string* etag) {
  *found = false;
  *size = 0;
  etag->clear();
  Request req{"HEAD", key, {}, {}, {}, false};
  HttpResponse r;
  S3B_RETURN_IF_ERROR(Execute(req, &r, DeadlineAfter(options_.retry_timeout)));
  if (r.status == 404) return Status::Ok();
  if (r.status != 200) return ErrorFor("HEAD", key, r);
  const std::string length = r.Header("content-length");
  const auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), *size);
  if (length.empty() || ec != std::errc() || end != length.data() + length.size())
    return Status::IoError(Describe("HEAD", key) + ": no valid Content-Length ('" +
                           QuoteForMessage(length) + "')");
  *etag = Unquote(r.Header("etag"));
  *found = true;
  return Status::Ok();
}

Status S3Client::Get(const std::string& key, HttpResponse* r, bool* found, std::string* etag) {
  etag->clear();
  *found = false;
  Request req{"GET", key, {}, {}, {}, true};
  S3B_RETURN_IF_ERROR(Execute(req, r, DeadlineAfter(options_.retry_timeout)));
  if (r->status == 200) {
    *etag = Unquote(r->Header("etag"));
    *found = true;
    return Status::Ok();
  }
  if (r->status == 404 && S3ErrorCode(*r) == "NoSuchKey") return Status::Ok();
  return ErrorFor("GET", key, *r);
}

Status S3Client::PutObjectConditional(const std::string& key, std::span<const uint8_t> body,
                                      bool if_none_match_any, const std::string& if_match,
                                      std::string* etag, bool* precondition_failed,
                                      const WriteFence* fence) {
  *precondition_failed = false;
  etag->clear();
  // One retry-timeout for both forms of If-Match.
  const auto deadline = DeadlineAfter(options_.retry_timeout);
  const std::string crc = Crc32cHex(body);
  for (int form = 0; form < 2; ++form) {
    Request req{"PUT", key, {},
                {{"Content-Type", "application/octet-stream"}, {kCrc32cMetaHeader, crc}},
                body, false, fence};
    if (if_none_match_any) req.headers.push_back({"If-None-Match", "*"});
    if (!if_match.empty())
      req.headers.push_back({"If-Match", form == 0 ? "\"" + if_match + "\"" : if_match});
    // Conditional writes are few (the leases', a layout's commit points), and a lease renewal
    // stuck behind uploads would lose the export.
    req.urgent = true;
    HttpResponse r;
    S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
    if (r.status == 200) {
      *precondition_failed = false;  // the other form of If-Match matched
      *etag = Unquote(r.Header("etag"));
      return Status::Ok();
    }
    if (r.status == 412 || r.status == 409 || (r.status == 404 && !if_match.empty())) {
      *precondition_failed = true;
      if (if_match.empty()) return Status::Ok();
      continue;  // try the other form of If-Match once
    }
    return ErrorFor("conditional PUT", key, r);
  }
  return Status::Ok();
}

Status S3Client::CopyObject(const std::string& from_key, const std::string& to_key, bool* found,
                            const WriteFence* fence) {
  *found = false;
  const auto deadline = DeadlineAfter(options_.retry_timeout);
  std::string source = "/" + options_.bucket + "/" + UriEncodePath(from_key);
  Request req{"PUT", to_key, {}, {{"x-amz-copy-source", source}}, {}, false, fence};
  HttpResponse r;
  S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
  if (r.status == 200) {
    // A copy can fail after the 200 has been sent: the error is then in the body.
    if (r.body.find("<Error>") != std::string::npos) return ErrorFor("COPY", to_key, r);
    *found = true;
    return Status::Ok();
  }
  if (r.status == 404 && S3ErrorCode(r) == "NoSuchKey") return Status::Ok();
  return ErrorFor("COPY " + from_key + " to", to_key, r);
}

Status S3Client::DeleteObject(const std::string& key, const WriteFence* fence) {
  const auto deadline = DeadlineAfter(options_.retry_timeout);
  Request req{"DELETE", key, {}, {}, {}, false, fence};
  HttpResponse r;
  S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
  if (r.status == 204 || r.status == 200) return Status::Ok();
  if (r.status == 404 && S3ErrorCode(r) == "NoSuchKey") return Status::Ok();
  return ErrorFor("DELETE", key, r);
}

Status S3Client::DeleteObjects(const std::vector<std::string>& keys, const WriteFence* fence) {
  if (keys.empty()) return Status::Ok();
  if (keys.size() > kMaxDeleteKeys)
    return Status::InvalidArgument("DeleteObjects takes at most 1000 keys");
  const std::string what = "DeleteObjects (" + std::to_string(keys.size()) + " keys from '" +
                           QuoteForMessage(keys.front()) + "')";
  // Deleting is idempotent: an answer that does not parse (damaged on the way) has the request
  // sent again, and keys the server could not delete for a passing reason (it says InternalError,
  // SlowDown or ServiceUnavailable for them) are sent again on their own, for the retry-timeout.
  const auto deadline = DeadlineAfter(options_.retry_timeout);
  std::vector<std::string> left = keys;
  for (int attempt = 1;; ++attempt) {
    std::string xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                      "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet>";
    for (const std::string& k : left) xml += "<Object><Key>" + XmlEscape(k) + "</Key></Object>";
    xml += "</Delete>";
    Request req{"POST", "", {{"delete", ""}},
                {{"Content-Type", "application/xml"}, {"Content-MD5", Base64Encode(Md5(AsBytes(xml)))}},
                AsBytes(xml), false, fence};
    HttpResponse r;
    S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
    if (r.status != 200) return ErrorFor(what, "", r);
    XmlNode root;
    Status problem = ParseXml(r.body, &root);
    if (problem.ok()) {
      if (root.name == "Error") return ErrorFor(what, "", r);
      std::vector<std::string> again;
      const std::vector<const XmlNode*> errors = root.Children("Error");
      for (const XmlNode* e : errors) {
        const std::string code = e->ChildText("Code");
        if (code != "InternalError" && code != "SlowDown" && code != "ServiceUnavailable") {
          return Status::IoError(Describe(what, "") + ": " + std::to_string(errors.size()) +
                                 " keys not deleted, among them '" +
                                 QuoteForMessage(e->ChildText("Key")) + "': " +
                                 QuoteForMessage(code) + " " + QuoteForMessage(e->ChildText("Message")));
        }
        again.push_back(e->ChildText("Key"));
      }
      if (again.empty()) return Status::Ok();
      problem = Status::IoError(std::to_string(again.size()) + " keys not deleted, the first '" +
                                QuoteForMessage(again.front()) + "': " +
                                QuoteForMessage(errors.front()->ChildText("Code")));
      left = std::move(again);
    }
    if (Clock::now() >= deadline)
      return Status::IoError(Describe(what, "") + ": " + problem.message() + " (after " +
                             std::to_string(attempt) + " attempts)");
    std::this_thread::sleep_for(std::chrono::duration<double>(Backoff(attempt)));
  }
}

Status S3Client::ListObjects(const std::string& prefix, const std::string& delimiter,
                             const std::function<void(const std::string&, std::string_view)>& on_key,
                             const std::function<void(const std::string&)>& on_prefix,
                             const std::function<bool(const std::string&)>& key_ok) {
  const std::string what = "ListObjectsV2 prefix '" + QuoteForMessage(prefix) + "'";
  std::string token;
  for (;;) {
    Request req{"GET", "", {{"list-type", "2"}, {"prefix", prefix}, {"max-keys", std::to_string(list_page_size_)}},
                {}, {}, false};
    if (!delimiter.empty()) req.query.emplace_back("delimiter", delimiter);
    if (!token.empty()) req.query.emplace_back("continuation-token", token);
    // Nothing protects a listing on its way over plain HTTP: each page is checked before any of
    // its keys is used, and fetched again if it fails (a transfer damaged on the way differs from
    // attempt to attempt). A page that does not parse, or names a key or prefix outside the one
    // asked for, is retried for the retry-timeout. A key the caller does not expect (key_ok) is
    // fetched again a few times; if it stays, it is an object of that name, and is delivered.
    const auto deadline = DeadlineAfter(options_.retry_timeout);
    XmlNode root;
    for (int attempt = 1;; ++attempt) {
      HttpResponse r;
      S3B_RETURN_IF_ERROR(Execute(req, &r, deadline));
      if (r.status != 200) return ErrorFor(what, "", r);
      root = XmlNode();
      Status page = ParseXml(r.body, &root);
      if (page.ok() && root.name != "ListBucketResult")
        page = Status::IoError("unexpected response <" + QuoteForMessage(root.name) + ">");
      bool unexpected_key = false;
      if (page.ok()) {
        for (const XmlNode* c : root.Children("Contents")) {
          const std::string key = c->ChildText("Key");
          if (key.compare(0, prefix.size(), prefix) != 0) {
            page = Status::IoError("listed key '" + QuoteForMessage(key) + "' is outside the prefix");
            break;
          }
          if (key_ok && !key_ok(key)) unexpected_key = true;
        }
        for (const XmlNode* c : root.Children("CommonPrefixes"))
          if (c->ChildText("Prefix").compare(0, prefix.size(), prefix) != 0)
            page = Status::IoError("listed prefix '" + QuoteForMessage(c->ChildText("Prefix")) +
                                   "' is outside the prefix");
      }
      if (page.ok() && (!unexpected_key || attempt >= kListAttemptsForUnexpectedKeys)) break;
      if (!page.ok() && Clock::now() >= deadline)
        return Status::IoError(Describe(what, "") + ": " + page.message() + " (after " +
                               std::to_string(attempt) + " attempts)");
      std::this_thread::sleep_for(std::chrono::duration<double>(Backoff(attempt)));
    }
    for (const XmlNode* c : root.Children("Contents")) {
      if (!on_key) continue;
      on_key(c->ChildText("Key"), Unquote(c->ChildText("ETag")));
    }
    for (const XmlNode* c : root.Children("CommonPrefixes"))
      if (on_prefix) on_prefix(c->ChildText("Prefix"));
    if (root.ChildText("IsTruncated") != "true") return Status::Ok();
    std::string next = root.ChildText("NextContinuationToken");
    if (next.empty() || next == token)
      return Status::IoError(Describe(what, "") + ": truncated listing without a new continuation token");
    token = std::move(next);
  }
}

Status S3Client::CheckBucket(const std::string& prefix, double retry_timeout) {
  Request req{"GET", "", {{"list-type", "2"}, {"prefix", prefix}, {"max-keys", "1"}}, {}, {}, false};
  HttpResponse r;
  Status s = Execute(req, &r, DeadlineAfter(retry_timeout));
  if (!s.ok()) {
    return Status::IoError("cannot use " + Where() + ": " +
                           s.message().substr(s.message().find(": ") == std::string::npos
                                                  ? 0
                                                  : s.message().find(": ") + 2));
  }
  if (r.status == 200) return Status::Ok();
  std::string code = S3ErrorCode(r);
  std::string head = "cannot use " + Where() + ": ";
  if (code == "NoSuchBucket" || (r.status == 404 && code.empty()))
    return Status::IoError(head + "the bucket does not exist (HTTP 404 " + code + ")");
  if (code == "InvalidAccessKeyId")
    return Status::IoError(head + "the server does not know the access key '" +
                           QuoteForMessage(credentials_.access_key) + "' (HTTP 403 InvalidAccessKeyId)");
  if (code == "SignatureDoesNotMatch")
    return Status::IoError(head + "the secret key is wrong for access key '" +
                           QuoteForMessage(credentials_.access_key) + "' (HTTP 403 SignatureDoesNotMatch)");
  if (code == "AccessDenied" || r.status == 403)
    return Status::IoError(head + "access denied to access key '" + QuoteForMessage(credentials_.access_key) +
                           "' (HTTP " + std::to_string(r.status) + " " + code + ")");
  if (r.status == 301 || code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed")
    return Status::IoError(head + "the bucket is in another region than region=" + options_.region +
                           " (HTTP " + std::to_string(r.status) + " " + code + "); set region= to the bucket's");
  return ErrorFor("ListObjectsV2", "", r).Annotate("cannot use " + Where());
}

}  // namespace s3block
