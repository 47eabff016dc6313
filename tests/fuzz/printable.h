// What a message shown to users and written to logs may hold, checked independently of the code
// that renders names into messages (QuoteForMessage): well-formed UTF-8, without control
// characters (C0, DEL, C1) and without the direction overrides and isolates that can make text
// read as something else.
#ifndef S3BLOCK_TESTS_FUZZ_PRINTABLE_H_
#define S3BLOCK_TESTS_FUZZ_PRINTABLE_H_

#include <cstddef>
#include <cstdint>
#include <string>

inline bool Printable(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) return false;
      ++i;
      continue;
    }
    size_t extra;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      extra = 1, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      extra = 2, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      extra = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if (cc < 0x80 || cc > 0xbf) return false;
      cp = cp << 6 | (cc & 0x3f);
    }
    const uint32_t least[] = {0, 0x80, 0x800, 0x10000};
    if (cp < least[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    if (cp < 0xa0 || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) return false;
    i += extra + 1;
  }
  return true;
}

#endif  // S3BLOCK_TESTS_FUZZ_PRINTABLE_H_
