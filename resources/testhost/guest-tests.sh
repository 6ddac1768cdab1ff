#!/usr/bin/env bash
# guest-tests.sh STATE_DIR TEST_BINARY...
# Runs the ignored (guest-booting) tests of each TEST_BINARY inside the test host, one process per
# test, and keeps its progress in STATE_DIR (a --share of run.sh, so it survives the test host):
#   passed    names of the tests that passed (skipped on a later run)
#   attempts  one line per start of a test (a test host that dies mid-test still counts it)
#   failed    names of the tests that failed on every attempt
# Why one process per test and a state directory: in the test host a guest sometimes dies in early
# boot, and the test host itself sometimes dies (its kernel faults in a kvmrun vCPU thread: QEMU
# TCG's emulation of nested SVM, see the README). A failed test runs again, up to
# KVMRUN_TESTHOST_ATTEMPTS times in all (default 3: one run of CI met two such early-boot deaths
# in the same test), and says RETRIED when a later attempt passes; if the test host dies,
# run-tests.sh starts a new one and this script carries on where it stopped. A test that fails
# every attempt (by itself or by taking the test host down) fails the suite: a real regression
# fails them all.
# KVMRUN_TESTHOST_SKIP: words "--skip SUBSTRING" (libtest's syntax); matching tests are not run.
set -uo pipefail
state=${1:?usage: guest-tests.sh STATE_DIR TEST_BINARY...}
shift
touch "$state/passed" "$state/attempts" "$state/failed"
attempts=${KVMRUN_TESTHOST_ATTEMPTS:-3}
# Tests that tolerate the test host's known early-boot deaths do so only here.
export KVMRUN_TEST_IN_TESTHOST=1

skips=()
read -ra words <<<"${KVMRUN_TESTHOST_SKIP:-}"
for ((i = 0; i < ${#words[@]}; i++)); do
  if [ "${words[i]}" = --skip ] && [ $((i + 1)) -lt ${#words[@]} ]; then
    skips+=("${words[i + 1]}")
    i=$((i + 1))
  fi
done

skipped() {
  local s
  for s in "${skips[@]}"; do
    case $1 in *"$s"*) return 0 ;; esac
  done
  return 1
}

tries() { grep -cxF -- "$1" "$state/attempts"; }

# When a guest triple-faults, SVM's shutdown intercept hands KVM an undefined VMCB, which KVM
# reinitialises before kvmrun can read the registers (they show the reset vector). KVM's
# kvm_exit tracepoint fires first and records the guest's rip: keep only the shutdown and
# exception intercepts (SVM exit codes 0x7f, 0x40-0x5f; none in a healthy boot) and show them
# after a failed attempt.
trace=/sys/kernel/tracing
kvm_trace_on() {
  [ -d /sys/module/kvm_amd ] || return 1
  mountpoint -q "$trace" || mount -t tracefs nodev "$trace" 2>/dev/null || return 1
  echo 'exit_reason == 0x7f || (exit_reason >= 0x40 && exit_reason < 0x60)' \
    >"$trace/events/kvm/kvm_exit/filter" &&
    echo 1 >"$trace/events/kvm/kvm_exit/enable" && echo 1 >"$trace/tracing_on"
} 2>/dev/null
kvm_trace_show() {
  [ -n "$tracing" ] || return 0
  grep -v '^#' "$trace/trace" | tail -n 20 | sed 's/^/guest-tests: KVM saw: /'
  echo >"$trace/trace"
}
tracing=
kvm_trace_on && tracing=1

rc=0
for bin in "$@"; do
  if ! names=$("$bin" --ignored --list --format terse | sed -n 's/: test$//p'); then
    echo "guest-tests: cannot list the tests of $bin" >&2
    rc=1
    continue
  fi
  for name in $names; do
    grep -qxF -- "$name" "$state/passed" && continue
    if grep -qxF -- "$name" "$state/failed"; then rc=1; continue; fi
    if skipped "$name"; then
      echo "test $name ... skipped in the test host (KVMRUN_TESTHOST_SKIP)"
      continue
    fi
    while :; do
      n=$(tries "$name")
      if [ "$n" -ge "$attempts" ]; then
        echo "guest-tests: FAILED $name: failed $n times (or took the test host down)"
        echo "$name" >>"$state/failed"
        rc=1
        break
      fi
      echo "$name" >>"$state/attempts"
      sync "$state/attempts" 2>/dev/null || sync
      if [ "$n" -ge 1 ]; then
        echo "guest-tests: $name failed $n time(s) (or the test host died during it); attempt $((n + 1)) of $attempts"
      fi
      [ -n "$tracing" ] && echo >"$trace/trace"
      if "$bin" --ignored --exact "$name" --test-threads=1 2>&1; then
        echo "$name" >>"$state/passed"
        [ "$n" -ge 1 ] && echo "guest-tests: RETRIED $name: failed $n time(s), passed on attempt $((n + 1))"
        break
      fi
      kvm_trace_show
    done
  done
done
exit $rc
