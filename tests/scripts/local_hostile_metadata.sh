#!/bin/bash
# The metadata of an export in a local store replaced by a FIFO: nbdkit refuses that export at
# once (no hang on the FIFO) and still serves another export.
#
#   tests/scripts/local_hostile_metadata.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/local_hostile_lib.sh"

make_tampered_store
log "the metadata a FIFO: that export refused at once, another one served"
mv "$store/exports/tamper/metadata" "$work/metadata"
mkfifo "$store/exports/tamper/metadata"
serve
client tamper connect-fails
client other 'assert h.pread(4096, 4096) == b"B" * 4096'
term
log "passed"
