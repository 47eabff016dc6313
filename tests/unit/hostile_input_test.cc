// Values from outside that are refused must leave nothing behind: a Config keeps the values it had
// before a refused Set, and messages show hostile bytes escaped, never raw.
#include <string>

#include "s3block/config.h"
#include "test_util.h"

namespace s3block {
namespace {

TEST(HostileConfig, ARefusedValueKeepsThePreviousOne) {
  Config c;
  ASSERT_OK(c.Set("size", "10G"));
  ASSERT_OK(c.Set("request-timeout", "5"));
  EXPECT_EQ(c.Set("size", "0").err(), EINVAL);
  EXPECT_EQ(c.Set("size", "5E").err(), EINVAL);  // above the 4E limit
  EXPECT_EQ(c.size, 10ull << 30);
  EXPECT_EQ(c.Set("request-timeout", "50ms").err(), EINVAL);
  EXPECT_EQ(c.request_timeout, 5.0);
  ASSERT_OK(c.Set("lease-timeout", "30"));
  EXPECT_EQ(c.Set("lease-timeout", "1").err(), EINVAL);
  EXPECT_EQ(c.lease_timeout, 30.0);
  EXPECT_EQ(c.Set("block-size", "1000").err(), EINVAL);
  EXPECT_EQ(c.block_size, kDefaultBlockSize);
  EXPECT_EQ(c.Set("connections", "0").err(), EINVAL);
  EXPECT_EQ(c.connections, 64u);
}

TEST(HostileConfig, MessagesEscapeControlBytes) {
  Config c;
  for (const char* key : {"size", "block-size", "cache", "retry-timeout", "connections",
                          "default-export", "endpoint"}) {
    Status s = c.Set(key, std::string("1\n\x1b[2Jx\0y", 9));
    ASSERT_FALSE(s.ok()) << key;
    for (unsigned char ch : s.message())
      EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << key << ": " << s.message();
  }
}

}  // namespace
}  // namespace s3block
