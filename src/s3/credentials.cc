#include "s3/credentials.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

namespace s3block {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Reads the key=value pairs of one section of an INI file. *exists tells whether the file exists.
Status ReadIniSection(const std::string& path, const std::string& section, bool* exists,
                      bool* found_section, std::map<std::string, std::string>* out) {
  *exists = false;
  *found_section = false;
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::Ok();
    return Status::FromErrno(errno, "cannot read " + path);
  }
  *exists = true;
  std::string line;
  bool in_section = false;
  while (std::getline(in, line)) {
    std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    if (t.front() == '[' && t.back() == ']') {
      in_section = Trim(t.substr(1, t.size() - 2)) == section;
      if (in_section) *found_section = true;
      continue;
    }
    if (!in_section) continue;
    size_t eq = t.find('=');
    if (eq == std::string::npos) continue;
    (*out)[Lower(Trim(t.substr(0, eq)))] = Trim(t.substr(eq + 1));
  }
  if (in.bad()) return Status::IoError("error reading " + path);
  return Status::Ok();
}

}  // namespace

Status ResolveCredentials(const CredentialSource& source, AwsCredentials* out, std::string* where) {
  *out = AwsCredentials{};
  // 1. Parameters.
  if (!source.access_key.empty() || !source.secret_key.empty()) {
    if (source.access_key.empty() || source.secret_key.empty())
      return Status::InvalidArgument(
          "give both access-key= and secret-key= (only one of them was given)");
    *out = {source.access_key, source.secret_key, source.session_token};
    *where = "parameters";
    return Status::Ok();
  }
  // 2. Environment.
  std::string env_id = Env("AWS_ACCESS_KEY_ID"), env_secret = Env("AWS_SECRET_ACCESS_KEY");
  if (!env_id.empty() || !env_secret.empty()) {
    if (env_id.empty() || env_secret.empty())
      return Status::InvalidArgument(
          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (only one is set)");
    *out = {env_id, env_secret, source.session_token.empty() ? Env("AWS_SESSION_TOKEN")
                                                             : source.session_token};
    *where = "environment (AWS_ACCESS_KEY_ID)";
    return Status::Ok();
  }
  // 3. Shared files.
  std::string profile = source.profile;
  if (profile.empty()) profile = Env("AWS_PROFILE");
  if (profile.empty()) profile = "default";
  std::string home = Env("HOME");
  std::string cred_file = Env("AWS_SHARED_CREDENTIALS_FILE");
  if (cred_file.empty() && !home.empty()) cred_file = home + "/.aws/credentials";
  std::string config_file = Env("AWS_CONFIG_FILE");
  if (config_file.empty() && !home.empty()) config_file = home + "/.aws/config";

  std::string looked = "access-key=/secret-key= parameters, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY";
  struct FileSection {
    std::string path, section;
  };
  std::vector<FileSection> files;
  if (!cred_file.empty()) files.push_back({cred_file, profile});
  if (!config_file.empty())
    files.push_back({config_file, profile == "default" ? "default" : "profile " + profile});
  bool profile_seen = false;
  for (const FileSection& f : files) {
    std::map<std::string, std::string> kv;
    bool exists = false, found = false;
    S3B_RETURN_IF_ERROR(ReadIniSection(f.path, f.section, &exists, &found, &kv));
    looked += ", " + f.path + " [" + f.section + "]" + (exists ? "" : " (no such file)");
    if (!found) continue;
    profile_seen = true;
    std::string id = kv["aws_access_key_id"], secret = kv["aws_secret_access_key"];
    if (id.empty() && secret.empty()) continue;
    if (id.empty() || secret.empty())
      return Status::InvalidArgument(f.path + " [" + f.section +
                                     "] has only one of aws_access_key_id and aws_secret_access_key");
    *out = {id, secret, source.session_token.empty() ? kv["aws_session_token"] : source.session_token};
    *where = f.path + " [" + f.section + "]";
    return Status::Ok();
  }
  if (!profile_seen && profile != "default")
    return Status::InvalidArgument("S3 profile '" + profile + "' not found (looked in " + looked + ")");
  return Status::InvalidArgument("no S3 credentials found (looked in " + looked + ")");
}

}  // namespace s3block
