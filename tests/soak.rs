//! Soak: many create/run/exit cycles of a tiny payload guest, and one long run full of VM
//! exits, directly on this machine's /dev/kvm.
//!
//! kvmrun runs one VM per process (like Firecracker), so "create/run/exit" is a process: each
//! cycle must exit 0 quickly and with the same memory as the others. Leaks that would matter within a VM's life (per exit,
//! per device access) are caught by the long run: its descriptors, threads and RSS must stay
//! flat while the guest makes millions of exits.
//!
//! `cargo test` runs 50 cycles; the full 500:
//! `cargo test --test soak -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::{proc_use, run_kvmrun, scratch_dir, write_payload, PayloadEnd};

/// A cycle that takes longer than this is a hang or a slow teardown (a cycle takes ~30 ms).
const CYCLE_LIMIT: Duration = Duration::from_secs(5);
/// Peak RSS may vary this much between cycles (allocator and page-cache noise).
const RSS_SPREAD_KIB: u64 = 2048;

fn cycles(n: usize) {
    let dir = scratch_dir(&format!("soak{n}"));
    let kernel = write_payload(&dir, "soak.elf", b"cycle\n", true, PayloadEnd::DebugExit(0));
    let kernel = kernel.to_str().unwrap().to_string();
    let mut peaks = Vec::with_capacity(n);
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let out = run_kvmrun(
            &[
                "run",
                "--allow-pvm",
                "--kernel",
                &kernel,
                "--boot-report",
                "json",
            ],
            CYCLE_LIMIT * 2,
        );
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "cycle {i}: stderr: {stderr}");
        assert!(took < CYCLE_LIMIT, "cycle {i} took {took:?}");
        slowest = slowest.max(took);
        let report: serde_json::Value = serde_json::from_str(
            stderr
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .unwrap_or_else(|| panic!("cycle {i}: no boot report in {stderr}")),
        )
        .unwrap();
        peaks.push(report["peak_rss_kib"].as_u64().expect("peak_rss_kib"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (min, max) = (*peaks.iter().min().unwrap(), *peaks.iter().max().unwrap());
    eprintln!("{n} cycles: peak RSS {min}..{max} KiB, slowest cycle {slowest:?}");
    assert!(
        max - min <= RSS_SPREAD_KIB,
        "peak RSS varied from {min} to {max} KiB over {n} cycles"
    );
}

#[test]
fn fifty_create_run_exit_cycles() {
    cycles(50);
}

#[test]
#[ignore = "soak: about 20 s; run with --ignored"]
fn five_hundred_create_run_exit_cycles() {
    cycles(500);
}

#[test]
fn a_long_run_full_of_exits_keeps_its_resources_flat() {
    let dir = scratch_dir("soak-exits");
    // Port 0x80 (POST codes) decodes to no device: the unknown-port path, logged once.
    let kernel = write_payload(&dir, "exits.elf", b"", false, PayloadEnd::OutLoop(0x80));
    let mut child = common::kvmrun()
        .args([
            "run",
            "--allow-pvm",
            "--cpus",
            "2",
            "--kernel",
            kernel.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(700));
    let early = proc_use(pid);
    std::thread::sleep(Duration::from_secs(3));
    let late = proc_use(pid);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("long run: {early:?} -> {late:?}");
    assert!(
        late.cpu_ticks > early.cpu_ticks,
        "the guest was not running: {early:?} -> {late:?}"
    );
    assert_eq!((late.fds, late.threads), (early.fds, early.threads));
    assert!(
        late.rss_kib <= early.rss_kib + 512,
        "RSS grew from {} to {} KiB",
        early.rss_kib,
        late.rss_kib
    );
}
