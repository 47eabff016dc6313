#!/bin/bash
# The persistent disk cache (disk-cache=DIR,SIZE) on a real S3 server, through real nbdkit and
# libnbd clients, once with raw blocks and once with compression and encryption:
#
#  1. write 8 MiB of data with the disk cache on; stop the server;
#     the cache directory holds the blocks (and, encrypted, none of the plain text);
#  2. restart: every block is read back from the disk cache (no S3 read), byte for byte;
#  3. another server without the disk cache rewrites the first half and trims the last MiB;
#  4. restart with the disk cache: the changed and trimmed blocks' copies are found stale at
#     start-up and dropped, and the export reads back as the other server left it;
#  5. restart with a disk cache smaller than the data: it keeps to its size.
#
#   tests/scripts/disk_cache.sh     (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_tool nbdkit nbdcopy nbdsh python3 cmp
require_libnbd_python
require_s3_env
# nbdsh runs "python3" from PATH, which may not be Debian's (the one with python3-libnbd's module).
nbdsh() { $py -m nbd "$@"; }

# The secret goes in a file (secret-key=+FILE), out of ps and of the log.
printf '%s' "$S3BLOCK_TEST_S3_SECRET_KEY" >"$work/secret"
head -c 32 /dev/urandom >"$work/key"
uri="nbd+unix:///test_device?socket=$sock"
mib=$((1024 * 1024))

serve() {  # PLUGIN_PARAMS...: nbdkit -v, with a fresh stats file
  rm -f "$work/stats.json"
  start_nbdkit -v "$plugin" "$@"
}

# counter KEY MIN: the counter KEY of export test_device in the stats file, once it is at least MIN
# (the file is rewritten about once a second); prints the last value seen after 10 s.
counter() {
  local key=$1 min=${2:-0} i v=
  for ((i = 0; i < 100; i++)); do
    v=$(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["exports"]["test_device"][sys.argv[2]])
except Exception: print("")' "$work/stats.json" "$1" 2>/dev/null)
    if [ -n "$v" ] && [ "$v" -ge "$min" ]; then break; fi
    sleep 0.1
  done
  echo "${v:-0}"
}

# Files and bytes of block copies in the disk cache directory.
copies() { find "$work/dc" -type f -path '*/exports/*' ! -name lock | wc -l; }
copy_bytes() { find "$work/dc" -type f -path '*/exports/*' ! -name lock -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }

# Data with a recognisable plain text in every block, so that a copy of it on disk can be found.
python3 - "$work/data1" "$work/data2" <<'PY'
import os, sys
for path, tag in ((sys.argv[1], b"first"), (sys.argv[2], b"second")):
    with open(path, "wb") as f:
        for i in range(2048):
            f.write((b"PLAINTEXT-MARKER-%s-%06d-" % (tag, i)).ljust(64, b".") + os.urandom(4096 - 64))
PY
# What the export holds after step 3: data2's first half, data1's second half, the last MiB zero.
{ head -c $((4 * mib)) "$work/data2"; dd if="$work/data1" bs=1M skip=4 count=3 status=none; head -c $mib /dev/zero; } >"$work/expected"

run_set() {  # NAME PLUGIN_PARAMS...
  local name=$1
  shift
  local prefix="diskcache-$name-$$-$(date +%s)"
  local store=("store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT"
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=+$work/secret" size=8M "$@")
  # A small block cache in memory, so that reads reach the layers below it.
  local cached=("${store[@]}" cache-size=256K dirty-size=64K "disk-cache=$work/dc,64M" "stats-file=$work/stats.json")
  rm -rf "$work/dc"

  log "[$name] 1. write 8 MiB with the disk cache on"
  serve "${cached[@]}"
  nbdcopy "$work/data1" "$uri"
  stop_nbdkit
  local n
  n=$(copies)
  [ "$n" -eq 2048 ] || die "[$name] expected 2048 block copies in the disk cache, found $n"
  if [ "$name" = raw ]; then
    grep -rqa PLAINTEXT-MARKER "$work/dc" || die "[$name] the raw copies do not hold the data written"
  else
    if grep -rqa PLAINTEXT-MARKER "$work/dc"; then die "[$name] plain text in the disk cache of an encrypted export"; fi
  fi

  log "[$name] 2. restart: every block from the disk cache"
  serve "${cached[@]}"
  nbdcopy "$uri" "$work/out"
  cmp "$work/data1" "$work/out" || die "[$name] the export read back differs from what was written"
  local hits misses reused
  hits=$(counter disk_hits 2048)
  misses=$(counter disk_misses)
  reused=$(counter disk_reused 2048)
  log "[$name]    disk cache hits $hits, misses $misses, reused $reused"
  [ "$hits" -ge 2048 ] || die "[$name] expected every block (2048) from the disk cache, got $hits hits"
  [ "$misses" -eq 0 ] || die "[$name] $misses reads went to S3 after a restart with a full disk cache"
  [ "$reused" -eq 2048 ] || die "[$name] expected 2048 copies reused, got $reused"
  stop_nbdkit

  log "[$name] 3. another server, without the disk cache, rewrites the first half and trims the last MiB"
  serve "${store[@]}"
  nbdsh -u "$uri" -c "
data = open('$work/data2', 'rb').read($((4 * mib)))
h.pwrite(data, 0)
h.trim($mib, $((7 * mib)))
h.flush()"
  stop_nbdkit

  log "[$name] 4. restart with the disk cache: stale copies dropped"
  serve "${cached[@]}"
  nbdcopy "$uri" "$work/out"
  cmp "$work/expected" "$work/out" || die "[$name] served stale data from the disk cache"
  local stale
  stale=$(counter disk_stale 1280)
  hits=$(counter disk_hits 768)
  log "[$name]    stale copies dropped $stale, hits $hits"
  [ "$stale" -eq 1280 ] || die "[$name] expected 1280 stale copies (1024 rewritten, 256 trimmed), got $stale"
  [ "$hits" -ge 768 ] || die "[$name] expected the 768 unchanged blocks from the disk cache, got $hits hits"
  stop_nbdkit

  log "[$name] 5. a disk cache of 1 MiB keeps to its size"
  serve "${store[@]}" cache-size=256K dirty-size=64K "disk-cache=$work/dc,1M" "stats-file=$work/stats.json"
  nbdcopy "$uri" "$work/out"
  cmp "$work/expected" "$work/out" || die "[$name] wrong data through a small disk cache"
  local bytes
  bytes=$(counter disk_bytes 1)
  [ "$bytes" -le "$mib" ] || die "[$name] the disk cache holds $bytes bytes, more than its 1 MiB"
  stop_nbdkit
  n=$(copy_bytes)
  [ "$n" -le "$mib" ] || die "[$name] $n bytes of copies on disk, more than the disk cache's 1 MiB"
  log "[$name] ok: $bytes bytes cached, $n bytes on disk"
}

run_set raw
run_set encoded compression=zstd encryption=aes-256-gcm "key-file=$work/key"
log "all passed"
