// The JSON the admin command prints and the stats file: strings quoted and escaped.
//
// Thread safety: pure functions, safe for concurrent use.
#ifndef S3BLOCK_UTIL_JSON_H_
#define S3BLOCK_UTIL_JSON_H_

#include <string>
#include <string_view>

namespace s3block {

// s as a JSON string, quotes included: '"' and '\' escaped, \n \r \t by name, other control
// characters as \u00XX. Other bytes (UTF-8 included) pass as they are.
std::string JsonString(std::string_view s);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_JSON_H_
