// The credentials chain: parameters, then the environment, then ~/.aws/credentials and
// ~/.aws/config with a profile; and that no message shows a secret.
#include "s3/credentials.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "test_util.h"

namespace s3block {
namespace {

// Sets environment variables for the scope of a test and restores them afterwards.
class ScopedEnv {
 public:
  ScopedEnv() {
    for (const char* n : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                          "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "HOME"}) {
      const char* v = getenv(n);
      if (v) saved_[n] = v;
      else saved_[n] = std::nullopt;
      unsetenv(n);
    }
  }
  ~ScopedEnv() {
    for (const auto& [n, v] : saved_) {
      if (v) setenv(n.c_str(), v->c_str(), 1);
      else unsetenv(n.c_str());
    }
  }
  void Set(const char* n, const std::string& v) { setenv(n, v.c_str(), 1); }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

class CredentialsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.Set("HOME", home_.path());
    std::filesystem::create_directories(home_.path() + "/.aws");
    WriteFile(home_.path() + "/.aws/credentials",
              "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n\n"
              "# a comment\n[work]\naws_access_key_id=WORKKEY\naws_secret_access_key=worksecret\n"
              "aws_session_token=worktoken\n\n[half]\naws_access_key_id=HALFKEY\n");
    WriteFile(home_.path() + "/.aws/config",
              "[default]\nregion = eu-west-1\n\n[profile cfgonly]\naws_access_key_id = CFGKEY\n"
              "aws_secret_access_key = cfgsecret\n");
  }

  ScopedEnv env_;
  testing::TempDir home_;
};

TEST_F(CredentialsTest, ParametersComeFirst) {
  env_.Set("AWS_ACCESS_KEY_ID", "ENVKEY");
  env_.Set("AWS_SECRET_ACCESS_KEY", "envsecret");
  AwsCredentials c;
  std::string where;
  ASSERT_OK(ResolveCredentials({"PARAMKEY", "paramsecret", "paramtoken", ""}, &c, &where));
  EXPECT_EQ(c.access_key, "PARAMKEY");
  EXPECT_EQ(c.secret_key, "paramsecret");
  EXPECT_EQ(c.session_token, "paramtoken");
  EXPECT_EQ(where, "parameters");
}

TEST_F(CredentialsTest, EnvironmentBeforeFiles) {
  env_.Set("AWS_ACCESS_KEY_ID", "ENVKEY");
  env_.Set("AWS_SECRET_ACCESS_KEY", "envsecret");
  env_.Set("AWS_SESSION_TOKEN", "envtoken");
  AwsCredentials c;
  std::string where;
  ASSERT_OK(ResolveCredentials({}, &c, &where));
  EXPECT_EQ(c.access_key, "ENVKEY");
  EXPECT_EQ(c.secret_key, "envsecret");
  EXPECT_EQ(c.session_token, "envtoken");
  EXPECT_NE(where.find("environment"), std::string::npos);
}

TEST_F(CredentialsTest, SharedFilesWithProfiles) {
  AwsCredentials c;
  std::string where;
  ASSERT_OK(ResolveCredentials({}, &c, &where));
  EXPECT_EQ(c.access_key, "FILEKEY");
  EXPECT_EQ(c.secret_key, "filesecret");
  EXPECT_EQ(c.session_token, "");
  EXPECT_EQ(where, home_.path() + "/.aws/credentials [default]");

  env_.Set("AWS_PROFILE", "work");
  ASSERT_OK(ResolveCredentials({}, &c, &where));
  EXPECT_EQ(c.access_key, "WORKKEY");
  EXPECT_EQ(c.session_token, "worktoken");

  // profile= wins over AWS_PROFILE; a profile only in ~/.aws/config is "[profile NAME]" there.
  CredentialSource s;
  s.profile = "cfgonly";
  ASSERT_OK(ResolveCredentials(s, &c, &where));
  EXPECT_EQ(c.access_key, "CFGKEY");
  EXPECT_EQ(c.secret_key, "cfgsecret");
  EXPECT_EQ(where, home_.path() + "/.aws/config [profile cfgonly]");

  // AWS_SHARED_CREDENTIALS_FILE replaces ~/.aws/credentials.
  WriteFile(home_.path() + "/other", "[work]\naws_access_key_id=OTHERKEY\naws_secret_access_key=o\n");
  env_.Set("AWS_SHARED_CREDENTIALS_FILE", home_.path() + "/other");
  ASSERT_OK(ResolveCredentials({}, &c, &where));
  EXPECT_EQ(c.access_key, "OTHERKEY");
}

TEST_F(CredentialsTest, ErrorsNameTheSourceNeverTheSecret) {
  AwsCredentials c;
  std::string where;
  Status s = ResolveCredentials({"", "paramsecret", "", ""}, &c, &where);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("access-key="), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("paramsecret"), std::string::npos) << s.message();

  env_.Set("AWS_SECRET_ACCESS_KEY", "envsecret");
  s = ResolveCredentials({}, &c, &where);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("AWS_ACCESS_KEY_ID"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("envsecret"), std::string::npos) << s.message();
  unsetenv("AWS_SECRET_ACCESS_KEY");

  CredentialSource half;
  half.profile = "half";
  s = ResolveCredentials(half, &c, &where);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("[half]"), std::string::npos) << s.message();

  CredentialSource missing;
  missing.profile = "nosuch";
  s = ResolveCredentials(missing, &c, &where);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("'nosuch' not found"), std::string::npos) << s.message();
  for (const char* secret : {"filesecret", "worksecret", "cfgsecret", "worktoken"})
    EXPECT_EQ(s.message().find(secret), std::string::npos) << s.message();

  // Nothing anywhere.
  env_.Set("HOME", home_.path() + "/empty");
  s = ResolveCredentials({}, &c, &where);
  EXPECT_EQ(s.err(), EINVAL);
  EXPECT_NE(s.message().find("no S3 credentials found"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("AWS_ACCESS_KEY_ID"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace s3block
