// Block ids as the names of block files and objects: decimal, without leading zeros.
#ifndef S3BLOCK_UTIL_BLOCK_ID_H_
#define S3BLOCK_UTIL_BLOCK_ID_H_

#include <cstdint>
#include <string_view>

namespace s3block {

// Parses a block id: decimal digits only, no leading zeros (except "0"), at most UINT64_MAX.
// Any other spelling is not a name of ours, so that one id has one name.
bool ParseBlockId(std::string_view name, uint64_t* id);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_BLOCK_ID_H_
