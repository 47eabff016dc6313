#!/bin/bash
# What each block-encoding layer costs and saves, measured through nbdkit: for each parameter set,
# a fresh local store, nbdcopy writes an image into a new export and reads it back; the row gives
# the throughput of each direction, nbdkit's CPU time per GiB (user + system, which a busy machine
# disturbs much less than wall time), and the bytes the store holds afterwards.
#
#   bench/layers/run.sh [MIB]          (default 128 MiB per image)
#
# Two images: "text" (the first MIB of a tar of /usr/include and /usr/share/doc: compressible) and
# "random" (from /dev/urandom: incompressible). Runs every set REPEAT times (default 3) and keeps
# the median of each figure. The store lives in /dev/shm, so the disk does not hide the layers'
# cost; cache=false for the same reason. Prints a Markdown table.
#
# Environment: S3BLOCK_PLUGIN (default build/nbdkit-s3block-plugin.so), REPEAT, BLOCK_SIZE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
plugin=${S3BLOCK_PLUGIN:-$repo/build/nbdkit-s3block-plugin.so}
mib=${1:-128}
repeat=${REPEAT:-3}
block_size=${BLOCK_SIZE:-4096}
for tool in nbdkit nbdcopy tar; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done
[ -f "$plugin" ] || { echo "run.sh: no plugin at $plugin" >&2; exit 1; }
plugin=$(realpath "$plugin")

work=$(mktemp -d /dev/shm/s3block-layers.XXXXXX)
nbdkit_pid=
cleanup() {
  if [ -n "$nbdkit_pid" ]; then kill "$nbdkit_pid" 2>/dev/null || true; wait "$nbdkit_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

head -c 32 /dev/urandom >"$work/key"
# (tar stops on SIGPIPE when head has enough: not an error here.)
{ tar cf - /usr/include /usr/share/doc 2>/dev/null || true; } | head -c $((mib << 20)) >"$work/text.img"
head -c $((mib << 20)) /dev/urandom >"$work/random.img"

sets=(
  ""
  "checksum=crc32c"
  "compression=zstd"
  "encryption=aes-256-gcm key-file=$work/key"
  "compression=zstd encryption=aes-256-gcm key-file=$work/key"
)

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now() { date +%s.%N; }

# One run: prints "write_MiBps read_MiBps write_cpu_s_per_GiB read_cpu_s_per_GiB stored_bytes".
run_once() {
  local params=$1 image=$2 sock="$work/sock" store="$work/store"
  rm -rf "$store" "$sock"
  # shellcheck disable=SC2086
  nbdkit -f -U "$sock" "$plugin" store="$store" size=$((mib << 20)) block-size="$block_size" \
    cache=false $params &
  nbdkit_pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  local uri="nbd+unix:///bench?socket=$sock" t0 t1 c0 c1 c2 t2
  c0=$(cpu_ticks $nbdkit_pid); t0=$(now)
  nbdcopy "$work/$image.img" "$uri"
  t1=$(now); c1=$(cpu_ticks $nbdkit_pid)
  nbdcopy "$uri" null:
  t2=$(now); c2=$(cpu_ticks $nbdkit_pid)
  kill $nbdkit_pid; wait $nbdkit_pid 2>/dev/null || true; nbdkit_pid=
  local stored
  stored=$(find "$store/exports/bench/blocks" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  awk -v mib="$mib" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v c0="$c0" -v c1="$c1" -v c2="$c2" \
      -v hz="$ticks" -v stored="$stored" 'BEGIN {
    gib = mib / 1024
    printf "%.1f %.1f %.2f %.2f %d\n", mib / (t1 - t0), mib / (t2 - t1),
           (c1 - c0) / hz / gib, (c2 - c1) / hz / gib, stored }'
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

echo "| layers | image | write MiB/s | read MiB/s | nbdkit CPU s/GiB write | nbdkit CPU s/GiB read | bytes stored | of raw |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for image in text random; do
  raw_stored=
  for params in "${sets[@]}"; do
    rows=()
    for _ in $(seq "$repeat"); do rows+=("$(run_once "$params" "$image")"); done
    col() { printf '%s\n' "${rows[@]}" | awk -v c="$1" '{print $c}' | median; }
    stored=$(col 5)
    [ -z "$raw_stored" ] && raw_stored=$stored
    label=$(printf '%s' "${params:-raw (no layer)}" | sed "s| key-file=[^ ]*||")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s%% |\n' "$label" "$image" "$(col 1)" "$(col 2)" \
      "$(col 3)" "$(col 4)" "$stored" "$(awk -v a="$stored" -v b="$raw_stored" 'BEGIN {printf "%.0f", 100 * a / b}')"
  done
done
