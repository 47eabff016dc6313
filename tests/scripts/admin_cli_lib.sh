# Shared by the admin_cli_*.sh tests (sourced after testlib.sh, with $mode set to local or s3, and
# $layout to blocks or log, the layout of the exports the test makes: the scripts' second
# argument, blocks when it is left out): the admin command, s3block, on one store.

require_built "$admin" "$plugin"
require_tool nbdkit nbdcopy nbdinfo cmp
use_store "$mode" admin
# The option that gives an export the layout under test, where it is made (create, import).
case "${layout:-blocks}" in
blocks) layout_opts=() ;;
log) layout_opts=(--layout log) ;;
*) die "usage: $0 local|s3 [blocks|log]" ;;
esac

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
  s3b import disk "$img" "${layout_opts[@]}" >/dev/null 2>&1
  s3b info disk --json >"$work/info.json"
  blocks=$(sed -n 's/.*"blocks_stored": \([0-9]*\).*/\1/p' "$work/info.json")
  [ "$blocks" -ge 1027 ] && [ "$blocks" -le 1029 ] || die "import stored $blocks blocks"
}

# json_field NAME FILE: the first number NAME has in the JSON of FILE.
json_field() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" "$2" | head -n 1; }

# --- What the store holds, seen without s3block ---

# The store's key prefix in the S3 test bucket.
s3_prefix() { printf '%s' "${store#s3://$S3BLOCK_TEST_S3_BUCKET/}"; }
# s3_curl BODY CURL-ARGS...: curl signed as the test's S3 user; BODY is the file sent, or "".
s3_curl() {
  local body=$1 sha
  shift
  if [ -n "$body" ]; then sha=$(sha256sum "$body" | cut -d' ' -f1); else sha=$(printf '' | sha256sum | cut -d' ' -f1); fi
  curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3BLOCK_TEST_S3_ACCESS_KEY:$S3BLOCK_TEST_S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $sha" "$@"
}
# get_object KEY FILE and put_object KEY FILE: an object of the store (KEY below the store, as
# "exports/disk/blocks/7") copied to FILE, or replaced by it, behind the store's back.
get_object() {
  if [ "$mode" = local ]; then cp "$store/$1" "$2"; return; fi
  s3_curl "" -o "$2" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$(s3_prefix)/$1"
}
put_object() {
  if [ "$mode" = local ]; then cp "$2" "$store/$1"; return; fi
  local url=$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET/$(s3_prefix)/$1
  s3_curl "$2" -H "Content-Type: application/octet-stream" -T "$2" -H "Expect:" "$url" >/dev/null 2>&1 ||
    s3_curl "$2" -H "Content-Type: application/octet-stream" -X PUT --data-binary @"$2" "$url" >/dev/null
}
# stored_keys: what the store holds below exports/, one path a line (from the store's root):
# every file and directory of the local store, every object on S3.
stored_keys() {
  if [ "$mode" = local ]; then
    [ ! -d "$store/exports" ] || (cd "$store" && find exports -mindepth 1 | sort)
    return
  fi
  # (At most 1000: enough for what the tests look for.)
  # The prefix's slashes escaped: curl signs the query as it is sent.
  local prefix
  prefix=$(printf '%s/exports/' "$(s3_prefix)" | sed 's|/|%2F|g')
  s3_curl "" "$S3BLOCK_TEST_S3_ENDPOINT/$S3BLOCK_TEST_S3_BUCKET?list-type=2&prefix=$prefix" |
    { grep -o '<Key>[^<]*</Key>' || true; } | sed -e 's|<Key>||' -e 's|</Key>||' -e "s|^$(s3_prefix)/||"
}
