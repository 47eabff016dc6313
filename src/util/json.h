// The JSON the admin command prints and the stats file: strings quoted and escaped.
//
// Thread safety: pure functions, safe for concurrent use.
#ifndef S3BLOCK_UTIL_JSON_H_
#define S3BLOCK_UTIL_JSON_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace s3block {

// s as a JSON string, quotes included: '"' and '\' escaped, \n \r \t by name, other control
// characters as \u00XX. Other bytes (UTF-8 included) pass as they are.
std::string JsonString(std::string_view s);

// Reads a document of nested objects whose leaves are bare values (numbers, true, false, null),
// such as the stats file, and calls on_leaf(keys from the outermost, the value's text) for each
// leaf in document order. An escape in a key is read as the character after the backslash, which
// undoes what JsonString does to the names this reads. False if the text is not such a document;
// the leaves before the fault have been given. Text after the document is ignored.
using JsonLeafFn =
    std::function<void(const std::vector<std::string>& keys, std::string_view value)>;
bool ForEachJsonLeaf(std::string_view text, const JsonLeafFn& on_leaf);

}  // namespace s3block

#endif  // S3BLOCK_UTIL_JSON_H_
