//! net and vm2vm: the network scripts `resources/bench/net.sh` (a guest against the machine that
//! runs it, over a tap in a namespace) and `resources/bench/vm2vm.sh` (two guests of one VMM on
//! a bridge in a namespace), both for kvmrun and QEMU, virtio-net and e1000, run as they are,
//! and every figure of their `--out` JSON becomes a measurement named `NIC/METRIC` (e.g.
//! `virtio/g2h`) on its VMM's target: the recorder then pairs kvmrun with QEMU, and virtio with
//! e1000, like any other figure.
//!
//! The scripts are the one implementation of these measurements (also run by hand); the bench
//! already runs where guests run (the test host on PVM), so they run directly here.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::super::results::Target;
use super::super::{Bench, CompareWith};
use crate::resources;

/// The scripts' status for "cannot make the namespace, bridge or tap here".
const EXIT_NO_NET: i32 = 77;

/// Figures only kvmrun reports (its CPU use and exit counts): never expected from QEMU.
const KVMRUN_ONLY: [&str; 2] = ["cpu", "exits_per_packet"];

const NICS: [&str; 2] = ["virtio", "e1000"];

/// One figure read from a script's JSON.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Figure {
    pub name: String,
    pub target: Target,
    pub unit: String,
    pub higher_is_better: bool,
    pub values: Vec<f64>,
}

/// What a script's JSON holds for the configurations that ran: the figures with values, the
/// (name, target) of those expected but missing, and of those with fewer values than runs
/// (a guest run that failed) with how many they have.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Parsed {
    pub figures: Vec<Figure>,
    pub missing: Vec<(String, Target)>,
    pub short: Vec<(String, Target, usize)>,
    /// The runs the script was asked for (`runs` in the JSON).
    pub runs: usize,
}

/// Reads the `--out` JSON of net.sh or vm2vm.sh: `metrics[]`, each with `name`, `unit` and one
/// `{vmm}_{nic}` entry (`values`, or null when nothing was measured) per configuration.
/// `configs` are the (VMM, NIC) pairs that were run.
pub(super) fn parse(json: &str, configs: &[(Target, &str)]) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let metrics = v["metrics"]
        .as_array()
        .ok_or("no \"metrics\" array in the JSON")?;
    let mut p = Parsed {
        runs: v["runs"].as_u64().unwrap_or(0) as usize,
        ..Parsed::default()
    };
    for m in metrics {
        let key = m["name"].as_str().ok_or("a metric without a name")?;
        let unit = m["unit"].as_str().unwrap_or("");
        // Rates are better higher; times, CPU use and exits per packet lower.
        let higher_is_better = unit.ends_with("/s");
        for (target, nic) in configs {
            if *target != Target::Kvmrun && KVMRUN_ONLY.contains(&key) {
                continue;
            }
            let name = format!("{nic}/{}", key.replace('_', "-"));
            let values: Vec<f64> = m[format!("{}_{nic}", target.label())]["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            if values.is_empty() {
                p.missing.push((name, *target));
            } else {
                if values.len() < p.runs {
                    p.short.push((name.clone(), *target, values.len()));
                }
                p.figures.push(Figure {
                    name,
                    target: *target,
                    unit: unit.to_string(),
                    higher_is_better,
                    values,
                });
            }
        }
    }
    Ok(p)
}

/// How a script run ended.
struct ScriptRun {
    status: Option<i32>,
    timed_out: bool,
    /// Its stderr (progress and diagnostics), also shown live.
    log: String,
}

impl ScriptRun {
    fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn how(&self, script: &str) -> String {
        if self.timed_out {
            format!("{script} timed out")
        } else {
            format!("{script} exited with status {:?}", self.status)
        }
    }
}

/// Runs `bash SCRIPT ARGS` with the bench's kernel, initramfs and kvmrun binary; its stderr is
/// shown live (indented) and kept. Past `limit` it gets SIGTERM (its trap deletes the
/// namespace), then SIGKILL.
fn run_script(
    b: &Bench,
    script: &Path,
    args: &[String],
    initrd: &Path,
    guest_limit_s: u64,
    limit: Duration,
) -> ScriptRun {
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .args(args)
        .env("KVMRUN_BENCH_KERNEL", &b.artifacts.kernel)
        .env("KVMRUN_BENCH_INITRD", initrd)
        .env("KVMRUN_BENCH_NET_LIMIT", guest_limit_s.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("KVMRUN_BIN", exe);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ScriptRun {
                status: None,
                timed_out: false,
                log: format!("cannot run bash {}: {e}", script.display()),
            }
        }
    };
    let err = child.stderr.take().map(|s| {
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                eprintln!("    {line}");
                log.push_str(&line);
                log.push('\n');
            }
            log
        })
    });
    // The result table on stdout repeats the JSON: read to keep the pipe flowing, then dropped.
    let out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        })
    });
    let started = Instant::now();
    let mut timed_out = false;
    let mut termed = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) => {
                if started.elapsed() > limit && termed.is_none() {
                    timed_out = true;
                    // SAFETY: signals our own child, whose pid has not been reaped yet.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    termed = Some(Instant::now());
                } else if termed.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(_) => break None,
        }
    };
    if let Some(t) = out {
        let _ = t.join();
    }
    let log = err.and_then(|t| t.join().ok()).unwrap_or_default();
    ScriptRun {
        status,
        timed_out,
        log,
    }
}

/// Runs one script and records its figures in `suite`. `configs`: the (VMM, NIC) pairs it
/// measures; `params`: what every figure of it shares.
#[allow(clippy::too_many_arguments)]
fn measure(
    b: &mut Bench,
    suite: &str,
    script_name: &str,
    args: Vec<String>,
    initrd: PathBuf,
    configs: &[(Target, &str)],
    guest_limit_s: u64,
    boots: u64,
    params: &[(&str, String)],
) {
    let script = resources::dir().join("bench").join(script_name);
    let json = b.args.out.join(format!("{suite}.json"));
    let _ = std::fs::remove_file(&json);
    let mut args = args;
    args.extend(["--out".into(), json.display().to_string()]);
    let limit = Duration::from_secs(boots * (guest_limit_s + 30) + 120);
    let run = run_script(b, &script, &args, &initrd, guest_limit_s, limit);
    let text = std::fs::read_to_string(&json).map_err(|e| format!("no {}: {e}", json.display()));
    for e in interpret(script_name, &run, text, configs) {
        match e {
            Entry::Figure(f) => b.rec.measured(
                suite,
                &f.name,
                f.target,
                &f.unit,
                f.higher_is_better,
                f.values,
                params,
            ),
            Entry::Failed(name, t, why) => b.rec.failed(suite, &name, Some(t), &why),
            Entry::Skipped(name, t, why) => b.rec.skipped(suite, &name, Some(t), &why),
        }
    }
}

/// What one script run gives the recorder.
#[derive(Debug, PartialEq)]
enum Entry {
    Figure(Figure),
    Failed(String, Target, String),
    Skipped(String, Target, String),
}

/// A script run and its JSON (or why there is none) as recorder entries: every figure with
/// values; a failure with the script's last words for each one missing; with no (usable) JSON,
/// one failure per configuration; and a skip per configuration when the namespace could not be
/// made (status 77).
fn interpret(
    script: &str,
    run: &ScriptRun,
    json: Result<String, String>,
    configs: &[(Target, &str)],
) -> Vec<Entry> {
    let all = |skip: bool, why: &str| -> Vec<Entry> {
        configs
            .iter()
            .map(|(t, nic)| {
                let name = format!("{nic}/all");
                if skip {
                    Entry::Skipped(name, *t, why.to_string())
                } else {
                    Entry::Failed(name, *t, why.to_string())
                }
            })
            .collect()
    };
    if run.status == Some(EXIT_NO_NET) {
        let why = run.log.lines().rev().find(|l| l.contains("cannot create"));
        return all(true, why.unwrap_or("cannot create the network namespace"));
    }
    let why = format!(
        "{}; its output ends with:\n{}",
        run.how(script),
        run.tail(12)
    );
    let parsed = match json.and_then(|t| parse(&t, configs)) {
        Ok(p) => p,
        Err(e) => return all(false, &format!("{e}\n{why}")),
    };
    let mut out: Vec<Entry> = parsed.figures.into_iter().map(Entry::Figure).collect();
    for (name, t) in parsed.missing {
        let why = format!("{script} gave no value (guest logs next to its JSON)\n{why}");
        out.push(Entry::Failed(name, t, why));
    }
    // The figure keeps the runs that gave a value; the failed runs are said, not hidden.
    for (name, t, got) in parsed.short {
        let why = format!(
            "{script}: {got} of {} runs gave a value (guest logs next to its JSON)\n{why}",
            parsed.runs
        );
        out.push(Entry::Failed(format!("{name}/runs"), t, why));
    }
    out
}

/// MiB per transfer: small in quick runs and in the test host, where the emulated e1000 moves
/// about 0.2 MB/s.
fn mib(b: &Bench) -> u32 {
    match (b.args.quick, b.in_testhost) {
        (true, _) => 2,
        (false, true) => 4,
        (false, false) => 64,
    }
}

/// A guest's time limit: boot, three transfers at 0.2 MB/s (the test host's e1000), pings.
fn guest_limit_s(b: &Bench) -> u64 {
    b.limit(20.0 + 15.0 * f64::from(mib(b))).as_secs()
}

fn runs(b: &Bench) -> u32 {
    if b.args.quick {
        1
    } else {
        b.args.runs
    }
}

pub fn steps(_b: &Bench) -> usize {
    1
}

/// The (VMM, NIC) pairs a network script measures: kvmrun's, and QEMU's when compared and
/// present (kvmrun's first).
fn configs(b: &Bench) -> Vec<(Target, &'static str)> {
    b.guest_targets()
        .into_iter()
        .flat_map(|t| NICS.iter().map(move |n| (t, *n)))
        .collect()
}

/// The script's `--vmms` for `configs`.
fn vmms_arg(configs: &[(Target, &str)]) -> String {
    let mut vmms: Vec<&str> = configs.iter().map(|(t, _)| t.label()).collect();
    vmms.dedup();
    vmms.join(",")
}

/// Why QEMU's figures of a network suite are not taken: asked for but absent, or not compared.
fn why_no_qemu(b: &Bench) -> Option<String> {
    match (&b.args.compare, &b.qemu_unavailable) {
        (Some(CompareWith::Qemu), Some(why)) => Some(why.clone()),
        (None, _) => Some("QEMU not compared (--compare qemu)".to_string()),
        _ => None,
    }
}

/// A `# SKIP` with `why_no_qemu` for each of QEMU's `NIC/METRIC` figures of `suite`.
fn skip_qemu(b: &mut Bench, suite: &str, metrics: &[&str]) {
    if let Some(why) = why_no_qemu(b) {
        for nic in NICS {
            for m in metrics {
                b.rec
                    .skipped(suite, &format!("{nic}/{m}"), Some(Target::Qemu), &why);
            }
        }
    }
}

pub fn run_net(b: &mut Bench) {
    const SUITE: &str = "net";
    let configs = configs(b);
    let qemu = configs.iter().any(|(t, _)| *t == Target::Qemu);
    let (runs, mib) = (runs(b), mib(b));
    b.progress.step(&format!(
        "net: resources/bench/net.sh, {runs} run(s) of {mib} MiB, kvmrun{} x virtio-net, e1000",
        if qemu { " and QEMU" } else { "" }
    ));
    b.env.insert(
        "nic_model".into(),
        "virtio-net (PCI) and e1000 (82540EM) on a tap in a network namespace; QEMU -M pc, \
         -netdev tap,vhost=off; 1 vCPU, 512 MiB"
            .into(),
    );
    let params = [
        ("mib", mib.to_string()),
        ("vcpus", "1".to_string()),
        ("memory_mib", "512".to_string()),
        ("initrd", "default (busybox)".to_string()),
        ("script", "resources/bench/net.sh".to_string()),
    ];
    let args = vec![
        runs.to_string(),
        "--mib".into(),
        mib.to_string(),
        "--vmms".into(),
        vmms_arg(&configs),
    ];
    let initrd = b.artifacts.boot_initrd.clone();
    let limit = guest_limit_s(b);
    let boots = u64::from(runs) * configs.len() as u64;
    measure(
        b, SUITE, "net.sh", args, initrd, &configs, limit, boots, &params,
    );
    skip_qemu(b, SUITE, &["g2h", "g2h4", "h2g", "rr"]);
}

pub fn run_vm2vm(b: &mut Bench) {
    const SUITE: &str = "vm2vm";
    let configs = configs(b);
    let qemu = configs.iter().any(|(t, _)| *t == Target::Qemu);
    let (runs, mib) = (runs(b), mib(b));
    b.progress.step(&format!(
        "vm2vm: resources/bench/vm2vm.sh, two kvmrun guests{} on a bridge, {runs} run(s) of \
         {mib} MiB, virtio-net and e1000",
        if qemu { " and two QEMU guests" } else { "" }
    ));
    b.env.insert(
        "vm2vm_network".into(),
        "two guests of one VMM (1 vCPU, 512 MiB each), both virtio-net or both e1000, on two \
         taps enslaved to a Linux bridge in a network namespace; kvmrun pairs, and QEMU pairs \
         (-M pc, -netdev tap,vhost=off) when compared, interleaved per NIC model"
            .into(),
    );
    let params = [
        ("mib", mib.to_string()),
        ("guests", "2".to_string()),
        ("vcpus", "1".to_string()),
        ("memory_mib", "512".to_string()),
        ("initrd", "benchmark (busybox, iperf3)".to_string()),
        ("script", "resources/bench/vm2vm.sh".to_string()),
    ];
    let args = vec![
        runs.to_string(),
        "--mib".into(),
        mib.to_string(),
        "--vmms".into(),
        vmms_arg(&configs),
        "--nics".into(),
        NICS.join(","),
    ];
    // iperf3 is in the benchmark initramfs.
    let initrd = b.artifacts.bench_initrd.clone();
    let limit = guest_limit_s(b);
    measure(
        b,
        SUITE,
        "vm2vm.sh",
        args,
        initrd,
        &configs,
        limit,
        // One pair of guests per configuration, booted together.
        configs.len() as u64,
        &params,
    );
    skip_qemu(b, SUITE, &["tcp", "rr"]);
}

#[cfg(test)]
mod tests {
    use super::super::super::results::{Outcome, Recorder};
    use super::super::tests::bench;
    use super::*;

    const NET_JSON: &str = r#"{
      "benchmark": "net", "runs": 2, "mib": 2, "vmms": ["kvmrun", "qemu"],
      "metrics": [
        {"name": "g2h", "label": "guest -> host, 1 stream", "unit": "MB/s",
         "kvmrun_virtio": {"values": [1.5, 2.5], "min": 1.5, "median": 2.0, "max": 2.5},
         "kvmrun_e1000": {"values": [0.5, 0.7], "min": 0.5, "median": 0.6, "max": 0.7},
         "qemu_virtio": {"values": [1.0, 3.0], "min": 1.0, "median": 2.0, "max": 3.0},
         "qemu_e1000": null,
         "kvmrun_over_qemu_virtio": 1.0},
        {"name": "rr", "label": "ICMP round trip (median)", "unit": "ms",
         "kvmrun_virtio": {"values": [2.0]}, "kvmrun_e1000": {"values": [4.0]},
         "qemu_virtio": {"values": [3.0]}, "qemu_e1000": {"values": [5.0]}},
        {"name": "exits_per_packet", "label": "kvmrun VM exits per packet", "unit": "exits/packet",
         "kvmrun_virtio": {"values": [0.1]}, "kvmrun_e1000": {"values": [2.4]},
         "qemu_virtio": null, "qemu_e1000": null}
      ]}"#;

    fn all_configs() -> Vec<(Target, &'static str)> {
        vec![
            (Target::Kvmrun, "virtio"),
            (Target::Kvmrun, "e1000"),
            (Target::Qemu, "virtio"),
            (Target::Qemu, "e1000"),
        ]
    }

    #[test]
    fn every_figure_of_the_json_becomes_a_measurement_with_its_values() {
        let p = parse(NET_JSON, &all_configs()).unwrap();
        let get =
            |name: &str, t: Target| p.figures.iter().find(|f| f.name == name && f.target == t);
        let g = get("virtio/g2h", Target::Kvmrun).unwrap();
        assert_eq!(g.values, [1.5, 2.5]);
        assert_eq!(g.unit, "MB/s");
        assert!(g.higher_is_better);
        assert_eq!(get("e1000/g2h", Target::Kvmrun).unwrap().values, [0.5, 0.7]);
        assert_eq!(get("virtio/g2h", Target::Qemu).unwrap().values, [1.0, 3.0]);
        let rr = get("e1000/rr", Target::Qemu).unwrap();
        assert_eq!(
            (rr.values.as_slice(), rr.higher_is_better),
            (&[5.0][..], false)
        );
        let e = get("e1000/exits-per-packet", Target::Kvmrun).unwrap();
        assert_eq!(
            (e.values.as_slice(), e.higher_is_better),
            (&[2.4][..], false)
        );
        // 3 g2h + 4 rr + 2 exits (kvmrun only).
        assert_eq!(p.figures.len(), 9);
        // runs 2: the figures with one value are short of runs.
        assert_eq!(p.runs, 2);
        assert_eq!(p.short.len(), 6);
        assert!(p.short.contains(&("e1000/rr".to_string(), Target::Qemu, 1)));
    }

    #[test]
    fn a_null_entry_is_missing_but_kvmrun_only_figures_are_not_expected_from_qemu() {
        let p = parse(NET_JSON, &all_configs()).unwrap();
        assert_eq!(p.missing, [("e1000/g2h".to_string(), Target::Qemu)]);
    }

    #[test]
    fn configurations_not_run_are_neither_figures_nor_missing() {
        let kvmrun_only = [(Target::Kvmrun, "virtio"), (Target::Kvmrun, "e1000")];
        let p = parse(NET_JSON, &kvmrun_only).unwrap();
        assert!(p.figures.iter().all(|f| f.target == Target::Kvmrun));
        assert_eq!(p.figures.len(), 6);
        assert!(p.missing.is_empty());
    }

    #[test]
    fn vm2vm_json_gives_tcp_and_rr_per_nic() {
        let json = r#"{"benchmark": "vm2vm", "metrics": [
            {"name": "tcp", "unit": "MB/s", "kvmrun_virtio": {"values": [3.0, 4.0, 5.0]},
             "kvmrun_e1000": {"values": []}},
            {"name": "rr", "unit": "ms", "kvmrun_virtio": {"values": [1.0]},
             "kvmrun_e1000": {"values": [2.0]}}]}"#;
        let p = parse(
            json,
            &[(Target::Kvmrun, "virtio"), (Target::Kvmrun, "e1000")],
        )
        .unwrap();
        let names: Vec<&str> = p.figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["virtio/tcp", "virtio/rr", "e1000/rr"]);
        assert_eq!(p.missing, [("e1000/tcp".to_string(), Target::Kvmrun)]);
    }

    /// vm2vm.sh --vmms kvmrun,qemu: the QEMU e1000 pair gave no throughput (a guest that
    /// ended mid-transfer).
    const VM2VM_JSON: &str = r#"{
      "benchmark": "vm2vm", "runs": 2, "mib": 2, "vmms": ["kvmrun", "qemu"],
      "environment": {"guests": 2, "qemu": "QEMU emulator version 8.2.2 -M pc, -netdev tap,vhost=off"},
      "metrics": [
        {"name": "tcp", "label": "guest -> guest, 1 TCP stream (iperf3)", "unit": "MB/s",
         "kvmrun_virtio": {"values": [3.0, 5.0], "min": 3.0, "median": 4.0, "max": 5.0},
         "kvmrun_e1000": {"values": [1.0, 1.0], "min": 1.0, "median": 1.0, "max": 1.0},
         "qemu_virtio": {"values": [8.0, 8.0], "min": 8.0, "median": 8.0, "max": 8.0},
         "qemu_e1000": null,
         "kvmrun_over_qemu_virtio": 0.5, "kvmrun_over_qemu_e1000": null,
         "virtio_over_e1000_kvmrun": 4.0},
        {"name": "rr", "label": "ICMP round trip guest -> guest (median)", "unit": "ms",
         "kvmrun_virtio": {"values": [6.0, 6.0]}, "kvmrun_e1000": {"values": [9.0, 9.0]},
         "qemu_virtio": {"values": [4.0, 4.0]}, "qemu_e1000": {"values": [3.0, 3.0]},
         "kvmrun_over_qemu_virtio": 1.5, "kvmrun_over_qemu_e1000": 3.0,
         "virtio_over_e1000_kvmrun": 0.67}]}"#;

    #[test]
    fn vm2vm_qemu_pairs_are_figures_on_the_qemu_target() {
        let p = parse(VM2VM_JSON, &all_configs()).unwrap();
        let get = |name: &str, t: Target| {
            p.figures
                .iter()
                .find(|f| f.name == name && f.target == t)
                .map(|f| f.values.clone())
        };
        assert_eq!(get("virtio/tcp", Target::Qemu), Some(vec![8.0, 8.0]));
        assert_eq!(get("virtio/rr", Target::Qemu), Some(vec![4.0, 4.0]));
        assert_eq!(get("e1000/rr", Target::Qemu), Some(vec![3.0, 3.0]));
        assert_eq!(get("virtio/tcp", Target::Kvmrun), Some(vec![3.0, 5.0]));
        // 4 kvmrun + 3 QEMU; the ratios in the JSON are not figures.
        assert_eq!(p.figures.len(), 7);
        assert_eq!(p.missing, [("e1000/tcp".to_string(), Target::Qemu)]);
        assert!(p.short.is_empty());
    }

    #[test]
    fn vm2vm_ratios_are_kvmrun_over_qemu_per_nic_model() {
        let p = parse(VM2VM_JSON, &all_configs()).unwrap();
        let mut rec = Recorder::default();
        for f in p.figures {
            rec.measured(
                "vm2vm",
                &f.name,
                f.target,
                &f.unit,
                f.higher_is_better,
                f.values,
                &[],
            );
        }
        let kq: Vec<(String, f64)> = rec
            .ratios()
            .into_iter()
            .filter(|r| r.label() == "kvmrun/qemu")
            .map(|r| (r.name, r.value))
            .collect();
        // The same medians as the script's kvmrun_over_qemu_{nic}; no e1000/tcp (QEMU's is
        // missing).
        assert_eq!(
            kq,
            [
                ("virtio/tcp".to_string(), 0.5),
                ("virtio/rr".to_string(), 1.5),
                ("e1000/rr".to_string(), 3.0)
            ]
        );
        // A failed QEMU pair is not ok, the rest measured.
        let run = ended(1, "vm2vm.sh: qemu e1000: missing results\n");
        let e = interpret("vm2vm.sh", &run, Ok(VM2VM_JSON.into()), &all_configs());
        assert_eq!(
            e.iter().filter(|x| matches!(x, Entry::Figure(_))).count(),
            7
        );
        assert!(e.iter().any(|x| matches!(x,
            Entry::Failed(n, Target::Qemu, why) if n == "e1000/tcp"
                && why.contains("qemu e1000: missing results"))));
    }

    #[test]
    fn vm2vm_json_of_kvmrun_pairs_only_still_reads_and_lacks_only_qemu() {
        // What vm2vm.sh wrote before QEMU pairs: no vmms, no qemu_* entries.
        let old = r#"{"benchmark": "vm2vm", "runs": 1, "metrics": [
            {"name": "tcp", "unit": "MB/s", "kvmrun_virtio": {"values": [3.0]},
             "kvmrun_e1000": {"values": [1.0]}, "virtio_over_e1000_kvmrun": 3.0}]}"#;
        let p = parse(old, &all_configs()).unwrap();
        assert_eq!(p.figures.len(), 2);
        assert!(p.figures.iter().all(|f| f.target == Target::Kvmrun));
        assert_eq!(
            p.missing,
            [
                ("virtio/tcp".to_string(), Target::Qemu),
                ("e1000/tcp".to_string(), Target::Qemu)
            ]
        );
    }

    #[test]
    fn qemu_pairs_run_when_compared_and_present_else_each_figure_is_a_skip() {
        let b = bench(true);
        assert_eq!(configs(&b), all_configs());
        assert_eq!(vmms_arg(&configs(&b)), "kvmrun,qemu");
        let mut b = bench(true);
        b.qemu_unavailable = Some("qemu-system-x86_64 not found".into());
        assert_eq!(vmms_arg(&configs(&b)), "kvmrun");
        assert!(configs(&b).iter().all(|(t, _)| *t == Target::Kvmrun));
        skip_qemu(&mut b, "vm2vm", &["tcp", "rr"]);
        let skips: Vec<(&str, Option<Target>, &str)> = b
            .rec
            .outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Skipped(u) => Some((u.name.as_str(), u.target, u.reason.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(skips.len(), 4);
        assert!(skips
            .iter()
            .all(|(_, t, why)| *t == Some(Target::Qemu) && why.contains("not found")));
        assert_eq!(skips[0].0, "virtio/tcp");
        // Not compared: said so; compared and present: nothing skipped.
        let mut b = bench(true);
        b.args.compare = None;
        assert_eq!(vmms_arg(&configs(&b)), "kvmrun");
        skip_qemu(&mut b, "vm2vm", &["tcp"]);
        assert!(matches!(&b.rec.outcomes[..], [Outcome::Skipped(u), _]
            if u.reason.contains("--compare qemu")));
        let mut b = bench(true);
        skip_qemu(&mut b, "vm2vm", &["tcp", "rr"]);
        assert!(b.rec.outcomes.is_empty());
    }

    fn ended(status: i32, log: &str) -> ScriptRun {
        ScriptRun {
            status: Some(status),
            timed_out: false,
            log: log.into(),
        }
    }

    #[test]
    fn no_namespace_is_a_skip_per_configuration_with_the_scripts_reason() {
        let run = ended(
            EXIT_NO_NET,
            "x\nnet.sh: cannot create the namespace and tap (needs root or CAP_NET_ADMIN)\n",
        );
        let e = interpret("net.sh", &run, Err("no file".into()), &all_configs());
        assert_eq!(e.len(), 4);
        assert!(e.iter().all(|x| matches!(x,
            Entry::Skipped(n, _, why) if n.ends_with("/all") && why.contains("CAP_NET_ADMIN"))));
    }

    #[test]
    fn a_failed_script_is_a_failure_with_its_last_words_never_a_figure() {
        let run = ended(1, "run 1/1: kvmrun virtio\nnet.sh: the host end failed\n");
        let e = interpret("net.sh", &run, Err("no net.json".into()), &all_configs());
        assert_eq!(e.len(), 4);
        assert!(e.iter().all(|x| matches!(x,
            Entry::Failed(_, _, why) if why.contains("the host end failed")
                && why.contains("status Some(1)"))));
        // Status 1 with a JSON: what it holds is measured, what it lacks failed.
        let e = interpret("net.sh", &run, Ok(NET_JSON.into()), &all_configs());
        assert_eq!(
            e.iter().filter(|x| matches!(x, Entry::Figure(_))).count(),
            9
        );
        assert!(e.iter().any(|x| matches!(x,
            Entry::Failed(n, Target::Qemu, _) if n == "e1000/g2h")));
        // A figure with fewer values than runs is kept, and the missing runs are a failure.
        assert!(e.iter().any(|x| matches!(x,
            Entry::Failed(n, Target::Kvmrun, why) if n == "virtio/rr/runs"
                && why.contains("1 of 2 runs"))));
    }

    #[test]
    fn broken_json_is_an_error_not_an_empty_result() {
        assert!(parse("{", &all_configs()).is_err());
        assert!(parse("{\"metrics\": 3}", &all_configs()).is_err());
    }
}
