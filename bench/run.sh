#!/bin/bash
# The benchmark: this project against its peers and against the S3 server's own ceiling, on one
# machine, one S3 server, one run. See bench/README.md.
#
#   bench/run.sh                 # full run (about 35 minutes on 2 cores)
#   BENCH_QUICK=1 bench/run.sh   # every system and workload once, small sizes (about 9 minutes)
#
# Installs what is missing (apt-get), builds the plugin into $S3BLOCK_BUILD, starts Ceph RGW
# (bluestore) on 127.0.0.1:$BENCH_PORT, runs every workload on every system through NBD, stops
# everything it started, and writes bench/results/ (results.md, results.csv, results.png).
# Must run as root (packages, loop devices, mounts, dropping the page cache).
#
# Environment (defaults for the full run; BENCH_QUICK=1 changes the sizes):
#   BENCH_REPEATS     runs of every system and workload; medians are reported (default 1)
#   BENCH_SIZE        working set of the fio workloads = export size (256M; quick 32M)
#   BENCH_CACHE       cache-size= of this project, and s3backer's block cache (64M; quick 8M)
#   BENCH_CAP         seconds at most per fio workload; slower systems stop early and their
#                     throughput is taken over what they did (12; quick 3)
#   BENCH_WARM_SECS   seconds of warm random reads over the hot set (4; quick 1)
#   BENCH_EXT4_SIZE   export size for mkfs.ext4 and the small files (512M; quick 256M)
#   BENCH_FILES       small files in the tree (3000; quick 300)
#   BENCH_GC_CAP      seconds at most for the gc workload's random overwrites (300; quick 60)
#   BENCH_GC_SETTLE   seconds at most to wait after them for the collector to finish (180; quick 90)
#   BENCH_GC_QUIET    the collector has finished once its counters stayed the same and the space
#                     stored reached no new low this many seconds (22: longer than two of its
#                     passes, 10 s apart)
#   BENCH_OPEN_BLOCKS 4K blocks stored before the open workload times a restart (60000; quick
#                     2000); issue 24's goal is at 1000000 (about 3.9 GiB per system filled)
#   BENCH_SNAP_SIZES  sizes of the log exports the snapshot workload fills, then snapshots,
#                     clones and rolls back ("1G 16G"; quick "64M 1G"); the cold reads of the
#                     clone and its parent are of the first size
#   BENCH_SNAP_RUNS   rounds of the snapshot workload's commands on each export, and cold reads
#                     of the clone and of its parent; medians are reported (3; quick 1)
#   BENCH_SYSTEMS     space-separated subset of the systems (default all; see ALL_SYSTEMS)
#   BENCH_WORKLOADS   space-separated subset of the workloads (default all; see ALL_WORKLOADS)
#   BENCH_PORT        RGW port (9500; the monitor takes the next one)
#   BENCH_OUT         where the results go (bench/results)
#   BENCH_KEEP=1      keep the work directory (raw fio output, logs) instead of deleting it
#   S3BLOCK_BUILD     build directory (default build/ of this checkout)
#   BENCH_NO_BUILD=1  use the plugin and s3block already built there as they are: no cmake, no
#                     build, nothing written into the build directory
#   BENCH_BASELINE_PLUGIN  the plugin of another build (e.g. of an earlier commit) to run as the
#                     systems base-local-4K, base-local-1M, base-s3-4K and base-s3-1M beside
#                     this build's: a change measured before and after in one run
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$BENCH_DIR/../scripts/common.sh"
REPO=$S3BLOCK_REPO

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  d_size=32M d_cache=8M d_cap=3 d_warm=1 d_ext4=256M d_files=300 d_gc_cap=60 d_gc_settle=90
  d_open=2000 d_snap="64M 1G" d_snap_runs=1
else
  d_size=256M d_cache=64M d_cap=12 d_warm=4 d_ext4=512M d_files=3000 d_gc_cap=300
  d_gc_settle=180 d_open=60000 d_snap="1G 16G" d_snap_runs=3
fi
REPEATS=${BENCH_REPEATS:-1}
SIZE=${BENCH_SIZE:-$d_size}
CACHE=${BENCH_CACHE:-$d_cache}
CAP=${BENCH_CAP:-$d_cap}
WARM_SECS=${BENCH_WARM_SECS:-$d_warm}
EXT4_SIZE=${BENCH_EXT4_SIZE:-$d_ext4}
FILES=${BENCH_FILES:-$d_files}
GC_CAP=${BENCH_GC_CAP:-$d_gc_cap}
GC_SETTLE=${BENCH_GC_SETTLE:-$d_gc_settle}
# The plugin's collector makes a pass every 10 s and deletes what it freed at the checkpoint
# that ends the pass: two passes with nothing changed say it is done.
GC_QUIET=${BENCH_GC_QUIET:-22}
OPEN_BLOCKS=${BENCH_OPEN_BLOCKS:-$d_open}
SNAP_SIZES=${BENCH_SNAP_SIZES:-$d_snap}
SNAP_RUNS=${BENCH_SNAP_RUNS:-$d_snap_runs}
PORT=${BENCH_PORT:-9500}
OUT=${BENCH_OUT:-$BENCH_DIR/results}
BUCKET=bench

ALL_SYSTEMS="s3block-local-4K s3block-local-4K-log s3block-local-1M s3block-s3-4K
  s3block-s3-4K-log s3block-s3-1M nbdkit-memory nbdkit-file nbdkit-S3-4K nbdkit-S3-64K s3backer-4K
  s3backer-1M"
ALL_WORKLOADS="seqwrite seqread-cold seqread-warm randread randread-warm randwrite randrw mkfs
  smallfiles gc open snapshot"
# The plugin's default export: the one the URIs below select, with no export name.
EXPORT=test_device
# Lists as one line, single spaces.
SYSTEMS=$(tr -s ' \n' '  ' <<<"${BENCH_SYSTEMS:-$ALL_SYSTEMS}" | sed 's/^ //; s/ $//')
WORKLOADS=$(tr -s ' \n' '  ' <<<"${BENCH_WORKLOADS:-$ALL_WORKLOADS}" | sed 's/^ //; s/ $//')

log() { echo "bench: $(date +%H:%M:%S) $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

# Sizes in bytes: 64M -> 67108864.
bytes() {
  local v=${1^^} m=1
  case "$v" in
    *K) m=1024; v=${v%K} ;; *M) m=$((1 << 20)); v=${v%M} ;; *G) m=$((1 << 30)); v=${v%G} ;;
  esac
  echo $((v * m))
}
SIZE_B=$(bytes "$SIZE")
CACHE_B=$(bytes "$CACHE")
EXT4_B=$(bytes "$EXT4_SIZE")
[ "$OPEN_BLOCKS" -ge 1 ] 2>/dev/null || die "BENCH_OPEN_BLOCKS=$OPEN_BLOCKS: give a number of blocks"
[ "$SNAP_RUNS" -ge 1 ] 2>/dev/null || die "BENCH_SNAP_RUNS=$SNAP_RUNS: give a number of rounds"
OPEN_B=$((OPEN_BLOCKS * 4096))
SNAP_B=0
for v in $SNAP_SIZES; do
  b=$(bytes "$v")
  [ "$b" -ge 1048576 ] 2>/dev/null || die "BENCH_SNAP_SIZES: $v is not a size of 1M or more"
  SNAP_B=$((SNAP_B + b))
done

[ "$(id -u)" = 0 ] || die "run as root (packages, loop devices, mounts, drop_caches)"

# ---------------------------------------------------------------------------------------------
# Install and build.
BENCH_PACKAGES="fio libnbd-bin python3-libnbd fuse3 e2fsprogs mount util-linux curl procps python3
  s3backer nbdkit nbdkit-plugin-python python3-boto3 gnuplot-nox"
# shellcheck disable=SC2086
s3b_install_missing $S3BLOCK_BUILD_PACKAGES $BENCH_PACKAGES
CEILING=$S3BLOCK_BUILD/bench-s3ceiling
if [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
  # The build directory is used as it is, and nothing is written into it.
  log "using the binaries in $S3BLOCK_BUILD as they are (BENCH_NO_BUILD=1)"
  CEILING=$(mktemp /tmp/s3block-bench-ceiling.XXXXXX)
else
  if [ ! -f "$S3BLOCK_BUILD/CMakeCache.txt" ]; then
    cmake -S "$REPO" -B "$S3BLOCK_BUILD" -DS3BLOCK_BUILD_TESTS=OFF >&2 || die "cmake failed"
  fi
  log "building into $S3BLOCK_BUILD"
  build_log=$(mktemp /tmp/s3block-bench-build.XXXXXX)
  if ! (s3b_build nbdkit-s3block-plugin s3block s3block-admin) 2>"$build_log"; then
    tail -n 40 "$build_log" >&2
    rm -f "$build_log"
    die "build failed"
  fi
  rm -f "$build_log"
fi
ADMIN=$S3BLOCK_BUILD/s3block
# python3-libnbd's module is Debian's python3's, whatever python3 comes first on PATH.
NBD_PY=/usr/bin/python3
# shellcheck disable=SC2046
g++ -O2 -std=c++20 -I"$REPO/include" -I"$REPO/src" "$BENCH_DIR/s3ceiling.cc" \
  "$S3BLOCK_BUILD/libs3block.a" $(pkg-config --libs libcurl expat libzstd) -lcrypto -lpthread \
  -o "$CEILING" || die "building bench/s3ceiling.cc failed"
[ -f "$S3BLOCK_PLUGIN" ] || die "no plugin at $S3BLOCK_PLUGIN"
modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || die "/dev/fuse is missing"

# ---------------------------------------------------------------------------------------------
# Everything started is recorded so that every exit path stops it.
WORK=$(mktemp -d /tmp/s3block-bench.XXXXXX)
RAW=$WORK/raw.tsv
RUNID=run-$(date +%s)
S3DIR=$WORK/rgw
S3_STARTED=0
declare -a SERVER_PIDS=()   # the current system's server processes (RSS is read from these)
S3BACKER_PID=
S3BACKER_MNT=
FUSE_DIR=
FUSE_PID=
LOOP=
PATTERN_DIR=                # the snapshot workload's source of data (nbdfuse of nbdkit pattern)
PATTERN_PID=
declare -a CLIENT_PIDS=()   # clients started in the background (gc's connection, open's reader)
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/logs" "$WORK/fio"

detach_ext4() {
  if mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT" || true; fi
  if [ -n "$LOOP" ]; then losetup -d "$LOOP" 2>/dev/null || true; LOOP=; fi
  if [ -n "$FUSE_DIR" ] && mountpoint -q "$FUSE_DIR"; then
    fusermount3 -u "$FUSE_DIR" 2>/dev/null || fusermount3 -uz "$FUSE_DIR" || true
  fi
  if [ -n "$FUSE_PID" ]; then kill "$FUSE_PID" 2>/dev/null; wait "$FUSE_PID" 2>/dev/null; FUSE_PID=; fi
  FUSE_DIR=
}

detach_pattern() {
  if [ -n "$PATTERN_DIR" ] && mountpoint -q "$PATTERN_DIR"; then
    fusermount3 -u "$PATTERN_DIR" 2>/dev/null || fusermount3 -uz "$PATTERN_DIR" || true
  fi
  if [ -n "$PATTERN_PID" ]; then
    kill "$PATTERN_PID" 2>/dev/null; wait "$PATTERN_PID" 2>/dev/null; PATTERN_PID=
  fi
  PATTERN_DIR=
}

# The process exists and is not a zombie waiting to be reaped.
alive() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ]
}

stop_servers() {
  local p i n
  # nbdkit first (it holds s3backer's file open), then s3backer through its unmount.
  for p in "${SERVER_PIDS[@]}"; do
    [ "$p" = "$S3BACKER_PID" ] && continue
    kill -TERM "$p" 2>/dev/null
    # nbdkit with the Python S3 plugin does not always exit on SIGTERM; every write of that
    # plugin is already durable, so it gets a SIGKILL below.
    for ((i = 0; i < 50; i++)); do alive "$p" || break; sleep 0.1; done
  done
  if [ -n "$S3BACKER_MNT" ]; then
    if mountpoint -q "$S3BACKER_MNT"; then
      fusermount -u "$S3BACKER_MNT" 2>/dev/null || fusermount -uz "$S3BACKER_MNT" 2>/dev/null
    fi
    S3BACKER_MNT=
  fi
  for p in "${SERVER_PIDS[@]}"; do
    # s3backer writes back what is still dirty after the unmount: give it time.
    n=10
    [ "$p" = "$S3BACKER_PID" ] && n=600
    for ((i = 0; i < n; i++)); do alive "$p" || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  SERVER_PIDS=()
  S3BACKER_PID=
}

stop_clients() {
  local p
  for p in "${CLIENT_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  CLIENT_PIDS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  detach_ext4
  detach_pattern
  stop_clients
  stop_servers
  if [ "$S3_STARTED" = 1 ]; then
    bash "$REPO/tests/scripts/s3_server.sh" stop "$S3DIR" "$PORT" >>"$WORK/logs/rgw-stop.log" 2>&1
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  [ "${BENCH_NO_BUILD:-0}" = 1 ] && rm -f "$CEILING"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---------------------------------------------------------------------------------------------
# The S3 server: RGW on a bluestore OSD, logging every request (RGW_DEBUG=1) so that the
# requests each workload causes can be counted from its access log, the same way for every system.
log "starting Ceph RGW (bluestore) on 127.0.0.1:$PORT"
# The log systems add their segments (deleted ones keep their space: RGW frees it hours later),
# and the open workload its blocks, twice on S3 (both layouts); the snapshot workload its exports.
snap_store_b=0
case " $WORKLOADS " in *" snapshot "*) snap_store_b=$SNAP_B ;; esac
store_gb=$(( (SIZE_B * 18 + EXT4_B * 5 + OPEN_B * 2 + snap_store_b + (3 << 30)) * REPEATS / (1 << 30)
  + 8 ))
RGW_OBJECTSTORE=bluestore RGW_DEBUG=1 RGW_STORE_GB=$store_gb S3BLOCK_TEST_S3_BUCKET_WANTED=$BUCKET \
  S3BLOCK_TEST_S3_ACCESS_KEY_WANTED=bench-key S3BLOCK_TEST_S3_SECRET_KEY_WANTED=bench-secret \
  bash "$REPO/tests/scripts/s3_server.sh" start "$S3DIR" "$PORT" >"$WORK/s3.env" \
  2>"$WORK/logs/rgw-start.log" || { cat "$WORK/logs/rgw-start.log" >&2; die "RGW did not start"; }
S3_STARTED=1
# shellcheck disable=SC1091
. "$WORK/s3.env"
ENDPOINT=$S3BLOCK_TEST_S3_ENDPOINT
AK=$S3BLOCK_TEST_S3_ACCESS_KEY
SK=$S3BLOCK_TEST_S3_SECRET_KEY
printf '%s' "$SK" >"$WORK/secret" && chmod 600 "$WORK/secret"
printf '%s:%s\n' "$AK" "$SK" >"$WORK/s3backer_passwd" && chmod 600 "$WORK/s3backer_passwd"
RGW_LOG=$S3DIR/log/client.rgw.local.log
RGW_PIDS=$(awk '{print $2}' "$S3DIR/pids" | tr '\n' ' ')
RGW_LOG_OFF=0
CLK_TCK=$(getconf CLK_TCK)

# CPU seconds used so far by the S3 server's daemons (monitor, OSD, gateway).
s3_cpu() {
  local p t=0 s
  for p in $RGW_PIDS; do
    s=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || s=0
    t=$((t + ${s:-0}))
  done
  awk -v t="$t" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }'
}

# Requests the gateway logged since the last call, as "GET PUT HEAD DELETE POST".
s3_requests() {
  local size
  sleep 0.5  # the log is written by a background thread
  size=$(stat -c %s "$RGW_LOG")
  tail -c +$((RGW_LOG_OFF + 1)) "$RGW_LOG" | head -c $((size - RGW_LOG_OFF)) | awk '
    / beast: / { if (match($0, /"[A-Z]+ /)) { m = substr($0, RSTART + 1, RLENGTH - 2); n[m]++ } }
    END { printf "%d %d %d %d %d", n["GET"], n["PUT"], n["HEAD"], n["DELETE"], n["POST"] }'
  RGW_LOG_OFF=$size
}

# ---------------------------------------------------------------------------------------------
# The systems under test. start_system NAME STORE_ID EXPORT_BYTES serves the export on the unix
# socket $SOCK; the same STORE_ID brings back the same data (a restart). Every system is an
# nbdkit process; s3backer's FUSE file is served by nbdkit's file plugin.
SOCK=$WORK/nbd.sock
URI="nbd+unix:///?socket=$SOCK"

wait_for_socket() {
  local i
  for ((i = 0; i < 600; i++)); do
    [ -S "$SOCK" ] && nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# START_NOWAIT=1: return once nbdkit is started, without connecting a client (the open
# workload's reader is the first client). EXTRA_PARAMS: more parameters of this project's plugin.
START_NOWAIT=0
declare -a EXTRA_PARAMS=()
start_system() {
  local name=$1 sid=$2 size=$3 store bs nlog=$WORK/logs/$1.log
  rm -f "$SOCK"
  local nbdkit=(nbdkit -f -U "$SOCK" --exit-with-parent)
  case "$name" in
    s3block-local-*|s3block-s3-*|base-local-*|base-s3-*)
      # NAME-BS, or NAME-BS-log: the same with layout=log (its new exports are log-structured).
      local layout=()
      bs=${name%-log}
      [ "$bs" != "$name" ] && layout=(layout=log)
      bs=${bs##*-}
      local plugin=$S3BLOCK_PLUGIN
      if [ "${name#base-}" != "$name" ]; then
        plugin=${BENCH_BASELINE_PLUGIN:?"$name needs BENCH_BASELINE_PLUGIN=<the other build's plugin .so>"}
      fi
      if [ "${name#*-local-}" != "$name" ]; then
        store=$WORK/stores/$sid
        mkdir -p "$WORK/stores"
        set -- store="$store"
      else
        set -- store="s3://$BUCKET/$RUNID/$sid" endpoint="$ENDPOINT" access-key="$AK" \
          secret-key="+$WORK/secret"
      fi
      "${nbdkit[@]}" "$plugin" "$@" size="$size" block-size="$bs" \
        cache-size="$CACHE" "${layout[@]}" "${EXTRA_PARAMS[@]}" </dev/null >>"$nlog" 2>&1 &
      SERVER_PIDS=($!)
      ;;
    nbdkit-memory)
      "${nbdkit[@]}" memory size="$size" </dev/null >>"$nlog" 2>&1 &
      SERVER_PIDS=($!)
      ;;
    nbdkit-file)
      mkdir -p "$WORK/stores"
      [ -f "$WORK/stores/$sid.img" ] || truncate -s "$size" "$WORK/stores/$sid.img"
      "${nbdkit[@]}" file file="$WORK/stores/$sid.img" </dev/null >>"$nlog" 2>&1 &
      SERVER_PIDS=($!)
      ;;
    nbdkit-S3-*)
      bs=${name##*-}
      # The plugin refuses requests smaller than an object (EINVAL); its manual points to the
      # blocksize filter, which turns them into read-modify-write cycles.
      "${nbdkit[@]}" --filter=blocksize S3 minblock="$bs" endpoint-url="$ENDPOINT" bucket="$BUCKET" key="$RUNID/$sid" \
        size="$size" object-size="$bs" access-key="$AK" secret-key="$SK" \
        </dev/null >>"$nlog" 2>&1 &
      SERVER_PIDS=($!)
      ;;
    s3backer-*)
      bs=${name##*-}
      S3BACKER_MNT=$WORK/s3backer-mnt
      mkdir -p "$S3BACKER_MNT"
      # Path-style URLs need --baseURL and no --region. --directIO: the kernel's page cache must
      # not answer for s3backer. Its block cache gets the same budget as this project's cache.
      s3backer -f --baseURL="http://127.0.0.1:$PORT/" --accessFile="$WORK/s3backer_passwd" \
        --prefix="$RUNID/$sid/" --size="$size" --blockSize="$bs" --listBlocks --directIO \
        --blockCacheSize=$((CACHE_B / $(bytes "$bs"))) "$BUCKET" "$S3BACKER_MNT" \
        </dev/null >>"$WORK/logs/$name-s3backer.log" 2>&1 &
      S3BACKER_PID=$!
      SERVER_PIDS=($!)
      local i
      for ((i = 0; i < 300; i++)); do [ -e "$S3BACKER_MNT/file" ] && break; sleep 0.1; done
      [ -e "$S3BACKER_MNT/file" ] || { tail "$WORK/logs/$name-s3backer.log" >&2; return 1; }
      "${nbdkit[@]}" file file="$S3BACKER_MNT/file" </dev/null >>"$nlog" 2>&1 &
      SERVER_PIDS+=($!)
      ;;
    *) die "unknown system $name" ;;
  esac
  [ "$START_NOWAIT" = 1 ] && return 0
  wait_for_socket || { tail "$nlog" >&2; return 1; }
}

# Bytes of the blocks the export holds, by the admin command (blocks stored x block size);
# empty if it cannot tell.
live_bytes() {
  local store=(--store "$WORK/stores/$1")
  case "$SYSTEM" in
    *-local-*) ;;
    *) store=(--store "s3://$BUCKET/$RUNID/$1" --endpoint "$ENDPOINT" --access-key "$AK") ;;
  esac
  AWS_SECRET_ACCESS_KEY=$SK "$ADMIN" "${store[@]}" info "$EXPORT" --json 2>>"$WORK/logs/admin.log" \
    | python3 -c 'import json, sys
e = json.load(sys.stdin)
print(e["blocks_stored"] * e["block_size"] or "")' 2>/dev/null
}

# Bytes stored under the export's prefix, and the objects or files there: "BYTES COUNT".
stored_bytes() {
  case "$SYSTEM" in
    *-local-*)
      find "$WORK/stores/$1/exports/$EXPORT" -type f -printf '%s\n' 2>/dev/null \
        | awk '{ b += $1; n++ } END { printf "%d %d\n", b, n }' ;;
    *)
      AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK python3 "$BENCH_DIR/report.py" s3size \
        "$ENDPOINT" "$BUCKET" "$RUNID/$1/exports/$EXPORT/" ;;
  esac
}

# Peak RSS (KiB) of the current system's server processes, summed.
server_rss_kib() {
  local p t=0 v
  for p in "${SERVER_PIDS[@]}"; do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo $t
}

PEAK_RSS=0
stop_system() {
  local r
  r=$(server_rss_kib)
  [ "$r" -gt "$PEAK_RSS" ] && PEAK_RSS=$r
  stop_servers
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# s3backer answers a flush (fsync) before its write-back cache has uploaded the dirty blocks, so
# its flush does not make the data durable in S3. For a fair comparison with systems whose flush
# does, the time until its statistics show no dirty block is added to each write workload.
# Prints the seconds waited (0 for every other system).
durable_wait() {
  case "$SYSTEM" in s3backer-*) ;; *) echo 0; return ;; esac
  local t0 i r
  t0=$(now)
  for ((i = 0; i < 12000; i++)); do
    r=$(awk '/^block_cache_dirty_ratio/ { print $2 }' "$S3BACKER_MNT/stats" 2>/dev/null)
    [ -n "$r" ] && awk -v r="$r" 'BEGIN { exit !(r == 0) }' && break
    sleep 0.05
  done
  since "$t0"
}

# ---------------------------------------------------------------------------------------------
# Measurements. Each appends one row to $RAW:
# rep system workload seconds mib_read mib_written iops mbps lat_mean_ms lat_p99_ms
#   s3_get s3_put s3_head s3_delete s3_post s3_cpu_s capped
REP=0
SYSTEM=
record() {  # workload seconds mib_r mib_w iops mbps lat_mean lat_p99 capped cpu0
  local wl=$1 cpu0=${10} req cpu1
  req=$(s3_requests)
  cpu1=$(s3_cpu)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$REP" "$SYSTEM" "$wl" "$2" "$3" "$4" \
    "$5" "$6" "$7" "$8" "$(echo "$req" | tr ' ' '\t')" \
    "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')	$9" >>"$RAW"
}

# fio_run WORKLOAD FIO_ARGS...: one fio job through the nbd engine, recorded. It stops after
# $FIO_CAP seconds (default $CAP).
FIO_CAP=
fio_run() {
  local wl=$1 out=$WORK/fio/$REP-$SYSTEM-$1.json cpu0 parsed extra=0 cap=${FIO_CAP:-$CAP}
  shift
  s3_requests >/dev/null
  cpu0=$(s3_cpu)
  fio --name="$wl" --ioengine=nbd --uri="$URI" --output-format=json --output="$out" \
    --runtime="$cap" "$@" >"$out.log" 2>&1
  case "$wl" in seqwrite|randwrite|randrw) extra=$(durable_wait) ;; esac
  parsed=$(python3 "$BENCH_DIR/report.py" fio "$out" "$cap" "$extra") || {
    log "$SYSTEM $wl: fio failed: $(tail -3 "$out.log" | tr '\n' ' ')"
    s3_requests >/dev/null
    return 1
  }
  # parsed: seconds mib_r mib_w iops mbps lat_mean lat_p99 capped
  # shellcheck disable=SC2086
  record "$wl" $parsed "$cpu0"
  log "$SYSTEM $wl: $(echo "$parsed" | awk '{printf "%.1f s, %.0f IOPS, %.1f MB/s, p99 %.2f ms%s", $1, $4, $5, $7, ($8 == 1 ? " (time cap)" : "")}')"
}

# MiB written through the loop device since it was attached (its counters outlive losetup -d).
LOOP_W0=0
loop_sectors_written() { awk '{ print $7 }' "/sys/block/$(basename "$LOOP")/stat"; }
loop_written_mib() {
  awk -v s="$(loop_sectors_written)" -v s0="$LOOP_W0" 'BEGIN { printf "%.3f", (s - s0) * 512 / 1048576 }'
}

# nbd export -> nbdfuse file -> loop device (as tests/scripts/ext4_roundtrip.sh does).
attach_ext4() {
  FUSE_DIR=$WORK/fuse
  mkdir -p "$FUSE_DIR"
  rm -f "$WORK/nbdfuse.pid"
  nbdfuse -P "$WORK/nbdfuse.pid" "$FUSE_DIR" "$URI" </dev/null >>"$WORK/logs/nbdfuse.log" 2>&1 &
  FUSE_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do [ -s "$WORK/nbdfuse.pid" ] && break; sleep 0.1; done
  [ -f "$FUSE_DIR/nbd" ] || { log "nbdfuse did not start"; return 1; }
  LOOP=$(losetup --find --show "$FUSE_DIR/nbd") || return 1
  LOOP_W0=$(loop_sectors_written)
}

# Everything written reaches the NBD server and is flushed (nbdfuse turns fsync into NBD flush).
flush_ext4() {
  blockdev --flushbufs "$LOOP" && sync "$FUSE_DIR/nbd"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# The small-files tree, made once: FILES files of 512 B to 8 KiB in directories of 100.
make_tree() {
  python3 - "$WORK/tree" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100), "e%d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(512, 8192)))
EOF
}

want() { case " $WORKLOADS " in *" $1 "*) return 0 ;; esac; return 1; }

# Runs every workload on one system (one repeat).
run_system() {
  SYSTEM=$1
  local sid="$1-r$REP" w_b w_mib hot written cpu0 t0 secs mib
  PEAK_RSS=0
  log "=== $SYSTEM (repeat $REP)"
  start_system "$SYSTEM" "$sid" "$SIZE_B" || { log "$SYSTEM did not start"; stop_system; return 1; }

  # Sequential write, 1 MiB requests at queue depth 8, one pass over the export, then a flush.
  w_b=$SIZE_B
  if want seqwrite || want seqread-cold || want seqread-warm || want randread || want randread-warm; then
    if want seqwrite; then
      fio_run seqwrite --rw=write --bs=1M --iodepth=8 --size="$SIZE_B" --end_fsync=1
    else
      fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 \
        --size="$SIZE_B" --end_fsync=1 --runtime="$CAP" --output-format=json \
        --output="$WORK/fio/$REP-$SYSTEM-fill.json" >/dev/null 2>&1
    fi
    # A system that hit the time cap wrote less: later workloads stay on what it wrote.
    written=$(python3 "$BENCH_DIR/report.py" written "$WORK/fio/$REP-$SYSTEM-seqwrite.json" \
      "$WORK/fio/$REP-$SYSTEM-fill.json" 2>/dev/null || echo "$SIZE_B")
    w_b=$(( written / 1048576 * 1048576 ))
    [ "$w_b" -ge 1048576 ] || w_b=1048576
    [ "$w_b" -le "$SIZE_B" ] || w_b=$SIZE_B
  fi
  w_mib=$((w_b / 1048576))
  [ "$w_b" -lt "$SIZE_B" ] && log "$SYSTEM: later workloads use the $w_mib MiB written"

  # Cold: the server restarted (the memory plugin cannot be: its data would be gone) and the
  # page cache dropped.
  restart() {
    if [ "$SYSTEM" != nbdkit-memory ]; then
      stop_system
      drop_caches
      start_system "$SYSTEM" "$sid" "$SIZE_B" || return 1
    else
      drop_caches
    fi
  }
  if want seqread-cold || want seqread-warm; then
    restart || { log "$SYSTEM did not restart"; stop_system; return 1; }
    want seqread-cold && fio_run seqread-cold --rw=read --bs=1M --iodepth=8 --size="$w_b"
    want seqread-warm && fio_run seqread-warm --rw=read --bs=1M --iodepth=8 --size="$w_b"
  fi
  # Random 4 KiB reads, one pass over what was written, from a cold start.
  if want randread; then
    restart || { log "$SYSTEM did not restart"; stop_system; return 1; }
    fio_run randread --rw=randread --bs=4K --iodepth=32 --size="$w_b"
  fi
  # Warm random 4 KiB reads: a hot set of half the cache, read once sequentially, then random
  # reads over it for BENCH_WARM_SECS (this one measures the cache on purpose).
  if want randread-warm; then
    hot=$((CACHE_B / 2))
    [ "$hot" -le "$w_b" ] || hot=$w_b
    fio --name=prime --ioengine=nbd --uri="$URI" --rw=read --bs=1M --iodepth=8 --size="$hot" \
      --runtime="$CAP" \
      --output-format=json --output="$WORK/fio/$REP-$SYSTEM-prime.json" >/dev/null 2>&1
    fio_run randread-warm --rw=randread --bs=4K --iodepth=32 --size="$hot" --time_based \
      --runtime="$WARM_SECS"
  fi
  # Random 4 KiB writes and a 70/30 random mix at queue depth 32, one pass, then a flush.
  want randwrite && fio_run randwrite --rw=randwrite --bs=4K --iodepth=32 --size="$w_b" \
    --end_fsync=1
  want randrw && fio_run randrw --rw=randrw --rwmixread=70 --bs=4K --iodepth=32 \
    --size="$w_b" --end_fsync=1
  stop_system

  # mkfs.ext4 and the small-files tree on a fresh export, through nbdfuse and a loop device.
  if want mkfs || want smallfiles; then
    start_system "$SYSTEM" "$sid-ext4" "$EXT4_B" || { log "$SYSTEM did not start"; stop_system; return 1; }
    if attach_ext4; then
      s3_requests >/dev/null
      cpu0=$(s3_cpu)
      t0=$(now)
      # nodiscard: the export is new (all holes); discarding it would only time the trim path.
      if timeout 900 mkfs.ext4 -q -F -E nodiscard "$LOOP" >>"$WORK/logs/mkfs.log" 2>&1 && flush_ext4 \
        && durable_wait >/dev/null; then
        secs=$(since "$t0")
        mib=$(loop_written_mib)
        want mkfs && record mkfs "$secs" 0 "$mib" 0 0 0 0 0 "$cpu0"
        log "$SYSTEM mkfs: $secs s, $mib MiB written"
        if want smallfiles && ! mount "$LOOP" "$MNT" 2>>"$WORK/logs/mkfs.log"; then
          log "$SYSTEM: mounting the new ext4 failed: $(tail -1 "$WORK/logs/mkfs.log")"
        elif want smallfiles; then
          s3_requests >/dev/null
          cpu0=$(s3_cpu)
          local m0=$mib
          t0=$(now)
          # Copy the tree, unmount (writes back and flushes), and flush the layers below.
          if timeout 900 cp -a "$WORK/tree/." "$MNT/" && umount "$MNT" && flush_ext4 \
            && durable_wait >/dev/null; then
            secs=$(since "$t0")
            mib=$(awk -v a="$(loop_written_mib)" -v b="$m0" 'BEGIN { printf "%.3f", a - b }')
            record smallfiles "$secs" 0 "$mib" 0 0 0 0 0 "$cpu0"
            log "$SYSTEM smallfiles: $secs s, $mib MiB written"
          else
            log "$SYSTEM smallfiles failed"
            s3_requests >/dev/null
          fi
        fi
      else
        log "$SYSTEM mkfs failed"
      fi
    fi
    detach_ext4
    stop_system
  fi

  # Issue 24's workloads, each on a new export: the collector's (log layout only), and opening
  # an export of many 4K blocks (both layouts).
  if want gc; then
    case "$SYSTEM" in *-log) run_gc "$sid-gc" ;; esac
  fi
  if want open; then
    case "$SYSTEM" in
      s3block-*-4K|s3block-*-4K-log|base-*-4K|base-*-4K-log) run_open "$sid-open" ;;
    esac
  fi
  # Snapshots and clones of log exports (this build's admin command and plugin only).
  if want snapshot; then
    case "$SYSTEM" in s3block-*-log) run_snapshot "$sid-snap" ;; esac
  fi
  printf '%s\t%s\t_rss\t%s\n' "$REP" "$SYSTEM" "$PEAK_RSS" >>"$RAW"
  log "$SYSTEM peak RSS $((PEAK_RSS / 1024)) MiB"
}

# gc: random 4 KiB writes of twice the export's size on a new export, at uniformly random offsets
# (--norandommap: fio's random map would write every block once per pass, so that the second pass
# left every segment of the first wholly dead and the collector nothing to copy), a flush, and
# the wait until the collector is done. Then the collector's write amplification, from the
# stats file's log_client_bytes and log_gc_bytes, and the space stored over the live data. Rows:
# the fio row "gc", and "_gc CLIENT_BYTES GC_BYTES STORED_BYTES LIVE_BYTES SETTLE_S OBJECTS DONE"
# (na where a figure is missing; DONE 0 if the collector was still at work after GC_SETTLE).
run_gc() {
  local sid=$1 stats=$WORK/stats.json cur prev='' t0 settled=0 client gc stored='' objects live
  local step=2 wa space b n elapsed done=1
  rm -f "$stats"
  EXTRA_PARAMS=(stats-file="$stats")
  start_system "$SYSTEM" "$sid" "$SIZE_B" || {
    EXTRA_PARAMS=(); log "$SYSTEM did not start"; stop_system; return 1
  }
  EXTRA_PARAMS=()
  # A client stays connected until the end: an export without one is closed after idle-timeout=,
  # and with it would go its collector and its counters in the stats file.
  "$NBD_PY" -m nbd -u "$URI" -c 'import time; time.sleep(86400)' </dev/null \
    >>"$WORK/logs/gc-client.log" 2>&1 &
  CLIENT_PIDS+=($!)
  if ! FIO_CAP=$GC_CAP fio_run gc --rw=randwrite --bs=4K --iodepth=32 --size="$SIZE_B" \
    --io_size=$((SIZE_B * 2)) --norandommap --end_fsync=1; then
    stop_clients
    stop_system
    return 1
  fi
  # The collector works in the background: done once its counters have not moved and the space
  # stored has not reached a new low for GC_QUIET seconds (or after GC_SETTLE). The space is
  # taken at its low: a pass holds the old and the new copies for a moment, until the
  # checkpoint after it deletes the old. SETTLE_S is when the last change was seen.
  t0=$(now)
  while :; do
    cur=$(python3 "$BENCH_DIR/report.py" logstats "$stats")
    read -r b n <<<"$(stored_bytes "$sid")"
    if [ -n "$b" ] && { [ -z "$stored" ] || [ "$b" -lt "$stored" ]; }; then
      stored=$b objects=$n settled=$(since "$t0")
    fi
    [ "$cur" != "$prev" ] && prev=$cur settled=$(since "$t0")
    elapsed=$(since "$t0")
    awk -v t="$elapsed" -v c="$settled" -v q="$GC_QUIET" 'BEGIN { exit !(t - c >= q) }' && break
    if awk -v t="$elapsed" -v m="$GC_SETTLE" 'BEGIN { exit !(t >= m) }'; then
      log "$SYSTEM gc: still changing after ${GC_SETTLE}s; measured as it is"
      done=0
      break
    fi
    sleep "$step"
  done
  read -r client gc <<<"$cur"
  live=$(live_bytes "$sid")
  [ -n "$live" ] || { live=na; log "$SYSTEM gc: the admin command gave no blocks stored"; }
  stop_clients
  stop_system
  printf '%s\t%s\t_gc\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$REP" "$SYSTEM" "${client:-na}" \
    "${gc:-na}" "${stored:-na}" "$live" "$settled" "${objects:-na}" "$done" >>"$RAW"
  wa=$(awk -v c="$client" -v g="$gc" 'BEGIN {
    if (c ~ /^[0-9]+$/ && g ~ /^[0-9]+$/ && c > 0) printf "%.2f", (c + g) / c; else print "n/a" }')
  space=$(awk -v s="$stored" -v l="$live" 'BEGIN {
    if (l ~ /^[0-9]+$/ && l > 0)
      printf "%.1f MiB over %.1f MiB live (%.2fx)", s / 1048576, l / 1048576, s / l
    else printf "%.1f MiB, live data n/a", s / 1048576 }')
  log "$SYSTEM gc: write amplification $wa; stored $space in ${objects:-?} objects;" \
    "settled ${settled}s after the flush"
}

# open: OPEN_BLOCKS 4K blocks written in order through NBD and flushed on a new export, the server
# stopped and the page cache dropped; then the time from nbdkit's start to a client's first 4 KiB
# read. The reader (report.py firstread) is started and ready first, and connects as soon as it
# can. Rows: the "open" row (seconds, and the S3 requests of opening), and "_open BLOCKS FILL_S".
run_open() {
  local sid=$1 bs=4096 t0 t1 fill_s written cpu0 reader secs i
  local ready=$WORK/firstread.ready out=$WORK/firstread.out
  # The largest request up to 1 MiB that divides the export: fio would leave out a partial one.
  while [ $((bs * 2)) -le 1048576 ] && [ $((OPEN_B % (bs * 2))) -eq 0 ]; do bs=$((bs * 2)); done
  start_system "$SYSTEM" "$sid" "$OPEN_B" || { log "$SYSTEM did not start"; stop_system; return 1; }
  t0=$(now)
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs="$bs" --iodepth=8 --size="$OPEN_B" \
    --end_fsync=1 --runtime=7200 --output-format=json \
    --output="$WORK/fio/$REP-$SYSTEM-open-fill.json" >/dev/null 2>&1
  fill_s=$(since "$t0")
  durable_wait >/dev/null
  written=$(python3 "$BENCH_DIR/report.py" written "$WORK/fio/$REP-$SYSTEM-open-fill.json" \
    2>/dev/null || echo 0)
  stop_system
  if [ "$written" -lt "$OPEN_B" ]; then
    log "$SYSTEM open: filling $OPEN_BLOCKS blocks failed ($written bytes written)"
    return 1
  fi
  drop_caches
  rm -f "$ready" "$out"
  "$NBD_PY" "$BENCH_DIR/report.py" firstread "$URI" "$ready" 600 >"$out" \
    2>>"$WORK/logs/firstread.log" &
  reader=$!
  CLIENT_PIDS+=("$reader")
  for ((i = 0; i < 300; i++)); do [ -e "$ready" ] && break; sleep 0.1; done
  s3_requests >/dev/null
  cpu0=$(s3_cpu)
  START_NOWAIT=1
  t0=$(now)
  start_system "$SYSTEM" "$sid" "$OPEN_B"
  START_NOWAIT=0
  # A server that exits without serving would leave the reader trying until its timeout.
  while alive "$reader"; do
    alive "${SERVER_PIDS[0]}" || { kill "$reader" 2>/dev/null; break; }
    sleep 0.1
  done
  wait "$reader"
  CLIENT_PIDS=()
  t1=$(cat "$out" 2>/dev/null)
  if [ -z "$t1" ]; then
    log "$SYSTEM open: no read: $(tail -1 "$WORK/logs/firstread.log")"
    stop_system
    return 1
  fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  record open "$secs" 0.004 0 0 0 0 0 0 "$cpu0"
  printf '%s\t%s\t_open\t%s\t%s\n' "$REP" "$SYSTEM" "$OPEN_BLOCKS" "$fill_s" >>"$RAW"
  log "$SYSTEM open: first read $secs s after nbdkit's start, $OPEN_BLOCKS blocks stored" \
    "(written in $fill_s s)"
  stop_system
}

# snapshot: for each size of BENCH_SNAP_SIZES, a new log export filled with data by `s3block
# import` of nbdkit's pattern plugin through nbdfuse (every block written, none of them zero, and
# no image on disk). Then BENCH_SNAP_RUNS rounds of commands, each timed with the S3 requests and
# the S3 server's CPU it cost: with a server holding the export (control=, a client connected)
# `s3block snapshot NAME s1`, `s3block clone NAME@s1 clone` and `s3block delete NAME@s2` (a second
# snapshot, with no clone); with the server stopped, `s3block snapshot NAME s3` and `s3block
# rollback NAME@s1`; then, untimed, the clone and the snapshots deleted for the next round. In the
# first round of the first size, before the server-stopped commands: cold sequential reads
# (nbdcopy to null:, a fresh server, the page cache dropped) of the whole parent and of the whole
# clone, unwritten, so that every block comes from the snapshot, BENCH_SNAP_RUNS of each,
# alternating. Rows: "OP/SIZE" for each command (OP: snapshot, clone, delete, snapshot-stopped,
# rollback), "read-parent/SIZE" and "read-clone/SIZE"; "_snapfill SIZE BYTES SECONDS"; and on the
# local store, which has no requests to count, "_snapfiles OP/SIZE WRITTEN REMOVED": the store's
# files that the command left new or changed, and those it removed.
SNAP_CLONE=clone

# The admin command on store STORE_ID of the current system: admin STORE_ID ARGS...
admin() {
  local sid=$1
  shift
  case "$SYSTEM" in
    *-local-*) "$ADMIN" --store "$WORK/stores/$sid" "$@" ;;
    *) AWS_SECRET_ACCESS_KEY=$SK "$ADMIN" --store "s3://$BUCKET/$RUNID/$sid" \
         --endpoint "$ENDPOINT" --access-key "$AK" "$@" ;;
  esac
}

# Every file of a local store: "PATH SIZE MTIME" lines, sorted.
store_files() {
  find "$WORK/stores/$1" -type f -printf '%P\t%s\t%T@\n' 2>/dev/null | LC_ALL=C sort
}

run_snapshot() {
  local base=$1 label bs first=1 t0
  t0=$(now)
  bs=${SYSTEM%-log}
  bs=${bs##*-}
  mkdir -p "$WORK/stores"
  for label in $SNAP_SIZES; do
    if snap_fill "$base-$label" "$label" "$bs"; then
      snap_commands "$base-$label" "$label" "$first"
    fi
    first=0
    # Up to 16 GiB on the local disk: gone before the next size.
    case "$SYSTEM" in *-local-*) rm -rf "${WORK:?}/stores/$base-$label" ;; esac
  done
  log "$SYSTEM snapshot: the workload took $(since "$t0") s"
}

# snap_fill STORE_ID SIZE BLOCK_SIZE: the export, SIZE of data, imported.
snap_fill() {
  local sid=$1 label=$2 bs=$3 b t0 secs rc i
  b=$(bytes "$label")
  PATTERN_DIR=$WORK/pattern
  mkdir -p "$PATTERN_DIR"
  nbdfuse -r "$PATTERN_DIR" [ nbdkit pattern size="$b" ] </dev/null \
    >>"$WORK/logs/pattern.log" 2>&1 &
  PATTERN_PID=$!
  for ((i = 0; i < 300; i++)); do [ -e "$PATTERN_DIR/nbd" ] && break; sleep 0.1; done
  if [ ! -e "$PATTERN_DIR/nbd" ]; then
    log "$SYSTEM snapshot: nbdfuse of nbdkit's pattern plugin did not start"
    detach_pattern
    return 1
  fi
  t0=$(now)
  admin "$sid" import "$EXPORT" "$PATTERN_DIR/nbd" --layout log --block-size "$bs" \
    >>"$WORK/logs/snapshot.log" 2>&1
  rc=$?
  secs=$(since "$t0")
  detach_pattern
  if [ "$rc" != 0 ]; then
    log "$SYSTEM snapshot: filling $label failed (exit $rc): $(tail -1 "$WORK/logs/snapshot.log")"
    return 1
  fi
  printf '%s\t%s\t_snapfill\t%s\t%s\t%s\n' "$REP" "$SYSTEM" "$label" "$b" "$secs" >>"$RAW"
  log "$SYSTEM snapshot: $label imported in $secs s" \
    "($(awk -v b="$b" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }') MB/s)"
}

# snap_op WORKLOAD STORE_ID ARGS...: one admin command, timed and counted.
snap_op() {
  local wl=$1 sid=$2 cpu0 t0 secs rc before='' after written removed what
  shift 2
  case "$SYSTEM" in *-local-*) before=$(store_files "$sid") ;; esac
  s3_requests >/dev/null
  cpu0=$(s3_cpu)
  t0=$(now)
  admin "$sid" "$@" >>"$WORK/logs/snapshot.log" 2>&1
  rc=$?
  secs=$(since "$t0")
  if [ "$rc" != 0 ]; then
    log "$SYSTEM $wl: s3block $* failed (exit $rc): $(tail -1 "$WORK/logs/snapshot.log")"
    s3_requests >/dev/null
    return 1
  fi
  record "$wl" "$secs" 0 0 0 0 0 0 0 "$cpu0"
  case "$SYSTEM" in
    *-local-*)
      after=$(store_files "$sid")
      written=$(LC_ALL=C comm -13 <(echo "$before") <(echo "$after") | grep -c .)
      removed=$(LC_ALL=C comm -23 <(cut -f1 <<<"$before") <(cut -f1 <<<"$after") | grep -c .)
      printf '%s\t%s\t_snapfiles\t%s\t%s\t%s\n' "$REP" "$SYSTEM" "$wl" "$written" "$removed" \
        >>"$RAW"
      what="$written files written, $removed removed" ;;
    *)
      what=$(tail -n1 "$RAW" | awk -F'\t' '{ printf "%d requests (GET %d, PUT %d, HEAD %d, " \
        "DELETE %d, POST %d)", $11 + $12 + $13 + $14 + $15, $11, $12, $13, $14, $15 }') ;;
  esac
  log "$SYSTEM $wl: $secs s, $what"
}

# snap_serve STORE_ID BYTES: a server holding the export, reachable by s3block (control=).
snap_serve() {
  local sid=$1 b=$2 held='' i
  EXTRA_PARAMS=(control="$WORK/control.sock")
  start_system "$SYSTEM" "$sid" "$b" || {
    EXTRA_PARAMS=(); log "$SYSTEM did not start"; stop_system; return 1
  }
  EXTRA_PARAMS=()
  # A client connected, so that the server opens the export and holds it (an export with no
  # client is closed after idle-timeout=, and its lease given up).
  "$NBD_PY" -m nbd -u "nbd+unix:///$EXPORT?socket=$SOCK" -c 'import time; time.sleep(86400)' \
    </dev/null >>"$WORK/logs/snapshot-client.log" 2>&1 &
  CLIENT_PIDS+=($!)
  for ((i = 0; i < 150; i++)); do
    held=$(admin "$sid" info "$EXPORT" --json 2>/dev/null | python3 -c 'import json, sys
print(json.load(sys.stdin)["lease_holder"] or "")' 2>/dev/null)
    [ -n "$held" ] && return 0
    sleep 0.2
  done
  log "$SYSTEM snapshot: the server did not open $EXPORT"
  stop_clients
  stop_system
  return 1
}

# snap_commands STORE_ID SIZE FIRST: the rounds of commands on the filled export, and (FIRST=1)
# the cold reads.
snap_commands() {
  local sid=$1 label=$2 first=$3 b r i
  b=$(bytes "$label")
  for ((r = 1; r <= SNAP_RUNS; r++)); do
    snap_serve "$sid" "$b" || return 1
    snap_op "snapshot/$label" "$sid" snapshot "$EXPORT" s1
    snap_op "clone/$label" "$sid" clone "$EXPORT@s1" "$SNAP_CLONE"
    admin "$sid" snapshot "$EXPORT" s2 >>"$WORK/logs/snapshot.log" 2>&1 \
      || log "$SYSTEM snapshot: taking s2 failed: $(tail -1 "$WORK/logs/snapshot.log")"
    snap_op "delete/$label" "$sid" delete "$EXPORT@s2" --yes
    stop_clients
    stop_system
    if [ "$first" = 1 ] && [ "$r" = 1 ]; then
      for ((i = 0; i < SNAP_RUNS; i++)); do
        snap_read "read-parent/$label" "$sid" "$b" "$EXPORT"
        snap_read "read-clone/$label" "$sid" "$b" "$SNAP_CLONE"
      done
    fi
    snap_op "snapshot-stopped/$label" "$sid" snapshot "$EXPORT" s3
    snap_op "rollback/$label" "$sid" rollback "$EXPORT@s1"
    [ "$r" -lt "$SNAP_RUNS" ] || break
    # The next round starts from an export with no snapshot and no clone.
    if ! { admin "$sid" delete "$SNAP_CLONE" --yes && admin "$sid" delete "$EXPORT@s1" --yes \
      && admin "$sid" delete "$EXPORT@s3" --yes; } >>"$WORK/logs/snapshot.log" 2>&1; then
      log "$SYSTEM snapshot: clearing round $r failed: $(tail -1 "$WORK/logs/snapshot.log")"
      return 1
    fi
  done
}

# snap_read WORKLOAD STORE_ID BYTES NAME: a cold sequential read of export NAME, all of it, by
# nbdcopy (every byte read: --no-extents) from a server started for it, which has opened nothing
# before (its readiness is not probed by a client, which would open the default export).
snap_read() {
  local wl=$1 sid=$2 b=$3 name=$4 cpu0 t0 secs rc i
  drop_caches
  START_NOWAIT=1
  start_system "$SYSTEM" "$sid" "$b"
  START_NOWAIT=0
  for ((i = 0; i < 300; i++)); do [ -S "$SOCK" ] && break; sleep 0.1; done
  sleep 0.2  # the socket exists once bound: let nbdkit listen
  s3_requests >/dev/null
  cpu0=$(s3_cpu)
  t0=$(now)
  nbdcopy --no-extents "nbd+unix:///$name?socket=$SOCK" null: >>"$WORK/logs/snapshot.log" 2>&1
  rc=$?
  secs=$(since "$t0")
  stop_system
  if [ "$rc" != 0 ]; then
    log "$SYSTEM $wl: nbdcopy failed: $(tail -1 "$WORK/logs/snapshot.log")"
    s3_requests >/dev/null
    return 1
  fi
  record "$wl" "$secs" "$(awk -v b="$b" 'BEGIN { printf "%.3f", b / 1048576 }')" 0 0 \
    "$(awk -v b="$b" -v s="$secs" 'BEGIN { printf "%.2f", b / s / 1e6 }')" 0 0 0 "$cpu0"
  log "$SYSTEM $wl: $secs s, $(tail -n1 "$RAW" | cut -f8) MB/s"
}

# The raw S3 ceiling: parallel PUT then GET of block-sized objects by an efficient client.
CEIL_THREADS=${BENCH_CEILING_THREADS:-32}
CEIL_RUNS=0
run_ceiling() {
  local size=$1 count out cpu0 req put get
  CEIL_RUNS=$((CEIL_RUNS + 1))
  SYSTEM=raw-S3-$size
  local b
  b=$(bytes "$size")
  # Enough objects to keep the server busy for the time cap (twice the working set, at least
  # 2000, at most 100000); the phase stops at the cap.
  count=$(( SIZE_B * 2 / b ))
  [ "$count" -ge 2000 ] || count=2000
  [ "$count" -le 100000 ] || count=100000
  s3_requests >/dev/null
  cpu0=$(s3_cpu)
  out=$(AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "$CEILING" "$ENDPOINT" "$BUCKET" \
    "$RUNID/ceiling-$size-r$REP-$CEIL_RUNS" "$b" "$count" "$CEIL_THREADS" "$CAP" 2>>"$WORK/logs/ceiling.log")
  put=$(echo "$out" | sed -n 's/^put objects=\([0-9]*\) bytes=\([0-9]*\) seconds=\([0-9.]*\)/\1 \2 \3/p')
  get=$(echo "$out" | sed -n 's/^get objects=\([0-9]*\) bytes=\([0-9]*\) seconds=\([0-9.]*\)/\1 \2 \3/p')
  # The two phases share one request count and CPU figure; split by phase below.
  read -r pn pb ps <<<"$put"
  read -r gn gb gs <<<"$get"
  if [ -z "${ps:-}" ] || [ -z "${gs:-}" ]; then
    log "$SYSTEM failed: $(tail -2 "$WORK/logs/ceiling.log")"
    return 1
  fi
  req=$(s3_requests)
  local cpu1
  cpu1=$(s3_cpu)
  local cpu
  cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')
  read -r rg rp _ <<<"$req"
  printf '%s\t%s\tput\t%s\t0\t%s\t%s\t%s\t0\t0\t0\t%s\t0\t0\t0\t%s\t%s\n' "$REP" "$SYSTEM" "$ps" \
    "$(awk -v b="$pb" 'BEGIN { printf "%.3f", b / 1048576 }')" \
    "$(awk -v n="$pn" -v s="$ps" 'BEGIN { printf "%.1f", n / s }')" \
    "$(awk -v b="$pb" -v s="$ps" 'BEGIN { printf "%.2f", b / s / 1e6 }')" "$rp" "$cpu" \
    "$(awk -v n="$pn" -v c="$count" 'BEGIN { print (n < c) ? 1 : 0 }')" >>"$RAW"
  printf '%s\t%s\tget\t%s\t%s\t0\t%s\t%s\t0\t0\t%s\t0\t0\t0\t0\t%s\t%s\n' "$REP" "$SYSTEM" "$gs" \
    "$(awk -v b="$gb" 'BEGIN { printf "%.3f", b / 1048576 }')" \
    "$(awk -v n="$gn" -v s="$gs" 'BEGIN { printf "%.1f", n / s }')" \
    "$(awk -v b="$gb" -v s="$gs" 'BEGIN { printf "%.2f", b / s / 1e6 }')" "$rg" "$cpu" \
    "$(awk -v n="$gn" -v c="$pn" 'BEGIN { print (n < c) ? 1 : 0 }')" >>"$RAW"
  log "$SYSTEM: PUT $pn in $ps s, GET $gn in $gs s"
}

# ---------------------------------------------------------------------------------------------
log "systems: $SYSTEMS"
log "workloads: $WORKLOADS; working set $SIZE, cache $CACHE, cap ${CAP}s, repeats $REPEATS"
make_tree
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((REP = 1; REP <= REPEATS; REP++)); do
  # The ceiling before and after the systems: the server and the machine's other work change
  # during a run, and the report keeps the best (a ceiling measured in a slow moment is none).
  for size in 4K 64K 1M; do run_ceiling "$size"; done
  for s in $SYSTEMS; do run_system "$s"; done
  for size in 4K 64K 1M; do run_ceiling "$size"; done
done
elapsed=$(( $(date +%s) - started ))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
log "measurements took ${elapsed}s"

# The S3 server's memory after the run (its daemons' peak RSS).
rgw_rss=$(for p in $RGW_PIDS; do awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{ t += $1 } END { print t + 0 }')

mkdir -p "$OUT"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "memory=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$REPO" diff --quiet HEAD -- src plugin include CMakeLists.txt 2>/dev/null \
    || commit="$commit with uncommitted changes to the sources"
  echo "commit=$commit"
  echo "s3server=Ceph RGW $(radosgw --version 2>/dev/null | awk '{print $3}'), bluestore OSD, 127.0.0.1"
  echo "s3server_rss_mib=$((rgw_rss / 1024))"
  echo "versions=nbdkit $(nbdkit --version | awk '{print $2}'), s3backer $(dpkg-query -W -f='${Version}' s3backer), fio $(fio --version | sed 's/fio-//')"
  echo "quick=$QUICK"
  echo "repeats=$REPEATS"
  echo "size=$SIZE"
  echo "cache=$CACHE"
  echo "cap=$CAP"
  echo "warm_secs=$WARM_SECS"
  echo "ext4_size=$EXT4_SIZE"
  echo "files=$FILES"
  echo "gc_cap=$GC_CAP"
  echo "gc_quiet=$GC_QUIET"
  echo "gc_settle=$GC_SETTLE"
  echo "open_blocks=$OPEN_BLOCKS"
  echo "snap_sizes=$SNAP_SIZES"
  echo "snap_runs=$SNAP_RUNS"
  echo "tree_mib=$(du -sm "$WORK/tree" | awk '{print $1}')"
  echo "ceiling_threads=$CEIL_THREADS"
  echo "elapsed_s=$elapsed"
  echo "load=$load_start at the start, $load_end at the end"
} >"$WORK/meta.txt"
cp "$RAW" "$OUT/raw.tsv"
python3 "$BENCH_DIR/report.py" report "$RAW" "$WORK/meta.txt" "$OUT" || die "report failed"
log "results in $OUT"
