#!/bin/bash
# The admin command respects the lease of a running server: delete, verify and export of an
# export that nbdkit serves are refused (exit 4) and name the server's pid (so does info, on the
# local store). On S3, also a create and a delete that complete while a server takes the export's
# lease (held for that by tests/faultproxy/faultproxy.py): the server serves what s3block left,
# never its stale view of the export. With log: the exports s3block makes are log exports, and gc
# of the served one is refused too, naming the server.
#
#   tests/scripts/admin_cli_served.sh local [blocks|log]
#   tests/scripts/admin_cli_served.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="admin_cli_served[$mode${2:+,$2}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

import_disk
serve
# A client reads it all: the server opens the export (and takes its lease) and keeps it open.
nbdcopy "nbd+unix:///disk?socket=$sock" "$work/read.img"
cmp "$img" "$work/read.img" || die "the image read through nbdkit differs"
log "the lease of the running server is respected"
expect_exit 4 "$admin" "${cli_store[@]}" delete disk --yes
grep -q "nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "delete did not name the holder"; }
if [ "$mode" = local ]; then
  s3b info disk | grep -q "served by:       nbdkit pid $nbdkit_pid" || die "info does not show the holder"
fi
# Reading all of an export that a server may change meanwhile would give a torn image, or
# blocks trimmed after the listing reported as damage: both are refused while it is served.
expect_exit 4 "$admin" "${cli_store[@]}" verify disk
grep -q "refusing to verify it while it changes.*nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "verify of a served export was not refused"; }
expect_exit 4 "$admin" "${cli_store[@]}" export disk "$work/served.img"
grep -q "refusing to export it while it changes.*nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "export of a served export was not refused"; }
if [ "$layout" = log ]; then
  # The server's own collector works on it: a pass by hand would be a second writer.
  expect_exit 4 "$admin" "${cli_store[@]}" gc disk
  grep -q "refusing to collect its garbage.*nbdkit pid $nbdkit_pid" "$work/err" || { cat "$work/err"; die "gc of a served export was not refused"; }
fi
stop_nbdkit
s3b delete disk --yes >/dev/null 2>&1

if [ "$mode" = s3 ]; then
  # Between the server's first read of an export's metadata and its lease, an s3block create or
  # delete completes: the server's PUT of the lease is held by tests/faultproxy/faultproxy.py
  # (once; the server sends it again after request-timeout=10) while s3block, straight to S3,
  # runs. The server must serve what s3block left, never its stale view of the export.
  log "create and delete while a server takes the export's lease"
  start_faultproxy
  stalls() { ctl stats | $py -c "import json,sys; print(json.load(sys.stdin)['faults'].get('stall', 0))"; }
  start_nbdkit "$plugin" "store=$store" "endpoint=http://127.0.0.1:$proxy_port" \
    "access-key=$S3BLOCK_TEST_S3_ACCESS_KEY" "secret-key=$S3BLOCK_TEST_S3_SECRET_KEY" \
    request-timeout=10 size=16M
  # race NAME CLIENT-STATEMENTS ADMIN-ARGS...: a client opens NAME (h) and runs the statements;
  # the admin command runs once the server's lease PUT for NAME is held.
  race() {
    local name=$1 stmts=$2 before i
    shift 2
    before=$(stalls)
    ctl "set?kinds=stall&rate=1&stall=30&methods=PUT&paths=/exports/$name/lease&count=1" >/dev/null
    $py -c "import nbd
h = nbd.NBD()
h.connect_uri('nbd+unix:///$name?socket=$sock')
$stmts
h.shutdown()" >"$work/race.out" 2>&1 &
    local client=$!
    for i in $(seq 1 200); do [ "$(stalls)" -gt "$before" ] && break; sleep 0.05; done
    [ "$(stalls)" -gt "$before" ] || die "the server's lease PUT for $name never reached the proxy"
    s3b "$@" >"$work/race.admin" 2>&1 || { cat "$work/race.admin"; die "'$*' failed while the server waited"; }
    wait "$client" || { cat "$work/race.out"; die "the client of $name failed"; }
  }
  race created "print(h.get_size())" create created --size 8M --block-size 64K "${layout_opts[@]}"
  [ "$(cat "$work/race.out")" = 8388608 ] ||
    die "the server served 'created' with size $(cat "$work/race.out"), not the 8M s3block created"
  s3b info created >"$work/info.out"
  grep -q "block size:      65536" "$work/info.out" && grep -q "^layout:          $layout$" "$work/info.out" ||
    { cat "$work/info.out"; die "the server overwrote the metadata s3block created"; }

  s3b create deleted --size 4M --block-size 64K "${layout_opts[@]}" >/dev/null
  race deleted "h.pwrite(b'd' * 4096, 8192); h.flush()" delete deleted --yes
  s3b info deleted >"$work/info.out" 2>&1 || { cat "$work/info.out"; die "info of 'deleted'"; }
  grep -q "block size:      4096" "$work/info.out" ||
    { cat "$work/info.out"; die "the server wrote into 'deleted' without recording it anew"; }
  stop_nbdkit
  stop_faultproxy
  s3b export deleted "$work/deleted.img" >/dev/null 2>&1
  cmp -n 4096 -i 0:8192 <(head -c 4096 /dev/zero | tr '\0' d) "$work/deleted.img" ||
    die "the block written to 'deleted' does not read back"
  for e in created deleted; do s3b delete "$e" --yes >/dev/null 2>&1; done
fi
log "all checks passed"
