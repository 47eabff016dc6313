#!/bin/bash
# Renewals of a lease that land but whose answers are lost keep the lease: server C reaches S3
# through tests/faultproxy/faultproxy.py and renews its lease (lease-timeout=6); of the next two
# PUTs of the lease object that the S3 server applies (200), the proxy resets the connection
# instead of passing the answer on. C's retry then finds the lease changed; it must see its own
# token there and renew on, not give the export up. C's clients write and flush throughout
# without an error, a server straight to S3 is refused the export, C still holds it two lease
# spans later, and every write is there after C restarts.
#
#   tests/scripts/lease_lost_answers.sh   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
prefix=lease-$$-$RANDOM-lost
. "$(dirname "${BASH_SOURCE[0]}")/lease_lib.sh"

log "server C through the proxy (lease-timeout=6); the answers to two renewals that landed are lost"
serve c "http://127.0.0.1:$proxy_port" lease-timeout=6 request-timeout=2 retry-timeout=60
nbd_io "$work/c.sock" "h.pwrite(b'c' * 4096, 0); h.flush()"
# Past the first renewal, which may store the very document C acquired (its expiry rounded to the
# same second): a retry of that one matches the stored ETag, and tests nothing.
sleep 4
ctl "set?kinds=reset&rate=1&methods=PUT&paths=/exports/disk/lease&status=200&count=2" >/dev/null
lost() { proxy_stat "['faults']['reset']"; }
# Renewals come every lease-timeout/4; write and flush a block a second meanwhile, and after.
for i in $(seq 1 15); do
  nbd_io "$work/c.sock" "h.pwrite(bytes([$i]) * 4096, $i * 4096); h.flush()" ||
    die "C's client could not write and flush block $i (lease answers lost: $(lost))"
  sleep 1
done
[ "$(lost)" = 2 ] || die "the proxy lost $(lost) answers to lease PUTs, not 2"
serve d "$S3BLOCK_TEST_S3_ENDPOINT"
nbd_io "$work/d.sock" "pass" 2>/dev/null && die "server D got the export that C holds"
stop_nbdkit -n d -x
grep -q 'is in use by' "$work/d.log" || die "D was not told that the export is in use"
sleep 12   # two more lease spans: C renews on as before
nbd_io "$work/c.sock" "h.pwrite(b'C' * 4096, 0); h.flush()" || die "C lost the export after the lost answers"
! grep -qE 'lease .*(taken over|renewed in time)' "$work/c.log" ||
  die "C's log says it lost its lease"
stop_nbdkit -n c
serve c "$S3BLOCK_TEST_S3_ENDPOINT"
nbd_io "$work/c.sock" "
want = [b'C' * 4096] + [bytes([i]) * 4096 for i in range(1, 16)]
got = [h.pread(4096, i * 4096) for i in range(16)]
bad = [i for i in range(16) if got[i] != want[i]]
assert not bad, 'blocks %s differ after the restart' % bad" || die "C's writes did not survive its restart"
stop_nbdkit -n c
log "PASS: two renewals' answers lost, the lease kept, every write kept"
