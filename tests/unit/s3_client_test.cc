// The S3 client against a scripted HTTP server: what it sends (signature headers, the content's
// CRC-32C, key encoding, no Expect), how it treats answers a healthy S3 server does not give
// (truncated bodies, wrong checksums or ETags, non-XML errors), which failures it retries and for
// how long, and that connections are reused.
#include "s3/s3_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "fake_http_server.h"
#include "s3block/block_store.h"
#include "s3/http_client.h"
#include "s3/xml.h"
#include "test_util.h"
#include "util/crc32c.h"

namespace s3block {
namespace {

using testing::FakeHttpServer;
using testing::FakeRequest;
using testing::FakeResponse;

constexpr char kSecret[] = "fake-secret-never-shown";

std::unique_ptr<S3Client> MakeClient(const std::string& endpoint, double retry_timeout = 0.5) {
  S3ClientOptions o;
  o.endpoint = endpoint;
  o.bucket = "bucket";
  o.path_style = true;
  o.retry_timeout = retry_timeout;
  o.http.request_timeout = 5;
  o.http.max_connections = 4;
  return std::make_unique<S3Client>(o, AwsCredentials{"AKFAKE", kSecret, ""});
}

std::string Md5Hex(std::string_view s) { return HexEncode(Md5(AsBytes(s))); }

FakeResponse Ok(std::string body) {
  FakeResponse r;
  r.headers.emplace_back("ETag", "\"" + Md5Hex(body) + "\"");
  r.body = std::move(body);
  return r;
}

FakeResponse S3Error(int status, const std::string& code) {
  FakeResponse r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/xml");
  r.body = "<?xml version=\"1.0\"?><Error><Code>" + code + "</Code><Message>m</Message></Error>";
  return r;
}

TEST(S3Client, PutSendsChecksumsSignatureAndEncodedKey) {
  FakeHttpServer server([](const FakeRequest&) { return FakeResponse{}; });
  auto client = MakeClient(server.endpoint());
  std::string body(100000, 'x');
  ASSERT_OK(client->PutObject("p/exports/my disk %\xC3\xA9/blocks/7", AsBytes(body)));
  auto got = server.received();
  ASSERT_EQ(got.size(), 1u);
  const FakeRequest& r = got[0];
  EXPECT_EQ(r.method, "PUT");
  EXPECT_EQ(r.target, "/bucket/p/exports/my%20disk%20%25%C3%A9/blocks/7");
  EXPECT_EQ(r.body, body);
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", Crc32c(0, body.data(), body.size()));
  EXPECT_EQ(r.headers.at(kCrc32cMetaHeader), crc);
  EXPECT_EQ(r.headers.count("content-md5"), 0u);  // the signed SHA-256 of the body covers it
  EXPECT_EQ(r.headers.count(kMd5MetaHeader), 0u);
  EXPECT_EQ(r.headers.at("x-amz-content-sha256"), Sha256Hex(std::string_view(body)));
  EXPECT_EQ(r.headers.at("content-type"), "application/octet-stream");
  EXPECT_EQ(r.headers.count("expect"), 0u);
  EXPECT_EQ(r.headers.at("host"), server.endpoint().substr(7));
  EXPECT_EQ(r.headers.at("x-amz-date").size(), 16u);
  const std::string& auth = r.headers.at("authorization");
  EXPECT_EQ(auth.rfind("AWS4-HMAC-SHA256 Credential=AKFAKE/", 0), 0u) << auth;
  EXPECT_NE(auth.find("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;"
                      "x-amz-meta-s3block-crc32c"),
            std::string::npos)
      << auth;
  for (const auto& [k, v] : r.headers) EXPECT_EQ(v.find(kSecret), std::string::npos) << k;
}

TEST(S3Client, GetVerifiesBodyAgainstEtagAndMetaMd5) {
  std::string good = "block content";
  FakeHttpServer server([&](const FakeRequest& r) {
    if (r.target.find("good") != std::string::npos) return Ok(good);
    if (r.target.find("md5meta") != std::string::npos) {
      FakeResponse f;  // an object of an earlier version: its MD5 recorded, a multipart ETag
      f.body = good;
      f.headers.emplace_back("ETag", "\"0123-2\"");
      f.headers.emplace_back(kMd5MetaHeader, Base64Encode(Md5(AsBytes(good))));
      return f;
    }
    if (r.target.find("badetag") != std::string::npos) {
      FakeResponse f = Ok(good);
      f.body[0] ^= 1;  // the body changed on the way; the ETag is the stored one
      return f;
    }
    FakeResponse f;  // the recorded MD5 wins over the ETag
    f.body = good;
    f.headers.emplace_back("ETag", "\"" + Md5Hex(good) + "\"");
    f.headers.emplace_back(kMd5MetaHeader, Base64Encode(Md5(AsBytes("something else"))));
    return f;
  });
  auto client = MakeClient(server.endpoint(), 0.2);
  std::string body;
  bool found = false;
  ASSERT_OK(client->GetObject("good", &body, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(body, good);

  Status s = client->GetObject("badetag", &body, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("ETag"), std::string::npos) << s.message();
  EXPECT_FALSE(found);
  EXPECT_TRUE(body.empty());

  s = client->GetObject("badmeta", &body, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("MD5 recorded"), std::string::npos) << s.message();

  ASSERT_OK(client->GetObject("md5meta", &body, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(body, good);
}

// An object this client wrote carries its CRC-32C: a GET checks the body against it (and not
// against the ETag or an MD5, which it then need not compute).
TEST(S3Client, GetVerifiesBodyAgainstRecordedCrc32c) {
  const std::string good(200000, 'c');
  std::atomic<int> flipped{0};
  FakeHttpServer server([&](const FakeRequest& r) {
    FakeResponse f;
    f.body = good;
    f.headers.emplace_back(kCrc32cMetaHeader, Crc32cHex(AsBytes(good)));
    if (r.target.find("upper") != std::string::npos) {
      f.headers.back().second = Crc32cHex(AsBytes(good));
      for (char& ch : f.headers.back().second) ch = static_cast<char>(std::toupper(ch));
    }
    // The CRC-32C wins over the ETag: a multipart-style ETag, or one that is wrong, is not looked at.
    f.headers.emplace_back("ETag", r.target.find("etag") != std::string::npos
                                       ? "\"" + Md5Hex("something else") + "\""
                                       : std::string("\"abc-3\""));
    if (r.target.find("flipped") != std::string::npos) {
      f.body[12345] ^= 0x10;  // the same bit changed every time: stored so
      ++flipped;
    }
    if (r.target.find("wire") != std::string::npos)
      f.body[flipped++ % good.size()] ^= 1;  // another bit changed on the way each time
    if (r.target.find("once") != std::string::npos && flipped++ == 0) f.body[7] ^= 1;
    return f;
  });
  EXPECT_EQ(Crc32cHex(AsBytes("123456789")), "e3069283");  // the standard check value
  EXPECT_EQ(Crc32cHex({}), "00000000");
  auto client = MakeClient(server.endpoint(), 0.3);
  Bytes data;
  bool found = false;
  for (const char* key : {"good", "upper", "etag"}) {
    SCOPED_TRACE(key);
    ASSERT_OK(client->GetObject(key, &data, &found));
    EXPECT_TRUE(found);
    EXPECT_EQ(data, Bytes(good.begin(), good.end()));
  }

  // Content damaged differently each time is the transfer's: retried until the retry-timeout.
  Status s = client->GetObject("wire", &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("CRC-32C recorded"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("gave up after"), std::string::npos) << s.message();
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());
  EXPECT_GT(flipped.load(), 2);

  // The very same damaged content attempt after attempt is the object's own: reported once it
  // has come back the same for a few seconds, not retried for the whole retry-timeout (60 s).
  auto patient = MakeClient(server.endpoint(), 60);
  flipped = 0;
  s = patient->GetObject("flipped", &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("CRC-32C recorded"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("the same content in"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("gave up after"), std::string::npos) << s.message();
  EXPECT_GE(flipped.load(), 3);
  EXPECT_LT(flipped.load(), 20);

  // A body corrupted once is fetched again and the good copy returned.
  flipped = 0;
  ASSERT_OK(client->GetObject("once", &data, &found));
  EXPECT_EQ(data, Bytes(good.begin(), good.end()));
  EXPECT_EQ(flipped.load(), 2);
}

// The CRC-32C of a body is computed as its pieces arrive, over exactly the bytes received: into
// bytes (a 2xx body) and into the string (an error document) alike, and afresh for each request.
TEST(HttpClient, CrcOfTheBodyIsComputedAsItArrives) {
  std::string big(300001, 'b');  // several reads from the socket
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 4096);
  FakeHttpServer server([&](const FakeRequest& r) {
    if (r.target.find("err") != std::string::npos) return S3Error(404, "NoSuchKey");
    return Ok(r.target.find("small") != std::string::npos ? std::string("123456789") : big);
  });
  HttpClient http(HttpClientOptions{});
  Bytes data;
  for (const char* path : {"/big", "/small", "/err", "/big"}) {
    SCOPED_TRACE(path);
    HttpResponse response;
    response.data = &data;
    bool transient = false;
    ASSERT_OK(http.Perform({"GET", server.endpoint() + path, {}, {}}, &response, &transient));
    const std::span<const uint8_t> body = response.Body();
    const bool error = std::string(path) == "/err";
    if (error) {
      // An error document goes to the string and has no running CRC; asked for, it is computed.
      EXPECT_GT(response.body.size(), 0u);
      EXPECT_EQ(response.received_bytes, 0u);
      EXPECT_EQ(response.BodyCrc32c(), Crc32c(0, body.data(), body.size()));
      continue;
    }
    ASSERT_EQ(response.received_bytes, body.size());
    EXPECT_EQ(response.received_crc32c, Crc32c(0, body.data(), body.size()));
    EXPECT_EQ(response.BodyCrc32c(), response.received_crc32c);
    if (std::string(path) == "/small") {
      EXPECT_EQ(response.BodyCrc32c(), 0xE3069283u);
    }
  }
  // A response whose running CRC does not cover its body has it computed.
  HttpResponse r;
  r.body = "123456789";
  EXPECT_EQ(r.BodyCrc32c(), 0xE3069283u);
}

// A part of an object (206) is checked by its length alone, with no CRC over it as it arrives;
// a server that ignores the Range sends the whole object (200), whose recorded CRC-32C is then
// checked over the whole body before the part is cut out of it.
TEST(S3Client, ARangeAnsweredWholeIsCheckedWholeAndCut) {
  std::string whole(100000, 'w');
  for (size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<char>(i * 13 + i / 977);
  std::atomic<int> requests{0};
  FakeHttpServer server([&](const FakeRequest& r) {
    ++requests;
    FakeResponse f;
    f.body = whole;
    f.headers.emplace_back(kCrc32cMetaHeader, Crc32cHex(AsBytes(whole)));
    if (r.target.find("damaged") != std::string::npos) f.body[500] ^= 1;
    if (r.target.find("part") != std::string::npos) {
      f.status = 206;
      f.body = whole.substr(1000, 3000);
      f.headers.emplace_back("Content-Range", "bytes 1000-3999/100000");
    }
    return f;
  });
  auto client = MakeClient(server.endpoint(), 0.3);
  Bytes data;
  bool found = false;
  for (const char* key : {"part", "whole"}) {
    SCOPED_TRACE(key);
    ASSERT_OK(client->GetObjectRange(key, 1000, 3000, &data, &found));
    EXPECT_TRUE(found);
    EXPECT_EQ(data, Bytes(whole.begin() + 1000, whole.begin() + 4000));
  }
  requests = 0;
  Status s = client->GetObjectRange("whole-damaged", 1000, 3000, &data, &found);
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("CRC-32C recorded"), std::string::npos) << s.message();
  EXPECT_GT(requests.load(), 1);  // the transfer's fault, as far as the client can tell: retried
}

// A write fence is asked before every attempt: its error stops the request unsent and without
// retries, and the time it gives bounds the attempt.
TEST(S3Client, WriteFenceStopsOrBoundsEveryAttempt) {
  std::atomic<int> puts{0};
  FakeHttpServer server([&](const FakeRequest& r) {
    if (r.method == "PUT") ++puts;
    if (r.target.find("slow") != std::string::npos)
      std::this_thread::sleep_for(std::chrono::seconds(3));
    if (r.target.find("fail") != std::string::npos) return S3Error(503, "SlowDown");
    return Ok("");
  });
  auto client = MakeClient(server.endpoint(), 2.0);  // the request timeout is 5 s
  const std::vector<uint8_t> body(100, 7);
  int asked = 0;
  const WriteFence refuse = [&](double*) {
    ++asked;
    return Status::IoError("the lease is gone");
  };
  Status s = client->PutObject("k", body, &refuse);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("the lease is gone"), std::string::npos) << s.message();
  EXPECT_EQ(asked, 1);
  EXPECT_EQ(client->DeleteObject("k", &refuse).err(), EIO);
  EXPECT_EQ(client->DeleteObjects({"a", "b"}, &refuse).err(), EIO);
  bool found = false;
  EXPECT_EQ(client->CopyObject("a", "b", &found, &refuse).err(), EIO);
  EXPECT_EQ(puts.load(), 0);

  // Asked again before every retry.
  asked = 0;
  const WriteFence allow = [&](double* left) {
    ++asked;
    *left = 0;  // no limit of its own
    return Status::Ok();
  };
  EXPECT_EQ(client->PutObject("fail", body, &allow).err(), EIO);
  EXPECT_GE(asked, 2);
  EXPECT_EQ(asked, puts.load());

  // An attempt gets at most the time the fence gives (the server takes 3 s to answer).
  const WriteFence short_time = [&](double* left) {
    *left = 0.5;
    return Status::Ok();
  };
  client = MakeClient(server.endpoint(), 0);  // one attempt
  const auto start = std::chrono::steady_clock::now();
  s = client->PutObject("slow", body, &short_time);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_LT(took, 2.5) << s.message();
  // Without a fence, the same request waits for its answer.
  ASSERT_OK(client->PutObject("slow", body));
}

// Blocks are read straight into bytes; everything else about a GET is the same.
TEST(S3Client, GetIntoBytesVerifiesRetriesAndKeepsErrorBodiesApart) {
  const std::string good(300000, 'g');  // several reads from the socket
  std::atomic<int> flaky{0};
  FakeHttpServer server([&](const FakeRequest& r) {
    if (r.target.find("good") != std::string::npos) return Ok(good);
    if (r.target.find("badetag") != std::string::npos) {
      FakeResponse f = Ok(good);
      f.body[0] ^= 1;
      return f;
    }
    if (r.target.find("truncated") != std::string::npos) {
      FakeResponse f = Ok(good);
      f.truncate_at = 1000;
      return f;
    }
    if (r.target.find("flaky") != std::string::npos)
      return flaky++ == 0 ? S3Error(503, "SlowDown") : Ok("second answer");
    if (r.target.find("nokey") != std::string::npos) return S3Error(404, "NoSuchKey");
    return S3Error(404, "NoSuchBucket");
  });
  auto client = MakeClient(server.endpoint(), 0.3);
  Bytes data{1, 2, 3};
  bool found = false;
  ASSERT_OK(client->GetObject("good", &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Bytes(good.begin(), good.end()));

  Status s = client->GetObject("badetag", &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("ETag"), std::string::npos) << s.message();
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());

  s = client->GetObject("truncated", &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());

  // The error document of the first attempt is not mixed into the body of the second.
  ASSERT_OK(client->GetObject("flaky", &data, &found));
  EXPECT_TRUE(found);
  EXPECT_EQ(data, Bytes(AsBytes("second answer").begin(), AsBytes("second answer").end()));

  data = {1};
  ASSERT_OK(client->GetObject("nokey", &data, &found));
  EXPECT_FALSE(found);
  EXPECT_TRUE(data.empty());
  s = client->GetObject("nobucket", &data, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("NoSuchBucket"), std::string::npos) << s.message();
  EXPECT_TRUE(data.empty());
}

TEST(S3Client, TruncatedBodyIsAnErrorNotShortData) {
  FakeHttpServer server([](const FakeRequest&) {
    FakeResponse f = Ok(std::string(4096, 'a'));
    f.truncate_at = 1000;
    return f;
  });
  auto client = MakeClient(server.endpoint(), 0.3);
  std::string body;
  bool found = true;
  Status s = client->GetObject("k", &body, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
  EXPECT_TRUE(body.empty());
  // Retried (a truncated transfer is transient) until the retry time ran out.
  EXPECT_GT(server.requests(), 1);
  EXPECT_NE(s.message().find("gave up after"), std::string::npos) << s.message();
}

TEST(S3Client, TransientErrorsAreRetriedThenSucceed) {
  std::atomic<int> n{0};
  FakeHttpServer server([&](const FakeRequest&) {
    int i = n++;
    if (i == 0) return S3Error(503, "SlowDown");
    if (i == 1) return S3Error(500, "InternalError");
    if (i == 2) return S3Error(429, "TooManyRequests");
    return Ok("fine");
  });
  auto client = MakeClient(server.endpoint(), 10);
  std::string body;
  bool found = false;
  ASSERT_OK(client->GetObject("k", &body, &found));
  EXPECT_EQ(body, "fine");
  EXPECT_EQ(server.requests(), 4);
}

TEST(S3Client, RetriesStopAtRetryTimeoutWithAClearError) {
  FakeHttpServer server([](const FakeRequest&) {
    FakeResponse f;
    f.status = 502;
    f.body = "<html><body>Bad Gateway</body></html>";  // a proxy's page, not S3 XML
    return f;
  });
  auto client = MakeClient(server.endpoint(), 0.5);
  auto start = std::chrono::steady_clock::now();
  Status s = client->PutObject("k", AsBytes("data"));
  double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_GE(spent, 0.45);
  EXPECT_LT(spent, 3.0);
  EXPECT_GT(server.requests(), 2);
  EXPECT_NE(s.message().find("HTTP 502"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("not an S3 error document"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("bucket 'bucket' at " + server.endpoint()), std::string::npos) << s.message();
}

TEST(S3Client, ClientErrorsAreNotRetried) {
  FakeHttpServer server([](const FakeRequest&) { return S3Error(403, "AccessDenied"); });
  auto client = MakeClient(server.endpoint(), 10);
  Status s = client->PutObject("k", AsBytes("data"));
  EXPECT_EQ(s.err(), EIO);
  EXPECT_EQ(server.requests(), 1);
  EXPECT_NE(s.message().find("HTTP 403 AccessDenied"), std::string::npos) << s.message();
}

TEST(S3Client, NotFoundOnlyForNoSuchKey) {
  FakeHttpServer server([](const FakeRequest& r) {
    if (r.target.find("nokey") != std::string::npos) return S3Error(404, "NoSuchKey");
    if (r.target.find("nobucket") != std::string::npos) return S3Error(404, "NoSuchBucket");
    FakeResponse f;
    f.status = 404;
    f.body = "not found";
    return f;
  });
  auto client = MakeClient(server.endpoint());
  std::string body;
  bool found = true;
  ASSERT_OK(client->GetObject("nokey", &body, &found));
  EXPECT_FALSE(found);
  Status s = client->GetObject("nobucket", &body, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("NoSuchBucket"), std::string::npos) << s.message();
  s = client->GetObject("other", &body, &found);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_FALSE(found);
}

TEST(S3Client, ConnectionsAreKeptAliveAndReused) {
  FakeHttpServer server([](const FakeRequest&) { return Ok("x"); });
  auto client = MakeClient(server.endpoint());
  for (int i = 0; i < 20; ++i) {
    std::string body;
    bool found = false;
    ASSERT_OK(client->GetObject("k" + std::to_string(i), &body, &found));
  }
  EXPECT_EQ(server.requests(), 20);
  EXPECT_EQ(server.connections(), 1);
}

TEST(S3Client, ConcurrentRequestsShareABoundedPool) {
  FakeHttpServer server([](const FakeRequest&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return Ok("x");
  });
  auto client = MakeClient(server.endpoint());  // max_connections = 4
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        std::string body;
        bool found = false;
        if (!client->GetObject("k" + std::to_string(t * 10 + i), &body, &found).ok() || body != "x")
          ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server.requests(), 60);
  EXPECT_GE(server.connections(), 2);  // requests ran in parallel...
  EXPECT_LE(server.connections(), 4);  // ...on at most max_connections connections
}

TEST(S3Client, DeleteObjectsSendsXmlWithContentMd5AndReportsErrors) {
  FakeHttpServer server([](const FakeRequest& r) {
    FakeResponse f;
    if (r.body.find("k&amp;2") != std::string::npos)
      f.body = "<DeleteResult><Error><Key>k&amp;2</Key><Code>AccessDenied</Code><Message>no</Message>"
               "</Error></DeleteResult>";
    else
      f.body = "<DeleteResult></DeleteResult>";
    return f;
  });
  auto client = MakeClient(server.endpoint());
  ASSERT_OK(client->DeleteObjects({"a/1", "a/2"}));
  auto got = server.received();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].method, "POST");
  EXPECT_EQ(got[0].target, "/bucket?delete=");
  EXPECT_EQ(got[0].headers.at("content-md5"), Base64Encode(Md5(AsBytes(got[0].body))));
  XmlNode root;
  ASSERT_OK(ParseXml(got[0].body, &root));
  EXPECT_EQ(root.name, "Delete");
  ASSERT_EQ(root.Children("Object").size(), 2u);
  EXPECT_EQ(root.Children("Object")[1]->ChildText("Key"), "a/2");

  Status s = client->DeleteObjects({"k1", "k&2"});
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("'k&2': AccessDenied"), std::string::npos) << s.message();
}

// An answer damaged on the way has the request sent again; keys the server could not delete for
// a passing reason are sent again on their own.
TEST(S3Client, DeleteObjectsRetriesDamagedAnswersAndKeysThatFailedForAPassingReason) {
  std::atomic<int> n{0};
  FakeHttpServer server([&](const FakeRequest&) {
    FakeResponse f;
    switch (n++) {
      case 0: f.body = "<DeleteResult><Err"; break;  // cut short
      case 1:
        f.body = "<DeleteResult><Error><Key>b</Key><Code>SlowDown</Code><Message>later</Message>"
                 "</Error></DeleteResult>";
        break;
      default: f.body = "<DeleteResult></DeleteResult>";
    }
    return f;
  });
  auto client = MakeClient(server.endpoint(), 5);
  ASSERT_OK(client->DeleteObjects({"a", "b", "c"}));
  auto got = server.received();
  ASSERT_EQ(got.size(), 3u);
  XmlNode root;
  ASSERT_OK(ParseXml(got[1].body, &root));
  EXPECT_EQ(root.Children("Object").size(), 3u);  // the whole request again
  ASSERT_OK(ParseXml(got[2].body, &root));
  ASSERT_EQ(root.Children("Object").size(), 1u);  // only the key that failed
  EXPECT_EQ(root.Children("Object")[0]->ChildText("Key"), "b");

  // A server that keeps failing a key: reported once the retry-timeout is over.
  FakeHttpServer busy([&](const FakeRequest&) {
    FakeResponse f;
    f.body = "<DeleteResult><Error><Key>b</Key><Code>InternalError</Code></Error></DeleteResult>";
    return f;
  });
  Status s = MakeClient(busy.endpoint(), 0.3)->DeleteObjects({"b"});
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("'b': InternalError"), std::string::npos) << s.message();
  EXPECT_GT(busy.requests(), 1);
}

TEST(S3Client, ConnectionRefusedGivesOneClearCheckError) {
  // A port nobody listens on: bind one, then close it.
  std::string endpoint;
  {
    FakeHttpServer probe([](const FakeRequest&) { return FakeResponse{}; });
    endpoint = probe.endpoint();
  }
  auto client = MakeClient(endpoint, 0.3);
  auto start = std::chrono::steady_clock::now();
  Status s = client->CheckBucket("exports/", 0.3);
  double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(s.err(), EIO);
  EXPECT_LT(spent, 3.0);
  EXPECT_NE(s.message().find("bucket 'bucket' at " + endpoint), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
}

TEST(S3Client, CheckBucketNamesTheProblem) {
  struct Case {
    int status;
    const char* code;
    const char* expect;
  };
  for (const Case& c : {Case{404, "NoSuchBucket", "does not exist"},
                        Case{403, "InvalidAccessKeyId", "does not know the access key 'AKFAKE'"},
                        Case{403, "SignatureDoesNotMatch", "secret key is wrong"},
                        Case{403, "AccessDenied", "access denied"},
                        Case{301, "PermanentRedirect", "another region"}}) {
    FakeHttpServer server([&](const FakeRequest&) { return S3Error(c.status, c.code); });
    auto client = MakeClient(server.endpoint(), 5);
    Status s = client->CheckBucket("exports/", 5);
    EXPECT_EQ(s.err(), EIO) << c.code;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("bucket 'bucket' at " + server.endpoint()), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find(kSecret), std::string::npos) << s.message();
    EXPECT_EQ(server.requests(), 1) << c.code;
  }
}

TEST(S3Client, ListFollowsContinuationTokens) {
  FakeHttpServer server([](const FakeRequest& r) {
    FakeResponse f;
    if (r.target.find("continuation-token=t%2F2") != std::string::npos)
      f.body = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>p/c</Key>"
               "<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag></Contents>"
               "</ListBucketResult>";
    else
      f.body = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>p/a</Key></Contents>"
               "<Contents><Key>p/b</Key></Contents><NextContinuationToken>t/2</NextContinuationToken>"
               "</ListBucketResult>";
    return f;
  });
  auto client = MakeClient(server.endpoint());
  std::vector<std::string> keys, etags;
  ASSERT_OK(client->ListObjects("p/", "", [&](const std::string& k, std::string_view etag) {
    keys.push_back(k);
    etags.emplace_back(etag);
  }, nullptr));
  EXPECT_EQ(keys, (std::vector<std::string>{"p/a", "p/b", "p/c"}));
  // The ETag comes without its quotes; an object listed without one has "".
  EXPECT_EQ(etags, (std::vector<std::string>{"", "", "0123456789abcdef0123456789abcdef"}));
  auto got = server.received();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].target, "/bucket?list-type=2&max-keys=1000&prefix=p%2F");
}

// Nothing protects a listing over plain HTTP: a page damaged on the way is fetched again before
// any of its keys is used. A key outside the prefix, or XML that does not parse, is retried until
// it comes right; a key the caller does not expect, a few times, then taken as an object's name.
TEST(S3Client, DamagedListingPagesAreFetchedAgain) {
  std::atomic<int> served{0};
  FakeHttpServer server([&](const FakeRequest& r) {
    const int n = served++;
    FakeResponse f;
    const bool stray = r.target.find("prefix=s%2F") != std::string::npos;
    std::string key = stray ? "s/blocks/junk" : "p/blocks/12";
    if (!stray && n == 0) key = "p/blocks/1j";  // a digit damaged into a letter
    if (!stray && n == 1) key = "q/blocks/12";  // the prefix damaged
    f.body = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>" + key +
             "</Key></Contents></ListBucketResult>";
    if (!stray && n == 2) f.body[5] = '!';  // the XML damaged
    return f;
  });
  auto client = MakeClient(server.endpoint(), 5);
  auto digits = [](const std::string& k) {
    return k.size() > 9 && k.find_first_not_of("0123456789", 9) == std::string::npos;
  };
  std::vector<std::string> keys;
  auto collect = [&](const std::string& k, std::string_view) { keys.push_back(k); };
  ASSERT_OK(client->ListObjects("p/", "", collect, nullptr, digits));
  EXPECT_EQ(keys, std::vector<std::string>{"p/blocks/12"});
  EXPECT_EQ(served.load(), 4);

  // A key that stays unexpected is an object of that name: delivered after three fetches.
  keys.clear();
  served = 0;
  ASSERT_OK(client->ListObjects("s/", "", collect, nullptr, digits));
  EXPECT_EQ(keys, std::vector<std::string>{"s/blocks/junk"});
  EXPECT_EQ(served.load(), 3);
}

TEST(S3Client, MalformedListingIsAnError) {
  FakeHttpServer server([](const FakeRequest&) {
    FakeResponse f;
    f.body = "<ListBucketResult><IsTruncated>true";
    return f;
  });
  auto client = MakeClient(server.endpoint());
  Status s = client->ListObjects("p/", "/", nullptr, nullptr);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("malformed XML"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST(S3Client, VirtualHostedAddressingPutsTheBucketInTheHostName) {
  // libcurl resolves every *.localhost name to the loopback address, so "bucket.localhost"
  // reaches the scripted server without DNS.
  FakeHttpServer server([](const FakeRequest&) { return Ok("v"); });
  std::string port = server.endpoint().substr(server.endpoint().rfind(':') + 1);
  S3ClientOptions o;
  o.endpoint = "http://localhost:" + port;
  o.bucket = "my-bucket";
  o.path_style = false;
  o.retry_timeout = 1;
  S3Client client(o, AwsCredentials{"AK", "SK", "session-token-value"});
  std::string body;
  bool found = false;
  ASSERT_OK(client.GetObject("exports/a b/blocks/1", &body, &found));
  auto got = server.received();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].headers.at("host"), "my-bucket.localhost:" + port);
  EXPECT_EQ(got[0].target, "/exports/a%20b/blocks/1");
  EXPECT_EQ(got[0].headers.at("x-amz-security-token"), "session-token-value");
  EXPECT_NE(got[0].headers.at("authorization").find("x-amz-security-token"), std::string::npos);
}

TEST(S3Client, ServerDownThenBack) {
  // A port with nothing listening: writes fail with EIO once the retry time is spent...
  int port;
  {
    FakeHttpServer probe([](const FakeRequest&) { return FakeResponse{}; });
    port = std::stoi(probe.endpoint().substr(probe.endpoint().rfind(':') + 1));
  }
  auto client = MakeClient("http://127.0.0.1:" + std::to_string(port), 0.3);
  Status s = client->PutObject("k", AsBytes("data"));
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("gave up after"), std::string::npos) << s.message();

  // ...and a write that is retrying when the server comes back succeeds.
  auto patient = MakeClient("http://127.0.0.1:" + std::to_string(port), 10);
  std::unique_ptr<FakeHttpServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    server = std::make_unique<FakeHttpServer>([](const FakeRequest&) { return FakeResponse{}; }, port);
  });
  Status later = patient->PutObject("k", AsBytes("data"));
  starter.join();
  EXPECT_OK(later);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->requests(), 1);
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST(S3Client, ConditionalPutTriesBothFormsOfIfMatchAndReportsTheOneThatMatched) {
  // A server that compares If-Match unquoted (Ceph RGW 16): the quoted form fails, the other one
  // matches and the write is done. The client must say it was done, with the new ETag.
  testing::FakeHttpServer server([](const testing::FakeRequest& r) {
    testing::FakeResponse resp;
    auto it = r.headers.find("if-match");
    if (it != r.headers.end() && it->second != "abc") {
      resp.status = 412;
      return resp;
    }
    resp.headers.emplace_back("ETag", "\"def\"");
    return resp;
  });
  auto client = MakeClient(server.endpoint());
  std::string etag;
  bool failed = true;
  ASSERT_OK(client->PutObjectConditional("lease", AsBytes(std::string("x")), false, "abc", &etag, &failed));
  EXPECT_FALSE(failed);
  EXPECT_EQ(etag, "def");
  auto got = server.received();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].headers.at("if-match"), "\"abc\"");
  EXPECT_EQ(got[1].headers.at("if-match"), "abc");
  // Neither form matches: a failed precondition, not an error.
  ASSERT_OK(client->PutObjectConditional("lease", AsBytes(std::string("x")), false, "zzz", &etag, &failed));
  EXPECT_TRUE(failed);
}

// A server whose answers to keys containing "hold" wait until Release() (or 20 s), so that a
// client with one connection has it busy for as long as the test wants.
class HoldingServer {
 public:
  HoldingServer()
      : server_([this](const FakeRequest& r) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (r.method == "PUT") ++puts_;
            if (r.target.find("hold") == std::string::npos) targets_.push_back(r.method + " " + r.target);
          }
          if (r.target.find("hold") != std::string::npos) {
            std::unique_lock<std::mutex> lock(mu_);
            ++held_;
            cv_.notify_all();
            cv_.wait_for(lock, std::chrono::seconds(20), [&] { return released_; });
          }
          return Ok("");
        }) {}
  ~HoldingServer() { Release(); }
  void WaitUntilHeld() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return held_ > 0; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  int puts() const { return puts_.load(); }
  // "METHOD target" of every request but the held ones, in the order they arrived.
  std::vector<std::string> targets() {
    std::lock_guard<std::mutex> lock(mu_);
    return targets_;
  }
  std::string endpoint() const { return server_.endpoint(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int held_ = 0;
  bool released_ = false;
  std::vector<std::string> targets_;
  std::atomic<int> puts_{0};
  FakeHttpServer server_;  // last: its handler uses the members above
};

std::unique_ptr<S3Client> OneConnectionClient(const std::string& endpoint, double retry_timeout) {
  S3ClientOptions o;
  o.endpoint = endpoint;
  o.bucket = "bucket";
  o.retry_timeout = retry_timeout;
  o.http.request_timeout = 30;
  o.http.max_connections = 1;
  return std::make_unique<S3Client>(o, AwsCredentials{"AKFAKE", kSecret, ""});
}

TEST(S3Client, WaitingForAConnectionCountsAgainstTheRetryTimeout) {
  HoldingServer server;
  auto client = OneConnectionClient(server.endpoint(), 1.0);
  // The only connection is busy with a request the server does not answer yet.
  auto busy = std::async(std::launch::async, [&] {
    std::string body;
    bool found = false;
    return client->GetObject("hold", &body, &found);
  });
  server.WaitUntilHeld();
  const std::vector<uint8_t> data(100, 7);
  Status s = client->PutObject("waiting", data);
  EXPECT_EQ(s.err(), ETIMEDOUT) << s.ToString();
  EXPECT_NE(s.message().find("for a free connection"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'waiting'"), std::string::npos) << s.message();
  EXPECT_EQ(server.puts(), 0) << "a request whose time was up was sent";
  server.Release();
  EXPECT_OK(busy.get());
  // The connection serves the next request as before.
  EXPECT_OK(client->PutObject("after", data));
  EXPECT_EQ(server.puts(), 1);
}

TEST(S3Client, FencedRequestTimeRunsWhileItWaitsForAConnection) {
  HoldingServer server;
  auto client = OneConnectionClient(server.endpoint(), 10.0);
  auto busy = std::async(std::launch::async, [&] {
    std::string body;
    bool found = false;
    return client->GetObject("hold", &body, &found);
  });
  server.WaitUntilHeld();
  // The fence allows 0.5 s the first time (the lease's time left), and then says the lease is
  // gone. The connection comes free only after those 0.5 s: the request may not be sent then.
  std::atomic<int> asked{0};
  const WriteFence fence = [&](double* left) {
    if (++asked > 1) return Status::IoError("the lease is gone");
    *left = 0.5;
    return Status::Ok();
  };
  auto release = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    server.Release();
  });
  const std::vector<uint8_t> data(100, 7);
  Status s = client->PutObject("fenced", data, &fence);
  release.get();
  EXPECT_OK(busy.get());
  EXPECT_EQ(s.err(), EIO) << s.ToString();
  EXPECT_NE(s.message().find("the lease is gone"), std::string::npos) << s.message();
  EXPECT_EQ(server.puts(), 0) << "sent after the time the fence gave it had run out";
}

TEST(S3Client, ReadsAndLeaseWritesGetAFreeConnectionBeforeQueuedUploads) {
  HoldingServer server;
  auto client = OneConnectionClient(server.endpoint(), 30.0);
  auto busy = std::async(std::launch::async, [&] {
    std::string body;
    bool found = false;
    return client->GetObject("hold", &body, &found);
  });
  server.WaitUntilHeld();
  // Uploads queue first, then a read and a lease's conditional write; when the connection comes
  // free, the read and the lease write go before the uploads.
  std::vector<std::future<Status>> waiting;
  const std::vector<uint8_t> data(10, 1);
  auto queue = [&](std::function<Status()> fn) {
    waiting.push_back(std::async(std::launch::async, std::move(fn)));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // to be waiting before the next
  };
  for (int i = 0; i < 3; ++i)
    queue([&, i] { return client->PutObject("upload" + std::to_string(i), data); });
  queue([&] {
    std::string body;
    bool found = false;
    return client->GetObject("read", &body, &found);
  });
  queue([&] {
    std::string etag;
    bool failed = false;
    return client->PutObjectConditional("lease", data, true, "", &etag, &failed);
  });
  server.Release();
  EXPECT_OK(busy.get());
  for (auto& w : waiting) EXPECT_OK(w.get());
  std::vector<std::string> got = server.targets();
  ASSERT_EQ(got.size(), 5u);
  std::vector<std::string> first(got.begin(), got.begin() + 2);
  std::sort(first.begin(), first.end());
  EXPECT_EQ(first, (std::vector<std::string>{"GET /bucket/read", "PUT /bucket/lease"}))
      << "served in the order " << got[0] << ", " << got[1] << ", " << got[2] << ", " << got[3]
      << ", " << got[4];
}

}  // namespace
}  // namespace s3block
