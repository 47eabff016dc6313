# Shared by the test scripts (sourced, not run). The caller defines die() and, for the nbdkit
# helpers, keeps the server's pid in $nbdkit_pid.

# Prints the first of N consecutive free ports on 127.0.0.1 from 9600 to 9699 (several runs of
# the tests may share a machine), chosen at random to make two runs picking at once unlikely to
# collide.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
starts = list(range(9600, 9700 - n + 1, n))
random.shuffle(starts)
for p in starts:
    socks = []
    try:
        for q in range(p, p + n):
            s = socket.socket()
            s.bind(("127.0.0.1", q))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(p)
    sys.exit(0)
sys.exit("no free ports in 9600-9699")
PY
}

# Dies unless the S3 test server's variables (printed by tests/scripts/s3_server.sh start) are set.
require_s3_env() {
  local v n
  for v in ENDPOINT BUCKET ACCESS_KEY SECRET_KEY; do
    n=S3BLOCK_TEST_S3_$v
    [ -n "${!n:-}" ] || die "$n is not set (tests/scripts/s3_server.sh start prints it)"
  done
}

# wait_for_file FILE SECONDS: true once FILE exists and is not empty.
wait_for_file() {
  local i
  for ((i = 0; i < $2 * 20; i++)); do [ -s "$1" ] && return 0; sleep 0.05; done
  return 1
}

# Stops the nbdkit in $nbdkit_pid with SIGTERM; dies unless it exits cleanly.
stop_nbdkit() {
  local rc=0
  kill -TERM "$nbdkit_pid"
  wait "$nbdkit_pid" || rc=$?
  nbdkit_pid=
  [ $rc -eq 0 ] || die "nbdkit exited with status $rc on SIGTERM"
}

# show_logs_on_failure RC FILE...: for a script's EXIT trap; shows the end of each FILE that
# exists on standard error when the script is failing (RC non-zero).
show_logs_on_failure() {
  local rc=$1 f
  shift
  [ "$rc" -ne 0 ] || return 0
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "---- the end of $(basename "$f") ----" >&2
    tail -n 30 "$f" >&2
  done
}

# show_nbdkit_log_on_failure RC LOG: for a script's EXIT trap; shows the end of nbdkit's LOG on
# standard error when the script is failing (RC non-zero).
show_nbdkit_log_on_failure() {
  if [ "$1" -ne 0 ] && [ -f "$2" ]; then
    echo "---- the end of the nbdkit log ----" >&2
    tail -n 30 "$2" >&2
  fi
}

# nbd_io SOCKET python-statements...: runs them in Debian's python3 (the one with python3-libnbd's
# module) with h connected to the export "disk" on the unix socket SOCKET.
nbd_io() {
  local sock=$1
  shift
  /usr/bin/python3 -c "import nbd, sys
h = nbd.NBD()
h.connect_uri('nbd+unix:///disk?socket=$sock')
$*
h.shutdown()"
}
