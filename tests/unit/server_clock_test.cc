// ServerClock: the bounds of the S3 server's time learnt from Date headers, with made-up
// send and receive times, and through the S3 client from a scripted server whose clock is an
// hour ahead of this machine's.
#include "s3/server_clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <memory>
#include <string>

#include "fake_http_server.h"
#include "s3/s3_client.h"
#include "test_util.h"

namespace s3block {
namespace {

std::string HttpDate(time_t t) {
  char date[64];
  struct tm tm;
  gmtime_r(&t, &tm);
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return date;
}

std::unique_ptr<S3Client> ClientOf(const testing::FakeHttpServer& server, double retry_timeout) {
  S3ClientOptions o;
  o.endpoint = server.endpoint();
  o.bucket = "bucket";
  o.retry_timeout = retry_timeout;
  return std::make_unique<S3Client>(o, AwsCredentials{"AKFAKE", "secret", ""});
}

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TEST(ServerClock, KnowsNothingBeforeAnAnswerWithADate) {
  ServerClock c;
  double lo = 0, hi = 0;
  EXPECT_FALSE(c.Bounds(100, &lo, &hi));
  EXPECT_FALSE(c.Observe("", 1, 2));
  EXPECT_FALSE(c.Observe("not a date", 1, 2));
  EXPECT_FALSE(c.Bounds(100, &lo, &hi));
}

TEST(ServerClock, ParsesHttpDates) {
  ServerClock c;
  // 2026-12-01 10:05:00 UTC is 1796119500 s since the epoch.
  ASSERT_TRUE(c.Observe("Tue, 01 Dec 2026 10:05:00 GMT", 1000, 1000.25));
  double lo = 0, hi = 0;
  ASSERT_TRUE(c.Bounds(1000.25, &lo, &hi));
  // Answered between 1000 and 1000.25 (steady), at a server time in [D - 1, D + 1): a second
  // below D in case the server rounded to the nearest second.
  EXPECT_DOUBLE_EQ(lo, 1796119500.0 - 1);
  EXPECT_DOUBLE_EQ(hi, 1796119500.0 + 1 + 0.25);
}

TEST(ServerClock, EachAnswerNarrowsTheBounds) {
  // The server's time is the steady time + 5000.3 exactly; answers take 10 ms.
  constexpr double kOffset = 5000.3;
  ServerClock c;
  double lo = 0, hi = 0;
  for (double sent = 10; sent < 12; sent += 0.07) {
    const double answered = sent + 0.004;
    c.ObserveSeconds(std::floor(answered + kOffset), sent, sent + 0.01);
    ASSERT_TRUE(c.Bounds(sent + 0.01, &lo, &hi));
    EXPECT_LE(lo, sent + 0.01 + kOffset);
    EXPECT_GT(hi, sent + 0.01 + kOffset);
  }
  // After answers spread over two seconds, the bounds are about a second and a round trip apart
  // (one answer gives two seconds and its round trip).
  EXPECT_LT(hi - lo, 1.1);
  // Later, the bounds still hold the true time, widened for the drift.
  ASSERT_TRUE(c.Bounds(3612, &lo, &hi));
  EXPECT_LE(lo, 3612 + kOffset);
  EXPECT_GT(hi, 3612 + kOffset);
  EXPECT_NEAR(hi - lo, 1.05 + 2 * ServerClock::kMaxDrift * 3600, 0.1);
}

TEST(ServerClock, AnAnswerThatDoesNotFitWidensTheBoundsUntilAnswersAgree) {
  ServerClock c;
  double lo = 0, hi = 0;
  // The server's time is the steady time + 990.
  c.ObserveSeconds(1000, 10, 10.01);
  // One answer from another clock (a proxy's, a minute behind): both are held.
  c.ObserveSeconds(945, 20, 20.01);
  ASSERT_TRUE(c.Bounds(20.01, &lo, &hi));
  EXPECT_NEAR(lo, 20.01 + 945 - 1 - 20.01, 1e-3);
  EXPECT_NEAR(hi, 20.01 + 990 + 1 - 0.0, 0.02);
  // Answers of the server narrow them again.
  for (double t = 30; t < 32; t += 0.07) c.ObserveSeconds(std::floor(t + 0.004 + 990), t, t + 0.01);
  ASSERT_TRUE(c.Bounds(32, &lo, &hi));
  EXPECT_LE(lo, 32 + 990);
  EXPECT_GT(hi, 32 + 990);
  EXPECT_LT(hi - lo, 1.1);
}

TEST(ServerClock, TheS3ClientLearnsTheServersTimeFromEveryAnswer) {
  // A server whose clock is an hour ahead of this machine's.
  const double before = WallNow();
  const time_t ahead = std::time(nullptr) + 3600;
  testing::FakeHttpServer server([&](const testing::FakeRequest&) {
    testing::FakeResponse r;
    r.headers.emplace_back("Date", HttpDate(ahead));
    return r;
  });
  auto client = ClientOf(server, 0.5);
  double lo = 0, hi = 0;
  EXPECT_FALSE(client->server_clock().Bounds(ServerClock::SteadyNow(), &lo, &hi));
  ASSERT_OK(client->PutObject("k", AsBytes(std::string("x"))));
  ASSERT_TRUE(client->server_clock().Bounds(ServerClock::SteadyNow(), &lo, &hi));
  // The server's time an hour ahead of ours, to the second of its Date and the time the exchange
  // took here (a loaded machine may take more than a second).
  const double took = WallNow() - before;
  EXPECT_GE(lo, static_cast<double>(ahead) - 1.0);
  EXPECT_LE(lo, static_cast<double>(ahead) + 1.0 + took);
  EXPECT_GE(hi, static_cast<double>(ahead));
  EXPECT_LT(hi - lo, 3.0);
}

TEST(ServerClock, AnswersOfAProxyAreNotTheServersTime) {
  // Two 503s with the Date of a proxy a day behind, then the server's own answer, on time.
  std::atomic<int> n{0};
  testing::FakeHttpServer server([&](const testing::FakeRequest&) {
    testing::FakeResponse r;
    if (n++ < 2) {
      r.status = 503;
      r.headers.emplace_back("Date", HttpDate(std::time(nullptr) - 86400));
    } else {
      r.headers.emplace_back("Date", HttpDate(std::time(nullptr)));
    }
    return r;
  });
  auto client = ClientOf(server, 5);
  ASSERT_OK(client->PutObject("k", AsBytes(std::string("x"))));
  EXPECT_EQ(n.load(), 3);
  double lo = 0, hi = 0;
  ASSERT_TRUE(client->server_clock().Bounds(ServerClock::SteadyNow(), &lo, &hi));
  const double wall = WallNow();
  // Learnt from the 200 alone: this machine's time, to a couple of seconds.
  EXPECT_NEAR(lo, wall, 2.5);
  EXPECT_LT(hi - lo, 3.0);
}

}  // namespace
}  // namespace s3block
