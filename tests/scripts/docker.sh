#!/bin/bash
# The Docker image serves an export whose blocks live on the host, and a new container on the same
# data directory serves the same bytes.
#
# Builds the image from this checkout (docker/Dockerfile), runs it with a fresh host directory
# bind-mounted on /data, writes random data at two offsets of the export test_device with nbdsh
# over TCP from the host, checks that a block file exists at exports/test_device/blocks/0 in the
# host directory, stops and removes the container, starts a new one on the same directory and
# compares what it reads back with what was written (sha256). Containers, the image, temporary
# files and a dockerd this script started are removed at exit, pass or fail; two images are kept
# as caches for later runs: debian:12 and the Dockerfile's stage of installed packages.
#
#   tests/scripts/docker.sh
#
# Needs root. Installs what is missing: Debian's docker.io (dockerd, and the client used here,
# /usr/bin/docker) and debootstrap. No image registry is reachable from the test machines, so the
# base image debian:12 is made once with debootstrap from the host's own Debian mirror (the one in
# its apt sources) and kept in Docker's image store for later runs.
set -euo pipefail
TEST_NAME=docker
# shellcheck source=tests/scripts/testlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
# shellcheck source=scripts/common.sh
. "$repo/scripts/common.sh"

# What this script needs besides the build packages (those are installed inside the image):
# dockerd and its client, debootstrap for the base image, nbdsh (python3-libnbd) and nbdinfo
# (libnbd-bin) as the clients on the host.
docker_test_packages="docker.io debootstrap python3-libnbd libnbd-bin"
# Debian's client, by its full path: another `docker` may come first on PATH (some machines carry
# a static Docker CE client in /usr/local/bin; it is no Debian package and docker.io does not
# replace it).
docker=/usr/bin/docker
base=debian:12
suffix="$$-$(date +%s)"
image=s3block-docker-test:$suffix
packages_image=s3block-docker-test-packages:cache
containers=("s3block-docker-test-$suffix-1" "s3block-docker-test-$suffix-2")
started=$(date +%s)

[ "$(id -u)" = 0 ] || die "run as root (dockerd, debootstrap, package installs)"
# shellcheck disable=SC2086
s3b_install_missing $docker_test_packages

# Runs of this script on one machine take turns: one could otherwise stop the dockerd it started
# while another uses it, or two could make the base image at once.
exec 9>/run/lock/s3block-docker-test.lock
flock -w 1200 9 || die "another run of docker.sh holds /run/lock/s3block-docker-test.lock"

show_log_on_failure "$work/build.log" "$work/debootstrap.log" "$work/dockerd.log" \
  "$work/s3block-docker-test-*.log"

# Debian's python3 (the one with python3-libnbd's module), whatever python3 comes first on PATH.
nbdsh() { /usr/bin/python3 -m nbd "$@"; }

# --- dockerd: the one running, or one of our own until exit. ---
# Started without its bridge and iptables rules: the bridge works on the test machines, but Docker
# would change the firewall they share with everything else (a DROP policy on FORWARD, its chains
# and NAT rules) and leave it so after exit. The containers use the host's network instead
# (--network host), which works whatever dockerd serves: the build's apt-get reaches the mirror as
# the host does, and the server listens on a free port of 127.0.0.1 itself, nothing to publish.
docker_ready() { $docker info >/dev/null 2>&1; }
dockerd_pid=
if ! docker_ready; then
  if pgrep -x dockerd >/dev/null; then
    log "a dockerd is starting; waiting for it"
  else
    log "starting dockerd (log: $work/dockerd.log)"
    dockerd --iptables=false --bridge=none >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    end_at_exit "$dockerd_pid"
  fi
  for ((i = 0; i < 600; i++)); do
    docker_ready && break
    [ -z "$dockerd_pid" ] || kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited"
    sleep 0.1
  done
  docker_ready || die "dockerd does not answer after 60 s"
fi

# Registered after dockerd's stop, so that it runs before it: containers and the test's image go
# while dockerd still answers (the base and packages images stay, as caches).
remove_containers() {
  local c
  for c in "${containers[@]}"; do
    if $docker container inspect "$c" >/dev/null 2>&1; then
      $docker logs "$c" >"$work/$c.log" 2>&1 || true
      $docker rm -f "$c" >/dev/null 2>&1 || true
    fi
  done
  $docker image rm -f "$image" >/dev/null 2>&1 || true
}
on_exit remove_containers

# --- The base image, made once from the host's Debian mirror. ---
# Prints "URI SUITE" for each enabled deb entry of the host's apt sources, one-line and deb822.
host_apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+\([^[:space:]]\+\).*/\2 \3/p' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush(   n, m, i, j, u, s) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
          n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) if (u[i] != "" && s[j] != "") print u[i], s[j]
        }
        types = uris = suites = enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      { v = $0; sub(/^[^:]*:[ \t]*/, "", v); k = tolower($1) }
      k == "types:" { types = v } k == "uris:" { uris = v } k == "suites:" { suites = v }
      k == "enabled:" { enabled = v }
      END { flush() }' "$f"
  done
}
make_base() {
  local mirror root="$work/root" include=()
  mirror=$(host_apt_sources | awk '$2 == "bookworm" { print $1; exit }')
  [ -n "$mirror" ] || die "no bookworm entry in the host's apt sources to make $base from"
  case $mirror in https:*) include=(--include=ca-certificates) ;; esac
  log "making $base with debootstrap from $mirror (once; later runs reuse it)"
  debootstrap --variant=minbase "${include[@]}" bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || die "debootstrap failed"
  # The image's apt-get reaches the mirrors the host uses, for bookworm and its updates.
  host_apt_sources | awk '$2 ~ /^bookworm(-updates|-security)?$/ && !seen[$0]++ {
    print "deb " $1 " " $2 " main" }' >"$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | $docker import -c 'CMD ["bash"]' - "$base" >/dev/null \
    || die "docker import failed"
  rm -rf "$root"
}
if ! $docker image inspect "$base" >/dev/null 2>&1; then make_base; fi

# --- The image of this checkout. ---
# The Dockerfile's stage of installed packages is kept under its own name between runs, as the
# base image is: removing the test's image alone then leaves it, and a later build starts from it
# instead of installing the packages again. Made from older scripts/, it is replaced.
old_packages=$($docker image inspect -f '{{.Id}}' "$packages_image" 2>/dev/null || true)
log "building $packages_image (log: $work/build.log)"
$docker build --network host --target packages -t "$packages_image" -f "$repo/docker/Dockerfile" \
  "$repo" >"$work/build.log" 2>&1 || die "docker build --target packages failed"
if [ -n "$old_packages" ] &&
  [ "$old_packages" != "$($docker image inspect -f '{{.Id}}' "$packages_image")" ]; then
  $docker image rm "$old_packages" >/dev/null 2>&1 || true
fi
log "building $image (log: $work/build.log)"
$docker build --network host -t "$image" -f "$repo/docker/Dockerfile" "$repo" >>"$work/build.log" 2>&1 \
  || die "docker build failed"

data=$work/data
mkdir -p "$data"
port=$(free_ports 1)
uri="nbd://127.0.0.1:$port/test_device"

# serve NAME DIR: a container of the image serving DIR as its /data on $port.
serve() {
  log "starting container $1 on $2"
  $docker run -d --name "$1" --network host -e S3BLOCK_PORT="$port" -e S3BLOCK_IPADDR=127.0.0.1 \
    -v "$2:/data" "$image" >/dev/null || die "docker run failed"
  local i
  for ((i = 0; i < 600; i++)); do
    nbdinfo --size "$uri" >/dev/null 2>&1 && return 0
    [ "$($docker container inspect -f '{{.State.Running}}' "$1")" = true ] || die "container $1 exited"
    sleep 0.1
  done
  die "container $1 does not serve $uri after 60 s"
}
# stop NAME: stops the container (SIGTERM to nbdkit) and removes it; dies unless it exited cleanly.
stop() {
  local rc
  $docker stop -t 30 "$1" >/dev/null
  rc=$($docker container inspect -f '{{.State.ExitCode}}' "$1")
  $docker logs "$1" >"$work/$1.log" 2>&1 || true
  [ "$rc" = 0 ] || die "container $1 exited with status $rc on docker stop"
  grep -q "nbdkit stopped: everything clients wrote is stored in /data" "$work/$1.log" ||
    die "container $1 did not say on docker stop that everything was stored"
  $docker rm "$1" >/dev/null
}
# read_back FILE: what the export holds where the writes went, into FILE.
read_back() {
  nbdsh -u "$uri" -c "
with open('$1', 'wb') as f:
    f.write(h.pread(4 << 20, 0))
    f.write(h.pread(1 << 20, 600 << 20))
"
}

head -c 4M /dev/urandom >"$work/a"
head -c 1M /dev/urandom >"$work/b"
cat "$work/a" "$work/b" >"$work/written"

serve "${containers[0]}" "$data"
log "writing 4 MiB at offset 0 and 1 MiB at 600 MiB"
nbdsh -u "$uri" -c "
h.pwrite(open('$work/a', 'rb').read(), 0)
h.pwrite(open('$work/b', 'rb').read(), 600 << 20)
h.flush()
"
read_back "$work/read1"
[ "$(sha256sum <"$work/read1")" = "$(sha256sum <"$work/written")" ] \
  || die "the first container reads back other bytes than were written"
stop "${containers[0]}"

# The blocks are files in the host's directory, not in the container.
block=$data/exports/test_device/blocks/0
if ! [ -f "$block" ] || ! [ -s "$block" ]; then die "no block file $block on the host"; fi

serve "${containers[1]}" "$data"
read_back "$work/read2"
[ "$(sha256sum <"$work/read2")" = "$(sha256sum <"$work/written")" ] \
  || die "a new container on the same data directory reads back other bytes than were written"
stop "${containers[1]}"

log "PASS: the data written through one container reads back through a new one ($(($(date +%s) - started)) s)"
