#!/usr/bin/env bash
# Boot-time benchmark: the default guest booted N times (default 10) with kvmrun, QEMU -M microvm
# and QEMU -M pc (same kernel, initramfs and command line), each running `true` and leaving
# through the debug-exit port. Prints min/median/max wall time to exit per VMM, kvmrun's own
# boot-complete time, and kvmrun's memory overhead.
#
# Runs where guests run: directly on hardware KVM, or (PVM here) re-runs itself inside the test
# host, where only ratios taken in the same run mean anything.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10}

if [ -z "${KVMRUN_BENCH_INNER:-}" ] && { [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; }; then
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-initramfs.sh" | tail -n1)
  echo "boot benchmark: inside the test host (QEMU TCG, nested SVM): compare ratios, not absolutes" >&2
  exec bash "$here/testhost/run.sh" --timeout 1800 --env KVMRUN_BENCH_INNER=1 \
    --env KVMRUN_BENCH_KERNEL="$bz" --env KVMRUN_BENCH_INITRD="$initrd" -- bash "$0" "$runs"
fi

kvmrun=${KVMRUN_BIN:-$here/../target/release/kvmrun}
bz=${KVMRUN_BENCH_KERNEL:-}
initrd=${KVMRUN_BENCH_INITRD:-}
if [ -z "$bz" ]; then
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-initramfs.sh" | tail -n1)
fi
cmdline="console=ttyS0 reboot=k panic=-1 quiet -- true"
now_ms() { date +%s%3N; }

stats() { # name, then values on stdin: prints "name min median max (n runs)"
  sort -n | awk -v name="$1" '{v[NR]=$1} END {
    if (NR == 0) { printf "%-28s no successful run\n", name; exit }
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
    printf "%-28s %8.1f %8.1f %8.1f   (%d runs)\n", name, v[1], m, v[NR], NR }'
}

declare -a k_exit k_done k_rss q_micro q_pc
qemu_run() { # machine
  local t0 t1
  t0=$(now_ms)
  qemu-system-x86_64 -accel kvm -M "$1" -cpu host -m 256 -smp 1 -nographic -nodefaults -no-reboot \
    -serial null -kernel "$bz" -initrd "$initrd" -append "$cmdline" \
    -device isa-debug-exit,iobase=0x501,iosize=1 </dev/null >/dev/null 2>&1 || true
  t1=$(now_ms)
  echo $((t1 - t0))
}

# Warm caches (binaries over 9p in the test host) before timing anything.
"$kvmrun" run --kernel "$bz" --initrd "$initrd" --cmdline "$cmdline" --console none >/dev/null 2>&1 || true
qemu_run microvm >/dev/null; qemu_run pc >/dev/null

for i in $(seq "$runs"); do
  echo "run $i/$runs" >&2
  t0=$(now_ms)
  report=$("$kvmrun" run --kernel "$bz" --initrd "$initrd" --cmdline "$cmdline" --console none \
    --boot-report json 2>&1 >/dev/null | grep '^{' || true)
  t1=$(now_ms)
  k_exit+=($((t1 - t0)))
  k_done+=("$(sed -n 's/.*"boot_complete_ms":\([0-9.]*\).*/\1/p' <<<"$report")")
  k_rss+=("$(sed -n 's/.*"vmm_overhead_kib":\([0-9]*\).*/\1/p' <<<"$report")")
  q_micro+=("$(qemu_run microvm)")
  q_pc+=("$(qemu_run pc)")
done

echo
echo "boot benchmark, $runs runs each, milliseconds (min median max)"
echo "where: $(if [ -n "${KVMRUN_BENCH_INNER:-}" ]; then echo 'inside the test host (QEMU TCG + nested SVM)'; else echo "hardware KVM on $(uname -n)"; fi)"
printf '%s\n' "${k_exit[@]}" | stats "kvmrun: start to exit"
printf '%s\n' "${k_done[@]}" | grep . | stats "kvmrun: start to boot-complete"
printf '%s\n' "${q_micro[@]}" | stats "qemu -M microvm: to exit"
printf '%s\n' "${q_pc[@]}" | stats "qemu -M pc: to exit"
printf '%s\n' "${k_rss[@]}" | grep . | stats "kvmrun VMM overhead (KiB)"
