#include "base/object_transport.h"

#include "s3block/params.h"

namespace s3block {

Status ValidateObjectKey(std::string_view key) {
  auto bad = [&](const char* why) {
    return Status::InvalidArgument("object key '" + QuoteForMessage(key) + "' refused: " + why);
  };
  if (key.empty()) return bad("it is empty");
  if (key.size() > kMaxObjectKeyBytes) return bad("it is longer than 1024 bytes");
  if (key.front() == '/') return bad("it is absolute");
  for (char c : key) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return bad("it contains a control character");
  }
  size_t start = 0;
  for (;;) {
    const size_t slash = key.find('/', start);
    const std::string_view part =
        key.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part.empty()) return bad("it has an empty component");
    if (part == "." || part == "..") return bad("it has a '.' or '..' component");
    if (slash == std::string_view::npos) {
      if (part.starts_with(".tmp.")) return bad("a name beginning with '.tmp.' is a temporary file's");
      return Status::Ok();
    }
    start = slash + 1;
  }
}

}  // namespace s3block
