# The shared library of the test scripts in tests/scripts/ (sourced, not run):
#
#   #!/bin/bash
#   set -euo pipefail
#   TEST_NAME="mytest[$mode]"          # optional: how messages name the test (default: the script)
#   . "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
#
# Sourcing it makes a temporary directory ($work) and sets an EXIT trap that, pass or fail, runs
# the cleanups registered with on_exit in reverse order (stopping the processes this library
# started is among them), shows the end of each registered log when the script fails, and
# removes $work. A script must not set an EXIT, INT or TERM trap of its own: on_exit adds to it.
#
# Variables it sets: repo, build (S3BLOCK_BUILD or build/ of this checkout), plugin (S3BLOCK_PLUGIN
# or the plugin in $build), admin (the s3block command in $build), work, sock (the socket of the
# default nbdkit, $work/nbdkit.sock), nbdkit_pid (the last nbdkit started).

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
plugin=${S3BLOCK_PLUGIN:-$build/nbdkit-s3block-plugin.so}
admin=$build/s3block
TEST_NAME=${TEST_NAME:-$(basename "$0" .sh)}
# python3-libnbd's module is Debian's python3's, whatever python3 comes first on PATH.
py=/usr/bin/python3

log() { echo "$TEST_NAME: $(date +%H:%M:%S) $*"; }
die() { echo "$TEST_NAME: FAILED: $*" >&2; exit 1; }

# --- Cleanup at exit ---

_tl_cleanups=()
_tl_logs=()

# on_exit COMMAND [ARGS...]: runs the command when the script exits, pass or fail; the commands
# registered run in reverse order (the last set up is the first taken apart). A failing cleanup
# does not stop the others.
on_exit() { _tl_cleanups+=("$(printf '%q ' "$@")"); }

# show_log_on_failure FILE...: the end of each FILE (or glob pattern, expanded at exit) is shown on
# standard error if the script fails. The logs of nbdkit and of the fault proxy are registered
# when they start.
show_log_on_failure() {
  local f
  for f in "$@"; do
    [[ " ${_tl_logs[*]} " == *" $f "* ]] || _tl_logs+=("$f")
  done
}

# Stops PID (SIGTERM, then SIGKILL after 10 s) and reaps it; quiet if it is gone already. Only a
# background job of this shell not yet reaped is touched (a reaped one's pid may be another's).
_tl_end_process() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  [[ " $(jobs -p | tr '\n' ' ') " == *" $pid "* ]] || return 0
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# end_at_exit PID...: background processes of the script to stop at exit if they still run (in
# the order of on_exit: after whatever was registered later, before whatever was earlier).
end_at_exit() {
  local p
  for p in "$@"; do on_exit _tl_end_process "$p"; done
}

_tl_on_exit() {
  local rc=$? i f pattern
  set +e
  for ((i = ${#_tl_cleanups[@]} - 1; i >= 0; i--)); do eval "${_tl_cleanups[i]}"; done
  if [ "$rc" -ne 0 ]; then
    for pattern in "${_tl_logs[@]}"; do
      for f in $pattern; do
        [ -s "$f" ] || continue
        echo "---- the end of $(basename "$f") ----" >&2
        tail -n 40 "$f" >&2
      done
    done
  fi
  [ -z "${work:-}" ] || rm -rf "$work"
  exit "$rc"
}
trap _tl_on_exit EXIT
trap 'exit 130' INT TERM
# A plain command that fails under set -e ends the script; say which.
trap '[[ $- != *e* ]] || echo "$TEST_NAME: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

work=$(mktemp -d "/tmp/s3block-${TEST_NAME//[^A-Za-z0-9_]/_}.XXXXXX")
sock=$work/nbdkit.sock
nbdkit_pid=

# --- Requirements: in CI run-tests.sh installs and builds all of these, so a missing one is a
# broken setup and fails the test rather than skipping it. ---

# require_tool NAME...: dies unless every NAME is a command on PATH.
require_tool() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || die "$t is not installed"; done
}
# require_built FILE...: dies unless every FILE, made by the build, exists.
require_built() {
  local f
  for f in "$@"; do [ -e "$f" ] || die "no $f (build first)"; done
}
require_root() { [ "$(id -u)" = 0 ] || die "needs root: $*"; }
require_libnbd_python() { $py -c 'import nbd' 2>/dev/null || die "python3-libnbd is not installed"; }

# Dies unless the S3 test server's variables (printed by tests/scripts/s3_server.sh start) are set.
require_s3_env() {
  local v n
  for v in ENDPOINT BUCKET ACCESS_KEY SECRET_KEY; do
    n=S3BLOCK_TEST_S3_$v
    [ -n "${!n:-}" ] || die "$n is not set (tests/scripts/s3_server.sh start prints it)"
  done
}

# use_store local|s3 PREFIX: the store of a script that runs on either, set in store (its URL or
# directory), store_params (the plugin's parameters naming it) and cli_store (s3block's options).
# The local store is $work/store; the S3 one a fresh PREFIX in the test bucket.
use_store() {
  case "$1" in
  local)
    store=$work/store
    store_params=("store=$store")
    cli_store=(--store "$store")
    ;;
  s3)
    require_s3_env
    store="s3://$S3BLOCK_TEST_S3_BUCKET/$2-$$-$(date +%s)"
    store_params=("store=$store" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT"
      "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY")
    cli_store=(--store "$store" --endpoint "$S3BLOCK_TEST_S3_ENDPOINT" --access-key "$S3BLOCK_TEST_S3_ACCESS_KEY")
    export AWS_SECRET_ACCESS_KEY=$S3BLOCK_TEST_S3_SECRET_KEY
    ;;
  *) die "usage: $0 local|s3" ;;
  esac
}

# objects EXPORT: "SIZE KEY" for every object of the export (KEY relative to the store), in the
# store use_store set ($mode local or s3).
objects() {
  if [ "$mode" = local ]; then
    [ -d "$store/exports/$1" ] || return 0
    (cd "$store" && find "exports/$1" -type f -printf '%s %p\n')
  else
    local p=${store#s3://$S3BLOCK_TEST_S3_BUCKET/}
    s3_list "$p/exports/$1/" | sed "s| $p/| |"
  fi
}

# --- Objects of the S3 test server, with curl (SigV4), apart from the code under test ---

# s3_curl CURL_ARGS...: curl signed with the test server's credentials; the caller gives the
# x-amz-content-sha256 header when there is a body (an empty body's hash otherwise).
s3_curl() {
  local empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 h=()
  [[ " $* " == *" x-amz-content-sha256: "* ]] || h=(-H "x-amz-content-sha256: $empty")
  curl -sf --max-time 60 --aws-sigv4 "aws:amz:${S3BLOCK_TEST_S3_REGION:-us-east-1}:s3" \
    --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" "${h[@]}" "$@"
}
# s3_list PREFIX: "SIZE KEY" for each object of the test bucket whose key starts with PREFIX.
s3_list() {
  S3_LIST_PREFIX=$1 $py - <<'PY'
import os, subprocess, sys, urllib.parse, xml.etree.ElementTree as ET
ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
prefix, after = os.environ["S3_LIST_PREFIX"], ""
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
q = lambda v: urllib.parse.quote(v, safe="-_.~")
while True:
    # The query's parameters in sorted order: curl signs them as they are written.
    query = "list-type=2&prefix=" + q(prefix) + ("&start-after=" + q(after) if after else "")
    url = "%s/%s?%s" % (os.environ["S3BLOCK_TEST_S3_ENDPOINT"], os.environ["S3BLOCK_TEST_S3_BUCKET"], query)
    e = os.environ
    out = subprocess.run(["curl", "-sf", "--max-time", "60", "--aws-sigv4",
                          "aws:amz:%s:s3" % e.get("S3BLOCK_TEST_S3_REGION", "us-east-1"),
                          "--user", e["S3BLOCK_TEST_S3_ACCESS_KEY"] + ":" + e["S3BLOCK_TEST_S3_SECRET_KEY"],
                          "-H", "x-amz-content-sha256: " + EMPTY, url],
                         stdout=subprocess.PIPE, check=True).stdout
    root = ET.fromstring(out)
    keys = root.findall(ns + "Contents")
    for c in keys:
        print(c.find(ns + "Size").text, c.find(ns + "Key").text)
    if root.findtext(ns + "IsTruncated") != "true" or not keys:
        break
    after = keys[-1].find(ns + "Key").text
PY
}
# s3_get KEY FILE: the object KEY of the test bucket into FILE.
s3_get() { s3_curl -o "$2" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$1"; }
# s3_put_if_absent FILE KEY: stores FILE as KEY unless an object KEY exists (If-None-Match: *,
# as a writer's conditional PUT); fails if it does.
s3_put_if_absent() {
  s3_curl -X PUT -H "If-None-Match: *" -H "Content-Type: application/octet-stream" \
    -H "x-amz-content-sha256: $(sha256sum "$1" | cut -d' ' -f1)" --data-binary @"$1" \
    "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$2" >/dev/null
}

# --- Waiting ---

# wait_for_file FILE SECONDS: true once FILE exists and is not empty.
wait_for_file() {
  local i
  for ((i = 0; i < $2 * 20; i++)); do [ -s "$1" ] && return 0; sleep 0.05; done
  return 1
}

# --- nbdkit ---

# The arguments as they may be shown: a secret-key= value never is.
redact() { printf '%s\n' "$*" | sed -E 's/(secret-key=)[^ ]*/\1(hidden)/g'; }

# start_nbdkit [-n NAME] [-o LOG] [-e VAR=VALUE]... [-L FDS] [-w SECONDS] [--] NBDKIT_ARGS...
#   Starts nbdkit -f in the background with NBDKIT_ARGS (nbdkit's options, the plugin and its
#   parameters), on the unix socket $work/NAME.sock unless the arguments say -p or -s, with its
#   pid file $work/NAME.pid and its output appended to LOG (default $work/NAME.log). NAME
#   (default "nbdkit") names several servers apart; -e sets a variable in its environment; -L runs it under
#   `ulimit -n FDS`. Returns once the pid file is written and the socket is there (nbdkit writes
#   its pid file once it listens); dies with the end of the log if nbdkit exits first or is not
#   ready within SECONDS (default 60). Sets nbdkit_pid and pid_NAME to its pid.
start_nbdkit() {
  local name=nbdkit envs=() fds= wait=60 logf= a i
  while [ $# -gt 0 ]; do
    case "$1" in
    -n) name=$2; shift 2 ;;
    -o) logf=$2; shift 2 ;;
    -e) envs+=("$2"); shift 2 ;;
    -L) fds=$2; shift 2 ;;
    -w) wait=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
    esac
  done
  local pidf=$work/$name.pid s=$work/$name.sock
  logf=${logf:-$work/$name.log}
  local listen=(-U "$s")
  for a in "$@"; do
    case "$a" in -p | --port | --port=* | -s | --single) listen=(); s= ;; esac
  done
  rm -f "$pidf" ${s:+"$s"}
  echo "\$ nbdkit $(redact "$@")" >>"$logf"
  (
    if [ -n "$fds" ]; then ulimit -n "$fds"; fi
    exec env ${envs[@]+"${envs[@]}"} nbdkit -f -P "$pidf" "${listen[@]}" "$@"
  ) </dev/null >>"$logf" 2>&1 &
  nbdkit_pid=$!
  printf -v "pid_$name" %s "$nbdkit_pid"
  end_at_exit "$nbdkit_pid"
  show_log_on_failure "$logf"
  for ((i = 0; i < wait * 20; i++)); do
    if [ -s "$pidf" ] && { [ -z "$s" ] || [ -S "$s" ]; }; then return 0; fi
    if ! kill -0 "$nbdkit_pid" 2>/dev/null; then
      wait "$nbdkit_pid" 2>/dev/null && a=0 || a=$?
      die "nbdkit $name exited with status $a before it was ready (the end of $(basename "$logf") follows)"
    fi
    sleep 0.05
  done
  die "nbdkit $name was not ready within $wait s (the end of $(basename "$logf") follows)"
}

# stop_nbdkit [-n NAME] [-t SECONDS] [-x]: stops the nbdkit NAME (default: the last started)
# with SIGTERM. Dies unless it exits with status 0; -x takes any status; -t dies unless it is gone
# within SECONDS.
stop_nbdkit() {
  local name= limit= any=0 pid rc=0 i
  while [ $# -gt 0 ]; do
    case "$1" in
    -n) name=$2; shift 2 ;;
    -t) limit=$2; shift 2 ;;
    -x) any=1; shift ;;
    *) die "stop_nbdkit: unknown argument $1" ;;
    esac
  done
  if [ -n "$name" ]; then local v=pid_$name; pid=${!v}; else pid=$nbdkit_pid; name=nbdkit; fi
  [ -n "$pid" ] || die "stop_nbdkit: nbdkit $name is not running"
  kill -TERM "$pid"
  if [ -n "$limit" ]; then
    for ((i = 0; i < limit * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then die "nbdkit $name still runs $limit s after SIGTERM"; fi
  fi
  wait "$pid" || rc=$?
  _tl_forget "$name" "$pid"
  [ $any = 1 ] || [ $rc -eq 0 ] || die "nbdkit $name exited with status $rc on SIGTERM"
}

# kill_nbdkit [NAME]: kills the nbdkit NAME (default: the last started) with SIGKILL and reaps it.
kill_nbdkit() {
  local name=${1:-} pid
  if [ -n "$name" ]; then local v=pid_$name; pid=${!v}; else pid=$nbdkit_pid; name=nbdkit; fi
  [ -n "$pid" ] || die "kill_nbdkit: nbdkit $name is not running"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  _tl_forget "$name" "$pid"
}

_tl_forget() {  # NAME PID: that server is gone
  [ "$nbdkit_pid" != "$2" ] || nbdkit_pid=
  printf -v "pid_$1" %s ""
}

# --- Other helpers ---

# unmount DIR: for cleanups; unmounts DIR if something is mounted there (lazily if it is busy).
unmount() {
  if mountpoint -q "$1" 2>/dev/null; then umount "$1" 2>/dev/null || umount -l "$1"; fi
  return 0
}

# detach_loops FILE: detaches every loop device backed by FILE; for cleanups, where the number of a
# device once ours may be another's by then, but the file is still ours.
detach_loops() {
  local d
  for d in $(losetup -n -O NAME -j "$1" 2>/dev/null); do losetup -d "$d" 2>/dev/null; done
  return 0
}

# An export as a block device, for a real file system on it: nbdkit -> nbdfuse's file
# ($fusedir/nbd) -> a loop device ($loop). attach_block_device URI starts nbdfuse ($fuse_pid)
# and sets up the loop device; the teardown (unmount MNT, the loop device, nbdfuse's mount) is
# registered to run at exit, and safe to run at any point and more than once. Uses $work.
fusedir=
loop=
fuse_pid=
_tl_bd_mnt=
# detach_loop: takes the loop device apart, if there is one (its writes may be lost).
detach_loop() { if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; loop=; fi; }
teardown_block_device() {
  [ -n "$_tl_bd_mnt" ] && unmount "$_tl_bd_mnt"
  detach_loop
  if [ -n "$fusedir" ] && mountpoint -q "$fusedir"; then
    fusermount3 -u "$fusedir" 2>/dev/null || fusermount3 -uz "$fusedir" || true
  fi
  return 0
}
# attach_block_device URI MNT: MNT is where the caller mounts the file system (unmounted first
# at teardown).
attach_block_device() {
  fusedir=$work/fuse
  _tl_bd_mnt=$2
  mkdir -p "$fusedir"
  rm -f "$work/nbdfuse.pid"
  nbdfuse -P "$work/nbdfuse.pid" "$fusedir" "$1" </dev/null >>"$work/nbdfuse.log" 2>&1 &
  fuse_pid=$!
  end_at_exit "$fuse_pid"
  on_exit teardown_block_device
  wait_for_file "$work/nbdfuse.pid" 60 || die "nbdfuse did not start: $(cat "$work/nbdfuse.log")"
  [ -f "$fusedir/nbd" ] || die "nbdfuse shows no $fusedir/nbd"
  loop=$(losetup --find --show "$fusedir/nbd")
  log "attached $1 as $fusedir/nbd on $loop"
}
# detach_block_device: everything written reaches nbdkit before this returns: the loop device
# and nbdfuse's file are flushed (nbdfuse turns fsync into an NBD flush), then both are taken
# apart and nbdfuse has exited cleanly.
detach_block_device() {
  blockdev --flushbufs "$loop"
  losetup -d "$loop"
  loop=
  sync "$fusedir/nbd"
  fusermount3 -u "$fusedir"
  wait "$fuse_pid" || die "nbdfuse exited with an error: $(cat "$work/nbdfuse.log")"
}

# Prints the first of N consecutive free ports on 127.0.0.1 from 9600 to 9699 (several runs of
# the tests may share a machine), chosen at random to make two runs picking at once unlikely to
# collide.
free_ports() {
  $py - "$1" <<'PY'
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

# start_faultproxy [-p PORT] [ARGS...]: tests/faultproxy/faultproxy.py in front of the S3 test
# server, on PORT (default: two free ports) with its control port PORT+1; ARGS go to the proxy.
# Sets proxy_port, ctl_port and proxy_pid; its log is $work/proxy.log. ctl PATH talks to it.
start_faultproxy() {
  local p=
  if [ "${1:-}" = -p ]; then p=$2; shift 2; fi
  require_s3_env
  proxy_port=${p:-$(free_ports 2)}
  ctl_port=$((proxy_port + 1))
  rm -f "$work/proxy.ready"
  $py "$repo/tests/faultproxy/faultproxy.py" --listen "$proxy_port" --control "$ctl_port" \
    --upstream "$S3BLOCK_TEST_S3_ENDPOINT" --ready-file "$work/proxy.ready" "$@" >>"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  end_at_exit "$proxy_pid"
  show_log_on_failure "$work/proxy.log"
  wait_for_file "$work/proxy.ready" 20 || die "the fault proxy did not start"
}
stop_faultproxy() { _tl_end_process "$proxy_pid"; proxy_pid=; }
ctl() { curl -sf --max-time 10 "http://127.0.0.1:$ctl_port/$1"; }
# proxy_stat PYTHON-SUBSCRIPT: one number from the proxy's statistics, e.g. "['faults']['stall']".
proxy_stat() { ctl stats | $py -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

# nbd_io SOCKET python-statements...: runs them in Debian's python3 (the one with python3-libnbd's
# module) with h connected to the export "disk" on the unix socket SOCKET.
nbd_io() {
  local s=$1
  shift
  $py -c "import nbd, sys
h = nbd.NBD()
h.connect_uri('nbd+unix:///disk?socket=$s')
$*
h.shutdown()"
}

# export_stat FILE EXPORT KEY [DEFAULT]: one counter of an export in a stats file (stats-file=),
# or DEFAULT (empty if not given) until the file shows it.
export_stat() {
  $py -c "import json, sys
try:
    print(json.load(open(sys.argv[1]))['exports'][sys.argv[2]][sys.argv[3]])
except (OSError, ValueError, KeyError):
    print(sys.argv[4] if len(sys.argv) > 4 else '')" "$@"
}
