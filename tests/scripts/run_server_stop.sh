#!/bin/bash
# scripts/run-server.sh stopped with Ctrl-C says what stopping did:
#
#  1. A client writes without flushing and disconnects; Ctrl-C (SIGINT to the server's process
#     group, as a terminal sends it): the script says everything was stored, exits 0, and the
#     block is in the store's directory.
#  2. The store is a 1 MiB tmpfs and a client writes 4 MiB without flushing; Ctrl-C: the script
#     says NOT everything was stored, and exits non-zero.
#  3. `docker stop` signals only the script (SIGTERM to its pid): it stops nbdkit and says so.
#  4. Ctrl-C of a server whose client wrote nothing, so that nbdkit exits at once: the script
#     exits 0 and says everything was stored (not the status of its own interrupted wait).
#
#   tests/scripts/run_server_stop.sh      (as root: it mounts a tmpfs)
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout; run-server.sh builds what is stale).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_root "it mounts a tmpfs as the store"
require_libnbd_python

# run_and_stop SIGNAL TARGET STORE_DIR WRITE_MIB OUT: starts run-server.sh on STORE_DIR in a
# session of its own with SIGINT at its default (as in a terminal; a script's background job
# would ignore it), writes WRITE_MIB MiB of 0xab at offset 0 without a flush, disconnects, sends
# SIGNAL to the process group (TARGET=group) or to the script alone (TARGET=script), and waits.
# The script's output goes to OUT; prints its exit status.
run_and_stop() {
  local port
  port=$(free_ports 1)
  S3BLOCK_PORT=$port S3BLOCK_IPADDR=127.0.0.1 S3BLOCK_STORE=$3 \
    $py - "$repo/scripts/run-server.sh" "$port" "$1" "$2" "$4" "$5" <<'PY'
import os, signal, subprocess, sys, time
import nbd
script, port, sig, target, mib, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
with open(out, "w") as f:
    p = subprocess.Popen([script, "size=64M", "cache-size=32M"], stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
h = None
deadline = time.time() + 600  # the first run may build the plugin
while h is None:
    if p.poll() is not None or time.time() > deadline:
        sys.exit("run-server.sh did not start serving (exit %s)" % p.poll())
    try:
        h = nbd.NBD()
        h.connect_uri("nbd://127.0.0.1:%s/test_device" % port)
    except nbd.Error:
        h = None
        time.sleep(0.2)
for i in range(mib):
    h.pwrite(b"\xab" * (1 << 20), i << 20)
h.shutdown()
signum = signal.SIGINT if sig == "INT" else signal.SIGTERM
if target == "group":
    os.killpg(p.pid, signum)
else:
    os.kill(p.pid, signum)
print(p.wait(timeout=120))
PY
}

# stops_storing_all CASE SIGNAL TARGET: 1 MiB written unflushed, then the signal: the script
# exits 0, says everything was stored, and the first and last blocks are in the store.
stops_storing_all() {
  local dir=$work/$1 rc id f
  mkdir "$dir"
  rc=$(run_and_stop "$2" "$3" "$dir" 1 "$dir.out") || die "the run failed: $(tail -5 "$dir.out")"
  cat "$dir.out"
  [ "$rc" = 0 ] || die "run-server.sh exited $rc after SIG$2 with everything stored"
  grep -q "nbdkit stopped: everything clients wrote is stored in $dir" "$dir.out" ||
    die "no 'everything clients wrote is stored' line after SIG$2"
  for id in 0 255; do
    f=$dir/exports/test_device/blocks/$id
    [ -f "$f" ] && [ "$(od -An -tx1 -N1 "$f" | tr -d ' ')" = ab ] || die "block $id was not stored"
  done
}

log "1. Ctrl-C after an unflushed write: everything stored"
stops_storing_all ok INT group

log "2. Ctrl-C with a full store: NOT everything stored"
mkdir "$work/full"
mount -t tmpfs -o size=1M tmpfs "$work/full"
on_exit unmount "$work/full"
rc=$(run_and_stop INT group "$work/full" 4 "$work/full.out") || die "the run failed: $(tail -5 "$work/full.out")"
cat "$work/full.out"
[ "$rc" != 0 ] || die "run-server.sh exited 0 although the store was full"
grep -q "NOT everything clients wrote was stored" "$work/full.out" || die "no 'NOT everything' line"
if grep -q "everything clients wrote is stored" "$work/full.out"; then die "it also claimed all was stored"; fi

log "3. SIGTERM to the script alone (docker stop): nbdkit stops, everything stored"
stops_storing_all term TERM script
if pgrep -f "nbdkit .*store=$work/" >/dev/null; then die "an nbdkit of this test still runs"; fi

log "4. Ctrl-C of a server with nothing to store: exits 0 and says so (three times: it is a race)"
for i in 1 2 3; do
  mkdir "$work/idle$i"
  rc=$(run_and_stop INT group "$work/idle$i" 0 "$work/idle$i.out") ||
    die "the run failed: $(tail -5 "$work/idle$i.out")"
  [ "$rc" = 0 ] || { cat "$work/idle$i.out"; die "run-server.sh exited $rc after Ctrl-C with nothing to store"; }
  grep -q "nbdkit stopped: everything clients wrote is stored in $work/idle$i" "$work/idle$i.out" ||
    die "no 'everything clients wrote is stored' line after Ctrl-C with nothing to store"
done

log "PASSED"
