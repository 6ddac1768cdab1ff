#!/usr/bin/env bash
# run.sh [--mem MB] [--cpus N] [--timeout SECONDS] [--share DIR]... [--disk IMG[:DIR]]...
#        [--env NAME=VALUE]... -- COMMAND [ARGS...]
# Runs COMMAND inside the test host: Debian's stock kernel under QEMU TCG (-cpu max: nested SVM,
# so the test host has a real /dev/kvm), with this machine's root filesystem as its root (9p,
# read-only, under a throw-away tmpfs overlay: everything is writable, nothing reaches the host),
# a fresh tmpfs on /tmp, and each --share DIR mounted read-write at the same path (results
# reach the host there). Each --disk IMG (a raw image on this machine) is a virtio disk of the test
# host with cache=none: O_DIRECT inside reaches this machine's disk past both page caches, which
# neither the tmpfs /tmp nor a 9p share gives; with :DIR (absolute), the file system on IMG (e.g.
# ext4 made with mkfs.ext4 -F IMG) is mounted read-write at DIR before COMMAND runs.
# COMMAND runs as root in the caller's working directory, stdin from /dev/null, with PATH, HOME,
# every KVMRUN_*, RUST_LOG and RUST_BACKTRACE of the caller and the --env ones; nothing else of
# the caller's environment.
# Its output (stdout and stderr, merged) streams live; run.sh exits with COMMAND's status.
# Failures of the test host itself: 124 timeout (QEMU killed), 125 QEMU failed, the test host
# panicked, or no exit status came back. KVMRUN_TESTHOST_DEBUG=1: kernel messages and a trace of
# the test host's init.
# KVMRUN_TESTHOST_APPEND: more kernel parameters for the test host (e.g. kvm_amd.npt=0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=testhost
# shellcheck source=../guest/lib.sh
. "$here/../guest/lib.sh"

usage() {
  sed -n '2,3p' "$0" | sed 's/^# //' >&2
  exit 2
}

mem=4096 cpus=2 timeout=${KVMRUN_TESTHOST_TIMEOUT:-1800}
shares=() disks=() envs=()
while [ $# -gt 0 ]; do
  case $1 in
    --mem) mem=${2:?}; shift 2 ;;
    --mem=*) mem=${1#*=}; shift ;;
    --cpus) cpus=${2:?}; shift 2 ;;
    --cpus=*) cpus=${1#*=}; shift ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --timeout=*) timeout=${1#*=}; shift ;;
    --share) shares+=("${2:?}"); shift 2 ;;
    --share=*) shares+=("${1#*=}"); shift ;;
    --disk) disks+=("${2:?}"); shift 2 ;;
    --disk=*) disks+=("${1#*=}"); shift ;;
    --env) envs+=("${2:?}"); shift 2 ;;
    --env=*) envs+=("${1#*=}"); shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "testhost: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
[ $# -gt 0 ] || usage
for n in "$mem" "$cpus" "$timeout"; do
  case $n in '' | *[!0-9]*) die "--mem, --cpus and --timeout take whole numbers (got '$n')" ;; esac
done

need_cmd qemu-system-x86_64 qemu-system-x86
kernel= initrd=
read -r kernel initrd < <(bash "$here/build.sh" | tail -n1) || true
[ -f "$kernel" ] && [ -f "$initrd" ] || die "build.sh did not produce the test host"

# sq WORD: WORD quoted for any POSIX sh (single quotes; a ' inside becomes '\'').
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# One test host at a time on this machine: two TCG machines on a 2-core host starve each other
# into timeouts. Others wait here (KVMRUN_TESTHOST_LOCK=none opts out).
lock=${KVMRUN_TESTHOST_LOCK:-/tmp/kvmrun-testhost.lock}
if [ "$lock" != none ]; then
  exec 9>>"$lock" || die "cannot open the lock file $lock (set KVMRUN_TESTHOST_LOCK)"
  if ! flock -n 9; then
    log "waiting for the test host already running on this machine (lock $lock)"
    flock 9
  fi
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/kvmrun-testhost.XXXXXX")
_tmp_dirs+=("$run")
nonce=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')
printf '%s\n' "$nonce" >"$run/nonce"

# The command script: exports, cd, exec. The environment: PATH, HOME, KVMRUN_*, RUST_LOG,
# RUST_BACKTRACE of the caller, then --env (which wins).
cwd=$(pwd -P)
{
  if [ ${#disks[@]} -gt 0 ]; then
    cat <<'SH'
testhost_mount() { # serial dir
  for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] || continue
    mkdir -p "$2" && mount "/dev/${b##*/}" "$2" && return 0
    echo "testhost: mounting the --disk with serial $1 at $2 failed" >&2; return 1
  done
  echo "testhost: no virtio disk with serial $1 in the test host" >&2; return 1
}
SH
  fi
  printf 'export PATH=%s\n' "$(sq "${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}")"
  printf 'export HOME=%s\n' "$(sq "${HOME:-/root}")"
  while IFS= read -r name; do
    printf 'export %s=%s\n' "$name" "$(sq "${!name}")"
  done < <(compgen -e | grep -E '^(KVMRUN_[A-Za-z0-9_]*|RUST_LOG|RUST_BACKTRACE)$' || true)
  for kv in "${envs[@]}"; do
    name=${kv%%=*}
    [[ $kv == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env wants NAME=VALUE (got '$kv')"
    printf 'export %s=%s\n' "$name" "$(sq "${kv#*=}")"
  done
  # Scratch disks: found by their serial (kvmrun-thdN), mounted before the cd.
  j=0
  for d in "${disks[@]}"; do
    if [[ $d == *:* ]]; then
      printf 'testhost_mount %s %s || exit 125\n' "kvmrun-thd$j" "$(sq "${d##*:}")"
    fi
    j=$((j + 1))
  done
  printf 'cd %s || { echo "testhost: cannot cd to %s inside the test host (under /tmp? use --share)" >&2; exit 125; }\n' \
    "$(sq "$cwd")" "${cwd//[\"\$\`\\]/_}"
  printf 'exec'
  for a in "$@"; do printf ' %s' "$(sq "$a")"; done
  printf '\n'
} >"$run/cmd.sh"

# Paths under /tmp that the test host re-exposes over its tmpfs /tmp: the cwd and the cache.
for p in "$cwd" "$CACHE"; do
  case $p in /tmp/?*) printf '%s\n' "$p" ;; esac
done >"$run/expose"

# (QEMU option values: a comma is written as two.)
virtfs=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=${run//,/,,},mount_tag=kvmrunctl,security_model=none,multidevs=remap")
i=0
: >"$run/shares"
for s in "${shares[@]}"; do
  [ -d "$s" ] || die "--share $s: not a directory"
  s=$(cd "$s" && pwd -P)
  [[ $s != *$'\n'* ]] || die "--share: newlines in paths are not supported"
  virtfs+=(-virtfs "local,path=${s//,/,,},mount_tag=share$i,security_model=none,multidevs=remap")
  printf 'share%s %s\n' "$i" "$s" >>"$run/shares"
  i=$((i + 1))
done

drives=()
i=0
for d in "${disks[@]}"; do
  img=$d
  [[ $d != *:* ]] || img=${d%:*}
  [ -f "$img" ] || [ -b "$img" ] || die "--disk $img: not a file or block device"
  [[ ${d##*:} != *$'\n'* ]] || die "--disk: newlines in paths are not supported"
  drives+=(-drive "file=${img//,/,,},format=raw,if=none,id=thd$i,cache=none,aio=threads"
    -device "virtio-blk-pci,drive=thd$i,serial=kvmrun-thd$i")
  i=$((i + 1))
done

# Under TCG on a busy machine the test host's CPUs stall for seconds at a time: no soft-lockup
# watchdog and no RCU stall warnings (false alarms there, and noise in the command's output).
append="console=ttyS0 panic=-1"
# loglevel=1: only emergencies (a panic) from the test host's kernel on the console, which the
# command's output shares (KVM's "Unhandled WRMSR" and the like stay in dmesg).
# KVMRUN_TESTHOST_DEBUG=1: every kernel message, the lockup detectors on, and a QEMU monitor
# socket (the path is logged) for `info registers` and the like on a stuck test host.
monitor=()
if [ "${KVMRUN_TESTHOST_DEBUG:-0}" = 0 ]; then
  append+=" nowatchdog rcupdate.rcu_cpu_stall_suppress=1 quiet loglevel=1"
else
  append+=" kvmrun.testhost.debug"
  monitor=(-monitor "unix:$run/monitor,server,nowait")
  log "QEMU monitor: socat - UNIX-CONNECT:$run/monitor"
fi

# Extra kernel parameters for the test host (experiments, e.g. kvm_amd.npt=0).
append+=${KVMRUN_TESTHOST_APPEND:+ $KVMRUN_TESTHOST_APPEND}

mkfifo "$run/out"
log "booting the test host (QEMU TCG, $cpus CPUs, $mem MiB, timeout ${timeout}s):$(printf " %q" "$@")"
# stdin from /dev/null: QEMU leaves the caller's terminal alone (no raw mode) and needs none.
# --foreground keeps QEMU in our process group, so a Ctrl-C reaches it.
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg -cpu max -M q35 -smp "$cpus" -m "$mem" -display none -nodefaults -no-reboot \
  -serial stdio -kernel "$kernel" -initrd "$initrd" -append "$append" "${virtfs[@]}" "${drives[@]}" "${monitor[@]}" \
  </dev/null >"$run/out" 2>&1 &
qpid=$!
# However run.sh ends (Ctrl-C, kill, a reader that went away: EPIPE, not SIGPIPE, so that this
# trap runs), QEMU goes with it.
trap 'kill "$qpid" 2>/dev/null || true; _cleanup_tmp' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap '' PIPE

# Stream the console: strip \r, hide the marker (and whatever follows it: the power-off), note
# a panic.
marker="KVMRUN-TESTHOST-EXIT-$nonce="
status= panicked=
while IFS= read -r line || [ -n "$line" ]; do
  line=${line//$'\r'/}
  if [ -n "$status" ]; then continue; fi
  case $line in
    *"$marker"*)
      pre=${line%%"$marker"*}
      status=${line#*"$marker"}
      status=${status%%[!0-9]*}
      [ -z "$pre" ] || printf '%s\n' "$pre"
      continue ;;
    *"Kernel panic - not syncing"*) panicked=1 ;;
  esac
  printf '%s\n' "$line"
done <"$run/out"

qrc=0
wait "$qpid" || qrc=$?
if [ -z "$status" ] && [ -s "$run/status" ]; then status=$(cat "$run/status"); fi

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  log "error: timed out after ${timeout}s (QEMU killed)${status:+; the command had exited with status $status}"
  exit 124
elif [ -n "$panicked" ]; then
  log "error: the test host's kernel panicked"
  exit 125
elif [ "$qrc" != 0 ]; then
  log "error: QEMU failed (exit status $qrc)"
  exit 125
elif [ -z "$status" ]; then
  log "error: the test host stopped without reporting an exit status (it crashed or powered off early; KVMRUN_TESTHOST_DEBUG=1 shows its kernel messages)"
  exit 125
fi
exit "$status"
