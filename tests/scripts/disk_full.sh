#!/bin/bash
# A full disk under the local store: the store is a 4 MiB tmpfs and a client writes 9 MiB.
#
#  1. A flush that cannot store every block fails with ENOSPC (the client hears of it), and the
#     data written stays readable, byte for byte, from the cache.
#  2. Once there is room again, the next flush stores it: after a restart every byte is there.
#  3. With the disk nearly full again, the client writes 9 MiB more after those (new blocks: a
#     block rewritten in place needs no room) and disconnects, its flush failing, and the server
#     is stopped: it exits (it does not wait for room forever). After a restart the 9 MiB flushed
#     before are intact, each new block reads as the new data or as zeros (not stored), never
#     anything else, every block file has the full block size, and no temporary file is left.
#
#   tests/scripts/disk_full.sh      (as root: it mounts a tmpfs)
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_root "it mounts a tmpfs as the store"
require_tool nbdkit nbdcopy mount umount mountpoint
require_libnbd_python

store=$work/store
mkdir "$store"
on_exit unmount "$store"
mount -t tmpfs -o size=4M tmpfs "$store"

serve() { start_nbdkit "$plugin" "store=$store" size=64M cache-size=32M; }

# Data: A (1 MiB, flushed while there is room), then B over it and C after it (9 MiB in all, more
# than the disk holds), then D after those.
for part in A:1 B:1 C:8 D:9; do head -c "${part#*:}M" /dev/urandom >"$work/${part%:*}"; done
cat "$work/B" "$work/C" >"$work/BC"

log "a flush with the disk full fails with ENOSPC; the data stays readable; with room, it is stored"
serve
$py - "$sock" "$work" "$store" <<'PY'
import errno, subprocess, sys
import nbd
sock, work, store = sys.argv[1:4]
read = lambda name: open(f"{work}/{name}", "rb").read()
A, B, C, BC = read("A"), read("B"), read("C"), read("BC")
MiB = 1 << 20
h = nbd.NBD()
h.connect_unix(sock)
def put(data, off):
    for i in range(0, len(data), MiB):
        h.pwrite(data[i:i + MiB], off + i)
def get(n):
    return b"".join(h.pread(MiB, i) for i in range(0, n, MiB))
put(A, 0)
h.flush()
put(B, 0)
put(C, MiB)
try:
    h.flush()
    sys.exit("a flush of 9 MiB onto a 4 MiB disk succeeded")
except nbd.Error as e:
    if e.errnum != errno.ENOSPC:
        sys.exit(f"the flush failed with {e}, not ENOSPC")
if get(len(BC)) != BC:
    sys.exit("after the failed flush, the data read back is not what was written")
subprocess.run(["mount", "-o", "remount,size=64M", store], check=True)
h.flush()
if get(len(BC)) != BC:
    sys.exit("after the flush that succeeded, the data read back is not what was written")
h.shutdown()
PY
stop_nbdkit
grep -q 'No space left on device' "$work/nbdkit.log" || die "the log does not say the disk was full"

serve
nbdcopy "nbd+unix:///?socket=$sock" "$work/read"
stop_nbdkit
cmp -n $((9 << 20)) "$work/read" "$work/BC" || die "after a restart the 9 MiB flushed are not what was written"

log "the disk full again: new blocks, a disconnect and a stop; after a restart, nothing torn"
used=$(du -sb "$store" | cut -f1)
# Leave room for less than a quarter of D.
mount -o remount,size=$(((used + (2 << 20)) / 4096 * 4096)) "$store"
serve
$py - "$sock" "$work" <<'PY'
import sys
import nbd
sock, work = sys.argv[1:3]
D = open(f"{work}/D", "rb").read()
h = nbd.NBD()
h.connect_unix(sock)
for i in range(0, len(D), 1 << 20):
    h.pwrite(D[i:i + (1 << 20)], (9 << 20) + i)
h.shutdown()  # the flush at disconnection fails: the disk is full
PY
# With the disk full: it must exit, whatever its status, not wait for room forever.
stop_nbdkit -t 60 -x
mount -o remount,size=64M "$store"

blocks=$store/exports/test_device/blocks
others=$(find "$blocks" -type f ! -regex '.*/[0-9]+' | wc -l)
serve   # a new writer removes what an interrupted one left
nbdcopy "nbd+unix:///?socket=$sock" "$work/read"
stop_nbdkit
stray=$(find "$blocks" -type f ! -regex '.*/[0-9]+' | wc -l)
[ "$stray" -eq 0 ] || die "$stray files other than blocks in $blocks after a restart"
short=$(find "$blocks" -type f -regex '.*/[0-9]+' ! -size 4096c | wc -l)
[ "$short" -eq 0 ] || die "$short block files without the full block size"
$py - "$work" <<'PY'
import sys
work = sys.argv[1]
read = lambda name: open(f"{work}/{name}", "rb").read()
got, flushed, new = read("read"), read("BC"), read("D")
if got[:len(flushed)] != flushed:
    sys.exit("the 9 MiB flushed before the disk filled again changed")
got = got[len(flushed):]
zeros = bytes(4096)
n_new = n_zero = 0
for i in range(0, len(new), 4096):
    g = got[i:i + 4096]
    if g == new[i:i + 4096]:
        n_new += 1
    elif g == zeros:
        n_zero += 1
    else:
        sys.exit(f"new block {i // 4096} is neither the data written nor zeros")
if n_new == 0 or n_zero == 0:
    sys.exit(f"expected some new blocks stored before the disk filled and some not: {n_new} stored, {n_zero} not")
print(f"disk_full: of the new blocks {n_new} stored, {n_zero} not (zeros), none torn")
PY
log "($others temporary files left by the stop, gone after the restart)"
log "PASS"
