#!/bin/bash
# The admin command's usage, create, list, info and delete on one store: --help of every
# subcommand, usage errors (exit 2, and --secret-key refused saying why), create with list --json
# and info (the layout in both), a second create of a name refused, a hostile name refused, a
# UTF-8 name shown as it is and one with a direction override escaped, gc (refused on a blocks
# export, saying why), delete of every export leaving an empty list and nothing in the store,
# and delete of a missing export refused. With log: the exports are log exports, info shows their
# segments, a block size over 1M is refused, and what delete removes includes their segments and
# checkpoints.
#
#   tests/scripts/admin_cli_basics.sh local [blocks|log]
#   tests/scripts/admin_cli_basics.sh s3 [blocks|log]   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
layout=${2:-blocks}
TEST_NAME="admin_cli_basics[$mode${2:+,$2}]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

log "--help for every subcommand"
for c in create list info resize delete copy import export verify gc stats; do
  "$admin" "$c" --help | grep -q "s3block $c" || die "$c --help"
done
expect_exit 2 "$admin" "${cli_store[@]}" frobnicate
expect_exit 2 "$admin" "${cli_store[@]}" create x --size banana
expect_exit 2 "$admin" "${cli_store[@]}" --secret-key oops list
grep -q "ps" "$work/err" || die "--secret-key refusal does not say why"

log "create, list, info ($layout layout)"
s3b create empty --size 64M --block-size 64K "${layout_opts[@]}" >/dev/null
s3b list --json >"$work/list.json"
grep -q '"name": "empty", "size": 67108864, "block_size": 65536' "$work/list.json" || { cat "$work/list.json"; die "list --json"; }
grep -q "\"name\": \"empty\", .*\"layout\": \"$layout\"" "$work/list.json" || { cat "$work/list.json"; die "list --json does not give the layout"; }
s3b list | head -n 1 | grep -q ' LAYOUT STATE$' || { s3b list; die "list does not name its LAYOUT column"; }
s3b list | grep -q "^empty .* $layout  *ready$" || { s3b list; die "list does not show the layout"; }
s3b info empty >"$work/info.txt"
grep -q "block size:      65536" "$work/info.txt" || die "info"
grep -q "^layout:          $layout$" "$work/info.txt" || { cat "$work/info.txt"; die "info does not show the layout"; }
if [ "$layout" = log ]; then
  # Nothing written yet: no segment, no checkpoint (and reading the export wrote none).
  for line in "segments:        0" "live bytes:      0" "checkpoint seq:  0 (none)"; do
    grep -q "^$line$" "$work/info.txt" || { cat "$work/info.txt"; die "info of an empty log export: no '$line'"; }
  done
  s3b info empty --json | grep -q '"log": {"segments": 0, ' || die "info --json of a log export has no log object"
  # A log export's blocks are at most 1M (a frame of a segment each).
  expect_exit 1 "$admin" "${cli_store[@]}" create wide --block-size 2M --layout log
  grep -q "at most 1M" "$work/err" || { cat "$work/err"; die "a log export of 2M blocks: no reason given"; }
  ! stored_keys | grep -q "exports/wide" || die "a refused create left something in the store"
else
  grep -q '^segments:' "$work/info.txt" && die "info of a blocks export shows segments"
  s3b info empty --json | grep -q '"log": null' || die "info --json of a blocks export: log is not null"
  # The collector is the log layout's: a blocks export has none, and gc says so.
  expect_exit 1 "$admin" "${cli_store[@]}" gc empty
  grep -q "gc applies to log exports" "$work/err" || { cat "$work/err"; die "gc of a blocks export"; }
fi
expect_exit 1 "$admin" "${cli_store[@]}" create empty
grep -q "already exists" "$work/err" || die "create over an existing export"
expect_exit 1 "$admin" "${cli_store[@]}" create "../escape"
grep -q "export name" "$work/err" || die "hostile name message"
# A name in UTF-8 is shown as it is; one with an invisible direction override is escaped.
s3b create "naïve-日本" --size 1M >/dev/null
s3b list | grep -q "^naïve-日本 " || { s3b list; die "list does not show a UTF-8 name as it is"; }
s3b info "naïve-日本" | grep -q "naïve-日本" || die "info does not show a UTF-8 name as it is"
s3b delete "naïve-日本" --yes >/dev/null
expect_exit 1 "$admin" "${cli_store[@]}" info "$(printf 'rlo-\342\200\256-x')"
grep -q 'rlo-\\xe2\\x80\\xae-x' "$work/err" || { cat "$work/err"; die "a direction override in a name is not escaped"; }

log "delete"
s3b create disk --size 1M "${layout_opts[@]}" >/dev/null
# An export with data: blocks (or segments and a checkpoint) for delete to remove.
head -c 300K /dev/urandom >"$work/small.img"
s3b import filled "$work/small.img" "${layout_opts[@]}" >/dev/null 2>&1
stored_keys >"$work/keys"
if [ "$layout" = log ]; then
  grep -q '^exports/filled/log/' "$work/keys" && grep -q '^exports/filled/checkpoint/' "$work/keys" ||
    { cat "$work/keys"; die "the imported log export has no segment or no checkpoint in the store"; }
else
  grep -q '^exports/filled/blocks/' "$work/keys" || { cat "$work/keys"; die "the imported export has no blocks in the store"; }
fi
for e in disk empty filled; do s3b delete "$e" --yes >/dev/null 2>&1; done
s3b list --json >"$work/list.json"
[ "$(cat "$work/list.json")" = "[]" ] || { cat "$work/list.json"; die "exports left after delete"; }
stored_keys >"$work/keys"
[ ! -s "$work/keys" ] || { cat "$work/keys"; die "delete left these in the store"; }
expect_exit 1 "$admin" "${cli_store[@]}" delete disk --yes
grep -q "does not exist" "$work/err" || die "deleting a missing export"
log "all checks passed"
