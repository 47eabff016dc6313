// The log layout's objects store integers little-endian, whatever the machine.
#ifndef S3BLOCK_LOG_LITTLE_ENDIAN_H_
#define S3BLOCK_LOG_LITTLE_ENDIAN_H_

#include <cstdint>
#include <vector>

namespace s3block::log {

inline void StoreLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void StoreLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint32_t LoadLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline void AppendLe32(std::vector<uint8_t>* out, uint32_t v) {
  uint8_t b[4];
  StoreLe32(b, v);
  out->insert(out->end(), b, b + 4);
}
inline void AppendLe64(std::vector<uint8_t>* out, uint64_t v) {
  uint8_t b[8];
  StoreLe64(b, v);
  out->insert(out->end(), b, b + 8);
}

}  // namespace s3block::log

#endif  // S3BLOCK_LOG_LITTLE_ENDIAN_H_
