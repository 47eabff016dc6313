#!/bin/bash
# Builds bench/layers/codec_cost.cc against a build of the library and runs it: the CPU cost of
# each encoding of the codec layer alone, per block, over a store in memory (see the .cc file).
#
#   bench/layers/codec_cost.sh [BLOCKS] [BLOCK_SIZE]      (default 16384 blocks of 4096 bytes)
#
# Environment: S3BLOCK_BUILD, the build directory holding libs3block.a (default build/).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${S3BLOCK_BUILD:-$repo/build}
[ -f "$build/libs3block.a" ] || { echo "codec_cost.sh: no $build/libs3block.a (build first)" >&2; exit 1; }
work=$(mktemp -d /tmp/s3block-codec-cost.XXXXXX)
trap 'rm -rf "$work"' EXIT
g++ -std=c++20 -O2 -I"$repo/include" -I"$repo/src" "$here/codec_cost.cc" "$build/libs3block.a" \
  $(pkg-config --libs libzstd libcurl expat) -lcrypto -lpthread -o "$work/codec_cost"
# Compressible data: source headers and documentation, as bench/layers/run.sh uses.
{ tar cf - /usr/include /usr/share/doc 2>/dev/null || true; } | head -c $((64 << 20)) >"$work/text"
"$work/codec_cost" "$work/text" "${1:-16384}" "${2:-4096}"
