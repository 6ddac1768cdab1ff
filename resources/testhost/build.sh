#!/usr/bin/env bash
# Builds the test host: Debian's stock kernel (linux-image-amd64) + an initramfs with
# busybox-static, resources/testhost/init and the modules (with their dependencies) that the test
# host needs: virtio_pci, 9pnet_virtio, 9p (the host's root and shares), overlay, kvm + kvm_amd
# (a real /dev/kvm under QEMU TCG's nested SVM), tun, bridge, veth (guest networking), virtio_blk,
# ext4 (scratch disks). run.sh boots it; see resources/README.md.
# Output: $KVMRUN_CACHE/testhost-<hash>/{vmlinuz,initramfs.cpio.gz}; $KVMRUN_CACHE/testhost links
# to the newest. <hash> covers init, this script, lib.sh, the kernel and busybox-static versions.
# Last line of stdout: "<kernel> <initramfs>".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=testhost-build
# shellcheck source=../guest/lib.sh
. "$here/../guest/lib.sh"

MODULES=(virtio_pci 9pnet_virtio 9p overlay kvm kvm_amd tun bridge veth virtio_blk ext4)

kver=$(distro_kver)
need_file "/boot/vmlinuz-$kver" "linux-image-$kver"
need_file "/lib/modules/$kver/modules.dep" "linux-image-$kver"
need_file /usr/share/doc/busybox-static busybox-static
key=$(input_hash "$here/init" "$here/build.sh" "$here/../guest/lib.sh" -- \
  "linux-image-$kver $(pkg_version "linux-image-$kver")" \
  "busybox-static $(pkg_version busybox-static)" "${MODULES[*]}")

build() { # tmpdir
  local out=$1 root=$1/root
  log "kernel $kver: copying /boot/vmlinuz-$kver"
  cp "/boot/vmlinuz-$kver" "$out/vmlinuz"
  log "staging busybox-static and /init"
  stage_busybox "$root"
  printf 'kvmrun-testhost\n' >"$root/etc/hostname"
  install -m 755 "$here/init" "$root/init"
  mkdir -p "$root"/{lower,rw,newroot,ctl}
  log "staging modules: ${MODULES[*]} and their dependencies"
  stage_modules "$root" "$kver" "${MODULES[@]}"
  log "packing initramfs.cpio.gz"
  pack_initramfs "$root" "$out/initramfs.cpio.gz"
  rm -rf "$root"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
}

cached_build testhost "$key" build
echo "$OUT/vmlinuz $OUT/initramfs.cpio.gz"
