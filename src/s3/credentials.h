// Where the S3 keys come from, in the order people expect from the AWS tools:
//   1. the plugin parameters access-key= / secret-key= [/ session-token=];
//   2. the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY [, AWS_SESSION_TOKEN];
//   3. the shared files: ~/.aws/credentials (or $AWS_SHARED_CREDENTIALS_FILE), then ~/.aws/config
//      (or $AWS_CONFIG_FILE), in the profile named by profile=, else $AWS_PROFILE, else "default"
//      (in the config file a profile other than default is the section "[profile NAME]").
//
// A secret is never put in a message: errors name the source (parameter, variable, file and
// profile), never the value.
#ifndef S3BLOCK_S3_CREDENTIALS_H_
#define S3BLOCK_S3_CREDENTIALS_H_

#include <string>

#include "s3/sigv4.h"
#include "s3block/status.h"

namespace s3block {

struct CredentialSource {
  std::string access_key, secret_key, session_token;  // from the parameters
  std::string profile;                                // from profile=; empty: AWS_PROFILE/default
};

// Finds the keys. *where says where they were found ("parameters", "environment",
// "/root/.aws/credentials [default]"), for messages.
// Errors: EINVAL if only half a key pair is given somewhere (naming where), or if no source has
// keys (listing the places looked in); EIO if a named file exists but cannot be read.
// Thread safety: reads the environment; call before starting threads that change it.
Status ResolveCredentials(const CredentialSource& source, AwsCredentials* out, std::string* where);

}  // namespace s3block

#endif  // S3BLOCK_S3_CREDENTIALS_H_
