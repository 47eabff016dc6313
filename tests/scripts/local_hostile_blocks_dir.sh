#!/bin/bash
# The blocks/ directory of an export in a local store replaced by a symlink to a directory
# outside the store: nbdkit refuses the export, and nothing in that directory is deleted, created
# or changed (not even a file named like a temporary one).
#
#   tests/scripts/local_hostile_blocks_dir.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/local_hostile_lib.sh"

make_tampered_store
log "blocks/ a symlink to another directory: the export is refused, nothing there changes"
mkdir "$work/victimdir"
for f in 0 1 .tmp.keep; do echo keep >"$work/victimdir/$f"; done
mv "$blocks" "$work/blocks.saved"
ln -s "$work/victimdir" "$blocks"
serve
client tamper connect-fails
term
[ "$(ls -A "$work/victimdir" | sort | tr '\n' ' ')" = ".tmp.keep 0 1 " ] ||
  die "the directory behind the planted blocks/ changed: $(ls -A "$work/victimdir")"
for f in 0 1 .tmp.keep; do [ "$(cat "$work/victimdir/$f")" = keep ] || die "victimdir/$f changed"; done
log "passed"
