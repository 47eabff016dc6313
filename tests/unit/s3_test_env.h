// The real S3 server of the S3 tests (Ceph RGW started by tests/scripts/s3_server.sh), found
// through the environment:
//   S3BLOCK_TEST_S3_ENDPOINT, S3BLOCK_TEST_S3_BUCKET, S3BLOCK_TEST_S3_ACCESS_KEY,
//   S3BLOCK_TEST_S3_SECRET_KEY [, S3BLOCK_TEST_S3_REGION]
// Without them the tests are skipped, unless S3BLOCK_TEST_REQUIRE_S3=1, when they fail.
#ifndef S3BLOCK_TESTS_UNIT_S3_TEST_ENV_H_
#define S3BLOCK_TESTS_UNIT_S3_TEST_ENV_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>

#include "s3/s3_client.h"

namespace s3block::testing {

struct S3Env {
  std::string endpoint, bucket, access_key, secret_key, region = "us-east-1";
};

inline std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// Fills *env from the environment. Returns false (the test must skip) when the server is not
// configured; records a failure instead when S3BLOCK_TEST_REQUIRE_S3=1.
inline bool LoadS3Env(S3Env* env) {
  env->endpoint = Getenv("S3BLOCK_TEST_S3_ENDPOINT");
  env->bucket = Getenv("S3BLOCK_TEST_S3_BUCKET");
  env->access_key = Getenv("S3BLOCK_TEST_S3_ACCESS_KEY");
  env->secret_key = Getenv("S3BLOCK_TEST_S3_SECRET_KEY");
  if (!Getenv("S3BLOCK_TEST_S3_REGION").empty()) env->region = Getenv("S3BLOCK_TEST_S3_REGION");
  bool complete = !env->endpoint.empty() && !env->bucket.empty() && !env->access_key.empty() &&
                  !env->secret_key.empty();
  if (complete) return true;
  if (Getenv("S3BLOCK_TEST_REQUIRE_S3") == "1") {
    ADD_FAILURE() << "S3BLOCK_TEST_REQUIRE_S3=1 but S3BLOCK_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY "
                     "and _SECRET_KEY are not all set (start a server with "
                     "tests/scripts/s3_server.sh start DIR PORT and eval its output)";
  }
  return false;
}

// A client of the test server (retries for 10 s, at most `connections` requests at once);
// `tune` may change its options first.
inline std::unique_ptr<S3Client> MakeTestS3Client(
    const S3Env& env, int connections = 16,
    const std::function<void(S3ClientOptions*)>& tune = nullptr) {
  S3ClientOptions o;
  o.endpoint = env.endpoint;
  o.region = env.region;
  o.bucket = env.bucket;
  o.retry_timeout = 10;
  o.http.max_connections = connections;
  if (tune) tune(&o);
  return std::make_unique<S3Client>(o, AwsCredentials{env.access_key, env.secret_key, ""});
}

}  // namespace s3block::testing

#endif  // S3BLOCK_TESTS_UNIT_S3_TEST_ENV_H_
