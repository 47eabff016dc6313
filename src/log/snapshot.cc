#include "log/snapshot.h"

#include <charconv>

#include "s3block/params.h"

namespace s3block::log {
namespace {

constexpr std::string_view kFirstLine = "# nbd-s3-backend snapshot";
// A record is a few lines; anything larger under the prefix is not one.
constexpr size_t kMaxRecordBytes = 4096;

bool ParseU64(std::string_view s, uint64_t* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return !s.empty() && ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::string SnapshotPrefix(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/snapshots/";
}

std::string SnapshotKey(std::string_view export_name, std::string_view snapshot) {
  return SnapshotPrefix(export_name) + std::string(snapshot);
}

std::string ClonePrefix(std::string_view export_name) {
  return "exports/" + std::string(export_name) + "/clones/";
}

std::string CloneKey(std::string_view export_name, std::string_view clone) {
  return ClonePrefix(export_name) + std::string(clone);
}

namespace {

// The names of the objects right under `prefix` that `valid` accepts: a temporary file of the
// local store, or a deeper key, is none.
Status ListNames(ObjectTransport& transport, const std::string& prefix,
                 Status (*valid)(std::string_view), std::vector<std::string>* names) {
  return transport.List(prefix, [&](const std::string& key, std::string_view) {
    const std::string rest = key.substr(prefix.size());
    if (!rest.empty() && rest.find('/') == std::string::npos && valid(rest).ok())
      names->push_back(rest);
  });
}

}  // namespace

Status ListCloneMarkers(ObjectTransport& transport, std::string_view name,
                        std::map<std::string, std::string>* out) {
  out->clear();
  std::vector<std::string> clones;
  S3B_RETURN_IF_ERROR(ListNames(transport, ClonePrefix(name), &ValidateExportName, &clones));
  for (const std::string& c : clones) {
    std::vector<uint8_t> bytes;
    Status s = transport.Get(CloneKey(name, c), &bytes);
    if (s.IsNotFound()) continue;
    S3B_RETURN_IF_ERROR(s);
    const std::string text(bytes.begin(), bytes.end());
    std::string snapshot;
    if (text.rfind("snapshot=", 0) == 0 && text.size() > 10 && text.back() == '\n')
      snapshot = text.substr(9, text.size() - 10);
    if (!ValidateSnapshotName(snapshot).ok())
      return Status::IoError("clone marker " + CloneKey(name, c) + " in " + transport.Describe() +
                             " is not valid");
    (*out)[c] = snapshot;
  }
  return Status::Ok();
}

Status ValidateSnapshotName(std::string_view name) {
  Status s = ValidateExportName(name);
  if (!s.ok())
    return Status::InvalidArgument("snapshot name" +
                                   s.message().substr(std::string_view("export name").size()));
  if (name.find('@') != std::string_view::npos)
    return Status::InvalidArgument("snapshot name '" + QuoteForMessage(name) +
                                   "' refused: it contains '@'");
  return Status::Ok();
}

bool SplitSnapshotName(std::string_view full, std::string* export_name, std::string* snapshot) {
  const size_t at = full.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == full.size()) return false;
  *export_name = std::string(full.substr(0, at));
  *snapshot = std::string(full.substr(at + 1));
  return true;
}

std::string EncodeSnapshotRecord(const SnapshotRecord& r) {
  return std::string(kFirstLine) + "\nformat=1\ncheckpoint=" + std::to_string(r.checkpoint) +
         "\nseq=" + std::to_string(r.seq) + "\nsize=" + std::to_string(r.size) +
         "\ncreated=" + std::to_string(r.created) + "\n" +
         (r.base.empty() ? "" : "base=" + r.base + "\n");
}

Status ParseSnapshotRecord(std::string_view text, const std::string& where, SnapshotRecord* out) {
  auto bad = [&](const std::string& why) {
    return Status::IoError("snapshot record " + where + " is not valid: " + why);
  };
  if (text.size() > kMaxRecordBytes) return bad("it is too long");
  SnapshotRecord r = *out;
  r.base.clear();
  bool first = true, format = false, checkpoint = false, seq = false, size = false, created = false;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return bad("its last line does not end");
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (first) {
      if (line != kFirstLine) return bad("its first line is not '" + std::string(kFirstLine) + "'");
      first = false;
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) return bad("a line has no '='");
    const std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "base") {
      std::string of, snap;
      if (!SplitSnapshotName(value, &of, &snap) || !ValidateSnapshotName(snap).ok())
        return bad("base= is not NAME@SNAP");
      r.base = std::string(value);
      continue;
    }
    uint64_t v = 0;
    if (!ParseU64(value, &v)) return bad(std::string(key) + "= is not a number");
    if (key == "format") {
      if (v != 1) return bad("format " + std::to_string(v) + " is not one this version knows");
      format = true;
    } else if (key == "checkpoint") {
      r.checkpoint = v;
      checkpoint = true;
    } else if (key == "seq") {
      r.seq = v;
      seq = true;
    } else if (key == "size") {
      r.size = v;
      size = true;
    } else if (key == "created") {
      r.created = static_cast<int64_t>(v);
      created = true;
    } else {
      return bad("unknown key '" + QuoteForMessage(key) + "'");
    }
  }
  if (first || !format || !checkpoint || !seq || !size || !created) return bad("a key is missing");
  if (r.checkpoint > r.seq) return bad("its checkpoint is after its last segment");
  if (r.size == 0) return bad("size=0");
  *out = std::move(r);
  return Status::Ok();
}

Status WriteSnapshot(ObjectTransport& transport, std::string_view name, const SnapshotRecord& r,
                     const WriteFence* fence) {
  const std::string text = EncodeSnapshotRecord(r);
  Status s = transport.Put(SnapshotKey(name, r.name),
                           std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()),
                           PutOptions::IfAbsent(fence));
  if (IsPreconditionFailed(s))
    return Status::AlreadyExists("export '" + std::string(name) + "' has a snapshot '" + r.name +
                                 "'");
  return s;
}

Status ReadSnapshot(ObjectTransport& transport, std::string_view name, std::string_view snapshot,
                    SnapshotRecord* out) {
  const std::string key = SnapshotKey(name, snapshot);
  std::vector<uint8_t> bytes;
  S3B_RETURN_IF_ERROR(transport.Get(key, &bytes));
  out->name = std::string(snapshot);
  return ParseSnapshotRecord(std::string_view(reinterpret_cast<const char*>(bytes.data()),
                                              bytes.size()),
                             key + " in " + transport.Describe(), out);
}

Status ListSnapshots(ObjectTransport& transport, std::string_view name,
                     std::vector<SnapshotRecord>* out) {
  out->clear();
  std::vector<std::string> names;
  S3B_RETURN_IF_ERROR(ListNames(transport, SnapshotPrefix(name), &ValidateSnapshotName, &names));
  for (const std::string& n : names) {
    SnapshotRecord r;
    Status s = ReadSnapshot(transport, name, n, &r);
    if (s.IsNotFound()) continue;  // deleted since listed
    S3B_RETURN_IF_ERROR(s);
    out->push_back(std::move(r));
  }
  return Status::Ok();
}

}  // namespace s3block::log
