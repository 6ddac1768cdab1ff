#!/usr/bin/env bash
# mkdisk.sh SRC_DIR OUT_IMG [SIZE]: an ext4 file system image holding SRC_DIR's contents
# (mkfs.ext4 -d: no loop mounts, no root rights needed). SIZE as truncate(1) takes it (64M, 1G,
# bytes); default: the contents' size plus 25% and 16 MiB. The image is sparse, fully initialised
# (no lazy inode-table or journal init in the guest afterwards: benchmarks see no background
# writes), labelled "kvmrun", no reserved blocks, files owned by root. Written atomically.
# Last line of stdout: OUT_IMG (absolute).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=mkdisk
# shellcheck source=lib.sh
. "$here/lib.sh"

[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 SRC_DIR OUT_IMG [SIZE]" >&2; exit 2; }
src=$1 out=$2 size=${3:-}
[ -d "$src" ] || die "$src is not a directory"
need_cmd mkfs.ext4 e2fsprogs
mkfs=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)

if [ -z "$size" ]; then
  kib=$(du -sk --apparent-size "$src" | cut -f1)
  size=$(((kib * 5 / 4 + 16 * 1024) / 1024))M
fi
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
tmp=$(mktemp "$out.tmp.XXXXXX")
_tmp_dirs+=("$tmp")
log "ext4 image $out ($size) from $src"
chmod 644 "$tmp"
truncate -s "$size" "$tmp"
"$mkfs" -q -F -t ext4 -L kvmrun -m 0 -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
  -d "$src" "$tmp" >&2 || die "mkfs.ext4 failed (is $size big enough for $src?)"
mv -f "$tmp" "$out"
echo "$out"
