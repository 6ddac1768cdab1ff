#!/usr/bin/env bash
# `kvmrun exec -- true` end to end vs QEMU (-accel kvm -M microvm, same kernel, initramfs and
# command), N runs each (default 5), interleaved: one at a time, then two at once (the time until
# both have exited). Also kvmrun's own share of an exec run: process start to the first guest
# instruction, and the guest's exit request to the process's exit, from a tiny payload.
#
# On PVM (this project's machines) the own-share part runs directly here and the end-to-end part
# inside the test host, where only the kvmrun/QEMU ratio means anything.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
kvmrun=${KVMRUN_BIN:-$here/../target/release/kvmrun}
now_ms() { date +%s%3N; }
stats() { # name [scale], values on stdin: "name min median max (n runs)"
  sort -n | awk -v name="$1" -v scale="${2:-1}" '{v[NR]=$1/scale} END {
    if (NR == 0) { printf "%-48s no successful run\n", name; exit }
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
    printf "%-48s %8.2f %8.2f %8.2f  (%d runs)\n", name, v[1], m, v[NR], NR }'
}

own_share() {
  local payload r t0 t1 stop
  payload=$(mktemp /tmp/kvmrun-exec-bench.XXXXXX)
  # 64-bit code at 1 MiB: out 0x501, 0; hlt. Wrapped in a minimal ELF64.
  python3 - "$payload" <<'PY'
import struct, sys
code = bytes([0x66, 0xBA, 0x01, 0x05, 0xB0, 0x00, 0xEE, 0xF4, 0xEB, 0xFD])
a = 0x100000
ehdr = b'\x7fELF\x02\x01\x01\x00' + b'\0' * 8 + struct.pack('<HHIQQQIHHHHHH', 2, 62, 1, a, 64, 0, 0, 64, 56, 1, 64, 0, 0)
phdr = struct.pack('<IIQQQQQQ', 1, 5, 120, a, a, len(code), len(code), 0x1000)
open(sys.argv[1], 'wb').write(ehdr + phdr + code)
PY
  local entry=() tail=() total=()
  for _ in $(seq 30); do
    t0=$(date +%s%N)
    r=$("$kvmrun" exec --allow-pvm --kernel "$payload" --console none --boot-report json -- true \
      2>&1 >/dev/null </dev/null | grep '^{')
    t1=$(date +%s%N)
    entry+=("$(sed -n 's/.*"kernel_entry_ms":\([0-9.]*\).*/\1/p' <<<"$r")")
    stop=$(sed -n 's/.*"stop_ms":\([0-9.]*\).*/\1/p' <<<"$r")
    total+=("$(((t1 - t0) / 1000))")
    # Process exit as the shell sees it, minus the moment the guest asked to stop.
    tail+=("$(awk -v s="$stop" -v t="$(((t1 - t0) / 1000))" 'BEGIN{printf "%.3f", t / 1000 - s}')")
  done
  rm -f "$payload"
  echo "kvmrun exec: its own share, directly on $(uname -n), ms: min median max"
  printf '%s\n' "${entry[@]}" | stats "process start -> first guest instruction"
  printf '%s\n' "${tail[@]}" | stats "guest exit request -> process exit (shell)"
  printf '%s\n' "${total[@]}" | stats "whole process (shell)" 1000
}

if [ -z "${KVMRUN_BENCH_INNER:-}" ] && { [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; }; then
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  own_share
  read -r bz vmlinux < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-initramfs.sh" | tail -n1)
  echo "end to end: inside the test host (QEMU TCG, nested SVM): compare ratios, not absolutes" >&2
  exec bash "$here/testhost/run.sh" --timeout 1800 --env KVMRUN_BENCH_INNER=1 \
    --env KVMRUN_BENCH_KERNEL="$bz" --env KVMRUN_BENCH_VMLINUX="$vmlinux" --env KVMRUN_BENCH_INITRD="$initrd" -- bash "$0" "$runs"
fi

bz=${KVMRUN_BENCH_KERNEL:-}
vmlinux=${KVMRUN_BENCH_VMLINUX:-}
initrd=${KVMRUN_BENCH_INITRD:-}
if [ -z "$bz" ]; then
  own_share
  read -r bz vmlinux < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-initramfs.sh" | tail -n1)
fi

# Each VMM boots the build the way it boots fastest: kvmrun the ELF vmlinux (what its default
# guest boots), QEMU the bzImage (its PVH boot of the same vmlinux was no faster in the test
# host, 2026-11-24).
k_run() { "$kvmrun" exec --kernel "$vmlinux" --initrd "$initrd" -- true </dev/null >/dev/null 2>&1; }
q_run() {
  local s=0
  qemu-system-x86_64 -accel kvm -M microvm -cpu host -m 256 -smp 1 -nographic -nodefaults \
    -no-reboot -serial null -kernel "$bz" -initrd "$initrd" \
    -append "console=ttyS0 reboot=k panic=-1 quiet -- true" \
    -device isa-debug-exit,iobase=0x501,iosize=1 </dev/null >/dev/null 2>&1 || s=$?
  # isa-debug-exit: (status << 1) | 1, so `true` exits with 1.
  [ "$s" = 1 ]
}
timed() { # command...: prints wall ms, or nothing if it failed
  local t0 t1
  t0=$(now_ms)
  if "$@"; then t1=$(now_ms); echo $((t1 - t0)); fi
}
pair() { # fn: runs two at once; prints the wall ms until both exited, or nothing on a failure
  local t0 t1 a b
  t0=$(now_ms)
  "$1" & a=$!
  "$1" & b=$!
  if wait "$a" && wait "$b"; then t1=$(now_ms); echo $((t1 - t0)); fi
}

k_run || { echo "kvmrun exec -- true failed" >&2; exit 1; }
q_run || { echo "QEMU failed" >&2; exit 1; }
declare -a ks qs kp qp
for i in $(seq "$runs"); do
  echo "run $i/$runs" >&2
  ks+=("$(timed k_run)")
  qs+=("$(timed q_run)")
  kp+=("$(pair k_run)")
  qp+=("$(pair q_run)")
done
echo
echo "exec -- true end to end, $runs runs each, ms (min median max)"
echo "where: $(if [ -n "${KVMRUN_BENCH_INNER:-}" ]; then echo 'inside the test host (QEMU TCG + nested SVM)'; else echo "hardware KVM on $(uname -n)"; fi)"
printf '%s\n' "${ks[@]}" | grep . | stats "kvmrun exec, one at a time"
printf '%s\n' "${qs[@]}" | grep . | stats "qemu -M microvm, one at a time"
printf '%s\n' "${kp[@]}" | grep . | stats "kvmrun exec, two at once (both done)"
printf '%s\n' "${qp[@]}" | grep . | stats "qemu -M microvm, two at once (both done)"
