#!/bin/bash
# A crash under ext4: a file system is written through nbdfuse and a loop device on the plugin's
# export, a first set of files is synced, and nbdkit is killed with SIGKILL while more files are
# being written; after a restart, mounting replays the journal, `e2fsck -fn` must be clean, and
# the synced files must have their checksums. Run as root.
#
#   tests/scripts/crash_ext4.sh local
#   tests/scripts/crash_ext4.sh s3    (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
mode=${1:-local}
TEST_NAME="crash_ext4[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
require_built "$plugin"
require_root "the ext4 crash uses loop devices and mounts"
require_tool nbdkit nbdfuse losetup mkfs.ext4 e2fsck fusermount3 mountpoint sha256sum blockdev
use_store "$mode" crash-ext4
# force=true: the killed server's lease is still in the bucket, and the operator knows its holder
# is dead (without it the restart would wait for lease-timeout=).
[ "$mode" = local ] || store_params+=(force=true)

mnt=$work/mnt
mkdir -p "$mnt"
ext4_uri="nbd+unix:///ext4?socket=$sock"

serve() { start_nbdkit "$plugin" "${store_params[@]}" size=256M "$@"; }
attach() { attach_block_device "$ext4_uri" "$mnt"; }
detach_clean() { detach_block_device; }

log "ext4: mkfs, a first set of files synced, then kill -9 while writing more"
serve cache=true cache-size=8M
attach
mkfs.ext4 -q -F "$loop"
mount "$loop" "$mnt"
mkdir -p "$mnt/synced"
for i in $(seq 1 40); do head -c $((i * 5000 + 123)) /dev/urandom >"$mnt/synced/f$i"; done
(cd "$mnt" && find synced -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums"
sync -f "$mnt"
# The writer keeps creating, appending and deleting files until the kill.
(
  set +e
  mkdir -p "$mnt/busy"
  i=0
  while true; do
    i=$((i + 1))
    head -c $((RANDOM * 8)) /dev/urandom >"$mnt/busy/n$i" 2>/dev/null || exit 0
    [ $((i % 5)) -eq 0 ] && rm -f "$mnt/busy/n$((i - 3))"
    [ $((i % 7)) -eq 0 ] && sync -f "$mnt" 2>/dev/null
  done
) &
ext4_writer_pid=$!
end_at_exit "$ext4_writer_pid"   # stopped at exit before the mount it writes to is taken apart
sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 1 + 2 * r / 32767 }')"
kill_nbdkit
log "ext4: nbdkit killed; taking the dead mount apart"
kill "$ext4_writer_pid" 2>/dev/null || true
wait "$ext4_writer_pid" 2>/dev/null || true
umount -l "$mnt" || true
detach_loop
fusermount3 -uz "$fusedir" 2>/dev/null || true
kill "$fuse_pid" 2>/dev/null || true
wait "$fuse_pid" 2>/dev/null || true

log "ext4: restart; mount replays the journal; e2fsck -fn"
serve cache=true cache-size=8M
attach
mount "$loop" "$mnt" || die "the file system does not mount after the crash"
(cd "$mnt" && sha256sum --quiet -c "$work/sums") || die "synced files changed or vanished after the crash"
umount "$mnt"
e2fsck -fn "$loop" >"$work/e2fsck.log" 2>&1 || { cat "$work/e2fsck.log" >&2; die "e2fsck -fn reports errors after the journal replay"; }
detach_clean
stop_nbdkit
log "ext4: e2fsck -fn clean after the journal replay; $(wc -l <"$work/sums") synced files intact"
