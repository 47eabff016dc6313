#!/bin/bash
# Crashes: nbdkit is killed with SIGKILL at a random moment while blockmodel
# (tests/tools/blockmodel.cc) writes, reads back and flushes, many times over on one store. After
# every restart each unit must hold the version of its last successful flush or a newer one that
# was being written, and nothing else: no lost flush, no partial block, no temporary file read as
# data. Rounds alternate the cache on and off. On the local store it also checks that every block
# file has the full block size (a partial file never takes a block's name) and counts the
# temporary files the kills left behind (they must never be listed or read as blocks).
# (tests/scripts/crash_ext4.sh does the same under ext4.)
#
# With the layout "log" the export is log-structured (layout=log), in segments of 1 MiB with the
# collector rewriting any segment less than 90% live (gc-threshold=90), so that the random
# overwrites give it work: every other round lasts past the collector's first pass (10 s after
# the server starts writing) before the kill, and at least one round must have seen the
# collector rewrite blocks (its counters in the stats file) before it was killed.
#
#   tests/scripts/crash.sh local [blocks|log]
#   tests/scripts/crash.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); CRASH_ROUNDS (default 30);
# CRASH_SECONDS (default 90: no new round starts after that).
# Prints "crashes survived: N" with the total bytes verified.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="crash[$mode${2:+,$layout}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
model=$build/tests/blockmodel
rounds=${CRASH_ROUNDS:-30}
budget=${CRASH_SECONDS:-90}
require_built "$plugin" "$model"
require_tool nbdkit
use_store "$mode" crash
# force=true: the killed server's lease is still in the bucket, and the operator knows its holder
# is dead (without it the restart would wait for lease-timeout=).
[ "$mode" = local ] || store_params+=(force=true)
stats=$work/stats.json
case "$layout" in
blocks) ;;
log) store_params+=(layout=log segment-size=1M gc-threshold=90 "stats-file=$stats") ;;
*) die "usage: $0 local|s3 [blocks|log]" ;;
esac
collected_rounds=0

serve() { start_nbdkit "$plugin" "${store_params[@]}" size=256M "$@"; }

uri="nbd+unix:///crash?socket=$sock"
state=$work/model.state
units=4096  # 16 MiB
survived=0
verified_bytes=0
started=$(date +%s)
for ((r = 1; r <= rounds; r++)); do
  if [ $(($(date +%s) - started)) -ge "$budget" ]; then
    log "time budget of ${budget}s used: stopping after $((r - 1)) rounds"
    break
  fi
  if ((r % 2)); then cache=cache=true; else cache=cache=false; fi
  serve "$cache" cache-size=4M upload-threads=8
  "$model" write --uri "$uri" --state "$state" --units $units --seconds 60 --depth 16 \
    --flush-every $((RANDOM % 4 + 1)) --seed "$r" >"$work/writer.out" 2>&1 &
  writer_pid=$!
  end_at_exit "$writer_pid"
  # A random moment between 0.2 and 2.5 seconds into the run; for the log, every other round
  # between 11 and 14 seconds, past the collector's first pass.
  if [ "$layout" = log ] && ((r % 2 == 0)); then from=11 span=3; else from=0.2 span=2.3; fi
  sleep "$(awk -v r=$RANDOM -v from=$from -v span=$span 'BEGIN { printf "%.2f", from + span * r / 32767 }')"
  kill -0 "$writer_pid" 2>/dev/null || { cat "$work/writer.out" >&2; die "round $r: the writer ended before the kill"; }
  if [ "$layout" = log ]; then
    # The stats file of the server about to be killed (written once a second).
    gc=$(export_stat "$stats" crash log_gc_bytes 0)
    if [ "$gc" -gt 0 ]; then
      collected_rounds=$((collected_rounds + 1))
      log "round $r: the collector had rewritten $gc bytes ($(export_stat "$stats" crash log_gc_segments_freed 0) segments freed) before the kill"
    fi
  fi
  kill_nbdkit
  rc=0
  wait "$writer_pid" || rc=$?
  cat "$work/writer.out"
  [ $rc -eq 0 ] || die "round $r: the writer saw lost or wrong data before the kill (exit $rc)"
  grep -q 'connection lost' "$work/writer.out" || die "round $r: the writer did not see the kill"

  if [ "$mode" = local ] && [ "$layout" = log ]; then
    # Segments are whole or absent: a file named as one is never cut short of what its head says
    # (checked when the restart reads it); anything else in log/ is a temporary file.
    segs=$store/exports/crash/log
    if [ -d "$segs" ]; then
      temps=$(find "$segs" -maxdepth 1 -type f -regextype posix-extended ! -regex '.*/[0-9a-f]{16}' | wc -l)
      [ "$temps" -eq 0 ] || log "round $r: $temps temporary files left by the kill (never segments)"
    fi
    blockfiles=$(find "$store/exports/crash" -path '*/blocks/*' -type f 2>/dev/null | wc -l)
    [ "$blockfiles" -eq 0 ] || die "round $r: a log export has $blockfiles block files"
  elif [ "$mode" = local ]; then
    blocks=$store/exports/crash/blocks
    if [ -d "$blocks" ]; then
      short=$(find "$blocks" -maxdepth 1 -type f -regex '.*/[0-9]+' ! -size 4096c | wc -l)
      [ "$short" -eq 0 ] || die "round $r: $short block files without the full block size"
      temps=$(find "$blocks" -maxdepth 1 -type f ! -regex '.*/[0-9]+' | wc -l)
      [ "$temps" -eq 0 ] || log "round $r: $temps temporary files left by the kill (never blocks)"
    fi
  fi

  serve "$cache"
  "$model" verify --uri "$uri" --state "$state" --strict >"$work/verify.out" 2>&1 ||
    { cat "$work/verify.out" >&2; die "round $r: after kill -9 and restart, flushed data is missing or wrong"; }
  cat "$work/verify.out"
  b=$(sed -n 's/.* \([0-9]*\) bytes checked.*/\1/p' "$work/verify.out")
  l=$(sed -n 's/.* \([0-9]*\) lost, [0-9]* wrong$/\1/p' "$work/verify.out")
  [ "${l:-x}" = 0 ] || die "round $r: the verify output does not say 0 lost"
  verified_bytes=$((verified_bytes + b))
  stop_nbdkit
  survived=$((survived + 1))
done
[ $survived -ge 1 ] || die "no round ran"
if [ "$layout" = log ]; then
  [ $collected_rounds -ge 1 ] || die "in no round had the collector rewritten anything before the kill"
  log "the collector had run before the kill in $collected_rounds rounds"
fi
log "crashes survived: $survived (kill -9 during writes; $verified_bytes bytes verified after restarts, 0 bytes lost)"
