#include "util/host.h"

#include <unistd.h>

namespace s3block {

std::string HostName() {
  char host[256] = "";
  if (::gethostname(host, sizeof host - 1) != 0) return "";
  host[sizeof host - 1] = '\0';
  return host;
}

}  // namespace s3block
