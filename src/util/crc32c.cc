#include "util/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace s3block {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // 0x1EDC6F41 bit-reversed

// Slicing by 8: table[k][b] is the CRC of byte b followed by k zero bytes, so eight input bytes
// are folded with eight lookups instead of eight dependent shift-and-xor rounds.
struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t;
  constexpr Tables() : t() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b)
      for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
};
constexpr Tables kTables;

}  // namespace

uint32_t Crc32cTable(uint32_t crc, const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const auto& t = kTables.t;
  crc = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    // The folding below reads the bytes in little-endian order.
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
namespace {

// The crc32 instruction takes three cycles to give its result and can start one every cycle, so
// one chain of them over a buffer runs at a third of the speed the CPU can give. Long buffers are
// taken in strides of three lanes of kLane bytes: the lanes' CRCs are three independent chains,
// the last two started from zero, and they are joined by moving the first two past the bytes that
// follow them. kLane * 3 is just under 4 KiB, so a 4 KiB block is one stride and 16 bytes.
constexpr size_t kLane = 1360;
static_assert(kLane % 8 == 0, "lanes are read 8 bytes at a time");

// The (uninverted) crc32 register after n zero bytes, from register r, one instruction per 8
// bytes: used only to build the tables below.
__attribute__((target("sse4.2"))) uint32_t AfterZerosSlow(uint32_t r, size_t n) {
  uint64_t c = r;
  for (; n >= 8; n -= 8) c = _mm_crc32_u64(c, 0);
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; --n) c32 = _mm_crc32_u8(c32, 0);
  return c32;
}

// Moving a register past n zero bytes is linear in the register (over GF(2)): it is the XOR of
// what each set bit becomes, tabulated here one byte of the register at a time.
class ZeroShift {
 public:
  explicit ZeroShift(size_t n) {
    uint32_t bit[32];
    for (int i = 0; i < 32; ++i) bit[i] = AfterZerosSlow(uint32_t{1} << i, n);
    for (int k = 0; k < 4; ++k)
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t v = 0;
        for (int j = 0; j < 8; ++j)
          if (b & (1u << j)) v ^= bit[8 * k + j];
        t_[k][b] = v;
      }
  }
  uint32_t Apply(uint32_t r) const {
    return t_[0][r & 0xff] ^ t_[1][(r >> 8) & 0xff] ^ t_[2][(r >> 16) & 0xff] ^ t_[3][r >> 24];
  }

 private:
  std::array<std::array<uint32_t, 256>, 4> t_;
};

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(uint32_t crc, const void* data,
                                                          size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  if (n >= 3 * kLane) {
    static const ZeroShift past_one(kLane), past_two(2 * kLane);
    do {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        c = _mm_crc32_u64(c, Load64(p + i));
        c1 = _mm_crc32_u64(c1, Load64(p + kLane + i));
        c2 = _mm_crc32_u64(c2, Load64(p + 2 * kLane + i));
      }
      // CRC(c; A B C) = the register of (c; A) past 2 lanes ^ that of (0; B) past one ^ (0; C).
      c = past_two.Apply(static_cast<uint32_t>(c)) ^ past_one.Apply(static_cast<uint32_t>(c1)) ^
          static_cast<uint32_t>(c2);
      p += 3 * kLane;
      n -= 3 * kLane;
    } while (n >= 3 * kLane);
  }
  for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, Load64(p));
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

bool Crc32cHardwareAvailable() {
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
}
#else
uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n) {
  return Crc32cTable(crc, data, n);
}
bool Crc32cHardwareAvailable() { return false; }
#endif

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  return Crc32cHardwareAvailable() ? Crc32cHardware(crc, data, n) : Crc32cTable(crc, data, n);
}

}  // namespace s3block
