#include "s3block/export_meta.h"

#include <charconv>

#include "s3block/params.h"

namespace s3block {
namespace {

bool IsHex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// "SALT:MAC": 16 bytes of salt and 16 of MAC, in lower-case hex.
bool IsKeyCheck(std::string_view s) {
  return s.size() == 65 && s[32] == ':' && IsHex(s.substr(0, 32)) && IsHex(s.substr(33));
}

}  // namespace

std::string BlockEncoding::Describe() const {
  std::string out;
  auto add = [&](const std::string& part) { out += (out.empty() ? "" : "+") + part; };
  if (compression == Compression::kZstd) add("zstd:" + std::to_string(level));
  if (encryption == Encryption::kAes256Gcm) add("aes-256-gcm");
  if (checksum) add("crc32c");
  return out.empty() ? "raw" : out;
}

bool BlockEncoding::SameChoices(const BlockEncoding& o) const {
  return compression == o.compression && (compression == Compression::kNone || level == o.level) &&
         encryption == o.encryption && checksum == o.checksum;
}

Status BlockEncoding::SetCompression(std::string_view value) {
  if (value == "none") {
    compression = Compression::kNone;
    return Status::Ok();
  }
  int lvl = kDefaultZstdLevel;
  if (value.rfind("zstd:", 0) == 0) {
    std::string_view digits = value.substr(5);
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), lvl);
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size() || lvl < 1 ||
        lvl > 22)
      return Status::InvalidArgument("compression=" + QuoteForMessage(value) +
                                     ": the zstd level must be from 1 to 22");
  } else if (value != "zstd") {
    return Status::InvalidArgument("compression=" + QuoteForMessage(value) +
                                   ": expected none, zstd or zstd:LEVEL");
  }
  compression = Compression::kZstd;
  level = lvl;
  return Status::Ok();
}

Status BlockEncoding::SetEncryption(std::string_view value) {
  if (value == "none") encryption = Encryption::kNone;
  else if (value == "aes-256-gcm") encryption = Encryption::kAes256Gcm;
  else
    return Status::InvalidArgument("encryption=" + QuoteForMessage(value) +
                                   ": expected none or aes-256-gcm");
  return Status::Ok();
}

Status BlockEncoding::SetChecksum(std::string_view value) {
  if (value == "none") checksum = false;
  else if (value == "crc32c") checksum = true;
  else
    return Status::InvalidArgument("checksum=" + QuoteForMessage(value) +
                                   ": expected none or crc32c");
  return Status::Ok();
}

const char* LayoutName(ExportLayout layout) {
  return layout == ExportLayout::kLog ? "log" : "blocks";
}

Status ParseLayout(std::string_view value, ExportLayout* out) {
  if (value == "blocks") *out = ExportLayout::kBlocks;
  else if (value == "log") *out = ExportLayout::kLog;
  else
    return Status::InvalidArgument("layout=" + QuoteForMessage(value) +
                                   ": expected blocks or log");
  return Status::Ok();
}

Status CheckLayoutBlockSize(ExportLayout layout, uint32_t block_size) {
  if (layout == ExportLayout::kLog && block_size > kMaxLogBlockSize)
    return Status::InvalidArgument("a log export's block size is at most 1M (block-size=" +
                                   std::to_string(block_size) + " was given)");
  return Status::Ok();
}

std::string ExportMeta::Serialize() const {
  std::string out = "# nbd-s3-backend export metadata\n";
  out += "format=" + std::to_string(format) + "\n";
  out += "size=" + std::to_string(size) + "\n";
  out += "block-size=" + std::to_string(block_size) + "\n";
  // Only what differs from the raw encoding is written: a raw export's document stays as it was.
  if (encoding.compression == BlockEncoding::Compression::kZstd)
    out += "compression=zstd:" + std::to_string(encoding.level) + "\n";
  if (encoding.encryption == BlockEncoding::Encryption::kAes256Gcm)
    out += "encryption=aes-256-gcm\nkey-check=" + encoding.key_check + "\n";
  if (encoding.checksum) out += "checksum=crc32c\n";
  if (layout == ExportLayout::kLog) out += "layout=log\n";
  if (!base.empty()) out += "base=" + base + "\n";
  if (!blocks_of.empty()) out += "blocks-of=" + blocks_of + "\n";
  if (!snapshot.empty()) out += "snapshot=" + snapshot + "\n";
  if (state == State::kIncomplete) out += "state=incomplete\n";
  if (state == State::kDeleting) out += "state=deleting\n";
  return out;
}

Status ExportMeta::Parse(std::string_view export_name, std::string_view text, ExportMeta* out) {
  const std::string where = "metadata of export '" + QuoteForMessage(export_name) + "'";
  auto bad = [&](int line, const std::string& why) {
    return Status::IoError(where + " is corrupt (line " + std::to_string(line) + "): " + why);
  };
  if (text.size() > 64 * 1024) return Status::IoError(where + " is corrupt: it is too large");
  ExportMeta m;
  m.format = 0;
  bool have_format = false, have_size = false, have_block_size = false;
  int line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? text.npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad(line_no, "expected key=value");
    std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    bool numeric = !value.empty() && ec == std::errc() && ptr == value.data() + value.size();
    if (key == "format") {
      if (!numeric || v == 0 || v > UINT32_MAX) return bad(line_no, "bad format number");
      m.format = static_cast<uint32_t>(v);
      have_format = true;
    } else if (key == "size") {
      if (!numeric || v == 0 || v > kMaxExportSize) return bad(line_no, "bad size");
      m.size = v;
      have_size = true;
    } else if (key == "block-size") {
      if (!numeric || v < kMinBlockSize || v > kMaxBlockSize || (v & (v - 1)) != 0)
        return bad(line_no, "bad block size");
      m.block_size = static_cast<uint32_t>(v);
      have_block_size = true;
    } else if (key == "state") {
      if (value == "ready") m.state = State::kReady;
      else if (value == "incomplete") m.state = State::kIncomplete;
      else if (value == "deleting") m.state = State::kDeleting;
      else return bad(line_no, "unknown state '" + QuoteForMessage(value) + "'");
    } else if (key == "compression") {
      Status s = m.encoding.SetCompression(value);
      if (!s.ok()) return bad(line_no, s.message());
    } else if (key == "encryption") {
      Status s = m.encoding.SetEncryption(value);
      if (!s.ok()) return bad(line_no, s.message());
    } else if (key == "key-check") {
      if (!IsKeyCheck(value)) return bad(line_no, "bad key-check (expected SALT:MAC in hex)");
      m.encoding.key_check = std::string(value);
    } else if (key == "checksum") {
      Status s = m.encoding.SetChecksum(value);
      if (!s.ok()) return bad(line_no, s.message());
    } else if (key == "layout") {
      Status s = ParseLayout(value, &m.layout);
      if (!s.ok()) return bad(line_no, s.message());
    } else if (key == "blocks-of") {
      if (!ValidateExportName(value).ok()) return bad(line_no, "bad blocks-of");
      m.blocks_of = std::string(value);
    } else if (key == "base") {
      const size_t at = value.rfind('@');
      if (!ValidateExportName(value).ok() || at == std::string_view::npos || at == 0 ||
          at + 1 == value.size())
        return bad(line_no, "bad base (expected NAME@SNAP)");
      m.base = std::string(value);
    } else if (key == "snapshot") {
      if (!ValidateExportName(value).ok() || value.find('@') != std::string_view::npos)
        return bad(line_no, "bad snapshot name");
      m.snapshot = std::string(value);
    } else if (have_format && m.format > kMetaFormatVersion) {
      continue;  // Reported below as a newer format, which is the real cause.
    } else {
      return bad(line_no, "unknown key '" + QuoteForMessage(key) + "'");
    }
  }
  if (!have_format) return Status::IoError(where + " is corrupt: no format line");
  if (m.format > kMetaFormatVersion) {
    return Status::NotSupported(where + " has format " + std::to_string(m.format) +
                                ", newer than this version understands (" +
                                std::to_string(kMetaFormatVersion) + "); upgrade nbd-s3-backend");
  }
  if (!have_size || !have_block_size)
    return Status::IoError(where + " is corrupt: size or block-size missing");
  const bool encrypted = m.encoding.encryption != BlockEncoding::Encryption::kNone;
  if (encrypted && m.encoding.key_check.empty())
    return Status::IoError(where + " is corrupt: encryption without key-check");
  if (!encrypted && !m.encoding.key_check.empty())
    return Status::IoError(where + " is corrupt: key-check without encryption");
  if (!CheckLayoutBlockSize(m.layout, m.block_size).ok())
    return Status::IoError(where + " is corrupt: a log export's block size is at most 1M");
  *out = m;
  return Status::Ok();
}

}  // namespace s3block
