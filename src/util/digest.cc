#include "util/digest.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "util/encoding.h"

namespace s3block {
namespace {

std::vector<uint8_t> Digest(const EVP_MD* md, std::span<const uint8_t> data) {
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &len, md, nullptr);
  out.resize(len);
  return out;
}

}  // namespace

std::vector<uint8_t> Md5(std::span<const uint8_t> data) { return Digest(EVP_md5(), data); }
std::string Sha256Hex(std::span<const uint8_t> data) {
  return HexEncode(Digest(EVP_sha256(), data));
}
std::string Sha256Hex(std::string_view data) { return Sha256Hex(AsBytes(data)); }

std::vector<uint8_t> HmacSha256(std::span<const uint8_t> key, std::string_view data) {
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  out.resize(len);
  return out;
}

}  // namespace s3block
