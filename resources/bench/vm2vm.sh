#!/usr/bin/env bash
# VM-to-VM benchmark: two guests of one VMM on one Linux bridge inside a network namespace this
# script creates (and deletes): a bridge and two taps enslaved to it, nothing outside the
# namespace. One guest runs an iperf3 server, the other sends MIB MiB to it (iperf3 -n) and then
# pings it (busybox ping, 20 x 0.2 s, median), RUNS times (default 3) in the same pair of boots.
# One pair per NIC model (virtio-net, e1000) and VMM: two kvmrun guests, then two QEMU guests
# (-M pc, -netdev tap,vhost=off, as in net.sh), interleaved per NIC model; same kernel and
# benchmark initramfs (iperf3), 1 vCPU and 512 MiB each. Ratios kvmrun/QEMU per NIC model.
# Throughput is iperf3's receiver figure (bytes received over the receiver's time), in MB/s
# (10^6 bytes/s). For short transfers the receiver counts less than MIB MiB: iperf3 stops
# counting when the sender reports its last byte sent, with some still in flight.
#
# vm2vm.sh [RUNS] [--mib MIB] [--vmms kvmrun,qemu] [--nics virtio,e1000] [--out FILE]
# --out: the results as JSON. --vmms: which VMMs' pairs to run (default both; `kvmrun bench`
# leaves QEMU out unless compared).
#
# Runs where guests run: directly on hardware KVM, or (PVM here) re-runs itself inside the test
# host; only ratios taken in the same run mean anything there (default MIB: 4 in the test host,
# 64 on hardware). Exit status: 0 every figure taken, 1 some missing (or a command such as
# qemu-system-x86_64), 2 usage, 77 the namespace, bridge or taps cannot be made here (no root /
# CAP_NET_ADMIN).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2034 # read by netlib.sh
prog=vm2vm.sh lists='vmms nics' vmms_words='kvmrun qemu' vmms=kvmrun,qemu
# shellcheck disable=SC2034
nics_words='virtio e1000' nics=virtio,e1000
initrd_build=build-bench-initramfs.sh help_range=2,21
# shellcheck source-path=SCRIPTDIR source=netlib.sh
. "$here/bench/netlib.sh"
netlib_options "$@"
netlib_testhost_or_continue
netlib_artifacts
netlib_need python3 ip timeout

netlib_workdir vm2vm
ns=kvmrun-vm2vm-$$
pids=()
cleanup() {
  local p
  # Each pid is a `timeout`: it passes SIGTERM on to its kvmrun or QEMU (both end on it) and
  # SIGKILLs it 20 s later.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  [ -n "$out" ] || rm -rf "$work"
}
trap cleanup EXIT
# bash runs the EXIT trap on a signal only when the signal is trapped.
trap 'exit 143' TERM INT HUP
# Everything below lives in the namespace: a bridge, two taps on it, no address on the host
# side (the guests talk to each other only).
make_net() {
  local t
  ip netns add "$ns" && ip -n "$ns" link set lo up &&
    ip -n "$ns" link add br0 type bridge && ip -n "$ns" link set br0 up || return 1
  for t in tap0 tap1; do
    ip -n "$ns" tuntap add dev "$t" mode tap vnet_hdr && ip -n "$ns" link set "$t" master br0 &&
      ip -n "$ns" link set "$t" up || return 1
  done
}
if ! make_net 2>"$work/netns.err"; then
  echo "vm2vm.sh: cannot create the namespace, bridge and taps (needs root or CAP_NET_ADMIN, and the tun and bridge modules): $(tr '\n' ' ' <"$work/netns.err")" >&2
  exit 77
fi

# The guests' scripts (base64 on the kernel command line, like net.sh).
server_script=$(cat <<'SH'
ip link set eth0 up && ip addr add 10.0.3.1/24 dev eth0 || exit 1
echo @@SERVER-UP
iperf3 -s
SH
)
# The client waits for the server (booting at the same time), then per run: one iperf3 transfer
# (retried while the server is not yet listening) and one ping series.
client_script=$(cat <<SH
ip link set eth0 up && ip addr add 10.0.3.2/24 dev eth0 || exit 1
n=0; until ping -c 1 -W 1 10.0.3.1 >/dev/null 2>&1; do n=\$((n + 1)); [ \$n -lt 300 ] || exit 1; done
for r in \$(seq $runs); do
  n=0
  until o=\$(iperf3 -c 10.0.3.1 -n ${mib}M -f k 2>&1); do
    n=\$((n + 1)); [ \$n -lt 120 ] || { echo "\$o"; exit 1; }; sleep 1
  done
  echo "\$o" | awk -v r=\$r '/receiver/ { for (i = 4; i <= NF; i++) if (\$i ~ /bits\/sec\$/) print "@@TPUT", r, \$(i - 3), \$(i - 2), \$(i - 1), \$i }'
  echo "@@RR \$r \$(ping -c 20 -i 0.2 10.0.3.1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n | sed -n 10p)"
done
t=\$(stty -g) && stty "\$t"
SH
)
cmdline() { # SCRIPT
  printf "console=ttyS0 reboot=k panic=-1 quiet -- sh -c 'eval \"\$(echo %s | base64 -d)\"'" \
    "$(printf '%s' "$1" | base64 -w0)"
}

results=$work/results # lines: vmm nic run metric value
: >"$results"
# A guest that hangs is stopped after this long (SIGTERM: kvmrun's graceful shutdown, then KILL).
limit=${KVMRUN_BENCH_NET_LIMIT:-900}
guest() { # VMM NIC TAP MAC CMDLINE LOG; run with &: exec makes $! timeout's pid, not a subshell's
  local cmd=("$kvmrun" run --memory 512M --kernel "$bz" --initrd "$initrd" --cmdline "$5"
    --net "tap=$3,model=$2,mac=$4" --console stdio)
  if [ "$1" = qemu ]; then
    netlib_qemu_cmd "$2" "$3" "$4" "$5"
    cmd=("${qemu_cmd[@]}")
  fi
  exec timeout -k 20 "$limit" ip netns exec "$ns" "${cmd[@]}" </dev/null >"$6" 2>&1
}

# Per NIC model, a kvmrun pair and a QEMU pair one after the other (interleaved).
for nic in ${nics//,/ }; do
  for vmm in ${vmms//,/ }; do
    c="$vmm $nic" log=$work/$vmm-$nic
    echo "vm2vm: $c: two guests, $runs run(s) of $mib MiB" >&2
    t0=$(date +%s)
    guest "$vmm" "$nic" tap0 52:54:00:00:03:01 "$(cmdline "$server_script")" "$log-server.log" &
    server=$!
    pids=("$server")
    guest "$vmm" "$nic" tap1 52:54:00:00:03:02 "$(cmdline "$client_script")" "$log-client.log" &
    client=$!
    pids+=("$client")
    # kvmrun exits with the guest's status, QEMU (isa-debug-exit) with (status << 1) | 1.
    s=0 ok=0
    wait "$client" || s=$?
    [ "$vmm" = kvmrun ] || ok=1
    [ "$s" = "$ok" ] || echo "vm2vm.sh: $c client guest ended with status $s" >&2
    # The server's iperf3 runs until told: SIGTERM to timeout, which passes it on to the VMM.
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" || true
    pids=()
    # QEMU's firmware leaves escape sequences (screen clears) before the guest's first line.
    tr -d '\r' <"$log-client.log" | awk -v c="$c" '
      { sub(/^[^@]*@@/, "@@") }
      function bytes(v, u) { return v * (u ~ /^G/ ? 1073741824 : u ~ /^M/ ? 1048576 : u ~ /^K/ ? 1024 : 1) }
      function bps(v, u) { return v * (u ~ /^G/ ? 1e9 : u ~ /^M/ ? 1e6 : u ~ /^K/ ? 1e3 : 1) }
      /^@@TPUT / && bytes($3, $4) > 0 { print c, $2, "tcp", bps($5, $6) / 8e6 }
      /^@@RR [0-9]+ [0-9.]+$/ { print c, $2, "rr", $3 }' >>"$results"
    got=$(awk -v v="$vmm" -v n="$nic" '$1 == v && $2 == n' "$results" | wc -l)
    echo "vm2vm: $c: $got of $((2 * runs)) results in $(($(date +%s) - t0)) s" >&2
    if [ "$got" -lt $((2 * runs)) ]; then
      echo "vm2vm.sh: $c: missing results; the client's output ends with:" >&2
      tail -n 15 "$log-client.log" | cut -c1-200 >&2
      echo "vm2vm.sh: $c: the server's output ends with:" >&2
      tail -n 8 "$log-server.log" | cut -c1-200 >&2
    fi
  done
done

netlib_environment
export where runs mib out cpu_model host_kernel bz initrd kvmrun_git qemu_version vmms nics
PYTHONPATH="$here/bench" python3 - "$results" <<'PY'
from netreport import report
report("vm2vm",
       [("tcp", "guest -> guest, 1 TCP stream (iperf3)", "MB/s"),
        ("rr", "ICMP round trip guest -> guest (median)", "ms")],
       "two taps on a Linux bridge in a network namespace", required=("tcp", "rr"),
       extra_env={"guests": 2})
PY
