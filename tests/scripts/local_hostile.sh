#!/bin/bash
# A local store that someone else could write into, served by a real nbdkit:
#
#  1. Blocks planted as a symlink to a file outside the store, a FIFO, a directory: a client's
#     read of each fails at once (no hang), its write is refused at the flush, the other blocks
#     stay readable, the outside file is byte for byte what it was, and SIGTERM stops nbdkit
#     within a few seconds.
#  2. The export's lock as a symlink to an outside file: the export is refused; the file is
#     neither written nor truncated, not even when nbdkit exits.
#  3. The export's metadata as a FIFO: that export is refused at once; another is still served.
#  4. The export's blocks/ as a symlink to an outside directory: the export is refused; nothing
#     in that directory is deleted or created.
#  5. A read-only server (nbdkit -r, cache=false) beside the writing server never reads a block
#     half old, half new: the writer alternates two patterns of one 64K block with FUA for about
#     10 seconds while the reader reads it in a loop; no torn read, and both patterns seen.
#
#   tests/scripts/local_hostile.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout), HOSTILE_SECONDS (default 10,
# how long part 5 runs), HOSTILE_PARTS (default "1 2 3 4 5": the parts to run).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
plugin=$build/nbdkit-s3block-plugin.so
seconds=${HOSTILE_SECONDS:-10}
parts=" ${HOSTILE_PARTS:-1 2 3 4 5} "
want() { [[ $parts == *" $1 "* ]]; }

log() { echo "local_hostile: $(date +%H:%M:%S) $*"; }
die() { echo "local_hostile: FAILED: $*" >&2; exit 1; }
. "$here/testlib.sh"
[ -f "$plugin" ] || die "no $plugin (build first)"
command -v nbdkit >/dev/null || die "nbdkit is not installed"
py=/usr/bin/python3
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is not installed"

work=$(mktemp -d /tmp/s3block-hostile.XXXXXX)
store=$work/store
sock=$work/nbd.sock
nbdkit_pid=
reader_pid=
writer_pid=
cleanup() {
  local rc=$?
  for p in $writer_pid $reader_pid $nbdkit_pid; do
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  show_nbdkit_log_on_failure "$rc" "$work/nbdkit.log"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_nbdkit SOCKET EXTRA-ARGS...: one server in the background, its pid in $nbdkit_pid.
start_nbdkit() {
  local s=$1
  shift
  rm -f "$work/nbdkit.pid" "$s"
  nbdkit -f -U "$s" -P "$work/nbdkit.pid" "$plugin" "store=$store" size=1M cache-size=1M "$@" \
    </dev/null >>"$work/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  wait_for_file "$work/nbdkit.pid" 30 || die "nbdkit did not start"
}

# Stops $nbdkit_pid with SIGTERM; dies unless it is gone within 5 seconds.
term_nbdkit() {
  local i
  kill -TERM "$nbdkit_pid"
  for ((i = 0; i < 50; i++)); do
    kill -0 "$nbdkit_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$nbdkit_pid" 2>/dev/null; then die "nbdkit still runs 5 seconds after SIGTERM"; fi
  wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
}

# client EXPORT SCRIPT: runs the python SCRIPT with h connected to EXPORT (or, for
# SCRIPT "connect-fails", checks that connecting fails), within 20 seconds (a hang fails).
client() {
  local export=$1 script=$2
  timeout 20 $py - "$sock" "$export" "$work" "$script" <<'PY' || die "the client for '$1' failed or hung (status $?)"
import errno, sys
import nbd
sock, export, work, script = sys.argv[1:5]
h = nbd.NBD()
h.set_export_name(export)
if script == "connect-fails":
    try:
        h.connect_unix(sock)
    except nbd.Error as e:
        print(f"  connecting to {export!r} fails: {e}")
        sys.exit(0)
    sys.exit(f"connecting to {export!r} succeeded")
h.connect_unix(sock)
def fails(what, fn):
    try:
        fn()
    except nbd.Error as e:
        print(f"  {what} fails: {e}")
        return
    sys.exit(f"{what} succeeded")
exec(script)
PY
}

# The store written by a first server: exports "tamper" and "other", 4K blocks 0..7 of each.
start_nbdkit "$sock"
for export in tamper other; do
  client "$export" '
for i in range(8):
    h.pwrite(bytes([65 + i]) * 4096, i * 4096)
h.flush()'
done
term_nbdkit
blocks=$store/exports/tamper/blocks
[ -f "$blocks/1" ] || die "the first server stored no block files in $blocks"

head -c 4096 /dev/zero | tr '\0' V >"$work/victim"
printf 'IMPORTANT DATA\n' >"$work/victim-lock"
cp "$work/victim" "$work/victim.orig"
cp "$work/victim-lock" "$work/victim-lock.orig"
victims_intact() {
  cmp -s "$work/victim" "$work/victim.orig" || die "$1: the file behind the planted link changed"
  cmp -s "$work/victim-lock" "$work/victim-lock.orig" || die "$1: the file behind the planted lock changed"
}

if want 1; then
log "blocks planted as a symlink, a FIFO and a directory: errors, no hang, SIGTERM works"
rm "$blocks/1" "$blocks/4" "$blocks/5"
ln -s "$work/victim" "$blocks/1"
mkfifo "$blocks/4"
mkdir "$blocks/5"
start_nbdkit "$sock" cache=false
client tamper '
B = 4096
assert h.pread(B, 0) == b"A" * B, "block 0 is not what was written"
assert h.pread(B, 2 * B) == b"C" * B, "block 2 is not what was written"
fails("a read of the symlinked block", lambda: h.pread(B, 1 * B))
fails("a read of the FIFO block", lambda: h.pread(B, 4 * B))
fails("a read of the directory block", lambda: h.pread(B, 5 * B))
for i in (1, 4, 5):
    fails(f"a write of block {i} and its flush", lambda: (h.pwrite(b"w" * B, i * B), h.flush()))
assert h.pread(B, 7 * B) == b"H" * B, "block 7 is not what was written"'
term_nbdkit
victims_intact "planted blocks"
[ -L "$blocks/1" ] && [ -p "$blocks/4" ] && [ -d "$blocks/5" ] || die "a planted block was replaced"

log "the same with the write-back cache: the write is refused at the flush, no hang"
start_nbdkit "$sock"
client tamper '
B = 4096
for i in (1, 4, 5):
    fails(f"a write of block {i} and its flush", lambda: (h.pwrite(b"w" * B, i * B), h.flush()))'
term_nbdkit
victims_intact "planted blocks, write-back"
rm "$blocks/1" "$blocks/4" && rmdir "$blocks/5"
fi

if want 2; then
log "the lock a symlink: the export is refused, the file behind it untouched, also at exit"
rm -f "$store/exports/tamper/lock"
ln -s "$work/victim-lock" "$store/exports/tamper/lock"
start_nbdkit "$sock"
client tamper connect-fails
client other 'assert h.pread(4096, 0) == b"A" * 4096'
term_nbdkit
victims_intact "planted lock"
grep -q "exports/tamper/lock is a symbolic link" "$work/nbdkit.log" || die "the log does not name the planted lock"
rm "$store/exports/tamper/lock"
fi

if want 3; then
log "the metadata a FIFO: that export refused at once, another one served"
mv "$store/exports/tamper/metadata" "$work/metadata"
mkfifo "$store/exports/tamper/metadata"
start_nbdkit "$sock"
client tamper connect-fails
client other 'assert h.pread(4096, 4096) == b"B" * 4096'
term_nbdkit
rm "$store/exports/tamper/metadata"
mv "$work/metadata" "$store/exports/tamper/metadata"
fi

if want 4; then
log "blocks/ a symlink to another directory: the export is refused, nothing there changes"
mkdir "$work/victimdir"
for f in 0 1 .tmp.keep; do echo keep >"$work/victimdir/$f"; done
mv "$blocks" "$work/blocks.saved"
ln -s "$work/victimdir" "$blocks"
start_nbdkit "$sock"
client tamper connect-fails
term_nbdkit
[ "$(ls -A "$work/victimdir" | sort | tr '\n' ' ')" = ".tmp.keep 0 1 " ] ||
  die "the directory behind the planted blocks/ changed: $(ls -A "$work/victimdir")"
for f in 0 1 .tmp.keep; do [ "$(cat "$work/victimdir/$f")" = keep ] || die "victimdir/$f changed"; done
rm "$blocks"
mv "$work/blocks.saved" "$blocks"
fi

if want 5; then
log "a read-only server beside the writer never reads a block half written (${seconds}s)"
wsock=$work/w.sock rsock=$work/r.sock
start_nbdkit "$wsock" block-size=64K default-export=torn
writer_pid=$nbdkit_pid
start_nbdkit "$rsock" -r cache=false default-export=torn
reader_pid=$nbdkit_pid
nbdkit_pid=
$py - "$wsock" "$rsock" "$seconds" <<'PY' || die "the read-only server read a torn block (or saw one pattern only)"
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
nbdkit_pid=$reader_pid
reader_pid=
term_nbdkit
nbdkit_pid=$writer_pid
writer_pid=
term_nbdkit
fi

log "passed"
