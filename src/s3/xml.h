// A small XML reader for S3 responses (ListObjectsV2, DeleteObjects results, error bodies),
// built on expat: the document becomes a tree of elements with their text.
//
// Namespaces are ignored (an element is known by its local name: "Key", not
// "http://s3.amazonaws.com/doc/2006-03-01/:Key"), attributes are dropped, and the text of an
// element is the concatenation of its character data (entities decoded).
//
// Thread safety: a parsed XmlNode is immutable and may be read from many threads.
#ifndef S3BLOCK_S3_XML_H_
#define S3BLOCK_S3_XML_H_

#include <string>
#include <string_view>
#include <vector>

#include "s3block/status.h"

namespace s3block {

struct XmlNode {
  std::string name;  // local name, without any namespace prefix
  std::string text;  // character data directly inside this element
  std::vector<XmlNode> children;

  // The first child named `name`, or nullptr.
  const XmlNode* Child(std::string_view name) const;
  // The text of the first child named `name`, or "" if there is none.
  std::string ChildText(std::string_view name) const;
  // Every child named `name`, in document order.
  std::vector<const XmlNode*> Children(std::string_view name) const;
};

// Parses a whole document into *root (the document element). Errors: EIO with a message saying
// what was wrong and where (line and column) for a body that is empty, not XML, or malformed;
// the message quotes at most the first bytes of a body that is not XML, made printable.
Status ParseXml(std::string_view body, XmlNode* root);

// Escapes text for an XML element body or attribute value (&, <, >, ", ').
std::string XmlEscape(std::string_view text);

}  // namespace s3block

#endif  // S3BLOCK_S3_XML_H_
