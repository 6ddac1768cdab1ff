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

/// The suites that boot no guest (net and vm2vm, not measured yet) run anywhere, directly: the
/// whole report pipeline, with every planned figure a TAP SKIP with its reason.
#[test]
fn suites_without_guests_report_their_skips() {
    let out = std::env::temp_dir().join(format!("kvmrun-bench-skip.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = run_kvmrun(
        &[
            "bench",
            "--suite",
            "net,vm2vm",
            "--runs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tap = std::fs::read_to_string(out.join("results.tap")).unwrap();
    let (sections, not_ok) = check_tap(&tap);
    assert_eq!(sections, ["net", "vm2vm"]);
    assert!(not_ok.is_empty());
    let skips = tap.lines().filter(|l| l.contains(" # SKIP ")).count();
    assert_eq!(skips, 9, "{tap}");
    assert!(tap.contains("virtio/tcp/guest-to-host/1-stream # SKIP kvmrun's virtio-net"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["skipped"].as_array().unwrap().len(), 9);
    assert!(json["measurements"].as_array().unwrap().is_empty());
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("## Skipped"));
    let _ = std::fs::remove_dir_all(&out);
}
