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
#include "log/layout_store.h"
#include "log/segment.h"
#include "s3block/config.h"
#include "s3block/store_factory.h"
#include "s3block/volume.h"
#include "test_util.h"
#include "util/crc32c.h"

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

namespace s3block {
namespace {

// The operations on log exports, through the stack the command works on (MakeCodedStore: the
// codec layer over the layout router, over the same directory as store_), with 1M segments: an
// import written in order (one thread) fills segment 2 with blocks 0-252, segment 3 with
// 253-505 and so on (segment 1 is the writer's first, empty one).
class AdminLogTest : public AdminTest {
 protected:
  void SetUp() override {
    AdminTest::SetUp();
    Config c;
    ASSERT_OK(c.Set("store", dir_.path() + "/store"));
    ASSERT_OK(c.Set("segment-size", "1M"));
    ASSERT_OK(c.Finish());
    ASSERT_OK(MakeCodedStore(c, &coded_, &layouts_));
    ASSERT_OK(coded_->Check());
    options_.layouts = layouts_.get();
    log_ = options_;
    log_.layout = ExportLayout::kLog;
    log_.threads = 1;
  }
  std::string ExportDir(const std::string& name) { return dir_.path() + "/store/exports/" + name; }
  // A file of `blocks` 4K blocks, none of them zeros.
  std::string FullImage(uint64_t blocks, const std::string& name = "full") {
    std::string path = dir_.path() + "/" + name;
    std::mt19937_64 rng(blocks);
    std::string data(blocks * 4096, '\0');
    for (auto& c : data) c = static_cast<char>(rng() | 1);
    std::ofstream(path, std::ios::binary) << data;
    return path;
  }
  ExportInfo Info(const std::string& name) {
    ExportInfo info;
    Status s = GetExportInfo(*coded_, name, &info, layouts_.get());
    EXPECT_TRUE(s.ok()) << s.ToString();
    return info;
  }
  std::string Exported(const std::string& name) {
    const std::string out = dir_.path() + "/out-" + name;
    Status s = ExportImage(*coded_, name, out, options_);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return Slurp(out);
  }

  std::shared_ptr<BlockStore> coded_;
  std::shared_ptr<log::LayoutStore> layouts_;
  AdminOptions log_;
};

TEST_F(AdminLogTest, CreateRecordsTheLayoutAndListAndInfoShowIt) {
  ASSERT_OK(CreateExport(*coded_, "l", 64 << 20, 4096, log_));
  ASSERT_OK(CreateExport(*coded_, "b", 1 << 20, 4096, options_));
  EXPECT_NE(Slurp(ExportDir("l") + "/metadata").find("layout=log\n"), std::string::npos);
  EXPECT_EQ(Slurp(ExportDir("b") + "/metadata").find("layout="), std::string::npos);
  // A log export's frames hold blocks of at most 1M: refused before anything is made.
  Status s = CreateExport(*coded_, "huge", 64 << 20, 2 << 20, log_);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("at most 1M"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(ExportDir("huge")));
  std::vector<ExportInfo> all;
  ASSERT_OK(ListExportInfo(*coded_, &all, layouts_.get()));
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "b");
  EXPECT_EQ(all[0].meta.layout, ExportLayout::kBlocks);
  EXPECT_FALSE(all[0].has_log);
  EXPECT_EQ(all[1].meta.layout, ExportLayout::kLog);
  EXPECT_TRUE(all[1].has_log);
  EXPECT_EQ(all[1].log.segments, 0u);  // nothing written yet, and listing wrote nothing
  EXPECT_FALSE(fs::exists(ExportDir("l") + "/log"));
}

TEST_F(AdminLogTest, ImportStoresSegmentsAndACheckpointThatInfoShows) {
  const uint64_t size = 3 * (1 << 20) + 1000;
  std::string image = MakeImage(size);
  ASSERT_OK(ImportImage(*coded_, "img", image, 4096, log_));
  ExportInfo info = Info("img");
  ASSERT_TRUE(info.has_log) << info.log_error;
  EXPECT_EQ(info.meta.layout, ExportLayout::kLog);
  EXPECT_EQ(info.meta.state, ExportMeta::State::kReady);
  EXPECT_GE(info.blocks_stored, 8u);
  EXPECT_EQ(info.log.blocks, info.blocks_stored);
  EXPECT_GE(info.log.segments, 1u);
  EXPECT_GE(info.log.live_bytes, info.blocks_stored * 4096);
  EXPECT_EQ(info.log.dead_bytes, info.log.segment_bytes - info.log.live_bytes);
  // The import closed the export: its map is checkpointed as of the last segment.
  EXPECT_GT(info.log.last_seq, 0u);
  EXPECT_EQ(info.log.checkpoint_seq, info.log.last_seq);
  EXPECT_TRUE(fs::exists(ExportDir("img") + "/checkpoint"));
  EXPECT_FALSE(fs::exists(store_->BlockPath("img", 0)));  // no block files
  EXPECT_EQ(Exported("img"), Slurp(image));
}

TEST_F(AdminLogTest, CopyConvertsBetweenLayouts) {
  std::string image = MakeImage(1 << 20);
  ASSERT_OK(ImportImage(*coded_, "src", image, 4096, log_));
  AdminOptions to_blocks = options_, to_log = options_;
  to_blocks.layout_given = to_log.layout_given = true;
  to_log.layout = ExportLayout::kLog;
  ASSERT_OK(CopyExport(*coded_, "src", "same", options_));  // the source's layout
  ASSERT_OK(CopyExport(*coded_, "src", "blocks", to_blocks));
  ASSERT_OK(CopyExport(*coded_, "blocks", "log", to_log));
  EXPECT_EQ(Info("same").meta.layout, ExportLayout::kLog);
  EXPECT_EQ(Info("blocks").meta.layout, ExportLayout::kBlocks);
  EXPECT_TRUE(fs::exists(store_->BlockPath("blocks", 0)));
  ExportInfo log = Info("log");
  EXPECT_EQ(log.meta.layout, ExportLayout::kLog);
  EXPECT_EQ(log.log.checkpoint_seq, log.log.last_seq);
  for (const char* name : {"same", "blocks", "log"}) EXPECT_EQ(Exported(name), Slurp(image)) << name;
  // A blocks export whose blocks a log export cannot hold is refused, leaving nothing.
  ASSERT_OK(CreateExport(*coded_, "wide", 4 << 20, 2 << 20, options_));
  Status s = CopyExport(*coded_, "wide", "wide-log", to_log);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("at most 1M"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(ExportDir("wide-log")));
}

TEST_F(AdminLogTest, ResizeDeletesTheBlocksPastTheEnd) {
  std::string path = dir_.path() + "/ones";
  std::ofstream(path, std::ios::binary) << std::string(1 << 20, '\1');
  ASSERT_OK(ImportImage(*coded_, "r", path, 4096, log_));
  EXPECT_EQ(ResizeExport(*coded_, "r", 100000, false, log_).err(), EINVAL);
  ASSERT_OK(ResizeExport(*coded_, "r", 100000, true, log_));  // mid-block
  ExportInfo info = Info("r");
  EXPECT_EQ(info.meta.size, 100000u);
  EXPECT_EQ(info.blocks_stored, 25u);
  EXPECT_EQ(info.log.blocks, 25u);
  EXPECT_EQ(info.log.checkpoint_seq, info.log.last_seq);
  ASSERT_OK(ResizeExport(*coded_, "r", 2 << 20, false, log_));
  const std::string all = Exported("r");
  ASSERT_EQ(all.size(), 2u << 20);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], i < 100000 ? 1 : 0) << i;
}

TEST_F(AdminLogTest, GcRewritesLiveBlocksOfMostlyDeadSegmentsAndKeepsTheData) {
  std::string image = FullImage(1000);
  ASSERT_OK(ImportImage(*coded_, "g", image, 4096, log_));
  // Blocks 300 on are deleted: segment 3 keeps 47 of its 253 blocks, those after it none.
  ASSERT_OK(ResizeExport(*coded_, "g", 300 * 4096, true, log_));
  const ExportInfo before = Info("g");
  GcReport r;
  ASSERT_OK(CollectExportGarbage(*coded_, "g", false, log_, &r));
  EXPECT_GE(r.segments_freed, 1u);
  EXPECT_GE(r.bytes_freed, 253u * 4096);
  EXPECT_GE(r.bytes_copied, 47u * 4096);
  EXPECT_LT(r.bytes_copied, 100u * 4096);  // segment 2 is all live: not rewritten
  const ExportInfo after = Info("g");
  EXPECT_LT(after.log.dead_bytes, before.log.dead_bytes / 4);
  EXPECT_EQ(after.log.blocks, 300u);
  EXPECT_EQ(after.log.checkpoint_seq, after.log.last_seq);
  EXPECT_EQ(Exported("g"), Slurp(image).substr(0, 300 * 4096));
  // --all: segment 2 too (only its head is dead).
  ASSERT_OK(CollectExportGarbage(*coded_, "g", true, log_, &r));
  EXPECT_GE(r.bytes_copied, 253u * 4096);
  EXPECT_EQ(Exported("g"), Slurp(image).substr(0, 300 * 4096));
}

TEST_F(AdminLogTest, GcRefusesABlocksExportAndAServedOne) {
  ASSERT_OK(CreateExport(*coded_, "b", 1 << 20, 4096, options_));
  GcReport r;
  Status s = CollectExportGarbage(*coded_, "b", false, log_, &r);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("gc applies to log exports"), std::string::npos) << s.message();
  EXPECT_EQ(CollectExportGarbage(*coded_, "missing", false, log_, &r).err(), ENOENT);
  ASSERT_OK(CreateExport(*coded_, "l", 1 << 20, 4096, log_));
  std::shared_ptr<Volume> served;
  VolumeOptions vo;
  vo.holder = "nbdkit pid 4242";
  ASSERT_OK(Volume::Open(coded_, "l", vo, &served));
  s = CollectExportGarbage(*coded_, "l", false, log_, &r);
  EXPECT_EQ(s.err(), EBUSY);
  EXPECT_NE(s.message().find("nbdkit pid 4242"), std::string::npos) << s.message();
}

TEST_F(AdminLogTest, VerifyChecksTheSegmentsAndCountsADamagedFrameOnce) {
  std::string image = FullImage(100);
  ASSERT_OK(ImportImage(*coded_, "v", image, 4096, log_));
  VerifyReport report;
  ASSERT_OK(VerifyExport(*coded_, "v", log_, &report));
  EXPECT_TRUE(report.problems.empty()) << report.problems[0];
  EXPECT_EQ(report.blocks_checked, 100u);
  EXPECT_EQ(report.segments_checked, 1u);
  ASSERT_OK(coded_->CloseExport("v"));
  // A byte of the last frame (block 99's) changed behind the store's back.
  const std::string segment = ExportDir("v") + "/log/0000000000000002";
  ASSERT_TRUE(fs::exists(segment));
  {
    std::fstream f(segment, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(segment)) - 100);
    f.put('\x5a' ^ static_cast<char>(f.peek()));
  }
  ASSERT_OK(VerifyExport(*coded_, "v", log_, &report));
  ASSERT_EQ(report.problems.size(), 1u) << report.problems[0] << " | " << report.problems.back();
  EXPECT_NE(report.problems[0].find("block 99"), std::string::npos) << report.problems[0];
  ASSERT_OK(coded_->CloseExport("v"));
  // A checkpoint that cannot be read is damage found, not a failure to verify.
  fs::resize_file(ExportDir("v") + "/checkpoint/0000000000000002", 10);
  ASSERT_OK(VerifyExport(*coded_, "v", log_, &report));
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("checkpoint"), std::string::npos) << report.problems[0];
  // ... and info shows it beside what the metadata says.
  ExportInfo info;
  ASSERT_OK(GetExportInfo(*coded_, "v", &info, layouts_.get()));
  EXPECT_TRUE(info.has_meta);
  EXPECT_FALSE(info.has_log);
  EXPECT_NE(info.log_error.find("checkpoint"), std::string::npos) << info.log_error;
}

// A frame rewritten whole (another payload, with the CRC-32C of it in the frame) reads back
// without an error: only the segment's entry, which keeps the CRC the block was stored with,
// tells. Verify compares them.
TEST_F(AdminLogTest, VerifyFindsAFrameRewrittenWithItsOwnChecksum) {
  std::string image = FullImage(100);
  ASSERT_OK(ImportImage(*coded_, "w", image, 4096, log_));
  const std::string segment = ExportDir("w") + "/log/0000000000000002";
  // Blocks 0-99 in order of id, after the head of 100 entries.
  const uint64_t frame = log::SegmentDataOffset(100) + 50 * log::FrameBytes(4096);
  {
    std::fstream f(segment, std::ios::in | std::ios::out | std::ios::binary);
    std::vector<char> payload(4096, 'X');
    const uint32_t crc = Crc32c(0, reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
    char le[4] = {static_cast<char>(crc), static_cast<char>(crc >> 8), static_cast<char>(crc >> 16),
                  static_cast<char>(crc >> 24)};
    f.seekp(static_cast<std::streamoff>(frame + 4));
    f.write(le, 4);
    f.write(payload.data(), static_cast<std::streamsize>(payload.size()));
  }
  VerifyReport report;
  ASSERT_OK(VerifyExport(*coded_, "w", log_, &report));
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("block 50 "), std::string::npos) << report.problems[0];
  EXPECT_NE(report.problems[0].find("checksum"), std::string::npos) << report.problems[0];
}

// Counts the deletes of blocks and the reads that pass through it.
class CountingStore : public StoreDecorator {
 public:
  using StoreDecorator::StoreDecorator;
  Status Delete(std::string_view e, std::span<const uint64_t> ids, bool fua) override {
    deleted += ids.size();
    return StoreDecorator::Delete(e, ids, fua);
  }
  Status Read(std::string_view e, uint64_t id, Bytes* data, bool* found) override {
    ++reads;
    return StoreDecorator::Read(e, id, data, found);
  }
  void ReadBatch(std::string_view e, std::span<BlockRead> batch) override {
    ++batches;
    StoreDecorator::ReadBatch(e, batch);
  }
  std::atomic<uint64_t> deleted{0}, reads{0}, batches{0};
};

// A log export's blocks are read in runs (one ranged read of a segment each), with progress in
// blocks; a blocks export's one by one, as before.
TEST_F(AdminLogTest, ExportAndVerifyReadALogExportInRuns) {
  std::string image = FullImage(600);
  ASSERT_OK(ImportImage(*coded_, "runs", image, 4096, log_));
  CountingStore counting(coded_);
  std::mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  AdminOptions o = log_;
  o.threads = 4;
  o.progress = [&](uint64_t done, uint64_t total) {
    std::lock_guard<std::mutex> lock(mu);
    calls.emplace_back(done, total);
  };
  const std::string out = dir_.path() + "/runs.img";
  ASSERT_OK(ExportImage(counting, "runs", out, o));
  EXPECT_EQ(Slurp(out), Slurp(image));
  EXPECT_EQ(counting.reads.load(), 0u);
  EXPECT_GE(counting.batches.load(), 2u);
  EXPECT_LE(counting.batches.load(), 10u);
  ASSERT_FALSE(calls.empty());
  for (const auto& [done, total] : calls) EXPECT_EQ(total, 600u);
  EXPECT_EQ(calls.back(), std::make_pair(uint64_t{600}, uint64_t{600}));
  VerifyReport report;
  ASSERT_OK(VerifyExport(counting, "runs", o, &report));
  EXPECT_EQ(report.blocks_checked, 600u);
  EXPECT_EQ(counting.reads.load(), 0u);
  // Copied into the blocks layout from runs too.
  AdminOptions to_blocks = o;
  to_blocks.layout_given = true;
  to_blocks.layout = ExportLayout::kBlocks;
  ASSERT_OK(CopyExport(counting, "runs", "runs-blocks", to_blocks));
  EXPECT_EQ(counting.reads.load(), 0u);
  EXPECT_EQ(Exported("runs-blocks"), Slurp(image));
  // The blocks export is read one block at a time.
  const uint64_t batches = counting.batches.load();
  ASSERT_OK(ExportImage(counting, "runs-blocks", out, options_));
  EXPECT_EQ(counting.reads.load(), 600u);
  EXPECT_EQ(counting.batches.load(), batches);
}

TEST_F(AdminLogTest, DeleteRemovesSegmentsAndCheckpointsWithoutARecordPerBlock) {
  std::string image = FullImage(600);
  ASSERT_OK(ImportImage(*coded_, "d", image, 4096, log_));
  ASSERT_OK(ResizeExport(*coded_, "d", 300 * 4096, true, log_));  // a segment of deletions too
  CountingStore counting(coded_);
  ASSERT_OK(DeleteExport(counting, "d", log_));
  EXPECT_EQ(counting.deleted.load(), 0u);
  EXPECT_FALSE(fs::exists(ExportDir("d")));
  ExportInfo info;
  EXPECT_EQ(GetExportInfo(*coded_, "d", &info, layouts_.get()).err(), ENOENT);
  // An export whose checkpoint is damaged is deleted all the same.
  ASSERT_OK(ImportImage(*coded_, "e", image, 4096, log_));
  ASSERT_OK(coded_->CloseExport("e"));
  for (const auto& entry : fs::directory_iterator(ExportDir("e") + "/checkpoint"))
    fs::resize_file(entry.path(), 3);
  ASSERT_OK(DeleteExport(*coded_, "e", log_));
  EXPECT_FALSE(fs::exists(ExportDir("e")));
  // And one whose metadata is damaged (the layout it names unreadable): its segments and
  // checkpoints go too, where a listing of them would otherwise be left behind.
  ASSERT_OK(ImportImage(*coded_, "f", image, 4096, log_));
  ASSERT_OK(coded_->CloseExport("f"));
  std::ofstream(ExportDir("f") + "/metadata", std::ios::trunc) << "format=1\nsize=twelve\n";
  ASSERT_OK(DeleteExport(*coded_, "f", log_));
  EXPECT_FALSE(fs::exists(ExportDir("f")));
  // A blocks export with damaged metadata: its blocks go, listed under the marker.
  ASSERT_OK(ImportImage(*coded_, "g", image, 4096, options_));
  std::ofstream(ExportDir("g") + "/metadata", std::ios::trunc) << "format=1\nsize=twelve\n";
  ASSERT_OK(DeleteExport(*coded_, "g", options_));
  EXPECT_FALSE(fs::exists(ExportDir("g")));
}

TEST_F(AdminLogTest, AnImportRunAgainKeepsTheLayoutItStartedIn) {
  std::string image = FullImage(50);
  std::atomic<bool> cancel{true};
  AdminOptions cancelled = log_;
  cancelled.cancel = &cancel;
  EXPECT_EQ(ImportImage(*coded_, "i", image, 4096, cancelled).err(), ECANCELED);
  EXPECT_EQ(Info("i").meta.state, ExportMeta::State::kIncomplete);
  AdminOptions blocks = options_;
  blocks.layout_given = true;
  Status s = ImportImage(*coded_, "i", image, 4096, blocks);
  EXPECT_EQ(s.err(), EEXIST);
  EXPECT_NE(s.message().find("--layout log"), std::string::npos) << s.message();
  ASSERT_OK(ImportImage(*coded_, "i", image, 4096, options_));  // no --layout: the one recorded
  ExportInfo info = Info("i");
  EXPECT_EQ(info.meta.layout, ExportLayout::kLog);
  EXPECT_EQ(info.meta.state, ExportMeta::State::kReady);
  EXPECT_EQ(Exported("i"), Slurp(image));
}


// Snapshots, clones, flatten and rollback through the codec layer, on an encrypted export: the
// snapshot and the clone read the export's blocks with its key and binding, and so does the
// clone once flattened.
TEST_F(AdminLogTest, SnapshotsClonesFlattenAndRollbackOfAnEncryptedExport) {
  Config c;
  ASSERT_OK(c.Set("store", dir_.path() + "/enc"));
  ASSERT_OK(c.Set("segment-size", "1M"));
  c.encryption_key = std::string(32, 'k');
  ASSERT_OK(c.Finish());
  std::shared_ptr<BlockStore> enc;
  std::shared_ptr<log::LayoutStore> layouts;
  ASSERT_OK(MakeCodedStore(c, &enc, &layouts));
  ASSERT_OK(enc->Check());
  AdminOptions o = log_;
  o.layouts = layouts.get();
  ASSERT_OK(o.encoding.SetEncryption("aes-256-gcm"));
  ASSERT_OK(MakeKeyCheck(c.encryption_key, &o.encoding.key_check));
  auto exported = [&](const std::string& name) {
    const std::string out = dir_.path() + "/enc-out";
    std::filesystem::remove(out);
    Status s = ExportImage(*enc, name, out, o);
    EXPECT_TRUE(s.ok()) << name << ": " << s.ToString();
    return Slurp(out);
  };
  auto overwrite = [&](const std::string& name, uint64_t first, uint64_t n, char fill) {
    Bytes block(4096, static_cast<uint8_t>(fill));
    for (uint64_t id = first; id < first + n; ++id) ASSERT_OK(enc->Write(name, id, block, false));
    ASSERT_OK(enc->Flush(name));
    ASSERT_OK(enc->CloseExport(name));
  };
  const std::string original = Slurp(FullImage(300));
  ASSERT_OK(ImportImage(*enc, "v", dir_.path() + "/full", 4096, o));
  SnapshotSummary s1;
  ASSERT_OK(SnapshotExport(*enc, "v", "s1", o, &s1));
  EXPECT_EQ(s1.size, 300u * 4096);
  EXPECT_EQ(SnapshotExport(*enc, "v", "s1", o, &s1).kind(), Status::Kind::kAlreadyExists);
  overwrite("v", 0, 100, 'v');
  EXPECT_EQ(exported("v@s1"), original);
  std::string changed = original;
  std::fill(changed.begin(), changed.begin() + 100 * 4096, 'v');
  EXPECT_EQ(exported("v"), changed);

  ASSERT_OK(CloneExport(*enc, "v", "s1", "c", o));
  ExportInfo ci;
  ASSERT_OK(GetExportInfo(*enc, "c", &ci, layouts.get()));
  EXPECT_EQ(ci.meta.base, "v@s1");
  EXPECT_EQ(ci.blocks_stored, 300u);
  EXPECT_EQ(exported("c"), original);
  overwrite("c", 200, 50, 'c');
  std::string in_clone = original;
  std::fill(in_clone.begin() + 200 * 4096, in_clone.begin() + 250 * 4096, 'c');
  EXPECT_EQ(exported("c"), in_clone);
  EXPECT_EQ(exported("v"), changed);

  // The snapshot is the clone's base, and the export has a snapshot: neither is deleted.
  Status refused = DeleteSnapshot(*enc, "v", "s1", o);
  EXPECT_EQ(refused.err(), EINVAL);
  EXPECT_NE(refused.message().find("clone 'c'"), std::string::npos) << refused.ToString();
  refused = DeleteExport(*enc, "v", o);
  EXPECT_NE(refused.message().find("'v@s1' (the base of clone 'c')"), std::string::npos)
      << refused.ToString();
  ExportInfo vi;
  ASSERT_OK(GetExportInfo(*enc, "v", &vi, layouts.get()));
  ASSERT_EQ(vi.snapshots.size(), 1u);
  EXPECT_EQ(vi.snapshots[0].clones, std::vector<std::string>{"c"});
  EXPECT_EQ(exported("v@s1"), original);

  ASSERT_OK(FlattenExport(*enc, "c", o));
  ASSERT_OK(GetExportInfo(*enc, "c", &ci, layouts.get()));
  EXPECT_EQ(ci.meta.base, "");
  ASSERT_OK(DeleteSnapshot(*enc, "v", "s1", o));
  EXPECT_EQ(exported("c"), in_clone);  // still bound to 'v', still read with its key
  EXPECT_TRUE(DeleteSnapshot(*enc, "v", "s1", o).IsNotFound());

  // Rollback: the export is the snapshot again, size included.
  SnapshotSummary s2;
  ASSERT_OK(SnapshotExport(*enc, "v", "s2", o, &s2));
  overwrite("v", 0, 300, 'w');  // every segment s2 reads is kept for it alone
  ASSERT_OK(ResizeExport(*enc, "v", 400 * 4096, false, o));
  ASSERT_OK(RollbackExport(*enc, "v", "s2", o));
  ASSERT_OK(GetExportInfo(*enc, "v", &vi, layouts.get()));
  EXPECT_EQ(vi.meta.size, 300u * 4096);
  EXPECT_EQ(exported("v"), changed);
  ASSERT_EQ(vi.snapshots.size(), 1u);
  EXPECT_EQ(vi.snapshots[0].name, "s2");
  // A copy of a snapshot is an export of its own.
  ASSERT_OK(CopyExport(*enc, "v@s2", "copy", o));
  EXPECT_EQ(exported("copy"), changed);
  EXPECT_FALSE(fs::exists(dir_.path() + "/enc/exports/v@s2"));
  // Deleting the snapshot it went back to, before any writer made the rollback permanent,
  // frees nothing the export reads now (closed here, as in a command of its own).
  ASSERT_OK(enc->CloseExport("v"));
  ASSERT_OK(DeleteSnapshot(*enc, "v", "s2", o));
  EXPECT_EQ(exported("v"), changed);
  overwrite("v", 0, 1, 'x');
  std::fill(changed.begin(), changed.begin() + 4096, 'x');
  EXPECT_EQ(exported("v"), changed);
}

}  // namespace
}  // namespace s3block
