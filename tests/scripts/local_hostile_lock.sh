#!/bin/bash
# The lock of an export in a local store planted as a symlink to a file outside the store: nbdkit
# refuses the export (and says why in its log), still serves another export, and the file behind
# the link is neither written nor truncated, not even when nbdkit exits.
#
#   tests/scripts/local_hostile_lock.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/local_hostile_lib.sh"

make_tampered_store
log "the lock a symlink: the export is refused, the file behind it untouched, also at exit"
rm -f "$store/exports/tamper/lock"
ln -s "$work/victim-lock" "$store/exports/tamper/lock"
serve
client tamper connect-fails
client other 'assert h.pread(4096, 0) == b"A" * 4096'
term
victims_intact "planted lock"
grep -q "exports/tamper/lock is a symbolic link" "$work/nbdkit.log" || die "the log does not name the planted lock"
log "passed"
