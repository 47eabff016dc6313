#!/bin/bash
# Faults in the S3 store: tests/faultproxy/faultproxy.py sits between the plugin and the real S3
# server and, for each kind of fault in turn (500, 503 SlowDown, connection resets, stalls past the
# request timeout, truncated bodies, corrupted bodies, error bodies that are not XML), injects it
# into a share of the requests while the export is in use. For each kind:
#
#  1. blockmodel (tests/tools/blockmodel.cc) writes, reads back and flushes with the faults at a
#     high rate and a short retry-timeout, so that some requests fail for good: a failed request
#     is acceptable, a read that returns wrong or lost data never is. Then the faults stop and,
#     on the same nbdkit (no restart), every unit must hold a version at least as new as the last
#     successful flush, with no error, and new writes must work; then nbdkit is restarted and
#     everything flushed must still be there.
#  2. fio (nbd engine, verify=crc32c) writes and verifies with the faults at a lower rate and a
#     retry-timeout long enough to ride them out: it must finish with every block verified.
#
# Then a block listing damaged on the way (a block's number turned into a letter) must be
# fetched again: the block still reads as stored, and a flushed trim of it holds after a restart.
#
# The number of faults injected of each kind is printed at the end ("faults injected: ...");
# every kind must have been injected at least once.
#
# With the layout "log" the exports are log-structured (layout=log) in segments of 1 MiB, with
# the collector rewriting any segment less than 90% live (gc-threshold=90): the model writer's
# random overwrites then run for 14 seconds, past the collector's first pass (10 s after the
# first write), and under each kind of fault the collector must have rewritten blocks (its
# counters in the stats file; a pass cut short by a fault is followed by another run of the
# writer, up to three). The damaged listing is then one of the export's checkpoints
# (the newest root's name), which must be listed again rather than the export opened from an
# older checkpoint, or none.
#
#   tests/scripts/faults.sh [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); FAULTS_KINDS (default every kind);
# FAULTS_PORT (default: two free ports from 9600-9699; the proxy's control port is FAULTS_PORT+1).
set -euo pipefail
layout=${1:-blocks}
TEST_NAME="faults${1:+[$layout]}"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
model=$build/tests/blockmodel
kinds=${FAULTS_KINDS:-"500 503 reset stall truncate corrupt html"}
require_built "$plugin" "$model"
require_s3_env
require_tool nbdkit nbdinfo fio curl python3
require_libnbd_python
case "$layout" in
blocks) layout_params=() writer_seconds=8 ;;
log) layout_params=(layout=log segment-size=1M gc-threshold=90) writer_seconds=14 ;;
*) die "usage: $0 [blocks|log]" ;;
esac
start_faultproxy ${FAULTS_PORT:+-p "$FAULTS_PORT"}
# The count of one fault kind in the proxy's statistics.
injected() { proxy_stat "['faults']['$1']"; }

# serve LABEL PARAMS...: nbdkit through the proxy on $sock; its output goes to
# $work/nbdkit-LABEL.log.
serve() {
  local label=$1
  shift
  start_nbdkit -o "$work/nbdkit-$label.log" "$plugin" "store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" \
    "endpoint=http://127.0.0.1:$proxy_port" "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" \
    "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" size=64M ${layout_params[@]+"${layout_params[@]}"} "$@"
}

uri="nbd+unix:///disk?socket=$sock"
units=2048   # 8 MiB: more than the cache below holds, so reads go to the store
summary=()
total=0
for kind in $kinds; do
  prefix=faults-$$-$kind
  state=$work/$kind.state
  # Stalls cost a request timeout each: fewer of them.
  if [ "$kind" = stall ]; then rate_hi=0.1; rate_lo=0.02; else rate_hi=0.4; rate_lo=0.15; fi

  log "$kind: model writer under faults at rate $rate_hi, retry-timeout=1"
  stats=$work/stats-$kind.json
  serve "$kind" retry-timeout=1 request-timeout=2 cache-size=1M upload-threads=4 "stats-file=$stats"
  # Open the export (metadata, lease) before the faults: opening is not what is tested here, and
  # the export stays open while nbdkit runs.
  nbdinfo --size "$uri" >/dev/null || die "$kind: cannot open the export"
  ctl "set?kinds=$kind&rate=$rate_hi&stall=3&seed=7" >/dev/null || die "cannot set faults"
  for ((run = 1; ; run++)); do
    "$model" write --uri "$uri" --state "$state" --units $units --seconds $writer_seconds --depth 8 \
      --flush-every 3 --keep-going --seed $((10 + run)) | tee -a "$work/model.out" || die "$kind: the model writer saw lost or wrong data"
    [ "$layout" = log ] || break
    # The stats file is written once a second: what the collector had done under the faults.
    sleep 1
    gc=$(export_stat "$stats" disk log_gc_bytes 0)
    log "$kind: the collector rewrote $gc bytes under the faults ($(export_stat "$stats" disk log_gc_segments_freed 0) segments freed)"
    [ "$gc" -eq 0 ] || break
    # A pass that meets a fault it cannot ride out ends, and the next is 10 s later: another run.
    [ $run -lt 3 ] || die "$kind: the collector rewrote nothing in $((run * writer_seconds)) s of faults"
  done
  ctl off >/dev/null
  # A request stalled just before the switch still stalls until the proxy lets it go and then
  # times out; let those end before judging the device (this waits, it asserts nothing on time).
  if [ "$kind" = stall ]; then sleep 5; fi
  n1=$(injected "$kind")
  log "$kind: faults off ($n1 injected so far); the same nbdkit must serve every flushed byte"
  "$model" verify --uri "$uri" --state "$state" --strict | tee -a "$work/model.out" ||
    die "$kind: after the faults stopped, the device lost data or still fails"
  # Requests that failed for good said what the server sent instead of an S3 error document.
  # Only the blocks layout is sure to have some: a log export's segments are stored again until
  # they land, so at this rate none need fail for good (the S3 client's message is the same).
  if [ "$kind" = html ] && [ "$layout" = blocks ]; then
    grep -q 'not an S3 error document' "$work/nbdkit-$kind.log" ||
      die "html: no message quoting the non-XML error body in the nbdkit log"
  elif [ "$kind" = html ] && grep -q ': error: ' "$work/nbdkit-$kind.log"; then
    # Where one did fail for good, it says why all the same.
    grep -q 'not an S3 error document' "$work/nbdkit-$kind.log" ||
      die "html: an error in the nbdkit log without the non-XML error body it met"
  fi
  stop_nbdkit
  log "$kind: restarted; everything flushed must be there"
  serve "$kind-restart" cache=false
  "$model" verify --uri "$uri" --state "$state" --strict | tee -a "$work/model.out" ||
    die "$kind: data lost across a restart"
  stop_nbdkit

  log "$kind: fio verify=crc32c under faults at rate $rate_lo, retry-timeout=30"
  serve "$kind-fio" retry-timeout=30 request-timeout=2 cache=false
  nbdinfo --size "nbd+unix:///fio?socket=$sock" >/dev/null || die "$kind: cannot open the fio export"
  ctl "set?kinds=$kind&rate=$rate_lo&stall=3&seed=9" >/dev/null
  fio --name="faults-$kind" --verify_state_save=0 --ioengine=nbd --uri="nbd+unix:///fio?socket=$sock" --rw=randwrite \
    --bs=4k --size=2M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --randrepeat=0 --output="$work/fio.out" >/dev/null 2>&1 ||
    { cat "$work/fio.out" >&2 || true; die "$kind: fio failed or found a block that does not verify"; }
  grep -q 'err= 0' "$work/fio.out" || { cat "$work/fio.out" >&2; die "$kind: fio reported an error"; }
  ctl off >/dev/null
  stop_nbdkit
  n=$(injected "$kind")
  [ "$n" -gt 0 ] || die "$kind: no fault was injected"
  log "$kind: done, $n faults injected"
  summary+=("$kind=$n")
  total=$((total + n))
done

# damaged_listing_holds WHAT PATH FLIP: the export "listing" (block 0 stored as 'L's) opened with
# one listing under PATH damaged on the way (the text FLIP before a </Key> changed); block 0
# must still read as stored, and a flushed trim of it hold across a restart.
damaged_listing_holds() {
  local what=$1 path=$2 flip=$3 before got
  before=$(injected corrupt)
  ctl "set?kinds=corrupt&rate=1&methods=GET&paths=$path&flip=$flip%3C%2FKey%3E&count=1" >/dev/null
  serve listing
  got=$(nbd_io "$sock" "sys.stdout.write(h.pread(4096, 0)[:1].decode('latin-1'))")
  [ "$(injected corrupt)" = $((before + 1)) ] || die "the $what was not damaged"
  [ "$got" = L ] || die "after a damaged $what block 0 reads '$got', not what was stored"
  nbd_io "$sock" "h.trim(12288, 0); h.flush()"
  ctl off >/dev/null
  stop_nbdkit
  serve listing
  nbd_io "$sock" "assert h.pread(12288, 0) == bytes(12288), 'the trim did not hold'" ||
    die "a flushed trim came back after the restart"
  stop_nbdkit
}
if [ "$layout" = blocks ]; then
  # A block listing damaged on the way (plain HTTP protects nothing of it): block 0's number in
  # the page turned into a letter, so that the page names an object that is no block. The store
  # must fetch the page again, not take block 0 for unstored: that would read it as zeros, and a
  # trim, which skips blocks not stored, would leave it to come back after a restart.
  log "a damaged block listing: fetched again, block 0 still read and trimmed"
  prefix=faults-$$-listing
  serve listing
  nbd_io "$sock" "h.pwrite(b'L' * 12288, 0); h.flush()"
  stop_nbdkit
  damaged_listing_holds "block listing" "blocks%252F" 0
else
  # A listing of the export's checkpoints damaged on the way: the newest root's name, a zero of
  # its seq turned into a letter, so that it names no checkpoint. The store must list them
  # again: opened from an older checkpoint (or none) it would replay segments the newer one let
  # go, read block 0 as zeros, and its writer would delete the live segments after them.
  log "a damaged listing of checkpoints: listed again, block 0 still read and trimmed"
  prefix=faults-$$-listing
  serve listing
  # Enough flushes for the writer to store a checkpoint of its own (every 64 segments).
  nbd_io "$sock" "
for i in range(70):
    h.pwrite(b'KLM'[i % 3:i % 3 + 1] * 12288, 0)
    h.flush()
h.pwrite(b'L' * 12288, 0)
h.flush()"
  root=
  for ((i = 0; i < 40; i++)); do
    root=$(s3_list "$prefix/exports/disk/checkpoint/" | awk '{ print $2 }' | grep -E '/[0-9a-f]{16}$' | tail -n 1) || true
    [ -z "$root" ] || break
    sleep 0.5
  done
  [ -n "$root" ] || die "the writer stored no checkpoint after 71 flushes"
  stop_nbdkit
  # The flip text starts at the root's 13th digit, a zero below 4096 segments.
  tail4=${root: -4}
  [ "${tail4:0:1}" = 0 ] || die "the checkpoint's seq is too large for this test: $root"
  damaged_listing_holds "listing of checkpoints" "checkpoint%252F" "$tail4"
fi
reqs=$(ctl stats | python3 -c "import json,sys; print(json.load(sys.stdin)['requests'])")
# Over plain HTTP every request's signature covers a SHA-256 of its body, which the server checks.
unhashed=$(ctl stats | python3 -c "import json,sys; p=json.load(sys.stdin)['payload']; print(p['unsigned'] + p['other'])")
[ "$unhashed" -eq 0 ] || die "over HTTP, $unhashed of $reqs requests did not carry a SHA-256 of their body"
# The model's own counts, summed over every run above (each run already failed the script if any
# was not 0).
lost=$(sed -n 's/.* \([0-9]*\) lost, \([0-9]*\) wrong$/\1/p' "$work/model.out" | awk '{ s += $1 } END { print s + 0 }')
wrong=$(sed -n 's/.* \([0-9]*\) lost, \([0-9]*\) wrong$/\2/p' "$work/model.out" | awk '{ s += $1 } END { print s + 0 }')
checked=$(sed -n 's/.* \([0-9]*\) bytes checked.*/\1/p' "$work/model.out" | awk '{ s += $1 } END { print s + 0 }')
echo "faults injected: ${summary[*]} (total $total in $reqs requests)"
echo "model: $checked bytes checked, $((lost * 4096)) bytes lost, $wrong wrong reads"
[ "$lost" -eq 0 ] && [ "$wrong" -eq 0 ] || die "lost or wrong data"
