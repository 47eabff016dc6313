// s3block-param-list: makes the plugin's manual from its POD source, putting in the parameter
// list made from the parameter table (src/base/config_params.cc), so that the list cannot drift
// from what the plugin accepts. Run by the build; not installed.
//
//   s3block-param-list POD_IN POD_OUT
//
// POD_IN must hold the paragraph kMarker once; it becomes a verbatim block with the lines of
// `nbdkit s3block --help`.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "base/config_params.h"

namespace {

constexpr char kMarker[] = "=for comment s3block parameter list\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: s3block-param-list POD_IN POD_OUT\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  std::string pod((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = pod.find(kMarker);
  if (!in || at == std::string::npos || pod.find(kMarker, at + 1) != std::string::npos) {
    std::fprintf(stderr, "s3block-param-list: %s must hold the line '%.*s' once\n", argv[1],
                 static_cast<int>(sizeof kMarker - 2), kMarker);
    return 1;
  }
  pod.replace(at, sizeof kMarker - 1,
              s3block::ParamListText(s3block::ParamSyntax::kPlugin, " ", 27));
  std::ofstream out(argv[2]);
  out << pod;
  out.close();
  if (!out) {
    std::fprintf(stderr, "s3block-param-list: cannot write %s\n", argv[2]);
    return 1;
  }
  return 0;
}
