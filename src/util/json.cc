#include "util/json.h"

#include <cctype>
#include <cstdio>

namespace s3block {

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

namespace {

class LeafReader {
 public:
  LeafReader(std::string_view text, const JsonLeafFn& on_leaf) : text_(text), on_leaf_(on_leaf) {}

  bool Value() {
    SkipSpace();
    if (At('{')) return Object();
    size_t b = i_;
    while (i_ < text_.size() && text_[i_] != ',' && text_[i_] != '}' && !IsSpace(text_[i_])) ++i_;
    if (b == i_) return false;
    on_leaf_(keys_, text_.substr(b, i_ - b));
    return true;
  }

 private:
  static bool IsSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
  void SkipSpace() {
    while (i_ < text_.size() && IsSpace(text_[i_])) ++i_;
  }
  bool At(char c) const { return i_ < text_.size() && text_[i_] == c; }

  bool Object() {
    ++i_;
    SkipSpace();
    if (At('}')) {
      ++i_;
      return true;
    }
    for (;;) {
      SkipSpace();
      std::string key;
      if (!String(&key)) return false;
      SkipSpace();
      if (!At(':')) return false;
      ++i_;
      keys_.push_back(std::move(key));
      if (!Value()) return false;
      keys_.pop_back();
      SkipSpace();
      if (At(',')) {
        ++i_;
        continue;
      }
      if (At('}')) {
        ++i_;
        return true;
      }
      return false;
    }
  }

  bool String(std::string* out) {
    if (!At('"')) return false;
    ++i_;
    while (i_ < text_.size() && text_[i_] != '"') {
      if (text_[i_] == '\\' && i_ + 1 < text_.size()) ++i_;
      out->push_back(text_[i_++]);
    }
    if (i_ >= text_.size()) return false;
    ++i_;
    return true;
  }

  std::string_view text_;
  const JsonLeafFn& on_leaf_;
  size_t i_ = 0;
  std::vector<std::string> keys_;
};

}  // namespace

bool ForEachJsonLeaf(std::string_view text, const JsonLeafFn& on_leaf) {
  return LeafReader(text, on_leaf).Value();
}

}  // namespace s3block
