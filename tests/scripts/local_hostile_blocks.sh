#!/bin/bash
# Blocks of a local store planted as a symlink to a file outside the store, a FIFO and a
# directory, served by a real nbdkit: a client's read of each fails at once (no hang), its write
# is refused at the flush (with the cache off, and with the write-back cache), the other blocks
# stay readable, the outside file is byte for byte what it was, the planted files stay as they
# were, and SIGTERM stops nbdkit within a few seconds.
#
#   tests/scripts/local_hostile_blocks.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/local_hostile_lib.sh"

make_tampered_store
log "blocks planted as a symlink, a FIFO and a directory: errors, no hang, SIGTERM works"
rm "$blocks/1" "$blocks/4" "$blocks/5"
ln -s "$work/victim" "$blocks/1"
mkfifo "$blocks/4"
mkdir "$blocks/5"
serve cache=false
client tamper '
B = 4096
assert h.pread(B, 0) == b"A" * B, "block 0 is not what was written"
assert h.pread(B, 2 * B) == b"C" * B, "block 2 is not what was written"
fails("a read of the symlinked block", lambda: h.pread(B, 1 * B))
fails("a read of the FIFO block", lambda: h.pread(B, 4 * B))
fails("a read of the directory block", lambda: h.pread(B, 5 * B))
for i in (1, 4, 5):
    fails(f"a write of block {i} and its flush", lambda: (h.pwrite(b"w" * B, i * B), h.flush()))
assert h.pread(B, 7 * B) == b"H" * B, "block 7 is not what was written"'
term
victims_intact "planted blocks"
[ -L "$blocks/1" ] && [ -p "$blocks/4" ] && [ -d "$blocks/5" ] || die "a planted block was replaced"

log "the same with the write-back cache: the write is refused at the flush, no hang"
serve
client tamper '
B = 4096
for i in (1, 4, 5):
    fails(f"a write of block {i} and its flush", lambda: (h.pwrite(b"w" * B, i * B), h.flush()))'
term
victims_intact "planted blocks, write-back"
[ -L "$blocks/1" ] && [ -p "$blocks/4" ] && [ -d "$blocks/5" ] || die "a planted block was replaced (write-back)"
log "passed"
