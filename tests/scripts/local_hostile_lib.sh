# Shared by the local_hostile_*.sh tests (sourced after testlib.sh): a local store that someone
# else could write into, served by a real nbdkit.

require_built "$plugin"
require_tool nbdkit
require_libnbd_python
store=$work/store

# serve [-n NAME] EXTRA-ARGS...: nbdkit on the store, 1M exports, a 1M cache.
serve() {
  local name=()
  if [ "${1:-}" = -n ]; then name=(-n "$2"); shift 2; fi
  start_nbdkit "${name[@]}" "$plugin" "store=$store" size=1M cache-size=1M "$@"
}
# Stops the last server started with SIGTERM; dies unless it is gone within 5 seconds.
term() { stop_nbdkit -t 5 -x "$@"; }

# client EXPORT SCRIPT: runs the python SCRIPT with h connected to EXPORT on $sock (or, for
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

# The store written by a first server: exports "tamper" and "other", 4K blocks 0..7 of each
# (block i holds the letter A+i); and two files outside the store that planted links point to.
make_tampered_store() {
  serve
  for export in tamper other; do
    client "$export" '
for i in range(8):
    h.pwrite(bytes([65 + i]) * 4096, i * 4096)
h.flush()'
  done
  term
  blocks=$store/exports/tamper/blocks
  [ -f "$blocks/1" ] || die "the first server stored no block files in $blocks"
  head -c 4096 /dev/zero | tr '\0' V >"$work/victim"
  printf 'IMPORTANT DATA\n' >"$work/victim-lock"
  cp "$work/victim" "$work/victim.orig"
  cp "$work/victim-lock" "$work/victim-lock.orig"
}
victims_intact() {
  cmp -s "$work/victim" "$work/victim.orig" || die "$1: the file behind the planted link changed"
  cmp -s "$work/victim-lock" "$work/victim-lock.orig" || die "$1: the file behind the planted lock changed"
}
