#!/bin/bash
# A read-only server (nbdkit -r, cache=false) beside the server writing a local store never reads
# a block half old, half new: the writer alternates two patterns of one 64K block with FUA for
# about 10 seconds while the reader reads it in a loop; no torn read, and both patterns seen.
#
#   tests/scripts/local_hostile_torn_read.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout), HOSTILE_SECONDS (default 10, how
# long the reader reads).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/local_hostile_lib.sh"
seconds=${HOSTILE_SECONDS:-10}

log "a read-only server beside the writer never reads a block half written (${seconds}s)"
serve -n w block-size=64K default-export=torn
serve -n r -r cache=false default-export=torn
$py - "$work/w.sock" "$work/r.sock" "$seconds" <<'PY' || die "the read-only server read a torn block (or saw one pattern only)"
import os, sys, time
import nbd
wsock, rsock, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
B = 65536
A, Bp = b"A" * B, b"B" * B
w = nbd.NBD()
w.connect_unix(wsock)
w.pwrite(A, 0, nbd.CMD_FLAG_FUA)
pid = os.fork()
if pid == 0:  # the writer: A and B in turn, each with FUA, until the reader is done
    try:
        i = 0
        while True:
            w.pwrite(Bp if i % 2 == 0 else A, 0, nbd.CMD_FLAG_FUA)
            i += 1
    finally:
        os._exit(0)
r = nbd.NBD()
r.connect_unix(rsock)
reads = torn = seen_a = seen_b = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    got = r.pread(B, 0)
    reads += 1
    if got == A:
        seen_a += 1
    elif got == Bp:
        seen_b += 1
    else:
        torn += 1
        print(f"  torn read {reads}: {got.count(b'A')} bytes A, {got.count(b'B')} bytes B")
os.kill(pid, 9)
os.waitpid(pid, 0)
print(f"  {reads} reads: {seen_a} A, {seen_b} B, {torn} torn")
if torn or not seen_a or not seen_b:
    sys.exit(1)
PY
term -n r
term -n w
log "passed"
