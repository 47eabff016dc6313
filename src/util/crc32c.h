// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI, ext4 and S3's
// x-amz-checksum-crc32c: the checksum of blocks stored with checksum=crc32c.
//
// Crc32c uses the CPU's crc32 instruction where it has one (SSE4.2) and a table otherwise; both
// give the same values. Thread safety: pure functions, safe for concurrent use.
#ifndef S3BLOCK_UTIL_CRC32C_H_
#define S3BLOCK_UTIL_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace s3block {

// Extends `crc` (the value returned for the bytes before; 0 to start) over [data, data + n).
// Crc32c(0, "123456789", 9) == 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The two implementations, for tests and measurements. Crc32cHardware REQUIRES
// Crc32cHardwareAvailable().
uint32_t Crc32cTable(uint32_t crc, const void* data, size_t n);
uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n);
bool Crc32cHardwareAvailable();

}  // namespace s3block

#endif  // S3BLOCK_UTIL_CRC32C_H_
