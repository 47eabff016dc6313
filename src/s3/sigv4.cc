#include "s3/sigv4.h"

#include <algorithm>
#include <cctype>
#include <map>

namespace s3block {
namespace {

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Trims leading and trailing white space and collapses inner runs of spaces to one.
std::string CanonicalHeaderValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string AmzDate(std::time_t t) {
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string UriEncode(std::string_view s, bool keep_slash) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string CanonicalQueryString(const std::vector<std::pair<std::string, std::string>>& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [k, v] : query) encoded.emplace_back(UriEncode(k, false), UriEncode(v, false));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [k, v] : encoded) {
    if (!out.empty()) out.push_back('&');
    out += k;
    out.push_back('=');
    out += v;
  }
  return out;
}

SigV4Result SignV4(const SigV4Request& request, const AwsCredentials& credentials,
                   std::string_view region, std::string_view service, std::string_view amz_date) {
  SigV4Result r;
  r.added_headers.emplace_back("x-amz-date", std::string(amz_date));
  if (!credentials.session_token.empty())
    r.added_headers.emplace_back("x-amz-security-token", credentials.session_token);

  // Lower-cased names, sorted; repeated headers joined in the order given.
  std::map<std::string, std::string> headers;
  auto add = [&](const std::string& name, const std::string& value) {
    std::string key = ToLower(name);
    std::string v = CanonicalHeaderValue(value);
    auto it = headers.find(key);
    if (it == headers.end()) headers.emplace(std::move(key), std::move(v));
    else it->second += "," + v;
  };
  for (const auto& [k, v] : request.headers) add(k, v);
  for (const auto& [k, v] : r.added_headers) add(k, v);

  std::string canonical_headers, signed_headers;
  for (const auto& [k, v] : headers) {
    canonical_headers += k + ":" + v + "\n";
    if (!signed_headers.empty()) signed_headers.push_back(';');
    signed_headers += k;
  }

  std::string path = request.path.empty() ? "/" : request.path;
  r.canonical_request = request.method + "\n" + UriEncodePath(path) + "\n" +
                        CanonicalQueryString(request.query) + "\n" + canonical_headers + "\n" +
                        signed_headers + "\n" + request.payload_hash;

  std::string date(amz_date.substr(0, 8));
  std::string scope = date + "/" + std::string(region) + "/" + std::string(service) + "/aws4_request";
  r.string_to_sign = std::string(kAlgorithm) + "\n" + std::string(amz_date) + "\n" + scope + "\n" +
                     Sha256Hex(r.canonical_request);

  std::string secret = "AWS4" + credentials.secret_key;
  std::vector<uint8_t> key = HmacSha256(AsBytes(secret), date);
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  key = HmacSha256(key, "aws4_request");
  r.signature = HexEncode(HmacSha256(key, r.string_to_sign));
  r.authorization = std::string(kAlgorithm) + " Credential=" + credentials.access_key + "/" + scope +
                    ", SignedHeaders=" + signed_headers + ", Signature=" + r.signature;
  return r;
}

}  // namespace s3block
