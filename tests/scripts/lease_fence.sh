#!/bin/bash
# A server cut off from S3 loses its export's lease, and nothing it still had to store may land
# once another server has taken the export over.
#
# Server A reaches S3 through tests/faultproxy/faultproxy.py, which stalls every request: A's
# client writes block 0 (acknowledged into A's cache), A can neither upload it nor renew its
# lease (lease-timeout=6), and the lease lapses. Server B, straight to S3, takes the export over
# without force=, and its client writes block 0 again and flushes. Then the stalls stop: A's
# retried upload must not overwrite B's flushed block (its lease tells it so, before every
# attempt), A learns that the lease was taken over, and A stops. After B restarts, block 0 is
# B's. (tests/scripts/lease_lost_answers.sh: renewals whose answers are lost keep the lease.)
#
#   tests/scripts/lease_fence.sh    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
prefix=lease-$$-$RANDOM
. "$(dirname "${BASH_SOURCE[0]}")/lease_lib.sh"

log "server A through the proxy (lease-timeout=6); every request stalls from now on"
serve a "http://127.0.0.1:$proxy_port" lease-timeout=6 request-timeout=2 retry-timeout=60
nbd_io "$work/a.sock" "h.pwrite(b'A' * 4096, 0); h.flush()"   # block 0 stored: A's data is on S3
ctl "set?kinds=stall&rate=1&stall=1" >/dev/null
# Acknowledged into A's cache; the flush when the client leaves keeps retrying the upload (for
# retry-timeout=60) until the lease stops it.
nbd_io "$work/a.sock" "h.pwrite(b'a' * 4096, 0)" || true

log "waiting for A's lease to lapse, then server B takes the export over without force="
for i in $(seq 1 40); do
  sleep 0.5
  serve b "$S3BLOCK_TEST_S3_ENDPOINT"
  # The export is refused while A's lease lasts: the client sees no export.
  if nbd_io "$work/b.sock" "pass" 2>/dev/null; then break; fi
  stop_nbdkit -n b -x
  [ "$i" -lt 40 ] || die "B could not take the export over in 20 s"
done
grep -q 'is in use by' "$work/b.log" || die "B was never refused while A's lease lasted"
nbd_io "$work/b.sock" "h.pwrite(b'B' * 4096, 0); h.flush()"
log "B wrote and flushed block 0; the stalls stop"
ctl off >/dev/null
# A client of A's again: A starts storing what its cache still holds.
nbd_io "$work/a.sock" "pass" 2>/dev/null || true
sleep 5   # an attempt of A's that was not stopped lands within seconds (back-off at most 2 s)
got=$(nbd_io "$work/b.sock" "sys.stdout.write(h.pread(4096, 0)[:1].decode())")
[ "$got" = B ] || die "block 0 read through B is '$got' after A came back: B's flushed write was overwritten"
stop_nbdkit -n a -t 30 -x
stop_nbdkit -n b
serve b "$S3BLOCK_TEST_S3_ENDPOINT"
got=$(nbd_io "$work/b.sock" "sys.stdout.write(h.pread(4096, 0)[:1].decode())")
stop_nbdkit -n b
[ "$got" = B ] || die "after B's restart block 0 is '$got', not B's flushed write"
grep -qE 'lease .*(taken over|renewed in time)' "$work/a.log" ||
  die "A's log does not say why it stored nothing"
log "PASS: A's late upload did not overwrite B's block"
