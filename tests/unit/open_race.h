// Checks of Volume::Open against an admin command (create, import, delete) that completes
// between Open's first look at the export's metadata and its claim of the export's lease,
// deterministically: a decorator runs the command, through the real admin functions on the same
// store, when the Volume asks for the lease, and then forwards the claim. Shared by the file
// store's tests (volume_test.cc) and the S3 store's (s3_store_test.cc).
#ifndef S3BLOCK_TESTS_UNIT_OPEN_RACE_H_
#define S3BLOCK_TESTS_UNIT_OPEN_RACE_H_

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "s3block/admin.h"
#include "s3block/block_store.h"
#include "s3block/export_meta.h"
#include "s3block/volume.h"
#include "test_util.h"

namespace s3block::testing {

// Runs `action` on the store below once, at the first AcquireLease, before forwarding it.
class ActBeforeLease : public StoreDecorator {
 public:
  ActBeforeLease(std::shared_ptr<BlockStore> next, std::function<void(BlockStore&)> action)
      : StoreDecorator(std::move(next)), action_(std::move(action)) {}
  Status AcquireLease(std::string_view e, const std::string& holder, bool force,
                      std::unique_ptr<ExportLease>* out) override {
    if (action_) {
      auto action = std::move(action_);
      action_ = nullptr;
      action(*next_);
      ran_ = true;
    }
    return next_->AcquireLease(e, holder, force, out);
  }
  bool ran() const { return ran_; }

 private:
  std::function<void(BlockStore&)> action_;
  bool ran_ = false;
};

inline Bytes RaceBlock(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 9)) | 1;
  return b;
}

// A 256 KiB image with data in its 64K blocks 0 and 2 (1 and 3 are holes).
inline std::string WriteRaceImage(const std::string& dir) {
  const std::string path = dir + "/race.img";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  EXPECT_GE(fd, 0);
  Bytes b0 = RaceBlock(65536, 1), b2 = RaceBlock(65536, 2);
  EXPECT_EQ(::pwrite(fd, b0.data(), b0.size(), 0), 65536);
  EXPECT_EQ(::pwrite(fd, b2.data(), b2.size(), 2 * 65536), 65536);
  EXPECT_EQ(::ftruncate(fd, 4 * 65536), 0);
  ::close(fd);
  return path;
}

// The metadata the store holds for `name` (found = false if none).
inline ExportMeta StoredMeta(BlockStore& store, std::string_view name, bool* found) {
  std::string text;
  ExportMeta meta;
  EXPECT_OK(store.ReadMeta(name, &text, found));
  if (*found) EXPECT_OK(ExportMeta::Parse(name, text, &meta));
  return meta;
}

// A server's defaults: 1 GiB of 4K blocks, created if missing, block size not given.
inline VolumeOptions ServerDefaults(bool create = true) {
  VolumeOptions o;
  o.size = 1ull << 30;
  o.block_size = 4096;
  o.block_size_explicit = false;
  o.create = create;
  o.holder = "open-race test server";
  return o;
}

// An import completes between the look and the claim: Open serves the imported export (its
// size, block size and data) and leaves its metadata as the import wrote it.
inline void CheckImportBeforeClaim(std::shared_ptr<BlockStore> store, const std::string& tmpdir) {
  const std::string image = WriteRaceImage(tmpdir);
  auto race = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    EXPECT_OK(ImportImage(s, "race", image, 65536, AdminOptions{}));
  });
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(race, "race", ServerDefaults(), &v));
  ASSERT_TRUE(race->ran());
  EXPECT_FALSE(v->created());
  EXPECT_EQ(v->block_size(), 65536u);
  EXPECT_EQ(v->size(), 4u * 65536);
  bool found = false;
  ExportMeta meta = StoredMeta(*store, "race", &found);
  ASSERT_TRUE(found);
  EXPECT_EQ(meta.block_size, 65536u);
  EXPECT_EQ(meta.size, 4u * 65536);
  EXPECT_EQ(meta.state, ExportMeta::State::kReady);
  Bytes got(65536);
  ASSERT_OK(v->Read(got.data(), got.size(), 2 * 65536));
  EXPECT_TRUE(got == RaceBlock(65536, 2));
  ASSERT_OK(v->Read(got.data(), got.size(), 0));
  EXPECT_TRUE(got == RaceBlock(65536, 1));
  ASSERT_OK(v->Close());
}

// The same with `s3block create`: the created export's size and block size are served.
inline void CheckCreateBeforeClaim(std::shared_ptr<BlockStore> store) {
  auto race = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    EXPECT_OK(CreateExport(s, "race", 8u << 20, 65536, AdminOptions{}));
  });
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(race, "race", ServerDefaults(), &v));
  ASSERT_TRUE(race->ran());
  EXPECT_FALSE(v->created());
  EXPECT_EQ(v->block_size(), 65536u);
  EXPECT_EQ(v->size(), 8u << 20);
  bool found = false;
  ExportMeta meta = StoredMeta(*store, "race", &found);
  ASSERT_TRUE(found);
  EXPECT_EQ(meta.block_size, 65536u);
  EXPECT_EQ(meta.size, 8u << 20);
  ASSERT_OK(v->Close());
}

// An existing export of 64K blocks.
inline void MakeRaceExport(BlockStore& store) {
  ASSERT_OK(CreateExport(store, "race", 1u << 20, 65536, AdminOptions{}));
  VolumeOptions o;
  o.create = false;
  std::shared_ptr<Volume> v;
  std::shared_ptr<BlockStore> self(&store, [](BlockStore*) {});
  ASSERT_OK(Volume::Open(self, "race", o, &v));
  Bytes b = RaceBlock(65536, 3);
  ASSERT_OK(v->Write(b.data(), b.size(), 0, false));
  ASSERT_OK(v->Close());
}

// A delete completes between the look and the claim, and the server may not create exports:
// Open refuses (ENOENT), and leaves nothing behind.
inline void CheckDeleteBeforeClaimRefused(std::shared_ptr<BlockStore> store) {
  MakeRaceExport(*store);
  auto race = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    EXPECT_OK(DeleteExport(s, "race", AdminOptions{}));
  });
  std::shared_ptr<Volume> v;
  Status s = Volume::Open(race, "race", ServerDefaults(/*create=*/false), &v);
  ASSERT_TRUE(race->ran());
  EXPECT_EQ(s.err(), ENOENT) << s.ToString();
  EXPECT_FALSE(v) << "a Volume was opened on an export with no metadata";
  v.reset();
  std::vector<std::string> names;
  ASSERT_OK(store->ListExports(&names));
  EXPECT_TRUE(names.empty()) << "left behind: " << names.front();
}

// The same where the server creates exports: Open creates a new export (its metadata is in the
// store), and what is written and flushed to it reads back after a reopen.
inline void CheckDeleteBeforeClaimRecreates(std::shared_ptr<BlockStore> store) {
  MakeRaceExport(*store);
  auto race = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    EXPECT_OK(DeleteExport(s, "race", AdminOptions{}));
  });
  std::shared_ptr<Volume> v;
  ASSERT_OK(Volume::Open(race, "race", ServerDefaults(), &v));
  ASSERT_TRUE(race->ran());
  EXPECT_TRUE(v->created());
  EXPECT_EQ(v->block_size(), 4096u);
  Bytes b = RaceBlock(4096, 4);
  ASSERT_OK(v->Write(b.data(), b.size(), 8192, false));
  ASSERT_OK(v->Flush());
  ASSERT_OK(v->Close());
  v.reset();
  bool found = false;
  ExportMeta meta = StoredMeta(*store, "race", &found);
  ASSERT_TRUE(found) << "writes were acknowledged into an export with no metadata";
  EXPECT_EQ(meta.block_size, 4096u);
  EXPECT_EQ(meta.size, 1ull << 30);
  VolumeOptions o = ServerDefaults(/*create=*/false);
  ASSERT_OK(Volume::Open(store, "race", o, &v));
  Bytes got(4096);
  ASSERT_OK(v->Read(got.data(), got.size(), 8192));
  EXPECT_TRUE(got == b);
  ASSERT_OK(v->Close());
}

// An import interrupted between the look and the claim leaves the export incomplete; a server
// that gives block-size= meets an export of another block size: both are refused.
inline void CheckIncompleteAndMismatchBeforeClaimRefused(std::shared_ptr<BlockStore> store,
                                                         const std::string& tmpdir) {
  const std::string image = WriteRaceImage(tmpdir);
  std::atomic<bool> cancel{true};
  auto race = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    AdminOptions o;
    o.cancel = &cancel;
    EXPECT_EQ(ImportImage(s, "race", image, 65536, o).err(), ECANCELED);
  });
  std::shared_ptr<Volume> v;
  Status s = Volume::Open(race, "race", ServerDefaults(), &v);
  ASSERT_TRUE(race->ran());
  EXPECT_EQ(s.err(), EBUSY) << s.ToString();
  EXPECT_NE(s.message().find("incomplete"), std::string::npos) << s.ToString();
  EXPECT_FALSE(v);
  bool found = false;
  ExportMeta meta = StoredMeta(*store, "race", &found);
  ASSERT_TRUE(found);
  EXPECT_EQ(meta.state, ExportMeta::State::kIncomplete);
  EXPECT_EQ(meta.block_size, 65536u);

  auto race2 = std::make_shared<ActBeforeLease>(store, [&](BlockStore& s) {
    EXPECT_OK(ImportImage(s, "race2", image, 65536, AdminOptions{}));
  });
  VolumeOptions o = ServerDefaults();
  o.block_size_explicit = true;
  v.reset();
  s = Volume::Open(race2, "race2", o, &v);
  ASSERT_TRUE(race2->ran());
  EXPECT_EQ(s.err(), EINVAL) << s.ToString();
  EXPECT_FALSE(v);
  meta = StoredMeta(*store, "race2", &found);
  ASSERT_TRUE(found);
  EXPECT_EQ(meta.block_size, 65536u);
}

}  // namespace s3block::testing

#endif  // S3BLOCK_TESTS_UNIT_OPEN_RACE_H_
