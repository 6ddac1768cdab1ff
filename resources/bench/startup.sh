#!/usr/bin/env bash
# kvmrun's own share of a run, measured directly on this machine (PVM runs the KVM ioctls
# natively): process start to the first guest instruction, and the guest's exit request to the
# end of the run, over N runs (default 30) of a tiny payload that leaves at once through the
# debug-exit port. Prints min/median/max in milliseconds, for the machine with and without a PIT.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-30}
cargo build --release --manifest-path "$here/../Cargo.toml" >&2
kvmrun=$here/../target/release/kvmrun
payload=$(mktemp /tmp/kvmrun-startup.XXXXXX)
# 64-bit code at 1 MiB: out 0x501, 0 (debug-exit with status 0); hlt. Wrapped in a minimal ELF64.
python3 - "$payload" <<'PY'
import struct, sys
code = bytes([0x66, 0xBA, 0x01, 0x05, 0xB0, 0x00, 0xEE, 0xF4, 0xEB, 0xFD])
a = 0x100000
ehdr = b'\x7fELF\x02\x01\x01\x00' + b'\0' * 8 + struct.pack('<HHIQQQIHHHHHH', 2, 62, 1, a, 64, 0, 0, 64, 56, 1, 64, 0, 0)
phdr = struct.pack('<IIQQQQQQ', 1, 5, 120, a, a, len(code), len(code), 0x1000)
open(sys.argv[1], 'wb').write(ehdr + phdr + code)
PY
# The machine with and without the legacy PIT (--pit), alternated run by run so both see the
# same noise: KVM's PIT teardown is most of the exit time when there is one.
modes=(auto on)
samples=$(mktemp -d /tmp/kvmrun-startup-samples.XXXXXX)
trap 'rm -rf "$payload" "$samples"' EXIT
for i in $(seq "$runs"); do
  for pit in "${modes[@]}"; do
    t0=$(date +%s%N)
    r=$("$kvmrun" run --allow-pvm --pit "$pit" --kernel "$payload" --console none --boot-report json 2>&1 >/dev/null </dev/null | grep '^{')
    t1=$(date +%s%N)
    sed -n 's/.*"kernel_entry_ms":\([0-9.]*\).*/\1/p' <<<"$r" >>"$samples/entry-$pit"
    stop=$(sed -n 's/.*"stop_ms":\([0-9.]*\).*/\1/p' <<<"$r")
    exit_ms=$(sed -n 's/.*"exit_ms":\([0-9.]*\).*/\1/p' <<<"$r")
    awk -v a="$stop" -v b="$exit_ms" 'BEGIN{printf "%.3f\n", b - a}' >>"$samples/teardown-$pit"
    echo "$(( (t1 - t0) / 1000 ))" >>"$samples/total-$pit"
    # The exit share as a script sees it: from the guest's exit request until the process is
    # gone, VM teardown by the kernel included (stop_ms counts from kvmrun's start).
    awk -v a="$stop" -v t="$(( (t1 - t0) / 1000 ))" 'BEGIN{printf "%.3f\n", t / 1000 - a}' >>"$samples/exit-$pit"
  done
done
stats() {
  sort -n | awk -v name="$1" -v scale="${2:-1}" '{v[NR]=$1/scale} END {
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
    printf "%-52s %8.2f %8.2f %8.2f  (%d runs)\n", name, v[1], m, v[NR], NR }'
}
echo "kvmrun start-up and teardown on $(uname -n) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), ms: min median max"
for pit in "${modes[@]}"; do
  stats "--pit $pit: process start -> first guest instruction" <"$samples/entry-$pit"
  stats "--pit $pit: guest exit request -> run over" <"$samples/teardown-$pit"
  stats "--pit $pit: guest exit request -> process exit" <"$samples/exit-$pit"
  stats "--pit $pit: whole process, as the shell sees it" 1000 <"$samples/total-$pit"
done
