//! The seccomp filters, end to end on this machine's /dev/kvm: a payload guest runs with them
//! on (the default), and a forbidden system call from a vCPU or a device-worker thread ends
//! kvmrun with one clear line (the call is triggered through the `KVMRUN_TEST_SECCOMP_PROBE`
//! test port, see src/seccomp_probe.rs).

mod common;

use std::time::Duration;

use common::{scratch_dir, wait_with_limit, write_payload, PayloadEnd};

const LIMIT: Duration = Duration::from_secs(30);
/// src/seccomp_probe.rs
const PROBE_PORT: u16 = 0x503;
const FROM_VCPU: u8 = 1;
const FROM_WORKER: u8 = 2;
/// 128 + SIGSYS
const VIOLATION_STATUS: i32 = 159;

fn run_probe(name: &str, value: u8, extra: &[&str]) -> (Option<i32>, String) {
    run_probe_as("run", name, value, extra)
}

/// `run_probe` through `kvmrun SUBCOMMAND` (run, or exec, whose command never gets to run).
fn run_probe_as(subcommand: &str, name: &str, value: u8, extra: &[&str]) -> (Option<i32>, String) {
    let dir = scratch_dir(name);
    let kernel = write_payload(
        &dir,
        "probe.elf",
        b"probing\n",
        false,
        PayloadEnd::OutByte(PROBE_PORT, value),
    );
    let child = common::kvmrun()
        .args([
            subcommand,
            "--allow-pvm",
            "--kernel",
            kernel.to_str().unwrap(),
        ])
        // The halted guest is stopped at the first signal, not after a grace period.
        .args(["--shutdown-grace", "0"])
        .args(extra)
        .args(if subcommand == "exec" {
            &["--", "true"][..]
        } else {
            &[]
        })
        .env("KVMRUN_TEST_SECCOMP_PROBE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // With filters off the guest halts after its write: stop it after a while.
    let pid = child.id() as i32;
    let filters_off = extra.contains(&"--seccomp=off");
    let stopper = std::thread::spawn(move || {
        if filters_off {
            std::thread::sleep(Duration::from_secs(3));
            // SAFETY: signalling our own child (at worst an exited, not yet reaped, one).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    });
    let out = wait_with_limit(child, LIMIT);
    let _ = stopper.join();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forbidden_syscall_in_a_device_worker_kills_kvmrun_with_one_line() {
    let (status, stderr) = run_probe("seccomp-worker", FROM_WORKER, &[]);
    assert_eq!(status, Some(VIOLATION_STATUS), "stderr: {stderr}");
    assert!(
        stderr
            .contains("kvmrun: seccomp: thread seccomp-probe made forbidden syscall 16 (ioctl)\n"),
        "stderr: {stderr}"
    );
}

#[test]
fn forbidden_syscall_in_a_vcpu_kills_kvmrun_with_one_line() {
    let (status, stderr) = run_probe("seccomp-vcpu", FROM_VCPU, &[]);
    assert_eq!(status, Some(VIOLATION_STATUS), "stderr: {stderr}");
    assert!(
        stderr.contains("kvmrun: seccomp: thread vcpu0 made forbidden syscall 257 (openat)\n"),
        "stderr: {stderr}"
    );
}

#[test]
fn seccomp_off_lets_the_same_call_through() {
    let (status, stderr) = run_probe("seccomp-off", FROM_WORKER, &["--seccomp=off"]);
    assert_eq!(status, Some(128 + libc::SIGTERM), "stderr: {stderr}");
    assert!(!stderr.contains("forbidden syscall"), "stderr: {stderr}");
}

#[test]
fn exec_runs_under_the_same_filters() {
    let (status, stderr) = run_probe_as("exec", "seccomp-exec", FROM_VCPU, &[]);
    assert_eq!(status, Some(VIOLATION_STATUS), "stderr: {stderr}");
    assert!(
        stderr.contains("kvmrun: seccomp: thread vcpu0 made forbidden syscall 257 (openat)\n"),
        "stderr: {stderr}"
    );
}
