# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the sourcing script
# Shared by net.sh and vm2vm.sh (sourced): their common options, the re-run inside the test host
# on machines whose /dev/kvm cannot run Linux, the guest artifacts and the work directory.
#
# The caller sets before sourcing:
#   prog          its name, for messages (net.sh)
#   lists         its list options, without dashes (vmms, or vmms nics); for each NAME of them:
#   NAME          its default (vmms=kvmrun,qemu), replaced by --NAME LIST
#   NAME_words    what it may hold (vmms_words='kvmrun qemu')
#   initrd_build  the initramfs builder under resources/guest (build-initramfs.sh)
#   help_range    the lines of its header that --help prints (2,25)
#   here          resources/
# and then calls: netlib_options "$@"; netlib_testhost_or_continue; netlib_artifacts;
# netlib_need COMMAND...; netlib_workdir; netlib_qemu_cmd for each QEMU guest;
# netlib_environment before the report. They set runs, mib, out and the lists; kvmrun, bz,
# initrd; work; qemu_cmd; where, cpu_model, host_kernel, kvmrun_git, qemu_version.

netlib_usage() {
  local n w u=''
  for n in $lists; do
    w=${n}_words
    u+=" [--$n ${!w// /,}]"
  done
  echo "$prog: usage: $prog [RUNS] [--mib MIB]$u [--out FILE]" >&2
  exit 2
}

# netlib_list NAME VALUE: sets the list option NAME (one of $lists) after checking its words;
# fails (status 1) when NAME is not a list option.
netlib_list() {
  local n=$1 w words
  case " $lists " in *" $n "*) ;; *) return 1 ;; esac
  words=${n}_words
  for w in ${2//,/ }; do
    case " ${!words} " in
      *" $w "*) ;;
      *) echo "$prog: --$n takes ${!words// / and\/or } (got '$w')" >&2; exit 2 ;;
    esac
  done
  [ -n "$2" ] || { echo "$prog: --$n needs a list" >&2; exit 2; }
  printf -v "$n" '%s' "$2"
}

netlib_options() {
  local a
  runs=3 mib='' out=''
  while [ $# -gt 0 ]; do
    case $1 in
      --out) out=${2:?--out needs a file}; shift 2 ;;
      --out=*) out=${1#*=}; shift ;;
      --mib) mib=${2:?--mib needs a number}; shift 2 ;;
      --mib=*) mib=${1#*=}; shift ;;
      -h | --help) sed -n "${help_range}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      --*=*) a=${1%%=*}; netlib_list "${a#--}" "${1#*=}" || netlib_usage; shift ;;
      --*)
        if [ $# -lt 2 ] || ! netlib_list "${1#--}" "$2"; then netlib_usage; fi
        shift 2
        ;;
      *[!0-9]* | '') netlib_usage ;;
      *) runs=$1; shift ;;
    esac
  done
  [ "$runs" -ge 1 ] || { echo "$prog: RUNS must be at least 1" >&2; exit 2; }
  case $mib in '' | *[!0-9]*) [ -z "$mib" ] || { echo "$prog: --mib takes a whole number" >&2; exit 2; } ;; esac
  if [ -n "$out" ]; then
    out=$(cd "$(dirname "$out")" && pwd -P)/$(basename "$out")
  fi
}

# On PVM (or without hardware virtualisation) the script runs itself again inside the test host
# and exits with that run's status; elsewhere it returns and the script goes on here.
netlib_testhost_or_continue() {
  if [ -n "${KVMRUN_BENCH_INNER:-}" ] || { [ ! -e /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; }; then
    mib=${mib:-64}
    [ "$mib" -ge 1 ] || { echo "$prog: --mib must be at least 1" >&2; exit 2; }
    return 0
  fi
  local bz initrd share=() lists_args=() n rc=0
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/$initrd_build" | tail -n1)
  if [ -n "$out" ]; then share=(--share "$(dirname "$out")"); fi
  for n in $lists; do lists_args+=("--$n" "${!n}"); done
  echo "$prog: inside the test host (QEMU TCG, nested SVM): compare ratios, not absolutes" >&2
  bash "$here/testhost/run.sh" --timeout 3000 ${KVMRUN_BENCH_TESTHOST_CPUS:+--cpus "$KVMRUN_BENCH_TESTHOST_CPUS"} "${share[@]}" --env KVMRUN_BENCH_INNER=1 \
    --env KVMRUN_BENCH_KERNEL="$bz" --env KVMRUN_BENCH_INITRD="$initrd" \
    --env KVMRUN_BIN="${KVMRUN_BIN:-${CARGO_TARGET_DIR:-$here/../target}/release/kvmrun}" \
    -- bash "$0" "$runs" --mib "${mib:-4}" "${lists_args[@]}" ${out:+--out "$out"} || rc=$?
  exit "$rc"
}

# kvmrun (KVMRUN_BIN or this tree's release build), the kernel and the initramfs (given by the
# outer run, or built here).
netlib_artifacts() {
  kvmrun=${KVMRUN_BIN:-${CARGO_TARGET_DIR:-$here/../target}/release/kvmrun}
  bz=${KVMRUN_BENCH_KERNEL:-}
  initrd=${KVMRUN_BENCH_INITRD:-}
  if [ -z "$bz" ]; then
    cargo build --release --manifest-path "$here/../Cargo.toml" >&2
    read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
    initrd=$(bash "$here/guest/$initrd_build" | tail -n1)
  fi
}

# netlib_need COMMAND...: each must be on PATH, and qemu-system-x86_64 too when vmms holds qemu.
netlib_need() {
  local c
  case ,${vmms:-}, in *,qemu,*) set -- "$@" qemu-system-x86_64 ;; esac
  for c in "$@"; do
    command -v "$c" >/dev/null || { echo "$prog: $c missing" >&2; exit 1; }
  done
}

# netlib_qemu_cmd NIC TAP MAC CMDLINE: sets the array qemu_cmd to the QEMU guest kvmrun is
# compared with: -M pc, 1 vCPU, 512 MiB, the bench kernel and initramfs, NIC (virtio or e1000)
# on TAP (-netdev tap,vhost=off; MAC empty: QEMU's default), the console on stdout. The guest's
# init ends it through isa-debug-exit: QEMU exits with (status << 1) | 1, so 1 is success.
netlib_qemu_cmd() {
  local dev=virtio-net-pci
  [ "$1" = virtio ] || dev=e1000
  qemu_cmd=(qemu-system-x86_64 -accel kvm -M pc -cpu host -m 512 -smp 1 -nographic -nodefaults
    -no-reboot -serial stdio -kernel "$bz" -initrd "$initrd" -append "$4"
    -netdev "tap,id=n0,ifname=$2,script=no,downscript=no,vhost=off"
    -device "$dev,netdev=n0${3:+,mac=$3}" -device 'isa-debug-exit,iobase=0x501,iosize=1')
}

# Logs (guest consoles, servers) go next to --out when given, to be read afterwards; otherwise
# to a temporary directory the caller's clean-up removes.
netlib_workdir() {
  if [ -n "$out" ]; then
    work=$out.logs
    rm -rf "$work" && mkdir -p "$work"
  else
    work=$(mktemp -d "${TMPDIR:-/tmp}/kvmrun-$1.XXXXXX")
  fi
}

# Where the figures were taken and on what: where, cpu_model, host_kernel, kvmrun_git,
# qemu_version.
netlib_environment() {
  if [ -n "${KVMRUN_BENCH_INNER:-}" ]; then
    where="inside the test host (QEMU TCG + nested SVM): compare ratios, not absolutes"
  else
    where="hardware KVM on $(uname -n)"
  fi
  cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
  host_kernel=$(uname -r)
  kvmrun_git=$(git -C "$here/.." describe --always --dirty 2>/dev/null || echo unknown)
  qemu_version="QEMU not run"
  case ,${vmms:-}, in
    *,qemu,*) qemu_version=$(qemu-system-x86_64 --version 2>/dev/null | head -n1 || echo "QEMU unknown") ;;
  esac
}
