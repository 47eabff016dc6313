#!/bin/bash
# Log-structured exports (layout=log) through nbdkit and libnbd, on either store: what keeps one
# writer, what a reader sees, and what the collector leaves.
#
#  a. A second server on an export the first serves is refused (the lease), naming the holder.
#  b. A stale writer: an object planted at the key of the writer's next segment (a copy of an
#     older segment, as a writer that lost the export might have stored) makes the next flush
#     fail (EIO or EBUSY) instead of overwriting it; after a restart everything flushed before
#     reads back, the planted object's older data is not served, and the export takes writes.
#  c. A read-only server (nbdkit -r) started after a flush serves exactly that flush's data
#     while the writer goes on writing (new blocks, and newer versions of some of that flush's)
#     and flushing; one started later serves the later flush.
#  d. An export closed as idle (idle-timeout=1), then written by another server, is read again
#     from the store when a client opens it again on the first server, which then writes it.
#  e. A clean stop of nbdkit, and an idle close (on S3 while the lease is still held), each store
#     a checkpoint that covers the newest segment.
#  f. The collector: a 64 MiB export (segment-size=1M) filled, then random 4 KiB overwrites of
#     twice its size with flushes; the stats file is polled until the segments stored are at
#     most twice the live bytes (a timeout is a failure); then every block reads back as last
#     written (each block's content names its number and version; the last version of each is
#     kept in a model), the objects stored (every file of the export, or every S3 object under
#     it) take at most twice the live data, and both hold again after a restart.
#
#   tests/scripts/log_layout.sh local
#   tests/scripts/log_layout.sh s3    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout); LOG_GC_TIMEOUT (default 300:
# seconds the collector has to bring the space stored within twice the live data).
set -euo pipefail
mode=${1:-local}
TEST_NAME="log_layout[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_tool nbdkit nbdinfo curl
require_libnbd_python
use_store "$mode" loglayout
gc_timeout=${LOG_GC_TIMEOUT:-300}

# serve NAME PARAMS...: nbdkit NAME on $work/NAME.sock, creating log exports.
serve() {
  local name=$1
  shift
  start_nbdkit -n "$name" "$plugin" "${store_params[@]}" layout=log "$@"
}
# io SOCKET EXPORT python-statements...: as nbd_io, on the export EXPORT.
io() {
  local s=$1 e=$2
  shift 2
  $py -c "import nbd, struct, sys, errno
h = nbd.NBD()
h.connect_uri('nbd+unix:///$e?socket=$s')
# Block b's content at version v: the two numbers, over and over (v = 0: never written).
blk = lambda b, v: struct.pack('<QQ', b, v) * 256 if v else bytes(4096)
$*
h.shutdown()"
}
# segments EXPORT: the export's segment seqs (16 hex digits), in order.
segments() { objects "$1" | sed -n "s|^[0-9]* exports/$1/log/\([0-9a-f]\{16\}\)$|\1|p" | sort; }
# copy_object KEY FILE / plant_object FILE KEY: an object out of the store, and one into it that
# fails if the key is taken (the store's own rule for a segment).
copy_object() {
  if [ "$mode" = local ]; then cp "$store/$1" "$2"; else s3_get "${store#s3://$S3BLOCK_TEST_S3_BUCKET/}/$1" "$2"; fi
}
plant_object() {
  if [ "$mode" = local ]; then
    (set -o noclobber; cat "$1" >"$store/$2") 2>/dev/null
  else
    s3_put_if_absent "$1" "${store#s3://$S3BLOCK_TEST_S3_BUCKET/}/$2"
  fi
}
# --- a. A second server is refused ---
log "a. a second server on the export the first serves is refused"
serve w size=16M
io "$work/w.sock" disk "
for b in range(64): h.pwrite(blk(b, 1), b * 4096)
h.flush()"
# The segment holding version 1 of blocks 0..63, kept aside for b. before the collector (which
# packs small segments) may take it away.
old_seq=$(segments disk | tail -n 1)
[ -n "$old_seq" ] || die "a flushed log export has no segment: $(objects disk)"
copy_object "exports/disk/log/$old_seq" "$work/old-segment"
start_nbdkit -n second "$plugin" "${store_params[@]}" layout=log size=16M
if io "$work/second.sock" disk "pass" 2>/dev/null; then
  die "a second server got the export the first serves"
fi
stop_nbdkit -n second
grep -q 'is in use by' "$work/second.log" || die "the second server was refused, but not for the first's lease"

# --- b. A stale writer's segment is refused by the condition ---
log "b. an object at the key of the next segment: the writer's flush must fail, not overwrite it"
io "$work/w.sock" disk "
for b in range(64): h.pwrite(blk(b, 2), b * 4096)
h.flush()"
# The next key is taken before the writer stores its next segment; should the writer (its
# collector) take it first, the next one is tried.
planted=
for ((i = 0; i < 20; i++)); do
  last=$(segments disk | tail -n 1)
  next=$(printf '%016x' $((16#$last + 1)))
  if plant_object "$work/old-segment" "exports/disk/log/$next"; then planted=$next; break; fi
done
[ -n "$planted" ] || die "could not plant an object at the key of the next segment"
log "planted a copy of segment $old_seq (blocks 0..63 at version 1) as segment $planted"
result=$(io "$work/w.sock" disk "
for b in range(64, 96): h.pwrite(blk(b, 3), b * 4096)
try:
    h.flush()
    print('flushed')
except nbd.Error as e:
    print(errno.errorcode.get(e.errno, e.errno))")
case "$result" in
EIO | EBUSY) log "the flush failed with $result" ;;
*) die "a flush over another writer's segment did not fail with EIO or EBUSY: $result" ;;
esac
grep -q 'another writer stored segment' "$work/w.log" || die "the writer's log does not say another writer stored its segment"
# The writer stays stopped from here: whatever it still holds is not the export's.
stop_nbdkit -n w -x -t 60
serve w2 size=16M
io "$work/w2.sock" disk "
for b in range(64):
    got = h.pread(4096, b * 4096)
    assert got == blk(b, 2), 'block %d reads %r, not version 2 (flushed)' % (b, got[:16])
for b in range(64, 96):
    got = h.pread(4096, b * 4096)
    assert got in (blk(b, 3), bytes(4096)), 'block %d reads %r' % (b, got[:16])
for b in range(96, 128): h.pwrite(blk(b, 4), b * 4096)
h.flush()" || die "after the restart, the data flushed before the planted segment is not what was written"
stop_nbdkit -n w2
serve w size=16M
io "$work/w.sock" disk "
for b in range(64): assert h.pread(4096, b * 4096) == blk(b, 2), 'block %d' % b
for b in range(96, 128): assert h.pread(4096, b * 4096) == blk(b, 4), 'block %d' % b" ||
  die "after a second restart, flushed data is not what was written"

# --- c. A read-only server's view ---
log "c. a read-only server started after a flush sees exactly that flush while the writer writes"
# The writer without a cache, so that the flush below is one segment of 512 blocks (2 MiB, too
# large for the collector to pack with small ones).
stop_nbdkit -n w
serve w cache=false
io "$work/w.sock" disk "
h.pwrite(b''.join(blk(b, 10) for b in range(512)), 0)
h.flush()"
# No cache: every read of the read-only server goes to the segments its map names.
start_nbdkit -n ro -r "$plugin" "${store_params[@]}" cache=false
io "$work/ro.sock" disk "
for b in range(768): assert h.pread(4096, b * 4096) == blk(b, 10 if b < 512 else 0), 'block %d' % b" ||
  die "the read-only server does not serve the flush before it started"
# The writer goes on: new versions of blocks 0..127 (a quarter of that flush's segment), new
# blocks 512..767 and trims of some, a flush after each round; meanwhile a reader of the
# read-only server checks its whole view over and over: never a newer block, never a mix. (Not
# all of the flush's blocks: a read-only server's map names the segments of the flush it opened
# at, and once none of a segment's blocks is live the writer deletes it at its next checkpoint,
# after which the read-only server fails those reads with EIO.)
io "$work/w.sock" disk "
import random, time
r = random.Random(5)
end = time.time() + 5
v = 11
while time.time() < end:
    for b in r.sample(range(128), 16) + r.sample(range(512, 768), 16): h.pwrite(blk(b, v), b * 4096)
    if v % 3 == 0: h.trim(8192, 512 * 4096 + r.randrange(128) * 8192)
    h.flush()
    v += 1
h.pwrite(b''.join(blk(b, 99) for b in range(768)), 0)
h.flush()" &
writer=$!
end_at_exit "$writer"
io "$work/ro.sock" disk "
import time
end, rounds = time.time() + 4, 0
while time.time() < end:
    data = h.pread(768 * 4096, 0)
    for b in range(768):
        got = data[b * 4096:(b + 1) * 4096]
        assert got == blk(b, 10 if b < 512 else 0), 'round %d: block %d reads %r, not the flush it opened' % (rounds, b, got[:16])
    rounds += 1
print('read-only view checked %d times' % rounds)" || die "the read-only server's view changed under the writer"
wait "$writer" || die "the writer failed"
stop_nbdkit -n ro
start_nbdkit -n ro -r "$plugin" "${store_params[@]}" cache=false
io "$work/ro.sock" disk "
for b in range(768): assert h.pread(4096, b * 4096) == blk(b, 99), 'block %d' % b" ||
  die "a read-only server started after the last flush does not serve it"
stop_nbdkit -n ro
stop_nbdkit -n w

# --- d. An export closed as idle is read again from the store when it is opened again ---
log "d. an export closed as idle, then written by another server, is read afresh when opened again"
serve a idle-timeout=1 size=16M
io "$work/a.sock" idle "h.pwrite(blk(0, 1), 0); h.flush()"
# Server b gets the export once a has closed it (and given up its lease).
start_nbdkit -n b "$plugin" "${store_params[@]}"
for ((i = 0; ; i++)); do
  io "$work/b.sock" idle "h.pwrite(blk(0, 2), 0); h.flush()" 2>/dev/null && break
  [ $i -lt 60 ] || die "server a did not close the idle export within 30 s"
  sleep 0.5
done
stop_nbdkit -n b
io "$work/a.sock" idle "
got = h.pread(4096, 0)
assert got == blk(0, 2), 'block 0 reads %r, not what server b flushed' % got[:16]
h.pwrite(blk(1, 3), 4096)
h.flush()" || die "the export opened again serves what this server saw before, not the store"
stop_nbdkit -n a
start_nbdkit -n b "$plugin" "${store_params[@]}"
io "$work/b.sock" idle "
assert h.pread(4096, 0) == blk(0, 2) and h.pread(4096, 4096) == blk(1, 3)" ||
  die "after both servers stopped, the export does not hold what each flushed last"
stop_nbdkit -n b

# --- e. A clean stop and an idle close leave a checkpoint of every segment ---
log "e. a clean stop and an idle close each store a checkpoint that covers the newest segment"
# covered EXPORT: the newest checkpoint covers the newest segment, so that the next open replays
# nothing. Both come before the checkpoint a writer stores once it has been quiet a few seconds.
covered() {
  local seg ckpt
  seg=$(segments "$1" | tail -n 1)
  ckpt=$(objects "$1" | sed -n "s|^[0-9]* exports/$1/checkpoint/\([0-9a-f]\{16\}\)$|\1|p" | sort | tail -n 1)
  [ -n "$seg" ] && [ -n "$ckpt" ] && [ $((16#$ckpt)) -ge $((16#$seg)) ]
}
serve f size=16M
io "$work/f.sock" stopped "
for b in range(64): h.pwrite(blk(b, 1), b * 4096)
h.flush()"
stop_nbdkit -n f
covered stopped || die "after a clean stop, no checkpoint covers the newest segment: $(objects stopped)"
# The idle close: on S3 the checkpoint is fenced by the lease, which must still be held.
start_nbdkit -n f -v "$plugin" "${store_params[@]}" layout=log size=16M idle-timeout=1
io "$work/f.sock" idled "
for b in range(64): h.pwrite(blk(b, 1), b * 4096)
h.flush()"
for ((i = 0; ; i++)); do
  grep -q "closed idle export 'idled'\$" "$work/f.log" && break
  [ $i -lt 120 ] || die "the idle export was not closed within 60 s"
  sleep 0.5
done
covered idled || die "after an idle close, no checkpoint covers the newest segment: $(objects idled)"
stop_nbdkit -n f

# --- f. The collector under random overwrites ---
log "f. the collector: a 64 MiB export filled, then 128 MiB of random 4 KiB overwrites"
stats=$work/stats.json
model=$work/gc.model
blocks=16384
# A cache smaller than the export: the reads below reach the segments.
serve gc size=64M segment-size=1M cache-size=8M "stats-file=$stats"
io "$work/gc.sock" gc "
import array, random
n = $blocks
ver = array.array('Q', [1]) * n
for b0 in range(0, n, 256):
    h.pwrite(b''.join(blk(b, 1) for b in range(b0, b0 + 256)), b0 * 4096)
h.flush()
r = random.Random(17)
for i in range(2 * n):
    b = r.randrange(n)
    ver[b] += 1
    h.pwrite(blk(b, ver[b]), b * 4096)
    if i % 512 == 511: h.flush()
h.flush()
ver.tofile(open('$model', 'wb'))"
log "overwrites done; waiting for the collector (at most ${gc_timeout}s)"
# check_blocks SOCKET: every block as the model says it was last written.
check_blocks() {
  io "$1" gc "
import array
ver = array.array('Q')
ver.fromfile(open('$model', 'rb'), $blocks)
for b0 in range(0, $blocks, 256):
    data = h.pread(256 * 4096, b0 * 4096)
    for i in range(256):
        b = b0 + i
        got = data[i * 4096:(i + 1) * 4096]
        assert got == blk(b, ver[b]), 'block %d reads %r, not version %d' % (b, got[:16], ver[b])"
}
# stored: the bytes of every object of the export.
stored() { objects gc | awk '{ s += $1 } END { print s + 0 }'; }
live=$((blocks * 4096))
deadline=$(($(date +%s) + gc_timeout))
while :; do
  seg=$(export_stat "$stats" gc log_segment_bytes)
  lb=$(export_stat "$stats" gc log_live_bytes)
  if [ -n "$seg" ] && [ -n "$lb" ] && [ "$seg" -le $((2 * lb)) ] && [ "$(stored)" -le $((2 * live)) ]; then break; fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    die "after ${gc_timeout}s the collector has not brought the space within twice the live data: segments ${seg:-?} bytes, live ${lb:-?} bytes, objects $(stored) bytes for $live bytes of data"
  fi
  sleep 2
done
gc_bytes=$(export_stat "$stats" gc log_gc_bytes)
freed=$(export_stat "$stats" gc log_gc_segments_freed)
[ "${freed:-0}" -gt 0 ] && [ "${gc_bytes:-0}" -gt 0 ] || die "the space came down, but the collector freed nothing (gc bytes ${gc_bytes:-?}, segments freed ${freed:-?})"
log "collector: $gc_bytes bytes rewritten, $freed segments freed; segments $seg bytes, live $lb bytes, $(stored) bytes stored for $live bytes of data"
check_blocks "$work/gc.sock" || die "after the collector, a block does not read back as last written"
stop_nbdkit -n gc
[ "$(stored)" -le $((2 * live)) ] || die "after a clean stop, $(stored) bytes are stored for $live bytes of data"
log "restarted: every block again"
serve gc segment-size=1M cache-size=8M
check_blocks "$work/gc.sock" || die "after a restart, a block does not read back as last written"
stop_nbdkit -n gc
total=$(stored)
[ "$total" -le $((2 * live)) ] || die "after the restart, $total bytes are stored for $live bytes of data"
log "PASS: $total bytes stored for $live bytes of live data ($(objects gc | wc -l) objects)"
