#!/bin/bash
# Installs what is missing, builds the plugin, and serves the local store over NBD on TCP port
# 10809, in the foreground (Ctrl-C stops it; what clients wrote is kept).
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
s3b_build nbdkit-s3block-plugin s3block-admin
[ $build_only = 0 ] || exit 0

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
exec nbdkit -f "${listen[@]}" "$S3BLOCK_PLUGIN" "${params[@]}"
