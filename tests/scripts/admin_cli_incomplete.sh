#!/bin/bash
# An interrupted import: s3block import stopped by SIGINT once it has stored blocks exits 130 and
# leaves the export marked incomplete; nbdkit refuses to serve it and says why; export, copy and
# resize of it fail (exit 1, not 4: no server holds it) saying it is incomplete; and running the
# import again finishes it, byte for byte. With log: the import makes a log export, and the
# re-run, given no --layout, goes on in the layout the interrupted one recorded (and refuses to
# change it).
#
#   tests/scripts/admin_cli_incomplete.sh local [blocks|log]
#   tests/scripts/admin_cli_incomplete.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="admin_cli_incomplete[$mode${2:+,$2}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

log "an interrupted import is not served, and a re-run finishes it"
big=$work/big.img
# Large enough that the import is still running when the first blocks it stored show: a log
# export stores 8 MiB segments at the bucket's bandwidth, far faster than a block at a time.
if [ "$layout" = log ]; then head -c 1G /dev/urandom >"$big"; else head -c 200M /dev/urandom >"$big"; fi
"$admin" "${cli_store[@]}" import big "$big" --threads 1 "${layout_opts[@]}" >"$work/imp.out" 2>&1 </dev/null &
imp=$!
end_at_exit "$imp"
# Interrupt once it has stored something (the export's metadata says incomplete by then).
for _ in $(seq 1 200); do
  s3b info big --json 2>/dev/null | grep -q '"blocks_stored": [1-9]' && break
  sleep 0.05
done
kill -INT "$imp"
rc=0
wait "$imp" || rc=$?
[ "$rc" = 130 ] || { cat "$work/imp.out"; die "interrupted import exited $rc, expected 130 (it must still be running when interrupted)"; }
s3b info big >"$work/info.txt"
grep -q "state:           incomplete" "$work/info.txt" || die "interrupted import not marked incomplete"
grep -q "^layout:          $layout$" "$work/info.txt" || { cat "$work/info.txt"; die "the interrupted import's layout"; }
serve
if nbdinfo "nbd+unix:///big?socket=$sock" >/dev/null 2>&1; then die "an incomplete export was served"; fi
grep -q "incomplete" "$work/nbdkit.log" || die "nbdkit did not say why"
stop_nbdkit
# Exit 1, not 4: no server holds it, and waiting for one would never end.
for cmd in "export big $work/inc.out" "copy big big2" "resize big 2M"; do
  # shellcheck disable=SC2086
  expect_exit 1 s3b $cmd
  grep -q "is incomplete" "$work/err" || die "$cmd of an incomplete export does not say why"
done
if [ "$layout" = log ]; then
  # Its blocks are in segments: a re-run as a blocks export would leave them there.
  expect_exit 1 s3b import big "$big" --layout blocks
  grep -q "incomplete export of the log layout" "$work/err" || { cat "$work/err"; die "a re-run in the other layout"; }
fi
s3b import big "$big" >/dev/null 2>&1
s3b info big | grep -q "^layout:          $layout$" || { s3b info big; die "the re-run changed the layout"; }
s3b export big "$work/big.out" >/dev/null 2>&1
cmp "$big" "$work/big.out" || die "the re-run import differs"
s3b delete big --yes >/dev/null 2>&1
log "all checks passed"
