// The CPU cost of the codec layer alone: blocks written and read through CodecStore over a store
// in memory, one thread, timed with the thread's CPU clock (which other work on the machine
// disturbs far less than wall time). One row per encoding and kind of data, in microseconds per
// block, and what the layer adds to the raw pass-through.
//
//   codec_cost TEXT_FILE [BLOCKS] [BLOCK_SIZE]
//
// TEXT_FILE supplies the compressible data (its first BLOCKS * BLOCK_SIZE bytes, repeated if
// short); the incompressible data comes from a pseudo-random generator. Built and run by
// bench/layers/codec_cost.sh.
#include <time.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "s3block/codec_store.h"
#include "s3block/export_meta.h"

namespace s3block {
namespace {

// A leaf store in memory: just enough of BlockStore for the codec layer.
class MemStore : public BlockStore {
 public:
  std::string Describe() const override { return "memory"; }
  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = blocks_.find({std::string(e), id});
    *found = it != blocks_.end();
    if (*found) *data = it->second;
    else data->clear();
    return Status::Ok();
  }
  Status Write(std::string_view e, uint64_t id, std::span<const uint8_t> data, bool) override {
    std::lock_guard<std::mutex> lock(mu_);
    Bytes& b = blocks_[{std::string(e), id}];
    b.assign(data.begin(), data.end());
    stored_ += data.size();
    return Status::Ok();
  }
  Status Delete(std::string_view, std::span<const uint64_t>, bool) override { return Status::Ok(); }
  Status Flush(std::string_view) override { return Status::Ok(); }
  Status ListBlocks(std::string_view, const std::function<void(uint64_t)>&) override {
    return Status::Ok();
  }
  Status ListExports(std::vector<std::string>*) override { return Status::Ok(); }
  Status ReadMeta(std::string_view e, std::string* text, bool* found) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = meta_.find(std::string(e));
    *found = it != meta_.end();
    if (*found) *text = it->second;
    return Status::Ok();
  }
  Status WriteMeta(std::string_view e, std::string_view text) override {
    std::lock_guard<std::mutex> lock(mu_);
    meta_[std::string(e)] = std::string(text);
    return Status::Ok();
  }
  Status DeleteMeta(std::string_view) override { return Status::Ok(); }

  uint64_t stored() const { return stored_; }

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, uint64_t>, Bytes> blocks_;
  std::map<std::string, std::string> meta_;
  uint64_t stored_ = 0;
};

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int Run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: codec_cost TEXT_FILE [BLOCKS] [BLOCK_SIZE]\n");
    return 2;
  }
  const uint64_t blocks = argc > 2 ? std::stoull(argv[2]) : 16384;
  const uint32_t bs = argc > 3 ? static_cast<uint32_t>(std::stoul(argv[3])) : 4096;
  std::ifstream f(argv[1], std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (text.empty()) {
    std::fprintf(stderr, "codec_cost: %s is empty or unreadable\n", argv[1]);
    return 1;
  }
  std::vector<Bytes> data_text(blocks), data_random(blocks);
  std::mt19937_64 rng(1);
  for (uint64_t i = 0; i < blocks; ++i) {
    data_text[i].resize(bs);
    for (uint32_t j = 0; j < bs; ++j) data_text[i][j] = text[(i * bs + j) % text.size()];
    data_random[i].resize(bs);
    for (auto& c : data_random[i]) c = static_cast<uint8_t>(rng());
  }
  const std::string key(32, 'k');
  const char* sets[][3] = {{"none", "none", "none"},        {"none", "none", "crc32c"},
                           {"zstd", "none", "none"},        {"none", "aes-256-gcm", "none"},
                           {"zstd", "aes-256-gcm", "none"}};
  std::printf("| layers | data | write us/block | read us/block | added write | added read | stored |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (int kind = 0; kind < 2; ++kind) {
    const auto& data = kind == 0 ? data_text : data_random;
    double raw_w = 0, raw_r = 0;
    for (const auto& set : sets) {
      ExportMeta meta;
      meta.size = blocks * bs;
      meta.block_size = bs;
      if (!meta.encoding.SetCompression(set[0]).ok() || !meta.encoding.SetEncryption(set[1]).ok() ||
          !meta.encoding.SetChecksum(set[2]).ok())
        return 1;
      if (meta.encoding.encryption != BlockEncoding::Encryption::kNone &&
          !MakeKeyCheck(key, &meta.encoding.key_check).ok())
        return 1;
      auto mem = std::make_shared<MemStore>();
      CodecStore codec(mem, key);
      if (!codec.WriteMeta("bench", meta.Serialize()).ok()) return 1;
      // Best of three passes: the least disturbed by other work.
      double w = 1e9, r = 1e9;
      Bytes back;
      for (int pass = 0; pass < 3; ++pass) {
        double t0 = CpuSeconds();
        for (uint64_t i = 0; i < blocks; ++i)
          if (!codec.Write("bench", i, data[i], false).ok()) return 1;
        double t1 = CpuSeconds();
        bool found = false;
        for (uint64_t i = 0; i < blocks; ++i)
          if (!codec.Read("bench", i, &back, &found).ok() || !found || back != data[i]) return 1;
        double t2 = CpuSeconds();
        w = std::min(w, (t1 - t0) / blocks * 1e6);
        r = std::min(r, (t2 - t1) / blocks * 1e6);
      }
      if (meta.encoding.raw()) raw_w = w, raw_r = r;
      std::printf("| %s | %s | %.2f | %.2f | %+.2f | %+.2f | %.0f%% |\n",
                  meta.encoding.Describe().c_str(), kind == 0 ? "text" : "random", w, r, w - raw_w,
                  r - raw_r, 100.0 * mem->stored() / 3 / (double(blocks) * bs));
    }
  }
  return 0;
}

}  // namespace
}  // namespace s3block

int main(int argc, char** argv) { return s3block::Run(argc, argv); }
