#!/usr/bin/env bash
# selftest.sh: proves that the guest artifacts and the test host work together, without kvmrun.
# Builds (or reuses) the default guest kernel + initramfs, the Debian kernel + distro initramfs
# and a small ext4 disk, then boots the test host once and, inside it, boots the guests with
# QEMU -accel kvm (real, nested KVM) on -M microvm and -M pc (bzImage, and the ELF vmlinux through
# its PVH note), checking: the command after " -- "
# runs with its quoting intact, its exit status comes back through the debug-exit port 0x501
# (QEMU's isa-debug-exit: exit code (status << 1) | 1), boot-complete is written to port 0x502,
# the no-command path powers off, virtio-blk/virtio-net/e1000 devices show up, and the distro
# initramfs loads its modules and mounts an ext4 virtio disk. Prints one line per check with its
# wall time, and a summary; exits non-zero if any check failed.
# Usage: selftest.sh [--keep] (--keep: leave the work directory with every guest's console log)
set -euo pipefail

inner() { # WORKDIR: runs inside the test host
  local work=$1 pass=0 failed=0
  local bz=$SELFTEST_BZIMAGE vmlinux=$SELFTEST_VMLINUX initrd=$SELFTEST_INITRD dk=$SELFTEST_DISTRO_KERNEL di=$SELFTEST_DISTRO_INITRD
  local disk=$work/disk.img n=0
  echo "selftest: inside the test host: $(uname -r), $(nproc) CPUs, /dev/kvm $([ -c /dev/kvm ] && echo present || echo MISSING), command started $(cut -d' ' -f1 /proc/uptime) s after its kernel"
  dmesg | grep -q "Nested Virtualization enabled" && echo "selftest: dmesg: kvm: Nested Virtualization enabled" ||
    { echo "selftest: FAIL: no 'Nested Virtualization enabled' in dmesg"; failed=$((failed + 1)); }
  # Warm QEMU's binary and libraries (read over 9p) so that the timings below are boot times.
  qemu-system-x86_64 -version >/dev/null

  # check NAME WANT_RC WANT_REGEX QEMU-ARGS...: one guest boot; WANT_REGEX must match a line of
  # its console output.
  # SHELL_INPUT (optional): typed on the guest's console once its shell prompt shows.
  # console LOG: the log without \r and terminal escapes (SeaBIOS clears the screen on -M pc).
  # (A \r ends a line too: SeaBIOS leaves "Booting from ROM.." without a newline.)
  console() { tr '\r' '\n' <"$1" | sed 's/\x1bc//g; s/\x1b\[[0-9;?]*[A-Za-z]//g' | grep -v '^$'; }
  check() {
    local name=$1 want_rc=$2 want=$3 rc=0 t0 t1 log
    shift 3
    n=$((n + 1))
    log=$work/$n-${name// /_}.log
    t0=$(date +%s%N)
    if [ -z "${SHELL_INPUT:-}" ]; then
      timeout -k 5 120 qemu-system-x86_64 -accel kvm -cpu host -m 512 -nographic -nodefaults \
        -no-reboot -serial stdio "$@" </dev/null >"$log" 2>&1 || rc=$?
    else
      local fifo pid w i
      fifo=$(mktemp -u /tmp/selftest-console.XXXXXX) # /tmp: a tmpfs (9p shares refuse fifos)
      mkfifo "$fifo"
      timeout -k 5 120 qemu-system-x86_64 -accel kvm -cpu host -m 512 -nographic -nodefaults \
        -no-reboot -serial stdio "$@" <"$fifo" >"$log" 2>&1 &
      pid=$!
      exec {w}>"$fifo"
      for i in $(seq 600); do grep -q 'kvmrun:/# ' "$log" 2>/dev/null && break; sleep 0.2; done
      printf '%s\n' "$SHELL_INPUT" >&"$w"
      wait "$pid" || rc=$?
      exec {w}>&-
      rm -f "$fifo"
    fi
    t1=$(date +%s%N)
    local ms=$(((t1 - t0) / 1000000))
    if [ "$rc" = "$want_rc" ] && console "$log" | grep -Eq -- "$want"; then
      printf 'selftest: ok   %-58s %6d ms  (qemu exit %s)\n' "$name" "$ms" "$rc"
      pass=$((pass + 1))
    else
      printf 'selftest: FAIL %-58s %6d ms  (qemu exit %s, wanted %s and /%s/)\n' "$name" "$ms" "$rc" "$want_rc" "$want"
      console "$log" | tail -n 25 | sed 's/^/    | /'
      failed=$((failed + 1))
    fi
  }
  local dbg=(-device isa-debug-exit,iobase=0x501,iosize=1)
  local def=(-kernel "$bz" -initrd "$initrd")
  local q='console=ttyS0 quiet panic=-1'
  local devs=(-drive "file=$disk,if=none,id=d0,format=raw,snapshot=on" -device virtio-blk-pci,drive=d0
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -netdev user,id=n1 -device e1000,netdev=n1)
  local probe='ls /sys/class/net | tr "\n" " "; echo; mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt'

  check "microvm: command, debug-exit status 0" 1 '^hello-from-guest$' -M microvm "${def[@]}" "${dbg[@]}" \
    -append "$q -- sh -c 'echo hello-from-guest; exit 0'"
  check "microvm: again (warm)" 1 '^hello-from-guest$' -M microvm "${def[@]}" "${dbg[@]}" \
    -append "$q -- sh -c 'echo hello-from-guest; exit 0'"
  check "microvm: ELF vmlinux (PVH entry)" 1 '^hello-from-elf$' -M microvm -kernel "$vmlinux" \
    -initrd "$initrd" "${dbg[@]}" -append "$q -- sh -c 'echo hello-from-elf'"
  check "microvm: debug-exit status 7" 15 '^seven$' -M microvm "${def[@]}" "${dbg[@]}" \
    -append "$q -- sh -c 'echo seven; exit 7'"
  check "microvm: boot-complete write to port 0x502" 3 '' -M microvm "${def[@]}" \
    -device isa-debug-exit,iobase=0x502,iosize=1 -append "$q -- sh -c 'echo never-reached'"
  check "microvm: no debug-exit device: poweroff fallback" 0 'exited with status 4' -M microvm "${def[@]}" \
    -append "$q -- sh -c 'exit 4'"
  check "pc: command, debug-exit status 5" 11 '^hello-from-guest$' -M pc "${def[@]}" "${dbg[@]}" \
    -append "$q -- sh -c 'echo hello-from-guest; exit 5'"
  check "pc: double quotes, 2 vCPUs" 1 '^2$' -M pc -smp 2 "${def[@]}" "${dbg[@]}" \
    -append "$q -- sh -c \"grep -c ^processor /proc/cpuinfo\""
  check "pc: console is the legacy 16550 at 0x3f8, IRQ 4" 1 'port:000003F8 irq:4( |$)' -M pc "${def[@]}" "${dbg[@]}" \
    -append "$q -- cat /proc/tty/driver/serial"
  SHELL_INPUT='echo from-the-shell; exit' \
    check "pc: no command: interactive shell, exit, poweroff" 0 '^from-the-shell$' -M pc "${def[@]}" "${dbg[@]}" -append "$q"
  check "pc: virtio-blk ext4, virtio-net, e1000" 1 '^hello-from-disk$' -M pc "${def[@]}" "${dbg[@]}" "${devs[@]}" \
    -append "$q -- sh -c '$probe'"
  grep -q 'eth0 eth1' "$work/$n-"*.log 2>/dev/null ||
    { echo "selftest: FAIL: default kernel: expected eth0 and eth1"; failed=$((failed + 1)); }
  check "pc: Debian kernel + distro initramfs, modules" 1 '^hello-from-disk$' -M pc -kernel "$dk" -initrd "$di" \
    "${dbg[@]}" "${devs[@]}" -append "$q -- sh -c 'cut -d\" \" -f1 /proc/modules | sort | tr \"\n\" \" \"; echo; $probe'"
  grep -q 'eth0 eth1' "$work/$n-"*.log 2>/dev/null ||
    { echo "selftest: FAIL: distro kernel: expected eth0 and eth1"; failed=$((failed + 1)); }
  echo "selftest: distro guest modules: $(console "$work/$n-"*.log | grep -m1 virtio_pci || echo '?')"

  echo "selftest: $pass checks passed, $failed failed"
  [ "$failed" = 0 ]
}

if [ "${1:-}" = --inner ]; then
  inner "$2"
  exit
fi

main() {
  local here keep=0
  here=$(cd "$(dirname "$0")" && pwd)
  [ "${1:-}" = --keep ] && keep=1
  local bz vmlinux initrd dk di work t0
  read -r bz vmlinux < <(bash "$here/../guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/../guest/build-initramfs.sh" | tail -n1)
  read -r dk di < <(bash "$here/../guest/build-distro-initramfs.sh" | tail -n1)
  bash "$here/build.sh" >/dev/null
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvmrun-selftest.XXXXXX")
  [ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
  mkdir "$work/disk"
  echo hello-from-disk >"$work/disk/hello.txt"
  bash "$here/../guest/mkdisk.sh" "$work/disk" "$work/disk.img" 32M >/dev/null
  echo "selftest: booting the test host" >&2
  t0=$(date +%s%N)
  local rc=0
  bash "$here/run.sh" --timeout 1200 --share "$work" --env SELFTEST_BZIMAGE="$bz" --env SELFTEST_VMLINUX="$vmlinux" \
    --env SELFTEST_INITRD="$initrd" --env SELFTEST_DISTRO_KERNEL="$dk" \
    --env SELFTEST_DISTRO_INITRD="$di" -- bash "$here/selftest.sh" --inner "$work" || rc=$?
  echo "selftest: test host run took $((($(date +%s%N) - t0) / 1000000)) ms in all, exit status $rc" >&2
  [ "$keep" = 0 ] || echo "selftest: console logs in $work" >&2
  return "$rc"
}
main "$@"
exit
