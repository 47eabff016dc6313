// Parsing and validation of values that come from outside: parameters, export names.
//
// Every function here returns a Status whose message names the offending value and says what
// would be accepted, so that it can be shown to the user as it is.
#ifndef S3BLOCK_PARAMS_H_
#define S3BLOCK_PARAMS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "s3block/status.h"

namespace s3block {

inline constexpr uint32_t kDefaultBlockSize = 4096;
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kMaxBlockSize = 16u << 20;
inline constexpr uint64_t kDefaultExportSize = 1ull << 30;
// Exports larger than this are refused: 2^63 keeps every offset computation in range.
inline constexpr uint64_t kMaxExportSize = 1ull << 62;
// Most blocks in one export: the presence map and the cache index blocks by number.
inline constexpr uint64_t kMaxExportBlocks = 1ull << 40;
inline constexpr size_t kMaxExportNameLength = 255;
inline constexpr const char* kDefaultExportName = "test_device";

// Parses a size: a decimal number of bytes with an optional suffix K, M, G, T, P or E (powers of
// 1024; a trailing "B" or "iB" is accepted: 4K, 4KB, 4KiB). "param" names the parameter in errors.
Status ParseSize(std::string_view param, std::string_view text, uint64_t* out);

// Parses a block size: a size (as ParseSize) that is a power of two from 512 to 16M.
Status ParseBlockSize(std::string_view param, std::string_view text, uint32_t* out);

// Parses a boolean: true/false, yes/no, on/off, 1/0 (case-insensitive).
Status ParseBool(std::string_view param, std::string_view text, bool* out);

// Parses a duration in seconds: a decimal number, optionally with the suffix "s" or "ms".
Status ParseSeconds(std::string_view param, std::string_view text, double* out);

// Parses a positive integer in [min, max].
Status ParseCount(std::string_view param, std::string_view text, uint64_t min, uint64_t max,
                  uint64_t* out);

// Checks that an export size is from 1 byte to kMaxExportSize; the error reads
// "<shown>: must be from 1 byte to 4E".
Status ValidateExportSize(std::string_view shown, uint64_t size);

// Checks that an export name can be used as a directory name and an object key component:
// not empty, at most 255 bytes, no '/', no control characters (bytes below 0x20 and 0x7f), no
// leading or trailing white space, not "." or "..", and valid UTF-8.
Status ValidateExportName(std::string_view name);

// Renders a name for a message: printable ASCII and printable UTF-8 characters as they are,
// every other byte (controls, invalid UTF-8, a backslash, ', and invisible characters such as
// zero-width spaces and direction overrides) as \xNN; cut at 64 bytes, never inside a character.
std::string QuoteForMessage(std::string_view text);

// Renders a byte count for people: "4096 (4K)", "1073741824 (1G)".
std::string HumanSize(uint64_t bytes);

}  // namespace s3block

#endif  // S3BLOCK_PARAMS_H_
