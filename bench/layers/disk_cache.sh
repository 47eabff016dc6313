#!/bin/bash
# What the disk cache (disk-cache=DIR,SIZE) costs and saves on S3, measured through nbdkit: for
# each block size, nbdcopy writes an image of random data into a new export (with and without the
# disk cache: the cost on the write path), then nbdkit is restarted and the export read back cold
# (page cache dropped), once reading from S3 and once from the disk cache filled by the write.
# Each row gives MiB/s, the S3 GETs the read needed, and the bytes the disk cache holds.
#
#   bench/layers/disk_cache.sh            (as root: it drops the page cache)
#
# Uses the S3 server named by S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY}, or else
# starts one on 127.0.0.1 with tests/scripts/s3_server.sh (RGW_OBJECTSTORE=bluestore to match the
# benchmark harness) and stops it at the end. Prints a Markdown table.
#
# Environment: S3BLOCK_PLUGIN (default build/nbdkit-s3block-plugin.so), MIB_4K (default 32),
# MIB_1M (default 256), CACHE (the block cache in memory, default 16M), DC_PORT (default 9560).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
plugin=${S3BLOCK_PLUGIN:-$repo/build/nbdkit-s3block-plugin.so}
cache=${CACHE:-16M}
for tool in nbdkit nbdcopy python3; do
  command -v "$tool" >/dev/null || { echo "disk_cache.sh: $tool is not installed" >&2; exit 1; }
done
[ -f "$plugin" ] || { echo "disk_cache.sh: no plugin at $plugin" >&2; exit 1; }
plugin=$(realpath "$plugin")

work=$(mktemp -d /tmp/s3block-bench-dc.XXXXXX)
sock=$work/sock
nbdkit_pid=
s3_dir=
cleanup() {
  if [ -n "$nbdkit_pid" ]; then kill "$nbdkit_pid" 2>/dev/null || true; wait "$nbdkit_pid" 2>/dev/null || true; fi
  if [ -n "$s3_dir" ]; then bash "$repo/tests/scripts/s3_server.sh" stop "$s3_dir" 0 >/dev/null 2>&1 || true; rm -rf "$s3_dir"; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${S3BLOCK_TEST_S3_ENDPOINT:-}" ]; then
  s3_dir=$(mktemp -d /tmp/s3block-bench-dc-rgw.XXXXXX)
  echo "disk_cache.sh: starting the S3 server" >&2
  eval "$(bash "$repo/tests/scripts/s3_server.sh" start "$s3_dir" "${DC_PORT:-9560}")"
fi
printf '%s' "$S3BLOCK_TEST_S3_SECRET_KEY" >"$work/secret"

now() { date +%s.%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

start_nbdkit() {  # PARAMS...
  rm -f "$sock" "$work/pid" "$work/stats.json"
  nbdkit -f -P "$work/pid" -U "$sock" "$plugin" "$@" "stats-file=$work/stats.json" </dev/null \
    >>"$work/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  for _ in $(seq 600); do [ -s "$work/pid" ] && return 0; sleep 0.05; done
  echo "disk_cache.sh: nbdkit did not start" >&2
  tail "$work/nbdkit.log" >&2
  exit 1
}
stop_nbdkit() {  # the plugin writes its stats file a last time as it stops
  kill "$nbdkit_pid"
  wait "$nbdkit_pid" || true
  nbdkit_pid=
  cp "$work/stats.json" "$work/last.json" 2>/dev/null || echo '{"exports": {}}' >"$work/last.json"
}
# counter KEY: from the last stats document of the stopped server.
counter() {
  python3 -c 'import json,sys
e=json.load(open(sys.argv[1]))["exports"].get("test_device", {})
print(e.get(sys.argv[2], 0))' "$work/last.json" "$1"
}
rate() { python3 -c "print('%.1f' % ($1 / 1048576 / ($3 - $2)))"; }

echo "| block size | image | write MiB/s, no disk cache | write MiB/s, disk cache | cold read MiB/s from S3 | S3 GETs | cold read MiB/s from the disk cache | S3 GETs | disk cache bytes |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for bs in 4K 1M; do
  if [ "$bs" = 4K ]; then mib=${MIB_4K:-32}; else mib=${MIB_1M:-256}; fi
  bytes=$((mib << 20))
  head -c "$bytes" /dev/urandom >"$work/image"
  base=("store=s3://$S3BLOCK_TEST_S3_BUCKET/bench-dc-$bs-$$-$(date +%s)" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT"
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=+$work/secret" "size=$bytes" "block-size=$bs"
    "cache-size=$cache")
  dc=("disk-cache=$work/dc-$bs,$((2 * mib))M")
  uri="nbd+unix:///test_device?socket=$sock"
  other="nbd+unix:///other?socket=$sock"

  # Writes: the same image into two exports, without and with the disk cache.
  start_nbdkit "${base[@]}"
  t0=$(now); nbdcopy "$work/image" "$other"; t1=$(now)
  stop_nbdkit
  w_plain=$(rate "$bytes" "$t0" "$t1")
  start_nbdkit "${base[@]}" "${dc[@]}"
  t0=$(now); nbdcopy "$work/image" "$uri"; t1=$(now)
  stop_nbdkit
  w_dc=$(rate "$bytes" "$t0" "$t1")

  # Cold reads after a restart: from S3 (no disk cache), then from the disk cache.
  drop_caches
  start_nbdkit "${base[@]}"
  t0=$(now); nbdcopy "$uri" null:; t1=$(now)
  stop_nbdkit
  r_s3=$(rate "$bytes" "$t0" "$t1")
  gets_s3=$(counter store_reads)
  drop_caches
  start_nbdkit "${base[@]}" "${dc[@]}"
  t0=$(now); nbdcopy "$uri" null:; t1=$(now)
  stop_nbdkit
  r_dc=$(rate "$bytes" "$t0" "$t1")
  gets_dc=$(counter disk_misses)
  dc_bytes=$(counter disk_bytes)
  echo "| $bs | $mib MiB random | $w_plain | $w_dc | $r_s3 | $gets_s3 | $r_dc | $gets_dc | $dc_bytes |"
done
