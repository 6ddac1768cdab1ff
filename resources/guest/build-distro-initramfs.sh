#!/usr/bin/env bash
# Builds an initramfs for Debian's stock kernel (linux-image-amd64, the generic flavour, whose
# virtio and e1000 drivers are modules): the same busybox userland and /init as
# build-initramfs.sh, plus virtio_pci, virtio_blk, virtio_net, e1000, ext4 and their dependencies
# (resolved with modprobe --show-depends, decompressed) and /lib/modules/load.list, which /init
# loads in order with insmod.
# Output: $KVMRUN_CACHE/distro-<hash>/{vmlinuz,initramfs.cpio.gz} (the kernel is copied so that an
# apt upgrade does not pull it away); $KVMRUN_CACHE/distro links to the newest. <hash> covers init,
# this script, lib.sh, the kernel package and busybox-static versions.
# KVMRUN_DISTRO_KVER=<version> picks another installed kernel (default: linux-image-amd64's).
# Last line of stdout: "<kernel> <initramfs>".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-distro-initramfs
# shellcheck source=lib.sh
. "$here/lib.sh"

MODULES=(virtio_pci virtio_blk virtio_net e1000 ext4)

kver=$(distro_kver)
need_file "/boot/vmlinuz-$kver" "linux-image-$kver"
need_file "/lib/modules/$kver/modules.dep" "linux-image-$kver"
need_file /usr/share/doc/busybox-static busybox-static
key=$(input_hash "$here/init" "$here/build-distro-initramfs.sh" "$here/lib.sh" -- \
  "linux-image-$kver $(pkg_version "linux-image-$kver")" \
  "busybox-static $(pkg_version busybox-static)" "${MODULES[*]}")

build() { # tmpdir
  local out=$1 root=$1/root
  log "kernel $kver: copying /boot/vmlinuz-$kver"
  cp "/boot/vmlinuz-$kver" "$out/vmlinuz"
  log "staging busybox-static and /init"
  stage_busybox "$root"
  install -m 755 "$here/init" "$root/init"
  log "staging modules: ${MODULES[*]} and their dependencies"
  stage_modules "$root" "$kver" "${MODULES[@]}"
  log "packing initramfs.cpio.gz"
  pack_initramfs "$root" "$out/initramfs.cpio.gz"
  rm -rf "$root"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
}

cached_build distro "$key" build
echo "$OUT/vmlinuz $OUT/initramfs.cpio.gz"
