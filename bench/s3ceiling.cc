// s3ceiling: the S3 server's own ceiling for a device that stores one object per block.
//
// Parallel PUTs of COUNT objects of OBJECT_SIZE bytes, then parallel GETs of the same objects,
// from THREADS threads sharing one S3Client (the project's libcurl client: kept-alive
// connections, SigV4 with the signed SHA-256 of each body, the CRC-32C recorded on PUT and checked
// on GET). No block device, no cache: only the requests. Each phase stops after COUNT objects or
// SECONDS seconds, whichever comes first.
//
//   s3ceiling ENDPOINT BUCKET PREFIX OBJECT_SIZE COUNT THREADS SECONDS
//
// Keys come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Prints one line per phase:
//   put objects=N bytes=B seconds=S
//   get objects=N bytes=B seconds=S
// and exits non-zero if any request failed.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "s3/s3_client.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Phase {
  long objects = 0;
  long long bytes = 0;
  double seconds = 0;
  bool failed = false;
};

template <typename Fn>
Phase RunPhase(long count, int threads, double limit, Fn&& one) {
  std::atomic<long> next{0};
  std::atomic<long> done{0};
  std::atomic<long long> bytes{0};
  std::atomic<bool> failed{false};
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(limit);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      while (!failed.load()) {
        if (Clock::now() >= deadline) return;
        const long i = next.fetch_add(1);
        if (i >= count) return;
        long long n = 0;
        if (!one(i, &n)) {
          failed = true;
          return;
        }
        bytes += n;
        ++done;
      }
    });
  }
  for (auto& th : pool) th.join();
  Phase p;
  p.objects = done.load();
  p.bytes = bytes.load();
  p.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  p.failed = failed.load();
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr,
                 "usage: %s ENDPOINT BUCKET PREFIX OBJECT_SIZE COUNT THREADS SECONDS\n", argv[0]);
    return 2;
  }
  const char* ak = std::getenv("AWS_ACCESS_KEY_ID");
  const char* sk = std::getenv("AWS_SECRET_ACCESS_KEY");
  if (!ak || !sk) {
    std::fprintf(stderr, "s3ceiling: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n");
    return 2;
  }
  const std::string prefix = argv[3];
  const size_t object_size = std::strtoull(argv[4], nullptr, 10);
  const long count = std::strtol(argv[5], nullptr, 10);
  const int threads = std::atoi(argv[6]);
  const double seconds = std::strtod(argv[7], nullptr);
  if (object_size == 0 || count <= 0 || threads <= 0 || seconds <= 0) {
    std::fprintf(stderr, "s3ceiling: bad numbers\n");
    return 2;
  }

  s3block::S3ClientOptions options;
  options.endpoint = argv[1];
  options.bucket = argv[2];
  options.path_style = true;
  options.retry_timeout = 30;
  options.http.max_connections = static_cast<size_t>(threads);
  s3block::AwsCredentials credentials{ak, sk, ""};
  s3block::S3Client client(options, credentials);

  // Random, incompressible bodies; each thread writes from a few prepared buffers.
  std::vector<std::vector<uint8_t>> bodies(8, std::vector<uint8_t>(object_size));
  std::mt19937_64 rng(12345);
  for (auto& b : bodies)
    for (auto& c : b) c = static_cast<uint8_t>(rng());
  auto key = [&](long i) { return prefix + "/" + std::to_string(i); };

  Phase put = RunPhase(count, threads, seconds, [&](long i, long long* n) {
    const auto& body = bodies[i % bodies.size()];
    s3block::Status st = client.PutObject(key(i), body);
    if (!st.ok()) {
      std::fprintf(stderr, "s3ceiling: PUT %s: %s\n", key(i).c_str(), st.ToString().c_str());
      return false;
    }
    *n = static_cast<long long>(body.size());
    return true;
  });
  std::printf("put objects=%ld bytes=%lld seconds=%.6f\n", put.objects, put.bytes, put.seconds);
  std::fflush(stdout);
  if (put.failed) return 1;

  // GET only the objects that the PUT phase wrote.
  Phase get = RunPhase(put.objects, threads, seconds, [&](long i, long long* n) {
    std::string body;
    bool found = false;
    s3block::Status st = client.GetObject(key(i), &body, &found);
    if (!st.ok() || !found || body.size() != object_size) {
      std::fprintf(stderr, "s3ceiling: GET %s: %s\n", key(i).c_str(),
                   st.ok() ? "missing or wrong length" : st.ToString().c_str());
      return false;
    }
    *n = static_cast<long long>(body.size());
    return true;
  });
  std::printf("get objects=%ld bytes=%lld seconds=%.6f\n", get.objects, get.bytes, get.seconds);
  return get.failed ? 1 : 0;
}
