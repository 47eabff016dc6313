// Hex and base64: the text forms of digests, keys and checksums in names, headers and metadata.
//
// Thread safety: pure functions, safe for concurrent use.
#ifndef S3BLOCK_UTIL_ENCODING_H_
#define S3BLOCK_UTIL_ENCODING_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace s3block {

inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Two lower-case hex digits a byte.
std::string HexEncode(std::span<const uint8_t> bytes);
// Eight lower-case hex digits, most significant first: printf's "%08x".
std::string HexUint32(uint32_t v);

// The value of one hex digit of either case, or -1.
int HexDigitValue(char c);
// Exactly 2 * out.size() hex digits of either case into out. False (out unspecified) otherwise.
bool HexDecode(std::string_view hex, std::span<uint8_t> out);
// An even number of hex digits of either case into *out. False (out unspecified) otherwise.
bool HexDecode(std::string_view hex, std::string* out);

// Standard base64 with padding (the Content-MD5 header).
std::string Base64Encode(std::span<const uint8_t> bytes);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_ENCODING_H_
