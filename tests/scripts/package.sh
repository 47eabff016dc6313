#!/bin/bash
# The Debian package, installed and removed for real (run as root):
#
#  1. cmake --build BUILD --target package makes nbd-s3-backend_<version>_<arch>.deb holding the
#     plugin in nbdkit's plugin directory, /usr/bin/s3block and both manual pages, and declaring
#     that it depends on nbdkit.
#  2. Once it is installed with dpkg -i, nbdkit finds the plugin by name (nbdkit s3block
#     --dump-plugin), serves an export from a directory (nbdkit -U SOCK s3block store=DIR) that a
#     client writes and reads back, man finds both manual pages with the package's version in
#     them (when man-db is installed), and /usr/bin/s3block lists the export.
#  3. dpkg -r removes the plugin, /usr/bin/s3block and the manual pages.
#
# It refuses to run if the package is installed already, or if one of its files is on the
# machine (a cmake --install under /usr, say): dpkg -i would replace it and dpkg -r delete it.
# Whatever happens, the package it installed is removed on exit.
#
#   tests/scripts/package.sh
#
# Environment: S3BLOCK_BUILD (default build/ of this checkout).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/testlib.sh"
pkg=nbd-s3-backend

require_root "it installs and removes the package $pkg with dpkg"
[ -f "$build/CMakeCache.txt" ] || die "no build in $build (cmake -S $repo -B $build first)"
require_tool nbdkit dpkg dpkg-deb
require_libnbd_python

if dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'installed'; then
  die "the package $pkg is installed already ($(dpkg-query -W -f='${Version}' "$pkg")); this test" \
    "installs and removes it, so it will not run over it: remove it (dpkg -r $pkg) or test elsewhere"
fi
plugindir=$(nbdkit --dump-config | sed -n 's/^plugindir=//p')
[ -n "$plugindir" ] || die "nbdkit --dump-config names no plugindir"
installed_plugin=$plugindir/nbdkit-s3block-plugin.so
installed_files=("$installed_plugin" /usr/bin/s3block /usr/share/man/man1/nbdkit-s3block-plugin.1.gz
  /usr/share/man/man1/s3block.1.gz)
for f in "${installed_files[@]}"; do
  [ ! -e "$f" ] || die "$f exists already (not from the package): installing the package would" \
    "replace it and removing it would delete it; remove it first"
done

store=$work/store
installed=0
# Whatever happens, the package this installed is removed (after nbdkit, started later, stops).
remove_package() {
  if [ $installed = 1 ]; then
    dpkg -r "$pkg" >/dev/null 2>&1 || echo "package: could not remove $pkg: dpkg -r $pkg" >&2
  fi
}
on_exit remove_package
show_log_on_failure "$work/package.log"

# 1. The package and what it holds.
log "building the package in $build"
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target package >"$work/package.log" 2>&1 ||
  die "cmake --build $build --target package failed"
deb=$(sed -n 's/^CPack: - package: \(.*\.deb\) generated\.$/\1/p' "$work/package.log" | tail -n 1)
{ [ -n "$deb" ] && [ -f "$deb" ]; } || die "cpack named no .deb it made"
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg --print-architecture)
[ "$(basename "$deb")" = "${pkg}_${version}_${arch}.deb" ] ||
  die "the package is $(basename "$deb"), not ${pkg}_${version}_${arch}.deb"
[ "$(dpkg-deb -f "$deb" Package)" = "$pkg" ] || die "$deb is not the package $pkg"
depends=$(dpkg-deb -f "$deb" Depends)
[[ ", $depends," =~ ,\ nbdkit[\ ,] ]] || die "$deb does not depend on nbdkit (Depends: $depends)"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\.||' >"$work/contents"
for f in "${installed_files[@]}"; do
  grep -qx "$f" "$work/contents" || die "$deb does not hold $f; it holds: $(grep -v '/$' "$work/contents" | tr '\n' ' ')"
done
log "$(basename "$deb"): Depends: $depends"

# 2. Installed.
installed=1
dpkg -i "$deb" >>"$work/package.log" 2>&1 || die "dpkg -i $deb failed"
for f in "${installed_files[@]}"; do
  [ -f "$f" ] || die "dpkg -i $deb did not install $f"
done

nbdkit s3block --dump-plugin >"$work/dump" 2>&1 || die "nbdkit s3block --dump-plugin failed: $(cat "$work/dump")"
grep -qx "path=$installed_plugin" "$work/dump" || die "nbdkit s3block loaded no $installed_plugin: $(cat "$work/dump")"
grep -qx "name=s3block" "$work/dump" || die "nbdkit s3block --dump-plugin names no s3block: $(cat "$work/dump")"

log "serving $store with nbdkit s3block"
mkdir "$store"
start_nbdkit s3block "store=$store" size=1M
nbd_io "$sock" '
data = bytes(range(256)) * 32
h.pwrite(data, 65536)
h.flush()
assert h.get_size() == 1048576, "the export is %d bytes, not 1M" % h.get_size()
assert h.pread(len(data), 65536) == data, "what was read back is not what was written"
assert h.pread(4096, 0) == bytes(4096), "an unwritten block does not read as zeros"' ||
  die "the client's write and read back failed"
stop_nbdkit
ls "$store/exports/disk/blocks/16" >/dev/null 2>&1 ||
  die "the write is not in $store/exports/disk/blocks/16 ($(find "$store" | tr '\n' ' '))"

if command -v man >/dev/null; then
  for page in nbdkit-s3block-plugin s3block; do
    where=$(man -w "$page" 2>&1) || die "man -w $page found no page: $where"
    [ "$where" = "/usr/share/man/man1/$page.1.gz" ] || die "man -w $page found $where, not the package's page"
    MANWIDTH=1000 man "$page" 2>/dev/null | grep -qF "${version%%-*}." ||
      die "man $page does not name the version ${version%%-*} in its VERSION section"
  done
  log "man finds both pages"
else
  log "man is not installed: the manual pages are not read back"
fi

/usr/bin/s3block --store "$store" list >"$work/list" 2>&1 || die "s3block --store $store list failed: $(cat "$work/list")"
grep -qw disk "$work/list" || die "s3block --store $store list does not list the export disk: $(cat "$work/list")"

# 3. Removed.
dpkg -r "$pkg" >>"$work/package.log" 2>&1 || die "dpkg -r $pkg failed"
installed=0
for f in "${installed_files[@]}"; do
  [ ! -e "$f" ] || die "dpkg -r $pkg left $f"
done
log "passed"
