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
prog=net.sh list_opt=vmms list_words='kvmrun qemu' list=kvmrun,qemu
initrd_build=build-initramfs.sh help_range=2,25
# shellcheck source-path=SCRIPTDIR source=netlib.sh
. "$here/bench/netlib.sh"
netlib_options "$@"
netlib_testhost_or_continue
vmms=$list
netlib_artifacts
need=(python3 ip)
case ,$vmms, in *,qemu,*) need+=(qemu-system-x86_64) ;; esac
for c in "${need[@]}"; do
  command -v "$c" >/dev/null || { echo "net.sh: $c missing" >&2; exit 1; }
done

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
  local dev=virtio-net-pci
  [ "$1" = virtio ] || dev=e1000
  timeout -s KILL "$limit" ip netns exec "$ns" qemu-system-x86_64 -accel kvm -M pc -cpu host \
    -m 512 -smp 1 -nographic -nodefaults -no-reboot -serial stdio -kernel "$bz" -initrd "$initrd" \
    -append "$cmdline" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
    -device "$dev,netdev=n0" -device isa-debug-exit,iobase=0x501,iosize=1 </dev/null 2>&1 ||
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
qemu_version=$(qemu-system-x86_64 --version 2>/dev/null | head -n1 || echo "QEMU not run")
export where runs mib out cpu_model host_kernel bz initrd kvmrun_git qemu_version vmms
python3 - "$results" <<'PY'
import json, os, statistics, sys

env = os.environ
metrics = [("g2h", "guest -> host, 1 stream", "MB/s"), ("g2h4", "guest -> host, 4 streams", "MB/s"),
           ("h2g", "host -> guest, 1 stream", "MB/s"), ("rr", "ICMP round trip (median)", "ms"),
           ("cpu", "kvmrun CPU use", "% core"), ("exits_per_packet", "kvmrun VM exits per packet", "exits/packet")]
configs = [("kvmrun", "virtio"), ("kvmrun", "e1000"), ("qemu", "virtio"), ("qemu", "e1000")]
ran = [(v, n) for v, n in configs if v in env["vmms"].split(",")]
vals = {}
for line in open(sys.argv[1]):
    vmm, nic, run, metric, v = line.split()
    vals.setdefault((vmm, nic, metric), []).append(float(v))

def summary(xs):
    return {"values": xs, "min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else None

def ratio(a, b):
    return a["median"] / b["median"] if a and b and b["median"] else None

report = {"benchmark": "net", "where": env["where"], "runs": int(env["runs"]), "mib": int(env["mib"]),
          "vmms": env["vmms"].split(","),
          "environment": {"host_cpu": env["cpu_model"], "host_kernel": env["host_kernel"],
                          "guest_kernel": env["bz"], "guest_initrd": env["initrd"], "guest_vcpus": 1,
                          "guest_memory_mib": 512, "backend": "tap in a network namespace",
                          "kvmrun_git": env["kvmrun_git"],
                          "qemu": env["qemu_version"] + " -M pc, -netdev tap,vhost=off"},
          "metrics": []}
for key, label, unit in metrics:
    m = {"name": key, "label": label, "unit": unit}
    for vmm, nic in configs:
        m[f"{vmm}_{nic}"] = summary(vals.get((vmm, nic, key), []))
    m["kvmrun_over_qemu_virtio"] = ratio(m["kvmrun_virtio"], m["qemu_virtio"])
    m["kvmrun_over_qemu_e1000"] = ratio(m["kvmrun_e1000"], m["qemu_e1000"])
    m["virtio_over_e1000_kvmrun"] = ratio(m["kvmrun_virtio"], m["kvmrun_e1000"])
    report["metrics"].append(m)

def cell(s):
    if not s:
        return "-"
    f = (lambda x: f"{x:.0f}") if s["median"] >= 100 else (lambda x: f"{x:.2f}")
    n = len(s["values"])
    return f"{f(s['min'])}/{f(s['median'])}/{f(s['max'])}" + ("" if n == report["runs"] else f" ({n})")

def rat(r):
    return "-" if r is None else f"{r:.2f}"

print()
print(f"net benchmark: {report['runs']} runs, {report['mib']} MiB per transfer; min/median/max")
print(f"where: {report['where']}")
e = report["environment"]
print(f"guest: {os.path.basename(os.path.dirname(e['guest_kernel']))}, 1 vCPU, 512 MiB; kvmrun {e['kvmrun_git']}; {e['qemu']}")
print(f"host: {e['host_cpu']}, Linux {e['host_kernel']}")
print()
print(f"{'metric':<28} {'unit':<7} " + " ".join(f"{v + ' ' + n:<20}" for v, n in configs)
      + f" {'kvmrun/QEMU virtio':>18} {'kvmrun/QEMU e1000':>17} {'virtio/e1000':>12}")
for m in report["metrics"]:
    print(f"{m['label']:<28} {m['unit']:<7} " + " ".join(f"{cell(m[f'{v}_{n}']):<20}" for v, n in configs)
          + f" {rat(m['kvmrun_over_qemu_virtio']):>18} {rat(m['kvmrun_over_qemu_e1000']):>17}"
          + f" {rat(m['virtio_over_e1000_kvmrun']):>12}")
if env.get("out"):
    with open(env["out"], "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"\nJSON: {env['out']}")
need = [m for m in report["metrics"] if m["name"] in ("g2h", "g2h4", "h2g", "rr")]
missing = sum(1 for m in need for v, n in ran if not m[f"{v}_{n}"] or len(m[f"{v}_{n}"]["values"]) != report["runs"])
sys.exit(1 if missing else 0)
PY
