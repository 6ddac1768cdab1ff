#!/usr/bin/env bash
# build-rootfs.sh: the default guest's userland (busybox + /init, the same as the initramfs) as
# an ext4 image, for booting with the root file system on virtio-blk (root=/dev/vda, no initrd).
# Output: $KVMRUN_CACHE/rootfs-<hash>/rootfs.ext4, <hash> = the initramfs it is made from.
# Last line of stdout: the image path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KVMRUN_CACHE:-$HOME/.cache/kvmrun}
initrd=$(bash "$here/build-initramfs.sh" | tail -n1)
hash=$(sha256sum "$initrd" | cut -c1-16)
out=$cache/rootfs-$hash/rootfs.ext4
if [ ! -f "$out" ]; then
  exec 9>"$cache/.rootfs.lock"
  flock 9
  if [ ! -f "$out" ]; then
    echo "build-rootfs: ext4 root file system from $initrd" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && gzip -dc "$initrd" | cpio -id --quiet)
    # The kernel mounts it before init runs; these are its mount points.
    mkdir -p "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/tmp" "$tmp/run"
    bash "$here/mkdisk.sh" "$tmp" "$out" 64M >/dev/null
  fi
fi
echo "$out"
