// The parameter table: every parameter of the plugin, once. Config::Set parses with it, the
// plugin's --help and the admin command's options and usage are made from it, and so is the
// parameter list of the plugin's manual (tools/param_list.cc, at build time).
#ifndef S3BLOCK_BASE_CONFIG_PARAMS_H_
#define S3BLOCK_BASE_CONFIG_PARAMS_H_

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "s3block/config.h"
#include "s3block/status.h"

namespace s3block {

struct ConfigParam {
  // Which part of the value names a file, which a server started in another directory (nbdkit
  // changes to '/') must make absolute before Set.
  enum class Path {
    kNone,
    kWhole,          // all of it
    kUnlessS3,       // all of it, unless it is s3://...
    kBeforeComma,    // DIR of DIR,SIZE: up to the last comma, if one follows a non-empty DIR
  };

  const char* name;
  const char* value;          // what the value looks like in help: "SIZE", "BOOL"
  // The default as a value Set accepts, which must leave Config{} as it is (a unit test checks
  // that); nullptr when the default is not one value (the help then says what it is).
  const char* default_value;
  const char* help;           // one line, without the default
  bool admin;                 // the admin command takes it, as --NAME VALUE
  Status (*set)(Config* config, std::string_view key, std::string_view value);
  Path path = Path::kNone;
  // A secret, which the plugin reads with nbdkit_read_password (-, +FILE, -FD) so that ps does
  // not show it.
  bool password = false;
  const char* alias = nullptr;  // another name accepted for it

  // The length of the path at the start of value (see Path), or npos if it has none.
  size_t PathLength(std::string_view value) const;
};

// Every parameter, in the order help shows them.
std::span<const ConfigParam> ConfigParams();

// The parameter named `name` (or its alias), or nullptr.
const ConfigParam* FindConfigParam(std::string_view name);

// The parameter list as help text, one parameter a line: "key=VALUE  help (default D)" for the
// plugin, "--key VALUE  help (default D)" for the admin command (kAdmin: its parameters only).
// Each line starts with `indent`; the help starts at column `column`, or on a line of its own
// when the name is longer.
enum class ParamSyntax { kPlugin, kAdmin };
std::string ParamListText(ParamSyntax syntax, std::string_view indent, size_t column);

}  // namespace s3block

#endif  // S3BLOCK_BASE_CONFIG_PARAMS_H_
