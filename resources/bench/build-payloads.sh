#!/usr/bin/env bash
# Builds `kvmrun bench`'s own payloads from resources/bench/payloads/*.c: matmul (MFLOP/s over
# matrix sizes, 1..N threads), stream (copy/scale/add/triad MB/s) and cycles (fixed work timed
# with RDTSC), with gcc, statically linked, so the same binaries run on the host, in the test
# host and in the benchmark guest (resources/guest/build-bench-initramfs.sh copies them in).
# Output: $KVMRUN_CACHE/bench-payloads-<hash>/bin/{matmul,stream,cycles}; <hash> covers the
# sources, this script and the gcc and libc6-dev versions. Last line of stdout: the bin dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-payloads
# shellcheck source=../guest/lib.sh
. "$here/../guest/lib.sh"

need_cmd gcc gcc
need_file /usr/lib/x86_64-linux-gnu/libc.a libc6-dev
src=$here/payloads
payloads=(matmul stream cycles)
key=$(input_hash "$here/build-payloads.sh" "$src/common.h" "$src/matmul.c" "$src/stream.c" \
  "$src/cycles.c" -- "gcc $(pkg_version gcc)" "libc6-dev $(pkg_version libc6-dev)")

build() { # tmpdir
  local out=$1 p
  mkdir -p "$out/bin"
  for p in "${payloads[@]}"; do
    log "gcc -O2 -static $p.c"
    # -O2 and the baseline x86-64 ISA: the same code on every CPU model the guests may see.
    gcc -O2 -static -pthread -Wall -Wextra -Werror -o "$out/bin/$p" "$src/$p.c"
  done
}

cached_build bench-payloads "$key" build
echo "$OUT/bin"
