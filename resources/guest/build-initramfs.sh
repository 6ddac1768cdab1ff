#!/usr/bin/env bash
# Builds kvmrun's default guest initramfs: busybox-static with all its applet symlinks (sh,
# taskset, reboot, poweroff, sed, grep, tr, dd, ...), a minimal /etc, and resources/guest/init as
# /init. A gzip'd newc cpio, no kernel modules (the default kernel has everything built in).
# Output: $KVMRUN_CACHE/initramfs-<hash>/initramfs.cpio.gz; $KVMRUN_CACHE/initramfs links to the
# newest. <hash> covers init, this script, lib.sh and the busybox-static version.
# Last line of stdout: the initramfs path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-initramfs
# shellcheck source=lib.sh
. "$here/lib.sh"

need_file /usr/share/doc/busybox-static busybox-static
key=$(input_hash "$here/init" "$here/build-initramfs.sh" "$here/lib.sh" -- \
  "busybox-static $(pkg_version busybox-static)")

build() { # tmpdir
  local out=$1 root=$1/root
  log "staging busybox-static $(pkg_version busybox-static) and /init"
  stage_busybox "$root"
  install -m 755 "$here/init" "$root/init"
  log "packing initramfs.cpio.gz"
  pack_initramfs "$root" "$out/initramfs.cpio.gz"
  rm -rf "$root"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
}

cached_build initramfs "$key" build
echo "$OUT/initramfs.cpio.gz"
