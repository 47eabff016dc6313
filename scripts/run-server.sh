#!/bin/bash
# Installs what is missing (and the NBD clients the README uses), builds the plugin, the admin
# command and the manuals, and serves the local store over NBD on TCP port 10809, in the
# foreground. Ctrl-C stops it (clients still attached get errors) and says whether what they
# wrote was all stored.
#
#   scripts/run-server.sh [PARAM=VALUE...]
#   scripts/run-server.sh --build-only      # install and build, then stop (the Docker image)
#
# Clients name the export they want (nbd-client localhost 10809 -N test_device); a new name
# creates a new export of size= (default 1G). Any PARAM=VALUE is passed to the plugin (see
# README.md, or `nbdkit build/nbdkit-s3block-plugin.so --help`), e.g. size=10G block-size=64K, or
# store=s3://BUCKET/PREFIX endpoint=... for the S3 store.
#
# Environment:
#   S3BLOCK_STORE   the store directory (default ./data; /data in the Docker image)
#   S3BLOCK_PORT    the TCP port (default 10809)
#   S3BLOCK_IPADDR  listen only on this address (default: every address)
#   S3BLOCK_BUILD   the build directory (default build/ in this checkout)
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

store=${S3BLOCK_STORE:-./data}
port=${S3BLOCK_PORT:-10809}

build_only=0
if [ "${1:-}" = --build-only ]; then
  build_only=1
  shift
fi

s3b_install_missing $S3BLOCK_BUILD_PACKAGES
s3b_build nbdkit-s3block-plugin s3block-admin man-pages
[ $build_only = 0 ] || exit 0
s3b_install_missing $S3BLOCK_CLIENT_PACKAGES

# store= on the command line wins over S3BLOCK_STORE.
have_store=0
for arg in "$@"; do
  case $arg in store=*) have_store=1 ;; esac
done
params=("$@")
if [ $have_store = 0 ]; then
  mkdir -p "$store"
  params=("store=$(cd "$store" && pwd)" "${params[@]}")
fi

listen=(-p "$port")
[ -n "${S3BLOCK_IPADDR:-}" ] && listen+=(-i "$S3BLOCK_IPADDR")

s3b_log "starting nbdkit: ${params[0]} on port $port (export test_device by default); Ctrl-C to stop"

# nbdkit runs as a child, not exec'd, so that this script can say what stopping did. Its errors
# are kept to tell whether what clients wrote was all stored at the end: the plugin reports a
# failed last flush as "flush at shutdown" (a failed flush before it keeps the data for this one).
errors=$(mktemp /tmp/s3block-server-errors.XXXXXX)
trap 'rm -f "$errors"' EXIT
# The tee ignores Ctrl-C, which reaches the whole process group, to keep what nbdkit says after it.
nbdkit -f "${listen[@]}" "$S3BLOCK_PLUGIN" "${params[@]}" 2> >(trap '' INT TERM; exec tee "$errors" >&2) &
nbdkit_pid=$!
stopping=0
stop_server() {
  if [ $stopping = 0 ]; then
    s3b_log "stopping: clients still attached get errors; once they have gone, what they wrote and is not yet stored is stored"
  fi
  stopping=1
  # Ctrl-C reaches nbdkit from the terminal too; `docker stop` signals only this script.
  kill -TERM "$nbdkit_pid" 2>/dev/null || true
}
trap stop_server INT TERM
# A trapped signal ends `wait` early with 128+N: wait again until nbdkit is gone, then once more
# for its own status (bash keeps it for a child already reaped).
while kill -0 "$nbdkit_pid" 2>/dev/null; do wait "$nbdkit_pid" || true; done
rc=0
wait "$nbdkit_pid" || rc=$?
wait 2>/dev/null || true  # the tee of nbdkit's errors

if grep -q 'flush at shutdown' "$errors"; then
  s3b_log "nbdkit stopped, but NOT everything clients wrote was stored (the errors above say what failed)"
  exit 1
elif [ $rc -ne 0 ]; then
  s3b_log "nbdkit exited with status $rc (the messages above say why)"
  exit $rc
fi
for p in "${params[@]}"; do
  case $p in store=*) s3b_log "nbdkit stopped: everything clients wrote is stored in ${p#store=}" ;; esac
done
