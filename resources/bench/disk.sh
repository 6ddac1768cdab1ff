#!/usr/bin/env bash
# Disk benchmark: fio on one raw image (256 MiB, on a real file system, never tmpfs), measured
# three ways in the same run, each RUNS times (default 3):
#   host    fio on the image file itself, on the machine that runs the guests;
#   kvmrun  fio in the benchmark guest on /dev/vda, kvmrun --disk path=IMG,direct=on;
#   QEMU    fio in the same guest (same kernel, initramfs and fio job), QEMU -M pc with
#           virtio-blk-pci, cache=none,aio=threads.
# Workloads: sequential read and write with 1 MiB blocks (MB/s), random 4 KiB reads at queue depth
# 1 (psync) and 16 (libaio) (IOPS). O_DIRECT everywhere (fio --direct=1 on the host and in the
# guests, kvmrun direct=on, QEMU cache=none): no page cache serves any number. Prints min / median
# / max per workload and VMM, and kvmrun/host and kvmrun/QEMU from the medians.
#
# disk.sh [RUNS] [--out FILE]   (--out: the same results as JSON)
# Environment: KVMRUN_BENCH_DISK_SECONDS (per workload, default 3, after 1 s of ramp),
# KVMRUN_BENCH_DISK_DIR (where the image goes on hardware KVM; default /var/tmp).
#
# Runs where guests run: directly on hardware KVM, or (PVM here) re-runs itself inside the test
# host with a scratch ext4 disk attached with cache=none (so O_DIRECT there reaches this machine's
# disk too); only ratios taken in the same run mean anything there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=3 out=
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *[!0-9]* | '') echo "disk.sh: usage: disk.sh [RUNS] [--out FILE]" >&2; exit 2 ;;
    *) runs=$1; shift ;;
  esac
done
[ "$runs" -ge 1 ] || { echo "disk.sh: RUNS must be at least 1" >&2; exit 2; }
if [ -n "$out" ]; then
  out=$(cd "$(dirname "$out")" && pwd -P)/$(basename "$out")
fi
secs=${KVMRUN_BENCH_DISK_SECONDS:-3}
size_mib=256

if [ -z "${KVMRUN_BENCH_INNER:-}" ] && { [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; }; then
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-bench-initramfs.sh" | tail -n1)
  # The scratch disk: a sparse file with ext4 (the image, 256 MiB, plus room), on this machine's
  # disk, attached to the test host with cache=none.
  scratch=$(mktemp -d "${KVMRUN_BENCH_DISK_DIR:-/var/tmp}/kvmrun-diskbench.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  [ "$(stat -f -c %T "$scratch")" != tmpfs ] || { echo "disk.sh: $scratch is on tmpfs (no O_DIRECT); set KVMRUN_BENCH_DISK_DIR" >&2; exit 1; }
  truncate -s $((size_mib + 256))M "$scratch/scratch.img"
  mkfs.ext4 -q -F -L kvmrun-bench "$scratch/scratch.img"
  share=()
  if [ -n "$out" ]; then share=(--share "$(dirname "$out")"); fi
  echo "disk benchmark: inside the test host (QEMU TCG, nested SVM): compare ratios, not absolutes" >&2
  rc=0
  bash "$here/testhost/run.sh" --timeout 1200 "${share[@]}" \
    --disk "$scratch/scratch.img:/mnt/kvmrun-diskbench" --env KVMRUN_BENCH_INNER=1 \
    --env KVMRUN_BENCH_DISK_DIR=/mnt/kvmrun-diskbench \
    --env KVMRUN_BENCH_KERNEL="$bz" --env KVMRUN_BENCH_INITRD="$initrd" \
    -- bash "$0" "$runs" ${out:+--out "$out"} || rc=$?
  exit "$rc"
fi

kvmrun=${KVMRUN_BIN:-$here/../target/release/kvmrun}
bz=${KVMRUN_BENCH_KERNEL:-}
initrd=${KVMRUN_BENCH_INITRD:-}
if [ -z "$bz" ]; then
  cargo build --release --manifest-path "$here/../Cargo.toml" >&2
  read -r bz _ < <(bash "$here/guest/build-kernel.sh" | tail -n1)
  initrd=$(bash "$here/guest/build-bench-initramfs.sh" | tail -n1)
fi
command -v fio >/dev/null || { echo "disk.sh: fio missing (apt-get install fio)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "disk.sh: qemu-system-x86_64 missing (apt-get install qemu-system-x86)" >&2; exit 1; }

work=$(mktemp -d "${KVMRUN_BENCH_DISK_DIR:-/var/tmp}/kvmrun-diskbench-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
img=$work/disk.img
fs_type=$(df --output=fstype "$work" | tail -n1)
[ "$fs_type" != tmpfs ] || { echo "disk.sh: $work is on tmpfs (no O_DIRECT); set KVMRUN_BENCH_DISK_DIR" >&2; exit 1; }
# The image: fio's (non-zero) data, written with O_DIRECT, so every block is allocated and real.
fio --name=fill --filename="$img" --rw=write --bs=1M --size=${size_mib}M --direct=1 \
  --ioengine=psync --output-format=terse >/dev/null ||
  { echo "disk.sh: cannot write $img with O_DIRECT (does $fs_type support it?)" >&2; exit 1; }

# Workloads: name, label, unit, fio options. read/write decides which terse fields count.
names=(seqread seqwrite randread randread_qd16)
declare -A label unit opts
label[seqread]="seq read 1 MiB" unit[seqread]=MB/s
opts[seqread]="--rw=read --bs=1M --ioengine=psync --iodepth=1"
label[seqwrite]="seq write 1 MiB" unit[seqwrite]=MB/s
opts[seqwrite]="--rw=write --bs=1M --ioengine=psync --iodepth=1"
label[randread]="rand read 4 KiB QD1" unit[randread]=IOPS
opts[randread]="--rw=randread --bs=4k --ioengine=psync --iodepth=1"
label[randread_qd16]="rand read 4 KiB QD16" unit[randread_qd16]=IOPS
opts[randread_qd16]="--rw=randread --bs=4k --ioengine=libaio --iodepth=16"
common="--direct=1 --time_based --runtime=$secs --ramp_time=1 --norandommap --randrepeat=0 --output-format=terse --terse-version=3"

# fio_line NAME FILE: runs workload NAME on FILE; prints "@@FIO NAME <terse line>".
fio_line() {
  # shellcheck disable=SC2086 # option lists
  echo "@@FIO $1 $(fio --name="$1" --filename="$2" ${opts[$1]} $common)"
}
# The guest's script: the same fio jobs on /dev/vda, one "@@FIO" line each.
guest_script="common='$common'"$'\n'
for n in "${names[@]}"; do
  guest_script+="echo \"@@FIO $n \$(fio --name=$n --filename=/dev/vda ${opts[$n]} \$common)\""$'\n'
done
# Then wait until the console has sent everything (TCSADRAIN), before init powers off.
# shellcheck disable=SC2016 # expanded in the guest
guest_script+='t=$(stty -g) && stty "$t"'
b64=$(printf '%s' "$guest_script" | base64 -w0)
cmdline="console=ttyS0 reboot=k panic=-1 quiet -- sh -c 'eval \"\$(echo $b64 | base64 -d)\"'"

results=$work/results # lines: vmm workload run KiB/s IOPS
: >"$results"
# collect VMM RUN < console output: the @@FIO lines into $results.
collect() {
  tr -d '\r' | sed -n 's/.*@@FIO /@@FIO /p' | while read -r _ name line; do
    [ -n "${opts[$name]:-}" ] || continue
    awk -F';' -v vmm="$1" -v run="$2" -v name="$name" '
      $1 != 3 || $5 != 0 { exit }
      { if (name ~ /write/) { bw = $48; iops = $49 } else { bw = $7; iops = $8 }
        if (bw > 0) print vmm, name, run, bw, iops }' <<<"$line" >>"$results"
  done
}

run_host() { for n in "${names[@]}"; do fio_line "$n" "$img"; done; }
run_kvmrun() {
  timeout 600 "$kvmrun" run --memory 512M --kernel "$bz" --initrd "$initrd" --cmdline "$cmdline" \
    --disk "path=$img,direct=on" --console stdio </dev/null 2>&1 || echo "disk.sh: kvmrun exited with $?" >&2
}
run_qemu() {
  timeout 600 qemu-system-x86_64 -accel kvm -M pc -cpu host -m 512 -smp 1 -nographic -nodefaults \
    -no-reboot -serial stdio -kernel "$bz" -initrd "$initrd" -append "$cmdline" \
    -drive "file=$img,format=raw,if=none,id=d,cache=none,aio=threads" -device virtio-blk-pci,drive=d \
    -device isa-debug-exit,iobase=0x501,iosize=1 </dev/null 2>&1 || true # exit (0 << 1) | 1
}

for i in $(seq "$runs"); do
  for vmm in host kvmrun qemu; do
    echo "run $i/$runs: $vmm" >&2
    t0=$(date +%s)
    "run_$vmm" | tee "$work/$vmm-$i.log" | collect "$vmm" "$i"
    got=$(awk -v v="$vmm" -v r="$i" '$1 == v && $3 == r' "$results" | wc -l)
    echo "run $i/$runs: $vmm: $got of ${#names[@]} workloads in $(($(date +%s) - t0)) s" >&2
    if [ "$got" != "${#names[@]}" ]; then
      echo "disk.sh: $vmm run $i: missing results; its output ends with:" >&2
      tail -n 15 "$work/$vmm-$i.log" | cut -c1-200 >&2
    fi
  done
done

if [ -n "${KVMRUN_BENCH_INNER:-}" ]; then
  where="inside the test host (QEMU TCG + nested SVM; scratch ext4 disk attached with cache=none): compare ratios, not absolutes"
else
  where="hardware KVM on $(uname -n)"
fi
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
host_kernel=$(uname -r)
guest_kernel=$bz guest_initrd=$initrd
kvmrun_git=$(git -C "$here/.." describe --always --dirty 2>/dev/null || echo unknown)
qemu_version=$(qemu-system-x86_64 --version | head -n1)
fio_version=$(fio --version)
labels=$(for n in "${names[@]}"; do printf '%s\t%s\t%s\n' "$n" "${label[$n]}" "${unit[$n]}"; done)
export where runs secs size_mib fs_type out cpu_model host_kernel guest_kernel guest_initrd \
  kvmrun_git qemu_version fio_version labels
python3 - "$results" <<'PY'
import json, os, statistics, sys

env = os.environ
vmms = [("host", "host"), ("kvmrun", "kvmrun"), ("qemu", "QEMU")]
workloads = [l.split("\t") for l in env["labels"].splitlines()]
vals = {}
for line in open(sys.argv[1]):
    vmm, name, run, kib_s, iops = line.split()
    v = float(kib_s) * 1024 / 1e6 if name.startswith("seq") else float(iops)
    vals.setdefault((vmm, name), []).append(v)

def summary(xs):
    if not xs:
        return None
    return {"values": xs, "min": min(xs), "median": statistics.median(xs), "max": max(xs)}

def ratio(a, b):
    return a["median"] / b["median"] if a and b and b["median"] else None

report = {
    "benchmark": "disk", "where": env["where"],
    "cache": "host page cache bypassed: O_DIRECT everywhere (fio --direct=1 on the host and in "
             "the guests, kvmrun --disk direct=on, QEMU cache=none,aio=threads)",
    "runs": int(env["runs"]), "seconds_per_workload": float(env["secs"]), "ramp_seconds": 1,
    "image": {"size_mib": int(env["size_mib"]), "format": "raw", "file_system": env["fs_type"]},
    "environment": {
        "host_cpu": env["cpu_model"], "host_kernel": env["host_kernel"],
        "guest_kernel": env["guest_kernel"], "guest_initrd": env["guest_initrd"],
        "guest_vcpus": 1, "guest_memory_mib": 512,
        "kvmrun_git": env["kvmrun_git"],
        "qemu": env["qemu_version"] + " -M pc, virtio-blk-pci", "fio": env["fio_version"],
    },
    "workloads": [],
}
for name, lab, unit in workloads:
    w = {"name": name, "label": lab, "unit": unit}
    for key, _ in vmms:
        w[key] = summary(vals.get((key, name), []))
    w["kvmrun_over_host"] = ratio(w["kvmrun"], w["host"])
    w["kvmrun_over_qemu"] = ratio(w["kvmrun"], w["qemu"])
    report["workloads"].append(w)

def cell(s):
    if not s:
        return "no result"
    n = len(s["values"])
    f = (lambda x: f"{x:.0f}") if s["median"] >= 1000 else (lambda x: f"{x:.1f}")
    return f"{f(s['min'])} / {f(s['median'])} / {f(s['max'])}" + ("" if n == report["runs"] else f" ({n})")

def rat(r):
    return "-" if r is None else f"{r:.2f}"

print()
print(f"disk benchmark: {report['runs']} runs each, {env['secs']} s per workload after 1 s ramp, "
      f"{env['size_mib']} MiB raw image on {env['fs_type']}")
print(f"where: {report['where']}")
print(f"cache: {report['cache']}")
e = report["environment"]
print(f"guest: {os.path.basename(os.path.dirname(e['guest_kernel']))}, 1 vCPU, 512 MiB, virtio-blk on PCI; "
      f"kvmrun {e['kvmrun_git']}; {e['qemu']}; {e['fio']}")
print(f"host: {e['host_cpu']}, Linux {e['host_kernel']}")
print()
hdr = f"{'workload':<22} {'unit':<5} " + " ".join(f"{t + ' min/med/max':<26}" for _, t in vmms)
print(hdr + f" {'kvmrun/host':>11} {'kvmrun/QEMU':>11}")
for w in report["workloads"]:
    print(f"{w['label']:<22} {w['unit']:<5} " + " ".join(f"{cell(w[k]):<26}" for k, _ in vmms)
          + f" {rat(w['kvmrun_over_host']):>11} {rat(w['kvmrun_over_qemu']):>11}")
if env.get("out"):
    with open(env["out"], "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"\nJSON: {env['out']}")
missing = sum(1 for w in report["workloads"] for k, _ in vmms
              if not w[k] or len(w[k]["values"]) != report["runs"])
sys.exit(1 if missing else 0)
PY
