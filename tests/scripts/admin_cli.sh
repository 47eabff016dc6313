#!/bin/bash
# The admin command, s3block, end to end on one store: every subcommand, an image imported and
# read back through a real nbdkit byte for byte, the lease of a running server respected, damage
# made behind the store's back found by verify, and an interrupted import left unserved. On S3,
# also a create and a delete that complete while a server takes the export's lease (held for
# that by tests/faultproxy/faultproxy.py).
#
#   tests/scripts/admin_cli.sh local
#   tests/scripts/admin_cli.sh s3        (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
tool=$build/s3block
plugin=$build/nbdkit-s3block-plugin.so
mode=${1:-local}

log() { echo "admin_cli[$mode]: $(date +%H:%M:%S) $*"; }
die() { echo "admin_cli[$mode]: FAILED: $*" >&2; exit 1; }
[ -x "$tool" ] || die "no $tool (build first)"
[ -f "$plugin" ] || die "no $plugin (build first)"

work=$(mktemp -d /tmp/s3block-admin.XXXXXX)
nbdkit_pid=
proxy_pid=
cleanup() {
  if [ -n "$nbdkit_pid" ]; then kill "$nbdkit_pid" 2>/dev/null || true; wait "$nbdkit_pid" 2>/dev/null || true; fi
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

case "$mode" in
local)
  store="$work/store"
  cli_store=(--store "$store")
  plugin_store=("store=$store")
  ;;
s3)
  for v in ENDPOINT BUCKET ACCESS_KEY SECRET_KEY; do
    n=S3BLOCK_TEST_S3_$v
    [ -n "${!n:-}" ] || die "$n is not set"
  done
  store="s3://$S3BLOCK_TEST_S3_BUCKET/admin-$(date +%s)-$$"
  export AWS_SECRET_ACCESS_KEY=$S3BLOCK_TEST_S3_SECRET_KEY
  cli_store=(--store "$store" --endpoint "$S3BLOCK_TEST_S3_ENDPOINT" --access-key "$S3BLOCK_TEST_S3_ACCESS_KEY")
  plugin_store=("store=$store" "endpoint=$S3BLOCK_TEST_S3_ENDPOINT"
                "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY")
  ;;
*) die "usage: $0 local|s3" ;;
esac

s3b() { "$tool" "${cli_store[@]}" "$@"; }

# expect_exit CODE COMMAND...: runs the command, which must exit with CODE; its stderr is kept in
# $work/err for the caller to inspect.
expect_exit() {
  local want=$1 rc=0
  shift
  "$@" >"$work/out" 2>"$work/err" </dev/null || rc=$?
  [ "$rc" = "$want" ] || { cat "$work/out" "$work/err" >&2; die "'$*' exited $rc, expected $want"; }
}

start_nbdkit() {
  rm -f "$work/sock"
  nbdkit -f -U "$work/sock" "$plugin" "${plugin_store[@]}" "$@" 2>"$work/nbdkit.log" &
  nbdkit_pid=$!
  for _ in $(seq 1 100); do [ -S "$work/sock" ] && return 0; sleep 0.1; done
  cat "$work/nbdkit.log" >&2
  die "nbdkit did not start"
}
stop_nbdkit() {
  kill "$nbdkit_pid"
  wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
}

log "--help for every subcommand"
for c in create list info resize delete copy import export verify stats; do
  "$tool" "$c" --help | grep -q "s3block $c" || die "$c --help"
done
expect_exit 2 "$tool" "${cli_store[@]}" frobnicate
expect_exit 2 "$tool" "${cli_store[@]}" create x --size banana
expect_exit 2 "$tool" "${cli_store[@]}" --secret-key oops list
grep -q "ps" "$work/err" || die "--secret-key refusal does not say why"

log "create, list, info"
s3b create empty --size 64M --block-size 64K >/dev/null
s3b list --json >"$work/list.json"
grep -q '"name": "empty", "size": 67108864, "block_size": 65536' "$work/list.json" || { cat "$work/list.json"; die "list --json"; }
s3b info empty | grep -q "block size:      65536" || die "info"
expect_exit 1 "$tool" "${cli_store[@]}" create empty
grep -q "already exists" "$work/err" || die "create over an existing export"
expect_exit 1 "$tool" "${cli_store[@]}" create "../escape"
grep -q "export name" "$work/err" || die "hostile name message"
# A name in UTF-8 is shown as it is; one with an invisible direction override is escaped.
s3b create "naïve-日本" --size 1M >/dev/null
s3b list | grep -q "^naïve-日本 " || { s3b list; die "list does not show a UTF-8 name as it is"; }
s3b info "naïve-日本" | grep -q "naïve-日本" || die "info does not show a UTF-8 name as it is"
s3b delete "naïve-日本" --yes >/dev/null
expect_exit 1 "$tool" "${cli_store[@]}" info "$(printf 'rlo-\342\200\256-x')"
grep -q 'rlo-\\xe2\\x80\\xae-x' "$work/err" || { cat "$work/err"; die "a direction override in a name is not escaped"; }

log "import a sparse image and read it back through nbdkit"
img=$work/disk.img
truncate -s 40M "$img"
head -c 3M /dev/urandom | dd of="$img" bs=1M seek=0 conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=20 conv=notrunc status=none
head -c 12345 /dev/urandom | dd of="$img" bs=1 seek=$((40 * 1024 * 1024 - 12345)) conv=notrunc status=none
s3b import disk "$img" >/dev/null 2>&1
s3b info disk --json >"$work/info.json"
blocks=$(sed -n 's/.*"blocks_stored": \([0-9]*\).*/\1/p' "$work/info.json")
# 4 MiB + 12345 bytes of data at 4 KiB blocks: 1024 + 3 or 4 blocks, never the 10240 of the image.
[ "$blocks" -ge 1027 ] && [ "$blocks" -le 1029 ] || die "import stored $blocks blocks"
# The bytes shown are what they are: the blocks stored times the block size, named so.
allocated=$(sed -n 's/.*"allocated_bytes": \([0-9]*\).*/\1/p' "$work/info.json")
[ "$allocated" = $((blocks * 4096)) ] || die "allocated_bytes is '$allocated', not $blocks x 4096"
s3b list | head -n 1 | grep -q ' ALLOCATED ' || { s3b list; die "list does not name its ALLOCATED column"; }
s3b list | grep -q "^disk .* $((blocks * 4096)) " || { s3b list; die "list does not show disk's allocated bytes"; }
s3b info disk | grep -q '^allocated: .*(blocks stored x block size)' || { s3b info disk; die "info does not say what its bytes are"; }
start_nbdkit "stats-file=$work/stats.json"
nbdcopy "nbd+unix:///disk?socket=$work/sock" "$work/read.img"
cmp "$img" "$work/read.img" || die "the image read through nbdkit differs"

log "stats of the running server"
# The server rewrites the file about once a second; wait for one that counts the reads above.
for _ in $(seq 1 100); do
  "$tool" stats "$work/stats.json" >"$work/stats.txt" 2>/dev/null && grep -q '^disk store_reads [1-9]' "$work/stats.txt" && break
  sleep 0.1
done
grep -q '^disk store_reads [1-9]' "$work/stats.txt" || { cat "$work/stats.txt"; die "stats do not show the reads"; }
"$tool" stats "$work/stats.json" --json | grep -q '"disk": {' || die "stats --json"

log "the lease of the running server is respected"
expect_exit 4 "$tool" "${cli_store[@]}" delete disk --yes
grep -q "nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "delete did not name the holder"; }
if [ "$mode" = local ]; then
  s3b info disk | grep -q "served by:       nbdkit pid $nbdkit_pid" || die "info does not show the holder"
fi
# Reading all of an export that a server may change meanwhile would give a torn image, or
# blocks trimmed after the listing reported as damage: both are refused while it is served.
expect_exit 4 "$tool" "${cli_store[@]}" verify disk
grep -q "refusing to verify it while it changes.*nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "verify of a served export was not refused"; }
expect_exit 4 "$tool" "${cli_store[@]}" export disk "$work/served.img"
grep -q "refusing to export it while it changes.*nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "export of a served export was not refused"; }
stop_nbdkit

log "export is sparse and exact"
s3b export disk "$work/out.img" >/dev/null 2>&1
cmp "$img" "$work/out.img" || die "export differs from the image"
used=$(du -k "$work/out.img" | cut -f1)
[ "$used" -lt 10000 ] || die "export wrote $used KiB: holes were filled"
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null; then
  log "export onto a block device that held other data"
  # The device is larger than the export and full of 0xAA: the export's blocks that are not
  # stored must become zeros on it, and what lies past the export must stay.
  head -c 44M /dev/zero | tr '\0' '\252' >"$work/dev.img"
  loopdev=$(losetup --find --show "$work/dev.img")
  rc=0
  s3b export disk "$loopdev" >/dev/null 2>"$work/err" || rc=$?
  cmp -n $((40 * 1024 * 1024)) "$img" "$loopdev" || rc=10
  tail -c 4M "$work/dev.img" | tr -d '\252' | cmp -s - /dev/null || rc=11
  losetup -d "$loopdev"
  case $rc in
  0) ;;
  10) die "the block device does not hold the export" ;;
  11) die "export changed the block device past the export's end" ;;
  *) cat "$work/err" >&2; die "export onto a block device exited $rc" ;;
  esac
  # A device in use (mounted) is refused, as mkfs refuses it.
  loopdev=$(losetup --find --show "$work/dev.img")
  mkfs.ext4 -q -F "$loopdev" && mkdir -p "$work/mnt" && mount "$loopdev" "$work/mnt"
  rc=0
  s3b export disk "$loopdev" >/dev/null 2>"$work/err" || rc=$?
  umount "$work/mnt"
  losetup -d "$loopdev"
  [ "$rc" = 4 ] && grep -q "is in use" "$work/err" || { cat "$work/err"; die "export onto a mounted device exited $rc"; }
  truncate -s 39M "$work/dev.img"
  loopdev=$(losetup --find --show "$work/dev.img")
  rc=0
  s3b export disk "$loopdev" >/dev/null 2>"$work/err" || rc=$?
  losetup -d "$loopdev"
  [ "$rc" = 1 ] && grep -q "less than export" "$work/err" || { cat "$work/err"; die "export onto a smaller device exited $rc"; }
fi

log "copy"
s3b copy disk disk2 >/dev/null 2>&1
s3b export disk2 "$work/copy.img" >/dev/null 2>&1
cmp "$img" "$work/copy.img" || die "the copy differs"

log "resize"
expect_exit 2 "$tool" "${cli_store[@]}" resize disk2 1M
grep -q -- "--force" "$work/err" || die "shrink refusal does not mention --force"
s3b resize disk2 1M --force >/dev/null 2>&1
s3b resize disk2 2M >/dev/null 2>&1
s3b export disk2 "$work/small.img" >/dev/null 2>&1
cmp -n 1048576 "$img" "$work/small.img" || die "the first MiB changed in resize"
cmp -n 1048576 -i 1048576:0 "$work/small.img" /dev/zero || die "grown space is not zeros"

log "verify finds damage made behind its back"
s3b verify disk >/dev/null 2>&1 || die "verify of a sound export failed"
if [ "$mode" = local ]; then
  truncate -s 100 "$store/exports/disk/blocks/7"
else
  key="${store#s3://$S3BLOCK_TEST_S3_BUCKET/}/exports/disk/blocks/7"
  printf 'short' >"$work/short"
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $(sha256sum "$work/short" | cut -d' ' -f1)" -H "Content-Type: application/octet-stream" \
    -T "$work/short" -H "Expect:" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$key" >/dev/null 2>&1 \
  || curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $(sha256sum "$work/short" | cut -d' ' -f1)" -H "Content-Type: application/octet-stream" \
    -X PUT --data-binary @"$work/short" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$key" >/dev/null \
  || die "could not damage the block with curl"
fi
expect_exit 3 "$tool" "${cli_store[@]}" verify disk
grep -q "DAMAGED: block 7" "$work/out" || { cat "$work/out"; die "verify did not name block 7"; }
grep -qE "^[0-9]+ blocks checked, 1 problem$" "$work/out" || { cat "$work/out"; die "verify's summary does not count one problem"; }

log "an interrupted import is not served, and a re-run finishes it"
big=$work/big.img
head -c 200M /dev/urandom >"$big"
"$tool" "${cli_store[@]}" import big "$big" --threads 1 >"$work/imp.out" 2>&1 </dev/null &
imp=$!
# Interrupt once it has stored something (the export's metadata says incomplete by then).
for _ in $(seq 1 200); do
  s3b info big --json 2>/dev/null | grep -q '"blocks_stored": [1-9]' && break
  sleep 0.05
done
kill -INT "$imp"
rc=0
wait "$imp" || rc=$?
[ "$rc" = 130 ] || { cat "$work/imp.out"; die "interrupted import exited $rc, expected 130 (it must still be running when interrupted)"; }
s3b info big | grep -q "state:           incomplete" || die "interrupted import not marked incomplete"
start_nbdkit
if nbdinfo "nbd+unix:///big?socket=$work/sock" >/dev/null 2>&1; then die "an incomplete export was served"; fi
grep -q "incomplete" "$work/nbdkit.log" || die "nbdkit did not say why"
stop_nbdkit
# Exit 1, not 4: no server holds it, and waiting for one would never end.
for cmd in "export big $work/inc.out" "copy big big2" "resize big 2M"; do
  # shellcheck disable=SC2086
  expect_exit 1 s3b $cmd
  grep -q "is incomplete" "$work/err" || die "$cmd of an incomplete export does not say why"
done
s3b import big "$big" >/dev/null 2>&1
s3b export big "$work/big.out" >/dev/null 2>&1
cmp "$big" "$work/big.out" || die "the re-run import differs"

log "delete"
for e in disk disk2 big empty; do s3b delete "$e" --yes >/dev/null 2>&1; done
s3b list --json >"$work/list.json"
[ "$(cat "$work/list.json")" = "[]" ] || { cat "$work/list.json"; die "exports left after delete"; }
expect_exit 1 "$tool" "${cli_store[@]}" delete disk --yes
grep -q "does not exist" "$work/err" || die "deleting a missing export"

if [ "$mode" = s3 ]; then
  # Between the server's first read of an export's metadata and its lease, an s3block create or
  # delete completes: the server's PUT of the lease is held by tests/faultproxy/faultproxy.py
  # (once; the server sends it again after request-timeout=10) while s3block, straight to S3,
  # runs. The server must serve what s3block left, never its stale view of the export.
  log "create and delete while a server takes the export's lease"
  . "$here/testlib.sh"
  port=$(free_ports 2)
  ctl_port=$((port + 1))
  python3 "$repo/tests/faultproxy/faultproxy.py" --listen "$port" --control "$ctl_port" \
    --upstream "$S3BLOCK_TEST_S3_ENDPOINT" --ready-file "$work/proxy.ready" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  wait_for_file "$work/proxy.ready" 20 || die "the proxy did not start"
  ctl() { curl -sf --max-time 10 "http://127.0.0.1:$ctl_port/$1"; }
  stalls() { ctl stats | python3 -c "import json,sys; print(json.load(sys.stdin)['faults'].get('stall', 0))"; }
  direct_store=("${plugin_store[@]}")
  plugin_store=("store=$store" "endpoint=http://127.0.0.1:$port"
                "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY")
  start_nbdkit request-timeout=10 size=16M
  plugin_store=("${direct_store[@]}")
  # race NAME CLIENT-STATEMENTS ADMIN-ARGS...: a client opens NAME (h) and runs the statements;
  # the admin command runs once the server's lease PUT for NAME is held.
  race() {
    local name=$1 stmts=$2 before i
    shift 2
    before=$(stalls)
    ctl "set?kinds=stall&rate=1&stall=30&methods=PUT&paths=/exports/$name/lease&count=1" >/dev/null
    /usr/bin/python3 -c "import nbd
h = nbd.NBD()
h.connect_uri('nbd+unix:///$name?socket=$work/sock')
$stmts
h.shutdown()" >"$work/race.out" 2>&1 &
    local client=$!
    for i in $(seq 1 200); do [ "$(stalls)" -gt "$before" ] && break; sleep 0.05; done
    [ "$(stalls)" -gt "$before" ] || die "the server's lease PUT for $name never reached the proxy"
    s3b "$@" >"$work/race.admin" 2>&1 || { cat "$work/race.admin"; die "'$*' failed while the server waited"; }
    wait "$client" || { cat "$work/race.out"; die "the client of $name failed"; }
  }
  race created "print(h.get_size())" create created --size 8M --block-size 64K
  [ "$(cat "$work/race.out")" = 8388608 ] ||
    die "the server served 'created' with size $(cat "$work/race.out"), not the 8M s3block created"
  s3b info created | grep -q "block size:      65536" ||
    { s3b info created; die "the server overwrote the metadata s3block created"; }

  s3b create deleted --size 4M --block-size 64K >/dev/null
  race deleted "h.pwrite(b'd' * 4096, 8192); h.flush()" delete deleted --yes
  s3b info deleted >"$work/info.out" 2>&1 || { cat "$work/info.out"; die "info of 'deleted'"; }
  grep -q "block size:      4096" "$work/info.out" ||
    { cat "$work/info.out"; die "the server wrote into 'deleted' without recording it anew"; }
  stop_nbdkit
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=
  s3b export deleted "$work/deleted.img" >/dev/null 2>&1
  cmp -n 4096 -i 0:8192 <(head -c 4096 /dev/zero | tr '\0' d) "$work/deleted.img" ||
    die "the block written to 'deleted' does not read back"
  for e in created deleted; do s3b delete "$e" --yes >/dev/null 2>&1; done
fi

log "all checks passed"
