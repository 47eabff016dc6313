// AWS Signature Version 4: the canonical request, the string to sign and the Authorization
// header for one HTTP request, computed with OpenSSL (HMAC-SHA256, SHA-256).
//
// The rules are S3's: the path is URI-encoded once and never normalised ("//" and "." segments
// stay as they are), query names and values are encoded and sorted, header names are lower-cased,
// values trimmed with inner runs of spaces collapsed, and repeated headers joined with ",".
//
// Thread safety: the functions here are pure and safe for concurrent use.
#ifndef S3BLOCK_S3_SIGV4_H_
#define S3BLOCK_S3_SIGV4_H_

#include <cstdint>
#include <ctime>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/digest.h"
#include "util/encoding.h"

namespace s3block {

// Keys for signing. The secret and the token are never printed.
struct AwsCredentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // empty: none
};

struct SigV4Request {
  std::string method;  // "GET", "PUT", ...
  // The path as a client names it, not yet encoded: "/bucket/exports/my disk/metadata".
  // UriEncodePath(path) is what goes on the wire and into the canonical request.
  std::string path;
  // Query parameters, not yet encoded, in any order (a flag is a name with an empty value).
  std::vector<std::pair<std::string, std::string>> query;
  // Every header to sign, with its value as sent (Host included). x-amz-date and, with a session
  // token, x-amz-security-token are added by SignV4 and must not be given here.
  std::vector<std::pair<std::string, std::string>> headers;
  // Hex SHA-256 of the body (or kUnsignedPayload); the last line of the canonical request.
  std::string payload_hash;
};

// The payload hash of a request whose body the signature does not cover.
inline constexpr char kUnsignedPayload[] = "UNSIGNED-PAYLOAD";

struct SigV4Result {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;      // hex
  std::string authorization;  // the value of the Authorization header
  // The headers SignV4 added, to send with the request: x-amz-date[, x-amz-security-token].
  std::vector<std::pair<std::string, std::string>> added_headers;
};

// Signs `request` for `region` and `service` ("s3") at `amz_date` (YYYYMMDDTHHMMSSZ, UTC).
// REQUIRES: amz_date is 16 characters as above.
SigV4Result SignV4(const SigV4Request& request, const AwsCredentials& credentials,
                   std::string_view region, std::string_view service, std::string_view amz_date);

// The x-amz-date form of a time: "20150830T123600Z".
std::string AmzDate(std::time_t t);

// Percent-encodes every byte except the unreserved A-Z a-z 0-9 - . _ ~ (and '/' when
// keep_slash), with upper-case hex: the encoding of S3 keys, query names and values.
std::string UriEncode(std::string_view s, bool keep_slash);
inline std::string UriEncodePath(std::string_view path) { return UriEncode(path, true); }

// The canonical query string: each name and value encoded, sorted by name then value, "&"-joined.
std::string CanonicalQueryString(const std::vector<std::pair<std::string, std::string>>& query);

}  // namespace s3block

#endif  // S3BLOCK_S3_SIGV4_H_
