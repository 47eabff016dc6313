#!/bin/bash
# A server that clients make open many exports stays within its bounds, and loses nothing.
#
# One nbdkit on a local store, under `ulimit -n 1024`, with max-exports=8, idle-timeout=1s and an
# 8 MiB cache per export. A client opens 100 exports one after the other, writes 4 MiB to each,
# flushes and disconnects. After every 10 exports the server's threads, open fds and resident
# memory are read from /proc and checked against what the parameters allow: the shared pools
# (upload-threads + read-threads) plus a few threads per open export, fds for at most
# max-exports exports, and memory for max-exports caches plus 64 MiB. Once the clients are gone,
# every export must be closed within a few idle timeouts (no server holds it: `s3block info`).
# Then the server is restarted under the same fd limit and each of the 100 exports is read cold
# (read-ahead on: each fetcher thread reads with an io_uring ring of its own) and compared with
# what was written.
#
#   tests/scripts/export_bounds.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin" "$admin"
require_tool nbdkit
require_libnbd_python

exports=100
max_exports=8
cache_mib=8
upload_threads=32
read_threads=32
# nbdkit's own threads (main, one per connection) and ours that do not grow with exports
# (the closer, the statistics).
fixed_threads=16
thread_bound=$((upload_threads + read_threads + fixed_threads + 2 * max_exports))
# Per open export: its lock file and a few of the store's directory fds; besides, the io_uring
# ring of each fetcher thread, the socket and nbdkit's own.
fd_bound=$((read_threads + 8 * max_exports + 40))
rss_bound_kib=$(((max_exports * cache_mib + 64) * 1024))

store=$work/store
# Under the fd limit of an ordinary login: the server must live within it however many exports.
serve() {
  start_nbdkit -L 1024 -v "$plugin" "store=$store" size=16M max-exports=$max_exports idle-timeout=1 \
    cache-size=${cache_mib}M
}

# Threads, fds and resident KiB of the server, checked against the bounds.
check_bounds() {  # WHEN
  local pid threads fds rss
  pid=$(cat "$work/nbdkit.pid")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  log "$1: $threads threads (bound $thread_bound), $fds fds (bound $fd_bound), RSS $rss KiB (bound $rss_bound_kib)"
  [ "$threads" -le "$thread_bound" ] || die "$1: $threads threads, more than $thread_bound"
  [ "$fds" -le "$fd_bound" ] || die "$1: $fds open fds, more than $fd_bound"
  [ "$rss" -le "$rss_bound_kib" ] || die "$1: RSS $rss KiB, more than $rss_bound_kib"
}

# The client: for exports FIRST..LAST-1, WRITE (write 4 MiB, each export its own pattern, and
# flush) or READ (read them back, compare).
client() {  # write|read FIRST LAST
  $py - "$sock" "$@" <<'PY'
import hashlib, nbd, sys
sock, mode, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = 4 << 20
for i in range(first, last):
    seed = hashlib.sha256(b"export %d" % i).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    h = nbd.NBD()
    h.set_export_name("exp%d" % i)
    h.connect_unix(sock)
    if mode == "write":
        for off in range(0, size, 1 << 20):
            h.pwrite(data[off:off + (1 << 20)], off)
        h.flush()
    else:
        got = b"".join(h.pread(1 << 20, off) for off in range(0, size, 1 << 20))
        if got != data:
            bad = next(j for j in range(size) if got[j] != data[j])
            sys.exit("exp%d: wrong data from byte %d" % (i, bad))
    h.shutdown()
PY
}

log "writing 4 MiB to each of $exports exports, one client after the other"
serve
for ((first = 0; first < exports; first += 10)); do
  client write $first $((first + 10)) || die "writing exports $first-$((first + 9)) failed"
  check_bounds "after $((first + 10)) exports"
done

log "every client has gone: each export must be closed after its idle time"
closed=0
for ((t = 0; t < 100; t++)); do
  held=$("$admin" --store "$store" list --json | $py -c '
import json, subprocess, sys
names = [e["name"] for e in json.load(sys.stdin)]
print(sum(1 for n in names
          if json.loads(subprocess.run([sys.argv[1], "--store", sys.argv[2], "info", n, "--json"],
                                       capture_output=True, text=True, check=True).stdout)["lease_holder"]))
' "$admin" "$store")
  if [ "$held" -eq 0 ]; then closed=1; break; fi
  sleep 0.2
done
[ $closed = 1 ] || die "$held exports still held by the server long after its clients left"
grep -q "closed idle export" "$work/nbdkit.log" || die "no 'closed idle export' in the server's log"
check_bounds "all exports idle"
stop_nbdkit

log "restarted under the same fd limit: every export read cold and compared"
serve
client read 0 $exports || die "an export read back wrong or failed"
check_bounds "after reading $exports exports cold"
stop_nbdkit
log "passed"
