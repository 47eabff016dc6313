#include "s3/xml.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace s3block {
namespace {

TEST(Xml, ParsesListObjectsV2WithNamespace) {
  const char* body =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<Name>b</Name><Prefix>exports/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
      "<IsTruncated>true</IsTruncated>"
      "<Contents><Key>exports/a&amp;b/metadata</Key><Size>10</Size></Contents>"
      "<Contents><Key>exports/\xC3\xA9t\xC3\xA9/blocks/7</Key><Size>4096</Size></Contents>"
      "<CommonPrefixes><Prefix>exports/x y/</Prefix></CommonPrefixes>"
      "<NextContinuationToken>tok&lt;1&gt;</NextContinuationToken>"
      "</ListBucketResult>";
  XmlNode root;
  ASSERT_OK(ParseXml(body, &root));
  EXPECT_EQ(root.name, "ListBucketResult");
  EXPECT_EQ(root.ChildText("IsTruncated"), "true");
  EXPECT_EQ(root.ChildText("NextContinuationToken"), "tok<1>");
  auto contents = root.Children("Contents");
  ASSERT_EQ(contents.size(), 2u);
  EXPECT_EQ(contents[0]->ChildText("Key"), "exports/a&b/metadata");
  EXPECT_EQ(contents[1]->ChildText("Key"), "exports/\xC3\xA9t\xC3\xA9/blocks/7");
  EXPECT_EQ(contents[1]->ChildText("Size"), "4096");
  ASSERT_EQ(root.Children("CommonPrefixes").size(), 1u);
  EXPECT_EQ(root.Child("CommonPrefixes")->ChildText("Prefix"), "exports/x y/");
  EXPECT_EQ(root.Child("Missing"), nullptr);
  EXPECT_EQ(root.ChildText("Missing"), "");
}

TEST(Xml, ParsesErrorAndDeleteResults) {
  XmlNode err;
  ASSERT_OK(ParseXml("<Error><Code>NoSuchKey</Code><Message></Message>"
                     "<RequestId>tx1</RequestId></Error>",
                     &err));
  EXPECT_EQ(err.name, "Error");
  EXPECT_EQ(err.ChildText("Code"), "NoSuchKey");
  EXPECT_EQ(err.ChildText("Message"), "");

  XmlNode del;
  ASSERT_OK(ParseXml("<DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                     "<Deleted><Key>k1</Key></Deleted>"
                     "<Error><Key>k2</Key><Code>AccessDenied</Code><Message>no</Message></Error>"
                     "</DeleteResult>",
                     &del));
  ASSERT_EQ(del.Children("Deleted").size(), 1u);
  auto errors = del.Children("Error");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0]->ChildText("Key"), "k2");
  EXPECT_EQ(errors[0]->ChildText("Code"), "AccessDenied");
}

TEST(Xml, MalformedBodiesAreCleanErrors) {
  for (const char* bad : {"<Error><Code>x</Code>", "<Error><Code>x</Error>", "<a></a><b></b>",
                          "<a>&bogus;</a>", "<", "<a b=></a>"}) {
    XmlNode root;
    Status s = ParseXml(bad, &root);
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.err(), EIO) << bad;
    EXPECT_NE(s.message().find("malformed XML"), std::string::npos) << s.message();
    EXPECT_TRUE(root.name.empty()) << bad;
  }
}

TEST(Xml, NonXmlBodiesAreCleanErrors) {
  // What a proxy or a load balancer answers instead of S3, and binary garbage.
  const std::string html = "<html><body><h1>502 Bad Gateway</h1></body>";
  const std::string text = "Service Unavailable\r\n";
  const std::string binary("\x00\xff\x01\x02\x80garbage", 11);
  for (const std::string& bad : {html, text, binary}) {
    XmlNode root;
    Status s = ParseXml(bad, &root);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.err(), EIO);
    // The message shows the start of the body, printable.
    for (char c : s.message()) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << s.message();
  }
  XmlNode root;
  Status s = ParseXml("", &root);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("empty"), std::string::npos);
}

TEST(Xml, DeepNestingIsRefused) {
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += "<a>";
  for (int i = 0; i < 200; ++i) deep += "</a>";
  XmlNode root;
  Status s = ParseXml(deep, &root);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("deeper"), std::string::npos) << s.message();
}

TEST(Xml, EscapeRoundTrips) {
  std::string name = "a&b<c>d\"e'f g%h \xE1\x88\xB4";
  EXPECT_EQ(XmlEscape("a&<>\"'"), "a&amp;&lt;&gt;&quot;&apos;");
  XmlNode root;
  ASSERT_OK(ParseXml("<Key>" + XmlEscape(name) + "</Key>", &root));
  EXPECT_EQ(root.text, name);
}

}  // namespace
}  // namespace s3block
