#!/usr/bin/env bash
# Network benchmark: TCP throughput and request/response latency between a guest and the machine
# that runs it, over a tap inside a network namespace this script creates (and deletes), for
#   kvmrun virtio-net, kvmrun e1000, QEMU virtio-net (-netdev tap,vhost=off), QEMU e1000
# with the same kernel and initramfs (1 vCPU, 512 MiB), each RUNS times (default 3), interleaved.
# Workloads, per guest boot:
#   g2h    guest -> host, 1 TCP stream of MIB MiB (busybox nc in the guest, a Python sink here)
#   g2h4   guest -> host, 4 streams of MIB/4 MiB each at once (in 256 KiB blocks)
#   h2g    host -> guest, 1 stream of MIB MiB
#   rr     request/response: ICMP echo round trip (busybox ping, 20 x 0.2 s), median of the 20
# Throughput is timed on the host side, from the first accepted connection to the last byte
# (sink) or to the guest's close (source). For kvmrun it also reports its CPU use (user + system
# time over the guest's lifetime, in % of one core) and VM exits per packet (kvmrun counts its
# exits by kind; packets from the guest's /proc/net/dev).
#
# net.sh [RUNS] [--mib MIB] [--vmms kvmrun,qemu] [--out FILE]   (--out: the same results as JSON)
# --vmms: which VMMs to measure (default both; `kvmrun bench` leaves QEMU out unless compared).
#
# Runs where guests run: directly on hardware KVM, or (PVM here) re-runs itself inside the test
# host; only ratios taken in the same run mean anything there (default MIB: 4 in the test host,
# where the emulated e1000 moves about 0.2 MB/s, 64 on hardware). Exit status: 0 every figure
# taken, 1 some missing, 2 usage, 77 the namespace or tap cannot be made here (no root /
# CAP_NET_ADMIN).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2034 # read by netlib.sh
prog=net.sh lists=vmms vmms_words='kvmrun qemu' vmms=kvmrun,qemu
initrd_build=build-initramfs.sh help_range=2,25
# shellcheck source-path=SCRIPTDIR source=netlib.sh
. "$here/bench/netlib.sh"
netlib_options "$@"
netlib_testhost_or_continue
netlib_artifacts
netlib_need python3 ip

netlib_workdir netbench
ns=kvmrun-netbench-$$
cleanup() {
  local k
  [ -z "${server:-}" ] || kill "$server" 2>/dev/null || true
  # A kvmrun still running (the script was stopped): its pid file may be stale, hence the name.
  k=$(cat "$work/pid" 2>/dev/null || true)
  if [ -n "$k" ] && [ "$(cat "/proc/$k/comm" 2>/dev/null)" = kvmrun ]; then kill -TERM "$k" || true; fi
  ip netns del "$ns" 2>/dev/null || true
  [ -n "$out" ] || rm -rf "$work"
}
trap cleanup EXIT
# bash runs the EXIT trap on a signal only when the signal is trapped.
trap 'exit 143' TERM INT HUP
make_net() {
  ip netns add "$ns" && ip -n "$ns" link set lo up &&
    ip -n "$ns" tuntap add dev tap0 mode tap vnet_hdr &&
    ip -n "$ns" addr add 10.0.2.1/24 dev tap0 && ip -n "$ns" link set tap0 up
}
if ! make_net 2>"$work/netns.err"; then
  echo "net.sh: cannot create the namespace and tap (needs root or CAP_NET_ADMIN, and the tun module): $(tr '\n' ' ' <"$work/netns.err")" >&2
  exit 77
fi

# The host end, in the namespace: port 5000 sinks (guest -> host), port 5001 sources MIB MiB
# (host -> guest). A guest first connects to port 5002 and sends a test id and the number of
# connections that follow; the server prints "@@NET id bytes seconds" when they are all done.
# A guest that dies mid-test leaves it waiting on a connection that never ends: it is then
# restarted (start_server again), so that the next guest does not queue behind it.
start_server() {
  local ready
  ready=$(grep -c '^@@READY' "$work/server.log" 2>/dev/null || true)
  ip netns exec "$ns" python3 -u - "$mib" >>"$work/server.log" 2>&1 <<'PY' &
import socket, sys, threading, time
mib = int(sys.argv[1])
def listener(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("10.0.2.1", port))
    l.listen(16)
    return l
sink, source, ctl = listener(5000), listener(5001), listener(5002)
print("@@READY", flush=True)
block = bytes(range(256)) * 4096  # 1 MiB
def sink_one(c, out):
    n = 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        n += len(d)
    c.close()
    out.append((n, time.monotonic()))
def source_one(c, out):
    for _ in range(mib):
        c.sendall(block)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # the guest's close
    c.close()
    out.append((mib << 20, time.monotonic()))
while True:
    c, _ = ctl.accept()
    test, conns = c.makefile().readline().split()
    c.close()
    l, work = (source, source_one) if test.startswith("h2g") else (sink, sink_one)
    out, threads, t0 = [], [], None
    for _ in range(int(conns)):
        s, _ = l.accept()
        t0 = t0 or time.monotonic()
        t = threading.Thread(target=work, args=(s, out))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    end = max(e for _, e in out)
    if test.startswith("h2g"):
        # Sent is not received: the guest says when it has read everything (its FIN came
        # first, as its nc had nothing to send).
        c, _ = ctl.accept()
        c.recv(64)
        c.close()
        end = time.monotonic()
    print(f"@@NET {test} {sum(n for n, _ in out)} {end - t0:.6f}", flush=True)
PY
  server=$!
  # Python's first start can take seconds (in the test host it loads over 9p).
  for _ in $(seq 600); do
    [ "$(grep -c '^@@READY' "$work/server.log")" -gt "${ready:-0}" ] && return 0
    kill -0 "$server" 2>/dev/null || { echo "net.sh: the host end failed:" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "net.sh: the host end did not start in 60 s" >&2
  exit 1
}
: >"$work/server.log"
start_server

# The guest's script. "ctl TEST N" announces a test to the server.
guest_script=$(cat <<SH
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || exit 1
ping -c 3 -W 5 10.0.2.1 >/dev/null || exit 1
ctl() { echo "\$1 \$2" | nc 10.0.2.1 5002; }
echo @@STEP g2h; ctl g2h 1; dd if=/dev/zero bs=1M count=$mib 2>/dev/null | nc 10.0.2.1 5000
echo @@STEP g2h4; ctl g2h4 4; for i in 1 2 3 4; do dd if=/dev/zero bs=256K count=$mib 2>/dev/null | nc 10.0.2.1 5000 & done; wait
echo @@STEP h2g; ctl h2g 1; nc 10.0.2.1 5001 </dev/null >/dev/null; ctl done 0
echo @@STEP rr; echo "@@RR \$(ping -c 20 -i 0.2 10.0.2.1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n | sed -n 10p)"
echo "@@PKTS \$(awk '/eth0:/ { sub(/.*eth0:/, ""); print \$2 + \$10 }' /proc/net/dev)"
t=\$(stty -g) && stty "\$t"
SH
)
b64=$(printf '%s' "$guest_script" | base64 -w0)
cmdline="console=ttyS0 reboot=k panic=-1 quiet -- sh -c 'eval \"\$(echo $b64 | base64 -d)\"'"

results=$work/results # lines: vmm nic run metric value
: >"$results"

# A guest that hangs is killed after this long.
limit=${KVMRUN_BENCH_NET_LIMIT:-900}
run_kvmrun() { # NIC
  local model=$1 t0 t1 pid job ticks=0
  t0=$(date +%s.%N)
  # sh records its pid and becomes kvmrun (exec), so that /proc/PID/stat is kvmrun's.
  rm -f "$work/pid"
  # shellcheck disable=SC2016 # $$ is the inner sh's
  ip netns exec "$ns" sh -c 'echo $$ >"$0"; exec "$@"' "$work/pid" "$kvmrun" run --memory 512M \
    --kernel "$bz" --initrd "$initrd" --cmdline "$cmdline" --net "tap=tap0,model=$model" \
    --console stdio --log-level info </dev/null >"$work/guest.log" 2>&1 &
  job=$!
  pid=
  while [ -z "$pid" ]; do sleep 0.1; pid=$(cat "$work/pid" 2>/dev/null || true); done
  # CPU time of kvmrun (all its threads), sampled until it exits; killed past the limit.
  while kill -0 "$pid" 2>/dev/null; do
    ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo "$ticks")
    if [ "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print int(b - a) }')" -gt "$limit" ]; then
      echo "net.sh: kvmrun ($model) still running after $limit s: killed" >&2
      kill -9 "$pid"
    fi
    sleep 0.2
  done
  wait "$job" || true
  t1=$(date +%s.%N)
  echo "@@CPU $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" \
    'BEGIN { printf "%.1f", 100 * t / hz / (b - a) }')"
  sed -n 's/.*exits: \([0-9]*\) port I\/O, \([0-9]*\) MMIO, \([0-9]*\) other.*/@@EXITS \1 \2 \3/p' "$work/guest.log"
  cat "$work/guest.log"
}
run_qemu() { # NIC
  netlib_qemu_cmd "$1" tap0 '' "$cmdline"
  timeout -s KILL "$limit" ip netns exec "$ns" "${qemu_cmd[@]}" </dev/null 2>&1 ||
    true # exits (0 << 1) | 1
}

for i in $(seq "$runs"); do
  for vmm in ${vmms//,/ }; do
    for nic in virtio e1000; do
      echo "run $i/$runs: $vmm $nic" >&2
      before=$(wc -l <"$work/server.log")
      t0=$(date +%s)
      "run_$vmm" "$nic" >"$work/$vmm-$nic-$i.log" 2>&1
      sleep 0.5
      tail -n +"$((before + 1))" "$work/server.log" | tr -d '\r' |
        awk -v v="$vmm" -v n="$nic" -v r="$i" -v mib="$mib" '
          /^@@NET/ && $4 > 0 && $3 >= mib * 1048576 { print v, n, r, $2, $3 / $4 / 1e6 }' >>"$results"
      tr -d '\r' <"$work/$vmm-$nic-$i.log" | awk -v v="$vmm" -v n="$nic" -v r="$i" '
        /^@@RR [0-9.]+$/ { print v, n, r, "rr", $2 }
        /^@@CPU [0-9.]+$/ { cpu = $2 }
        /^@@PKTS [0-9]+$/ { pkts = $2 }
        /^@@EXITS/ { exits = $2 + $3 + $4 }
        # CPU use only of a guest that ran its whole script (it ends with @@PKTS).
        END {
          if (pkts > 0 && cpu != "") print v, n, r, "cpu", cpu
          if (pkts > 0 && exits > 0) print v, n, r, "exits_per_packet", exits / pkts
        }' >>"$results"
      got=$(awk -v v="$vmm" -v n="$nic" -v r="$i" '$1 == v && $2 == n && $3 == r' "$results" | wc -l)
      echo "run $i/$runs: $vmm $nic: $got results in $(($(date +%s) - t0)) s" >&2
      if [ "$got" -lt 4 ]; then
        echo "net.sh: $vmm $nic run $i: missing results; its output ends with:" >&2
        tail -n 15 "$work/$vmm-$nic-$i.log" | cut -c1-200 >&2
      fi
      if [ "$(tail -n +"$((before + 1))" "$work/server.log" | grep -c '^@@NET')" -lt 3 ]; then
        echo "net.sh: the host end did not finish this guest's tests: restarting it" >&2
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        start_server
      fi
    done
  done
done

netlib_environment
export where runs mib out cpu_model host_kernel bz initrd kvmrun_git qemu_version vmms
PYTHONPATH="$here/bench" python3 - "$results" <<'PY'
from netreport import report
report("net",
       [("g2h", "guest -> host, 1 stream", "MB/s"), ("g2h4", "guest -> host, 4 streams", "MB/s"),
        ("h2g", "host -> guest, 1 stream", "MB/s"), ("rr", "ICMP round trip (median)", "ms"),
        ("cpu", "kvmrun CPU use", "% core"),
        ("exits_per_packet", "kvmrun VM exits per packet", "exits/packet")],
       "tap in a network namespace", required=("g2h", "g2h4", "h2g", "rr"))
PY
