#!/bin/bash
# The admin command's import, export, copy, resize and stats on one store: a sparse image
# imported stores only its data blocks (and info and list say what their bytes are), reads back
# through a real nbdkit byte for byte, and the running server's stats count the reads; export is
# sparse and exact, also onto a block device that held other data (as root: what lies past the
# export stays, a mounted device and a smaller one are refused); copy is exact; resize refuses to
# shrink without --force, keeps the first MiB and grows with zeros.
#
#   tests/scripts/admin_cli_image.sh local
#   tests/scripts/admin_cli_image.sh s3    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
TEST_NAME="admin_cli_image[$mode]"
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

log "copy"
s3b copy disk disk2 >/dev/null 2>&1
s3b export disk2 "$work/copy.img" >/dev/null 2>&1
cmp "$img" "$work/copy.img" || die "the copy differs"

log "resize"
expect_exit 2 "$admin" "${cli_store[@]}" resize disk2 1M
grep -q -- "--force" "$work/err" || die "shrink refusal does not mention --force"
s3b resize disk2 1M --force >/dev/null 2>&1
s3b resize disk2 2M >/dev/null 2>&1
s3b export disk2 "$work/small.img" >/dev/null 2>&1
cmp -n 1048576 "$img" "$work/small.img" || die "the first MiB changed in resize"
cmp -n 1048576 -i 1048576:0 "$work/small.img" /dev/zero || die "grown space is not zeros"

for e in disk disk2; do s3b delete "$e" --yes >/dev/null 2>&1; done
log "all checks passed"
