# Shared by run-server.sh and run-tests.sh (sourced, not run): installing what is missing and
# building. Debian 12 (bookworm) is the reference system; run as root to install.

S3BLOCK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
S3BLOCK_BUILD=${S3BLOCK_BUILD:-$S3BLOCK_REPO/build}
S3BLOCK_PLUGIN=${S3BLOCK_PLUGIN:-$S3BLOCK_BUILD/nbdkit-s3block-plugin.so}

# What building the plugin, the library and the tests needs (dpkg -S of every header, library and
# tool the code and CMakeLists.txt use).
S3BLOCK_BUILD_PACKAGES="build-essential cmake pkg-config nbdkit nbdkit-plugin-dev libnbd-dev
  libcurl4-openssl-dev libssl-dev libexpat1-dev libzstd-dev liburing-dev libgtest-dev"
# The clients the README attaches with: nbdinfo, nbdcopy and nbdfuse (libnbd-bin), fusermount3
# (fuse3).
S3BLOCK_CLIENT_PACKAGES="libnbd-bin fuse3"
# What running the tests needs besides: nbdfuse and nbdinfo (libnbd-bin), nbdsh (python3-libnbd),
# fusermount3 (fuse3), mkfs.ext4 and e2fsck (e2fsprogs), losetup (mount), blockdev and mountpoint
# (util-linux), curl (the S3 test server's scripts and an independent S3 client), fio for the
# benchmarks. The S3 server's own packages are installed by tests/scripts/rgw-local.sh when it
# first starts. The reliability tests add clang and its runtimes (libFuzzer and the sanitizers,
# tests/fuzz), openssl (certificates and keys of the TLS tests), python3 (the fault-injecting
# proxy) and libfaketime (servers whose clocks disagree).
S3BLOCK_TEST_PACKAGES="libnbd-bin python3-libnbd fuse3 e2fsprogs mount util-linux curl fio clang
  libclang-rt-14-dev openssl python3 libfaketime"

s3b_log() { echo "$(basename "$0"): $*" >&2; }
s3b_die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Prints the packages among "$@" that are not installed.
s3b_missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

# Installs the packages among "$@" that are missing. The package lists are refreshed only when
# there are none yet or when an install fails (a stale list names versions no longer served).
s3b_install_missing() {
  local missing lock_fd
  missing=$(s3b_missing_packages "$@" | tr '\n' ' ')
  [ -n "${missing// /}" ] || return 0
  # One install at a time (the Quick start's two commands may start together): the second waits,
  # then installs only what the first did not.
  exec {lock_fd}>>/tmp/.s3block-install.lock
  flock -n "$lock_fd" || { s3b_log "waiting for another install to finish"; flock "$lock_fd"; }
  missing=$(s3b_missing_packages "$@" | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then exec {lock_fd}>&-; return 0; fi
  [ "$(id -u)" = 0 ] || s3b_die "missing packages: $missing; run as root to install them, or install them yourself"
  command -v apt-get >/dev/null || s3b_die "missing packages: $missing; this script installs with apt-get (Debian 12)"
  s3b_log "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
  # shellcheck disable=SC2086
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || s3b_die "apt-get update failed"
  fi
  # shellcheck disable=SC2086
  if ! "${apt[@]}" install $missing >&2; then
    s3b_log "install failed; refreshing the package lists and trying again"
    apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || s3b_die "apt-get update failed"
    # shellcheck disable=SC2086
    "${apt[@]}" install $missing >&2 || s3b_die "cannot install: $missing"
  fi
  exec {lock_fd}>&-
}

# Configures and builds into $S3BLOCK_BUILD. Extra arguments are build targets (default: all).
# One build of a build directory at a time: the server's and the tests' commands may share it.
s3b_build() {
  local jobs lock_fd targets=()
  jobs=$(nproc 2>/dev/null || echo 2)
  for t in "$@"; do targets+=(--target "$t"); done
  mkdir -p "$S3BLOCK_BUILD" || s3b_die "cannot make the build directory $S3BLOCK_BUILD"
  exec {lock_fd}>>"$S3BLOCK_BUILD/.build.lock"
  flock -n "$lock_fd" || { s3b_log "waiting for another build in $S3BLOCK_BUILD"; flock "$lock_fd"; }
  cmake -S "$S3BLOCK_REPO" -B "$S3BLOCK_BUILD" >&2 || s3b_die "cmake configure failed"
  cmake --build "$S3BLOCK_BUILD" -j "$jobs" "${targets[@]}" >&2 || s3b_die "build failed"
  exec {lock_fd}>&-
}
