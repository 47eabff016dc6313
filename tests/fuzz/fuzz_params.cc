// libFuzzer target: the parsers of parameter values and export names (params.h). The first byte
// chooses the parser, the rest is the text.
//
// Properties checked besides "no crash, no sanitizer report": every refusal has a message, and
// that message is printable (printable.h) and of bounded length whatever the input (it is shown
// to users and written to logs); every value accepted is within what the parser promises.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "printable.h"
#include "s3block/params.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_params: property violated: %s\n", what);
    std::abort();
  }
}


// A refusal: a message, printable, and not much longer than the fixed text around the quoted input
// (QuoteForMessage cuts the input at 64 bytes, each shown as at most 4 characters).
void CheckRefusal(const s3block::Status& s) {
  Require(!s.ok() && !s.message().empty(), "a refusal without a message");
  Require(Printable(s.message()), "a message with unprintable characters");
  Require(s.message().size() < 1024, "a message that grows with the input");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace s3block;
  if (size == 0) return 0;
  const uint8_t which = data[0];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (which % 7) {
    case 0: {
      uint64_t v = 0;
      Status s = ParseSize("size", text, &v);
      if (!s.ok()) CheckRefusal(s);
      break;
    }
    case 1: {
      uint32_t v = 0;
      Status s = ParseBlockSize("block-size", text, &v);
      if (s.ok())
        Require(v >= kMinBlockSize && v <= kMaxBlockSize && (v & (v - 1)) == 0,
                "a block size out of range accepted");
      else
        CheckRefusal(s);
      break;
    }
    case 2: {
      bool v = false;
      Status s = ParseBool("cache", text, &v);
      if (!s.ok()) CheckRefusal(s);
      else Require(text.size() <= 5, "a long text taken as a boolean");
      break;
    }
    case 3: {
      double v = -1;
      Status s = ParseSeconds("retry-timeout", text, &v);
      if (s.ok()) Require(std::isfinite(v) && v >= 0 && v <= 1e9, "seconds out of range accepted");
      else CheckRefusal(s);
      break;
    }
    case 4: {
      uint64_t v = 0;
      Status s = ParseCount("connections", text, 1, 1024, &v);
      if (s.ok()) Require(v >= 1 && v <= 1024, "a count out of range accepted");
      else CheckRefusal(s);
      break;
    }
    case 5: {
      Status s = ValidateExportName(text);
      if (s.ok()) {
        Require(!text.empty() && text.size() <= kMaxExportNameLength, "name length out of range");
        Require(text != "." && text != "..", "'.' or '..' accepted");
        for (char c : text) {
          unsigned char u = static_cast<unsigned char>(c);
          Require(c != '/' && c != '\\' && u >= 0x20 && u != 0x7f,
                  "a name with '/', '\\' or a control character accepted");
        }
        Require(text.front() != ' ' && text.back() != ' ', "surrounding white space accepted");
      } else {
        CheckRefusal(s);
      }
      break;
    }
    case 6: {
      std::string q = QuoteForMessage(text);
      Require(Printable(q), "QuoteForMessage left an unprintable character");
      Require(q.size() <= 64 * 4 + 32, "QuoteForMessage did not cut a long text");
      break;
    }
  }
  return 0;
}
