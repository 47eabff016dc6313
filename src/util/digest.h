// Digests computed with OpenSSL: MD5 (S3's ETag and Content-MD5, the disk cache's copy names),
// SHA-256 and HMAC-SHA256 (request signing).
//
// Thread safety: pure functions, safe for concurrent use.
#ifndef S3BLOCK_UTIL_DIGEST_H_
#define S3BLOCK_UTIL_DIGEST_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace s3block {

std::vector<uint8_t> Md5(std::span<const uint8_t> data);
// SHA-256 as lower-case hex.
std::string Sha256Hex(std::string_view data);
std::string Sha256Hex(std::span<const uint8_t> data);
std::vector<uint8_t> HmacSha256(std::span<const uint8_t> key, std::string_view data);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_DIGEST_H_
