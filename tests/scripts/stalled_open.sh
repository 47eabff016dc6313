#!/bin/bash
# An export whose open is stuck in S3 holds up no other export.
#
# nbdkit serves an S3 store through tests/faultproxy/faultproxy.py. Export "fast" is opened and
# written first. Then the proxy stalls every request for the keys of export "slow" (past the
# request timeout, so the plugin retries until retry-timeout) and a client opens "slow". While
# that open is still stuck (checked: the proxy has stalled its requests and the client is still
# waiting), a second client connects to "fast", writes, flushes and reads back, and a third opens
# a new export: both must be done before the stuck open ends, that is within a time shorter than
# retry-timeout (the bound given to `timeout` is derived from it, not a speed assertion).
# Then the stall ends and "slow" opens as usual.
#
#   tests/scripts/stalled_open.sh   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_s3_env
require_tool nbdkit curl python3
require_libnbd_python
retry_timeout=30
prefix=stalled-open-$$-$(date +%s)
show_log_on_failure "$work/slow.out"

start_faultproxy
stalled() { proxy_stat "['faults']['stall']"; }

start_nbdkit "$plugin" "store=s3://$S3BLOCK_TEST_S3_BUCKET/$prefix" \
  "endpoint=http://127.0.0.1:$proxy_port" "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" \
  "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" size=16M request-timeout=2 retry-timeout=$retry_timeout \
  idle-timeout=600

# io EXPORT: connect, write 1 MiB, flush, read it back, disconnect.
io() {
  $py - "$sock" "$1" <<'PY'
import nbd, os, sys
h = nbd.NBD()
h.set_export_name(sys.argv[2])
h.connect_unix(sys.argv[1])
data = os.urandom(1 << 20)
h.pwrite(data, 1 << 20)
h.flush()
assert h.pread(len(data), 1 << 20) == data, "read back differs"
h.shutdown()
PY
}

log "export 'fast' opened and written"
io fast || die "cannot use export 'fast'"

log "every request for export 'slow' stalls; a client opens it"
ctl "set?kinds=stall&rate=1&stall=60&paths=/exports/slow/" >/dev/null || die "cannot set the stall"
io slow >"$work/slow.out" 2>&1 &
slow_pid=$!
end_at_exit "$slow_pid"
for ((i = 0; i < 200; i++)); do
  [ "$(stalled)" -gt 0 ] && break
  sleep 0.05
done
[ "$(stalled)" -gt 0 ] || die "the open of 'slow' never reached S3"

bound=$((retry_timeout / 3))
log "while it is stuck: 'fast' again and a new export 'other', each within ${bound}s"
timeout "$bound" bash -c "$(declare -f io); py='$py'; sock='$sock'; io fast" ||
  die "using export 'fast' waited for the stuck open of 'slow'"
timeout "$bound" bash -c "$(declare -f io); py='$py'; sock='$sock'; io other" ||
  die "opening export 'other' waited for the stuck open of 'slow'"
kill -0 "$slow_pid" 2>/dev/null || die "the open of 'slow' ended before the others were tried: nothing shown"

log "the stall ends: 'slow' opens"
ctl off >/dev/null
rc=0
wait "$slow_pid" || rc=$?
if [ $rc -ne 0 ]; then
  # It may have given up during the stall (retry-timeout): it must open now.
  io slow || die "export 'slow' cannot be opened once S3 answers again"
fi
stop_nbdkit
log "passed"
