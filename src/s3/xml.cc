#include "s3/xml.h"

#include <expat.h>

#include <memory>

#include "s3block/params.h"

namespace s3block {
namespace {

// Deeper documents than this are refused: S3 responses are three or four levels deep.
constexpr size_t kMaxDepth = 64;

struct ParseState {
  XML_Parser parser = nullptr;
  XmlNode root;
  bool have_root = false;
  std::vector<XmlNode*> stack;  // open elements; stack[0] is &root
  bool too_deep = false;
};

std::string LocalName(const char* name) {
  // With namespace processing, expat gives "URI<sep>local"; we use '\x01' as the separator.
  std::string_view n(name);
  size_t sep = n.rfind('\x01');
  return std::string(sep == std::string_view::npos ? n : n.substr(sep + 1));
}

void XMLCALL OnStart(void* data, const XML_Char* name, const XML_Char** /*attrs*/) {
  auto* st = static_cast<ParseState*>(data);
  if (st->stack.size() >= kMaxDepth) {
    st->too_deep = true;
    XML_StopParser(st->parser, XML_FALSE);
    return;
  }
  if (st->stack.empty()) {
    st->root.name = LocalName(name);
    st->have_root = true;
    st->stack.push_back(&st->root);
    return;
  }
  XmlNode* parent = st->stack.back();
  parent->children.push_back(XmlNode{LocalName(name), "", {}});
  st->stack.push_back(&parent->children.back());
}

void XMLCALL OnEnd(void* data, const XML_Char* /*name*/) {
  auto* st = static_cast<ParseState*>(data);
  if (!st->stack.empty()) st->stack.pop_back();
}

void XMLCALL OnText(void* data, const XML_Char* s, int len) {
  auto* st = static_cast<ParseState*>(data);
  if (!st->stack.empty()) st->stack.back()->text.append(s, static_cast<size_t>(len));
}

}  // namespace

const XmlNode* XmlNode::Child(std::string_view n) const {
  for (const XmlNode& c : children)
    if (c.name == n) return &c;
  return nullptr;
}

std::string XmlNode::ChildText(std::string_view n) const {
  const XmlNode* c = Child(n);
  return c ? c->text : std::string();
}

std::vector<const XmlNode*> XmlNode::Children(std::string_view n) const {
  std::vector<const XmlNode*> out;
  for (const XmlNode& c : children)
    if (c.name == n) out.push_back(&c);
  return out;
}

Status ParseXml(std::string_view body, XmlNode* root) {
  *root = XmlNode{};
  if (body.empty()) return Status::IoError("empty response body where XML was expected");
  std::unique_ptr<XML_ParserStruct, decltype(&XML_ParserFree)> parser(
      XML_ParserCreateNS(nullptr, '\x01'), &XML_ParserFree);
  if (!parser) return Status::Error(ENOMEM, "cannot create an XML parser");
  ParseState st;
  st.parser = parser.get();
  XML_SetUserData(parser.get(), &st);
  XML_SetElementHandler(parser.get(), OnStart, OnEnd);
  XML_SetCharacterDataHandler(parser.get(), OnText);
  // The stack points into the children vectors. Only the top element gets new children, and its
  // parent gets none until it is closed, so no pointer on the stack is ever invalidated.
  XML_Status r = XML_Parse(parser.get(), body.data(), static_cast<int>(body.size()), XML_TRUE);
  if (st.too_deep) return Status::IoError("XML response nested deeper than " + std::to_string(kMaxDepth));
  if (r != XML_STATUS_OK) {
    std::string msg = std::string("malformed XML response (") +
                      XML_ErrorString(XML_GetErrorCode(parser.get())) + " at line " +
                      std::to_string(XML_GetCurrentLineNumber(parser.get())) + ", column " +
                      std::to_string(XML_GetCurrentColumnNumber(parser.get())) + ")";
    msg += ": body starts \"" + QuoteForMessage(body.substr(0, 64)) + "\"";
    return Status::IoError(msg);
  }
  if (!st.have_root) return Status::IoError("XML response has no element");
  *root = std::move(st.root);
  return Status::Ok();
}

std::string XmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

}  // namespace s3block
