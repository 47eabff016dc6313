// blockmodel: a libnbd client that writes an export while keeping a model of what it must hold, and
// checks the export against the model. Used by the fault and crash tests (tests/scripts/faults.sh,
// crash.sh).
//
//   blockmodel write  --uri URI --state FILE --units N [--seconds S] [--depth D] [--flush-every K]
//                     [--keep-going] [--seed X]
//   blockmodel verify --uri URI --state FILE [--strict]
//
// The export is cut into units of 4096 bytes (one block at the default block size, so each unit
// is replaced atomically). Version v of unit u is a pattern that names both (u and v in its first
// 16 bytes, the rest derived from them), so a read tells which version it returned; version 0 is
// all zeros (never written). For each unit the model keeps:
//
//   flushed  the version that a successful flush made durable (a lower bound: any later version
//            written before the crash may be there instead),
//   lo, hi   the versions a read may return now: lo = hi = v after a write of v that succeeded;
//            after a failed write of v, hi = v and lo stays (it may or may not have landed).
//
// A flush that succeeds sets flushed = lo for every unit. A read that returns a version below lo
// (or, in verify, below flushed) is LOST data; anything that is not a whole pattern of that unit
// with a version up to hi is WRONG data. A read that fails is an error, counted apart: under faults
// an error is an acceptable answer, wrong data never is.
//
// write issues D writes at once (distinct units), waits for them, reads D random units back and
// checks them, and flushes every K rounds, until S seconds have passed or the connection dies (the
// server was killed: the expected end in the crash test). Without --keep-going the first failed
// request ends it with exit status 1. The state file is loaded at the start (the model of earlier
// runs: versions go on from there) and written at the end, replaced atomically; after a run whose
// server may have crashed, lo is reset to flushed.
//
// verify reads every unit once and checks it against [flushed, hi]. --strict: a failed read is a
// failure too; it also checks that the export works: it writes a new version of a few units,
// flushes, and reads them back.
//
// The last line of output is "blockmodel: ..." with the counts; exit status 0 only if nothing was
// lost or wrong (and, with --strict or without --keep-going, no request failed).
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr uint64_t kUnit = 4096;

struct UnitState {
  uint64_t flushed = 0, lo = 0, hi = 0;
};

struct Model {
  uint64_t units = 0;
  uint64_t next_version = 1;
  std::vector<UnitState> u;

  bool Load(const std::string& path, uint64_t want_units, std::string* err) {
    std::ifstream in(path);
    if (!in) {
      units = want_units;
      u.assign(units, UnitState{});
      return true;  // a first run
    }
    std::string magic;
    in >> magic >> units >> next_version;
    if (magic != "blockmodel-state-1" || !in) {
      *err = "state file " + path + " is not a blockmodel state";
      return false;
    }
    if (want_units != 0 && want_units != units) {
      *err = "state file " + path + " has " + std::to_string(units) + " units, not " +
             std::to_string(want_units);
      return false;
    }
    u.assign(units, UnitState{});
    uint64_t i, f, lo, hi;
    while (in >> i >> f >> lo >> hi) {
      if (i >= units) {
        *err = "state file " + path + ": unit out of range";
        return false;
      }
      u[i] = UnitState{f, lo, hi};
    }
    return true;
  }

  bool Save(const std::string& path) const {
    std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << "blockmodel-state-1 " << units << " " << next_version << "\n";
      for (uint64_t i = 0; i < units; ++i)
        if (u[i].hi != 0) out << i << " " << u[i].flushed << " " << u[i].lo << " " << u[i].hi << "\n";
      out.flush();
      if (!out) return false;
    }
    return rename(tmp.c_str(), path.c_str()) == 0;
  }
};

uint64_t SplitMix(uint64_t* x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void Fill(uint64_t unit, uint64_t version, uint8_t* out) {
  memcpy(out, &unit, 8);
  memcpy(out + 8, &version, 8);
  uint64_t s = unit * 0x100000001b3ull ^ (version << 20) ^ 0x5eed;
  for (uint64_t i = 16; i < kUnit; i += 8) {
    uint64_t r = SplitMix(&s) | 0x0101010101010101ull;  // never a zero byte: no elision
    memcpy(out + i, &r, 8);
  }
}

enum class Verdict { kOk, kLost, kWrong };

// Checks what a read of `unit` returned against the range [lo, hi].
Verdict Check(uint64_t unit, const uint8_t* data, uint64_t lo, uint64_t hi, uint64_t* version) {
  bool zero = true;
  for (uint64_t i = 0; i < kUnit; ++i)
    if (data[i] != 0) {
      zero = false;
      break;
    }
  if (zero) {
    *version = 0;
    return lo == 0 ? Verdict::kOk : Verdict::kLost;
  }
  uint64_t got_unit, v;
  memcpy(&got_unit, data, 8);
  memcpy(&v, data + 8, 8);
  *version = v;
  if (got_unit != unit || v == 0 || v > hi) return Verdict::kWrong;
  std::vector<uint8_t> expect(kUnit);
  Fill(unit, v, expect.data());
  if (memcmp(expect.data(), data, kUnit) != 0) return Verdict::kWrong;
  return v < lo ? Verdict::kLost : Verdict::kOk;
}

struct Counts {
  uint64_t writes = 0, write_errors = 0, reads = 0, read_errors = 0, flushes = 0,
           flush_errors = 0, lost = 0, wrong = 0, bytes_checked = 0;
};

struct Args {
  std::string mode, uri, state;
  uint64_t units = 0;
  double seconds = 10;
  int depth = 8;
  int flush_every = 4;
  bool keep_going = false;
  bool strict = false;
  uint64_t seed = 1;
};

[[noreturn]] void Usage(const char* msg) {
  fprintf(stderr, "blockmodel: %s\nusage: blockmodel write|verify --uri URI --state FILE "
                  "[--units N] [--seconds S] [--depth D] [--flush-every K] [--keep-going] "
                  "[--strict] [--seed X]\n", msg);
  exit(2);
}

bool Dead(nbd_handle* h) { return nbd_aio_is_dead(h) || nbd_aio_is_closed(h); }

void Report(const char* what, const Counts& c, const Model& m) {
  printf("blockmodel: %s: %llu units, %llu writes (%llu failed), %llu reads (%llu failed), "
         "%llu flushes (%llu failed), %llu bytes checked, %llu lost, %llu wrong\n",
         what, (unsigned long long)m.units, (unsigned long long)c.writes,
         (unsigned long long)c.write_errors, (unsigned long long)c.reads,
         (unsigned long long)c.read_errors, (unsigned long long)c.flushes,
         (unsigned long long)c.flush_errors, (unsigned long long)c.bytes_checked,
         (unsigned long long)c.lost, (unsigned long long)c.wrong);
  fflush(stdout);
}

void NoteBad(Verdict v, uint64_t unit, uint64_t got, const UnitState& s, Counts* c) {
  if (v == Verdict::kOk) return;
  if (v == Verdict::kLost) ++c->lost;
  else ++c->wrong;
  if (c->lost + c->wrong <= 20)
    fprintf(stderr, "blockmodel: unit %llu (offset %llu): %s: read version %llu, expected %llu..%llu "
                    "(flushed %llu)\n",
            (unsigned long long)unit, (unsigned long long)(unit * kUnit),
            v == Verdict::kLost ? "LOST" : "WRONG DATA", (unsigned long long)got,
            (unsigned long long)s.lo, (unsigned long long)s.hi, (unsigned long long)s.flushed);
}

// Reads `units` (distinct) at once and checks each against [lo or flushed, hi].
void ReadAndCheck(nbd_handle* h, Model& m, const std::vector<uint64_t>& units, bool against_flushed,
                  Counts* c) {
  std::vector<std::vector<uint8_t>> bufs(units.size(), std::vector<uint8_t>(kUnit));
  std::vector<int64_t> cookies(units.size(), -1);
  for (size_t i = 0; i < units.size(); ++i)
    cookies[i] = nbd_aio_pread(h, bufs[i].data(), kUnit, units[i] * kUnit, NBD_NULL_COMPLETION, 0);
  while (nbd_aio_in_flight(h) > 0)
    if (nbd_poll(h, -1) == -1) break;
  for (size_t i = 0; i < units.size(); ++i) {
    ++c->reads;
    if (cookies[i] == -1 || nbd_aio_command_completed(h, cookies[i]) != 1) {
      ++c->read_errors;
      continue;
    }
    const UnitState& s = m.u[units[i]];
    uint64_t got = 0;
    Verdict v = Check(units[i], bufs[i].data(), against_flushed ? s.flushed : s.lo, s.hi, &got);
    NoteBad(v, units[i], got, s, c);
    c->bytes_checked += kUnit;
  }
}

// Writes a new version of each of `units` (distinct) at once and updates the model.
void WriteUnits(nbd_handle* h, Model& m, const std::vector<uint64_t>& units, Counts* c) {
  std::vector<std::vector<uint8_t>> bufs(units.size(), std::vector<uint8_t>(kUnit));
  std::vector<int64_t> cookies(units.size(), -1);
  std::vector<uint64_t> versions(units.size());
  for (size_t i = 0; i < units.size(); ++i) {
    versions[i] = m.next_version++;
    Fill(units[i], versions[i], bufs[i].data());
    // The write may land from the moment it is sent.
    m.u[units[i]].hi = versions[i];
    cookies[i] = nbd_aio_pwrite(h, bufs[i].data(), kUnit, units[i] * kUnit, NBD_NULL_COMPLETION, 0);
  }
  while (nbd_aio_in_flight(h) > 0)
    if (nbd_poll(h, -1) == -1) break;
  for (size_t i = 0; i < units.size(); ++i) {
    ++c->writes;
    if (cookies[i] != -1 && nbd_aio_command_completed(h, cookies[i]) == 1) {
      m.u[units[i]].lo = versions[i];
    } else {
      ++c->write_errors;
    }
  }
}

bool FlushModel(nbd_handle* h, Model& m, Counts* c) {
  ++c->flushes;
  if (nbd_flush(h, 0) == -1) {
    ++c->flush_errors;
    return false;
  }
  for (auto& s : m.u) s.flushed = s.lo;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (argc < 2) Usage("no mode");
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) Usage(("no value for " + k).c_str());
      return argv[++i];
    };
    if (k == "--uri") a.uri = val();
    else if (k == "--state") a.state = val();
    else if (k == "--units") a.units = std::stoull(val());
    else if (k == "--seconds") a.seconds = std::stod(val());
    else if (k == "--depth") a.depth = std::stoi(val());
    else if (k == "--flush-every") a.flush_every = std::stoi(val());
    else if (k == "--seed") a.seed = std::stoull(val());
    else if (k == "--keep-going") a.keep_going = true;
    else if (k == "--strict") a.strict = true;
    else Usage(("unknown argument " + k).c_str());
  }
  if (a.uri.empty() || a.state.empty()) Usage("--uri and --state are required");
  if (a.mode != "write" && a.mode != "verify") Usage("mode must be write or verify");
  if (a.depth < 1 || a.flush_every < 1) Usage("--depth and --flush-every must be positive");

  Model m;
  std::string err;
  if (!m.Load(a.state, a.units, &err)) {
    fprintf(stderr, "blockmodel: %s\n", err.c_str());
    return 2;
  }
  if (m.units == 0) Usage("--units is required on a first run");
  // A new session: whatever a crashed server did not flush may or may not be there.
  for (auto& s : m.u) s.lo = s.flushed;

  nbd_handle* h = nbd_create();
  if (h == nullptr || nbd_connect_uri(h, a.uri.c_str()) == -1) {
    fprintf(stderr, "blockmodel: cannot connect to %s: %s\n", a.uri.c_str(), nbd_get_error());
    return 3;
  }
  int64_t size = nbd_get_size(h);
  if (size < 0 || static_cast<uint64_t>(size) < m.units * kUnit) {
    fprintf(stderr, "blockmodel: the export (%lld bytes) is smaller than %llu units\n",
            (long long)size, (unsigned long long)m.units);
    return 2;
  }

  Counts c;
  std::mt19937_64 rng(a.seed ^ (static_cast<uint64_t>(getpid()) << 16) ^ m.next_version);
  int rc = 0;
  if (a.mode == "write") {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(a.seconds);
    const int depth = static_cast<int>(std::min<uint64_t>(a.depth, m.units));
    auto pick = [&]() {
      std::set<uint64_t> s;
      while (static_cast<int>(s.size()) < depth) s.insert(rng() % m.units);
      return std::vector<uint64_t>(s.begin(), s.end());
    };
    for (int round = 1; std::chrono::steady_clock::now() < end && !Dead(h); ++round) {
      const uint64_t before = c.write_errors + c.read_errors + c.flush_errors;
      WriteUnits(h, m, pick(), &c);
      if (Dead(h)) break;
      ReadAndCheck(h, m, pick(), false, &c);
      if (round % a.flush_every == 0 && !Dead(h)) FlushModel(h, m, &c);
      if (!a.keep_going && c.write_errors + c.read_errors + c.flush_errors != before) break;
    }
    // A clean end: make everything durable (a failure here is counted like any other).
    if (!Dead(h)) FlushModel(h, m, &c);
    if (!m.Save(a.state)) {
      fprintf(stderr, "blockmodel: cannot write %s\n", a.state.c_str());
      rc = 2;
    }
    Report(Dead(h) ? "write (connection lost)" : "write", c, m);
    const bool errors = c.write_errors + c.read_errors + c.flush_errors != 0;
    if (c.lost || c.wrong || (errors && !a.keep_going && !Dead(h))) rc = 1;
  } else {
    std::vector<uint64_t> batch;
    for (uint64_t i = 0; i < m.units; ++i) {
      batch.push_back(i);
      if (batch.size() == 32 || i + 1 == m.units) {
        ReadAndCheck(h, m, batch, true, &c);
        batch.clear();
      }
    }
    if (a.strict) {
      // The device takes new writes, makes them durable and returns them.
      std::vector<uint64_t> units;
      for (uint64_t i = 0; i < std::min<uint64_t>(8, m.units); ++i) units.push_back(i * (m.units / 8 + 1) % m.units);
      std::set<uint64_t> distinct(units.begin(), units.end());
      units.assign(distinct.begin(), distinct.end());
      WriteUnits(h, m, units, &c);
      FlushModel(h, m, &c);
      ReadAndCheck(h, m, units, false, &c);
      if (!m.Save(a.state)) rc = 2;
    }
    Report("verify", c, m);
    const bool errors = c.write_errors + c.read_errors + c.flush_errors != 0;
    if (c.lost || c.wrong || (a.strict && errors)) rc = 1;
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  return rc;
}
