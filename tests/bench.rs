//! `kvmrun bench --quick --suite cpu,disk` end to end: the outputs exist, parse, and hold finite,
//! positive figures for the host and the kvmrun guest. It boots Linux guests, so a plain
//! `cargo test` skips it; `resources/run-tests.sh` runs it with `--ignored` (on PVM, kvmrun bench
//! goes into the test host by itself: do not start it inside one).

mod common;

use std::path::Path;
use std::time::Duration;

use common::run_kvmrun;

/// The quick suite must fit CI: under 10 minutes in the test host; the limit leaves room for
/// waiting on the machine-wide test host lock.
const LIMIT: Duration = Duration::from_secs(40 * 60);

/// Checks Tapper-style TAP: every section's plan matches its numbered lines; returns the
/// section names and the `not ok` lines.
fn check_tap(text: &str) -> (Vec<String>, Vec<String>) {
    let mut sections: Vec<(String, Option<usize>, Vec<usize>)> = Vec::new();
    let mut not_ok = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# Tapper-section: ") {
            sections.push((name.to_string(), None, vec![]));
        } else if let Some(plan) = line.strip_prefix("1..") {
            let s = sections.last_mut().expect("plan outside a section");
            s.1 = Some(plan.split_whitespace().next().unwrap().parse().unwrap());
        } else if line.starts_with("ok ") || line.starts_with("not ok ") {
            let s = sections.last_mut().expect("test line outside a section");
            let num = line
                .trim_start_matches("not ")
                .split_whitespace()
                .nth(1)
                .unwrap();
            s.2.push(num.parse().unwrap());
            if line.starts_with("not ok") {
                not_ok.push(line.to_string());
            }
        }
    }
    for (name, plan, nums) in &sections {
        let plan = plan.unwrap_or_else(|| panic!("section {name} has no plan"));
        assert_eq!(*nums, (1..=plan).collect::<Vec<_>>(), "section {name}");
    }
    (sections.into_iter().map(|s| s.0).collect(), not_ok)
}

#[test]
#[ignore = "boots a Linux guest: run through resources/run-tests.sh"]
fn quick_cpu_and_disk_bench_gives_finite_positive_figures() {
    // Not under /tmp: inside the test host /tmp is a fresh tmpfs, and the results come back
    // through a share of this directory.
    let out = Path::new("/var/tmp").join(format!("kvmrun-bench-test.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_str().unwrap();
    let run = run_kvmrun(
        &["bench", "--quick", "--suite", "cpu,disk", "--out", out_s],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kvmrun bench failed ({:?}):\n{stderr}",
        run.status
    );

    let tap = std::fs::read_to_string(out.join("results.tap")).expect("results.tap");
    assert!(tap.contains("# Tapper-uname: ") && tap.contains("# Tapper-cpuinfo: "));
    let (sections, not_ok) = check_tap(&tap);
    assert_eq!(sections, ["cpu", "disk"]);
    assert!(not_ok.is_empty(), "failures in results.tap: {not_ok:?}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
            .expect("results.json parses");
    assert_eq!(json["schema"], "kvmrun-bench/1");
    assert!(json["environment"]["host_cpu"].is_string());
    let ms = json["measurements"].as_array().expect("measurements");
    for suite in ["cpu", "disk"] {
        for target in ["host", "kvmrun"] {
            let found: Vec<&serde_json::Value> = ms
                .iter()
                .filter(|m| m["suite"] == suite && m["target"] == target)
                .collect();
            assert!(!found.is_empty(), "no {suite} figure for {target}");
            for m in found {
                for key in ["min", "median", "max", "mean"] {
                    let v = m[key].as_f64().unwrap_or(f64::NAN);
                    assert!(
                        v.is_finite() && v > 0.0,
                        "{suite} {target} {key} = {v}: {m}"
                    );
                }
                assert_eq!(m["runs"], 3, "{m}");
            }
        }
    }
    let ratios = json["ratios"].as_array().expect("ratios");
    assert!(ratios
        .iter()
        .any(|r| r["numerator"] == "kvmrun" && r["denominator"] == "host"));

    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(report.contains("## cpu") && report.contains("## disk"));
    let svg = std::fs::read_to_string(out.join("cpu-matmul.svg")).expect("cpu-matmul.svg");
    assert!(svg.contains("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Where a network namespace cannot be made (no root, no CAP_NET_ADMIN), net.sh and vm2vm.sh
/// stop with status 77 and say why, which `kvmrun bench` records as a SKIP per configuration
/// (see src/bench/suites/net.rs). Run here directly, as an unprivileged user when root.
#[test]
fn network_scripts_without_cap_net_admin_exit_77_with_the_reason() {
    let res = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/bench");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    for (script, extra) in [
        ("net.sh", &["--vmms=kvmrun"][..]),
        ("vm2vm.sh", &["--vmms", "kvmrun", "--nics=virtio"][..]),
    ] {
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "bash",
            ]);
            c
        } else {
            std::process::Command::new("bash")
        };
        // INNER: run here, not in a test host; the kernel path is never reached.
        let out = cmd
            .arg(res.join(script))
            .args(["1", "--mib", "1"])
            .args(extra)
            .env("KVMRUN_BENCH_INNER", "1")
            .env("KVMRUN_BENCH_KERNEL", "/nonexistent")
            .env("TMPDIR", "/tmp")
            .current_dir("/")
            .output()
            .expect("run bash");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{script}: {stderr}");
        assert!(
            stderr.contains("cannot create") && stderr.contains("CAP_NET_ADMIN"),
            "{stderr}"
        );
    }
}

/// `kvmrun bench --quick --suite net,vm2vm`: every configuration gives its figures and the NIC
/// ratios. Not in resources/run-tests.sh (about 5 minutes more in the test host); alone:
/// `cargo test --test bench -- --ignored quick_net`.
#[test]
#[ignore = "boots Linux guests on taps in namespaces: run by hand"]
fn quick_net_and_vm2vm_bench_gives_figures_for_both_nics() {
    let out = Path::new("/var/tmp").join(format!("kvmrun-bench-net.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = run_kvmrun(
        &[
            "bench",
            "--quick",
            "--suite",
            "net,vm2vm",
            "--out",
            out.to_str().unwrap(),
        ],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "kvmrun bench failed:\n{stderr}");
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap();
    let (sections, not_ok) = check_tap(&tap);
    assert_eq!(sections, ["net", "vm2vm"]);
    assert!(not_ok.is_empty(), "{not_ok:?}");
    // Without --compare qemu, QEMU's figures are skips that say so.
    for figure in ["net/virtio/g2h", "vm2vm/e1000/tcp"] {
        assert!(
            tap.contains(&format!("{figure} qemu # SKIP QEMU not compared")),
            "{tap}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let ms = json["measurements"].as_array().unwrap();
    for (suite, figure) in [
        ("net", "g2h"),
        ("net", "g2h4"),
        ("net", "h2g"),
        ("net", "rr"),
        ("vm2vm", "tcp"),
        ("vm2vm", "rr"),
    ] {
        for nic in ["virtio", "e1000"] {
            let name = format!("{nic}/{figure}");
            let m = ms
                .iter()
                .find(|m| m["suite"] == suite && m["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no {suite} {name}"));
            let v = m["median"].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{m}");
        }
    }
    let ratios = json["ratios"].as_array().unwrap();
    assert!(ratios
        .iter()
        .any(|r| r["suite"] == "vm2vm" && r["denominator_name"] == "e1000/tcp"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## net") && report.contains("## vm2vm"));
    let _ = std::fs::remove_dir_all(&out);
}
