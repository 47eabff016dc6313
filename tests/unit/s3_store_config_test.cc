// S3Store construction from the configuration (no server needed): store= parsing, addressing
// defaults, the key layout, and the errors of a bad configuration.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "log/layout_store.h"
#include "s3/s3_store.h"
#include "s3block/store_factory.h"
#include "test_util.h"

namespace s3block {
namespace {

Config S3Config(const std::string& store) {
  Config c;
  c.store = store;
  c.access_key = "AK";
  c.secret_key = "not-printed-anywhere";
  return c;
}

TEST(S3StoreConfig, KeysFollowTheLayoutUnderThePrefix) {
  std::shared_ptr<S3Store> s;
  Config c = S3Config("s3://bucket-1/some/prefix/");
  c.endpoint = "http://127.0.0.1:9000";
  ASSERT_OK(S3Store::Create(S3StoreOptionsFor(c), &s));
  EXPECT_EQ(s->bucket(), "bucket-1");
  EXPECT_EQ(s->key_prefix(), "some/prefix/");
  EXPECT_EQ(s->BlockKey("my disk", 42), "some/prefix/exports/my disk/blocks/42");
  EXPECT_EQ(s->MetaKey("d"), "some/prefix/exports/d/metadata");
  EXPECT_EQ(s->Describe(), "s3://bucket-1/some/prefix at http://127.0.0.1:9000");
  EXPECT_EQ(s->Describe().find("not-printed-anywhere"), std::string::npos);

  ASSERT_OK(S3Store::Create(S3StoreOptionsFor(S3Config("s3://bucket-2")), &s));
  EXPECT_EQ(s->key_prefix(), "");
  EXPECT_EQ(s->BlockKey("d", 0), "exports/d/blocks/0");
  EXPECT_EQ(s->Describe(), "s3://bucket-2 at https://s3.us-east-1.amazonaws.com");
}

TEST(S3StoreConfig, FactoryBuildsTheS3Store) {
  std::shared_ptr<BlockStore> store;
  ASSERT_OK(MakeLeafStore(S3Config("s3://bucket-3/p"), &store));
  // The layout router, over the S3 store.
  auto* router = dynamic_cast<log::LayoutStore*>(store.get());
  ASSERT_NE(router, nullptr);
  ASSERT_NE(dynamic_cast<S3Store*>(router->next()), nullptr);
}

TEST(S3StoreConfig, BadStoreOrMissingKeysAreClearErrors) {
  std::shared_ptr<S3Store> s;
  Status st = S3Store::Create(S3StoreOptionsFor(S3Config("s3://Bad_Bucket")), &s);
  EXPECT_EQ(st.err(), EINVAL);
  st = S3Store::Create(S3StoreOptionsFor(S3Config("s3://ab")), &s);
  EXPECT_EQ(st.err(), EINVAL);

  Config c = S3Config("s3://bucket-4");
  c.secret_key.clear();
  st = S3Store::Create(S3StoreOptionsFor(c), &s);
  EXPECT_EQ(st.err(), EINVAL);
  EXPECT_NE(st.message().find("store=s3://bucket-4"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("secret-key="), std::string::npos) << st.message();
}

}  // namespace
}  // namespace s3block
