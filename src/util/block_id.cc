#include "util/block_id.h"

#include <charconv>

namespace s3block {

bool ParseBlockId(std::string_view name, uint64_t* id) {
  if (name.empty() || name.size() > 20 || (name.size() > 1 && name[0] == '0')) return false;
  for (char c : name)
    if (c < '0' || c > '9') return false;
  auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), *id);
  return ec == std::errc() && p == name.data() + name.size();
}

}  // namespace s3block
