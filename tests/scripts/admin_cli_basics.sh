#!/bin/bash
# The admin command's usage, create, list, info and delete on one store: --help of every
# subcommand, usage errors (exit 2, and --secret-key refused saying why), create with list --json
# and info, a second create of a name refused, a hostile name refused, a UTF-8 name shown as it is
# and one with a direction override escaped, delete of every export leaving an empty list, and
# delete of a missing export refused.
#
#   tests/scripts/admin_cli_basics.sh local
#   tests/scripts/admin_cli_basics.sh s3   (reads S3BLOCK_TEST_S3_{ENDPOINT,BUCKET,ACCESS_KEY,SECRET_KEY})
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout). Exits 0 when every check passes.
set -euo pipefail
mode=${1:-local}
TEST_NAME="admin_cli_basics[$mode]"
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/admin_cli_lib.sh"

log "--help for every subcommand"
for c in create list info resize delete copy import export verify stats; do
  "$admin" "$c" --help | grep -q "s3block $c" || die "$c --help"
done
expect_exit 2 "$admin" "${cli_store[@]}" frobnicate
expect_exit 2 "$admin" "${cli_store[@]}" create x --size banana
expect_exit 2 "$admin" "${cli_store[@]}" --secret-key oops list
grep -q "ps" "$work/err" || die "--secret-key refusal does not say why"

log "create, list, info"
s3b create empty --size 64M --block-size 64K >/dev/null
s3b list --json >"$work/list.json"
grep -q '"name": "empty", "size": 67108864, "block_size": 65536' "$work/list.json" || { cat "$work/list.json"; die "list --json"; }
s3b info empty | grep -q "block size:      65536" || die "info"
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
s3b create disk --size 1M >/dev/null
for e in disk empty; do s3b delete "$e" --yes >/dev/null 2>&1; done
s3b list --json >"$work/list.json"
[ "$(cat "$work/list.json")" = "[]" ] || { cat "$work/list.json"; die "exports left after delete"; }
expect_exit 1 "$admin" "${cli_store[@]}" delete disk --yes
grep -q "does not exist" "$work/err" || die "deleting a missing export"
log "all checks passed"
