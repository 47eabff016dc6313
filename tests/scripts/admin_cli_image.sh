#!/bin/bash
# The admin command's import, export, copy, resize and stats on one store: a sparse image
# imported stores only its data blocks (and info and list say what their bytes are), reads back
# through a real nbdkit byte for byte, and the running server's stats count the reads; export is
# sparse and exact, also onto a block device that held other data (as root: what lies past the
# export stays, a mounted device and a smaller one are refused); copy is exact, also into the
# other layout (--layout) and back; resize refuses to shrink without --force, keeps the first MiB
# and grows with zeros; gc of a blocks export is refused, saying why. With log: the exports are
# log exports, info shows their segments and a checkpoint as of the last one (each writing
# command closes the export), the stats count them, and gc after the shrink rewrites the live
# blocks of the mostly dead segment, after which the dead bytes are a small part of what they
# were and the data is the same.
#
#   tests/scripts/admin_cli_image.sh local [blocks|log]
#   tests/scripts/admin_cli_image.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="admin_cli_image[$mode${2:+,$2}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

log "import a sparse image and read it back through nbdkit"
import_disk
# The bytes shown are what they are: the blocks stored times the block size, named so.
allocated=$(sed -n 's/.*"allocated_bytes": \([0-9]*\).*/\1/p' "$work/info.json")
[ "$allocated" = $((blocks * 4096)) ] || die "allocated_bytes is '$allocated', not $blocks x 4096"
s3b list | head -n 1 | grep -q ' ALLOCATED ' || { s3b list; die "list does not name its ALLOCATED column"; }
s3b list | grep -q "^disk .* $((blocks * 4096)) " || { s3b list; die "list does not show disk's allocated bytes"; }
s3b info disk | grep -q '^allocated: .*(blocks stored x block size)' || { s3b info disk; die "info does not say what its bytes are"; }
if [ "$layout" = log ]; then
  # Its segments: the blocks stored in them, live, and a checkpoint as of the last segment.
  [ "$(json_field blocks "$work/info.json")" = "$blocks" ] || { cat "$work/info.json"; die "the log's blocks are not the blocks stored"; }
  [ "$(json_field segments "$work/info.json")" -ge 1 ] || { cat "$work/info.json"; die "no segment"; }
  [ "$(json_field live_bytes "$work/info.json")" -ge $((blocks * 4096)) ] || { cat "$work/info.json"; die "live bytes"; }
  seq=$(json_field last_seq "$work/info.json")
  [ "$seq" -ge 1 ] && [ "$(json_field checkpoint_seq "$work/info.json")" = "$seq" ] ||
    { cat "$work/info.json"; die "no checkpoint as of the last segment after the import"; }
  s3b info disk >"$work/info.txt"
  for label in "segments" "segment bytes" "live bytes" "dead bytes" "blocks mapped" "last seq" "checkpoint seq"; do
    grep -q "^$label: *[0-9]" "$work/info.txt" || { cat "$work/info.txt"; die "info does not show '$label'"; }
  done
fi
serve "stats-file=$work/stats.json"
nbdcopy "nbd+unix:///disk?socket=$sock" "$work/read.img"
cmp "$img" "$work/read.img" || die "the image read through nbdkit differs"

log "stats of the running server"
# The server rewrites the file about once a second; wait for one that counts the reads above.
for _ in $(seq 1 100); do
  "$admin" stats "$work/stats.json" >"$work/stats.txt" 2>/dev/null && grep -q '^disk store_reads [1-9]' "$work/stats.txt" && break
  sleep 0.1
done
grep -q '^disk store_reads [1-9]' "$work/stats.txt" || { cat "$work/stats.txt"; die "stats do not show the reads"; }
if [ "$layout" = log ]; then
  grep -q '^disk log_segments [1-9]' "$work/stats.txt" || { cat "$work/stats.txt"; die "stats do not show the segments"; }
fi
"$admin" stats "$work/stats.json" --json | grep -q '"disk": {' || die "stats --json"
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
  on_exit detach_loops "$work/dev.img"
  on_exit unmount "$work/mnt"
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

log "copy, and into the other layout"
s3b copy disk disk2 >/dev/null 2>&1
s3b info disk2 | grep -q "^layout:          $layout$" || die "the copy does not keep the source's layout"
s3b export disk2 "$work/copy.img" >/dev/null 2>&1
cmp "$img" "$work/copy.img" || die "the copy differs"
if [ "$layout" = log ]; then other=blocks; else other=log; fi
s3b copy disk converted --layout "$other" >/dev/null 2>&1
s3b info converted | grep -q "^layout:          $other$" || { s3b info converted; die "copy --layout $other"; }
s3b export converted "$work/converted.img" >/dev/null 2>&1
cmp "$img" "$work/converted.img" || die "the copy into the $other layout differs"
s3b copy converted back --layout "$layout" >/dev/null 2>&1
s3b info back | grep -q "^layout:          $layout$" || { s3b info back; die "copy --layout $layout"; }
s3b export back "$work/back.img" >/dev/null 2>&1
cmp "$img" "$work/back.img" || die "the copy back into the $layout layout differs"

log "resize"
expect_exit 2 "$admin" "${cli_store[@]}" resize disk2 1M
grep -q -- "--force" "$work/err" || die "shrink refusal does not mention --force"
s3b resize disk2 1M --force >/dev/null 2>&1
s3b resize disk2 2M >/dev/null 2>&1
s3b export disk2 "$work/small.img" >/dev/null 2>&1
cmp -n 1048576 "$img" "$work/small.img" || die "the first MiB changed in resize"
cmp -n 1048576 -i 1048576:0 "$work/small.img" /dev/zero || die "grown space is not zeros"

if [ "$layout" = log ]; then
  log "gc"
  # disk2's one segment of data keeps the first MiB of it (256 of 1028 blocks) after the shrink:
  # below the threshold (50% live), it is collected.
  s3b info disk2 --json >"$work/before.json"
  dead=$(json_field dead_bytes "$work/before.json")
  [ "$dead" -gt $((3 * 1024 * 1024)) ] || { cat "$work/before.json"; die "the shrink left $dead dead bytes"; }
  s3b gc disk2 >"$work/gc.out" 2>&1 || { cat "$work/gc.out"; die "gc failed"; }
  # 256 blocks of 4K, in frames of 16 bytes more.
  grep -qE "^collected export 'disk2': [1-9][0-9]* segments? freed \([0-9].*\), 1052672 \(1028K\) of live blocks copied$" "$work/gc.out" ||
    { cat "$work/gc.out"; die "gc does not say what it freed and copied"; }
  s3b info disk2 --json >"$work/after.json"
  [ $(($(json_field dead_bytes "$work/after.json") * 20)) -lt "$dead" ] ||
    { cat "$work/before.json" "$work/after.json"; die "gc left most of the dead bytes"; }
  [ "$(json_field checkpoint_seq "$work/after.json")" = "$(json_field last_seq "$work/after.json")" ] ||
    { cat "$work/after.json"; die "no checkpoint as of the last segment after gc"; }
  s3b export disk2 "$work/small2.img" >/dev/null 2>&1
  cmp "$work/small.img" "$work/small2.img" || die "the data changed in gc"
  # --all: every segment with a dead byte (here only their heads are dead), as JSON.
  s3b gc disk2 --all --json >"$work/gc.json" 2>&1 || { cat "$work/gc.json"; die "gc --all failed"; }
  grep -q '^{"name": "disk2", "segments_freed": [1-9][0-9]*, "bytes_freed": [0-9]*, "bytes_copied": [1-9][0-9]*}$' "$work/gc.json" ||
    { cat "$work/gc.json"; die "gc --all --json"; }
  s3b export disk2 "$work/small3.img" >/dev/null 2>&1
  cmp "$work/small.img" "$work/small3.img" || die "the data changed in gc --all"
else
  expect_exit 1 "$admin" "${cli_store[@]}" gc disk2
  grep -q "gc applies to log exports" "$work/err" || { cat "$work/err"; die "gc of a blocks export"; }
fi

for e in disk disk2 converted back; do s3b delete "$e" --yes >/dev/null 2>&1; done
log "all checks passed"
