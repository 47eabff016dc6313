#include "s3block/admin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

#include "file/file_store.h"
#include "s3block/volume.h"
#include "test_util.h"

namespace s3block {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::make_shared<FileStore>(dir_.path() + "/store");
    ASSERT_OK(store_->Check());
  }
  // A sparse image: random data in a few places, zeros and holes elsewhere.
  std::string MakeImage(uint64_t size) {
    std::string path = dir_.path() + "/image";
    std::ofstream(path).close();
    fs::resize_file(path, size);
    int fd = ::open(path.c_str(), O_WRONLY);
    std::mt19937_64 rng(3);
    for (uint64_t off : {uint64_t{0}, uint64_t{12345}, size / 2, size - 5000}) {
      std::vector<uint8_t> data(5000);
      for (auto& c : data) c = static_cast<uint8_t>(rng());
      EXPECT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)), 5000);
    }
    std::vector<uint8_t> zeros(8192, 0);  // explicit zeros, not a hole
    EXPECT_EQ(::pwrite(fd, zeros.data(), zeros.size(), 65536), 8192);
    ::close(fd);
    return path;
  }
  std::string Slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

  TempDir dir_;
  std::shared_ptr<FileStore> store_;
  AdminOptions options_;
};

TEST_F(AdminTest, CreateListInfo) {
  ASSERT_OK(CreateExport(*store_, "a", 10 << 20, 4096, options_));
  ASSERT_OK(CreateExport(*store_, "b", 1 << 20, 65536, options_));
  EXPECT_EQ(CreateExport(*store_, "a", 1 << 20, 4096, options_).err(), EEXIST);
  EXPECT_EQ(CreateExport(*store_, "../x", 1 << 20, 4096, options_).err(), EINVAL);
  std::vector<ExportInfo> all;
  ASSERT_OK(ListExportInfo(*store_, &all));
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "a");
  EXPECT_EQ(all[0].meta.size, 10u << 20);
  EXPECT_EQ(all[1].meta.block_size, 65536u);
  ExportInfo info;
  EXPECT_EQ(GetExportInfo(*store_, "missing", &info).err(), ENOENT);
}

TEST_F(AdminTest, ImportIsSparseAndExportRoundTripsByteForByte) {
  const uint64_t size = 3 * (1 << 20) + 1000;  // not a multiple of the block size
  std::string image = MakeImage(size);
  ASSERT_OK(ImportImage(*store_, "img", image, 4096, options_));
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*store_, "img", &info));
  EXPECT_EQ(info.meta.size, size);
  // 4 runs of 5000 bytes touch at most 2-3 blocks each; the zeros at 64K are not stored.
  EXPECT_LE(info.blocks_stored, 12u);
  EXPECT_GE(info.blocks_stored, 8u);
  EXPECT_FALSE(fs::exists(store_->BlockPath("img", 16)));
  std::string out = dir_.path() + "/out";
  ASSERT_OK(ExportImage(*store_, "img", out, options_));
  EXPECT_EQ(Slurp(out), Slurp(image));
  struct stat st;
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, size / 4);  // holes, not written zeros
  // And the same bytes through a Volume, as the plugin would serve them.
  VolumeOptions vo;
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(store_, "img", vo, &v));
  std::string through(size, '\0');
  ASSERT_OK(v->Read(reinterpret_cast<uint8_t*>(through.data()), size, 0));
  EXPECT_EQ(through, Slurp(image));
}

TEST_F(AdminTest, CopyMakesAnIndependentExport) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*store_, "src", image, 4096, options_));
  ASSERT_OK(CopyExport(*store_, "src", "dst", options_));
  EXPECT_EQ(CopyExport(*store_, "src", "dst", options_).err(), EEXIST);
  std::string a = dir_.path() + "/a", b = dir_.path() + "/b";
  ASSERT_OK(ExportImage(*store_, "dst", b, options_));
  EXPECT_EQ(Slurp(b), Slurp(image));
  ASSERT_OK(DeleteExport(*store_, "src", options_));
  ASSERT_OK(ExportImage(*store_, "dst", b, options_));
  EXPECT_EQ(Slurp(b), Slurp(image));
}

TEST_F(AdminTest, ResizeGrowsAtOnceAndShrinksOnlyWhenAllowed) {
  ASSERT_OK(CreateExport(*store_, "r", 1 << 20, 4096, options_));
  {
    std::shared_ptr<Volume> v;
    ASSERT_OK(Volume::Open(store_, "r", VolumeOptions(), &v));
    std::vector<uint8_t> ones(1 << 20, 1);
    ASSERT_OK(v->Write(ones.data(), ones.size(), 0, false));
    ASSERT_OK(v->Flush());
  }
  EXPECT_EQ(ResizeExport(*store_, "r", 100000, false, options_).err(), EINVAL);
  ASSERT_OK(ResizeExport(*store_, "r", 100000, true, options_));  // mid-block
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*store_, "r", &info));
  EXPECT_EQ(info.meta.size, 100000u);
  EXPECT_EQ(info.blocks_stored, 25u);  // ceil(100000 / 4096)
  ASSERT_OK(ResizeExport(*store_, "r", 2 << 20, false, options_));
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(store_, "r", VolumeOptions(), &v));
  std::vector<uint8_t> all(2 << 20);
  ASSERT_OK(v->Read(all.data(), all.size(), 0));
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], i < 100000 ? 1 : 0) << i;
}

TEST_F(AdminTest, DeleteRemovesEverythingAndInterruptedOperationsAreNotServed) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*store_, "d", image, 4096, options_));
  std::atomic<bool> cancel{true};
  AdminOptions cancelled = options_;
  cancelled.cancel = &cancel;
  EXPECT_EQ(DeleteExport(*store_, "d", cancelled).err(), ECANCELED);
  std::shared_ptr<Volume> v;
  EXPECT_EQ(Volume::Open(store_, "d", VolumeOptions(), &v).err(), EBUSY);
  ASSERT_OK(DeleteExport(*store_, "d", options_));
  EXPECT_FALSE(fs::exists(dir_.path() + "/store/exports/d"));
  EXPECT_EQ(ImportImage(*store_, "i", image, 4096, cancelled).err(), ECANCELED);
  Status s = Volume::Open(store_, "i", VolumeOptions(), &v);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("incomplete"), std::string::npos) << s.message();
  // The admin command's refusal is not EBUSY, which says that a server holds the export.
  s = ResizeExport(*store_, "i", 2 << 20, false, options_);
  EXPECT_EQ(s.err(), EUCLEAN);
  EXPECT_NE(s.message().find("incomplete"), std::string::npos) << s.message();
  ASSERT_OK(ImportImage(*store_, "i", image, 4096, options_));  // a re-run finishes it
  ASSERT_OK(Volume::Open(store_, "i", VolumeOptions(), &v));
}

// Deletes go in batches of a thousand blocks; the progress they report counts blocks.
TEST_F(AdminTest, DeleteReportsProgressInBlocks) {
  const uint64_t kBlocks = 2500;
  std::string path = dir_.path() + "/full";
  {
    std::mt19937_64 rng(5);
    std::string data(kBlocks * 4096, '\0');
    for (auto& c : data) c = static_cast<char>(rng() | 1);  // no block of zeros
    std::ofstream(path, std::ios::binary) << data;
  }
  ASSERT_OK(ImportImage(*store_, "big", path, 4096, options_));
  std::mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  AdminOptions o = options_;
  o.progress = [&](uint64_t done, uint64_t total) {
    std::lock_guard<std::mutex> lock(mu);
    calls.emplace_back(done, total);
  };
  ASSERT_OK(DeleteExport(*store_, "big", o));
  ASSERT_FALSE(calls.empty());
  for (const auto& [done, total] : calls) {
    EXPECT_EQ(total, kBlocks);
    EXPECT_LE(done, kBlocks);
  }
  EXPECT_EQ(calls.back(), std::make_pair(kBlocks, kBlocks));
}

TEST_F(AdminTest, RefusesToChangeAServedExportUnlessForced) {
  ASSERT_OK(CreateExport(*store_, "s", 1 << 20, 4096, options_));
  std::shared_ptr<Volume> served;
  VolumeOptions vo;
  vo.holder = "nbdkit pid 4242";
  ASSERT_OK(Volume::Open(store_, "s", vo, &served));
  Status s = DeleteExport(*store_, "s", options_);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("nbdkit pid 4242"), std::string::npos) << s.message();
  EXPECT_EQ(ResizeExport(*store_, "s", 2 << 20, false, options_).err(), EBUSY);
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*store_, "s", &info));
  EXPECT_EQ(info.lease_holder, "nbdkit pid 4242");
}

// A store whose leases cannot be taken, as with read-only S3 credentials (the lease's PUT is
// refused); QueryLease still answers who holds one.
class NoLeaseStore : public FileStore {
 public:
  using FileStore::FileStore;
  Status AcquireLease(std::string_view, const std::string&, bool,
                      std::unique_ptr<ExportLease>*) override {
    return Status::IoError("PUT lease: HTTP 403 'AccessDenied'");
  }
  Status QueryLease(std::string_view, std::string* holder) override {
    *holder = holder_;
    return Status::Ok();
  }
  std::string holder_;
};

TEST_F(AdminTest, ExportAndVerifyTakeTheLeaseOrReadWithoutItWhenTheyCannot) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*store_, "r", image, 4096, options_));
  const std::string out = dir_.path() + "/out";
  VerifyReport report;
  {
    // A served export: both refuse, naming the server.
    std::shared_ptr<Volume> served;
    VolumeOptions vo;
    vo.holder = "nbdkit pid 4242";
    ASSERT_OK(Volume::Open(store_, "r", vo, &served));
    Status s = VerifyExport(*store_, "r", options_, &report);
    EXPECT_EQ(s.err(), EBUSY);
    EXPECT_NE(s.message().find("refusing to verify it while it changes"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("nbdkit pid 4242"), std::string::npos) << s.message();
    s = ExportImage(*store_, "r", out, options_);
    EXPECT_EQ(s.err(), EBUSY);
    EXPECT_NE(s.message().find("refusing to export it while it changes"), std::string::npos) << s.message();
  }
  // Leases that cannot be taken: read without one, with a warning, unless someone holds it.
  NoLeaseStore ro(dir_.path() + "/store");
  ASSERT_OK(ro.Check());
  std::vector<std::string> warnings;
  AdminOptions o = options_;
  o.warn = [&](const std::string& w) { warnings.push_back(w); };
  ASSERT_OK(ExportImage(ro, "r", out, o));
  EXPECT_EQ(Slurp(out), Slurp(image));
  ASSERT_OK(VerifyExport(ro, "r", o, &report));
  EXPECT_TRUE(report.problems.empty());
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("AccessDenied"), std::string::npos) << warnings[0];
  ro.holder_ = "nbdkit pid 77";
  Status s = VerifyExport(ro, "r", o, &report);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("nbdkit pid 77"), std::string::npos) << s.message();
  EXPECT_EQ(ExportImage(ro, "r", out, o).err(), EBUSY);
  // The others change the export: they need the lease.
  EXPECT_FALSE(ResizeExport(ro, "r", 2 << 20, false, o).ok());
}

// A store whose leases are lost as soon as they are taken (not renewed in time).
class LosingLeaseStore : public FileStore {
 public:
  using FileStore::FileStore;
  Status AcquireLease(std::string_view, const std::string&, bool,
                      std::unique_ptr<ExportLease>* out) override {
    struct Lost : ExportLease {
      Status Valid() const override { return Status::IoError("the lease could not be renewed in time"); }
    };
    *out = std::make_unique<Lost>();
    return Status::Ok();
  }
};

TEST_F(AdminTest, ReadingAnExportWhoseLeaseWasLostMeanwhileFails) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*store_, "l", image, 4096, options_));
  ASSERT_OK(CopyExport(*store_, "l", "l2", options_));
  LosingLeaseStore losing(dir_.path() + "/store");
  ASSERT_OK(losing.Check());
  Status s = ExportImage(losing, "l", dir_.path() + "/out", options_);
  EXPECT_EQ(s.err(), EIO);
  EXPECT_NE(s.message().find("may mix old and new blocks"), std::string::npos) << s.message();
  VerifyReport report;
  EXPECT_EQ(VerifyExport(losing, "l", options_, &report).err(), EIO);
  EXPECT_EQ(CopyExport(losing, "l", "l3", options_).err(), EIO);
}

TEST_F(AdminTest, VerifyFindsDamageBehindItsBack) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*store_, "v", image, 4096, options_));
  VerifyReport report;
  ASSERT_OK(VerifyExport(*store_, "v", options_, &report));
  EXPECT_TRUE(report.problems.empty());
  EXPECT_GT(report.blocks_checked, 0u);
  fs::resize_file(store_->BlockPath("v", 0), 100);
  std::ofstream(store_->BlockPath("v", 100000)) << std::string(4096, 'x');  // past the end
  ASSERT_OK(VerifyExport(*store_, "v", options_, &report));
  ASSERT_EQ(report.problems.size(), 2u);
  EXPECT_NE(report.problems[0].find("block 0 has 100 bytes"), std::string::npos) << report.problems[0];
  EXPECT_NE(report.problems[1].find("past the end"), std::string::npos) << report.problems[1];
}

}  // namespace
}  // namespace s3block

namespace s3block {
namespace {

TEST_F(AdminTest, ChangingAMissingExportFailsAndLeavesNothingBehind) {
  EXPECT_EQ(DeleteExport(*store_, "ghost", options_).err(), ENOENT);
  EXPECT_EQ(ResizeExport(*store_, "ghost", 1 << 20, false, options_).err(), ENOENT);
  EXPECT_EQ(CopyExport(*store_, "ghost", "ghost2", options_).err(), ENOENT);
  EXPECT_FALSE(fs::exists(dir_.path() + "/store/exports/ghost"));
  EXPECT_FALSE(fs::exists(dir_.path() + "/store/exports/ghost2"));
}

}  // namespace
}  // namespace s3block
