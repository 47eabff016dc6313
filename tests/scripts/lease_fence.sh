#!/bin/bash
# A server cut off from S3 loses its export's lease, and nothing it still had to store may land
# once another server has taken the export over.
#
# Part 1. Server A reaches S3 through tests/faultproxy/faultproxy.py, which stalls every request: A's
# client writes block 0 (acknowledged into A's cache), A can neither upload it nor renew its
# lease (lease-timeout=6), and the lease lapses. Server B, straight to S3, takes the export over
# without force=, and its client writes block 0 again and flushes. Then the stalls stop: A's
# retried upload must not overwrite B's flushed block (its lease tells it so, before every
# attempt), A learns that the lease was taken over, and A stops. After B restarts, block 0 is
# B's.
#
# Part 2. Renewals that land but whose answers are lost keep the lease: server C, through the
# proxy, renews its lease; of the next two PUTs of the lease object that the S3 server applies
# (200), the proxy resets the connection instead of passing the answer on. C's retry then finds
# the lease changed; it must see its own token there and renew on, not give the export up. C's
# clients write and flush throughout without an error, a server straight to S3 is refused the
# export, and C still holds it two lease spans later.
#
#   tests/scripts/lease_fence.sh    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
plugin=$build/nbdkit-s3block-plugin.so

log() { echo "lease_fence: $(date +%H:%M:%S) $*"; }
die() { echo "lease_fence: FAILED: $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
[ -f "$plugin" ] || die "no $plugin (build first)"
require_s3_env
for tool in nbdkit curl python3; do command -v $tool >/dev/null || die "$tool is not installed"; done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || die "python3-libnbd is not installed"
port=$(free_ports 2)
ctl_port=$((port + 1))

work=$(mktemp -d /tmp/s3block-lease.XXXXXX)
prefix=lease-$$-$RANDOM
pid_a= pid_b= pid_c= pid_d= proxy_pid=
cleanup() {
  local rc=$?
  for p in $pid_a $pid_b $pid_c $pid_d $proxy_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  show_logs_on_failure "$rc" "$work"/nbdkit-*.log "$work/proxy.log"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ctl() { curl -sf --max-time 10 "http://127.0.0.1:$ctl_port/$1"; }
python3 "$repo/tests/faultproxy/faultproxy.py" --listen "$port" --control "$ctl_port" \
  --upstream "$S3BLOCK_TEST_S3_ENDPOINT" --ready-file "$work/proxy.ready" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
wait_for_file "$work/proxy.ready" 20 || die "the proxy did not start"

start() {  # NAME ENDPOINT PARAMS...: starts nbdkit on $work/NAME.sock, sets pid_NAME
  local name=$1 endpoint=$2
  shift 2
  rm -f "$work/$name.pid" "$work/$name.sock"
  nbdkit -f -U "$work/$name.sock" -P "$work/$name.pid" "$plugin" \
    "store=s3://$S3BLOCK_TEST_S3_BUCKET/${store_prefix:-$prefix}" "endpoint=$endpoint" \
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" size=16M "$@" \
    </dev/null >>"$work/nbdkit-$name.log" 2>&1 &
  printf -v "pid_$name" %s $!
  wait_for_file "$work/$name.pid" 60 || die "nbdkit $name did not start"
}

log "server A through the proxy (lease-timeout=6); every request stalls from now on"
start a "http://127.0.0.1:$port" lease-timeout=6 request-timeout=2 retry-timeout=60
nbd_io "$work/a.sock" "h.pwrite(b'A' * 4096, 0); h.flush()"   # block 0 stored: A's data is on S3
ctl "set?kinds=stall&rate=1&stall=1" >/dev/null
# Acknowledged into A's cache; the flush when the client leaves keeps retrying the upload (for
# retry-timeout=60) until the lease stops it.
nbd_io "$work/a.sock" "h.pwrite(b'a' * 4096, 0)" || true

log "waiting for A's lease to lapse, then server B takes the export over without force="
for i in $(seq 1 40); do
  sleep 0.5
  rc=0
  start b "$S3BLOCK_TEST_S3_ENDPOINT" 2>/dev/null || rc=$?
  # The export is refused while A's lease lasts: the client sees no export.
  if nbd_io "$work/b.sock" "pass" 2>/dev/null; then break; fi
  kill "$pid_b" 2>/dev/null || true; wait "$pid_b" 2>/dev/null || true; pid_b=
  [ "$i" -lt 40 ] || die "B could not take the export over in 20 s"
done
grep -q 'is in use by' "$work/nbdkit-b.log" || die "B was never refused while A's lease lasted"
nbd_io "$work/b.sock" "h.pwrite(b'B' * 4096, 0); h.flush()"
log "B wrote and flushed block 0; the stalls stop"
ctl off >/dev/null
# A client of A's again: A starts storing what its cache still holds.
nbd_io "$work/a.sock" "pass" 2>/dev/null || true
sleep 5   # an attempt of A's that was not stopped lands within seconds (back-off at most 2 s)
got=$(nbd_io "$work/b.sock" "sys.stdout.write(h.pread(4096, 0)[:1].decode())")
[ "$got" = B ] || die "block 0 read through B is '$got' after A came back: B's flushed write was overwritten"
kill -TERM "$pid_a"
for _ in $(seq 1 300); do kill -0 "$pid_a" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid_a" 2>/dev/null && die "A still runs 30 s after SIGTERM"
wait "$pid_a" || true
pid_a=
stop_b() { kill -TERM "$pid_b"; wait "$pid_b" || die "B exited with status $? on SIGTERM"; pid_b=; }
stop_b
start b "$S3BLOCK_TEST_S3_ENDPOINT"
got=$(nbd_io "$work/b.sock" "sys.stdout.write(h.pread(4096, 0)[:1].decode())")
stop_b
[ "$got" = B ] || die "after B's restart block 0 is '$got', not B's flushed write"
grep -qE 'lease .*(taken over|renewed in time)' "$work/nbdkit-a.log" ||
  die "A's log does not say why it stored nothing"
log "part 1 passed: A's late upload did not overwrite B's block"

store_prefix=$prefix-lost
log "server C through the proxy (lease-timeout=6); the answers to two renewals that landed are lost"
start c "http://127.0.0.1:$port" lease-timeout=6 request-timeout=2 retry-timeout=60
nbd_io "$work/c.sock" "h.pwrite(b'c' * 4096, 0); h.flush()"
# Past the first renewal, which may store the very document C acquired (its expiry rounded to the
# same second): a retry of that one matches the stored ETag, and tests nothing.
sleep 4
ctl "set?kinds=reset&rate=1&methods=PUT&paths=/exports/disk/lease&status=200&count=2" >/dev/null
lost() { ctl stats | python3 -c "import json,sys; print(json.load(sys.stdin)['faults']['reset'])"; }
# Renewals come every lease-timeout/4; write and flush a block a second meanwhile, and after.
for i in $(seq 1 15); do
  nbd_io "$work/c.sock" "h.pwrite(bytes([$i]) * 4096, $i * 4096); h.flush()" ||
    die "C's client could not write and flush block $i (lease answers lost: $(lost))"
  sleep 1
done
[ "$(lost)" = 2 ] || die "the proxy lost $(lost) answers to lease PUTs, not 2"
rc=0
start d "$S3BLOCK_TEST_S3_ENDPOINT" 2>/dev/null || rc=$?
nbd_io "$work/d.sock" "pass" 2>/dev/null && die "server D got the export that C holds"
kill "$pid_d" 2>/dev/null || true; wait "$pid_d" 2>/dev/null || true; pid_d=
grep -q 'is in use by' "$work/nbdkit-d.log" || die "D was not told that the export is in use"
sleep 12   # two more lease spans: C renews on as before
nbd_io "$work/c.sock" "h.pwrite(b'C' * 4096, 0); h.flush()" || die "C lost the export after the lost answers"
! grep -qE 'lease .*(taken over|renewed in time)' "$work/nbdkit-c.log" ||
  die "C's log says it lost its lease"
kill -TERM "$pid_c"; wait "$pid_c" || die "C exited with status $? on SIGTERM"; pid_c=
start c "$S3BLOCK_TEST_S3_ENDPOINT"
nbd_io "$work/c.sock" "
want = [b'C' * 4096] + [bytes([i]) * 4096 for i in range(1, 16)]
got = [h.pread(4096, i * 4096) for i in range(16)]
bad = [i for i in range(16) if got[i] != want[i]]
assert not bad, 'blocks %s differ after the restart' % bad" || die "C's writes did not survive its restart"
kill -TERM "$pid_c"; wait "$pid_c" || die "C exited with status $? on SIGTERM"; pid_c=
log "part 2 passed: two renewals' answers lost, the lease kept, every write kept"
log "PASS"
