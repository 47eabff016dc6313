#!/bin/bash
# The admin command's verify: a sound export passes, and a block damaged behind the store's back
# (cut short in the directory, or replaced on S3 by a PUT of 5 bytes with curl) is found: exit 3,
# the block named, and the summary counting one problem. With log: a byte of the last frame of the
# export's segment is changed (in the directory, or on S3 by a PUT of the changed segment): the
# block it holds is named once (the read of the block and the check of the segment both find it),
# and the summary counts the segment checked and one problem. Then, imported again, a damaged
# copy of the segment is stored after it: verify says the run ends there, and repair sets it
# aside (kept as it was), after which verify finds the export sound and it reads as imported.
#
#   tests/scripts/admin_cli_verify.sh local [blocks|log]
#   tests/scripts/admin_cli_verify.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="admin_cli_verify[$mode${2:+,$2}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

import_disk
log "verify finds damage made behind its back"
s3b verify disk >"$work/sound.out" 2>&1 || { cat "$work/sound.out"; die "verify of a sound export failed"; }
[ "$mode" = local ] || require_tool curl
if [ "$layout" = log ]; then
  grep -qE "^$blocks blocks checked, 1 segment checked, 0 problems$" "$work/sound.out" ||
    { cat "$work/sound.out"; die "verify's summary of a sound log export"; }
  # The import's blocks fit in one segment (2: the writer's first, empty one was 1), in order of
  # block id: its last frame holds the export's last block, 10239, whose payload ends 8 bytes
  # (the frame's padding) before the segment does.
  segment=exports/disk/log/0000000000000002
  get_object "$segment" "$work/segment" || die "could not read $segment"
  size=$(stat -c %s "$work/segment")
  printf '\377' | dd of="$work/segment" bs=1 seek=$((size - 100)) conv=notrunc status=none
  put_object "$segment" "$work/segment" || die "could not replace $segment"
  damaged=10239
  summary="[0-9]+ blocks checked, 1 segment checked, 1 problem"
else
  printf 'short' >"$work/short"
  put_object exports/disk/blocks/7 "$work/short" || die "could not damage block 7"
  damaged=7
  summary="[0-9]+ blocks checked, 1 problem"
fi
expect_exit 3 "$admin" "${cli_store[@]}" verify disk
grep -q "DAMAGED: block $damaged[: ]" "$work/out" || { cat "$work/out"; die "verify did not name block $damaged"; }
grep -qE "^$summary$" "$work/out" || { cat "$work/out"; die "verify's summary does not count one problem"; }
"$admin" "${cli_store[@]}" verify disk --json >"$work/out.json" 2>/dev/null || true
grep -q "\"problems\": \[\"block $damaged[: ][^]]*\"\]" "$work/out.json" || { cat "$work/out.json"; die "verify --json"; }
if [ "$layout" = log ]; then
  log "repair sets aside a damaged segment after the checkpoint, and verify finds the export sound again"
  s3b delete disk --yes >/dev/null 2>&1 || die "could not delete the damaged export"
  import_disk
  # A segment 3 after the import's (and its checkpoint's) 2 whose head does not check out, as a
  # torn or corrupt upload would leave: the run ends before it, and the export is read only.
  get_object "$segment" "$work/segment" || die "could not read $segment"
  printf '\377' | dd of="$work/segment" bs=1 seek=30 conv=notrunc status=none
  put_object exports/disk/log/0000000000000003 "$work/segment" || die "could not store segment 3"
  expect_exit 3 "$admin" "${cli_store[@]}" verify disk
  grep -q "not applied" "$work/out" && grep -q "s3block repair" "$work/out" ||
    { cat "$work/out"; die "verify did not name the damaged segment and the way out"; }
  s3b repair disk >"$work/repair.out" 2>&1 || { cat "$work/repair.out"; die "repair failed"; }
  grep -q "written again from segment 2: segment 3 (damaged) and 0 after it" "$work/repair.out" ||
    { cat "$work/repair.out"; die "repair's summary"; }
  get_object exports/disk/damaged/0000000000000003 "$work/aside" || die "the damaged segment was not set aside"
  cmp -s "$work/aside" "$work/segment" || die "the segment set aside is not the one that was there"
  s3b verify disk >"$work/after.out" 2>&1 || { cat "$work/after.out"; die "verify after the repair"; }
  grep -qE "^$blocks blocks checked, 1 segment checked, 0 problems$" "$work/after.out" ||
    { cat "$work/after.out"; die "verify's summary after the repair"; }
  s3b export disk "$work/back.img" >/dev/null 2>&1 || die "export after the repair failed"
  cmp -s "$work/back.img" "$img" || die "the export does not read as imported after the repair"
  s3b repair disk | grep -q "no damaged segment: nothing to repair" || die "a second repair did something"
fi
s3b delete disk --yes >/dev/null 2>&1
log "all checks passed"
