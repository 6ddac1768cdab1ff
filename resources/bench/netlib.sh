# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with the sourcing script
# Shared by net.sh and vm2vm.sh (sourced): their common options, the re-run inside the test host
# on machines whose /dev/kvm cannot run Linux, the guest artifacts and the work directory.
#
# The caller sets before sourcing:
#   prog          its name, for messages (net.sh)
#   list_opt      its list option without dashes (vmms, nics)
#   list_words    what the list may hold (kvmrun qemu)
#   list          the list's default (kvmrun,qemu)
#   initrd_build  the initramfs builder under resources/guest (build-initramfs.sh)
#   help_range    the lines of its header that --help prints (2,25)
#   here          resources/
# and then calls: netlib_options "$@"; netlib_testhost_or_continue; netlib_artifacts;
# netlib_workdir; netlib_environment before the report. They set runs, mib, out, list; kvmrun,
# bz, initrd; work; where, cpu_model, host_kernel, kvmrun_git.

netlib_usage() {
  echo "$prog: usage: $prog [RUNS] [--mib MIB] [--$list_opt ${list_words// /,}] [--out FILE]" >&2
  exit 2
}

netlib_options() {
  runs=3 mib='' out=''
  while [ $# -gt 0 ]; do
    case $1 in
      --out) out=${2:?--out needs a file}; shift 2 ;;
      --out=*) out=${1#*=}; shift ;;
      --mib) mib=${2:?--mib needs a number}; shift 2 ;;
      --mib=*) mib=${1#*=}; shift ;;
      "--$list_opt") list=${2:?--$list_opt needs a list}; shift 2 ;;
      "--$list_opt="*) list=${1#*=}; shift ;;
      -h | --help) sed -n "${help_range}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *[!0-9]* | '') netlib_usage ;;
      *) runs=$1; shift ;;
    esac
  done
  [ "$runs" -ge 1 ] || { echo "$prog: RUNS must be at least 1" >&2; exit 2; }
  case $mib in '' | *[!0-9]*) [ -z "$mib" ] || { echo "$prog: --mib takes a whole number" >&2; exit 2; } ;; esac
  local w
  for w in ${list//,/ }; do
    case " $list_words " in
      *" $w "*) ;;
      *) echo "$prog: --$list_opt takes ${list_words// / and\/or } (got '$w')" >&2; exit 2 ;;
    esac
  done
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
  local bz initrd share=() rc=0
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/$initrd_build" | tail -n1)
  if [ -n "$out" ]; then share=(--share "$(dirname "$out")"); fi
  echo "$prog: inside the test host (QEMU TCG, nested SVM): compare ratios, not absolutes" >&2
  bash "$here/testhost/run.sh" --timeout 3000 ${KVMRUN_BENCH_TESTHOST_CPUS:+--cpus "$KVMRUN_BENCH_TESTHOST_CPUS"} "${share[@]}" --env KVMRUN_BENCH_INNER=1 \
    --env KVMRUN_BENCH_KERNEL="$bz" --env KVMRUN_BENCH_INITRD="$initrd" \
    -- bash "$0" "$runs" --mib "${mib:-4}" "--$list_opt" "$list" ${out:+--out "$out"} || rc=$?
  exit "$rc"
}

# kvmrun (KVMRUN_BIN or this tree's release build), the kernel and the initramfs (given by the
# outer run, or built here).
netlib_artifacts() {
  kvmrun=${KVMRUN_BIN:-$here/../target/release/kvmrun}
  bz=${KVMRUN_BENCH_KERNEL:-}
  initrd=${KVMRUN_BENCH_INITRD:-}
  if [ -z "$bz" ]; then
    cargo build --release --manifest-path "$here/../Cargo.toml" >&2
    read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
    initrd=$(bash "$here/guest/$initrd_build" | tail -n1)
  fi
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

# Where the figures were taken and on what: where, cpu_model, host_kernel, kvmrun_git.
netlib_environment() {
  if [ -n "${KVMRUN_BENCH_INNER:-}" ]; then
    where="inside the test host (QEMU TCG + nested SVM): compare ratios, not absolutes"
  else
    where="hardware KVM on $(uname -n)"
  fi
  cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
  host_kernel=$(uname -r)
  kvmrun_git=$(git -C "$here/.." describe --always --dirty 2>/dev/null || echo unknown)
}
