#include "s3block/export_meta.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>

#include "util/encoding.h"

namespace s3block {
namespace {

constexpr size_t kSaltSize = 16;
constexpr size_t kMacSize = 16;
constexpr char kKeyCheckLabel[] = "nbd-s3-backend key check 1";

// HMAC-SHA256(key, label || salt), cut to kMacSize bytes.
void KeyCheckMac(std::string_view key, const uint8_t* salt, uint8_t* mac) {
  uint8_t msg[sizeof kKeyCheckLabel + kSaltSize];
  std::memcpy(msg, kKeyCheckLabel, sizeof kKeyCheckLabel);
  std::memcpy(msg + sizeof kKeyCheckLabel, salt, kSaltSize);
  uint8_t full[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), msg, sizeof msg, full, &len);
  std::memcpy(mac, full, kMacSize);
  OPENSSL_cleanse(full, sizeof full);
}

}  // namespace

Status ParseEncryptionKey(std::string_view source, std::string_view text, std::string* key) {
  if (text.size() == kEncryptionKeySize) {
    *key = std::string(text);
    return Status::Ok();
  }
  auto space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  if (text.size() == 2 * kEncryptionKeySize && HexDecode(text, key)) return Status::Ok();
  key->clear();
  return Status::InvalidArgument(std::string(source) +
                                 ": expected a key of exactly 32 bytes or 64 hex digits");
}

Status MakeKeyCheck(std::string_view key, std::string* check) {
  uint8_t salt[kSaltSize], mac[kMacSize];
  if (RAND_bytes(salt, sizeof salt) != 1)
    return Status::IoError("cannot get random bytes for the key check value");
  KeyCheckMac(key, salt, mac);
  *check = HexEncode(salt) + ":" + HexEncode(mac);
  return Status::Ok();
}

bool KeyMatchesCheck(std::string_view key, std::string_view check) {
  std::string salt, mac;
  if (key.size() != kEncryptionKeySize || check.size() != 2 * (kSaltSize + kMacSize) + 1 ||
      check[2 * kSaltSize] != ':' || !HexDecode(check.substr(0, 2 * kSaltSize), &salt) ||
      !HexDecode(check.substr(2 * kSaltSize + 1), &mac))
    return false;
  uint8_t expect[kMacSize];
  KeyCheckMac(key, reinterpret_cast<const uint8_t*>(salt.data()), expect);
  return CRYPTO_memcmp(expect, mac.data(), kMacSize) == 0;
}

}  // namespace s3block
