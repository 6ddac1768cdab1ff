#!/usr/bin/env bash
# Builds the benchmark guest's initramfs: the default guest's (busybox-static, resources/guest/init
# as /init) plus Debian's fio and iperf3 (packages fio, iperf3) with every shared library `ldd`
# lists for them and the dynamic loader, at the paths they have on this machine, and kvmrun
# bench's own static payloads (matmul, stream, cycles from resources/bench/build-payloads.sh) in
# /usr/bin. About 90 MiB unpacked (fio links the libraries of all its I/O engines: ceph,
# gluster, ...): give the guest 512 MiB of RAM.
# Output: $KVMRUN_CACHE/bench-initramfs-<hash>/initramfs.cpio.gz; $KVMRUN_CACHE/bench-initramfs
# links to the newest. <hash> covers init, this script, lib.sh, the busybox-static, fio and
# iperf3 versions, the payloads and the name, size and mtime of every library.
# Last line of stdout: the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-bench-initramfs
# shellcheck source=lib.sh
. "$here/lib.sh"

need_file /usr/share/doc/busybox-static busybox-static
need_cmd fio fio
need_cmd iperf3 iperf3
fio=$(command -v fio)
iperf3=$(command -v iperf3)
payloads=$(bash "$here/../bench/build-payloads.sh" | tail -n1)
[ -x "$payloads/matmul" ] || die "build-payloads.sh did not produce $payloads/matmul"

# dyn_libs BINARY...: the dynamic loader and the libraries ldd resolves for them, one path a line.
dyn_libs() {
  local out bin
  for bin in "$@"; do
    out=$(LC_ALL=C ldd "$bin") || die "ldd $bin failed"
    if grep -q 'not found' <<<"$out"; then die "ldd $bin: $(grep 'not found' <<<"$out" | tr '\n' ' ')"; fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
  done | sort -u
}
libs=$(dyn_libs "$fio" "$iperf3")
[ -n "$libs" ] || die "ldd found no libraries for $fio and $iperf3"
# shellcheck disable=SC2046 # one path a line, no spaces
key=$(input_hash "$here/init" "$here/build-bench-initramfs.sh" "$here/lib.sh" "$fio" "$iperf3" \
  "$payloads/matmul" "$payloads/stream" "$payloads/cycles" -- \
  "busybox-static $(pkg_version busybox-static)" "fio $(pkg_version fio)" \
  "iperf3 $(pkg_version iperf3)" \
  $(while IFS= read -r l; do stat -L -c '%n:%s:%Y' "$l"; done <<<"$libs"))

build() { # tmpdir
  local out=$1 root=$1/root lib n=0
  log "staging busybox-static $(pkg_version busybox-static) and /init"
  stage_busybox "$root"
  install -m 755 "$here/init" "$root/init"
  log "staging fio $(pkg_version fio), iperf3 $(pkg_version iperf3), their libraries and the payloads"
  mkdir -p "$root/usr/bin"
  install -m 755 "$fio" "$root/usr/bin/fio"
  install -m 755 "$iperf3" "$root/usr/bin/iperf3"
  install -m 755 "$payloads/matmul" "$payloads/stream" "$payloads/cycles" "$root/usr/bin/"
  while IFS= read -r lib; do
    # At the path ldd printed (what the loader and RUNPATHs look for), as a regular file.
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    n=$((n + 1))
  done <<<"$libs"
  # The loader finds the multiarch directories without a cache; the list is for humans.
  printf '%s\n' /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu >"$root/etc/ld.so.conf"
  log "fio, iperf3 + $n libraries: $(du -sh "$root" | cut -f1) unpacked"
  # As root, check that the staged fio starts with nothing but the staged files.
  if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
    chroot "$root" /usr/bin/fio --version >&2 || die "the staged fio does not start (chroot $root)"
    chroot "$root" /usr/bin/iperf3 --version >&2 || die "the staged iperf3 does not start (chroot $root)"
  fi
  log "packing initramfs.cpio.gz"
  pack_initramfs "$root" "$out/initramfs.cpio.gz"
  rm -rf "$root"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
}

cached_build bench-initramfs "$key" build
echo "$OUT/initramfs.cpio.gz"
