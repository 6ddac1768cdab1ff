"""The report of net.sh and vm2vm.sh (imported by both): their results file as a table on stdout
and, with `out` set, as JSON; exits 1 when a required figure is short of runs.

The results file has lines "VMM NIC RUN METRIC VALUE". The scripts export where, runs, mib,
out, cpu_model, host_kernel, bz, initrd, kvmrun_git, qemu_version, vmms and (vm2vm.sh) nics.
JSON: per metric one `{vmm}_{nic}` entry for every configuration (values, min, median, max; null
when not measured), `kvmrun_over_qemu_{nic}` and `virtio_over_e1000_kvmrun` (ratios of medians,
null without both).
"""
import json
import os
import statistics
import sys


def summary(xs):
    return {"values": xs, "min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else None


def ratio(a, b):
    return a["median"] / b["median"] if a and b and b["median"] else None


def report(benchmark, metrics, backend, required, extra_env=None):
    """metrics: (key, label, unit); required: the keys that must have a value per run and
    configuration run; extra_env: more entries of "environment" (before "backend")."""
    env = os.environ
    nics = env.get("nics", "virtio,e1000").split(",")
    vmms = env["vmms"].split(",")
    configs = [(v, n) for v in ("kvmrun", "qemu") for n in nics]
    ran = [(v, n) for v, n in configs if v in vmms]
    vals = {}
    for line in open(sys.argv[1]):
        vmm, nic, _run, metric, v = line.split()
        vals.setdefault((vmm, nic, metric), []).append(float(v))
    environment = {"host_cpu": env["cpu_model"], "host_kernel": env["host_kernel"],
                   "guest_kernel": env["bz"], "guest_initrd": env["initrd"], "guest_vcpus": 1,
                   "guest_memory_mib": 512}
    environment.update(extra_env or {})
    environment.update({"backend": backend, "kvmrun_git": env["kvmrun_git"],
                        "qemu": env["qemu_version"] + " -M pc, -netdev tap,vhost=off"})
    rep = {"benchmark": benchmark, "where": env["where"], "runs": int(env["runs"]),
           "mib": int(env["mib"]), "vmms": vmms, "environment": environment, "metrics": []}
    for key, label, unit in metrics:
        m = {"name": key, "label": label, "unit": unit}
        for vmm, nic in configs:
            m[f"{vmm}_{nic}"] = summary(vals.get((vmm, nic, key), []))
        for nic in nics:
            m[f"kvmrun_over_qemu_{nic}"] = ratio(m[f"kvmrun_{nic}"], m[f"qemu_{nic}"])
        m["virtio_over_e1000_kvmrun"] = ratio(m.get("kvmrun_virtio"), m.get("kvmrun_e1000"))
        rep["metrics"].append(m)

    def cell(s):
        if not s:
            return "-"
        f = (lambda x: f"{x:.0f}") if s["median"] >= 100 else (lambda x: f"{x:.2f}")
        n = len(s["values"])
        return f"{f(s['min'])}/{f(s['median'])}/{f(s['max'])}" + ("" if n == rep["runs"] else f" ({n})")

    def rat(r):
        return "-" if r is None else f"{r:.2f}"

    e = rep["environment"]
    w = max(len(label) for _, label, _ in metrics)
    print()
    print(f"{benchmark} benchmark: {rep['runs']} runs, {rep['mib']} MiB per transfer; min/median/max")
    print(f"where: {rep['where']}")
    print(f"guest: {os.path.basename(os.path.dirname(e['guest_kernel']))}, 1 vCPU, 512 MiB; "
          f"kvmrun {e['kvmrun_git']}; {e['qemu']}")
    print(f"host: {e['host_cpu']}, Linux {e['host_kernel']}")
    print()
    print(f"{'metric':<{w}} {'unit':<7} " + " ".join(f"{v + ' ' + n:<20}" for v, n in configs)
          + "".join(f" {'kvmrun/QEMU ' + n:>18}" for n in nics) + f" {'virtio/e1000':>12}")
    for m in rep["metrics"]:
        print(f"{m['label']:<{w}} {m['unit']:<7} " + " ".join(f"{cell(m[f'{v}_{n}']):<20}" for v, n in configs)
              + "".join(f" {rat(m[f'kvmrun_over_qemu_{n}']):>18}" for n in nics)
              + f" {rat(m['virtio_over_e1000_kvmrun']):>12}")
    if env.get("out"):
        with open(env["out"], "w") as f:
            json.dump(rep, f, indent=2)
            f.write("\n")
        print(f"\nJSON: {env['out']}")
    need = [m for m in rep["metrics"] if m["name"] in required]
    missing = sum(1 for m in need for v, n in ran
                  if not m[f"{v}_{n}"] or len(m[f"{v}_{n}"]["values"]) != rep["runs"])
    sys.exit(1 if missing else 0)
