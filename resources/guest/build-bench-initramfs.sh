#!/usr/bin/env bash
# Builds the benchmark guest's initramfs: the default guest's (busybox-static, resources/guest/init
# as /init) plus Debian's fio (package fio) with every shared library `ldd` lists for it and the
# dynamic loader, at the paths they have on this machine. About 85 MiB unpacked (fio links the
# libraries of all its I/O engines: ceph, gluster, ...): give the guest 512 MiB of RAM.
# Output: $KVMRUN_CACHE/bench-initramfs-<hash>/initramfs.cpio.gz; $KVMRUN_CACHE/bench-initramfs
# links to the newest. <hash> covers init, this script, lib.sh, the busybox-static and fio
# versions and the name, size and mtime of every library.
# Last line of stdout: the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-bench-initramfs
# shellcheck source=lib.sh
. "$here/lib.sh"

need_file /usr/share/doc/busybox-static busybox-static
need_cmd fio fio
fio=$(command -v fio)

# fio_libs: the dynamic loader and the libraries ldd resolves for fio, one path a line.
fio_libs() {
  local out
  out=$(LC_ALL=C ldd "$fio") || die "ldd $fio failed"
  if grep -q 'not found' <<<"$out"; then die "ldd $fio: $(grep 'not found' <<<"$out" | tr '\n' ' ')"; fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}
libs=$(fio_libs)
[ -n "$libs" ] || die "ldd found no libraries for $fio"
# shellcheck disable=SC2046 # one path a line, no spaces
key=$(input_hash "$here/init" "$here/build-bench-initramfs.sh" "$here/lib.sh" "$fio" -- \
  "busybox-static $(pkg_version busybox-static)" "fio $(pkg_version fio)" \
  $(while IFS= read -r l; do stat -L -c '%n:%s:%Y' "$l"; done <<<"$libs"))

build() { # tmpdir
  local out=$1 root=$1/root lib n=0
  log "staging busybox-static $(pkg_version busybox-static) and /init"
  stage_busybox "$root"
  install -m 755 "$here/init" "$root/init"
  log "staging fio $(pkg_version fio) and its libraries"
  mkdir -p "$root/usr/bin"
  install -m 755 "$fio" "$root/usr/bin/fio"
  while IFS= read -r lib; do
    # At the path ldd printed (what the loader and RUNPATHs look for), as a regular file.
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    n=$((n + 1))
  done <<<"$libs"
  # The loader finds the multiarch directories without a cache; the list is for humans.
  printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu >"$root/etc/ld.so.conf"
  log "fio + $n libraries: $(du -sh "$root" | cut -f1) unpacked"
  # As root, check that the staged fio starts with nothing but the staged files.
  if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
    chroot "$root" /usr/bin/fio --version >&2 || die "the staged fio does not start (chroot $root)"
  fi
  log "packing initramfs.cpio.gz"
  pack_initramfs "$root" "$out/initramfs.cpio.gz"
  rm -rf "$root"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
}

cached_build bench-initramfs "$key" build
echo "$OUT/initramfs.cpio.gz"
