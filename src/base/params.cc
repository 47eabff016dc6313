#include "s3block/params.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

namespace s3block {
namespace {

std::string Quoted(std::string_view text) { return "'" + QuoteForMessage(text) + "'"; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

}  // namespace

Status ParseSize(std::string_view param, std::string_view text, uint64_t* out) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument(std::string(param) + "=" + Quoted(text) + ": " + why +
                                   " (expected bytes, or a number with a K, M, G, T, P or E suffix, e.g. 1G)");
  };
  if (text.empty()) return bad("empty value");
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec == std::errc::result_out_of_range) return bad("number too large");
  if (ec != std::errc() || ptr == begin) return bad("not a number");
  std::string_view suffix(ptr, end - ptr);
  unsigned shift = 0;
  if (!suffix.empty()) {
    char c = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    std::string_view rest = suffix.substr(1);
    switch (c) {
      case 'B': shift = 0; if (!rest.empty()) return bad("unknown suffix"); rest = {}; break;
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      case 'P': shift = 50; break;
      case 'E': shift = 60; break;
      default: return bad("unknown suffix " + Quoted(suffix));
    }
    if (!rest.empty() && !EqualsIgnoreCase(rest, "B") && !EqualsIgnoreCase(rest, "iB"))
      return bad("unknown suffix " + Quoted(suffix));
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) return bad("number too large");
  *out = value << shift;
  return Status::Ok();
}

Status ParseBlockSize(std::string_view param, std::string_view text, uint32_t* out) {
  uint64_t v = 0;
  S3B_RETURN_IF_ERROR(ParseSize(param, text, &v));
  if (v < kMinBlockSize || v > kMaxBlockSize || (v & (v - 1)) != 0) {
    return Status::InvalidArgument(std::string(param) + "=" + Quoted(text) +
                                   ": the block size must be a power of two from 512 to 16M");
  }
  *out = static_cast<uint32_t>(v);
  return Status::Ok();
}

Status ParseBool(std::string_view param, std::string_view text, bool* out) {
  for (const char* t : {"true", "yes", "on", "1"}) {
    if (EqualsIgnoreCase(text, t)) { *out = true; return Status::Ok(); }
  }
  for (const char* f : {"false", "no", "off", "0"}) {
    if (EqualsIgnoreCase(text, f)) { *out = false; return Status::Ok(); }
  }
  return Status::InvalidArgument(std::string(param) + "=" + Quoted(text) +
                                 ": expected true, false, yes, no, on, off, 1 or 0");
}

Status ParseSeconds(std::string_view param, std::string_view text, double* out) {
  std::string s(text);
  double scale = 1;
  if (s.size() > 2 && s.compare(s.size() - 2, 2, "ms") == 0) {
    scale = 0.001;
    s.resize(s.size() - 2);
  } else if (s.size() > 1 && s.back() == 's') {
    s.pop_back();
  }
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v) || v < 0 ||
      v > 1e9) {
    return Status::InvalidArgument(std::string(param) + "=" + Quoted(text) +
                                   ": expected a number of seconds, e.g. 30 or 500ms");
  }
  *out = v * scale;
  return Status::Ok();
}

Status ParseCount(std::string_view param, std::string_view text, uint64_t min, uint64_t max,
                  uint64_t* out) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || v < min || v > max) {
    return Status::InvalidArgument(std::string(param) + "=" + Quoted(text) +
                                   ": expected a whole number from " + std::to_string(min) +
                                   " to " + std::to_string(max));
  }
  *out = v;
  return Status::Ok();
}

namespace {

// The length of the UTF-8 sequence that starts with the byte text[i] (not ASCII) and its code
// point, or 0 if it is not a well-formed one (overlong, a surrogate, above U+10FFFF, cut short).
size_t Utf8At(std::string_view text, size_t i, uint32_t* cp) {
  unsigned char c = static_cast<unsigned char>(text[i]);
  size_t n;
  if ((c & 0xe0) == 0xc0) { n = 1; *cp = c & 0x1f; }
  else if ((c & 0xf0) == 0xe0) { n = 2; *cp = c & 0x0f; }
  else if ((c & 0xf8) == 0xf0) { n = 3; *cp = c & 0x07; }
  else return 0;
  if (i + n >= text.size()) return 0;
  for (size_t k = 1; k <= n; ++k) {
    unsigned char cc = static_cast<unsigned char>(text[i + k]);
    if ((cc & 0xc0) != 0x80) return 0;
    *cp = (*cp << 6) | (cc & 0x3f);
  }
  if ((n == 1 && *cp < 0x80) || (n == 2 && *cp < 0x800) || (n == 3 && *cp < 0x10000)) return 0;
  if (*cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff)) return 0;
  return n + 1;
}

// Returns true if `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    size_t n = static_cast<unsigned char>(s[i]) < 0x80 ? 1 : Utf8At(s, i, &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

Status ValidateExportSize(std::string_view shown, uint64_t size) {
  if (size == 0 || size > kMaxExportSize)
    return Status::InvalidArgument(std::string(shown) + ": must be from 1 byte to 4E");
  return Status::Ok();
}

Status ValidateExportName(std::string_view name) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("export name " + Quoted(name) + " refused: " + why);
  };
  size_t b = 0, e = name.size();
  while (b < e && IsSpace(name[b])) ++b;
  while (e > b && IsSpace(name[e - 1])) --e;
  if (b == e) return bad("it is empty");
  if (name.size() > kMaxExportNameLength)
    return bad("it is " + std::to_string(name.size()) + " bytes long; the limit is " +
               std::to_string(kMaxExportNameLength));
  if (b != 0 || e != name.size()) return bad("it begins or ends with white space");
  if (name == "." || name == "..") return bad("'.' and '..' are not names");
  for (char c : name) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '/') return bad("it contains '/'");
    if (c == '\\') return bad("it contains '\\'");
    if (u < 0x20 || u == 0x7f) return bad("it contains a control character");
  }
  if (!IsValidUtf8(name)) return bad("it is not valid UTF-8");
  return Status::Ok();
}

namespace {

// Characters shown as they are: not the C1 controls, and none of the invisible ones that can
// make a name look like another (zero-width characters, direction overrides, separators).
bool ShownAsIs(uint32_t cp) {
  if (cp < 0xa0 || cp == 0xad || cp == 0x061c) return false;
  if (cp >= 0x200b && cp <= 0x200f) return false;
  if (cp >= 0x2028 && cp <= 0x202e) return false;
  if (cp >= 0x2060 && cp <= 0x206f) return false;
  return cp != 0xfeff;
}

}  // namespace

std::string QuoteForMessage(std::string_view text) {
  std::string out;
  const size_t limit = text.size() > 64 ? 64 : text.size();
  size_t i = 0;
  while (i < limit) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    uint32_t cp = 0;
    size_t n = c >= 0x80 ? Utf8At(text, i, &cp) : 0;
    if (n > 0 && ShownAsIs(cp)) {
      if (i + n > limit) break;  // never half a character
      out.append(text.substr(i, n));
      i += n;
      continue;
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
    ++i;
  }
  if (i < text.size()) out += "...(" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::string HumanSize(uint64_t bytes) {
  static const char* kUnits[] = {"", "K", "M", "G", "T", "P", "E"};
  std::string out = std::to_string(bytes);
  if (bytes == 0) return out;
  int u = 0;
  uint64_t v = bytes;
  while (u < 6 && v % 1024 == 0) { v /= 1024; ++u; }
  if (u > 0) out += " (" + std::to_string(v) + kUnits[u] + ")";
  return out;
}

}  // namespace s3block
