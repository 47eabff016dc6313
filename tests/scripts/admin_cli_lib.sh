# Shared by the admin_cli_*.sh tests (sourced after testlib.sh, with $mode set to local or s3):
# the admin command, s3block, on one store.

require_built "$admin" "$plugin"
require_tool nbdkit nbdcopy nbdinfo cmp
use_store "$mode" admin

s3b() { "$admin" "${cli_store[@]}" "$@"; }
# serve PARAMS...: nbdkit with the plugin on the store.
serve() { start_nbdkit "$plugin" "${store_params[@]}" "$@"; }

# expect_exit CODE COMMAND...: runs the command, which must exit with CODE; its standard output
# and error are kept in $work/out and $work/err for the caller to inspect.
expect_exit() {
  local want=$1 rc=0
  shift
  "$@" >"$work/out" 2>"$work/err" </dev/null || rc=$?
  [ "$rc" = "$want" ] || { cat "$work/out" "$work/err" >&2; die "'$*' exited $rc, expected $want"; }
}

# import_disk: a sparse 40 MiB image with 4 MiB + 12345 bytes of data ($img) imported as the
# export "disk" (4 KiB blocks); sets blocks to the number of blocks it stored, 1027 to 1029
# (never the 10240 of the image).
import_disk() {
  img=$work/disk.img
  truncate -s 40M "$img"
  head -c 3M /dev/urandom | dd of="$img" bs=1M seek=0 conv=notrunc status=none
  head -c 1M /dev/urandom | dd of="$img" bs=1M seek=20 conv=notrunc status=none
  head -c 12345 /dev/urandom | dd of="$img" bs=1 seek=$((40 * 1024 * 1024 - 12345)) conv=notrunc status=none
  s3b import disk "$img" >/dev/null 2>&1
  s3b info disk --json >"$work/info.json"
  blocks=$(sed -n 's/.*"blocks_stored": \([0-9]*\).*/\1/p' "$work/info.json")
  [ "$blocks" -ge 1027 ] && [ "$blocks" -le 1029 ] || die "import stored $blocks blocks"
}
