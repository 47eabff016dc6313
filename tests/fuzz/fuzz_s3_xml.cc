// libFuzzer target: the S3 XML responses, as the S3 client reads them: ParseXml, S3ErrorCode on
// an error response, and the walks ListObjectsV2 and DeleteObjects results get (Children,
// ChildText). A server, a proxy or anything on the path can send any bytes as a body.
//
// Properties checked besides "no crash, no sanitizer report" (expat's own limits, the depth limit):
// a refusal has a message that is printable and bounded whatever the body; a document that parses
// has a named root element.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "printable.h"
#include "s3/s3_client.h"
#include "s3/xml.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_s3_xml: property violated: %s\n", what);
    std::abort();
  }
}


size_t Walk(const s3block::XmlNode& n, int depth) {
  Require(depth <= 64, "a tree deeper than the limit");
  size_t count = 1;
  for (const auto& c : n.children) count += Walk(c, depth + 1);
  return count;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace s3block;
  std::string body(reinterpret_cast<const char*>(data), size);
  XmlNode root;
  Status s = ParseXml(body, &root);
  if (!s.ok()) {
    Require(!s.message().empty(), "a refusal without a message");
    Require(Printable(s.message()), "a message with unprintable characters");
    Require(s.message().size() < 1024, "a message that grows with the body");
  } else {
    Require(!root.name.empty(), "a document without a root name");
    Walk(root, 1);
    // What ListObjects and DeleteObjects look at.
    for (const XmlNode* c : root.Children("Contents")) (void)c->ChildText("Key");
    for (const XmlNode* c : root.Children("CommonPrefixes")) (void)c->ChildText("Prefix");
    (void)root.ChildText("IsTruncated");
    (void)root.ChildText("NextContinuationToken");
    for (const XmlNode* e : root.Children("Error"))
      (void)(e->ChildText("Key") + e->ChildText("Code") + e->ChildText("Message"));
  }
  HttpResponse r;
  r.status = 503;
  r.body = body;
  std::string code = S3ErrorCode(r);
  Require(s.ok() || code.empty(), "an error code from a body that does not parse");
  return 0;
}
